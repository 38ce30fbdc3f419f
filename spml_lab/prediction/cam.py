"""CAM pseudo labels: dense semantic-annotation labels for image tags and boxes.

Tags and boxes say *which* classes an image holds (and, for boxes, roughly where), but the
semantic-annotation relation needs labelled pixels. SPML takes them from class activation maps
(CAMs) [1]_: a classifier trained on the tags alone ends in a 1x1 convolution before global
average pooling, so the same convolution applied to the feature map (before pooling) shows
*where* each class's evidence lies [2]_.

::

    images --trunk--> features (B, F, h, w) --1x1 conv--> raw CAMs (B, C-1, h, w)
                                                 |--mean over (h, w)--> tag logits (B, C-1)
    CAM_k = ReLU(raw CAM_k) / max over the image of ReLU(raw CAM_k)        in [0, 1]

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

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn
from tqdm.auto import tqdm

from spml_lab import checks, constants, devices
from spml_lab.data import labelio, writers
from spml_lab.nets.embedding_nets import imagenet_normalize, small_trunk
from spml_lab.prediction import metrics
from spml_lab.schedules import epoch_order, poly_lr

__all__ = [
    "TagClassifier",
    "train_tag_classifier",
    "cam_scores",
    "cam_pseudo_labels",
    "box_regions",
    "box_pseudo_labels",
    "PseudoLabelQuality",
    "pseudo_label_quality",
    "write_pseudo_labels",
]

IGNORE = constants.IGNORE_INDEX
# The tag classifier's defaults, here and in `spml-lab cam-labels`: the settings the accuracy
# benchmark made its CAM pseudo labels with on the embedded objects (benchmarks/accuracy.py,
# whose tags and boxes results rest on those labels): Adam at 2e-3 on batches of 8 for 300 steps
# (the reduced form; its GPU form trains 1500), a trunk of 32 channels like the embedding net's
CLASSIFIER_STEPS = 300
CLASSIFIER_BATCH_SIZE = 8
CLASSIFIER_LR = 2e-3
CLASSIFIER_WIDTH = 32


class TagClassifier(nn.Module):
    """Multi-label image classifier whose last layer gives class activation maps.

    The trunk is built like `embedding_nets.SmallEmbeddingNet`'s (output stride 4) but shallower by
    default; a 1x1 convolution scores each foreground class at each position, and their mean
    over the image is the tag logit.

    Parameters
    ----------
    num_classes : int
        Classes C, background (class 0) included; the classifier scores the C - 1 others.
    width : int, optional
        Channels of the trunk.
    dilations : sequence of int, optional
        One residual block per entry, at output stride 4. Each block widens the receptive
        field by ``16 * d`` px: context helps to recognise a class, but a field much larger
        than the objects lets every position see the whole image, and the CAMs stop saying
        *where* the class is. The default (about 59 px) localised best on the 128 px embedded
        scenes, against `embedding_nets.SmallEmbeddingNet`'s (1, 2, 4, 8); on 32 px images use
        ``(1,)``.

    Examples
    --------
    >>> net = TagClassifier(4, width=8)
    >>> images = torch.rand(2, 3, 32, 24)
    >>> tuple(net(images).shape), tuple(net.cams(images).shape)
    ((2, 3), (2, 4, 8, 6))
    """

    output_stride = 4

    def __init__(self, num_classes, *, width=CLASSIFIER_WIDTH, dilations=(1, 2)):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + a class), got {num_classes}")
        self.num_classes = int(num_classes)
        self.stem, self.trunk = small_trunk(width, dilations)
        self.classifier = nn.Conv2d(width, self.num_classes - 1, 1)

    def raw_cams(self, images):
        """Class scores at every position, before ReLU and normalisation.

        Parameters
        ----------
        images : (B, 3, H, W) float tensor in [0, 1]

        Returns
        -------
        (B, C - 1, ceil(H/4), ceil(W/4)) float tensor
            Channel ``k - 1`` belongs to class ``k``.
        """
        return self.classifier(self.trunk(self.stem(imagenet_normalize(images))))

    def forward(self, images):
        """Tag logits: the raw CAMs averaged over the image (= classifier on pooled features).

        Parameters
        ----------
        images : (B, 3, H, W) float tensor in [0, 1]

        Returns
        -------
        logits : (B, C - 1) float tensor
            Column ``k - 1`` is class ``k``'s logit (background has none).
        """
        return self.raw_cams(images).mean(dim=(2, 3))

    @torch.no_grad()
    def cams(self, images, size=None):
        """Class activation maps in [0, 1]: ReLU, optional resize, divide by the image's max.

        Parameters
        ----------
        images : (B, 3, H, W) float tensor in [0, 1]
        size : (int, int), optional
            Bilinear resize to (H', W') before normalising (as SEAM upsamples to the image).

        Returns
        -------
        cams : (B, C, h, w) float tensor
            Channel k is class k's map; channel 0 (background) is all zeros. A class with no
            positive evidence in an image has an all-zero map.
        """
        cams = F.relu(self.raw_cams(images))
        if size is not None:
            cams = F.interpolate(cams, size=tuple(size), mode="bilinear", align_corners=False)
        # 1e-5 as SEAM: a map without evidence stays 0 instead of becoming 0 / 0
        cams = cams / (cams.amax(dim=(2, 3), keepdim=True) + 1e-5)
        return torch.cat([torch.zeros_like(cams[:, :1]), cams], dim=1)


def _stack(dataset, indices):
    items = [dataset[int(i)] for i in indices]
    shapes = {tuple(item["image"].shape) for item in items}
    if len(shapes) > 1:
        raise ValueError(
            f"dataset images differ in size ({sorted(shapes)}): give the dataset a crop_size"
        )
    images = torch.stack([item["image"] for item in items])  # (B, 3, H, W)
    return images, torch.stack([item["tags"] for item in items])  # (B, C)


def train_tag_classifier(
    dataset,
    *,
    steps=CLASSIFIER_STEPS,
    batch_size=CLASSIFIER_BATCH_SIZE,
    lr=CLASSIFIER_LR,
    seed=0,
    width=CLASSIFIER_WIDTH,
    dilations=(1, 2),
    device=devices.DEFAULT,
    progress=False,
):
    """Train a `TagClassifier` on image tags with multi-label binary cross-entropy.

    Parameters
    ----------
    dataset : datasets.SegmentationList or sequence of dict
        Items with ``image`` (3, H, W) float in [0, 1] and ``tags`` (C,) bool, background at
        index 0 (excluded from the loss: every image has some); all images the same size.
        A dataset with ``set_epoch`` gets it called each epoch (new augmentations).
    steps : int, optional
        Optimizer steps.
    batch_size : int, optional
        Images per step; each epoch uses whole batches of a seeded permutation.
    lr : float, optional
        Adam learning rate, decayed by the poly schedule (``schedules.poly_lr``, 20 warm-up steps).
    seed : int, optional
        Initial weights and data order; same seed, same weights on the CPU.
    width, dilations : optional
        The `TagClassifier`'s trunk.
    device : str or torch.device, optional
        Where to train (`devices.resolve_device`); default ``"auto"``, CUDA when present.
    progress : bool, optional
        Show a progress bar.

    Returns
    -------
    model : TagClassifier
        In eval mode, on `device`.

    Raises
    ------
    ValueError
        If `steps` or `batch_size` is not positive, or the dataset has fewer images than
        `batch_size`.

    Examples
    --------
    >>> data = [{"image": torch.rand(3, 16, 16), "tags": torch.tensor([True, i % 2 == 0])}
    ...         for i in range(4)]
    >>> net = train_tag_classifier(data, steps=2, batch_size=2, width=8)
    >>> tuple(net.cams(data[0]["image"][None]).shape)
    (1, 2, 4, 4)
    """
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        checks.in_range(name, value, 1)
    checks.in_range("width", width, 2)  # the trunk's first layers have width // 2 channels
    checks.in_range("lr", lr, 1e-12, kind=float)
    if len(dataset) < batch_size:
        raise ValueError(f"batch_size ({batch_size}) exceeds the {len(dataset)} images of dataset")
    device = devices.resolve_device(device)
    num_classes = len(dataset[0]["tags"])
    with torch.random.fork_rng(devices=[]):  # seed the weights without touching the caller's RNG
        torch.manual_seed(seed)
        net = TagClassifier(num_classes, width=width, dilations=dilations)
    net = net.to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    per_epoch = len(dataset) // batch_size
    bar = tqdm(range(steps), disable=not progress, desc="tag classifier")
    for step in bar:
        epoch, batch = divmod(step, per_epoch)
        if batch == 0 and hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        order = epoch_order(len(dataset), seed, epoch)
        images, tags = _stack(dataset, order[batch * batch_size : (batch + 1) * batch_size])
        images, tags = images.to(device), tags.to(device)
        for group in optimizer.param_groups:
            group["lr"] = poly_lr(step, lr, steps, warmup_steps=min(20, steps // 5))
        logits = net(images)  # (B, C - 1)
        loss = F.binary_cross_entropy_with_logits(logits, tags[:, 1:].float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress and step % 10 == 0:
            bar.set_postfix(bce=f"{loss.item():.3f}", refresh=False)
    return net.eval()


# ---------------------------------------------------------------------- pseudo labels


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
    return torch.where(best > threshold, label, IGNORE).to(torch.uint8)


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


def box_regions(boxes, ignore_index=IGNORE):
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
    bad = (boxes >= num_classes) & (boxes != IGNORE)
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
    labels = torch.where(inside, labels, torch.where(boxes == IGNORE, IGNORE, 0))
    return labels.to(torch.uint8)


class PseudoLabelQuality(NamedTuple):
    """How good pseudo labels are: right where they speak, and how much they speak."""

    miou_on_labelled: float
    labelled_fraction: float


def pseudo_label_quality(pseudo, truth, num_classes, *, ignore_index=IGNORE):
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
        ``miou_on_labelled``: mIoU (`metrics.mean_iou`) of one confusion matrix over every
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
    confusion = metrics.confusion_matrix(
        torch.where(known, pseudo, 0),
        torch.where(known, truth, ignore_index),
        num_classes,
        ignore_index=ignore_index,
    )
    fraction = float(known.sum()) / max(known.numel(), 1)
    return PseudoLabelQuality(metrics.mean_iou(confusion)[0], fraction)


# ---------------------------------------------------------------------- files


def write_pseudo_labels(net, root, split="train", kind="tags", *, out_root=None, **options):
    """Write CAM pseudo labels for a `spml-lab make-data` folder, with a list file to train on.

    Parameters
    ----------
    net : TagClassifier
        Trained classifier in eval mode (e.g. from `train_tag_classifier`).
    root : str or Path
        Dataset folder holding ``dataset.json`` and ``lists/{split}_{kind}.txt``.
    split : str, optional
        Which split.
    kind : {"tags", "boxes"}, optional
        Tags (`cam_pseudo_labels` with each image's tags) or boxes (`box_pseudo_labels` with
        each image's box map).
    out_root : str or Path, optional
        Where to write (default `root`): ``cam_{kind}/{split}/{name}.png`` and
        ``lists/{split}_cam_{kind}.txt``, whose paths are relative to `out_root`.
    **options
        ``threshold`` and ``alpha`` for the labelling function.

    Returns
    -------
    list_file : Path
        The new list (``image label [superpixel]`` per line). Load it with
        ``datasets.SegmentationList(out_root, list_file, num_classes)``.

    Raises
    ------
    ValueError
        For an unknown kind.
    FileNotFoundError
        If the folder or its list is missing.

    Examples
    --------
    >>> import tempfile
    >>> from spml_lab.data import datasets
    >>> out = Path(tempfile.mkdtemp())
    >>> net = TagClassifier(9, width=8).eval()
    >>> path = write_pseudo_labels(net, datasets.DATA_SAMPLES / "objects", "val", out_root=out)
    >>> path.name, len(datasets.SegmentationList(out, path, 9))
    ('val_cam_tags.txt', 32)
    """
    from spml_lab.data import datasets

    if kind not in ("tags", "boxes"):
        raise ValueError(f"kind must be 'tags' or 'boxes', got {kind!r}")
    root = Path(root)
    out_root = Path(out_root) if out_root is not None else root
    data = datasets.from_folder(root, split, kind)
    with writers.one_writer(out_root):  # refuses the shipped samples; one writer at a time
        return _write_pseudo_labels(net, data, out_root, split, kind, options)


def _write_pseudo_labels(net, data, out_root, split, kind, options):
    device = next(net.parameters()).device
    lines = []
    for index in range(len(data)):  # one image at a time: images may differ in size
        item = data[index]
        image = item["image"][None].to(device)
        cams = net.cams(image, size=tuple(image.shape[-2:]))
        if kind == "tags":
            labels = cam_pseudo_labels(cams, item["tags"][None], **options)
        else:
            labels = box_pseudo_labels(cams, item["label"][None], **options)
        target = out_root / f"cam_{kind}" / split / f"{item['name']}.png"
        labelio.write_label_png(target, labels[0].cpu().numpy())
        sample = data.samples[index]
        paths = [sample.image, target] + ([sample.superpixel] if sample.superpixel else [])
        lines.append(" ".join(os.path.relpath(p, out_root) for p in paths))
    list_file = out_root / "lists" / f"{split}_cam_{kind}.txt"
    list_file.parent.mkdir(parents=True, exist_ok=True)
    list_file.write_text("\n".join(lines) + "\n")
    return list_file
