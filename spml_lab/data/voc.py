"""Prepare Pascal VOC 2012 from its standard download: ``spml-lab prepare voc VOCDEVKIT``.

`prepare_voc` reads the VOC development kit (and optionally SBD and ScribbleSup) with the
readers of `voc_files` and writes the project's dataset layout, the one `spml-lab make-data`
writes, so that `train`, `cam-labels`, `stage2` and `evaluate` run on it unchanged::

    OUT/dataset.json                 classes, splits, how each annotation was made (written last)
    OUT/prepare.json                 the settings of this prepare (written first)
    OUT/images/{id}.jpg              the VOC JPEG, byte for byte
    OUT/semantic/{id}.png            dense ground truth (SegmentationClass, else SBD), 255 = void
    OUT/superpixels/{id}.png         16-bit superpixel ids
    OUT/points/{id}.png              points, 255 = unlabelled
    OUT/boxes/{id}.png               the XML boxes filled with their class, background outside
    OUT/tags/{id}.png                the XML tags (+ background), see `voc_files.tag_label_map`
    OUT/scribbles/{id}.png           ScribbleSup scribbles (with ``scribbles=``)
    OUT/lists/{split}_{annotation}.txt   "image label superpixel" per line
    OUT/bad_images.json              with ``skip_bad=True``: the files left out, and why

Splits: ``train`` and ``val`` are ``ImageSets/Segmentation/{train,val}.txt`` (1,464 and 1,449
images); with SBD, ``train_aug`` is SBD train + SBD val + VOC train minus VOC val, the paper's
10,582 training images. Images live once under OUT whatever their splits.

Decisions
---------
* Ground truth: VOC's ``SegmentationClass`` wherever it exists (it has the 255 boundary band
  and is the evaluation's own), SBD's ``GTcls.Segmentation`` for the other SBD images.
* Boxes and tags come from ``Annotations/*.xml``: they are real annotations, not derived from
  masks. Every image is tagged background as well (no VOC image is all object, and the CAM
  pseudo labels need a background score; SEAM does the same).
* Points: with ScribbleSup, each scribble shortened to its middle point (SPML's 0 % scribbles,
  ``dilate_6_0.0``: a disc of radius 6); without it, `annotations.weak_labels` ``"points"`` on
  the ground truth: one point per ``SegmentationObject`` instance, or per connected component
  of a class where there are no instance masks (SBD images), placed in the region's inner
  half, radius 6. ``dataset.json`` records which (``points.source``).
* Scribbles: ScribbleSup polylines widened by a disc of radius 3 (SPML's ``dilate_3``).
* Superpixels: `superpixels.segment` ``"watershed"`` with 64 seeds: a watershed of the image's
  edge strength, the same construction as the paper's HED-owt-ucm regions (a watershed of
  HED contours), and 63-70 regions on photos scaled to VOC size, within the few dozen to
  ~100 regions of those files; SLIC with 64 segments gives 37-54 regions in 2.5 times the
  time (README, "Pascal VOC in three commands").

Resuming: every output file is written under a temporary name and renamed, so a file that
exists is whole; an image whose files all exist is not redone, and a folder with
``dataset.json`` is finished and left as it is. A prepare stopped by a bad file continues with
``skip_bad=True`` (or after the file is fixed); to bring back an image that ``skip_bad`` left
out, fix its file, delete ``dataset.json`` and run again: only that image is done. A folder
holding anything else, or a prepare with other settings, is never written into.
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from spml_lab import checks
from spml_lab.data import annotations, labelio, superpixels
from spml_lab.data.prepare_folder import (
    BAD_REPORT,
    Prepared,
    atomic_write,
    bad_record,
    claim,
    default_workers,
    finish,
    finished_splits,
    run_jobs,
    write_lists,
)
from spml_lab.data.voc_files import (
    VOC_CLASSES,
    about_file,
    bad_file,
    draw_scribbles,
    read_sbd_mat,
    read_scribble_xml,
    read_voc_instances,
    read_voc_mask,
    read_voc_xml,
    scribble_midpoints,
    tag_label_map,
)

__all__ = ["SUPERPIXELS", "Prepared", "prepare_voc", "split_ids", "default_workers"]

# see the module notes: a watershed of edge strength, 63-70 regions on a 500 px photo
SUPERPIXELS = {"method": "watershed", "options": {"n_segments": 64}}
SCRIBBLE_RADIUS = 3  # SPML's scribble/dilate_3
POINT_RADIUS = 6  # SPML's scribble/dilate_6_0.0
PREPARE_VERSION = 1  # bump when the files written change, so old folders are not resumed


# --------------------------------------------------------------------------- folders


def _voc_folder(devkit):
    """Find the ``VOC2012`` folder: `devkit` itself or its ``VOC2012`` child."""
    devkit = Path(devkit)
    for folder in (devkit / "VOC2012", devkit):
        if (folder / "JPEGImages").is_dir():
            return folder
    raise FileNotFoundError(
        f"{devkit / 'VOC2012' / 'JPEGImages'} not found: give the VOCdevkit folder of the "
        "VOC2012 download (VOCtrainval_11-May-2012.tar)"
    )


def _sbd_folder(sbd):
    """SBD's ``dataset`` folder (cls/, train.txt, val.txt): `sbd` or its ``dataset`` child."""
    sbd = Path(sbd)
    for folder in (sbd, sbd / "dataset", sbd / "benchmark_RELEASE" / "dataset"):
        if (folder / "cls").is_dir():
            return folder
    raise FileNotFoundError(f"{sbd / 'cls'} not found: give SBD's dataset folder (cls/, train.txt)")


