"""Data-parallel training across processes: the pieces that make N processes act as one batch.

``torchrun --nproc-per-node N -m spml_lab.cli train ...`` starts N processes; each one loads
``batch_size`` images of the global batch of ``N * batch_size``. For the result to be the run a
single process would make with the whole batch, three things are shared:

* **Segments.** Each process clusters its own images (k-means is per image anyway), then the
  prototypes, labels, tags and image ids of every process are gathered, so a pixel's positives
  and negatives come from the global batch, as in the paper's multi-GPU runs. The gather is
  differentiable: the gradient a pixel of process A sends to a prototype of process B reaches
  B's network.
* **Loss normalisation.** Each relation's loss is a mean over the labelled pixels of the global
  batch: a process returns ``N * (its pixel loss sum) / (global labelled count)``, and
  DistributedDataParallel's gradient average turns the N terms back into the global mean.
* **Batch statistics.** Batch norm uses the statistics of the global batch: `torch.nn.SyncBatchNorm`
  on CUDA, `GlobalBatchNorm2d` (all-reduced sums, differentiable) where SyncBatchNorm has no
  kernel (the CPU, with the gloo backend, as in the tests).

Everything here is a no-op in a single process.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from spml_lab.devices import DEFAULT, resolve_device

__all__ = [
    "world_size",
    "rank",
    "is_distributed",
    "setup",
    "GlobalBatchNorm2d",
    "convert_batchnorm",
    "gather_segments",
    "global_mean",
]


def is_distributed():
    """Tell whether a process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size():
    """Return the number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank():
    """Return this process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def setup(device_name=DEFAULT):
    """Join the process group that ``torchrun`` describes, and pick this process's device.

    Parameters
    ----------
    device_name : str, optional
        ``TrainConfig.device``, resolved by `devices.resolve_device`; a CUDA device becomes
        GPU ``LOCAL_RANK``.

    Returns
    -------
    device : torch.device or None
        The device of this process under torchrun, or None when not launched by torchrun
        (``WORLD_SIZE`` unset or 1): the caller picks the device as usual.

    Notes
    -----
    The backend is NCCL on CUDA and gloo on the CPU. A group that is already initialised (a
    test that set one up itself) is used as it is.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    device = resolve_device(device_name, argument="TrainConfig.device")
    use_cuda = device.type == "cuda"
    if use_cuda:  # one GPU per process: torchrun's local rank picks it
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return device


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes, differentiable.

    Every process's output is the same sum, so the gradient of each input is the sum of every
    process's output gradient (one all-reduce again). Written here because
    torch.distributed.nn's version warns of deprecation.
    """

    @staticmethod
    def forward(ctx, tensor):
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _AllGather(torch.autograd.Function):
    """Stack every process's (equal-shaped) tensor, differentiable.

    The gradient of this process's input is its slice of the summed output gradients.
    """

    @staticmethod
    def forward(ctx, tensor):
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)  # (world, ...)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)  # gloo has no reduce-scatter: all-reduce, keep our slice
        return grad[dist.get_rank()]


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """Batch norm over the images of every process, for backends without SyncBatchNorm.

    The per-channel sums of ``x`` and ``x**2`` and the pixel count are all-reduced
    (differentiably), so the forward pass and its gradient are those of one BatchNorm2d over
    the global batch. Running statistics get the unbiased global variance, as BatchNorm2d's do.
    Outside training, or in a single process, it is a plain BatchNorm2d.
    """

    def forward(self, x):  # noqa: D102  (BatchNorm2d's)
        if not (self.training and is_distributed()):
            return super().forward(x)
        dims = (0, 2, 3)
        count = torch.tensor(
            float(x.shape[0] * x.shape[2] * x.shape[3]), device=x.device, dtype=torch.float32
        )
        stats = torch.cat([x.float().sum(dims), (x.float() ** 2).sum(dims), count[None]])
        stats = _AllReduceSum.apply(stats)  # (2C + 1,), gradient flows back to every process
        channels = x.shape[1]
        total = stats[-1]
        mean = stats[:channels] / total
        var = (stats[channels : 2 * channels] / total - mean**2).clamp(min=0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 0.1 if self.momentum is None else self.momentum
                unbiased = var * total / (total - 1).clamp(min=1.0)
                self.running_mean.lerp_(mean.to(self.running_mean), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var), momentum)
        shape = (1, channels, 1, 1)
        out = (x.float() - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def convert_batchnorm(module, device):
    """Replace every BatchNorm2d of `module` by its global-batch version for `device`.

    SyncBatchNorm on CUDA (its fused kernels), `GlobalBatchNorm2d` elsewhere. Weights, biases
    and running statistics are kept. Returns the converted module.
    """
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, GlobalBatchNorm2d):
            new = GlobalBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine,
                child.track_running_stats,
            )  # fmt: skip
            new.load_state_dict(child.state_dict())
            new.to(device=child.weight.device if child.affine else device)
            setattr(module, name, new)
        else:
            convert_batchnorm(child, device)
    return module


