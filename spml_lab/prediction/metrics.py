"""Segmentation scores: confusion matrix and intersection-over-union, and pseudo labels' quality.

Rows of the confusion matrix are ground truth and columns are predictions, as in
``sklearn.metrics.confusion_matrix(target, pred)``. `pseudo_label_quality` scores pseudo labels
(CAM labels, `spml_lab.labelling`) on the pixels they claim, and how many they claim;
`pointing_game` asks whether class activation maps peak on their class.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from spml_lab.constants import IGNORE_INDEX

__all__ = [
    "confusion_matrix",
    "image_miou",
    "mean_iou",
    "background_miou",
    "PseudoLabelQuality",
    "pseudo_label_quality",
    "PointingGame",
    "pointing_game",
]


def confusion_matrix(pred, target, num_classes, ignore_index=IGNORE_INDEX):
    """Count (ground truth, prediction) pairs over all pixels.

    Parameters
    ----------
    pred : (...) int tensor or ndarray
        Predicted class per pixel, any shape.
    target : (...) int tensor or ndarray
        Ground-truth class per pixel, same shape as `pred`.
    num_classes : int
        Number of classes C, background included.
    ignore_index : int, optional
        Target value whose pixels are not counted (unlabelled).

    Returns
    -------
    confusion : (C, C) int64 tensor
        ``confusion[t, p]`` is the number of pixels of true class ``t`` predicted as ``p``.

    Raises
    ------
    ValueError
        If the shapes differ or a counted value lies outside ``[0, num_classes)``.

    Examples
    --------
    >>> confusion_matrix(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 255]), 2)
    tensor([[1, 1],
            [0, 1]])
    """
    pred = torch.as_tensor(np.asarray(pred) if not torch.is_tensor(pred) else pred)
    target = torch.as_tensor(np.asarray(target) if not torch.is_tensor(target) else target)
    if pred.shape != target.shape:
        raise ValueError(f"pred has shape {tuple(pred.shape)} but target {tuple(target.shape)}")
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    for name, values in (("target", target), ("pred", pred)):
        if values.numel() and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{name} has values outside [0, {num_classes}) "
                f"(min {int(values.min())}, max {int(values.max())}) besides ignore_index"
            )
    # one bincount over the flattened (t, p) pair index instead of a loop over classes
    flat = target * num_classes + pred
    counts = torch.bincount(flat, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def mean_iou(confusion):
    """Mean intersection-over-union from a confusion matrix.

    Parameters
    ----------
    confusion : (C, C) int tensor or ndarray
        Rows are ground truth, columns prediction (see `confusion_matrix`).

    Returns
    -------
    miou : float
        Mean IoU over the classes that occur in the ground truth or the prediction.
    iou : (C,) float64 tensor
        Per-class IoU; NaN for a class absent from both ground truth and prediction.

    Examples
    --------
    >>> miou, iou = mean_iou(torch.tensor([[3, 1, 0], [0, 2, 0], [0, 0, 0]]))
    >>> round(miou, 4), iou[2].isnan().item()
    (0.7083, True)
    """
    confusion = torch.as_tensor(np.asarray(confusion)).double()
    intersection = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - intersection
    iou = intersection / union  # 0 / 0 = NaN marks a class that never occurs
    valid = ~iou.isnan()
    miou = float(iou[valid].mean()) if valid.any() else float("nan")
    return miou, iou


def image_miou(pred, target, num_classes, ignore_index=IGNORE_INDEX):
    """Mean IoU of every image on its own, over the classes in its truth or prediction.

    Parameters
    ----------
    pred, target : (B, H, W) int tensors
        Predicted and true class per pixel.
    num_classes : int
    ignore_index : int, optional
        Target value whose pixels are not counted.

    Returns
    -------
    miou : (B,) float64 tensor
        ``mean_iou(confusion_matrix(pred[b], target[b], C))[0]`` for each b (NaN for an
        image with no counted pixel), from one batched count.

    Examples
    --------
    >>> pred = torch.tensor([[[0, 1]], [[1, 1]]])
    >>> image_miou(pred, torch.tensor([[[0, 1]], [[0, 1]]]), 2).tolist()
    [1.0, 0.25]
    """
    if pred.shape != target.shape or pred.ndim < 1:
        raise ValueError(f"pred has shape {tuple(pred.shape)} but target {tuple(target.shape)}")
    batch = pred.shape[0]
    pred, target = pred.reshape(batch, -1).long(), target.reshape(batch, -1).long()
    keep = target != ignore_index
    image = torch.arange(batch, device=pred.device)[:, None].expand_as(target)
    # one bincount over (image, truth, prediction) instead of a loop over images
    flat = (image[keep] * num_classes + target[keep]) * num_classes + pred[keep]
    counts = torch.bincount(flat, minlength=batch * num_classes * num_classes)
    confusion = counts.reshape(batch, num_classes, num_classes).double()
    intersection = confusion.diagonal(dim1=1, dim2=2)
    union = confusion.sum(1) + confusion.sum(2) - intersection
    return (intersection / union).nanmean(dim=1)  # a class absent from both: NaN, left out


def background_miou(target, num_classes, *, background=0, ignore_index=IGNORE_INDEX):
    """Return the mIoU of calling every pixel background: the floor a segmenter must beat.

    Parameters
    ----------
    target : (...) int tensor
        Ground-truth class per pixel.
    num_classes : int
    background : int, optional
        The background class.
    ignore_index : int, optional

    Returns
    -------
    miou : float
        Background's IoU (its share of the counted pixels), divided by the number of
        classes present in `target` (every other present class scores 0).

    Examples
    --------
    >>> background_miou(torch.tensor([0, 0, 0, 1]), 3)  # background IoU 0.75, class 1: 0
    0.375
    """
    target = torch.as_tensor(target)
    pred = torch.full_like(target, background)
    return mean_iou(confusion_matrix(pred, target, num_classes, ignore_index))[0]


class PseudoLabelQuality(NamedTuple):
    """How good pseudo labels are: right where they speak, and how much they speak."""

    miou_on_labelled: float
    labelled_fraction: float


def pseudo_label_quality(pseudo, truth, num_classes, *, ignore_index=IGNORE_INDEX):
    """Score pseudo labels against the ground truth on the pixels they label.

    Parameters
    ----------
    pseudo : (...) int tensor, or sequence of them
        Pseudo labels, `ignore_index` = unlabelled; a sequence holds one map per image (their
        sizes may differ).
    truth : (...) int tensor, or sequence of them
        Ground truth of the same shape(s); its `ignore_index` pixels are not scored.
    num_classes : int
        C, background included.
    ignore_index : int, optional

    Returns
    -------
    quality : PseudoLabelQuality
        ``miou_on_labelled``: mIoU (`mean_iou`) of one confusion matrix over every
        pixel the pseudo labels claim, NaN if they claim none; ``labelled_fraction``: claimed
        pixels / all pixels.

    Raises
    ------
    ValueError
        If the shapes differ.

    Notes
    -----
    The two numbers pull against each other: a higher CAM threshold labels fewer pixels, and
    those it keeps are more often right. SPML trains its semantic-annotation relation on the
    claimed pixels only, so both matter. The ground truth is for the student and the
    benchmark to look at; SPML never sees it.

    Examples
    --------
    >>> pseudo = torch.tensor([[0, 1, 255], [1, 1, 255]])
    >>> truth = torch.tensor([[0, 1, 1], [0, 1, 1]])
    >>> q = pseudo_label_quality(pseudo, truth, 2)  # IoU 1/2 (background), 2/3 (class 1)
    >>> round(q.miou_on_labelled, 4), round(q.labelled_fraction, 4)
    (0.5833, 0.6667)
    """
    if torch.is_tensor(pseudo):
        pseudo, truth = [pseudo], [truth]
    if len(pseudo) != len(truth):
        raise ValueError(f"{len(pseudo)} pseudo-label maps but {len(truth)} ground-truth maps")
    for p, t in zip(pseudo, truth, strict=True):
        if tuple(p.shape) != tuple(t.shape):
            raise ValueError(f"pseudo labels {tuple(p.shape)} and truth {tuple(t.shape)} differ")
    pseudo = torch.cat([torch.as_tensor(p).reshape(-1).long() for p in pseudo])  # (P,)
    truth = torch.cat([torch.as_tensor(t).reshape(-1).long() for t in truth])
    known = pseudo != ignore_index  # score only the pixels the pseudo labels claim
    confusion = confusion_matrix(
        torch.where(known, pseudo, 0),
        torch.where(known, truth, ignore_index),
        num_classes,
        ignore_index=ignore_index,
    )
    fraction = float(known.sum()) / max(known.numel(), 1)
    return PseudoLabelQuality(mean_iou(confusion)[0], fraction)


class PointingGame(NamedTuple):
    """Where class activation maps peak: on their class, against chance."""

    hit_rate: float
    chance: float


def pointing_game(cams, tags, truth, *, background=0):
    """Score whether each tagged class's activation map peaks on a pixel of that class.

    Parameters
    ----------
    cams : (B, C, H, W) float tensor
        One map per class at the ground truth's resolution (e.g.
        `tag_classifier.TagClassifier.cams` with ``size=(H, W)``).
    tags : (B, C) bool tensor
        The classes each image holds; every tagged class but `background` is scored.
    truth : (B, H, W) int tensor
        Ground-truth class per pixel.
    background : int, optional
        The class that has no map of its own.

    Returns
    -------
    score : PointingGame
        ``hit_rate``: the fraction of (image, tagged class) pairs whose map's maximum (its
        first pixel, if tied) lies on that class's true pixels; ``chance``: the mean share of
        the image those classes cover, what a peak at a random pixel would hit. NaN for both
        when no class is tagged.

    Raises
    ------
    ValueError
        If the shapes disagree.

    Notes
    -----
    The pointing game of Zhang et al. [1]_, with no tolerance around the peak: a crude check
    that a classifier trained on tags alone looks at the objects, since it never saw where
    they are.

    References
    ----------
    .. [1] Zhang, Lin, Brandt, Shen, Sclaroff. "Top-down Neural Attention by Excitation
       Backprop", ECCV 2016.

    Examples
    --------
    >>> truth = torch.tensor([[[0, 1], [0, 0]]])  # class 1 covers a quarter of the image
    >>> cams = torch.zeros(1, 2, 2, 2)
    >>> cams[0, 1, 0, 1] = 1.0  # class 1's map peaks on its pixel
    >>> pointing_game(cams, torch.tensor([[True, True]]), truth)
    PointingGame(hit_rate=1.0, chance=0.25)
    """
    cams, tags, truth = torch.as_tensor(cams), torch.as_tensor(tags), torch.as_tensor(truth)
    if cams.ndim != 4 or tuple(tags.shape) != tuple(cams.shape[:2]):
        shapes = f"{tuple(cams.shape)} and {tuple(tags.shape)}"
        raise ValueError(f"cams must be (B, C, H, W) and tags (B, C), got {shapes}")
    if tuple(truth.shape) != (cams.shape[0], *cams.shape[2:]):
        expected = (cams.shape[0], *cams.shape[2:])
        raise ValueError(f"truth must be (B, H, W) = {expected}, got {tuple(truth.shape)}")
    classes = torch.arange(cams.shape[1], device=truth.device)
    peak = cams.flatten(2).argmax(2)  # (B, C) flat pixel of each map's maximum
    hit = truth.flatten(1).gather(1, peak) == classes  # (B, C) the peak lies on the class
    area = (truth.flatten(1)[:, None] == classes[:, None]).double().mean(2)  # (B, C) its share
    scored = tags.bool() & (classes != background)  # (B, C) tagged foreground classes
    return PointingGame(float(hit[scored].double().mean()), float(area[scored].mean()))
