import re

import numpy as np
import pytest
from PIL import Image

from spml_lab import cli
from spml_lab.constants import IGNORE_INDEX
from spml_lab.data import labelio


@pytest.fixture
def files(tmp_path):
    """A two-colour picture and scribbles on each half, as PNG files."""
    image = np.zeros((32, 40, 3), np.uint8)
    image[:, 20:] = (250, 200, 0)
    scribbles = np.full((32, 40), IGNORE_INDEX, np.uint8)
    scribbles[8:24, 2:6], scribbles[8:24, 30:34] = 0, 1
    Image.fromarray(image).save(tmp_path / "photo.png")
    labelio.write_label_png(tmp_path / "scribbles.png", scribbles, palette=False)
    return tmp_path


def segment(folder, *extra):
    return cli.main(["segment", str(folder / "photo.png"), "--scribbles",
                     str(folder / "scribbles.png"), *map(str, extra)])  # fmt: skip


def test_segment_writes_the_mask_and_overlay(files):
    assert segment(files, "--out", files / "mask.png", "--overlay", files / "over.png",
                   "--method", "forest") == 0  # fmt: skip
    mask = labelio.read_label_png(files / "mask.png")  # single channel, ids as drawn
    assert mask.shape == (32, 40) and set(np.unique(mask)) == {0, 1}
    assert (mask[:, :17] == 0).all() and (mask[:, 23:] == 1).all()
    overlay = np.asarray(Image.open(files / "over.png"))
    assert overlay.shape == (32, 40, 3)


def test_segment_spml_runs_from_the_command(files):
    assert segment(files, "--out", files / "mask.png", "--steps", "10") == 0
    mask = labelio.read_label_png(files / "mask.png")
    assert (mask[:, :12] == 0).mean() > 0.9 and (mask[:, 28:] == 1).mean() > 0.9


def bad(files, picture=None, scribbles=None):
    if picture is not None:
        Image.fromarray(picture).save(files / "photo.png")
    if scribbles is not None:
        labelio.write_label_png(files / "scribbles.png", scribbles, palette=False)


def columns(left, right):
    """Scribbles of id `left` on the first 5 columns and `right` on the others."""
    return np.where(np.arange(40) < 5, left, right).astype(np.uint8)[None].repeat(32, 0)


def blank():
    return np.full((32, 40), IGNORE_INDEX, np.uint8)


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda f: bad(f, picture=np.zeros((30, 40, 3), np.uint8)), "but .*photo.png is 30 x 40"),
        (lambda f: bad(f, scribbles=blank()), "scribbles.png hold no scribble"),
        (lambda f: bad(f, scribbles=columns(1, IGNORE_INDEX)), "one class only"),
        (lambda f: bad(f, scribbles=columns(0, 4)), r"ids out of range.*\[1, 2, 3\] have no"),
        (lambda f: (f / "photo.png").write_bytes(b"not a picture"), "photo.png: cannot read"),
        (lambda f: (f / "scribbles.png").write_bytes(b"\x89PNG broken"), "scribbles.png: cannot"),
        (lambda f: Image.new("RGB", (40, 32)).save(f / "scribbles.png"), "colour channels"),
        (lambda f: (f / "photo.png").unlink(), "file not found"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(files, capsys, spoil, message):
    spoil(files)
    assert segment(files, "--out", files / "out" / "mask.png", "--method", "forest") == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (files / "out").exists()


@pytest.mark.parametrize(
    ("target", "message"),
    [("photo.png", "would replace the input IMAGE"),
     ("scribbles.png", "would replace the input --scribbles")],
)  # fmt: skip
def test_no_output_replaces_an_input(files, capsys, target, message):
    before = (files / target).read_bytes()
    assert segment(files, "--out", files / "mask.png", "--overlay", files / target,
                   "--overwrite") == 2  # fmt: skip
    assert message in capsys.readouterr().err
    assert (files / target).read_bytes() == before and not (files / "mask.png").exists()


def test_an_existing_mask_is_kept_unless_told(files, capsys):
    (files / "mask.png").write_bytes(b"mine")
    assert segment(files, "--out", files / "mask.png", "--method", "forest") == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert (files / "mask.png").read_bytes() == b"mine"
    assert segment(files, "--out", files / "mask.png", "--method", "forest", "--overwrite") == 0
    assert labelio.read_label_png(files / "mask.png").shape == (32, 40)
