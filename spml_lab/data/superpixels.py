"""Over-segmentation (superpixels), hierarchical merging, and superpixel quality metrics.

SPML's *low-level image similarity* relation treats "same superpixel" as the positive cue: a
pixel is pulled towards the segments that share its superpixel id and pushed from the rest of the
image. The paper takes its superpixels from HED contours turned into an oriented watershed
ultrametric contour map (HED-owt-ucm) and thresholded. Here scikit-image does the
over-segmentation (SLIC, Felzenszwalb, quickshift, compact watershed) and `merge_hierarchical`
/ `ucm` turn one over-segmentation into a nested family of coarser ones, the closest analogue
of thresholding a UCM at different levels.

Vocabulary: ``labels`` is an ``(H, W)`` int32 superpixel map with ids ``0..K-1``; ``gt`` is any
``(H, W)`` integer map of ground-truth regions (a semantic or an instance map); every distinct
value is one region.
"""

from __future__ import annotations

import inspect

import numpy as np
from scipy import ndimage as ndi
from skimage import filters, graph, segmentation, util

from spml_lab import checks

__all__ = [
    "METHODS",
    "check_options",
    "segment",
    "edge_strength",
    "boundaries",
    "ucm",
    "merge_hierarchical",
    "boundary_recall",
    "undersegmentation_error",
    "achievable_segmentation_accuracy",
]

# Defaults tuned on 128 x 128 synthetic scenes and photos downscaled to ~128 px: each gives
# roughly 100-200 segments there. Anything passed to `segment` overrides them.
METHODS = {
    # 150 cells of ~10 x 10 px. Compactness 30 (vs the usual 10) keeps textured regions from
    # shattering into fragments that the connectivity step then swallows; no pre-smoothing
    # (sigma 0), since blurring a step edge lets SLIC put its middle pixels on the wrong side
    "slic": {"n_segments": 150, "compactness": 30.0, "sigma": 0.0},
    # scale ~ preferred segment "size" in colour units; min_size removes texture speckles
    "felzenszwalb": {"scale": 60.0, "sigma": 0.5, "min_size": 30},
    # small kernel, short links: keeps segments near 10 px across at this resolution
    "quickshift": {"kernel_size": 3, "max_dist": 8.0, "ratio": 0.5},
    # seeds on a regular grid; compactness 0: any positive value splits each two-pixel Sobel
    # ridge by distance to the seeds, so region borders can land one pixel off a sharp step
    "watershed": {"n_segments": 150, "compactness": 0.0},
}


# what `segment` sets itself: an option of these names would clash with its own choice
_SET_BY_SEGMENT = {"image", "channel_axis", "start_label", "markers"}


