import json

import numpy as np
from mini_voc import write_mini_voc

from spml_lab import cli
from spml_lab.constants import IGNORE_INDEX
from spml_lab.data import datasets, labelio

TINY = ["--crop-size", "64", "--batch-size", "2", "--width", "8", "--embedding-dim", "8"]
TINY += ["--kmeans-grid", "3", "3", "--no-progress", "--log-every", "1"]


def test_prepare_cam_labels_train_and_evaluate_on_a_miniature_vocdevkit(tmp_path, capsys):
    mini = write_mini_voc(tmp_path / "download")
    data = tmp_path / "voc"
    prepare = ["prepare", "voc", str(mini.devkit), "--out", str(data), "--sbd", str(mini.sbd)]
    prepare += ["--scribbles", str(mini.scribbles), "--quiet"]
    assert cli.main([*prepare, "--workers", "2"]) == 0  # two processes
    assert "train 3, val 2, train_aug 6 images" in capsys.readouterr().out
    for name in mini.train_aug:  # the worker processes wrote what the masks say
        written = labelio.read_label_png(data / "semantic" / f"{name}.png")
        np.testing.assert_array_equal(written, mini.semantic[name])
    assert cli.main(prepare) == 0
    assert "already prepared" in capsys.readouterr().out

    # CAM pseudo labels of the XML boxes; VOC's images differ in size, so the classifier crops
    cam = ["cam-labels", str(data), "--kind", "boxes", "--steps", "2", "--width", "8"]
    cam += ["--batch-size", "2", "--crop-size", "48", "--splits", "train_aug"]
    assert cli.main(cam) == 0
    pseudo = datasets.from_folder(data, "train_aug", "cam_boxes")
    for index in range(len(pseudo)):
        item = pseudo[index]
        boxes = {c for c, *_ in mini.boxes[item["name"]].tolist()}
        assert set(np.unique(item["label"].numpy()).tolist()) <= boxes | {0, IGNORE_INDEX}

    run = tmp_path / "run"
    train = ["train", *TINY, "--data", str(data), "--split", "train_aug"]
    train += ["--annotation", "cam_boxes", "--max-steps", "3", "--out-dir", str(run)]
    assert cli.main(train) == 0
    evaluate = ["evaluate", str(run), "--methods", "knn", "softmax", "--no-progress"]
    assert cli.main(evaluate) == 0
    assert "knn" in capsys.readouterr().out
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 2 and metrics["split"] == "val"
    assert 0 <= metrics["softmax"]["miou"] <= 1 and 0 <= metrics["knn"]["miou"] <= 1


def test_prepare_exits_2_naming_the_bad_file_and_skip_bad_reports_it(tmp_path, capsys):
    mini = write_mini_voc(tmp_path / "download", num_train=2, num_val=1, num_sbd=0)
    xml = mini.voc_dir / "Annotations" / "2007_000002.xml"
    xml.write_text("<annotation>")
    prepare = ["prepare", "voc", str(mini.devkit), "--workers", "1", "--quiet"]
    assert cli.main([*prepare, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert str(xml) in err and "XML does not parse" in err and "--skip-bad" in err
    assert cli.main([*prepare, "--out", str(tmp_path / "b"), "--skip-bad"]) == 0
    assert "left out 1 bad images" in capsys.readouterr().out
    report = json.loads((tmp_path / "b" / "bad_images.json").read_text())
    assert [r["file"] for r in report] == [str(xml)]
