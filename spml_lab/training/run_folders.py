"""What a notebook may do with the run folder it is given, so that nothing of value is lost.

`prepare_run_folder` decides, before `train.fit` runs, between:

* no run there yet: a fresh run;
* a run with the **same config** (up to `config.RESUMABLE_CHANGES`): it is resumed, so a killed
  run continues from its last checkpoint and a finished one is only reloaded;
* a **finished run of the same notebook** (its ``summary.json``, written by
  `spml_lab.batch.runner.write_summary`, names it) with another config: its run files are
  deleted and a new run starts (rerunning with another annotation just works; other files in
  the folder, like a sweep's executed notebook, stay);
* anything else (a ``spml-lab train`` run, a killed run with another config): an error that
  names the folder and the differences.
"""

from __future__ import annotations

import json
from pathlib import Path

from spml_lab.training.config import RESUMABLE_CHANGES, TrainConfig

__all__ = ["RUN_FILES", "prepare_run_folder"]

RUN_FILES = ("config.yaml", "metrics.csv", "checkpoint.pt", "final.pt", "summary.json")
SUMMARY = "summary.json"


def _owner(folder):
    path = folder / SUMMARY
    return json.loads(path.read_text()).get("notebook") if path.is_file() else None


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
    if (folder / "config.yaml").is_file():
        old = TrainConfig.from_yaml(folder / "config.yaml")
        changed = sorted(old.differences(cfg, ignore=RESUMABLE_CHANGES))
        if not changed:
            action = "resume"
        elif _owner(folder) == owner and (folder / "final.pt").is_file():
            for name in RUN_FILES:
                (folder / name).unlink(missing_ok=True)
            action = "replaced"
        else:
            raise FileExistsError(
                f"out_dir {str(folder)!r} holds another run (it differs in {changed}) that "
                f"{owner} did not finish; choose another out_dir or remove that folder yourself"
            )
    return cfg.replace(resume=True), action