def check_options(method, options=None, *, name="superpixel_options"):
    """Check a method and its options before any image is segmented (or anything written).

    A dataset writer calls it first, so that a bad value is refused before its first file,
    not at its first image (scikit-image would stop there with a ``ZeroDivisionError`` for
    ``n_segments=0``, or a ``TypeError`` for a misspelt option).

    Parameters
    ----------
    method : str
        One of `METHODS`.
    options : dict, optional
        Keyword arguments of `segment` for `method` (``n_segments`` and the scikit-image
        function's own).
    name : str, optional
        How the caller calls `options`, for the messages (``""``: bare option names).

    Returns
    -------
    options : dict
        A copy of `options`, numpy integers of ``n_segments`` made Python ints.

    Raises
    ------
    ValueError
        For an unknown method, an option the method does not take, or an ``n_segments``
        that is not an integer >= 1; the message names the option and the value.

    Examples
    --------
    >>> check_options("watershed", {"n_segments": 64})
    {'n_segments': 64}
    >>> check_options("slic", {"n_segments": 0})
    Traceback (most recent call last):
    ...
    ValueError: superpixel_options['n_segments'] must be >= 1, got 0
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    options = dict(options or {})
    if "n_segments" in options and "n_segments" not in METHODS[method]:
        raise ValueError(
            f"method {method!r} has no n_segments parameter; "
            "tune `scale` (felzenszwalb) or `max_dist` (quickshift) instead"
        )
    keywords = inspect.signature(_FUNCTIONS[method]).parameters
    known = (set(METHODS[method]) | set(keywords)) - _SET_BY_SEGMENT
    for key in options:
        if key not in known:
            raise ValueError(
                f"{name or 'segment'}: unknown option {key!r} for method {method!r} "
                f"(known: {', '.join(sorted(known))})"
            )
    if "n_segments" in options:
        value = options["n_segments"]
        if isinstance(value, np.integer):  # a count read from an array is a count too
            value = int(value)
        options["n_segments"] = checks.in_range(_label(name, "n_segments"), value, 1)
    return options


def _label(name, key):
    return f"{name}[{key!r}]" if name else key


# the scikit-image function behind each method: the options it takes are its keywords
_FUNCTIONS = {
    "slic": segmentation.slic,
    "felzenszwalb": segmentation.felzenszwalb,
    "quickshift": segmentation.quickshift,
    "watershed": segmentation.watershed,
}


def segment(image, method="slic", *, n_segments=None, **options):
    """Over-segment an image into superpixels.

    Parameters
    ----------
    image : (H, W, 3) or (H, W) ndarray, uint8 or float in [0, 1]
        The image; a grey image is treated as RGB with three equal channels.
    method : {"slic", "felzenszwalb", "quickshift", "watershed"}, optional
        The algorithm. ``"watershed"`` floods `edge_strength` from a regular grid of seeds,
        each moved to the weakest edge in its 3 x 3 neighbourhood (as SLIC moves its centres)
        so that no seed sits on an edge; with ``compactness > 0`` it is the compact watershed
        of Neubert & Protzel [1]_.
    n_segments : int, optional
        Approximate number of segments for ``"slic"`` and ``"watershed"`` (default: see
        `METHODS`). Felzenszwalb and quickshift have no such knob; use `scale` or `max_dist`.
    **options
        Keyword arguments forwarded to the scikit-image function, overriding `METHODS`.

    Returns
    -------
    labels : (H, W) int32 ndarray
        Segment ids ``0..K-1``, every id used.

    Raises
    ------
    ValueError
        For an unknown `method` (the message lists the valid ones), options it does not take
        or an `n_segments` below 1 (see `check_options`), or an image of the wrong shape or
        value range.

    Notes
    -----
    SLIC and watershed segments are 4-connected regions; Felzenszwalb's are 8-connected (a
    segment may hold together only through a diagonal step); quickshift's need not be
    connected at all, since its links jump over pixels of other segments.

    A step edge's Sobel ridge is two pixels wide, one pixel on each side, so watershed borders
    follow the step only as long as each ridge pixel is reached from its own side. With the
    default compactness 0 that fails only at corners where regions meet (a pixel touching
    nothing but ridge pixels goes to whichever basin gets there first). Compact watershed
    (``compactness=1e-3`` or so) gives regular segments like SLIC but hands both ridge pixels
    to the nearer seed, so its borders may sit one pixel off the step all along it.

    References
    ----------
    .. [1] P. Neubert and P. Protzel, "Compact watershed and preemptive SLIC: on improving
           trade-offs of superpixel segmentation algorithms", ICPR 2014.

    Examples
    --------
    >>> image = np.zeros((20, 21, 3), np.uint8)
    >>> image[:10, 10:] = (255, 0, 0); image[10:, :10] = (0, 255, 0); image[10:, 10:] = 255
    >>> labels = segment(image, "slic", n_segments=4)
    >>> labels.dtype, np.unique(labels).tolist()
    (dtype('int32'), [0, 1, 2, 3])
    """
    if n_segments is not None:
        options["n_segments"] = n_segments
    checked = check_options(method, options, name="")  # before METHODS[method]: names a typo
    options = {**METHODS[method], **checked}
    image = _as_float_rgb(image)
    if method == "slic":
        labels = segmentation.slic(image, start_label=0, channel_axis=-1, **options)
    elif method == "felzenszwalb":
        labels = segmentation.felzenszwalb(image, channel_axis=-1, **options)
    elif method == "quickshift":
        labels = segmentation.quickshift(image, channel_axis=-1, **options)
    else:
        edges = edge_strength(image)
        seeds = _grid_seeds(edges, options.pop("n_segments"))
        labels = segmentation.watershed(edges, markers=seeds, **options)
    return _contiguous(labels)


def edge_strength(image):
    """Boundary strength: the largest Sobel gradient magnitude over the colour channels.

    Taking the maximum over channels (instead of the gradient of the grey image) keeps edges
    between regions of equal brightness but different hue.

    Parameters
    ----------
    image : (H, W, 3) or (H, W) ndarray, uint8 or float in [0, 1]
        The image.

    Returns
    -------
    edges : (H, W) float64 ndarray
        Non-negative: 0 in flat regions, about 0.7 on both sides of a black-to-white step.

    Examples
    --------
    >>> image = np.zeros((6, 6), np.uint8); image[:, 3:] = 255
    >>> edge_strength(image)[0].round(2).tolist()
    [0.0, 0.0, 0.71, 0.71, 0.0, 0.0]
    """
    image = _as_float_rgb(image)
    return np.max([filters.sobel(image[..., c]) for c in range(3)], axis=0)


def boundaries(labels):
    """Thin boundary map: pixels whose right or lower neighbour has a different label.

    Parameters
    ----------
    labels : (H, W) int ndarray
        Any label map.

    Returns
    -------
    boundary : (H, W) bool ndarray
        One pixel wide, on the top / left side of each boundary (the BSDS ``seg2bmap``
        convention, 4-neighbours only).

    Examples
    --------
    >>> boundaries(np.array([[0, 0, 1, 1]])).tolist()
    [[False, True, False, False]]
    """
    labels = np.asarray(labels)
    boundary = np.zeros(labels.shape, bool)
    boundary[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    boundary[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return boundary


def ucm(image, labels, *, edges=None):
    """Ultrametric contour map of greedy boundary merging on the region adjacency graph.

    Two adjacent superpixels ``a, b`` get the level at which `merge_hierarchical` first puts
    them in the same region; a pixel holds the largest level among its right and lower
    neighbours' (0 inside a superpixel). Thresholding gives the whole family at once: for
    every ``t > 0``::

        ucm(image, labels) >= t  ==  boundaries(merge_hierarchical(image, labels, t))

    Parameters
    ----------
    image : (H, W, 3) or (H, W) ndarray, uint8 or float in [0, 1]
        The image (not used when `edges` is given).
    labels : (H, W) int ndarray
        The over-segmentation, e.g. from `segment`.
    edges : (H, W) float ndarray, optional
        Boundary strength map; default ``edge_strength(image)``.

    Returns
    -------
    contours : (H, W) float64 ndarray
        Non-negative; higher values are boundaries that survive to coarser segmentations.

    Examples
    --------
    >>> image = np.zeros((4, 6), np.uint8); image[:, 2:] = 100; image[:, 4:] = 255
    >>> labels = np.repeat([[0, 0, 1, 1, 2, 2]], 4, axis=0)  # three vertical stripes
    >>> ucm(image, labels)[0].round(2).tolist()  # the weaker step merges first
    [0.0, 0.28, 0.0, 0.43, 0.0, 0.0]
    """
    labels = _contiguous(labels)
    merges = _merge_sequence(labels, _edges(image, edges, labels.shape))
    # every 4-neighbour pair with different labels, as (a, b) superpixel ids
    right = labels[:, :-1] != labels[:, 1:]  # (H, W-1)
    down = labels[:-1, :] != labels[1:, :]  # (H-1, W)
    pa = np.concatenate([labels[:, :-1][right], labels[:-1, :][down]])
    pb = np.concatenate([labels[:, 1:][right], labels[1:, :][down]])
    level = np.full(pa.shape, np.inf)  # stays inf only if a and b never merge
    comp = np.arange(labels.max() + 1)
    for src, dst, merge_level in merges:
        ca, cb = comp[pa], comp[pb]
        joined = ((ca == src) & (cb == dst)) | ((ca == dst) & (cb == src))
        level[joined] = merge_level
        comp[comp == src] = dst
    contours = np.zeros(labels.shape)
    n_right = int(right.sum())
    contours[:, :-1][right] = level[:n_right]
    contours[:-1, :][down] = np.maximum(contours[:-1, :][down], level[n_right:])
    return contours


def merge_hierarchical(image, labels, threshold, *, edges=None):
    """Merge an over-segmentation greedily along its weakest boundaries.

    Builds the region adjacency graph of `labels` weighted by the mean boundary strength along
    each shared boundary (``skimage.graph.rag_boundary``) and merges the weakest edge while its
    weight is below `threshold` (``skimage.graph.merge_hierarchical``, with the merged
    boundary's weight the length-weighted mean of its parts). Higher thresholds give coarser
    segmentations, each a union of the finer ones.

    Parameters
    ----------
    image : (H, W, 3) or (H, W) ndarray, uint8 or float in [0, 1]
        The image (not used when `edges` is given).
    labels : (H, W) int ndarray
        The over-segmentation.
    threshold : float or sequence of float
        Boundaries weaker than this are removed; on the scale of `edge_strength` (0 to ~0.7).
    edges : (H, W) float ndarray, optional
        Boundary strength map; default ``edge_strength(image)``.

    Returns
    -------
    merged : (H, W) int32 ndarray, or (T, H, W) for T thresholds
        Segment ids ``0..K'-1`` of each merged segmentation.

    Notes
    -----
    The merge sequence is computed once, so a sequence of thresholds costs the same as one.
    Merging by mean boundary can lower a boundary's weight below that of an earlier merge; the
    merge levels are therefore the running maximum of the weights, which keeps the family
    nested (threshold ``t`` performs exactly the merges whose level is below ``t``, as the
    greedy loop in scikit-image does).

    Examples
    --------
    >>> image = np.zeros((4, 6), np.uint8); image[:, 2:] = 100; image[:, 4:] = 255
    >>> labels = np.repeat([[0, 0, 1, 1, 2, 2]], 4, axis=0)  # three vertical stripes
    >>> merge_hierarchical(image, labels, [0.2, 0.4, 0.5])[:, 0].tolist()
    [[0, 0, 1, 1, 2, 2], [0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0]]
    """
    labels = _contiguous(labels)
    thresholds = np.atleast_1d(np.asarray(threshold, dtype=float))
    merges = _merge_sequence(labels, _edges(image, edges, labels.shape))
    levels = np.array([m[2] for m in merges])
    comp = np.arange(labels.max() + 1)
    comps = []
    done = 0
    for t in thresholds:  # a few thresholds, each taking the merges with level below it
        if done > (n := int(np.sum(levels < t))):
            comp, done = np.arange(labels.max() + 1), 0  # thresholds need not be sorted
        for src, dst, _ in merges[done:n]:
            comp[comp == src] = dst
        done = n
        comps.append(_contiguous(comp[labels]))
    merged = np.stack(comps)
    return merged if np.ndim(threshold) else merged[0]


def boundary_recall(labels, gt, tolerance=2):
    """Fraction of ground-truth boundary pixels within `tolerance` px of a segment boundary.

    Parameters
    ----------
    labels : (H, W) int ndarray
        The segmentation.
    gt : (H, W) int ndarray
        Ground-truth regions.
    tolerance : float, optional
        Largest Euclidean distance in pixels between a ground-truth boundary pixel and a
        segmentation boundary pixel that still counts as a hit (2 is the usual value).

    Returns
    -------
    recall : float
        In [0, 1]; NaN when `gt` has no boundary.

    Notes
    -----
    Boundaries are the thin maps of `boundaries`. This is the boundary recall of Achanta et
    al. [1]_ and Neubert & Protzel [2]_: ``|{p in B(gt) : dist(p, B(labels)) <= tolerance}|
    / |B(gt)|``.

    References
    ----------
    .. [1] R. Achanta et al., "SLIC superpixels compared to state-of-the-art superpixel
           methods", IEEE TPAMI 34(11), 2012.
    .. [2] P. Neubert and P. Protzel, "Superpixel benchmark and comparison", Proc. Forum
           Bildverarbeitung, 2012.

    Examples
    --------
    >>> gt = np.repeat([[0, 0, 0, 1, 1, 1, 1, 1]], 8, axis=0)
    >>> moved = np.repeat([[0, 0, 0, 0, 0, 1, 1, 1]], 8, axis=0)  # boundary 2 px to the right
    >>> boundary_recall(moved, gt), boundary_recall(moved, gt, tolerance=1)
    (1.0, 0.0)
    """
    labels, gt = _pair(labels, gt)
    gt_boundary = boundaries(gt)
    if not gt_boundary.any():
        return float("nan")
    seg_boundary = boundaries(labels)
    if not seg_boundary.any():
        return 0.0
    distance = ndi.distance_transform_edt(~seg_boundary)  # (H, W) px to the nearest boundary
    return float(np.mean(distance[gt_boundary] <= tolerance))


def undersegmentation_error(labels, gt):
    """Under-segmentation error, Neubert & Protzel's corrected form.

    ``UE = (1/N) sum_g sum_{s : s & g != {}} min(|s & g|, |s - g|)``: every segment that
    overlaps a ground-truth region is charged for the smaller of its part inside and its part
    outside that region, so a segment that leaks a little is charged a little.

    Parameters
    ----------
    labels : (H, W) int ndarray
        The segmentation.
    gt : (H, W) int ndarray
        Ground-truth regions.

    Returns
    -------
    error : float
        0 when every segment lies inside one ground-truth region; at most 1.

    Notes
    -----
    Achanta et al.'s original form [1]_, ``(sum_g sum_{s : |s & g| > B} |s| - N) / N`` with
    ``B`` 5 % of ``|s|``, charges a segment's whole size for any overlap above ``B`` and
    depends on that arbitrary cut-off; Neubert & Protzel's variant [2]_ used here has no
    parameter and counts each leak once from each side (a segment with ``k`` pixels outside
    its main region adds ``2 k / N`` while ``k`` is the smaller part).

    References
    ----------
    .. [1] R. Achanta et al., "SLIC superpixels compared to state-of-the-art superpixel
           methods", IEEE TPAMI 34(11), 2012.
    .. [2] P. Neubert and P. Protzel, "Superpixel benchmark and comparison", Proc. Forum
           Bildverarbeitung, 2012.

    Examples
    --------
    >>> gt = np.repeat([[0, 0, 0, 0, 1, 1, 1, 1]], 8, axis=0)
    >>> undersegmentation_error(gt, gt)
    0.0
    >>> undersegmentation_error(np.repeat([[0, 0, 0, 0, 0, 1, 1, 1]], 8, axis=0), gt)
    0.25
    """
    seg_ids, _, overlap = _contingency(*_pair(labels, gt))
    sizes = np.bincount(seg_ids, weights=overlap)  # |s| for every segment
    return float(np.minimum(overlap, sizes[seg_ids] - overlap).sum() / overlap.sum())


def achievable_segmentation_accuracy(labels, gt):
    """Achievable segmentation accuracy: the best pixel accuracy of a segment-wise labelling.

    ``ASA = (1/N) sum_s max_g |s & g|``: label each segment with the ground-truth region it
    overlaps most and count the pixels that come out right (Liu et al. [1]_).

    Parameters
    ----------
    labels : (H, W) int ndarray
        The segmentation.
    gt : (H, W) int ndarray
        Ground-truth regions.

    Returns
    -------
    accuracy : float
        In (0, 1]; 1 when no segment straddles a ground-truth boundary.

    References
    ----------
    .. [1] M.-Y. Liu, O. Tuzel, S. Ramalingam and R. Chellappa, "Entropy rate superpixel
           segmentation", CVPR 2011.

    Examples
    --------
    >>> gt = np.repeat([[0, 0, 0, 0, 1, 1, 1, 1]], 8, axis=0)
    >>> achievable_segmentation_accuracy(np.repeat([[0, 0, 0, 0, 0, 1, 1, 1]], 8, axis=0), gt)
    0.875
    """
    seg_ids, _, overlap = _contingency(*_pair(labels, gt))
    best = np.zeros(seg_ids.max() + 1)
    np.maximum.at(best, seg_ids, overlap)  # max_g |s & g| for every segment
    return float(best.sum() / overlap.sum())


# ----------------------------------------------------------------------------- helpers


def _as_float_rgb(image):
    """(H, W, 3) float64 in [0, 1] from uint8 / float, RGB or grey; a clear error otherwise."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) or (H, W) image, got shape {image.shape}")
    if np.issubdtype(image.dtype, np.floating):
        low, high = float(image.min()), float(image.max())
        if low < -1e-6 or high > 1 + 1e-6:
            raise ValueError(
                f"float images must lie in [0, 1], got [{low:.3g}, {high:.3g}]; "
                "divide by 255 or pass uint8"
            )
        return np.clip(image.astype(np.float64), 0.0, 1.0)
    return util.img_as_float64(image)


