"""Speed of one SPML contrastive step against a per-image, per-relation loop.

One step is what training does after the network: spherical k-means segments of the batch,
the enabled relations with the prototype memory, their weighted loss, and its backward pass.
The library does it for the whole batch at once (`clustering.segment_batch`,
`relations.spml_loss`); the loop below does it the way the paper's reference code is shaped:
for each image, k-means on that image alone and its segments by ``torch.unique``; then for each
relation and each image, a dense ``pixels x prototypes`` similarity matrix with explicit
positive and negative masks, autograd for the backward pass, and the memory as a list of the
earlier batches' fields. The loop exists only here, as the yardstick (and, through
``tests/method/test_contrastive_reference.py``, as an independent check of the library's loss).

Inputs: 4 crops of 128 x 128 or 512 x 512 pixels, embeddings of dimension 64 at 1/4 resolution
(32 x 32 and 128 x 128 maps, as the paper's network gives), smooth random unit embeddings,
superpixels, scribbles and tags of the embedded samples (``datasets.embedded("objects",
"train", "scribbles")``) resized by nearest neighbour, a memory of 2 earlier batches. Two
relation sets: the scribble run (low-level, semantic annotation, co-occurrence; kappa and
weights from `relations.PAPER_SETTINGS`) and all four relations.

    python benchmarks/contrastive_speed.py                    # CPU, 1 thread, CSV + PNG
    python benchmarks/contrastive_speed.py --device cuda      # on a GPU
    python benchmarks/contrastive_speed.py --crops 128 --repeats 3 --profile
    python benchmarks/contrastive_speed.py --crops 512 --append   # re-measure one crop size

Timing: warm-up runs, then the median of N runs, the library's and the loop's in alternation
so that both see the same background load (the loop gets fewer runs at 512 x 512, where one
takes many seconds); on the CPU the process's CPU time (`clock`), elsewhere the wall clock.
Writes ``benchmarks/results/contrastive_speed.{csv,png}`` (CPU) or
``contrastive_speed_cuda.{csv,png}``; ``python benchmarks/tables.py`` makes docs/gpu.md's
table from the CPU CSV. Target: the library >= 10x faster than the loop on CPU (at 512 px),
with the same total and per-relation losses to 1e-5.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from spml_lab.constants import IGNORE_INDEX
from spml_lab.data import datasets
from spml_lab.method import clustering, relations
from spml_lab.method.memory import PrototypeMemory

GRID = (5, 5)  # initial k-means grid (gy, gx)
ITERATIONS = 10  # k-means rounds
DIM = 64  # embedding dimension
BATCH = 4  # images per batch
MEMORY_BATCHES = 2  # earlier batches in the memory
STRIDE = 4  # embedding map = crop / 4
AFFINITY_THRESHOLD = 0.95
CONFIGS = {
    "scribble": ("low_level", "semantic_annotation", "cooccurrence"),
    "all": relations.RELATIONS,
}
RESULTS = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------------- inputs
def make_batches(crop, *, num_batches=1 + MEMORY_BATCHES, device="cpu", seed=0):
    """Batches of embeddings, superpixels, scribbles and tags at the embedding resolution.

    Returns a list of dicts with ``embeddings`` (B, h, w, D) float32 unit rows, ``superpixels``
    and ``labels`` (B, h, w) int64 and ``tags`` (B, C) bool, where ``h = w = crop / 4``.
    Batch 0 is the current one; the others fill the memory.
    """
    data = datasets.embedded("objects", "train", "scribbles")
    side = crop // STRIDE
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for k in range(num_batches):
        items = [data[(k * BATCH + b) % len(data)] for b in range(BATCH)]

        def resized(key, items=items):
            maps = torch.stack([item[key] for item in items])[:, None].float()  # (B, 1, H, W)
            # nearest to the crop, then to the 1/4 embedding grid, as the labels of a crop are
            # resized to the network's output (nearest keeps ids and labels exact)
            maps = F.interpolate(maps, size=(crop, crop), mode="nearest")
            return F.interpolate(maps, size=(side, side), mode="nearest")[:, 0].long()

        # smooth random embeddings: a coarse random field upsampled, plus a little pixel noise,
        # so that k-means finds coherent regions as it does on a network's output
        coarse = torch.randn(BATCH, DIM, max(side // 8, 2), max(side // 8, 2), generator=generator)
        field = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
        field = field + 0.3 * torch.randn(field.shape, generator=generator)
        embeddings = F.normalize(field, dim=1).permute(0, 2, 3, 1).contiguous()
        batches.append(
            {
                "embeddings": embeddings.to(device),
                "superpixels": resized("superpixel").to(device),
                "labels": resized("label").to(device),
                "tags": torch.stack([item["tags"] for item in items]).to(device),
            }
        )
    return batches


def settings_for(config):
    """Return the `PAPER_SETTINGS` of the relations in `config` ("scribble" or "all")."""
    return {name: relations.PAPER_SETTINGS[name] for name in CONFIGS[config]}


# --------------------------------------------------------------------------------- library
def library_memory(batches):
    """Build a `PrototypeMemory` holding the segments of the earlier batches (``batches[1:]``)."""
    memory = PrototypeMemory(MEMORY_BATCHES, affinity_threshold=AFFINITY_THRESHOLD)
    for batch in reversed(batches[1:]):  # oldest first
        segments = clustering.segment_batch(
            batch["embeddings"],
            batch["superpixels"],
            batch["labels"],
            GRID,
            ITERATIONS,
            tags=batch["tags"],
        )
        memory.push(segments)
    return memory


def library_step(embeddings, batch, memory, settings):
    """Segments, relations and loss of one batch by the library; returns the loss dict."""
    segments = clustering.segment_batch(
        embeddings, batch["superpixels"], batch["labels"], GRID, ITERATIONS, tags=batch["tags"]
    )
    return relations.spml_loss(
        embeddings,
        batch["labels"],
        batch["tags"],
        segments,
        memory,
        settings=settings,
        affinity_threshold=AFFINITY_THRESHOLD,
    )


# --------------------------------------------------------------------------------- the loop
def loop_kmeans(features, init, num_clusters, iterations):
    """Spherical k-means of one image: features (N, D) unit rows, init (N,) ids."""
    labels = init
    for _ in range(iterations):
        sums = features.new_zeros(num_clusters, features.shape[1])
        prototypes = F.normalize(sums.index_add_(0, labels, features), dim=1)
        labels = (features @ prototypes.T).argmax(1)
    return labels


def loop_image_segments(embeddings, clusters, superpixels, labels):
    """Segments of one image: (N, D) embeddings and (N,) ids -> dict of per-segment fields."""
    code = torch.where(labels == IGNORE_INDEX, 0, labels + 1)
    k_sp, k_code = int(superpixels.max()) + 1, int(code.max()) + 1
    key = (clusters * k_sp + superpixels) * k_code + code
    unique, inverse = torch.unique(key, return_inverse=True)
    sums = embeddings.new_zeros(len(unique), embeddings.shape[1]).index_add(0, inverse, embeddings)
    seg_code = unique % k_code
    return {
        "ids": inverse,
        "prototypes": F.normalize(sums, dim=1),
        "labels": torch.where(seg_code == 0, IGNORE_INDEX, seg_code - 1),
        "superpixels": (unique // k_code) % k_sp,
    }


def loop_affinity_labels(prototypes, labels):
    """Affinity labels of one image's segments: own label, or the nearest labelled one's."""
    labelled = labels != IGNORE_INDEX
    out = labels.clone()
    if labelled.any():
        similarity = prototypes.detach() @ prototypes.detach()[labelled].T  # (S, L)
        best, nearest = similarity.max(1)
        borrowed = torch.where(best >= AFFINITY_THRESHOLD, labels[labelled][nearest], IGNORE_INDEX)
        out = torch.where(labelled, labels, borrowed)
    return out


def loop_segments(batch, embeddings, clusters=None):
    """Per-image k-means (unless `clusters` (B, N) is given) and segments: list of dicts."""
    num_images, height, width, dim = embeddings.shape
    y = torch.linspace(0, GRID[0] - 1, height, dtype=torch.float64).round().long()
    x = torch.linspace(0, GRID[1] - 1, width, dtype=torch.float64).round().long()
    init = (y[:, None] + GRID[0] * x[None, :]).reshape(-1).to(embeddings.device)
    grid = {"dtype": embeddings.dtype, "device": embeddings.device}
    yy = torch.linspace(0, 1, height, **grid) - 0.5
    xx = torch.linspace(0, 1, width, **grid) - 0.5
    location = torch.stack(torch.meshgrid(yy, xx, indexing="ij"), -1).reshape(-1, 2)
    images = []
    for b in range(num_images):
        v = embeddings[b].reshape(-1, dim)
        if clusters is None:
            features = F.normalize(torch.cat([v.detach(), location], 1), dim=1)
            with torch.no_grad():
                own_clusters = loop_kmeans(features, init, GRID[0] * GRID[1], ITERATIONS)
        else:
            own_clusters = clusters[b]
        segs = loop_image_segments(
            v, own_clusters, batch["superpixels"][b].reshape(-1), batch["labels"][b].reshape(-1)
        )
        segs["clusters"] = own_clusters
        segs["affinity"] = loop_affinity_labels(segs["prototypes"], segs["labels"])
        segs["tags"] = batch["tags"][b].bool()
        images.append(segs)
    return images


def dense_loss(v, own, same, u, kappa, takes_part=None):
    """Sum over pixels of ``-log(pos / (pos + neg))`` from dense (p, S) masks.

    v (p, D) pixels, own (p,) their own segment's column, same (p, S) bool, u (S, D) prototypes,
    takes_part (p, S) bool: prototypes that are positive or negative for the pixel (default
    all). Positives: same except own, else own alone; negatives: taking part and not same.
    """
    logits = kappa * (v @ u.T)  # (p, S)
    own_mask = F.one_hot(own, u.shape[0]).bool()
    if takes_part is None:
        takes_part = torch.ones_like(same)
    positive = same & takes_part & ~own_mask
    negative = takes_part & ~same
    positive = torch.where(positive.any(1, keepdim=True), positive, own_mask)
    log_pos = torch.logsumexp(logits.masked_fill(~positive, float("-inf")), 1)
    log_all = torch.logsumexp(logits.masked_fill(~(positive | negative), float("-inf")), 1)
    return (log_all - log_pos).sum()


def loop_losses(batch, embeddings, memory, settings, clusters=None):
    """Run the loop's step: per-image segments, then each relation image by image.

    `memory` is a list (oldest first) of dicts with ``prototypes``, ``labels``, ``tags`` and
    ``affinity`` of earlier batches. Returns the loss dict (as `relations.spml_loss`) and the
    per-image segments.
    """
    images = loop_segments(batch, embeddings, clusters)
    num_images, height, width, dim = embeddings.shape
    yy = torch.linspace(0, 1, height, dtype=embeddings.dtype, device=embeddings.device) - 0.5
    xx = torch.linspace(0, 1, width, dtype=embeddings.dtype, device=embeddings.device) - 0.5
    location = torch.stack(torch.meshgrid(yy, xx, indexing="ij"), -1).reshape(-1, 2)
    pixels = [embeddings[b].reshape(-1, dim) for b in range(len(images))]
    # batch + memory prototypes and their fields, as the paper's code concatenates its lists
    everything = images + list(memory)
    protos = torch.cat([seg["prototypes"] for seg in everything])
    proto_labels = torch.cat([seg["labels"] for seg in everything])
    proto_affinity = torch.cat([seg["affinity"] for seg in everything])
    proto_tags = torch.cat(
        [seg["tags"][None, 1:].expand(len(seg["labels"]), -1) for seg in images]
        + [seg["tags"][:, 1:] for seg in memory]
    ).float()
    starts = torch.tensor([0] + [len(seg["labels"]) for seg in images]).cumsum(0).tolist()
    out = {}
    total = embeddings.new_zeros(())
    for name in relations.RELATIONS:
        if name not in settings:
            continue
        kappa = settings[name].concentration
        loss_sum, count = embeddings.new_zeros(()), 0
        for b, seg in enumerate(images):
            v, own = pixels[b], seg["ids"]
            if name == "low_level":  # the image's own segments, on [v, location]: a mean per image
                f = F.normalize(torch.cat([v, location.to(v)], 1), dim=1)
                u = F.normalize(f.new_zeros(len(seg["labels"]), f.shape[1]).index_add(0, own, f))
                same = seg["superpixels"][own][:, None] == seg["superpixels"][None, :]
                loss_sum = loss_sum + dense_loss(f, own, same, u, kappa) / len(v)
                count += 1
            elif name == "cooccurrence":
                tags = seg["tags"][1:].float()
                if not tags.any():
                    continue
                pixel_tags = tags[None, :].expand(len(v), -1)  # (p, C - 1)
                same = (pixel_tags @ proto_tags.T) > 0  # (p, S): share a foreground tag
                loss_sum = loss_sum + dense_loss(v, own + starts[b], same, protos, kappa)
                count += len(v)
            else:  # semantic annotation / feature affinity: labelled pixels and prototypes
                all_labels = proto_labels if name == "semantic_annotation" else proto_affinity
                own_labels = seg["labels"] if name == "semantic_annotation" else seg["affinity"]
                pixel_labels = own_labels[own]
                keep = pixel_labels != IGNORE_INDEX
                if not keep.any():
                    continue
                labelled = all_labels != IGNORE_INDEX
                new_index = labelled.long().cumsum(0) - 1  # column among labelled prototypes
                same = pixel_labels[keep][:, None] == all_labels[labelled][None, :]
                own_col = new_index[own[keep] + starts[b]]
                loss_sum = loss_sum + dense_loss(v[keep], own_col, same, protos[labelled], kappa)
                count += int(keep.sum())
        out[name] = loss_sum / max(count, 1)
        total = total + settings[name].weight * out[name]
    out["total"] = total
    return out, images


def loop_memory(batches):
    """Build the memory as the loop keeps it: a list of earlier batches' per-image fields."""
    memory = []
    for batch in reversed(batches[1:]):  # oldest first
        for seg in loop_segments(batch, batch["embeddings"]):
            memory.append(
                {
                    "prototypes": seg["prototypes"].detach(),
                    "labels": seg["labels"],
                    "affinity": seg["affinity"],
                    "tags": seg["tags"][None, :].expand(len(seg["labels"]), -1),
                }
            )
    return memory


