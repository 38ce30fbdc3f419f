import math
import shutil

import numpy as np
import pytest
import torch
from sklearn.metrics import jaccard_score

from spml_lab import cli
from spml_lab.prediction import evaluate, predict, probabilities, pseudo_labels, stage2
from spml_lab.training import runs, train
from spml_lab.training.config import TrainConfig

TINY = dict(crop_size=64, batch_size=2, width=8, embedding_dim=8, kmeans_grid=(3, 3))
TINY.update(progress=False, log_every=5, device="cpu")
IMAGES = 6  # training images used by stage 2 in these tests


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("stage2") / "run"
    return train.fit(TrainConfig(max_steps=6, seed=2, out_dir=str(out), **TINY))


@pytest.fixture(scope="module")
def fitted(run_dir, tmp_path_factory):
    """A copy of the run with a stage-2 head (the run itself stays stage-1 only)."""
    torch.set_num_threads(1)
    target = tmp_path_factory.mktemp("stage2_fitted") / "run"
    shutil.copytree(run_dir, target)
    return target, stage2.fit_head(target, steps=40, batch_size=4, max_images=IMAGES)


def train_batch(run, count=IMAGES):
    dataset = predict.dataset_for(run.cfg, run.cfg.split, run.cfg.annotation)
    return next(predict.image_batches(dataset, count, count))


# ---------------------------------------------------------------------- pseudo labels


def test_walk_size_keeps_small_maps_and_caps_large_ones():
    assert pseudo_labels.walk_size((32, 32)) == (32, 32)
    assert pseudo_labels.walk_size((64, 64)) == (64, 64)  # the paper's 64 x 64 fits exactly
    height, width = pseudo_labels.walk_size((200, 100), max_pixels=800)
    assert (height, width) == (40, 20) and height * width <= 800


def test_pseudo_labels_only_name_tagged_classes(run_dir):
    run = runs.load_run(run_dir)
    batch = train_batch(run)
    g = torch.Generator().manual_seed(0)
    # the images' own tags, and random tag sets that disagree with the images
    for tags in (batch["tags"], torch.rand(IMAGES, run.num_classes, generator=g) < 0.3):
        pseudo = pseudo_labels.from_head(run.net, run.head, batch["image"], tags)
        assert pseudo.labels.dtype == torch.uint8 and pseudo.labels.shape == (IMAGES, 96, 96)
        allowed = tags.clone()
        allowed[:, 0] = True  # background is allowed in every image
        for labels, ok in zip(pseudo.labels, allowed, strict=True):
            assert set(labels.unique().tolist()) <= set(ok.nonzero().flatten().tolist())


def test_pseudo_label_maps_are_the_pipeline_stages(run_dir):
    run = runs.load_run(run_dir)
    batch = train_batch(run, 2)
    images, tags = batch["image"], batch["tags"]
    pseudo = pseudo_labels.from_head(run.net, run.head, images, tags, walk_steps=3)
    # stage 1: tag softmax at embedding resolution, flip-averaged, scaled to peak 1
    with torch.no_grad():
        emb = run.net(images).permute(0, 2, 3, 1)  # (B, h, w, D), as heads and the walk take
        flipped = run.net(images.flip(-1)).permute(0, 2, 3, 1)
        probs = torch.softmax(run.head(emb), dim=1)
        mirror = torch.softmax(run.head(flipped), dim=1).flip(-1)
        mean_emb = (emb + flipped.flip(2)) / 2
    allowed = tags.clone()
    allowed[:, 0] = True
    scaled = ((probs + mirror) / 2) * allowed[:, :, None, None]
    scaled = scaled / scaled.sum(1, keepdim=True)
    scaled = scaled / scaled.amax((2, 3), keepdim=True).clamp_min(1e-30)
    want = probabilities.upsample_probs(scaled, (96, 96))
    torch.testing.assert_close(pseudo.softmax, want, atol=1e-5, rtol=1e-4)
    assert torch.all(pseudo.softmax[~allowed] == 0)
    # stage 2: the walk of those scores on the flip-averaged embeddings
    walked = pseudo_labels.random_walk(scaled, mean_emb, steps=3)
    torch.testing.assert_close(pseudo.walked, probabilities.upsample_probs(walked, (96, 96)))
    # stage 3: labels are the argmax of the CRF marginals over the allowed classes
    masked = pseudo.crf.masked_fill(~allowed[:, :, None, None], -1.0)
    assert torch.equal(pseudo.labels.long(), masked.argmax(1))
    plain = pseudo_labels.from_head(run.net, run.head, images, tags, walk_steps=3, crf=False)
    assert plain.crf is None
    masked = plain.walked.masked_fill(~allowed[:, :, None, None], -1.0)
    assert torch.equal(plain.labels.long(), masked.argmax(1))


def test_pseudo_labels_reject_bad_tags(run_dir):
    run = runs.load_run(run_dir)
    with pytest.raises(ValueError, match=r"tags must be a \(1, 9\) bool tensor"):
        pseudo_labels.from_head(run.net, run.head, torch.rand(1, 3, 16, 16), torch.ones(1, 4))


# ---------------------------------------------------------------------- the stage-2 head


