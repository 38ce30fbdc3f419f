"""`spml-lab demo`: both short runs trained and scored, the figure and the table written."""

import json
import math
from pathlib import Path

import pytest

from spml_lab import cli
from spml_lab.classroom import end_to_end
from spml_lab.training import runs


def test_demo_configs_differ_only_in_relations_and_head():
    cfgs = end_to_end.demo_configs("out", steps=10)
    changed = set(cfgs["spml"].differences(cfgs["baseline"], ignore=("out_dir",)))
    assert changed == {
        "low_level", "semantic_annotation", "cooccurrence", "head_trains_embedding",
        "head_dropout",
    }  # fmt: skip
    assert cfgs["spml"].max_steps == 10 and cfgs["spml"].annotation == "scribbles"


@pytest.mark.slow
def test_demo_trains_scores_and_draws_then_reloads(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--steps", "3", "--stage2-steps", "2", "--images", "2"]
    assert cli.main([*args, "--quiet"]) == 0
    assert (out / "spml_vs_baseline.png").stat().st_size > 10_000
    rows = json.loads((out / "results.json").read_text())
    shipped = [n for n in end_to_end.SHIPPED if (runs.SHIPPED_RUNS / n / "final.pt").is_file()]
    assert [r["method"] for r in rows[:2]] == ["softmax_crf", "stage2_crf"]
    assert len(rows) == 2 + len(shipped)
    for row in rows:  # each score is what the run's own eval files say
        folder = Path(row["run"])
        recorded = json.loads((folder / "eval" / "metrics.json").read_text())
        assert math.isclose(row["miou"], recorded[row["method"]]["miou"], abs_tol=1e-12)
    assert rows[1]["steps"] == 3 and (out / "runs" / "spml" / "stage2.pt").is_file()
    table = (out / "results.md").read_text()
    assert table.count("\n") == 2 + len(rows) and "partial CE, 3 steps" in capsys.readouterr().out
    # the same command again reloads both runs instead of training them
    assert cli.main([*args, "--quiet"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert all(math.isnan(r["seconds"]) for r in again[:2])
    assert [r["miou"] for r in again] == [r["miou"] for r in rows]


def test_demo_rejects_a_bad_argument(capsys):
    assert cli.main(["demo", "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err


def test_demo_runs_on_one_torch_thread_and_gives_the_caller_its_own_back(monkeypatch, tmp_path):
    import torch

    seen = []

    def record(*args, **kwargs):  # the runs' configs are asked for just before training
        seen.append(torch.get_num_threads())
        raise RuntimeError("stop before training")

    monkeypatch.setattr(end_to_end, "demo_configs", record)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # a caller with more threads than the demo's
    try:
        with pytest.raises(RuntimeError, match="stop before training"):
            end_to_end.run_demo(tmp_path / "demo", progress=False)
        assert seen == [end_to_end.THREADS] == [1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
