"""The committed embedded samples are exactly what `spml-lab make-data` writes today."""

import json

import numpy as np
import pytest
from PIL import Image

from spml_lab import cli
from spml_lab.data import datasets, labelio

SAMPLES = datasets.DATA_SAMPLES
# the commands of `make data-samples`
RECIPES = {
    "objects": [
        *("--kind", "objects", "--train", "64", "--val", "32", "--seed", "0"),
        *("--size", "96", "--difficulty", "0.1", "--object-scale", "2.0", "--superpixels", "16"),
    ],
    "parts": ["--kind", "parts", "--train", "64", "--val", "32", "--seed", "1"],
}


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("kind", sorted(RECIPES))
def test_committed_samples_match_a_fresh_make_data(kind, tmp_path):
    fresh = tmp_path / kind
    assert cli.main(["make-data", str(fresh), "--quiet", *RECIPES[kind]]) == 0
    committed = SAMPLES / kind
    assert _files(fresh) == _files(committed), "run `make data-samples` and commit the result"
    for relative in _files(fresh):
        new, old = fresh / relative, committed / relative
        if relative.suffix == ".jpg":
            # compare decoded pixels: encoders of other Pillow builds may write other bytes
            a = np.asarray(Image.open(new), np.int16)
            b = np.asarray(Image.open(old), np.int16)
            assert np.abs(a - b).max() <= 2, relative
        elif relative.suffix == ".png":
            np.testing.assert_array_equal(
                labelio.read_id_png(new), labelio.read_id_png(old), err_msg=str(relative)
            )
        else:
            assert new.read_text() == old.read_text(), relative


def test_samples_are_small_and_complete():
    total = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    assert total < 6e6, f"{SAMPLES} holds {total / 1e6:.1f} MB"
    for kind in RECIPES:
        meta = json.loads((SAMPLES / kind / "dataset.json").read_text())
        assert meta["splits"] == {"train": 64, "val": 32}
        for split in ("train", "val"):
            for annotation in ("full", "points", "scribbles", "boxes", "tags"):
                lines = (SAMPLES / kind / "lists" / f"{split}_{annotation}.txt").read_text()
                assert len(lines.splitlines()) == meta["splits"][split]