# --------------------------------------------------------------------------------- timing
def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def clock(device):
    """Return the timer of `device`: the process's CPU time on the CPU, else the wall clock.

    On a shared machine other jobs stretch the wall clock of whatever runs beside them; the
    CPU time counts this process's work only.
    """
    return time.process_time if torch.device(device).type == "cpu" else time.perf_counter


def timed(step, repeats, warmup, device):
    """Median seconds of ``step()`` over `repeats` runs after `warmup` runs; and all runs."""
    for _ in range(warmup):
        step()
    seconds = []
    now = clock(device)
    for _ in range(repeats):
        synchronize(device)
        start = now()
        step()
        synchronize(device)
        seconds.append(now() - start)
    return statistics.median(seconds), seconds


def timed_pair(steps, repeats, warmup, device):
    """Time several steps in alternation, so that they share whatever else loads the machine.

    `steps` and `repeats` are parallel lists; round r runs every step that still has runs
    left. Returns a list of (median, all runs) as `timed`.
    """
    for step in steps:
        for _ in range(warmup):
            step()
    seconds = [[] for _ in steps]
    for round_ in range(max(repeats)):
        for step, want, out in zip(steps, repeats, seconds, strict=True):
            if round_ < want:
                out.append(timed(step, 1, 0, device)[0])
    return [(statistics.median(s), s) for s in seconds]


