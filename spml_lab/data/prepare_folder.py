"""How a ``spml-lab prepare`` writes its dataset folder: claimed, whole files, resumable.

Every prepare (`voc.prepare_voc`, `densepose.prepare_densepose`) writes a folder the same way:

* `claim` checks that the folder is new, empty, or an unfinished prepare with the same
  settings, and records those settings in ``prepare.json`` before any other file;
* `atomic_write` writes each file under a temporary name and renames it, so a file that
  exists is whole and a killed prepare leaves nothing half-written;
* `run_jobs` runs the per-image work (in worker processes if asked) behind a progress bar,
  stopping at the first bad image, or recording it when the user asked to skip bad images;
* the prepare writes ``dataset.json`` last: its presence means the folder is finished.

So a second run of the same command skips the images whose files all exist, and a finished
folder is left as it is.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
from pathlib import Path
from typing import NamedTuple

from tqdm.auto import tqdm

__all__ = [
    "BAD_REPORT",
    "Prepared",
    "MANIFEST",
    "atomic_write",
    "bad_record",
    "claim",
    "default_workers",
    "finish",
    "finished_splits",
    "read_json",
    "run_jobs",
    "write_lists",
]

BAD_REPORT = "bad_images.json"  # with skip_bad: the images left out, and why
MANIFEST = "prepare.json"  # the settings of the prepare that writes the folder (written first)
# what to do about a damaged file of a prepare's own in a prepared folder
_REDO = "restore the file, or delete the folder and prepare again"


class Prepared(NamedTuple):
    """What a prepare (`voc.prepare_voc`, `densepose.prepare_densepose`) did."""

    root: Path  # the dataset folder
    splits: dict  # split -> number of images listed
    bad: list  # {"id", "file", "reason"} of each image left out (skip_bad)
    skipped: bool  # True: the folder was already prepared, nothing was done


def default_workers():
    """Worker processes of a prepare: the CPUs this process may use, at most 4.

    Examples
    --------
    >>> 1 <= default_workers() <= 4
    True
    """
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return max(1, min(4, available or os.cpu_count() or 1))


def atomic_write(target, write):
    """Call ``write(temporary_path)``, then rename it to `target`: a file that exists is whole.

    Parameters
    ----------
    target : Path
        The file to write (its folder is created).
    write : callable
        Writes the file's content to the path it is given.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    write(partial)
    os.replace(partial, target)


def read_json(path, kind, what):
    """Read a JSON file a prepare wrote; a damaged one is named, with what it held.

    Parameters
    ----------
    path : Path
    kind : {dict, list}
        The JSON value the file must hold.
    what : str
        What the file records, for the error message.

    Raises
    ------
    ValueError
        If the file is not valid JSON or holds another kind of value.
    """
    try:
        value = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}); it records {what}: {_REDO}") from None
    if not isinstance(value, kind):
        article = "a JSON object" if kind is dict else "a JSON list"
        raise ValueError(
            f"{path}: not {article} (got {type(value).__name__}); it records {what}: {_REDO}"
        )
    return value


def claim(out, settings):
    """Check that `out` is empty, or a prepare with the same settings; write ``prepare.json``.

    Parameters
    ----------
    out : Path
        The dataset folder.
    settings : dict
        JSON-able settings that decide the files written.

    Returns
    -------
    finished : bool
        True when `out` holds a finished prepare (its ``dataset.json`` exists).

    Raises
    ------
    FileExistsError
        If `out` holds anything else: files of no prepare, or a prepare with other settings
        (the message names the settings that differ).
    ValueError
        If its ``prepare.json`` is damaged.
    """
    manifest = out / MANIFEST
    if manifest.is_file():
        earlier = read_json(manifest, dict, f"the settings of the prepare that wrote {out}")
        changed = sorted(
            k for k in set(earlier) | set(settings) if earlier.get(k) != settings.get(k)
        )
        if changed:
            raise FileExistsError(
                f"{out} holds a prepare with other settings ({', '.join(changed)} differ: "
                f"{ {k: earlier.get(k) for k in changed} }); prepare into another folder or "
                "delete this one"
            )
        return (out / "dataset.json").is_file()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a folder: choose an empty or new folder")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(
            f"{out} is not empty and holds no earlier prepare (no {MANIFEST}): choose an "
            "empty or new folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(manifest, lambda p: p.write_text(json.dumps(settings, indent=2, sort_keys=True)))
    return False


