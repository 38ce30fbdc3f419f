"""Prepare DensePose-COCO from its official download: ``spml-lab prepare densepose``.

`prepare_densepose` reads the DensePose-COCO annotation files (``densepose_coco_2014_*.json``:
COCO's format, with DensePose's fields on the annotated persons) and the COCO 2014 images,
and writes the project's dataset layout, the one `voc.prepare_voc` and ``spml-lab make-data``
write, so that `train`, `stage2` and `evaluate` run on it unchanged::

    OUT/dataset.json                 classes, flips, splits, how labels were made (written last)
    OUT/prepare.json                 the settings of this prepare (written first)
    OUT/images/{id}.jpg              the COCO JPEG, byte for byte (id: its file stem)
    OUT/semantic/{id}.png            15 classes: background + DensePose's 14 parts; 255 unknown
    OUT/superpixels/{id}.png         16-bit superpixel ids
    OUT/points/{id}.png              one point per annotated part of each person, 255 elsewhere
    OUT/lists/{split}_{full,points}.txt   "image label superpixel" per line
    OUT/bad_images.json              with ``skip_bad=True``: the images left out, and why

What a person of the JSON holds, and how it is read: `densepose_files`.

Decisions
---------
* Ground truth: each person's ``dp_masks``, decoded with ``pycocotools.mask``, spread over
  its box by nearest neighbour (pixel centres mapped into the 256 x 256 grid of the float box;
  the official notebook resizes into the box rounded to integers, a difference of at most one
  pixel along its edges). Persons with larger boxes are painted first, so a smaller (usually
  nearer) person keeps its pixels. COCO persons without DensePose annotation and crowd regions
  are 255 (unknown): calling them background would teach a person to be background. Parts
  follow SPML's 15 classes (``spml/data/datasets/densepose_dataset.py``), whose order is that
  of ``dp_masks``.
* Points, the paper's DensePose annotation (one labelled point per body part): for each person
  and each coarse part with annotated points (``dp_I`` mapped to the 14 parts by
  `densepose_files.FINE_TO_COARSE`), the points whose pixel the ground truth gives that part are the
  candidates, and the one nearest their mean is kept (the first in file order on a tie). So the
  choice is deterministic and a point never carries a class its pixel does not have (DensePose
  points sometimes fall just outside their part's mask). It is drawn as a disc of radius
  `POINT_RADIUS` kept to the pixels of its part. A part whose points all fall outside it gets
  no point. Point coordinates follow the official notebook: ``x = x0 + dp_x / 255 * w``.
* Images: those of the JSON with at least one DensePose person; COCO images in the file
  without one are not DensePose data and are counted in ``dataset.json`` (``unannotated``).
* Splits: one per annotation file, by default ``train`` from ``densepose_coco_2014_train.json``
  and ``val`` from ``densepose_coco_2014_minival.json`` (SPML trains on train2014 and reports
  minival2014). An image may be in one split only.
* Superpixels: `superpixels.segment` as `voc.SUPERPIXELS` (a watershed of edge strength).

Every annotation file is read and checked in full (keys, ids, mask sizes, point ranges) and
every image's file found and its size compared with the JSON before anything is written.
Resuming works as for VOC (`prepare_folder`): an image whose files all exist is not redone,
and a folder with ``dataset.json`` is finished.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np

from spml_lab import checks
from spml_lab.data import labelio, superpixels
from spml_lab.data.densepose_files import (
    DENSEPOSE_CLASSES,
    DENSEPOSE_FLIP,
    FINE_TO_COARSE,
    DensePoseImage,
    draw_points,
    ground_truth,
    pick_points,
    read_annotations,
)
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
from spml_lab.data.voc import SUPERPIXELS
from spml_lab.data.voc_files import about_file, bad_file

__all__ = ["DEFAULT_SPLITS", "POINT_RADIUS", "Prepared", "prepare_densepose"]

# DensePose's parts are a few dozen pixels wide on COCO persons: a disc of radius 3 (kept to
# its part) marks a point without covering a forearm, where VOC's radius 6 would
POINT_RADIUS = 3
DEFAULT_SPLITS = {
    "train": "densepose_coco_2014_train.json",
    "val": "densepose_coco_2014_minival.json",
}
LABEL_FOLDERS = {"full": "semantic", "points": "points"}
PREPARE_VERSION = 1  # bump when the files written change, so old folders are not resumed


class _Job(NamedTuple):
    image: DensePoseImage
    jpeg: str
    out: str
    settings: dict


def _outputs(out, image_id):
    out = Path(out)
    files = {"images": out / "images" / f"{image_id}.jpg"}
    files.update({f: out / f / f"{image_id}.png" for f in ("semantic", "superpixels", "points")})
    return files


def _done(job):
    return all(path.is_file() for path in _outputs(job.out, job.image.image_id).values())


def _prepare_one(job):
    """Write one image's files; return None, or the bad-image record when its JPEG is bad."""
    files = _outputs(job.out, job.image.image_id)
    try:
        with about_file(job.jpeg):
            pixels = np.rint(labelio.read_image(job.jpeg) * 255).astype(np.uint8)  # (H, W, 3)
    except (FileNotFoundError, ValueError) as error:
        return bad_record(job.image.image_id, error)
    semantic = ground_truth(job.image, pixels.shape[:2])
    points = [p for person in job.image.persons for p in pick_points(person, semantic)]
    labels = draw_points(points, semantic, job.settings["point_radius"])
    sp = job.settings["superpixels"]
    segments = superpixels.segment(pixels, sp["method"], **sp["options"])
    atomic_write(files["semantic"], lambda p: labelio.write_label_png(p, semantic))
    atomic_write(files["points"], lambda p: labelio.write_label_png(p, labels))
    atomic_write(files["superpixels"], lambda p: labelio.write_id_png(p, segments))
    # the image last: its presence is not what marks an image done, all files together are
    atomic_write(files["images"], lambda p: shutil.copyfile(job.jpeg, p))
    return None


