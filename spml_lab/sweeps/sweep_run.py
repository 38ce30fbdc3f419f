"""One run of a sweep: what the process that executes it does, and what it leaves behind.

`execute_run` is what each run's process calls (this one inline, a submitit job otherwise):
with the run's lock held (``DIR/.locks/NAME.lock``), it empties the run folder, marks it
(``sweep_run.json``: notebook, values, device, host and pid), runs the notebook pinned to its
slot, and writes the result into the marker before returning it. The marker and the lock let a
later sweep tell a run that finished, or one still running, after the sweep that started it
was stopped (`recorded`, `holder`).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import filelock

from spml_lab.sweeps import parallel, runner

__all__ = ["Task", "execute_run", "collect_metrics"]

MARKER, METRICS = "sweep_run.json", "metrics.csv"
LOCKS = ".locks"  # DIR/.locks/<run>.lock: held by the process running that run
DEVICE = "DEVICE"  # a notebook parameter of this name gets the run's device
# columns every summary.csv row has besides its parameters; no metric may take their names
FIXED = ("run", "status", "seconds", "error")


@dataclass(frozen=True)
class Task:
    """What a process needs to execute one run of a sweep (pickled for submitit's jobs).

    Attributes
    ----------
    name : str
        The run's name (`run_name`).
    notebook, folder, lock : Path
        Absolute: the notebook, the run folder, and the lock file held while it runs.
    parameters : dict
        The swept values.
    kernel_name : str or None
        Jupyter kernel.
    sets_out_dir, sets_device : bool
        Whether the notebook declares ``OUT_DIR`` / ``DEVICE``, which the run then sets.
    """

    name: str
    notebook: Path
    folder: Path
    parameters: dict
    kernel_name: str | None
    lock: Path
    sets_out_dir: bool
    sets_device: bool


def execute_run(task, slot=None):
    """Execute one run of a sweep in its folder; what each process or Slurm job calls.

    The run's lock is held throughout. The folder is emptied, marked (``sweep_run.json``),
    the notebook runs pinned to `slot`, and the result is written to the marker as well as
    returned, so a sweep that was stopped meanwhile finds it.

    Parameters
    ----------
    task : Task
    slot : parallel.Slot, optional
        Device and environment of the run; None: as this process is.

    Returns
    -------
    result : dict
        ``status`` (``"ok"`` or ``"failed"``), ``seconds``, ``error`` and ``metrics``.

    Raises
    ------
    FileExistsError
        If another process holds the run's lock (nothing is touched).
    """
    task.lock.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(task.lock)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        who = holder(task.lock.parent.parent, task.name) or "another process"
        raise FileExistsError(f"{task.folder} is already being run by {who}") from None
    try:
        return _execute(task, slot)
    finally:
        lock.release()


def _execute(task, slot):
    shutil.rmtree(task.folder, ignore_errors=True)  # a rerun never sees stale results
    task.folder.mkdir(parents=True)
    marker = {
        "notebook": str(task.notebook),
        "parameters": task.parameters,
        "device": slot.device if slot else None,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "result": None,
    }
    write_json(task.folder / MARKER, marker)
    values = dict(task.parameters)
    if task.sets_out_dir:  # absolute: papermill runs the kernel in the notebook's folder
        values["OUT_DIR"] = str(task.folder)
    if task.sets_device and slot is not None and slot.device is not None:
        values[DEVICE] = slot.notebook_device
    start = time.perf_counter()
    try:
        with parallel.pinned(slot):
            runner.run_notebook(
                task.notebook, task.folder, values, kernel_name=task.kernel_name, progress=False
            )
        status, error = "ok", ""
    except Exception as failure:  # any failure is the run's, not the sweep's
        status, error = "failed", describe(failure)
    seconds = round(time.perf_counter() - start, 1)
    try:  # a failed run may still have logged metrics before it stopped
        metrics = collect_metrics(task.folder)
    except ValueError as failure:
        status, error, metrics = "failed", str(failure), {}
    clashes = sorted(set(metrics) & {*FIXED, *task.parameters})
    if clashes:  # they would overwrite the table's own columns
        status, metrics = "failed", {}
        error = f"metric names {clashes} clash with summary.csv columns; rename them"
    result = {"status": status, "seconds": seconds, "error": error, "metrics": metrics}
    write_json(task.folder / MARKER, {**marker, "result": result})
    return result


def collect_metrics(run_dir):
    """Read a run's final numbers: its ``summary.json``, else its last ``metrics.csv`` row.

    Parameters
    ----------
    run_dir : str or Path
        A run folder.

    Returns
    -------
    metrics : dict
        Name -> value (numbers parsed from the CSV); empty when the run wrote neither file.

    Raises
    ------
    ValueError
        If ``summary.json`` is not a flat JSON object.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = runner.write_summary(folder, miou=0.25)
    >>> collect_metrics(folder)
    {'miou': 0.25}
    """
    run_dir = Path(run_dir)
    summary = run_dir / runner.SUMMARY
    if summary.is_file():
        try:
            values = json.loads(summary.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{summary}: not valid JSON ({error})") from None
        flat = isinstance(values, dict) and not any(
            isinstance(v, (dict, list)) for v in values.values()
        )
        if not flat:
            raise ValueError(f"{summary}: must be a flat object of numbers and strings")
        return values
    if (run_dir / METRICS).is_file():
        with open(run_dir / METRICS, newline="") as handle:
            rows = list(csv.DictReader(handle))
        return {k: parse_number(v) for k, v in rows[-1].items()} if rows else {}
    return {}


def lock_path(out_dir, name):
    """Return the lock file of run `name` of the sweep in `out_dir`."""
    return Path(out_dir) / LOCKS / f"{name}.lock"


def holder(out_dir, name):
    """Say which process holds a run's lock (its marker's pid and host); None when none does."""
    path = lock_path(out_dir, name)
    if not path.is_file():  # never run: nothing holds it (and no lock file is made to check)
        return None
    lock = filelock.FileLock(path)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        try:
            marker = json.loads((Path(out_dir) / name / MARKER).read_text())
            return f"process {marker['pid']} on {marker['host']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"
    lock.release()
    return None


def recorded(folder, notebook):
    """Return the result a run's marker records, if the marker is this notebook's; else None."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or not same_notebook(str(marker.get("notebook")), notebook):
        return None
    result = marker.get("result")
    return result if isinstance(result, dict) else None


