"""Time and peak memory of `spml-lab predict` (softmax + CRF) on large photos.

``--max-side`` (default 1024) bounds the size the network and the CRF work at, and the photo is
decoded at reduced size (libjpeg's 1/2, 1/4, 1/8 scaled decoding), so the peak memory of a
JPEG should not grow with its pixels beyond the uint8 mask written at full size (a 10,000 x
10,000 photo: 100 MB of labels, 400 MB as Pillow's RGB image). Each setting runs
`spml-lab predict` in a fresh process, whose peak resident memory the OS reports.

    python benchmarks/predict_memory.py                      # 4000 and 10000 square JPEGs
    python benchmarks/predict_memory.py --sides 1024 768 --crf on off   # what the CRF costs
    python benchmarks/predict_memory.py --sizes 2000x3000 --sides 1024 512 0   # 0: full size
    git archive OLD spml_lab | tar -x -C /tmp/old     # an older version, measured the same way:
    python benchmarks/predict_memory.py --code /tmp/old --out /tmp/before.csv

Writes ``benchmarks/results/predict_memory.csv``, one row per photo and ``--max-side``, with
the machine (CPU cores, load average when it started) in each row.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import provenance
from PIL import Image

from spml_lab.data import labelio
from spml_lab.training import train
from spml_lab.training.config import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results"

# a fresh process per setting, reporting its own peak resident memory (KiB on Linux)
CHILD = (
    "import resource, sys; from spml_lab import cli; status = cli.main(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(status)"
)


def size(text):
    """Parse ``"4000x3000"`` (height x width) or ``"4000"`` (a square)."""
    height, _, width = text.partition("x")
    return int(height), int(width or height)


def write_photo(path, height, width, rng):
    """Write a JPEG of smooth colour fields: a CRF sees edges, not only noise."""
    coarse = rng.integers(0, 256, (height // 100 + 2, width // 100 + 2, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((width, height), Image.BILINEAR).save(path, quality=90)


def machine():
    """Describe the CPU, its cores and how busy it was, in one CSV-safe phrase."""
    cpu = provenance.cpu_name()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu.strip()}; {os.cpu_count()} cores; load {load:.1f} at start".replace(",", " ")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a run folder (default: a 1-step run trained here)")
    parser.add_argument("--sizes", type=size, nargs="+", default=[(4000, 4000), (10000, 10000)],
                        metavar="HxW")  # fmt: skip
    parser.add_argument("--sides", type=int, nargs="+", default=[1024])
    parser.add_argument("--crf", nargs="+", choices=["on", "off"], default=["on"])
    parser.add_argument("--code", help="a folder holding the spml_lab package to measure "
                        "(default: the one installed, this checkout)")  # fmt: skip
    parser.add_argument("--out", default=str(RESULTS / "predict_memory.csv"))
    args = parser.parse_args()
    env = dict(os.environ)
    if args.code:  # first on the path: the child imports that spml_lab
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.code, env.get("PYTHONPATH")]))
    work = Path(tempfile.mkdtemp(prefix="spml_predict_"))
    if args.run and not args.run.startswith("embedded:"):
        args.run = str(Path(args.run).resolve())  # the children run in the scratch folder
    run = args.run or train.fit(
        # width 64: the network the committed peaks were measured with (TrainConfig's default then)
        TrainConfig(max_steps=1, width=64, progress=False, device="cpu", out_dir=str(work / "run"))
    )
    where = machine()
    rng = np.random.default_rng(0)
    rows = []
    for height, width in args.sizes:
        photo = work / f"photo_{height}x{width}.jpg"
        write_photo(photo, height, width, rng)
        for side, crf in itertools.product(args.sides, args.crf):
            out = work / f"masks_{height}x{width}_{side}_{crf}"
            argv = ["predict", str(run), str(photo), "--out", str(out), "--max-side", str(side),
                    "--crf" if crf == "on" else "--no-crf"]  # fmt: skip
            if height * width > 2 * Image.MAX_IMAGE_PIXELS:  # above Pillow's guard: say it is fine
                argv += ["--max-pixels", str(height * width)]
            tic = time.perf_counter()
            # in the scratch folder: `python -c` puts the current folder first on sys.path, so
            # from the checkout it would import the checkout's spml_lab whatever --code says
            done = subprocess.run([sys.executable, "-c", CHILD, *argv], check=True, cwd=work,
                                  capture_output=True, text=True, env=env)  # fmt: skip
            seconds = time.perf_counter() - tic
            peak = int(done.stdout.split()[-1])
            mask = labelio.image_size(out / f"{photo.stem}_mask.png", max_pixels=height * width)
            assert mask == (height, width), mask  # the mask is full size
            rows.append({"height": height, "width": width, "format": "jpeg",
                         "max_side": side or "full", "crf": crf, "seconds": round(seconds, 1),
                         "peak_rss_mib": round(peak / 1024), "code": args.code or "checkout",
                         "machine": where})  # fmt: skip
            print(rows[-1], flush=True)
            for path in out.iterdir():  # a 10,000 x 10,000 mask is tens of MB
                path.unlink()
        photo.unlink()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = list(rows[0])
    lines = [",".join(names)] + [",".join(str(r[k]) for k in names) for r in rows]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
