"""Pictures: class palettes, label overlays and image grids.

Every notebook draws through these functions so that a class has the same colour everywhere and
"unlabelled" (255) always shows the image underneath.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from spml_lab.constants import IGNORE_INDEX
from spml_lab.data.labelio import voc_palette
from spml_lab.pictures.arrays import nearest_resize, to_numpy

__all__ = [
    "palette",
    "colorize",
    "overlay",
    "label_pictures",
    "fade",
    "outline_pictures",
    "show_grid",
    "show",
    "legend_handles",
    "pca_rgb",
    "outline",
    "segment_heatmap",
    "relation_picture",
    "show_relation",
]

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


def label_pictures(labels, colours, *, images=None, alpha=1.0, dim=0.5):
    """One picture per label map of a batch: the classes' colours, or the labels over images.

    Parameters
    ----------
    labels : (B, h, w) int tensor or ndarray
        Class per pixel, 255 = unlabelled.
    colours : (C, 3) uint8 ndarray
    images : (B, H, W, 3) uint8 ndarray, optional
        Draw the labels over these (`overlay`), their unlabelled pixels darkened by `dim`, so
        that sparse weak labels stand out; without them, `colorize` (unlabelled: white).
        Labels at a coarser resolution (at the embedding's, say) are first brought to the
        images' size by nearest sampling, each label pixel a block.
    alpha : float, optional
        Opacity of the label colours over `images`: 1 (opaque) for sparse labels, less for
        dense ones, so that the image shows through.
    dim : float, optional

    Returns
    -------
    pictures : list of (H, W, 3) uint8 ndarray
        A row for `show_grid`.

    Examples
    --------
    >>> colours = np.array([[0, 0, 0], [200, 100, 0]], np.uint8)
    >>> [p.tolist() for p in label_pictures(np.array([[[1, 255]]]), colours)]
    [[[[200, 100, 0], [255, 255, 255]]]]
    """
    labels = to_numpy(labels)
    if images is None:
        return [colorize(label, colours) for label in labels]
    images = np.asarray(images)
    labels = nearest_resize(labels, images.shape[1:3])  # a no-op at the images' size
    return [
        overlay(image, label, colours, alpha=alpha, dim=dim)
        for image, label in zip(images, labels, strict=True)
    ]


def fade(images, strength=0.65):
    """Make a pale copy of images, so that labels drawn over them stand out.

    Parameters
    ----------
    images : (..., 3) uint8 ndarray or sequence of them
        One image or a batch.
    strength : float, optional
        How far each value moves towards a light grey (254): 0 keeps the images, 1 leaves
        a flat grey.

    Returns
    -------
    faded : (..., 3) uint8 ndarray
        ``(1 - strength) * image + strength * 254``, rounded down: with the default, black
        becomes 165 and white stays 254.

    Examples
    --------
    >>> fade(np.array([[0, 100, 255]], np.uint8)).tolist()
    [[165, 200, 254]]
    """
    images = np.asarray(images, np.float64)
    return ((1 - strength) * images + strength * 254).astype(np.uint8)


def outline_pictures(images, regions, colour=(255, 255, 0)):
    """One picture per image of a batch: `outline` of its region map over it.

    Parameters
    ----------
    images : (B, H, W, 3) uint8 ndarray
    regions : (B, h, w) int ndarray or tensor
        Region ids per image (segments, superpixels, clusters), at the images' resolution or
        a coarser one (resized by nearest sampling).
    colour : (int, int, int), optional
        RGB of the borders.

    Returns
    -------
    pictures : list of (H, W, 3) uint8 ndarray
        A row for `show_grid`.

    Examples
    --------
    >>> pics = outline_pictures(np.zeros((2, 1, 4, 3), np.uint8), np.array([[[0, 1]], [[0, 0]]]))
    >>> [p[0, :, 0].tolist() for p in pics]  # a border only where the region changes
    [[0, 255, 0, 0], [0, 0, 0, 0]]
    """
    return [
        outline(image, region, colour)
        for image, region in zip(np.asarray(images), to_numpy(regions), strict=True)
    ]


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


def show_grid(
    rows, *, row_titles=None, col_titles=None, size=1.8, class_names=None, colours=None, title=None
):
    """Draw a grid of pictures: one list of (H, W, 3) or (H, W) arrays per row.

    Parameters
    ----------
    rows : list of list of ndarray, or dict of str to list of ndarray
        ``rows[r][c]`` is drawn in row r, column c; ``None`` leaves a cell empty. A dict maps
        each row's title to its pictures (then `row_titles` is not given).
    row_titles, col_titles : list of str, optional
        Labels on the left of each row and above each column.
    size : float, optional
        Side of one cell in inches.
    class_names, colours : optional
        When both are given, a class legend is drawn under the grid.
    title : str, optional
        Drawn above the grid.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    if isinstance(rows, dict):
        if row_titles is not None:
            raise ValueError("rows is a dict of row title -> pictures: give no row_titles")
        row_titles, rows = list(rows), list(rows.values())
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
    if title:
        fig.suptitle(title, y=1.0 + 0.04 / n_rows, fontsize=11)
    return fig


def show(fig):
    """Display a figure in the notebook (or the headless run's figure files) and free it."""
    plt.show()
    plt.close(fig)


# --------------------------------------------------------------------------- embeddings, relations

POSITIVE_COLOUR = np.array((40, 200, 90), np.uint8)  # green: pulled towards
NEGATIVE_COLOUR = np.array((225, 45, 45), np.uint8)  # red: pushed away from
OWN_COLOUR = np.array((255, 230, 0), np.uint8)  # yellow outline: the pixel's own segment


def pca_rgb(embeddings, *, max_fit=20_000, seed=0):
    """Colour embeddings by their first three principal components, one projection for all.

    Parameters
    ----------
    embeddings : (..., D) float ndarray or tensor
        E.g. (B, h, w, D): every image of a batch is projected the same way, so equal colours
        mean similar embeddings across images too.
    max_fit : int, optional
        At most this many rows (drawn at random) fit the projection and the colour range.
    seed : int, optional
        Seed of that draw.

    Returns
    -------
    rgb : (..., 3) uint8 ndarray
        Component k in channel k, its 1st to 99th percentile stretched over 0 to 255.

    Notes
    -----
    Each component's sign is chosen so that its largest loading is positive (as scikit-learn's
    ``svd_flip``), so the same embedding gives the same colours on every run.

    Examples
    --------
    >>> emb = np.zeros((2, 2, 4))
    >>> emb[0, :, 0] = emb[1, :, 1] = 1.0  # two kinds of embedding
    >>> rgb = pca_rgb(emb)
    >>> rgb.shape, bool((rgb[0, 0] == rgb[0, 1]).all()), bool((rgb[0, 0] != rgb[1, 0]).any())
    ((2, 2, 3), True, True)
    """
    emb = np.asarray(embeddings.detach().cpu() if hasattr(embeddings, "detach") else embeddings)
    shape = emb.shape[:-1]
    rows = emb.reshape(-1, emb.shape[-1]).astype(np.float64)
    rng = np.random.default_rng(seed)
    fit = rows if len(rows) <= max_fit else rows[rng.choice(len(rows), max_fit, replace=False)]
    mean = fit.mean(0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    basis = vt[:3]  # (k, D), k <= 3
    signs = np.sign(basis[np.arange(len(basis)), np.abs(basis).argmax(1)])
    basis = basis * signs[:, None]
    projected = (rows - mean) @ basis.T  # (N, k)
    low, high = np.percentile((fit - mean) @ basis.T, [1, 99], axis=0)
    scaled = (projected - low) / np.maximum(high - low, 1e-12)
    rgb = np.zeros((len(rows), 3))
    rgb[:, : scaled.shape[1]] = np.clip(scaled, 0, 1)
    return np.round(rgb * 255).astype(np.uint8).reshape(*shape, 3)


def _borders(ids):
    """(H, W) bool: pixels whose right or lower neighbour lies in another region (1 px lines)."""
    edge = np.zeros(ids.shape, bool)
    edge[:, :-1] |= ids[:, 1:] != ids[:, :-1]
    edge[:-1] |= ids[1:] != ids[:-1]
    return edge


def outline(image, regions, colour=(255, 255, 0)):
    """Draw the borders of a region map (segments, superpixels) over an image.

    Parameters
    ----------
    image : (H, W, 3) uint8 ndarray
    regions : (h, w) int ndarray or tensor
        Region id per pixel, at the image's resolution or a coarser one (resized by nearest
        sampling, e.g. segments at embedding resolution).
    colour : (int, int, int), optional
        RGB of the borders.

    Returns
    -------
    picture : (H, W, 3) uint8 ndarray

    Examples
    --------
    >>> pic = outline(np.zeros((2, 4, 3), np.uint8), np.array([[0, 1]]))
    >>> pic[0, :, 0].tolist()  # a one-pixel line where the region changes
    [0, 255, 0, 0]
    """
    picture = np.array(image, np.uint8)
    ids = nearest_resize(to_numpy(regions), picture.shape[:2])
    picture[_borders(ids)] = colour
    return picture


def segment_heatmap(segment_ids, values, *, cmap="magma", vmax=None):
    """Paint one value per segment over the segments' pixels with a colour map.

    Parameters
    ----------
    segment_ids : (...) int ndarray or tensor
        Segment of each pixel, e.g. (B, h, w); -1 = left out (drawn as 0).
    values : (S,) float ndarray or tensor
        One value per segment (e.g. `lesson_batch.segment_weights`); at least 0.
    cmap : str, optional
        Matplotlib colour map.
    vmax : float, optional
        Value drawn brightest; default the largest of `values`.

    Returns
    -------
    rgb : (..., 3) uint8 ndarray

    Examples
    --------
    >>> segment_heatmap(np.array([[0, 1, -1]]), np.array([0.0, 2.0]), cmap="gray").tolist()
    [[[0, 0, 0], [255, 255, 255], [0, 0, 0]]]
    """
    ids = to_numpy(segment_ids)
    values = to_numpy(values, np.float64)
    top = float(values.max()) if vmax is None and values.size else float(vmax or 1.0)
    per_pixel = np.where(ids >= 0, values[np.clip(ids, 0, None)], 0.0) / max(top, 1e-300)
    rgba = plt.get_cmap(cmap)(np.clip(per_pixel, 0, 1))
    return np.round(rgba[..., :3] * 255).astype(np.uint8)


def relation_picture(
    image, segment_ids, positives, negatives, own=None, *, outlines=None, alpha=0.6
):
    """Paint a pixel's positive segments green and negative ones red over an image.

    Parameters
    ----------
    image : (H, W, 3) uint8 ndarray
    segment_ids : (h, w) int ndarray
        Segment of each pixel in the batch's numbering, -1 = left out; resized to (H, W) by
        nearest sampling (embeddings are coarser than images).
    positives, negatives : (S,) bool ndarray or tensor
        Per segment of the batch (extra entries, e.g. memory segments, are ignored).
    own : int, optional
        The pixel's own segment, outlined in yellow.
    outlines : (h, w) int ndarray, optional
        Regions whose borders are drawn in white (e.g. superpixels), resized the same way.
    alpha : float, optional
        Opacity of the green and red.

    Returns
    -------
    picture : (H, W, 3) uint8 ndarray
        Segments that are neither positive nor negative are shown pale and grey.

    Examples
    --------
    Segment 0 positive, 1 negative; the pixels where the role changes are drawn darker.

    >>> image = np.full((1, 4, 3), 100, np.uint8)
    >>> pic = relation_picture(image, np.array([[0, 0, 1, 1]]), np.array([True, False]),
    ...                        np.array([False, True]), alpha=1.0)
    >>> pic[0, 0].tolist(), pic[0, 3].tolist()
    ([40, 200, 90], [225, 45, 45])
    """
    from scipy import ndimage
    from skimage.segmentation import find_boundaries

    image = np.asarray(image, np.float64)
    ids = nearest_resize(np.asarray(segment_ids), image.shape[:2])
    positives, negatives = (np.asarray(m, bool) for m in (positives, negatives))
    role = np.zeros(ids.shape, np.int8)  # 0 neither, 1 positive, 2 negative
    inside = ids >= 0
    safe = np.where(inside, ids, 0)
    role[inside & positives[safe]] = 1
    role[inside & negatives[safe] & ~positives[safe]] = 2
    grey = image.mean(-1, keepdims=True) * 0.5 + 110  # pale grey: takes no part
    colour = np.where((role == 1)[..., None], POSITIVE_COLOUR, NEGATIVE_COLOUR).astype(float)
    out = np.where((role == 0)[..., None], grey, (1 - alpha) * image + alpha * colour)
    # outline where the role changes only: segments of one role read as one region
    out[find_boundaries(role, mode="inner") & (role > 0)] *= 0.5
    if outlines is not None:
        regions = nearest_resize(np.asarray(outlines), image.shape[:2])
        edge = _borders(regions)
        out[edge] = 0.4 * out[edge] + 0.6 * 255  # light lines: the segments stay readable
    if own is not None:
        # a one-pixel ring just outside the own segment leaves the segment (and its
        # neighbours, often its positives) visible
        mask = ids == own
        ring = ndimage.binary_dilation(mask) & ~mask
        out[ring] = OWN_COLOUR
    return np.round(out).astype(np.uint8)


def show_relation(
    images,
    segment_ids,
    positives,
    negatives,
    pixel,
    *,
    outlines=None,
    zoom=None,
    col_titles=None,
    title=None,
    size=2.6,
):
    """Draw one pixel's positive and negative segments on every image of a batch.

    Parameters
    ----------
    images : (B, H, W, 3) uint8 ndarray
    segment_ids : (B, h, w) int ndarray or tensor
        The batch's segments (``Segments.segment_ids``).
    positives, negatives : (S_total,) bool ndarray or tensor
        From `relations.positives_negatives`; entries past the batch's segments (memory)
        are counted in the title but cannot be drawn.
    pixel : (int, int, int)
        ``(image, y, x)`` of the pixel at the resolution of `segment_ids`; marked with a star.
    outlines : (B, h, w) int ndarray or tensor, optional
        Regions drawn as light borders on the pixel's image (e.g. the superpixels).
    zoom : int, optional
        Add a last panel: the pixel's surroundings, `zoom` embedding pixels wide.
    col_titles : list of str, optional
        One per image (the zoom panel is titled by itself).
    title : str, optional
        Figure title.
    size : float, optional
        Side of one picture in inches.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    ids = to_numpy(segment_ids)
    positives, negatives = to_numpy(positives, bool), to_numpy(negatives, bool)
    b, y, x = (int(v) for v in pixel)
    # outlines only on the pixel's image: elsewhere they would be clutter
    lines = [None] * len(ids)
    if outlines is not None:
        lines[b] = to_numpy(outlines)[b]
    own = int(ids[b, y, x])
    pictures = [
        relation_picture(image, seg, positives, negatives, own, outlines=line)
        for image, seg, line in zip(images, ids, lines, strict=True)
    ]
    scale = images.shape[1] // ids.shape[1]
    centres = [(b, (x + 0.5) * scale - 0.5, (y + 0.5) * scale - 0.5)]
    titles = list(col_titles) if col_titles is not None else None
    if zoom:
        half = zoom * scale // 2
        top = int(np.clip((y + 0.5) * scale - half, 0, images.shape[1] - 2 * half))
        left = int(np.clip((x + 0.5) * scale - half, 0, images.shape[2] - 2 * half))
        pictures.append(pictures[b][top : top + 2 * half, left : left + 2 * half])
        centres.append((len(pictures) - 1, centres[0][1] - left, centres[0][2] - top))
        titles = (titles or [""] * len(images)) + [f"zoom ({zoom} x {zoom} embedding px)"]
        fig = show_grid([pictures], col_titles=titles, size=size)
    else:
        fig = show_grid([pictures], col_titles=titles, size=size)
    for panel, cx, cy in centres:
        fig.axes[panel].plot(
            cx, cy, marker="*", markersize=14, markerfacecolor="white", markeredgecolor="black"
        )
    num_segments = ids.max() + 1
    extra = ""
    if len(positives) > num_segments:
        extra = (
            f" (+ memory: {positives[num_segments:].sum()} positive, "
            f"{negatives[num_segments:].sum()} negative)"
        )
    star = {"marker": "*", "markerfacecolor": "white", "markeredgecolor": "black"}
    handles = [
        Patch(color=POSITIVE_COLOUR / 255, label=f"positive ({positives[:num_segments].sum()})"),
        Patch(color=NEGATIVE_COLOUR / 255, label=f"negative ({negatives[:num_segments].sum()})"),
        Patch(color=(0.7, 0.7, 0.7), label="neither"),
        Patch(facecolor="none", edgecolor=OWN_COLOUR / 255, linewidth=2, label="own segment"),
        plt.Line2D([], [], linestyle="", markersize=12, label="the pixel", **star),
    ]
    if outlines is not None:
        handles.append(Patch(facecolor="none", edgecolor="0.4", label="outlines (white)"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title + extra, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig
