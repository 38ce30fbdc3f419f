"""Numbers behind the embedding pictures: sampled pixels, silhouettes, cosine distributions.

A UMAP picture shows *whether* classes form clusters; these functions say *how much*, in numbers
two models can be compared by. `sample_pixels` and `sample_segments` draw (seeded) rows from a
batch's embedding map or segments, with each row's true class, annotation state and image;
`silhouette_per_class` scores how well each class separates from the nearest other one
(cosine distance); `cosine_distributions` draws same-class and different-class pairs, whose
cosine histograms show the gap the contrastive loss is meant to open.
"""

from __future__ import annotations

import numpy as np

from spml_lab.constants import IGNORE_INDEX
from spml_lab.pictures.arrays import embedding_array, nearest_resize, to_numpy

__all__ = [
    "sample_pixels",
    "sample_segments",
    "join_samples",
    "silhouette_per_class",
    "cosine_distributions",
    "compare_embeddings",
    "probe_position_and_class",
]


def _unit(vectors):
    """Rows scaled to unit length (zero rows stay zero) in float64."""
    vectors = to_numpy(vectors, np.float64)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be (N, D), got shape {vectors.shape}")
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _choose(rng, count, num_samples, weights=None):
    """Sorted indices of at most `num_samples` of `count` items, without replacement."""
    if num_samples is None or num_samples >= count:
        return np.arange(count)
    p = None if weights is None else weights / weights.sum()
    return np.sort(rng.choice(count, num_samples, replace=False, p=p))


def sample_pixels(
    embeddings,
    labels,
    *,
    annotation=None,
    num_samples=2000,
    balance=False,
    seed=0,
):
    """Draw pixel embeddings from a batch with their true class, annotation state and image.

    Parameters
    ----------
    embeddings : (B, h, w, D) float ndarray or tensor
        Channels last, as `embedding_nets.embed` gives them (1/4 of the image size for the
        small net), e.g. ``lesson_batch.LessonBatch.embeddings``.
    labels : (B, H, W) int ndarray or tensor
        True class per pixel at any resolution (brought to (h, w) by nearest sampling);
        255 = unknown, never drawn.
    annotation : (B, H', W') int ndarray or tensor, optional
        Weak labels (255 = unlabelled), brought down the same way; sets ``"labelled"``.
    num_samples : int or None, optional
        Pixels drawn without replacement; None keeps all. A few thousand keep UMAP at seconds.
    balance : bool, optional
        Draw every class about equally often (weights 1 / class size) instead of uniformly,
        so that small objects are not drowned by background.
    seed : int, optional
        Seed of the draw: same seed, same pixels.

    Returns
    -------
    sample : dict of ndarrays, N rows each, in (image, y, x) order
        ``"vectors"`` (N, D) float64 as given; ``"classes"`` (N,) int64 true class;
        ``"labelled"`` (N,) bool, the pixel carries a weak label (all False without
        `annotation`); ``"images"`` (N,) int64; ``"y"``, ``"x"`` (N,) int64 at embedding
        resolution; ``"segment"`` (N,) bool, all False (see `join_samples`).

    Raises
    ------
    ValueError
        If the shapes do not fit or no pixel has a known class.

    Examples
    --------
    >>> emb = np.zeros((1, 2, 2, 2))  # (B, h, w, D)
    >>> emb[0, ..., 0] = 1.0
    >>> s = sample_pixels(emb, np.array([[[1, 1, 2, 2]] * 4]), num_samples=3)
    >>> s["vectors"].shape, sorted(set(s["classes"].tolist()))
    ((3, 2), [1, 2])
    """
    emb = embedding_array(embeddings)
    num_images, height, width, dim = emb.shape
    truth = nearest_resize(labels, (height, width), ndim=3, name="labels").astype(np.int64)
    if truth.shape[0] != num_images:
        raise ValueError(f"labels hold {truth.shape[0]} images, embeddings {num_images}")
    labelled = np.zeros(truth.shape, bool)
    if annotation is not None:
        weak = nearest_resize(annotation, (height, width), ndim=3, name="annotation")
        if weak.shape[0] != num_images:
            raise ValueError(f"annotation holds {weak.shape[0]} images, embeddings {num_images}")
        labelled = weak != IGNORE_INDEX
    known = np.flatnonzero(truth.reshape(-1) != IGNORE_INDEX)  # flat (b, y, x) order
    if not len(known):
        raise ValueError("labels mark every pixel unknown (255): nothing to sample")
    classes = truth.reshape(-1)[known]
    weights = None
    if balance:
        counts = np.bincount(classes)
        weights = 1.0 / counts[classes]
    rng = np.random.default_rng(seed)
    flat = known[_choose(rng, len(known), num_samples, weights)]
    image, rest = np.divmod(flat, height * width)
    return {
        "vectors": emb.reshape(-1, dim)[flat],
        "classes": truth.reshape(-1)[flat],
        "labelled": labelled.reshape(-1)[flat],
        "images": image,
        "y": rest // width,
        "x": rest % width,
        "segment": np.zeros(len(flat), bool),
    }


