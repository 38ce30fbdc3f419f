"""Datasets: SPML list files and the dataset folders `spml-lab make-data` and `prepare` write.

Every dataset here is one `SegmentationList`: a text file with one sample per line,

    image label superpixel

paths relative to a data root, as in SPML's ``datasets/voc12/*.txt`` [1]_. The superpixel column
may be missing (no superpixels; the item then holds -1 everywhere), and so may the label column
(an image-only list: everything unlabelled). An item is a dict of tensors that the default
``torch.utils.data.DataLoader`` collate batches::

    image       (3, H, W) float32 in [0, 1]     (the model normalises)
    label       (H, W) int64, 255 = unlabelled
    superpixel  (H, W) int64, -1 = none (padding, or no superpixel column)
    tags        (num_classes,) bool, the classes present in the label
    name        str, the image file's stem
    index       int, the line's position in the list

Layouts (``ROOT`` is what you pass as `root`)::

    synthetic (from_folder / embedded), written by `spml-lab make-data`:
        ROOT/dataset.json                      name, kind, class_names, splits, ...
        ROOT/images/{split}/{name}.jpg
        ROOT/semantic/{split}/{name}.png       dense ground truth
        ROOT/superpixels/{split}/{name}.png    16-bit ids
        ROOT/{points,scribbles,boxes}/{split}/{name}.png
        ROOT/lists/{split}_{annotation}.txt    annotation in full|points|scribbles|boxes|tags

    ``spml-lab prepare voc`` and ``prepare densepose`` write the same layout from the official
    downloads (`voc`, `densepose`), images and labels without the split folder; their
    ``dataset.json`` adds what the prepare decided (and DensePose's ``flip_classes``).

SPML's evaluation lists repeat the label path in the superpixel column as a placeholder; a
superpixel column equal to the label column is read as "no superpixels", so ground truth can
never leak into the low-level relation or the test-time segments.

The embedded samples (``"embedded:KIND"``, `embedded`) and the runs shipped with them
(`spml_lab.training.runs`) live inside the package, in ``spml_lab/data_samples/``
(`DATA_SAMPLES`), so they have one place in every kind of install. A wheel carries them as
package data (one ``package-data`` glob in ``pyproject.toml``); an editable checkout reads them
where ``make data-samples`` and ``make sample-runs`` write them. Kept at the repository root,
they would need a ``package-dir`` mapping into the wheel and a second place to look in a
checkout.

References
----------
.. [1] Ke, Hwang, Yu. "Universal Weakly Supervised Segmentation by Pixel-to-Segment Contrastive
   Learning", ICLR 2021; code: github.com/twke18/SPML (spml/data/datasets/).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from spml_lab.constants import (
    ANNOTATIONS,
    IGNORE_INDEX,
    PSEUDO_ANNOTATIONS,
    SHORTENED_SCRIBBLES,
)
from spml_lab.data.labelio import read_id_png, read_image, read_label_png

__all__ = [
    "DATA_SAMPLES",
    "SegmentationList",
    "embedded",
    "open_data",
    "from_folder",
    "read_metadata",
    "absolute_data",
    "data_fingerprint",
]


# the committed embedded samples, package data (see the module docstring); the runs shipped
# beside them are the training layer's (`spml_lab.training.runs`). A plain path, not an
# importlib.resources Traversable: the readers need real files, and wheels install unzipped.
DATA_SAMPLES = Path(__file__).resolve().parents[1] / "data_samples"


class _Sample(NamedTuple):
    image: Path
    label: Path | None
    superpixel: Path | None
    line_no: int
    line: str


class SegmentationList(Dataset):
    r"""Images, (weak) label maps and superpixels listed in an SPML list file.

    Parameters
    ----------
    root : str or Path
        Folder the list's paths are relative to.
    list_file : str or Path
        The list: one ``image [label [superpixel]]`` line per sample; blank lines and lines
        starting with ``#`` are skipped. All lines must have the same number of columns.
    num_classes : int
        Number of classes C, background included; label values must be < C or `ignore_index`.
    train : bool, optional
        Apply training augmentation (random scale, crop with padding, horizontal flip).
    crop_size : int or (int, int), optional
        Training crop (height, width). None: no scaling or cropping, only flips (items keep the
        image size, so batch only same-size images). SPML crops 512 on VOC.
    scale_range : (float, float), optional
        Random scale factor range before cropping; SPML's embedding training uses (0.5, 1.5).
    flip : bool, optional
        Random horizontal flip (probability 0.5) in training.
    tags_only : bool, optional
        Image-tag supervision: derive ``tags`` from the label, then blank the label (all 255).
    flip_classes : sequence of int, optional
        Class each class becomes in a mirrored image (DensePose swaps left and right parts).
    class_names : sequence of str, optional
        Kept as ``self.class_names`` for plots.
    annotation : str, optional
        What the labels are ("full", "points", ...), kept as ``self.annotation``.
    seed : int, optional
        Augmentation randomness: item ``i`` in epoch ``e`` uses ``default_rng([seed, e, i])``,
        so runs repeat exactly, also with several DataLoader workers.
    ignore_index : int, optional
        The "unlabelled" label value.
    cache : bool, optional
        Keep each sample's decoded and checked files in memory after its first read, so later
        epochs skip the PNG decoding (about 3 ms per 96 px sample, two thirds of an item's
        time). For data that fits in memory, such as the embedded benchmark's (400 images of
        96 px: 60 MB); each DataLoader worker process holds its own copy.

    Raises
    ------
    FileNotFoundError
        If the list file, or a file it lists, does not exist (the message names the file and
        the list line).
    ValueError
        If the list is empty or has malformed lines.

    Notes
    -----
    Files are read when an item is requested; then an unreadable file, an image/label or
    image/superpixel size mismatch, or a label value >= `num_classes` (other than
    `ignore_index`) raises ``ValueError`` naming the file. Nothing is skipped silently.

    ``tags`` come from the full label before augmentation (as SPML's ``ListTagDataset``), so
    they describe the image even where a crop cuts a class out. Call ``set_epoch(e)`` at the
    start of each epoch to draw new augmentations (DataLoader workers copy the dataset when an
    iteration starts, so this works unless ``persistent_workers=True``).

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from spml_lab.data import labelio
    >>> root = Path(tempfile.mkdtemp())
    >>> labelio.write_label_png(root / "a.png", np.zeros((4, 6), np.uint8))
    >>> labelio.write_label_png(root / "b.png", np.ones((4, 6), np.uint8))
    >>> _ = (root / "list.txt").write_text("a.png b.png\n")
    >>> item = SegmentationList(root, root / "list.txt", num_classes=2)[0]
    >>> item["image"].shape, item["label"].unique().tolist(), item["tags"].tolist()
    (torch.Size([3, 4, 6]), [1], [False, True])
    """

    def __init__(
        self,
        root,
        list_file,
        num_classes,
        *,
        train=False,
        crop_size=None,
        scale_range=(0.5, 1.5),
        flip=True,
        tags_only=False,
        flip_classes=None,
        class_names=None,
        annotation=None,
        seed=0,
        ignore_index=IGNORE_INDEX,
        cache=False,
    ):
        self.root = Path(root)
        self._cache = {} if cache else None  # sample index -> its decoded files
        self.list_file = Path(list_file)
        self.num_classes = int(num_classes)
        self.train = train
        if crop_size is not None:
            crop_size = (crop_size, crop_size) if np.isscalar(crop_size) else tuple(crop_size)
            if len(crop_size) != 2 or min(crop_size) < 1:
                raise ValueError(f"crop_size must be a positive int or (h, w), got {crop_size}")
        self.crop_size = crop_size
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be 0 < low <= high, got {scale_range}")
        self.scale_range = (float(low), float(high))
        self.flip = flip
        self.tags_only = tags_only
        self.class_names = list(class_names) if class_names is not None else None
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class_names given for num_classes={self.num_classes}"
            )
        self.annotation = annotation
        self.seed = seed
        self.ignore_index = ignore_index
        self.epoch = 0
        self._flip_lut = None
        if flip_classes is not None:
            flip_classes = np.asarray(flip_classes, dtype=np.int64)
            if flip_classes.shape != (self.num_classes,):
                raise ValueError(
                    f"flip_classes needs one entry per class ({self.num_classes}), "
                    f"got {flip_classes.shape[0]}"
                )
            self._flip_lut = np.arange(256, dtype=np.int64)
            self._flip_lut[: self.num_classes] = flip_classes
        self.samples = _read_list(self.root, self.list_file)
        self.has_superpixels = self.samples[0].superpixel is not None

    def __len__(self):
        return len(self.samples)

    def __repr__(self):
        mode = f"train, crop {self.crop_size}" if self.train else "eval"
        return (
            f"SegmentationList({len(self)} images, {self.num_classes} classes, "
            f"annotation={self.annotation!r}, list={str(self.list_file)!r}, {mode})"
        )

    @property
    def names(self):
        """Image names (file stems), in list order."""
        return [s.image.stem for s in self.samples]

    def set_epoch(self, epoch):
        """Use the augmentation stream of `epoch` (see the class notes)."""
        self.epoch = int(epoch)

    def __getitem__(self, index):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index = index % len(self)
        sample = self.samples[index]
        image, label, superpixel = self._cached_load(index)
        tags = np.zeros(self.num_classes, dtype=bool)
        tags[np.unique(label[label != self.ignore_index])] = True
        if self.tags_only:
            label = np.full_like(label, self.ignore_index)
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image, label, superpixel = self._augment(image, label, superpixel, rng)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "label": torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64)),
            "superpixel": torch.from_numpy(np.ascontiguousarray(superpixel, dtype=np.int64)),
            "tags": torch.from_numpy(tags),
            "name": sample.image.stem,
            "index": index,
        }

    def check_files(self):
        """Read every listed file once and check it, before any training step needs it.

        Each image, label and superpixel map is decoded in full (a truncated file fails
        here, not at the step that first draws it) and checked as `__getitem__` checks it:
        existence, matching sizes, label values in range.

        Raises
        ------
        ValueError
            At the first bad sample, naming the file, the problem and the list line.
        """
        for index in range(len(self.samples)):
            self._cached_load(index)  # with `cache`, the training steps reuse these reads

    def _where(self, sample):
        return f"(listed in {self.list_file} line {sample.line_no}: {sample.line!r})"

    def _cached_load(self, index):
        """Return `_load` of sample `index`, from memory when the dataset caches.

        Cached arrays are handed out as copies: whoever receives an item may change it in place.
        """
        if self._cache is None:
            return self._load(self.samples[index])
        if index not in self._cache:
            self._cache[index] = self._load(self.samples[index])
        return tuple(array.copy() for array in self._cache[index])

    def _load(self, sample):
        """Read one sample's files and check that they belong together."""
        try:
            image = read_image(sample.image)  # (H, W, 3) float32
            height, width = image.shape[:2]
            if sample.label is None:
                label = np.full((height, width), self.ignore_index, dtype=np.int64)
            else:
                label = read_label_png(sample.label).astype(np.int64)
            if sample.superpixel is None:
                superpixel = np.full((height, width), -1, dtype=np.int64)
            else:
                superpixel = read_id_png(sample.superpixel)
        except (ValueError, FileNotFoundError) as error:
            raise ValueError(f"{error} {self._where(sample)}") from error
        for path, array in ((sample.label, label), (sample.superpixel, superpixel)):
            if path is not None and array.shape != (height, width):
                raise ValueError(
                    f"{path}: size {array.shape[1]}x{array.shape[0]} (WxH) differs from its "
                    f"image {sample.image} ({width}x{height}) {self._where(sample)}"
                )
        bad = np.unique(label[(label >= self.num_classes) & (label != self.ignore_index)])
        if bad.size:
            raise ValueError(
                f"{sample.label}: label values {bad[:10].tolist()} are out of range for "
                f"num_classes={self.num_classes} (only {self.ignore_index} = unlabelled may "
                f"exceed it) {self._where(sample)}"
            )
        return image, label, superpixel

    def _augment(self, image, label, superpixel, rng):
        """Random scale, crop with padding, and flip; the same geometry for all three maps."""
        # draw every number every time, so switching one step off leaves the others unchanged
        scale = rng.uniform(*self.scale_range)
        offset = rng.random(2)
        mirror = rng.random() < 0.5
        if self.crop_size is not None:
            height, width = label.shape
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            image = _resize_bilinear(image, size)
            rows, cols = _nearest_index(height, size[0]), _nearest_index(width, size[1])
            label, superpixel = label[np.ix_(rows, cols)], superpixel[np.ix_(rows, cols)]
            image, label, superpixel = _crop_with_pad(
                image, label, superpixel, self.crop_size, offset, self.ignore_index
            )
        if self.flip and mirror:
            image, label, superpixel = image[:, ::-1], label[:, ::-1], superpixel[:, ::-1]
            if self._flip_lut is not None:  # left part becomes right part
                label = self._flip_lut[label]
        return image, label, superpixel


def _read_list(root, list_file):
    """Parse a list file and check that every listed file exists."""
    if not list_file.is_file():
        raise FileNotFoundError(f"list file not found: {list_file}")
    samples, columns = [], None
    for line_no, raw in enumerate(list_file.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if not 1 <= len(parts) <= 3:
            raise ValueError(
                f"{list_file} line {line_no}: expected 'image [label [superpixel]]', got "
                f"{len(parts)} columns: {line!r}"
            )
        if columns is None:
            columns = len(parts)
        elif len(parts) != columns:
            raise ValueError(
                f"{list_file} line {line_no}: {len(parts)} columns where the first line has "
                f"{columns}: {line!r}"
            )
        image, label, superpixel = [root / p for p in parts] + [None] * (3 - len(parts))
        if superpixel is not None and superpixel == label:
            superpixel = None  # SPML's evaluation lists repeat the label as a placeholder
        for path in (image, label, superpixel):
            if path is not None and not path.is_file():
                raise FileNotFoundError(
                    f"{path} not found (listed in {list_file} line {line_no}: {line!r})"
                )
        samples.append(_Sample(image, label, superpixel, line_no, line))
    if not samples:
        raise ValueError(f"list file {list_file} is empty (no samples)")
    return samples


def _resize_bilinear(image, size):
    """(H, W, 3) float image to `size` = (h, w), antialiased when shrinking."""
    if image.shape[:2] == tuple(size):
        return image
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    shrink = size[0] < image.shape[0] or size[1] < image.shape[1]
    out = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return out[0].clamp_(0, 1).numpy().transpose(1, 2, 0)


def _nearest_index(old, new):
    """Source index of each of `new` pixels under nearest-neighbour resizing (pixel centres)."""
    return np.minimum(((np.arange(new) + 0.5) * old / new).astype(np.int64), old - 1)


def _crop_with_pad(image, label, superpixel, crop_size, offset, ignore_index):
    """Pad bottom/right up to the crop (image 0, label ignore, superpixel -1), then crop."""
    ch, cw = crop_size
    height, width = label.shape
    ph, pw = max(ch - height, 0), max(cw - width, 0)
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)), constant_values=0)
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=ignore_index)
        superpixel = np.pad(superpixel, ((0, ph), (0, pw)), constant_values=-1)
    y0 = int(offset[0] * (label.shape[0] - ch + 1))
    x0 = int(offset[1] * (label.shape[1] - cw + 1))
    window = (slice(y0, y0 + ch), slice(x0, x0 + cw))
    return image[window], label[window], superpixel[window]


