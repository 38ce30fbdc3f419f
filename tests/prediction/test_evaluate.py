import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
import yaml
from PIL import Image
from sklearn.metrics import jaccard_score

from spml_lab import cli
from spml_lab.constants import IGNORE_INDEX
from spml_lab.method import label_maps
from spml_lab.nets.build import build_model
from spml_lab.pictures import viz
from spml_lab.prediction import evaluate, knn, predict
from spml_lab.training import runs, train
from spml_lab.training.config import TrainConfig

# Tiny runs as in test_train.py: 64 px crops, 16 x 16 embeddings, a step in tens of ms.
TINY = dict(crop_size=64, batch_size=2, width=8, embedding_dim=8, kmeans_grid=(3, 3))
TINY.update(progress=False, log_every=5, device="cpu")
KNN = {"k": 5, "grid": (4, 4)}  # small and fast; the bank still has hundreds of prototypes


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("evaluate") / "run"
    return train.fit(TrainConfig(max_steps=6, seed=1, out_dir=str(out), **TINY))


@pytest.fixture
def copy_run(run_dir, tmp_path):
    """A private copy of the trained run, for tests that damage it."""
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    return target


def val_batch(count):
    dataset = predict.dataset_for(TrainConfig(), "val", "full")
    return next(predict.image_batches(dataset, count, count))


# ---------------------------------------------------------------------- load_run


def test_load_run_gives_eval_mode_weights_equal_to_the_final_pt(run_dir):
    run = runs.load_run(run_dir)
    state = torch.load(run_dir / "final.pt", weights_only=True)
    assert not run.net.training and not run.head.training
    assert run.step == 6 and run.class_names == state["class_names"]
    for mine, stored in ((run.net, state["model"]), (run.head, state["head"])):
        assert list(mine.state_dict()) == list(stored)
        for k, a in mine.state_dict().items():
            assert torch.equal(a, stored[k]), k
    # the final.pt itself works as well as its folder
    assert runs.load_run(run_dir / "final.pt").path == run_dir


def test_load_run_missing_folder_and_missing_final(tmp_path):
    with pytest.raises(FileNotFoundError, match="run folder not found: .*nowhere"):
        runs.load_run(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="final.pt not found"):
        runs.load_run(tmp_path)


def test_load_run_rejects_a_config_yaml_from_another_run(copy_run):
    values = yaml.safe_load((copy_run / "config.yaml").read_text())
    values["lr"] = 0.5
    (copy_run / "config.yaml").write_text(yaml.safe_dump(values))
    with pytest.raises(ValueError, match=r"final.pt holds a config that differs .* lr"):
        runs.load_run(copy_run)


def test_load_run_names_the_offending_keys_of_a_mismatched_state_dict(copy_run):
    state = torch.load(copy_run / "final.pt", weights_only=True)
    state["model"]["extra.weight"] = torch.zeros(1)
    del state["model"]["embed.bias"]
    torch.save(state, copy_run / "final.pt")
    with pytest.raises(ValueError, match=r"final.pt.*'model'.*missing keys \['embed.bias'\]") as e:
        runs.load_run(copy_run)
    assert "unexpected keys ['extra.weight']" in str(e.value)
    state["model"]["embed.bias"] = torch.zeros(3)  # wrong shape (D = 8)
    del state["model"]["extra.weight"]
    torch.save(state, copy_run / "final.pt")
    with pytest.raises(ValueError, match=r"shape mismatches embed.bias \(3,\) saved vs \(8,\)"):
        runs.load_run(copy_run)


