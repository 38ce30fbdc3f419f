"""A sweep folder belongs to one notebook and grid; `run-notebook` names a corrupt notebook.

One real papermill sweep (a single run of a two-cell notebook) is made once; every test works
on a copy of it and checks that a refused sweep leaves each file as it was.
"""

import json
import shutil

import filelock
import nbformat
import pytest

from spml_lab import cli
from spml_lab.sweeps import runner, sweep, sweep_run

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def _notebook(path):
    """A notebook with parameters A, B, OUT_DIR that leaves ``summary.json`` in OUT_DIR."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": KERNELSPEC})
    parameters = nbformat.v4.new_code_cell('A = 1\nB = "x"\nOUT_DIR = "unused"')
    parameters.metadata["tags"] = ["parameters"]
    summary = "from spml_lab.sweeps import runner\nrunner.write_summary(OUT_DIR, score=A)"
    nb.cells = [parameters, nbformat.v4.new_code_cell(summary)]
    nbformat.write(nb, path)
    return path


def _files(folder):
    """Every file under `folder` -> its bytes: what a refused sweep must leave unchanged."""
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A finished sweep of first.ipynb over A = [1] (one papermill run), and second.ipynb."""
    root = tmp_path_factory.mktemp("sweeps")
    first = _notebook(root / "first.ipynb")
    _notebook(root / "second.ipynb")
    runs = sweep.run_sweep(first, {"A": [1]}, root / "sweep", echo=lambda _: None)
    assert [run.status for run in runs] == ["ok"]
    return root


@pytest.fixture
def sweep_copy(swept, tmp_path):
    out = tmp_path / "sweep"
    shutil.copytree(swept / "sweep", out)
    return out


def test_another_notebook_is_refused_and_the_earlier_runs_stay(swept, sweep_copy, capsys):
    before = _files(sweep_copy)
    second = swept / "second.ipynb"
    status = cli.main(["sweep", str(second), "-p", "A", "1", "--out", str(sweep_copy)])
    err = capsys.readouterr().err
    assert status == 2
    assert str(sweep_copy) in err and "first.ipynb" in err and "second.ipynb" in err
    assert _files(sweep_copy) == before
    with pytest.raises(FileExistsError, match="first.ipynb"):  # the dry run says so too
        sweep.plan(second, {"A": [1]}, sweep_copy)


def test_a_folder_from_before_sweep_json_is_owned_by_its_runs_notebook(swept, sweep_copy):
    (sweep_copy / "sweep.json").unlink(missing_ok=True)  # as a sweep of an older version left it
    before = _files(sweep_copy)
    with pytest.raises(FileExistsError, match="first.ipynb.*second.ipynb"):
        sweep.run_sweep(swept / "second.ipynb", {"A": [1]}, sweep_copy, echo=lambda _: None)
    assert _files(sweep_copy) == before


def test_a_grid_that_would_orphan_runs_is_refused_a_larger_one_is_not(swept, sweep_copy):
    first = swept / "first.ipynb"
    with pytest.raises(FileExistsError, match=r"A=1") as error:
        sweep.plan(first, {"A": [2]}, sweep_copy)
    assert str(sweep_copy) in str(error.value) and "A=[2]" in str(error.value)
    with pytest.raises(FileExistsError, match=r"A=1"):
        sweep.plan(first, {"B": ["x"]}, sweep_copy)  # other names: every earlier run is left out
    larger = sweep.plan(first, {"A": [1, 2]}, sweep_copy)
    assert [(run.name, run.done) for run in larger] == [("A=1", True), ("A=2", False)]
    assert [run.done for run in sweep.plan(first, {"A": [1]}, sweep_copy)] == [True]


def test_force_lets_another_notebook_take_the_folder(swept, sweep_copy, capsys):
    second = swept / "second.ipynb"
    args = ["sweep", str(second), "-p", "A", "1", "--out", str(sweep_copy), "--force"]
    assert cli.main([*args, "--dry-run"]) == 0
    assert "A=1: would run" in capsys.readouterr().out


