"""Where an SPML training step's time goes: the network, the segments, each relation, the rest.

`train_speed.py` times the whole step against the network alone; this script splits the
difference. On the same inputs, model and memory as ``train_speed.py --preset cpu`` (the
reduced accuracy benchmark's step: batch 8 of 96 px, width 32, the scribble run's three
relations, 24 contrast images), one thread, it times per step:

* ``network alone``: `train_speed.network_step` (forward, head cross-entropy, backward, SGD);
* ``full step``: the trainer's `train.train_step`;
* ``segments``: spherical k-means and the splits of the batch (`clustering.segment_batch`) on
  the step's embedding;
* one row per relation: its loss (`relations.spml_loss` with that relation alone, against
  the same memory) forward and backward to the embedding, through the segments' means;
* ``memory push``: `PrototypeMemory.push` of the batch's segments.

``rest`` is the full step minus the network alone and these parts: the maps at embedding size,
the weighted sum and the head, less what the two steps do differently. It can be negative: in
the full step the head reads a detached embedding, so its cross-entropy's backward stops at the
head, while the network-alone step sends it through the whole network.

Timing: the process's CPU time (``time.process_time``; other jobs on a shared machine stretch
the wall clock, not this), the median over the timed steps, after warm-up steps that also fill
the memory. Writes ``benchmarks/results/step_parts_cpu.csv``; ``python benchmarks/tables.py``
makes docs/gpu.md's table from it.

    python benchmarks/step_parts.py                 # 20 timed steps, 1 thread
    python benchmarks/step_parts.py --steps 2 --warmup 1 --no-write   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import bench_runs
import torch
import train_speed

from spml_lab.method import clustering, relations
from spml_lab.method.label_maps import step_maps
from spml_lab.method.memory import PrototypeMemory
from spml_lab.training import train

RESULTS = Path(__file__).resolve().parent / "results"


def time_parts(cfg, *, steps, warmup, num_batches=4):
    """Median CPU seconds of each part of the step (see the module notes), by part name."""
    device = torch.device("cpu")
    batches, num_classes = train_speed.make_batches(cfg, num_batches, device)
    net, head, optimizer, memory = train_speed.make_trainables(cfg, num_classes, device, "fp32")
    settings = cfg.relation_settings()
    seconds = {}

    def timed(name, work, *args, **kwargs):
        start = time.process_time()
        out = work(*args, **kwargs)
        seconds.setdefault(name, []).append(time.process_time() - start)
        return out

    def relation_loss(name, rows, labels, tags, segments):
        loss = relations.spml_loss(
            rows, labels, tags, segments, memory, settings={name: settings[name]},
            affinity_threshold=cfg.affinity_threshold,
            location_weight=cfg.low_level_location_weight,
        )[name]  # fmt: skip
        loss.backward(retain_graph=True)  # the segments' graph serves every relation

    for k in range(warmup + steps):
        batch = batches[k % num_batches]
        if k == warmup:
            seconds.clear()  # the warm-up steps also filled the memory
        timed("network alone", train_speed.network_step, batch, net, head, optimizer, cfg,
              device, "fp32")  # fmt: skip
        with torch.no_grad():
            emb = net(batch["image"]).float()  # (B, D, h, w): the step's embedding, as data
        rows = emb.permute(0, 2, 3, 1).requires_grad_()  # (B, h, w, D)
        labels, superpixels, valid = step_maps(batch, tuple(emb.shape[-2:]), device=device)
        segments = timed("segments", clustering.segment_batch, rows, superpixels, labels,
                         cfg.kmeans_grid, cfg.kmeans_iterations, tags=batch["tags"],
                         valid=valid)  # fmt: skip
        for name in settings:
            timed(name, relation_loss, name, rows, labels, batch["tags"], segments)
        timed("full step", train.train_step, batch, net, head, optimizer, memory, cfg, device)
        # the push is part of the full step; timed again on its own, into a scratch memory
        scratch = PrototypeMemory(cfg.memory_batches(), affinity_threshold=cfg.affinity_threshold,
                                  keep_affinity=cfg.feature_affinity)  # fmt: skip
        timed("memory push", scratch.push, segments)
    return {name: statistics.median(values) for name, values in seconds.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = train_speed.make_config("cpu", train_speed.PRESETS["cpu"]["batch_sizes"][0])
    load = os.getloadavg()[0]
    median = time_parts(cfg, steps=args.steps, warmup=args.warmup)
    full, alone = median["full step"], median["network alone"]
    parts = [n for n in median if n not in ("full step", "network alone")]
    median["rest"] = full - alone - sum(median[n] for n in parts)
    rows = []
    for name in ("network alone", *parts, "rest", "full step"):
        rows.append({
            "part": name, "median_ms": round(1000 * median[name], 2),
            "share_of_full": round(median[name] / full, 3), "model": cfg.model,
            "crop": cfg.crop_size, "batch": cfg.batch_size, "threads": torch.get_num_threads(),
            "steps": args.steps, "clock": "cpu time", "load_before": round(load, 2),
            "load_after": round(os.getloadavg()[0], 2),
        })  # fmt: skip
        print(f"{name:>22}: {1000 * median[name]:7.1f} ms  {median[name] / full:6.1%}")
    print(f"network alone / full step = {alone / full:.1%}")
    if not args.no_write:
        bench_runs.write_csv(args.out / "step_parts_cpu.csv", rows)
        print(f"wrote {args.out / 'step_parts_cpu.csv'}")


if __name__ == "__main__":
    main()
