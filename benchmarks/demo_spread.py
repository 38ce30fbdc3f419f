"""How much `spml-lab demo`'s scores move with the CPU's arithmetic kernels.

The demo trains on one torch thread with seeded data order, so on one machine it repeats to
the last digit; what is left to differ between machines is the order and width of the
floating-point sums inside torch's CPU kernels, which depend on the instruction set
(AVX-512, AVX2, plain SSE). This script reruns the demo (200 steps each, seed 0, 32 val
images) under each kernel setting this machine can select:

* ``native``: what torch picks here (recorded in the ``capability`` column);
* ``aten_default``: ``ATEN_CPU_CAPABILITY=default``, torch's own kernels without SIMD;
* ``no_simd``: that, and ``ONEDNN_MAX_CPU_ISA=SSE41`` for the convolutions (oneDNN).

Each setting gives the scores a machine with those kernels would print; the spread over
them is the measured spread the README states. Threads are not a setting: the demo pins one.

    python benchmarks/demo_spread.py           # about 2 min per setting on 2 cores
    python benchmarks/demo_spread.py --quick   # 5 steps, into outputs/: checks the script

Resumable: a setting with rows in the CSV is not run again. The 1-minute load average is
recorded beside each row, since the training times depend on it (the scores do not).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_CSV = ROOT / "benchmarks" / "results" / "demo_spread.csv"
QUICK_CSV = ROOT / "outputs" / "demo_spread_quick" / "demo_spread.csv"
SETTINGS = {  # name -> environment of the demo's process
    "native": {},
    "aten_default": {"ATEN_CPU_CAPABILITY": "default"},
    "no_simd": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
COLUMNS = ["setting", "capability", "run", "steps", "method", "miou", "seconds", "load"]
CAPABILITY = "import torch; print(torch.backends.cpu.get_cpu_capability())"


def run_setting(name, steps, folder):
    """Run the demo under one setting; return its CSV rows (the short runs only)."""
    env = {**os.environ, **SETTINGS[name]}
    capability = subprocess.run(
        [sys.executable, "-c", CAPABILITY], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    command = ["spml-lab", "demo", "--out", str(folder), "--steps", str(steps), "--quiet"]
    if steps < 20:
        command += ["--stage2-steps", str(steps)]
    subprocess.run(command, env=env, check=True)
    load = os.getloadavg()[0]
    rows = json.loads((folder / "results.json").read_text())
    return [
        {
            "setting": name,
            "capability": capability,
            "run": row["name"],
            "steps": row["steps"],
            "method": row["method"],
            "miou": f"{row['miou']:.4f}",
            "seconds": f"{row['seconds']:.1f}",
            "load": f"{load:.2f}",
        }
        for row in rows
        if "shipped" not in row["name"]  # the shipped runs are loaded, not trained
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 steps, into outputs/")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    args = parser.parse_args(argv)
    out = QUICK_CSV if args.quick else RESULTS_CSV
    steps = 5 if args.quick else 200
    done = set()
    if out.is_file():
        with out.open() as f:
            done = {row["setting"] for row in csv.DictReader(f)}
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.settings:
        if name in done:
            print(f"{name}: already in {out}")
            continue
        with tempfile.TemporaryDirectory() as folder:
            rows = run_setting(name, steps, Path(folder))
        new = not out.is_file()
        with out.open("a", newline="") as f:  # one setting at a time: a kill loses one
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            if new:
                writer.writeheader()
            writer.writerows(rows)
        for row in rows:
            print(f"{name:13s} {row['capability']:8s} {row['run']:24s} mIoU {row['miou']}")


if __name__ == "__main__":
    main()
