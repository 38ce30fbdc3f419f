"""Procedural scenes with exact labels: textured objects, and figures made of look-alike parts.

Two kinds of scene, both deterministic by ``seed`` and vectorised with numpy (each image is drawn
with its own generator ``np.random.default_rng([seed, index])``, so ``generate(10)`` is exactly
the first ten images of ``generate(100)``):

``"objects"``
    One to four objects of eight classes over a cluttered background. A class is the conjunction
    of a shape, a colour and a texture (table below); every class shares two of its three cues
    with a partner, so no single cue identifies it. Distractor shapes (class 0, background) draw
    from the same cue vocabulary, many of them one cue away from a real class (but never
    indistinguishable from one); background regions wear the same colours and textures.
    Classes co-occur: most images are drawn from one of the ``SCENE_TYPES`` pairs, which the
    semantic co-occurrence relation can learn.
``"parts"``
    One to three stick figures made of head, torso, upper/lower arms and upper/lower legs.
    Upper and lower limbs wear the same colour and texture (sampled once per limb), so only
    position and context tell them apart -- DensePose in miniature.

Objects classes (id, name, shape, colour, texture)::

    1  red_disc      ellipse    red     stripes   } differ by shape only
    2  red_star      star       red     stripes   }
    3  checked_box   rectangle  blue    checks    } differ by texture only
    4  dotted_box    rectangle  blue    dots      }
    5  green_wedge   triangle   green   grass     } differ by colour only
    6  yellow_wedge  triangle   yellow  grass     }
    7  brick_ring    ring       green   brick     } differ by shape only
    8  brick_cross   cross      green   brick     }

>>> from spml_lab.data import synthetic
>>> scenes = synthetic.generate(2, kind="objects", size=96, seed=0)
>>> scenes.images.shape, scenes.semantic.dtype, scenes.instance.dtype, len(scenes)
((2, 96, 96, 3), dtype('uint8'), dtype('int32'), 2)
>>> scenes.class_names[:3]
['background', 'red_disc', 'red_star']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from spml_lab.data import textures

__all__ = [
    "CLASS_CUES",
    "OBJECT_CLASSES",
    "PART_CLASSES",
    "PART_LOOKS",
    "SCENE_TYPES",
    "Scenes",
    "cooccurrence",
    "generate",
    "shared_cues",
]

# ---------------------------------------------------------------------------------------------
# Tables: what the classes look like
# ---------------------------------------------------------------------------------------------

CLASS_SHAPES = ("ellipse", "rectangle", "triangle", "star", "ring", "cross")
DISTRACTOR_SHAPES = CLASS_SHAPES + ("blob", "bar", "hexagon")

# fmt: off
OBJECT_CLASSES = (
    # name           shape        colour    texture
    ("red_disc",     "ellipse",   "red",    "stripes"),
    ("red_star",     "star",      "red",    "stripes"),
    ("checked_box",  "rectangle", "blue",   "checks"),
    ("dotted_box",   "rectangle", "blue",   "dots"),
    ("green_wedge",  "triangle",  "green",  "grass"),
    ("yellow_wedge", "triangle",  "yellow", "grass"),
    ("brick_ring",   "ring",      "green",  "brick"),
    ("brick_cross",  "cross",     "green",  "brick"),
)
# fmt: on
CLASS_CUES = {
    name: {"shape": shape, "colour": colour, "texture": texture}
    for name, shape, colour, texture in OBJECT_CLASSES
}
# Scene types: most "objects" images draw their classes from one of these pairs. The partners
# are chosen across the look-alike pairs, so co-occurrence is evidence a CNN cannot get from
# one object's appearance.
SCENE_TYPES = (
    ("red_disc", "dotted_box"),
    ("red_star", "yellow_wedge"),
    ("checked_box", "brick_cross"),
    ("green_wedge", "brick_ring"),
)

PART_CLASSES = ("head", "torso", "upper_arm", "lower_arm", "upper_leg", "lower_leg")
# Each body part wears a "look"; upper and lower limbs share one look (and, within a figure,
# one sampled colour and texture), so only where a part sits tells them apart.
PART_LOOKS = {
    "head": "skin",
    "torso": "shirt",
    "upper_arm": "sleeve",
    "lower_arm": "sleeve",
    "upper_leg": "trousers",
    "lower_leg": "trousers",
}
_CLOTH = (("blue", "purple", "grey"), ("dots", "noise", "gravel"))  # sleeves and trousers
# fmt: off
LOOKS = {
    # look:      colours                             textures              saturation  value
    "skin":     (("orange",),                        ("flat", "noise"),     (.25, .55), (.6, .95)),
    "shirt":    (("red", "yellow", "green", "cyan"), ("stripes", "checks"), (.6, 1.),   (.7, 1.)),
    "sleeve":   (*_CLOTH,                                                   (.3, .8),   (.35, .75)),
    "trousers": (*_CLOTH,                                                   (.3, .8),   (.35, .75)),
}
# fmt: on

KINDS = ("objects", "parts")
DEFAULT_DIFFICULTY = 0.75
MIN_SIZE = 48
_OPTIONS = {
    "objects": {
        "difficulty": DEFAULT_DIFFICULTY,
        "min_objects": 1,
        "max_objects": 4,
        "cooccurrence": 0.8,
        "min_area": 30,
        "object_scale": 1.0,
    },
    "parts": {"difficulty": DEFAULT_DIFFICULTY, "min_figures": 1, "max_figures": 3, "min_area": 12},
}


def shared_cues():
    """List ``(class_a, class_b, shared)`` for object classes sharing two or more cues.

    >>> shared_cues()[0]
    ('red_disc', 'red_star', ('colour', 'texture'))
    """
    out = []
    for a, b in combinations(CLASS_CUES, 2):
        shared = tuple(
            cue
            for cue in ("shape", "colour", "texture")
            if CLASS_CUES[a][cue] == CLASS_CUES[b][cue]
        )
        if len(shared) >= 2:
            out.append((a, b, shared))
    return out


# ---------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------


@dataclass(eq=False, repr=False)
class Scenes:
    """A batch of generated scenes with exact labels.

    Attributes
    ----------
    images : (N, H, W, 3) uint8
    semantic : (N, H, W) uint8, class id per pixel, 0 = background (distractors included).
    instance : (N, H, W) int32, 1..K per image for visible object instances (objects) or body
        parts (parts), 0 elsewhere; each instance id has a single class.
    class_names : list of str, index = class id.
    kind : "objects" or "parts".
    options : the resolved generation arguments (seed, size and every option).
    """

    images: np.ndarray
    semantic: np.ndarray
    instance: np.ndarray
    class_names: list
    kind: str
    options: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        """Select images (slice, index array or int); always returns a `Scenes`."""
        if isinstance(index, (int, np.integer)):
            index = slice(index, index + 1 if index != -1 else None)
        return Scenes(
            self.images[index],
            self.semantic[index],
            self.instance[index],
            list(self.class_names),
            self.kind,
            dict(self.options),
        )

    def __repr__(self):
        return (
            f"Scenes(kind={self.kind!r}, n={len(self)}, size={self.images.shape[1:3]}, "
            f"classes={len(self.class_names)})"
        )

    @property
    def num_classes(self):
        """Number of classes, background included."""
        return len(self.class_names)

    @property
    def tags(self):
        """(N, C) bool: which classes (background included, column 0) appear in each image."""
        n, c = len(self), self.num_classes
        flat = self.semantic.reshape(n, -1).astype(np.int64) + c * np.arange(n)[:, None]
        return np.bincount(flat.ravel(), minlength=n * c).reshape(n, c) > 0


def cooccurrence(scenes):
    """(C, C) int64: number of images in which classes i and j both appear (diagonal: i alone)."""
    tags = scenes.tags.astype(np.int64)
    return tags.T @ tags


# ---------------------------------------------------------------------------------------------
# Geometry: shape masks in a clipped bounding box
# ---------------------------------------------------------------------------------------------


def _frame(size, cy, cx, radius, angle, aspect=1.0):
    """Clipped box around a disc; returns (y0, x0, u, v) in rotated units of ``radius``."""
    y0, y1 = max(int(cy - radius), 0), min(int(cy + radius) + 2, size)
    x0, x1 = max(int(cx - radius), 0), min(int(cx + radius) + 2, size)
    if y0 >= y1 or x0 >= x1:
        return None
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
    c, s = np.cos(angle), np.sin(angle)
    u = (dx * c + dy * s) / radius
    v = (dy * c - dx * s) / (radius * aspect)
    return y0, x0, u, v


def _shape_mask(shape, u, v, rng):
    """Boolean mask of a shape inscribed in the unit disc, in local coordinates (u, v)."""
    au, av = np.abs(u), np.abs(v)
    if shape in ("ellipse", "ring"):
        r2 = u * u + v * v
        return (r2 <= 1) & (r2 >= 0.3) if shape == "ring" else r2 <= 1
    if shape == "rectangle":
        return (au <= 0.9) & (av <= 0.9 * rng.uniform(0.55, 1.0))
    if shape == "bar":
        return (au <= 1) & (av <= 0.2)
    if shape == "cross":
        return ((au <= 1) & (av <= 0.32)) | ((au <= 0.32) & (av <= 1))
    if shape in ("triangle", "hexagon"):
        sides, inner = (3, 0.5) if shape == "triangle" else (6, 0.87)
        angles = np.pi / 2 + 2 * np.pi * np.arange(sides) / sides
        inside = np.ones(u.shape, bool)
        for a in angles:
            inside &= u * np.cos(a) + v * np.sin(a) <= inner
        return inside
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    if shape == "star":
        t = (phi * 5 / (2 * np.pi) - 0.25) % 1.0
        return rho <= 0.42 + 0.58 * np.abs(1 - 2 * t)
    if shape == "blob":
        k = np.arange(2, 5)[:, None, None]
        amp, phase = rng.uniform(0, 0.12, (3, 1, 1)), rng.uniform(0, 2 * np.pi, (3, 1, 1))
        return rho <= 0.72 + (amp * np.cos(k * phi + phase)).sum(0)
    raise ValueError(f"unknown shape {shape!r}")


def _shape_box(size, shape, cy, cx, radius, angle, aspect, rng):
    """Return (y0, x0, mask) of a shape centred at (cy, cx), or None if it misses the image."""
    box = _frame(size, cy, cx, radius, angle, aspect)
    return None if box is None else (box[0], box[1], _shape_mask(shape, box[2], box[3], rng))


def _capsule(size, p0, p1, radius):
    """(y0, x0, mask) of all pixels within ``radius`` of the segment p0-p1 (points as (y, x))."""
    (ay, ax), (by, bx) = p0, p1
    y0, y1 = max(int(min(ay, by) - radius), 0), min(int(max(ay, by) + radius) + 2, size)
    x0, x1 = max(int(min(ax, bx) - radius), 0), min(int(max(ax, bx) + radius) + 2, size)
    if y0 >= y1 or x0 >= x1:
        return None
    py = np.arange(y0, y1, dtype=np.float32)[:, None] - ay
    px = np.arange(x0, x1, dtype=np.float32)[None, :] - ax
    dy, dx = by - ay, bx - ax
    t = np.clip((py * dy + px * dx) / max(dy * dy + dx * dx, 1e-6), 0, 1)
    return y0, x0, (py - t * dy) ** 2 + (px - t * dx) ** 2 <= radius * radius


# ---------------------------------------------------------------------------------------------
# Scene assembly: layers painted in order; later layers occlude earlier ones
# ---------------------------------------------------------------------------------------------


class _Layers:
    def __init__(self, size):
        self.size = size
        self.items = []  # (class_id, is_instance, y0, x0, mask, rgb)

    def add(self, rng, box, class_id, is_instance, colour, texture, contrast):
        if box is None or not box[2].any():
            return
        y0, x0, mask = box
        rgb = textures.textured_patch(rng, colour, texture, contrast, *mask.shape)
        self.items.append((class_id, is_instance, y0, x0, mask, rgb))

    def _layer_map(self, items):
        layer = np.full((self.size, self.size), -1, np.int32)
        for k, (_, _, y0, x0, mask, _) in enumerate(items):
            layer[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]][mask] = k
        return layer

    def compose(self, background, min_area):
        """Paint onto ``background``; drop instances with fewer than ``min_area`` visible pixels.

        Returns (image float32, semantic uint8, instance int32), or None if no instance is left.
        """
        items = list(self.items)
        while True:
            layer = self._layer_map(items)
            visible = np.bincount(layer.ravel() + 1, minlength=len(items) + 1)[1:]
            tiny = [k for k, it in enumerate(items) if it[1] and visible[k] < min_area]
            if not tiny:
                break
            items = [it for k, it in enumerate(items) if k not in tiny]
        if not any(it[1] for it in items):
            return None
        image = background
        for _, _, y0, x0, mask, rgb in items:
            image[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]][mask] = rgb[mask]
        classes = np.array([0] + [it[0] for it in items], np.uint8)
        ids = np.cumsum([0] + [it[1] for it in items]) * np.array([0] + [it[1] for it in items])
        return image, classes[layer + 1], ids.astype(np.int32)[layer + 1]


# ---------------------------------------------------------------------------------------------
# "objects" scenes
# ---------------------------------------------------------------------------------------------

# Cue values too alike to tell apart on a small, jittered, noisy object. Distractors and
# background regions must differ from every class *clearly* in at least one cue, so that the
# conjunction of cues always decides (hard, but solvable).
_ALIKE = ({"ellipse", "blob", "hexagon"}, {"noise", "brick", "grass", "gravel"})


def _alike(a, b):
    return a == b or any(a in group and b in group for group in _ALIKE)


def _resembles_a_class(cues):
    return any(all(map(_alike, cues, c[1:])) for c in OBJECT_CLASSES)


# (colour, texture) pairs a background region never wears: the classes' own looks, up to _ALIKE
_CLASS_LOOKS = {
    (colour, t)
    for _, _, colour, texture in OBJECT_CLASSES
    for t in textures.TEXTURES
    if _alike(t, texture)
}
_CLASS_ID = {name: k + 1 for k, (name, *_) in enumerate(OBJECT_CLASSES)}


def _pick_classes(rng, count, p_scene_type):
    """Pick class ids for one image: usually from one scene type (both first), else uniform."""
    if rng.random() < p_scene_type:
        pair = [_CLASS_ID[n] for n in SCENE_TYPES[rng.integers(len(SCENE_TYPES))]]
        picks = list(rng.permutation(pair))[:count]
        return picks + [pair[k] for k in rng.integers(2, size=count - len(picks))]
    return list(rng.integers(1, len(OBJECT_CLASSES) + 1, count))


def _distractor_cues(rng, near_miss):
    """Pick (shape, colour, texture) unlike any class's; with ``near_miss``, one cue away."""
    vocab = (DISTRACTOR_SHAPES, tuple(textures.HUES), textures.TEXTURES)
    while True:
        if near_miss:
            cues = list(OBJECT_CLASSES[rng.integers(len(OBJECT_CLASSES))][1:])
            which = rng.integers(3)
            cues[which] = rng.choice(vocab[which])
        else:
            cues = [rng.choice(v) for v in vocab]
        if not _resembles_a_class(cues):
            return tuple(str(c) for c in cues)


