"""Readers of the files a Pascal VOC download holds: masks, XML boxes, SBD ``.mat``, scribbles.

`voc.prepare_voc` turns these into the project's dataset layout; this module only reads and
checks one file at a time, and says which file is wrong when one is::

    VOC2012/JPEGImages/{id}.jpg            the photo
    VOC2012/SegmentationClass/{id}.png     palette PNG: class index per pixel, 255 = boundary
    VOC2012/SegmentationObject/{id}.png    palette PNG: instance index per pixel, 255 = boundary
    VOC2012/Annotations/{id}.xml           <object><name>cat</name><bndbox><xmin>..</xmin>...
    SBD cls/{id}.mat                       GTcls.Segmentation, (H, W) class map, no boundary
    ScribbleSup {id}.xml                   <object><name>cat</name><polygon><point><X>..</X>...

Every reader raises ``FileNotFoundError`` for a missing file and ``ValueError`` for one that
does not decode or holds what a VOC file cannot (a class index other than 0-20 and 255, an
unknown class name); the message starts with the file's path, and the exception carries it
as ``error.path``.

References
----------
.. [1] Everingham et al. "The PASCAL Visual Object Classes (VOC) Challenge", IJCV 2010; the
   development kit documents the XML schema and the 1-based, inclusive box coordinates.
.. [2] Hariharan et al. "Semantic Contours from Inverse Detectors", ICCV 2011 (SBD).
.. [3] Lin et al. "ScribbleSup: Scribble-Supervised Convolutional Networks for Semantic
   Segmentation", CVPR 2016.
"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.io
from scipy import ndimage
from skimage.draw import line
from skimage.morphology import disk

from spml_lab.constants import IGNORE_INDEX
from spml_lab.data.labelio import read_label_png

__all__ = [
    "VOC_CLASSES",
    "VocAnnotation",
    "bad_file",
    "about_file",
    "read_voc_mask",
    "read_voc_instances",
    "read_voc_xml",
    "read_sbd_mat",
    "read_scribble_xml",
    "draw_scribbles",
    "scribble_midpoints",
    "tag_label_map",
]

# the 21 classes of VOC's segmentation task, in the order of their palette indices
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
# VOC's boundary band in its PNGs (the file format); equal to IGNORE_INDEX, so the band reads
# as unlabelled in every label map written from them
VOID = 255
CLASS_IDS = {name: index for index, name in enumerate(VOC_CLASSES)}


class VocAnnotation(NamedTuple):
    """What a VOC ``Annotations/{id}.xml`` says about its image."""

    size: tuple  # (height, width) from <size>
    boxes: np.ndarray  # (K, 5) int64 rows (class, y0, x0, y1, x1), 0-based, end exclusive
    names: tuple  # the K object names, in file order


def bad_file(kind, path, reason):
    """Build the error of a bad input file: ``kind(f"{path}: {reason}")`` with ``.path`` set.

    Parameters
    ----------
    kind : type
        ``FileNotFoundError`` or ``ValueError``.
    path : str or Path
        The file at fault.
    reason : str
        What is wrong with it.

    Returns
    -------
    error : Exception
        To be raised.

    Examples
    --------
    >>> error = bad_file(ValueError, "a.png", "too small")
    >>> str(error), error.path
    ('a.png: too small', 'a.png')
    """
    error = kind(f"{path}: {reason}")
    error.path = str(path)
    return error


@contextlib.contextmanager
def about_file(path):
    """Mark a FileNotFoundError / ValueError raised inside as being about `path` (``.path``).

    Errors raised by other readers (`labelio`) name their file in the message already; this
    adds the attribute a bad-image report needs without rewording them.
    """
    try:
        yield
    except (FileNotFoundError, ValueError) as error:
        if getattr(error, "path", None) is None:
            error.path = str(path)
        raise


def _check_classes(label, path):
    """Raise unless every value of `label` is a VOC class (0-20) or the boundary 255."""
    values = np.unique(label)
    bad = values[(values >= len(VOC_CLASSES)) & (values != VOID)]
    if bad.size:
        raise bad_file(
            ValueError,
            path,
            f"palette indices {bad.tolist()} are outside the {len(VOC_CLASSES)} VOC classes "
            f"(0-{len(VOC_CLASSES) - 1}, and {VOID} for the boundary)",
        )


def read_voc_mask(path):
    """Read a ``SegmentationClass`` PNG by palette index and check its classes.

    Parameters
    ----------
    path : str or Path
        Palette (mode P) or greyscale PNG; the indices are read, never the colours.

    Returns
    -------
    label : (H, W) uint8 ndarray
        Class 0-20 per pixel, 255 on VOC's boundary band.

    Raises
    ------
    FileNotFoundError
        If the file is missing.
    ValueError
        If it does not decode, has colour channels, or holds an index other than 0-20, 255.
    """
    with about_file(path):
        label = read_label_png(path)
    _check_classes(label, path)
    return label


def read_voc_instances(path, semantic):
    """Read a ``SegmentationObject`` PNG: instance ids, 0 outside objects and on boundaries.

    Parameters
    ----------
    path : str or Path
        Palette PNG of instance indices (1..N, 0 background, 255 boundary).
    semantic : (H, W) uint8 ndarray
        The image's class map, to check the size against.

    Returns
    -------
    instance : (H, W) int64 ndarray
        Instance id per pixel, 0 = none (background and the 255 band).

    Raises
    ------
    FileNotFoundError, ValueError
        Missing or undecodable file, or a size other than `semantic`'s.
    """
    with about_file(path):
        instance = read_label_png(path).astype(np.int64)
    if instance.shape != semantic.shape:
        raise bad_file(
            ValueError,
            path,
            f"instance mask is {_hw(instance.shape)} but the class mask is {_hw(semantic.shape)}",
        )
    instance[instance == VOID] = 0
    return instance


def _text(element, tag, path):
    found = element.find(tag)
    if found is None or found.text is None or not found.text.strip():
        raise bad_file(ValueError, path, f"<{element.tag}> has no <{tag}>")
    return found.text.strip()


def _number(element, tag, path):
    text = _text(element, tag, path)
    try:
        return float(text)
    except ValueError:
        raise bad_file(ValueError, path, f"<{tag}> is not a number: {text!r}") from None


def _class_id(name, path):
    if name not in CLASS_IDS:
        raise bad_file(ValueError, path, f"unknown class name {name!r} (VOC has {VOC_CLASSES})")
    return CLASS_IDS[name]


def _parse(path):
    path = Path(path)
    if not path.is_file():
        raise bad_file(FileNotFoundError, path, "file not found")
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as error:
        raise bad_file(ValueError, path, f"XML does not parse ({error})") from error


def read_voc_xml(path):
    """Read the objects of a VOC ``Annotations`` XML file: their boxes and class names.

    Parameters
    ----------
    path : str or Path
        ``<annotation>`` with ``<size>`` and one ``<object>`` (``<name>``, ``<bndbox>``) per
        object.

    Returns
    -------
    annotation : VocAnnotation
        ``size`` (H, W), ``boxes`` (K, 5) rows ``(class, y0, x0, y1, x1)`` and ``names``.

    Raises
    ------
    FileNotFoundError
        If the file is missing.
    ValueError
        If it does not parse, lacks a field, or names a class VOC does not have.

    Notes
    -----
    VOC boxes are 1-based and inclusive (``xmin = 1`` is the first column); here they become
    0-based with exclusive ends (``x0 = xmin - 1``, ``x1 = xmax``), as `annotations.instance_boxes`
    writes them. All objects count, also those marked difficult or truncated: they are real
    objects of the image.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "a.xml"
    >>> _ = path.write_text("<annotation><size><width>8</width><height>6</height></size>"
    ...     "<object><name>cat</name><bndbox><xmin>2</xmin><ymin>1</ymin><xmax>5</xmax>"
    ...     "<ymax>3</ymax></bndbox></object></annotation>")
    >>> read_voc_xml(path).boxes.tolist()
    [[8, 0, 1, 3, 5]]
    """
    root = _parse(path)
    size = root.find("size")
    if size is None:
        raise bad_file(ValueError, path, "<annotation> has no <size>")
    shape = (int(_number(size, "height", path)), int(_number(size, "width", path)))
    rows, names = [], []
    for obj in root.findall("object"):
        name = _text(obj, "name", path)
        box = obj.find("bndbox")
        if box is None:
            raise bad_file(ValueError, path, f"object {name!r} has no <bndbox>")
        x0, y0, x1, y1 = (_number(box, tag, path) for tag in ("xmin", "ymin", "xmax", "ymax"))
        rows.append((_class_id(name, path), round(y0) - 1, round(x0) - 1, round(y1), round(x1)))
        names.append(name)
    return VocAnnotation(shape, np.array(rows, dtype=np.int64).reshape(-1, 5), tuple(names))


def read_sbd_mat(path):
    """Read an SBD ``cls/{id}.mat`` file: the class map of ``GTcls.Segmentation``.

    Parameters
    ----------
    path : str or Path
        A MATLAB file holding the struct ``GTcls`` (``Segmentation``, ``Boundaries``,
        ``CategoriesPresent``).

    Returns
    -------
    label : (H, W) uint8 ndarray
        Class 0-20 per pixel (SBD has no boundary band).

    Raises
    ------
    FileNotFoundError, ValueError
        Missing file, a file scipy cannot read, no ``GTcls.Segmentation``, or classes > 20.
    """
    path = Path(path)
    if not path.is_file():
        raise bad_file(FileNotFoundError, path, "file not found")
    try:
        mat = scipy.io.loadmat(path, struct_as_record=False, squeeze_me=True)
    except (
        scipy.io.matlab.MatReadError,
        ValueError,
        TypeError,
        OSError,
        NotImplementedError,
    ) as error:
        raise bad_file(ValueError, path, f"not a readable .mat file ({error})") from error
    segmentation = getattr(mat.get("GTcls"), "Segmentation", None)
    if segmentation is None or np.ndim(segmentation) != 2:
        raise bad_file(ValueError, path, "holds no GTcls.Segmentation (H, W) class map")
    segmentation = np.asarray(segmentation)
    if segmentation.dtype.kind not in "biu" or segmentation.min() < 0:
        raise bad_file(ValueError, path, "GTcls.Segmentation is not a map of class indices")
    _check_classes(segmentation, path)
    return segmentation.astype(np.uint8)


def read_scribble_xml(path):
    """Read a ScribbleSup XML file: one polyline per scribble, with its class.

    Parameters
    ----------
    path : str or Path
        ``<annotation>`` with one ``<object>`` per scribble: ``<name>`` (a VOC class or
        ``background``) and ``<polygon>`` of ``<point><X>..</X><Y>..</Y></point>`` vertices.

    Returns
    -------
    scribbles : list of (int, (N, 2) float ndarray)
        Class id and the (y, x) vertices of each scribble, in file order.

    Raises
    ------
    FileNotFoundError, ValueError
        Missing file, XML that does not parse, an unknown class name or a bad vertex.
    """
    root = _parse(path)
    scribbles = []
    for obj in root.findall("object"):
        label = _class_id(_text(obj, "name", path), path)
        points = obj.findall("polygon/point")
        if not points:
            raise bad_file(ValueError, path, "a scribble <object> has no <polygon><point>")
        yx = [(_number(p, "Y", path), _number(p, "X", path)) for p in points]
        scribbles.append((label, np.array(yx, dtype=np.float64)))
    return scribbles


def _polyline_mask(vertices, shape):
    """(H, W) bool: the 1-px polyline through `vertices` (N, 2) (y, x), clipped to the image."""
    mask = np.zeros(shape, dtype=bool)
    # annotators' strokes run over the border now and then: clamp them onto the image
    yx = np.clip(np.rint(vertices), 0, np.array(shape) - 1).astype(np.int64)
    mask[yx[:, 0], yx[:, 1]] = True  # a one-vertex scribble is a dot
    for (y0, x0), (y1, x1) in zip(yx[:-1], yx[1:], strict=True):  # a few dozen segments
        rows, cols = line(y0, x0, y1, x1)
        mask[rows, cols] = True
    return mask


def draw_scribbles(scribbles, shape, radius=3):
    """Draw scribbles as polylines widened by a disc: ScribbleSup's ``dilate_3`` label maps.

    Parameters
    ----------
    scribbles : list of (int, (N, 2) float ndarray)
        From `read_scribble_xml`.
    shape : (int, int)
        The image's (H, W).
    radius : int, optional
        Disc radius of the dilation; 3 as SPML's ``scribble/dilate_3`` files (read as a disc
        radius, like `annotations.weak_labels`'s `radius`); 0 keeps 1-px lines.

    Returns
    -------
    labels : (H, W) uint8 ndarray
        Scribble class per pixel, 255 = unlabelled.

    Notes
    -----
    Background scribbles are drawn first and object scribbles over them, so a thin object
    stroke next to a background stroke keeps its pixels. Scribbles are human marks: they are
    never clipped to a ground-truth mask.

    Examples
    --------
    >>> labels = draw_scribbles([(1, np.array([[1.0, 1.0], [1.0, 4.0]]))], (3, 6), radius=0)
    >>> labels.tolist()
    [[255, 255, 255, 255, 255, 255], [255, 1, 1, 1, 1, 255], [255, 255, 255, 255, 255, 255]]
    """
    out = np.full(shape, IGNORE_INDEX, dtype=np.uint8)
    footprint = disk(radius).astype(bool) if radius > 0 else None
    for label in sorted({label for label, _ in scribbles}):  # background (0) first
        mask = np.zeros(shape, dtype=bool)
        for other, vertices in scribbles:
            if other == label:
                mask |= _polyline_mask(vertices, shape)
        if footprint is not None:
            mask = _dilate(mask, footprint, radius)
        out[mask] = label
    return out


def _dilate(mask, footprint, radius):
    """Binary dilation of `mask` (H, W) by `footprint`, computed only around its pixels.

    One dilation per class, not per stroke, and within the strokes' bounding box grown by
    `radius`: a point's disc costs a 13 x 13 window instead of the whole image.
    """
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return mask
    y0, x0 = max(rows.min() - radius, 0), max(cols.min() - radius, 0)
    y1, x1 = rows.max() + radius + 1, cols.max() + radius + 1
    out = mask.copy()
    window = (slice(y0, y1), slice(x0, x1))
    out[window] = ndimage.binary_dilation(mask[window], structure=footprint)
    return out


def scribble_midpoints(scribbles):
    """Each scribble shortened to its middle point: the vertex list of SPML's 0 % scribbles.

    Parameters
    ----------
    scribbles : list of (int, (N, 2) float ndarray)
        From `read_scribble_xml`.

    Returns
    -------
    points : list of (int, (1, 2) float ndarray)
        Class and the (y, x) point halfway along each polyline (by arc length), in the form
        `draw_scribbles` takes.

    Examples
    --------
    >>> scribble_midpoints([(3, np.array([[0.0, 0.0], [0.0, 2.0], [4.0, 2.0]]))])[0][1].tolist()
    [[1.0, 2.0]]
    """
    points = []
    for label, vertices in scribbles:
        steps = np.linalg.norm(np.diff(vertices, axis=0), axis=1)  # (N - 1,) segment lengths
        along = np.concatenate([[0.0], np.cumsum(steps)])  # (N,) arc length at each vertex
        half = along[-1] / 2
        middle = [np.interp(half, along, vertices[:, k]) for k in range(2)]
        points.append((label, np.array([middle])))
    return points


def tag_label_map(tags, shape):
    """Encode image tags as a label map whose set of values is the tags.

    The project's ``tags`` annotation derives an image's tags from the values of the map its
    list names and blanks the pixels (`datasets.SegmentationList`, ``tags_only``); VOC's tags
    come from the XML file, not from a mask, so they are written as this map: the first
    pixels in raster order hold the tagged classes, all others 255.

    Parameters
    ----------
    tags : iterable of int
        Class ids; duplicates are dropped.
    shape : (int, int)
        The image's (H, W); needs at least as many pixels as tags.

    Returns
    -------
    labels : (H, W) uint8 ndarray

    Examples
    --------
    >>> tag_label_map([15, 0, 15], (2, 3)).tolist()
    [[0, 15, 255], [255, 255, 255]]
    """
    classes = sorted(set(int(t) for t in tags))
    out = np.full(shape, IGNORE_INDEX, dtype=np.uint8)
    out.flat[: len(classes)] = classes
    return out


def _hw(shape):
    return f"{shape[0]} x {shape[1]} (H x W)"
