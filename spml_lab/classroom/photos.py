"""Bundled photos and their stored scribbles, for `one_image.segment` in the notebooks.

scikit-image ships a few photographs in its wheel (`skimage.data`), so nothing downloads.
``spml_lab/data_samples/scribbles/strokes.json`` (`STROKES`) holds strokes drawn on some of them
at 256 px on the longer side: per photo its class names, a brush radius and a list of
``[class, [[x, y], ...]]`` polylines. Strokes, not pixels, are stored: they are short to read
and review, and `scribbles` turns them into the label map a person's brush would have made.
"""

from __future__ import annotations

import json

import numpy as np
from scipy import ndimage
from skimage import data, draw, morphology, transform

from spml_lab.constants import IGNORE_INDEX
from spml_lab.data import labelio
from spml_lab.data.datasets import DATA_SAMPLES

__all__ = ["PHOTOS", "SIDE", "fit", "load", "photo", "stored", "stored_scribbles", "scribbles"]

# scikit-image's bundled colour photographs
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")
SIDE = 256  # the longer side the photos are used at (and the strokes drawn at)
STROKES = DATA_SAMPLES / "scribbles" / "strokes.json"


def photo(name, side=SIDE):
    """Return a bundled photo scaled to `side` px on its longer side.

    Parameters
    ----------
    name : str
        One of `PHOTOS`.
    side : int, optional

    Returns
    -------
    image : (H, W, 3) uint8 ndarray

    Examples
    --------
    >>> photo("chelsea").shape
    (170, 256, 3)
    """
    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; choose one of {PHOTOS}")
    return fit(getattr(data, name)()[..., :3], side)


def fit(image, side=SIDE):
    """Scale a picture to `side` px on its longer side, anti-aliased when it shrinks.

    Parameters
    ----------
    image : (H, W, 3) uint8 ndarray, or float ndarray in [0, 1]
    side : int, optional

    Returns
    -------
    image : (H', W', 3) uint8 ndarray
        ``max(H', W') == side``, the aspect ratio kept (to the pixel).

    Examples
    --------
    >>> fit(np.zeros((100, 400, 3), np.uint8), 64).shape
    (16, 64, 3)
    """
    if isinstance(side, bool) or not isinstance(side, int | np.integer) or side < 16:
        raise ValueError(f"side must be an integer >= 16 (pixels), got {side!r}")
    scale = side / max(image.shape[:2])
    size = tuple(max(1, round(s * scale)) for s in image.shape[:2])
    resized = transform.resize(image, size, anti_aliasing=scale < 1)  # floats in [0, 1]
    return np.round(resized * 255).astype(np.uint8)


def load(source, side=SIDE):
    """Return a bundled photo by name, or the user's photo from a file, at `side` px.

    Parameters
    ----------
    source : str or Path
        One of `PHOTOS`, or the path of a JPEG or PNG file (`labelio.read_image`: greyscale
        and CMYK files become RGB; a large JPEG is decoded at reduced size).
    side : int, optional
        Longer side in pixels (`fit`).

    Returns
    -------
    image : (H, W, 3) uint8 ndarray

    Raises
    ------
    FileNotFoundError
        If `source` is neither a bundled photo nor an existing file; the message lists both.
    ValueError
        If the file cannot be read as an image.
    """
    if str(source) in PHOTOS:
        return photo(str(source), side)
    try:
        return fit(labelio.read_image(source, max_side=side), side)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"{error}; source must be a file or one of the bundled photos {PHOTOS}"
        ) from None


def stored():
    """Return the stored strokes: photo name -> {"classes", "radius", "strokes"}."""
    return json.loads(STROKES.read_text())


def stored_scribbles(name, shape):
    """Return the stored strokes of a photo as a label map, at the photo's size.

    Parameters
    ----------
    name : str
        A photo with stored strokes (a key of `stored`).
    shape : (int, int)
        ``(H, W)`` of the photo, e.g. ``photo(name, side).shape[:2]``: strokes and brush are
        scaled from `SIDE`, the size they were drawn at.

    Returns
    -------
    labels : (H, W) uint8 ndarray
        Class ids where painted, 255 elsewhere (`scribbles`).

    Examples
    --------
    >>> labels = stored_scribbles("chelsea", (85, 128))
    >>> labels.shape, sorted(set(labels.ravel().tolist()))
    ((85, 128), [0, 1, 2, 255])
    """
    entries = stored()
    if name not in entries:
        raise ValueError(f"no stored strokes for {name!r}; photos with strokes: {sorted(entries)}")
    entry = entries[name]
    scale = max(shape) / SIDE
    strokes = [(c, [(x * scale, y * scale) for x, y in line]) for c, line in entry["strokes"]]
    # a brush of at least one pixel, so a thin stroke survives a small picture
    return scribbles(shape, strokes, max(1, round(entry["radius"] * scale)))


def scribbles(shape, strokes, radius):
    """Rasterise polylines into a label map, as a round brush of `radius` would paint them.

    Parameters
    ----------
    shape : (int, int)
        ``(H, W)`` of the picture.
    strokes : list of (int, list of (x, y))
        Class id and polyline of each stroke; later strokes paint over earlier ones.
    radius : int
        Brush radius in pixels.

    Returns
    -------
    labels : (H, W) uint8 ndarray
        Class ids where painted, 255 elsewhere.

    Examples
    --------
    >>> labels = scribbles((5, 7), [(1, [(1, 2), (5, 2)])], radius=0)
    >>> (labels == 1).sum(), labels[2, 1:6].tolist()
    (np.int64(5), [1, 1, 1, 1, 1])
    """
    out = np.full(shape, IGNORE_INDEX, np.uint8)
    brush = morphology.disk(radius).astype(bool)
    for label, points in strokes:  # a handful of strokes: drawing, not a hot path
        line = np.zeros(shape, bool)
        for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
            rows, cols = draw.line(int(y0), int(x0), int(y1), int(x1))
            keep = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
            line[rows[keep], cols[keep]] = True
        out[ndimage.binary_dilation(line, structure=brush)] = label
    return out
