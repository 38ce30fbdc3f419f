"""Print the README's accuracy tables (markdown) from the committed benchmark CSVs.

    python benchmarks/tables.py                      # accuracy_cpu_reduced*
    python benchmarks/tables.py --tag cuda_full

The README's numbers are pasted from this output, so they are the CSVs' and nothing else.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
LABELS = {
    "spml": "SPML",
    "baseline": "partial CE",
    "full": "full masks",
    "no_low_level": "SPML without low-level similarity",
    "no_semantic_annotation": "SPML without semantic annotation",
    "no_cooccurrence": "SPML without co-occurrence",
    "no_feature_affinity": "SPML without feature affinity",
}


def read(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def cell(row, key):
    mean, std = row[f"{key}_mean"], row[f"{key}_std"]
    if mean == "":
        return "—"
    return f"{float(mean):.3f} ± {float(std):.3f}" if std != "" else f"{float(mean):.3f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default="cpu_reduced")
    args = parser.parse_args()
    base = RESULTS / f"accuracy_{args.tag}"
    summary = read(base.with_name(base.name + "_summary.csv"))
    rows = read(base.with_suffix(".csv"))
    print("| scenes | annotation | method | test mIoU (stage 2 + CRF; CE: softmax + CRF) "
          "| stage-1 kNN | seeds |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for row in summary:
        print(f"| {row['dataset']} | {row['kind']} | {LABELS.get(row['method'], row['method'])} "
              f"| {cell(row, 'miou')} | {cell(row, 'miou_knn')} | {row['n']} |")  # fmt: skip
    print()
    print("| claim | metric | difference | 2 x se | verdict |")
    print("|---|---|---|---|---|")
    for claim in read(base.with_name(base.name + "_claims.csv")):
        se = "—" if claim["se"] == "" else f"{2 * float(claim['se']):.3f}"
        print(f"| {claim['claim']} | {claim['metric']} | {float(claim['difference']):+.3f} "
              f"| {se} | {claim['holds']} |")  # fmt: skip
    print()
    keys = (
        "position_r2",
        "class_balanced_accuracy",
        "segments_per_image",
        "pixels_per_segment",
        "pixels_per_segment_of_a_pixel",
        "superpixels_per_image",
        "pixels_per_superpixel",
    )
    print("| run | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    cells = {}
    for row in rows:
        if row["split"] == "test":
            cells.setdefault((row["dataset"], row["kind"], row["method"]), []).append(row)
    for (dataset, kind, method), group in cells.items():
        values = []
        for key in keys:
            numbers = [float(r[key]) for r in group if r.get(key, "") != ""]
            values.append(f"{sum(numbers) / len(numbers):.2f}" if numbers else "—")
        print(f"| {dataset}/{kind}/{method} | " + " | ".join(values) + " |")


if __name__ == "__main__":
    main()
