"""Time and peak memory of `spml-lab predict` (softmax + CRF) on one large photo.

A 2000 x 3000 photo labelled at full resolution needs gigabytes (the CRF holds every pixel's
class probabilities); ``--max-side`` (default 1024) bounds the working size. Each setting runs
`spml-lab predict` in a fresh process, whose peak resident memory the OS reports.

    python benchmarks/predict_memory.py                  # --max-side 1024 and 512
    python benchmarks/predict_memory.py --sides 1024 0   # 0: full resolution (slow, GBs)

Writes ``benchmarks/results/predict_memory.csv``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from spml_lab.training import train
from spml_lab.training.config import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a run folder (default: a 1-step run trained here)")
    parser.add_argument("--size", type=int, nargs=2, default=(2000, 3000), metavar=("H", "W"))
    parser.add_argument("--sides", type=int, nargs="+", default=[1024, 512])
    parser.add_argument("--out", default=str(RESULTS / "predict_memory.csv"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="spml_predict_"))
    run = args.run or train.fit(
        TrainConfig(max_steps=1, progress=False, device="cpu", out_dir=str(work / "run"))
    )
    rng = np.random.default_rng(0)
    height, width = args.size
    photo = work / "photo.jpg"  # smooth colour fields: a CRF sees edges, not only noise
    coarse = rng.integers(0, 256, (height // 100 + 1, width // 100 + 1, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((width, height), Image.BILINEAR).save(photo, quality=90)
    rows = []
    for side in args.sides:
        argv = ["predict", str(run), str(photo), "--out", str(work / f"masks_{side}"),
                "--max-side", str(side)]  # fmt: skip
        # a fresh process per setting, reporting its own peak resident memory (KiB on Linux)
        code = (
            "import resource, sys; from spml_lab import cli; status = cli.main(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(status)"
        )
        tic = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code, *argv], check=True,
                              capture_output=True, text=True)  # fmt: skip
        seconds = time.perf_counter() - tic
        peak = int(done.stdout.split()[-1])
        rows.append({"height": height, "width": width, "max_side": side or "full",
                     "seconds": round(seconds, 1), "peak_rss_mib": round(peak / 1024)})  # fmt: skip
        print(rows[-1], flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = list(rows[0])
    lines = [",".join(names)] + [",".join(str(r[k]) for k in names) for r in rows]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