def sample_segments(segments, labels, *, num_samples=None, seed=0):
    """Segment prototypes with their majority true class, annotation state and image.

    Parameters
    ----------
    segments : clustering.Segments
        With ``segment_ids`` (B, h, w), ``prototypes`` (S, D), ``labels`` (S,) weak labels
        and ``image_ids`` (S,).
    labels : (B, H, W) int ndarray or tensor
        True class per pixel at any resolution (nearest-sampled to (h, w)); 255 = unknown.
    num_samples : int, optional
        Segments drawn without replacement; default all.
    seed : int, optional

    Returns
    -------
    sample : dict of ndarrays
        The keys of `sample_pixels`: ``"classes"`` is the most frequent known true class of the
        segment's pixels (255 if none), ``"labelled"`` its weak label is not 255, ``"y"`` and
        ``"x"`` its (rounded) centroid, ``"segment"`` all True; plus ``"sizes"`` (N,) pixels.
        Segments whose class is 255 are left out.

    Examples
    --------
    >>> import torch
    >>> from spml_lab.method.clustering import build_segments
    >>> emb = torch.eye(2)[None, :, None].expand(1, 2, 2, 2)  # (B, h, w, D): two rows
    >>> seg = build_segments(emb, torch.tensor([[[0, 0], [1, 1]]]))
    >>> s = sample_segments(seg, np.array([[[1, 1], [2, 255]]]))
    >>> s["classes"].tolist(), s["sizes"].tolist(), s["y"].tolist()
    ([1, 2], [2, 2], [0, 1])
    """
    ids = to_numpy(segments.segment_ids).astype(np.int64)
    num_segments = int(segments.prototypes.shape[0])
    if ids.ndim != 3:
        raise ValueError(f"segments.segment_ids must be (B, h, w), got shape {ids.shape}")
    truth = nearest_resize(labels, ids.shape[1:], ndim=3, name="labels").astype(np.int64)
    if truth.shape != ids.shape:
        raise ValueError(f"labels hold {truth.shape[0]} images, segment_ids {ids.shape[0]}")
    keep = (ids >= 0) & (truth != IGNORE_INDEX)
    num_classes = int(truth[keep].max()) + 1 if keep.any() else 1
    votes = np.bincount(
        ids[keep] * num_classes + truth[keep], minlength=num_segments * num_classes
    ).reshape(num_segments, num_classes)  # (S, C) pixels of each class in each segment
    classes = np.where(votes.any(1), votes.argmax(1), IGNORE_INDEX)
    # centroid of each segment at embedding resolution, from per-segment coordinate sums
    grid = np.indices(ids.shape[1:]).reshape(2, -1)  # (2, h * w) row, column of each pixel
    flat_ids = ids.reshape(ids.shape[0], -1)
    inside = flat_ids >= 0
    sizes = np.bincount(flat_ids[inside], minlength=num_segments)
    coords = [
        np.bincount(flat_ids[inside], np.broadcast_to(g, flat_ids.shape)[inside], num_segments)
        for g in grid
    ]
    y, x = (np.round(c / np.maximum(sizes, 1)).astype(np.int64) for c in coords)
    rng = np.random.default_rng(seed)
    candidates = np.flatnonzero(classes != IGNORE_INDEX)
    rows = candidates[_choose(rng, len(candidates), num_samples)]
    return {
        "vectors": to_numpy(segments.prototypes, np.float64)[rows],
        "classes": classes[rows],
        "labelled": to_numpy(segments.labels)[rows] != IGNORE_INDEX,
        "images": to_numpy(segments.image_ids).astype(np.int64)[rows],
        "y": y[rows],
        "x": x[rows],
        "segment": np.ones(len(rows), bool),
        "sizes": sizes[rows],
    }


