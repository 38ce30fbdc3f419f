"""How long `spml-lab prepare voc` takes, and how much it writes, per 1,000 images of VOC size.

No VOC data may be committed or downloaded here, so the images are generated in VOC's formats by
the tests' miniature writer (``tests/mini_voc.py``) at VOC's size (500 x 375 and 375 x 500
JPEGs, palette masks, XML, SBD ``.mat`` files, ScribbleSup XML), then prepared with SBD and
scribbles, as the README's command does. Generation is not timed; ``prepare_voc`` is, from an
empty output folder. Writes ``benchmarks/results/prepare_speed.csv`` (one row per run).

Usage::

    python benchmarks/prepare_speed.py --images 200 --workers 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import bench_runs

from spml_lab.data import voc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from mini_voc import write_mini_voc  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "prepare_speed.csv"


def folder_bytes(folder):
    """Bytes of every file under `folder`."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def measure(images, workers, seed=0):
    """Generate `images` VOC-sized images, prepare them, and return the CSV row."""
    with tempfile.TemporaryDirectory(prefix="prepare_speed_") as work:
        work = Path(work)
        # a quarter SBD-only images, as train_aug adds to VOC's own; the rest VOC train / val
        sbd = images // 4
        val = (images - sbd) // 4
        mini = write_mini_voc(
            work / "download", num_train=images - sbd - val, num_val=val, num_sbd=sbd,
            size=(375, 500), seed=seed,
        )  # fmt: skip
        jpegs = folder_bytes(mini.voc_dir / "JPEGImages")
        tic = time.perf_counter()
        voc.prepare_voc(
            mini.devkit, work / "out", sbd=mini.sbd, scribbles=mini.scribbles,
            workers=workers,
        )  # fmt: skip
        seconds = time.perf_counter() - tic
        written = folder_bytes(work / "out")
    per_1000 = 1000 / images
    return {
        "images": images,
        "workers": workers,
        "cpus": os.cpu_count(),
        "seconds": round(seconds, 1),
        "minutes_per_1000": round(seconds * per_1000 / 60, 2),
        "mb_per_1000": round(written * per_1000 / 1e6, 1),
        "jpeg_mb_per_1000": round(jpegs * per_1000 / 1e6, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    row = measure(args.images, args.workers)
    print(row)
    if not args.no_write:
        bench_runs.write_csv(RESULTS, [*bench_runs.read_csv(RESULTS), row])
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
