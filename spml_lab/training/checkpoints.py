"""A run's files: atomic checkpoints, what they must hold, RNG states, the metrics file.

What the files of a run folder are called is `spml_lab.training.runs`; here is what is in
them. Checkpoints are plain state dicts written to a temporary file and renamed (a killed run never
leaves a half-written one) and read with ``weights_only=True`` (no code runs on load).
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "read_final",
    "non_finite",
    "rng_state",
    "set_rng_state",
    "to_device",
    "MetricsFile",
]

# What checkpoint.pt and final.pt hold: entry -> type, or a dict for a nested entry. A file is
# checked against them when read, so a foreign or damaged one is named with what is wrong, not
# met by a KeyError deep inside a resume. Entries added later (``data_fingerprint``) are read
# with ``.get`` and left out, so files written before them still load.
STATE_DICT = "state dict"  # a dict of parameter names to tensors
CHECKPOINT_ENTRIES = {
    "step": int,
    "model": STATE_DICT,
    "head": STATE_DICT,
    "optimizer": {"state": dict, "param_groups": list},
    "memory": {"images_pushed": int, "batches": list},
    "rng": {
        "torch": torch.Tensor,
        "cuda": list,
        "numpy": {"keys": torch.Tensor, "pos": int, "has_gauss": int, "gauss": float},
        "python": {"version": int, "state": torch.Tensor, "gauss": (float, type(None))},
    },
    "data": {"epoch": int, "batch": int},
    "window": {"sums": torch.Tensor, "steps": int, "images": int},
    "config": dict,
}
FINAL_ENTRIES = {
    "model": STATE_DICT,
    "head": STATE_DICT,
    "config": dict,
    "num_classes": int,
    "class_names": (list, type(None)),
}


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


def read_checkpoint(path):
    """Load a run's ``checkpoint.pt`` and check that a resume can continue from it.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    state : dict
        With every entry of ``CHECKPOINT_ENTRIES``, of its type, and finite tensors.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        Naming the file and what is wrong: unreadable (`load_checkpoint`), missing entries,
        entries of the wrong type, or non-finite tensors (a run that diverged).
    """
    path = Path(path)
    state = load_checkpoint(path)
    _check_entries(state, CHECKPOINT_ENTRIES, path, "training checkpoint of spml-lab")
    _check_finite(state, path, "resume from a checkpoint before it, or train afresh")
    return state


def read_final(path):
    """Load a run's ``final.pt`` and check what a prediction needs of it.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    state : dict
        With every entry of ``FINAL_ENTRIES``, of its type, ``num_classes >= 1``, one class
        name per class (or None) and finite tensors.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        Naming the file and what is wrong (as `read_checkpoint`).
    """
    path = Path(path)
    state = load_checkpoint(path)
    _check_entries(state, FINAL_ENTRIES, path, f"{path.name} of spml-lab")
    count, names = state["num_classes"], state["class_names"]
    problems = [] if count >= 1 else [f"num_classes is {count} (needs >= 1)"]
    if names is not None and (len(names) != count or not all(isinstance(n, str) for n in names)):
        problems.append(f"{len(names)} class_names for num_classes {count} (needs one string each)")
    if problems:
        raise ValueError(f"{path}: not a {path.name} of spml-lab ({'; '.join(problems)})")
    _check_finite(state, path, "retrain with a lower learning rate (--lr)")
    return state


def _entry_problems(value, spec, name):
    """Return what is wrong with `value` against `spec` (``*_ENTRIES``), entry by entry."""
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return [f"{name or 'the file'} is a {type(value).__name__}, not a dict"]
        prefix = f"{name}." if name else ""
        missing = [prefix + key for key in spec if key not in value]
        problems = [f"missing entries {missing}"] if missing else []
        for key, inner in spec.items():
            if key in value:
                problems += _entry_problems(value[key], inner, prefix + key)
        return problems
    if spec == STATE_DICT:
        fine = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
        )
        return [] if fine else [f"{name} is not a state dict (parameter names to tensors)"]
    kinds = spec if isinstance(spec, tuple) else (spec,)
    # True is an int to Python, never a step or a class count to us
    if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
        return []
    needs = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
    return [f"{name} is {type(value).__name__} (needs {needs})"]


def _check_entries(state, spec, path, what):
    problems = _entry_problems(state, spec, "")
    if problems:
        raise ValueError(f"{path}: not a {what} ({'; '.join(problems)})")


def _check_finite(state, path, advice):
    bad = non_finite(state)
    if bad:
        raise ValueError(
            f"{path}: non-finite values in {_some(bad)}: the run diverged before this file was "
            f"written; {advice}"
        )


def _some(names, shown=3):
    """Name the first `shown` of `names`, and say how many more there are."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def non_finite(state, name=""):
    """Return the dotted names of the floating-point tensors in `state` that hold inf or NaN.

    Parameters
    ----------
    state : dict, list, tuple or tensor
        A checkpoint as saved (state dicts, optimizer state, memory, window sums...).
    name : str, optional
        Prefix of the names (the entry `state` is).

    Returns
    -------
    names : list of str
        E.g. ``["model.trunk.1.running_var"]``; empty when every tensor is finite.

    Examples
    --------
    >>> non_finite({"model": {"w": torch.ones(2), "v": torch.tensor([1.0, float("inf")])},
    ...             "step": 3, "ids": torch.arange(2)})
    ['model.v']
    """
    found = {}
    _floating_tensors(state, name, found)
    flags = {}  # device -> [(name, 0-d bool tensor)]: one read-back per device, not per tensor
    for key, tensor in found.items():
        flags.setdefault(tensor.device, []).append((key, tensor.isfinite().all()))
    bad = set()
    for pairs in flags.values():
        finite = torch.stack([flag for _, flag in pairs]).tolist()
        bad.update(key for (key, _), ok in zip(pairs, finite, strict=True) if not ok)
    return [key for key in found if key in bad]


def _floating_tensors(value, name, found):
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            found[name] = value
    elif isinstance(value, dict):
        for key, inner in value.items():
            _floating_tensors(inner, f"{name}.{key}" if name else str(key), found)
    elif isinstance(value, (list, tuple)):
        for index, inner in enumerate(value):
            _floating_tensors(inner, f"{name}.{index}" if name else str(index), found)


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
