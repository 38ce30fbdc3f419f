import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest

from spml_lab import cli
from spml_lab.sweeps import runner, sweep, sweep_run

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def _notebook(path):
    """A tiny notebook: parameters A, B, OUT_DIR; fails for A == 2, B == "y"; writes results."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": KERNELSPEC})
    parameters = nbformat.v4.new_code_cell(
        'A = 1  # swept\nB = "x"  # swept\nOUT_DIR = "unused"  # set by the sweep'
    )
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [
        parameters,
        nbformat.v4.new_code_cell(
            'if A == 2 and B == "y":\n    raise ZeroDivisionError(f"A is {A}")'
        ),
        nbformat.v4.new_code_cell(
            "import pathlib\n"
            "from spml_lab.sweeps import runner\n"
            'if B == "x":  # summary.json\n'
            "    runner.write_summary(OUT_DIR, score=A * 10, seen_b=B, out_dir=OUT_DIR)\n"
            "else:  # the trainer's metrics file: the last row counts\n"
            '    rows = f"step,total\\n1,9\\n2,{A / 4}\\n"\n'
            '    pathlib.Path(OUT_DIR, "metrics.csv").write_text(rows)'
        ),
    ]
    nbformat.write(nb, path)
    return path


def _table(path):
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]


# ---------------------------------------------------------------------- pieces, no kernel


def test_expand_grid_varies_the_last_parameter_fastest():
    grid = [("A", [1, 2, 3]), ("B", ["x", "y"])]
    brute = [{"A": a, "B": b} for a in (1, 2, 3) for b in ("x", "y")]
    assert sweep.expand_grid(grid) == brute


@pytest.mark.parametrize(
    ("grid", "message"),
    [([], "at least one"), ([("A", [1]), ("A", [2])], "more than once"), ({"A": []}, "no values")],
)
def test_expand_grid_refuses_malformed_grids(grid, message):
    with pytest.raises(ValueError, match=message):
        sweep.expand_grid(grid)


def test_run_names_are_readable_safe_and_distinct():
    assert sweep.run_name({"annotation": "points", "lr": 0.01}) == "annotation=points,lr=0.01"
    assert sweep.run_name({"lr": 1e-05, "flip": True}) == "lr=1e-05,flip=True"
    values = ["a b", "a_b", "a/b", "1", 1, 1.0, [1, 2], (1, 2), "x,y", "", None, "x" * 300]
    names = [sweep.run_name({"V": v}) for v in values]
    assert len(set(names)) == len(values)
    for name in names:
        assert re.fullmatch(r"[A-Za-z0-9._+=,~-]+", name) and len(name) < 140, name
    # the same values always give the same folder (a resumed sweep finds its runs)
    assert sweep.run_name({"V": [1, 2]}) == names[6]


def test_collect_metrics_prefers_summary_json_then_last_csv_row(tmp_path):
    assert sweep_run.collect_metrics(tmp_path) == {}
    (tmp_path / "metrics.csv").write_text("step,lr,total\n10,0.1,2.5\n20,0.05,1.25\n")
    assert sweep_run.collect_metrics(tmp_path) == {"step": 20, "lr": 0.05, "total": 1.25}
    runner.write_summary(tmp_path, miou=0.5)
    assert sweep_run.collect_metrics(tmp_path) == {"miou": 0.5}
    (tmp_path / "summary.json").write_text('{"per_class": [0.1, 0.2]}')
    with pytest.raises(ValueError, match="summary.json: must be a flat object"):
        sweep_run.collect_metrics(tmp_path)


def test_write_summary_converts_scalars_and_refuses_arrays(tmp_path):
    path = runner.write_summary(tmp_path / "run", miou=np.float32(0.25), steps=np.int64(3))
    assert json.loads(path.read_text()) == {"miou": 0.25, "steps": 3}
    assert sorted(p.name for p in path.parent.iterdir()) == ["summary.json"]  # no temp file
    with pytest.raises(ValueError, match="per_class"):
        runner.write_summary(tmp_path, per_class=np.zeros(3))


def test_plan_refuses_a_folder_the_sweep_did_not_make(tmp_path):
    notebook = _notebook(tmp_path / "nb.ipynb")
    (tmp_path / "out" / "A=1").mkdir(parents=True)
    (tmp_path / "out" / "A=1" / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="was not made by a sweep"):
        sweep.plan(notebook, {"A": [1]}, tmp_path / "out")
    with pytest.raises(ValueError, match="OUT_DIR cannot be swept"):
        sweep.plan(notebook, {"OUT_DIR": ["x"]}, tmp_path / "other")


def test_unknown_parameter_is_named_with_the_known_ones(tmp_path, capsys):
    notebook = _notebook(tmp_path / "nb.ipynb")
    status = cli.main(["sweep", str(notebook), "-p", "A", "1", "-p", "C", "3", "--out", "o"])
    err = capsys.readouterr().err
    assert status == 2 and "nb.ipynb" in err and "['C']" in err and "A, B, OUT_DIR" in err
    assert not (tmp_path / "o").exists()
    assert cli.main(["sweep", str(notebook), "-p", "A", "--out", "o"]) == 2
    assert "-p A: give at least one value" in capsys.readouterr().err


def test_dry_run_lists_the_runs_and_writes_nothing(tmp_path, capsys):
    notebook = _notebook(tmp_path / "nb.ipynb")
    out = tmp_path / "out"
    args = ["sweep", str(notebook), "-p", "A", "1", "2", "-p", "B", "x", "'y z'", "--out", str(out)]
    assert cli.main([*args, "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [sweep.run_name({"A": a, "B": b}) for a in (1, 2) for b in ("x", "y z")]
    assert lines[:4] == [f"{name}: would run" for name in names]
    assert names[1].startswith("A=1,B=y_z~")  # the quoted literal "y z" is the string
    assert "4 of 4 runs would run" in lines[4] and not out.exists()


# ---------------------------------------------------------------------- real papermill runs


@pytest.mark.slow
def test_sweep_runs_the_grid_reports_failures_and_resumes(tmp_path, capsys):
    notebook = _notebook(tmp_path / "nb.ipynb")
    out = tmp_path / "sweep"
    args = ["sweep", str(notebook), "-p", "A", "1", "2", "-p", "B", "x", "y", "--out", str(out)]
    assert cli.main(args) == 1  # one run failed, after the others and the table
    printed = capsys.readouterr()
    assert "1 of 4 runs failed" in printed.err and "A=2,B=y: In [" in printed.out

    header, rows = _table(out / "summary.csv")
    assert header == ["run", "A", "B", "status", "seconds", "error"] + sorted(
        ["score", "seen_b", "out_dir", "step", "total"]
    )
    assert [(r["run"], r["A"], r["B"], r["status"]) for r in rows] == [
        ("A=1,B=x", "1", "x", "ok"),
        ("A=1,B=y", "1", "y", "ok"),
        ("A=2,B=x", "2", "x", "ok"),
        ("A=2,B=y", "2", "y", "failed"),
    ]
    # injected values reached the notebook: its summary echoes them, its metrics.csv used them
    assert rows[2]["score"] == "20" and rows[2]["seen_b"] == "x"
    assert rows[2]["out_dir"] == str((out / "A=2,B=x").resolve())
    assert (rows[1]["step"], rows[1]["total"]) == ("2", "0.25")  # last row, A / 4
    assert rows[0]["step"] == "" and rows[1]["score"] == ""
    assert re.fullmatch(r"In \[\d+\]: ZeroDivisionError: A is 2", rows[3]["error"])
    assert all(float(r["seconds"]) > 0 for r in rows)
    cells = json.loads((out / "A=2,B=x" / "nb.ipynb").read_text())["cells"]
    injected = [c for c in cells if "injected-parameters" in c["metadata"].get("tags", [])]
    assert "A = 2" in "".join(injected[0]["source"])

    # a second call resumes: finished runs are skipped and keep their files, the failed one reruns
    stamp = (out / "A=1,B=x" / "nb.ipynb").stat().st_mtime_ns
    assert cli.main(args) == 1
    printed = capsys.readouterr().out
    progress = [line for line in printed.splitlines() if line.startswith("[")]
    skipped = [f"[{i}/4] {row['run']}: skipped (done)" for i, row in enumerate(rows[:3], 1)]
    assert progress[:3] == skipped
    assert progress[3].startswith("[4/4] A=2,B=y: failed")
    assert (out / "A=1,B=x" / "nb.ipynb").stat().st_mtime_ns == stamp
    again = _table(out / "summary.csv")
    assert again[0] == header and again[1][:3] == rows[:3]  # skipped runs keep their metrics
    assert again[1][3]["status"] == "failed" and again[1][3]["error"] == rows[3]["error"]

    assert cli.main([*args, "--dry-run"]) == 0
    assert capsys.readouterr().out.count(": would run\n") == 1
    assert cli.main([*args, "--dry-run", "--force"]) == 0
    assert capsys.readouterr().out.count(": would run\n") == 4


def test_a_run_that_cannot_start_is_reported_too(tmp_path):
    notebook = _notebook(tmp_path / "nb.ipynb")
    runs = sweep.run_sweep(
        notebook, {"A": [1]}, tmp_path / "out", kernel_name="no-such-kernel", echo=lambda _: None
    )
    assert runs[0].status == "failed" and "no-such-kernel" in runs[0].error
    assert _table(tmp_path / "out" / "summary.csv")[1][0]["status"] == "failed"


# ---------------------------------------------------------------------- parallel runs


def _parallel_notebook(path):
    """Parameters A, DEVICE, OUT_DIR; fails for A == 3; reports its pinning as metrics.

    Given a device (only the parallel sweep gives one), a run waits until two runs have
    started: it finishes only when two ran side by side.
    """
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": KERNELSPEC})
    parameters = nbformat.v4.new_code_cell('A = 1\nDEVICE = "auto"\nOUT_DIR = "unused"')
    parameters.metadata["tags"] = ["parameters"]
    barrier = (
        "import os, pathlib, time\n"
        'started = pathlib.Path(OUT_DIR).parent.parent / "started"\n'
        'if DEVICE != "auto":\n'
        "    started.mkdir(exist_ok=True)\n"
        "    (started / str(A)).touch()\n"
        "    deadline = time.time() + 180\n"
        "    while len(list(started.iterdir())) < 2:\n"
        "        assert time.time() < deadline, 'no other run started beside this one'\n"
        "        time.sleep(0.2)"
    )
    report = (
        "from spml_lab.sweeps import runner\n"
        "runner.write_summary(OUT_DIR, score=A * 10, device=DEVICE,\n"
        '    threads=os.environ["OMP_NUM_THREADS"],\n'
        '    visible=os.environ.get("CUDA_VISIBLE_DEVICES", "unset"), parent=os.getppid())'
    )
    nb.cells = [
        parameters,
        nbformat.v4.new_code_cell(barrier),
        nbformat.v4.new_code_cell('if A == 3:\n    raise ValueError("three")'),
        nbformat.v4.new_code_cell(report),
    ]
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_two_runs_side_by_side_give_the_table_of_one_at_a_time(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # the threads the sweep shares out
    notebook = _parallel_notebook(tmp_path / "nb.ipynb")
    args = ["sweep", str(notebook), "-p", "A", "1", "2", "3", "4"]
    assert cli.main([*args, "--out", str(tmp_path / "serial")]) == 1
    parallel_args = ["--jobs", "2", "--devices", "cpu", "--executor", "local"]
    assert cli.main([*args, "--out", str(tmp_path / "side"), *parallel_args]) == 1
    printed = capsys.readouterr()
    assert printed.err.count("1 of 4 runs failed") == 2
    assert "4 runs, 2 at a time on cpu, local executor" in printed.out

    serial, side = _table(tmp_path / "serial/summary.csv"), _table(tmp_path / "side/summary.csv")
    assert side[0] == serial[0]  # same columns
    shared = ["run", "A", "status", "error", "score"]
    assert [[r[c] for c in shared] for r in side[1]] == [[r[c] for c in shared] for r in serial[1]]
    assert [r["status"] for r in side[1]] == ["ok", "ok", "failed", "ok"]
    assert re.fullmatch(r"In \[\d+\]: ValueError: three", side[1][2]["error"])
    ok = [0, 1, 3]
    # one at a time: this process's view; side by side: one slot each, half the threads
    assert [serial[1][i]["threads"] for i in ok] == ["4"] * 3
    assert [serial[1][i]["device"] for i in ok] == ["auto"] * 3
    assert [side[1][i]["threads"] for i in ok] == ["2"] * 3
    assert [(side[1][i]["device"], side[1][i]["visible"]) for i in ok] == [("cpu", "")] * 3
    # each side-by-side run had a process of its own (submitit's), not this one
    parents = {side[1][i]["parent"] for i in ok}
    assert len(parents) == 3 and str(os.getpid()) not in parents
    assert {serial[1][i]["parent"] for i in ok} == {str(os.getpid())}
    marker = json.loads((tmp_path / "side/A=2/sweep_run.json").read_text())
    assert marker["device"] == "cpu" and marker["result"]["metrics"]["score"] == 20


@pytest.mark.slow
def test_a_killed_parallel_sweep_resumes_with_what_finished(tmp_path, capsys):
    notebook = tmp_path / "nb.ipynb"
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": KERNELSPEC})
    parameters = nbformat.v4.new_code_cell('A = 1\nOUT_DIR = "unused"')
    parameters.metadata["tags"] = ["parameters"]
    hold = (  # run A=4 holds until the test releases it, so the kill finds it running
        "import os, pathlib, time\n"
        "root = pathlib.Path(OUT_DIR).parent.parent\n"
        "if A == 4:\n"
        '    (root / f"kernel-{os.getpid()}").touch()\n'
        '    while not (root / "release").exists():\n'
        "        time.sleep(0.2)\n"
        "from spml_lab.sweeps import runner\n"
        "runner.write_summary(OUT_DIR, score=A * 10)"
    )
    nb.cells = [parameters, nbformat.v4.new_code_cell(hold)]
    nbformat.write(nb, notebook)
    out = tmp_path / "out"
    args = ["sweep", str(notebook), "-p", "A", "1", "2", "3", "4", "--jobs", "2", "--out", str(out)]
    command = [sys.executable, "-m", "spml_lab.cli", *args]
    sweep_process = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:  # wait for A=1..3 to finish while A=4 holds
        deadline = time.time() + 300
        while True:
            rows = _table(out / "summary.csv")[1] if (out / "summary.csv").is_file() else []
            statuses = [row["status"] for row in rows]
            if statuses[:3] == ["ok"] * 3 and list(tmp_path.glob("kernel-*")):
                break
            assert sweep_process.poll() is None and time.time() < deadline, statuses
            time.sleep(0.5)
    finally:  # the sweep, its submitit processes: all of it, as a batch system stops a job
        os.killpg(sweep_process.pid, signal.SIGKILL)
        sweep_process.wait()
    assert statuses == ["ok", "ok", "ok", "running"]
    # the kernel left behind sees its parent gone and stops (ipykernel polls for it)
    kernel = int(next(tmp_path.glob("kernel-*")).name.split("-")[1])
    deadline = time.time() + 30
    while _alive(kernel) and time.time() < deadline:
        time.sleep(0.5)
    assert not _alive(kernel)
    stamps = {a: (out / f"A={a}" / "nb.ipynb").stat().st_mtime_ns for a in (1, 2, 3)}

    (tmp_path / "release").touch()
    assert cli.main(args) == 0
    progress = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert progress == [
        "[1/4] A=1: skipped (done)",
        "[2/4] A=2: skipped (done)",
        "[3/4] A=3: skipped (done)",
        *[line for line in progress if line.startswith("[4/4] A=4: ok (")],
    ]
    assert {a: (out / f"A={a}" / "nb.ipynb").stat().st_mtime_ns for a in (1, 2, 3)} == stamps
    rows = _table(out / "summary.csv")[1]
    assert [(r["run"], r["status"], r["score"]) for r in rows] == [
        (f"A={a}", "ok", str(a * 10)) for a in (1, 2, 3, 4)
    ]


def _alive(pid):
    """Tell whether process `pid` still runs (a zombie waiting to be reaped does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")
