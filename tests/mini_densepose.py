"""Write a miniature DensePose-COCO download in the real formats, for the `prepare densepose` tests.

Test infrastructure, not a test module (like ``mini_voc.py``; tests import it as ``from
mini_densepose import write_mini_densepose``). It writes, into a temporary folder:

* ``DensePose_COCO/densepose_coco_2014_{train,minival}.json``: COCO's ``images`` and
  ``annotations``, DensePose persons with ``dp_masks`` (14 RLEs of 256 x 256, encoded with
  ``pycocotools.mask``, ``[]`` for parts not seen), ``dp_x``, ``dp_y``, ``dp_I``, ``dp_U``,
  ``dp_V``; a COCO person without DensePose (polygon ``segmentation``), a crowd (uncompressed
  RLE), and an image with no DensePose person at all;
* ``coco/train2014/COCO_train2014_*.jpg``, ``coco/val2014/COCO_val2014_*.jpg``.

Everything a test checks against is computed here, independently of the package: the ground
truth by ``skimage.transform.resize`` (nearest) of each person's 256 x 256 part grid into its
integer box, and the expected point of each part by hand-placed coordinates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from skimage.transform import resize

from spml_lab.constants import IGNORE_INDEX

# the 256 x 256 body grid of every person: (part, rows, cols); hands and feet are not seen
BODY = [
    (14, (0, 64), (96, 160)),  # head
    (1, (64, 160), (64, 192)),  # torso
    (10, (64, 128), (0, 64)),  # left arm
    (11, (64, 128), (192, 256)),  # right arm
    (12, (128, 176), (0, 64)),  # left forearm
    (13, (128, 176), (192, 256)),  # right forearm
    (6, (160, 208), (64, 128)),  # right thigh
    (7, (160, 208), (128, 192)),  # left thigh
    (8, (208, 256), (64, 128)),  # right leg
    (9, (208, 256), (128, 192)),  # left leg
]
# a fine dp_I index of each coarse part (DensePose's charts: 2 torso, 23 head, ...)
FINE = {1: 2, 14: 23, 10: 15, 11: 16, 12: 19, 13: 20, 6: 7, 7: 8, 8: 11, 9: 12, 2: 3}
COLOURS = np.random.default_rng(0).integers(40, 255, size=(15, 3))
COLOURS[0] = (20, 20, 20)


def part_grid():
    """(256, 256) uint8: the coarse part of each cell of a person's box, 0 = not the person."""
    grid = np.zeros((256, 256), dtype=np.uint8)
    for part, (r0, r1), (c0, c1) in BODY:
        grid[r0:r1, c0:c1] = part
    return grid


def rle(mask):
    """COCO's compressed RLE of a (256, 256) bool mask, as the JSON stores it (str counts)."""
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"counts": encoded["counts"].decode("ascii"), "size": list(encoded["size"])}


def points_of(grid):
    """Three points per seen part plus two traps; returns (dp_x, dp_y, dp_I, expected).

    Each part gets its cell-centre point and two points beside it, so the one nearest the mean
    is the centre. The torso gets candidates A, B, C (B nearest their mean) and a stray torso
    point S in the legs: counted, S would make C the nearest; it must be ignored, its pixel is
    not torso. A right-hand point (dp_I 3) lies where no hand is: the hand gets no point.
    ``expected`` maps part -> the (dp_x, dp_y) that must be chosen.
    """
    xs, ys, fine, expected = [], [], [], {}
    for part, (r0, r1), (c0, c1) in BODY:
        if part == 1:
            continue
        cy, cx = (r0 + r1) / 2, (c0 + c1) / 2
        for dx, dy in ((0, 0), (-6, 0), (6, 0)):
            xs.append(cx + dx), ys.append(cy + dy), fine.append(FINE[part])
        expected[part] = (cx, cy)
    torso = [(100, 112), (128, 112), (128, 150), (128, 230)]  # A, B, C, S (S in the legs)
    for x, y in torso:
        xs.append(x), ys.append(y), fine.append(FINE[1])
    expected[1] = (128, 112)
    xs.append(30.0), ys.append(100.0), fine.append(FINE[2])  # a "hand" point on the left arm
    assert grid[100, 30] == 10  # (the trap lies on the arm, not on a hand)
    return xs, ys, fine, expected


@dataclass
class MiniDensePose:
    root: Path
    annotations: Path  # the DensePose_COCO folder
    images: Path  # the coco folder (train2014/, val2014/)
    splits: dict = field(default_factory=dict)  # split -> image ids (file stems)
    semantic: dict = field(default_factory=dict)  # image id -> (H, W) expected ground truth
    points: dict = field(default_factory=dict)  # image id -> {(part, row, col)} expected
    jpegs: dict = field(default_factory=dict)  # image id -> path
    files: dict = field(default_factory=dict)  # split -> JSON path


def _person(box, grid, annotation_id, image_id):
    xs, ys, fine, _ = points_of(grid)
    masks = [rle(grid == part) if (grid == part).any() else [] for part in range(1, 15)]
    return {
        "id": annotation_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
        "bbox": [float(v) for v in box], "area": float(box[2] * box[3]),
        "segmentation": [[box[0], box[1], box[0] + box[2], box[1], box[0] + box[2],
                          box[1] + box[3], box[0], box[1] + box[3]]],
        "dp_masks": masks, "dp_x": xs, "dp_y": ys, "dp_I": [float(i) for i in fine],
        "dp_U": [0.5] * len(xs), "dp_V": [0.5] * len(xs),
    }  # fmt: skip


