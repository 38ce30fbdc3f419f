"""The markdown tables of the README and docs/, made from the committed benchmark CSVs.

    python benchmarks/tables.py                 # print every table, under its name
    python benchmarks/tables.py --write         # rewrite the documents' tables from the CSVs
    python benchmarks/tables.py --check         # exit 1 unless each document holds its tables
    python benchmarks/tables.py --tag cuda_full # the accuracy tables of another form

In a document (`DOCUMENTS`), a table made here follows a line ``<!-- tables.py: NAME -->``;
`--write` replaces the table under each such line and `--check` (a test) fails where one
differs, so the documents' numbers are the CSVs' and nothing else. The accuracy and relations
tables are built here; the tables of time and memory in `tables_speed.py`, those of the
calibration and the shipped runs in `tables_runs.py`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a source checkout

import tables_runs  # noqa: E402
import tables_speed  # noqa: E402

from spml_lab.sweeps import claims  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
LABELS = {
    "spml": "SPML",
    "baseline": "partial CE",
    "baseline_stage2": "partial CE + pipeline",
    "full": "full masks",
    "no_low_level": "SPML without low-level similarity",
    "no_semantic_annotation": "SPML without semantic annotation",
    "no_cooccurrence": "SPML without co-occurrence",
    "no_feature_affinity": "SPML without feature affinity",
}
RELATION_NAMES = {
    "low_level": "low-level similarity",
    "semantic_annotation": "semantic annotation",
    "cooccurrence": "semantic co-occurrence",
    "feature_affinity": "feature affinity",
}
PROBES = (
    "position_r2",
    "class_balanced_accuracy",
    "segments_per_image",
    "pixels_per_segment",
    "pixels_per_segment_of_a_pixel",
    "superpixels_per_image",
    "pixels_per_superpixel",
)
# which document holds which tables (`--check`)
DOCUMENTS = {
    "README.md": ("demo", "relations", "speed_summary"),
    "docs/benchmarks.md": (
        "accuracy_cells",
        "accuracy_claims",
        "accuracy_probes",
        "accuracy_rerun",
        "wall_times",
        "relations",
        "relations_knn",
        "pipeline",
        "predictors",
        "sparsity",
        "mechanisms",
        "run_times",
        "difficulty",
        "calibration",
        "one_image",
    ),
    "docs/data.md": ("synthetic_speed",),
    "docs/embedding.md": ("embedding",),
    "docs/gpu.md": ("prepare_speed", "contrastive_speed", "train_speed", "step_parts"),
    "docs/reference.md": ("predict_memory", "shipped_runs", "sweep_speed"),
}


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def _mean_std(row, key):
    mean, std = row[f"{key}_mean"], row[f"{key}_std"]
    if mean == "":
        return "—"
    return f"{float(mean):.3f} ± {float(std):.3f}" if std != "" else f"{float(mean):.3f}"


def _difference(claim):
    return f"{float(claim['difference']):+.3f} (2 SE {2 * float(claim['se']):.3f})"


def accuracy_tables(tag="cpu_reduced"):
    """Return the accuracy benchmark's cells, claims and probes as markdown tables by name."""
    name = f"accuracy_{tag}"
    summary = claims.read_results(f"{name}_summary.csv", RESULTS)
    cells = _table(
        ("scenes", "annotation", "method", "test mIoU (stage 2 + CRF; CE: softmax + CRF)",
         "stage-1 kNN", "seeds"),
        [(r["dataset"], r["kind"], LABELS.get(r["method"], r["method"]), _mean_std(r, "miou"),
          _mean_std(r, "miou_knn"), r["n"]) for r in summary],
    )  # fmt: skip
    checked = claims.read_results(f"{name}_claims.csv", RESULTS)
    verdicts = _table(
        ("claim", "metric", "difference", "2 x se", "verdict"),
        [(c["claim"], c["metric"], f"{float(c['difference']):+.3f}",
          "—" if c["se"] == "" else f"{2 * float(c['se']):.3f}", c["holds"]) for c in checked],
    )  # fmt: skip
    groups = {}
    for row in claims.read_results(f"{name}.csv", RESULTS):
        if row["split"] == "test":
            groups.setdefault((row["dataset"], row["kind"], row["method"]), []).append(row)
    probes = []
    for (dataset, kind, method), group in groups.items():
        values = []
        for key in PROBES:
            numbers = [float(r[key]) for r in group if r.get(key, "") != ""]
            values.append(f"{sum(numbers) / len(numbers):.2f}" if numbers else "—")
        probes.append((f"{dataset}/{kind}/{method}", *values))
    return {"accuracy_cells": cells, "accuracy_claims": verdicts,
            "accuracy_probes": _table(("run", *PROBES), probes),
            "accuracy_rerun": rerun_table(name)}  # fmt: skip


def rerun_table(name):
    """Return the table of `rerun_compare.py`: each cell before and after a rerun."""
    rows = [(f"{r['dataset']}/{r['kind']}", LABELS.get(r["method"], r["method"]),
             f"{float(r['mean_before']):.3f} ± {float(r['sd_before']):.3f}",
             f"{float(r['mean_after']):.3f} ± {float(r['sd_after']):.3f}",
             f"{float(r['difference']):+.3f} (SE {float(r['se']):.3f})",
             f"{float(r['max_run_change']):.3f}", f"{r['identical_runs']} of {r['n']}",
             _minutes(r, "train_seconds"))
            for r in claims.read_results(f"{name}_rerun_summary.csv", RESULTS)]  # fmt: skip
    return _table(("cell", "method", "committed", "rerun", "rerun - committed",
                   "largest change of a run", "runs identical", "training min per run"),
                  rows)  # fmt: skip


