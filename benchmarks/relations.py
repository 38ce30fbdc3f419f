"""Where does each relation matter? The relations study, on the calibrated embedded scenes.

The accuracy benchmark (`accuracy.py`) shows that SPML beats partial cross-entropy for every
annotation kind, but removing low-level similarity or co-occurrence from the scribble run
changed nothing measurable, and "SPML > partial CE" credits the relations with whatever the
pseudo-label pipeline (pseudo labels, stage 2, CRF) adds. This study locates each relation's
effect and separates the relations from the pipeline. Protocol, fixed before any of its SPML
numbers was looked at:

* **Data.** "objects": the scenes and recipe of `accuracy.py --reduced` (``DATA``, ``RECIPE``,
  ``FORMS["reduced"]``: 400 train / 100 val / 200 test images, 1,000 steps of 8 crops, 300
  stage-2 steps). "parts": the first parts setting of `calibrate.py` that passes the three
  calibration checks with the baselines alone, tried in the order listed there (difficulty
  0.1, 0.25, 0.4); the study's parts data are written at that difficulty.
* **Split, seeds, metric.** Every number is on the **test** split (its own generator seed);
  nothing is tuned here. Each cell is trained with seeds 0, 1, 2 (weights, data order,
  augmentation; data and CAM classifier fixed) and reported as mean +- std. The headline
  ``miou`` is stage 2 + flip + dense CRF for runs trained with relations and for
  ``baseline_stage2``, softmax + flip + CRF for ``baseline`` and ``full``; ``miou_knn`` (stage-1
  kNN retrieval) and ``miou_softmax_crf`` (stage-1 head + CRF) are kept beside it.
* **Claims rule.** A difference holds when it exceeds 2 standard errors of the difference,
  ``sqrt(sd_a^2/n_a + sd_b^2/n_b)`` (`spml_lab.sweeps.claims`). A relation **helps** where
  removing it lowers mIoU by more than 2 SE, **hurts** where removing it raises mIoU by more than
  2 SE, and shows **no measurable effect** otherwise (then the 2 SE bound is the size of effect
  the study could have seen).
* **Cells** (method names as in `accuracy.py`; ``no_<relation>`` = SPML without it):

  a. objects, every kind (tags, boxes, points, scribbles): ``spml``, ``no_low_level``,
     ``no_cooccurrence``; ``no_semantic_annotation`` for scribbles.
  b. objects, every kind: ``baseline_stage2``, the partial-CE network through the same pseudo
     labels, stage 2 and CRF: the pipeline without the relations.
  c. parts, points, the paper's DensePose settings (`accuracy.PARTS_RUN`: semantic annotation
     1.0, no co-occurrence, no memory, feature affinity 12 / 0.5, low-level similarity on the
     plain embedding): ``spml``, ``no_low_level``, ``no_feature_affinity``, ``baseline``,
     ``baseline_stage2``, ``full``.
  d. label sparsity, as the paper's scribble-length figure: scribbles shortened to 50 % and
     30 % of their length (kinds ``scribbles_50``, ``scribbles_30``) beside whole scribbles and
     points, for ``spml``, ``baseline`` and ``baseline_stage2``. The paper reports SPML at
     97.5 % of full supervision with whole scribbles and 93 % with points, its baselines
     falling from 96 % to 83 % (Tang et al. 2018) and from 92 % to 75 % (ScribbleSup).
  e. one mechanism test per relation that showed no effect or a harmful one before this study
     (the accuracy ablation and a one-seed look on points and tags), each with its hypothesis:

     - **H_occ** (co-occurrence, tags): the relation's effect on tags follows the data's
       co-occurrence structure. Scenes whose classes always come from one scene-type pair
       (generator ``cooccurrence`` 1.0) gain more from it than scenes that never do (0.0):
       ``D(1.0) - D(0.0) > 2 SE``, where ``D = spml - no_cooccurrence`` and SE is the
       standard error of that difference of differences. The default data (0.8) sits between.
     - **H_low** (low-level similarity, points): with 16 superpixels per 96 px image (about
       one per object) the relation adds nothing that k-means segments split by superpixel do
       not already give; with 48 (finer than objects, as the paper's VOC superpixels are)
       removing it lowers points' mIoU by more than 2 SE.
     - feature affinity is first measured in c; a mechanism test for it is chosen only if c
       shows no effect.

  Cells a and the spml / baseline / full cells of objects are those of the accuracy
  benchmark: its committed rows (``accuracy_cpu_reduced.csv``, same data, recipe and code
  path) are read, not retrained (frozen in ``relations_cpu_reduced_reused.csv`` when the
  accuracy benchmark was later rerun with the faster loss blocks, `claims.STUDY_REUSES`);
  ``baseline_stage2`` retrains the baseline (its stage-1 head + CRF, ``miou_softmax_crf``,
  must reproduce the committed baseline rows).
* **Claims written** (``relations_cpu_reduced_claims.csv``): each relation x setting effect
  (helps / hurts / no measurable effect) on ``miou`` and ``miou_knn``; per kind "SPML >
  baseline_stage2" (the relations beyond the pipeline), "baseline_stage2 > partial CE" (the
  pipeline alone) and "stage 2 + CRF > stage-1 softmax + CRF"; parts "SPML > partial CE";
  H_occ and H_low.

Budget on 2 cores: an SPML run takes 5-6 min with its stage 2 and scoring, a baseline about 3
(``--jobs 2`` runs two single-thread runs side by side), about 8 hours for every cell. Runs go
in priority order (b, a, c, e, d) and resume at three levels: a run folder resumes from its
checkpoint, a finished run is scored once, and a (cell, seed) with a row in the CSV is never
run again, so the study accumulates across sessions::

    python benchmarks/relations.py --jobs 2 --minutes 100   # bank what finishes in 100 min
    python benchmarks/relations.py --report                 # summary, claims and figure only
    python benchmarks/relations.py --only b a/points --seeds 0

Writes ``benchmarks/results/relations_cpu_reduced.csv`` (rows as `accuracy.py` writes them),
``..._summary.csv``, ``..._claims.csv`` and ``....png``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import accuracy
import bench_runs
from accuracy import BASELINE, PARTS_RUN, TRAIN_ON, Plan

from spml_lab.classroom.figures import show_relation_effects
from spml_lab.data import make_data
from spml_lab.labelling import tag_training
from spml_lab.sweeps.claims import (
    KINDS,
    STUDY,
    check_relations_study,
    relation_effects,
    study_rows,
    summarise,
)

RESULTS = Path(__file__).resolve().parent / "results"
OUT = RESULTS / STUDY
SEEDS = (0, 1, 2)
# the mechanism tests' data: the objects scenes with one setting changed (H_occ, H_low)
DATA = {
    **accuracy.DATA,
    "objects_cooc0": {**accuracy.DATA["objects"], "options": {
        **accuracy.DATA["objects"]["options"], "cooccurrence": 0.0}},
    "objects_cooc1": {**accuracy.DATA["objects"], "options": {
        **accuracy.DATA["objects"]["options"], "cooccurrence": 1.0}},
    "objects_sp48": {**accuracy.DATA["objects"], "superpixels": {"n_segments": 48}},
}  # fmt: skip
SHORTENED = ("scribbles_50", "scribbles_30")  # the label-sparsity cells (d)


def plans():
    """Every cell of the study as ``(group, Plan)``, in the order they are run."""
    contrast = {"contrast_images": accuracy.CONTRAST_IMAGES["reduced"]}

    def spml(dataset, kind, method="spml", **changes):
        annotation = TRAIN_ON.get(kind, kind)  # shortened scribbles train on their own list
        return Plan(dataset, kind, method, {"annotation": annotation, **contrast, **changes})

    def baseline(dataset, kind, method="baseline"):
        annotation = TRAIN_ON.get(kind, kind)
        return Plan(dataset, kind, method, {"annotation": annotation, **BASELINE})

    out = [("b", baseline("objects", kind, "baseline_stage2")) for kind in KINDS]
    for kind in KINDS:
        out.append(("a", spml("objects", kind)))
        for relation in ("low_level", "cooccurrence"):
            out.append(("a", spml("objects", kind, f"no_{relation}", **{relation: False})))
    out.append(("a", spml("objects", "scribbles", "no_semantic_annotation",
                          semantic_annotation=False)))  # fmt: skip
    parts = {**PARTS_RUN, "contrast_images": accuracy.CONTRAST_IMAGES["reduced"]}
    out += [
        ("c", Plan("parts", "points", "spml", {"annotation": "points", **parts})),
        ("c", Plan("parts", "points", "no_low_level",
                   {"annotation": "points", **parts, "low_level": False})),
        ("c", Plan("parts", "points", "no_feature_affinity",
                   {"annotation": "points", **parts, "feature_affinity": False})),
        ("c", baseline("parts", "points")),
        ("c", baseline("parts", "points", "baseline_stage2")),
        ("c", baseline("parts", "full", "full")),
    ]  # fmt: skip
    for dataset in ("objects_cooc0", "objects_cooc1"):
        out += [("e", spml(dataset, "tags")),
                ("e", spml(dataset, "tags", "no_cooccurrence", cooccurrence=False))]  # fmt: skip
    out += [("e", spml("objects_sp48", "points")),
            ("e", spml("objects_sp48", "points", "no_low_level", low_level=False))]  # fmt: skip
    for kind in SHORTENED:  # whole scribbles and points are cells of a and b
        out += [("d", spml("objects", kind)), ("d", baseline("objects", kind)),
                ("d", baseline("objects", kind, "baseline_stage2"))]  # fmt: skip
    return out


def plot(rows, path, title):
    """Relation x setting: the change of test mIoU when the relation is removed, with 2 SE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, key in zip(axes, ("miou", "miou_knn"), strict=True):
        effects = relation_effects(check_relations_study(rows, key), metric=key)
        name = {"miou": "headline (stage 2 + CRF)", "miou_knn": "stage-1 kNN"}[key]
        show_relation_effects(effects, ax=ax, title=name)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(out=OUT):
    """Write and print the summary, the claims and the figure of every row so far."""
    rows = study_rows(out, missing_ok=True)  # with the reused cells
    summary = summarise(rows, keys=("miou", "miou_knn", "miou_softmax_crf"))
    bench_runs.write_csv(out.with_name(out.stem + "_summary.csv"), summary)
    checked = check_relations_study(rows) + check_relations_study(rows, "miou_knn")
    bench_runs.write_csv(out.with_name(out.stem + "_claims.csv"), checked)
    if checked:
        seeds = ", ".join(sorted({str(r["seed"]) for r in rows}))
        plot(rows, out.with_suffix(".png"), f"relations study, test split, seeds {seeds}, cpu")
    for row in summary:
        print(f"{row['dataset']}/{row['kind']}/{row['method']:<24} mIoU {row['miou_mean']} +- "
              f"{row['miou_std']}  kNN {row['miou_knn_mean']}  (n {row['n']})")  # fmt: skip
    for claim in checked:
        print(f"{claim['holds']:<21} {claim['claim']} [{claim['metric']}]: "
              f"{claim['difference']:+.4f} (se {claim['se']})")  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--only", nargs="+", help="groups (a-e) or cell prefixes (objects/tags)")
    parser.add_argument("--jobs", type=int, default=2, help="single-thread runs side by side")
    parser.add_argument("--minutes", type=float, help="start no new run after this long")
    parser.add_argument("--work", default="data/bench_reduced", help="datasets and run folders")
    parser.add_argument("--report", action="store_true", help="train nothing; report the CSV")
    args = parser.parse_args()
    if args.report:
        report()
        return
    form = accuracy.FORMS["reduced"]
    work = Path(args.work).resolve()  # run folders record where their data is
    rows = study_rows(OUT, missing_ok=True)
    done = {(r["dataset"], r["kind"], r["method"], r["seed"]) for r in rows if r["split"] == "test"}
    wanted = args.only or []
    chosen = [(g, p) for g, p in plans()
              if not wanted or any(g == o or p.name.startswith(o) for o in wanted)]  # fmt: skip
    todo = [(g, seed, p) for g, p in chosen for seed in args.seeds
            if (p.dataset, p.kind, p.method, str(seed)) not in done]  # fmt: skip
    order = "baced"  # the docstring's priority: b, a, c, e, d
    todo.sort(key=lambda t: (order.index(t[0]), t[1]))  # groups in priority, seed-major inside
    splits = {"train": form["train"], "val": form["val"], "test": form["test"]}
    roots = {}
    for dataset in dict.fromkeys(p.dataset for _, _, p in todo):
        spec = DATA[dataset]
        roots[dataset] = bench_runs.ensure_dataset(
            work / dataset, dataset.split("_")[0], splits, 0, spec["options"],
            spec["superpixels"], spec["size"])  # fmt: skip
        if any(p.dataset == dataset and p.kind in ("tags", "boxes") for _, _, p in todo):
            accuracy.ensure_cam_labels(
                roots[dataset], form["cam_steps"], tag_training.CLASSIFIER_WIDTH, 0, "cpu"
            )
        for kind in SHORTENED:
            wanted = any(p.dataset == dataset and p.kind == kind for _, _, p in todo)
            if wanted and not (roots[dataset] / "lists" / f"train_{kind}.txt").is_file():
                make_data.write_shortened_scribbles(roots[dataset], kind)
    deadline = None if args.minutes is None else time.time() + 60 * args.minutes
    jobs = [(accuracy.run_one, (p, roots[p.dataset], work / "runs" /
             f"{p.name.replace('/', '_')}_seed{seed}", seed, form, "cpu", ["test"], deadline,
             DATA[p.dataset]["size"]), {}) for _, seed, p in todo]  # fmt: skip
    print(f"{len(todo)} runs to go: {[f'{g} {p.name} seed {s}' for g, s, p in todo]}", flush=True)
    tic = time.perf_counter()
    rows = bench_runs.read_csv(OUT)
    for (group, seed, plan), new in zip(todo, bench_runs.run_all(jobs, args.jobs), strict=True):
        if new is None:
            print(f"[{group} {plan.name} seed {seed}] skipped: past --minutes", flush=True)
            continue
        rows = accuracy.merge_rows(rows, new)
        bench_runs.write_csv(OUT, rows)  # after every run: nothing finished is ever lost
        print(f"[{group} {plan.name} seed {seed}] test mIoU {new[0]['miou']} kNN "
              f"{new[0]['miou_knn']} stage-1 softmax+CRF {new[0]['miou_softmax_crf']} "
              f"({time.perf_counter() - tic:.0f} s so far)", flush=True)  # fmt: skip
    report()


if __name__ == "__main__":
    main()
