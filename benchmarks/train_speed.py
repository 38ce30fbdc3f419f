"""Speed and peak memory of one full SPML training step against the network-alone step.

The full step is the trainer's own `train.train_step`: the embedding network forward, spherical
k-means segments, the enabled relations against the prototype memory, their weighted loss plus
the softmax head's cross-entropy, the backward pass, the SGD step and the memory push. The
network-alone step is what any segmentation network pays: the same network and softmax head,
forward, the head's cross-entropy on the weak labels (not detached, so it reaches the whole
network), backward and an SGD step over the same parameter groups; no k-means, no relations,
no memory. Their ratio is what the contrastive part costs.

Setup, the scribble run of the paper: low-level similarity, semantic annotation and
co-occurrence (kappa and weights of `TrainConfig`'s defaults, the paper's). Inputs are real
batches of the embedded samples (``embedded:objects``, scribbles, superpixels, tags) through
the trainer's own augmentation (`train.build_dataset`), and several distinct batches are
cycled, so the memory holds real, varying segments. Batches wait in (pinned) host memory: the
host-to-device copy is timed, the data loading is not.

* **cpu**: the step the reduced accuracy benchmark trains, the calibrated recipe of the
  embedded data (`presets` ``"benchmark"``: the small net of width 32, D = 32, whole 96 px
  scenes rescaled 0.5-1.5x, batch 8, a 2 x 2 k-means grid, 24 contrast images = the batch and
  a memory of 2 batches), on one thread: the accuracy benchmark trains its runs on one
  thread each, two side by side on two cores.
* **cuda**: ResNet-101 DeepLab-v2 at 512 px, D = 64, the paper's 6 x 6 grid and memory of 2
  batches; the 96 px samples are rescaled so that they about fill the crop (0.75x to 1.25x
  of crop / 96, then cropped with padding).

    python benchmarks/train_speed.py --preset cpu      # the recipe: batch 8 of 96 px, 1 thread
    python benchmarks/train_speed.py --preset cuda     # ResNet-101 DeepLab, 512 px, batch 4, 16,
                                                       # fp32 and bf16 + channels-last
    python benchmarks/train_speed.py --preset cuda --cudnn-benchmark --steps 50
    python benchmarks/train_speed.py --preset cpu --steps 2 --warmup 1 --no-write   # a CI smoke run

Hardware: each precision of ``--precisions`` (`train.network_precision`): ``bf16``, what the
trainer runs on CUDA (`TrainConfig.amp`), is the network channels-last under bf16 autocast, the
contrastive part float32; ``fp32`` is everything float32 and contiguous. The cuda preset
measures both, the cpu preset fp32 (``--precisions bf16`` runs CPU bf16 autocast: a check of
the code path, not a speed anyone trains at). ``torch.backends.cudnn.benchmark`` is off unless
``--cudnn-benchmark``. A configuration that runs out of GPU memory is a row with status
``out of memory`` and no numbers; the others go on.

Timing: warm-up steps of both kinds, then the two kinds in alternation (so that both see the
same background load), ``torch.cuda.synchronize`` around each step; images/s = batch size /
median step time. On the CPU the times are the process's CPU time (``time.process_time``)
besides the wall clock: on a shared machine other jobs stretch the wall clock of whatever runs
beside them, while CPU time counts this process's work only; the ratio is then the ratio of
the median CPU times (both are in the CSV). Peak memory: on CUDA
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` before each step (the
maximum over the timed steps of each kind); on the CPU the process's peak resident set size
(``resource.getrusage``, process-wide and never reset: read after the network-alone warm-up and
again after the full warm-up, so the second includes the first).

Targets: full-step throughput >= 90 % of the network-alone throughput at both batch sizes on
CUDA, >= 85 % on the CPU; full-step peak memory <= network-alone peak + 1 GiB. Writes
``benchmarks/results/train_speed_{cpu,cuda}.{csv,png}``; ``python benchmarks/tables.py``
makes docs/gpu.md's table from the CPU CSV.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from spml_lab import schedules
from spml_lab.constants import PAPER_KMEANS_GRID
from spml_lab.method.memory import PrototypeMemory
from spml_lab.nets.build import build_model
from spml_lab.training import config, presets, train

RESULTS = Path(__file__).resolve().parent / "results"
DATA = "embedded:objects"
SPEED_TARGETS = {"cpu": 0.85, "cuda": 0.90}  # full / network-alone images per second
MEMORY_TARGET_MIB = 1024  # full peak - network-alone peak
PRESETS = {
    # the calibrated recipe (`presets.PRESETS["benchmark"]`): the accuracy benchmark's step
    "cpu": {"recipe": "benchmark", "batch_sizes": [8], "precisions": ["fp32"], "threads": 1},
    # the paper's network: ResNet-101 DeepLab-v2, 512 crops, D = 64, 6 x 6 grid on 128 x 128
    "cuda": {
        "model": "resnet101",
        "crop_size": 512,
        "batch_sizes": [4, 16],
        "precisions": ["fp32", "bf16"],
        "embedding_dim": 64,
        "kmeans_grid": PAPER_KMEANS_GRID,
        "threads": None,
    },
}


# --------------------------------------------------------------------------------- inputs
def make_config(preset, batch_size, *, crop_size=None, model=None, device="cpu"):
    """Return the scribble-run `TrainConfig` of a preset at one batch size."""
    spec = PRESETS[preset]
    common = {
        "data": DATA,
        "annotation": "scribbles",
        **dict.fromkeys(("low_level", "semantic_annotation", "cooccurrence"), True),
        "feature_affinity": False,
        "batch_size": batch_size,
        "device": device,
        "progress": False,
    }
    if "recipe" in spec:  # the recipe, with another crop or model only where asked
        return presets.preset_config(spec["recipe"], crop_size=crop_size, model=model, **common)
    crop = crop_size or spec["crop_size"]
    fill = crop / presets.image_side(DATA)  # rescale the samples to about the crop
    return config.TrainConfig(
        model=model or spec["model"],
        crop_size=crop,
        scale_range=(0.75 * fill, 1.25 * fill),
        embedding_dim=spec["embedding_dim"],
        kmeans_grid=spec["kmeans_grid"],
        memory_size=2,
        **common,
    )


def make_batches(cfg, count, device):
    """`count` distinct collated training batches of `cfg`, pinned when the device is CUDA."""
    dataset = train.build_dataset(cfg)
    order = schedules.epoch_order(len(dataset), cfg.seed, 0)
    batches = []
    for k in range(count):
        ids = [int(order[(k * cfg.batch_size + b) % len(dataset)]) for b in range(cfg.batch_size)]
        batch = default_collate([dataset[i] for i in ids])
        if device.type == "cuda":
            batch = {key: v.pin_memory() if torch.is_tensor(v) else v for key, v in batch.items()}
        batches.append(batch)
    return batches, dataset.num_classes


def make_trainables(cfg, num_classes, device, precision):
    """Make the seeded network, head, SGD optimizer and prototype memory as the trainer does.

    Returns ``(net, head, optimizer, memory)``; `precision` "bf16" lays the network out
    channels-last, as `train.fit` does.
    """
    torch.manual_seed(cfg.seed)
    net, head = build_model(cfg, num_classes)
    net, head = net.to(device).train(), head.to(device).train()
    if precision == "bf16":
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        train.param_groups(net, head, cfg), lr=cfg.lr, momentum=cfg.momentum, weight_decay=0.0
    )
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * group["lr_mult"]
    memory = PrototypeMemory(cfg.memory_batches(), affinity_threshold=cfg.affinity_threshold,
                             keep_affinity=cfg.feature_affinity)  # fmt: skip
    return net, head, optimizer, memory


# --------------------------------------------------------------------------------- steps
def network_step(batch, net, head, optimizer, cfg, device, precision):
    """Forward, head cross-entropy (reaching the network), backward, SGD: no contrastive part.

    Moves and lays out the batch as `train.batch_losses` does at `precision` ("bf16" or
    "fp32"), so both steps pay the same copy and run the network alike.
    """
    images = batch["image"].to(device, non_blocking=True)  # (B, 3, H, W)
    if precision == "bf16":
        images = images.contiguous(memory_format=torch.channels_last)
    labels = batch["label"].to(device, non_blocking=True)  # (B, H, W)
    with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
        emb = net(images)  # (B, D, h, w)
        unit = F.normalize(emb, dim=1).permute(0, 2, 3, 1)  # (B, h, w, D), as heads take
        logits = head(unit, size=tuple(images.shape[-2:]))  # (B, C, H, W)
    loss = train.softmax_cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_mib():
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(cfg, device, *, steps=10, warmup=2, num_batches=4, precision=None):
    """Time the network-alone and the full step of `cfg` on `device` at `precision`.

    `precision` is "bf16" or "fp32" (default: `train.network_precision`, as training runs).

    Returns a dict with median seconds (the process's CPU time on the CPU, else the wall
    clock; and the wall clock), images/s and peak memory (MiB) of each kind, the segments of
    the last batch and the prototypes in the memory.
    """
    precision = precision or train.network_precision(cfg, device)
    batches, num_classes = make_batches(cfg, num_batches, device)
    net, head, optimizer, memory = make_trainables(cfg, num_classes, device, precision)
    superpixels = True  # the embedded samples have them

    def alone(k):
        return network_step(batches[k % num_batches], net, head, optimizer, cfg, device, precision)

    def full(k):
        batch = batches[k % num_batches]
        return train.train_step(
            batch, net, head, optimizer, memory, cfg, device, superpixels, precision=precision
        )

    peaks = {"alone": 0.0, "full": 0.0}
    for k in range(warmup):  # also fills the memory bank: the timed full steps see 2 batches
        alone(k)
    synchronize(device)
    if device.type == "cpu":
        peaks["alone"] = peak_rss_mib()
    for k in range(warmup):
        full(k)
    synchronize(device)
    if device.type == "cpu":
        peaks["full"] = peak_rss_mib()
    # on the CPU the process's own CPU time: other jobs on the machine stretch the wall clock
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    seconds = {"alone": [], "full": []}
    wall = {"alone": [], "full": []}
    losses = []
    for k in range(steps):
        for name, step in (("alone", alone), ("full", full)):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            synchronize(device)
            start, start_wall = clock(), time.perf_counter()
            out = step(k)
            synchronize(device)
            seconds[name].append(clock() - start)
            wall[name].append(time.perf_counter() - start_wall)
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device) / 2**20
                peaks[name] = max(peaks[name], peak)
            if name == "full":
                losses.append(out)
    finite = bool(torch.isfinite(torch.stack(losses)).all())
    median = {name: statistics.median(s) for name, s in seconds.items()}
    median_wall = {name: statistics.median(s) for name, s in wall.items()}
    with torch.no_grad():
        last = train.batch_losses(
            net, head, batches[0], cfg, memory, device=device, precision=precision
        )[1]
    return {
        "clock": "cpu time" if device.type == "cpu" else "wall",
        "alone_s": median["alone"],
        "full_s": median["full"],
        "alone_wall_s": median_wall["alone"],
        "full_wall_s": median_wall["full"],
        "ratio_wall": median_wall["alone"] / median_wall["full"],
        "alone_img_s": cfg.batch_size / median["alone"],
        "full_img_s": cfg.batch_size / median["full"],
        "alone_peak_mib": peaks["alone"],
        "full_peak_mib": peaks["full"],
        "segments": last.num_segments,
        "memory_prototypes": memory.bank().num_prototypes,
        "losses_finite": finite,
    }


# --------------------------------------------------------------------------------- output
def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("status", "ok") == "ok"]
    if not rows:
        return
    r0 = rows[0]
    labels = [f"batch {r['batch']}\n{r.get('precision', '')}" for r in rows]
    xs = range(len(rows))
    width = 0.38
    fig, (ax_speed, ax_mem) = plt.subplots(1, 2, figsize=(max(9.0, 5 + 1.6 * len(rows)), 4.8))
    for ax, key, unit in (
        (ax_speed, "img_s", "images / s (median step)"),
        (ax_mem, "peak_mib", f"peak memory, MiB ({r0['memory_kind']})"),
    ):
        alone = [r[f"alone_{key}"] for r in rows]
        full = [r[f"full_{key}"] for r in rows]
        ax.bar([x - width / 2 for x in xs], alone, width, label="network alone", color="#1f77b4")
        ax.bar([x + width / 2 for x in xs], full, width, label="full SPML step", color="#ff7f0e")
        ax.set_xticks(list(xs), labels)
        ax.set_ylabel(unit)
        ax.margins(y=0.2)
    for x, r in zip(xs, rows, strict=True):
        top = max(r["alone_img_s"], r["full_img_s"])
        ax_speed.annotate(f"{r['ratio']:.0%}", (x, top), ha="center", va="bottom")
        ax_mem.annotate(
            f"+{r['extra_mib']:.0f} MiB",
            (x, max(r["alone_peak_mib"], r["full_peak_mib"])),
            ha="center",
            va="bottom",
        )
    target = SPEED_TARGETS["cpu" if r0["device"] == "cpu" else "cuda"]
    clock = f", {r0['clock']}" if "clock" in r0 else ""
    ax_speed.set_title(
        f"Throughput{clock}\n(label: full / alone, target >= {target:.0%})", fontsize=10
    )
    ax_mem.set_title(
        f"Peak memory\n(label: full - alone, target <= {MEMORY_TARGET_MIB} MiB)", fontsize=10
    )
    ax_speed.legend(loc="lower right", fontsize=9)
    threads = f", {r0['threads']} threads" if r0["device"] == "cpu" else ""
    fig.suptitle(
        f"SPML training step vs network alone: {r0['model']}, {r0['crop']} px crops,\n"
        f"scribble relations, memory of 2 batches; {r0['device']}{threads}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _number(text):
    """Read a CSV cell back as int or float where it is one."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["auto", *PRESETS], default="auto")
    parser.add_argument("--batch-sizes", type=int, nargs="*", help="default: the preset's")
    parser.add_argument("--crop", type=int, help="crop side in px; default: the preset's")
    parser.add_argument("--model", choices=["small", "resnet50", "resnet101"])
    parser.add_argument(
        "--precisions", nargs="*", choices=["fp32", "bf16"], help="default: the preset's"
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps of each kind")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps of each kind")
    parser.add_argument(
        "--threads", type=int, help="torch.set_num_threads (CPU); default: the preset's (1)"
    )
    parser.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN autotune")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--replot", type=Path, metavar="CSV", help="only redraw the PNG of a CSV written before"
    )
    args = parser.parse_args()
    if args.replot:
        with open(args.replot, newline="") as handle:
            rows = [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(handle)]
        plot(rows, args.replot.with_suffix(".png"))
        return
    preset = args.preset
    if preset == "auto":
        preset = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device("cuda" if preset == "cuda" else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--preset cuda needs a CUDA device")
    threads = args.threads or PRESETS[preset]["threads"]
    if threads:
        torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    steps = args.steps or (20 if device.type == "cuda" else 10)
    warmup = args.warmup or (5 if device.type == "cuda" else 2)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"torch {torch.__version__}, {name}, threads {torch.get_num_threads()}, "
        f"cudnn.benchmark {torch.backends.cudnn.benchmark}, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    rows = []
    precisions = args.precisions or PRESETS[preset]["precisions"]
    batch_sizes = args.batch_sizes or PRESETS[preset]["batch_sizes"]
    for precision in precisions:
        for batch_size in batch_sizes:
            cfg = make_config(
                preset, batch_size, crop_size=args.crop, model=args.model, device=str(device)
            )
            load = os.getloadavg()[0]
            row = {
                "device": name,
                "threads": torch.get_num_threads(),
                "model": cfg.model,
                "crop": cfg.crop_size,
                "batch": batch_size,
                "precision": precision,
                "amp_bf16": precision == "bf16",
                "channels_last": precision == "bf16",
                "cudnn_benchmark": torch.backends.cudnn.benchmark,
                "steps": steps,
                "warmup": warmup,
            }
            try:
                result = measure(cfg, device, steps=steps, warmup=warmup, precision=precision)
            except torch.cuda.OutOfMemoryError:  # a row that says so; the others still run
                torch.cuda.empty_cache()
                print(f"  {precision} batch {batch_size}: out of memory", flush=True)
                rows.append({**row, "status": "out of memory"})
                continue
            row.update(result)
            row.update(
                ratio=result["full_img_s"] / result["alone_img_s"],
                extra_mib=result["full_peak_mib"] - result["alone_peak_mib"],
                memory_kind="cuda max allocated" if device.type == "cuda" else "process peak RSS",
                load_before=round(load, 2),
                load_after=round(os.getloadavg()[0], 2),
            )
            row["speed_ok"] = row["ratio"] >= SPEED_TARGETS[device.type]
            row["memory_ok"] = row["extra_mib"] <= MEMORY_TARGET_MIB
            row["status"] = "ok"
            rows.append(row)
            print(
                f"  {precision} batch {batch_size}: alone {row['alone_img_s']:.1f} img/s, full "
                f"{row['full_img_s']:.1f} img/s ({row['ratio']:.1%} by {row['clock']}, "
                f"{row['ratio_wall']:.1%} by the wall clock), peak "
                f"{row['alone_peak_mib']:.0f} -> {row['full_peak_mib']:.0f} MiB, "
                f"{row['segments']} segments, {row['memory_prototypes']} in memory, load "
                f"{load:.2f} -> {row['load_after']:.2f}",
                flush=True,
            )
    done = [r for r in rows if r["status"] == "ok"]
    print(
        f"{'model':>10} {'crop':>5} {'batch':>5} {'prec':>5} {'alone img/s':>12} "
        f"{'full img/s':>11} {'ratio':>6} {'speed':>6} {'alone MiB':>10} {'full MiB':>9} "
        f"{'extra':>7} {'memory':>6}"
    )
    for r in done:
        print(
            f"{r['model']:>10} {r['crop']:>5} {r['batch']:>5} {r['precision']:>5} "
            f"{r['alone_img_s']:>12.2f} "
            f"{r['full_img_s']:>11.2f} {r['ratio']:>6.1%} {'pass' if r['speed_ok'] else 'FAIL':>6} "
            f"{r['alone_peak_mib']:>10.0f} {r['full_peak_mib']:>9.0f} {r['extra_mib']:>7.0f} "
            f"{'pass' if r['memory_ok'] else 'FAIL':>6}"
        )
    print(
        f"targets: full >= {SPEED_TARGETS[device.type]:.0%} of network-alone images/s, full "
        f"peak <= alone + "
        f"{MEMORY_TARGET_MIB} MiB ({done[0]['memory_kind'] if done else 'none measured'})"
    )
    if args.no_write:
        return
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"train_speed_{device.type}"
    fields = list(done[0] if done else rows[0])  # every column, the failed rows leave some out
    fields += [k for r in rows for k in r if k not in fields]
    with open(args.out / f"{stem}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out / f"{stem}.png")
    print(f"wrote {args.out / stem}.csv and .png")


if __name__ == "__main__":
    main()
