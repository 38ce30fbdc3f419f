"""Inference for SPML: kNN prototype retrieval, tag-restricted softmax, random walk, flips.

SPML predicts in two ways, both built on the learned pixel embeddings:

* **kNN retrieval** (stage 1). Training images are segmented by spherical k-means and their
  labelled segments' prototypes form a bank. A test image is segmented the same way and each
  segment takes the majority label of its k nearest bank prototypes (cosine similarity).
* **Softmax + random walk** (pseudo labels for stage 2). A softmax head's probabilities,
  restricted to the classes tagged in the image, are propagated over the embedding affinity
  by a random walk, which spreads confident pixels' labels over their whole object; a dense
  CRF (`spml_lab.crf`) then snaps them to image edges.

Everything works on a batch of images at once, channels first: embeddings ``(B, D, h, w)``,
probabilities ``(B, C, h, w)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from spml_lab import clustering

__all__ = [
    "restrict_to_tags",
    "random_walk",
    "PrototypeBank",
    "build_prototype_bank",
    "knn_predict",
    "flip_average",
    "upsample_probs",
]


def _check_maps(name, tensor, ndim=4):
    """Raise a ValueError unless `tensor` is a torch tensor with `ndim` dimensions."""
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != ndim:
        shape = tuple(getattr(tensor, "shape", ()))
        raise ValueError(f"{name} must be a {ndim}-d torch tensor, got {shape}")


def restrict_to_tags(logits, tags, *, background=0, scale_to_max=False):
    """Softmax over only the classes an image is tagged with (background always allowed).

    Parameters
    ----------
    logits : (B, C, H, W) float tensor
        Class scores of a softmax head.
    tags : (B, C) bool tensor
        True for the classes present in each image (image-level tags).
    background : int or None, optional
        Class allowed in every image whatever its tags; None allows only the tags.
    scale_to_max : bool, optional
        Then divide each class map by its maximum over the image, as the paper's pseudo-label
        script does before the random walk: it lifts tagged classes the head is unsure about
        to the same peak as confident ones. The maps then no longer sum to 1 per pixel.

    Returns
    -------
    probs : (B, C, H, W) float tensor
        Softmax over the allowed classes; exactly 0 for the others, so each pixel's
        probabilities sum to 1 (unless `scale_to_max`).

    Raises
    ------
    ValueError
        If the shapes do not match.

    Examples
    --------
    >>> logits = torch.zeros(1, 3, 1, 1)
    >>> restrict_to_tags(logits, torch.tensor([[False, False, True]]))[0, :, 0, 0]
    tensor([0.5000, 0.0000, 0.5000])
    """
    _check_maps("logits", logits)
    if tags.shape != logits.shape[:2]:
        raise ValueError(
            f"tags must have shape (B, C) = {tuple(logits.shape[:2])}, got {tuple(tags.shape)}"
        )
    allowed = tags.bool().clone()
    if background is not None:
        allowed[:, background] = True
    # -inf logits give exact zeros after the softmax, and the softmax renormalises the rest
    masked = logits.float().masked_fill(~allowed[:, :, None, None], float("-inf"))
    probs = torch.softmax(masked, dim=1).nan_to_num(0.0)  # no allowed class at all: zeros
    if scale_to_max:
        peak = probs.amax(dim=(2, 3), keepdim=True)
        probs = probs / peak.clamp_min(torch.finfo(probs.dtype).tiny)
    return probs


def _affinity_chunk(features, columns, sharpness, threshold):
    """Affinity of every pixel to the pixels `columns`: (B, N, len(columns))."""
    cosine = torch.bmm(features.transpose(1, 2), features[:, :, columns])
    # exp(s (cos - 1)) lies in (0, 1]: the exponent is never positive, so no overflow
    affinity = torch.exp(sharpness * (cosine - 1.0))
    if threshold is not None:
        affinity = affinity * (cosine >= threshold)
    return affinity


def random_walk(
    probs, embeddings, *, steps=64, scale=5.0, power=20.0, threshold=None, chunk_size=None
):
    """Propagate class probabilities over the embedding affinity by a random walk.

    Parameters
    ----------
    probs : (B, C, h, w) float tensor
        Per-pixel class scores, e.g. from `restrict_to_tags`.
    embeddings : (B, D, h, w) float tensor
        Pixel embeddings at the same resolution (re-normalised to unit length here).
    steps : int, optional
        Walk steps. The paper squares its transition matrix 6 times: 2**6 = 64 steps.
    scale, power : float, optional
        Affinity ``a_ij = exp(scale * (cos_ij - 1)) ** power``, the paper's 5 and 20; only
        the product matters (``exp(100 (cos - 1))``: cos 0.99 -> 0.37, cos 0.9 -> 5e-5).
    threshold : float, optional
        If given, affinities of pixel pairs with cosine below it are set to exactly 0.
    chunk_size : int, optional
        Columns of the ``N x N`` affinity (N = h * w) held at once per image. Default: as many
        as fit in 2**26 floats (256 MiB) across the batch.

    Returns
    -------
    walked : (B, C, h, w) float32 tensor
        ``walked[:, :, j] = sum_i probs[:, :, i] T^steps[i, j]`` with the column-stochastic
        ``T[i, j] = a_ij / sum_k a_kj``: each step replaces a pixel's scores by the
        affinity-weighted mean of all pixels' scores, so distributions stay distributions.

    Raises
    ------
    ValueError
        If the shapes do not match or a parameter is out of range.

    Notes
    -----
    Rather than forming ``T^64`` by repeated squaring (6 products of N x N matrices, N^3
    each), the walk applies T to the C-channel scores 64 times (C N^2 each: far fewer
    operations for C << N), so T never has to be held whole. If one chunk covers all N
    columns the affinity is computed once and kept (B N^2 floats); otherwise each step
    recomputes it chunk by chunk (a product and an ``exp`` over N^2 per step; memory
    B N chunk_size). Sizes: at 1/8 of a 512 crop (64 x 64, the paper's choice) N^2 = 16.7M
    floats = 64 MiB per image, kept whole for up to 4 images by default (about 10 s per
    image for 64 steps on 2 CPU cores); at 1/4 (128 x 128) N^2 = 268M = 1 GiB per image, so
    it is recomputed in chunks, ~16x the work per step and ~10x slower again for the
    recomputation: walk at 1/8 resolution and upsample the result (`upsample_probs`).
    Runs without autograd.

    Examples
    --------
    >>> emb = torch.tensor([[[[1.0, 1.0, 0.0]], [[0.0, 0.0, 1.0]]]])  # pixels 0, 1 alike
    >>> probs = torch.tensor([[[[0.8, 0.2, 0.1]], [[0.2, 0.8, 0.9]]]])
    >>> random_walk(probs, emb, steps=1, threshold=0.5)[0, :, 0]
    tensor([[0.5000, 0.5000, 0.1000],
            [0.5000, 0.5000, 0.9000]])
    """
    _check_maps("probs", probs)
    _check_maps("embeddings", embeddings)
    if embeddings.shape[0] != probs.shape[0] or embeddings.shape[2:] != probs.shape[2:]:
        raise ValueError(
            f"embeddings {tuple(embeddings.shape)} and probs {tuple(probs.shape)} need the "
            "same batch size and spatial size"
        )
    if steps < 0 or (chunk_size is not None and chunk_size < 1):
        raise ValueError(f"steps must be >= 0 and chunk_size >= 1, got {steps}, {chunk_size}")
    num_images, num_classes, height, width = probs.shape
    num_pixels = height * width
    if chunk_size is None:
        chunk_size = max(1, 2**26 // max(num_images * num_pixels, 1))
    with torch.no_grad():
        features = F.normalize(
            embeddings.detach().float().reshape(num_images, -1, num_pixels), dim=1
        )
        walked = probs.detach().float().reshape(num_images, num_classes, num_pixels)
        chunks = [slice(start, start + chunk_size) for start in range(0, num_pixels, chunk_size)]
        sharpness = float(scale) * float(power)

        def transitions():
            for columns in chunks:
                affinity = _affinity_chunk(features, columns, sharpness, threshold)
                # column sums over all N rows: the chunk holds whole columns
                total = affinity.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
                yield columns, affinity / total  # (B, N, chunk)

        kept = list(transitions()) if len(chunks) == 1 else None
        for _ in range(steps):
            step = torch.empty_like(walked)
            for columns, transition in kept or transitions():
                step[:, :, columns] = torch.bmm(walked, transition)
            walked = step
    return walked.view(num_images, num_classes, height, width)


@dataclass
class PrototypeBank:
    """Labelled segment prototypes of training images, for kNN retrieval.

    Attributes
    ----------
    prototypes : (N, D) float tensor
        Unit-length segment prototypes.
    labels : (N,) int64 tensor
        Class of each prototype.
    settings : dict
        The k-means settings the bank was built with (and the vote's ``k``), e.g. ``{"k": 20,
        "grid": (12, 12), "iterations": 10}``: test images should be segmented alike, so
        callers pass them on to `knn_predict` unless told otherwise.
    """

    prototypes: torch.Tensor
    labels: torch.Tensor
    settings: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.prototypes.ndim != 2 or self.labels.shape != self.prototypes.shape[:1]:
            raise ValueError(
                f"need prototypes (N, D) and labels (N,), got {tuple(self.prototypes.shape)} "
                f"and {tuple(self.labels.shape)}"
            )

    def __len__(self):
        return self.prototypes.shape[0]

    @classmethod
    def concat(cls, banks):
        """Join banks (e.g. one per training batch) into one.

        Parameters
        ----------
        banks : sequence of PrototypeBank
            With the same embedding dimension D.

        Returns
        -------
        bank : PrototypeBank

        Examples
        --------
        >>> a = PrototypeBank(torch.tensor([[1.0, 0.0]]), torch.tensor([3]))
        >>> len(PrototypeBank.concat([a, a]))
        2
        """
        banks = list(banks)
        if not banks:
            raise ValueError("banks must hold at least one PrototypeBank")
        return cls(
            torch.cat([bank.prototypes for bank in banks]),
            torch.cat([bank.labels for bank in banks]),
            dict(banks[0].settings),
        )


def _channels_last(embeddings):
    _check_maps("embeddings", embeddings)
    return embeddings.detach().permute(0, 2, 3, 1)


def build_prototype_bank(
    embeddings, labels, *, grid=(12, 12), iterations=10, superpixels=None, ignore_index=255
):
    """Prototypes and labels of the labelled segments of a batch of training images.

    Parameters
    ----------
    embeddings : (B, D, h, w) float tensor
        Unit-length pixel embeddings.
    labels : (B, h, w) int tensor
        Weak labels at embedding resolution, `ignore_index` = unlabelled.
    grid : (int, int), optional
        k-means grid ``(gy, gx)``; the paper's VOC scripts use 12 x 12.
    iterations : int, optional
        k-means rounds.
    superpixels : (B, h, w) int tensor, optional
        Also split the clusters by superpixel.
    ignore_index : int, optional
        Label value of unlabelled pixels.

    Returns
    -------
    bank : PrototypeBank
        One prototype per labelled segment (segments are pure in label, so a k-means cluster
        holding two classes gives two prototypes; unlabelled segments are dropped).

    Notes
    -----
    The segments come from `spml_lab.clustering.segment_batch`. The paper's prototype script
    instead keeps whole clusters and labels each by its majority label.

    Examples
    --------
    >>> emb = torch.zeros(1, 2, 2, 4)
    >>> emb[:, 0, :, :2] = 1.0  # left half points along x
    >>> emb[:, 1, :, 2:] = 1.0  # right half along y
    >>> labels = torch.tensor([[[1, 255, 255, 2], [1, 255, 255, 255]]])
    >>> bank = build_prototype_bank(emb, labels, grid=(1, 2))
    >>> bank.labels, bank.prototypes
    (tensor([1, 2]), tensor([[1., 0.],
            [0., 1.]]))
    """
    features = _channels_last(embeddings)
    if labels.shape != features.shape[:3]:
        raise ValueError(
            f"labels must have shape (B, h, w) = {tuple(features.shape[:3])}, "
            f"got {tuple(labels.shape)}"
        )
    segments = clustering.segment_batch(
        features, superpixels, labels, grid=grid, iterations=iterations, ignore_index=ignore_index
    )
    labelled = segments.labels != ignore_index
    return PrototypeBank(segments.prototypes[labelled], segments.labels[labelled])


def knn_predict(
    embeddings,
    bank,
    *,
    num_classes,
    k=20,
    grid=(12, 12),
    iterations=10,
    superpixels=None,
    chunk_size=4096,
):
    """Label test images by kNN retrieval of their segments in a prototype bank.

    Parameters
    ----------
    embeddings : (B, D, h, w) float tensor
        Unit-length pixel embeddings of the test images.
    bank : PrototypeBank
        Labelled training prototypes (`build_prototype_bank`), labels in ``[0, num_classes)``.
    num_classes : int
        C.
    k : int, optional
        Neighbours per segment (the paper's 20); at most ``len(bank)`` are used.
    grid, iterations : optional
        k-means settings of `spml_lab.clustering.segment_batch` (the paper's 12 x 12, 10).
    superpixels : (B, h, w) int tensor, optional
        Also split the clusters by superpixel.
    chunk_size : int, optional
        Segments scored against the bank at once (memory ``chunk_size x len(bank)``).

    Returns
    -------
    labels : (B, h, w) int64 tensor
        Each pixel gets its segment's label.
    votes : (B, C, h, w) float32 tensor
        Fraction of its segment's k neighbours per class (sums to 1 per pixel): soft scores
        that can feed `spml_lab.crf.dense_crf`.

    Raises
    ------
    ValueError
        On an empty bank, mismatched dimensions, or bank labels outside ``[0, num_classes)``.

    Notes
    -----
    Each segment's prototype is compared with every bank prototype by one matrix product
    (cosine similarity of unit vectors); its top-k neighbours vote one each. A tie in votes
    goes to the class whose voters have the larger summed similarity (the paper's code takes
    the lowest class id): the score ``votes * (2k + 1) + summed similarity`` orders classes
    by votes first, since summed similarities lie in ``[-k, k]``.

    Examples
    --------
    >>> emb = torch.zeros(1, 2, 1, 4)
    >>> emb[:, 0, :, :2] = 1.0  # left half along x, right half along y
    >>> emb[:, 1, :, 2:] = 1.0
    >>> bank = PrototypeBank(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]),
    ...                      torch.tensor([1, 1, 2]))
    >>> labels, votes = knn_predict(emb, bank, num_classes=3, k=2, grid=(1, 2))
    >>> labels
    tensor([[[1, 1, 2, 2]]])
    """
    features = _channels_last(embeddings)
    if len(bank) == 0:
        raise ValueError("bank is empty: build it from images with labelled pixels")
    if bank.prototypes.shape[1] != features.shape[3]:
        raise ValueError(
            f"bank prototypes have dimension {bank.prototypes.shape[1]}, "
            f"embeddings {features.shape[3]}"
        )
    if k < 1 or chunk_size < 1:
        raise ValueError(f"k and chunk_size must be >= 1, got {k}, {chunk_size}")
    bank_labels = bank.labels.to(features.device).long()
    if int(bank_labels.min()) < 0 or int(bank_labels.max()) >= num_classes:
        raise ValueError(f"bank labels must lie in [0, {num_classes}), e.g. no 255 (unlabelled)")
    bank_prototypes = bank.prototypes.to(features.device).float()
    k = min(k, len(bank))

    with torch.no_grad():
        segments = clustering.segment_batch(features, superpixels, grid=grid, iterations=iterations)
        scores = []
        for start in range(0, segments.num_segments, chunk_size):
            queries = segments.prototypes[start : start + chunk_size].float()
            similarity, index = (queries @ bank_prototypes.T).topk(k, dim=1)  # (S', k)
            neighbour_labels = bank_labels[index]
            votes = torch.zeros(len(queries), num_classes, device=features.device)
            votes.scatter_add_(1, neighbour_labels, torch.ones_like(similarity))
            summed = torch.zeros_like(votes).scatter_add_(1, neighbour_labels, similarity)
            scores.append((votes, votes * (2 * k + 1) + summed))
        votes = torch.cat([v for v, _ in scores]) / k  # (S, C)
        segment_labels = torch.cat([s for _, s in scores]).argmax(dim=1)  # (S,)
        ids = segments.segment_ids  # (B, h, w), every pixel in a segment
    return segment_labels[ids], votes[ids].permute(0, 3, 1, 2).contiguous()


def flip_average(fn, images):
    """Test-time flip augmentation: average ``fn`` on the images and their mirror images.

    Parameters
    ----------
    fn : callable
        Maps ``(B, ..., H, W)`` images to ``(B, C, H, W)`` maps aligned with them (e.g.
        probabilities).
    images : (B, 3, H, W) tensor
        Input batch.

    Returns
    -------
    maps : (B, C, H, W) tensor
        ``(fn(x) + flip(fn(flip(x)))) / 2`` with ``flip`` mirroring the width axis; both
        halves go through `fn` as one batch of 2B images.

    Examples
    --------
    >>> images = torch.arange(3.0).view(1, 1, 1, 3)
    >>> flip_average(lambda x: x[..., :1] * torch.ones_like(x), images)  # not equivariant
    tensor([[[[1., 1., 1.]]]])
    """
    _check_maps("images", images)
    num_images = images.shape[0]
    maps = fn(torch.cat([images, images.flip(-1)]))
    if not isinstance(maps, torch.Tensor) or maps.ndim != 4 or maps.shape[0] != 2 * num_images:
        raise ValueError(
            f"fn must return (B, C, H, W) maps, got {tuple(getattr(maps, 'shape', ()))}"
        )
    return (maps[:num_images] + maps[num_images:].flip(-1)) / 2


def upsample_probs(probs, size):
    """Bilinearly resize class probability maps (e.g. to the image size for the CRF).

    Parameters
    ----------
    probs : (B, C, h, w) float tensor
        Per-pixel class probabilities.
    size : (int, int)
        Target ``(H, W)``.

    Returns
    -------
    resized : (B, C, H, W) float tensor
        Each output pixel is a convex combination of input pixels (``align_corners=False``),
        so probabilities that summed to 1 still do.

    Examples
    --------
    >>> upsample_probs(torch.tensor([[[[0.0, 1.0]]]]), (1, 4))
    tensor([[[[0.0000, 0.2500, 0.7500, 1.0000]]]])
    """
    _check_maps("probs", probs)
    height, width = (int(s) for s in size)
    if min(height, width) < 1:
        raise ValueError(f"size must be two positive ints (H, W), got {size}")
    return F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)
