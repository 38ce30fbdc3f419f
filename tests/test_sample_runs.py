"""The shipped runs are what `make sample-runs` writes, and they score as recorded."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from spml_lab.data import datasets
from spml_lab.prediction import evaluate
from spml_lab.training import runs
from spml_lab.training.config import RESUMABLE_CHANGES, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import sample_runs  # noqa: E402

RUNS = sorted(sample_runs.RUNS)


@pytest.mark.parametrize("name", RUNS)
def test_shipped_run_rescores_to_its_recorded_miou(name, tmp_path):
    folder = runs.run_folder(f"shipped:{name}")
    recorded = json.loads((folder / runs.EVAL_DIR / "metrics.json").read_text())
    assert recorded["images"] == len(datasets.embedded("objects", "val", "full"))
    again = evaluate.evaluate_run(folder, methods=recorded["methods"], out=tmp_path)
    for method in recorded["methods"]:
        assert math.isclose(again[method]["miou"], recorded[method]["miou"], abs_tol=1e-4), method


@pytest.mark.parametrize("name", RUNS)
def test_shipped_run_is_the_command_s_config(name):
    folder = runs.SHIPPED_RUNS / name
    shipped = TrainConfig.from_yaml(folder / "config.yaml")
    assert shipped.differences(sample_runs.config(name), ignore=RESUMABLE_CHANGES) == {}
    assert shipped.data == "embedded:objects"
    assert shipped.out_dir == (sample_runs.OUT / name).as_posix()
    # the weights record the data by its place in the repository, not the training machine's
    trained_on = datasets.open_data(shipped.data, shipped.split, shipped.annotation).list_file
    expected = datasets.data_fingerprint(shipped.data, trained_on)
    recorded = runs.load_run(f"shipped:{name}").data_fingerprint
    assert recorded == sample_runs.relative_fingerprint(expected)
    kept = {p.name for p in folder.iterdir()}
    assert kept <= set(sample_runs.KEEP), kept
    assert {"config.yaml", "final.pt", "metrics.csv", "eval"} <= kept
    assert ("stage2.pt" in kept) == sample_runs.is_spml(name)


def test_every_weight_file_in_the_repo_is_a_shipped_run():
    tracked = subprocess.run(
        ["git", "ls-files", "*.pt", "*.pth", "*.ckpt", "*.safetensors"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    shipped = runs.SHIPPED_RUNS.relative_to(ROOT).as_posix()
    allowed = {f"{shipped}/{n}/{f}" for n in RUNS for f in ("final.pt", "stage2.pt")}
    assert set(tracked) <= allowed, set(tracked) - allowed


def test_shipped_runs_are_small_and_listed():
    total = sum(p.stat().st_size for p in runs.SHIPPED_RUNS.rglob("*") if p.is_file())
    assert total <= 10e6, f"{runs.SHIPPED_RUNS} holds {total / 1e6:.1f} MB"
    rows = sample_runs.bench_runs.read_csv(runs.SHIPPED_RUNS / "runs.csv")
    assert [row["run"] for row in rows] == list(sample_runs.RUNS)
    for row in rows:
        recorded = json.loads(
            (runs.SHIPPED_RUNS / row["run"] / runs.EVAL_DIR / "metrics.json").read_text()
        )
        assert float(row["val_miou"]) == round(recorded[row["headline"]]["miou"], 4)
