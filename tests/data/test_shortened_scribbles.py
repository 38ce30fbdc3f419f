"""Shortened scribbles: pieces of the whole scribbles, nested by length, trained like scribbles."""

import numpy as np
import pytest

from spml_lab.constants import IGNORE_INDEX
from spml_lab.data import datasets, labelio, make_data
from spml_lab.method import relations


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data") / "objects"
    return make_data.write_dataset(folder, num_train=4, num_val=1, size=64, progress=False)


def _labels(root, annotation):
    data = datasets.from_folder(root, "train", annotation)
    return np.stack([labelio.read_label_png(s.label) for s in data.samples])


def test_shorter_scribbles_are_pieces_of_longer_ones(root):
    for annotation in ("scribbles_50", "scribbles_30"):
        make_data.write_shortened_scribbles(root, annotation)
    whole, half, third = (_labels(root, a) for a in ("scribbles", "scribbles_50", "scribbles_30"))
    truth = _labels(root, "full")
    for short, longer in ((half, whole), (third, half)):
        marked = short != IGNORE_INDEX
        # the same walk along each region's skeleton, stopped earlier: a subset, same classes
        assert np.array_equal(short[marked], longer[marked])
        assert 0 < marked.sum() < (longer != IGNORE_INDEX).sum()
    assert np.array_equal(
        third[third != IGNORE_INDEX], truth[third != IGNORE_INDEX]
    )  # only true classes


def test_shortened_scribbles_train_as_scribbles():
    assert relations.paper_settings("scribbles_30") == relations.paper_settings("scribbles")


def test_missing_shortened_list_says_how_to_write_it(tmp_path, root):
    with pytest.raises(FileNotFoundError, match="write_shortened_scribbles"):
        datasets.from_folder(root, "val", "scribbles_80")
    with pytest.raises(ValueError, match="must be one of"):
        make_data.write_shortened_scribbles(root, "scribbles_99")
