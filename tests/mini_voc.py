"""Write a miniature Pascal VOC download in the real formats, for the `prepare voc` tests.

Test infrastructure, not a test module (like ``browser.py``; tests import it as ``from mini_voc
import write_mini_voc``). It writes, into a temporary folder:

* ``VOCdevkit/VOC2012/JPEGImages/{id}.jpg``, ``Annotations/{id}.xml`` in the VOC schema (1-based,
  inclusive ``bndbox``), ``SegmentationClass`` and ``SegmentationObject`` palette PNGs (mode P,
  the VOC colour map, a 255 band along object boundaries), ``ImageSets/Segmentation/*.txt``;
* ``SBD/dataset/cls/{id}.mat`` written with scipy in SBD's structure (struct ``GTcls`` with
  ``Segmentation``, ``Boundaries`` (a cell of sparse maps per class), ``CategoriesPresent``),
  ``train.txt`` and ``val.txt``;
* ``ScribbleSup/{id}.xml``: one ``<object>`` per scribble, ``<polygon>`` of ``<point><X><Y>``.

The palette is computed here, not taken from the package, and everything a test checks against
(boxes, tags, masks, scribble vertices, splits) is returned from what was drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse
from PIL import Image
from scipy import ndimage

CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def palette():
    """The VOC colour map, (256, 3) uint8: bits of the index interleaved into R, G, B."""
    colours = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        c, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        colours[index] = (r, g, b)
    return colours


def write_palette_png(path, indices):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(indices.astype(np.uint8))  # mode L ...
    image.putpalette(palette().ravel().tolist())  # ... becomes mode P: indices + colour map
    image.save(path, format="PNG")


@dataclass
class MiniVoc:
    devkit: Path
    sbd: Path
    scribbles: Path
    splits: dict  # "train", "val", "sbd_train", "sbd_val" -> ids
    semantic: dict = field(default_factory=dict)  # id -> (H, W) uint8 as written (255 band)
    full_semantic: dict = field(default_factory=dict)  # id -> (H, W) without the band (SBD)
    boxes: dict = field(default_factory=dict)  # id -> (K, 5) (class, y0, x0, y1, x1), exclusive
    names: dict = field(default_factory=dict)  # id -> object class names of the XML
    scribble_lines: dict = field(default_factory=dict)  # id -> [(class, (N, 2) yx)]

    @property
    def voc_dir(self):
        return self.devkit / "VOC2012"

    @property
    def train_aug(self):
        """SBD train + SBD val + VOC train - VOC val, by set arithmetic."""
        s = self.splits
        return (set(s["sbd_train"]) | set(s["sbd_val"]) | set(s["train"])) - set(s["val"])


def _scene(rng, height, width, classes_colour):
    """An image with 1-3 objects; returns image, semantic, instance (no boundary band yet)."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.integers(40, 200, 3)
    gradient = (yy / height)[..., None] * rng.integers(-40, 40, 3)
    image = base + gradient + rng.normal(0, 6, (height, width, 3))
    semantic = np.zeros((height, width), np.uint8)
    instance = np.zeros((height, width), np.int32)
    count = int(rng.integers(1, 4))
    for k in range(1, count + 1):
        cls = int(rng.integers(1, len(CLASSES)))
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        ry, rx = rng.uniform(0.12, 0.3) * height, rng.uniform(0.12, 0.3) * width
        if rng.random() < 0.5:
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            mask = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        semantic[mask], instance[mask] = cls, k
        image[mask] = classes_colour[cls] + rng.normal(0, 8, (int(mask.sum()), 3))
    return np.clip(image, 0, 255).astype(np.uint8), semantic, instance


def _band(instance):
    """VOC's void band: pixels whose 3 x 3 neighbourhood holds two instance values."""
    high = ndimage.maximum_filter(instance, size=3)
    low = ndimage.minimum_filter(instance, size=3)
    return high != low


def _voc_xml(image_id, shape, boxes):
    height, width = shape
    objects = "".join(
        f"<object><name>{CLASSES[c]}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>0</difficult><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for c, y0, x0, y1, x1 in boxes
    )
    return (
        f"<annotation><folder>VOC2012</folder><filename>{image_id}.jpg</filename>"
        "<source><database>The VOC2007 Database</database></source>"
        f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
        f"<segmented>1</segmented>{objects}</annotation>\n"
    )


def _scribbles(semantic, instance):
    """One horizontal stroke through each instance and one through the background."""
    lines = []
    for k in np.unique(instance[instance > 0]):
        ys, xs = np.nonzero(instance == k)
        row = int(np.median(ys))
        cols = xs[ys == row]
        x0, x1 = int(cols.min()), int(cols.max())
        vertices = np.array([[row, x0], [row, (x0 + x1) / 2], [row, x1]], dtype=float)
        lines.append((int(semantic[ys[0], xs[0]]), vertices))
    free = (instance == 0).sum(axis=1)
    row = int(np.argmax(free))
    cols = np.flatnonzero(instance[row] == 0)
    lines.insert(0, (0, np.array([[row, cols.min()], [row, cols.max()]], dtype=float)))
    return lines


