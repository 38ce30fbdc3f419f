"""A training run's folder: atomic checkpoints, RNG states, the metrics file, resume checks.

A run lives in one folder (``TrainConfig.out_dir``)::

    config.yaml     the TrainConfig of the run
    metrics.csv     step, lr, each enabled relation's loss, total, softmax_ce, images_per_s
    checkpoint.pt   latest state, replaced atomically every checkpoint_every steps
    final.pt        model + head + config, written at the end

Checkpoints are plain state dicts written to a temporary file and renamed (a killed run never
leaves a half-written one) and read with ``weights_only=True`` (no code runs on load).
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import numpy as np
import torch

from spml_lab.training.config import RESUMABLE_CHANGES, TrainConfig

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
    "to_device",
    "open_run",
    "MetricsFile",
    "CONFIG",
    "METRICS",
    "CHECKPOINT",
    "FINAL",
]

CONFIG, METRICS, CHECKPOINT, FINAL = "config.yaml", "metrics.csv", "checkpoint.pt", "final.pt"


def save_checkpoint(state, path):
    """Write `state` with ``torch.save`` atomically: to a temporary file, then rename.

    A run killed while writing leaves the previous checkpoint intact and, at worst, a
    ``.NAME.PID.tmp`` file beside it (never a partial file under the final name).

    Parameters
    ----------
    state : dict
        Tensors, numbers, strings and containers of them only (``weights_only`` loadable).
    path : str or Path
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint with ``torch.load(weights_only=True)`` (no code runs on load).

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        If it is not a checkpoint torch can read (empty, truncated, a text file, random bytes,
        or a pickle that needs code to load), naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # foreign files raise anything: KeyError, IndexError, EOFError...
        raise ValueError(f"{path}: cannot read checkpoint ({error!r})") from error


def rng_state():
    """Every RNG as tensors and numbers (``weights_only`` cannot load numpy arrays)."""
    # numpy's global RNG is legacy, but user code and libraries still draw from it
    _, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    version, internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {
            "version": version,
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss": py_gauss,
        },
    }


def set_rng_state(state):
    """Restore every RNG from a `rng_state` dict (torch, CUDA, numpy's global, Python's)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["gauss"]))  # noqa: NPY002
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"].tolist()), p["gauss"]))


def to_device(value, device):
    """Move the tensors of a nested dict/list structure to `device`; other values unchanged."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [to_device(v, device) for v in value]
    return value


# ---------------------------------------------------------------------- run folder


def open_run(run, cfg):
    """Check the run folder; return the checkpoint to resume from, or None for a fresh run.

    A fresh run needs an empty (or absent) folder; ``resume`` needs its ``checkpoint.pt`` and a
    config that matches it, and on an empty folder starts afresh (there is nothing to lose).
    A folder with run files but no checkpoint is refused either way: a finished run
    (``final.pt``) is never trained again, and a run killed before its first checkpoint is
    the user's to remove.
    """
    for stale in run.glob(".*.tmp"):  # left by a run killed while saving
        stale.unlink()
    if cfg.resume and (run / CHECKPOINT).is_file():
        state = load_checkpoint(run / CHECKPOINT)  # names the file when unreadable
        needs = ("config", "step", "model", "head", "optimizer", "memory", "rng", "data")
        if not isinstance(state, dict) or any(key not in state for key in needs):
            raise ValueError(
                f"{run / CHECKPOINT}: not a training checkpoint of spml-lab (it needs {needs})"
            )
        saved = TrainConfig.from_dict(state["config"], source=str(run / CHECKPOINT))
        changed = saved.differences(cfg, ignore=RESUMABLE_CHANGES)
        if changed:
            raise ValueError(
                f"cannot resume {run}: the config differs from its checkpoint's in "
                + ", ".join(f"{k} ({a!r} there, {b!r} now)" for k, (a, b) in changed.items())
            )
        return state
    taken = [name for name in (CONFIG, CHECKPOINT, FINAL, METRICS) if (run / name).exists()]
    if taken and cfg.resume:  # a run folder without its checkpoint: nothing safe to resume
        if (run / FINAL).exists():
            raise FileExistsError(
                f"cannot resume {run}: it holds a finished run ({FINAL}) but no {CHECKPOINT}; "
                "a finished run is never trained again (choose another out_dir to retrain)"
            )
        raise FileNotFoundError(
            f"cannot resume {run}: no {CHECKPOINT} in it (the run stopped before its first "
            f"checkpoint); remove the folder's {', '.join(taken)} to start afresh"
        )
    if taken and not cfg.resume:
        raise FileExistsError(
            f"TrainConfig.out_dir {str(run)!r} already holds a run ({', '.join(taken)}); pass "
            "resume=True (--resume) to continue it, or choose another out_dir"
        )
    return None


class MetricsFile:
    """metrics.csv: one row per log step; on resume, rows after the checkpoint are dropped."""

    def __init__(self, path, columns, keep_until):
        self.path, self.columns = path, columns
        rows = []
        if keep_until > 0 and path.is_file():
            with open(path, newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= keep_until]
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)

    def append(self, row):
        """Append one row (a dict keyed by the columns) to the file."""
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, self.columns).writerow(row)
