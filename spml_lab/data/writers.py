"""Who may write a folder: never the shipped data, and one process at a time.

Every command that writes (``train``, ``stage2``, ``evaluate``, ``cam-labels``, ``sweep``)
holds its output folder with `one_writer`, which first calls `refuse_shipped`: the embedded
samples and the shipped runs (`datasets.DATA_SAMPLES`) stay read-only, and a second process
that tries to write the same folder is refused, naming the first. What a run folder holds and
how a training run treats it is `spml_lab.training.run_folders`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from pathlib import Path

import filelock

from spml_lab.data import datasets

__all__ = ["refuse_shipped", "one_writer"]

# Only `make sample-runs` sets this: it is the one command that rewrites the shipped runs.
WRITE_SHIPPED_ENV = "SPML_LAB_WRITE_SHIPPED"
# An OS lock (flock) on this file marks the folder's one writer. The OS frees it when its
# process dies, however it dies, so a killed run never blocks its own --resume.
LOCK_FILE = ".writer.lock"
WRITER_FILE = ".writer.json"  # who holds the lock, for the message a second writer gets
_HELD = set()  # the folders this process holds: a nested writer of the same folder goes on


def refuse_shipped(folder):
    """Raise if `folder` lies inside the package's shipped data (read-only).

    Parameters
    ----------
    folder : str or Path
        Where something is about to be written; resolved, so ``..``, absolute paths and
        symlinks cannot reach the shipped data another way.

    Raises
    ------
    ValueError
        Naming the folder and what to do instead.

    Examples
    --------
    >>> refuse_shipped(datasets.DATA_SAMPLES / "runs" / "full")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: .../runs/full is shipped with spml_lab and read-only; ...
    """
    if os.environ.get(WRITE_SHIPPED_ENV) == "1":
        return
    resolved, shipped = Path(folder).resolve(), datasets.DATA_SAMPLES.resolve()
    if resolved == shipped or shipped in resolved.parents:
        raise ValueError(
            f"{resolved} is shipped with spml_lab and read-only; write into a folder of yours "
            "(the commands' --out option copies a shipped run there first)"
        )


@contextlib.contextmanager
def one_writer(folder):
    """Hold `folder` as its only writer while the block runs (train, stage 2, evaluate...).

    Parameters
    ----------
    folder : str or Path
        Created if missing; refused when it is shipped data (`refuse_shipped`).

    Yields
    ------
    folder : Path

    Raises
    ------
    FileExistsError
        If another process is writing the folder; the message names it (pid, host, command).

    Examples
    --------
    >>> import tempfile
    >>> with one_writer(tempfile.mkdtemp()) as folder:
    ...     (folder / WRITER_FILE).is_file()
    True
    """
    folder = Path(folder)
    refuse_shipped(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _HELD:  # this process already holds it (train.fit scoring its own run)
        yield folder
        return
    lock = filelock.FileLock(folder / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise FileExistsError(
            f"{folder} is being written by another process ({_writer(folder)}); wait for it to "
            "finish, or stop it and --resume"
        ) from None
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)}
        (folder / WRITER_FILE).write_text(json.dumps(holder) + "\n")
        _HELD.add(key)
        yield folder
    finally:
        _HELD.discard(key)
        (folder / WRITER_FILE).unlink(missing_ok=True)
        lock.release()


def _writer(folder):
    try:
        holder = json.loads((folder / WRITER_FILE).read_text())
        return f"pid {holder['pid']} on {holder['host']}: {holder['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "it has not said who it is yet"