def _grid_seeds(edges, n_seeds):
    """Marker image: ~`n_seeds` grid points, each moved to the weakest edge in its 3 x 3 window."""
    ys, xs = np.nonzero(util.regular_seeds(edges.shape, n_seeds))  # (S,), (S,)
    # the 9 offsets of the window, centre first so that argmin keeps a seed in a flat region
    dy = np.array([[0, -1, -1, -1, 0, 0, 1, 1, 1]])
    dx = np.array([[0, -1, 0, 1, -1, 1, -1, 0, 1]])
    cy = np.clip(ys[:, None] + dy, 0, edges.shape[0] - 1)  # (S, 9)
    cx = np.clip(xs[:, None] + dx, 0, edges.shape[1] - 1)
    best = np.argmin(edges[cy, cx], axis=1)  # (S,) index of the weakest edge
    markers = np.zeros(edges.shape, np.int32)
    rows = np.arange(len(ys))
    markers[cy[rows, best], cx[rows, best]] = rows + 1  # two seeds on one pixel keep one id
    return markers


def _contiguous(labels):
    """Relabel to int32 ids 0..K-1 (in order of the original values)."""
    labels = np.asarray(labels)
    _, inverse = np.unique(labels.ravel(), return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.int32)


def _pair(labels, gt):
    labels, gt = np.asarray(labels), np.asarray(gt)
    if labels.shape != gt.shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape} and gt {gt.shape} must be equal (H, W) shapes")
    return labels, gt


