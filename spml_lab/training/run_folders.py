"""Who may write what into a run folder, so that nothing of value is lost.

The files and their names are `spml_lab.training.runs`; here are the rules for writing them:
`open_run` decides what a training run does with its folder, `prepare_run_folder` what a
notebook does with the folder it is given, and `copy_run` gives a read-only run a copy of the
user's to write into. That the shipped data stays read-only and that one process writes a
folder at a time holds for every folder, run or not: `spml_lab.data.writers`.

`prepare_run_folder` decides, before `train.fit` runs, between:

* no run there yet: a fresh run;
* a run with the **same config** (up to `config.RESUMABLE_CHANGES`): it is resumed, so a killed
  run continues from its last checkpoint and a finished one is only reloaded;
* a **finished run of the same notebook** (the ``notebook`` entry of its ``summary.json``,
  written by `spml_lab.sweeps.runner.write_summary`, names it) with another config: its run
  files (`runs.RUN_FILES`) are
  deleted and a new run starts (rerunning with another annotation just works; other files in
  the folder, like a sweep's executed notebook, stay);
* anything else (a ``spml-lab train`` run, a killed run with another config): an error that
  names the folder and the differences.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from spml_lab.training.checkpoints import read_checkpoint
from spml_lab.training.config import RESUMABLE_CHANGES, TrainConfig
from spml_lab.training.runs import (
    CHECKPOINT,
    CONFIG,
    FINAL,
    METRICS,
    OWNER,
    RUN_FILES,
    STAGE2,
    SUMMARY,
)

__all__ = ["open_run", "prepare_run_folder", "copy_run"]


def _owner(folder):
    path = folder / SUMMARY
    return json.loads(path.read_text()).get(OWNER) if path.is_file() else None


def prepare_run_folder(cfg, owner):
    """Make ``cfg.out_dir`` ready for `train.fit` and return the config to train with.

    Parameters
    ----------
    cfg : TrainConfig
        The run the notebook wants.
    owner : str
        The notebook's name, as its ``summary.json`` records it.

    Returns
    -------
    cfg : TrainConfig
        `cfg` with ``resume=True`` (a fresh folder simply starts at step 0).
    action : {"fresh", "resume", "replaced"}
        What was decided (the notebook prints it).

    Raises
    ------
    FileExistsError
        If the folder holds a run of another config that `owner` did not finish.

    Examples
    --------
    >>> import tempfile
    >>> cfg = TrainConfig(out_dir=tempfile.mkdtemp() + "/run")
    >>> prepare_run_folder(cfg, "09_training")[1]
    'fresh'
    """
    folder = Path(cfg.out_dir)
    action = "fresh"
    if (folder / CONFIG).is_file():
        old = TrainConfig.from_yaml(folder / CONFIG)
        changed = sorted(old.differences(cfg, ignore=RESUMABLE_CHANGES))
        if not changed:
            action = "resume"
        elif _owner(folder) == owner and (folder / FINAL).is_file():
            for name in RUN_FILES:
                (folder / name).unlink(missing_ok=True)
            action = "replaced"
        else:
            raise FileExistsError(
                f"out_dir {str(folder)!r} holds another run (it differs in {changed}) that "
                f"{owner} did not finish; choose another out_dir or remove that folder yourself"
            )
    return cfg.replace(resume=True), action


def open_run(run, cfg, *, start_if_empty=True):
    """Check the run folder; return the checkpoint to resume from, or None for a fresh run.

    The one place that decides what ``cfg.resume`` does with a folder. A fresh run needs an
    empty (or absent) folder; ``resume`` needs its ``checkpoint.pt`` (`read_checkpoint`) and a
    config that matches it. A folder with run files but no checkpoint is refused either way:
    a finished run (``final.pt``) is never trained again, and a run killed before its first
    checkpoint is the user's to remove. Nothing is written here but stale temporary files
    removed, so a refusal leaves the folder as it was (and an absent one absent).

    Parameters
    ----------
    run : Path
        The run folder (``cfg.out_dir``).
    cfg : TrainConfig
    start_if_empty : bool, optional
        What ``resume`` does with a folder that holds no run at all: start one (True: "resume
        if possible", so a notebook rerun resumes or starts alike) or refuse (False: an explicit
        ``spml-lab train --resume``, where a typo in ``--out-dir`` or a relative path read from
        another working folder must not start a fresh run unnoticed).

    Returns
    -------
    state : dict or None
        The checkpoint (`read_checkpoint`), or None for a fresh run.

    Raises
    ------
    FileExistsError
        A fresh run into a folder that holds a run; a resume of a finished run.
    FileNotFoundError
        A resume with no checkpoint to resume from (see `start_if_empty`).
    ValueError
        A damaged or foreign checkpoint, or a config that differs from the checkpoint's.
    """
    for stale in run.glob(".*.tmp"):  # left by a run killed while saving
        stale.unlink()
    if cfg.resume and (run / CHECKPOINT).is_file():
        state = read_checkpoint(run / CHECKPOINT)  # names the file and what is wrong with it
        saved = TrainConfig.from_dict(state["config"], source=f"{run / CHECKPOINT} config")
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
    if cfg.resume and not start_if_empty:
        raise FileNotFoundError(
            f"cannot resume {run}: no {CHECKPOINT} or {FINAL} there, so no run to continue "
            "(check --out-dir, or the out_dir of the --config file); drop --resume "
            "(resume=False) to start a fresh run there"
        )
    if taken and not cfg.resume:
        raise FileExistsError(
            f"TrainConfig.out_dir {str(run)!r} already holds a run ({', '.join(taken)}); pass "
            "resume=True (--resume) to continue it, or choose another out_dir"
        )
    return None


def copy_run(run_dir, out, *, stage2=False):
    """Copy a run's stage-1 files into `out`, a folder of the user's, and return `out`.

    How a shipped (read-only) run gets a stage-2 head or scores of its own: the copy is
    written to, never the original. An `out` that already holds the same run is reused.

    Parameters
    ----------
    run_dir : str or Path
        A run folder (``config.yaml``, ``final.pt``...).
    out : str or Path
    stage2 : bool, optional
        Copy the run's stage-2 head (``stage2.pt``) too, if it has one, so that the copy
        predicts as the original does (a lesson that writes only scores); without it the copy
        is ready for a stage-2 head of its own.

    Returns
    -------
    out : Path

    Raises
    ------
    FileExistsError
        If `out` holds another run, or files of another kind.
    """
    run_dir, out = Path(run_dir), Path(out)
    if run_dir.resolve() == out.resolve():
        return out
    if (out / FINAL).is_file():
        same = (out / FINAL).read_bytes() == (run_dir / FINAL).read_bytes()
        if not same:
            raise FileExistsError(f"{out} holds another run; choose another --out")
        return out
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty and holds no run; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG, METRICS, FINAL) + ((STAGE2,) if stage2 else ()):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out / name)
    return out
