import threading

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from skimage import draw, morphology

from spml_lab.classroom import photos, scribbling
from spml_lab.prediction import one_image


def halves(height=32, width=48):
    """A picture black on the left, white on the right, with one stroke in each half."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, width // 2 :] = 255
    scribbles = np.full((height, width), 255, np.uint8)
    scribbles[4:-4, 4:8], scribbles[4:-4, -8:-4] = 0, 1
    return image, scribbles


# ---------------------------------------------------------------------- the brush


@pytest.mark.parametrize("radius", [1, 2, 3, 5])
def test_a_dab_is_scikit_images_disk(radius):
    labels = np.full((21, 21), 255, np.uint8)
    scribbling.paint(labels, (10, 10), (10, 10), radius, 4)
    expected = np.full((21, 21), 255, np.uint8)
    disk = morphology.disk(radius).astype(bool)
    expected[10 - radius : 11 + radius, 10 - radius : 11 + radius][disk] = 4
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("stroke", [[(3, 5), (17, 5)], [(6, 2), (6, 15)]])
def test_a_straight_stroke_is_the_stored_strokes_rasterisation(stroke):
    # photos.scribbles draws the line and dilates it by the disk: the same brush, built apart
    labels = np.full((20, 24), 255, np.uint8)
    scribbling.paint(labels, *stroke, 2, 1)
    np.testing.assert_array_equal(labels, photos.scribbles((20, 24), [(1, stroke)], radius=2))


def test_a_diagonal_stroke_covers_its_line_and_stays_within_the_brush():
    labels = np.full((30, 30), 255, np.uint8)
    scribbling.paint(labels, (3, 4), (25, 19), 2, 1)
    rows, cols = draw.line(4, 3, 19, 25)
    assert (labels[rows, cols] == 1).all()
    # every painted pixel lies within the radius of some point of the line (dense samples)
    t = np.linspace(0, 1, 2000)[:, None]
    samples = np.hstack([3 + 22 * t, 4 + 15 * t])  # (2000, 2) x, y
    painted = np.argwhere(labels == 1)[:, ::-1]  # (N, 2) x, y
    nearest = np.sqrt(((painted[:, None] - samples[None]) ** 2).sum(-1)).min(1)
    assert nearest.max() <= 2 + 0.01
    assert (labels == 1).sum() > 4 * len(rows)  # a brush of radius 2 is ~5 px wide


def test_the_eraser_paints_unlabelled_and_the_box_is_clipped_to_the_picture():
    labels = np.zeros((10, 10), np.uint8)
    box = scribbling.paint(labels, (0, 0), (0, 0), 2, 255)
    assert box == (slice(0, 3), slice(0, 3))
    assert labels[0, 0] == 255 and labels[2, 0] == 255 and labels[2, 2] == 0
    assert scribbling.paint(labels, (-20, -20), (-15, -20), 2, 1) is None


def test_bad_brush_arguments_are_named():
    labels = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="radius must be >= 0"):
        scribbling.paint(labels, (0, 0), (1, 1), -1, 0)
    with pytest.raises(ValueError, match="value must be a class id"):
        scribbling.paint(labels, (0, 0), (1, 1), 1, 300)


# ---------------------------------------------------------------------- background training


def test_training_reports_the_forest_then_spml_and_ends_with_segments_mask():
    image, scribbles = halves()
    reports = []
    run = scribbling.Training(lambda *report: reports.append(report), steps=10)
    run.start(image, scribbles)
    run.join(timeout=120)
    assert not run.running and run.error is None
    assert [(m, s) for m, s, _ in reports] == [("forest", 1), ("spml", 5), ("spml", 10)]
    assert set(run.times) == {("forest", 1), ("spml", 5), ("spml", 10)}
    assert run.times[("forest", 1)] < run.times[("spml", 5)] < run.times[("spml", 10)]
    # the thread changes nothing: its last mask is the one `segment` returns with that seed
    np.testing.assert_array_equal(reports[-1][2], one_image.segment(image, scribbles, steps=10))
    # and the forest splits the halves as they are painted
    forest = reports[0][2]
    assert (forest[:, :20] == 0).all() and (forest[:, 28:] == 1).all()


def test_a_new_start_stops_the_old_run_and_nothing_of_it_is_reported_after():
    old_image, old_scribbles = halves(40, 40)
    image, scribbles = halves(32, 48)
    reports, first = [], threading.Event()

    def on_mask(method, step, mask):
        reports.append(mask.shape)
        first.set()

    run = scribbling.Training(on_mask, steps=200, methods=("spml",))
    run.start(old_image, old_scribbles)
    assert first.wait(timeout=60), "the first run reported no mask"
    old_thread = run._thread
    run.start(image, scribbles)
    mark = len(reports)
    old_thread.join(timeout=30)  # it ends at its next report instead of training 200 steps
    assert not old_thread.is_alive()
    run.stop()
    run.join(timeout=60)
    assert set(reports[:mark]) == {(40, 40)}
    assert set(reports[mark:]) <= {(32, 48)}


def test_a_run_sets_its_own_threads_and_the_callers_keep_theirs():
    image, scribbles = halves()
    seen = []
    before = torch.get_num_threads()
    run = scribbling.Training(lambda *r: seen.append(torch.get_num_threads()), threads=2,
                              methods=("forest",))  # fmt: skip
    run.start(image, scribbles)
    run.join(timeout=60)
    assert seen == [2] and torch.get_num_threads() == before


def test_warm_up_runs_once_per_process():
    first = scribbling.warm_up()
    assert scribbling.warm_up() is first
    first.join(timeout=120)
    assert not first.is_alive()


def test_bad_scribbles_end_the_run_with_their_message():
    image, scribbles = halves()
    scribbles[scribbles == 1] = 0  # one class only
    statuses = []
    run = scribbling.Training(lambda *report: None, statuses.append)
    run.start(image, scribbles)
    run.join(timeout=60)
    assert isinstance(run.error, ValueError) and run.times == {}
    assert "one class only" in statuses[-1]


def test_unknown_methods_are_named():
    with pytest.raises(ValueError, match=r"unknown \['knn'\]"):
        scribbling.Training(print, methods=("knn",))


# ---------------------------------------------------------------------- the figure


def test_the_figure_has_the_scribbles_and_one_panel_per_method():
    image, scribbles = halves()
    masks = {"spml": np.zeros((32, 48), np.uint8), "forest": None, "partial_ce": scribbles % 2}
    fig = scribbling.masks_figure(image, scribbles, masks, ["dark", "light"], title="t")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["scribbles", "spml", "forest (not trained)", "partial_ce"]
    shown = [ax.images[0].get_array() for ax in fig.axes]
    np.testing.assert_array_equal(shown[2], image)  # nothing over the untrained one
    assert (shown[1] != image).any() and (shown[3] != image).any()
    plt.close(fig)