def _gather_rows(tensor, counts, differentiable=False):
    """Concatenate every process's `tensor` rows (counts[r] rows on process r), in rank order."""
    most = max(counts)
    dtype = tensor.dtype
    if dtype == torch.bool:  # gloo has no bool collectives
        tensor = tensor.to(torch.uint8)
    padded = F.pad(tensor, (0, 0) * (tensor.ndim - 1) + (0, most - tensor.shape[0]))
    if differentiable:
        parts = _AllGather.apply(padded)
    else:
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)]).to(dtype)


def gather_segments(segments):
    """Join the segments of every process into those of the global batch.

    Parameters
    ----------
    segments : clustering.Segments
        This process's segments (image ids 0 .. B-1, ``segment_ids`` into its own rows).

    Returns
    -------
    segments : clustering.Segments
        Rows of every process in rank order (a single process's rows in the same order);
        image ids offset by ``rank * B``; ``segment_ids`` offset to this process's rows in the
        joined table; ``first_image`` = ``rank * B`` and ``num_images`` = ``world * B``.
        Prototypes are gathered differentiably. In a single process `segments` unchanged.

    Notes
    -----
    The segment counts differ between processes, so they are exchanged first: one small
    collective whose values are read back (a host sync on CUDA, like the data-dependent
    segment count itself).
    """
    if not is_distributed():
        return segments
    local = segments.num_segments
    device = segments.prototypes.device
    sizes = torch.tensor([local], device=device)
    all_sizes = [torch.empty_like(sizes) for _ in range(world_size())]
    dist.all_gather(all_sizes, sizes)
    counts = [int(s) for s in torch.cat(all_sizes).tolist()]
    images = segments.segment_ids.shape[0]
    first_row = sum(counts[: rank()])
    first_image = rank() * images  # every process loads batch_size images

    def rows(value, differentiable=False):
        return None if value is None else _gather_rows(value, counts, differentiable)

    return dataclasses.replace(
        segments,
        segment_ids=torch.where(
            segments.segment_ids >= 0, segments.segment_ids + first_row, segments.segment_ids
        ),
        prototypes=rows(segments.prototypes, differentiable=True),
        labels=rows(segments.labels),
        image_ids=rows(segments.image_ids + first_image),
        superpixels=rows(segments.superpixels),
        clusters=rows(segments.clusters),
        sizes=rows(segments.sizes),
        tags=rows(segments.tags),
        first_image=first_image,
        num_images=images * world_size(),
    )


def global_mean(local_sum, local_count):
    """Return this process's share of a global-batch mean, scaled for DDP's gradient average.

    Parameters
    ----------
    local_sum : () float tensor
        Sum of the per-pixel losses of this process (differentiable).
    local_count : () tensor
        Number of pixels that count, on this process.

    Returns
    -------
    share : () float tensor
        ``world * local_sum / global_count``: its average over processes (what DDP's gradient
        and the logged value take) is the global mean. In a single process
        ``local_sum / local_count``, 0 when nothing counts.
    """
    count = local_count.detach().to(local_sum.dtype).reshape(1)
    if is_distributed():
        dist.all_reduce(count)
    return world_size() * local_sum / count[0].clamp(min=1.0)
