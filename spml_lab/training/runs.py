"""A run: the folder layout every command shares, the shipped runs' names, and loading a run.

A run lives in one folder; these are the only names its files have::

    config.yaml     CONFIG      the TrainConfig of the run
    metrics.csv     METRICS     one row per log step (`checkpoints.MetricsFile`)
    checkpoint.pt   CHECKPOINT  latest training state, replaced atomically (for a resume)
    final.pt        FINAL       network + head + config, written when training ends
    stage2.pt       STAGE2      the stage-2 head (`spml_lab.prediction.stage2.fit_head`)
    summary.json    SUMMARY     a notebook's final numbers (`spml_lab.sweeps.runner.write_summary`)
    eval/           EVAL_DIR    scores of the val split; ``eval_{split}/`` for another split

A run is named by its folder (or its ``final.pt``), or ``"shipped:NAME"`` for one of the runs
shipped with the package (`shipped_runs`). Datasets have their own prefix, ``"embedded:KIND"``
(`spml_lab.data.datasets.open_data`): the data layer knows nothing of runs. The spelling
``"embedded:NAME"`` for a shipped run, used before runs had their own prefix, still loads it,
with a ``FutureWarning`` that gives the new spelling.

`load_run` is the one way to load a finished run. Its weights come from ``final.pt``, so it
never reads the ImageNet file a ResNet run started from (``TrainConfig.pretrained``).
`read_metrics` reads its training log, ``metrics.csv``, as columns of numbers.
What may be written into a run folder, and by whom, is `spml_lab.training.run_folders`.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spml_lab import devices
from spml_lab.data import datasets
from spml_lab.nets import heads
from spml_lab.nets.build import build_model
from spml_lab.training import checkpoints
from spml_lab.training.config import RESUMABLE_CHANGES, TrainConfig

__all__ = [
    "CONFIG",
    "METRICS",
    "CHECKPOINT",
    "FINAL",
    "STAGE2",
    "SUMMARY",
    "OWNER",
    "EVAL_DIR",
    "RUN_FILES",
    "SHIPPED",
    "SHIPPED_RUNS",
    "load_weights",
    "shipped_runs",
    "run_folder",
    "read_metrics",
    "Run",
    "load_run",
]

CONFIG, METRICS, CHECKPOINT, FINAL = "config.yaml", "metrics.csv", "checkpoint.pt", "final.pt"
STAGE2 = "stage2.pt"
SUMMARY = "summary.json"
OWNER = "notebook"  # the SUMMARY entry naming the notebook that made the run (`run_folders`)
EVAL_DIR = "eval"
# what stage 1 and its notebook write: a notebook that replaces its own run removes these
RUN_FILES = (CONFIG, METRICS, CHECKPOINT, FINAL, SUMMARY)

SHIPPED = "shipped:"  # prefix of a shipped run's name
_OLD_SHIPPED = "embedded:"  # its spelling before runs had their own prefix (datasets' prefix)
# the trained runs shipped with the samples (`make sample-runs`), read-only
SHIPPED_RUNS = datasets.DATA_SAMPLES / "runs"


def shipped_runs():
    """Return the names of the shipped runs, sorted (those with a ``final.pt``).

    Examples
    --------
    >>> "spml_scribbles" in shipped_runs()
    True
    """
    return sorted(p.parent.name for p in SHIPPED_RUNS.glob(f"*/{FINAL}"))


def run_folder(run):
    """Return the path a run name stands for: ``"shipped:NAME"`` is a shipped run, else a path.

    Parameters
    ----------
    run : str or Path
        ``"shipped:spml_scribbles"`` (one of `shipped_runs`), or a run folder or its
        ``final.pt``. ``"embedded:NAME"``, the former spelling of a shipped run, still works
        and warns.

    Returns
    -------
    path : Path
        Not checked for existence, except for a shipped name.

    Raises
    ------
    FileNotFoundError
        For a shipped name that is not shipped (the message lists those that are).

    Warns
    -----
    FutureWarning
        For ``"embedded:NAME"``: it names datasets now; the message gives ``"shipped:NAME"``.

    Examples
    --------
    >>> run_folder("shipped:spml_scribbles").relative_to(SHIPPED_RUNS).as_posix()
    'spml_scribbles'
    >>> run_folder("runs/mine")
    PosixPath('runs/mine')
    """
    text = str(run)
    if text.startswith(_OLD_SHIPPED):
        name = text[len(_OLD_SHIPPED) :]
        if name not in shipped_runs():
            raise FileNotFoundError(
                f"{text!r} names no run: 'embedded:' names the embedded datasets (objects, "
                f"parts); a shipped run is 'shipped:NAME', one of {shipped_runs()}"
            )
        warnings.warn(
            f"{text!r}: shipped runs are named {SHIPPED + name!r} now ('embedded:' names the "
            "embedded datasets); the old spelling will stop working",
            FutureWarning,
            stacklevel=2,
        )
        text = SHIPPED + name
    if not text.startswith(SHIPPED):
        return Path(run)
    name = text[len(SHIPPED) :]
    # a name, looked up in the list: "shipped:../x" or "shipped:/abs" must not reach a folder
    # of the user's as if it were shipped (read-only) data
    if name not in shipped_runs():
        raise FileNotFoundError(
            f"no shipped run {name!r} (shipped: {shipped_runs()}); `make sample-runs` trains them"
        )
    return SHIPPED_RUNS / name


def read_metrics(run):
    """Read a run's ``metrics.csv`` as columns of numbers.

    Parameters
    ----------
    run : str or Path
        The run folder (or ``"shipped:NAME"``, `run_folder`).

    Returns
    -------
    columns : dict of str to (rows,) float64 ndarray
        One entry per column (``step``, ``lr``, each enabled relation's loss, ``total``,
        ``softmax_ce``, ``images_per_s``), one value per logged row.

    Examples
    --------
    >>> history = read_metrics("shipped:spml_scribbles")
    >>> int(history["step"][-1]), "total" in history
    (1000, True)
    """
    with open(run_folder(run) / METRICS, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{run_folder(run) / METRICS} holds no logged row")
    return {key: np.array([float(row[key]) for row in rows]) for key in rows[0]}


@dataclass
class Run:
    """A finished stage-1 run, ready to predict with.

    Attributes
    ----------
    path : Path
        The run folder.
    net : torch.nn.Module
        Embedding network, in eval mode.
    head : heads.SoftmaxHead
        Stage-1 softmax head, in eval mode.
    cfg : TrainConfig
        The run's config.
    num_classes : int
    class_names : list of str or None
    step : int
        Training steps done.
    stage2_head : heads.SoftmaxHead or None
        The head of RUN_DIR/stage2.pt when it exists.
    data_fingerprint : dict or None
        What the run trained on (`datasets.data_fingerprint`); None for runs written before
        runs recorded it.
    """

    path: Path
    net: torch.nn.Module
    head: torch.nn.Module
    cfg: TrainConfig
    num_classes: int
    class_names: list | None
    step: int
    stage2_head: torch.nn.Module | None = None
    data_fingerprint: dict | None = None

    @property
    def device(self):
        """Device the network's weights live on."""
        return next(self.net.parameters()).device

    def describe(self):
        """Say in one line what the run is: network, training, classes and heads.

        Returns
        -------
        line : str

        Examples
        --------
        >>> print(load_run("shipped:spml_scribbles").describe())
        small net, 1000 steps on 'scribbles' labels, D = 32, 9 classes, stage-2 head: yes
        """
        stage2 = "yes" if self.stage2_head is not None else "not yet"
        return (
            f"{self.cfg.model} net, {self.step} steps on {self.cfg.annotation!r} labels, "
            f"D = {self.cfg.embedding_dim}, {self.num_classes} classes, stage-2 head: {stage2}"
        )


