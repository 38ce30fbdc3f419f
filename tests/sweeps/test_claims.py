import csv
import statistics
from pathlib import Path

import pytest

from spml_lab.sweeps import claims

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


def test_relations_study_verdicts_by_hand():
    def rows(dataset, kind, method, values, stage1=None):
        return [{"dataset": dataset, "kind": kind, "method": method, "seed": str(i),
                 "split": "test", "miou": str(v), "miou_knn": "",
                 "miou_softmax_crf": "" if stage1 is None else str(stage1[i])}
                for i, v in enumerate(values)]  # fmt: skip

    spread = [0.0, 0.01, 0.02]  # sd 0.01 per cell: se of a difference sqrt(2 / 3) * 0.01
    cells = (
        rows("objects", "tags", "spml", [0.50 + s for s in spread], [0.45 + s for s in spread])
        + rows("objects", "tags", "no_cooccurrence", [0.56 + s for s in spread])  # hurts
        + rows("objects", "tags", "no_low_level", [0.49 + s for s in spread])  # within 2 se
        + rows("objects", "tags", "baseline_stage2", [0.40 + s for s in spread])
        + rows("objects_cooc1", "tags", "spml", [0.60 + s for s in spread])
        + rows("objects_cooc1", "tags", "no_cooccurrence", [0.50 + s for s in spread])
        + rows("objects_cooc0", "tags", "spml", [0.50 + s for s in spread])
        + rows("objects_cooc0", "tags", "no_cooccurrence", [0.50 + s for s in spread])
    )
    verdicts = {c["claim"]: (c["difference"], c["se"], c["holds"])
                for c in claims.check_relations_study(cells)}  # fmt: skip
    se = round((2 * 0.01**2 / 3) ** 0.5, 5)
    assert verdicts["objects/tags: cooccurrence"] == (-0.06, se, "hurts")
    assert verdicts["objects/tags: low_level"] == (0.01, se, "no measurable effect")
    assert verdicts["objects/tags: SPML > baseline_stage2"] == (0.1, se, "PASS")
    stage2 = verdicts["objects/tags: stage 2 + CRF > stage-1 softmax + CRF"]
    assert stage2 == (0.05, se, "stage 2 higher")
    assert verdicts["objects_cooc1/tags: cooccurrence"][2] == "helps"
    # H_occ: effect 0.1 at cooc 1.0 against 0.0 at cooc 0.0, se of the difference of differences
    h_occ = next(v for k, v in verdicts.items() if k.startswith("H_occ"))
    assert h_occ == (0.1, round((2 * se**2) ** 0.5, 5), "PASS")


def test_committed_relations_claims_are_those_of_the_committed_runs():
    rows = claims.study_rows()
    checked = claims.check_relations_study(rows) + claims.check_relations_study(rows, "miou_knn")
    assert claims.as_written(checked) == claims.read_results("relations_cpu_reduced_claims.csv")


def test_relation_effect_is_the_change_when_removed_computed_by_hand():
    rows = claims.study_rows()
    (effect,) = [e for e in claims.relation_effects(claims.check_relations_study(rows), "low_level")
                 if e["setting"] == "parts/points"]  # fmt: skip

    def scores(method):
        return [float(r["miou"]) for r in rows if (r["dataset"], r["kind"], r["method"],
                r["split"]) == ("parts", "points", method, "test")]  # fmt: skip

    with_it, without = scores("spml"), scores("no_low_level")
    se = (statistics.variance(with_it) / 3 + statistics.variance(without) / 3) ** 0.5
    assert effect["change"] == pytest.approx(statistics.mean(without) - statistics.mean(with_it),
                                             abs=1e-5)  # fmt: skip
    assert effect["two_se"] == pytest.approx(2 * se, abs=2e-5)
    expected = "helps" if -effect["change"] > 2 * se else "hurts" if effect["change"] > 2 * se \
        else "no measurable effect"  # fmt: skip
    assert effect["verdict"] == expected


def test_missing_results_file_is_named():
    with pytest.raises(FileNotFoundError, match="no_such.csv"):
        claims.read_results("no_such.csv")


def test_a_study_not_yet_run_reads_as_the_reused_rows_alone(tmp_path):
    reused = claims.read_results(claims.STUDY_REUSES)
    (tmp_path / claims.STUDY_REUSES).write_text(
        (claims.results_folder() / claims.STUDY_REUSES).read_text()
    )
    rows = claims.study_rows(tmp_path / "not_yet.csv", missing_ok=True)
    assert rows == [r for r in reused if r["dataset"] == "objects"]
    with pytest.raises(FileNotFoundError, match="not_yet.csv"):
        claims.study_rows(tmp_path / "not_yet.csv")


def test_stage2_effects_are_the_stage2_claims_of_the_committed_study():
    committed = claims.read_results("relations_cpu_reduced_claims.csv")
    effects = claims.stage2_effects(committed)
    with open(claims.results_folder() / "relations_cpu_reduced_claims.csv", newline="") as handle:
        lines = [r for r in csv.reader(handle) if "stage 2 + CRF > stage-1 softmax" in r[0]]
    miou = [r for r in lines if r[1] == "miou" and r[3] != ""]
    assert [e["setting"] for e in effects] == [r[0].split(":")[0] for r in miou]
    for effect, row in zip(effects, miou, strict=True):
        assert effect["difference"] == float(row[2]) and effect["two_se"] == pytest.approx(
            2 * float(row[3])
        )
        assert effect["verdict"] == row[5] and effect["n"] == int(row[4])
    assert len(claims.stage2_effects(committed, metric="miou_knn")) == 0  # a stage-1 score only
