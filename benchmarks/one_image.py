"""One image, its own scribbles: SPML against the random forest and partial cross-entropy.

`one_image.segment` trains on the one image it labels, so the benchmark is a set of single
images with exact masks: generated scenes (`synthetic.generate`, test seed, 128 px) of the
objects and of the parts kind. Each scene is labelled three ways by `annotations.weak_labels`:
``scribbles`` (whole skeleton strokes), ``scribbles_30`` (30 % of each stroke) and ``points``
(one 5 px disc per region). Every method sees the same labels; a region the labels miss (too
small for a mark) is a class the method cannot predict, for all methods alike.

Protocol (written before the full run)
--------------------------------------
* 30 scenes per dataset kind (``--scenes``), test seed 2024, seed 0 for every method.
* Score: mIoU of each scene on its own (`metrics.image_miou`, classes of its truth or
  prediction), then mean and sample std over scenes, per dataset x label kind x method.
* Claim rule: method A beats method B in a cell when ``mean(A) - mean(B) > 2 SE`` of the
  difference (`claims.compare`, unpaired; the scenes are shared, so this is conservative).
* Time per image: wall-clock seconds of `segment` (superpixels, training, prediction), one
  torch thread; take timings from an idle machine only.
* ``--variants`` adds SPML's alternatives (head instead of kNN, dense CRF, feature affinity)
  as extra methods: the measurement behind `one_image.SPML_CHOICES`.

Resumable: the CSV gets one row per scene x method x label kind as soon as it is scored, and a
rerun skips the rows already there. The figure, ``one_image_summary.csv`` (mean, std, n, time
per cell) and ``one_image_claims.csv`` (SPML against each method, with the verdict) are
rewritten from the whole CSV after each run, or alone with ``--report``.

    python benchmarks/one_image.py                  # 30 scenes per kind, the committed result
    python benchmarks/one_image.py --quick          # 2 scenes, 10 steps: a smoke run (outputs/)
    python benchmarks/one_image.py --report         # summary, claims and figure of the CSV
    python benchmarks/one_image.py --speed          # the widget's Train at 256 px: `speed`
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import bench_runs
import numpy as np
import torch

from spml_lab.constants import IGNORE_INDEX
from spml_lab.data import annotations, synthetic
from spml_lab.prediction import metrics, one_image
from spml_lab.sweeps import claims

RESULTS = Path(__file__).resolve().parent / "results"
OUT = RESULTS / "one_image.csv"
QUICK_OUT = Path("outputs") / "one_image_quick" / "one_image.csv"
TEST_SEED = 2024  # another seed than any training data of the other benchmarks
SIZE = 128
DATASETS = ("objects", "parts")
LABELS = {  # label kind -> weak_labels arguments
    "scribbles": ("scribbles", {}),
    "scribbles_30": ("scribbles", {"keep_fraction": 0.3}),
    "points": ("points", {}),
}
METHODS = one_image.METHODS
VARIANTS = {  # SPML alternatives measured for SPML_CHOICES
    "spml_head": {"predictor": "head"},
    "spml_crf": {"crf": True},
    "spml_affinity": {"feature_affinity": True},
}
COLUMNS = ["dataset", "scene", "kind", "method", "miou", "seconds", "steps", "classes"]


def scene_labels(scenes, index, kind):
    """Return the scene's weak labels with ids 0..K-1, and the scene class of each id."""
    name, options = LABELS[kind]
    labels = annotations.weak_labels(
        scenes.semantic[index], scenes.instance[index], name, seed=index, **options
    )
    classes = np.unique(labels[labels != IGNORE_INDEX])  # (K,) scene class of each id
    ids = np.full(256, IGNORE_INDEX, np.uint8)
    ids[classes] = np.arange(len(classes))
    return ids[labels], classes


def score(mask, classes, semantic, num_classes):
    pred = torch.from_numpy(classes[mask].astype(np.int64))[None]
    truth = torch.from_numpy(semantic.astype(np.int64))[None]
    return float(metrics.image_miou(pred, truth, num_classes)[0])


