import csv
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from spml_lab.constants import IGNORE_INDEX
from spml_lab.data import writers
from spml_lab.nets import embedding_nets, heads
from spml_lab.nets.build import build_model
from spml_lab.training import checkpoints, runs, train
from spml_lab.training.config import TrainConfig

# Tiny runs: 64 px crops give 16 x 16 embeddings; a step takes tens of milliseconds.
TINY = dict(crop_size=64, batch_size=2, width=8, embedding_dim=8, kmeans_grid=(3, 3))
TINY.update(progress=False, log_every=5)


def _rows(run):
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------- building blocks


def test_param_groups_hold_every_parameter_once_with_the_paper_multipliers():
    net, head = embedding_nets.SmallEmbeddingNet(8, 8), heads.SoftmaxHead(8, 3)
    cfg = TrainConfig(head_lr_mult=10.0, bias_lr_mult=2.0, weight_decay=1e-4)
    groups = train.param_groups(net, head, cfg)
    ids = [id(p) for g in groups for p in g["params"]]
    expected = {id(p) for p in [*net.parameters(), *head.parameters()]}
    assert len(ids) == len(set(ids)) and set(ids) == expected
    by_name = {g["name"]: g for g in groups}
    head_weights = {id(p) for p in head.parameters() if p.ndim > 1}
    assert {id(p) for p in by_name["head"]["params"]} == {id(net.embed.weight)} | head_weights
    assert by_name["head_bias"]["lr_mult"] == 20.0 and by_name["head_bias"]["weight_decay"] == 0
    assert by_name["backbone"]["weight_decay"] == 1e-4


@pytest.mark.parametrize("shape, size", [((64, 48), (16, 12)), ((30, 17), (8, 5))])
def test_downsample_nearest_matches_interpolate(shape, size):
    maps = torch.randint(0, 70_000, (2, *shape), generator=torch.Generator().manual_seed(0))
    ours = train.downsample_nearest(maps, size)
    ref = F.interpolate(maps[:, None].double(), size=size, mode="nearest")[:, 0].long()
    assert torch.equal(ours, ref)


def test_softmax_cross_entropy_of_an_unlabelled_batch_is_zero_with_a_gradient():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = train.softmax_cross_entropy(logits, torch.full((2, 4, 4), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))
    labels = torch.randint(0, 3, (2, 4, 4))
    labels[0, 0] = IGNORE_INDEX
    ref = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
    assert torch.allclose(train.softmax_cross_entropy(logits, labels), ref)


# ---------------------------------------------------------------------- checkpoints


def test_checkpoint_is_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoints.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    written = []

    def crash_midway(state, handle):  # a kill while writing: half a file, then nothing
        written.append(handle.name)
        handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    assert os.path.basename(written[0]) != path.name  # the partial file never had the name
    assert os.path.dirname(written[0]) == str(tmp_path)  # same folder: os.replace is atomic
    assert checkpoints.load_checkpoint(path)["step"] == 1  # the old checkpoint survives whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_load_checkpoint_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        checkpoints.load_checkpoint(tmp_path / "missing.pt")


# ---------------------------------------------------------------------- fit


def test_training_makes_the_loss_finite_and_lower_on_a_fixed_batch(tmp_path):
    cfg = TrainConfig(
        **{**TINY, "batch_size": 4, "width": 16, "embedding_dim": 16, "kmeans_grid": (4, 4)},
        max_steps=30,
        out_dir=str(tmp_path / "run"),
    )
    run = train.fit(cfg)
    rows = _rows(run)
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20, 25, 30]
    assert list(rows[0])[2:] == [*cfg.relation_settings(), "total", "softmax_ce", "images_per_s"]
    assert all(math.isfinite(float(v)) for r in rows for v in r.values())

    dataset = train.build_dataset(cfg)
    batch = default_collate([dataset[i] for i in range(8)])
    torch.manual_seed(1)
    untrained = build_model(cfg, dataset.num_classes)
    loaded = runs.load_run(run)
    trained = loaded.net, loaded.head
    with torch.no_grad():
        before, _ = train.batch_losses(*untrained, batch, cfg)
        after, _ = train.batch_losses(*trained, batch, cfg)
    assert after["total"] < 0.95 * before["total"]
    # the head's cross-entropy falls to 0.66 of its start in these 30 steps on the embedded
    # objects with the calibrated recipe's lr 0.05 (2.36 -> 1.55; 0.55 with the old default lr
    # 0.01); an untrained or frozen head stays near 1
    assert after["softmax_ce"] < 0.8 * before["softmax_ce"]
    for name in cfg.relation_settings():
        assert after[name] < before[name], name


