import numpy as np
import pytest

from spml_lab.classroom import photos
from spml_lab.constants import IGNORE_INDEX
from spml_lab.prediction import one_image


def test_a_stroke_is_its_line_widened_by_the_brush():
    labels = photos.scribbles((9, 9), [(2, [(4, 1), (4, 7)])], radius=1)
    expected = np.full((9, 9), IGNORE_INDEX, np.uint8)
    expected[0:9, 4] = 2  # the vertical line, one row longer each end by the brush
    expected[1:8, 3] = expected[1:8, 5] = 2  # and one column either side (a plus-shaped disk)
    np.testing.assert_array_equal(labels, expected)


def test_later_strokes_paint_over_earlier_ones():
    labels = photos.scribbles((5, 5), [(0, [(0, 2), (4, 2)]), (1, [(2, 0), (2, 4)])], radius=0)
    assert labels[2, 2] == 1 and labels[2, 0] == 0


@pytest.mark.parametrize("name", sorted(photos.stored()))
def test_stored_strokes_are_valid_scribbles_of_their_photo(name):
    entry = photos.stored()[name]
    image = photos.photo(name)
    assert max(image.shape[:2]) == photos.SIDE and image.dtype == np.uint8
    labels = photos.scribbles(image.shape[:2], entry["strokes"], entry["radius"])
    # every class drawn, ids 0..K-1: what `spml-lab segment` accepts
    assert one_image.check_inputs(image, labels)[2] == len(entry["classes"])


def test_unknown_photo_is_named():
    with pytest.raises(ValueError, match="unknown photo 'lena'"):
        photos.photo("lena")


def test_stored_scribbles_at_the_drawing_size_are_the_stored_strokes():
    entry = photos.stored()["astronaut"]
    expected = photos.scribbles((256, 256), entry["strokes"], entry["radius"])
    np.testing.assert_array_equal(photos.stored_scribbles("astronaut", (256, 256)), expected)


def test_stored_scribbles_scale_with_the_photo():
    full = photos.stored_scribbles("chelsea", (170, 256))
    half = photos.stored_scribbles("chelsea", (85, 128))
    # the same strokes at half the size: each class covers about a quarter of the pixels
    for label in (0, 1, 2):
        ratio = (half == label).sum() / (full == label).sum()
        assert 0.15 < ratio < 0.4, (label, ratio)
    with pytest.raises(ValueError, match="no stored strokes for 'coffee'"):
        photos.stored_scribbles("coffee", (10, 10))


def test_fit_scales_the_longer_side_and_keeps_the_aspect():
    image = np.zeros((300, 120, 3), np.uint8)
    image[:150] = 200  # top half bright: still the top half after scaling
    small = photos.fit(image, 100)
    assert small.shape == (100, 40, 3) and small.dtype == np.uint8
    assert small[:45].min() == 200 and small[55:].max() == 0
    with pytest.raises(ValueError, match="side must be an integer >= 16"):
        photos.fit(image, 8)


def test_load_reads_a_users_photo_and_names_what_is_missing(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((64, 512), 90, np.uint8)).save(tmp_path / "grey.png")  # greyscale
    image = photos.load(tmp_path / "grey.png", 128)
    assert image.shape == (16, 128, 3) and (image == 90).all()
    np.testing.assert_array_equal(photos.load("coffee", 64), photos.photo("coffee", 64))
    with pytest.raises(FileNotFoundError, match="nope.jpg.*bundled photos"):
        photos.load(tmp_path / "nope.jpg")
