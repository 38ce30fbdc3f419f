"""The scribble widget without a browser: its kernel side, driven by the calls a front end makes.

tests/test_browser.py drives the same widget in JupyterLab with a real mouse.
"""

import io

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from spml_lab.classroom import photos, scribble_widget


def two_halves(height=32, width=48):
    image = np.zeros((height, width, 3), np.uint8)
    image[:, width // 2 :] = (250, 200, 0)
    return image


def test_a_bundled_photo_comes_with_its_stored_strokes():
    pad = scribble_widget.ScribbleWidget("chelsea")
    entry = photos.stored()["chelsea"]
    np.testing.assert_array_equal(pad.image, photos.photo("chelsea"))
    expected = photos.scribbles(pad.image.shape[:2], entry["strokes"], entry["radius"])
    np.testing.assert_array_equal(pad.scribbles, expected)
    assert pad.class_names == entry["classes"]
    assert pad._controls["brush"].options == (*entry["classes"], "eraser")
    assert pad.canvas.width == 256 and pad.canvas.height == 170


def test_stored_strokes_scale_with_a_smaller_side():
    pad = scribble_widget.ScribbleWidget("astronaut", side=64)
    assert pad.image.shape == (64, 64, 3)
    assert set(np.unique(pad.scribbles)) == {0, 1, 2, 255}


def test_mouse_strokes_paint_the_selected_class_and_the_eraser_removes_them():
    pad = scribble_widget.ScribbleWidget(two_halves(), class_names=["dark", "light"], side=48)
    assert (pad.scribbles == 255).all()
    pad._controls["brush"].value = "light"
    pad._controls["radius"].value = 1
    pad._mouse_down(30.4, 5.2)  # ipycanvas gives float canvas pixels
    pad._mouse_move(30.4, 20.7)
    pad._mouse_move(40.0, 20.7)
    pad._mouse_up(40.0, 20.7)
    pad._mouse_move(2.0, 2.0)  # the button is up: no paint
    assert (pad.scribbles[5:21, 30] == 1).all() and (pad.scribbles[21, 30:41] == 1).all()
    assert pad.scribbles[2, 2] == 255 and set(np.unique(pad.scribbles)) == {1, 255}
    pad._controls["brush"].value = "eraser"
    pad._controls["radius"].value = 15
    pad._mouse_down(35.0, 12.0)
    pad._mouse_up(35.0, 12.0)
    assert (pad.scribbles == 255).all()


def test_renaming_the_classes_changes_the_brushes_and_drops_a_removed_class():
    pad = scribble_widget.ScribbleWidget("chelsea")
    pad._controls["classes"].value = "rest, cat"
    assert pad._controls["brush"].options == ("rest", "cat", "eraser")
    assert set(np.unique(pad.scribbles)) == {0, 1, 255}  # the eye's strokes are gone
    pad._controls["classes"].value = "rest"  # one class: refused, said in the status line
    assert pad._controls["brush"].options == ("rest", "cat", "eraser")
    assert "two or more different names" in pad._status.value


def test_train_shows_both_masks_and_the_forest_follows_the_painted_halves():
    pad = scribble_widget.ScribbleWidget(
        two_halves(), class_names=["dark", "light"], side=48, steps=5
    )
    photo_png = pad._masks["spml"].value
    pad.paint((5, 4), (5, 28), brush="dark")
    pad.paint((42, 4), (42, 28), brush="light")
    pad.train()
    pad.training.join(timeout=120)
    assert pad.training.error is None
    forest = pad.masks["forest"]
    assert (forest[:, :20] == 0).all() and (forest[:, 28:] == 1).all()
    assert pad.masks["spml"].shape == (32, 48)
    for method in ("spml", "forest"):
        png = pad._masks[method].value
        assert png != photo_png
        shown = np.asarray(Image.open(io.BytesIO(png)))
        assert shown.shape == (32, 48, 3)
    assert "step 5 of 5" in pad._titles["spml"].value
    assert pad._status.value.startswith("done")


def test_live_mode_trains_when_a_stroke_ends():
    pad = scribble_widget.ScribbleWidget(
        two_halves(), class_names=["dark", "light"], side=48, steps=5, live=True
    )
    pad.paint((5, 4), (5, 28), brush="dark")
    pad._controls["brush"].value = "light"
    pad._mouse_down(42, 4)
    pad._mouse_move(42, 28)
    assert not pad.training.running  # not before the stroke ends
    pad._mouse_up(42, 28)
    pad.training.join(timeout=120)
    assert pad.masks["spml"] is not None and pad.masks["forest"] is not None


def test_a_photo_that_cannot_be_loaded_is_said_in_the_status(tmp_path):
    pad = scribble_widget.ScribbleWidget("chelsea")
    pad._controls["path"].value = str(tmp_path / "missing.jpg")
    pad._controls["load"].click()
    assert "missing.jpg" in pad._status.value and "bundled photos" in pad._status.value
    assert pad.image.shape == (170, 256, 3)  # unchanged
    Image.fromarray(two_halves(100, 400)).save(tmp_path / "mine.png")
    pad._controls["path"].value = str(tmp_path / "mine.png")
    pad._controls["load"].click()
    assert pad.image.shape == (64, 256, 3) and (pad.scribbles == 255).all()
    assert pad.class_names == ["background", "object"]
    assert pad._controls["photo"].value is None  # no bundled photo is shown
    pad._controls["path"].value = ""
    pad._controls["photo"].value = "coffee"
    pad._controls["load"].click()
    np.testing.assert_array_equal(pad.image, photos.photo("coffee"))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="scribbles are"):
        scribble_widget.ScribbleWidget(two_halves(), side=48, scribbles=np.zeros((5, 5)))
    with pytest.raises(ValueError, match="class_names: need two or more"):
        scribble_widget.ScribbleWidget(two_halves(), side=48, class_names=["only"])
    with pytest.raises(ValueError, match=r"ids \[0, 2\] but 2 class_names"):
        scribbles = np.full((32, 48), 255, np.uint8)
        scribbles[0, 0], scribbles[1, 1] = 0, 2
        scribble_widget.ScribbleWidget(two_halves(), side=48, scribbles=scribbles)


def test_the_static_figure_shows_the_scribbles_and_both_methods():
    pad = scribble_widget.ScribbleWidget("chelsea")
    fig = pad.static_figure(title="chelsea")
    assert [ax.get_title() for ax in fig.axes] == [
        "scribbles",
        "spml (not trained)",
        "forest (not trained)",
    ]
    plt.close(fig)
