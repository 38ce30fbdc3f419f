"""Figures of the course that belong to one lesson each: CAMs, curves, losses, benchmark cells.

The general pictures (palettes, overlays, grids of images, PCA colours) live in
`spml_lab.pictures.viz`; these are the few drawings a lesson needs beyond them, kept here so
that the notebooks stay thin:

* `show_cams`: each image beside the class activation map of each of its tagged classes (03);
* `show_curves`: a few numbers against one swept setting, one panel per number (03, 04);
* `show_distributions`: a number's spread over images, one box per setting (02);
* `show_cells`: benchmark cells as one dot per seeded run with the mean +- std (12);
* `show_claims`: each claim's difference of means with its 2-standard-error bar (12);
* `show_relation_effects`: what removing each relation changes, per setting (05, 07, 08, 12);
* `show_losses`: the logged losses of one or more runs, side by side (09);
* `show_per_class`: one bar per class and per model or method (10, 11);
* `show_pseudo_label_steps` and `show_class_scores`: pseudo labels at each step of their
  making, and the maps behind them (11);
* `show_failures`: the images a predictor labels worst, and where it goes wrong (11).

Every function returns the figure; the notebook shows and closes it.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from spml_lab.constants import IGNORE_INDEX
from spml_lab.pictures import viz
from spml_lab.pictures.arrays import to_numpy
from spml_lab.prediction import predict
from spml_lab.training.config import TrainConfig
from spml_lab.training.runs import CONFIG, read_metrics

__all__ = [
    "show_cams",
    "show_curves",
    "show_distributions",
    "show_cells",
    "show_claims",
    "show_relation_effects",
    "show_losses",
    "show_per_class",
    "show_pseudo_label_steps",
    "show_class_scores",
    "show_failures",
]

VERDICT_COLOURS = {"helps": "tab:green", "hurts": "tab:red", "no measurable effect": "tab:grey"}


def show_cams(
    images, cams, tags, class_names, *, truth=None, colours=None, num_show=None, size=1.9
):
    """Draw each image, its ground truth, and the CAM of each of its tagged classes over it.

    Parameters
    ----------
    images : (B, H, W, 3) uint8 ndarray
    cams : (B, C, h, w) float tensor or ndarray in [0, 1]
        Class activation maps (`tag_classifier.TagClassifier.cams`), channel k for class k; drawn
        stretched over the image whatever their resolution.
    tags : (B, C) bool tensor or ndarray
        The image's classes; background (index 0) is never drawn.
    class_names : list of str
    truth : (B, H, W) int ndarray or tensor, optional
        Ground truth, drawn as a second column (for the student: SPML never sees it).
    colours : (C, 3) uint8 ndarray, optional
        Class colours for the truth (default `viz.palette`).
    num_show : int, optional
        Draw only the first `num_show` images (default all).
    size : float, optional
        Inches per panel.

    Returns
    -------
    figure : matplotlib.figure.Figure
        One row per image; the CAM panels hold the image and the map (``jet``, 0 to 1) as
        two layers, titled by class.
    """
    shown = slice(0, num_show)  # num_show=None: every image
    cams, tags = to_numpy(cams[shown], np.float32), to_numpy(tags[shown], bool)
    images = to_numpy(images[shown])
    truth = None if truth is None else to_numpy(truth[shown])
    height, width = images.shape[1:3]
    lead = 1 if truth is None else 2
    per_image = [np.flatnonzero(t[1:]) + 1 for t in tags]  # tagged foreground classes
    cols = lead + max((len(k) for k in per_image), default=0)
    fig, axes = plt.subplots(
        len(images), cols, figsize=(size * cols, size * len(images)), squeeze=False
    )
    colours = viz.palette(len(class_names)) if colours is None else colours
    # stretch the map over the image's pixel grid, whatever the map's resolution
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)
    for b, row in enumerate(axes):
        row[0].imshow(images[b])
        if truth is not None:
            row[1].imshow(viz.colorize(truth[b], colours))
            row[1].set_title("ground truth", fontsize=8)
        for ax, k in zip(row[lead:], per_image[b], strict=False):
            ax.imshow(images[b])
            ax.imshow(cams[b, k], cmap="jet", alpha=0.55, vmin=0, vmax=1, extent=extent)
            ax.set_title(f"CAM {class_names[k]}", fontsize=8)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    return fig


def show_curves(x, panels, *, xlabel, size=(3.6, 2.6), logx=False):
    """Draw a few numbers against one swept setting, one panel per number.

    Parameters
    ----------
    x : sequence of float
        The setting's values (thresholds, superpixel counts, ...).
    panels : dict of str to dict of str to sequence of float
        Panel title (the number's name) -> curve label -> one value per `x`.
    xlabel : str
    size : (float, float), optional
        Inches per panel.
    logx : bool, optional
        Logarithmic x axis.

    Returns
    -------
    figure : matplotlib.figure.Figure
        One line per curve, with markers, and a legend when a panel holds several curves.
    """
    fig, axes = plt.subplots(
        1, len(panels), figsize=(size[0] * len(panels), size[1]), squeeze=False
    )
    for ax, (title, curves) in zip(axes[0], panels.items(), strict=True):
        for label, values in curves.items():
            ax.plot(list(x), list(values), "o-", label=label, markersize=4)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        if logx:
            ax.set_xscale("log")
            ax.minorticks_off()  # ticks at the swept values only, written plainly
            ax.set_xticks(list(x), [f"{v:g}" for v in x])
        if len(curves) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def show_distributions(panels, *, logy=(), size=(5.5, 3.6)):
    """Draw how a few numbers spread over images: one box per setting, one panel per number.

    Parameters
    ----------
    panels : dict of str to dict of str to sequence of float
        Panel title (the number) -> setting (box label) -> one value per image; NaN values
        (an image the number does not apply to) are left out.
    logy : collection of str, optional
        Titles of the panels drawn with a logarithmic y axis.
    size : (float, float), optional
        Inches per panel.

    Returns
    -------
    figure : matplotlib.figure.Figure
        Per panel, one box per setting in the given order: the box spans the quartiles, the
        line inside is the median, the whiskers reach the furthest value within 1.5 box
        lengths, and values beyond them are drawn as dots.
    """
    fig, axes = plt.subplots(
        1, len(panels), figsize=(size[0] * len(panels), size[1]), squeeze=False
    )
    for ax, (title, groups) in zip(axes[0], panels.items(), strict=True):
        values = [np.asarray(v, np.float64) for v in groups.values()]
        boxes = ax.boxplot([v[np.isfinite(v)] for v in values], patch_artist=True)
        for k, box in enumerate(boxes["boxes"]):  # one shade per setting, light to dark
            box.set_facecolor(plt.cm.viridis(0.9 - 0.8 * k / max(len(values) - 1, 1)))
        ax.set_xticks(range(1, len(values) + 1), list(groups), rotation=30, ha="right")
        ax.set_title(title, fontsize=9)
        if title in logy:
            ax.set_yscale("log")
    fig.tight_layout()
    return fig


def show_cells(rows, cells, *, key="miou", split="test", labels=None, title=None, ax=None):
    """Draw benchmark cells: every seeded run as a dot, the cell's mean +- std beside them.

    Parameters
    ----------
    rows : sequence of dict
        Per-run rows as `csv.DictReader` reads the benchmark CSV (``dataset``, ``kind``,
        ``method``, ``split`` and the score columns, as strings).
    cells : sequence of (str, str, str)
        (dataset, kind, method) of each cell to draw, left to right.
    key : str, optional
        The score column.
    split : str, optional
    labels : sequence of str, optional
        Tick label per cell (default ``kind/method``).
    title : str, optional
    ax : matplotlib.axes.Axes, optional
        Draw into it (default: a new figure).

    Returns
    -------
    figure : matplotlib.figure.Figure
        Dots (one collection per cell) and an error bar at each cell's mean with the sample
        std (n - 1); a cell without scored runs stays empty.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(max(3.0, 1.1 * len(cells)), 3.2))
    for i, cell in enumerate(cells):
        values = [
            float(r[key])
            for r in rows
            if (r["dataset"], r["kind"], r["method"]) == tuple(cell)
            and r["split"] == split
            and r[key] != ""
        ]
        if not values:
            continue
        spread = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(1)
        ax.scatter(i - 0.1 + spread, values, s=18, color="tab:blue", zorder=3)
        std = np.std(values, ddof=1) if len(values) > 1 else 0.0
        ax.errorbar(i + 0.2, np.mean(values), yerr=std, fmt="D", color="black", capsize=4,
                    markersize=5)  # fmt: skip
    ticks = labels if labels is not None else [f"{c[1]}/{c[2]}" for c in cells]
    ax.set_xticks(range(len(cells)), ticks, fontsize=8)
    ax.set_xlim(-0.6, len(cells) - 0.4)
    ax.set_ylabel(f"{split} {key}")
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    return ax.figure