# --------------------------------------------------------------------------- constructors


def open_data(data, split, annotation, **kwargs):
    """Open the dataset a ``TrainConfig.data`` string names: the embedded samples or a folder.

    Parameters
    ----------
    data : str or Path
        ``"embedded:KIND"`` (`embedded`) or a `spml-lab make-data` folder (`from_folder`).
    split, annotation : str
        Which list to read.
    **kwargs
        Passed to `SegmentationList` (train, crop_size, seed, ...).

    Returns
    -------
    dataset : SegmentationList

    Examples
    --------
    >>> len(open_data("embedded:parts", "val", "points"))
    32
    """
    if str(data).startswith("embedded:"):
        return embedded(str(data).split(":", 1)[1], split, annotation, **kwargs)
    return from_folder(data, split, annotation, **kwargs)


def embedded(kind="objects", split="train", annotation="scribbles", **kwargs):
    """Load the small synthetic dataset shipped in ``DATA_SAMPLES/{kind}`` (the default).

    Parameters
    ----------
    kind : {"objects", "parts"}, optional
        Object scenes or body-part figures.
    split : {"train", "val"}, optional
        Which split.
    annotation : {"full", "points", "scribbles", "boxes", "tags"}, optional
        Which labels.
    **kwargs
        Passed to `SegmentationList` (train, crop_size, seed, ...).

    Returns
    -------
    dataset : SegmentationList

    Raises
    ------
    FileNotFoundError
        If the samples are missing (regenerate them with ``make data-samples``).
    """
    root = DATA_SAMPLES / kind
    if not (root / "dataset.json").is_file():
        raise FileNotFoundError(
            f"embedded samples {kind!r} not found at {root}; regenerate them with "
            f"`make data-samples` or `spml-lab make-data {root} --kind {kind}`"
        )
    return from_folder(root, split, annotation, **kwargs)