def join_samples(*samples):
    """Stack samples (pixels, segments) into one, e.g. to project them with one UMAP.

    Parameters
    ----------
    *samples : dicts from `sample_pixels` / `sample_segments`
        Keys missing from some (``"sizes"``) are filled with 1 (a pixel is one pixel).

    Returns
    -------
    sample : dict of ndarrays
        Rows of the first sample first; ``"segment"`` tells pixels from segments.

    Examples
    --------
    >>> a = {"classes": np.array([1]), "segment": np.array([False])}
    >>> b = {"classes": np.array([2, 3]), "segment": np.array([True, True]),
    ...      "sizes": np.array([5, 6])}
    >>> joined = join_samples(a, b)
    >>> joined["classes"].tolist(), joined["sizes"].tolist()
    ([1, 2, 3], [1, 5, 6])
    """
    if not samples:
        raise ValueError("join_samples needs at least one sample")
    keys = list(dict.fromkeys(k for s in samples for k in s))

    def column(sample, key):
        if key in sample:
            return sample[key]
        if key != "sizes":
            raise ValueError(f"a sample lacks key {key!r}; all need the keys of sample_pixels")
        return np.ones(len(sample["classes"]), np.int64)

    return {k: np.concatenate([column(s, k) for s in samples]) for k in keys}


def silhouette_per_class(vectors, classes, *, chunk_size=1024):
    """Silhouette of each point under the cosine distance, averaged per class and overall.

    Parameters
    ----------
    vectors : (N, D) float ndarray or tensor
        Embeddings; only their direction counts.
    classes : (N,) int ndarray or tensor
        Class of each row (at least two distinct classes).
    chunk_size : int, optional
        Rows of the distance matrix formed at once (memory ``chunk_size x N``).

    Returns
    -------
    per_class : dict of int to float
        Mean silhouette of the points of each class present, in [-1, 1]: near 1 when the class
        is tight and far from its nearest other class, near 0 or below when it overlaps one.
    overall : float
        Mean over all points (scikit-learn's ``silhouette_score``).

    Raises
    ------
    ValueError
        With fewer than two classes, or shapes that disagree.

    Notes
    -----
    Point i with class c: ``a = mean d(i, j)`` over the other points of c, ``b = min over
    classes k != c of mean d(i, j), j in k``, ``s = (b - a) / max(a, b)``, 0 for a point alone
    in its class (scikit-learn's conventions), with ``d = 1 - cosine``. Class sums of a row block
    of distances come from one product with the class indicator matrix, so no loop runs over
    points or classes.

    Examples
    --------
    >>> v = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    >>> per_class, overall = silhouette_per_class(v, np.array([0, 0, 1, 1]))
    >>> round(per_class[0], 2), round(overall, 2)
    (0.99, 0.99)
    """
    unit = _unit(vectors)
    classes = to_numpy(classes).reshape(-1)
    if len(classes) != len(unit):
        raise ValueError(f"classes has {len(classes)} entries, vectors {len(unit)} rows")
    present, codes = np.unique(classes, return_inverse=True)
    if len(present) < 2:
        raise ValueError(f"need at least two classes for a silhouette, got {present.tolist()}")
    onehot = np.eye(len(present))[codes]  # (N, K)
    counts = onehot.sum(0)  # (K,)
    scores = np.empty(len(unit))
    for start in range(0, len(unit), chunk_size):
        rows = slice(start, start + chunk_size)
        distance = np.clip(1.0 - unit[rows] @ unit.T, 0.0, 2.0)  # (r, N)
        sums = distance @ onehot  # (r, K) total distance to each class
        own = codes[rows]
        r = np.arange(len(own))
        # the point's distance to itself is 0, so only the divisor leaves it out
        a = sums[r, own] / np.maximum(counts[own] - 1, 1)
        means = sums / counts
        means[r, own] = np.inf
        b = means.min(1)
        s = (b - a) / np.maximum(np.maximum(a, b), 1e-12)
        scores[rows] = np.where(counts[own] > 1, s, 0.0)
    per_class = np.bincount(codes, scores) / counts
    return dict(zip(present.tolist(), per_class.tolist(), strict=True)), float(scores.mean())