def finished_splits(out):
    """Return the splits (name -> images) and bad-image records of a finished prepare."""
    meta = read_json(out / "dataset.json", dict, f"what the prepare of {out} wrote")
    report = out / BAD_REPORT
    bad = read_json(report, list, "the images left out") if report.is_file() else []
    if not isinstance(meta.get("splits"), dict):
        raise ValueError(f"{out / 'dataset.json'}: has no splits object; {_REDO}")
    return meta["splits"], bad


def run_jobs(work, jobs, *, workers, progress, skip_bad, desc):
    """Run ``work(job)`` over `jobs`; return the bad-image records, sorted by image id.

    Parameters
    ----------
    work : callable
        A module-level function (worker processes import it) returning None for a written
        image, or a record ``{"id", "file", "error", "reason"}`` for a bad input.
    jobs : list
    workers : int
        Processes; 1 runs in this one.
    progress : bool
        Show a progress bar.
    skip_bad : bool
        Record bad images and go on; otherwise raise at the first.
    desc : str
        The progress bar's label.

    Raises
    ------
    FileNotFoundError, ValueError
        Without `skip_bad`, at the first bad image (its reason, and how to skip it).
    """
    bad = []
    bar = tqdm(total=len(jobs), desc=desc, unit="img", disable=not progress)

    def collect(record):
        bar.update(1)
        if record is None:
            return
        if not skip_bad:
            raise (FileNotFoundError if record["error"] == "FileNotFoundError" else ValueError)(
                f"{record['reason']} (image {record['id']}; --skip-bad leaves bad images out "
                f"and lists them in {BAD_REPORT})"
            )
        bad.append(record)

    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                collect(work(job))
        else:
            # spawn, not fork: the parent may hold torch's threads, which a fork would copy
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
                futures = [pool.submit(work, job) for job in jobs]
                try:
                    for future in concurrent.futures.as_completed(futures):
                        collect(future.result())
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
    finally:
        bar.close()
    return sorted(bad, key=lambda record: record["id"])


def bad_record(image_id, error):
    """Return the bad-image record of `error` (FileNotFoundError or ValueError)."""
    return {
        "id": image_id,
        "file": getattr(error, "path", None),
        "error": type(error).__name__,
        "reason": str(error),
    }


def write_lists(out, splits, label_folders, bad_ids):
    """Write ``lists/{split}_{annotation}.txt``; return the number of images of each split.

    Parameters
    ----------
    out : Path
    splits : dict of str to list of str
        Image ids of each split.
    label_folders : dict of str to str
        Annotation -> the folder of its label column (``{"full": "semantic", ...}``).
    bad_ids : set of str
        Images left out.

    Raises
    ------
    ValueError
        If a split has no image left.
    """
    counts = {}
    (out / "lists").mkdir(exist_ok=True)
    for split, ids in splits.items():
        kept = [i for i in ids if i not in bad_ids]
        if not kept:
            raise ValueError(f"split {split!r} has no image left after leaving out bad images")
        counts[split] = len(kept)
        for annotation, folder in label_folders.items():
            lines = "".join(f"images/{i}.jpg {folder}/{i}.png superpixels/{i}.png\n" for i in kept)
            atomic_write(
                out / "lists" / f"{split}_{annotation}.txt", lambda p, t=lines: p.write_text(t)
            )
    return counts


def finish(out, meta):
    """Write ``dataset.json`` last: its presence means the prepare finished."""
    text = json.dumps(meta, indent=2) + "\n"
    atomic_write(Path(out) / "dataset.json", lambda p: p.write_text(text))
