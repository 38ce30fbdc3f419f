"""Training never silently restarts, never saves non-finite tensors, and names corrupt files.

Each test reproduces a case of a hostile-user probe ("Nothing lost"): ``--resume`` that started a
fresh run in another folder, an ``inf`` batch-norm variance saved in ``final.pt``, and raw
tracebacks (``KeyError: 'window'``) for damaged run files.
"""

import math
import re
from pathlib import Path

import pytest
import torch

from spml_lab import cli
from spml_lab.training import checkpoints, runs, train
from spml_lab.training.config import TrainConfig

# Tiny runs as in tests/training/test_train.py: a step takes tens of milliseconds.
TINY = dict(crop_size=32, batch_size=2, width=8, embedding_dim=8, kmeans_grid=(2, 2))
TINY.update(progress=False, log_every=1, device="cpu")
TINY_FLAGS = ["--crop-size", "32", "--batch-size", "2", "--width", "8", "--embedding-dim", "8"]
TINY_FLAGS += ["--kmeans-grid", "2", "2", "--no-progress", "--device", "cpu"]


def _tree(folder):
    """Every file under `folder` with its bytes (to see that nothing was written)."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------- 1. --resume


def test_config_yaml_records_an_absolute_out_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = train.fit(TrainConfig(**TINY, max_steps=1, out_dir="runs/k2"))
    saved = TrainConfig.from_yaml(tmp_path / "runs" / "k2" / "config.yaml")
    assert Path(saved.out_dir).is_absolute() and Path(saved.out_dir) == tmp_path / "runs" / "k2"
    assert run == tmp_path / "runs" / "k2"


def test_resume_from_another_working_folder_continues_the_run_of_the_config(tmp_path, monkeypatch):
    (tmp_path / "start").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "start")
    assert cli.main(["train", *TINY_FLAGS, "--max-steps", "2", "--out-dir", "runs/k2"]) == 0
    run = tmp_path / "start" / "runs" / "k2"
    metrics = (run / "metrics.csv").read_bytes()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert cli.main(["train", "--config", "../start/runs/k2/config.yaml", "--resume"]) == 0
    assert list((tmp_path / "elsewhere").iterdir()) == []  # no fresh run started here
    assert (run / "metrics.csv").read_bytes() == metrics  # finished: nothing trained again


def test_resume_into_a_folder_without_a_run_is_refused_before_anything_is_written(tmp_path):
    cfg = TrainConfig(**TINY, max_steps=1, out_dir=str(tmp_path / "typo"), resume=True)
    with pytest.raises(FileNotFoundError, match="drop --resume") as error:
        train.fit(cfg, start_if_empty=False)
    assert str(tmp_path / "typo") in str(error.value) and "no checkpoint.pt" in str(error.value)
    assert not (tmp_path / "typo").exists()


def test_the_resume_flag_into_a_folder_without_a_run_exits_2(tmp_path, capsys):
    args = ["train", *TINY_FLAGS, "--max-steps", "1", "--out-dir", str(tmp_path / "typo")]
    assert cli.main([*args, "--resume"]) == 2
    assert "drop --resume" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()


def test_resume_if_possible_still_starts_a_fresh_run_in_an_empty_folder(tmp_path):
    # what notebooks rely on (prepare_run_folder, notebook 10): a rerun resumes or starts alike
    cfg = TrainConfig(**TINY, max_steps=1, out_dir=str(tmp_path / "run"), resume=True)
    assert (train.fit(cfg) / "final.pt").is_file()
    assert (train.fit(cfg, start_if_empty=False) / "final.pt").is_file()  # now there is a run


# ---------------------------------------------------------------------- 2. non-finite tensors


def _poison_running_var_at(step, monkeypatch):
    """Make the first batch norm's running variance inf after training step `step` (1-based).

    Losses and parameters stay finite (a training-mode forward uses batch statistics), as in
    the probe's ``--lr 1e6`` run that saved an ``inf`` variance.
    """
    original, steps = train.train_step, []

    def poisoned(batch, net, *args, **kwargs):
        losses = original(batch, net, *args, **kwargs)
        steps.append(1)
        if len(steps) == step:
            name, buffer = next((n, b) for n, b in net.named_buffers() if "running_var" in n)
            buffer.fill_(math.inf)
            poisoned.name = "model." + name
        return losses

    monkeypatch.setattr(train, "train_step", poisoned)
    return poisoned


def test_a_non_finite_buffer_is_never_saved_and_the_last_good_checkpoint_stays(
    tmp_path, monkeypatch
):
    poisoned = _poison_running_var_at(2, monkeypatch)
    cfg = TrainConfig(**TINY, max_steps=2, checkpoint_every=1, out_dir=str(tmp_path / "run"))
    with pytest.raises(FloatingPointError, match="non-finite between steps 2 and 2") as error:
        train.fit(cfg)
    assert poisoned.name in str(error.value) and "checkpoint.pt (step 1)" in str(error.value)
    assert "--lr" in str(error.value)
    assert not (tmp_path / "run" / "final.pt").exists()
    state = checkpoints.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 1
    assert all(v.isfinite().all() for v in state["model"].values() if v.is_floating_point())


def test_the_command_names_the_non_finite_tensor_and_exits_2(tmp_path, monkeypatch, capsys):
    poisoned = _poison_running_var_at(1, monkeypatch)
    run = tmp_path / "run"
    assert cli.main(["train", *TINY_FLAGS, "--max-steps", "2", "--out-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spml-lab train: error: training stopped: " + poisoned.name)
    assert "no checkpoint was written" in err and "--lr" in err
    assert not (run / "final.pt").exists() and not (run / "checkpoint.pt").exists()


def test_a_final_pt_with_a_non_finite_tensor_is_refused_when_loaded(tmp_path):
    run = train.fit(TrainConfig(**TINY, max_steps=1, out_dir=str(tmp_path / "run")))
    state = torch.load(run / "final.pt", weights_only=True)
    name = next(k for k in state["model"] if k.endswith("running_var"))
    state["model"][name][0] = math.inf  # as written before the guard covered buffers
    torch.save(state, run / "final.pt")
    with pytest.raises(ValueError, match=rf"final.pt: non-finite values in model\.{name}"):
        runs.load_run(run)


def test_resuming_a_checkpoint_with_a_non_finite_tensor_is_refused(tmp_path):
    cfg = TrainConfig(**TINY, max_steps=1, out_dir=str(tmp_path / "run"))
    run = train.fit(cfg)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["head"]["classifier.bias"][0] = math.nan
    torch.save(state, run / "checkpoint.pt")
    before = _tree(run)
    with pytest.raises(ValueError, match=r"checkpoint.pt: non-finite values in head\.classifier"):
        train.fit(cfg.replace(resume=True))
    assert _tree(run) == before


# ---------------------------------------------------------------------- 3. damaged files


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny run; tests copy its files before damaging them."""
    out = tmp_path_factory.mktemp("finished") / "run"
    return train.fit(TrainConfig(**TINY, max_steps=1, out_dir=str(out)))


