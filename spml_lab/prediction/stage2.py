"""Stage 2 of SPML: a head trained on the training images' pseudo labels.

`spml_lab.prediction.pseudo_labels` turns the weak labels into dense ones; stage 2 then trains
a fresh `heads.SoftmaxHead` on these labels with the embedding frozen:
the embeddings of every training image (and of its mirror image) are computed once and
cached, so each step is only the head. `fit_head` writes RUN_DIR/stage2.pt, which
`spml_lab.prediction.evaluate` scores as ``stage2`` / ``stage2_crf`` (the paper's final prediction).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from spml_lab import checks, devices, schedules
from spml_lab.constants import IGNORE_INDEX
from spml_lab.data import writers
from spml_lab.nets import heads
from spml_lab.prediction import metrics, pseudo_labels
from spml_lab.prediction.predict import dataset_for, image_batches
from spml_lab.training import run_folders
from spml_lab.training.checkpoints import save_checkpoint
from spml_lab.training.config import option
from spml_lab.training.runs import STAGE2, load_run

__all__ = [
    "PseudoLabelSteps",
    "Stage2Options",
    "Stage2Result",
    "STAGE2_DROPOUT",
    "fit_head",
    "pseudo_label_steps",
]

# the paper's stage-2 classifier drops 0.65 (its stage-1 head 0.75, `TrainConfig.head_dropout`)
STAGE2_DROPOUT = 0.65


@dataclass(frozen=True)
class Stage2Options:
    """How `fit_head` trains the stage-2 head: its defaults, and the flags of `spml-lab stage2`."""

    steps: int = option(300, "SGD steps of the head")
    lr: float = option(0.1, "base learning rate, poly decay (the stage-1 head's is 0.1 too)")
    batch_size: int = option(8, "images per step (and per forward pass while caching)")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(5e-4, "L2 on the head's convolution weights")
    seed: int = option(0, "seeds the head's initial weights and the batch order")
    device: str = option(devices.DEFAULT, devices.HELP)
    max_images: int | None = option(None, "use only the first N training images", kind=int)
    flip: bool = option(True, "also train on the mirror images")
    progress: bool = option(False, "show progress bars")


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


class PseudoLabelSteps(NamedTuple):
    """The pseudo labels of training images at each step of `pseudo_labels.from_head`.

    Attributes
    ----------
    miou : dict of str to float
        ``"softmax"``, ``"walked"``, ``"crf"`` (not with ``crf=False``): mIoU against the
        dense ground truth of the argmax of that step's maps over the image's tags
        (+ background), over all the images. The last step is the pseudo label itself (with
        the CRF: the score `fit_head` reports).
    batch : dict
        The first batch of training images (`predict.image_batches`: ``image``, ``label``
        = the weak labels, ``tags``, ``name``, ``index``).
    truth : (B, H, W) int64 tensor
        Its dense ground truth (only for scoring and pictures: SPML never sees it).
    labels : dict of str to (B, H, W) int64 tensor
        Its argmax per step.
    pseudo : pseudo_labels.PseudoLabels
        Its maps.
    """

    miou: dict
    batch: dict
    truth: torch.Tensor
    labels: dict
    pseudo: pseudo_labels.PseudoLabels


STEPS = ("softmax", "walked", "crf")


def pseudo_label_steps(run, *, max_images=None, batch_size=8, flip=True, pseudo_options=None):
    """Make the pseudo labels of a run's training images and score every step of their making.

    Parameters
    ----------
    run : runs.Run
        A finished stage-1 run (`runs.load_run`).
    max_images : int, optional
        Use the first training images only.
    batch_size : int, optional
    flip : bool, optional
        As `pseudo_labels.from_head`.
    pseudo_options : dict, optional
        Further `pseudo_labels.from_head` options (``walk_steps``, ``crf_options``, ...).

    Returns
    -------
    steps : PseudoLabelSteps

    Raises
    ------
    FileNotFoundError
        If the run's data has no dense ground truth for its training images.
    """
    dataset = dataset_for(run.cfg, run.cfg.split, run.cfg.annotation, run.data_fingerprint)
    truth = _ground_truth(run.cfg, dataset)
    if truth is None:
        raise FileNotFoundError(f"{run.cfg.data}: no dense ground truth of the training images")
    num_classes = run.num_classes
    options = dict(pseudo_options or {})
    steps = STEPS if options.get("crf", True) else STEPS[:2]  # without the CRF: two steps
    confusion = {s: torch.zeros(num_classes, num_classes, dtype=torch.long) for s in steps}
    first = None
    for batch in image_batches(dataset, batch_size, max_images):
        pseudo = pseudo_labels.from_head(
            run.net, run.head, batch["image"], batch["tags"], flip=flip, **options
        )
        target = torch.stack([truth[int(i)]["label"] for i in batch["index"]])
        background = options.get("background", 0)
        labels = {
            s: pseudo_labels.tag_argmax(getattr(pseudo, s), batch["tags"], background=background)
            for s in steps
        }
        for s in steps:
            confusion[s] += metrics.confusion_matrix(labels[s], target, num_classes)
        if first is None:
            first = (batch, target, labels, pseudo)
    miou = {s: metrics.mean_iou(c)[0] for s, c in confusion.items()}
    return PseudoLabelSteps(miou, *first)


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
    steps=Stage2Options.steps,
    lr=Stage2Options.lr,
    batch_size=Stage2Options.batch_size,
    momentum=Stage2Options.momentum,
    weight_decay=Stage2Options.weight_decay,
    seed=Stage2Options.seed,
    device=Stage2Options.device,
    max_images=Stage2Options.max_images,
    flip=Stage2Options.flip,
    pseudo_options=None,
    progress=Stage2Options.progress,
    out=None,
):
    """Train a fresh softmax head on pseudo labels with the embedding frozen (stage 2).

    Parameters
    ----------
    run_dir : str or Path
        A finished stage-1 run (`runs.load_run`).
    steps : int, optional
        SGD steps of the head.
    lr : float, optional
        Base learning rate (poly decay, `schedules.poly_lr`); the stage-1 head trains at
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
        Keyword arguments of `pseudo_labels.from_head` (``walk_steps``, ``crf_options``, ...).
    progress : bool, optional
        Show progress bars.
    out : str or Path, optional
        Copy the run's stage-1 files into this folder and write stage2.pt there
        (`run_folders.copy_run`); needed for a shipped run, which is read-only.

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
        checks.in_range(name, value, 1)
    if max_images is not None:
        checks.in_range("max_images", max_images, 1)
    checks.in_range("momentum", momentum, 0, 1, kind=float)
    checks.in_range("weight_decay", weight_decay, 0, kind=float)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    run = load_run(run_dir, device=device)
    if out is not None:
        writers.refuse_shipped(out)
        run = load_run(run_folders.copy_run(run.path, out), device=device)
    with writers.one_writer(run.path):
        return _fit_head(run, steps, lr, batch_size, momentum, weight_decay, seed, max_images,
                         flip, pseudo_options, progress)  # fmt: skip


