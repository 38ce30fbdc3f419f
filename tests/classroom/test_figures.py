import statistics

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from spml_lab.classroom import figures  # noqa: E402
from spml_lab.constants import IGNORE_INDEX


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


def _run_folder(folder, cfg, rows):
    folder.mkdir()
    cfg.to_yaml(folder / "config.yaml")
    columns = list(rows[0])
    lines = [",".join(columns)] + [",".join(str(r[c]) for c in columns) for r in rows]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_show_losses_draws_each_run_s_relations_total_and_head(tmp_path):
    from spml_lab.training.config import TrainConfig

    row = {"step": 1, "low_level": 0.5, "semantic_annotation": 0.0, "cooccurrence": 0.2,
           "total": 0.3, "softmax_ce": 0.0}  # fmt: skip
    rows = [row, {**row, "step": 2, "total": 0.25}]
    tags = _run_folder(tmp_path / "tags", TrainConfig(annotation="tags"), rows)
    scribbles = _run_folder(
        tmp_path / "scribbles", TrainConfig(annotation="scribbles"),
        [{**r, "semantic_annotation": 0.4, "softmax_ce": 1.0} for r in rows],
    )  # fmt: skip
    fig = figures.show_losses([tags, scribbles])
    left, right = fig.axes
    labels = [line.get_label() for line in left.lines]
    assert labels == ["low_level (weight 0.1)", "cooccurrence (weight 0.3)", "total (weighted sum)"]
    assert "softmax head CE" in [line.get_label() for line in right.lines]
    assert list(left.lines[-1].get_ydata()) == [0.3, 0.25] and left.get_yscale() == "log"
    assert left.get_title() == "small, tags, 2 steps"


def test_show_per_class_draws_one_bar_per_class_and_series_at_its_value():
    values = {"a": {"bg": 0.5, "cat": 0.25}, "b": {"bg": 0.75, "cat": float("nan")}}
    fig = figures.show_per_class(values, ylabel="IoU", title="t")
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights[:2] == [0.5, 0.25] and heights[2] == 0.75 and np.isnan(heights[3])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["bg", "cat"]
    colours = np.array([[255, 0, 0], [0, 0, 255]], np.uint8)
    single = figures.show_per_class({"bank": {"bg": 3, "cat": 1}}, ylabel="n", colours=colours)
    bars = single.axes[0].patches
    assert bars[1].get_facecolor()[:3] == (0.0, 0.0, 1.0) and single.axes[0].get_legend() is None


def _steps():
    from spml_lab.prediction.pseudo_labels import PseudoLabels
    from spml_lab.prediction.stage2 import PseudoLabelSteps

    maps = torch.zeros(2, 3, 4, 4)
    maps[:, 2] = 2.0  # class 2 scores highest
    fields = {name: maps for name in PseudoLabels._fields}
    pseudo = PseudoLabels(**{**fields, "labels": torch.full((2, 4, 4), 2)})
    tags = torch.tensor([[True, False, True], [True, True, False]])
    batch = {"image": torch.rand(2, 3, 4, 4), "label": torch.full((2, 4, 4), IGNORE_INDEX),
             "tags": tags, "name": ["a", "b"]}  # fmt: skip
    labels = {s: torch.full((2, 4, 4), 2) for s in ("softmax", "walked", "crf")}
    miou = {"softmax": 0.1, "walked": 0.2, "crf": 0.3}
    return PseudoLabelSteps(miou, batch, torch.zeros(2, 4, 4, dtype=torch.long), labels, pseudo)


def test_show_pseudo_label_steps_and_class_scores_draw_each_step_and_allowed_class():
    steps, names = _steps(), ["bg", "cat", "dog"]
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 0, 255]], np.uint8)
    fig = figures.show_pseudo_label_steps(steps, names, colours, annotation="points", num_show=2)
    grid = np.array(fig.axes[:10]).reshape(2, 5)
    assert [ax.get_title() for ax in grid[0]] == [
        "points", "ground truth", "softmax (tags)", "random walk", "CRF = pseudo"
    ]  # fmt: skip
    assert grid[1, 0].get_ylabel() == "b\ncat"  # the second image is tagged "cat"
    drawn = grid[0, 4].images[0].get_array()
    assert (np.asarray(drawn)[..., :3] == colours[2]).all()  # the pseudo label, class 2
    scores = figures.show_class_scores(steps, names, image=0)
    assert [ax.get_title() for ax in scores.axes[:2]] == ["bg", "dog"]  # background + tag
    brightest = np.asarray(scores.axes[1].images[0].get_array())
    assert (brightest == (np.array(plt.cm.viridis(1.0)[:3]) * 255).astype(np.uint8)).all()


def test_show_failures_keeps_only_the_wrong_pixels_in_the_last_column():
    from spml_lab.classroom.trained_runs import Failure

    truth, labels = np.zeros((4, 4), np.int64), np.zeros((4, 4), np.int64)
    labels[0, 0] = 1
    failure = Failure("x", np.full((4, 4, 3), 100, np.uint8), truth, labels, 0.4, (0, 1), 1)
    colours = np.array([[0, 0, 0], [255, 0, 0]], np.uint8)
    fig = figures.show_failures([failure], ["bg", "cat"], colours, method="softmax")
    wrong = np.asarray(fig.axes[3].images[0].get_array())
    assert (wrong[0, 0] == colours[1]).all() and (wrong[1, 1] == 40).all()  # dimmed by 0.6
    assert fig.axes[0].get_ylabel() == "x: mIoU 0.40\nbg -> cat"


def test_show_cams_draws_only_the_first_num_show_images():
    images = np.zeros((3, 8, 8, 3), np.uint8)
    tags = torch.tensor([[True, True], [True, True], [True, True]])
    fig = figures.show_cams(images, torch.rand(3, 2, 8, 8), tags, ["bg", "a"],
                            truth=torch.zeros(3, 8, 8, dtype=torch.long), num_show=2)  # fmt: skip
    assert len(fig.axes) == 2 * 3  # two rows: image, truth, CAM a


def test_show_distributions_draws_a_box_per_setting_at_its_quartiles():
    rng = np.random.default_rng(0)
    a, b = rng.random(20), np.append(rng.random(9) + 1, np.nan)  # NaN: left out
    fig = figures.show_distributions({"first": {"a": a, "b": b}, "second": {"c": [1.0, 2.0]}},
                                     logy=["first"])  # fmt: skip
    left, right = fig.axes
    medians = [line.get_ydata()[0] for line in left.lines if line.get_linestyle() == "-"][4::5]
    assert medians == pytest.approx([np.median(a), np.median(b[:-1])])
    assert [t.get_text() for t in left.get_xticklabels()] == ["a", "b"]
    assert left.get_yscale() == "log" and right.get_yscale() == "linear"
    assert left.get_title() == "first"
