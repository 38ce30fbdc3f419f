"""Label and id-map PNG files: the VOC palette, 8-bit label maps, 16-bit and colour-coded id maps.

Two kinds of single-image maps travel through SPML's files:

* **label maps**: one class index per pixel, 255 = unlabelled; single-channel 8-bit PNG, either
  greyscale (mode ``L``, as SPML's ``segcls``) or palette (mode ``P``, as VOC's
  ``SegmentationClass``, which shows colours in an image viewer but stores indices).
* **id maps** (superpixels, instances): any number of ids; 16-bit greyscale PNG here, 8-bit
  greyscale in SPML's ``hed`` folder, or 3-channel colour-coded PNG (id = 65536 R + 256 G + B)
  as some over-segmentation tools write them.

Every reader raises ``ValueError`` naming the file when it cannot be decoded or holds the wrong
kind of map, so a dataset never trains on a silently misread file.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from spml_lab import checks

__all__ = [
    "voc_palette",
    "write_label_png",
    "read_label_png",
    "write_id_png",
    "read_id_png",
    "read_image",
    "image_size",
]

_PILLOW_GUARD = threading.Lock()  # see _open_photo


def voc_palette(num=256):
    """Return the PASCAL VOC colour map: class ``k`` gets colour ``palette[k]``.

    Bits of the class index are spread over the high bits of R, G and B (bit 0 to R, bit 1 to G,
    bit 2 to B, then the next three bits one position lower), so neighbouring indices get
    clearly different colours; 0 is black and 255 is VOC's cream "void" colour.

    Parameters
    ----------
    num : int, optional
        Number of colours, at most 256.

    Returns
    -------
    palette : (num, 3) uint8 ndarray
        RGB colour of each index.

    Examples
    --------
    >>> voc_palette(4).tolist()
    [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    >>> voc_palette()[255].tolist()
    [224, 224, 192]
    """
    if not 0 < num <= 256:
        raise ValueError(f"num must lie in [1, 256], got {num}")
    index = np.arange(num)
    palette = np.zeros((num, 3), dtype=np.int64)
    for shift in range(8):  # three bits of the index per round, from the top bit of each channel
        for channel in range(3):
            palette[:, channel] |= ((index >> (3 * shift + channel)) & 1) << (7 - shift)
    return palette.astype(np.uint8)


def write_label_png(path, label, palette=True):
    """Write a label map as a single-channel 8-bit PNG.

    Parameters
    ----------
    path : str or Path
        Output file (parent folders are created).
    label : (H, W) int ndarray
        Class index per pixel in ``[0, 255]``; 255 = unlabelled.
    palette : bool, optional
        Write mode ``P`` with the VOC palette (viewers show colours, readers get indices);
        otherwise plain greyscale (mode ``L``).

    Raises
    ------
    ValueError
        If `label` is not 2-D integer data within ``[0, 255]``.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"{path}: a label map must be 2-D (H, W), got shape {label.shape}")
    if label.dtype.kind not in "biu":
        raise ValueError(f"{path}: a label map must hold integers, got dtype {label.dtype}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(
            f"{path}: label values must lie in [0, 255], got [{label.min()}, {label.max()}]"
        )
    image = Image.fromarray(label.astype(np.uint8))  # mode "L"
    if palette:
        image.putpalette(voc_palette(256).ravel().tolist())  # turns it into mode "P"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")


def write_id_png(path, ids, *, rgb=False):
    """Write an id map (superpixels, instances) as a 16-bit or colour-coded PNG.

    Parameters
    ----------
    path : str or Path
        Output file (parent folders are created).
    ids : (H, W) int ndarray
        Non-negative ids; below 65536 for 16-bit, below 2**24 with ``rgb=True``.
    rgb : bool, optional
        Write 3 x 8 bits as R, G, B with ``id = 65536 R + 256 G + B`` instead of 16-bit grey.

    Raises
    ------
    ValueError
        If `ids` is not 2-D integer data or its values do not fit the format.
    """
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.dtype.kind not in "biu":
        raise ValueError(f"{path}: an id map must be 2-D integers, got {ids.dtype} {ids.shape}")
    limit = 2**24 if rgb else 2**16
    if ids.size and (ids.min() < 0 or ids.max() >= limit):
        raise ValueError(
            f"{path}: ids must lie in [0, {limit}) for this format, got "
            f"[{ids.min()}, {ids.max()}]" + ("" if rgb else "; use rgb=True for larger ids")
        )
    if rgb:
        ids = ids.astype(np.int64)
        channels = np.stack([ids >> 16, (ids >> 8) & 255, ids & 255], axis=-1)
        image = Image.fromarray(channels.astype(np.uint8))  # mode "RGB"
    else:
        image = Image.fromarray(ids.astype(np.uint16))  # mode "I;16": 16-bit greyscale PNG
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")