# --------------------------------------------------------------------------- the whole set


def _image_file(images_dir, file_name):
    """Find a COCO image: ``DIR/file_name`` or ``DIR/{train2014,val2014}/file_name``."""
    candidates = [images_dir / file_name]
    match = re.match(r"COCO_([a-z]+\d{4})_\d+\.", file_name)  # COCO_val2014_000000000042.jpg
    if match:
        candidates.append(images_dir / match.group(1) / file_name)
    for path in candidates:
        if path.is_file():
            return path
    return candidates[-1]  # named in the error


def _check_image(image, path):
    """Raise unless `path` exists and its header says the size the JSON gives."""
    if not path.is_file():
        raise bad_file(FileNotFoundError, path, f"COCO image {image.file_name} not found")
    with about_file(path):
        size = labelio.image_size(path)
    if size != image.size:
        raise bad_file(
            ValueError, path, f"image is {size[0]} x {size[1]} (H x W) but the annotation "
            f"file says {image.size[0]} x {image.size[1]}"
        )  # fmt: skip


def _read_splits(annotations):
    """Read every split's file; raise if an image is in two splits."""
    splits, unannotated, owner = {}, {}, {}
    for split, path in annotations.items():
        images, unannotated[split] = read_annotations(path)
        for image_id in images:
            if image_id in owner:
                raise bad_file(
                    ValueError, path, f"image {image_id} is also in {owner[image_id][1]} "
                    f"(split {owner[image_id][0]!r}); an image may be in one split only"
                )  # fmt: skip
            owner[image_id] = (split, path)
        splits[split] = images
    return splits, unannotated