def load_run(run, *, device=devices.DEFAULT):
    """Load a finished run: network, stage-1 head, config and (if present) the stage-2 head.

    Parameters
    ----------
    run : str or Path
        The run folder, or its ``final.pt`` (then ``config.yaml`` and ``stage2.pt`` are
        looked for beside it), or ``"shipped:NAME"`` (`run_folder`).
    device : str or torch.device, optional
        Where to put the weights (``"auto"``: CUDA when present).

    Returns
    -------
    run : Run

    Raises
    ------
    FileNotFoundError
        If the folder or its ``final.pt`` does not exist.
    ValueError
        If ``final.pt`` is unreadable, foreign or damaged (`checkpoints.read_final`), its
        config differs from the folder's ``config.yaml`` (the folder mixes two runs), or a
        state dict does not fit the model its config builds (the message names the file and
        the first offending keys).

    Notes
    -----
    The weights come from ``final.pt``: the ImageNet file a ResNet run was trained from
    (``cfg.pretrained``) is never read, so a run loads on any machine.

    Examples
    --------
    >>> run = load_run("shipped:spml_scribbles")
    >>> run.step, run.num_classes, run.net.training
    (1000, 9, False)
    """
    path = run_folder(run)
    if not path.exists():
        raise FileNotFoundError(f"run folder not found: {path}")
    folder, final = (path, path / FINAL) if path.is_dir() else (path.parent, path)
    if not final.is_file():
        raise FileNotFoundError(
            f"{final} not found: {folder} holds no finished run (spml-lab train writes "
            f"{FINAL} when it ends)"
        )
    state = checkpoints.read_final(final)  # entries, their types, finite tensors, or the file named
    cfg = TrainConfig.from_dict(state["config"], source=f"{final} config")
    if (folder / CONFIG).is_file():
        saved = TrainConfig.from_yaml(folder / CONFIG)
        changed = saved.differences(cfg, ignore=RESUMABLE_CHANGES)
        if changed:
            raise ValueError(
                f"{final} holds a config that differs from {folder / CONFIG} in "
                + ", ".join(f"{k} ({b!r} vs {a!r})" for k, (a, b) in changed.items())
                + ": the folder mixes two runs"
            )
    num_classes = state["num_classes"]
    # the weights come from final.pt: the ImageNet file of cfg.pretrained may be long gone
    net, head = build_model(cfg, num_classes, load_pretrained=False, device=device)
    load_weights(net, state["model"], final, "model", f"{cfg.model!r} network")
    load_weights(head, state["head"], final, "head", "softmax head")
    stage2_head = None
    if (folder / STAGE2).is_file():
        stage2_head = _load_stage2_head(folder / STAGE2, cfg, num_classes).to(_device_of(head))
    return Run(
        path=folder,
        net=net.eval(),
        head=head.eval(),
        cfg=cfg,
        num_classes=num_classes,
        class_names=state.get("class_names"),
        step=int(state.get("step", 0)),
        stage2_head=None if stage2_head is None else stage2_head.eval(),
        data_fingerprint=state.get("data_fingerprint"),
    )


