"""Worker for tests/test_distributed.py: one process of a 2-process gloo group (torchrun).

``python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_worker.py OUT``
computes the SPML loss of its half of a fixed global batch, with the segments of both processes
joined, and saves its losses and embedding gradient to ``OUT/rank{r}.pt``. The test computes the
same batch in one process and compares. `global_batch` is shared by both sides.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from spml_lab.data import datasets
from spml_lab.method import clustering, distributed, relations
from spml_lab.method.memory import PrototypeMemory
from spml_lab.training.train import downsample_nearest

GRID, ITERATIONS, SIDE, DIM = (3, 3), 5, 16, 8


def global_batch(seed, num_images=4):
    """Smooth random unit embeddings (B, h, w, D) with the labels, superpixels and tags of the
    embedded scribble samples at (h, w)."""
    data = datasets.embedded("objects", "train", "scribbles")
    items = [data[seed * num_images + b] for b in range(num_images)]
    labels = torch.stack([item["label"] for item in items])
    superpixels = torch.stack([item["superpixel"] for item in items])
    tags = torch.stack([item["tags"] for item in items])
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(num_images, DIM, SIDE // 2, SIDE // 2, generator=g, dtype=torch.float64)
    emb = F.interpolate(noise, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    emb = F.normalize(emb, dim=1).permute(0, 2, 3, 1).contiguous()  # (B, h, w, D)
    small = (SIDE, SIDE)
    return emb, downsample_nearest(labels, small), downsample_nearest(superpixels, small), tags


def step_losses(emb, labels, superpixels, tags, memory):
    """Segments (joined across processes when a group runs), the losses, memory push."""
    segments = clustering.segment_batch(emb, superpixels, labels, GRID, ITERATIONS, tags=tags)
    segments = distributed.gather_segments(segments)
    out = relations.spml_loss(
        emb, labels, tags, segments, memory, settings=relations.PAPER_SETTINGS
    )
    memory.push(segments)
    return out


def main(out_dir):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    memory = PrototypeMemory(2)
    for seed in (0, 1, 2):  # two batches fill the memory, the third is the one compared
        emb, labels, superpixels, tags = global_batch(seed)
        half = slice(rank * 2, rank * 2 + 2)
        local = emb[half].clone().requires_grad_()
        out = step_losses(local, labels[half], superpixels[half], tags[half], memory)
    out["total"].backward()
    losses = {}
    for name, value in out.items():
        value = value.detach().clone()
        dist.all_reduce(value)  # each process holds its share; their mean is the global loss
        losses[name] = value / world
    # each process's total is world x its share: DDP's gradient average divides by world
    torch.save({"losses": losses, "grad": local.grad / world}, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