def _read_ids(path):
    if not path.is_file():
        raise bad_file(FileNotFoundError, path, "list file not found")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise bad_file(ValueError, path, "list file is empty")
    return ids


def split_ids(voc_dir, sbd_dir=None):
    """Image ids of each split, in list order.

    Parameters
    ----------
    voc_dir : str or Path
        The ``VOC2012`` folder (``ImageSets/Segmentation/{train,val}.txt``).
    sbd_dir : str or Path, optional
        SBD's ``dataset`` folder (``train.txt``, ``val.txt``): adds ``train_aug``.

    Returns
    -------
    splits : dict of str to list of str
        ``train``, ``val`` and, with SBD, ``train_aug`` = SBD train + SBD val + VOC train
        minus VOC val (sorted ids; 10,582 images for the real lists).
    """
    sets = Path(voc_dir) / "ImageSets" / "Segmentation"
    splits = {"train": _read_ids(sets / "train.txt"), "val": _read_ids(sets / "val.txt")}
    if sbd_dir is not None:
        sbd_ids = _read_ids(Path(sbd_dir) / "train.txt") + _read_ids(Path(sbd_dir) / "val.txt")
        splits["train_aug"] = sorted(set(sbd_ids + splits["train"]) - set(splits["val"]))
    return splits


# --------------------------------------------------------------------------- one image

# annotation -> the folder of its label column
LABEL_FOLDERS = {
    "full": "semantic",
    "points": "points",
    "scribbles": "scribbles",
    "boxes": "boxes",
    "tags": "tags",
}


class _Job(NamedTuple):
    image_id: str
    jpeg: str
    xml: str
    mask: str | None  # SegmentationClass PNG, or None: SBD
    instances: str | None  # SegmentationObject PNG
    sbd_mat: str | None
    scribble_xml: str | None
    out: str
    settings: dict


def _outputs(out, image_id, with_scribbles):
    """Every file one image gets, by folder."""
    out = Path(out)
    files = {"images": out / "images" / f"{image_id}.jpg"}
    folders = ["semantic", "superpixels", "points", "boxes", "tags"]
    folders += ["scribbles"] if with_scribbles else []
    files.update({f: out / f / f"{image_id}.png" for f in folders})
    return files