def _objects_image(rng, size, opts, attempt):
    d, scale = opts["difficulty"], size / 128
    background = textures.cluttered_background(rng, size, d, _CLASS_LOOKS)
    layers = _Layers(size)
    occupied = np.zeros((size, size), bool)  # pixels of objects so far, to limit occlusion

    def add(shape, colour, texture, class_id, radius):
        margin, tries = radius * (1 - 0.6 * d), 20 if class_id else 1
        aspect, angle = rng.uniform(1 - 0.35 * d, 1), rng.uniform(-np.pi, np.pi) * d
        for _ in range(tries):
            cy, cx = rng.uniform(margin, size - margin, 2)
            box = _shape_box(size, shape, cy, cx, radius, angle, aspect, rng)
            if box is None:
                continue
            y0, x0, mask = box
            region = occupied[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]]
            if not class_id or (region & mask).sum() <= 0.5 * d * mask.sum():
                break
        if box is not None and class_id:
            region |= mask
        rgb = textures.sample_colour(
            rng, colour, (0.85 - 0.35 * d, 1), (0.85 - 0.3 * d, 1), 0.025 * d
        )
        layers.add(rng, box, class_id, bool(class_id), rgb, texture, rng.uniform(0.5, 0.7))

    n_distractors = int(rng.integers(0, 1 + round(8 * d)))
    in_front = rng.random(n_distractors) < (0.35 * d if attempt < 5 else 0)
    distractors = [
        (*_distractor_cues(rng, rng.random() < d), 0, rng.uniform(6, 20) * scale)
        for _ in range(n_distractors)
    ]
    for args in (a for a, front in zip(distractors, in_front, strict=True) if not front):
        add(*args)
    count = int(rng.integers(opts["min_objects"], opts["max_objects"] + 1))
    for class_id in _pick_classes(rng, count, opts["cooccurrence"]):
        radius = rng.uniform(11 - 4 * d, 19 + 6 * d) * scale * opts["object_scale"]
        add(*OBJECT_CLASSES[class_id - 1][1:], class_id, radius)
    for args in (a for a, front in zip(distractors, in_front, strict=True) if front):
        add(*args)
    return layers.compose(background, opts["min_area"])


