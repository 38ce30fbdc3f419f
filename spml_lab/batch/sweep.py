"""Batch runs of one notebook over a grid of parameter values (`spml-lab sweep`).

A sweep runs a notebook once per combination of parameter values (the cartesian product, in
the order given), each with papermill (`runner.run_notebook`) in its own run folder::

    DIR/
      sweep.json                 the notebook and grid that own the folder (written first)
      summary.csv                one row per run: run, parameters, status, seconds, error, metrics
      A=1,B=x/                   a run folder, named after its values
        NOTEBOOK.ipynb           the executed copy
        figures/*.png            its figures
        sweep_run.json           notebook and values of the run (marks the folder as the sweep's)
        summary.json             written by the notebook (`runner.write_summary`), or
        metrics.csv              written by the trainer when the notebook trains into OUT_DIR

If the notebook has an ``OUT_DIR`` parameter, each run gets its folder there, so whatever it
writes lands beside its executed copy. A run that fails is recorded and the others go on;
``summary.csv`` is rewritten after every run, so a killed sweep keeps what finished, and a
second call with the same arguments skips the runs already done.

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
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from spml_lab.batch import runner
from spml_lab.training import run_folders

__all__ = [
    "Trial",
    "expand_grid",
    "run_name",
    "plan",
    "collect_metrics",
    "run_sweep",
    "format_table",
]

TABLE, MARKER, METRICS = "summary.csv", "sweep_run.json", "metrics.csv"
OWNER = "sweep.json"  # {"notebook": absolute path, "grid": {name: values}, "runs": [names]}
FIXED = ("run", "status", "seconds", "error")  # columns every row has besides its parameters
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
        In grid order; ``done`` runs keep the status and metrics of their earlier row.

    Raises
    ------
    FileNotFoundError
        If `notebook` does not exist.
    FileExistsError
        Unless `force`: if `out_dir` holds a sweep of another notebook, or one whose runs
        this grid leaves out, or a run folder of another notebook; the message names the
        folder, its owner and this sweep.
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
        if row and row["status"] == "ok" and _finished(run.folder / notebook.name):
            run.done, run.status, run.error = True, "ok", ""
            run.seconds = float(row["seconds"]) if row.get("seconds") else None
            skip = {*FIXED, *values}
            run.metrics = {
                k: _number(v) for k, v in row.items() if k not in skip and v not in ("", None)
            }
        elif _foreign(run.folder):  # refuse before anything runs, not half-way through
            raise ValueError(
                f"{run.folder} exists and was not made by a sweep (no {MARKER}); "
                "remove it or choose another output folder"
            )
        elif not force and (maker := _maker(run.folder)) and not _same_notebook(maker, notebook):
            raise FileExistsError(  # e.g. left by a sweep that --force took the folder from
                f"{run.folder} holds a run of {maker} ({MARKER}), not of {notebook}; sweep "
                "into another --out folder, or pass --force (force=True) to replace it"
            )
        runs.append(run)
    return runs


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
        return {k: _number(v) for k, v in rows[-1].items()} if rows else {}
    return {}


def run_sweep(notebook, grid, out_dir, *, force=False, kernel_name=None, echo=print):
    """Run `notebook` once per combination of `grid` and tabulate the results.

    Runs already finished by an earlier sweep into `out_dir` are skipped (unless `force`);
    any other run starts from an empty folder. ``summary.csv`` is rewritten before and after
    every run. A failing run is recorded and the sweep goes on.

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
        Receives one progress line per run.

    Returns
    -------
    runs : list of Trial
        Every run with its status, time, error and metrics.

    Raises
    ------
    ValueError, FileNotFoundError, FileExistsError
        As `plan`, before anything is written: a folder another sweep owns is refused
        unless `force`, and `out_dir/sweep.json` names this notebook and grid before the
        first run.
    """
    notebook, out_dir = Path(notebook), Path(out_dir)
    plan(notebook, grid, out_dir, force=force)  # its refusals come before anything is written
    with run_folders.one_writer(out_dir):  # a second sweep into the folder is refused
        return _run_sweep(notebook, grid, out_dir, force, kernel_name, echo)


def _run_sweep(notebook, grid, out_dir, force, kernel_name, echo):
    runs = plan(notebook, grid, out_dir, force=force)  # again, now as the folder's one writer
    declares_out_dir = "OUT_DIR" in runner.parameter_names(notebook)
    _write_owner(out_dir, notebook, grid, [run.name for run in runs])  # before the first run
    for index, run in enumerate(runs, 1):
        label = f"[{index}/{len(runs)}] {run.name}"
        if run.done:
            echo(f"{label}: skipped (done)")
            continue
        shutil.rmtree(run.folder, ignore_errors=True)  # a rerun never sees stale results
        run.folder.mkdir(parents=True)
        marker = {"notebook": str(notebook.resolve()), "parameters": run.parameters}
        (run.folder / MARKER).write_text(json.dumps(marker, default=repr))
        run.status = "running"  # what a killed sweep leaves in the table
        _write_table(runs, out_dir / TABLE)
        values = dict(run.parameters)
        if declares_out_dir:  # absolute: papermill runs the kernel in the notebook's folder
            values["OUT_DIR"] = str(run.folder.resolve())
        start = time.perf_counter()
        try:
            runner.run_notebook(
                notebook, run.folder, values, kernel_name=kernel_name, progress=False
            )
            run.status = "ok"
        except KeyboardInterrupt:
            run.status, run.error = "interrupted", "KeyboardInterrupt"
            _write_table(runs, out_dir / TABLE)
            raise
        except Exception as error:  # any failure is the run's, not the sweep's
            run.status, run.error = "failed", _describe(error)
        run.seconds = round(time.perf_counter() - start, 1)
        try:  # a failed run may still have logged metrics before it stopped
            run.metrics = collect_metrics(run.folder)
        except ValueError as error:
            run.status, run.error = "failed", str(error)
        clashes = sorted(set(run.metrics) & {*FIXED, *run.parameters})
        if clashes:  # they would overwrite the table's own columns
            run.status, run.metrics = "failed", {}
            run.error = f"metric names {clashes} clash with summary.csv columns; rename them"
        _write_table(runs, out_dir / TABLE)
        echo(f"{label}: {run.status} ({run.seconds:.1f} s){'  ' + run.error if run.error else ''}")
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
    others = [nb for nb in owner["notebooks"] if not _same_notebook(nb, notebook)]
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
    notebooks = sorted({m for folder in out_dir.glob("*") if (m := _maker(folder))})
    if not runs and not notebooks:
        return None
    return {"notebooks": notebooks, "runs": runs, "grid": None, "source": f"its {MARKER} files"}


def _write_owner(out_dir, notebook, grid, names):
    owner = {
        "notebook": str(notebook.resolve()),
        "grid": {name: list(values) for name, values in _pairs(grid)},
        "runs": names,
    }
    path = out_dir / OWNER
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(owner, indent=1, default=repr) + "\n")
    os.replace(tmp, path)


def _maker(folder):
    """Return the notebook a run folder's marker names; None without a (readable) marker."""
    try:
        notebook = json.loads((folder / MARKER).read_text())["notebook"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return notebook if isinstance(notebook, str) else None


def _same_notebook(recorded, notebook):
    """Tell whether a recorded notebook path is `notebook`.

    Sweeps record absolute paths; older ones recorded the path as typed, relative to a
    folder now unknown, so for those the file name decides.
    """
    recorded = Path(recorded)
    if recorded.resolve() == Path(notebook).resolve():
        return True
    return not recorded.is_absolute() and recorded.name == Path(notebook).name


def _read_table(path):
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _metric_names(runs):
    return sorted({m for run in runs for m in run.metrics})


def _finished(executed):
    """Tell whether papermill ran `executed` to the end without an exception."""
    try:
        meta = json.loads(executed.read_text())["metadata"]["papermill"]
    except (OSError, ValueError, KeyError):
        return False
    return meta.get("end_time") is not None and not meta.get("exception")


def _foreign(folder):
    return folder.exists() and any(folder.iterdir()) and not (folder / MARKER).is_file()


def _describe(error):
    """First line of an error; for a notebook cell error, the cell as Jupyter numbers it."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(error, PapermillExecutionError):
        first = (error.evalue or "").strip().splitlines()[:1]
        text = f"{error.ename}: {first[0]}" if first else error.ename
        return f"In [{error.exec_count}]: {text}"
    first = str(error).strip().splitlines()[:1]
    return f"{type(error).__name__}: {first[0]}" if first else type(error).__name__


def _reads_as_literal(text):
    import ast

    try:
        ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False
    return True


def _number(text):
    for kind in (int, float):
        try:
            return kind(text)
        except (TypeError, ValueError):
            pass
    return text


def _cell(value):
    return "" if value is None else value


def _short(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