def read_rows(path):
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def run(out, num_scenes, methods, steps, datasets=DATASETS, kinds=tuple(LABELS)):
    rows = read_rows(out)
    other = {r["steps"] for r in rows if r["steps"]} - {str(steps)}
    if other:  # a resumed run must measure what its rows measured
        raise SystemExit(f"{out} holds rows of --steps {sorted(other)}, not {steps}; "
                         "resume with the same --steps or write to another --out")  # fmt: skip
    done = {(r["dataset"], r["scene"], r["kind"], r["method"]) for r in rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    new_file = not out.is_file()
    with out.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        if new_file:
            writer.writeheader()
        for dataset in datasets:
            scenes = synthetic.generate(num_scenes, kind=dataset, size=SIZE, seed=TEST_SEED)
            for index in range(num_scenes):
                for kind in kinds:
                    scribbles, classes = scene_labels(scenes, index, kind)
                    for method in methods:
                        if (dataset, str(index), kind, method) in done:
                            continue
                        base = method if method in METHODS else "spml"
                        tic = time.perf_counter()
                        mask = one_image.segment(
                            scenes.images[index], scribbles, base, steps=steps, seed=0,
                            choices=VARIANTS.get(method),
                        )  # fmt: skip
                        seconds = time.perf_counter() - tic
                        miou = score(mask, classes, scenes.semantic[index], scenes.num_classes)
                        writer.writerow({
                            "dataset": dataset, "scene": index, "kind": kind, "method": method,
                            "miou": f"{miou:.4f}", "seconds": f"{seconds:.2f}",
                            "steps": "" if method == "forest" else steps,
                            "classes": len(classes),
                        })  # fmt: skip
                        handle.flush()  # a killed run keeps every finished row
                        print(f"{dataset:7s} scene {index:2d} {kind:12s} {method:13s} "
                              f"mIoU {miou:.3f}  {seconds:5.1f} s", flush=True)  # fmt: skip


def summarise(rows):
    """Mean, std and n of mIoU and seconds per (dataset, kind, method); the 2-SE verdicts."""
    cells = {}
    for row in rows:
        cell = cells.setdefault((row["dataset"], row["kind"], row["method"]), ([], []))
        cell[0].append(float(row["miou"]))
        cell[1].append(float(row["seconds"]))
    summary = []
    for (dataset, kind, method), (mious, seconds) in cells.items():
        mean, std = claims.mean_std(mious)
        summary.append({"dataset": dataset, "kind": kind, "method": method, "n": len(mious),
                        "miou_mean": mean, "miou_std": std or 0.0,
                        "seconds_mean": float(np.mean(seconds))})  # fmt: skip
    verdicts = []
    for dataset, kind in dict.fromkeys((d, k) for d, k, _ in cells):
        spml = cells.get((dataset, kind, "spml"))
        for other in [m for d, k, m in cells if (d, k) == (dataset, kind) and m != "spml"]:
            if spml is None:
                continue
            difference, se = claims.compare(spml[0], cells[(dataset, kind, other)][0])
            if se is None:
                verdict = "n < 2"
            elif difference > 2 * se:
                verdict = "spml better"
            elif difference < -2 * se:
                verdict = f"{other} better"
            else:
                verdict = "no difference within 2 SE"
            verdicts.append({"dataset": dataset, "kind": kind, "versus": other,
                             "difference": difference, "se": se, "verdict": verdict})  # fmt: skip
    return summary, verdicts


def plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(s["method"] for s in summary))
    kinds = list(dict.fromkeys(s["kind"] for s in summary))
    datasets = list(dict.fromkeys(s["dataset"] for s in summary))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.6), squeeze=False)
    width = 0.8 / len(methods)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for m, method in enumerate(methods):
            cells = {
                s["kind"]: s for s in summary if (s["dataset"], s["method"]) == (dataset, method)
            }
            x = np.arange(len(kinds)) + (m - (len(methods) - 1) / 2) * width
            means = [cells[k]["miou_mean"] if k in cells else np.nan for k in kinds]
            stds = [cells[k]["miou_std"] if k in cells else np.nan for k in kinds]
            ax.bar(x, means, width, yerr=stds, capsize=2, label=method)
        n = max(s["n"] for s in summary if s["dataset"] == dataset)
        ax.set(xticks=range(len(kinds)), xticklabels=kinds, ylim=(0, 1), ylabel="mIoU",
               title=f"{dataset}: mean ± std over {n} scenes")  # fmt: skip
    axes[0, -1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(out):
    summary, verdicts = summarise(read_rows(out))
    print(f"\n{'dataset':8s} {'kind':13s} {'method':14s} {'n':>3s} {'mIoU':>15s} {'s/image':>8s}")
    for s in summary:
        print(f"{s['dataset']:8s} {s['kind']:13s} {s['method']:14s} {s['n']:3d} "
              f"{s['miou_mean']:.3f} ± {s['miou_std']:.3f} {s['seconds_mean']:8.1f}")  # fmt: skip
    print()
    for v in verdicts:
        se = "n/a" if v["se"] is None else f"{v['se']:.3f}"
        print(f"{v['dataset']:8s} {v['kind']:13s} spml - {v['versus']:13s} "
              f"{v['difference']:+.3f} (SE {se}): {v['verdict']}")  # fmt: skip
    plot(summary, out.with_suffix(".png"))
    written = {"_summary": summary, "_claims": verdicts}  # what tables.py reads for the docs
    for suffix, rows in written.items():
        rounded = [{k: _rounded(v) for k, v in row.items()} for row in rows]
        bench_runs.write_csv(out.with_name(out.stem + suffix + ".csv"), rounded)
    print(f"\nwrote {out}, its _summary.csv, _claims.csv and {out.with_suffix('.png')}")


def _rounded(value):
    """Four decimals for a CSV (a mean or SE), anything else as it is."""
    return f"{value:.4f}" if isinstance(value, float) else value


SPEED_OUT = RESULTS / "one_image_speed.csv"
SPEED_COLUMNS = [
    "photo", "height", "width", "threads", "steps", "first_mask_s", "first_spml_s",
    "max_gap_s", "last_mask_s", "masks", "cpu_s", "load_before", "load_after", "target_met",
]  # fmt: skip
FIRST_MASK_TARGET, GAP_TARGET = 10.0, 2.0  # seconds: the widget's promise on 2 cores


def speed(steps, threads=(1,), out=SPEED_OUT):
    """Time what the widget's Train button runs, on the bundled photos at 256 px.

    `scribbling.Training` (the forest, then SPML with a progress mask every
    ``one_image.RECIPE.update_every`` steps) on each photo with stored strokes, after
    `scribbling.warm_up` (which the widget runs when it is made, while its user paints), with
    each number of torch threads in `threads` (the widget uses `scribbling.THREADS`). Per run:
    seconds from start to the first mask (the forest's), to SPML's first mask, the longest gap
    between two masks after the first one, and the process's CPU seconds (with load, wall time
    exceeds them). Written to `out` with the load average before and after each run.

    Hardware of the committed CSV: AMD EPYC, 2 cores, shared with other jobs (see the load
    columns); ``python benchmarks/one_image.py --speed --threads 1 2``.
    """
    import os

    from spml_lab.classroom import photos, scribbling

    print(f"targets: first mask <= {FIRST_MASK_TARGET:g} s after Train, then an update at "
          f"least every {GAP_TARGET:g} s; {os.cpu_count()} cores")  # fmt: skip
    tic = time.perf_counter()
    scribbling.warm_up().join()
    print(f"warm-up (once per process, when a widget is made): {time.perf_counter() - tic:.1f} s")
    rows = []
    for count in threads:
        for name in photos.stored():
            image = photos.photo(name)
            strokes = photos.stored_scribbles(name, image.shape[:2])
            load = os.getloadavg()[0]
            cpu = time.process_time()
            training = scribbling.Training(lambda *mask: None, steps=steps, threads=count)
            training.start(image, strokes)
            training.join()
            if training.error is not None:
                raise training.error
            times = sorted(training.times.values())
            first_spml = min(t for (m, _), t in training.times.items() if m == "spml")
            gap = float(np.diff(times).max(initial=0))
            row = {
                "photo": name, "height": image.shape[0], "width": image.shape[1],
                "threads": count, "steps": steps,
                "first_mask_s": round(times[0], 2), "first_spml_s": round(first_spml, 2),
                "max_gap_s": round(gap, 2), "last_mask_s": round(times[-1], 2),
                "masks": len(times), "cpu_s": round(time.process_time() - cpu, 2),
                "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
                "target_met": times[0] <= FIRST_MASK_TARGET and gap <= GAP_TARGET,
            }  # fmt: skip
            rows.append(row)
            print(f"{name:10s} {image.shape[0]}x{image.shape[1]} {count} thread(s): first mask "
                  f"{times[0]:4.1f} s, SPML's {first_spml:4.1f} s, then every {gap:3.1f} s at "
                  f"most ({len(times)} masks in {times[-1]:4.1f} s, {row['cpu_s']:4.1f} CPU s, "
                  f"load {load:.1f})")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, SPEED_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=30, help="scenes per dataset kind")
    parser.add_argument("--steps", type=int, default=one_image.RECIPE.steps)
    parser.add_argument("--variants", action="store_true", help="also SPML's alternatives")
    parser.add_argument("--quick", action="store_true", help="2 scenes, 10 steps, into outputs/")
    parser.add_argument("--speed", action="store_true", help="time the widget's Train button")
    parser.add_argument("--report", action="store_true", help="run nothing; report the CSV")
    parser.add_argument("--out", type=Path, default=None, help=f"CSV (default {OUT})")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--kinds", nargs="+", choices=list(LABELS), default=list(LABELS))
    parser.add_argument("--methods", nargs="+", default=None,
                        help=f"subset of {list(METHODS) + list(VARIANTS)}")  # fmt: skip
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="torch threads (default 1; --speed: each one given)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.speed:
        return speed(args.steps, threads=args.threads or (1,), out=args.out or SPEED_OUT)
    if args.report:
        return report(args.out or OUT)
    torch.set_num_threads((args.threads or [1])[0])
    if args.quick:
        args.scenes, args.steps = 2, 10
    out = args.out or (QUICK_OUT if args.quick else OUT)
    methods = args.methods or list(METHODS) + (list(VARIANTS) if args.variants else [])
    unknown = sorted(set(methods) - set(METHODS) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}")
    run(out, args.scenes, methods, args.steps, args.datasets, args.kinds)
    report(out)


if __name__ == "__main__":
    main()