def test_same_seed_same_run_and_run_folder_contents(tmp_path):
    cfg = TrainConfig(**TINY, max_steps=4, checkpoint_every=2, out_dir=str(tmp_path / "a"))
    a = train.fit(cfg)
    b = train.fit(cfg.replace(out_dir=str(tmp_path / "b")))
    # besides the hidden lock file of its one writer (`writers.one_writer`)
    assert sorted(p.name for p in a.iterdir() if p.name != writers.LOCK_FILE) == [
        "checkpoint.pt",
        "config.yaml",
        "final.pt",
        "metrics.csv",
    ]
    assert TrainConfig.from_yaml(a / "config.yaml") == cfg
    wa, wb = (
        checkpoints.load_checkpoint(a / "final.pt"),
        checkpoints.load_checkpoint(b / "final.pt"),
    )
    assert all(torch.equal(wa["model"][k], wb["model"][k]) for k in wa["model"])
    assert wa["config"] == cfg.to_dict() and wa["num_classes"] == len(wa["class_names"])
    state = checkpoints.load_checkpoint(a / "checkpoint.pt")
    assert state["step"] == 4 and state["data"] == {"epoch": 0, "batch": 4}
    assert len(state["memory"]["batches"]) == cfg.memory_size


def test_a_taken_out_dir_needs_resume(tmp_path):
    cfg = TrainConfig(**TINY, max_steps=1, out_dir=str(tmp_path / "run"))
    train.fit(cfg)
    with pytest.raises(FileExistsError, match="already holds a run"):
        train.fit(cfg)
    with pytest.raises(ValueError, match=r"differs .* in lr"):
        train.fit(cfg.replace(resume=True, lr=0.5))
    train.fit(cfg.replace(resume=True))  # finished already: nothing left to do


