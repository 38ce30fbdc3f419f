"""Train the tag classifier on image tags: the first step of CAM pseudo labels.

`train_tag_classifier` fits a `tag_classifier.TagClassifier` with multi-label binary
cross-entropy on each image's tags (background excluded: every image has some), Adam under the
poly schedule (`schedules.poly_lr`), one seeded permutation of the data per epoch
(`schedules.epoch_order`). Its class activation maps then become pseudo labels
(`spml_lab.labelling.cam`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from spml_lab import checks, devices
from spml_lab.nets.tag_classifier import CLASSIFIER_WIDTH, TagClassifier
from spml_lab.schedules import epoch_order, poly_lr

__all__ = [
    "train_tag_classifier",
    "CLASSIFIER_STEPS",
    "CLASSIFIER_BATCH_SIZE",
    "CLASSIFIER_LR",
    "CLASSIFIER_WIDTH",
]

# The tag classifier's training defaults, here and in `spml-lab cam-labels`: the settings the
# accuracy benchmark made its CAM pseudo labels with on the embedded objects
# (benchmarks/accuracy.py, whose tags and boxes results rest on those labels): Adam at 2e-3 on
# batches of 8 for 300 steps (the reduced form; its GPU form trains 1500). The trunk's width,
# CLASSIFIER_WIDTH, is the network's (`tag_classifier`).
CLASSIFIER_STEPS = 300
CLASSIFIER_BATCH_SIZE = 8
CLASSIFIER_LR = 2e-3


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
