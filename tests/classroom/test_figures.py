import statistics

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from spml_lab.classroom import figures  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_show_cams_draws_one_panel_per_tagged_class_with_its_map():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    cams = torch.rand(2, 4, 2, 2)
    tags = torch.tensor([[True, True, False, True], [True, False, True, False]])
    fig = figures.show_cams(images, cams, tags, ["bg", "a", "b", "c"], truth=np.zeros((2, 8, 8)))
    axes = np.array(fig.axes).reshape(2, 4)  # image, truth, and at most two tagged classes
    assert [ax.get_title() for ax in axes[0, 2:]] == ["CAM a", "CAM c"]
    assert axes[1, 2].get_title() == "CAM b" and not axes[1, 3].images  # one class: one map
    layers = axes[0, 3].images
    assert len(layers) == 2 and np.array_equal(layers[1].get_array(), cams[0, 3].numpy())
    assert layers[1].get_extent() == [-0.5, 7.5, 7.5, -0.5]  # stretched over the 8 x 8 image


def test_show_curves_plots_each_curve_in_its_panel():
    fig = figures.show_curves(
        [0.1, 0.5], {"mIoU": {"a": [0.3, 0.6], "b": [0.2, 0.4]}, "fraction": {"a": [1.0, 0.5]}},
        xlabel="threshold",
    )  # fmt: skip
    left, right = fig.axes
    assert [list(line.get_ydata()) for line in left.lines] == [[0.3, 0.6], [0.2, 0.4]]
    assert list(right.lines[0].get_xdata()) == [0.1, 0.5] and right.get_legend() is None


def test_show_cells_puts_each_run_as_a_dot_and_the_mean_with_the_sample_std():
    rows = [
        {"dataset": "d", "kind": "k", "method": m, "split": s, "miou": v}
        for m, s, v in [("a", "test", "0.5"), ("a", "test", "0.7"), ("a", "test", "0.9"),
                        ("a", "val", "0.1"), ("b", "test", "0.4"), ("b", "test", "")]
    ]  # fmt: skip
    fig = figures.show_cells(rows, [("d", "k", "a"), ("d", "k", "b")])
    ax = fig.axes[0]
    dots = [c for c in ax.collections if isinstance(c, matplotlib.collections.PathCollection)]
    assert sorted(dots[0].get_offsets()[:, 1]) == [0.5, 0.7, 0.9]  # test split only
    assert list(dots[1].get_offsets()[:, 1]) == [0.4]  # the unscored run is left out
    means = [line.get_ydata()[0] for line in ax.lines if line.get_marker() == "D"]
    assert means == pytest.approx([0.7, 0.4])
    bar = ax.containers[0].lines[2][0].get_segments()[0]  # the first cell's error bar
    assert bar[1, 1] - bar[0, 1] == pytest.approx(2 * statistics.stdev([0.5, 0.7, 0.9]))


def test_show_claims_draws_differences_with_two_standard_errors_and_the_verdict():
    checked = [
        {"claim": "x", "metric": "miou", "difference": 0.3, "se": 0.05, "holds": "PASS"},
        {"claim": "y", "metric": "miou", "difference": "-0.01", "se": "0.02", "holds": "FAIL"},
        {"claim": "z", "metric": "miou", "difference": 0.2, "se": None, "holds": "n/a"},
    ]
    fig = figures.show_claims(checked)
    bars = fig.axes[0].patches
    assert [round(b.get_width(), 6) for b in bars] == [0.3, -0.01, 0.2]
    assert [b.get_y() + b.get_height() / 2 for b in bars] == [2, 1, 0]  # first claim on top
    green = matplotlib.colors.to_rgba("tab:green")
    assert [b.get_facecolor() == green for b in bars] == [True, False, False]
    (whiskers,) = [c for c in fig.axes[0].collections if len(c.get_segments()) == 3]
    widths = [s[1, 0] - s[0, 0] for s in whiskers.get_segments()]
    assert widths == pytest.approx([0.2, 0.08, 0.0])  # +- 2 se around each difference
