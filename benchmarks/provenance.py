"""Where a benchmark's numbers came from: the commit and the CPU, for the CSVs that keep them.

Standard library only, so that `gpu.py` can use it before anything else is imported.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git_commit(*, short=False, mark_changes=False):
    """Return the repository's commit, or None where git cannot tell.

    Parameters
    ----------
    short : bool, optional
        The abbreviated hash instead of the full one.
    mark_changes : bool, optional
        Append ``+changes`` when tracked files differ from the commit.
    """
    try:
        head = subprocess.run(["git", "rev-parse", *(["--short"] if short else []), "HEAD"],
                              cwd=ROOT, capture_output=True, text=True, timeout=10)  # fmt: skip
        dirty = mark_changes and subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = head.stdout.strip() or None
    return commit + "+changes" if commit and dirty else commit


def cpu_name():
    """Return the CPU's model name (Linux), else what `platform` knows of it."""
    try:
        with open("/proc/cpuinfo") as info:
            return (
                next(line for line in info if line.startswith("model name")).split(":")[1].strip()
            )
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
