"""Run a benchmark command and keep its wall-clock time in ``benchmarks/results/wall_times.csv``.

How long a whole benchmark takes is itself a result (the reduced accuracy benchmark must fit a
CI-sized machine). Each call appends one row: the command, the commit it ran at, the wall
clock, the CPU time of the command and its children, their peak resident memory, the load
average before and after (a busy machine stretches the wall clock), and the exit status::

    python benchmarks/timed.py -- python benchmarks/accuracy.py --reduced --jobs 2 --work W

The row is written only when the command succeeds: a failed or interrupted run did not measure
the benchmark.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import provenance

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ("started", "command", "commit", "wall_s", "cpu_s", "peak_rss_mib", "cores",
           "machine", "load_before", "load_after", "clock_source")  # fmt: skip


def append_row(path, row):
    """Append `row` (keys `COLUMNS`) to the CSV at `path`, writing the header when it is new."""
    path = Path(path)
    new = not path.is_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "wall_times.csv")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to time after --")
    row = {"started": datetime.datetime.now().isoformat(timespec="seconds"),
           "command": " ".join(command),
           "commit": provenance.git_commit(short=True, mark_changes=True) or "",
           "load_before": round(os.getloadavg()[0], 2)}  # fmt: skip
    start = time.perf_counter()
    status = subprocess.call(command)
    wall = time.perf_counter() - start
    if status != 0:
        print(f"{command[0]} exited {status}: no row written", file=sys.stderr)
        return status
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    row.update(
        wall_s=round(wall, 1), cpu_s=round(usage.ru_utime + usage.ru_stime, 1),
        peak_rss_mib=round(usage.ru_maxrss / 1024), cores=os.cpu_count(),
        machine=provenance.cpu_name(),
        load_after=round(os.getloadavg()[0], 2), clock_source="timed.py",
    )  # fmt: skip
    append_row(args.out, row)
    print(f"{wall / 60:.1f} min wall, {row['cpu_s'] / 60:.1f} min CPU -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
