"""The paper's accuracy claims, measured on the embedded synthetic data.

For each weak annotation kind of the "objects" scenes (tags, boxes, points, scribbles) this
trains SPML and a partial cross-entropy baseline on the same weak labels, with the same
network, crop, batch, steps and seed, and the same network on full masks; then a relation
ablation of the scribble run (low-level, semantic annotation, co-occurrence removed in turn);
and, on the "parts" scenes (the DensePose setting), points SPML vs baseline vs full masks.

* Tags and boxes go through CAM pseudo labels first, as the paper does on VOC: a tag
  classifier (`cam.train_tag_classifier`) on the training tags, then `cam.write_pseudo_labels`
  writes the ``cam_tags`` / ``cam_boxes`` lists that SPML and the baseline both train on.
* Relations per kind follow the paper's scripts (`relations.PAPER_SETTINGS`): low-level 16/0.1,
  semantic annotation 6/1.0 (0.3 for tags), co-occurrence 12/0.5 (8/0.3 for tags), memory of
  2 batches; parts/points: low-level, semantic annotation and feature affinity 12/0.5, no
  co-occurrence, no memory.
* The baseline is ``head_trains_embedding=True`` with every relation off; full supervision is
  the same on ``annotation="full"``.
* Every run is scored by `evaluate.evaluate_run` on the validation split: ``softmax_crf`` is the
  headline for every run, plus ``softmax`` and, for SPML runs, ``knn`` (``--stage2`` adds the
  stage-2 head and ``stage2_crf``).

Commands::

    python benchmarks/accuracy.py --reduced --threads 2    # CPU: 400/100 images, 600 steps
    python benchmarks/accuracy.py --device cuda            # GPU: 2,000/500 images, 3,000 steps
    python benchmarks/accuracy.py --reduced --only objects/scribbles/spml objects/full/full
    python benchmarks/accuracy.py --reduced --steps 300 --work data/bench_300

The work folder (default ``data/bench`` or ``data/bench_reduced``) holds the datasets
(``objects/``, ``parts/``, reused when their sizes and seed match), the CAM pseudo labels and one
run folder per run (``runs/{dataset}_{kind}_{method}``). The benchmark is resumable: a run whose
folder has ``eval/metrics.json`` is not trained or scored again, a finished run without it is only
scored, and a killed run resumes from its checkpoint. Writes
``benchmarks/results/accuracy_{cpu_reduced|<device>}.csv`` (one row per run), ``..._claims.csv``
(each claim, PASS/FAIL) and ``....png`` (SPML / baseline / full per kind, and the ablation).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spml_lab import cam, datasets, evaluate, make_data, metrics, stage2, train
from spml_lab.config import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results"
FULL = {"train": 2000, "val": 500, "steps": 3000, "batch": 8, "width": 64, "cam_steps": 1500}
REDUCED = {"train": 400, "val": 100, "steps": 600, "batch": 4, "width": 32, "cam_steps": 300}
KINDS = ("tags", "boxes", "points", "scribbles")
TRAIN_ON = {"tags": "cam_tags", "boxes": "cam_boxes", "points": "points", "scribbles": "scribbles"}
OFF = {"low_level": False, "semantic_annotation": False, "cooccurrence": False}
BASELINE = {**OFF, "feature_affinity": False, "head_trains_embedding": True}
# the paper's tag run: semantic annotation of CAM labels at 0.3, co-occurrence kappa 8 at 0.3
TAG_RUN = {
    "semantic_annotation_weight": 0.3,
    "cooccurrence_concentration": 8.0,
    "cooccurrence_weight": 0.3,
}
# the paper's DensePose point run: no tags to co-occur, no memory, feature affinity on
PARTS_RUN = {"cooccurrence": False, "feature_affinity": True, "memory_size": 0}
ABLATIONS = ("low_level", "semantic_annotation", "cooccurrence")


@dataclass
class Plan:
    """One run of the benchmark: which data, which labels, which TrainConfig changes."""

    dataset: str  # "objects" | "parts"
    kind: str  # tags | boxes | points | scribbles | full
    method: str  # spml | baseline | full | no_<relation>
    changes: dict = field(default_factory=dict)

    @property
    def name(self):
        """``dataset/kind/method``, what ``--only`` matches."""
        return f"{self.dataset}/{self.kind}/{self.method}"

    @property
    def spml(self):
        """Whether the run trains with relations (then kNN retrieval is scored too)."""
        return self.method == "spml" or self.method.startswith("no_")


def plans():
    """Every run, in the order they are trained."""
    out = []
    for kind in KINDS:
        extra = TAG_RUN if kind == "tags" else {}
        out.append(Plan("objects", kind, "spml", {"annotation": TRAIN_ON[kind], **extra}))
        out.append(Plan("objects", kind, "baseline", {"annotation": TRAIN_ON[kind], **BASELINE}))
    out.append(Plan("objects", "full", "full", {"annotation": "full", **BASELINE}))
    for relation in ABLATIONS:
        changes = {"annotation": "scribbles", relation: False}
        out.append(Plan("objects", "scribbles", f"no_{relation}", changes))
    out.append(Plan("parts", "points", "spml", {"annotation": "points", **PARTS_RUN}))
    out.append(Plan("parts", "points", "baseline", {"annotation": "points", **BASELINE}))
    out.append(Plan("parts", "full", "full", {"annotation": "full", **BASELINE}))
    return out


# --------------------------------------------------------------------------------- data


def ensure_dataset(root, kind, num_train, num_val, seed):
    """Write a synthetic dataset, or reuse the one at `root` if sizes, kind and seed match."""
    meta_path = root / "dataset.json"
    want = {"train": num_train, "val": num_val}
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta["kind"] == kind and meta["seed"] == seed and meta["splits"] == want:
            return root
        raise ValueError(
            f"{root} holds another dataset ({meta['kind']}, seed {meta['seed']}, "
            f"splits {meta['splits']}); pass another --work folder"
        )
    print(f"writing {kind} data: {num_train} train / {num_val} val -> {root}", flush=True)
    return make_data.write_dataset(
        root, kind=kind, num_train=num_train, num_val=num_val, seed=seed, overwrite=True
    )


def ensure_cam_labels(root, steps, width, seed, device):
    """Train the tag classifier once and write the cam_tags / cam_boxes lists of the train split.

    Returns a dict of the pseudo labels' quality (mIoU over labelled pixels, labelled fraction).
    """
    quality_path = root / "cam_quality.json"
    lists = [root / "lists" / f"train_cam_{kind}.txt" for kind in ("tags", "boxes")]
    if quality_path.is_file() and all(p.is_file() for p in lists):
        return json.loads(quality_path.read_text())
    tic = time.perf_counter()
    tags = datasets.from_folder(root, "train", "tags")
    net = cam.train_tag_classifier(
        tags, steps=steps, batch_size=8, lr=2e-3, seed=seed, width=width, device=device
    )
    quality = {"classifier_steps": steps}
    truth = datasets.from_folder(root, "train", "full")
    for kind in ("tags", "boxes"):
        cam.write_pseudo_labels(net, root, "train", kind)
        pseudo = datasets.from_folder(root, "train", f"cam_{kind}")
        confusion = torch.zeros(truth.num_classes, truth.num_classes, dtype=torch.long)
        labelled = total = 0
        for index in range(len(truth)):
            label, gt = pseudo[index]["label"], truth[index]["label"]
            known = label != 255  # score only the pixels the pseudo labels claim
            confusion += metrics.confusion_matrix(
                torch.where(known, label, 0), torch.where(known, gt, 255), truth.num_classes
            )
            labelled += int(known.sum())
            total += label.numel()
        quality[kind] = {
            "miou_on_labelled": metrics.mean_iou(confusion)[0],
            "labelled_fraction": labelled / total,
        }
    quality["seconds"] = round(time.perf_counter() - tic, 1)
    quality_path.write_text(json.dumps(quality, indent=2) + "\n")
    return quality


# --------------------------------------------------------------------------------- runs


def run_one(plan, data_root, run_dir, args, sizes):
    """Train (or resume) and score one run; return its CSV row."""
    timing_path = run_dir / "bench_timing.json"
    metrics_path = run_dir / evaluate.EVAL_DIR / "metrics.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    if not metrics_path.is_file():
        cfg = TrainConfig(
            data=str(data_root),
            model="small",
            width=sizes["width"],
            crop_size=128,
            batch_size=sizes["batch"],
            max_steps=sizes["steps"],
            seed=args.seed,
            device=args.device,
            progress=False,
            log_every=max(1, sizes["steps"] // 10),
            checkpoint_every=max(1, sizes["steps"] // 4),
            out_dir=str(run_dir),
            **plan.changes,
        )
        if not (run_dir / "final.pt").is_file():
            resume = (run_dir / "checkpoint.pt").is_file()
            print(f"[{plan.name}] training {cfg.max_steps} steps" + (" (resumed)" * resume))
            tic = time.perf_counter()
            # resume=True also starts afresh over a run killed before its first checkpoint
            train.fit(cfg.replace(resume=True))
            timing["train_seconds"] = timing.get("train_seconds", 0.0) + time.perf_counter() - tic
            timing_path.write_text(json.dumps(timing) + "\n")
        methods = ["softmax", "softmax_crf"] + (["knn"] if plan.spml else [])
        if args.stage2 and plan.spml:
            if not (run_dir / evaluate.STAGE2).is_file():
                tic = time.perf_counter()
                stage2.fit_head(run_dir, steps=args.stage2, device=args.device)
                timing["stage2_seconds"] = time.perf_counter() - tic
                timing_path.write_text(json.dumps(timing) + "\n")
            methods.append("stage2_crf")
        print(f"[{plan.name}] scoring {methods} on val", flush=True)
        evaluate.evaluate_run(run_dir, split="val", methods=methods, device=args.device)
    results = json.loads(metrics_path.read_text())
    cfg = TrainConfig.from_yaml(run_dir / "config.yaml")

    def score(method):
        return round(results[method]["miou"], 4) if method in results else ""

    row = {
        "dataset": plan.dataset,
        "kind": plan.kind,
        "method": plan.method,
        "annotation": cfg.annotation,
        "relations": "+".join(cfg.relation_settings()) or "none (cross-entropy)",
        "miou": score("softmax_crf"),
        "miou_softmax": score("softmax"),
        "miou_knn": score("knn"),
        "miou_stage2_crf": score("stage2_crf"),
        "steps": results["config"]["step"],
        "batch": cfg.batch_size,
        "train_images": sizes["train"],
        "val_images": results["images"],
        "train_seconds": round(timing.get("train_seconds", float("nan")), 1),
        "eval_seconds": round(results["seconds"], 1),
        "device": args.device,
    }
    print(f"[{plan.name}] mIoU softmax+CRF {row['miou']}  softmax {row['miou_softmax']}  "
          f"kNN {row['miou_knn']}", flush=True)  # fmt: skip
    return row


# --------------------------------------------------------------------------------- claims


def check_claims(rows):
    """Check the paper's expectations on this data; return one dict per claim."""
    by = {(r["dataset"], r["kind"], r["method"]): r["miou"] for r in rows}
    claims = []

    def add(text, left, right, ok):
        claims.append({"claim": text, "value": left, "reference": right, "holds": ok})

    for dataset, kind in [("objects", k) for k in KINDS] + [("parts", "points")]:
        spml, base = by.get((dataset, kind, "spml")), by.get((dataset, kind, "baseline"))
        if spml is not None and base is not None:
            add(f"{dataset}/{kind}: SPML > baseline", spml, base, spml > base)
    spml, full = by.get(("objects", "scribbles", "spml")), by.get(("objects", "full", "full"))
    if spml is not None and full is not None:
        bar = round(0.9 * full, 4)
        add("objects/scribbles: SPML >= 90% of full", spml, bar, spml >= 0.9 * full)
    for relation in ABLATIONS:
        ablated = by.get(("objects", "scribbles", f"no_{relation}"))
        if ablated is not None and spml is not None:
            text = f"objects/scribbles: removing {relation} lowers mIoU"
            add(text, ablated, spml, ablated < spml)
    # the same ablation read through kNN retrieval (SPML's own stage-1 predictor)
    knn = {
        r["method"]: r["miou_knn"]
        for r in rows
        if (r["dataset"], r["kind"]) == ("objects", "scribbles")
    }
    for relation in ABLATIONS:
        ablated, whole = knn.get(f"no_{relation}", ""), knn.get("spml", "")
        if ablated != "" and whole != "":
            text = f"objects/scribbles: removing {relation} lowers kNN mIoU"
            add(text, ablated, whole, ablated < whole)
    return claims


