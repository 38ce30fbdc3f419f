"""How fast is the synthetic data generator? Seconds for 2,000 scenes of each kind on one core.

The generator is plain numpy with no Python loop over pixels; the target is under a minute for
2,000 scenes of 128 x 128 per kind on a single core. Pin the BLAS/OpenMP pools to measure that:

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/synthetic_speed.py
    python benchmarks/synthetic_speed.py --num-images 200     # quick look
"""

from __future__ import annotations

import argparse
import os
import time

# Single core unless the caller says otherwise: set before numpy loads its thread pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from spml_lab.data import synthetic, textures  # noqa: E402  (after the thread caps)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--kinds", nargs="*", default=list(synthetic.KINDS))
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):  # one core, also for anything that ignores the pools
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    start = time.perf_counter()
    textures.bank()
    print(f"texture bank: {time.perf_counter() - start:.2f} s (once per process)")
    for kind in args.kinds:
        start = time.perf_counter()
        scenes = synthetic.generate(args.num_images, kind=kind, size=args.size, seed=0)
        seconds = time.perf_counter() - start
        print(
            f"{kind}: {seconds:.1f} s for {len(scenes)} scenes of {args.size}x{args.size} "
            f"({1000 * seconds / len(scenes):.1f} ms/scene)",
            flush=True,
        )


if __name__ == "__main__":
    main()
