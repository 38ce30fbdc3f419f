"""Where a sweep's runs go: options, slots, pinning, dispatch, and the Slurm executor.

No kernel runs here; `tests/sweeps/test_sweep.py` runs real sweeps through these pieces.
"""

import os
import stat

import nbformat
import pytest

from spml_lab import cli
from spml_lab.sweeps import parallel

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def _notebook(path):
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": KERNELSPEC})
    parameters = nbformat.v4.new_code_cell('A = 1\nDEVICE = "auto"\nOUT_DIR = "unused"')
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [parameters, nbformat.v4.new_code_cell("print(A)")]
    nbformat.write(nb, path)
    return path


def _fake_slurm(folder):
    """Put `srun` and an `sbatch` that answers like Slurm in `folder`: a cluster to submit to."""
    folder.mkdir()
    for name, body in [("srun", "exit 0"), ("sbatch", 'echo "Submitted batch job 4242"')]:
        path = folder / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return folder


# ---------------------------------------------------------------------- slots and pinning


def test_slots_take_the_devices_round_robin_and_share_the_threads(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    devices = ["cuda:0", "cuda:3", "cpu"]
    layout = parallel.slots(6, devices, threads=13)
    assert [slot.device for slot in layout] == [devices[k % 3] for k in range(6)]
    visible = [slot.environment["CUDA_VISIBLE_DEVICES"] for slot in layout]
    assert visible == ["0", "3", "", "0", "3", ""]  # one GPU each; none for the CPU slot
    assert [slot.notebook_device for slot in layout[:3]] == ["cuda:0", "cuda:0", "cpu"]
    for slot in layout:  # 13 threads // 6 slots
        assert slot.environment["OMP_NUM_THREADS"] == slot.environment["MKL_NUM_THREADS"] == "2"


def test_slots_without_devices_keep_what_this_process_sees(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    layout = parallel.slots(4, threads=2)
    assert [s.environment["CUDA_VISIBLE_DEVICES"] for s in layout] == ["2,5"] * 4
    assert [s.environment["OMP_NUM_THREADS"] for s in layout] == ["1"] * 4  # never below 1
    assert all(s.device is None and s.notebook_device is None for s in layout)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert parallel.slots(1, threads=2)[0].environment["CUDA_VISIBLE_DEVICES"] is None  # unset
    assert [s.environment for s in parallel.slots(2, executor="slurm")] == [{}, {}]


def test_the_thread_budget_is_omp_num_threads_else_the_usable_cores(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert parallel.thread_budget() == 6
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert parallel.thread_budget() == len(os.sched_getaffinity(0))


def test_pinned_sets_the_environment_and_restores_it(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    slot = parallel.slots(2, ["cuda:1"], threads=8)[0]
    with parallel.pinned(slot):
        assert os.environ["OMP_NUM_THREADS"] == "4" and os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert os.environ["OMP_NUM_THREADS"] == "8" and "CUDA_VISIBLE_DEVICES" not in os.environ
    with parallel.pinned(None):
        assert os.environ["OMP_NUM_THREADS"] == "8"


def test_inline_dispatch_records_a_failure_and_goes_on():
    seen = []

    def work(task, slot):
        if task == "bad":
            raise RuntimeError("broken")
        return f"{task} in slot {slot.index}"

    parallel.dispatch(
        work,
        ["a", "bad", "c"],
        slots=parallel.slots(1, threads=1),
        started=lambda task, slot: seen.append(("start", task)),
        finished=lambda task, result, error: seen.append((task, result, repr(error))),
    )
    assert seen == [
        ("start", "a"),
        ("a", "a in slot 0", "None"),
        ("start", "bad"),
        ("bad", None, "RuntimeError('broken')"),
        ("start", "c"),
        ("c", "c in slot 0", "None"),
    ]


def test_a_failed_job_is_described_by_its_own_error_line():
    from submitit.core.utils import FailedJobError, UncompletedJobError

    trace = "Job (task=0) failed during processing with trace:\n----\nTraceback...\nOSError: disk"
    assert parallel.describe_failure(FailedJobError(trace)) == "OSError: disk"
    killed = UncompletedJobError("Job 12 has not produced any output (state: INTERRUPTED)\nlog")
    assert parallel.describe_failure(killed) == (
        "UncompletedJobError: Job 12 has not produced any output (state: INTERRUPTED)"
    )


# ---------------------------------------------------------------------- options


def test_defaults_follow_jobs_and_devices():
    assert parallel.check_options() == (1, [], "inline", {})
    assert parallel.check_options(jobs=3) == (3, [], "local", {})
    assert parallel.check_options(jobs=4, devices=["cuda:0", "cuda:1"])[:3] == (
        4,
        ["cuda:0", "cuda:1"],
        "local",
    )
    assert parallel.check_options(devices=["cuda:1"], executor="inline")[:3] == (
        1,
        ["cuda:1"],
        "inline",
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--jobs", "0"], "--jobs (jobs) must be at least 1, got 0"),
        (["--jobs", "3", "--devices", "cuda:0", "cuda:1"], "--jobs 3 does not share evenly"),
        (["--jobs", "1", "--devices", "cuda:0", "cuda:1"], "--jobs 1 does not share evenly"),
        (["--devices", "gpu0"], "--devices (devices): 'gpu0' is not 'cpu' or 'cuda:N'"),
        (["--devices", "cuda:0", "cuda:0"], "given more than once"),
        (["--jobs", "2", "--executor", "inline"], "one notebook at a time, not --jobs 2"),
        (["--slurm-partition", "gpu"], "Slurm options ['partition'] (--slurm-*, slurm) need"),
        (["--jobs", "2", "--slurm-time", "60"], "need --executor slurm, not local"),
        (["--executor", "slurm"], "needs --slurm-time MINUTES"),
        (["--executor", "slurm", "--slurm-option", "partiton=gpu"], "['partiton']"),
        (["--executor", "slurm", "--slurm-option", "cpus_per_task"], "give KEY=VALUE"),
        (["--executor", "slurm", "--slurm-time", "5", "--devices", "cuda:0"], "Slurm gives"),
        (["--executor", "slurm", "--slurm-time", "60"], "no Slurm on this machine"),
        (["--devices", "cpu", "-p", "DEVICE", "cpu"], "DEVICE cannot be swept with --devices"),
    ],
)
def test_bad_options_are_named_before_anything_is_written(
    tmp_path, capsys, monkeypatch, options, message
):
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm"))  # no srun, wherever the tests run
    notebook = _notebook(tmp_path / "nb.ipynb")
    out = tmp_path / "out"
    args = ["sweep", str(notebook), "-p", "A", "1", "2", *options, "--out", str(out)]
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------------- the executors


def test_the_slurm_executor_writes_the_options_into_the_batch_script(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{_fake_slurm(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}")
    slurm = {"time": 90, "partition": "gpu", "gpus_per_node": 2, "cpus_per_task": 8}
    slurm["account"] = "lab"
    assert parallel.check_options(executor="slurm", slurm=slurm) == (1, [], "slurm", slurm)
    executor = parallel.make_executor("slurm", tmp_path / "jobs", slurm)
    job = executor.submit(print, "one run")  # through the fake sbatch
    assert job.job_id == "4242"
    script = job.paths.submission_file.read_text().splitlines()
    for line in [
        "#SBATCH --time=90",
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --account=lab",
        "#SBATCH --job-name=spml-sweep",
    ]:
        assert line in script
    assert job.paths.submitted_pickle.is_file()  # what the job will run, pickled


def test_the_local_executor_lets_a_run_take_as_long_as_it_needs(tmp_path):
    executor = parallel.make_executor("local", tmp_path / "jobs")
    assert executor.cluster == "local"
    assert executor._executor.parameters["timeout_min"] >= 60 * 24 * 30  # submitit's default: 2
    # the Slurm configuration, built for the local cluster: submitit still checks its names
    built = parallel.make_executor("slurm", tmp_path / "other", {"time": 5}, cluster="local")
    assert built.cluster == "local"
    with pytest.raises(NameError, match="partiton"):
        parallel.make_executor("slurm", tmp_path / "x", {"partiton": "gpu"}, cluster="local")
