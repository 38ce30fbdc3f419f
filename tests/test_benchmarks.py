"""The benchmarks' CPU forms run end to end (tiny settings); their real runs are not timed tests."""

import csv
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from spml_lab.classroom import photos

ROOT = Path(__file__).resolve().parent.parent


def run(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_train_speed_cpu_preset_reports_both_steps():
    script = ROOT / "benchmarks/train_speed.py"
    out = run(script, "--preset", "cpu", "--steps", "1", "--warmup", "1", "--threads", "1",
              "--no-write")  # fmt: skip
    assert "alone" in out and "full" in out and "targets:" in out


def test_step_parts_times_every_relation_of_the_step():
    out = run(ROOT / "benchmarks/step_parts.py", "--steps", "1", "--warmup", "1", "--no-write")
    for part in ("network alone", "segments", "low_level", "semantic_annotation",
                 "cooccurrence", "memory push", "rest", "full step"):  # fmt: skip
        assert re.search(rf"{part}: +-?[0-9.]+ ms", out), out


def test_contrastive_speed_small_crop_matches_the_loop():
    out = run(ROOT / "benchmarks/contrastive_speed.py", "--crops", "128", "--configs", "scribble",
              "--repeats", "1", "--loop-repeats", "1", "--threads", "1", "--no-write")  # fmt: skip
    diff = re.search(r"max loss diff ([0-9.e+-]+)", out)
    assert diff and float(diff.group(1)) < 1e-5, out  # the batched loss equals the loop's


@pytest.mark.slow
def test_accuracy_benchmark_runs_end_to_end_in_miniature(tmp_path):
    args = ["--reduced", "--train", "8", "--val", "4", "--test", "4", "--steps", "2",
            "--batch", "2", "--cam-steps", "2", "--stage2-steps", "2", "--seeds", "0", "1",
            "--device", "cpu", "--work", tmp_path / "work", "--out", tmp_path / "acc.csv",
            "--only", "objects/scribbles/spml", "objects/scribbles/baseline"]  # fmt: skip
    out = run(ROOT / "benchmarks/accuracy.py", *args)
    rows = (tmp_path / "acc.csv").read_text().splitlines()
    assert len(rows) == 5, out  # 2 cells x 2 seeds, test split
    assert rows[0].startswith("dataset,kind,method,seed,split,miou,miou_knn"), rows[0]
    assert "segments_per_image" in rows[0] and "pixels_per_segment" in rows[0]
    claims = (tmp_path / "acc_claims.csv").read_text()
    assert "objects/scribbles: SPML > partial CE" in claims and ",se," in claims.splitlines()[0]
    summary = (tmp_path / "acc_summary.csv").read_text().splitlines()
    assert len(summary) == 3 and "miou_std" in summary[0]
    assert (tmp_path / "acc.png").is_file()
    # resumable: a second invocation trains and scores nothing again, and writes the same rows
    finished = sorted((tmp_path / "work" / "runs").rglob("*.pt"))
    finished += sorted((tmp_path / "work" / "runs").rglob("metrics.json"))
    stamps = [p.stat().st_mtime_ns for p in finished]
    run(ROOT / "benchmarks/accuracy.py", *args)
    assert [p.stat().st_mtime_ns for p in finished] == stamps
    assert (tmp_path / "acc.csv").read_text().splitlines() == rows


def test_accuracy_claims_need_two_standard_errors():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import accuracy

    def rows(method, values):
        return [
            {
                "dataset": "objects",
                "kind": "points",
                "method": method,
                "seed": i,
                "split": "test",
                "miou": v,
                "miou_knn": "",
            }
            for i, v in enumerate(values)
        ]

    # difference 0.1; se = sqrt(0.01/3 + 0.01/3) = 0.0816: 0.1 < 2 se, no claim
    noisy = rows("spml", [0.5, 0.6, 0.7]) + rows("baseline", [0.4, 0.5, 0.6])
    (claim,) = accuracy.check_claims(noisy)
    assert claim["holds"] == "FAIL" and claim["se"] == 0.08165
    tight = rows("spml", [0.60, 0.61, 0.62]) + rows("baseline", [0.50, 0.51, 0.52])
    assert accuracy.check_claims(tight)[0]["holds"] == "PASS"


def test_synthetic_speed_reports_cpu_time_without_writing():
    before = (ROOT / "benchmarks/results/synthetic_speed.csv").read_text()
    out = run(ROOT / "benchmarks/synthetic_speed.py", "--num-images", "2", "--size", "48",
              "--no-write")  # fmt: skip
    assert "CPU time" in out and "appended" not in out
    assert (ROOT / "benchmarks/results/synthetic_speed.csv").read_text() == before


def test_documented_tables_equal_the_committed_csvs():
    assert "tables equal the committed CSVs" in run(ROOT / "benchmarks" / "tables.py", "--check")


@pytest.mark.slow  # over 20 s: `make test` runs it, `make test-fast` does not
def test_sweep_speed_benchmark_runs_in_miniature():
    assert "'jobs': 2" in run(ROOT / "benchmarks" / "sweep_speed.py", "--quick")


@pytest.mark.slow  # over 20 s: `make test` runs it, `make test-fast` does not
def test_one_image_benchmark_writes_rows_and_resumes(tmp_path):
    out = tmp_path / "one.csv"
    args = ["--quick", "--datasets", "objects", "--kinds", "points", "--out", out]
    printed = run(ROOT / "benchmarks/one_image.py", *args)
    rows = out.read_text().splitlines()
    assert rows[0] == "dataset,scene,kind,method,miou,seconds,steps,classes"
    assert len(rows) == 1 + 2 * 3  # 2 scenes x 3 methods
    assert "spml - forest" in printed and (tmp_path / "one.png").is_file()
    run(ROOT / "benchmarks/one_image.py", *args)  # a rerun scores nothing again
    assert out.read_text().splitlines() == rows


@pytest.mark.slow  # a Train press per stored photo at 256 px
def test_one_image_speed_times_the_widgets_train(tmp_path):
    out = tmp_path / "speed.csv"
    run(ROOT / "benchmarks/one_image.py", "--speed", "--steps", "5", "--threads", "1", "--out", out)
    rows = [line.split(",") for line in out.read_text().splitlines()]
    header, rows = rows[0], [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    assert header[:4] == ["photo", "height", "width", "threads"]
    assert [r["photo"] for r in rows] == list(photos.stored())
    for r in rows:
        assert max(int(r["height"]), int(r["width"])) == 256
        assert r["masks"] == "2"  # the forest's, then SPML's after 5 steps (its last)
        assert 0 < float(r["first_mask_s"]) <= float(r["first_spml_s"]) == float(r["last_mask_s"])


def _rows(scores):
    """Results rows of one cell (objects/points/spml) and its baseline, from {seed: miou}."""
    return [{"dataset": "objects", "kind": "points", "method": method, "seed": str(seed),
             "split": "test", "miou": miou, "miou_knn": ""}
            for method, by_seed in scores.items() for seed, miou in by_seed.items()]  # fmt: skip


def test_rerun_compare_by_hand(tmp_path):
    before = _rows({"spml": {0: "0.6000", 1: "0.7000", 2: "0.8000"},
                    "baseline": {0: "0.1000", 1: "0.2000", 2: "0.3000"}})  # fmt: skip
    after = _rows({"spml": {0: "0.6000", 1: "0.7090", 2: "0.8000"},
                   "baseline": {0: "0.1000", 1: "0.2000", 2: "0.3000"}})  # fmt: skip
    for name, rows in (("before.csv", before), ("after.csv", after)):
        with (tmp_path / name).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    out = run(ROOT / "benchmarks/rerun_compare.py", tmp_path / "before.csv",
              tmp_path / "after.csv", "--name", "x", "--out", tmp_path)  # fmt: skip
    assert "5 of 6 runs identical; 1 of 2 cells within 0.002" in out
    with (tmp_path / "x_rerun_summary.csv").open() as handle:
        cells = {r["method"]: r for r in csv.DictReader(handle)}
    # spml: mean 0.7 -> 0.703, beyond 0.002; se from the two seed spreads
    se = ((statistics.stdev([0.6, 0.7, 0.8]) ** 2 + statistics.stdev([0.6, 0.709, 0.8]) ** 2)
          / 3) ** 0.5  # fmt: skip
    assert float(cells["spml"]["difference"]) == pytest.approx(0.003, abs=1e-4)
    assert cells["spml"]["within_tolerance"] == "False"
    assert float(cells["spml"]["max_run_change"]) == pytest.approx(0.009)
    assert float(cells["spml"]["se"]) == pytest.approx(se, abs=1e-4)
    assert cells["spml"]["identical_runs"] == "2"
    assert cells["baseline"]["identical_runs"] == "3"


def test_timed_appends_a_row_only_for_a_command_that_succeeds(tmp_path):
    out = tmp_path / "times.csv"
    script = ROOT / "benchmarks/timed.py"
    run(script, "--out", out, "--", sys.executable, "-c", "import time; time.sleep(0.3)")
    run(script, "--out", out, "--", sys.executable, "-c", "pass")
    failed = subprocess.run([sys.executable, script, "--out", out, "--", sys.executable, "-c",
                             "raise SystemExit(3)"], capture_output=True, text=True)  # fmt: skip
    assert failed.returncode == 3 and "no row written" in failed.stderr
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2  # the failed command left no row
    assert float(rows[0]["wall_s"]) >= 0.3 > float(rows[1]["wall_s"]) - 0.3
    assert "time.sleep(0.3)" in rows[0]["command"]


def test_the_cam_stage_runs_on_its_fixed_threads_whatever_the_process_has(tmp_path, monkeypatch):
    # its labels change with the thread count, and every tags and boxes run trains on them
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import accuracy
    import bench_runs
    import torch

    root = bench_runs.ensure_dataset(tmp_path / "objects", "objects", {"train": 2, "val": 1}, 0,
                                     size=48)  # fmt: skip
    seen = []

    def classifier(*args, **kwargs):
        seen.append(torch.get_num_threads())
        raise KeyboardInterrupt  # stop here: the threads are what this test is about

    monkeypatch.setattr(accuracy.tag_training, "train_tag_classifier", classifier)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(KeyboardInterrupt):
            accuracy.ensure_cam_labels(root, steps=1, width=8, seed=0, device="cpu")
        assert seen == [accuracy.CAM_THREADS]
        assert torch.get_num_threads() == 1  # given back, even after an interruption
    finally:
        torch.set_num_threads(before)
