"""How fast is the synthetic data generator? Seconds for 2,000 scenes of each kind on one core.

The generator is plain numpy with no Python loop over pixels; the target is under a minute for
2,000 scenes of 128 x 128 per kind on a single core. Pin the BLAS/OpenMP pools to measure that:

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/synthetic_speed.py
    python benchmarks/synthetic_speed.py --num-images 200 --no-write   # quick look

Appends one row per kind to ``benchmarks/results/synthetic_speed.csv``: wall and CPU seconds
(on a shared machine the CPU time is the one to read) and the load average before the run.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

# Single core unless the caller says otherwise: set before numpy loads its thread pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import bench_runs  # noqa: E402

from spml_lab.data import synthetic, textures  # noqa: E402  (after the thread caps)

RESULTS_CSV = Path(__file__).resolve().parent / "results" / "synthetic_speed.csv"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--kinds", nargs="*", default=list(synthetic.KINDS))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    load = round(os.getloadavg()[0], 2)
    if hasattr(os, "sched_setaffinity"):  # one core, also for anything that ignores the pools
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    start = time.perf_counter()
    textures.bank()
    print(f"texture bank: {time.perf_counter() - start:.2f} s (once per process)")
    rows = []
    for kind in args.kinds:
        start, cpu = time.perf_counter(), time.process_time()
        scenes = synthetic.generate(args.num_images, kind=kind, size=args.size, seed=0)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        print(
            f"{kind}: {seconds:.1f} s for {len(scenes)} scenes of {args.size}x{args.size} "
            f"({1000 * seconds / len(scenes):.1f} ms/scene; CPU time {cpu:.1f} s)",
            flush=True,
        )
        rows.append({"kind": kind, "images": len(scenes), "size": args.size, "threads": 1,
                     "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
                     "load_average_1min_before": load})  # fmt: skip
    if not args.no_write:
        bench_runs.write_csv(RESULTS_CSV, [*bench_runs.read_csv(RESULTS_CSV), *rows])
        print(f"appended to {RESULTS_CSV}")


if __name__ == "__main__":
    main()
