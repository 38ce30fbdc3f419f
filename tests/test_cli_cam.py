import numpy as np
import pytest

from spml_lab import cli
from spml_lab.constants import IGNORE_INDEX
from spml_lab.data import datasets, make_data


@pytest.mark.parametrize("kind", ["tags", "boxes"])
def test_cam_labels_writes_a_list_that_trains_as_cam_kind(tmp_path, kind, capsys):
    root = tmp_path / "data"
    make_data.write_dataset(root, num_train=6, num_val=2, size=48, seed=3, progress=False)
    with pytest.raises(FileNotFoundError, match="spml-lab cam-labels"):
        datasets.from_folder(root, "train", f"cam_{kind}")
    args = ["cam-labels", str(root), "--kind", kind, "--steps", "2", "--width", "8"]
    assert cli.main([*args, "--batch-size", "2", "--splits", "train", "val"]) == 0
    assert f"train_cam_{kind}.txt" in capsys.readouterr().out
    pseudo = datasets.from_folder(root, "train", f"cam_{kind}")
    truth = datasets.from_folder(root, "train", "full")
    assert len(pseudo) == len(truth) == 6
    for index in range(len(pseudo)):
        label = pseudo[index]["label"].numpy()
        present = set(np.unique(truth[index]["label"].numpy()).tolist())
        # a pseudo label only ever names a class of the image (or leaves the pixel unlabelled)
        assert set(np.unique(label).tolist()) <= present | {IGNORE_INDEX}
    assert len(datasets.from_folder(root, "val", f"cam_{kind}")) == 2


def test_cam_labels_trains_with_the_library_defaults():
    import inspect

    from spml_lab.labelling import tag_training
    from spml_lab.nets import tag_classifier

    args = cli.build_parser().parse_args(["cam-labels", "data"])
    library = inspect.signature(tag_training.train_tag_classifier).parameters
    for name in ("steps", "batch_size", "lr", "width", "device"):
        assert getattr(args, name) == library[name].default, name
    # the settings the accuracy benchmark made its CAM labels with
    assert (tag_training.CLASSIFIER_LR, tag_training.CLASSIFIER_WIDTH) == (2e-3, 32)
    width = inspect.signature(tag_classifier.TagClassifier).parameters["width"].default
    assert width == tag_training.CLASSIFIER_WIDTH == tag_classifier.CLASSIFIER_WIDTH
