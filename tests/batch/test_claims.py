import csv
import statistics
from pathlib import Path

import pytest

from spml_lab.batch import claims

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def _rows(method, values, kind="scribbles", split="test", knn=None):
    return [
        {
            "dataset": "objects",
            "kind": kind,
            "method": method,
            "seed": str(seed),
            "split": split,
            "miou": str(v),
            "miou_knn": "" if knn is None else str(knn[seed]),
        }
        for seed, v in enumerate(values)
    ]


def _read(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_mean_std_is_the_sample_std():
    values = [0.2, 0.5, 0.6, 0.9]
    mean, std = claims.mean_std(values)
    assert mean == pytest.approx(statistics.mean(values))
    assert std == pytest.approx(statistics.stdev(values))  # n - 1, not n
    assert claims.mean_std([]) == (None, None)


def test_summary_by_hand():
    rows = _rows("spml", [0.5, 0.6, 0.7], knn=[0.4, 0.4, 0.7]) + _rows("spml", [0.1], split="val")
    rows += _rows("baseline", [0.3])
    spml, baseline = claims.summarise(rows)
    # mean 0.6, std sqrt((0.01 + 0 + 0.01) / 2) = 0.1; kNN mean 0.5, std sqrt(0.06 / 2) = 0.1732
    assert spml == {"dataset": "objects", "kind": "scribbles", "method": "spml", "n": 3,
                    "miou_mean": 0.6, "miou_std": 0.1, "miou_knn_mean": 0.5,
                    "miou_knn_std": 0.1732, "seeds": "0 1 2"}  # fmt: skip
    assert baseline["n"] == 1 and baseline["miou_std"] == "" and baseline["miou_knn_mean"] == ""


def test_claim_needs_a_difference_of_two_standard_errors():
    # difference 0.1; se = sqrt(0.01 / 3 + 0.01 / 3) = 0.08165; 0.1 < 2 se
    (claim,) = claims.check_claims(
        _rows("spml", [0.5, 0.6, 0.7]) + _rows("baseline", [0.4, 0.5, 0.6])
    )
    assert claim["claim"] == "objects/scribbles: SPML > partial CE"
    assert (claim["difference"], claim["se"], claim["n"], claim["holds"]) == (
        0.1,
        0.08165,
        3,
        "FAIL",
    )
    # same difference, spread 0.01: se 0.008165, 0.1 > 2 se
    (claim,) = claims.check_claims(
        _rows("spml", [0.60, 0.61, 0.62]) + _rows("baseline", [0.50, 0.51, 0.52])
    )
    assert claim["holds"] == "PASS" and claim["se"] == 0.00816
    # one seed: no spread to judge by
    (claim,) = claims.check_claims(_rows("spml", [0.9]) + _rows("baseline", [0.1, 0.2]))
    assert claim["se"] is None and claim["holds"] == "n/a (< 2 seeds)"


def test_ablation_claims_compare_the_full_run_with_each_removal():
    rows = _rows("spml", [0.8, 0.82, 0.84]) + _rows("no_low_level", [0.5, 0.52, 0.54])
    rows += _rows("no_cooccurrence", [0.83, 0.85, 0.87])
    got = {c["claim"]: (c["difference"], c["holds"]) for c in claims.check_claims(rows)}
    assert got == {
        "objects/scribbles: removing low_level lowers mIoU": (0.3, "PASS"),
        "objects/scribbles: removing cooccurrence lowers mIoU": (-0.03, "FAIL"),
    }


def test_committed_benchmark_summary_and_claims_follow_from_its_runs():
    rows = _read(RESULTS / "accuracy_cpu_reduced.csv")
    summary = claims.as_written(claims.summarise(rows))
    assert summary == _read(RESULTS / "accuracy_cpu_reduced_summary.csv")
    checked = claims.check_claims(rows) + claims.check_claims(rows, key="miou_knn")
    assert claims.as_written(checked) == _read(RESULTS / "accuracy_cpu_reduced_claims.csv")
