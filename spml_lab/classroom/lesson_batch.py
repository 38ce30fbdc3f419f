"""Lesson batches: a few images of the embedded data, run through a network and segmented.

The relation notebooks look at *one* batch the way a training step sees it: the images, their
pixel embeddings at the network's output resolution, the weak labels and superpixels brought
down to that resolution, the image tags, and the `clustering.Segments` built from all of it.
`make_batch` assembles such a batch (a `LessonBatch`) from the committed embedded data;
`pick_pixel` chooses a pixel worth drawing; `similarity_within_across` measures how much an
embedding follows a partition (superpixels, classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from spml_lab.constants import IGNORE_INDEX, KMEANS_GRID, KMEANS_ITERATIONS
from spml_lab.data import datasets
from spml_lab.method import clustering, label_maps, relations
from spml_lab.nets import embedding_nets
from spml_lab.training.config import TrainConfig

__all__ = [
    "LessonBatch",
    "make_batch",
    "pixel_index",
    "pixel_position",
    "pick_pixel",
    "similarity_within_across",
    "training_location_weight",
    "compared_features",
    "segment_weights",
    "nearest_labels",
]


@dataclass
class LessonBatch:
    """One batch as a training step sees it, plus what the pictures need.

    Attributes
    ----------
    images : (B, H, W, 3) uint8 ndarray
        The images at full resolution, for drawing.
    truth : (B, H, W) int64 ndarray
        Dense ground truth at full resolution (never used by a relation; for evaluation).
    embeddings : (B, h, w, D) float tensor
        Unit-row embeddings at the network's output resolution, channels last.
    labels : (B, h, w) int64 tensor
        Weak labels brought down to ``(h, w)`` (nearest), 255 = unlabelled.
    superpixels : (B, h, w) int64 tensor
        Superpixel ids brought down the same way.
    tags : (B, C) bool tensor
        Image tags (from the full weak label, as the dataset gives them).
    segments : clustering.Segments
        k-means segments of the embeddings, split by superpixel and weak label.
    class_names : list of str
    names : list of str
        Image names in the embedded list.
    """

    images: np.ndarray
    truth: np.ndarray
    embeddings: torch.Tensor
    labels: torch.Tensor
    superpixels: torch.Tensor
    tags: torch.Tensor
    segments: clustering.Segments
    class_names: list
    names: list

    @property
    def num_classes(self):
        """Number of classes C, background included."""
        return len(self.class_names)

    @property
    def scale(self):
        """Image pixels per embedding pixel along each axis (4 for the small net)."""
        return self.images.shape[1] // self.embeddings.shape[1]

    def upsample(self, maps):
        """Bring (B, h, w) maps at embedding resolution to the images' (B, H, W), nearest.

        Parameters
        ----------
        maps : (B, h, w) tensor or ndarray
            E.g. ``labels``, ``superpixels`` or a segment-level label painted on pixels.

        Returns
        -------
        (B, H, W) ndarray
            Each embedding pixel as a ``scale x scale`` block, for drawing over `images`.
        """
        maps = maps.cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
        return maps.repeat(self.scale, axis=1).repeat(self.scale, axis=2)


def make_batch(
    kind="objects",
    annotation="scribbles",
    *,
    indices=(0, 1, 2, 3),
    split="train",
    net=None,
    grid=KMEANS_GRID,
    iterations=KMEANS_ITERATIONS,
    seed=0,
):
    """Load images of a dataset (the embedded one by default), embed them, build their segments.

    Parameters
    ----------
    kind : str, optional
        ``"objects"`` / ``"parts"`` (the embedded samples), or any ``TrainConfig.data``
        string: ``"embedded:KIND"`` or a `spml-lab make-data` folder.
    annotation : {"full", "points", "scribbles", "boxes", "tags"}, optional
        Which weak labels (``"tags"``: every pixel unlabelled, tags only).
    indices : sequence of int, optional
        Images of the list to take (whole images, no augmentation).
    split : {"train", "val"}, optional
    net : torch.nn.Module, optional
        Embedding network; default an untrained `embedding_nets.SmallEmbeddingNet` seeded by `seed`.
    grid : (int, int), optional
        k-means initial grid ``(gy, gx)``; default training's (`constants.KMEANS_GRID`), so a
        lesson draws the segments the shipped runs trained on.
    iterations : int, optional
        k-means rounds (default training's, `constants.KMEANS_ITERATIONS`).
    seed : int, optional
        Seed of the default network's initial weights.

    Returns
    -------
    batch : LessonBatch

    Raises
    ------
    ValueError
        If `indices` is empty or out of range.

    Examples
    --------
    >>> batch = make_batch(indices=(0, 1), net=embedding_nets.SmallEmbeddingNet(8, 8))
    >>> batch.images.shape, tuple(batch.embeddings.shape), tuple(batch.labels.shape)
    ((2, 96, 96, 3), (2, 24, 24, 8), (2, 24, 24))
    """
    data = f"embedded:{kind}" if kind in ("objects", "parts") else kind
    dataset = datasets.open_data(data, split, annotation)
    indices = [int(i) for i in indices]
    if not indices or not all(0 <= i < len(dataset) for i in indices):
        raise ValueError(f"indices must be non-empty and lie in [0, {len(dataset)}), got {indices}")
    full = datasets.open_data(data, split, "full")
    items = [dataset[i] for i in indices]
    images = torch.stack([item["image"] for item in items])  # (B, 3, H, W)
    if net is None:
        torch.manual_seed(seed)
        net = embedding_nets.SmallEmbeddingNet()
    embeddings = embedding_nets.embed(net, images)  # (B, h, w, D)
    # the labels and superpixels at the embedding resolution, as a training step sees them
    maps = {key: torch.stack([item[key] for item in items]) for key in ("label", "superpixel")}
    labels, superpixels, valid = label_maps.step_maps(maps, embeddings.shape[1:3])
    tags = torch.stack([item["tags"] for item in items])
    segments = clustering.segment_batch(
        embeddings, superpixels, labels, grid, iterations, tags=tags, valid=valid
    )
    return LessonBatch(
        images=(images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8),
        truth=np.stack([full[i]["label"].numpy() for i in indices]),
        embeddings=embeddings,
        labels=labels,
        superpixels=superpixels,
        tags=tags,
        segments=segments,
        class_names=list(dataset.class_names),
        names=[item["name"] for item in items],
    )


def pixel_index(batch, image, y, x):
    """Flat pixel index ``b * h * w + y * w + x`` of an embedding pixel (what relations take).

    Parameters
    ----------
    batch : LessonBatch
    image, y, x : int
        Image of the batch and row, column at embedding resolution.

    Returns
    -------
    pixel : int

    Examples
    --------
    >>> batch = make_batch(indices=(0, 1), net=embedding_nets.SmallEmbeddingNet(8, 8))
    >>> pixel_index(batch, 1, 2, 3), pixel_position(batch, 627)
    (627, (1, 2, 3))
    """
    _, height, width, _ = batch.embeddings.shape
    return (int(image) * height + int(y)) * width + int(x)


def pixel_position(batch, pixel):
    """Image, row and column (embedding resolution) of a flat pixel index.

    Parameters
    ----------
    batch : LessonBatch
    pixel : int

    Returns
    -------
    image, y, x : int
    """
    _, height, width, _ = batch.embeddings.shape
    image, rest = divmod(int(pixel), height * width)
    return image, rest // width, rest % width


def pick_pixel(batch, relation, *, seed=0, image=0, where=None, tries=8, memory=None):
    """Choose a pixel that shows a relation well: real positives (not only its own segment).

    Parameters
    ----------
    batch : LessonBatch
    relation : str
        One of `relations.RELATIONS`.
    seed : int, optional
        Which of the suitable pixels (same seed, same pixel).
    image : int or None, optional
        Image of the batch to choose from; None: any image.
    where : (B, h, w) bool tensor, optional
        Pixels allowed (e.g. ``(batch.labels > 0) & (batch.labels != IGNORE_INDEX)``: a labelled
        object pixel); the test is made on the chosen pixel of each segment.
    tries : int, optional
        Of the first `tries` suitable pixels (in the seeded order) take the one whose positive
        segments cover most pixels: a picture with something to see.
    memory : memory.MemoryBank or memory.PrototypeMemory, optional
        As in `relations.positives_negatives`.

    Returns
    -------
    pixel : int
        Flat index. It takes part in the relation, has at least one positive segment other
        than its own and at least one negative. It is its segment's pixel nearest the
        segment's centre; segments of at least the median size, away from the image border,
        are tried first, so that the pixel and its segment are easy to see.

    Raises
    ------
    ValueError
        If no pixel of the chosen image(s) qualifies.
    """
    segments = batch.segments
    ids = segments.segment_ids.reshape(-1)
    _, height, width, _ = batch.embeddings.shape
    candidates = torch.arange(segments.num_segments)
    if image is not None:
        candidates = candidates[segments.image_ids == image]
    rng = np.random.default_rng(seed)
    order = candidates[rng.permutation(len(candidates))]
    sizes = segments.sizes[order]
    # large segments first (easy to see), in the seeded order within each half; stop at the
    # first that qualifies, so only a few segments are tried
    large = sizes >= sizes.double().median()
    margin = 3  # embedding pixels: a star drawn at the border would be cut off
    found = []  # (positive area, pixel) of the suitable pixels met so far
    for pass_ in ("interior", "any"):
        for s in torch.cat([order[large], order[~large]]).tolist():
            pixels = torch.nonzero(ids == s)[:, 0]
            # the segment's pixel nearest its centre: inside it, easy to mark
            yx = torch.stack([pixels // width % height, pixels % width], 1)
            centre = (yx.double() - yx.double().mean(0)).pow(2).sum(1).argmin()
            y, x = yx[centre].tolist()
            inside = margin <= y < height - margin and margin <= x < width - margin
            if (pass_ == "interior") != inside:
                continue  # the second pass tries only the segments the first one skipped
            pixel = int(pixels[centre])
            if where is not None and not bool(where.reshape(-1)[pixel]):
                continue
            pos, neg = relations.positives_negatives(
                relation, pixel, batch.embeddings, batch.labels, batch.tags, segments, memory
            )
            if neg.any() and pos.any() and not bool(pos[s]):
                area = int(segments.sizes[pos[: segments.num_segments]].sum())
                found.append((area, -len(found), pixel))
                if len(found) == tries:
                    return max(found)[2]
        if found:
            return max(found)[2]
    raise ValueError(f"no pixel of image {image} shows relation {relation!r} with positives")


def similarity_within_across(embeddings, partition):
    """Mean cosine of pixel pairs in the same region and in different regions of each image.

    Parameters
    ----------
    embeddings : (B, h, w, D) float tensor
        Unit-row embeddings.
    partition : (B, h, w) int tensor
        Region id per pixel (superpixels, classes); negative or 255 = left out.

    Returns
    -------
    within, across : float
        Mean over images of the mean cosine between pixel pairs (distinct pixels) of the same
        region, and of different regions, of that image.

    Notes
    -----
    Uses region sums: the sum of cosines over all pairs of a region is ``|sum of v|^2``, so
    no ``N x N`` matrix is formed.

    Examples
    --------
    >>> emb = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]]])
    >>> similarity_within_across(emb, torch.tensor([[[0, 0], [1, 1]]]))
    (1.0, 0.0)
    """
    num_images, dim = embeddings.shape[0], embeddings.shape[-1]
    rows = embeddings.reshape(num_images, -1, dim).double()  # (B, N, D)
    ids = partition.reshape(num_images, -1).long()  # (B, N)
    keep = (ids >= 0) & (ids != IGNORE_INDEX)
    rows = rows * keep[..., None]
    ids = torch.where(keep, ids, 0)
    num_regions = int(ids.max()) + 1
    sums = rows.new_zeros(num_images, num_regions, dim)
    sums.scatter_add_(1, ids[..., None].expand(-1, -1, dim), rows)  # (B, K, D)
    counts = torch.zeros(num_images, num_regions, dtype=torch.float64)
    counts.scatter_add_(1, ids, keep.double())  # (B, K)
    self_pairs = (rows * rows).sum((1, 2))  # (B,) each kept pixel with itself
    all_pairs = rows.sum(1).pow(2).sum(1) - self_pairs  # (B,)
    same_pairs = sums.pow(2).sum((1, 2)) - self_pairs
    n_same = (counts * (counts - 1)).sum(1)
    n_all = counts.sum(1) * (counts.sum(1) - 1)
    within = same_pairs / n_same.clamp(min=1)
    across = (all_pairs - same_pairs) / (n_all - n_same).clamp(min=1)
    return float(within.mean()), float(across.mean())


def training_location_weight():
    """Return the location weight low-level similarity is trained with (`TrainConfig`'s).

    One source for the lessons: ``low_level_location_weight`` of a default `TrainConfig`
    (1, the paper's VOC model).
    """
    return TrainConfig().low_level_location_weight


def compared_features(batch, relation, *, location_weight=None):
    """Return the pixel features and segment prototypes a relation's loss compares (no memory).

    Parameters
    ----------
    batch : LessonBatch
    relation : str
        One of `relations.RELATIONS`.
    location_weight : float, optional
        Of ``"low_level"``: the weight of the location half of its features; default the
        training's (`training_location_weight`).

    Returns
    -------
    rows : (P, D') float tensor
        One unit row per pixel (detached): the embedding ``v``, or for ``"low_level"`` (with a
        non-zero location weight) ``[v, w * location]`` re-normalised, the k-means features
        (`clustering.with_location`), so ``D' = D + 2``.
    prototypes : (S, D') float tensor
        The batch's segment prototypes on the same features: `Segments.prototypes`, or for
        ``"low_level"`` the normalised mean of each segment's rows, as the loss recomputes
        them.

    Examples
    --------
    >>> from spml_lab.method.clustering import build_segments
    >>> emb = torch.eye(2)[None, None]  # one image, 1 x 2 pixels, orthogonal
    >>> batch = LessonBatch(None, None, emb, None, None, None,
    ...                   build_segments(emb, torch.tensor([[[0, 1]]])), [], [])
    >>> rows, protos = compared_features(batch, "low_level")
    >>> tuple(rows.shape), tuple(protos.shape)  # [v, location]: two more columns
    ((2, 4), (2, 4))
    >>> tuple(compared_features(batch, "cooccurrence")[0].shape)
    (2, 2)
    """
    if relation not in relations.RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; known: {relations.RELATIONS}")
    embeddings, segments = batch.embeddings.detach(), batch.segments
    if location_weight is None:
        location_weight = training_location_weight()
    if relation == "low_level" and location_weight:
        # as `relations.low_level_similarity`: segments of one image are compared on where
        # they are as well as on what they look like
        height, width = embeddings.shape[1:3]
        locations = clustering.location_features(
            height, width, dtype=embeddings.dtype, device=embeddings.device
        )
        features = clustering.with_location(embeddings, locations, weight=location_weight)
        rows = features.reshape(-1, features.shape[-1])  # (P, D + 2)
        ids = segments.segment_ids.reshape(-1)
        return rows, clustering.segment_prototypes(rows, ids, segments.num_segments)
    return embeddings.reshape(-1, embeddings.shape[-1]), segments.prototypes.detach()


def segment_weights(
    batch, pixel, relation, positives, negatives, concentration, memory=None, *,
    location_weight=None,
):  # fmt: skip
    """Share of each segment in one pixel's softmax over its positives and negatives.

    Parameters
    ----------
    batch : LessonBatch
    pixel : int
        Flat pixel index.
    relation : str
        One of `relations.RELATIONS`: which features the loss compares (`compared_features`).
    positives, negatives : (S_total,) bool tensors
        From `relations.positives_negatives` (with the same `memory`).
    concentration : float
        ``kappa``.
    memory : memory.MemoryBank or memory.PrototypeMemory, optional
        The memory the positives and negatives were found with; without it, entries past the
        batch's S segments are ignored.
    location_weight : float, optional
        Of ``"low_level"``; default the training's (`training_location_weight`).

    Returns
    -------
    weights : (S_total,) or (S,) float64 tensor
        ``exp(kappa f . g_s) / sum_t exp(kappa f . g_t)`` over the segments t that take part
        (positive or negative), 0 for the others; the memory's segments follow the batch's.
        ``f`` and ``g`` are the features the relation's loss compares: the embedding and the
        segment prototypes, or for low-level similarity ``[v, location]`` and prototypes of
        it. So the positives' total is ``pos(i) / (pos(i) + neg(i))`` of the loss: the pixel's
        loss is ``-log`` of it.

    Examples
    --------
    Two pixels that look the same, at the two ends of a row, each its own segment: on the
    embedding the pixel is as close to the other segment as to its own; on ``[v, location]``
    its own place makes its own segment the closer one.

    >>> from spml_lab.method.clustering import build_segments
    >>> emb = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])  # one image, 1 x 2 pixels
    >>> batch = LessonBatch(None, None, emb, None, None, None,
    ...                   build_segments(emb, torch.tensor([[[0, 1]]])), [], [])
    >>> pos, neg = torch.tensor([True, False]), torch.tensor([False, True])
    >>> w = segment_weights(batch, 0, "semantic_annotation", pos, neg, 2.0)
    >>> [round(v, 4) for v in w.tolist()]  # e^2 / (e^2 + e^2)
    [0.5, 0.5]
    >>> w = segment_weights(batch, 0, "low_level", pos, neg, 2.0)  # cosine 1 against 2 / 3
    >>> [round(v, 4) for v in w.tolist()]
    [0.6608, 0.3392]
    """
    rows, prototypes = compared_features(batch, relation, location_weight=location_weight)
    count = prototypes.shape[0]  # the batch's S
    bank = memory.bank() if hasattr(memory, "bank") else memory
    extra = 0 if bank is None else bank.prototypes.shape[0]
    if extra and relation != "low_level":  # low-level: the memory takes no part (weight 0)
        prototypes = torch.cat([prototypes, bank.prototypes.to(prototypes)])
    weights = torch.zeros(count + extra, dtype=torch.float64)
    part = (positives[: len(prototypes)] | negatives[: len(prototypes)]).cpu()
    if not part.any():
        return weights
    logits = concentration * (prototypes @ rows[pixel]).double().cpu()  # (S_total,)
    weights[: len(part)] = torch.softmax(logits.masked_fill(~part, float("-inf")), 0)
    return weights


def nearest_labels(batch, prototypes, labels, *, ignore_index=IGNORE_INDEX):
    """Label every pixel with the label of its segment's most similar labelled prototype.

    A top-1 version of the paper's kNN retrieval: the embedding alone decides how far the
    labels of the reference segments spread.

    Parameters
    ----------
    batch : LessonBatch
        The images to label (their segments' prototypes are compared).
    prototypes : (R, D) float tensor
        Reference prototypes, e.g. the segments of training images.
    labels : (R,) int tensor
        Their labels; `ignore_index` ones are left out.
    ignore_index : int, optional

    Returns
    -------
    predicted : (B, h, w) int64 tensor
        `ignore_index` for pixels left out of every segment, or when no reference is labelled.

    Examples
    --------
    >>> from spml_lab.method.clustering import build_segments
    >>> emb = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])  # one image, 1 x 2 pixels
    >>> batch = LessonBatch(None, None, emb, None, None, None,
    ...                   build_segments(emb, torch.tensor([[[0, 1]]])), [], [])
    >>> refs = torch.tensor([[0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    >>> nearest_labels(batch, refs, torch.tensor([3, 5, 255]))
    tensor([[[3, 5]]])
    """
    keep = labels != ignore_index
    ids = batch.segments.segment_ids
    if not keep.any():
        return torch.full_like(ids, ignore_index)
    reference, reference_labels = prototypes[keep], labels[keep].long()
    similarity = batch.segments.prototypes @ reference.T.to(batch.segments.prototypes)  # (S, R)
    segment_labels = reference_labels[similarity.argmax(1)]  # (S,)
    return torch.where(ids >= 0, segment_labels[ids.clamp(min=0)], ignore_index)
