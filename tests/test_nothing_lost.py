"""Shipped runs stay read-only, one process writes a folder, and messages name what was written.

Each test reproduces a case of a hostile-user probe that lost or misreported a file.
"""

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from spml_lab import cli
from spml_lab.data import datasets, writers
from spml_lab.training import run_folders, runs


def _tree_digest(folder):
    """Hash of every file's path and bytes under `folder` (to see that nothing changed)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def shipped_untouched():
    before = _tree_digest(runs.SHIPPED_RUNS)
    yield
    assert _tree_digest(runs.SHIPPED_RUNS) == before, "a shipped run was written"


def test_evaluate_shipped_run_needs_out_and_writes_only_there(tmp_path, capsys, shipped_untouched):
    args = ["evaluate", "shipped:full", "--max-images", "2", "--methods", "softmax"]
    assert cli.main(args) == 2
    assert "read-only" in capsys.readouterr().err
    out = tmp_path / "scores"
    assert cli.main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out / 'metrics.json'}" in printed
    assert (out / "metrics.json").is_file() and (out / "per_class.csv").is_file()


def test_evaluate_prints_the_folder_it_wrote(tmp_path, capsys):
    run = run_folders.copy_run(runs.run_folder("shipped:full"), tmp_path / "run")
    args = ["evaluate", str(run), "--max-images", "1", "--methods", "softmax"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote {run / 'eval' / 'metrics.json'}" in printed
    assert (run / "eval" / "metrics.json").is_file()


def test_stage2_of_a_shipped_run_writes_a_copy(tmp_path, capsys, shipped_untouched):
    args = ["stage2", "shipped:full", "--steps", "2", "--max-images", "2"]
    assert cli.main(args) == 2
    assert "read-only" in capsys.readouterr().err
    out = tmp_path / "mine"
    assert cli.main([*args, "--out", str(out)]) == 0
    assert f"wrote {out / 'stage2.pt'}" in capsys.readouterr().out
    shipped = runs.run_folder("shipped:full")
    assert (out / "final.pt").read_bytes() == (shipped / "final.pt").read_bytes()
    assert (out / "stage2.pt").is_file()


def test_shipped_data_reached_by_another_path_is_refused(shipped_untouched):
    sneaky = runs.SHIPPED_RUNS / ".." / "runs" / "full" / "eval"
    with pytest.raises(ValueError, match="read-only"):
        with writers.one_writer(sneaky):
            pass


@pytest.mark.parametrize("name", ["../../somewhere/run", "/abs/run", "full/..", ""])
def test_shipped_run_names_are_names(name, tmp_path):
    with pytest.raises(FileNotFoundError, match="no shipped run"):
        runs.run_folder(f"shipped:{name}")


@contextlib.contextmanager
def held_by_another_process(folder):
    """Yield the pid of a process that holds `folder` (`one_writer`); SIGKILL it afterwards."""
    code = textwrap.dedent(f"""
        import time
        from spml_lab.data import writers
        with writers.one_writer({str(folder)!r}):
            print("holding", flush=True)
            time.sleep(60)
    """)
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as p:
        try:
            assert p.stdout.readline().strip() == "holding"
            yield p.pid
        finally:
            os.kill(p.pid, signal.SIGKILL)  # it dies holding the lock, as a killed run does
            p.wait()


def test_second_writer_is_refused_with_the_holder_named(tmp_path):
    folder = tmp_path / "run"
    with held_by_another_process(folder) as pid:
        with pytest.raises(FileExistsError, match=f"pid {pid}"):
            with writers.one_writer(folder):
                pass
    with writers.one_writer(folder):  # the OS freed the lock: a --resume goes on
        pass


def test_nested_writer_of_the_same_folder_goes_on(tmp_path):
    with writers.one_writer(tmp_path), writers.one_writer(tmp_path / "."):
        assert (tmp_path / writers.WRITER_FILE).is_file()
    assert not (tmp_path / writers.WRITER_FILE).exists()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--width", "0", "argument --width: must be >= 2, got 0"),
     ("--steps", "-1", "argument --steps: must be >= 1, got -1")],
)  # fmt: skip
def test_cam_labels_refuses_bad_numbers_before_reading(tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit):
        cli.main(["cam-labels", str(tmp_path), flag, value])
    assert message in capsys.readouterr().err


def test_cam_labels_refuses_the_shipped_samples(capsys, tmp_path):
    objects = datasets.DATA_SAMPLES / "objects"
    before = _tree_digest(objects)
    assert cli.main(["cam-labels", str(objects), "--steps", "1"]) == 2
    assert "read-only" in capsys.readouterr().err
    assert _tree_digest(objects) == before


def test_two_trainings_into_one_folder_the_second_is_refused(tmp_path, capsys):
    """The probe's case: both finished, metrics.csv interleaved, the last one owned final.pt."""
    folder = tmp_path / "run"
    with held_by_another_process(folder) as pid:  # a first training holds the folder
        status = cli.main(["train", "--out-dir", str(folder), "--max-steps", "1",
                           "--batch-size", "2", "--crop-size", "32", "--width", "8"])  # fmt: skip
    assert status == 2
    assert f"being written by another process (pid {pid}" in capsys.readouterr().err
    assert not (folder / "config.yaml").exists()


def test_a_bomb_sized_label_png_is_named(tmp_path, monkeypatch):
    from PIL import Image

    from spml_lab.data import labelio

    path = tmp_path / "label.png"
    Image.new("L", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 pixels: twice over, a "bomb"
    with pytest.raises(ValueError, match="label.png: cannot read image"):
        labelio.read_label_png(path)


def test_evaluate_split_test_prints_eval_test(tmp_path, capsys):
    """The probe's case 8: `--split test` wrote eval_test/ but printed eval/metrics.json."""
    from spml_lab.data import make_data

    data = make_data.write_dataset(tmp_path / "data", num_train=4, num_val=1, num_test=2,
                                   size=48, progress=False)  # fmt: skip
    run = tmp_path / "run"
    assert cli.main(["train", "--data", str(data), "--out-dir", str(run), "--max-steps", "1",
                     "--batch-size", "2", "--crop-size", "32", "--width", "8"]) == 0  # fmt: skip
    capsys.readouterr()
    assert cli.main(["evaluate", str(run), "--split", "test", "--methods", "softmax"]) == 0
    assert f"wrote {run / 'eval_test' / 'metrics.json'}" in capsys.readouterr().out
    assert not (run / "eval").exists()


def test_predict_names_a_final_pt_whose_class_count_is_text(tmp_path):
    import torch

    run = run_folders.copy_run(runs.run_folder("shipped:full"), tmp_path / "run")
    state = torch.load(run / "final.pt", weights_only=True)
    torch.save({**state, "num_classes": "three"}, run / "final.pt")
    with pytest.raises(ValueError, match=r"final.pt: not a final.pt of spml-lab \(num_classes"):
        runs.load_run(run)