def _read_image(path):
    """(H, W, 3) uint8 RGB pixels of a JPEG, with the file named on any failure."""
    if not Path(path).is_file():
        raise bad_file(FileNotFoundError, path, "JPEG of a listed image id not found")
    with about_file(path):
        return np.rint(labelio.read_image(path) * 255).astype(np.uint8)


def _read_truth(job, shape):
    """(semantic, instance or None, label file) of one image, checked against its size."""
    path = job.mask or job.sbd_mat
    semantic = read_voc_mask(path) if job.mask else read_sbd_mat(path)
    if semantic.shape != shape:
        raise bad_file(
            ValueError,
            path,
            f"mask is {semantic.shape[0]} x {semantic.shape[1]} (H x W) but its image "
            f"{job.jpeg} is {shape[0]} x {shape[1]}",
        )
    instance = None
    if job.instances is not None and Path(job.instances).is_file():
        instance = read_voc_instances(job.instances, semantic)
    return semantic, instance


def _weak_labels(job, semantic, instance):
    """Points, boxes, tags and (with ScribbleSup) scribbles of one image."""
    settings = job.settings
    voc = read_voc_xml(job.xml)
    if voc.size != semantic.shape:
        raise bad_file(
            ValueError,
            job.xml,
            f"<size> says {voc.size[0]} x {voc.size[1]} (H x W) but the image is "
            f"{semantic.shape[0]} x {semantic.shape[1]}",
        )
    labels = {
        "boxes": annotations.box_label_map(voc.boxes, semantic.shape),
        "tags": tag_label_map([0, *voc.boxes[:, 0].tolist()], semantic.shape),
    }
    if job.scribble_xml is not None:
        if not Path(job.scribble_xml).is_file():
            raise bad_file(FileNotFoundError, job.scribble_xml, "scribble file not found")
        scribbles = read_scribble_xml(job.scribble_xml)
        labels["scribbles"] = draw_scribbles(scribbles, semantic.shape, settings["scribble_radius"])
        points = scribble_midpoints(scribbles)
        labels["points"] = draw_scribbles(points, semantic.shape, settings["point_radius"])
    else:
        # a seed per image id: the same points whichever worker and whatever order
        seed = (settings["seed"], zlib.crc32(job.image_id.encode()))
        labels["points"] = annotations.weak_labels(
            semantic, instance, "points", seed=seed, radius=settings["point_radius"]
        )
    return labels


def _prepare_one(job):
    """Write one image's files; return None, or the bad-image record when an input is bad."""
    try:
        files = _outputs(job.out, job.image_id, job.scribble_xml is not None)
        image = _read_image(job.jpeg)
        semantic, instance = _read_truth(job, image.shape[:2])
        labels = _weak_labels(job, semantic, instance)
    except (FileNotFoundError, ValueError) as error:
        return bad_record(job.image_id, error)
    sp = job.settings["superpixels"]
    segments = superpixels.segment(image, sp["method"], **sp["options"])
    atomic_write(files["semantic"], lambda p: labelio.write_label_png(p, semantic))
    atomic_write(files["superpixels"], lambda p: labelio.write_id_png(p, segments))
    for name, label in labels.items():
        atomic_write(files[name], lambda p, label=label: labelio.write_label_png(p, label))
    # the image last: its presence is not what marks an image done, all files together are
    atomic_write(files["images"], lambda p: shutil.copyfile(job.jpeg, p))
    return None


def _done(job):
    files = _outputs(job.out, job.image_id, job.scribble_xml is not None)
    return all(path.is_file() for path in files.values())


# --------------------------------------------------------------------------- the whole set