def forward_backward(step_fn, embeddings):
    """Make a step closure: losses of a fresh leaf copy of `embeddings`, then backward."""

    def step():
        leaf = embeddings.detach().clone().requires_grad_()
        out = step_fn(leaf)
        out["total"].backward()
        return out, leaf.grad

    return step


def compare(batch, lib_memory, loop_mem, settings):
    """Losses, gradients and clusters of the library against the loop on one batch."""
    lib_out, lib_grad = forward_backward(
        lambda e: library_step(e, batch, lib_memory, settings), batch["embeddings"]
    )()
    captured = {}

    def loop_fn(e, clusters=None):
        out, images = loop_losses(batch, e, loop_mem, settings, clusters)
        captured["clusters"] = torch.stack([seg["clusters"] for seg in images])
        return out

    loop_out, loop_grad = forward_backward(loop_fn, batch["embeddings"])()
    with torch.no_grad():
        segments = clustering.segment_batch(
            batch["embeddings"], batch["superpixels"], batch["labels"], GRID, ITERATIONS
        )
        lib_clusters = segments.clusters[segments.segment_ids].reshape(
            len(segments.segment_ids), -1
        )
    differing = int((lib_clusters != captured["clusters"]).sum())
    if differing:  # k-means near-ties went another way: compare the loss on shared clusters
        loop_out, loop_grad = forward_backward(
            lambda e: loop_fn(e, lib_clusters), batch["embeddings"]
        )()
    lib_out = {name: float(value.detach()) for name, value in lib_out.items()}
    loop_out = {name: float(value.detach()) for name, value in loop_out.items()}
    return {
        "lib": lib_out,
        "loop": loop_out,
        "max_loss_diff": max(abs(lib_out[name] - loop_out[name]) for name in lib_out),
        "max_grad_diff": float((lib_grad - loop_grad).abs().max()),
        "cluster_pixels_differing": differing,
    }