# ---------------------------------------------------------------------------------------------
# "parts" scenes
# ---------------------------------------------------------------------------------------------

_PART_ID = {name: k + 1 for k, name in enumerate(PART_CLASSES)}
# Figure geometry in figure heights (x right, y down, origin at the torso's centre). The whole
# figure spans y = -0.36 (top of head) to about 0.64 (feet, legs straight).
_TORSO = (0.11, 0.14, 0.17)  # half-width range, half-height
_HEAD = (-0.265, 0.095)  # centre y, radius
# limb: (joint (x, y) on the right side, length of each segment, radius)
_LIMBS = {"arm": ((0.12, -0.14), 0.2, 0.045), "leg": ((0.07, 0.15), 0.24, 0.055)}


def _look(rng, look, d):
    colours, texture_names, sat, val = LOOKS[look]
    colour = textures.sample_colour(rng, rng.choice(colours), sat, val, 0.03 * d)
    return colour, str(rng.choice(texture_names)), rng.uniform(0.35, 0.6)


def _figure(rng, layers, size, cx, d):
    """Add one figure's parts to ``layers``: legs, arms behind, torso, head, arms in front."""
    height = rng.uniform(75 - 20 * d, 90 + 5 * d) * size / 128
    low, high = 0.36 * height, max(size - 0.64 * height, 0.36 * height + 1)
    cy = rng.uniform(low, high) + rng.uniform(-0.25, 0.25) * height * d
    lean = rng.uniform(-0.35, 0.35) * d
    c, s = np.cos(lean), np.sin(lean)

    def at(x, y):  # figure units -> image (y, x)
        return cy + height * (x * s + y * c), cx + height * (x * c - y * s)

    skin, shirt = _look(rng, "skin", d), _look(rng, "shirt", d)
    limbs = []  # (part, side, swing from straight down, bend at elbow/knee, look, in front)
    for side in (-1, 1):
        swing, bend = rng.uniform(0.15, 0.6 + 1.9 * d), rng.uniform(-0.3, 0.4 + 1.3 * d)
        limbs.append(("arm", side, swing, bend, _look(rng, "sleeve", d), rng.random() < 0.5))
        swing, bend = rng.uniform(-0.05, 0.15 + 0.45 * d), rng.uniform(-0.3 - 0.6 * d, 0.15)
        limbs.append(("leg", side, swing, bend, _look(rng, "trousers", d), False))

    def add_limb(part, side, swing, bend, look):
        (x, y), length, radius = _LIMBS[part]
        x *= side
        for segment, angle in (("upper", swing), ("lower", swing + bend)):
            nx, ny = x + side * length * np.sin(angle), y + length * np.cos(angle)
            box = _capsule(size, at(x, y), at(nx, ny), radius * height)
            layers.add(rng, box, _PART_ID[f"{segment}_{part}"], True, *look)  # one look for both
            x, y = nx, ny

    for *limb, front in limbs:
        if not front:
            add_limb(*limb)
    box = _frame(size, *at(0, 0), 0.23 * height, lean)  # a box, 0.22-0.28 by 0.34 heights
    if box is not None:
        half_w, half_h = rng.uniform(*_TORSO[:2]) / 0.23, _TORSO[2] / 0.23
        box = (box[0], box[1], (np.abs(box[2]) <= half_w) & (np.abs(box[3]) <= half_h))
    layers.add(rng, box, _PART_ID["torso"], True, *shirt)
    box = _frame(size, *at(0, _HEAD[0]), _HEAD[1] * height, lean)
    if box is not None:  # a head a little taller than wide
        box = (box[0], box[1], (box[2] / rng.uniform(0.8, 0.95)) ** 2 + box[3] ** 2 <= 1)
    layers.add(rng, box, _PART_ID["head"], True, *skin)
    for *limb, front in limbs:
        if front:
            add_limb(*limb)