def show_claims(checked, *, size=(7.5, 0.32)):
    """Draw each claim's difference of means with a bar of 2 standard errors on each side.

    Parameters
    ----------
    checked : sequence of dict
        `claims.check_claims` entries, or rows of a ``_claims.csv`` (strings): ``claim``,
        ``metric``, ``difference``, ``se`` (None or ``""`` when unknown), ``holds``.
    size : (float, float), optional
        Width, and height per claim, in inches.

    Returns
    -------
    figure : matplotlib.figure.Figure
        One horizontal bar per claim, top to bottom in the given order: green when it holds
        (the whole 2-se interval right of 0), grey otherwise; the dashed line is 0.
    """
    checked = list(checked)
    differences = [float(c["difference"]) for c in checked]
    errors = [2 * float(c["se"]) if c["se"] not in (None, "") else 0.0 for c in checked]
    colours = ["tab:green" if c["holds"] == "PASS" else "tab:grey" for c in checked]
    fig, ax = plt.subplots(figsize=(size[0], 0.8 + size[1] * len(checked)))
    y = np.arange(len(checked))[::-1]  # first claim on top
    ax.barh(y, differences, xerr=errors, color=colours, capsize=3, height=0.6)
    ax.axvline(0, color="black", linestyle="--", linewidth=1)
    ax.set_yticks(y, [f"{c['claim']} [{c['metric']}]" for c in checked], fontsize=7)
    ax.set_xlabel("difference of means (bar: ± 2 standard errors)")
    fig.tight_layout()
    return fig