def _open(path):
    """Open and decode an image file, turning every decoding failure into a ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()  # Pillow decodes lazily; force it so truncated files fail here
            return image.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as error:  # fmt: skip
        raise ValueError(f"{path}: cannot read image ({error})") from error


def _single_channel(image, path):
    """Pixel values of a single-channel image (palette images give their indices)."""
    if image.mode in ("L", "P"):
        return np.asarray(image, dtype=np.uint8)
    if image.mode == "1":
        return np.asarray(image, dtype=np.uint8)
    if image.mode.startswith("I"):  # "I;16", "I;16B", "I" (32-bit)
        return np.asarray(image).astype(np.int64)
    raise ValueError(f"{path}: expected a single-channel PNG, got mode {image.mode!r}")


def read_label_png(path):
    """Read a label map: class indices, 255 = unlabelled.

    Palette PNGs (VOC ``SegmentationClass``) and greyscale PNGs (SPML ``segcls``) both give their
    stored indices; a 16-bit PNG is accepted when its values fit in 8 bits.

    Parameters
    ----------
    path : str or Path
        A single-channel PNG.

    Returns
    -------
    label : (H, W) uint8 ndarray
        Class index per pixel.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it cannot be decoded, has colour channels, or holds values above 255.
    """
    image = _open(path)
    if image.mode in ("RGB", "RGBA"):
        raise ValueError(
            f"{path}: label map has colour channels (mode {image.mode}); labels must be "
            "single-channel class indices (mode L or P, e.g. written by write_label_png)"
        )
    values = _single_channel(image, path)
    if values.dtype != np.uint8:
        if values.size and (values.min() < 0 or values.max() > 255):
            raise ValueError(
                f"{path}: label map holds values up to {values.max()}; labels must lie in "
                "[0, 255] (255 = unlabelled)"
            )
        values = values.astype(np.uint8)
    return values


def read_id_png(path):
    """Read an id map: 8-bit or 16-bit grey, palette, or colour-coded RGB.

    Parameters
    ----------
    path : str or Path
        A PNG of superpixel or instance ids.

    Returns
    -------
    ids : (H, W) int64 ndarray
        The stored value per pixel; for 3-channel images ``65536 R + 256 G + B``, so every
        distinct colour is a distinct id.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it cannot be decoded or has a mode other than grey, palette or RGB.
    """
    image = _open(path)
    if image.mode == "RGB":
        rgb = np.asarray(image).astype(np.int64)
        return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    return _single_channel(image, path).astype(np.int64)


def _pixel_limit(max_pixels):
    """Return the most pixels a photo may have: `max_pixels`, else 2 x Pillow's limit."""
    if max_pixels is not None:
        return checks.in_range("max_pixels", max_pixels, 1)
    # Pillow's own refusal threshold (178,956,970 pixels unless a user changed it); None = off
    return None if Image.MAX_IMAGE_PIXELS is None else 2 * Image.MAX_IMAGE_PIXELS


def _open_photo(path, max_pixels):
    """Open a photo lazily (header only) and refuse it when it has more pixels than the limit.

    Pillow's own decompression-bomb guard is off while the header is read, so the limit
    checked here is the only one, and its message names the file and how to raise it.
    """
    path = Path(path)
    limit = _pixel_limit(max_pixels)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        with _PILLOW_GUARD:  # one thread at a time turns Pillow's global guard off and back on
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                image = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"{path}: cannot read image ({error})") from error
    width, height = image.size
    if limit is not None and width * height > limit:
        image.close()
        raise ValueError(
            f"{path}: {width} x {height} = {width * height:,} pixels, more than the limit of "
            f"{limit:,} (a guard against decompression bombs, files that unpack to gigabytes); "
            "if you trust the file, raise it with `spml-lab predict --max-pixels N`, "
            "read_image(..., max_pixels=N) or PIL.Image.MAX_IMAGE_PIXELS = N // 2"
        )
    return image


