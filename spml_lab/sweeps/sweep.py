"""Batch runs of one notebook over a grid of parameter values (`spml-lab sweep`).

A sweep runs a notebook once per combination of parameter values (the cartesian product, in
the order given), each with papermill (`runner.run_notebook`) in its own run folder::

    DIR/
      sweep.json                 the notebook and grid that own the folder (written first)
      summary.csv                one row per run: run, parameters, status, seconds, error, metrics
      A=1,B=x/                   a run folder, named after its values
        NOTEBOOK.ipynb           the executed copy
        figures/*.png            its figures
        sweep_run.json           notebook, values and device of the run (marks the folder as the
                                 sweep's), and its result once it ends
        summary.json             written by the notebook (`runner.write_summary`), or
        metrics.csv              written by the trainer when the notebook trains into OUT_DIR
      .locks/A=1,B=x.lock        held by the process running that run
      submitit/                  submitit's pickles and each job's log (--executor local, slurm)

If the notebook has an ``OUT_DIR`` parameter, each run gets its folder there, so whatever it
writes lands beside its executed copy; a ``DEVICE`` parameter gets the run's device when the
sweep is given ``devices``. A run that fails is recorded and the others go on; ``summary.csv``
is rewritten as each run starts and ends, so a killed sweep keeps what finished, and a second
call with the same arguments skips the runs already done, also those that finished after the
sweep was killed (their ``sweep_run.json`` says so). A run still held by a process of an
earlier sweep (a submitit job outlives the sweep that started it) is refused, not rerun.

``jobs`` runs go side by side, each pinned to a device or a share of the CPU threads, in
processes of submitit's local executor or as Slurm jobs (`parallel`); each run's process does
what `sweep_run.execute_run` says. This module plans the runs and keeps the table.

A sweep folder belongs to one notebook. A sweep of another notebook, or a grid that leaves out
runs of the earlier one (``summary.csv`` would lose them), is refused unless ``force``: the
earlier runs would otherwise be deleted or orphaned. A grid may grow (more values or runs).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import filelock

from spml_lab.data import writers
from spml_lab.sweeps import parallel, runner, sweep_run
from spml_lab.sweeps.sweep_run import DEVICE, FIXED, MARKER, Task, execute_run

__all__ = [
    "Trial",
    "expand_grid",
    "run_name",
    "plan",
    "run_sweep",
    "format_table",
]

TABLE = "summary.csv"
OWNER = "sweep.json"  # {"notebook": absolute path, "grid": {name: values}, "runs": [names]}
MAX_NAME = 120  # characters; keeps DIR/<run>/<notebook> well under path-length limits


@dataclass
class Trial:
    """One trial of a sweep (a point of the grid, run as a notebook): values, folder, result.

    Attributes
    ----------
    name : str
        Folder name, from `run_name`.
    parameters : dict
        The swept values (``OUT_DIR`` not included).
    folder : Path
        ``DIR/name``.
    done : bool
        True when a previous sweep finished it and it will be skipped.
    status : str
        ``"pending"``, ``"running"``, ``"ok"``, ``"failed"`` or ``"interrupted"``.
    seconds : float or None
        Wall time of the run.
    error : str
        First line of the error of a failed run, with the cell (``In [N]``) when known.
    metrics : dict
        Final numbers: the run's summary.json, else the last row of its metrics.csv.
    """

    name: str
    parameters: dict
    folder: Path
    done: bool = False
    status: str = "pending"
    seconds: float | None = None
    error: str = ""
    metrics: dict = field(default_factory=dict)


def expand_grid(grid):
    """All combinations of the values in `grid`, the first parameter varying slowest.

    Parameters
    ----------
    grid : dict or list of (str, list) pairs
        Parameter name -> the values to try, in order.

    Returns
    -------
    combinations : list of dict
        One dict per run, keys in the grid's order.

    Raises
    ------
    ValueError
        If the grid is empty, a name repeats, or a name has no values.

    Examples
    --------
    >>> expand_grid({"A": [1, 2], "B": ["x", "y"]})
    [{'A': 1, 'B': 'x'}, {'A': 1, 'B': 'y'}, {'A': 2, 'B': 'x'}, {'A': 2, 'B': 'y'}]
    """
    pairs = _pairs(grid)
    if not pairs:
        raise ValueError("grid: give at least one parameter and its values (-p NAME V1 V2 ...)")
    names = [name for name, _ in pairs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"grid: parameters {repeated} are given more than once")
    empty = [name for name, values in pairs if len(values) == 0]
    if empty:
        raise ValueError(f"grid: parameters {empty} have no values")
    combinations = itertools.product(*(values for _, values in pairs))
    return [dict(zip(names, combo, strict=True)) for combo in combinations]


def run_name(parameters):
    """Name the folder of one combination of values: readable and filesystem-safe.

    Strings are written bare, other values as their ``repr``. When that is ambiguous or
    unsafe (characters outside ``[A-Za-z0-9._+-]``, a string that reads as a number, a very
    long name), each run of unsafe characters becomes one ``_`` and a short hash of the exact
    values is appended, so distinct combinations never share a folder.

    Parameters
    ----------
    parameters : dict
        Parameter name -> value.

    Returns
    -------
    name : str
        ``"NAME=VALUE,NAME=VALUE"`` (plus ``"~HASH"`` when needed).

    Examples
    --------
    >>> run_name({"annotation": "points", "lr": 0.01})
    'annotation=points,lr=0.01'
    >>> run_name({"size": [64, 64]})
    'size=64_64~44162250'
    """
    parts, exact = [], True
    for key, value in parameters.items():
        text = value if isinstance(value, str) else repr(value)
        safe = re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_")
        # a string like "1" would print as the number 1: mark it as different
        exact &= safe == text and not (isinstance(value, str) and _reads_as_literal(value))
        parts.append(f"{key}={safe}")
    name = ",".join(parts)
    if exact and len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha1(repr(list(parameters.items())).encode()).hexdigest()[:8]
    return f"{name[:MAX_NAME]}~{digest}"


def plan(notebook, grid, out_dir, *, force=False):
    """Check a sweep and list its runs, without running anything.

    Parameters
    ----------
    notebook : str or Path
        Notebook with a ``parameters`` cell.
    grid : dict or list of (str, list) pairs
        Parameter name -> values (see `expand_grid`).
    out_dir : str or Path
        Sweep folder; a ``summary.csv`` there from an earlier sweep marks finished runs.
    force : bool, optional
        Mark no run as done (all run again), and let this notebook and grid take over a
        folder that another sweep owns.

    Returns
    -------
    runs : list of Trial
        In grid order; ``done`` runs keep the status and metrics of their earlier row, or of
        their ``sweep_run.json`` when they finished after the table was last written.

    Raises
    ------
    FileNotFoundError
        If `notebook` does not exist.
    FileExistsError
        Unless `force`: if `out_dir` holds a sweep of another notebook, or one whose runs
        this grid leaves out, or a run folder of another notebook; the message names the
        folder, its owner and this sweep. Even with `force`: if a run to do is still being
        run by another process.
    ValueError
        If a parameter is not in the notebook's ``parameters`` cell, ``OUT_DIR`` is swept,
        the grid is malformed, a run folder was not made by a sweep, or ``sweep.json`` is
        damaged.
    """
    notebook, out_dir = Path(notebook), Path(out_dir)
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook not found: {notebook}")
    known = runner.parameter_names(notebook)
    combinations = expand_grid(grid)
    unknown = [name for name in combinations[0] if name not in known]
    if unknown:
        raise ValueError(
            f"{notebook}: parameters {unknown} are not defined in its `parameters` cell "
            f"(known: {', '.join(known)})"
        )
    if "OUT_DIR" in combinations[0]:
        raise ValueError("OUT_DIR cannot be swept: the sweep sets it to each run's folder")
    reserved = [name for name in combinations[0] if name in FIXED]
    if reserved:
        raise ValueError(f"parameters {reserved} clash with the summary.csv columns {FIXED}")
    if not force:  # before anything runs: a run replaced is a run lost
        _check_owner(out_dir, notebook, grid, [run_name(values) for values in combinations])
    previous = {} if force else {row["run"]: row for row in _read_table(out_dir / TABLE)}
    runs = []
    for values in combinations:
        run = Trial(run_name(values), values, out_dir / run_name(values))
        row = previous.get(run.name)
        finished = sweep_run.finished(run.folder / notebook.name)
        recorded = None if force else sweep_run.recorded(run.folder, notebook)
        if row and row["status"] == "ok" and finished:
            run.done, run.status, run.error = True, "ok", ""
            run.seconds = float(row["seconds"]) if row.get("seconds") else None
            skip = {*FIXED, *values}
            run.metrics = {
                k: sweep_run.parse_number(v)
                for k, v in row.items()
                if k not in skip and v not in ("", None)
            }
        elif recorded and recorded.get("status") == "ok" and finished:
            # it ended after its sweep stopped writing the table (a job outlives its sweep)
            run.done, run.status, run.error = True, "ok", ""
            run.seconds, run.metrics = recorded.get("seconds"), dict(recorded.get("metrics", {}))
        elif _foreign(run.folder):  # refuse before anything runs, not half-way through
            raise ValueError(
                f"{run.folder} exists and was not made by a sweep (no {MARKER}); "
                "remove it or choose another output folder"
            )
        elif (
            not force
            and (maker := sweep_run.maker(run.folder))
            and not sweep_run.same_notebook(maker, notebook)
        ):
            raise FileExistsError(  # e.g. left by a sweep that --force took the folder from
                f"{run.folder} holds a run of {maker} ({MARKER}), not of {notebook}; sweep "
                "into another --out folder, or pass --force (force=True) to replace it"
            )
        if not run.done and (holder := sweep_run.holder(out_dir, run.name)):
            raise FileExistsError(  # rerunning it would delete the folder under that process
                f"{run.folder} is still being run by {holder}, perhaps a job of an earlier "
                "sweep that was stopped; wait for it to end, or stop it, then sweep again"
            )
        runs.append(run)
    return runs


def run_sweep(
    notebook,
    grid,
    out_dir,
    *,
    force=False,
    kernel_name=None,
    echo=print,
    jobs=None,
    devices=None,
    executor=None,
    slurm=None,
):
    """Run `notebook` once per combination of `grid` and tabulate the results.

    Runs already finished by an earlier sweep into `out_dir` are skipped (unless `force`);
    any other run starts from an empty folder. ``summary.csv`` is rewritten as each run
    starts and ends. A failing run is recorded and the sweep goes on.

    Parameters
    ----------
    notebook : str or Path
        Notebook with a ``parameters`` cell.
    grid : dict or list of (str, list) pairs
        Parameter name -> values (see `expand_grid`).
    out_dir : str or Path
        Sweep folder (created).
    force : bool, optional
        Run every combination again; take the folder over from another notebook or grid
        (their runs of the same names are replaced, the others stay on disk, out of the
        table).
    kernel_name : str, optional
        Jupyter kernel; default: the notebook's.
    echo : callable, optional
        Receives one progress line per run, as it ends.
    jobs : int, optional
        Runs at a time; default: one per device, else 1.
    devices : list of str, optional
        ``"cpu"`` or ``"cuda:N"``, each once; the ``jobs`` slots take them round-robin, and a
        run sees only its slot's GPU (``CUDA_VISIBLE_DEVICES``; a ``DEVICE`` parameter of the
        notebook is set to ``"cuda:0"`` or ``"cpu"``). Each run also gets ``1 / jobs`` of the
        CPU threads (`parallel.thread_budget`).
    executor : {"inline", "local", "slurm"}, optional
        Where runs execute (see `parallel`); default ``"inline"`` for one job, else
        ``"local"`` (submitit's local executor).
    slurm : dict, optional
        `submitit.SlurmExecutor` parameters for ``executor="slurm"``: ``time`` (minutes,
        required), ``partition``, ``gpus_per_node``, ``cpus_per_task``, ``account``...

    Returns
    -------
    runs : list of Trial
        Every run with its status, time, error and metrics.

    Raises
    ------
    ValueError, FileNotFoundError, FileExistsError
        As `plan` and `parallel.check_options`, before anything is written: a folder another
        sweep owns is refused unless `force`, and `out_dir/sweep.json` names this notebook
        and grid before the first run.
    KeyboardInterrupt
        After marking the runs in flight ``interrupted`` and cancelling their jobs.
    """
    options = parallel.check_options(jobs, devices, executor, slurm)
    notebook, out_dir = Path(notebook), Path(out_dir)
    runs = plan(notebook, grid, out_dir, force=force)  # its refusals come before any write
    if options[1] and DEVICE in runs[0].parameters:
        raise ValueError(f"{DEVICE} cannot be swept with --devices: the sweep sets it per run")
    with writers.one_writer(out_dir):  # a second sweep into the folder is refused
        return _run_sweep(notebook, grid, out_dir, force, kernel_name, echo, *options)


def _run_sweep(notebook, grid, out_dir, force, kernel_name, echo, jobs, devices, executor, slurm):
    runs = plan(notebook, grid, out_dir, force=force)  # again, now as the folder's one writer
    _write_owner(out_dir, notebook, grid, [run.name for run in runs])  # before the first run
    known = runner.parameter_names(notebook)
    labels = {run.name: f"[{i}/{len(runs)}] {run.name}" for i, run in enumerate(runs, 1)}
    for run in runs:
        if run.done:
            echo(f"{labels[run.name]}: skipped (done)")
    todo = {run.name: run for run in runs if not run.done}
    tasks = [
        Task(
            name=run.name,
            notebook=notebook.resolve(),
            folder=run.folder.resolve(),
            parameters=run.parameters,
            kernel_name=kernel_name,
            lock=sweep_run.lock_path(out_dir, run.name).resolve(),
            sets_out_dir="OUT_DIR" in known,
            sets_device=DEVICE in known,
        )
        for run in todo.values()
    ]
    if not tasks:
        return runs
    if executor != "inline":
        where = f" on {', '.join(devices)}" if devices else ""
        count = f"{len(tasks)} run{'s' if len(tasks) > 1 else ''}"
        echo(f"{count}, {jobs} at a time{where}, {executor} executor")
    # threads of this process record runs as they start and end: one writes the table at a time
    table = filelock.FileLock(out_dir / f".{TABLE}.lock")

    def started(task, slot):
        with table:
            todo[task.name].status = "running"  # what a killed sweep leaves in the table
            _write_table(runs, out_dir / TABLE)

    def finished(task, result, error):
        run = todo[task.name]
        with table:
            if error is None:
                run.status, run.seconds = result["status"], result["seconds"]
                run.error, run.metrics = result["error"], result["metrics"]
            else:  # the run's process failed outside the notebook (a job killed, a lock held)
                run.status, run.error = "failed", parallel.describe_failure(error)
            _write_table(runs, out_dir / TABLE)
        seconds = "" if run.seconds is None else f" ({run.seconds:.1f} s)"
        echo(f"{labels[run.name]}: {run.status}{seconds}{'  ' + run.error if run.error else ''}")

    slots = parallel.slots(jobs, devices, executor=executor)
    submitter = None
    if executor != "inline":
        submitter = parallel.make_executor(executor, out_dir / parallel.SUBMITIT_FOLDER, slurm)
    try:
        parallel.dispatch(
            execute_run, tasks, slots=slots, executor=submitter, started=started, finished=finished
        )
    except KeyboardInterrupt:
        with table:
            for run in todo.values():
                if run.status == "running":
                    run.status, run.error = "interrupted", "KeyboardInterrupt"
            _write_table(runs, out_dir / TABLE)
        raise
    return runs


def format_table(runs, *, done_label="skipped (done)"):
    """Format runs as a fixed-width text table: name, status, seconds and every metric.

    Parameters
    ----------
    runs : list of Trial
        As returned by `run_sweep` or `plan`.
    done_label : str, optional
        Status shown for runs skipped because an earlier sweep finished them.

    Returns
    -------
    text : str
        Header line plus one line per run.

    Examples
    --------
    >>> from pathlib import Path
    >>> print(format_table([Trial("A=1", {"A": 1}, Path("A=1"), status="ok", seconds=2.0,
    ...                         metrics={"miou": 0.123456})]))
    run  status  seconds  miou
    A=1  ok      2.0      0.1235
    """
    metrics = _metric_names(runs)
    header = ["run", "status", "seconds", *metrics]
    lines = [header]
    for run in runs:
        status = done_label if run.done else run.status
        seconds = "" if run.seconds is None else f"{run.seconds:.1f}"
        lines.append([run.name, status, seconds, *(_short(run.metrics.get(m)) for m in metrics)])
    widths = [max(len(line[c]) for line in lines) for c in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


# ---------------------------------------------------------------------- helpers


def _write_table(runs, path):
    """Rewrite summary.csv atomically: run, parameters, status, seconds, error, metrics."""
    names = list(runs[0].parameters)
    metrics = _metric_names(runs)
    columns = ["run", *names, "status", "seconds", "error", *metrics]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for run in runs:
            seconds = "" if run.seconds is None else run.seconds
            row = [run.name, *run.parameters.values(), run.status, seconds, run.error]
            writer.writerow(row + [_cell(run.metrics.get(m)) for m in metrics])
    os.replace(tmp, path)


def _pairs(grid):
    return list(grid.items()) if isinstance(grid, dict) else [(n, list(v)) for n, v in grid]


def _describe_grid(grid):
    return ", ".join(f"{name}={list(values)!r}" for name, values in _pairs(grid))


def _check_owner(out_dir, notebook, grid, names):
    """Refuse a sweep that would delete or orphan the runs of the sweep owning `out_dir`."""
    owner = _read_owner(out_dir)
    if owner is None:
        return
    others = [nb for nb in owner["notebooks"] if not sweep_run.same_notebook(nb, notebook)]
    if others:
        raise FileExistsError(
            f"{out_dir} holds a sweep of {others[0]} ({owner['source']}); a sweep of "
            f"{notebook} there would replace its runs and its {TABLE}: sweep into another "
            f"--out folder, or pass --force (force=True) to let {notebook.name} take it over"
        )
    missing = [name for name in owner["runs"] if name not in set(names)]
    if missing:
        earlier = _describe_grid(owner["grid"]) if owner["grid"] else f"runs {owner['runs']}"
        shown = ", ".join(missing[:4])
        if len(missing) > 4:
            shown += f" and {len(missing) - 4} more"
        raise FileExistsError(
            f"{out_dir} holds a sweep of {notebook.name} over {earlier} ({owner['source']}); "
            f"the grid {_describe_grid(grid)} leaves out its runs {shown}, which {TABLE} "
            "would lose: give a grid that includes them (adding values is fine), sweep into "
            "another --out folder, or pass --force (force=True) to sweep this grid there"
        )


def _read_owner(out_dir):
    """Read what owns a sweep folder: its sweep.json, else (older sweeps) table and markers.

    Returns None for a folder no sweep has written; else a dict with ``notebooks`` (paths as
    recorded), ``runs`` (names), ``grid`` (or None) and ``source`` (the file that says so).
    """
    path = out_dir / OWNER
    if path.is_file():
        fix = f"it records which notebook and grid own {out_dir}: restore it, or delete it"
        try:
            owner = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not valid JSON ({error}); {fix}") from None
        valid = (
            isinstance(owner, dict)
            and isinstance(owner.get("notebook"), str)
            and isinstance(owner.get("runs"), list)
            and isinstance(owner.get("grid"), dict)
        )
        if not valid:
            raise ValueError(f"{path}: not an object with notebook, grid and runs; {fix}")
        return {**owner, "notebooks": [owner["notebook"]], "source": OWNER}
    # a folder of a sweep from before sweep.json: the table lists its runs, each run's
    # marker names its notebook
    runs = [row["run"] for row in _read_table(out_dir / TABLE) if row.get("run")]
    notebooks = sorted({m for folder in out_dir.glob("*") if (m := sweep_run.maker(folder))})
    if not runs and not notebooks:
        return None
    return {"notebooks": notebooks, "runs": runs, "grid": None, "source": f"its {MARKER} files"}


def _write_owner(out_dir, notebook, grid, names):
    owner = {
        "notebook": str(notebook.resolve()),
        "grid": {name: list(values) for name, values in _pairs(grid)},
        "runs": names,
    }
    sweep_run.write_json(out_dir / OWNER, owner)


def _read_table(path):
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _metric_names(runs):
    return sorted({m for run in runs for m in run.metrics})


def _foreign(folder):
    return folder.exists() and any(folder.iterdir()) and not (folder / MARKER).is_file()


def _reads_as_literal(text):
    import ast

    try:
        ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False
    return True


def _cell(value):
    return "" if value is None else value


def _short(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
