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

import contextlib
import functools
import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from spml_lab import checks
from spml_lab.constants import ANNOTATIONS, SHORTENED_SCRIBBLES
from spml_lab.data import annotations, labelio, superpixels, synthetic

__all__ = ["write_dataset", "write_shortened_scribbles", "LABEL_FOLDERS"]

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
        For a count, size, seed, superpixel option or generator option out of range; the
        message names it. Everything is checked before the first file is written, and a
        call that fails later leaves nothing behind (a new or empty `root` is written under
        a temporary name and moved into place at the end), so the corrected call can write
        the same `root`.
    """
    root = Path(root)
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(f"{root} is not empty; pass overwrite=True (--overwrite) to reuse it")
    if superpixel_method not in superpixels.METHODS:
        raise ValueError(
            f"superpixel_method must be one of {sorted(superpixels.METHODS)}, "
            f"got {superpixel_method!r}"
        )
    # every number is checked here, before the first file: a bad one found at the first image
    # (scikit-image divides by n_segments) would leave a half-written folder behind
    superpixel_options = superpixels.check_options(superpixel_method, superpixel_options)
    splits = {
        "train": checks.in_range("num_train", num_train, 1),
        "val": checks.in_range("num_val", num_val, 1),
    }
    if checks.in_range("num_test", num_test, 0):
        splits["test"] = num_test
    checks.in_range("size", size, synthetic.MIN_SIZE)
    checks.in_range("seed", seed, 0)  # here: the generator sees 2 * seed and would name that

    def generate(split):
        return synthetic.generate(
            splits[split], kind=kind, size=size, seed=SPLIT_SEEDS[split](seed), **options
        )

    scenes = generate("train")  # checks `kind` and the generator's options, before any file
    segmenter = functools.partial(
        superpixels.segment, method=superpixel_method, **superpixel_options
    )
    metadata = {
        "name": f"synthetic-{kind}",
        "kind": kind,
        "size": size,
        "seed": seed,
        "options": {k: v for k, v in scenes.options.items() if k not in ("seed", "size")},
        "superpixel_method": superpixel_method,
        "superpixel_options": superpixel_options,
        "class_names": scenes.class_names,
        "num_classes": len(scenes.class_names),
        "splits": splits,
    }
    with _staged(root) as folder:
        for split in splits:
            if split != "train":
                scenes = generate(split)  # the previous split's arrays are freed
            _write_split(folder, split, scenes, segmenter, seed, progress)
        text = json.dumps(metadata, indent=2, sort_keys=True) + "\n"
        (folder / "dataset.json").write_text(text)
    return root


@contextlib.contextmanager
def _staged(root):
    """Yield the folder to write `root`'s files into, so that a failure leaves nothing behind.

    A new or empty `root` is written in a hidden sibling, ``.{name}.partial-{pid}``, and moved
    into place at the end (renamed when `root` is new; its entries moved in, ``dataset.json``
    last, when it is an empty folder of the user's, which stays). On any exception the sibling
    and the parent folders this call made are removed; a folder the user had is never
    removed. A non-empty `root` (``overwrite=True``) is written in place.
    """
    root = Path(root)
    if root.is_dir() and any(root.iterdir()):
        yield root
        return
    target = root.resolve()
    staging = target.parent / f".{target.name}.partial-{os.getpid()}"
    made = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    try:
        staging.mkdir(parents=True)
        yield staging
        if not target.exists():
            os.replace(staging, target)
        else:  # the user's empty folder: keep it, move the files in
            entries = sorted(staging.iterdir(), key=lambda p: p.name == "dataset.json")
            for entry in entries:
                os.replace(entry, target / entry.name)
            staging.rmdir()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in made:  # deepest first; each holds nothing but what this call made
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise


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


def write_shortened_scribbles(root, annotation, split="train"):
    """Write the scribbles of a dataset's split shortened to a percentage of their length.

    The paper's scribble-length study trains on scribbles cut to 80, 50 and 30 % of their
    length. Each region's scribble is drawn as `write_dataset` drew it (same seed), keeping a
    connected piece of ``keep_fraction`` of its skeleton (`annotations.weak_labels`).

    Parameters
    ----------
    root : str or Path
        A folder written by `write_dataset` (its ``dataset.json`` gives the seed).
    annotation : {"scribbles_80", "scribbles_50", "scribbles_30"}
        `constants.SHORTENED_SCRIBBLES`; the number is the percentage kept.
    split : str, optional

    Returns
    -------
    list_file : Path
        ``lists/{split}_{annotation}.txt``, beside the label maps ``{annotation}/{split}/``.

    Examples
    --------
    >>> import tempfile
    >>> root = write_dataset(tempfile.mkdtemp() + "/d", num_train=2, num_val=1, size=48,
    ...                      progress=False)
    >>> write_shortened_scribbles(root, "scribbles_30").name
    'train_scribbles_30.txt'
    """
    if annotation not in SHORTENED_SCRIBBLES:
        raise ValueError(
            f"annotation must be one of {list(SHORTENED_SCRIBBLES)}, got {annotation!r}"
        )
    root = Path(root)
    meta = json.loads((root / "dataset.json").read_text())
    lines = (root / "lists" / f"{split}_full.txt").read_text().splitlines()
    names = [Path(line.split()[1]).stem for line in lines]
    semantic = np.stack([labelio.read_label_png(root / "semantic" / split / f"{n}.png")
                         for n in names])  # fmt: skip
    instance = np.stack([labelio.read_id_png(root / "instance" / split / f"{n}.png")
                         for n in names])  # fmt: skip
    split_code = list(SPLIT_SEEDS).index(split)
    fraction = int(annotation.rsplit("_", 1)[1]) / 100
    labels = annotations.weak_labels_batch(
        semantic, instance, "scribbles", seed=(meta["seed"], split_code), keep_fraction=fraction
    )
    for name, label in zip(names, labels, strict=True):
        labelio.write_label_png(root / annotation / split / f"{name}.png", label)
    list_file = root / "lists" / f"{split}_{annotation}.txt"
    list_file.write_text("".join(
        f"images/{split}/{n}.jpg {annotation}/{split}/{n}.png superpixels/{split}/{n}.png\n"
        for n in names))  # fmt: skip
    return list_file