def _jobs(voc_dir, sbd_dir, scribble_dir, out, splits, settings):
    """One `_Job` per image id of any split, in first-listed order."""
    voc_ids = set(splits["train"]) | set(splits["val"])
    jobs = {}
    for ids in splits.values():
        for image_id in ids:
            if image_id in jobs:
                continue
            in_voc = image_id in voc_ids  # SegmentationClass has it; else SBD has it
            jobs[image_id] = _Job(
                image_id=image_id,
                jpeg=str(voc_dir / "JPEGImages" / f"{image_id}.jpg"),
                xml=str(voc_dir / "Annotations" / f"{image_id}.xml"),
                mask=str(voc_dir / "SegmentationClass" / f"{image_id}.png") if in_voc else None,
                instances=str(voc_dir / "SegmentationObject" / f"{image_id}.png")
                if in_voc
                else None,
                sbd_mat=None if in_voc else str(sbd_dir / "cls" / f"{image_id}.mat"),
                scribble_xml=None
                if scribble_dir is None
                else str(scribble_dir / f"{image_id}.xml"),
                out=str(out),
                settings=settings,
            )
    return list(jobs.values())


def prepare_voc(
    devkit,
    out,
    *,
    sbd=None,
    scribbles=None,
    workers=None,
    superpixel_method=SUPERPIXELS["method"],
    superpixel_options=None,
    scribble_radius=SCRIBBLE_RADIUS,
    point_radius=POINT_RADIUS,
    seed=0,
    skip_bad=False,
    progress=False,
):
    """Write Pascal VOC 2012 in the project's dataset layout (see the module notes).

    Parameters
    ----------
    devkit : str or Path
        The VOCdevkit folder (or its ``VOC2012`` folder): JPEGImages, SegmentationClass,
        SegmentationObject, Annotations, ImageSets/Segmentation.
    out : str or Path
        Dataset folder to write: new, empty, or an unfinished prepare with the same settings
        (which then continues).
    sbd : str or Path, optional
        SBD's ``dataset`` folder (``cls/*.mat``, ``train.txt``, ``val.txt``): adds the
        ``train_aug`` split.
    scribbles : str or Path, optional
        Folder of ScribbleSup's ``{id}.xml`` files: adds ``scribbles`` and makes the points
        from them.
    workers : int, optional
        Processes working on images in parallel (default `default_workers`).
    superpixel_method : str, optional
        Method of `superpixels.segment` (default ``"watershed"``).
    superpixel_options : dict, optional
        Its keyword arguments (default ``{"n_segments": 64}`` for the watershed).
    scribble_radius, point_radius : int, optional
        Disc radii of the scribble strokes (3) and of the points (6), as SPML's files.
    seed : int, optional
        Placement of the points made from masks.
    skip_bad : bool, optional
        Leave images with a bad input file out and list them in ``bad_images.json``, instead
        of stopping at the first.
    progress : bool, optional
        Show a progress bar.

    Returns
    -------
    prepared : Prepared
        The folder, the images per split, the bad images, whether it was already done.

    Raises
    ------
    FileNotFoundError
        For a missing folder, list file, or (without `skip_bad`) an image's missing JPEG,
        mask, XML or scribble file; the message names the file.
    ValueError
        For a number out of range (`workers` < 1, ``n_segments`` < 1, a negative radius or
        seed) or an option the superpixel method does not take, before anything is written;
        a damaged ``prepare.json``, ``dataset.json`` or ``bad_images.json`` in `out` (the
        message names it); and (without `skip_bad`) a mask whose size differs from its
        image, an XML that does not parse or names an unknown class, a palette index outside
        the 21 classes other than 255, an unreadable ``.mat``.
    FileExistsError
        If `out` holds something other than a prepare with these settings.
    """
    voc_dir = _voc_folder(devkit)
    sbd_dir = None if sbd is None else _sbd_folder(sbd)
    scribble_dir = None if scribbles is None else Path(scribbles)
    if scribble_dir is not None and not scribble_dir.is_dir():
        raise FileNotFoundError(f"scribble folder {scribble_dir} not found")
    if superpixel_method not in superpixels.METHODS:
        raise ValueError(
            f"superpixel_method must be one of {sorted(superpixels.METHODS)}, "
            f"got {superpixel_method!r}"
        )
    if superpixel_options is None:
        superpixel_options = SUPERPIXELS["options"] if superpixel_method == "watershed" else {}
    # checked before prepare.json records them: a bad value found at the first image would
    # leave a folder that only a prepare with the same bad settings may continue
    superpixel_options = superpixels.check_options(superpixel_method, superpixel_options)
    workers = default_workers() if workers is None else checks.in_range("workers", workers, 1)
    for name, value in (
        ("scribble_radius", scribble_radius), ("point_radius", point_radius), ("seed", seed)
    ):  # fmt: skip
        checks.in_range(name, value, 0)
    out = Path(out)
    settings = {
        "version": PREPARE_VERSION,
        "devkit": str(voc_dir.resolve()),
        "sbd": None if sbd_dir is None else str(sbd_dir.resolve()),
        "scribbles": None if scribble_dir is None else str(scribble_dir.resolve()),
        "superpixels": {"method": superpixel_method, "options": dict(superpixel_options)},
        "scribble_radius": int(scribble_radius),
        "point_radius": int(point_radius),
        "seed": int(seed),
    }  # what decides the files written; skip_bad does not, so a strict run can be continued
    splits = split_ids(voc_dir, sbd_dir)
    if claim(out, settings):
        return Prepared(out, *finished_splits(out), True)
    jobs = _jobs(voc_dir, sbd_dir, scribble_dir, out, splits, settings)
    todo = [job for job in jobs if not _done(job)]
    bad = run_jobs(
        _prepare_one, todo, workers=workers, progress=progress, skip_bad=skip_bad,
        desc="prepare voc",
    )  # fmt: skip
    if skip_bad:
        atomic_write(out / BAD_REPORT, lambda p: p.write_text(json.dumps(bad, indent=2) + "\n"))
    written = ["full", "points", "boxes", "tags"] + (["scribbles"] if scribble_dir else [])
    folders = {annotation: LABEL_FOLDERS[annotation] for annotation in written}
    counts = write_lists(out, splits, folders, {record["id"] for record in bad})
    finish(out, _metadata(settings, counts, jobs, bad, skip_bad))
    return Prepared(out, counts, bad, False)


