"""Stage 2 of SPML: pseudo labels for the training images, and a head trained on them.

Pseudo labels turn weak labels into dense ones, as the paper's ``pseudo_softmaxrw_crf``
script does for each training image::

    softmax of the stage-1 head, flip-averaged              (C, h, w)
      -> only the image's tags (+ background), each class map divided by its maximum
      -> random walk on the embedding affinity exp(100 (cos - 1))   spreads to whole objects
      -> upsampled to the image, dense CRF                          snaps to image edges
      -> argmax over the tagged classes                             (H, W) uint8

Stage 2 then trains a fresh `model.SoftmaxHead` on these labels with the embedding frozen:
the embeddings of every training image (and of its mirror image) are computed once and
cached, so each step is only the head. `fit_head` writes RUN_DIR/stage2.pt, which
`spml_lab.evaluate` scores as ``stage2`` / ``stage2_crf`` (the paper's final prediction).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from spml_lab import inference, metrics, model, train
from spml_lab.checkpoints import save_checkpoint
from spml_lab.crf import dense_crf_batch
from spml_lab.labelio import IGNORE_INDEX
from spml_lab.predict import (
    STAGE2,
    check_images,
    dataset_for,
    embed,
    image_batches,
    load_run,
    to_uint8,
)

__all__ = ["PseudoLabels", "Stage2Result", "pseudo_labels", "walk_size", "fit_head"]

# the paper's stage-2 classifier drops 0.65 (its stage-1 head 0.75, `TrainConfig.head_dropout`)
STAGE2_DROPOUT = 0.65


class PseudoLabels(NamedTuple):
    """Pseudo labels of a batch and the maps they come from (for pictures).

    Attributes
    ----------
    labels : (B, H, W) uint8 tensor
        The pseudo labels; only classes of the image's tags (and background).
    softmax : (B, C, H, W) float tensor
        Tag-restricted softmax, each class divided by its maximum (the walk's input).
    walked : (B, C, H, W) float tensor
        After the random walk.
    crf : (B, C, H, W) float tensor or None
        After the dense CRF (None when it was switched off).
    """

    labels: torch.Tensor
    softmax: torch.Tensor
    walked: torch.Tensor
    crf: torch.Tensor | None


class Stage2Result(NamedTuple):
    """What `fit_head` did.

    Attributes
    ----------
    path : Path
        The written stage2.pt.
    images : int
        Training images used.
    loss : float
        Mean cross-entropy of the last 10 steps.
    pseudo_miou : float or None
        mIoU of the pseudo labels against the training images' dense ground truth (None
        when the data has none).
    pseudo_iou : (C,) float64 tensor or None
        Per-class IoU of the pseudo labels (NaN for absent classes).
    """

    path: Path
    images: int
    loss: float
    pseudo_miou: float | None
    pseudo_iou: torch.Tensor | None


def walk_size(size, max_pixels=4096):
    """Resolution of the random walk: the embedding's, shrunk to at most `max_pixels`.

    Parameters
    ----------
    size : (int, int)
        Embedding resolution ``(h, w)``.
    max_pixels : int, optional
        Cap on ``h * w``: the walk holds an ``(h w)^2`` affinity per image. The default is
        the paper's 64 x 64 (1/8 of its 512 crops).

    Returns
    -------
    size : (int, int)
        Same aspect ratio, at least 1 x 1.

    Examples
    --------
    >>> walk_size((32, 32)), walk_size((128, 96))
    ((32, 32), (73, 55))
    """
    height, width = (int(s) for s in size)
    if height * width <= max_pixels:
        return height, width
    shrink = math.sqrt(max_pixels / (height * width))
    return max(1, int(height * shrink)), max(1, int(width * shrink))


def pseudo_labels(
    net,
    head,
    images,
    tags,
    *,
    flip=True,
    walk_steps=64,
    max_walk_pixels=4096,
    crf=True,
    crf_options=None,
    background=0,
):
    """Pseudo labels of training images: tag softmax -> random walk -> dense CRF -> argmax.

    Parameters
    ----------
    net : torch.nn.Module
        Embedding network (eval mode).
    head : model.SoftmaxHead
        The stage-1 softmax head.
    images : (B, 3, H, W) float tensor in [0, 1]
    tags : (B, C) bool tensor
        Classes present in each image (from its weak labels).
    flip : bool, optional
        Average the softmax and the embeddings over the image and its mirror image.
    walk_steps : int, optional
        Random-walk steps (the paper: 2**6 = 64).
    max_walk_pixels : int, optional
        The walk runs at embedding resolution, shrunk to at most this many pixels
        (`walk_size`).
    crf : bool, optional
        Refine the walked maps with `spml_lab.crf.dense_crf_batch`.
    crf_options : dict, optional
        Keyword arguments of `spml_lab.crf.dense_crf`.
    background : int or None, optional
        Class allowed in every image (`inference.restrict_to_tags`).

    Returns
    -------
    pseudo : PseudoLabels
        Labels (B, H, W) uint8 and the maps at image resolution, on the CPU.

    Raises
    ------
    ValueError
        On malformed images or tags, or more than 255 classes.

    Notes
    -----
    As the paper's script, each class map is divided by its maximum over the image before
    the walk (``scale_to_max``): a tagged class the head is unsure about gets the same peak
    as a confident one, and the walk then spreads it over pixels of similar embedding. The
    paper walks at 1/8 of the image (64 x 64 on VOC); the small CPU net embeds at 1/4,
    32 x 32 for 128 px images, cheap enough to walk at directly. The paper averages the
    affinities of the two flips; here the two flips' embeddings are averaged (and the walk
    re-normalises them). The final argmax runs over the allowed classes only, so a label
    never names a class outside the tags (the CRF alone could, in principle).

    Examples
    --------
    >>> torch.manual_seed(0)
    <torch._C.Generator object at ...>
    >>> net, head = model.SmallEmbeddingNet(8, 8).eval(), model.SoftmaxHead(8, 4)
    >>> tags = torch.tensor([[False, False, True, False]])
    >>> pseudo = pseudo_labels(net, head, torch.rand(1, 3, 16, 16), tags)
    >>> sorted(pseudo.labels.unique().tolist()) in ([0], [2], [0, 2])
    True
    """
    check_images(images)
    num_images, num_classes = images.shape[0], head.classifier.out_channels
    if num_classes > 256:
        raise ValueError(f"pseudo labels are uint8: at most 256 classes, got {num_classes}")
    if not isinstance(tags, torch.Tensor) or tuple(tags.shape) != (num_images, num_classes):
        raise ValueError(
            f"tags must be a ({num_images}, {num_classes}) bool tensor, got "
            f"{tuple(getattr(tags, 'shape', ()))}"
        )
    size = tuple(images.shape[-2:])

    def maps(x):  # probabilities and embeddings together, so one flip average covers both
        emb = embed(net, x)  # (2B, D, h, w)
        return torch.cat([torch.softmax(head(emb).float(), dim=1), emb], dim=1)

    with torch.no_grad():
        joint = inference.flip_average(maps, images) if flip else maps(images)
        small = walk_size(joint.shape[-2:], max_walk_pixels)
        if small != tuple(joint.shape[-2:]):
            joint = F.interpolate(joint, size=small, mode="bilinear", align_corners=False)
        probs, emb = joint[:, :num_classes], joint[:, num_classes:]
        tags = tags.to(probs.device).bool()
        # log-probabilities as logits: the restricted softmax renormalises over the tags
        logits = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
        scaled = inference.restrict_to_tags(logits, tags, background=background, scale_to_max=True)
        walked = inference.random_walk(scaled, emb, steps=walk_steps)
        scaled = inference.upsample_probs(scaled, size).cpu()
        walked = inference.upsample_probs(walked, size).cpu()
        refined = dense_crf_batch(to_uint8(images), walked, **(crf_options or {})) if crf else None
        allowed = tags.cpu().clone()
        if background is not None:
            allowed[:, background] = True
        final = (walked if refined is None else refined).masked_fill(
            ~allowed[:, :, None, None], float("-inf")
        )
        labels = final.argmax(dim=1).to(torch.uint8)
    return PseudoLabels(labels, scaled, walked, refined)


def _pseudo_quality(dataset, truth):
    """Whether `truth` (the "full" list) lists the training images in the same order."""
    if truth is None or truth.names[: len(dataset)] != dataset.names:
        return None
    return truth


def _ground_truth(cfg, dataset):
    try:
        truth = dataset_for(cfg, cfg.split, "full")
    except (FileNotFoundError, ValueError):
        return None  # no dense ground truth for the training images: no quality score
    return _pseudo_quality(dataset, truth)


def fit_head(
    run_dir,
    *,
    steps=300,
    lr=0.1,
    batch_size=8,
    momentum=0.9,
    weight_decay=5e-4,
    seed=0,
    device="cpu",
    max_images=None,
    flip=True,
    pseudo_options=None,
    progress=False,
):
    """Train a fresh softmax head on pseudo labels with the embedding frozen (stage 2).

    Parameters
    ----------
    run_dir : str or Path
        A finished stage-1 run (`spml_lab.evaluate.load_run`).
    steps : int, optional
        SGD steps of the head.
    lr : float, optional
        Base learning rate (poly decay, `train.poly_lr`); the stage-1 head trains at
        ``cfg.lr * head_lr_mult`` = 0.1 by default.
    batch_size : int, optional
        Images per step (and per forward pass while caching).
    momentum, weight_decay : float, optional
        SGD settings.
    seed : int, optional
        Seeds the head's initial weights and the batch order.
    device : str, optional
        ``"cpu"``, ``"cuda"``, ``"auto"``...
    max_images : int, optional
        Use only the first training images.
    flip : bool, optional
        Also train on the mirror images (their embeddings and mirrored pseudo labels).
    pseudo_options : dict, optional
        Keyword arguments of `pseudo_labels` (``walk_steps``, ``crf_options``, ...).
    progress : bool, optional
        Show progress bars.

    Returns
    -------
    result : Stage2Result
        Includes the pseudo labels' mIoU against dense ground truth when the data has it.

    Raises
    ------
    FileNotFoundError
        If the run or its data is missing.
    ValueError
        On a bad argument.

    Notes
    -----
    The training split's weak labels (``cfg.split``, ``cfg.annotation``) give the tags;
    their embeddings are cached on the CPU as float16 (64 training images of 128 px with
    D = 32: 8 MiB with their mirrors), so the whole split must fit in memory.
    """
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    run = load_run(run_dir, device=device)
    dataset = dataset_for(run.cfg, run.cfg.split, run.cfg.annotation, run.data_fingerprint)
    truth = _ground_truth(run.cfg, dataset)
    num_classes = run.num_classes
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    groups = {}  # image size -> lists of embeddings and pseudo labels (batched by size)
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    bar = tqdm(total=count, disable=not progress, desc="spml pseudo labels")
    for batch in image_batches(dataset, batch_size, max_images):
        images = batch["image"]
        pseudo = pseudo_labels(
            run.net, run.head, images, batch["tags"], flip=flip, **(pseudo_options or {})
        ).labels
        if truth is not None:
            target = torch.stack([truth[int(i)]["label"] for i in batch["index"]])
            confusion += metrics.confusion_matrix(pseudo, target, num_classes)
        with torch.no_grad():
            views = [(images, pseudo)] + ([(images.flip(-1), pseudo.flip(-1))] if flip else [])
            for view, labels in views:
                group = groups.setdefault(tuple(images.shape[-2:]), ([], []))
                group[0].append(embed(run.net, view).half().cpu())
                group[1].append(labels)
        bar.update(len(images))
    bar.close()
    groups = {k: (torch.cat(e), torch.cat(lab)) for k, (e, lab) in groups.items()}

    head, loss = _train_head(
        groups, run, steps, lr, batch_size, momentum, weight_decay, seed, progress
    )
    miou, iou = metrics.mean_iou(confusion) if truth is not None else (None, None)
    path = run.path / STAGE2
    save_checkpoint(
        {
            "head": head.state_dict(),
            "num_classes": num_classes,
            "class_names": run.class_names,
            "run_config": run.cfg.to_dict(),
            "run_step": run.step,
            "settings": {
                "steps": steps,
                "lr": lr,
                "batch_size": batch_size,
                "momentum": momentum,
                "weight_decay": weight_decay,
                "seed": seed,
                "images": count,
                "flip": flip,
                "pseudo_options": dict(pseudo_options or {}),
            },
            "loss": loss,
            "pseudo_miou": miou,
        },
        path,
    )
    return Stage2Result(path, count, loss, miou, iou)


def _train_head(groups, run, steps, lr, batch_size, momentum, weight_decay, seed, progress):
    """SGD on the cached embeddings; each step draws one image size, then a batch of it."""
    # seeded head init and dropout masks, without touching the caller's RNG
    device = torch.device(run.device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return _sgd_head(groups, run, steps, lr, batch_size, momentum, weight_decay, seed, progress)


def _sgd_head(groups, run, steps, lr, batch_size, momentum, weight_decay, seed, progress):
    device = run.device
    generator = torch.Generator().manual_seed(seed)
    head = model.SoftmaxHead(run.cfg.embedding_dim, run.num_classes, dropout=STAGE2_DROPOUT)
    head = head.to(device).train()
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum)
    sizes = list(groups)
    weights = torch.tensor([len(groups[s][1]) for s in sizes], dtype=torch.float)
    recent = []
    for step in tqdm(range(steps), disable=not progress, desc="spml stage2"):
        emb, labels = groups[sizes[int(torch.multinomial(weights, 1, generator=generator))]]
        pick = torch.randint(len(labels), (min(batch_size, len(labels)),), generator=generator)
        for group in optimizer.param_groups:
            group["lr"] = train.poly_lr(step, lr, steps)
        x = emb[pick].to(device).float()
        target = labels[pick].to(device).long()  # (b, H, W); uint8 255 would also be ignored
        logits = head(x, size=tuple(target.shape[-2:]))
        loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
        # L2 on the convolution weights only (not biases or batch norm), as stage 1 does
        decay = sum(p.square().sum() for p in head.parameters() if p.ndim > 1)
        loss = loss + weight_decay / 2 * decay
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        recent.append(loss.detach())
    last = torch.stack(recent[-10:]).mean().item()
    return head.eval(), last