def _parts_distractor(rng, layers, size, d):
    """Add a background shape: a stray limb, box or blob, often wearing a body-part look."""
    scale = size / 128
    if rng.random() < d:
        look = _look(rng, rng.choice(list(LOOKS)), d)
    else:
        rgb = textures.sample_colour(rng, rng.choice(list(textures.HUES)), (0.2, 1), (0.3, 1))
        look = (rgb, str(rng.choice(textures.TEXTURES)), 0.5)
    cy, cx = rng.uniform(0, size, 2)
    shape = rng.choice(["limb", "rectangle", "blob"])
    if shape == "limb":
        angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(12, 35) * scale
        end = (cy + length * np.cos(angle), cx + length * np.sin(angle))
        box = _capsule(size, (cy, cx), end, rng.uniform(2.5, 5.0) * scale)
    else:
        radius, angle = rng.uniform(6, 16) * scale, rng.uniform(-np.pi, np.pi)
        box = _shape_box(size, shape, cy, cx, radius, angle, rng.uniform(0.5, 1), rng)
    layers.add(rng, box, 0, False, *look)


def _parts_image(rng, size, opts, attempt):
    d = opts["difficulty"]
    background = textures.cluttered_background(rng, size, d)
    layers = _Layers(size)
    n_distractors = int(rng.integers(0, 1 + round(6 * d)))
    n_front = int((rng.random(n_distractors) < (0.3 * d if attempt < 5 else 0)).sum())
    for _ in range(n_distractors - n_front):
        _parts_distractor(rng, layers, size, d)
    count = int(rng.integers(opts["min_figures"], opts["max_figures"] + 1))
    slots = (np.arange(count) + 0.5) / count * size  # spread figures, overlapping more with d
    for k in rng.permutation(count):
        cx = slots[k] + rng.uniform(-0.5, 0.5) * (size / count) * (0.3 + 0.7 * d)
        _figure(rng, layers, size, cx, d)
    for _ in range(n_front):
        _parts_distractor(rng, layers, size, d)
    return layers.compose(background, opts["min_area"])


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _check(name, value, low, high=np.inf, integer=False):
    types = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, types) or not low <= value <= high:
        what = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {what} in [{low}, {high}], got {value!r}")