def show_relation_effects(effects, *, ax=None, title=None):
    """Draw what removing each relation changes, one row per (setting, relation).

    Parameters
    ----------
    effects : sequence of dict
        `claims.relation_effects` entries: ``setting``, ``relation``, ``change``, ``two_se``,
        ``n`` and ``verdict``.
    ax : matplotlib.axes.Axes, optional
        Draw into it (default: a new figure).
    title : str, optional

    Returns
    -------
    figure : matplotlib.figure.Figure
        A dot at each change of mIoU with a bar of 2 standard errors on each side, grouped by
        relation (in the order each first appears), first entry on top: green where the
        relation helps (the bar lies left of 0: mIoU falls without it), red where it hurts,
        grey where the study could not tell.
    """
    order = list(dict.fromkeys(e["relation"] for e in effects))
    effects = sorted(effects, key=lambda e: order.index(e["relation"]))  # stable within one
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 0.9 + 0.3 * len(effects)))
    y = np.arange(len(effects))[::-1]  # first entry on top
    for row, effect in zip(y, effects, strict=True):
        ax.errorbar(effect["change"], row, xerr=effect["two_se"], fmt="o", capsize=3,
                    color=VERDICT_COLOURS[effect["verdict"]])  # fmt: skip
    ax.axvline(0, color="black", linewidth=0.8)
    labels = [f"{e['setting']}: {e['relation'].replace('_', ' ')} (n {e['n']})" for e in effects]
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_ylim(-0.7, len(effects) - 0.3)
    ax.set_xlabel("mIoU without the relation minus with it (bar: ± 2 SE)", fontsize=8)
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=v)
               for v, c in VERDICT_COLOURS.items()]  # fmt: skip
    ax.legend(handles=handles, fontsize=7, loc="best")
    if title:
        ax.set_title(title, fontsize=9)
    ax.figure.tight_layout()
    return ax.figure


