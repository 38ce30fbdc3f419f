"""Write a synthetic dataset to disk in the SPML list-file layout.

One folder holds everything a run needs: images, dense ground truth, instances, superpixels,
every weak-label kind, and one list file per (split, annotation)::

    ROOT/dataset.json                        kind, size, seed, options, class names, split sizes
    ROOT/images/{split}/{name}.jpg           RGB, JPEG quality 90 (like VOC's JPEGImages)
    ROOT/semantic/{split}/{name}.png         dense ground truth, palette PNG
    ROOT/instance/{split}/{name}.png         16-bit instance ids, 0 = none
    ROOT/superpixels/{split}/{name}.png      16-bit superpixel ids
    ROOT/{points,scribbles,boxes}/{split}/{name}.png   weak labels, 255 = unlabelled
    ROOT/lists/{split}_{annotation}.txt      "image label superpixel" per line

``annotation`` is one of ``full``, ``points``, ``scribbles``, ``boxes``, ``tags``. For ``tags``
the label column names the semantic mask: readers derive the image's tags from it and must not
use its pixels (``datasets.SegmentationList(..., tags_only=True)`` blanks them).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from spml_lab.constants import ANNOTATIONS
from spml_lab.data import annotations, labelio, superpixels, synthetic

__all__ = ["write_dataset", "LABEL_FOLDERS"]

# the label column of each annotation's list file
LABEL_FOLDERS = {
    "full": "semantic",
    "points": "points",
    "scribbles": "scribbles",
    "boxes": "boxes",
    "tags": "semantic",
}
JPEG_QUALITY = 90
# generate() seeds of each split: train and val never share a scene, and a run with seed s
# never repeats a split of seed s + 1; the held-out test split draws from a range of seeds
# that no train or val split of a seed below a million uses
SPLIT_SEEDS = {
    "train": lambda seed: 2 * seed,
    "val": lambda seed: 2 * seed + 1,
    "test": lambda seed: 2_000_003 + seed,
}


def write_dataset(
    root,
    *,
    kind="objects",
    num_train=2000,
    num_val=500,
    num_test=0,
    size=128,
    seed=0,
    superpixel_method="slic",
    superpixel_options=None,
    overwrite=False,
    progress=True,
    **options,
):
    """Generate scenes with `synthetic.generate` and write them with all their labels.

    Parameters
    ----------
    root : str or Path
        Output folder; created. It must be empty or absent unless `overwrite`.
    kind : {"objects", "parts"}, optional
        Scene kind.
    num_train, num_val : int, optional
        Images per split.
    num_test : int, optional
        Images of a held-out ``test`` split (0: none), drawn with its own generator seed so
        that no train or val split of any seed repeats it: report there, tune on val.
    size : int, optional
        Image side in pixels.
    seed : int, optional
        Same seed, same files.
    superpixel_method : str, optional
        Method of `superpixels.segment` for the low-level relation's segments.
    superpixel_options : dict, optional
        Keyword arguments of `superpixels.segment` (e.g. ``{"n_segments": 24}``), recorded in
        ``dataset.json``; None keeps the method's defaults.
    overwrite : bool, optional
        Allow writing into a non-empty folder.
    progress : bool, optional
        Show a progress bar per split.
    **options
        Passed to `synthetic.generate` (e.g. ``difficulty``).

    Returns
    -------
    root : Path
        The dataset folder.

    Raises
    ------
    FileExistsError
        If `root` is not empty and `overwrite` is false.
    ValueError
        For bad sizes or generator options.
    """
    root = Path(root)
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(f"{root} is not empty; pass overwrite=True (--overwrite) to reuse it")
    if superpixel_method not in superpixels.METHODS:
        raise ValueError(
            f"superpixel_method must be one of {sorted(superpixels.METHODS)}, "
            f"got {superpixel_method!r}"
        )
    splits = {"train": num_train, "val": num_val}
    for split, count in splits.items():
        if count < 1:
            raise ValueError(f"num_{split} must be >= 1, got {count}")
    if num_test < 0:
        raise ValueError(f"num_test must be >= 0, got {num_test}")
    if num_test:
        splits["test"] = num_test
    superpixel_options = dict(superpixel_options or {})
    metadata = None
    for split, count in splits.items():
        scenes = synthetic.generate(
            count, kind=kind, size=size, seed=SPLIT_SEEDS[split](seed), **options
        )
        segmenter = functools.partial(
            superpixels.segment, method=superpixel_method, **superpixel_options
        )
        _write_split(root, split, scenes, segmenter, seed, progress)
        metadata = metadata or {
            "name": f"synthetic-{kind}",
            "kind": kind,
            "size": size,
            "seed": seed,
            "options": {k: v for k, v in scenes.options.items() if k not in ("seed", "size")},
            "superpixel_method": superpixel_method,
            "superpixel_options": superpixel_options,
            "class_names": scenes.class_names,
            "num_classes": len(scenes.class_names),
        }
    metadata["splits"] = splits
    (root / "dataset.json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return root


def _write_split(root, split, scenes, segmenter, seed, progress):
    split_code = list(SPLIT_SEEDS).index(split)
    weak = {
        kind: annotations.weak_labels_batch(
            scenes.semantic, scenes.instance, kind, seed=(seed, split_code)
        )
        for kind in ("points", "scribbles", "boxes")
    }
    names = [f"{split}_{i:05d}" for i in range(len(scenes))]
    bar = tqdm(names, desc=f"{split}", unit="img", disable=not progress)
    for i, name in enumerate(bar):
        image_path = root / "images" / split / f"{name}.jpg"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scenes.images[i]).save(image_path, quality=JPEG_QUALITY)
        labelio.write_label_png(root / "semantic" / split / f"{name}.png", scenes.semantic[i])
        labelio.write_id_png(root / "instance" / split / f"{name}.png", scenes.instance[i])
        segments = segmenter(scenes.images[i])
        labelio.write_id_png(root / "superpixels" / split / f"{name}.png", segments)
        for kind, labels in weak.items():
            labelio.write_label_png(root / kind / split / f"{name}.png", labels[i])
    (root / "lists").mkdir(parents=True, exist_ok=True)
    for annotation in ANNOTATIONS:
        lines = [
            f"images/{split}/{n}.jpg {LABEL_FOLDERS[annotation]}/{split}/{n}.png "
            f"superpixels/{split}/{n}.png\n"
            for n in names
        ]
        (root / "lists" / f"{split}_{annotation}.txt").write_text("".join(lines))
