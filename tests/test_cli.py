import json

import numpy as np
import pytest

from spml_lab import cli
from spml_lab.constants import IGNORE_INDEX
from spml_lab.data import labelio, synthetic
from spml_lab.data.make_data import SPLIT_SEEDS


def test_make_data_writes_the_list_file_layout(tmp_path):
    root = tmp_path / "data"
    assert (
        cli.main(["make-data", str(root), "--train", "3", "--val", "2", "--size", "64", "--quiet"])
        == 0
    )
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["num_classes"] == len(meta["class_names"]) and meta["splits"] == {
        "train": 3,
        "val": 2,
    }
    line = (root / "lists" / "train_points.txt").read_text().splitlines()[0].split()
    assert line == [
        "images/train/train_00000.jpg",
        "points/train/train_00000.png",
        "superpixels/train/train_00000.png",
    ]
    # the written ground truth is the generator's, for the split's documented seed
    scenes = synthetic.generate(2, kind="objects", size=64, seed=SPLIT_SEEDS["val"](0))
    semantic = labelio.read_label_png(root / "semantic" / "val" / "val_00001.png")
    np.testing.assert_array_equal(semantic, scenes.semantic[1])
    points = labelio.read_label_png(root / "points" / "val" / "val_00001.png")
    labelled = points != IGNORE_INDEX
    assert labelled.any() and (points[labelled] == scenes.semantic[1][labelled]).all()


def test_make_data_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert cli.main(["make-data", str(tmp_path), "--train", "1", "--val", "1", "--quiet"]) == 2
    assert "is not empty" in capsys.readouterr().err


def test_make_data_names_a_bad_superpixel_method(tmp_path, capsys):
    args = ["make-data", str(tmp_path / "d"), "--superpixel-method", "nope", "--quiet"]
    assert cli.main(args) == 2
    assert "superpixel_method" in capsys.readouterr().err


def test_run_notebook_parses_literals():
    assert (
        cli._literal("3") == 3
        and cli._literal("[1, 2]") == [1, 2]
        and cli._literal("slic") == "slic"
    )


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit):
        cli.main(["no-such-command"])


def test_make_data_writes_a_held_out_test_split_and_coarser_superpixels(tmp_path):
    root = tmp_path / "data"
    args = ["make-data", str(root), "--train", "2", "--val", "1", "--test", "2", "--size", "64",
            "--superpixels", "12", "--object-scale", "1.5", "--quiet"]  # fmt: skip
    assert cli.main(args) == 0
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["splits"] == {"train": 2, "val": 1, "test": 2}
    assert meta["superpixel_options"] == {"n_segments": 12}
    assert meta["options"]["object_scale"] == 1.5
    assert len((root / "lists" / "test_full.txt").read_text().splitlines()) == 2
    # the test scenes are the generator's for the test seed, and none of train or val
    scenes = synthetic.generate(2, kind="objects", size=64, seed=SPLIT_SEEDS["test"](0),
                                object_scale=1.5)  # fmt: skip
    semantic = labelio.read_label_png(root / "semantic" / "test" / "test_00001.png")
    np.testing.assert_array_equal(semantic, scenes.semantic[1])
    assert SPLIT_SEEDS["test"](0) not in {SPLIT_SEEDS[s](k) for s in ("train", "val")
                                          for k in range(1000)}  # fmt: skip
    counts = [len(np.unique(labelio.read_id_png(p)))
              for p in sorted((root / "superpixels").rglob("*.png"))]  # fmt: skip
    assert max(counts) <= 20  # about 12 asked for (SLIC's grid rounds it)