def _contingency(labels, gt):
    """Non-zero entries of the segment x region overlap table, as three flat arrays.

    Returns ``(seg_ids, gt_ids, overlap)`` with ``overlap[k] = |s & g|`` for segment
    ``seg_ids[k]`` and region ``gt_ids[k]`` (both remapped to 0..K-1 / 0..G-1). Sparse, so
    thousands of segments against thousands of instances cost memory in pixels, not K x G.
    """
    seg = _contiguous(labels).ravel().astype(np.int64)
    reg = _contiguous(gt).ravel().astype(np.int64)
    num_regions = int(reg.max()) + 1
    pairs, overlap = np.unique(seg * num_regions + reg, return_counts=True)
    return pairs // num_regions, pairs % num_regions, overlap.astype(np.float64)


def _edges(image, edges, shape):
    if edges is None:
        edges = edge_strength(image)
    edges = np.asarray(edges, dtype=np.float64)
    if edges.shape != shape:
        raise ValueError(f"edges {edges.shape} and labels {shape} must have the same shape")
    return edges


def _merge_sequence(labels, edges):
    """All merges of greedy boundary merging, as ``[(src, dst, level), ...]`` in order.

    Runs ``skimage.graph.merge_hierarchical`` to the end (infinite threshold) and records each
    merge; `level` is the running maximum of the merged edges' weights (see
    `merge_hierarchical`). Ids are those of `labels` (merges are in place: `dst` survives).
    """
    merges = []
    if labels.max() == 0:
        return merges  # one segment: nothing to merge
    rag = graph.rag_boundary(labels, edges, connectivity=1)

    def record(rag, src, dst):
        weight = rag[src][dst]["weight"]
        level = max(weight, merges[-1][2]) if merges else weight
        merges.append((src, dst, level))

    graph.merge_hierarchical(
        labels,
        rag,
        thresh=np.inf,
        rag_copy=False,
        in_place_merge=True,
        merge_func=record,
        weight_func=_mean_boundary_weight,
    )
    return merges


def _mean_boundary_weight(rag, src, dst, n):
    """Weight of the edge (merged node, n): length-weighted mean of the two old boundaries."""
    default = {"weight": 0.0, "count": 0}
    count_src, count_dst = rag[src].get(n, default)["count"], rag[dst].get(n, default)["count"]
    weight_src, weight_dst = rag[src].get(n, default)["weight"], rag[dst].get(n, default)["weight"]
    count = count_src + count_dst
    return {"count": count, "weight": (count_src * weight_src + count_dst * weight_dst) / count}
