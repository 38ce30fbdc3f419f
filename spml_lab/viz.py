"""Pictures: class palettes, label overlays and image grids.

Every notebook draws through these functions so that a class has the same colour everywhere and
"unlabelled" (255) always shows the image underneath.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from spml_lab.labelio import voc_palette

__all__ = ["palette", "colorize", "overlay", "show_grid", "legend_handles"]

IGNORE_INDEX = 255
# Distinct, colour-blind-friendly colours for the synthetic classes (background is dark grey so
# that black outlines and the VOC palette's black background do not collide with it).
_SYNTHETIC = np.array(
    [
        (60, 60, 60),
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (250, 190, 212),
        (0, 128, 128),
    ],
    dtype=np.uint8,
)


def palette(num_classes, kind="synthetic"):
    """Colour of each class index.

    Parameters
    ----------
    num_classes : int
        Number of colours wanted.
    kind : {"synthetic", "voc"}, optional
        ``"voc"`` is the PASCAL VOC colour map; ``"synthetic"`` a high-contrast set for the
        generated classes (falls back to VOC colours past its length).

    Returns
    -------
    colours : (num_classes, 3) uint8 ndarray

    Examples
    --------
    >>> palette(3, "voc").tolist()
    [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    """
    if kind == "voc":
        return voc_palette(num_classes)
    if kind != "synthetic":
        raise ValueError(f"kind must be 'synthetic' or 'voc', got {kind!r}")
    if num_classes <= len(_SYNTHETIC):
        return _SYNTHETIC[:num_classes].copy()
    return np.concatenate([_SYNTHETIC, voc_palette(num_classes)[len(_SYNTHETIC) :]])


def colorize(labels, colours):
    """Turn a label map into an RGB picture; unlabelled (255) pixels become white.

    Parameters
    ----------
    labels : (H, W) int ndarray
        Class per pixel, 255 = unlabelled.
    colours : (C, 3) uint8 ndarray
        From `palette`.

    Returns
    -------
    rgb : (H, W, 3) uint8 ndarray

    Examples
    --------
    >>> colorize(np.array([[0, 255]]), np.array([[1, 2, 3]], np.uint8)).tolist()
    [[[1, 2, 3], [255, 255, 255]]]
    """
    labels = np.asarray(labels)
    table = np.full((256, 3), 255, np.uint8)
    table[: len(colours)] = colours
    return table[labels.astype(np.intp)]


def overlay(image, labels, colours, alpha=0.6, *, dim=0.0):
    """Blend a label map over an image; unlabelled pixels keep the image.

    Parameters
    ----------
    image : (H, W, 3) uint8 ndarray
    labels : (H, W) int ndarray
        Class per pixel, 255 = unlabelled.
    colours : (C, 3) uint8 ndarray
    alpha : float, optional
        Opacity of the label colours.
    dim : float, optional
        Darken unlabelled pixels by this fraction, so that sparse labels (points, scribbles)
        stand out.

    Returns
    -------
    blended : (H, W, 3) uint8 ndarray

    Examples
    --------
    >>> image = np.zeros((1, 2, 3), np.uint8)
    >>> overlay(image, np.array([[1, 255]]), np.array([[0, 0, 0], [200, 100, 0]], np.uint8),
    ...         alpha=0.5).tolist()
    [[[100, 50, 0], [0, 0, 0]]]
    """
    image = np.asarray(image, np.float64)
    labelled = (np.asarray(labels) != IGNORE_INDEX)[..., None]
    coloured = colorize(labels, colours).astype(np.float64)
    blended = np.where(labelled, (1 - alpha) * image + alpha * coloured, (1 - dim) * image)
    return np.round(blended).astype(np.uint8)


def legend_handles(class_names, colours):
    """Legend patches, one per class, for ``fig.legend(handles=...)``.

    Parameters
    ----------
    class_names : list of str
    colours : (C, 3) uint8 ndarray

    Returns
    -------
    handles : list of matplotlib.patches.Patch
    """
    return [Patch(color=c / 255, label=n) for n, c in zip(class_names, colours, strict=False)]


def show_grid(rows, *, row_titles=None, col_titles=None, size=1.8, class_names=None, colours=None):
    """Draw a grid of pictures: one list of (H, W, 3) or (H, W) arrays per row.

    Parameters
    ----------
    rows : list of list of ndarray
        ``rows[r][c]`` is drawn in row r, column c; ``None`` leaves a cell empty.
    row_titles, col_titles : list of str, optional
        Labels on the left of each row and above each column.
    size : float, optional
        Side of one cell in inches.
    class_names, colours : optional
        When both are given, a class legend is drawn under the grid.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(size * n_cols, size * n_rows), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            picture = row[c] if c < len(row) else None
            if picture is None:
                ax.axis("off")
                continue
            ax.imshow(picture, interpolation="nearest", cmap="gray" if picture.ndim == 2 else None)
            if row_titles and c == 0:
                ax.set_ylabel(row_titles[r], fontsize=9)
            if col_titles and r == 0:
                ax.set_title(col_titles[c], fontsize=9)
    if class_names is not None and colours is not None:
        fig.legend(
            handles=legend_handles(class_names, colours),
            loc="lower center",
            ncol=min(len(class_names), 5),
            fontsize=8,
            frameon=False,
        )
        fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(class_names) // 5), 1, 1))
    else:
        fig.tight_layout()
    return fig
