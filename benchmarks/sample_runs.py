"""Train the runs shipped in ``spml_lab/data_samples/runs/``: the trained models the course loads.

``make sample-runs`` (this script) trains, on the embedded objects data (``embedded:objects``,
the accuracy benchmark's calibrated scenes), four stage-1 runs with the reduced accuracy
benchmark's recipe (`accuracy.RECIPE`, width, batch, 1000 steps, the paper's per-kind relation
settings, `accuracy.BASELINE` for the baselines), one seed:

* ``spml_scribbles`` and ``spml_points``: SPML, then a stage-2 head on its pseudo labels;
* ``baseline_scribbles``: partial cross-entropy on the same scribbles (every relation off);
* ``full``: the same network and head trained on full masks, the upper bound.

Each run is scored on the committed val split (32 images) with the benchmark's methods and
keeps ``config.yaml``, ``final.pt`` (+ ``stage2.pt``), ``metrics.csv``, ``eval/`` and its
training time (``bench_timing.json``); the resume checkpoints are deleted.
``runs.csv`` beside them lists them with their headline val mIoU and training time.
`tests/test_sample_runs.py` re-scores every run and must find the same numbers, so the weights
in the repository are exactly what this command writes.

Resumable like the benchmark (`bench_runs.score_run`): run it again and it continues; a
finished run with the same config is kept, one with another config is an error unless
``--overwrite`` is given.

Usage::

    python benchmarks/sample_runs.py --jobs 2     # 27 minutes on 2 busy CPU cores (runs.csv)
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import accuracy
import bench_runs
import torch

from spml_lab.data import writers
from spml_lab.training import runs
from spml_lab.training.checkpoints import save_checkpoint
from spml_lab.training.config import RESUMABLE_CHANGES, TrainConfig

ROOT = Path(__file__).resolve().parents[1]  # the repository: runs record paths relative to it
OUT = runs.SHIPPED_RUNS.relative_to(ROOT)
DATA = "embedded:objects"
FORM = accuracy.FORMS["reduced"]
CONTRAST = {"contrast_images": accuracy.CONTRAST_IMAGES["reduced"]}
RUNS = {
    "spml_scribbles": {"annotation": "scribbles", **CONTRAST},
    "spml_points": {"annotation": "points", **CONTRAST},
    "baseline_scribbles": {"annotation": "scribbles", **accuracy.BASELINE},
    "full": {"annotation": "full", **accuracy.BASELINE},
}
# the number each run is judged by, as in the benchmark: SPML's full pipeline, the baselines'
# own head + CRF
HEADLINE = {"spml": "stage2_crf", "other": "softmax_crf"}
KEEP = (runs.CONFIG, runs.FINAL, runs.STAGE2, runs.METRICS, runs.EVAL_DIR, "bench_timing.json")


def config(name, seed=0, device="cpu"):
    """Return the TrainConfig of shipped run `name` (its folder under `OUT`)."""
    return bench_runs.base_config(
        data=DATA,
        **accuracy.RECIPE,
        width=FORM["width"],
        crop_size=accuracy.DATA["objects"]["size"],
        batch_size=FORM["batch"],
        max_steps=FORM["steps"],
        log_every=25,  # 40 rows: the training curves notebook 09 draws
        seed=seed,
        device=device,
        out_dir=str(OUT / name),
        **RUNS[name],
    )


def is_spml(name):
    """Whether run `name` trains with relations (kNN and stage 2 are then scored too)."""
    return name.startswith("spml")


def train_one(name, device="cpu"):
    """Train, stage-2 and score one shipped run; return its row of ``runs.csv``."""
    cfg = config(name, device=device)
    methods = accuracy.SPML_METHODS if is_spml(name) else accuracy.BASELINE_METHODS
    steps = FORM["stage2_steps"] if is_spml(name) else 0
    result = bench_runs.score_run(cfg, ["val"], methods, stage2_steps=steps)
    scores = result["scores"]["val"]
    headline = HEADLINE["spml" if is_spml(name) else "other"]
    return {
        "run": name,
        "annotation": cfg.annotation,
        "relations": "+".join(cfg.relation_settings()) or "none (cross-entropy)",
        "steps": cfg.max_steps,
        "headline": headline,
        "val_miou": round(scores[headline]["miou"], 4),
        **{f"val_{m}": round(scores[m]["miou"], 4) for m in methods},
        "val_images": scores["images"],
        "train_seconds": result["timing"].get("train_seconds", ""),
        "stage2_seconds": result["timing"].get("stage2_seconds", ""),
    }


def check_folder(name, overwrite):
    """Refuse to reuse a run folder trained with another config (or clear it with overwrite)."""
    folder = OUT / name
    if not (folder / "config.yaml").is_file():
        return
    changed = TrainConfig.from_yaml(folder / "config.yaml").differences(
        config(name), ignore=RESUMABLE_CHANGES
    )
    if changed and not overwrite:
        raise FileExistsError(
            f"{folder} holds a run with another config (it differs in {sorted(changed)}); "
            "pass --overwrite to train it again"
        )
    if changed:
        shutil.rmtree(folder)


def tidy(name):
    """Keep only what the course and the re-scoring test read; record paths relative.

    Training records the absolute ``out_dir`` and data folder (a run is found from any folder);
    a shipped run records their places in the repository instead, the same in every clone and
    free of the training machine's folders.
    """
    folder = OUT / name
    for path in folder.iterdir():
        if path.name not in KEEP:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    relative = {"out_dir": folder.as_posix()}
    TrainConfig.from_yaml(folder / runs.CONFIG).replace(**relative).to_yaml(folder / runs.CONFIG)
    for weights in (runs.FINAL, runs.STAGE2):
        key = "config" if weights == runs.FINAL else "run_config"
        if (folder / weights).is_file():
            state = torch.load(folder / weights, map_location="cpu", weights_only=True)
            state[key] = {**state[key], **relative}
            if state.get("data_fingerprint"):
                state["data_fingerprint"] = relative_fingerprint(state["data_fingerprint"])
            save_checkpoint(state, folder / weights)


def relative_fingerprint(fingerprint):
    """Return `fingerprint` (`datasets.data_fingerprint`) with its paths relative to ROOT.

    Only the hashes are compared when a run is loaded; the paths are for a reader.
    """
    paths = {k: Path(fingerprint[k]) for k in ("root", "list_file") if k in fingerprint}
    return {**fingerprint, **{k: p.relative_to(ROOT).as_posix() for k, p in paths.items()}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="runs trained side by side")
    parser.add_argument("--only", nargs="*", choices=sorted(RUNS), help="train only these runs")
    parser.add_argument(
        "--overwrite", action="store_true", help="retrain runs whose config changed"
    )
    args = parser.parse_args(argv)
    names = args.only or list(RUNS)
    os.chdir(ROOT)  # the run folders' `out_dir` is relative, the same in every clone
    # the one command that may write the shipped runs (every other writer refuses them)
    os.environ[writers.WRITE_SHIPPED_ENV] = "1"
    for name in names:
        check_folder(name, args.overwrite)
    tic = time.perf_counter()
    rows = {}
    jobs = [(train_one, (name,), {}) for name in names]
    for name, row in zip(names, bench_runs.run_all(jobs, workers=args.jobs), strict=True):
        tidy(name)
        rows[name] = row
        print(f"{name}: val mIoU {row['val_miou']} ({row['headline']})", flush=True)
    table = OUT / "runs.csv"
    old = {row["run"]: row for row in bench_runs.read_csv(table)}  # runs not retrained now
    merged = [rows.get(name) or old[name] for name in RUNS if name in rows or name in old]
    bench_runs.write_csv(table, merged)
    print(f"wrote {table} in {time.perf_counter() - tic:.0f} s")


if __name__ == "__main__":
    main()
