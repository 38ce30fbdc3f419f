"""Appearance for the synthetic scenes: texture bank, colours, textured patches, backgrounds.

A texture is a grey-level pattern in [0, 1] that modulates a colour (`textured_patch`).

Every texture is a stack of `VARIANTS` square images (`BANK_SIZE` pixels on a side) made once
and cached for the life of the process, so drawing a texture for an object is just a crop. The
bank is built from a fixed seed, so it is the same on every machine and in every call; which
variant and which crop an object gets is chosen by the caller's random generator.

The textures (orientation random per variant):

=========  ====================================================================
flat       constant 1: no modulation (colour only)
stripes    parallel bars, period 5-9 px, any angle
dots       dark dots on a rotated grid, period 7-10 px
checks     a rotated checkerboard, squares of 5-8 px
noise      smoothed Gaussian noise (blotches of 2-4 px)
brick      crops of ``skimage.data.brick()``, scaled by 0.25-0.35 (bricks ~5 x 12 px)
grass      crops of ``skimage.data.grass()``, scaled by 0.4-0.6
gravel     crops of ``skimage.data.gravel()``, scaled by 0.35-0.5
=========  ====================================================================

The three photographic textures ship with scikit-image (no download). The functions after the
bank draw everything from a caller's ``np.random.Generator``, so scenes stay reproducible.

>>> from spml_lab.data import textures
>>> patch = textures.crop("stripes", variant=0, top=3, left=5, height=20, width=30)
>>> patch.shape, patch.dtype, bool(0.0 <= patch.min() <= patch.max() <= 1.0)
((20, 30), dtype('float32'), True)
"""

from __future__ import annotations

import colorsys
import functools

import numpy as np
from scipy import ndimage

__all__ = [
    "BANK_SIZE",
    "HUES",
    "TEXTURES",
    "VARIANTS",
    "bank",
    "camera",
    "cluttered_background",
    "crop",
    "sample_colour",
    "textured_patch",
]

TEXTURES = ("flat", "stripes", "dots", "checks", "noise", "brick", "grass", "gravel")
BANK_SIZE = 256
VARIANTS = 8
_BANK_SEED = 20210301  # fixed: the bank is part of the dataset definition, not of a call's seed


def _stretch(image):
    """Map the 2nd..98th percentile of ``image`` to [0, 1] and clip."""
    lo, hi = np.percentile(image, [2, 98])
    return np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)


def _rotated_coords(rng, size):
    angle = rng.uniform(0, np.pi)
    y, x = np.mgrid[:size, :size].astype(np.float32)
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    return u, v


def _procedural(name, rng, size):
    if name == "flat":
        return np.ones((size, size), np.float32)
    if name == "noise":
        field = ndimage.gaussian_filter(rng.standard_normal((size, size)), rng.uniform(1.0, 2.0))
        return _stretch(field)
    u, v = _rotated_coords(rng, size)
    if name == "stripes":
        period = rng.uniform(5, 9)
        # a softened square wave: crisp bars that still look like bars after nearest sampling
        return np.clip(2.5 * np.cos(2 * np.pi * u / period), -1, 1) * 0.5 + 0.5
    if name == "dots":
        period = rng.uniform(7, 10)
        radius = rng.uniform(0.28, 0.36) * period
        du = (u % period) - period / 2
        dv = (v % period) - period / 2
        return (du * du + dv * dv > radius * radius).astype(np.float32)
    if name == "checks":
        period = rng.uniform(5, 8)
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    raise ValueError(f"unknown procedural texture {name!r}")


# zoom of each photograph: fine enough that a 15 px object shows a few bricks or stones
_PHOTO_SCALES = {"brick": (0.25, 0.35), "grass": (0.4, 0.6), "gravel": (0.35, 0.5)}


def _photographic(name, rng, size):
    from skimage import data
    from skimage.transform import rescale

    image = getattr(data, name)().astype(np.float32) / 255
    image = rescale(image, rng.uniform(*_PHOTO_SCALES[name]), anti_aliasing=True, order=1)
    image = np.rot90(image, rng.integers(4))
    if rng.random() < 0.5:
        image = image[:, ::-1]
    short = size - min(image.shape)
    if short > 0:
        image = np.pad(image, ((0, short), (0, short)), mode="reflect")
    top = rng.integers(image.shape[0] - size + 1)
    left = rng.integers(image.shape[1] - size + 1)
    return _stretch(image[top : top + size, left : left + size])


@functools.lru_cache(maxsize=1)
def bank():
    """Return the cached texture bank: ``{name: (VARIANTS, BANK_SIZE, BANK_SIZE) float32}``.

    Values lie in [0, 1]; 1 is the full colour, 0 the darkest shade. Built on first use (well
    under a second) and then shared; treat the arrays as read-only.
    """
    rng = np.random.default_rng(_BANK_SEED)
    out = {}
    for name in TEXTURES:
        make = _photographic if name in ("brick", "grass", "gravel") else _procedural
        stack = np.stack([make(name, rng, BANK_SIZE) for _ in range(VARIANTS)])
        stack = stack.astype(np.float32)
        stack.flags.writeable = False
        out[name] = stack
    return out