def absolute_data(data):
    """Return a ``TrainConfig.data`` string that means the same from any folder.

    ``"embedded:KIND"`` stays as it is; a folder becomes its absolute path, so a run folder
    records what it trained on and not what ``data`` happened to mean in the shell it ran in.

    Examples
    --------
    >>> absolute_data("embedded:objects")
    'embedded:objects'
    >>> Path(absolute_data("data/objects")).is_absolute()
    True
    """
    if str(data).startswith("embedded:"):
        return str(data)
    return str(Path(data).expanduser().resolve())


def data_fingerprint(data, list_file=None):
    """Where a dataset is and what it holds, to tell later whether it is still the same.

    Parameters
    ----------
    data : str
        A ``TrainConfig.data`` string.
    list_file : str or Path, optional
        A list file of it whose content is recorded too (the training list).

    Returns
    -------
    fingerprint : dict
        ``root`` (absolute folder), ``dataset_json`` (SHA-256 of ``dataset.json``, None
        without one) and, with `list_file`, ``list_file`` and ``list_sha256``.
    """
    if str(data).startswith("embedded:"):
        root = DATA_SAMPLES / str(data).split(":", 1)[1]
    else:
        root = Path(data).expanduser().resolve()
    meta = root / "dataset.json"
    out = {"root": str(root), "dataset_json": _sha256(meta) if meta.is_file() else None}
    if list_file is not None:
        out.update(list_file=str(list_file), list_sha256=_sha256(list_file))
    return out


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_metadata(path):
    """Read a dataset folder's ``dataset.json`` and check what every reader relies on.

    Parameters
    ----------
    path : str or Path
        The ``dataset.json`` file.

    Returns
    -------
    meta : dict
        With ``class_names`` a non-empty list of strings (and ``num_classes``, when given,
        equal to its length).

    Raises
    ------
    ValueError
        On malformed JSON, a missing or bad ``class_names``, or a ``num_classes`` that
        contradicts it; the message names the file.
    """
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    names = meta.get("class_names") if isinstance(meta, dict) else None
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise ValueError(f"{path}: needs 'class_names', a non-empty list of class names")
    if "num_classes" in meta and meta["num_classes"] != len(names):
        raise ValueError(
            f"{path}: num_classes is {meta['num_classes']!r} but class_names lists "
            f"{len(names)} classes"
        )
    return meta


