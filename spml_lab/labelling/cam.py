"""CAM pseudo labels: dense semantic-annotation labels for image tags and boxes.

Tags and boxes say *which* classes an image holds (and, for boxes, roughly where), but the
semantic-annotation relation needs labelled pixels. SPML takes them from class activation maps
(CAMs) [1]_: a classifier trained on the tags alone (`tag_training.train_tag_classifier`) ends
in a 1x1 convolution before global average pooling, so the same convolution applied to the
feature map (before pooling) shows *where* each class's evidence lies [2]_
(`tag_classifier.TagClassifier.cams`: each class's map in [0, 1]).

Pseudo labels, following the SEAM CAMs the paper's VOC label files come from [3]_ (the paper's
README: "seam_a6_th0.2" for tags and "seambox_a6_th0.5" for boxes)::

    background score  = (1 - max over the tagged foreground classes of CAM) ** alpha   (alpha 6)
    label             = argmax over {background, tagged classes} of the scores
    unlabelled (255)  where the winning score is <= threshold

* Tags (threshold 0.2): the CAMs as above.
* Boxes (threshold 0.5): inside a box only its class competes with background, and its CAM is
  min-max normalised over the box's region first (so a weak object still reaches 1); pixels
  outside every box are background.

Notes
-----
The paper's label files were made with SEAM's dense-CRF refinement, whose output probabilities
are what its threshold cuts. Without the CRF the winning score ``max(m, (1 - m) ** 6)`` never
drops below about 0.222 (where both are equal), so ``threshold=0.2, alpha=6`` leaves every pixel
of a tagged image labelled; ``alpha=None`` gives the plain rule of DESIGN.md instead (no
background score: a tagged class where its CAM exceeds the threshold, unlabelled elsewhere).
For boxes the threshold still bites at ``alpha=6``: inside a box the class wins where its
normalised CAM > 0.5, background where it is < ``1 - 0.5 ** (1 / 6)`` = 0.109, and pixels in
between are unlabelled.

References
----------
.. [1] Ke, Hwang, Yu. "Universal Weakly Supervised Segmentation by Pixel-to-Segment Contrastive
   Learning", ICLR 2021; code: github.com/twke18/SPML (README, "Data Preparation", step 5).
.. [2] Zhou et al. "Learning Deep Features for Discriminative Localization", CVPR 2016.
.. [3] Wang et al. "Self-supervised Equivariant Attention Mechanism for Weakly Supervised
   Semantic Segmentation", CVPR 2020; code: github.com/YudeWang/SEAM.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from spml_lab.constants import IGNORE_INDEX

__all__ = ["cam_scores", "cam_pseudo_labels", "box_regions", "box_pseudo_labels"]


def _check(cams, labels_shape, tags=None):
    if cams.ndim != 4:
        raise ValueError(f"cams must be (B, C, h, w), got shape {tuple(cams.shape)}")
    if cams.shape[0] != labels_shape[0]:
        raise ValueError(f"cams hold {cams.shape[0]} images but the labels {labels_shape[0]}")
    if tags is not None and tuple(tags.shape) != tuple(cams.shape[:2]):
        raise ValueError(f"tags must be (B, C) = {tuple(cams.shape[:2])}, got {tuple(tags.shape)}")


def _label(scores, threshold):
    """Argmax of (B, K, H, W) scores; 255 where the winner is not above the threshold."""
    best, label = scores.max(dim=1)  # ties: the lowest class, so background before objects
    return torch.where(best > threshold, label, IGNORE_INDEX).to(torch.uint8)


def cam_scores(cams, tags, *, alpha=6.0):
    """SEAM's score stack: background from the CAMs of the tagged classes, untagged classes out.

    Parameters
    ----------
    cams : (B, C, H, W) float tensor in [0, 1]
        Channel 0 is ignored (the background score replaces it).
    tags : (B, C) bool tensor
        The image's classes, background at index 0.
    alpha : float or None, optional
        Background score ``(1 - max_k cams_k) ** alpha`` over tagged classes k >= 1; None: no
        background score. Larger alpha shrinks the background (SPML's VOC files: 6).

    Returns
    -------
    scores : (B, C, H, W) float tensor
        Tagged classes: their CAM; background (if tagged and `alpha` is given): its score;
        everything else -1, below any threshold, so it never wins.

    Examples
    --------
    >>> cams = torch.tensor([0.0, 0.5, 0.9]).view(1, 3, 1, 1)
    >>> cam_scores(cams, torch.tensor([[True, True, False]]), alpha=1).flatten().tolist()
    [0.5, 0.5, -1.0]
    """
    tags = tags.to(device=cams.device, dtype=torch.bool)[:, :, None, None]  # (B, C, 1, 1)
    fg = cams.clone()
    fg[:, 0] = 0.0
    fg = torch.where(tags, fg, 0.0)
    scores = torch.where(tags, fg, -1.0)
    if alpha is None:
        scores[:, 0] = -1.0
    else:
        background = (1.0 - fg[:, 1:].amax(dim=1)).clamp(min=0) ** alpha  # (B, H, W)
        scores[:, 0] = torch.where(tags[:, 0], background, -1.0)
    return scores


def cam_pseudo_labels(cams, tags, *, threshold=0.2, alpha=6.0, size=None):
    """Pseudo labels from CAMs and image tags (SPML's "seam_a6_th0.2" rule, without CRF).

    Parameters
    ----------
    cams : (B, C, h, w) float tensor in [0, 1]
        Normalised CAMs (`TagClassifier.cams`); channel 0 is ignored.
    tags : (B, C) bool tensor
        The image's classes; classes not tagged never appear in the labels.
    threshold : float, optional
        A pixel is labelled when its winning score is strictly above this.
    alpha : float or None, optional
        Background exponent (see `cam_scores`); None: background pixels are never labelled.
    size : (int, int), optional
        Resize the CAMs bilinearly to (H, W) first.

    Returns
    -------
    labels : (B, H, W) uint8 tensor
        The class with the highest score, 255 = unlabelled.

    Raises
    ------
    ValueError
        If shapes do not fit together.

    Notes
    -----
    See the module notes: at ``alpha=6`` the threshold 0.2 leaves nothing unlabelled unless
    the scores are probabilities from a CRF; ``alpha=None`` is DESIGN.md's "CAM > 0.2, else
    unlabelled".

    Examples
    --------
    >>> cams = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.9, 0.2], [0.8, 0.1, 0.2]]).view(1, 3, 1, 3)
    >>> tags = torch.tensor([[True, True, False]])
    >>> cam_pseudo_labels(cams, tags, alpha=None).tolist()
    [[[255, 1, 255]]]
    >>> cam_pseudo_labels(cams, tags).tolist()  # background (1 - 0.1) ** 6 = 0.53 wins left
    [[[0, 1, 0]]]
    """
    _check(cams, cams.shape, tags)
    if size is not None:
        cams = F.interpolate(cams, size=tuple(size), mode="bilinear", align_corners=False)
    return _label(cam_scores(cams, tags, alpha=alpha), threshold)


def box_regions(boxes, ignore_index=IGNORE_INDEX):
    """Find the connected regions of each class in a filled-box label map and number them.

    Parameters
    ----------
    boxes : (B, H, W) int tensor
        Box class per pixel (`annotations.weak_labels` ``"boxes"``), 0 = outside every box.
    ignore_index : int, optional
        Pixels with this value belong to no region.

    Returns
    -------
    regions : (B, H, W) int64 tensor
        0 outside boxes, else a region id in ``1..R``, unique across the batch.
    count : int
        R.

    Notes
    -----
    Regions are 4-connected pieces of equal box class (scipy's ``ndimage.label`` on all images
    at once, never linking two images). Overlapping boxes of one class form one region; a box
    partly covered by a smaller box of another class keeps its visible part.

    Examples
    --------
    >>> boxes = torch.tensor([[[1, 1, 0, 1], [0, 0, 0, 1], [2, 2, 0, 0]]])
    >>> regions, count = box_regions(boxes)
    >>> regions.tolist(), count
    ([[[1, 1, 0, 2], [0, 0, 0, 2], [3, 3, 0, 0]]], 3)
    """
    if boxes.ndim != 3:
        raise ValueError(f"boxes must be (B, H, W), got shape {tuple(boxes.shape)}")
    array = boxes.cpu().numpy()
    structure = np.zeros((3, 3, 3), dtype=bool)  # the middle plane only: images stay apart
    structure[1] = ndimage.generate_binary_structure(2, 1)
    regions = np.zeros(array.shape, dtype=np.int64)
    count = 0
    for cls in np.unique(array):  # a loop over classes, each labels the whole batch
        if cls == 0 or cls == ignore_index:
            continue
        pieces, num = ndimage.label(array == cls, structure=structure)
        inside = pieces > 0
        regions[inside] = pieces[inside] + count
        count += num
    return torch.from_numpy(regions).to(boxes.device), count


def box_pseudo_labels(cams, boxes, *, threshold=0.5, alpha=6.0):
    """Pseudo labels from CAMs and boxes (SPML's "seambox_a6_th0.5" rule, without CRF).

    Parameters
    ----------
    cams : (B, C, h, w) float tensor
        CAMs (any non-negative scale: each box renormalises); resized bilinearly to (H, W).
    boxes : (B, H, W) int tensor
        Filled-box label map: box class inside boxes (the smaller box where they overlap, as
        `annotations.weak_labels` draws them), 0 outside every box, 255 = unknown.
    threshold : float, optional
        A pixel in a box is labelled when its winning score is strictly above this.
    alpha : float or None, optional
        Background score inside a box ``(1 - n) ** alpha``, n the normalised CAM; None: the
        box's class where n > threshold, unlabelled elsewhere in the box.

    Returns
    -------
    labels : (B, H, W) uint8 tensor
        0 outside boxes; inside, the box's class, background (0) or 255 = unlabelled.

    Raises
    ------
    ValueError
        If shapes do not fit or `boxes` names a class without a CAM channel.

    Notes
    -----
    Each region of `box_regions` gets its own min-max normalisation of its class's CAM,
    ``n = (cam - min) / (max - min)`` over the region's pixels, so every box has a pixel at 1
    (the paper: "normalize CAM to the range of 0 and 1 within each box"). A region whose CAM
    is flat (max - min <= 1e-6: no evidence where the box is) stays unlabelled.

    Examples
    --------
    >>> cams = torch.zeros(1, 2, 1, 4)
    >>> cams[0, 1, 0] = torch.tensor([0.9, 0.3, 0.5, 0.1])
    >>> boxes = torch.tensor([[[1, 1, 1, 0]]])
    >>> box_pseudo_labels(cams, boxes, alpha=None).tolist()  # n = 1, 0, 1/3 in the box
    [[[1, 255, 255, 0]]]
    >>> box_pseudo_labels(cams, boxes).tolist()  # (1 - 0) ** 6 = 1: background in the box
    [[[1, 0, 255, 0]]]
    """
    _check(cams, boxes.shape)
    num_classes = cams.shape[1]
    boxes = boxes.to(cams.device).long()
    bad = (boxes >= num_classes) & (boxes != IGNORE_INDEX)
    if bad.any():
        raise ValueError(
            f"boxes hold classes {boxes[bad].unique().tolist()[:10]} but cams have only "
            f"{num_classes} channels"
        )
    size = tuple(boxes.shape[-2:])
    if tuple(cams.shape[-2:]) != size:
        cams = F.interpolate(cams, size=size, mode="bilinear", align_corners=False)
    regions, count = box_regions(boxes)
    inside = regions > 0
    # the CAM of each pixel's box class (class 0 outside boxes: a placeholder, masked later)
    cam = cams.gather(1, torch.where(inside, boxes, 0)[:, None]).squeeze(1).float()  # (B, H, W)
    ids, values = regions.flatten(), cam.flatten()
    low = values.new_full((count + 1,), float("inf")).scatter_reduce(0, ids, values, "amin")
    high = values.new_full((count + 1,), -float("inf")).scatter_reduce(0, ids, values, "amax")
    span = (high - low)[regions]  # (B, H, W)
    norm = (cam - low[regions]) / span.clamp(min=1e-6)
    obj = torch.where(span > 1e-6, norm, -1.0)  # a flat region never passes the threshold
    if alpha is None:
        background = torch.full_like(obj, -1.0)
    else:
        background = torch.where(span > 1e-6, (1.0 - norm).clamp(min=0) ** alpha, -1.0)
    picked = _label(torch.stack([background, obj], dim=1), threshold).long()  # 0, 1 or 255
    labels = torch.where(picked == 1, boxes, picked)
    labels = torch.where(inside, labels, torch.where(boxes == IGNORE_INDEX, IGNORE_INDEX, 0))
    return labels.to(torch.uint8)
