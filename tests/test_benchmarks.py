"""The benchmarks' CPU forms run end to end (tiny settings); their real runs are not timed tests."""

import os
import re
import subprocess
import sys
from pathlib import Path

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


def test_contrastive_speed_small_crop_matches_the_loop():
    out = run(ROOT / "benchmarks/contrastive_speed.py", "--crops", "128", "--configs", "scribble",
              "--repeats", "1", "--loop-repeats", "1", "--threads", "1", "--no-write")  # fmt: skip
    diff = re.search(r"max loss diff ([0-9.e+-]+)", out)
    assert diff and float(diff.group(1)) < 1e-5, out  # the batched loss equals the loop's


def test_accuracy_benchmark_runs_end_to_end_in_miniature(tmp_path):
    out = run(ROOT / "benchmarks/accuracy.py", "--reduced", "--train", "8", "--val", "4",
              "--steps", "2", "--batch", "2", "--cam-steps", "2", "--threads", "1",
              "--device", "cpu", "--work", tmp_path / "work", "--out", tmp_path / "acc.csv",
              "--only", "objects/scribbles/spml", "objects/scribbles/baseline",
              "objects/full/full")  # fmt: skip
    rows = (tmp_path / "acc.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("dataset,kind,method"), out
    assert (tmp_path / "acc.png").is_file()