def _metadata(settings, counts, jobs, bad, skip_bad):
    """Describe a prepared VOC folder: its ``dataset.json``."""
    bad_ids = {record["id"] for record in bad}
    kept = [job for job in jobs if job.image_id not in bad_ids]
    from_scribbles = settings["scribbles"] is not None
    return {
        "name": "voc2012",
        "class_names": list(VOC_CLASSES),
        "num_classes": len(VOC_CLASSES),
        "splits": counts,
        "images": len(kept),
        "ground_truth": {
            "SegmentationClass": sum(job.mask is not None for job in kept),
            "SBD GTcls": sum(job.mask is None for job in kept),
        },
        "superpixel_method": settings["superpixels"]["method"],
        "superpixel_options": settings["superpixels"]["options"],
        "points": {
            "source": "scribbles" if from_scribbles else "masks",
            "rule": "the middle point of each ScribbleSup scribble (by arc length)"
            if from_scribbles
            else "annotations.weak_labels('points'): one point per SegmentationObject "
            "instance, per connected component of a class where there is none (SBD)",
            "radius": settings["point_radius"],
        },
        "scribbles": {"source": "ScribbleSup", "radius": settings["scribble_radius"]}
        if from_scribbles
        else None,
        "boxes": "Annotations/*.xml <bndbox>, smaller boxes over larger, background outside",
        "tags": "Annotations/*.xml <name>, plus background",
        "bad_images": len(bad),
        "prepare": {**settings, "skip_bad": skip_bad},
    }