def crop(name, variant, top, left, height, width):
    """Return a ``(height, width)`` window of texture ``name``, wrapping around the bank's edges.

    ``variant`` picks one of the ``VARIANTS`` images, ``top`` and ``left`` the window's corner
    (taken modulo ``BANK_SIZE``). Windows that fit are plain slices (no copy); others wrap.
    """
    if name not in TEXTURES:
        raise ValueError(f"unknown texture {name!r}; choose from {TEXTURES}")
    image = bank()[name][variant % VARIANTS]
    top, left = top % BANK_SIZE, left % BANK_SIZE
    if top + height <= BANK_SIZE and left + width <= BANK_SIZE:
        return image[top : top + height, left : left + width]
    rows = (top + np.arange(height)) % BANK_SIZE
    cols = (left + np.arange(width)) % BANK_SIZE
    return image[np.ix_(rows, cols)]


# ---------------------------------------------------------------------------------------------
# Colours, textured patches, cluttered backgrounds, camera effects
# ---------------------------------------------------------------------------------------------

# Hue (0..1) of each colour name; "grey" is unsaturated.
HUES = {
    "red": 0.0,
    "orange": 0.075,
    "yellow": 0.15,
    "green": 0.33,
    "cyan": 0.5,
    "blue": 0.62,
    "purple": 0.76,
    "pink": 0.88,
    "grey": None,
}


def sample_colour(rng, name, saturation, value, hue_jitter=0.0):
    """Draw an RGB float32 colour of hue ``name`` (a key of `HUES`) from the given ranges."""
    s, v = rng.uniform(*saturation), rng.uniform(*value)
    if HUES[name] is None:
        return np.full(3, v, np.float32)
    h = (HUES[name] + rng.uniform(-hue_jitter, hue_jitter)) % 1.0
    return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32)


def textured_patch(rng, rgb, texture, contrast, height, width):
    """Return a (height, width, 3) patch of colour ``rgb`` shaded by a random crop of ``texture``.

    Where the texture is 1 the patch has the full colour, where it is 0 the colour darkened by
    ``contrast`` (0 = no texture, 1 = black).
    """
    t = _random_crop(rng, texture, height, width)
    return (1 - contrast * (1 - t))[..., None] * rgb


def _random_crop(rng, texture, height, width):
    top = rng.integers(max(BANK_SIZE - height, 0) + 1)
    left = rng.integers(max(BANK_SIZE - width, 0) + 1)
    return crop(texture, rng.integers(VARIANTS), top, left, height, width)


def cluttered_background(rng, size, difficulty, avoid_looks=()):
    """Paint a (size, size, 3) float background: a pale gradient, plus clutter with difficulty.

    With ``difficulty`` d > 0, 2 to 2 + 4d regions with organic (sine-warped Voronoi) borders
    are laid over the gradient with weight min(1, 1.3d), each a random hue (saturation up to
    0.15 + 0.75d) shaded by a random texture. ``avoid_looks`` holds (colour, texture) pairs the
    regions never wear (the object classes' own), so an object never vanishes into a region that
    looks exactly like it.
    """
    d = difficulty
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    t = (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle) + 0.5
    c1, c2 = (sample_colour(rng, rng.choice(list(HUES)), (0, 0.3), (0.55, 0.95)) for _ in range(2))
    image = c1 + (c2 - c1) * np.clip(t, 0, 1)[..., None]
    if d <= 0:
        return image
    regions = int(rng.integers(2, 3 + round(4 * d)))
    ramp = np.arange(size, dtype=np.float32) / size
    seeds = rng.uniform(0, 1, (regions, 2, 1)).astype(np.float32)  # (y, x), image widths
    # distance to each region's seed, warped by three low-frequency waves per region (organic
    # borders); sin(a + b) = sin(a) cos(b) + cos(a) sin(b) makes the waves one small matmul
    fy, fx = (
        rng.uniform(3, 10, (regions, 3, 1)) * rng.choice([-1, 1], (regions, 3, 1)) for _ in "yx"
    )
    a, b = fy * ramp + rng.uniform(0, 2 * np.pi, (regions, 3, 1)), fx * ramp
    rows = np.concatenate([np.sin(a), np.cos(a)], 1).astype(np.float32)  # (regions, 6, size)
    cols = np.concatenate([np.cos(b), np.sin(b)], 1).astype(np.float32)
    waves = rows.transpose(0, 2, 1) @ cols  # (regions, size, size)
    dy2, dx2 = (ramp - seeds[:, 0]) ** 2, (ramp - seeds[:, 1]) ** 2
    label = (np.sqrt(dy2[:, :, None] + dx2[:, None, :]) + 0.08 * waves).argmin(0)
    shade = np.empty((size, size), np.float32)
    rgb = np.empty((regions, 3), np.float32)
    for k in range(regions):
        while True:
            hue, texture = rng.choice(list(HUES)), rng.choice(TEXTURES)
            if (hue, texture) not in avoid_looks:
                break
        rgb[k] = sample_colour(rng, hue, (0.1, 0.15 + 0.75 * d), (0.35, 0.95))
        contrast, inside = rng.uniform(0.25, 0.65), label == k
        shade[inside] = 1 - contrast * (1 - _random_crop(rng, texture, size, size)[inside])
    alpha = min(1.0, 1.3 * d)
    return image * (1 - alpha) + (alpha * rgb)[label] * shade[..., None]


def camera(rng, image, difficulty):
    """Apply an illumination ramp (+-25d %) and pixel noise (sigma 0.06d); quantise to uint8."""
    d = difficulty
    if d > 0:
        size = image.shape[0]
        ramp = np.linspace(-1, 1, size, dtype=np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        light = 1 + 0.25 * d * (ramp[None, :] * np.cos(angle) + ramp[:, None] * np.sin(angle))
        image = image * light[..., None]
        image = image + (0.06 * d) * rng.standard_normal(image.shape, dtype=np.float32)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
