"""Weak labels from dense masks: image tags, bounding boxes, points and scribbles.

SPML trains one segmenter from any of four kinds of partial annotation (paper, Sec. 1 and
Fig. 1). With exact synthetic masks we can make every kind from the same scene and compare
them fairly:

* **tags**: which classes occur in the image (multi-hot, background included when present);
* **boxes**: every object's bounding box filled with its class, smaller boxes drawn over larger
  ones, everything outside all boxes background: dense but coarse;
* **points**: one small disc per object and per background region, placed well inside it;
* **scribbles**: strokes along each region's skeleton, shortened to a `keep_fraction` of its
  length like ScribbleSup's 100/80/50/30 % variants [1]_.

Points and scribbles are clipped to their region, so they only ever carry a pixel's true class:
sparse but exact. Label maps are uint8 with 255 = unlabelled, as in SPML's files.

**Regions.** Points and scribbles are placed per region: each object instance (split by class,
so a "parts" figure gives one region per body part) and each connected component of the pixels
outside all instances, per class. So the background gets one point (and one scribble) per
connected background area; components smaller than `min_area` pixels are left out, except
that each class keeps at least its largest component, so the background is always labelled.
Pixels marked `ignore_index` (255, VOC's void border) belong to no region.

**Randomness** is keyed by ``(seed, region)``: the same seed gives the same labels, and each
region's choice does not depend on the other regions.

References
----------
.. [1] Lin, Dai, Jia, He, Sun. "ScribbleSup: Scribble-Supervised Convolutional Networks for
   Semantic Segmentation", CVPR 2016. SPML uses its VOC scribbles at 100/80/50/30 % length,
   and its "points" are the 0 % variant (one pixel of each scribble), dilated.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import breadth_first_order
from skimage.morphology import disk, skeletonize

from spml_lab.constants import IGNORE_INDEX

__all__ = [
    "KINDS",
    "weak_labels",
    "weak_labels_batch",
    "instance_boxes",
    "box_label_map",
    "coverage",
    "accuracy",
]

KINDS = ("tags", "boxes", "points", "scribbles")

# options each kind accepts (anything else is a typo and raises TypeError)
_OPTIONS = {
    "tags": {"num_classes", "ignore_index"},
    "boxes": {"min_area", "ignore_index"},
    "points": {"radius", "min_area", "ignore_index"},
    "scribbles": {"radius", "keep_fraction", "min_area", "ignore_index"},
}
_DEFAULTS = {
    # disc radius in pixels: a 5 px wide mark on a 128 px scene; SPML's VOC files (about 500 px)
    # dilate scribbles by 3 and points by 6
    "radius": 2,
    # background slivers smaller than this get no mark (each class keeps its largest piece)
    "min_area": 10,
    "keep_fraction": 1.0,
    "ignore_index": IGNORE_INDEX,
}


class _Region(NamedTuple):
    label: int  # class of every pixel of the region
    key: tuple  # (instance id, class, component index): identity for the random stream
    box: tuple  # (slice, slice) bounding box in the image
    mask: np.ndarray  # (h, w) bool, the region inside its bounding box


def weak_labels(semantic, instance, kind, *, seed=0, **options):
    """Make a weak annotation of one image from its dense ground truth.

    Parameters
    ----------
    semantic : (H, W) int ndarray
        Class per pixel, 0 = background; `ignore_index` = void (belongs to no region).
    instance : (H, W) int ndarray or None
        Instance id per pixel, 0 = no instance. None: every connected component of a class is
        its own object.
    kind : {"tags", "boxes", "points", "scribbles"}
        Which weak annotation to make.
    seed : int or sequence of int, optional
        Randomness of point and scribble placement; same seed, same labels.
    **options
        num_classes : int
            Length of the tag vector (required for ``"tags"``).
        radius : int, default 2
            Points and scribbles: disc radius of the mark, clipped to the region.
        keep_fraction : float in [0, 1], default 1.0
            Scribbles: fraction of each region's skeleton kept, as one connected piece; 0 keeps
            a single skeleton pixel (a point on the scribble, SPML's "0.0" point files).
        min_area : int, default 10
            Components outside all instances smaller than this get no mark or box (each class
            keeps its largest).
        ignore_index : int, default 255
            Void value in `semantic`, and "unlabelled" in the output.

    Returns
    -------
    labels : (H, W) uint8 ndarray, or (num_classes,) bool ndarray for ``"tags"``
        Label map with 255 = unlabelled (boxes label every pixel), or multi-hot class tags.

    Raises
    ------
    ValueError
        For an unknown kind, mismatched shapes, or (tags) a class >= `num_classes`.
    TypeError
        For an option the kind does not take.

    Examples
    --------
    >>> semantic = np.zeros((8, 8), np.uint8)
    >>> semantic[2:6, 2:6] = 3
    >>> instance = (semantic > 0).astype(np.int32)
    >>> weak_labels(semantic, instance, "tags", num_classes=4).tolist()
    [True, False, False, True]
    >>> points = weak_labels(semantic, instance, "points", radius=0)
    >>> sorted(points[points != 255].tolist())  # one pixel per region: background and object
    [0, 3]
    """
    semantic, instance = _check_scene_maps(semantic, instance)
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    unknown = sorted(set(options) - _OPTIONS[kind])
    if unknown:
        raise TypeError(
            f"kind {kind!r} takes no option(s) {unknown}; it takes {sorted(_OPTIONS[kind])}"
        )
    opts = {**_DEFAULTS, **options}
    ignore_index = opts["ignore_index"]
    if kind == "tags":
        if "num_classes" not in options:
            raise ValueError("kind='tags' needs num_classes=")
        return _tags(semantic, options["num_classes"], ignore_index)
    regions = _regions(semantic, instance, opts["min_area"], ignore_index)
    if kind == "boxes":
        return _box_map(semantic.shape, regions)
    if opts["radius"] < 0:
        raise ValueError(f"radius must be >= 0, got {opts['radius']}")
    if kind == "points":
        return _marks(semantic.shape, regions, seed, opts["radius"], None, ignore_index)
    fraction = opts["keep_fraction"]
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"keep_fraction must lie in [0, 1], got {fraction}")
    return _marks(semantic.shape, regions, seed, opts["radius"], fraction, ignore_index)


def weak_labels_batch(semantic, instance, kind, *, seed=0, **options):
    """`weak_labels` for a stack of images (a loop: this is data preparation, not a hot path).

    Parameters
    ----------
    semantic : (N, H, W) int ndarray
        Class maps.
    instance : (N, H, W) int ndarray or None
        Instance maps.
    kind : {"tags", "boxes", "points", "scribbles"}
        As in `weak_labels`.
    seed : int, optional
        Image ``n`` uses seed ``(seed, n)``, so each image gets its own random stream.
    **options
        As in `weak_labels`.

    Returns
    -------
    labels : (N, H, W) uint8 ndarray, or (N, num_classes) bool ndarray for ``"tags"``
        One weak annotation per image.
    """
    semantic = np.asarray(semantic)
    if semantic.ndim != 3:
        raise ValueError(f"semantic must be (N, H, W), got shape {semantic.shape}")
    if instance is not None and np.shape(instance) != semantic.shape:
        raise ValueError(f"instance has shape {np.shape(instance)} but semantic {semantic.shape}")
    return np.stack(
        [
            weak_labels(
                semantic[n],
                None if instance is None else instance[n],
                kind,
                seed=(*np.atleast_1d(seed).tolist(), n),
                **options,
            )
            for n in range(len(semantic))
        ]
    )


def instance_boxes(semantic, instance=None, *, min_area=10, ignore_index=IGNORE_INDEX):
    """Bounding box and class of every object (every non-background region).

    Parameters
    ----------
    semantic : (H, W) int ndarray
        Class per pixel, 0 = background.
    instance : (H, W) int ndarray, optional
        Instance id per pixel, 0 = none; None: connected components per class.
    min_area : int, optional
        Objects outside all instances smaller than this are left out (see module notes).
    ignore_index : int, optional
        Void value in `semantic`.

    Returns
    -------
    boxes : (K, 5) int64 ndarray
        Rows ``(class, y0, x0, y1, x1)``, end coordinates exclusive.

    Examples
    --------
    >>> semantic = np.zeros((6, 8), np.uint8)
    >>> semantic[1:3, 2:7] = 5
    >>> instance_boxes(semantic).tolist()
    [[5, 1, 2, 3, 7]]
    """
    semantic, instance = _check_scene_maps(semantic, instance)
    regions = _regions(semantic, instance, min_area, ignore_index)
    rows = [
        (r.label, r.box[0].start, r.box[1].start, r.box[0].stop, r.box[1].stop)
        for r in regions
        if r.label != 0
    ]
    return np.array(rows, dtype=np.int64).reshape(-1, 5)


def box_label_map(boxes, shape):
    """Fill boxes with their class: the ``"boxes"`` weak label of a list of boxes.

    Boxes are drawn from the largest to the smallest, so a smaller box wins where boxes
    overlap (an object in front of a larger one keeps its class); everything outside all
    boxes is background. `weak_labels` ``"boxes"`` draws the boxes of `instance_boxes` so,
    and real box annotations (VOC's XML files) go through the same rule.

    Parameters
    ----------
    boxes : (K, 5) int ndarray
        Rows ``(class, y0, x0, y1, x1)``, end coordinates exclusive (as `instance_boxes`);
        parts outside the image are cut off.
    shape : (int, int)
        The label map's (H, W).

    Returns
    -------
    labels : (H, W) uint8 ndarray
        Box class per pixel, 0 outside every box.

    Examples
    --------
    >>> box_label_map(np.array([[1, 0, 0, 2, 4], [2, 0, 1, 1, 3]]), (3, 4)).tolist()
    [[1, 2, 2, 1], [1, 1, 1, 1], [0, 0, 0, 0]]
    """
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 5)
    out = np.zeros(shape, dtype=np.uint8)  # outside every box: background
    area = (boxes[:, 3] - boxes[:, 1]) * (boxes[:, 4] - boxes[:, 2])
    for label, y0, x0, y1, x1 in boxes[np.argsort(-area, kind="stable")]:  # ties keep order
        out[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = label
    return out


def coverage(label_map, ignore_index=IGNORE_INDEX):
    """Fraction of labelled pixels (value other than `ignore_index`).

    Parameters
    ----------
    label_map : (H, W) or (N, H, W) int ndarray
        One label map or a stack of them.
    ignore_index : int, optional
        The "unlabelled" value.

    Returns
    -------
    fraction : float, or (N,) float64 ndarray for a stack
        Labelled pixels / all pixels, per image.

    Examples
    --------
    >>> coverage(np.array([[0, 255], [255, 255]]))
    0.25
    """
    label_map = np.asarray(label_map)
    if label_map.ndim not in (2, 3):
        raise ValueError(f"label_map must be (H, W) or (N, H, W), got shape {label_map.shape}")
    fraction = (label_map != ignore_index).mean(axis=(-2, -1))
    return float(fraction) if label_map.ndim == 2 else fraction


def accuracy(label_map, truth, ignore_index=IGNORE_INDEX):
    """Fraction of the labelled pixels whose label is the true class.

    `coverage` says how much of an image a weak label map labels; this says how much of that
    is right. Points and scribbles score 1 (clipped to their regions), boxes less (the
    background inside a box carries the box's class).

    Parameters
    ----------
    label_map : (H, W) or (N, H, W) int ndarray
        Weak labels, `ignore_index` = unlabelled.
    truth : same shape int ndarray
        The true class of every pixel.
    ignore_index : int, optional
        The "unlabelled" value.

    Returns
    -------
    fraction : float, or (N,) float64 ndarray for a stack
        Right labels / labelled pixels, per image; NaN for an image with no labelled pixel
        (tags).

    Examples
    --------
    >>> accuracy(np.array([[1, 2], [255, 255]]), np.array([[1, 1], [0, 0]]))
    0.5
    """
    label_map, truth = np.asarray(label_map), np.asarray(truth)
    if label_map.ndim not in (2, 3) or label_map.shape != truth.shape:
        raise ValueError(
            f"label_map and truth must have one (H, W) or (N, H, W) shape, got "
            f"{label_map.shape} and {truth.shape}"
        )
    labelled = label_map != ignore_index
    right = (labelled & (label_map == truth)).sum(axis=(-2, -1))
    count = labelled.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):  # no labelled pixel: NaN
        fraction = right / count
    return float(fraction) if label_map.ndim == 2 else fraction


# --------------------------------------------------------------------------- implementation


def _check_scene_maps(semantic, instance):
    semantic = np.asarray(semantic)
    if semantic.ndim != 2:
        raise ValueError(f"semantic must be a 2-D (H, W) map, got shape {semantic.shape}")
    if semantic.dtype.kind not in "biu":
        raise ValueError(f"semantic must hold integers, got dtype {semantic.dtype}")
    if semantic.size and semantic.min() < 0:
        raise ValueError(f"semantic holds negative classes (min {semantic.min()})")
    if instance is None:
        instance = np.zeros(semantic.shape, dtype=np.int64)
    instance = np.asarray(instance)
    if instance.shape != semantic.shape:
        raise ValueError(f"instance has shape {instance.shape} but semantic {semantic.shape}")
    if instance.dtype.kind not in "biu":
        raise ValueError(f"instance must hold integers, got dtype {instance.dtype}")
    return semantic.astype(np.int64), instance.astype(np.int64)


def _tags(semantic, num_classes, ignore_index):
    present = np.unique(semantic[semantic != ignore_index])
    if present.size and (present.min() < 0 or present.max() >= num_classes):
        raise ValueError(
            f"semantic holds classes {present.tolist()}, outside [0, {num_classes}) "
            f"(ignore_index {ignore_index} excluded)"
        )
    tags = np.zeros(num_classes, dtype=bool)
    tags[present] = True
    return tags


def _regions(semantic, instance, min_area, ignore_index):
    """Split the image into labelled regions (see the module notes), in a fixed order."""
    valid = semantic != ignore_index
    region_map = np.zeros(semantic.shape, dtype=np.int64)  # 0 = no region
    keys, labels = [], []
    # 1. instances, split by class: (instance, class) pairs in sorted order
    owned = valid & (instance > 0)
    pairs = np.unique(np.stack([instance[owned], semantic[owned]], axis=1), axis=0)
    for inst, cls in pairs:
        region_map[owned & (instance == inst) & (semantic == cls)] = len(keys) + 1
        keys.append((int(inst), int(cls), 0))
        labels.append(int(cls))
    # 2. pixels outside all instances: connected components (8-connectivity) of each class
    free = valid & (instance <= 0)
    for cls in np.unique(semantic[free]):
        components, count = ndimage.label(free & (semantic == cls), structure=np.ones((3, 3)))
        areas = np.bincount(components.ravel(), minlength=count + 1)[1:]
        keep = np.flatnonzero(areas >= min_area)
        if keep.size == 0:  # every class keeps its largest piece: the background always counts
            keep = np.array([int(np.argmax(areas))])
        for comp in keep:
            region_map[components == comp + 1] = len(keys) + 1
            keys.append((0, int(cls), int(comp) + 1))
            labels.append(int(cls))
    boxes = ndimage.find_objects(region_map, max_label=len(keys))
    return [
        _Region(labels[n], keys[n], box, region_map[box] == n + 1) for n, box in enumerate(boxes)
    ]


def _box_map(shape, regions):
    """Draw the boxes of the objects among `regions` (`box_label_map`)."""
    rows = [
        (r.label, r.box[0].start, r.box[1].start, r.box[0].stop, r.box[1].stop)
        for r in regions
        if r.label != 0
    ]
    return box_label_map(np.array(rows, dtype=np.int64).reshape(-1, 5), shape)


def _rng(seed, key):
    return np.random.default_rng([*np.atleast_1d(seed).tolist(), *key])


def _marks(shape, regions, seed, radius, keep_fraction, ignore_index):
    """Points (keep_fraction None) or scribbles, one mark per region, clipped to the region."""
    out = np.full(shape, ignore_index, dtype=np.uint8)
    footprint = disk(radius).astype(bool) if radius > 0 else None
    for region in regions:
        rng = _rng(seed, region.key)
        if keep_fraction is None:
            seeds = _inner_point(region.mask, rng)
        else:
            seeds = _scribble(region.mask, keep_fraction, rng)
        if footprint is not None:
            seeds = ndimage.binary_dilation(seeds, structure=footprint)
        out[region.box][seeds & region.mask] = region.label
    return out


def _depth(mask):
    """Distance of each pixel to the nearest pixel outside the region (image border included)."""
    return ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]


def _inner_point(mask, rng):
    """One random pixel among the region's inner half (depth >= half the deepest pixel's)."""
    depth = _depth(mask)
    ys, xs = np.nonzero(depth >= 0.5 * depth.max())  # away from the boundary, as a person clicks
    k = rng.integers(len(ys))
    point = np.zeros_like(mask)
    point[ys[k], xs[k]] = True
    return point


def _scribble(mask, keep_fraction, rng):
    """Keep a connected piece of the region's skeleton holding `keep_fraction` of its pixels."""
    skeleton = skeletonize(mask)
    if not skeleton.any():  # skeletonize can erase a tiny blob: use its deepest pixel
        depth = _depth(mask)
        skeleton = depth == depth.max()
    ys, xs = np.nonzero(skeleton)
    n = len(ys)
    keep = max(1, int(round(keep_fraction * n)))
    if keep >= n:
        return skeleton
    # 8-neighbour graph of skeleton pixels; breadth-first from a random pixel walks along the
    # strokes, so the first `keep` pixels form one connected piece around the start
    index = np.full(mask.shape, -1, dtype=np.int64)
    index[ys, xs] = np.arange(n)
    padded = np.pad(index, 1, constant_values=-1)
    height, width = mask.shape
    rows, cols = [], []
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):  # each undirected neighbour pair once
        other = padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        both = (index >= 0) & (other >= 0)
        rows.append(index[both])
        cols.append(other[both])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)).tocsr()
    order, visited = [], np.zeros(n, dtype=bool)
    while len(order) < keep:  # a split region has several skeleton pieces: hop to the next one
        start = rng.choice(np.flatnonzero(~visited))
        piece = breadth_first_order(graph, start, directed=False, return_predecessors=False)
        visited[piece] = True
        order.extend(piece.tolist())
    kept = np.zeros_like(skeleton)
    chosen = np.asarray(order[:keep])
    kept[ys[chosen], xs[chosen]] = True
    return kept
