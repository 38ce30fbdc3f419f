"""A notebook's run folder: fresh, resumed, its own finished run replaced, anything else refused."""

import json

import pytest

from spml_lab.training import run_folders
from spml_lab.training.config import TrainConfig


def _write_run(folder, cfg, *, owner=None, finished=True):
    folder.mkdir(parents=True)
    cfg.to_yaml(folder / "config.yaml")
    (folder / "metrics.csv").write_text("step\n1\n")
    if finished:
        (folder / "final.pt").write_bytes(b"weights")
    if owner:
        (folder / "summary.json").write_text(json.dumps({"notebook": owner}))
    (folder / "executed.ipynb").write_text("{}")  # a sweep's notebook: never deleted


def test_an_empty_folder_is_a_fresh_run(tmp_path):
    cfg = TrainConfig(out_dir=str(tmp_path / "run"))
    resumed, action = run_folders.prepare_run_folder(cfg, "09_training")
    assert action == "fresh" and resumed.resume and resumed.replace(resume=False) == cfg


def test_the_same_config_is_resumed_and_nothing_is_deleted(tmp_path):
    cfg = TrainConfig(out_dir=str(tmp_path / "run"))
    _write_run(tmp_path / "run", cfg.replace(progress=False, device="cpu"))  # resumable fields
    _, action = run_folders.prepare_run_folder(cfg, "09_training")
    assert action == "resume" and (tmp_path / "run" / "final.pt").is_file()


def test_the_notebook_s_own_finished_run_is_replaced_but_other_files_stay(tmp_path):
    folder = tmp_path / "run"
    _write_run(folder, TrainConfig(out_dir=str(folder), annotation="points"), owner="09_training")
    _, action = run_folders.prepare_run_folder(TrainConfig(out_dir=str(folder)), "09_training")
    assert action == "replaced"
    assert sorted(p.name for p in folder.iterdir()) == ["executed.ipynb"]


@pytest.mark.parametrize(
    "owner, finished", [(None, True), ("10_embedding_visualization", True), ("09_training", False)]
)
def test_a_run_the_notebook_did_not_finish_is_refused(tmp_path, owner, finished):
    folder = tmp_path / "run"
    _write_run(folder, TrainConfig(out_dir=str(folder), lr=0.5), owner=owner, finished=finished)
    with pytest.raises(FileExistsError, match=r"differs in \['lr'\]"):
        run_folders.prepare_run_folder(TrainConfig(out_dir=str(folder)), "09_training")
    assert (folder / "config.yaml").is_file() and (folder / "metrics.csv").is_file()


def test_copy_run_copies_the_stage2_head_only_when_asked(tmp_path):
    from spml_lab.training import runs

    source = runs.run_folder("shipped:spml_scribbles")
    bare = run_folders.copy_run(source, tmp_path / "bare")
    whole = run_folders.copy_run(source, tmp_path / "whole", stage2=True)
    assert not (bare / runs.STAGE2).exists() and runs.load_run(bare).stage2_head is None
    assert (whole / runs.STAGE2).read_bytes() == (source / runs.STAGE2).read_bytes()
    assert runs.load_run(whole).stage2_head is not None
