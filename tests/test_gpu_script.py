"""benchmarks/gpu.sh --dry-run: every step of the GPU check, tiny, on the CPU, as a GPU machine
without Jupyter, papermill, umap, pydensecrf2 or pycocotools would run it."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# the dry run takes about 30 s: `make test` runs it, `make test-fast` does not
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
# the GPU machine has none of these: every process of the check must run without them
ABSENT = ["papermill", "jupyter_client", "nbformat", "umap", "pydensecrf", "pycocotools"]
# None in sys.modules: `import name` raises ModuleNotFoundError and find_spec says "absent"
BLOCKER = f"import sys\nsys.modules.update(dict.fromkeys({ABSENT!r}))\n"


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """Run gpu.sh --dry-run once, with the optional packages made unimportable."""
    site = tmp_path_factory.mktemp("site")
    (site / "sitecustomize.py").write_text(BLOCKER)  # every Python process started reads it
    out = tmp_path_factory.mktemp("gpu") / "results"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}  # fmt: skip
    command = [str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    return out, result, command, env


def test_every_step_runs_and_writes_its_files(dry_run):
    out, result, *_ = dry_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    status = {row["step"]: (row["status"], row["note"]) for row in _rows(out / "summary.csv")}
    assert [s for s, (state, _) in status.items() if state == "ok"] == [
        "environment", "train_speed", "contrastive_speed", "pipeline"]  # fmt: skip
    assert status["notebook"][0] == "skipped" and "papermill" in status["notebook"][1]
    environment = json.loads((out / "environment.json").read_text())
    assert environment["device"] == "cpu" and not environment["optional"]["papermill"]
    # train_speed: both precisions, the network alone and the full step, finite numbers
    speed = _rows(out / "train_speed_cpu.csv")
    assert [(r["precision"], r["status"]) for r in speed] == [("fp32", "ok"), ("bf16", "ok")]
    assert all(float(r["alone_img_s"]) > 0 and float(r["full_img_s"]) > 0 for r in speed)
    assert [r["channels_last"] for r in speed] == ["False", "True"]
    assert (out / "train_speed_cpu.png").stat().st_size > 0
    # contrastive_speed: the batched loss equals the loop's
    (contrastive,) = _rows(out / "contrastive_speed.csv")
    assert float(contrastive["max_loss_diff"]) < 1e-5
    # the pipeline: stage 1, stage 2, scores; no CRF without pydensecrf2
    pipeline = _rows(out / "pipeline.csv")
    assert [r["method"] for r in pipeline] == ["knn", "softmax", "stage2"]
    assert all(0 <= float(r["miou"]) <= 1 for r in pipeline)
    assert {r["crf"] for r in pipeline} == {"False"} and pipeline[0]["steps"] == "2"
    assert (out / "pipeline" / "run" / "stage2.pt").is_file()
    log = (out / "log.txt").read_text()
    assert "dense CRF missing" in log and "papermill" in log


def test_a_second_run_runs_nothing_again_and_keeps_the_log(dry_run):
    out, _, command, env = dry_run
    before = (out / "log.txt").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*.csv")}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    after = (out / "log.txt").read_text()
    assert after.startswith(before) and after.count("not run again") == 5
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_a_real_run_without_cuda_is_refused(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        gpu.main(["--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()