def _minutes(row, column):
    before, after = row[f"{column}_before"], row[f"{column}_after"]
    if before == "" or after == "":
        return "—"
    return f"{float(before) / 60:.1f} -> {float(after) / 60:.1f}"


def relations_tables():
    """Return the relations study's tables by name, from its committed summary and claims."""
    checked = claims.read_results(claims.STUDY.replace(".csv", "_claims.csv"), RESULTS)
    summary = claims.read_results(claims.STUDY.replace(".csv", "_summary.csv"), RESULTS)
    tables = {}
    for key, name in (("miou", "relations"), ("miou_knn", "relations_knn")):
        rows = []
        for relation in claims.RELATIONS:
            effects = claims.relation_effects(checked, relation, key)
            rows.append((RELATION_NAMES[relation], *(
                "; ".join(f"{e['setting']} {e['change']:+.3f} ± {e['two_se']:.3f}"
                          for e in effects if e["verdict"] == verdict) or "—"
                for verdict in ("helps", "hurts", "no measurable effect"))))  # fmt: skip
        tables[name] = _table(
            ("relation", "helps (removing it lowers mIoU)", "hurts (removing it raises mIoU)",
             "no measurable effect"), rows)  # fmt: skip
    by_claim = {(c["claim"], c["metric"]): c for c in checked}
    mean = {(r["dataset"], r["kind"], r["method"]): r for r in summary}
    settings = [k[:2] for k in mean if k[2] == "baseline_stage2"]
    tables["pipeline"] = _table(
        ("setting", "SPML", "partial CE + pipeline", "partial CE", "SPML > CE + pipeline",
         "CE + pipeline > partial CE"),
        [(f"{d}/{k}", *(_mean_std(mean[d, k, m], "miou") for m in
          ("spml", "baseline_stage2", "baseline")),
          *(f"{_difference(c)} {c['holds']}" for c in
            (by_claim[f"{d}/{k}: {t}", "miou"] for t in
             ("SPML > baseline_stage2", "baseline_stage2 > partial CE"))))
         for d, k in settings],
    )  # fmt: skip
    stage2 = [c for c in checked if c["claim"].endswith("stage 2 + CRF > stage-1 softmax + CRF")]
    rows = []
    for c in stage2:
        setting = c["claim"].split(":")[0]
        spml = mean[(*setting.split("/"), "spml")]
        rows.append((setting, _mean_std(spml, "miou"), _mean_std(spml, "miou_softmax_crf"),
                     _difference(c), c["holds"]))  # fmt: skip
    tables["predictors"] = _table(
        ("setting", "stage 2 + CRF", "stage-1 softmax + CRF", "difference", "verdict"), rows
    )
    full = float(mean["objects", "full", "full"]["miou_mean"])
    tables["sparsity"] = _table(
        ("labels", *(f"{LABELS[m]}: mIoU (share of full masks)" for m in
                     ("spml", "baseline_stage2", "baseline")), "seeds"),
        [(kind, *(f"{_mean_std(mean['objects', kind, m], 'miou')} "
                  f"({float(mean['objects', kind, m]['miou_mean']) / full:.0%})"
                  for m in ("spml", "baseline_stage2", "baseline")),
          mean["objects", kind, "spml"]["n"])
         for kind in ("scribbles", "scribbles_50", "scribbles_30", "points")],
    )  # fmt: skip
    tests = [c for c in checked if c["claim"].startswith("H_")]
    tables["mechanisms"] = _table(
        ("hypothesis", "metric", "difference of effects", "verdict"),
        [(c["claim"], c["metric"], _difference(c), c["holds"]) for c in tests],
    )  # fmt: skip
    return tables


MARKER = "<!-- tables.py: {} -->"


def write_tables(text, tables):
    """Return `text` with the table under each ``<!-- tables.py: NAME -->`` line replaced."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        out.append(lines[i])
        name = next((n for n in tables if lines[i].strip() == MARKER.format(n)), None)
        i += 1
        if name is not None:
            while i < len(lines) and lines[i].startswith("|"):
                i += 1  # the old table
            out.extend(tables[name].splitlines())
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default="cpu_reduced", help="accuracy_{TAG}*.csv")
    parser.add_argument("--check", action="store_true", help="each document holds its tables")
    parser.add_argument("--write", action="store_true", help="rewrite the documents' tables")
    args = parser.parse_args()
    tables = {**accuracy_tables(args.tag), **relations_tables()}
    built = {**tables_speed.tables(RESULTS), **tables_runs.tables(ROOT, RESULTS)}
    tables.update({name: _table(*table) for name, table in built.items()})
    if args.write:
        for document in DOCUMENTS:
            path = ROOT / document
            path.write_text(write_tables(path.read_text(), tables))
    if not (args.check or args.write):
        for name, table in tables.items():
            print(f"{MARKER.format(name)}\n{table}\n")
        return
    texts = {document: (ROOT / document).read_text() for document in DOCUMENTS}
    missing = [f"{document}: {name}" for document, names in DOCUMENTS.items() for name in names
               if f"{MARKER.format(name)}\n{tables[name]}\n" not in texts[document]]  # fmt: skip
    if missing:
        sys.exit("tables that differ from the committed CSVs (python benchmarks/tables.py "
                 "prints them):\n  " + "\n  ".join(missing))  # fmt: skip
    print(f"{sum(map(len, DOCUMENTS.values()))} tables equal the committed CSVs")


if __name__ == "__main__":
    main()
