"""Calibrate the embedded benchmark with baselines only, before any SPML number is looked at.

A weakly supervised method can only be judged on data where full supervision is a real upper
bound and the weak-label baseline leaves a gap. For each candidate setting (data: difficulty,
object size, image size, superpixels; recipe: network width, steps, batch, learning rate) this
trains the same network three ways with plain cross-entropy and every relation off:

* ``full``: on the dense masks (the upper bound);
* ``points`` and ``scribbles``: partial cross-entropy on the weak labels (the baselines);

and scores each on the **val** split with softmax + flip + dense CRF (the benchmark's
headline predictor). A setting passes when

* full masks reach at least 0.75 mIoU,
* full masks beat every weak-label baseline, and
* partial cross-entropy on points stays at or below 0.85 x full (room for a weak method).

Rows go to ``benchmarks/results/calibration.csv`` (one per run), the verdicts to
``calibration_summary.csv``; runs live in ``--work`` and are resumable (`bench_runs`).

    python benchmarks/calibrate.py --settings A B --seeds 0 --jobs 2
    python benchmarks/calibrate.py --list
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import bench_runs

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = {"full": "full", "points": "points", "scribbles": "scribbles"}
# Each setting: data options, superpixels per image, image size; network width, steps, batch,
# base learning rate. "default" is the generator's default data with the old reduced recipe.
SETTINGS = {
    "default": dict(difficulty=0.75, object_scale=1.0, size=128, superpixels=150,
                    width=32, steps=600, batch=4, lr=0.01),
    "d25": dict(difficulty=0.25, object_scale=1.0, size=128, superpixels=150,
                width=32, steps=600, batch=8, lr=0.01),
    "d25_s15": dict(difficulty=0.25, object_scale=1.5, size=128, superpixels=32,
                    width=32, steps=600, batch=8, lr=0.01),
    "d25_s15_lr": dict(difficulty=0.25, object_scale=1.5, size=128, superpixels=32,
                       width=32, steps=600, batch=8, lr=0.03),
    "d40_s15_lr": dict(difficulty=0.4, object_scale=1.5, size=128, superpixels=32,
                       width=32, steps=600, batch=8, lr=0.03),
    "d25_s20_96": dict(difficulty=0.25, object_scale=2.0, size=96, superpixels=24,
                       width=32, steps=800, batch=8, lr=0.03),
    "d40_s20_96": dict(difficulty=0.4, object_scale=2.0, size=96, superpixels=24,
                       width=32, steps=800, batch=8, lr=0.03),
    "d25_s15_lr05": dict(difficulty=0.25, object_scale=1.5, size=128, superpixels=32,
                         width=32, steps=600, batch=8, lr=0.05),
    "d25_s15_lr10": dict(difficulty=0.25, object_scale=1.5, size=128, superpixels=32,
                         width=32, steps=600, batch=8, lr=0.1),
    "d25_s20_96_lr05": dict(difficulty=0.25, object_scale=2.0, size=96, superpixels=24,
                            width=32, steps=800, batch=8, lr=0.05),
    "d10_s15_lr05": dict(difficulty=0.1, object_scale=1.5, size=128, superpixels=32,
                         width=32, steps=600, batch=8, lr=0.05),
    "d25_s25": dict(difficulty=0.25, object_scale=2.5, size=128, superpixels=32,
                    width=32, steps=600, batch=8, lr=0.01),
    "d25_s25_d64": dict(difficulty=0.25, object_scale=2.5, size=128, superpixels=32,
                        width=32, steps=600, batch=8, lr=0.01, embedding_dim=64),
    "d25_s15_long": dict(difficulty=0.25, object_scale=1.5, size=128, superpixels=32,
                         width=32, steps=1200, batch=8, lr=0.01),
    "d25_s15_lr10_h1": dict(difficulty=0.25, object_scale=1.5, size=128, superpixels=32,
                            width=32, steps=600, batch=8, lr=0.1, head_lr_mult=1.0),
    "d25_s15_lr05_h2": dict(difficulty=0.25, object_scale=1.5, size=128, superpixels=32,
                            width=32, steps=600, batch=8, lr=0.05, head_lr_mult=2.0),
    "p96_s25_lr05": dict(difficulty=0.25, object_scale=2.5, size=96, superpixels=24,
                         width=32, steps=800, batch=8, lr=0.05),
    "p96_s20_lr10_h1": dict(difficulty=0.25, object_scale=2.0, size=96, superpixels=24,
                            width=32, steps=800, batch=8, lr=0.1, head_lr_mult=1.0),
    "p96_s20_lr05_1600": dict(difficulty=0.25, object_scale=2.0, size=96, superpixels=24,
                              width=32, steps=1600, batch=8, lr=0.05),
    "p96_s20_d10_lr05": dict(difficulty=0.1, object_scale=2.0, size=96, superpixels=24,
                             width=32, steps=800, batch=8, lr=0.05),
    "p96_s20_lr05_do10": dict(difficulty=0.25, object_scale=2.0, size=96, superpixels=24,
                              width=32, steps=800, batch=8, lr=0.05, head_dropout=0.1),
    "p96_s20_lr05_w64": dict(difficulty=0.25, object_scale=2.0, size=96, superpixels=24,
                             width=64, steps=800, batch=8, lr=0.05),
    "p64_s25_lr05_1600": dict(difficulty=0.25, object_scale=2.5, size=64, superpixels=12,
                              width=32, steps=1600, batch=8, lr=0.05),
    "p64_d10_s20_lr05_1600": dict(difficulty=0.1, object_scale=2.0, size=64, superpixels=12,
                                  width=32, steps=1600, batch=8, lr=0.05),
    # the candidates: 96 px, large objects, clean-ish scenes, 1,000 steps
    "cal_d10_do10": dict(difficulty=0.1, object_scale=2.0, size=96, superpixels=16,
                         width=32, steps=1000, batch=8, lr=0.05, head_dropout=0.1),
    "cal_d10": dict(difficulty=0.1, object_scale=2.0, size=96, superpixels=16,
                    width=32, steps=1000, batch=8, lr=0.05),
    "d25_s15_w64": dict(difficulty=0.25, object_scale=1.5, size=128, superpixels=32,
                        width=64, steps=600, batch=8, lr=0.01, embedding_dim=64),
    # "parts" (the DensePose-like figures), calibrated on their own with the objects' recipe:
    # first at the objects' data settings, then harder scenes in case points come too close to
    # full masks (look-alike parts are what low-level grouping and feature affinity must solve)
    "parts_d10": dict(kind="parts", difficulty=0.1, size=96, superpixels=16,
                      width=32, steps=1000, batch=8, lr=0.05, head_dropout=0.1),
    "parts_d25": dict(kind="parts", difficulty=0.25, size=96, superpixels=16,
                      width=32, steps=1000, batch=8, lr=0.05, head_dropout=0.1),
    "parts_d40": dict(kind="parts", difficulty=0.4, size=96, superpixels=16,
                      width=32, steps=1000, batch=8, lr=0.05, head_dropout=0.1),
}  # fmt: skip
# other TrainConfig fields a setting may change
RECIPE_FIELDS = ("embedding_dim", "head_lr_mult", "head_dropout", "warmup_steps", "weight_decay")
CHECKS = {"full_min": 0.75, "points_max_ratio": 0.85}


def setting_runs(name, setting, seed, work, train_images, val_images, methods=METHODS):
    """Write the dataset of one setting; return the jobs of its three runs."""
    kind = setting.get("kind", "objects")
    options = {"difficulty": setting["difficulty"]}
    if kind == "objects":
        options["object_scale"] = setting["object_scale"]
    scale = f"_s{setting['object_scale']}" if kind == "objects" else ""
    data_name = "d{difficulty}{scale}_px{size}_sp{superpixels}".format(scale=scale, **setting)
    data = bench_runs.ensure_dataset(
        work / "data" / (data_name if kind == "objects" else f"{kind}_{data_name}"),
        kind,
        {"train": train_images, "val": val_images},
        0,
        options,
        {"n_segments": setting["superpixels"]},
        setting["size"],
    )
    jobs = []
    for method in methods:
        annotation = METHODS[method]
        cfg = bench_runs.base_config(
            data=str(data),
            annotation=annotation,
            model="small",
            width=setting["width"],
            crop_size=setting["size"],
            batch_size=setting["batch"],
            max_steps=setting["steps"],
            lr=setting["lr"],
            seed=seed,
            device="cpu",
            out_dir=str(work / "runs" / f"{name}_{method}_seed{seed}"),
            **bench_runs.BASELINE,
            **{k: v for k, v in setting.items() if k in RECIPE_FIELDS},
        )
        jobs.append((bench_runs.score_run, (cfg, ["val"], ["softmax", "softmax_crf"]), {}))
    return jobs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                        help="a first look may train full masks only")  # fmt: skip
    parser.add_argument("--train", type=int, default=400, help="training images")
    parser.add_argument("--val", type=int, default=100, help="validation images")
    parser.add_argument("--jobs", type=int, default=2, help="single-thread runs side by side")
    parser.add_argument("--work", default="data/calibration", help="datasets and run folders")
    parser.add_argument("--out", default=str(RESULTS / "calibration.csv"))
    parser.add_argument("--list", action="store_true", help="print the settings and stop")
    args = parser.parse_args()
    if args.list:
        for name, setting in SETTINGS.items():
            print(name, setting)
        return
    work = Path(args.work)
    tic = time.perf_counter()
    jobs, keys = [], []
    for name in args.settings:
        for seed in args.seeds:
            runs = setting_runs(
                name, SETTINGS[name], seed, work, args.train, args.val, args.methods
            )
            jobs += runs
            keys += [(name, method, seed) for method in args.methods]
    rows = []
    out = Path(args.out)
    for (name, method, seed), result in zip(keys, bench_runs.run_all(jobs, args.jobs), strict=True):
        val = result["scores"]["val"]
        rows.append(
            {
                "setting": name,
                **SETTINGS[name],
                "method": method,
                "seed": seed,
                "split": "val",
                "miou": round(val["softmax_crf"]["miou"], 4),
                "miou_softmax": round(val["softmax"]["miou"], 4),
                "train_images": args.train,
                "val_images": val["images"],
                "train_seconds": result["timing"].get("train_seconds", ""),
            }
        )
        print(f"{name:<14} {method:<10} seed {seed}  mIoU {rows[-1]['miou']:.4f} "
              f"(softmax {rows[-1]['miou_softmax']:.4f})", flush=True)  # fmt: skip
        _merge(out, rows)
    summary = summarise(bench_runs.read_csv(out))
    bench_runs.write_csv(out.with_name("calibration_summary.csv"), summary)
    for row in summary:
        print(row)
    print(f"took {time.perf_counter() - tic:.0f} s")


def summarise(rows):
    """One verdict per (setting, seed) with every method present."""
    groups = {}
    for row in rows:
        groups.setdefault((row["setting"], row["seed"]), {})[row["method"]] = float(row["miou"])
    out = []
    for (name, seed), scores in groups.items():
        if set(scores) != set(METHODS):
            continue
        full, weak = scores["full"], max(scores["points"], scores["scribbles"])
        ratio = scores["points"] / full if full else float("inf")
        checks = {
            "full_at_least_0.75": full >= CHECKS["full_min"],
            "full_beats_weak": full > weak,
            "points_at_most_0.85_full": ratio <= CHECKS["points_max_ratio"],
        }
        out.append({"setting": name, "seed": seed, **scores, "points_over_full": round(ratio, 3),
                    **checks, "passes": all(checks.values())})  # fmt: skip
    return out


def _merge(path, new_rows):
    """Add rows to the CSV, replacing earlier rows of the same (setting, method, seed)."""
    key = ("setting", "method", "seed")
    fresh = {tuple(str(r[k]) for k in key) for r in new_rows}
    kept = [r for r in bench_runs.read_csv(path) if tuple(r[k] for k in key) not in fresh]
    bench_runs.write_csv(path, kept + [{k: str(v) for k, v in r.items()} for r in new_rows])


if __name__ == "__main__":
    main()