def _check_options(kind, options):
    defaults = _OPTIONS[kind]
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for kind={kind!r}; valid: {sorted(defaults)}"
        )
    opts = {**defaults, **options}
    _check("difficulty", opts["difficulty"], 0, 1)
    opts["difficulty"] = float(opts["difficulty"])
    _check("min_area", opts["min_area"], 1, integer=True)
    if kind == "objects":
        _check("cooccurrence", opts["cooccurrence"], 0, 1)
        _check("object_scale", opts["object_scale"], 0.25, 3)
        opts["object_scale"] = float(opts["object_scale"])
    for what, limit in (("objects", 8), ("figures", 4)):
        if f"min_{what}" in opts:
            _check(f"min_{what}", opts[f"min_{what}"], 1, limit, integer=True)
            _check(f"max_{what}", opts[f"max_{what}"], opts[f"min_{what}"], limit, integer=True)
    return opts


def generate(num_images, *, kind="objects", size=128, seed=0, **options):
    """Generate ``num_images`` scenes of ``kind`` ("objects" or "parts"), ``size`` x ``size`` px.

    Image ``i`` is drawn with ``np.random.default_rng([seed, i])``: same arguments give identical
    arrays, and a shorter run is a prefix of a longer one.

    Parameters
    ----------
    num_images : int >= 1
    kind : "objects" | "parts"
    size : int >= 48. Geometry scales with ``size / 128``; texture periods do not.
    seed : int >= 0
    **options
        difficulty : float in [0, 1], default 0.75 (both kinds). 0 gives clean scenes: a smooth
            pale gradient, no distractors, no noise, objects upright and not overlapping.
            Raising it turns on, in proportion:

            * background clutter: 2 to 2 + 4d warped regions, each a random colour (saturation
              up to 0.15 + 0.75d) and texture from the objects' own vocabulary (never a class's
              colour + texture), blended over the gradient with weight min(1, 1.3d);
            * distractors (background class): 0 to 8d shapes (objects) or 0 to 6d stray limbs,
              boxes and blobs (parts); a fraction d of them is one cue away from a real class
              (objects) or wears a body-part look (parts); a fraction 0.35d (0.3d) is painted
              in front. An objects distractor always differs from every class clearly in at
              least one cue (look-alike values such as ellipse/blob or grass/gravel count as
              the same), so the conjunction of cues always decides;
            * colour jitter: hue +-0.025d (0.03d for parts), saturation and value down to
              0.85 - 0.35d and 0.85 - 0.3d;
            * geometry: object radius 11 - 4d to 19 + 6d px, rotation up to +-180d degrees,
              squash to 1 - 0.35d, up to 50d % of an object's area may be hidden by earlier
              objects (occlusion), objects may stick out of the frame; figures lean +-20d
              degrees, limbs swing and bend further, figures overlap more;
            * a global illumination ramp of +-25d % and Gaussian pixel noise of sigma 0.06d.
        min_objects, max_objects : int, objects per image (objects; default 1 and 4).
        cooccurrence : float in [0, 1], probability that an image's classes are drawn from one
            of the ``SCENE_TYPES`` pairs rather than uniformly (objects; default 0.8).
        min_figures, max_figures : int, figures per image (parts; default 1 and 3).
        object_scale : float in [0.25, 3], factor on every object's radius (objects; default 1).
            Larger objects mean less background per image and more embedding pixels per object.
        min_area : int, instances with fewer visible pixels are removed from the picture
            (default 30 for objects, 12 for parts), so every labelled instance is visible.

    Returns
    -------
    Scenes
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    _check("num_images", num_images, 1, integer=True)
    _check("size", size, MIN_SIZE, integer=True)
    _check("seed", seed, 0, integer=True)
    opts = _check_options(kind, options)
    draw = _objects_image if kind == "objects" else _parts_image
    images = np.empty((num_images, size, size, 3), np.uint8)
    semantic = np.empty((num_images, size, size), np.uint8)
    instance = np.empty((num_images, size, size), np.int32)
    for i in range(num_images):
        rng = np.random.default_rng([seed, i])
        for attempt in range(100):  # redraw (same generator) if no instance stayed visible
            if (scene := draw(rng, size, opts, attempt)) is not None:
                break
        else:
            raise ValueError(
                f"min_area={opts['min_area']} is too large: no instance fits in image {i}"
            )
        images[i] = textures.camera(rng, scene[0], opts["difficulty"])
        semantic[i], instance[i] = scene[1], scene[2]
    names = OBJECT_CLASSES if kind == "objects" else PART_CLASSES
    class_names = ["background"] + [n if isinstance(n, str) else n[0] for n in names]
    return Scenes(
        images, semantic, instance, class_names, kind, {"seed": seed, "size": size, **opts}
    )