def from_folder(root, split="train", annotation="full", **kwargs):
    """Load a dataset written by ``spml-lab make-data`` (layout in the module notes).

    Parameters
    ----------
    root : str or Path
        The folder holding ``dataset.json``.
    split : str, optional
        A split named in ``dataset.json`` ("train", "val").
    annotation : {"full", "points", "scribbles", "boxes", "tags", "cam_tags", "cam_boxes"}, optional
        Which list to read; "tags" derives the tags from the listed mask and blanks the label;
        "cam_tags" / "cam_boxes" are CAM pseudo labels written by `label_files.write_pseudo_labels`
        (``spml-lab cam-labels``).
    **kwargs
        Passed to `SegmentationList`.

    Returns
    -------
    dataset : SegmentationList
        With ``class_names`` from ``dataset.json`` (and ``flip_classes`` if it has them).

    Raises
    ------
    FileNotFoundError
        If ``dataset.json`` or the list is missing.
    ValueError
        For an unknown split or annotation.
    """
    root = Path(root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: is {root} a `spml-lab make-data` folder?")
    meta = read_metadata(meta_path)
    known = ANNOTATIONS + PSEUDO_ANNOTATIONS + SHORTENED_SCRIBBLES
    if annotation not in known:
        raise ValueError(f"unknown annotation {annotation!r}; expected one of {known}")
    splits = meta.get("splits", {})
    if splits and split not in splits:
        raise ValueError(f"{root} has no split {split!r}; it has {sorted(splits)}")
    class_names = meta["class_names"]
    list_file = root / "lists" / f"{split}_{annotation}.txt"
    if annotation in PSEUDO_ANNOTATIONS and not list_file.is_file():
        raise FileNotFoundError(
            f"{list_file} not found: write the CAM pseudo labels first with "
            f"`spml-lab cam-labels {root} --kind {annotation.removeprefix('cam_')}`"
        )
    if annotation in SHORTENED_SCRIBBLES and not list_file.is_file():
        raise FileNotFoundError(
            f"{list_file} not found: write the shortened scribbles first with "
            f"`make_data.write_shortened_scribbles({str(root)!r}, {annotation!r}, {split!r})`"
        )
    if "flip_classes" in meta:
        kwargs.setdefault("flip_classes", meta["flip_classes"])
    return SegmentationList(
        root,
        list_file,
        len(class_names),
        class_names=class_names,
        annotation=annotation,
        tags_only=annotation == "tags",
        **kwargs,
    )