def cosine_distributions(vectors, classes, *, num_pairs=5000, seed=0):
    """Cosines of random same-class and different-class pairs of rows.

    Parameters
    ----------
    vectors : (N, D) float ndarray or tensor
    classes : (N,) int ndarray or tensor
    num_pairs : int, optional
        Pairs drawn of each kind (with replacement).
    seed : int, optional

    Returns
    -------
    intra, inter : (num_pairs,) float64 ndarrays
        Cosine of pairs of distinct rows of the same class, and of different classes. Each
        kind is drawn uniformly over all its ordered pairs, so a class weighs as much as it
        has pairs.

    Raises
    ------
    ValueError
        If no class has two rows, or all rows share one class.

    Notes
    -----
    Rows are sorted by class, so a class is a block ``[start, start + n)``. A same-class pair
    picks i with probability proportional to ``n_c - 1`` (its partners), then a partner
    uniformly among the other ``n_c - 1`` rows of the block; a different-class pair picks i
    proportionally to ``N - n_c``, then one of the rows outside its block.

    Examples
    --------
    >>> v = np.array([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8]])
    >>> intra, inter = cosine_distributions(v, np.array([0, 0, 1]), num_pairs=4)
    >>> intra.round(3).tolist(), inter.round(3).tolist()
    ([1.0, 1.0, 1.0, 1.0], [0.6, 0.6, 0.6, 0.6])
    """
    unit = _unit(vectors)
    classes = to_numpy(classes).reshape(-1)
    if len(classes) != len(unit):
        raise ValueError(f"classes has {len(classes)} entries, vectors {len(unit)} rows")
    order = np.argsort(classes, kind="stable")
    unit = unit[order]
    _, codes, counts = np.unique(classes[order], return_inverse=True, return_counts=True)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    n_c, start = counts[codes], starts[codes]  # (N,) class size and block start of each row
    total = len(unit)
    partners_same, partners_other = n_c - 1, total - n_c
    if not partners_same.any():
        raise ValueError("no class has two rows: no same-class pair to draw")
    if not partners_other.any():
        raise ValueError("all rows share one class: no different-class pair to draw")
    rng = np.random.default_rng(seed)
    i = rng.choice(total, num_pairs, p=partners_same / partners_same.sum())
    offset = 1 + rng.integers(0, partners_same[i])  # 1 .. n_c - 1 past i, cyclically
    j = start[i] + (i - start[i] + offset) % n_c[i]
    intra = np.einsum("nd,nd->n", unit[i], unit[j])
    i = rng.choice(total, num_pairs, p=partners_other / partners_other.sum())
    r = rng.integers(0, partners_other[i])  # index among the rows outside i's block
    j = np.where(r < start[i], r, r + n_c[i])
    inter = np.einsum("nd,nd->n", unit[i], unit[j])
    return np.clip(intra, -1.0, 1.0), np.clip(inter, -1.0, 1.0)


def compare_embeddings(samples, *, class_names=None, num_pairs=5000, seed=0):
    """One row of numbers per model: silhouettes and mean cosines of its sampled embeddings.

    Parameters
    ----------
    samples : dict of str to (vectors, classes)
        Per model name, (N, D) rows and their (N,) classes (e.g. from `sample_pixels`).
    class_names : list of str, optional
        Names of the class ids, for the per-class columns; default ``"class <id>"``.
    num_pairs, seed : int, optional
        As in `cosine_distributions` (same seed for every model).

    Returns
    -------
    rows : list of dict
        ``{"model", "silhouette", "intra_cosine", "inter_cosine", "gap"`` (intra - inter)
        ``, "silhouette <class>" ...}``: plain values, ready for printing or a DataFrame.

    Examples
    --------
    >>> v = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    >>> rows = compare_embeddings({"net": (v, np.array([0, 0, 1, 1]))}, class_names=["a", "b"])
    >>> rows[0]["model"], round(rows[0]["gap"], 2), round(rows[0]["silhouette b"], 2)
    ('net', 0.9, 0.99)
    """
    rows = []
    for name, (vectors, classes) in samples.items():
        per_class, overall = silhouette_per_class(vectors, classes)
        intra, inter = cosine_distributions(vectors, classes, num_pairs=num_pairs, seed=seed)
        row = {
            "model": name,
            "silhouette": overall,
            "intra_cosine": float(intra.mean()),
            "inter_cosine": float(inter.mean()),
            "gap": float(intra.mean() - inter.mean()),
        }
        for c, score in per_class.items():
            label = class_names[c] if class_names is not None else f"class {c}"
            row[f"silhouette {label}"] = score
        rows.append(row)
    return rows