def test_load_run_rejects_an_unreadable_final(copy_run):
    (copy_run / "final.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="final.pt: cannot read checkpoint"):
        runs.load_run(copy_run)


# ---------------------------------------------------------------------- prediction


def test_predict_softmax_is_the_flip_average_of_the_heads_softmax(run_dir):
    run = runs.load_run(run_dir)
    images = val_batch(2)["image"]
    with torch.no_grad():
        emb, flipped = (run.net(x).permute(0, 2, 3, 1) for x in (images, images.flip(-1)))
        one = torch.softmax(run.head(emb, size=tuple(images.shape[-2:])), dim=1)
        mirror = torch.softmax(run.head(flipped, size=tuple(images.shape[-2:])), dim=1)
    got = predict.predict_softmax(run.net, run.head, images)
    torch.testing.assert_close(got, (one + mirror.flip(-1)) / 2)
    torch.testing.assert_close(predict.predict_softmax(run.net, run.head, images, flip=False), one)


def test_predict_rejects_bad_input(run_dir):
    run = runs.load_run(run_dir)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        predict.predict(run.net, run.head, torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="method must be"):
        predict.predict(run.net, run.head, torch.rand(1, 3, 8, 8), method="svm")
    with pytest.raises(ValueError, match="needs bank="):
        predict.predict(run.net, run.head, torch.rand(1, 3, 8, 8), method="knn")


def test_bank_comes_from_the_training_images_weak_labels(run_dir):
    run = runs.load_run(run_dir)
    bank = predict.build_bank(run, max_images=6, knn_options=KNN)
    train_set = predict.dataset_for(run.cfg, "train", "scribbles")
    weak = torch.stack([train_set[i]["label"] for i in range(6)])
    # the same bank, built by hand from the same images at embedding resolution
    with torch.no_grad():
        emb = run.net(torch.stack([train_set[i]["image"] for i in range(6)])).permute(0, 2, 3, 1)
    small = label_maps.downsample_nearest(weak, emb.shape[1:3])
    want = knn.build_prototype_bank(emb, small, grid=KNN["grid"])
    assert torch.equal(bank.labels, want.labels)
    torch.testing.assert_close(bank.prototypes, want.prototypes)
    present = set(small[small != IGNORE_INDEX].unique().tolist())
    assert set(bank.labels.tolist()) == present and IGNORE_INDEX not in present


def test_knn_prediction_segments_test_images_as_the_bank_was_built(run_dir):
    run = runs.load_run(run_dir)
    bank = predict.build_bank(run, max_images=6, knn_options=KNN)
    assert bank.settings == {"k": KNN["k"], "grid": KNN["grid"], "iterations": 10}
    images = val_batch(2)["image"]
    implicit = predict.predict(run.net, run.head, images, method="knn", bank=bank)
    explicit = predict.predict(
        run.net, run.head, images, method="knn", bank=bank, knn_options=dict(bank.settings)
    )
    other = predict.predict(
        run.net, run.head, images, method="knn", bank=bank, knn_options={"grid": (12, 12)}
    )
    assert torch.equal(implicit, explicit) and not torch.equal(implicit, other)


# ---------------------------------------------------------------------- evaluate_run


def sklearn_scores(pred, target, num_classes):
    pred, target = pred.numpy().ravel(), target.numpy().ravel()
    keep = target != IGNORE_INDEX
    labels = list(range(num_classes))
    iou = jaccard_score(target[keep], pred[keep], labels=labels, average=None, zero_division=0)
    # a class in neither ground truth nor prediction has no IoU (0 / 0): NaN, as mean_iou
    absent = ~np.isin(labels, np.concatenate([target[keep], pred[keep]]))
    iou[absent] = np.nan
    return iou, float((pred[keep] == target[keep]).mean())


def test_evaluate_run_matches_sklearn_on_the_same_predictions(copy_run):
    # 7 images in batches of 3: the confusion matrices must add up across uneven batches
    results = evaluate.evaluate_run(copy_run, max_images=7, batch_size=3, knn_options=KNN)
    assert results["methods"] == ["knn", "softmax", "softmax_crf"]
    assert results["images"] == 7 and results["split"] == "val"
    assert results["config"]["annotation"] == "scribbles" and results["config"]["step"] == 6
    saved = json.loads((copy_run / "eval" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(results))

    run = runs.load_run(copy_run)
    batch = val_batch(7)
    bank = predict.build_bank(run, knn_options=KNN)
    predictions = {
        "knn": predict.predict(
            run.net, run.head, batch["image"], method="knn", bank=bank, knn_options=KNN
        ),
        "softmax": predict.predict(run.net, run.head, batch["image"]),
        "softmax_crf": predict.predict(run.net, run.head, batch["image"], crf=True),
    }
    names = run.class_names
    with open(copy_run / "eval" / "per_class.csv") as handle:
        rows = [line.strip().split(",") for line in handle]
    assert rows[0] == ["class", "knn", "softmax", "softmax_crf"]
    assert [r[0] for r in rows[1:]] == names
    for column, (method, pred) in enumerate(predictions.items(), start=1):
        iou, accuracy = sklearn_scores(pred, batch["label"], run.num_classes)
        got = saved[method]
        assert got["pixel_accuracy"] == pytest.approx(accuracy)
        assert got["miou"] == pytest.approx(np.nanmean(iou))
        for name, value, row in zip(names, iou, rows[1:], strict=True):
            if np.isnan(value):
                assert got["per_class_iou"][name] is None and row[column] == ""
            else:
                assert got["per_class_iou"][name] == pytest.approx(value)
                assert float(row[column]) == pytest.approx(value, abs=1e-6)


def _layer_heights():
    """Height of each package in the layer contract of pyproject.toml (0 = the top)."""
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    layers = pyproject["tool"]["importlinter"]["contracts"][0]["layers"]
    return {
        name.strip(): height
        for height, line in enumerate(layers)
        for name in line.replace(":", "|").split("|")
    }


def test_a_run_folders_walk_through_evaluate_run_climbs_at_most_4_times(copy_run, monkeypatch):
    """Locating, loading, locking and writing a run: few returns to a higher layer.

    Every spml_lab function evaluate_run calls is traced, except the scoring of the images
    (`_evaluate`); the walk is the layer of the innermost spml_lab frame after each call and
    return. A climb is a step of the walk to a higher layer. The bottom layer (constants,
    checks) is left out: any layer checks its arguments there.
    """
    heights = _layer_heights()
    bottom = max(heights.values())

    def height(module):
        parts = module.split(".")
        return next(heights[".".join(parts[:n])] for n in range(len(parts), 0, -1)
                    if ".".join(parts[:n]) in heights)  # fmt: skip

    monkeypatch.setattr(evaluate, "_evaluate", lambda *a: {"methods": [], "class_names": []})
    stack, walk = [], []

    def profile(frame, event, arg):
        module = frame.f_globals.get("__name__", "")
        if event not in ("call", "return") or not module.startswith("spml_lab."):
            return
        if event == "call":
            stack.append((height(module), f"{module}.{frame.f_code.co_name}"))
        else:
            stack.pop()
        here = [entry for entry in stack if entry[0] != bottom]
        if here and (not walk or walk[-1][0] != here[-1][0]):
            walk.append(here[-1])

    sys.setprofile(profile)
    try:
        evaluate.evaluate_run(copy_run, methods=["softmax"])
    finally:
        sys.setprofile(None)
    climbs = [(a[1], b[1]) for a, b in zip(walk, walk[1:], strict=False) if b[0] < a[0]]
    assert walk[0][1] == "spml_lab.prediction.evaluate.evaluate_run"
    assert len(climbs) <= 4, climbs


def test_evaluate_run_rejects_bad_methods_and_missing_stage2(run_dir):
    with pytest.raises(ValueError, match="methods must be some of"):
        evaluate.evaluate_run(run_dir, methods=["svm"])
    with pytest.raises(FileNotFoundError, match=r"stage2.pt not found.*spml-lab stage2"):
        evaluate.evaluate_run(run_dir, methods=["stage2_crf"])
    with pytest.raises(ValueError, match="has no split 'test'"):
        evaluate.evaluate_run(run_dir, split="test", methods=["softmax"])


def test_image_batches_split_on_size_changes():
    def item(size):
        return {"image": torch.zeros(3, size, size), "name": str(size)}

    items = [item(s) for s in (4, 4, 4, 8, 4)]
    got = [list(b["name"]) for b in predict.image_batches(items, 2)]
    assert got == [["4", "4"], ["4"], ["8"], ["4"]]
    with pytest.raises(ValueError, match="batch_size"):
        list(predict.image_batches(items, 0))


# ---------------------------------------------------------------------- CLI


def test_cli_evaluate_prints_a_table_and_the_paths(copy_run, capsys):
    args = ["evaluate", str(copy_run), "--methods", "softmax", "--max-images", "2"]
    assert cli.main([*args, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "softmax" in out and str(copy_run / "eval" / "metrics.json") in out
    saved = json.loads((copy_run / "eval" / "metrics.json").read_text())
    assert f"{saved['softmax']['miou']:.4f}" in out


def test_cli_evaluate_exits_2_with_the_message(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path / "nowhere")]) == 2
    assert "run folder not found" in capsys.readouterr().err


def test_cli_predict_writes_masks_that_decode_to_the_predictions(run_dir, tmp_path, capsys):
    batch = val_batch(2)
    paths = []
    for name, image in zip(batch["name"], batch["image"], strict=True):
        pixels = (image.permute(1, 2, 0) * 255).round().byte().numpy()
        paths.append(tmp_path / f"{name}.png")  # PNG: no JPEG loss, same pixels as the data
        Image.fromarray(pixels).save(paths[-1])
    out = tmp_path / "masks"
    args = ["predict", str(run_dir / "final.pt"), *map(str, paths), "--out", str(out)]
    assert cli.main(args) == 0
    assert str(out / f"{batch['name'][0]}_mask.png") in capsys.readouterr().out
    run = runs.load_run(run_dir)
    want = predict.predict(run.net, run.head, batch["image"], crf=True)
    colours = viz.palette(run.num_classes)
    for name, labels in zip(batch["name"], want, strict=True):
        rgb = np.asarray(Image.open(out / f"{name}_mask.png"))
        # decode: each colour back to the index of its palette entry
        match = (rgb[:, :, None, :] == colours[None, None]).all(-1)
        assert match.sum(-1).min() == 1  # every pixel is exactly one class colour
        np.testing.assert_array_equal(match.argmax(-1), labels.numpy())
    # without --out the mask lands beside the image; --no-crf is the plain softmax
    assert cli.main(["predict", str(run_dir), str(paths[0]), "--no-crf"]) == 0
    rgb = np.asarray(Image.open(tmp_path / f"{batch['name'][0]}_mask.png"))
    plain = predict.predict(run.net, run.head, batch["image"][:1])[0].numpy()
    np.testing.assert_array_equal(rgb, viz.colorize(plain, colours))


def test_cli_predict_names_an_unreadable_image(run_dir, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    assert cli.main(["predict", str(run_dir), str(broken)]) == 2
    assert f"{broken}: cannot read image" in capsys.readouterr().err
    assert cli.main(["predict", str(run_dir), str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert cli.main(["predict", str(tmp_path / "norun"), str(broken)]) == 2
    assert "run folder not found" in capsys.readouterr().err


def test_a_run_pins_its_data_and_refuses_another_dataset_at_that_path(tmp_path, monkeypatch):
    from spml_lab.data import make_data

    data = tmp_path / "work" / "data"
    make_data.write_dataset(data, num_train=4, num_val=2, size=64, progress=False)
    monkeypatch.chdir(tmp_path / "work")
    cfg = TrainConfig(**TINY, data="data", max_steps=1, out_dir=str(tmp_path / "runs" / "ref"))
    run = train.fit(cfg)
    assert TrainConfig.from_yaml(run / "config.yaml").data == str(data)  # absolute
    # elsewhere, a folder with a data/ of its own: the run still scores the data it trained on
    other = tmp_path / "elsewhere"
    make_data.write_dataset(other / "data", num_train=4, num_val=2, size=64, seed=5,
                            progress=False)  # fmt: skip
    monkeypatch.chdir(other)
    first = evaluate.evaluate_run(run, methods=["softmax"])
    assert first["config"]["data"] == str(data)
    moved = shutil.move(run, tmp_path / "moved")  # a moved run folder still finds its data
    assert evaluate.evaluate_run(moved, methods=["softmax"])["softmax"] == first["softmax"]
    run = shutil.move(moved, run)
    # the run's data replaced by another dataset at the same path: refused, both named
    shutil.rmtree(data)
    shutil.copytree(other / "data", data)
    with pytest.raises(ValueError, match="is not the dataset this run trained on") as error:
        evaluate.evaluate_run(run, methods=["softmax"])
    assert str(data) in str(error.value)
    with pytest.raises(ValueError, match="its data changed"):
        train.fit(cfg.replace(data=str(data), resume=True))


def test_large_images_are_labelled_at_a_bounded_working_size():
    torch.manual_seed(0)
    net, head = build_model(TrainConfig(width=8, embedding_dim=8), 3)
    net, head = net.eval(), head.eval()
    image = torch.rand(1, 3, 300, 200)
    labels = predict.predict(net, head, image, crf=True, max_side=100)
    assert labels.shape == (1, 300, 200)
    # the same as labelling the antialiased 100 x 67 image and sampling it back up
    small = torch.nn.functional.interpolate(image, size=(100, 67), mode="bilinear",
                                            antialias=True).clamp(0, 1)  # fmt: skip
    want = predict.predict(net, head, small, crf=True)
    want = torch.nn.functional.interpolate(want[:, None].float(), size=(300, 200))[:, 0].long()
    assert torch.equal(labels, want)
    assert torch.equal(predict.predict(net, head, small, max_side=100),
                       predict.predict(net, head, small))  # small enough: untouched  # fmt: skip


def test_evaluate_run_records_each_image_s_miou_and_can_write_elsewhere(copy_run, tmp_path):
    results = evaluate.evaluate_run(
        copy_run, methods=["softmax", "softmax_crf"], max_images=5, batch_size=2, out=tmp_path
    )
    assert (tmp_path / "metrics.json").is_file() and not (copy_run / "eval").exists()
    run = runs.load_run(copy_run)
    batch = val_batch(5)
    labels = evaluate.predict_methods(run, batch["image"], ["softmax", "softmax_crf"])
    assert torch.equal(labels["softmax"], predict.predict(run.net, run.head, batch["image"]))
    for method, pred in labels.items():
        for b in range(5):
            iou, _ = sklearn_scores(pred[b : b + 1], batch["label"][b : b + 1], run.num_classes)
            assert results[method]["per_image_miou"][b] == pytest.approx(np.nanmean(iou)), b
    with pytest.raises(ValueError, match="needs bank"):
        evaluate.predict_methods(run, batch["image"], ["knn"])