def _copy(run, folder):
    folder.mkdir()
    for path in run.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


CHECKPOINT_DAMAGE = {
    "window": (lambda s: s.pop("window"), r"missing entries \['window'\]"),
    "data.batch": (lambda s: s["data"].pop("batch"), r"missing entries \['data\.batch'\]"),
    "step": (lambda s: s.update(step="1"), r"step is str \(needs int\)"),
    "window.sums": (lambda s: s["window"].update(sums=[0.0]), r"window\.sums is list"),
    "model": (lambda s: s.update(model=[1, 2]), r"model is not a state dict"),
}


@pytest.mark.parametrize("damage", CHECKPOINT_DAMAGE, ids=list(CHECKPOINT_DAMAGE))
def test_a_damaged_checkpoint_is_named_before_anything_is_written(finished_run, tmp_path, damage):
    run = _copy(finished_run, tmp_path / "run")
    change, message = CHECKPOINT_DAMAGE[damage]
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    change(state)
    torch.save(state, run / "checkpoint.pt")
    before = _tree(run)
    cfg = TrainConfig.from_yaml(run / "config.yaml").replace(out_dir=str(run), resume=True)
    with pytest.raises(ValueError, match=r"checkpoint\.pt: not a training checkpoint") as error:
        train.fit(cfg)
    assert str(run / "checkpoint.pt") in str(error.value)
    assert re.search(message, str(error.value)), str(error.value)
    assert _tree(run) == before


def test_checkpoint_weights_that_do_not_fit_the_run_are_named_before_anything_is_written(
    finished_run, tmp_path
):
    run = _copy(finished_run, tmp_path / "run")
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    name = next(iter(state["model"]))
    state["model"][name] = torch.zeros(1, *state["model"][name].shape)  # one more dimension
    torch.save(state, run / "checkpoint.pt")
    before = _tree(run)
    cfg = TrainConfig.from_yaml(run / "config.yaml").replace(out_dir=str(run), resume=True)
    with pytest.raises(ValueError, match=r"checkpoint\.pt: the 'model' weights do not fit") as e:
        train.fit(cfg)
    assert f"shape mismatches {name}" in str(e.value)
    assert _tree(run) == before


def _with(state, **changes):
    """`state` with some entries changed (None removes one)."""
    state = {**state, **changes}
    return {k: v for k, v in state.items() if v is not None}


FINAL_DAMAGE = {  # a damaged copy of final.pt, and what the message must say
    "num_classes str": (lambda s: _with(s, num_classes="3"), r"num_classes is str \(needs int\)"),
    "no class_names": (lambda s: _with(s, class_names=None), r"missing entries \['class_names'\]"),
    "class_names count": (
        lambda s: _with(s, class_names=s["class_names"][:1]),
        r"1 class_names for num_classes",
    ),
    "not a dict": (lambda s: [s], r"list, not a dict"),
}


@pytest.mark.parametrize("damage", FINAL_DAMAGE, ids=list(FINAL_DAMAGE))
def test_a_damaged_final_pt_is_named_when_loaded(finished_run, tmp_path, damage):
    run = _copy(finished_run, tmp_path / "run")
    change, message = FINAL_DAMAGE[damage]
    torch.save(change(torch.load(run / "final.pt", weights_only=True)), run / "final.pt")
    with pytest.raises(ValueError, match=r"final\.pt: not a final\.pt of spml-lab") as error:
        runs.load_run(run)
    assert str(run / "final.pt") in str(error.value)
    assert re.search(message, str(error.value)), str(error.value)


def test_final_pt_weights_that_do_not_fit_its_config_are_named(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path / "run")
    state = torch.load(run / "final.pt", weights_only=True)
    state["num_classes"] += 1  # the head built for it has one more class than its weights
    state["class_names"] = [*state["class_names"], "extra"]
    torch.save(state, run / "final.pt")
    with pytest.raises(ValueError, match=r"final\.pt: the 'head' weights do not fit"):
        runs.load_run(run)