def maker(folder):
    """Return the notebook a run folder's marker names; None without a (readable) marker."""
    try:
        notebook = json.loads((folder / MARKER).read_text())["notebook"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return notebook if isinstance(notebook, str) else None


def same_notebook(path, notebook):
    """Tell whether a recorded notebook path is `notebook`.

    Sweeps record absolute paths; older ones recorded the path as typed, relative to a
    folder now unknown, so for those the file name decides.
    """
    path = Path(path)
    if path.resolve() == Path(notebook).resolve():
        return True
    return not path.is_absolute() and path.name == Path(notebook).name


def finished(executed):
    """Tell whether papermill ran `executed` to the end without an exception."""
    try:
        meta = json.loads(executed.read_text())["metadata"]["papermill"]
    except (OSError, ValueError, KeyError):
        return False
    return meta.get("end_time") is not None and not meta.get("exception")


def describe(error):
    """First line of an error; for a notebook cell error, the cell as Jupyter numbers it."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(error, PapermillExecutionError):
        first = (error.evalue or "").strip().splitlines()[:1]
        text = f"{error.ename}: {first[0]}" if first else error.ename
        return f"In [{error.exec_count}]: {text}"
    first = str(error).strip().splitlines()[:1]
    return f"{type(error).__name__}: {first[0]}" if first else type(error).__name__


def write_json(path, content):
    """Write JSON to a temporary file and rename it: a killed process leaves the old or new."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(content, indent=1, default=repr) + "\n")
    os.replace(tmp, path)


def parse_number(text):
    """Read a CSV cell as an int or float when it is one; else return it unchanged."""
    for kind in (int, float):
        try:
            return kind(text)
        except (TypeError, ValueError):
            pass
    return text