def test_fit_head_writes_stage2_and_scores_the_pseudo_labels(fitted):
    run_dir, result = fitted
    assert result.path == run_dir / "stage2.pt" and result.path.is_file()
    assert result.images == IMAGES
    # a fresh head starts near ln(C); 40 steps on the cached embeddings must lower it
    assert result.loss < 0.8 * math.log(9)
    # pseudo-label quality, recomputed here with scikit-learn
    run = runs.load_run(run_dir)
    batch = train_batch(run)
    pseudo = pseudo_labels.from_head(run.net, run.head, batch["image"], batch["tags"]).labels
    truth = predict.dataset_for(run.cfg, "train", "full")
    target = torch.stack([truth[i]["label"] for i in range(IMAGES)]).numpy().ravel()
    pred = pseudo.numpy().ravel()
    labels = list(range(run.num_classes))
    iou = jaccard_score(target, pred, labels=labels, average=None, zero_division=0)
    present = np.isin(labels, np.concatenate([target, pred]))
    assert result.pseudo_miou == pytest.approx(iou[present].mean())


def test_fit_head_is_repeatable(fitted, tmp_path):
    run_dir, _ = fitted
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    stage2.fit_head(copy, steps=40, batch_size=4, max_images=IMAGES)
    first = torch.load(run_dir / "stage2.pt", weights_only=True)["head"]
    again = torch.load(copy / "stage2.pt", weights_only=True)["head"]
    for key in first:
        assert torch.equal(first[key], again[key]), key


def test_evaluate_reports_stage2_crf_after_fit_head(fitted):
    run_dir, _ = fitted
    results = evaluate.evaluate_run(run_dir, methods=None, max_images=2, knn_options={"k": 3})
    assert results["methods"] == ["knn", "softmax", "softmax_crf", "stage2_crf"]
    run = runs.load_run(run_dir)
    batch = next(predict.image_batches(predict.dataset_for(run.cfg, "val", "full"), 2, 2))
    pred = predict.predict(run.net, run.stage2_head, batch["image"], crf=True).numpy().ravel()
    target = batch["label"].numpy().ravel()
    assert results["stage2_crf"]["pixel_accuracy"] == pytest.approx((pred == target).mean())


def test_load_run_rejects_a_stage2_head_of_another_run(fitted, tmp_path):
    run_dir, _ = fitted
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    state = torch.load(copy / "stage2.pt", weights_only=True)
    state["run_config"]["embedding_dim"] = 16
    torch.save(state, copy / "stage2.pt")
    with pytest.raises(ValueError, match=r"stage2.pt was trained on .*another run.*embedding_dim"):
        runs.load_run(copy)


def test_fit_head_rejects_bad_arguments(run_dir, tmp_path):
    with pytest.raises(ValueError, match="steps must be >= 1"):
        stage2.fit_head(run_dir, steps=0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        stage2.fit_head(run_dir, lr=0.0)
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        stage2.fit_head(tmp_path / "nowhere")


def test_cli_stage2(run_dir, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    args = ["stage2", str(copy), "--steps", "5", "--max-images", "2", "--no-progress"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "pseudo labels of 2 training images: mIoU" in out and str(copy / "stage2.pt") in out
    assert cli.main(["stage2", str(copy), "--steps", "0"]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err


def test_pseudo_label_steps_score_each_step_and_end_at_fit_head_s_labels(fitted):
    run_dir, result = fitted
    run = runs.load_run(run_dir)
    steps = stage2.pseudo_label_steps(run, max_images=IMAGES, batch_size=4)
    assert list(steps.miou) == ["softmax", "walked", "crf"]
    # the last step is the pseudo label itself, scored as fit_head scores it
    assert steps.miou["crf"] == pytest.approx(result.pseudo_miou, abs=1e-12)
    assert torch.equal(steps.labels["crf"], steps.pseudo.labels.long())
    # each step's labels: the argmax of its maps over the tags and background, recomputed
    allowed = steps.batch["tags"].clone()
    allowed[:, 0] = True
    for name in ("softmax", "walked"):
        maps = getattr(steps.pseudo, name).numpy()
        maps[~allowed.numpy()] = -1.0  # (B, C) mask over the class axis
        assert np.array_equal(steps.labels[name].numpy(), maps.argmax(axis=1)), name
    assert len(steps.batch["name"]) == 4 and steps.truth.shape == steps.labels["crf"].shape
    without_crf = stage2.pseudo_label_steps(run, max_images=2, pseudo_options={"crf": False})
    assert list(without_crf.miou) == ["softmax", "walked"]


def test_fit_head_embeds_each_training_image_once(run_dir, tmp_path, monkeypatch):
    # once for its pseudo label and the cached embedding together, and once its mirror image
    from spml_lab.nets import embedding_nets

    embedded = []
    original = embedding_nets.embed

    def counting(net, images):
        embedded.append(len(images))
        return original(net, images)

    monkeypatch.setattr(embedding_nets, "embed", counting)
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    stage2.fit_head(copy, steps=2, batch_size=4, max_images=IMAGES)
    assert sum(embedded) == 2 * IMAGES
