"""Two CPU processes (gloo, launched by torchrun) must compute what one process computes."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import ddp_worker
import pytest
import torch

from spml_lab.method import distributed
from spml_lab.method.memory import PrototypeMemory
from spml_lab.method.relations import PAPER_SETTINGS
from spml_lab.training import runs, train
from spml_lab.training.config import TrainConfig

TESTS = Path(__file__).resolve().parent


def torchrun(*args, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_joined_segments_give_the_single_process_loss_and_gradient(tmp_path):
    torchrun(TESTS / "ddp_worker.py", tmp_path)
    memory = PrototypeMemory(2)
    for seed in (0, 1, 2):
        emb, labels, superpixels, tags = ddp_worker.global_batch(seed)
        emb = emb.clone().requires_grad_()
        out = ddp_worker.step_losses(emb, labels, superpixels, tags, memory)
    out["total"].backward()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert set(ranks[0]["losses"]) == set(out) == {*PAPER_SETTINGS, "total"}
    for name, value in out.items():
        for rank in ranks:
            torch.testing.assert_close(rank["losses"][name], value.detach(), rtol=1e-9, atol=1e-9)
    grad = torch.cat([rank["grad"] for rank in ranks])
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad, emb.grad, rtol=1e-7, atol=1e-9)


def metrics(run):
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_whole_batch(tmp_path):
    tiny = dict(crop_size=48, width=8, embedding_dim=8, kmeans_grid=(3, 3), max_steps=3)
    # no head dropout: its masks are drawn per process, so they cannot match one process's
    tiny.update(log_every=1, progress=False, seed=3, annotation="scribbles", head_dropout=0.0)
    flags = []
    for key, value in tiny.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, tuple):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    ddp_run = tmp_path / "ddp"
    torchrun("-m", "spml_lab.cli", "train", *flags, "--batch-size", 2, "--out-dir", ddp_run)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = train.fit(TrainConfig(**tiny, batch_size=4, out_dir=str(tmp_path / "one")))
    finally:
        torch.set_num_threads(threads)
    rows_ddp, rows_one = metrics(ddp_run), metrics(one)
    assert [r["step"] for r in rows_ddp] == ["1", "2", "3"]
    for a, b in zip(rows_ddp, rows_one, strict=True):
        for column in ("low_level", "semantic_annotation", "cooccurrence", "softmax_ce"):
            assert float(a[column]) == pytest.approx(float(b[column]), rel=1e-4), column
    run_ddp, run_one = runs.load_run(ddp_run), runs.load_run(one)
    net_ddp, head_ddp, net_one, head_one = run_ddp.net, run_ddp.head, run_one.net, run_one.head
    one_state = net_one.state_dict()
    assert list(net_ddp.state_dict()) == list(one_state)
    for name, value in net_ddp.state_dict().items():
        torch.testing.assert_close(value, one_state[name], rtol=1e-4, atol=1e-5, msg=name)
    for a, b in zip(head_ddp.state_dict().values(), head_one.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_single_process_helpers_are_no_ops():
    assert distributed.world_size() == 1 and distributed.rank() == 0
    loss = torch.tensor(6.0, requires_grad=True)
    assert distributed.global_mean(loss, torch.tensor(3)).item() == 2.0
    assert distributed.global_mean(loss, torch.tensor(0)).item() == 6.0  # nothing counts