def _paint(semantic, box, grid):
    """Paint a person's grid into its integer box, nearest neighbour (scikit-image)."""
    x, y, w, h = box
    parts = resize(grid, (h, w), order=0, preserve_range=True, anti_aliasing=False)
    parts = parts.astype(np.uint8)
    window = semantic[y : y + h, x : x + w]
    window[parts > 0] = parts[parts > 0]


def _expected_points(box, grid, semantic, overrides):
    x0, y0, w, h = box
    out = set()
    for part, (dx, dy) in {**points_of(grid)[3], **overrides}.items():
        row, col = int(np.floor(y0 + dy / 255 * h)), int(np.floor(x0 + dx / 255 * w))
        assert semantic[row, col] == part, "a fixture point must land in its part"
        out.add((part, row, col))
    return out


# image layouts: (split, number, (H, W), DensePose boxes largest first, other annotations)
LAYOUTS = [
    ("train", 36, (96, 128), [(16, 8, 32, 64)], []),
    # the smaller person, painted over the larger, covers two of the three right-forearm points
    # of the larger one (dp_x 224 and 230): the one left (dp_x 218) is its point
    ("train", 49, (96, 128), [(8, 4, 64, 88), (64, 30, 32, 64)],
     [{"polygon": [100, 10, 124, 10, 124, 40, 100, 40]}]),
    ("train", 61, (80, 112), [(60, 8, 32, 64)], [{"crowd": (4, 4, 20, 30)}]),
    ("train", 77, (64, 64), [], [{"polygon": [4, 4, 30, 4, 30, 30, 4, 30]}]),  # no DensePose
    ("val", 90, (96, 128), [(40, 16, 32, 64)], []),
    ("val", 95, (96, 96), [(8, 8, 64, 80)], []),
]  # fmt: skip


def write_mini_densepose(root, *, seed=0):
    """Write the miniature under `root`; return a `MiniDensePose` with the expected labels."""
    root = Path(root)
    mini = MiniDensePose(root, root / "DensePose_COCO", root / "coco")
    mini.annotations.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    grid = part_grid()
    coco = {split: {"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}
            for split in ("train", "val")}  # fmt: skip
    next_id = 1
    for split, number, (height, width), boxes, others in LAYOUTS:
        folder = "train2014" if split == "train" else "val2014"
        name = f"COCO_{folder}_{number:012d}"
        coco[split]["images"].append(
            {"id": number, "file_name": f"{name}.jpg", "height": height, "width": width}
        )
        semantic = np.zeros((height, width), dtype=np.uint8)
        for other in others:
            mask = np.zeros((height, width), dtype=bool)
            if "polygon" in other:
                x0, y0, x1, y1 = (other["polygon"][i] for i in (0, 1, 4, 5))
                mask[y0:y1, x0:x1] = True  # the polygon is this rectangle
                annotation = {"segmentation": [[float(v) for v in other["polygon"]]],
                              "iscrowd": 0}  # fmt: skip
            else:
                x, y, w, h = other["crowd"]
                mask[y : y + h, x : x + w] = True
                # COCO's crowds are uncompressed RLE: run lengths, column-major
                flat = mask.ravel(order="F")
                annotation = {"segmentation": {"counts": _runs(flat), "size": [height, width]},
                              "iscrowd": 1}  # fmt: skip
            semantic[mask] = IGNORE_INDEX
            annotation.update(id=next_id, image_id=number, category_id=1,
                              bbox=[float(v) for v in _bbox(mask)])  # fmt: skip
            coco[split]["annotations"].append(annotation)
            next_id += 1
        expected_points = set()
        for box in boxes:  # largest first, as the prepare paints them
            coco[split]["annotations"].append(_person(box, grid, next_id, number))
            next_id += 1
            _paint(semantic, box, grid)
        for k, box in enumerate(boxes):
            overrides = {13: (218.0, 152.0)} if (number, k) == (49, 0) else {}
            expected_points |= _expected_points(box, grid, semantic, overrides)
        pixels = COLOURS[semantic.clip(0, 14)] + rng.integers(-15, 16, (height, width, 3))
        path = mini.images / folder / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=95)
        mini.jpegs[name] = path
        if boxes:
            mini.splits.setdefault(split, []).append(name)
            mini.semantic[name] = semantic
            mini.points[name] = expected_points
    for split, stem in (("train", "train"), ("val", "minival")):
        path = mini.annotations / f"densepose_coco_2014_{stem}.json"
        path.write_text(json.dumps(coco[split]))
        mini.files[split] = path
    return mini


def _runs(flat):
    """Uncompressed COCO RLE counts of a flat 0/1 sequence: runs starting with zeros."""
    counts, value, run = [], 0, 0
    for pixel in flat.tolist():
        if pixel == value:
            run += 1
        else:
            counts.append(run)
            value, run = pixel, 1
    counts.append(run)
    return counts


def _bbox(mask):
    rows, cols = np.nonzero(mask)
    return cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1
