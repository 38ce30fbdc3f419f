"""How much faster a 4-run `spml-lab sweep` goes with ``--jobs 2`` than with ``--jobs 1``.

The sweep is notebook 09 (training with the ``cpu`` preset: 60 steps of the small network on
the embedded objects, then its figures) over ``SEED = 0, 1, 2, 3``: four papermill runs, each
starting its own kernel. It runs twice, each time from an empty folder: one run at a time
(``--jobs 1``, this process, all the threads) and two side by side (``--jobs 2``, submitit's
local executor, half the threads each). The thread budget is the machine's cores, so both
share out the same threads. Wall time of each whole sweep; speed-up = jobs-1 time / jobs-N
time (2.0 would be perfect on 2 cores; kernel start-up and Python imports run in parallel
too, training competes for the cores). The 1-minute load average is recorded beside each row:
a busy machine makes the numbers meaningless.

    python benchmarks/sweep_speed.py               # the measurement (about 10 min on 2 cores)
    python benchmarks/sweep_speed.py --quick       # a tiny notebook: checks the script works

Appends one row per sweep to ``benchmarks/results/sweep_speed.csv``; ``--quick`` only prints,
so a check never lands beside the measurement.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import bench_runs
import nbformat

from spml_lab.sweeps import parallel, sweep

ROOT = Path(__file__).resolve().parents[1]
RESULTS_CSV = ROOT / "benchmarks" / "results" / "sweep_speed.csv"
NOTEBOOK = ROOT / "notebooks" / "09_training.ipynb"
# the CI-sized run, 60 steps on the CPU, without the shipped run's figures; one value each,
# so the grid's four runs differ by SEED alone
GRID = {"PRESET": ["cpu"], "TRAINED_RUN": [""], "VAL_IMAGES": [4], "SEED": [0, 1, 2, 3]}
QUICK_GRID = {"SEED": [0, 1, 2, 3]}


def tiny_notebook(path):
    """Write a notebook of a few seconds' CPU work per run, for ``--quick``."""
    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": kernelspec})
    parameters = nbformat.v4.new_code_cell('SEED = 0\nOUT_DIR = "unused"')
    parameters.metadata["tags"] = ["parameters"]
    work = (
        "import torch\n"
        "from spml_lab.sweeps import runner\n"
        "torch.manual_seed(SEED)\n"
        "x = torch.randn(256, 256)\n"
        "for _ in range(50):\n"
        "    x = torch.tanh(x @ x.T / 16)\n"
        "runner.write_summary(OUT_DIR, value=float(x.sum()), threads=torch.get_num_threads())"
    )
    nb.cells = [parameters, nbformat.v4.new_code_cell(work)]
    nbformat.write(nb, path)
    return path


def time_sweep(notebook, grid, out_dir, jobs):
    """Run the sweep with `jobs` at a time; return its wall time and its runs."""
    tic = time.perf_counter()
    runs = sweep.run_sweep(notebook, grid, out_dir, jobs=jobs, echo=print)
    seconds = time.perf_counter() - tic
    failed = [f"{run.name}: {run.error}" for run in runs if run.status != "ok"]
    if failed:
        raise RuntimeError(f"the sweep with --jobs {jobs} had failing runs: {failed}")
    return seconds, runs


def measure(notebook, grid, jobs_list):
    """Time the sweep once per entry of `jobs_list`, each from an empty folder."""
    threads = parallel.thread_budget()
    rows, baseline = [], None
    with tempfile.TemporaryDirectory(prefix="sweep_speed_") as work:
        for jobs in jobs_list:
            load = os.getloadavg()[0]
            seconds, runs = time_sweep(notebook, grid, Path(work) / f"jobs{jobs}", jobs)
            baseline = seconds if baseline is None else baseline
            rows.append(
                {
                    "notebook": Path(notebook).name,
                    "runs": len(runs),
                    "jobs": jobs,
                    "executor": parallel.check_options(jobs)[2],
                    "threads_per_run": max(1, threads // jobs),
                    "seconds": round(seconds, 1),
                    "mean_run_seconds": round(sum(r.seconds for r in runs) / len(runs), 1),
                    "speedup": round(baseline / seconds, 2),
                    "cpus": len(os.sched_getaffinity(0)),
                    "load_average_1min_before": round(load, 2),
                }
            )
            print(rows[-1])
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="first = baseline")
    parser.add_argument(
        "--quick", action="store_true", help="a tiny notebook, seconds a run; writes nothing"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    # the sweep shares out OMP_NUM_THREADS when set: make it the cores, the same for every row
    os.environ["OMP_NUM_THREADS"] = str(len(os.sched_getaffinity(0)))
    if args.quick:
        with tempfile.TemporaryDirectory(prefix="sweep_speed_nb_") as folder:
            measure(tiny_notebook(Path(folder) / "tiny.ipynb"), QUICK_GRID, args.jobs)
        return
    rows = measure(NOTEBOOK, GRID, args.jobs)
    if not args.no_write:
        bench_runs.write_csv(RESULTS_CSV, [*bench_runs.read_csv(RESULTS_CSV), *rows])
        print(f"appended to {RESULTS_CSV}")


if __name__ == "__main__":
    main()