def image_size(path, *, max_pixels=None):
    """Height and width of a photo, read from its header (no pixel is decoded).

    Parameters
    ----------
    path : str or Path
        Image file.
    max_pixels : int, optional
        Refuse images with more pixels, as `read_image` does.

    Returns
    -------
    size : (int, int)
        ``(H, W)``, the size `read_image` gives without `max_side`.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If its header cannot be read or it has more than `max_pixels` pixels.
    """
    with _open_photo(path, max_pixels) as image:
        return image.height, image.width


def read_image(path, *, max_side=None, max_pixels=None):
    """Read a photo (JPEG, PNG) as RGB floats in [0, 1], optionally decoded at reduced size.

    Parameters
    ----------
    path : str or Path
        Image file; greyscale and CMYK images are converted to RGB, and 16-bit greyscale
        images are scaled by 1 / 65535 (Pillow's own conversion would clip them to white).
    max_side : int, optional
        The caller needs only this many pixels on the longer side: a larger photo is reduced
        by an integer factor to between `max_side` and ``2 * max_side`` (about) on its longer
        side. JPEGs are decoded at 1/2, 1/4 or 1/8 scale by libjpeg (`PIL.Image.Image.draft`),
        so their full-size pixels never exist in memory; other formats are decoded at full
        size and averaged over blocks (`PIL.Image.Image.reduce`). None: the full size.
    max_pixels : int, optional
        Refuse images with more pixels than this before decoding them (a guard against
        decompression bombs). Default: twice ``PIL.Image.MAX_IMAGE_PIXELS``, Pillow's own
        refusal threshold (178,956,970 pixels unless changed; no limit when it is None).

    Returns
    -------
    image : (H, W, 3) float32 ndarray
        RGB values in [0, 1]; the full size, or the reduced one with `max_side`.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it cannot be decoded, has more than `max_pixels` pixels, or holds values no photo
        has (32-bit integers above 65535, floating-point pixels): the message names the file
        and what is wrong.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "wide.png"
    >>> Image.new("RGB", (1000, 300), (255, 0, 0)).save(path)
    >>> read_image(path).shape, read_image(path, max_side=256).shape
    ((300, 1000, 3), (100, 334, 3))
    """
    if max_side is not None:
        checks.in_range("max_side", max_side, 1)
    with _open_photo(path, max_pixels) as image:
        factor = 1 if max_side is None else max(image.size) // max_side
        if factor >= 2:  # JPEG only (a no-op elsewhere): libjpeg scales by the largest of
            # 1/2, 1/4, 1/8 that keeps at least the requested size, i.e. at most `factor`
            image.draft(None, (-(-image.width // factor), -(-image.height // factor)))
        try:
            image.load()  # Pillow decodes lazily; force it so truncated files fail here
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise ValueError(f"{path}: cannot read image ({error})") from error
        # what is left after JPEG's scaled decoding: block means (integer factor, no blur)
        factor = 1 if max_side is None else max(image.size) // max_side
        if image.mode.startswith("I") or image.mode == "F":  # "I;16", "I;16B", "I", "F"
            values = np.asarray(image)
            low, high = values.min(initial=0), values.max(initial=0)
            if image.mode == "F" or low < 0 or high > 65535:
                raise ValueError(
                    f"{path}: pixels of mode {image.mode!r} (range {low:g} to {high:g}) are "
                    "not an 8- or 16-bit photo; convert it to 8-bit RGB"
                )
            grey = values.astype(np.float32) / 65535.0
            if factor >= 2:  # Pillow cannot reduce 16-bit modes; their float copy it can
                grey = np.asarray(Image.fromarray(grey).reduce(factor))
            return np.repeat(grey[..., None], 3, axis=-1)
        if image.mode not in ("L", "RGB"):  # palette indices, alpha, CMYK: colours first
            image = image.convert("RGB")
        if factor >= 2:
            image = image.reduce(factor)
        rgb = np.asarray(image.convert("RGB") if image.mode != "RGB" else image, np.float32)
    rgb /= 255.0  # in place: no second full-size copy
    return rgb