def test_the_owner_is_recorded_before_the_first_run(swept, tmp_path, monkeypatch):
    first, out = swept / "first.ipynb", tmp_path / "sweep"
    seen = []

    def run_notebook(notebook, run_dir, values, **_):
        seen.append(json.loads((out / sweep.OWNER).read_text()))
        runner.write_summary(run_dir, score=values["A"])

    monkeypatch.setattr(runner, "run_notebook", run_notebook)
    sweep.run_sweep(first, [("A", [1, 2])], out, echo=lambda _: None)
    owner = {"notebook": str(first.resolve()), "grid": {"A": [1, 2]}, "runs": ["A=1", "A=2"]}
    assert seen == [owner, owner]


def test_a_corrupt_sweep_json_is_named(swept, sweep_copy):
    (sweep_copy / "sweep.json").write_text("{not json")
    with pytest.raises(ValueError, match="sweep.json: not valid JSON"):
        sweep.plan(swept / "first.ipynb", {"A": [1]}, sweep_copy)


def test_a_run_that_ended_after_its_sweep_was_killed_is_kept(swept, sweep_copy):
    # a killed sweep leaves its row "running" while the run's own process (a submitit job)
    # goes on and records the result in the run's marker
    table = (sweep_copy / "summary.csv").read_text()
    (sweep_copy / "summary.csv").write_text(table.replace(",ok,", ",running,"))
    first = swept / "first.ipynb"
    [run] = sweep.plan(first, {"A": [1]}, sweep_copy)
    assert (run.done, run.status, run.metrics) == (True, "ok", {"score": 1})
    assert (
        run.seconds
        == json.loads((sweep_copy / "A=1/sweep_run.json").read_text())["result"]["seconds"]
    )
    # without a recorded result (killed with the sweep) it runs again
    marker = json.loads((sweep_copy / "A=1/sweep_run.json").read_text())
    (sweep_copy / "A=1/sweep_run.json").write_text(json.dumps({**marker, "result": None}))
    assert [run.done for run in sweep.plan(first, {"A": [1]}, sweep_copy)] == [False]


def test_a_run_still_running_elsewhere_is_refused_even_with_force(swept, sweep_copy, capsys):
    lock = filelock.FileLock(sweep_run.lock_path(sweep_copy, "A=1"))
    lock.acquire()  # as the process of a job that outlived its sweep holds it
    try:
        before = _files(sweep_copy)
        first = str(swept / "first.ipynb")
        args = ["sweep", first, "-p", "A", "1", "--out", str(sweep_copy), "--force"]
        assert cli.main(args) == 2
        err = capsys.readouterr().err
        assert "A=1 is still being run by process" in err and "wait for it to end" in err
        assert _files(sweep_copy) == before
        task = sweep_run.Task(
            name="A=1",
            notebook=swept / "first.ipynb",
            folder=sweep_copy / "A=1",
            parameters={"A": 1},
            kernel_name=None,
            lock=sweep_run.lock_path(sweep_copy, "A=1"),
            sets_out_dir=True,
            sets_device=False,
        )
        with pytest.raises(FileExistsError, match="is already being run by process"):
            sweep_run.execute_run(task)  # nor can a job that starts anyway touch it
        assert _files(sweep_copy) == before
    finally:
        lock.release()
    assert [run.done for run in sweep.plan(swept / "first.ipynb", {"A": [1]}, sweep_copy)] == [True]


# ---------------------------------------------------------------------- run-notebook


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"cells": 3}', "not a notebook (no list of cells)"),
        ("[]", "not a notebook (no list of cells)"),
    ],
)
@pytest.mark.parametrize("parameters", [[], ["-p", "A", "2"]])
def test_a_corrupt_notebook_is_named_before_anything_is_written(
    tmp_path, capsys, text, message, parameters
):
    notebook = tmp_path / "broken.ipynb"
    notebook.write_text(text)
    out = tmp_path / "out"
    assert cli.main(["run-notebook", str(notebook), "--out", str(out), *parameters]) == 2
    assert f"spml-lab run-notebook: error: {notebook}: {message}" in capsys.readouterr().err
    assert not out.exists()


def test_a_parameters_cell_that_is_not_python_is_named(tmp_path):
    notebook = _notebook(tmp_path / "nb.ipynb")
    nb = nbformat.read(notebook, as_version=4)
    nb.cells[0].source = "A = (1"
    nbformat.write(nb, notebook)
    with pytest.raises(ValueError, match="nb.ipynb: its `parameters` cell is not valid Python"):
        sweep.plan(notebook, {"A": [1]}, tmp_path / "out")