def _device_of(module):
    return next(module.parameters()).device


def _read_checkpoint(path, needs):
    """Load a checkpoint dict and check that it has the entries `needs`."""
    state = checkpoints.load_checkpoint(path)  # names the file when it cannot be read
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a checkpoint dict, got {type(state).__name__}")
    missing = [key for key in needs if key not in state]
    if missing:
        raise ValueError(f"{path}: not a checkpoint of this kind, it lacks entries {missing}")
    return state


def _load_stage2_head(path, cfg, num_classes):
    """Read stage2.pt and check that it was trained on this run's embedding."""
    state = _read_checkpoint(path, ("head", "run_config"))
    changed = TrainConfig.from_dict(state["run_config"], source=str(path)).differences(
        cfg, ignore=RESUMABLE_CHANGES
    )
    if changed:
        raise ValueError(
            f"{path} was trained on the embedding of another run (config differs in "
            f"{sorted(changed)}); rerun `spml-lab stage2` on this run"
        )
    head = heads.SoftmaxHead(cfg.embedding_dim, num_classes)  # eval mode: dropout unused
    load_weights(head, state["head"], path, "head", "softmax head")
    return head


def load_weights(module, state, path, entry, what):
    """`load_state_dict`, naming the first offending keys when the weights do not fit.

    Parameters
    ----------
    module : torch.nn.Module
        Built from the run's config.
    state : object
        What the file holds under `entry` (a state dict, unless the file is damaged).
    path : Path
        The file, for the message.
    entry : str
        Its key in the file (``"model"``, ``"head"``).
    what : str
        What `module` is, for the message (``"softmax head"``).

    Raises
    ------
    ValueError
        Naming `path`, `entry` and the first missing, unexpected or misshapen keys.
    """
    expected = module.state_dict()
    if not isinstance(state, dict):
        raise ValueError(f"{path}: entry {entry!r} is not a state dict")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} saved vs {tuple(v.shape)} built"
        for k, v in expected.items()
        if k in state and getattr(state[k], "shape", v.shape) != v.shape
    ]
    problems = [
        f"{name} {items[:3]}{' ...' if len(items) > 3 else ''}"
        for name, items in (("missing keys", missing), ("unexpected keys", unexpected))
        if items
    ] + (["shape mismatches " + "; ".join(shapes[:3])] if shapes else [])
    if problems:
        raise ValueError(
            f"{path}: the {entry!r} weights do not fit the {what} its config builds: "
            + ", ".join(problems)
        )
    module.load_state_dict(state)