# --------------------------------------------------------------------------------- output


def write_csv(path, rows):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(r["dataset"], r["kind"], r["method"]): r["miou"] for r in rows}
    groups = [("objects", k) for k in KINDS] + [("parts", "points")]
    groups = [g for g in groups if (*g, "spml") in by or (*g, "baseline") in by]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), width_ratios=[2, 1])
    for offset, method, colour in ((-0.2, "spml", "tab:blue"), (0.2, "baseline", "tab:orange")):
        xs = [i + offset for i, g in enumerate(groups) if (*g, method) in by]
        ys = [by[(*g, method)] for g in groups if (*g, method) in by]
        label = "SPML" if method == "spml" else "partial cross-entropy"
        bars = left.bar(xs, ys, 0.4, label=label, color=colour)
        left.bar_label(bars, fmt="%.3f", fontsize=7)
    for i, (dataset, _) in enumerate(groups):
        full = by.get((dataset, "full", "full"))
        if full is not None:
            left.hlines(full, i - 0.45, i + 0.45, colors="black", linestyles="--",
                        label="full masks" if i == 0 else None)  # fmt: skip
    left.set_xticks(range(len(groups)), [f"{d}\n{k}" for d, k in groups])
    left.set_ylabel("val mIoU (softmax + CRF)")
    left.set_title("SPML vs partial cross-entropy vs full masks")
    top = max([r["miou"] for r in rows if isinstance(r["miou"], float)] + [0.01])
    left.set_ylim(0, 1.3 * top)  # headroom for the legend above the bars
    left.legend(loc="upper left", ncol=3, fontsize=8)
    names = ["spml"] + [f"no_{r}" for r in ABLATIONS]
    present = [n for n in names if ("objects", "scribbles", n) in by]
    scribbles = [r for r in rows if (r["dataset"], r["kind"]) == ("objects", "scribbles")]
    ablation = {r["method"]: r for r in scribbles}
    # kNN retrieval is SPML's own stage-1 predictor: shown beside the headline softmax + CRF
    for offset, key, colour in ((-0.2, "miou", "tab:blue"), (0.2, "miou_knn", "tab:green")):
        xs = [i + offset for i, n in enumerate(present) if ablation[n][key] != ""]
        ys = [float(ablation[n][key]) for n in present if ablation[n][key] != ""]
        label = "softmax + CRF" if key == "miou" else "kNN retrieval"
        bars = right.bar(xs, ys, 0.4, color=colour, label=label)
        right.bar_label(bars, fmt="%.3f", fontsize=7)
    values = [float(r[k]) for r in scribbles for k in ("miou", "miou_knn") if r[k] != ""]
    right.set_ylim(0, 1.3 * max(values + [0.01]))
    right.legend(loc="upper left", ncol=2, fontsize=8)
    right.set_xticks(range(len(present)), [n.replace("no_", "-").replace("_", "\n")
                                          for n in present], fontsize=8)  # fmt: skip
    right.set_ylabel("val mIoU")
    right.set_title("objects/scribbles: each relation removed")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reduced", action="store_true",
                        help=f"CPU-sized run: {REDUCED} instead of {FULL}")  # fmt: skip
    parser.add_argument("--steps", type=int, help="training steps of every run")
    parser.add_argument("--train", type=int, help="training images per dataset")
    parser.add_argument("--val", type=int, help="validation images per dataset")
    parser.add_argument("--batch", type=int, help="images per step")
    parser.add_argument("--cam-steps", type=int, help="tag classifier steps")
    parser.add_argument("--device", default="auto", help="cpu, cuda, auto (default: auto)")
    parser.add_argument("--work", help="datasets and runs (default data/bench[_reduced])")
    parser.add_argument("--only", nargs="+", default=None,
                        help="run names or prefixes, e.g. objects/scribbles parts")  # fmt: skip
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="data and training seed")
    parser.add_argument("--stage2", type=int, default=0, metavar="STEPS",
                        help="also train a stage-2 head for SPML runs (STEPS steps)")  # fmt: skip
    parser.add_argument("--out", help="CSV path (default benchmarks/results/accuracy_*.csv)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = str(train.resolve_device(args.device))
    sizes = dict(REDUCED if args.reduced else FULL)
    for key in ("steps", "train", "val", "batch", "cam_steps"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    work = Path(args.work or ("data/bench_reduced" if args.reduced else "data/bench"))
    tag = "cpu_reduced" if args.reduced and args.device == "cpu" else args.device.split(":")[0]
    tag += "_reduced" if args.reduced and args.device != "cpu" else ""
    out = Path(args.out) if args.out else RESULTS / f"accuracy_{tag}.csv"
    chosen = [p for p in plans() if not args.only or any(p.name.startswith(o) for o in args.only)]
    if not chosen:
        raise SystemExit(f"--only {args.only} matches no run of {[p.name for p in plans()]}")

    start = time.perf_counter()
    roots = {}
    for dataset in sorted({p.dataset for p in chosen}):
        roots[dataset] = ensure_dataset(work / dataset, dataset, sizes["train"], sizes["val"],
                                        args.seed)  # fmt: skip
    if any(p.kind in ("tags", "boxes") for p in chosen):
        quality = ensure_cam_labels(roots["objects"], sizes["cam_steps"], 32, args.seed,
                                    args.device)  # fmt: skip
        print(f"CAM pseudo labels: {json.dumps(quality)}", flush=True)
    rows = []
    for plan in chosen:
        run_dir = work / "runs" / plan.name.replace("/", "_")
        rows.append(run_one(plan, roots[plan.dataset], run_dir, args, sizes))
    total = time.perf_counter() - start

    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out, rows)
    claims = check_claims(rows)
    if claims:
        write_csv(out.with_name(out.stem + "_claims.csv"), claims)
    title = (f"{sizes['train']} train / {sizes['val']} val images, {sizes['steps']} steps of "
             f"{sizes['batch']}, {args.device}")  # fmt: skip
    plot(rows, out.with_suffix(".png"), title)
    print()
    print(f"{'run':<34} {'sm+CRF':>7} {'softmax':>7} {'kNN':>7} {'train s':>8}")
    for row in rows:
        name = f"{row['dataset']}/{row['kind']}/{row['method']}"
        print(f"{name:<34} {row['miou']:>7} {row['miou_softmax']:>7} {row['miou_knn']:>7} "
              f"{row['train_seconds']:>8}")  # fmt: skip
    print()
    for claim in claims:
        verdict = "PASS" if claim["holds"] else "FAIL"
        print(f"{verdict}  {claim['claim']}: {claim['value']} vs {claim['reference']}")
    print(f"\nwrote {out} and {out.with_suffix('.png')}; this invocation took {total:.0f} s")


if __name__ == "__main__":
    main()
