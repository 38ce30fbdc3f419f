"""Stage 1 of SPML: train the pixel embedding with the enabled relations, plus a softmax head.

One step (`fit` runs ``max_steps`` of them)::

    images --net--> emb (B, D, h, w), unit rows          h, w = H/4, W/4
    labels, superpixels --nearest--> (B, h, w)           the contrastive part works at (h, w)
    segments = k-means on [emb, location], split by superpixel and weak label
    loss     = relations.spml_loss(emb, labels, tags, segments, memory)   the enabled relations
             + w_ann x cross-entropy of the softmax head on detached, normalised emb (full
               resolution), the paper's (CE + L_ann) x w_ann
    SGD step (per-group LR, poly schedule with warm-up); memory.push(segments)

The head sees ``emb.detach()``, as in the paper's code, so it reads the embedding without
shaping it: only the relations train the network (``head_trains_embedding`` lifts the detach:
the partial cross-entropy baseline).

Hardware, one code path: on CUDA the network runs channels-last under bf16 autocast, and the
contrastive part in float32; on the CPU everything is float32. Under ``torchrun`` the processes
train data-parallel on one global batch (`distributed`).

A run lives in one folder (``TrainConfig.out_dir``)::

    config.yaml     the TrainConfig of the run
    metrics.csv     step, lr, each enabled relation's loss, total, softmax_ce, images_per_s
    checkpoint.pt   latest state, replaced atomically every checkpoint_every steps
    final.pt        model + head + config, written at the end

``TrainConfig(resume=True)`` (``spml-lab train --resume``) continues a killed run from its
checkpoint exactly: same step, weights, optimizer, learning rate, memory bank, data order
and RNG states, so on the CPU it ends with the weights an uninterrupted run would have. With no
run in ``out_dir`` it starts one, unless ``fit(cfg, start_if_empty=False)`` (the command's
``--resume``) asks for a run to continue. No tensor that turned inf or NaN is ever saved.

Data order is a function of (seed, epoch) and augmentation of (seed, epoch, image), so a run
repeats with any number of DataLoader workers. Losses stay on the device between log rows;
the only host-device syncs of a step are those of building segments (their number is data
dependent, `clustering.build_segments`), plus one read-back per log row.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from spml_lab.constants import IGNORE_INDEX  # one definition of "unlabelled"
from spml_lab.data import datasets, writers
from spml_lab.devices import resolve_device  # kept here too: notebooks call train.resolve_device
from spml_lab.method import clustering, distributed, relations

# downsample_nearest: notebook 04 still calls it as `train.downsample_nearest`
from spml_lab.method.label_maps import downsample_nearest, step_maps  # noqa: F401
from spml_lab.method.memory import PrototypeMemory
from spml_lab.nets.build import build_model
from spml_lab.schedules import epoch_order, poly_lr
from spml_lab.training import checkpoints, run_folders, runs
from spml_lab.training.checkpoints import save_checkpoint
from spml_lab.training.config import TrainConfig
from spml_lab.training.runs import CHECKPOINT, CONFIG, FINAL, METRICS

__all__ = [
    "fit",
    "batch_losses",
    "network_precision",
    "train_step",
    "param_groups",
    "build_dataset",
    "softmax_cross_entropy",
]

SHORT = {"low_level": "low", "semantic_annotation": "ann", "cooccurrence": "occ"}
SHORT.update(feature_affinity="aff", total="total", softmax_ce="ce")


def _is_main_process():
    """Tell whether this process writes files: always, unless a non-zero DDP rank."""
    return distributed.rank() == 0


# ---------------------------------------------------------------------- building blocks


def _is_head(name):
    """Parameters learned from scratch at a higher LR (paper: ASPP and classifier at 10x)."""
    return name.startswith(("embed.", "head."))


def param_groups(net, head, cfg):
    """SGD parameter groups as in the paper: trunk vs head, weights vs biases.

    Parameters
    ----------
    net : torch.nn.Module
        Embedding network (its ``embed`` layer counts as head).
    head : torch.nn.Module
        Softmax head.
    cfg : TrainConfig
        Uses ``backbone_lr_mult``, ``head_lr_mult``, ``bias_lr_mult`` and ``weight_decay``.

    Returns
    -------
    groups : list of dict
        Non-empty groups with ``params``, ``name``, ``lr_mult`` (times the scheduled LR) and
        ``weight_decay`` (0 for biases and normalisation parameters).

    Examples
    --------
    >>> net, head = build_model(TrainConfig(width=8, embedding_dim=8), 3)
    >>> [(g["name"], g["lr_mult"]) for g in param_groups(net, head, TrainConfig())]
    [('backbone', 1.0), ('backbone_bias', 2.0), ('head', 10.0), ('head_bias', 20.0)]
    """
    named = [*net.named_parameters(), *(("head." + n, p) for n, p in head.named_parameters())]
    groups = []
    for part, mult in (("backbone", cfg.backbone_lr_mult), ("head", cfg.head_lr_mult)):
        for bias in (False, True):
            params = [
                p
                for name, p in named
                if _is_head(name) == (part == "head") and (p.ndim == 1) == bias
            ]
            if params:
                groups.append(
                    {
                        "params": params,
                        "name": part + ("_bias" if bias else ""),
                        "lr_mult": mult * (cfg.bias_lr_mult if bias else 1.0),
                        "weight_decay": 0.0 if bias else cfg.weight_decay,
                    }
                )
    return groups


def build_dataset(cfg):
    """Return the augmented training `datasets.SegmentationList` that `cfg` names.

    Parameters
    ----------
    cfg : TrainConfig
        ``data`` is ``"embedded:KIND"`` or a `spml-lab make-data` folder.

    Returns
    -------
    dataset : datasets.SegmentationList
    """
    options = {
        "train": True,
        "crop_size": cfg.crop_size,
        "scale_range": cfg.scale_range,
        "flip": cfg.flip,
        "seed": cfg.seed,
        "cache": cfg.cache_data,
    }
    return datasets.open_data(cfg.data, cfg.split, cfg.annotation, **options)


def softmax_cross_entropy(logits, labels, ignore_index=IGNORE_INDEX):
    """Mean cross-entropy over labelled pixels; 0 (not NaN) when none is labelled.

    Under DDP the mean is over the labelled pixels of every process (`distributed.global_mean`).

    Parameters
    ----------
    logits : (B, C, H, W) float tensor
    labels : (B, H, W) int64 tensor
        `ignore_index` = unlabelled (image-tag runs have no labelled pixel at all).

    Returns
    -------
    loss : () float tensor

    Examples
    --------
    >>> softmax_cross_entropy(torch.zeros(1, 2, 1, 2), torch.tensor([[[1, 255]]]))
    tensor(0.6931)
    >>> softmax_cross_entropy(torch.zeros(1, 2, 1, 1), torch.tensor([[[255]]]))
    tensor(0.)
    """
    loss = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    return distributed.global_mean(loss, (labels != ignore_index).sum())  # a tensor: no sync


# ---------------------------------------------------------------------- results


def _batches(dataset, cfg, epoch, start, device):
    """Yield ``(epoch, batch index, batch)`` forever from position (epoch, start).

    Under DDP batch b of the global order has ``world * batch_size`` images and process r
    loads its r-th slice, so the processes together see what one process would.
    """
    world, rank = distributed.world_size(), distributed.rank()
    size = cfg.batch_size * world  # the global batch
    per_epoch = len(dataset) // size  # whole batches only: every step sees the same count
    while True:
        order = epoch_order(len(dataset), cfg.seed, epoch)
        first = rank * cfg.batch_size
        sampler = [
            order[b * size + first : b * size + first + cfg.batch_size].tolist()
            for b in range(start, per_epoch)
        ]
        dataset.set_epoch(epoch)
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=cfg.num_workers,
            pin_memory=device.type == "cuda",
            # its own generator: a loader drawn from the global RNG would shift the head's
            # dropout masks after a resume (the resumed run opens its loader mid-epoch)
            generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch),
        )
        for index, batch in enumerate(loader, start):
            yield epoch, index, batch
        epoch, start = epoch + 1, 0


# ---------------------------------------------------------------------- the loop


def _stop_if_not_finite(bad, first, step, run, last_saved):
    """Raise when a logged loss or a tensor to save turned inf or NaN: never save such a state.

    Parameters
    ----------
    bad : list of str
        The losses (``"softmax_ce"``) or saved tensors (``"model.trunk.1.running_var"``,
        `checkpoints.non_finite`) that are not finite; nothing happens when empty.
    first, step : int
        They turned non-finite during steps ``first + 1 .. step``.
    run : Path
    last_saved : int or None
        Step of the last checkpoint written (which stays as it is), None if none yet.

    Raises
    ------
    FloatingPointError
        Naming them, the steps, what was kept and what to try (the CLI exits 2 with it).
    """
    if not bad:
        return
    kept = (
        f"{run / CHECKPOINT} (step {last_saved}) keeps the last good state"
        if last_saved is not None
        else "no checkpoint was written"
    )
    shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    raise FloatingPointError(
        f"training stopped: {shown} turned non-finite between steps {first + 1} and {step}; "
        f"{kept}; lower TrainConfig.lr (--lr) or the relation's weight"
    )


def network_precision(cfg, device):
    """Return how the network runs on `device`, ``"bf16"`` or ``"fp32"`` (decided here only).

    ``"bf16"``: the images and the network channels-last (NHWC convolutions, what bf16 tensor
    cores run fastest), the network and the head under bf16 autocast; the k-means, prototypes
    and relations stay float32 either way. ``"bf16"`` on CUDA when ``cfg.amp``, else
    ``"fp32"``; the speed benchmark and its CPU tests ask `batch_losses` for either explicitly.

    Examples
    --------
    >>> from spml_lab.training.config import TrainConfig
    >>> network_precision(TrainConfig(), "cpu"), network_precision(TrainConfig(), "cuda:0")
    ('fp32', 'bf16')
    """
    return "bf16" if cfg.amp and torch.device(device).type == "cuda" else "fp32"


def batch_losses(
    net, head, batch, cfg, memory=None, *, device="cpu", superpixels=True, precision=None
):
    """Compute the losses of one batch as a training step does (no optimizer step).

    Parameters
    ----------
    net, head : torch.nn.Module
        Embedding network and softmax head.
    batch : dict
        Collated dataset items (``image``, ``label``, ``superpixel``, ``tags``).
    cfg : TrainConfig
        Relations, k-means grid and iterations, AMP.
    memory : memory.PrototypeMemory, optional
        Earlier batches' prototypes.
    device : str or torch.device, optional
    superpixels : bool, optional
        Whether the batch's superpixel maps are real (False: the list had none).
    precision : {"bf16", "fp32"}, optional
        How the network runs (`network_precision`; default: as `fit` runs it on `device`).
        ``"bf16"`` also works on the CPU, where bf16 autocast exists too.

    Returns
    -------
    losses : dict of str to () float tensor
        Each enabled relation's loss, ``"total"`` (their weighted sum) and ``"softmax_ce"``.
    segments : clustering.Segments or None
        The batch's segments (what a step pushes into the memory); None when no relation is
        enabled (the baselines), which need none.
    """
    device = torch.device(device)
    precision = precision or network_precision(cfg, device)
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be 'bf16' or 'fp32', got {precision!r}")
    images = batch["image"].to(device, non_blocking=True)  # (B, 3, H, W)
    if precision == "bf16":
        images = images.contiguous(memory_format=torch.channels_last)
    labels = batch["label"].to(device, non_blocking=True)  # (B, H, W)
    tags = batch["tags"].to(device, non_blocking=True)  # (B, C)
    amp = torch.autocast(device.type, torch.bfloat16) if precision == "bf16" else None
    with amp or contextlib.nullcontext():
        emb = net(images)  # (B, D, h, w)
    # k-means means, prototypes and loss logits in float32: the network is the heavy part
    emb = emb.float()
    small_labels, small_sp, valid = step_maps(
        {**batch, "label": labels}, tuple(emb.shape[-2:]), device=device, superpixels=superpixels
    )  # (B, h, w) each
    rows = emb.permute(0, 2, 3, 1)  # (B, h, w, D)
    settings = cfg.relation_settings()
    segments = None  # the baselines train no relation: no segments to build
    losses = {"total": rows.reshape(-1)[:1].sum() * 0.0}
    if settings:
        segments = clustering.segment_batch(
            rows, small_sp, small_labels, cfg.kmeans_grid, cfg.kmeans_iterations, tags=tags,
            valid=valid,
        )  # fmt: skip
        # under DDP: the segments of every process, so negatives come from the global batch
        segments = distributed.gather_segments(segments)
        losses = relations.spml_loss(
            rows,
            small_labels,
            tags,
            segments,
            memory,
            settings=settings,
            affinity_threshold=cfg.affinity_threshold,
            location_weight=cfg.low_level_location_weight,
        )
    with amp or contextlib.nullcontext():
        # SPML: the head reads a detached embedding; the baseline trains the net through it
        head_input = emb if cfg.head_trains_embedding else emb.detach()
        unit = F.normalize(head_input, dim=1).permute(0, 2, 3, 1)  # (B, h, w, D), as heads take
        logits = head(unit, size=tuple(images.shape[-2:]))
    losses["softmax_ce"] = softmax_cross_entropy(logits.float(), labels)
    return losses, segments


def train_step(
    batch, net, head, optimizer, memory, cfg, device, superpixels=True, *, precision=None
):
    """Run one SGD step of `fit` (what the speed benchmark times).

    Parameters
    ----------
    batch : dict
        Collated dataset items.
    net, head : torch.nn.Module
        Embedding network and softmax head (possibly DDP-wrapped).
    optimizer : torch.optim.Optimizer
    memory : memory.PrototypeMemory
        Receives the batch's segments after the step.
    cfg : TrainConfig
    device : torch.device
    superpixels : bool, optional
        Whether the batch carries superpixels.
    precision : {"bf16", "fp32"}, optional
        How the network runs (`batch_losses`; default `network_precision`).

    Returns
    -------
    losses : (K,) float tensor on the device
        The enabled relations' losses, the weighted total and the head's cross-entropy (the
        metrics.csv columns), detached: reading them is left to the caller.
    """
    losses, segments = batch_losses(
        net, head, batch, cfg, memory, device=device, superpixels=superpixels,
        precision=precision,
    )  # fmt: skip
    optimizer.zero_grad(set_to_none=True)
    # the paper's stage-1 loss: relations + (cross-entropy + L_ann) x w_ann, whose L_ann x w_ann
    # is already in the total; the baselines weigh their cross-entropy 1 (`resolved_softmax_weight`)
    (losses["total"] + cfg.resolved_softmax_weight * losses["softmax_ce"]).backward()
    optimizer.step()
    if segments is not None:
        memory.push(segments)
    names = [*cfg.relation_settings(), "total", "softmax_ce"]  # the metrics.csv columns
    return torch.stack([losses[name] for name in names]).detach()


def fit(cfg, *, start_if_empty=True):
    """Train an embedding network with SPML (stage 1) and return the run folder.

    Parameters
    ----------
    cfg : TrainConfig or dict
        The run; a dict is read with `TrainConfig.from_dict`.
    start_if_empty : bool, optional
        With ``cfg.resume``: start a fresh run when ``out_dir`` holds none (True, "resume if
        possible", what a notebook rerun wants) or refuse (False, what ``spml-lab train
        --resume`` asks for: a run to continue). `run_folders.open_run` decides.

    Returns
    -------
    run : Path
        ``cfg.out_dir`` made absolute, holding config.yaml, metrics.csv, checkpoint.pt and
        final.pt.

    Raises
    ------
    FileExistsError
        If ``out_dir`` already holds a run and ``cfg.resume`` is False.
    ValueError
        On a config that does not fit the data (batch larger than the dataset, low-level
        relation without superpixels), a resume whose config differs from the checkpoint's,
        or a damaged checkpoint (named, before anything is written).
    FileNotFoundError
        If the dataset is missing, or (``start_if_empty=False``) a resume finds no run.
    FloatingPointError
        If a loss or a tensor to save (parameter or buffer, `checkpoints.non_finite`) turns
        inf or NaN; the last good checkpoint stays and no final.pt is written.

    Notes
    -----
    ``metrics.csv`` rows average the steps since the previous row; ``total`` is the weighted
    relation sum (what trains the embedding) and ``softmax_ce`` the head's loss, which is
    added to it for the backward pass but only reaches the head.

    Examples
    --------
    >>> import tempfile
    >>> cfg = TrainConfig(max_steps=2, crop_size=32, batch_size=2, width=8, embedding_dim=8,
    ...                   progress=False, out_dir=tempfile.mkdtemp() + "/run")
    >>> sorted(p.name for p in fit(cfg).iterdir())  # and the lock of its one writer
    ['.writer.lock', 'checkpoint.pt', 'config.yaml', 'final.pt', 'metrics.csv']
    """
    cfg = cfg if isinstance(cfg, TrainConfig) else TrainConfig.from_dict(cfg)
    # The run's files record absolute paths: what it trains on, and where it lives. A config
    # is read from other working folders (`cd elsewhere && spml-lab train --config
    # ../runs/k2/config.yaml --resume`), where a relative out_dir names another folder and a
    # resume would start a fresh run there. Not resolved against the config file's folder on
    # reading instead: the same text would then mean one folder as a --out-dir flag and another
    # in a hand-written YAML file.
    out_dir = os.path.abspath(os.path.expanduser(cfg.out_dir))  # not resolve(): keep symlinks
    cfg = cfg.replace(data=datasets.absolute_data(cfg.data), out_dir=out_dir)
    run = Path(cfg.out_dir)
    owns_group = not (dist.is_available() and dist.is_initialized())
    device = distributed.setup(cfg.device) or resolve_device(  # torchrun's, or this process's
        cfg.device, argument="TrainConfig.device"
    )
    if not run.is_dir():  # nothing to read yet: a refusal here leaves no folder behind
        run_folders.open_run(run, cfg, start_if_empty=start_if_empty)
    main = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    with writers.one_writer(run) if main else contextlib.nullcontext():
        # read as the folder's one writer: a run started at the same moment into the same folder
        # has either been refused, or has finished and left its files to resume from
        state = run_folders.open_run(run, cfg, start_if_empty=start_if_empty)
        return _fit(cfg, run, state, device, owns_group)


def _fit(cfg, run, state, device, owns_group):
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)  # noqa: NPY002  (the global RNG of any user code, see _rng_state)
    random.seed(cfg.seed)
    dataset, fingerprint = _training_data(cfg, state, run)
    # a resumed run's weights come from its checkpoint, not from the ImageNet file
    loop = _TrainingLoop(cfg, run, dataset, fingerprint, device, load_pretrained=state is None)
    if state is None:
        if loop.main:
            cfg.replace(resume=False).to_yaml(run / CONFIG)
    else:
        loop.restore(state, run / CHECKPOINT)
    loop.run()
    final = loop.final()
    loop.stop_if_not_finite(final)  # a run resumed at its end saves what it restored
    if loop.main:
        save_checkpoint(final, run / FINAL)
    if loop.world > 1 and owns_group:  # the group this call joined (torchrun) ends with it
        dist.barrier()
        dist.destroy_process_group()
    return run


def _training_data(cfg, state, run):
    """Open the run's training list and check it against the config and a resumed run.

    Returns
    -------
    dataset : datasets.SegmentationList
    fingerprint : str
        `datasets.data_fingerprint` of the list, recorded in every checkpoint.
    """
    world = distributed.world_size()
    dataset = build_dataset(cfg)
    fingerprint = datasets.data_fingerprint(cfg.data, dataset.list_file)
    if state is not None and state.get("data_fingerprint") not in (None, fingerprint):
        raise ValueError(
            f"cannot resume {run}: its data changed since it was trained "
            f"({state['data_fingerprint']} there, {fingerprint} now)"
        )
    if len(dataset) < cfg.batch_size * world:
        times = f" x {world} processes" if world > 1 else ""
        raise ValueError(
            f"TrainConfig.batch_size ({cfg.batch_size}){times} exceeds the "
            f"{len(dataset)} images of {cfg.data!r} split {cfg.split!r}"
        )
    if len(dataset) <= cfg.check_files_limit:
        dataset.check_files()  # a bad file fails now, before any step or checkpoint
    if cfg.low_level and not dataset.has_superpixels:
        raise ValueError(
            f"TrainConfig.low_level needs superpixels, but {dataset.list_file} has no "
            "superpixel column; disable it (--no-low-level) or add superpixels"
        )
    return dataset, fingerprint


class _TrainingLoop:
    """The state of a stage-1 run between steps, and the steps that advance it.

    Holds the network and head (and their DDP wrappers), the optimizer, the prototype memory,
    the position in the data and the loss sums since the last metrics row: exactly what a
    checkpoint saves (`snapshot`) and a resume restores (`restore`).
    """

    def __init__(self, cfg, run, dataset, fingerprint, device, *, load_pretrained=True):
        self.cfg, self.folder, self.dataset, self.fingerprint = cfg, run, dataset, fingerprint
        self.device, self.world, self.main = device, distributed.world_size(), _is_main_process()
        net, head = build_model(cfg, dataset.num_classes, load_pretrained=load_pretrained)
        if self.world > 1:  # batch norm over the global batch (before the optimizer sees it)
            net = distributed.convert_batchnorm(net, device)
            head = distributed.convert_batchnorm(head, device)
        self.net, self.head = net.to(device).train(), head.to(device).train()
        if network_precision(cfg, device) == "bf16":  # NHWC, as batch_losses lays out images
            self.net = self.net.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(
            param_groups(self.net, self.head, cfg), lr=cfg.lr, momentum=cfg.momentum,
            weight_decay=0.0,
        )  # fmt: skip
        self.net_ddp, self.head_ddp = self.net, self.head
        if self.world > 1:  # gradients averaged across processes
            ids = [device.index] if device.type == "cuda" else None
            self.net_ddp = torch.nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
            self.head_ddp = torch.nn.parallel.DistributedDataParallel(self.head, device_ids=ids)
        self.memory = PrototypeMemory(
            cfg.memory_batches(self.world), affinity_threshold=cfg.affinity_threshold,
            keep_affinity=cfg.feature_affinity,
        )  # fmt: skip
        settings = cfg.relation_settings()
        self.columns = ["step", "lr", *settings, "total", "softmax_ce", "images_per_s"]
        self.sums = torch.zeros(len(settings) + 2, device=device)  # loss sums since last row
        self.step, self.epoch, self.index = 0, 0, 0
        self.window_steps, self.window_images = 0, 0
        self.last_saved = None  # step of the last good checkpoint

    def restore(self, state, path):
        """Continue from a checkpoint written by `snapshot` (`checkpoints.read_checkpoint`).

        Raises
        ------
        ValueError
            Naming `path` when its contents do not fit this run (before anything is written).
        """
        runs.load_weights(self.net, state["model"], path, "model", "network")
        runs.load_weights(self.head, state["head"], path, "head", "softmax head")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.memory.load_state_dict(checkpoints.to_device(state["memory"], self.device))
            checkpoints.set_rng_state(state["rng"])
        except (ValueError, RuntimeError, KeyError, TypeError, IndexError) as error:
            raise ValueError(f"{path}: cannot resume from it ({error})") from error
        self.step, self.epoch, self.index = (
            state["step"], state["data"]["epoch"], state["data"]["batch"]
        )  # fmt: skip
        self.sums = state["window"]["sums"].to(self.device)
        self.window_steps, self.window_images = state["window"]["steps"], state["window"]["images"]
        self.last_saved = self.step

    def snapshot(self):
        """Everything a resume needs, as checkpoint.pt stores it."""
        return {
            "step": self.step,
            "model": self.net.state_dict(),
            "head": self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "memory": self.memory.state_dict(),
            "rng": checkpoints.rng_state(),
            "data": {"epoch": self.epoch, "batch": self.index},
            "window": {"sums": self.sums, "steps": self.window_steps, "images": self.window_images},
            "config": self.cfg.to_dict(),
            "data_fingerprint": self.fingerprint,
        }

    def final(self):
        """Return what final.pt stores: the weights and what a prediction needs to read them."""
        return {
            "model": self.net.state_dict(),
            "head": self.head.state_dict(),
            "config": self.cfg.replace(resume=False).to_dict(),
            "num_classes": self.dataset.num_classes,
            "class_names": self.dataset.class_names,
            "step": self.step,
            "data_fingerprint": self.fingerprint,
        }

    def run(self):
        """Train until ``cfg.max_steps``, logging and checkpointing on the way."""
        cfg = self.cfg
        metrics = None  # only the main process writes metrics.csv
        if self.main:
            metrics = checkpoints.MetricsFile(
                self.folder / METRICS, self.columns, keep_until=self.step
            )
        bar = tqdm(
            total=cfg.max_steps, initial=self.step, disable=not (cfg.progress and self.main),
            desc="spml train",
        )  # fmt: skip
        batches = _batches(self.dataset, cfg, self.epoch, self.index, self.device)
        self.tic = time.perf_counter()
        try:
            while self.step < cfg.max_steps:
                self.epoch, self.index, batch = next(batches)
                lr = poly_lr(
                    self.step, cfg.lr, cfg.max_steps, warmup_steps=cfg.warmup_steps,
                    power=cfg.lr_power, policy=cfg.lr_policy,
                )  # fmt: skip
                for group in self.optimizer.param_groups:
                    group["lr"] = lr * group["lr_mult"]
                self.sums += train_step(
                    batch, self.net_ddp, self.head_ddp, self.optimizer, self.memory, cfg,
                    self.device, self.dataset.has_superpixels,
                )  # fmt: skip
                self.step, self.index = self.step + 1, self.index + 1
                self.window_steps += 1
                self.window_images += len(batch["image"]) * self.world
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    self._log_row(lr, bar, metrics)
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps:
                    self._checkpoint()
                bar.update(1)
        finally:
            batches.close()
            bar.close()

    def _average_window(self):
        if self.world > 1:  # each process holds its share of the global mean
            dist.all_reduce(self.sums)
            self.sums /= self.world

    def _log_row(self, lr, bar, metrics):
        """One metrics.csv row: the mean losses since the last row (the one read-back)."""
        self._average_window()
        means = (self.sums / self.window_steps).tolist()
        elapsed = time.perf_counter() - self.tic
        row = dict(zip(self.columns[2:-1], means, strict=True))
        first = self.step - self.window_steps
        bad = [name for name, value in row.items() if not math.isfinite(value)]
        _stop_if_not_finite(bad, first, self.step, self.folder, self.last_saved)
        bar.set_postfix({SHORT[k]: f"{v:.3f}" for k, v in row.items()}, refresh=False)
        row.update(step=self.step, lr=lr, images_per_s=f"{self.window_images / elapsed:.2f}")
        if metrics is not None:
            metrics.append(row)
        self.sums.zero_()
        self.window_steps, self.window_images, self.tic = 0, 0, time.perf_counter()

    def stop_if_not_finite(self, state):
        """Raise FloatingPointError if a tensor of `state` (to be saved) holds inf or NaN.

        Every floating-point tensor counts: parameters and buffers (batch-norm statistics) of
        the network and head, optimizer momenta, memory prototypes, the loss window. A diverged
        batch-norm variance leaves losses and parameters finite but makes every prediction
        background, so checking parameters alone is not enough.
        """
        bad = checkpoints.non_finite(state)
        if self.world > 1:  # every process stops together, or the others wait forever
            count = torch.tensor([len(bad)], device=self.device)
            dist.all_reduce(count)
            if count.item() and not bad:
                bad = ["the tensors of another process"]
        first = min(self.last_saved or 0, self.step - 1)  # after the last good checkpoint
        _stop_if_not_finite(bad, first, self.step, self.folder, self.last_saved)

    def _checkpoint(self):
        """Write checkpoint.pt, unless a tensor in it turned non-finite (then stop)."""
        self._average_window()  # every process resumes from the same (averaged) window
        state = self.snapshot()
        self.stop_if_not_finite(state)
        if self.main:
            save_checkpoint(state, self.folder / CHECKPOINT)
        self.last_saved = self.step
