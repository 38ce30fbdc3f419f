"""kNN retrieval, SPML's stage-1 predictor: label test segments by their nearest prototypes.

Training images are segmented by spherical k-means and their labelled segments' prototypes
form a bank. A test image is segmented the same way and each segment takes the majority label
of its k nearest bank prototypes (cosine similarity). Works on a batch of images at once,
embeddings channels last ``(B, h, w, D)`` as everywhere after the network, votes channels first
``(B, C, h, w)`` as every class map.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from spml_lab.constants import IGNORE_INDEX, KMEANS_GRID, KMEANS_ITERATIONS
from spml_lab.method import clustering
from spml_lab.prediction import probabilities

__all__ = [
    "GRID",
    "GRID_FACTOR",
    "NEIGHBOURS",
    "PrototypeBank",
    "build_prototype_bank",
    "knn_predict",
    "retrieval_grid",
]

# the paper's vote: each test segment takes the majority label of its 20 nearest prototypes
NEIGHBOURS = 20
# retrieval cuts images twice as finely as training did (the paper: 6 x 6 in training, 12 x 12
# for the bank and the test images), so a segment is small enough to hold one class
GRID_FACTOR = 2


def retrieval_grid(training_grid=KMEANS_GRID):
    """Return the k-means grid retrieval uses for a run trained with `training_grid`.

    Examples
    --------
    >>> retrieval_grid((6, 6))  # the paper's VOC grids
    (12, 12)
    """
    return tuple(GRID_FACTOR * cells for cells in training_grid)


GRID = retrieval_grid()  # for runs on training's default grid (`constants.KMEANS_GRID`)


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
        "grid": (4, 4), "iterations": 10}``: test images should be segmented alike, so
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


def _features(embeddings):
    probabilities.check_maps("embeddings", embeddings)
    return embeddings.detach()


def build_prototype_bank(
    embeddings,
    labels,
    *,
    grid=GRID,
    iterations=KMEANS_ITERATIONS,
    superpixels=None,
    ignore_index=IGNORE_INDEX,
):
    """Prototypes and labels of the labelled segments of a batch of training images.

    Parameters
    ----------
    embeddings : (B, h, w, D) float tensor
        Unit-length pixel embeddings.
    labels : (B, h, w) int tensor
        Weak labels at embedding resolution, `ignore_index` = unlabelled.
    grid : (int, int), optional
        k-means grid ``(gy, gx)``; default `GRID`, twice training's default (the paper's VOC
        scripts: 12 x 12, `retrieval_grid` of its 6 x 6).
    iterations : int, optional
        k-means rounds (training's, `constants.KMEANS_ITERATIONS`).
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
    The segments come from `spml_lab.method.clustering.segment_batch`. The paper's prototype script
    instead keeps whole clusters and labels each by its majority label.

    Examples
    --------
    >>> emb = torch.zeros(1, 2, 4, 2)  # (B, h, w, D)
    >>> emb[:, :, :2, 0] = 1.0  # left half points along x
    >>> emb[:, :, 2:, 1] = 1.0  # right half along y
    >>> labels = torch.tensor([[[1, 255, 255, 2], [1, 255, 255, 255]]])
    >>> bank = build_prototype_bank(emb, labels, grid=(1, 2))
    >>> bank.labels, bank.prototypes
    (tensor([1, 2]), tensor([[1., 0.],
            [0., 1.]]))
    """
    features = _features(embeddings)
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
    k=NEIGHBOURS,
    grid=GRID,
    iterations=KMEANS_ITERATIONS,
    superpixels=None,
    chunk_size=4096,
):
    """Label test images by kNN retrieval of their segments in a prototype bank.

    Parameters
    ----------
    embeddings : (B, h, w, D) float tensor
        Unit-length pixel embeddings of the test images.
    bank : PrototypeBank
        Labelled training prototypes (`build_prototype_bank`), labels in ``[0, num_classes)``.
    num_classes : int
        C.
    k : int, optional
        Neighbours per segment (`NEIGHBOURS`, the paper's 20); at most ``len(bank)`` are used.
    grid, iterations : optional
        k-means settings of `spml_lab.method.clustering.segment_batch`, as `build_prototype_bank`
        (segment test images as the bank's were).
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
        that can feed `spml_lab.prediction.crf.dense_crf`.

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
    >>> emb = torch.zeros(1, 1, 4, 2)  # (B, h, w, D)
    >>> emb[:, :, :2, 0] = 1.0  # left half along x, right half along y
    >>> emb[:, :, 2:, 1] = 1.0
    >>> bank = PrototypeBank(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]),
    ...                      torch.tensor([1, 1, 2]))
    >>> labels, votes = knn_predict(emb, bank, num_classes=3, k=2, grid=(1, 2))
    >>> labels
    tensor([[[1, 1, 2, 2]]])
    """
    features = _features(embeddings)
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
