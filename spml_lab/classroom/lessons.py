"""The steps the four relation notebooks (05 to 08) share, as library calls.

Each relation notebook draws one pixel's positive and negative segments
(`show_positives_negatives`), then shows the same two experiments on its own relation:

* **the concentration sweep** (`kappa_sweep`, `show_kappa_sweep`): the batch loss for several
  ``kappa`` and, for one pixel, each segment's share of its softmax, whose positives' total is
  ``P_i / (P_i + N_i)``;
* **the relation trained alone** (`relation_alone`, then ``train.fit``, `show_training`): stage 1
  with only that relation on, at weight 1 (alone, the paper's weight would only scale the
  learning rate).
"""

from __future__ import annotations

import csv
import tempfile
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from spml_lab.classroom import lesson_batch
from spml_lab.constants import LESSON_KMEANS_GRID
from spml_lab.method import relations
from spml_lab.pictures import viz
from spml_lab.training.config import TrainConfig
from spml_lab.training.runs import METRICS

__all__ = [
    "show_positives_negatives",
    "KappaSweep",
    "kappa_sweep",
    "show_kappa_sweep",
    "relation_alone",
    "show_training",
    "method_figure",
]


def show_positives_negatives(batch, pixel, positives, negatives, *, col_titles=None, **options):
    """Draw a pixel's positive and negative segments on the images of its batch.

    `viz.show_relation` with the batch's images, segments and the pixel's position filled in.

    Parameters
    ----------
    batch : lesson_batch.LessonBatch
    pixel : int
        Flat pixel index (`lesson_batch.pick_pixel`).
    positives, negatives : (S_total,) bool tensors
        The pixel's roles (`relations.positives_negatives`); memory entries are counted in
        the title, not drawn.
    col_titles : list of str, optional
        One per image; default the images' names.
    **options
        Further `viz.show_relation` options: ``title``, ``outlines``, ``zoom``, ``size``.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    return viz.show_relation(
        batch.images,
        batch.segments.segment_ids,
        positives,
        negatives,
        lesson_batch.pixel_position(batch, pixel),
        col_titles=batch.names if col_titles is None else col_titles,
        **options,
    )


@dataclass
class KappaSweep:
    """The loss of a batch and one pixel's segment weights, for each concentration.

    Attributes
    ----------
    relation : str
    kappas : list of float
    batch_loss : list of float
        The relation's loss of the whole batch at each ``kappa``.
    weights : list of (S,) float64 tensors
        Each segment's share of the pixel's softmax (`lesson_batch.segment_weights`).
    shares : list of float
        The positives' total share: the pixel's loss is ``-log`` of it.
    """

    relation: str
    kappas: list
    batch_loss: list
    weights: list
    shares: list


def kappa_sweep(
    batch, pixel, relation, kappas, positives, negatives, memory=None, *, location_weight=None
):
    """Compute a relation's batch loss and one pixel's segment weights for several ``kappa``.

    Parameters
    ----------
    batch : lesson_batch.LessonBatch
    pixel : int
        Flat pixel index (`lesson_batch.pick_pixel`).
    relation : str
        One of `relations.RELATIONS`.
    kappas : sequence of float
    positives, negatives : (S_total,) bool tensors
        The pixel's roles (`relations.positives_negatives` with the same `memory`).
    memory : memory.PrototypeMemory, optional
    location_weight : float, optional
        Of ``"low_level"``: the weight of the location half of the features its loss
        compares; default the training's (`lesson_batch.training_location_weight`).

    Returns
    -------
    sweep : KappaSweep
        Loss and weights on the same features, so ``-log`` of a share is the pixel's loss.

    Examples
    --------
    >>> from spml_lab.nets import embedding_nets
    >>> batch = lesson_batch.make_batch(indices=(0, 1), net=embedding_nets.SmallEmbeddingNet(8, 8))
    >>> pixel = lesson_batch.pick_pixel(batch, "low_level")
    >>> roles = relations.positives_negatives(
    ...     "low_level", pixel, batch.embeddings, batch.labels, batch.tags, batch.segments)
    >>> sweep = kappa_sweep(batch, pixel, "low_level", [1.0, 16.0], *roles)
    >>> len(sweep.batch_loss), abs(float(sweep.weights[0].sum()) - 1) < 1e-9
    (2, True)
    """
    if location_weight is None:
        location_weight = lesson_batch.training_location_weight()
    options = {"location_weight": location_weight}  # the loss's features, for both
    losses, weights = [], []
    for kappa in kappas:
        setting = {relation: relations.RelationSetting(float(kappa), 1.0)}
        out = relations.spml_loss(
            batch.embeddings, batch.labels, batch.tags, batch.segments, memory,
            settings=setting, **options,
        )  # fmt: skip
        losses.append(float(out[relation]))
        roles = (positives, negatives)
        share = lesson_batch.segment_weights(
            batch, pixel, relation, *roles, kappa, memory, **options
        )
        weights.append(share)
    shares = [float(w[positives[: len(w)]].sum()) for w in weights]
    return KappaSweep(relation, list(kappas), losses, weights, shares)


def show_kappa_sweep(sweep, batch):
    """Draw a `KappaSweep`: the batch loss against ``kappa``, and the segment weights.

    Returns
    -------
    loss_figure, weights_figure : matplotlib.figure.Figure
        The loss curve (log-scaled ``kappa``); one row of heat maps per ``kappa`` and one
        column per image (brighter = more weight; black = no part).
    """
    loss_figure, ax = plt.subplots(figsize=(4, 2.6))
    ax.plot(sweep.kappas, sweep.batch_loss, "o-")
    ax.set_xscale("log")
    ax.set_xlabel("κ (log scale)")
    ax.set_ylabel("batch loss")
    ax.set_title(f"{sweep.relation}: loss of the batch")
    count = batch.segments.num_segments  # the memory's segments are not drawn
    weights_figure = viz.show_grid(
        [list(viz.segment_heatmap(batch.segments.segment_ids, w[:count])) for w in sweep.weights],
        row_titles=[
            f"κ = {k:g}\npositives {s:.1%}" for k, s in zip(sweep.kappas, sweep.shares, strict=True)
        ],
        col_titles=batch.names,
    )
    weights_figure.suptitle("Each segment's share of the pixel's softmax")
    weights_figure.tight_layout()
    return loss_figure, weights_figure


def relation_alone(relation, *, out_dir=None, **changes):
    """Return the `TrainConfig` of a short stage-1 run with only `relation` on, at weight 1.

    Parameters
    ----------
    relation : str
        One of `relations.RELATIONS`.
    out_dir : str, optional
        The run folder; default ``<a new temporary folder>/<relation>``, so that a lesson
        never writes into the working directory and each call trains afresh.
    **changes
        Further `TrainConfig` fields (data, annotation, max_steps, ...). Otherwise the run is
        `TrainConfig`'s recipe with the k-means grid `constants.LESSON_KMEANS_GRID`.

    Examples
    --------
    >>> cfg = relation_alone("cooccurrence", annotation="tags")
    >>> list(cfg.relation_settings()), cfg.relation_settings()["cooccurrence"].weight
    (['cooccurrence'], 1.0)
    """
    if relation not in relations.RELATIONS:
        raise ValueError(f"relation must be one of {list(relations.RELATIONS)}, got {relation!r}")
    if out_dir is None:
        out_dir = str(Path(tempfile.mkdtemp(prefix="spml_")) / relation)
    only = {name: name == relation for name in relations.RELATIONS}
    short = {"warmup_steps": 5, "log_every": 10, "progress": False}  # full speed soon
    short["kmeans_grid"] = LESSON_KMEANS_GRID
    return TrainConfig(
        **{**only, f"{relation}_weight": 1.0, **short, **changes, "out_dir": out_dir}
    )


def show_training(run, relation):
    """Plot a run's training losses from its metrics.csv: the relation's, and the head's.

    Returns
    -------
    figure : matplotlib.figure.Figure
    rows : list of dict
        The metrics.csv rows, numbers as floats.
    """
    with open(Path(run) / METRICS, newline="") as handle:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    steps = [row["step"] for row in rows]
    figure, ax = plt.subplots(figsize=(4.5, 2.8))
    ax.plot(steps, [row[relation] for row in rows], "o-", label=f"{relation} loss")
    head = [row["softmax_ce"] for row in rows]
    if np.any(np.asarray(head) > 0):  # no pixel labels (tags): no head loss
        ax.plot(steps, head, "s--", label="softmax head (CE)")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean since last row)")
    ax.set_title(f"Training with {relation} alone")
    ax.legend(fontsize=8)
    return figure, rows


def method_figure(batch, *, image=0, seed=0):
    """Draw SPML on one page: pixels, embedding, segments, the four relations and the loss.

    Parameters
    ----------
    batch : lesson_batch.LessonBatch
        With superpixels, weak labels and tags (`lesson_batch.make_batch`).
    image : int, optional
        The image of the batch to draw.
    seed : int, optional
        Which pixel each relation is drawn for (`lesson_batch.pick_pixel`).

    Returns
    -------
    figure : matplotlib.figure.Figure
        Top row: the image, its superpixels, the embedding (first three principal components
        as colours) and the segments (k-means on the embedding, split by superpixel and weak
        label). Bottom row: one pixel per relation (yellow: its own segment), its positive
        segments green and its negatives red; the other images of the batch take part too but
        are not drawn. Under it, the loss every relation shares.
    """
    picture = batch.images[image]
    ids = batch.segments.segment_ids[image].numpy()
    superpixels = batch.superpixels[image].numpy()
    colours = viz.pca_rgb(batch.embeddings)[image]
    top = [
        picture,
        viz.outline(picture, superpixels, (255, 255, 255)),
        np.kron(colours, np.ones((picture.shape[0] // colours.shape[0],) * 2 + (1,), np.uint8)),
        viz.outline(picture, ids, (255, 255, 0)),
    ]
    bottom, names = [], []
    for relation in relations.RELATIONS:
        pixel = lesson_batch.pick_pixel(batch, relation, seed=seed, image=image)
        pos, neg = relations.positives_negatives(
            relation, pixel, batch.embeddings, batch.labels, batch.tags, batch.segments
        )
        _, y, x = lesson_batch.pixel_position(batch, pixel)
        bottom.append(viz.relation_picture(picture, ids, pos, neg, int(ids[y, x])))
        names.append(relation.replace("_", " "))
    figure = viz.show_grid(
        [top, bottom],
        row_titles=["pixels to\nsegments", "one pixel,\nfour relations"],
        col_titles=["image", "superpixels", "embedding (PCA)", "segments"],
        size=2.4,
    )
    for ax, name in zip(figure.axes[4:], names, strict=True):
        ax.set_xlabel(name)
    figure.suptitle("SPML: pull each pixel towards some segments, push it from others")
    pos, neg = (rf"\sum_{{s \in {n}(i)}} e^{{\kappa v_i^\top u_s}}" for n in ("pos", "neg"))
    figure.text(
        0.5,
        0.02,
        rf"$\mathcal{{L}}_i = -\log \frac{{{pos}}}{{{pos} + {neg}}}$"
        "    green: pos(i), red: neg(i); $u_s$ a segment's mean embedding",
        ha="center",
        fontsize=11,
    )
    figure.tight_layout(rect=(0, 0.12, 1, 0.95))
    return figure
