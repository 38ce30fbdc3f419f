"""How hard is the embedded data? Full masks vs point labels with plain partial cross-entropy.

The synthetic scenes must leave room for SPML: a segmenter trained on point labels alone with
partial cross-entropy (the weak-label baseline) should stay clearly below the same network trained
on full masks. This trains both (same network, same budget) and writes a CSV row per setting.

    python benchmarks/difficulty.py                    # 2,000 train / 500 val, ~10 min on 2 cores
    python benchmarks/difficulty.py --train 200 --val 50 --steps 100   # smoke run
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spml_lab.constants import IGNORE_INDEX
from spml_lab.data import annotations, synthetic
from spml_lab.nets.embedding_nets import SmallEmbeddingNet, embed
from spml_lab.nets.heads import SoftmaxHead
from spml_lab.prediction import metrics


def weak_point_labels(scenes, seed):
    return np.stack(
        [
            annotations.weak_labels(s, i, "points", seed=seed + k)
            for k, (s, i) in enumerate(zip(scenes.semantic, scenes.instance, strict=True))
        ]
    )


def train_and_score(images, labels, val_images, val_semantic, num_classes, steps, batch, seed):
    torch.manual_seed(seed)
    net, head = SmallEmbeddingNet(32, 64), SoftmaxHead(32, num_classes)
    params = list(net.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (1 - s / steps) ** 0.9)
    rng = np.random.default_rng(seed)
    size = images.shape[-2:]
    for step in range(steps):
        pick = torch.from_numpy(rng.choice(len(images), batch, replace=False))
        x, y = images[pick], labels[pick]
        flip = torch.from_numpy(rng.random(batch) < 0.5)
        x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
        loss = F.cross_entropy(
            head(net(x).permute(0, 2, 3, 1), size=size), y, ignore_index=IGNORE_INDEX
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 250 == 0 or step == steps - 1:
            print(f"  step {step:5d}  loss {loss.item():.3f}", flush=True)
    net.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    with torch.no_grad():
        for start in range(0, len(val_images), 64):
            x = val_images[start : start + 64]
            pred = head(embed(net, x), size=size).argmax(1)
            confusion += metrics.confusion_matrix(
                pred, val_semantic[start : start + 64], num_classes
            )
    return metrics.mean_iou(confusion)[0]


def to_tensor(images):
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="objects")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--difficulty", type=float, nargs="*", default=[None])
    parser.add_argument("--out", default="benchmarks/results/difficulty.csv")
    args = parser.parse_args()
    rows = []
    for difficulty in args.difficulty:
        options = {} if difficulty is None else {"difficulty": difficulty}
        train = synthetic.generate(args.train, kind=args.kind, seed=0, **options)
        val = synthetic.generate(args.val, kind=args.kind, seed=1, **options)
        num_classes = len(train.class_names)
        images, val_images = to_tensor(train.images), to_tensor(val.images)
        val_semantic = torch.from_numpy(val.semantic).long()
        supervision = {
            "full masks": torch.from_numpy(train.semantic).long(),
            "points": torch.from_numpy(weak_point_labels(train, seed=0)).long(),
        }
        for name, labels in supervision.items():
            start = time.perf_counter()
            miou = train_and_score(
                images, labels, val_images, val_semantic, num_classes, args.steps, args.batch, 0
            )
            row = {
                "kind": args.kind,
                "difficulty": "default" if difficulty is None else difficulty,
                "supervision": name,
                "labelled_fraction": float((labels != IGNORE_INDEX).float().mean()),
                "val_miou": round(miou, 4),
                "seconds": round(time.perf_counter() - start, 1),
            }
            print(row, flush=True)
            rows.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
