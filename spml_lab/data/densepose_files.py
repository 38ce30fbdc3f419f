"""Readers of the DensePose-COCO annotations: persons, their part masks and points.

`densepose.prepare_densepose` turns these into the project's dataset layout; this module reads
and checks an annotation file (``densepose_coco_2014_*.json``: COCO's ``images`` and
``annotations``, with DensePose's fields on the annotated persons) and draws one image's labels,
saying which file and annotation is wrong when one is.

What one person of the JSON holds (DensePose-COCO [1]_):

* ``bbox`` ``[x, y, w, h]`` in image pixels;
* ``dp_masks``: 14 masks, one per coarse part in `DENSEPOSE_CLASSES` order (1 torso ... 14
  head), each a COCO RLE of 256 x 256 pixels spanning the box, or empty where the part is not
  seen;
* ``dp_x``, ``dp_y`` (0-255 across the box), ``dp_I`` (fine part 1-24), ``dp_U``, ``dp_V``:
  the annotated points (``dp_U``/``dp_V``, the surface coordinates, are not used here).

Masks are decoded with ``pycocotools.mask``, COCO's own reader.

References
----------
.. [1] Güler, Neverova, Kokkinos. "DensePose: Dense Human Pose Estimation In The Wild", CVPR
   2018; the annotation format is that of its ``DensePose-COCO-Visualize`` notebook.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from pycocotools import mask as mask_utils
from skimage.morphology import disk

from spml_lab.constants import IGNORE_INDEX  # one definition of "unlabelled"
from spml_lab.data.voc_files import bad_file

__all__ = [
    "DENSEPOSE_CLASSES",
    "DENSEPOSE_FLIP",
    "FINE_TO_COARSE",
    "DensePoseImage",
    "Person",
    "draw_points",
    "ground_truth",
    "person_parts",
    "pick_points",
    "read_annotations",
]

# DensePose's 14 body parts + background, in SPML's order (spml/data/datasets/densepose_dataset.py),
# which is the order of the 14 dp_masks
DENSEPOSE_CLASSES = (
    "background", "torso", "right_hand", "left_hand", "left_foot", "right_foot",
    "right_thigh", "left_thigh", "right_leg", "left_leg", "left_arm", "right_arm",
    "left_forearm", "right_forearm", "head",
)  # fmt: skip
# a mirrored person swaps left and right: class k becomes DENSEPOSE_FLIP[k]
DENSEPOSE_FLIP = (0, 1, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 14)
# dp_I (24 fine parts: front/back of each limb segment, two torso and two head charts) -> the
# coarse part of dp_masks, as the DensePose notebook lists them: 1, 2 torso; 3 right hand; 4 left
# hand; 5 left foot; 6 right foot; 7, 9 upper leg right; 8, 10 upper leg left; 11, 13 lower leg
# right; 12, 14 lower leg left; 15, 17 upper arm left; 16, 18 upper arm right; 19, 21 lower arm
# left; 20, 22 lower arm right; 23, 24 head
FINE_TO_COARSE = (0, 1, 1, 2, 3, 4, 5, 6, 7, 6, 7, 8, 9, 8, 9, 10, 11, 10, 11, 12, 13, 12, 13,
                  14, 14)  # fmt: skip
MASK_SIDE = 256  # dp_masks are 256 x 256 over the person's box
_DP_KEYS = ("dp_masks", "dp_x", "dp_y", "dp_I")


class Person(NamedTuple):
    """One DensePose-annotated person of an image (the JSON's fields, checked)."""

    bbox: tuple  # (x, y, w, h) floats, image pixels
    dp_masks: list  # 14 entries: a COCO RLE dict of 256 x 256, or None (part not seen)
    dp_x: list  # point x in 0-255 across the box
    dp_y: list
    dp_i: list  # fine part 1-24 of each point


class DensePoseImage(NamedTuple):
    """One image of an annotation file: where it is, its size, its persons."""

    image_id: str  # the file stem: the name of every file written for it
    file_name: str
    size: tuple  # (H, W) from the JSON
    persons: list  # of Person
    unknown: list  # {"segmentation"} or {"bbox"} of persons without DensePose, and crowds


# --------------------------------------------------------------------------- reading the JSON


def _require(record, keys, path, what):
    missing = [key for key in keys if key not in record]
    if missing:
        raise bad_file(ValueError, path, f"{what} has no {', '.join(map(repr, missing))}")


def _numbers(values, path, what, low, high):
    """Check a list of numbers within [low, high]; return it as a float array."""
    array = np.asarray(values, dtype=object)
    if array.ndim != 1 or not all(isinstance(v, (int, float)) for v in array.tolist()):
        raise bad_file(ValueError, path, f"{what} must be a list of numbers")
    array = array.astype(np.float64)
    if array.size and (array.min() < low or array.max() > high or not np.isfinite(array).all()):
        raise bad_file(
            ValueError, path, f"{what} must lie in [{low}, {high}], got [{array.min()}, "
            f"{array.max()}]"
        )  # fmt: skip
    return array


def _person(annotation, path):
    """Check the DensePose fields of one annotation; return its `Person`."""
    what = f"annotation {annotation.get('id')!r} (image_id {annotation['image_id']!r})"
    _require(annotation, _DP_KEYS, path, what)
    masks = annotation["dp_masks"]
    if not isinstance(masks, list) or len(masks) != len(DENSEPOSE_CLASSES) - 1:
        raise bad_file(
            ValueError, path, f"{what}: dp_masks must list {len(DENSEPOSE_CLASSES) - 1} part "
            f"masks, got {len(masks) if isinstance(masks, list) else type(masks).__name__}"
        )  # fmt: skip
    checked = []
    for part, rle in enumerate(masks, start=1):
        if not rle:  # [] or {}: the part is not seen
            checked.append(None)
            continue
        if not (isinstance(rle, dict) and "counts" in rle and "size" in rle):
            raise bad_file(ValueError, path, f"{what}: dp_masks[{part - 1}] is not a COCO RLE")
        if list(rle["size"]) != [MASK_SIDE, MASK_SIDE]:
            raise bad_file(
                ValueError, path, f"{what}: dp_masks[{part - 1}] is {rle['size']}, not the "
                f"{MASK_SIDE} x {MASK_SIDE} of DensePose's masks"
            )  # fmt: skip
        checked.append(rle)
    xs = _numbers(annotation["dp_x"], path, f"{what}: dp_x", 0, MASK_SIDE - 1)
    ys = _numbers(annotation["dp_y"], path, f"{what}: dp_y", 0, MASK_SIDE - 1)
    fine = _numbers(annotation["dp_I"], path, f"{what}: dp_I", 1, len(FINE_TO_COARSE) - 1)
    if not len(xs) == len(ys) == len(fine):
        raise bad_file(
            ValueError, path, f"{what}: dp_x, dp_y and dp_I have {len(xs)}, {len(ys)} and "
            f"{len(fine)} entries; one per point each"
        )  # fmt: skip
    if (fine != np.round(fine)).any():
        raise bad_file(ValueError, path, f"{what}: dp_I holds part numbers that are not whole")
    return Person(_box(annotation, path, what), checked, xs.tolist(), ys.tolist(),
                  fine.astype(int).tolist())  # fmt: skip


def _box(annotation, path, what):
    box = annotation["bbox"]
    if not (isinstance(box, list) and len(box) == 4):
        raise bad_file(ValueError, path, f"{what}: bbox must be [x, y, w, h]")
    box = _numbers(box, path, f"{what}: bbox", -np.inf, np.inf)
    if box[2] <= 0 or box[3] <= 0:
        raise bad_file(ValueError, path, f"{what}: bbox {box.tolist()} has no area")
    return tuple(box.tolist())


def read_annotations(path):
    """Read and check a DensePose-COCO annotation file.

    Parameters
    ----------
    path : str or Path
        A ``densepose_coco_2014_*.json`` file: COCO's ``images`` and ``annotations`` lists,
        with ``dp_masks``, ``dp_x``, ``dp_y``, ``dp_I`` on the DensePose-annotated persons.

    Returns
    -------
    images : dict of str to DensePoseImage
        The images with at least one DensePose person, by file stem, in file order.
    unannotated : int
        Images of the file without a DensePose person (left out).

    Raises
    ------
    FileNotFoundError
        If the file is missing.
    ValueError
        If it is not JSON, lacks a key (``images``, ``annotations``, an image's ``id``,
        ``file_name``, ``height``, ``width``; an annotation's ``image_id``, ``bbox``; a
        DensePose person's ``dp_*``), repeats an image id or file name, has an annotation
        whose ``image_id`` no image has, or DensePose fields out of range (14 masks of
        256 x 256, points in 0-255, parts 1-24, as many ``dp_x`` as ``dp_y`` and ``dp_I``).
        The message names the file and the annotation.
    """
    path = Path(path)
    if not path.is_file():
        raise bad_file(FileNotFoundError, path, "DensePose annotation file not found")
    try:
        coco = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise bad_file(ValueError, path, f"not valid JSON ({error})") from None
    if not isinstance(coco, dict):
        raise bad_file(ValueError, path, "not a COCO annotation file (a JSON object)")
    _require(coco, ("images", "annotations"), path, "the file")
    entries, names = {}, set()
    for entry in coco["images"]:
        _require(entry, ("id", "file_name", "height", "width"), path, f"image entry {entry}")
        if entry["id"] in entries:
            raise bad_file(ValueError, path, f"image id {entry['id']!r} is listed twice")
        if entry["file_name"] in names:
            raise bad_file(ValueError, path, f"file_name {entry['file_name']!r} is listed twice")
        names.add(entry["file_name"])
        entries[entry["id"]] = entry
    persons = {key: [] for key in entries}
    unknown = {key: [] for key in entries}
    for annotation in coco["annotations"]:
        _require(annotation, ("image_id", "bbox"), path, f"annotation {annotation.get('id')!r}")
        key = annotation["image_id"]
        if key not in entries:
            raise bad_file(
                ValueError, path, f"annotation {annotation.get('id')!r} refers to image_id "
                f"{key!r}, which no entry of 'images' has"
            )  # fmt: skip
        if "dp_masks" in annotation and not annotation.get("iscrowd", 0):
            persons[key].append(_person(annotation, path))
        else:  # a person DensePose did not annotate, or a crowd: unknown, not background
            what = f"annotation {annotation.get('id')!r}"
            if annotation.get("segmentation"):
                unknown[key].append({"segmentation": annotation["segmentation"]})
            else:  # no outline: its box is what is known of it
                unknown[key].append({"bbox": _box(annotation, path, what)})
    images = {}
    for key, entry in entries.items():
        if not persons[key]:
            continue
        image_id = Path(entry["file_name"]).stem
        images[image_id] = DensePoseImage(
            image_id, entry["file_name"], (int(entry["height"]), int(entry["width"])),
            persons[key], unknown[key],
        )  # fmt: skip
    return images, len(entries) - len(images)


# --------------------------------------------------------------------------- one image


def _decode(rle):
    """(H, W) uint8 of a compressed COCO RLE, by ``pycocotools.mask.decode``.

    pycocotools 2.0.x's decode hands numpy 2 an object whose ``__array__`` takes no ``copy``
    argument, and numpy warns (DeprecationWarning) on every call; the array is right.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", "__array__ implementation doesn't accept a copy", DeprecationWarning
        )
        return mask_utils.decode(rle)


def _box_grid(start, length, count):
    """Image pixels of one axis inside a box, and their cells in its 256-cell grid.

    Pixel centres ``p + 0.5`` map to ``(p + 0.5 - start) / length * 256``; those in [0, 256)
    fall in the box. Returns (pixels, cells), both int64, of equal length.
    """
    pixels = np.arange(count)
    cells = np.floor((pixels + 0.5 - start) / length * MASK_SIDE)
    inside = (cells >= 0) & (cells < MASK_SIDE)
    return pixels[inside], cells[inside].astype(np.int64)


def person_parts(person, shape):
    """Spread one person's 14 part masks over its box in the image.

    Parameters
    ----------
    person : Person
    shape : (int, int)
        The image's (H, W).

    Returns
    -------
    parts : (H, W) uint8 ndarray
        Coarse part 1-14 where the person is, 0 elsewhere (outside the box, or inside it
        but not the person).

    Examples
    --------
    >>> whole = mask_utils.encode(np.ones((256, 256), np.uint8, order="F"))
    >>> person = Person((1.0, 0.0, 2.0, 2.0), [None] * 13 + [whole], [], [], [])
    >>> person_parts(person, (3, 4)).tolist()
    [[0, 14, 14, 0], [0, 14, 14, 0], [0, 0, 0, 0]]
    """
    grid = np.zeros((MASK_SIDE, MASK_SIDE), dtype=np.uint8)  # (256, 256) part per cell
    for part, rle in enumerate(person.dp_masks, start=1):
        if rle is not None:
            grid[_decode(rle) > 0] = part  # parts do not overlap in DensePose
    x, y, w, h = person.bbox
    rows, row_cells = _box_grid(y, h, shape[0])
    cols, col_cells = _box_grid(x, w, shape[1])
    parts = np.zeros(shape, dtype=np.uint8)
    parts[np.ix_(rows, cols)] = grid[np.ix_(row_cells, col_cells)]
    return parts


def _unknown_mask(region, shape):
    """(H, W) bool of a COCO segmentation (polygons, RLE) or a box ``{"bbox": (x, y, w, h)}``."""
    height, width = shape
    if "bbox" in region:
        x, y, w, h = region["bbox"]
        mask = np.zeros(shape, dtype=bool)
        mask[max(int(y), 0) : int(np.ceil(y + h)), max(int(x), 0) : int(np.ceil(x + w))] = True
        return mask
    segmentation = region["segmentation"]
    if isinstance(segmentation, list):  # polygons: one RLE each, merged (as COCO.annToRLE)
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE (crowds)
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return _decode(rle).astype(bool)


def ground_truth(image, shape):
    """Return the part label map of an image: persons' parts over background, 255 unknown.

    Parameters
    ----------
    image : DensePoseImage
    shape : (int, int)
        (H, W).

    Returns
    -------
    semantic : (H, W) uint8 ndarray
        0 background, 1-14 parts, 255 where a person without DensePose or a crowd is.
    """
    semantic = np.zeros(shape, dtype=np.uint8)
    for region in image.unknown:
        semantic[_unknown_mask(region, shape)] = IGNORE_INDEX
    # larger boxes first: a smaller, usually nearer, person is painted over them
    for person in sorted(image.persons, key=lambda p: -p.bbox[2] * p.bbox[3]):
        parts = person_parts(person, shape)
        semantic[parts > 0] = parts[parts > 0]
    return semantic


def pick_points(person, semantic):
    """One point per annotated part of a person: the candidate nearest the candidates' mean.

    Parameters
    ----------
    person : Person
    semantic : (H, W) uint8 ndarray
        The image's ground truth (`ground_truth`).

    Returns
    -------
    points : list of (int, int, int)
        ``(part, row, col)`` per coarse part that has a candidate, by part. A candidate is an
        annotated point of the part whose pixel `semantic` gives that part.

    Examples
    --------
    Three torso points (``dp_I`` 1 and 2) on an all-torso image: the middle one is nearest
    their mean.

    >>> person = Person((0.0, 0.0, 256.0, 256.0), [None] * 14, [10, 20, 90], [5, 5, 5],
    ...                 [1, 2, 1])
    >>> pick_points(person, np.ones((256, 256), np.uint8))
    [(1, 5, 20)]
    """
    x0, y0, w, h = person.bbox
    height, width = semantic.shape
    # the notebook's stretch: 0-255 across the box (not 256 cells)
    xs = x0 + np.asarray(person.dp_x, dtype=np.float64) / (MASK_SIDE - 1) * w
    ys = y0 + np.asarray(person.dp_y, dtype=np.float64) / (MASK_SIDE - 1) * h
    rows = np.clip(np.floor(ys).astype(np.int64), 0, height - 1)
    cols = np.clip(np.floor(xs).astype(np.int64), 0, width - 1)
    coarse = np.asarray(FINE_TO_COARSE, dtype=np.int64)[np.asarray(person.dp_i, dtype=np.int64)]
    points = []
    for part in np.unique(coarse).tolist():
        candidates = np.flatnonzero((coarse == part) & (semantic[rows, cols] == part))
        if candidates.size == 0:
            continue  # its points all fall outside its mask: no point rather than a wrong one
        centre = np.array([ys[candidates].mean(), xs[candidates].mean()])
        distance = np.hypot(ys[candidates] - centre[0], xs[candidates] - centre[1])
        best = candidates[np.argmin(distance)]  # argmin: the first on a tie, file order
        points.append((part, int(rows[best]), int(cols[best])))
    return points


def draw_points(points, semantic, radius):
    """Draw ``(part, row, col)`` points as discs kept to the pixels of their part.

    Returns
    -------
    labels : (H, W) uint8 ndarray
        The part on each disc pixel whose ground truth is that part, 255 elsewhere.
    """
    labels = np.full(semantic.shape, IGNORE_INDEX, dtype=np.uint8)
    footprint = disk(radius).astype(bool)  # (2r + 1, 2r + 1)
    height, width = semantic.shape
    for part, row, col in points:
        y0, x0 = row - radius, col - radius
        window = (slice(max(y0, 0), min(row + radius + 1, height)),
                  slice(max(x0, 0), min(col + radius + 1, width)))  # fmt: skip
        inside = footprint[window[0].start - y0 : window[0].stop - y0,
                           window[1].start - x0 : window[1].stop - x0]  # fmt: skip
        keep = inside & (semantic[window] == part)
        labels[window][keep] = part
    return labels
