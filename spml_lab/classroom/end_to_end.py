"""`spml-lab demo`: the method end to end on the embedded data, in a few minutes on a laptop.

It trains SPML and the partial cross-entropy baseline on the same scribbles with the same
network, recipe and steps (`presets.PRESETS` ``"benchmark"``, shortened), scores each on the
embedded val images as the accuracy benchmark does (the baseline: its own head, softmax + flip
+ dense CRF; SPML: its full pipeline, pseudo labels of the training images, a stage-2 head on
them, softmax + flip + CRF), and draws one figure: image, scribbles, baseline mask, SPML mask
and ground truth. Beside them it loads the runs shipped in ``spml_lab/data_samples/runs/`` (the
benchmark's 1000 steps, ``make sample-runs``) with their recorded scores: the longer-trained
view.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from spml_lab import devices
from spml_lab.classroom import trained_runs
from spml_lab.data import datasets
from spml_lab.pictures import viz
from spml_lab.prediction import evaluate, metrics, predict, stage2
from spml_lab.training import checkpoints, presets, run_folders, runs, train

__all__ = ["DemoRow", "demo_configs", "run_demo", "SHIPPED"]

OWNER = "spml-lab demo"
# the predictor each kind of run is judged by (the benchmark's headline: SPML's full pipeline,
# the baseline's own head + CRF), and the shipped runs drawn beside the short ones
HEADLINE = {"baseline": "softmax_crf", "spml": "stage2_crf"}
SHIPPED = {"baseline_scribbles": "baseline", "spml_scribbles": "spml"}
# The demo's scores repeat on one machine, but moved with the number of torch threads: a
# convolution or a sum split over more threads adds in another order, and 200 SGD steps turn
# that last-bit difference into hundredths of mIoU (on one 2-core machine, partial CE 0.376 and
# SPML 0.587 with one thread, 0.402 and 0.590 with two). So every run of the demo trains and
# scores on the CPU with one torch thread, whatever the machine's cores or OMP_NUM_THREADS; only
# the CPU's own kernels are left to differ between machines (`benchmarks/demo_spread.py`
# measures that spread). For this small network one thread
# is also the fastest on two cores (`benchmarks/bench_runs.run_all`).
DEVICE = "cpu"
THREADS = 1


@dataclass
class DemoRow:
    """One line of the demo's table."""

    name: str  # "partial CE (demo)", "SPML (shipped)", ...
    run: str  # its folder
    steps: int
    method: str  # the `evaluate.METHODS` entry scored
    miou: float  # on the val images
    seconds: float  # training time (NaN: a finished run reloaded); shipped: as recorded


