"""Compare a benchmark's rerun with its committed results: run by run, cell by cell, claim by claim.

When a change should not move the results (a faster loss with the same formula, a refactoring),
rerun the benchmark into a fresh work folder and compare its CSV with the committed one::

    python benchmarks/rerun_compare.py BEFORE.csv AFTER.csv --name accuracy_cpu_reduced

Runs are matched on (dataset, kind, method, seed, split). Writes, in ``benchmarks/results``:

* ``{name}_rerun.csv``: one row per run, each score before and after, the largest absolute
  difference over the scores and whether every score is identical (as the CSVs print them,
  four decimals);
* ``{name}_rerun_summary.csv``: one row per cell (test split): the mean before and after, the
  difference of the means, the standard error of that difference from the seeds' spread (the
  claims rule's ``sqrt(sd_a^2 / n + sd_b^2 / n)``), the largest per-run change, and how many
  runs are identical;
* ``{name}_rerun_claims.csv``: each claim's difference and verdict before and after.

A cell "reproduces within 0.002" when its mean moved by at most `TOLERANCE`.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import bench_runs

from spml_lab.sweeps import claims

RESULTS = Path(__file__).resolve().parent / "results"
KEY = ("dataset", "kind", "method", "seed", "split")
SCORES = ("miou", "miou_knn", "miou_softmax", "miou_softmax_crf", "position_r2",
          "class_balanced_accuracy")  # fmt: skip
TOLERANCE = 0.002  # the largest move of a cell's mean that counts as reproduced


def _float(value):
    return float(value) if value not in ("", None) else math.nan


def compare_runs(before, after):
    """Match the runs of two results CSVs and compare their scores.

    Parameters
    ----------
    before, after : list of dict of str to str
        Rows of the two CSVs (`claims.read_results`).

    Returns
    -------
    rows : list of dict
        One per run present in both: the key, ``{score}_before``, ``{score}_after``,
        ``max_abs_diff`` over the scores and ``identical`` (every score's text equal).

    Raises
    ------
    ValueError
        If a run is missing from either file (the rerun is incomplete, or not the same plan).
    """
    by_key = {tuple(r[k] for k in KEY): r for r in before}
    new = {tuple(r[k] for k in KEY): r for r in after}
    if set(by_key) != set(new):
        missing = sorted(set(by_key) ^ set(new))[:5]
        raise ValueError(f"the two CSVs hold different runs, e.g. {missing}")
    rows = []
    for key, old in by_key.items():
        row = dict(zip(KEY, key, strict=True))
        scores = [s for s in SCORES if s in old and old[s] != ""]
        for score in scores:
            row[f"{score}_before"], row[f"{score}_after"] = old[score], new[key][score]
        diffs = [abs(_float(new[key][s]) - _float(old[s])) for s in scores]
        row["max_abs_diff"] = round(max(diffs), 4)
        row["identical"] = all(new[key][s] == old[s] for s in scores)
        rows.append(row)
    return rows


def _by_cell(rows, split):
    """Rows of `split` grouped by cell (dataset, kind, method)."""
    cells = {}
    for row in rows:
        if row["split"] == split:
            cells.setdefault((row["dataset"], row["kind"], row["method"]), []).append(row)
    return cells


def compare_cells(before, after, runs, split="test", key="miou"):
    """Each cell's mean before and after, with the seeds' standard error of the difference.

    Parameters
    ----------
    before, after : list of dict of str to str
        Rows of the two CSVs.
    runs : list of dict
        `compare_runs` of the two.
    split, key : str, optional
        The split and the score compared.

    Returns
    -------
    rows : list of dict
        ``dataset, kind, method, n, mean_before, sd_before, mean_after, sd_after, difference,
        se, max_run_change, identical_runs, within_tolerance`` and the mean training and
        stage-2 seconds before and after.
    """
    old, new = claims.cell_values(before, split, key), claims.cell_values(after, split, key)
    compared = _by_cell(runs, split)
    rows_before, rows_after = _by_cell(before, split), _by_cell(after, split)
    rows = []
    for cell in old:
        mean_b, sd_b = claims.mean_std(old[cell])
        mean_a, sd_a = claims.mean_std(new[cell])
        difference, se = claims.compare(new[cell], old[cell])  # the claims rule's SE
        changes = [abs(_float(r[f"{key}_after"]) - _float(r[f"{key}_before"]))
                   for r in compared[cell]]  # fmt: skip
        rows.append({
            "dataset": cell[0], "kind": cell[1], "method": cell[2], "n": len(old[cell]),
            "mean_before": round(mean_b, 4), "sd_before": round(sd_b, 4),
            "mean_after": round(mean_a, 4), "sd_after": round(sd_a, 4),
            "difference": round(difference, 4), "se": round(se, 4),
            "max_run_change": round(max(changes), 4),
            "identical_runs": sum(r["identical"] for r in compared[cell]),
            "within_tolerance": abs(mean_a - mean_b) <= TOLERANCE + 1e-12,
            **_mean_seconds(rows_before[cell], rows_after[cell]),
        })  # fmt: skip
    return rows


def _mean_seconds(before, after):
    """Mean training and stage-2 seconds of a cell's runs before and after ("" if not timed)."""
    out = {}
    for column in ("train_seconds", "stage2_seconds"):
        for name, rows in (("before", before), ("after", after)):
            values = [v for v in (_float(r.get(column)) for r in rows) if not math.isnan(v)]
            out[f"{column}_{name}"] = round(sum(values) / len(values), 1) if values else ""
    return out


def compare_claims(before, after, keys=("miou", "miou_knn")):
    """Each claim's difference and verdict before and after (`claims.check_claims`)."""
    rows = []
    for key in keys:
        old, new = claims.check_claims(before, key=key), claims.check_claims(after, key=key)
        rows += [
            {"claim": a["claim"], "metric": key, "difference_before": round(a["difference"], 4),
             "difference_after": round(b["difference"], 4), "se_after": round(b["se"], 4),
             "holds_before": a["holds"], "holds_after": b["holds"]}
            for a, b in zip(old, new, strict=True)
        ]  # fmt: skip
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="the committed results CSV")
    parser.add_argument("after", help="the rerun's results CSV")
    parser.add_argument("--name", required=True, help="stem of the files written")
    parser.add_argument("--out", default=str(RESULTS), help="folder of the files written")
    args = parser.parse_args()
    before = claims.read_results(Path(args.before).resolve())
    after = claims.read_results(Path(args.after).resolve())
    out = Path(args.out)
    runs = compare_runs(before, after)
    cells = compare_cells(before, after, runs)
    verdicts = compare_claims(before, after)
    bench_runs.write_csv(out / f"{args.name}_rerun.csv", runs)
    bench_runs.write_csv(out / f"{args.name}_rerun_summary.csv", cells)
    bench_runs.write_csv(out / f"{args.name}_rerun_claims.csv", verdicts)
    identical = sum(r["identical"] for r in runs)
    within = sum(c["within_tolerance"] for c in cells)
    changed = [v["claim"] for v in verdicts if v["holds_before"] != v["holds_after"]]
    print(f"{identical} of {len(runs)} runs identical; {within} of {len(cells)} cells within "
          f"{TOLERANCE}; verdicts changed: {changed or 'none'}")  # fmt: skip


if __name__ == "__main__":
    main()
