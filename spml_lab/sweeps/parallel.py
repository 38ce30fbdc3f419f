"""Where the runs of a sweep execute: here one at a time, side by side, or as Slurm jobs.

`spml-lab sweep` hands each run to one of three executors:

``inline``
    this process, one run after the other (the default with one job);
``local``
    submitit's `LocalExecutor`: each run in its own process on this machine, ``jobs`` at a
    time (the default with more than one job);
``slurm``
    submitit's `SlurmExecutor` through `AutoExecutor`: each run a Slurm job, ``jobs`` of them
    queued or running at a time.

The local and Slurm executors run the same pickled call (`sweep.execute_run`) in a fresh
process, so a test with the local executor covers the code a Slurm job runs.

Notes
-----
Why submitit for the processes and `concurrent.futures` for the "N at a time": submitit's
`LocalExecutor` starts a process the moment a job is submitted and has no limit on how many
run at once (its ``array_parallelism`` is a Slurm option), so it cannot keep N runs in flight
by itself. A `ThreadPoolExecutor` of N threads does: each thread takes a free slot (a device or
a share of the CPU threads), submits one run and waits for it. Only this process writes the
sweep's table; the threads take turns through a `filelock` lock.

A slot pins its run by environment variables, set in the process that starts the kernel and
inherited by it: ``CUDA_VISIBLE_DEVICES`` (the one GPU of the slot, which the notebook then sees
as ``cuda:0``; empty for ``cpu``) and ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` (the slot's
share of the threads, which torch takes as its thread count when it starts).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import queue
import re
import threading
from dataclasses import dataclass, field

__all__ = [
    "EXECUTORS",
    "Slot",
    "check_options",
    "thread_budget",
    "slots",
    "pinned",
    "make_executor",
    "dispatch",
    "describe_failure",
]

EXECUTORS = ("inline", "local", "slurm")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # what torch and BLAS read at start
DEVICE_PATTERN = r"cpu|cuda:\d+"
# submitit's local executor kills a job after `timeout_min` (2 minutes unless set); a run on
# this machine has no time limit, so the limit is set beyond any run (a year)
LOCAL_TIMEOUT_MIN = 60 * 24 * 365
SUBMITIT_FOLDER = "submitit"  # in the sweep folder: submitit's pickles and each job's logs


@dataclass(frozen=True)
class Slot:
    """One of the ``jobs`` places a run can take: its device and environment.

    Attributes
    ----------
    index : int
        0 .. jobs - 1.
    device : str or None
        ``"cpu"`` or ``"cuda:N"`` from ``devices``; None when no device was asked for.
    environment : dict
        Variable -> value for the run's process (None: unset it).
    """

    index: int
    device: str | None = None
    environment: dict = field(default_factory=dict)

    @property
    def notebook_device(self):
        """The device as the pinned run sees it: its one visible GPU is ``cuda:0``."""
        if self.device is None:
            return None
        return "cpu" if self.device == "cpu" else "cuda:0"


def check_options(jobs=None, devices=None, executor=None, slurm=None):
    """Check how a sweep should run and fill in the defaults, before anything is written.

    Parameters
    ----------
    jobs : int, optional
        Runs at a time (``--jobs``); default: one per device, else 1.
    devices : list of str, optional
        ``"cpu"`` or ``"cuda:N"``, each once (``--devices``); runs take them round-robin.
    executor : str, optional
        One of `EXECUTORS` (``--executor``); default ``"inline"`` for one job, else
        ``"local"``.
    slurm : dict, optional
        `submitit.SlurmExecutor` parameters (``partition``, ``time`` in minutes,
        ``gpus_per_node``, ...), only with ``executor="slurm"``, which needs ``time``.

    Returns
    -------
    jobs : int
    devices : list of str
    executor : str
    slurm : dict

    Raises
    ------
    ValueError
        Naming the option: jobs below 1, a malformed or repeated device, jobs that do not
        share evenly over the devices, an unknown executor, more than one job inline, Slurm
        options without the Slurm executor, devices with it (Slurm assigns GPUs), a Slurm run
        without a time limit, an unknown Slurm option, or no Slurm on this machine.

    Examples
    --------
    >>> check_options(devices=["cuda:0", "cuda:1"])
    (2, ['cuda:0', 'cuda:1'], 'local', {})
    >>> check_options(jobs=0)
    Traceback (most recent call last):
    ...
    ValueError: --jobs (jobs) must be at least 1, got 0
    """
    devices, slurm = list(devices or []), dict(slurm or {})
    for device in devices:
        if not isinstance(device, str) or not re.fullmatch(DEVICE_PATTERN, device):
            raise ValueError(f"--devices (devices): {device!r} is not 'cpu' or 'cuda:N'")
    repeated = sorted({d for d in devices if devices.count(d) > 1})
    if repeated:
        raise ValueError(
            f"--devices (devices): {repeated} given more than once; to put several runs on one "
            "device, raise --jobs (--jobs 4 --devices cuda:0 cuda:1 runs two on each)"
        )
    if jobs is None:
        jobs = len(devices) or 1
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs (jobs) must be at least 1, got {jobs!r}")
    if devices and jobs % len(devices):
        raise ValueError(
            f"--jobs {jobs} does not share evenly over {len(devices)} --devices: give a "
            f"multiple of {len(devices)} (each device then runs --jobs / {len(devices)} at a time)"
        )
    if executor is None:
        executor = "inline" if jobs == 1 else "local"
    if executor not in EXECUTORS:
        raise ValueError(f"--executor (executor) must be one of {EXECUTORS}, got {executor!r}")
    if executor == "inline" and jobs > 1:
        raise ValueError(
            f"--executor inline runs one notebook at a time, not --jobs {jobs}: use --executor "
            "local for runs side by side"
        )
    if slurm and executor != "slurm":
        raise ValueError(
            f"Slurm options {sorted(slurm)} (--slurm-*, slurm) need --executor slurm, "
            f"not {executor}"
        )
    if executor == "slurm":
        _check_slurm(devices, slurm)
    return jobs, devices, executor, slurm


def thread_budget():
    """Count the CPU threads a sweep shares out: ``OMP_NUM_THREADS`` if set, else the cores.

    Returns
    -------
    threads : int
        At least 1.
    """
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        pass
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def slots(jobs, devices=(), *, executor="local", threads=None):
    """Lay out the ``jobs`` slots of a sweep: devices round-robin, each a share of the threads.

    Parameters
    ----------
    jobs : int
        Runs at a time.
    devices : sequence of str, optional
        Slot k gets ``devices[k % len(devices)]``.
    executor : str, optional
        ``"slurm"`` pins nothing (the job's allocation decides its GPUs and cores).
    threads : int, optional
        Threads to share; default `thread_budget`. Each slot gets ``threads // jobs`` (at
        least 1).

    Returns
    -------
    slots : list of Slot

    Examples
    --------
    >>> [(s.device, s.environment["CUDA_VISIBLE_DEVICES"], s.environment["OMP_NUM_THREADS"])
    ...  for s in slots(4, ["cuda:0", "cuda:3"], threads=16)]
    [('cuda:0', '0', '4'), ('cuda:3', '3', '4'), ('cuda:0', '0', '4'), ('cuda:3', '3', '4')]
    """
    if executor == "slurm":
        return [Slot(k) for k in range(jobs)]
    share = str(max(1, (threads or thread_budget()) // jobs))
    # submitit's local executor hides every GPU from a job (CUDA_VISIBLE_DEVICES=""); a run
    # without a device sees what this process sees
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    result = []
    for k in range(jobs):
        device = devices[k % len(devices)] if devices else None
        visible = inherited if device is None else ("" if device == "cpu" else device[5:])
        environment = {name: share for name in THREAD_VARIABLES}
        environment["CUDA_VISIBLE_DEVICES"] = visible
        result.append(Slot(k, device, environment))
    return result


@contextlib.contextmanager
def pinned(slot):
    """Set a slot's environment variables while the block runs, then restore them.

    The kernel papermill starts inherits them. In a process of its own (local or Slurm
    executor) the restore does not matter; inline it leaves this process as it was.
    """
    environment = {} if slot is None else slot.environment
    before = {name: os.environ.get(name) for name in environment}
    try:
        _set(environment)
        yield
    finally:
        _set(before)


def make_executor(executor, folder, slurm=None, *, cluster=None):
    """Make the submitit executor of a sweep, its files in `folder`.

    Parameters
    ----------
    executor : {"local", "slurm"}
    folder : str or Path
        For submitit's pickles and each job's stdout/stderr (created); on a Slurm cluster it
        must be on a file system the nodes share.
    slurm : dict, optional
        `submitit.SlurmExecutor` parameters, passed as ``slurm_<name>``.
    cluster : str, optional
        Build the executor for this submitit cluster instead (``"local"``, ``"debug"``):
        submitit still checks the Slurm parameters, which tests use without a cluster.

    Returns
    -------
    executor : submitit.AutoExecutor
    """
    import submitit

    auto = submitit.AutoExecutor(folder, cluster=cluster or executor)
    auto.update_parameters(
        name="spml-sweep",
        timeout_min=LOCAL_TIMEOUT_MIN,  # Slurm uses slurm_time instead (required there)
        **{f"slurm_{name}": value for name, value in (slurm or {}).items()},
    )
    return auto


def dispatch(function, tasks, *, slots, executor=None, started=None, finished=None):
    """Run ``function(task, slot)`` for every task, ``len(slots)`` at a time.

    Parameters
    ----------
    function : callable
        Module-level (submitit pickles it); returns the task's result.
    tasks : list
        Picklable arguments.
    slots : list of Slot
        One per job; a task runs in a free one.
    executor : submitit.Executor, optional
        None: run here, one task after another (needs one slot).
    started : callable, optional
        ``started(task, slot)`` when a task takes its slot (called from a worker thread).
    finished : callable, optional
        ``finished(task, result, error)`` as each task ends, in this thread, in the order
        they end; ``error`` is the exception when the task (or its process) failed.

    Raises
    ------
    KeyboardInterrupt
        After cancelling the submitted jobs still running (the tasks not yet started never
        start).
    """
    started = started or (lambda task, slot: None)
    finished = finished or (lambda task, result, error: None)
    if executor is None:
        for task in tasks:
            started(task, slots[0])
            try:
                result, error = function(task, slots[0]), None
            except Exception as failure:  # the task's, reported, and the next one goes on
                result, error = None, failure
            finished(task, result, error)
        return
    free = queue.SimpleQueue()  # never empty when a thread asks: there are as many threads
    for slot in slots:
        free.put(slot)
    jobs, submitting, stopped = [], threading.Lock(), threading.Event()

    def submit_and_wait(task):
        slot = free.get()
        try:
            with submitting:  # no job slips in after the interrupt cancelled the others
                if stopped.is_set():
                    raise concurrent.futures.CancelledError()
                started(task, slot)
                job = executor.submit(function, task, slot)
                jobs.append(job)
            return job.result()
        finally:
            free.put(slot)

    pool = concurrent.futures.ThreadPoolExecutor(len(slots), thread_name_prefix="sweep")
    futures = {pool.submit(submit_and_wait, task): task for task in tasks}
    try:
        for future in concurrent.futures.as_completed(futures):
            error = future.exception()
            finished(futures[future], None if error else future.result(), error)
    except BaseException:
        with submitting:
            stopped.set()
            for job in jobs:
                if not job.done():
                    job.cancel(check=False)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def describe_failure(error):
    """One line for a run whose process failed: the job's own last error line if it has one."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    name = type(error).__name__
    if not lines:
        return name
    if name == "FailedJobError":  # submitit: a header, then the job's traceback
        return lines[-1]
    return f"{name}: {lines[0]}"


# ---------------------------------------------------------------------- helpers


def _check_slurm(devices, slurm):
    import submitit

    if devices:
        raise ValueError(
            "--devices (devices) cannot be used with --executor slurm: Slurm gives each job its "
            "GPUs; ask for them with --slurm-gpus-per-node"
        )
    valid = submitit.SlurmExecutor._valid_parameters()  # the sbatch options submitit knows
    unknown = sorted(set(slurm) - valid)
    if unknown:
        raise ValueError(
            f"Slurm options {unknown} (--slurm-option, slurm) are not submitit SlurmExecutor "
            f"parameters; known: {', '.join(sorted(valid))}"
        )
    if "time" not in slurm:
        raise ValueError(
            "--executor slurm needs --slurm-time MINUTES (slurm['time']): Slurm stops a run at "
            "its time limit, and submitit's default is 5 minutes"
        )
    if submitit.SlurmExecutor.affinity() < 0:
        raise ValueError("--executor slurm: no Slurm on this machine (no `srun` on PATH)")


def _set(environment):
    for name, value in environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