def demo_configs(out, *, steps=200, seed=0):
    """Return the two short runs: SPML and partial cross-entropy on scribbles.

    Parameters
    ----------
    out : str or Path
        The demo folder; runs go to ``out/runs/{spml,baseline}``.
    steps : int, optional
    seed : int, optional

    Returns
    -------
    configs : dict of str to TrainConfig
        ``{"baseline": ..., "spml": ...}``, identical but for the relations and the head.

    Examples
    --------
    >>> cfgs = demo_configs("outputs/demo", steps=10)
    >>> sorted(cfgs["spml"].differences(cfgs["baseline"], ignore=("out_dir",)))[:3]
    ['cooccurrence', 'head_dropout', 'head_trains_embedding']
    """
    common = {
        "data": "embedded:objects",
        "annotation": "scribbles",
        "max_steps": steps,
        "warmup_steps": min(20, steps // 5),
        "log_every": max(1, steps // 10),
        "checkpoint_every": max(1, steps // 2),
        "cache_data": True,
        "seed": seed,
        "device": DEVICE,
    }
    folder = Path(out) / "runs"
    return {
        "baseline": presets.preset_config(
            "benchmark", **common, **presets.PARTIAL_CROSS_ENTROPY, out_dir=str(folder / "baseline")
        ),
        "spml": presets.preset_config("benchmark", **common, out_dir=str(folder / "spml")),
    }


def _train(cfg, stage2_steps, progress):
    """Train (or reload) one short run, SPML's with its stage-2 head; return folder, seconds."""
    cfg, action = run_folders.prepare_run_folder(cfg.replace(progress=progress), OWNER)
    tic = time.perf_counter()
    folder = train.fit(cfg)
    if cfg.relation_settings() and (action != "resume" or not _has_head(folder, stage2_steps)):
        stage2.fit_head(folder, steps=stage2_steps, seed=cfg.seed, device=DEVICE, progress=progress)
    return folder, (time.perf_counter() - tic if action != "resume" else float("nan"))


def _has_head(folder, steps):
    """Whether `folder` holds a stage-2 head of `steps` steps (else it is trained again)."""
    path = folder / runs.STAGE2
    return path.is_file() and checkpoints.load_checkpoint(path)["settings"]["steps"] == steps


@devices.torch_threads(THREADS)
def run_demo(out="outputs/demo", *, steps=200, stage2_steps=100, seed=0, images=4, progress=True):
    """Train, score and draw SPML against partial cross-entropy on the embedded scribbles.

    Parameters
    ----------
    out : str or Path, optional
        Folder for the runs, ``spml_vs_baseline.png`` and ``results.md`` / ``results.json``.
    steps : int, optional
        Training steps of each short run (the benchmark trains 1000).
    stage2_steps : int, optional
        Steps of SPML's stage-2 head (the benchmark: 300).
    seed : int, optional
    images : int, optional
        Val images drawn.
    progress : bool, optional
        Progress bars while training.

    Returns
    -------
    rows : list of DemoRow
        The short baseline and SPML runs, then the shipped runs that are present.

    Notes
    -----
    Rerunning with the same settings reloads the finished runs (nothing is trained twice);
    other settings replace this demo's own runs and never touch anything else. Everything runs
    on the CPU with one torch thread (`THREADS`), so the scores do not depend on the machine's
    core count.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, shown = [], []
    val = datasets.embedded("objects", "val", "full")
    scribbles = datasets.embedded("objects", "val", "scribbles")
    batch = next(predict.image_batches(val, images, images))
    for key, cfg in demo_configs(out, steps=steps, seed=seed).items():
        folder, seconds = _train(cfg, stage2_steps, progress)
        method = HEADLINE[key]
        scores = evaluate.evaluate_run(folder, methods=[method], device=DEVICE)
        run = runs.load_run(folder, device=DEVICE)
        name = f"{'SPML' if key == 'spml' else 'partial CE'}, {steps} steps"
        rows.append(DemoRow(name, str(folder), run.step, method, scores[method]["miou"], seconds))
        shown.append(evaluate.predict_methods(run, batch["image"], [method])[method])
    for name, key in SHIPPED.items():
        method = HEADLINE[key]
        folder = runs.SHIPPED_RUNS / name
        if not (folder / runs.FINAL).is_file():
            continue  # a checkout without the shipped runs still gets the short comparison
        recorded = json.loads((folder / runs.EVAL_DIR / "metrics.json").read_text())
        run = runs.load_run(folder, device=DEVICE)
        timing = _shipped_seconds(name)
        label = f"{'SPML' if name.startswith('spml') else 'partial CE'}, {run.step} steps (shipped)"
        rows.append(DemoRow(label, str(folder), run.step, method, recorded[method]["miou"], timing))
        shown.append(evaluate.predict_methods(run, batch["image"], [method])[method])
    figure = _figure(batch, scribbles, shown, rows, val)
    figure.savefig(out / "spml_vs_baseline.png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    _write_table(out, rows, len(val))
    return rows


def _figure(batch, scribbles, shown, rows, val):
    colours = viz.palette(val.num_classes)
    pictures = predict.to_uint8(batch["image"]).numpy()
    truth = batch["label"]
    per_image = [metrics.image_miou(labels, truth, val.num_classes).tolist() for labels in shown]
    grid = []
    for b, index in enumerate(batch["index"].tolist()):
        weak = scribbles[index]["label"].numpy()
        grid.append(
            [
                pictures[b],
                viz.overlay(pictures[b], weak, colours, alpha=1.0, dim=0.5),
                *(viz.colorize(labels[b].numpy(), colours) for labels in shown),
                viz.colorize(truth[b].numpy(), colours),
            ]
        )
    titles = [f"{row.name}\n{row.method}: val mIoU {row.miou:.3f}" for row in rows]
    figure = viz.show_grid(
        grid,
        col_titles=["image", "scribbles", *titles, "ground truth"],
        class_names=list(val.class_names),
        colours=colours,
        size=2.3,
    )
    cells = np.asarray(figure.axes[: len(grid) * len(grid[0])]).reshape(len(grid), -1)
    for r, axes_row in enumerate(cells):  # each mask's own mIoU under it
        for c, values in enumerate(per_image):
            axes_row[2 + c].set_xlabel(f"mIoU {values[r]:.2f}", fontsize=8)
    figure.suptitle(
        f"Scribbles on {len(val)} embedded val images: partial cross-entropy against SPML", y=1.0
    )
    return figure


def _write_table(out, rows, num_images):
    lines = [
        f"| run | steps | predictor | val mIoU ({num_images} images) | training time |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        seconds = "reloaded" if math.isnan(row.seconds) else f"{row.seconds:.0f} s"
        lines.append(f"| {row.name} | {row.steps} | {row.method} | {row.miou:.3f} | {seconds} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps([vars(r) for r in rows], indent=2) + "\n")
    print("\n".join(lines))


def _shipped_seconds(name):
    """Training time of a shipped run as ``spml_lab/data_samples/runs/runs.csv`` records it."""
    return trained_runs.shipped_record(name).get("train_seconds", math.nan)