def show_losses(run_folders, *, size=(5.2, 3.6)):
    """Draw the logged losses of runs side by side: each relation's, their total, the head's.

    Parameters
    ----------
    run_folders : sequence of str or Path
        Run folders with ``metrics.csv`` and ``config.yaml`` (`spml_lab.training.runs`).
    size : (float, float), optional
        Inches per panel.

    Returns
    -------
    figure : matplotlib.figure.Figure
        One panel per run (log-scaled loss against step): each enabled relation's loss before
        its weight (a relation that never had a pixel to contrast, like the annotation
        relation with tags, is left out), the weighted sum ``total`` that trains the network
        (thick black) and the softmax head's cross-entropy (dashed) when it had labels.
    """
    fig, axes = plt.subplots(
        1, len(run_folders), figsize=(size[0] * len(run_folders), size[1]), squeeze=False
    )
    for ax, run in zip(axes[0], run_folders, strict=True):
        cfg, history = TrainConfig.from_yaml(Path(run) / CONFIG), read_metrics(run)
        steps = history["step"]
        for name, setting in cfg.relation_settings().items():
            if (history[name] > 0).any():
                ax.plot(steps, history[name], "-", label=f"{name} (weight {setting.weight:g})")
        ax.plot(steps, history["total"], "k-", lw=2.5, label="total (weighted sum)")
        if (history["softmax_ce"] > 0).any():  # tags label no pixel: the head learns nothing
            ax.plot(steps, history["softmax_ce"], "k--", label="softmax head CE")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set_xlabel("step")
        ax.set_title(f"{cfg.model}, {cfg.annotation}, {int(steps[-1])} steps")
    axes[0, 0].set_ylabel("loss (mean since the last row)")
    axes[0, -1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def show_per_class(values, *, ylabel, title=None, colours=None, ylim=None, size=(9, 3.4)):
    """Draw one bar per class for each series (models, methods), grouped by class.

    Parameters
    ----------
    values : dict of str to dict of str to float
        Series name -> class name -> value (NaN: no bar); the classes of the first series
        set the order.
    ylabel : str
    title : str, optional
    colours : (C, 3) uint8 ndarray, optional
        Class colours; used when there is a single series (each bar in its class's colour).
    ylim : (float, float), optional
    size : (float, float), optional
        Figure size in inches.

    Returns
    -------
    figure : matplotlib.figure.Figure
        With a legend of the series when there are several, and a line at 0.
    """
    names = list(values)
    classes = list(values[names[0]])
    x = np.arange(len(classes))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=size)
    for k, name in enumerate(names):
        heights = [values[name].get(c, np.nan) for c in classes]
        colour = colours / 255 if colours is not None and len(names) == 1 else None
        ax.bar(x + (k - (len(names) - 1) / 2) * width, heights, width, label=name, color=colour,
               edgecolor="black" if colour is not None else None, linewidth=0.5)  # fmt: skip
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x, classes, rotation=35, ha="right", fontsize=8)
    ax.set_xlabel("class")
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title, fontsize=10)
    if len(names) > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def show_pseudo_label_steps(steps, class_names, colours, *, annotation, num_show=4, size=2.1):
    """Draw training images' weak labels, ground truth and pseudo labels after each step.

    Parameters
    ----------
    steps : stage2.PseudoLabelSteps
        From `spml_lab.prediction.stage2.pseudo_label_steps`.
    class_names : list of str
    colours : (C, 3) uint8 ndarray
    annotation : str
        The weak labels' kind, for the column title.
    num_show : int, optional
        Images drawn (the first of the batch).
    size : float, optional

    Returns
    -------
    figure : matplotlib.figure.Figure
        One row per image, titled by its name and tags; columns: the weak labels over the
        dimmed image, the ground truth, then the argmax over the image's tags after each
        step (softmax, random walk, CRF = the pseudo label).
    """
    batch = steps.batch
    pictures = predict.to_uint8(batch["image"][:num_show]).numpy()
    rows = [
        [viz.overlay(pictures[b], batch["label"][b].numpy(), colours, alpha=1.0, dim=0.5),
         viz.colorize(steps.truth[b].numpy(), colours),
         *(viz.colorize(steps.labels[s][b].numpy(), colours) for s in steps.miou)]
        for b in range(len(pictures))
    ]  # fmt: skip
    tags = [", ".join(class_names[c] for c in np.flatnonzero(t[1:]) + 1) for t in batch["tags"]]
    step_titles = {"softmax": "softmax (tags)", "walked": "random walk", "crf": "CRF = pseudo"}
    return viz.show_grid(
        rows,
        row_titles=[f"{n}\n{t}" for n, t in zip(batch["name"], tags, strict=False)],
        col_titles=[annotation, "ground truth", *(step_titles[s] for s in steps.miou)],
        class_names=class_names,
        colours=colours,
        size=size,
        title="Pseudo labels of training images at each step (row labels: the image's tags)",
    )