def _scribble_xml(image_id, lines):
    objects = "".join(
        f"<object><name>{CLASSES[c]}</name><polygon>"
        + "".join(f"<point><X>{x:g}</X><Y>{y:g}</Y></point>" for y, x in vertices)
        + "</polygon></object>"
        for c, vertices in lines
    )
    return f"<annotation><filename>{image_id}.jpg</filename>{objects}</annotation>\n"


def _sbd_mat(path, semantic):
    present = np.unique(semantic[semantic > 0]).astype(np.uint8)
    boundaries = np.empty(len(CLASSES) - 1, dtype=object)
    for c in range(1, len(CLASSES)):
        edge = _band((semantic == c).astype(np.int32)) & (semantic == c)
        boundaries[c - 1] = scipy.sparse.csc_matrix(edge)
    gtcls = {"Segmentation": semantic, "Boundaries": boundaries, "CategoriesPresent": present}
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"GTcls": gtcls})


def write_mini_voc(root, *, num_train=3, num_val=2, num_sbd=3, size=(48, 64), seed=0):
    """Write the miniature download under `root`; return what was written, as a `MiniVoc`.

    `size` is (H, W) of the first image; every second one is (W, H). Ids: VOC train
    ``2007_*``, VOC val ``2009_*``, SBD-only ``2008_*``. SBD's train list holds
    half the SBD-only images and the first VOC val image (which train_aug must drop); its val
    list the other half and the first VOC train image (a duplicate train_aug must not repeat).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    height, width = size
    colours = rng.integers(0, 256, (len(CLASSES), 3))
    train = [f"2007_{i:06d}" for i in range(1, num_train + 1)]
    val = [f"2009_{i:06d}" for i in range(1, num_val + 1)]
    sbd_only = [f"2008_{i:06d}" for i in range(1, num_sbd + 1)]
    splits = {
        "train": train,
        "val": val,
        "sbd_train": sbd_only[::2] + val[:1],
        "sbd_val": sbd_only[1::2] + train[:1],
    }
    voc = MiniVoc(root / "VOCdevkit", root / "SBD" / "dataset", root / "ScribbleSup", splits)
    sbd_ids = set(splits["sbd_train"]) | set(splits["sbd_val"])
    (voc.voc_dir / "JPEGImages").mkdir(parents=True, exist_ok=True)
    for number, image_id in enumerate(train + val + sbd_only):
        # every second image is portrait, as VOC mixes 500 x 375 and 375 x 500 photos
        shape = (height, width) if number % 2 == 0 else (width, height)
        image, semantic, instance = _scene(rng, *shape, colours)
        Image.fromarray(image).save(voc.voc_dir / "JPEGImages" / f"{image_id}.jpg", quality=95)
        found = ndimage.find_objects(instance)
        boxes = np.array(
            [
                (int(semantic[b][instance[b] == k + 1][0]), b[0].start, b[1].start, b[0].stop,
                 b[1].stop)
                for k, b in enumerate(found)
                if b is not None
            ],
            dtype=np.int64,
        ).reshape(-1, 5)  # fmt: skip
        voc.boxes[image_id] = boxes
        voc.names[image_id] = [CLASSES[c] for c in boxes[:, 0]]
        xml = voc.voc_dir / "Annotations" / f"{image_id}.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        xml.write_text(_voc_xml(image_id, shape, boxes))
        voc.full_semantic[image_id] = semantic
        if image_id in train or image_id in val:
            band = _band(instance)
            written = np.where(band, 255, semantic).astype(np.uint8)
            inst = np.where(band, 255, instance).astype(np.uint8)
            write_palette_png(voc.voc_dir / "SegmentationClass" / f"{image_id}.png", written)
            write_palette_png(voc.voc_dir / "SegmentationObject" / f"{image_id}.png", inst)
            voc.semantic[image_id] = written
        else:
            voc.semantic[image_id] = semantic
        if image_id in sbd_ids:
            _sbd_mat(voc.sbd / "cls" / f"{image_id}.mat", semantic)
        lines = _scribbles(semantic, instance)
        voc.scribble_lines[image_id] = lines
        voc.scribbles.mkdir(parents=True, exist_ok=True)
        (voc.scribbles / f"{image_id}.xml").write_text(_scribble_xml(image_id, lines))
    sets = voc.voc_dir / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "train.txt").write_text("".join(f"{i}\n" for i in train))
    (sets / "val.txt").write_text("".join(f"{i}\n" for i in val))
    (voc.sbd / "train.txt").write_text("".join(f"{i}\n" for i in splits["sbd_train"]))
    (voc.sbd / "val.txt").write_text("".join(f"{i}\n" for i in splits["sbd_val"]))
    return voc