def test_data_problems_are_named(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"TrainConfig\.batch_size \(65\) exceeds the 64"):
        train.fit(TrainConfig(**{**TINY, "batch_size": 65}, out_dir=str(tmp_path / "a")))
    build = train.build_dataset

    def without_superpixels(cfg):
        dataset = build(cfg)
        dataset.has_superpixels = False
        return dataset

    monkeypatch.setattr(train, "build_dataset", without_superpixels)
    with pytest.raises(ValueError, match=r"TrainConfig\.low_level needs superpixels"):
        train.fit(TrainConfig(**TINY, out_dir=str(tmp_path / "b")))
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        train.fit(TrainConfig(**TINY, data=str(tmp_path / "nowhere"), out_dir=str(tmp_path / "c")))


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    steps = 40
    options = dict(TINY, max_steps=steps, checkpoint_every=5)
    reference = train.fit(TrainConfig(**options, out_dir=str(tmp_path / "reference")))

    run = tmp_path / "killed"
    command = [sys.executable, "-m", "spml_lab.cli", "train", "--out-dir", str(run)]
    command += ["--crop-size", "64", "--batch-size", "2", "--width", "8", "--embedding-dim", "8"]
    command += ["--kmeans-grid", "3", "3", "--no-progress", "--log-every", "5"]
    command += ["--max-steps", str(steps), "--checkpoint-every", "5"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (run / "checkpoint.pt").exists():
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    killed_at = checkpoints.load_checkpoint(run / "checkpoint.pt")["step"]  # loads: never partial
    assert 5 <= killed_at < steps and not (run / "final.pt").exists()
    (run / ".checkpoint.pt.99999.tmp").write_bytes(b"half")  # as if killed while saving

    subprocess.run([*command, "--resume"], env=env, check=True, stdout=subprocess.DEVNULL)
    assert not (run / ".checkpoint.pt.99999.tmp").exists()
    ours, theirs = checkpoints.load_checkpoint(run / "final.pt"), runs.load_run(reference)
    expected = checkpoints.load_checkpoint(reference / "final.pt")
    for part in ("model", "head"):
        for key, value in expected[part].items():
            assert torch.equal(ours[part][key], value), (part, key)
    assert theirs.cfg.max_steps == steps
    # same rows, same numbers (images/s is a timing)
    strip = [{k: v for k, v in r.items() if k != "images_per_s"} for r in _rows(reference)]
    assert [{k: v for k, v in r.items() if k != "images_per_s"} for r in _rows(run)] == strip
    a, b = (
        checkpoints.load_checkpoint(run / "checkpoint.pt"),
        checkpoints.load_checkpoint(reference / "checkpoint.pt"),
    )
    assert a["data"] == b["data"] and a["optimizer"]["param_groups"][0]["lr"] == pytest.approx(
        b["optimizer"]["param_groups"][0]["lr"]
    )
    for x, y in zip(a["memory"]["batches"], b["memory"]["batches"], strict=True):
        assert all(torch.equal(x[k], y[k]) for k in x if x[k] is not None)


@pytest.mark.parametrize("trains_embedding", [False, True])
def test_only_the_baseline_lets_the_head_loss_reach_the_network(trains_embedding):
    # the baseline may run without any relation; SPML needs one (low-level here)
    cfg = TrainConfig(
        **TINY, head_trains_embedding=trains_embedding, low_level=not trains_embedding,
        semantic_annotation=False, cooccurrence=False,
    )  # fmt: skip
    dataset = train.build_dataset(cfg)
    batch = default_collate([dataset[i] for i in range(2)])
    torch.manual_seed(0)
    net, head = build_model(cfg, dataset.num_classes)
    losses, _ = train.batch_losses(net, head, batch, cfg)
    losses["softmax_ce"].backward()  # the head's loss alone
    reached = sum(float(p.grad.abs().sum()) for p in net.parameters() if p.grad is not None)
    assert (reached > 0) == trains_embedding
    assert all(p.grad is not None for p in head.parameters())


def test_no_relation_and_no_baseline_is_refused():
    with pytest.raises(ValueError, match="head_trains_embedding"):
        TrainConfig(low_level=False, semantic_annotation=False, cooccurrence=False)


def test_the_head_loss_is_weighted_as_the_papers_stage_one():
    # (CE + L_ann) x w_ann: with points (w_ann 0.1) the head's gradient is a tenth of the
    # unweighted one; the baseline keeps weight 1
    grads = {}
    for annotation, weight in (("points", None), ("points", 1.0)):
        cfg = TrainConfig(
            **TINY,
            annotation=annotation,
            softmax_weight=weight,
            low_level=True,
            semantic_annotation=False,
            cooccurrence=False,
            head_dropout=0.0,
        )
        dataset = train.build_dataset(cfg)
        batch = default_collate([dataset[i] for i in range(2)])
        torch.manual_seed(0)
        net, head = build_model(cfg, dataset.num_classes)
        optimizer = torch.optim.SGD(train.param_groups(net, head, cfg), lr=0.0)
        memory = train.PrototypeMemory(0)
        train.train_step(batch, net, head, optimizer, memory, cfg, torch.device("cpu"))
        grads[weight] = head.classifier.weight.grad.clone()
    torch.testing.assert_close(grads[None], 0.1 * grads[1.0])
    assert (
        TrainConfig(
            annotation="points",
            head_trains_embedding=True,
            low_level=False,
            semantic_annotation=False,
            cooccurrence=False,
        ).resolved_softmax_weight
        == 1.0
    )


def test_contrast_images_size_the_memory(tmp_path):
    cfg = TrainConfig(**{**TINY, "out_dir": str(tmp_path / "run")}, contrast_images=6,
                      max_steps=4)  # fmt: skip
    train.fit(cfg)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    # batch 2, 6 images to contrast with: 2 live + 2 memory batches of 2
    assert len(state["memory"]["batches"]) == 2


def test_resume_never_retrains_a_finished_run_and_needs_a_checkpoint(tmp_path):
    cfg = TrainConfig(**TINY, max_steps=2, out_dir=str(tmp_path / "run"))
    run = train.fit(cfg)
    (run / "checkpoint.pt").unlink()
    final = (run / "final.pt").read_bytes()
    with pytest.raises(FileExistsError, match="finished run"):
        train.fit(cfg.replace(resume=True))
    assert (run / "final.pt").read_bytes() == final  # untouched
    (run / "final.pt").unlink()  # as if killed before its first checkpoint
    with pytest.raises(FileNotFoundError, match="no checkpoint.pt"):
        train.fit(cfg.replace(resume=True))
    fresh = TrainConfig(**TINY, max_steps=1, out_dir=str(tmp_path / "empty"), resume=True)
    assert (train.fit(fresh) / "final.pt").is_file()  # nothing there to lose: starts afresh


@pytest.mark.parametrize("lr", [math.inf, math.nan])
def test_non_finite_settings_are_refused(lr):
    with pytest.raises(ValueError, match="TrainConfig.lr must be finite"):
        TrainConfig(lr=lr)
    with pytest.raises(ValueError, match="scale_range must be finite"):
        TrainConfig(scale_range=(0.5, math.inf))


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(tmp_path):
    cfg = TrainConfig(**{**TINY, "log_every": 1}, lr=1e4, max_steps=30, checkpoint_every=1,
                      out_dir=str(tmp_path / "run"))  # fmt: skip
    with pytest.raises(FloatingPointError, match="non-finite between steps") as error:
        train.fit(cfg)
    assert not (tmp_path / "run" / "final.pt").exists()
    if "no checkpoint was written" not in str(error.value):
        state = checkpoints.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
        assert all(
            torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()
        )
        assert f"(step {state['step']})" in str(error.value)


def test_crops_too_small_for_the_network_are_refused():
    with pytest.raises(ValueError, match="crop_size must be >= 16 pixels"):
        TrainConfig(crop_size=1)


@pytest.mark.parametrize("content", [b"", b"hello\n", bytes(range(256)) * 4, b"PK\x03\x04trunc"])
def test_an_unreadable_checkpoint_is_named_on_resume(tmp_path, content):
    cfg = TrainConfig(**TINY, max_steps=2, out_dir=str(tmp_path / "run"))
    train.fit(cfg)
    (tmp_path / "run" / "checkpoint.pt").write_bytes(content)
    with pytest.raises(ValueError, match="checkpoint.pt: cannot read checkpoint"):
        train.fit(cfg.replace(resume=True))


def test_a_checkpoint_of_another_kind_is_named_on_resume(tmp_path):
    cfg = TrainConfig(**TINY, max_steps=2, out_dir=str(tmp_path / "run"))
    train.fit(cfg)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(ValueError, match="not a training checkpoint"):
        train.fit(cfg.replace(resume=True))


def test_a_bad_file_late_in_the_list_fails_before_step_0(tmp_path):
    from spml_lab.data import make_data

    data = make_data.write_dataset(tmp_path / "data", num_train=6, num_val=2, size=64,
                                   progress=False)  # fmt: skip
    image = data / "images" / "train" / "train_00004.jpg"
    image.write_bytes(image.read_bytes()[:200])  # truncated
    cfg = TrainConfig(**TINY, data=str(data), max_steps=3, out_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="train_00004.jpg") as error:
        train.fit(cfg)
    assert "line 5" in str(error.value)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    # the check can be switched off (VOC-sized lists): then the file fails when it is drawn
    with pytest.raises(ValueError, match="train_00004.jpg"):
        train.fit(cfg.replace(check_files_limit=0, out_dir=str(tmp_path / "run2")))
