"""CAM pseudo labels as files: label PNGs and a list file that ``spml-lab train`` reads.

`write_pseudo_labels` runs a trained tag classifier over a ``spml-lab make-data`` folder, labels
each image by the rules of `spml_lab.labelling.cam` and writes::

    cam_{kind}/{split}/{name}.png     the pseudo labels (single channel, 255 = unlabelled)
    lists/{split}_cam_{kind}.txt      image, pseudo label [, superpixel] per line

which train as the annotation ``cam_tags`` / ``cam_boxes`` (``spml-lab cam-labels``).
"""

from __future__ import annotations

import os
from pathlib import Path

from spml_lab.data import datasets, labelio, writers
from spml_lab.labelling import cam

__all__ = ["write_pseudo_labels"]


def write_pseudo_labels(net, root, split="train", kind="tags", *, out_root=None, **options):
    """Write CAM pseudo labels for a `spml-lab make-data` folder, with a list file to train on.

    Parameters
    ----------
    net : tag_classifier.TagClassifier
        Trained classifier in eval mode (e.g. from `tag_training.train_tag_classifier`).
    root : str or Path
        Dataset folder holding ``dataset.json`` and ``lists/{split}_{kind}.txt``.
    split : str, optional
        Which split.
    kind : {"tags", "boxes"}, optional
        Tags (`cam.cam_pseudo_labels` with each image's tags) or boxes
        (`cam.box_pseudo_labels` with each image's box map).
    out_root : str or Path, optional
        Where to write (default `root`): ``cam_{kind}/{split}/{name}.png`` and
        ``lists/{split}_cam_{kind}.txt``, whose paths are relative to `out_root`.
    **options
        ``threshold`` and ``alpha`` for the labelling function.

    Returns
    -------
    list_file : Path
        The new list (``image label [superpixel]`` per line). Load it with
        ``datasets.SegmentationList(out_root, list_file, num_classes)``.

    Raises
    ------
    ValueError
        For an unknown kind.
    FileNotFoundError
        If the folder or its list is missing.

    Examples
    --------
    >>> import tempfile
    >>> from spml_lab.nets.tag_classifier import TagClassifier
    >>> out = Path(tempfile.mkdtemp())
    >>> net = TagClassifier(9, width=8).eval()
    >>> path = write_pseudo_labels(net, datasets.DATA_SAMPLES / "objects", "val", out_root=out)
    >>> path.name, len(datasets.SegmentationList(out, path, 9))
    ('val_cam_tags.txt', 32)
    """
    if kind not in ("tags", "boxes"):
        raise ValueError(f"kind must be 'tags' or 'boxes', got {kind!r}")
    root = Path(root)
    out_root = Path(out_root) if out_root is not None else root
    data = datasets.from_folder(root, split, kind)
    with writers.one_writer(out_root):  # refuses the shipped samples; one writer at a time
        return _write_pseudo_labels(net, data, out_root, split, kind, options)


def _write_pseudo_labels(net, data, out_root, split, kind, options):
    device = next(net.parameters()).device
    lines = []
    for index in range(len(data)):  # one image at a time: images may differ in size
        item = data[index]
        image = item["image"][None].to(device)
        cams = net.cams(image, size=tuple(image.shape[-2:]))
        if kind == "tags":
            labels = cam.cam_pseudo_labels(cams, item["tags"][None], **options)
        else:
            labels = cam.box_pseudo_labels(cams, item["label"][None], **options)
        target = out_root / f"cam_{kind}" / split / f"{item['name']}.png"
        labelio.write_label_png(target, labels[0].cpu().numpy())
        sample = data.samples[index]
        paths = [sample.image, target] + ([sample.superpixel] if sample.superpixel else [])
        lines.append(" ".join(os.path.relpath(p, out_root) for p in paths))
    list_file = out_root / "lists" / f"{split}_cam_{kind}.txt"
    list_file.parent.mkdir(parents=True, exist_ok=True)
    list_file.write_text("\n".join(lines) + "\n")
    return list_file