def show_class_scores(steps, class_names, *, image=0, size=2.1):
    """Draw the maps behind one image's pseudo label: one column per class it may take.

    Parameters
    ----------
    steps : stage2.PseudoLabelSteps
    class_names : list of str
    image : int, optional
        Which image of ``steps.batch``.
    size : float, optional

    Returns
    -------
    figure : matplotlib.figure.Figure
        One row per step (softmax restricted to the tags, random walk, CRF), one column per
        allowed class (background and the image's tags); viridis with one scale per row
        (bright = the row's maximum), so the classes of a row compare.
    """
    tags = steps.batch["tags"][image].numpy().astype(bool)
    allowed = np.flatnonzero(tags | (np.arange(len(tags)) == 0))  # background is always allowed
    rows = []
    for s in steps.miou:
        maps = getattr(steps.pseudo, s)[image, allowed]
        relative = (maps / maps.max().clamp_min(1e-12)).numpy()
        rows.append([(plt.cm.viridis(m)[..., :3] * 255).astype(np.uint8) for m in relative])
    names = {"softmax": "softmax (tags)", "walked": "random walk", "crf": "CRF"}
    fig = viz.show_grid(
        rows,
        row_titles=[names[s] for s in steps.miou],
        col_titles=[class_names[c] for c in allowed],
        size=size,
    )
    fig.suptitle(
        f"{steps.batch['name'][image]}: score of each allowed class (bright = the row's maximum)",
        y=1.03,
    )
    return fig


def show_failures(failures, class_names, colours, *, method, size=2.2):
    """Draw the images a predictor labels worst: image, truth, its labels, its wrong pixels.

    Parameters
    ----------
    failures : list of trained_runs.Failure
    class_names : list of str
    colours : (C, 3) uint8 ndarray
    method : str
        The predictor's name, for the titles.
    size : float, optional

    Returns
    -------
    figure : matplotlib.figure.Figure
        One row per image, titled by its name, its mIoU and its largest confusion; the last
        column keeps only the wrong pixels, coloured by the class predicted there.
    """
    rows = [
        [f.picture, viz.colorize(f.truth, colours), viz.colorize(f.labels, colours),
         viz.overlay(f.picture, np.where(f.labels != f.truth, f.labels, IGNORE_INDEX), colours, 1.0,
                     dim=0.6)]
        for f in failures
    ]  # fmt: skip
    titles = [
        f"{f.name}: mIoU {f.miou:.2f}\n{class_names[f.confused[0]]} -> {class_names[f.confused[1]]}"
        for f in failures
    ]
    return viz.show_grid(
        rows,
        row_titles=titles,
        col_titles=["image", "ground truth", method, "wrong pixels (predicted class)"],
        class_names=class_names,
        colours=colours,
        size=size,
        title=f"Failure cases of {method}: the lowest per-image mIoU",
    )
