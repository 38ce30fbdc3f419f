import numpy as np
import pytest

from spml_lab.classroom import photos
from spml_lab.prediction import one_image


def test_a_stroke_is_its_line_widened_by_the_brush():
    labels = photos.scribbles((9, 9), [(2, [(4, 1), (4, 7)])], radius=1)
    expected = np.full((9, 9), 255, np.uint8)
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