def profile(batch, memory, settings, device, repeats=3):
    """Median seconds of each library stage: k-means, segments, each relation fwd + bwd.

    A relation's time is that of segments + the relation alone, less the segments' time.
    """
    embeddings = batch["embeddings"].detach().clone().requires_grad_()
    num_images, height, width, dim = embeddings.shape
    loc = clustering.location_features(height, width, device=embeddings.device)
    features = clustering.with_location(embeddings.detach(), loc).reshape(num_images, -1, dim + 2)
    init = clustering.grid_labels(height, width, GRID, device=embeddings.device).reshape(1, -1)
    init = init.expand(num_images, -1)
    stages = {}

    def kmeans():
        return clustering.spherical_kmeans(
            features, init, ITERATIONS, num_clusters=GRID[0] * GRID[1]
        )

    stages["kmeans"] = timed(kmeans, repeats, 1, device)[0]
    clusters = kmeans().view(num_images, height, width)

    def build():
        return clustering.build_segments(
            embeddings, clusters, batch["superpixels"], batch["labels"], tags=batch["tags"]
        )

    stages["segments"] = timed(build, repeats, 1, device)[0]
    for name in settings:

        def relation(name=name):
            one = {name: settings[name]}
            out = relations.spml_loss(
                embeddings, batch["labels"], batch["tags"], build(), memory, settings=one
            )
            out["total"].backward()

        stages[name] = timed(relation, repeats, 1, device)[0] - stages["segments"]
    return stages


