import json

import numpy as np
from mini_densepose import write_mini_densepose

from spml_lab import cli
from spml_lab.data import datasets, densepose, labelio

TINY = ["--crop-size", "64", "--batch-size", "2", "--width", "8", "--embedding-dim", "8"]
TINY += ["--kmeans-grid", "3", "3", "--no-progress", "--log-every", "1"]


def test_prepare_train_on_points_and_evaluate_a_miniature_densepose(tmp_path, capsys):
    mini = write_mini_densepose(tmp_path / "download")
    data = tmp_path / "densepose"
    # the default split files: densepose_coco_2014_{train,minival}.json in DENSEPOSE_DIR
    prepare = ["prepare", "densepose", str(mini.annotations), "--images", str(mini.images)]
    prepare += ["--out", str(data), "--quiet"]
    assert cli.main([*prepare, "--workers", "2"]) == 0  # two processes
    assert "train 3, val 2 images" in capsys.readouterr().out
    for name, expected in mini.semantic.items():  # the worker processes wrote the truth
        written = labelio.read_label_png(data / "semantic" / f"{name}.png")
        np.testing.assert_array_equal(written, expected)
    assert cli.main(prepare) == 0
    assert "already prepared" in capsys.readouterr().out

    # SPML on the points, the paper's DensePose setting: no co-occurrence, feature affinity on
    run = tmp_path / "run"
    train = ["train", *TINY, "--data", str(data), "--annotation", "points"]
    train += ["--no-cooccurrence", "--feature-affinity", "--max-steps", "3"]
    train += ["--out-dir", str(run)]
    assert cli.main(train) == 0
    assert (run / "final.pt").is_file()
    evaluate = ["evaluate", str(run), "--methods", "knn", "softmax", "--no-progress"]
    assert cli.main(evaluate) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 2 and metrics["split"] == "val"
    assert 0 <= metrics["softmax"]["miou"] <= 1 and 0 <= metrics["knn"]["miou"] <= 1
    assert len(datasets.from_folder(data, "val", "full").class_names) == 15


def test_prepare_densepose_exits_2_naming_the_file_and_split_picks_files(tmp_path, capsys):
    mini = write_mini_densepose(tmp_path / "download")
    prepare = ["prepare", "densepose", str(mini.annotations), "--images", str(mini.images)]
    prepare += ["--quiet", "--workers", "1"]
    missing = mini.annotations / "densepose_coco_2014_valminusminival.json"
    args = [*prepare, "--out", str(tmp_path / "a"), "--split", "val", missing.name]
    assert cli.main(args) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    # only the val file, under another split name
    args = [*prepare, "--out", str(tmp_path / "b"), "--split", "minival", str(mini.files["val"])]
    assert cli.main(args) == 0
    assert "minival 2 images" in capsys.readouterr().out


def test_the_help_states_the_modules_point_radius():
    parser = cli.build_parser()
    prepare = next(a for a in parser._actions if a.dest == "command").choices["prepare"]
    target = next(a for a in prepare._actions if a.dest == "target").choices["densepose"]
    radius = next(a for a in target._actions if a.dest == "point_radius")
    assert f"default {densepose.POINT_RADIUS}" in radius.help