def _fit_head(run, steps, lr, batch_size, momentum, weight_decay, seed, max_images, flip,
              pseudo_options, progress):  # fmt: skip
    dataset = dataset_for(run.cfg, run.cfg.split, run.cfg.annotation, run.data_fingerprint)
    truth = _ground_truth(run.cfg, dataset)
    num_classes = run.num_classes
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    groups = {}  # image size -> lists of embeddings and pseudo labels (batched by size)
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    bar = tqdm(total=count, disable=not progress, desc="spml pseudo labels")
    for batch in image_batches(dataset, batch_size, max_images):
        images = batch["image"]
        # each image (and its mirror image) is embedded once: for its pseudo label, and for
        # the cache the head trains on
        embeddings = pseudo_labels.embed_views(run.net, images, flip=flip)  # (2B or B, ...)
        pseudo = pseudo_labels.from_head(
            run.net, run.head, images, batch["tags"], flip=flip, embeddings=embeddings,
            **(pseudo_options or {}),
        ).labels  # fmt: skip
        if truth is not None:
            target = torch.stack([truth[int(i)]["label"] for i in batch["index"]])
            confusion += metrics.confusion_matrix(pseudo, target, num_classes)
        group = groups.setdefault(tuple(images.shape[-2:]), ([], []))
        group[0].append(embeddings.half().cpu())
        group[1].append(torch.cat([pseudo, pseudo.flip(-1)]) if flip else pseudo)
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
    head = heads.SoftmaxHead(run.cfg.embedding_dim, run.num_classes, dropout=STAGE2_DROPOUT)
    head = head.to(device).train()
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum)
    sizes = list(groups)
    weights = torch.tensor([len(groups[s][1]) for s in sizes], dtype=torch.float)
    recent = []
    for step in tqdm(range(steps), disable=not progress, desc="spml stage2"):
        emb, labels = groups[sizes[int(torch.multinomial(weights, 1, generator=generator))]]
        pick = torch.randint(len(labels), (min(batch_size, len(labels)),), generator=generator)
        for group in optimizer.param_groups:
            group["lr"] = schedules.poly_lr(step, lr, steps)
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