def prepare_densepose(
    annotations,
    images,
    out,
    *,
    workers=None,
    superpixel_method=SUPERPIXELS["method"],
    superpixel_options=None,
    point_radius=POINT_RADIUS,
    skip_bad=False,
    progress=False,
):
    """Write DensePose-COCO in the project's dataset layout (see the module notes).

    Parameters
    ----------
    annotations : dict of str to str or Path
        Split name -> its DensePose-COCO annotation file, e.g. ``{"train":
        ".../densepose_coco_2014_train.json", "val": ".../densepose_coco_2014_minival.json"}``.
    images : str or Path
        The COCO images: a folder holding each file name, or ``train2014/`` and ``val2014/``.
    out : str or Path
        Dataset folder to write: new, empty, or an unfinished prepare with the same settings
        (which then continues).
    workers : int, optional
        Processes working on images in parallel (default `default_workers`).
    superpixel_method : str, optional
        Method of `superpixels.segment` (default ``"watershed"``).
    superpixel_options : dict, optional
        Its keyword arguments (default ``{"n_segments": 64}`` for the watershed).
    point_radius : int, optional
        Disc radius of the points (`POINT_RADIUS`); 0 = one pixel.
    skip_bad : bool, optional
        Leave images whose JPEG is missing, of another size than the JSON says, or
        undecodable out and list them in ``bad_images.json``, instead of stopping.
    progress : bool, optional
        Show a progress bar.

    Returns
    -------
    prepared : Prepared
        The folder, the images per split, the bad images, whether it was already done.

    Raises
    ------
    FileNotFoundError
        For a missing annotation file or images folder, or (without `skip_bad`) a missing
        image; the message names the file.
    ValueError
        For a bad annotation file (`read_annotations`), an image in two splits, a number out
        of range, or (without `skip_bad`) an image whose size differs from its JSON entry;
        all before anything is written. A damaged ``prepare.json`` or ``dataset.json`` in
        `out`.
    FileExistsError
        If `out` holds something other than a prepare with these settings.
    """
    if not annotations:
        raise ValueError("annotations must name at least one split's annotation file")
    images_dir = Path(images)
    if not images_dir.is_dir():
        raise FileNotFoundError(
            f"COCO images folder {images_dir} not found: give the folder holding train2014/ "
            "and val2014/ (or the images themselves)"
        )
    if superpixel_method not in superpixels.METHODS:
        raise ValueError(
            f"superpixel_method must be one of {sorted(superpixels.METHODS)}, "
            f"got {superpixel_method!r}"
        )
    if superpixel_options is None:
        superpixel_options = SUPERPIXELS["options"] if superpixel_method == "watershed" else {}
    superpixel_options = superpixels.check_options(superpixel_method, superpixel_options)
    workers = default_workers() if workers is None else checks.in_range("workers", workers, 1)
    checks.in_range("point_radius", point_radius, 0)
    paths = {split: Path(path) for split, path in annotations.items()}
    out = Path(out)
    settings = {
        "version": PREPARE_VERSION,
        "annotations": {split: str(path.resolve()) for split, path in paths.items()},
        "images": str(images_dir.resolve()),
        "superpixels": {"method": superpixel_method, "options": dict(superpixel_options)},
        "point_radius": int(point_radius),
    }  # what decides the files written; skip_bad does not, so a strict run can be continued
    # a folder with files is claimed now (claim writes nothing into one): one of something
    # else fails before the annotation files are read, and a finished one is left as it is
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and claim(out, settings):
        return Prepared(out, *finished_splits(out), True)
    splits, unannotated = _read_splits(paths)
    jobs, bad = [], []
    for split_images in splits.values():
        for image in split_images.values():
            jpeg = _image_file(images_dir, image.file_name)
            try:
                _check_image(image, jpeg)
            except (FileNotFoundError, ValueError) as error:
                if not skip_bad:
                    raise type(error)(
                        f"{error} (--skip-bad leaves bad images out and lists them in {BAD_REPORT})"
                    ) from None
                bad.append(bad_record(image.image_id, error))
                continue
            jobs.append(_Job(image, str(jpeg), str(out), settings))
    claim(out, settings)  # inputs checked: only now is anything written
    todo = [job for job in jobs if not _done(job)]
    bad += run_jobs(
        _prepare_one, todo, workers=workers, progress=progress, skip_bad=skip_bad,
        desc="prepare densepose",
    )  # fmt: skip
    bad.sort(key=lambda record: record["id"])
    if skip_bad:
        atomic_write(out / BAD_REPORT, lambda p: p.write_text(json.dumps(bad, indent=2) + "\n"))
    ids = {split: list(split_images) for split, split_images in splits.items()}
    counts = write_lists(out, ids, LABEL_FOLDERS, {record["id"] for record in bad})
    finish(out, _metadata(settings, counts, unannotated, bad, skip_bad))
    return Prepared(out, counts, bad, False)


def _metadata(settings, counts, unannotated, bad, skip_bad):
    """Describe a prepared DensePose folder: its ``dataset.json``."""
    return {
        "name": "densepose",
        "class_names": list(DENSEPOSE_CLASSES),
        "num_classes": len(DENSEPOSE_CLASSES),
        "flip_classes": list(DENSEPOSE_FLIP),
        "splits": counts,
        "images": sum(counts.values()),
        "unannotated": unannotated,
        "ground_truth": "dp_masks (14 parts, 256 x 256 over the person's box, pycocotools RLE) "
        "spread over the box by nearest neighbour at pixel centres; larger boxes painted first; "
        "255 where a COCO person without DensePose annotation or a crowd region is",
        "points": {
            "source": "dp_x, dp_y, dp_I (x = x0 + dp_x / 255 * w)",
            "rule": "per person and coarse part (dp_I mapped by FINE_TO_COARSE): of the part's "
            "points whose pixel the ground truth gives that part, the one nearest their mean "
            "(the first in file order on a tie); parts with no such point get none",
            "fine_to_coarse": list(FINE_TO_COARSE),
            "radius": settings["point_radius"],
            "disc": "kept to the pixels of its part",
        },
        "superpixel_method": settings["superpixels"]["method"],
        "superpixel_options": settings["superpixels"]["options"],
        "bad_images": len(bad),
        "prepare": {**settings, "skip_bad": skip_bad},
    }