def probe_position_and_class(embeddings, labels, *, num_samples=4000, seed=0):
    """Probe what an embedding encodes: each pixel's position and its class, linearly.

    An embedding that lowers a contrastive loss by writing *where* a pixel is, rather than
    *what* it is, shows a high position R² and a low class accuracy. Both probes are fitted on
    the pixels of the first half of the images and scored on the other half, so no image is
    seen by both (scikit-learn's ridge regression and logistic regression).

    Parameters
    ----------
    embeddings : (B, h, w, D) float ndarray or tensor
        Pixel embeddings, channels last; B >= 2.
    labels : (B, H, W) int ndarray or tensor
        True class per pixel (brought to (h, w) by nearest sampling); 255 = unknown.
    num_samples : int, optional
        Pixels drawn from each half (class-balanced draws for the class probe).
    seed : int, optional

    Returns
    -------
    scores : dict of str to float
        ``position_r2``: R² of (y, x) in [-0.5, 0.5] predicted from the embedding (1 = the
        position is linearly readable, 0 = not at all); ``class_balanced_accuracy``: balanced
        accuracy of the class predicted by a multinomial logistic regression.

    Examples
    --------
    An "embedding" that is the pixel's position, in an image of two halves of one class each:

    >>> yy, xx = np.meshgrid(np.linspace(-0.5, 0.5, 8), np.linspace(-0.5, 0.5, 8), indexing="ij")
    >>> emb = np.broadcast_to(np.stack([yy, xx, np.ones_like(yy)], -1), (4, 8, 8, 3))
    >>> labels = np.broadcast_to((xx > 0).astype(int), (4, 8, 8))
    >>> scores = probe_position_and_class(emb, labels, num_samples=200)
    >>> round(scores["position_r2"], 3), round(scores["class_balanced_accuracy"], 2)
    (1.0, 1.0)
    """
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import balanced_accuracy_score, r2_score

    rows = embedding_array(embeddings)  # (B, h, w, D)
    if rows.shape[0] < 2:
        raise ValueError(f"embeddings must hold B >= 2 images, got shape {rows.shape}")
    num_images, height, width, _ = rows.shape
    classes = nearest_resize(labels, (height, width), ndim=3, name="labels")  # (B, h, w)
    yy, xx = np.meshgrid(
        np.linspace(-0.5, 0.5, height), np.linspace(-0.5, 0.5, width), indexing="ij"
    )
    rng = np.random.default_rng(seed)
    halves = []
    for part in (slice(0, num_images // 2), slice(num_images // 2, num_images)):
        vectors = rows[part].reshape(-1, rows.shape[-1])
        where = np.stack(np.broadcast_arrays(yy, xx), -1)[None].repeat(rows[part].shape[0], 0)
        where = where.reshape(-1, 2)
        truth = classes[part].reshape(-1)
        known = np.flatnonzero(truth != IGNORE_INDEX)
        uniform = rng.choice(known, min(num_samples, len(known)), replace=False)
        counts = np.bincount(truth[known])
        weights = 1.0 / counts[truth[known]]
        balanced = rng.choice(
            known, min(num_samples, len(known)), replace=False, p=weights / weights.sum()
        )
        halves.append((vectors, where, truth, uniform, balanced))
    (v0, w0, t0, u0, b0), (v1, w1, t1, u1, b1) = halves
    position = Ridge(alpha=1e-3).fit(v0[u0], w0[u0])
    r2 = r2_score(w1[u1], position.predict(v1[u1]))
    probe = LogisticRegression(max_iter=2000).fit(v0[b0], t0[b0])
    accuracy = balanced_accuracy_score(t1[b1], probe.predict(v1[b1]))
    return {"position_r2": float(r2), "class_balanced_accuracy": float(accuracy)}
