"""Run notebooks headlessly with papermill and keep what they show.

`run_notebook` executes a notebook with injected parameters (papermill writes them in a cell
right after the `parameters` cell) and `export_figures` saves every PNG figure of an executed
notebook next to it, so a batch run leaves pictures a person can open without Jupyter.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

# a run's final numbers, in the run folder's layout; `spml-lab sweep` collects it
from spml_lab.training.runs import SUMMARY

__all__ = ["run_notebook", "export_figures", "write_summary"]


def run_notebook(notebook, out_dir, parameters=None, *, kernel_name=None, progress=True):
    """Execute `notebook` with papermill and write the executed copy and its figures.

    Parameters
    ----------
    notebook : str or Path
        The notebook to run (stored without outputs, first code cell tagged ``parameters``).
    out_dir : str or Path
        Folder that receives the executed notebook (same file name) and a ``figures/`` folder.
    parameters : dict, optional
        Values injected after the ``parameters`` cell; names must exist in that cell.
    kernel_name : str, optional
        Jupyter kernel; default: the one named in the notebook.
    progress : bool, optional
        Show papermill's cell progress bar.

    Returns
    -------
    executed : Path
        The executed notebook.

    Raises
    ------
    FileNotFoundError
        If `notebook` does not exist.
    ValueError
        If the notebook is not valid JSON or not a notebook, its first code cell is not a
        ``parameters`` cell of Python, or a parameter name is not defined in that cell; the
        message names the file, and nothing is written.
    """
    import papermill

    notebook = Path(notebook)
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook not found: {notebook}")
    parameters = dict(parameters or {})
    known = parameter_names(notebook)  # also refuses a damaged notebook, before out_dir exists
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise ValueError(
            f"{notebook}: parameters {unknown} are not defined in its `parameters` cell "
            f"(known: {known})"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / notebook.name
    papermill.execute_notebook(
        str(notebook),
        str(executed),
        parameters=parameters,
        kernel_name=kernel_name,
        progress_bar=progress,
        cwd=str(notebook.parent),
    )
    export_figures(executed, out_dir / "figures")
    return executed


def parameter_names(notebook):
    """Names assigned in the notebook's ``parameters`` cell.

    Parameters
    ----------
    notebook : str or Path
        Notebook file.

    Returns
    -------
    names : list of str
        Assigned names in order of appearance.

    Raises
    ------
    ValueError
        If the file is not a notebook (not JSON, no list of cells), or its first code cell is
        not tagged ``parameters`` or is not valid Python.
    """
    import ast

    cell = _first_code_cell(notebook)
    if "parameters" not in cell.get("metadata", {}).get("tags", []):
        raise ValueError(f"{notebook}: the first code cell is not tagged `parameters`")
    try:
        tree = ast.parse(_source(cell))
    except SyntaxError as error:
        raise ValueError(
            f"{notebook}: its `parameters` cell is not valid Python "
            f"({error.msg}, line {error.lineno})"
        ) from None
    return [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets]


def export_figures(executed, out_dir):
    """Save every PNG output of an executed notebook as ``<stem>_cellNN_K.png``.

    Parameters
    ----------
    executed : str or Path
        An executed notebook (with outputs).
    out_dir : str or Path
        Folder for the PNG files (created).

    Returns
    -------
    paths : list of Path
        The files written, in cell order.
    """
    executed, out_dir = Path(executed), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = json.loads(executed.read_text())["cells"]
    paths = []
    for index, cell in enumerate(cells):
        pngs = [
            o["data"]["image/png"]
            for o in cell.get("outputs", [])
            if "image/png" in o.get("data", {})
        ]
        for k, data in enumerate(pngs):
            path = out_dir / f"{executed.stem}_cell{index:02d}_{k}.png"
            path.write_bytes(base64.b64decode(data))
            paths.append(path)
    return paths


def write_summary(out_dir, /, **values):
    """Write a run's final numbers to ``out_dir/summary.json``, atomically.

    Notebooks call it once at the end (``runner.write_summary(OUT_DIR, miou=miou)``) so that
    `spml-lab sweep` can put their results in its table. The file is written to a temporary
    name and renamed, so a killed run never leaves a half-written summary. A ``notebook=NAME``
    value (`spml_lab.training.runs.OWNER`) marks a finished run as that notebook's own: the
    notebook may then replace it when it reruns with another config
    (`spml_lab.training.run_folders.prepare_run_folder`); nothing else is ever replaced.

    Parameters
    ----------
    out_dir : str or Path
        The run folder (created if absent); positional only, so ``out_dir=...`` can be a value.
    **values : int, float, bool, str or None
        Flat name -> value pairs; numpy and torch scalars are converted with ``.item()``.
        A second call replaces the file (values are not merged).

    Returns
    -------
    path : Path
        The written ``summary.json``.

    Raises
    ------
    ValueError
        If no value is given, or a value is not a scalar number or string.

    Examples
    --------
    >>> import json, tempfile
    >>> path = write_summary(tempfile.mkdtemp(), miou=0.5, annotation="points")
    >>> json.loads(path.read_text())
    {'miou': 0.5, 'annotation': 'points'}
    """
    if not values:
        raise ValueError("write_summary: give at least one name=value")
    summary = {}
    for name, value in values.items():
        if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
            value = value.item()  # numpy / torch scalar -> Python number
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise ValueError(
                f"write_summary: {name}={value!r} is a {type(value).__name__}; "
                "summary values must be numbers or strings (a flat table row)"
            )
        summary[name] = value
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / SUMMARY
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _first_code_cell(notebook):
    cells = _read_cells(notebook)
    code = [c for c in cells if c.get("cell_type") == "code"]
    if not code:
        raise ValueError(f"{notebook}: has no code cell")
    return code[0]


def _read_cells(notebook):
    """Read the cells of a notebook file; name the file and what is wrong when it is none."""
    try:
        content = json.loads(Path(notebook).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{notebook}: not valid JSON ({error}); is it a notebook?") from None
    cells = content.get("cells") if isinstance(content, dict) else None
    if not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
        raise ValueError(f"{notebook}: not a notebook (no list of cells)")
    return cells


def _source(cell):
    source = cell.get("source", "")
    return source if isinstance(source, str) else "".join(source)