def profile_loop(batch, memory, settings, device, repeats=1):
    """Median seconds of the loop's stages: k-means + segments, each relation fwd + bwd."""
    embeddings = batch["embeddings"].detach().clone().requires_grad_()

    def segments():
        return loop_segments(batch, embeddings)

    stages = {"kmeans+segments": timed(segments, repeats, 0, device)[0]}
    for name in settings:

        def relation(name=name):
            loop_losses(batch, embeddings, memory, {name: settings[name]})[0]["total"].backward()

        stages[name] = timed(relation, repeats, 0, device)[0] - stages["kmeans+segments"]
    return stages


# --------------------------------------------------------------------------------- output
def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [f"{r['crop']}x{r['crop']} crop\n({r['embedding']} map)\n{r['config']}" for r in rows]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(1.8 * len(rows) + 2, 4.2))
    width = 0.38
    ours = [r["ours_s"] for r in rows]
    loop = [r["loop_s"] for r in rows]
    ax.bar([x - width / 2 for x in xs], ours, width, label="spml_lab (batched)", color="#1f77b4")
    ax.bar([x + width / 2 for x in xs], loop, width, label="per-image loop", color="#ff7f0e")
    for x, r in zip(xs, rows, strict=True):
        ax.annotate(
            f"{r['speedup']:.1f}x",
            (x, max(r["ours_s"], r["loop_s"])),
            ha="center",
            va="bottom",
            fontsize=9,
        )
    ax.set_yscale("log")
    ax.set_xticks(list(xs), groups)
    ax.set_ylabel("seconds per batch (median), log scale")
    r0 = rows[0]
    ax.set_title(
        f"SPML step (k-means + segments + relations + loss, fwd + bwd), batch {BATCH}, "
        f"D={DIM}\n{r0['device']}, {r0['threads']} threads; label = loop / ours"
    )
    ax.legend(loc="upper left")
    ax.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, nargs="*", default=[128, 512])
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch.set_num_threads (CPU), as training runs"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of the library")
    parser.add_argument("--loop-repeats", type=int, default=5, help="timed loop runs, small crops")
    parser.add_argument("--loop-repeats-large", type=int, default=2, help="... at 512 x 512")
    parser.add_argument(
        "--warmup", type=int, default=1, help="extra warm-up runs (none at 512: the check warms up)"
    )
    parser.add_argument("--profile", action="store_true", help="print library stage times")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--append", action="store_true", help="keep the CSV's rows of other crops, replace these"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = args.device
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True,
    )

    rows = []
    for crop in args.crops:
        batches = make_batches(crop, device=device)
        lib_memory, loop_mem = library_memory(batches), loop_memory(batches)
        batch = batches[0]
        for config in args.configs:
            settings = settings_for(config)
            check = compare(batch, lib_memory, loop_mem, settings)
            lib_step = forward_backward(
                partial(library_step, batch=batch, memory=lib_memory, settings=settings),
                batch["embeddings"],
            )
            loop_step = forward_backward(
                lambda e, b=batch, m=loop_mem, s=settings: loop_losses(b, e, m, s)[0],
                batch["embeddings"],
            )
            load = os.getloadavg()[0]
            loop_repeats = args.loop_repeats if crop < 512 else args.loop_repeats_large
            # `compare` above already ran each step once: at 512 x 512 that is the warm-up
            warmup = args.warmup if crop < 512 else 0
            (ours, ours_all), (loop, loop_all) = timed_pair(
                [lib_step, loop_step], [args.repeats, loop_repeats], warmup, device
            )
            with torch.no_grad():
                segments = clustering.segment_batch(
                    batch["embeddings"], batch["superpixels"], batch["labels"], GRID, ITERATIONS
                )
            row = {
                "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
                "threads": torch.get_num_threads(),
                "clock": "cpu time" if device == "cpu" else "wall",
                "crop": crop,
                "embedding": f"{crop // STRIDE}x{crop // STRIDE}",
                "config": config,
                "pixels": batch["labels"].numel(),
                "segments": segments.num_segments,
                "memory_prototypes": lib_memory.bank().num_prototypes,
                "ours_s": ours,
                "loop_s": loop,
                "speedup": loop / ours,
                "ours_min_s": min(ours_all),
                "loop_min_s": min(loop_all),
                "load_before": round(load, 2),
                "load_after": round(os.getloadavg()[0], 2),
                "ours_repeats": args.repeats,
                "loop_repeats": loop_repeats,
                "total_ours": check["lib"]["total"],
                "total_loop": check["loop"]["total"],
                "max_loss_diff": check["max_loss_diff"],
                "max_grad_diff": check["max_grad_diff"],
                "cluster_pixels_differing": check["cluster_pixels_differing"],
            }
            rows.append(row)
            per_relation = ", ".join(
                f"{k} {check['lib'][k]:.6f}/{check['loop'][k]:.6f}" for k in check["lib"]
            )
            print(f"  {crop} {config}: ours/loop losses: {per_relation}", flush=True)
            print(
                f"  {crop} {config}: ours {ours:.4f} s, loop {loop:.4f} s, "
                f"{loop / ours:.1f}x, max loss diff {check['max_loss_diff']:.2e}, "
                f"grad diff {check['max_grad_diff']:.2e}, "
                f"k-means pixels differing {check['cluster_pixels_differing']}",
                flush=True,
            )
            if args.profile:
                stages = profile(batch, lib_memory, settings, device)
                print(
                    "  profile (library, median s): "
                    + ", ".join(f"{k} {v:.4f}" for k, v in stages.items()),
                    flush=True,
                )
                stages = profile_loop(batch, loop_mem, settings, device)
                print(
                    "  profile (loop, 1 run, s): "
                    + ", ".join(f"{k} {v:.4f}" for k, v in stages.items()),
                    flush=True,
                )

    header = (
        f"{'crop':>5} {'emb':>7} {'config':>8} {'segs':>5} {'mem':>5} {'ours s':>9} "
        f"{'loop s':>9} {'speedup':>8} {'loss diff':>9} {'grad diff':>9}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['crop']:>5} {r['embedding']:>7} {r['config']:>8} {r['segments']:>5} "
            f"{r['memory_prototypes']:>5} {r['ours_s']:>9.4f} {r['loop_s']:>9.4f} "
            f"{r['speedup']:>7.1f}x {r['max_loss_diff']:>9.1e} {r['max_grad_diff']:>9.1e}"
        )
    if args.no_write:
        return
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "contrastive_speed" if device == "cpu" else "contrastive_speed_cuda"
    path = args.out / f"{stem}.csv"
    if args.append and path.is_file():  # e.g. crops measured in separate quiet moments
        with open(path, newline="") as handle:
            old = [
                r for r in csv.DictReader(handle) if r["crop"] not in {str(c) for c in args.crops}
            ]
        for r in old:
            r.update({k: float(r[k]) for k in ("ours_s", "loop_s", "speedup")})
            r["crop"] = int(r["crop"])
        rows = sorted(old + rows, key=lambda r: (r["crop"], list(CONFIGS).index(r["config"])))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[-1]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out / f"{stem}.png")
    print(f"wrote {args.out / stem}.csv and .png")


if __name__ == "__main__":
    main()
