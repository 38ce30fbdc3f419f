"""Segment one image from its own scribbles: SPML trained on that image alone.

The paper's first figure in miniature: a few labelled strokes on a picture, propagated to the
whole of it. Three methods share one entry point, `segment`:

* ``"spml"``: a small embedding network (`embedding_nets.SmallEmbeddingNet`) trained from
  scratch on random crops and flips of the one image, with two of SPML's relations: low-level
  image similarity on the image's superpixels and semantic annotation on the scribbles
  (co-occurrence needs several images with different tags, so it has nothing to say here).
  Every pixel then takes the class of its nearest labelled prototype (`knn`), and a dense
  CRF (`crf`) refines the final mask.
* ``"partial_ce"``: the same network and crops, trained by cross-entropy of its softmax head
  on the scribbled pixels only (the paper's baseline, relations off); predicted by the head,
  through the same CRF.
* ``"forest"``: scikit-image's `multiscale_basic_features` and `future.fit_segmenter` with a
  random forest, the filter-bank approach of ilastik and Labkit; no network.

Decisions, and the measurements behind them
-------------------------------------------
``python benchmarks/one_image.py --scenes 3 --kinds scribbles --methods spml spml_head
spml_crf spml_affinity forest`` (60 steps, seed 0; 3 generated scenes of 128 px per kind, so
a first look, not the 30-scene result), mIoU mean ± std:

=================  ===============  ===============
SPML variant       objects          parts
=================  ===============  ===============
kNN (default)      0.575 ± 0.045    0.579 ± 0.070
head               0.541 ± 0.145    0.545 ± 0.048
kNN + dense CRF    0.622 ± 0.049    0.620 ± 0.061
+ feature affin.   0.555 ± 0.027    0.609 ± 0.036
forest             0.823 ± 0.059    0.738 ± 0.053
=================  ===============  ===============

* **kNN, not the head**: kNN is ahead by 0.035 on both kinds (within 2 SE) and far steadier
  on the objects (std 0.045 against 0.145): a head fitted to a few strokes overfits them.
* **Dense CRF on the final mask**: it raised every one of the 6 scenes, by 0.031 to 0.053
  (paired mean +0.044). It costs about a second at 256 px, so the progress masks a widget
  shows come without it and only the mask `segment` returns is refined.
* **No feature affinity**: -0.020 on the objects, +0.029 on the parts, both within 2 SE: no
  measurable help, so the recipe stays with the two relations.
* **The forest wins on generated scenes** (objects by 0.25, parts by 0.16, beyond 2 SE):
  their classes differ by colour and texture, which a filter bank sees at once and a net
  trained from scratch on one image for 60 steps must first learn. `benchmarks/one_image.py`
  holds the 30-scene comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from spml_lab import schedules
from spml_lab.constants import IGNORE_INDEX
from spml_lab.data import superpixels as superpixel_maps
from spml_lab.method.memory import PrototypeMemory
from spml_lab.prediction import crf, knn
from spml_lab.training import train
from spml_lab.training.config import TrainConfig

__all__ = [
    "METHODS",
    "Recipe",
    "RECIPE",
    "check_inputs",
    "segment",
    "forest_features",
]

METHODS = ("spml", "forest", "partial_ce")
MIN_SIDE = 16  # the net's two stride-2 convolutions and a 4 x 4 k-means grid need this much


@dataclass(frozen=True)
class Recipe:
    """The one-image recipe: every default of `segment`, each with the reason for it.

    Attributes
    ----------
    steps : int
        SGD steps of the network methods (the forest ignores it).
    crop : int
        Side of the square training crops (smaller for a smaller image): small crops are
        cheap steps, and 96 px still sees whole objects of a 128-256 px picture.
    batch : int
        Crops per step; k-means, superpixels and the loss see all of them at once.
    update_every : int
        Steps between two `callback` calls. A step (4 crops of 96 px) costs about as much as
        two predictions of a 256 px picture, so 5 steps keep a prediction's share near 10 %
        and a widget's updates near the 2 s target (measured on 2 cores under a load of 8,
        so slow by a factor of several: 0.71 s a step, 0.37 s a kNN prediction).
    lr : float
        SGD base learning rate (head and embedding layer at 10x, `train.param_groups`).
    superpixel_area : int
        Mean superpixel area in pixels (SLIC), whatever the image size: the paper's ~10 x 10 px
        segments of the embedded scenes.
    knn_k : int
        Neighbours in kNN voting: one image has few labelled segments, so the paper's 20
        would let the largest class outvote the rest.
    forest_trees, forest_depth : int
        Random forest size: scikit-image's gallery example uses 50 trees of depth 10.
    """

    steps: int = 60
    crop: int = 96
    batch: int = 4
    update_every: int = 5
    lr: float = 0.01
    superpixel_area: int = 100
    knn_k: int = 1
    forest_trees: int = 50
    forest_depth: int = 10


RECIPE = Recipe()

# What SPML uses of the method on one image, decided by measurement (module docstring)
SPML_CHOICES = {
    "predictor": "knn",  # "knn" (nearest labelled prototypes) or "head"
    "crf": True,  # dense CRF on the returned mask (progress masks go without)
    "feature_affinity": False,  # the fourth relation
    "low_level": True,  # low-level similarity (off: semantic annotation alone, for lessons)
}


def _config(method, num_classes, feature_affinity, low_level=True):
    """Return the TrainConfig whose relations and head `train.train_step` applies."""
    common = {
        "crop_size": RECIPE.crop,
        "batch_size": RECIPE.batch,
        "lr": RECIPE.lr,
        "warmup_steps": 0,  # few steps: no time to ramp up
        "cooccurrence": False,  # every crop has the same tags: nothing to contrast
        "device": "cpu",
        "progress": False,
    }
    if method == "partial_ce":
        return TrainConfig(
            low_level=False, semantic_annotation=False, head_trains_embedding=True, **common
        )
    return TrainConfig(feature_affinity=feature_affinity, low_level=low_level, **common)


# ---------------------------------------------------------------------- input checks


def check_inputs(image, scribbles, *, num_classes=None, names=("image", "scribbles")):
    """Check an image and its scribbles; return them as uint8 arrays and the class count.

    Parameters
    ----------
    image : (H, W, 3) uint8 ndarray, or float ndarray in [0, 1]
    scribbles : (H, W) int ndarray
        Class ids 0..K-1, 255 = unlabelled.
    num_classes : int, optional
        K. Without it, K is the largest id + 1 and every id 0..K-1 must be drawn; with it, ids
        must lie below K (a class with no scribble is never predicted).
    names : (str, str), optional
        What to call the two inputs in messages (e.g. their file names).

    Returns
    -------
    image : (H, W, 3) uint8 ndarray
    scribbles : (H, W) uint8 ndarray
    num_classes : int

    Raises
    ------
    ValueError
        Naming the input and what is wrong: wrong shape or dtype, sizes that differ, an image
        smaller than 16 px, no scribble at all, one class only, ids out of range.

    Examples
    --------
    >>> image = np.zeros((20, 20, 3), np.uint8)
    >>> scribbles = np.full((20, 20), 255, np.uint8); scribbles[2, :5] = 0; scribbles[9, :5] = 1
    >>> check_inputs(image, scribbles)[2]
    2
    >>> check_inputs(image, scribbles[:10])
    Traceback (most recent call last):
    ...
    ValueError: scribbles are 10 x 20 pixels but image is 20 x 20; draw them on the image itself
    """
    image_name, scribble_name = names
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{image_name} must be an (H, W, 3) RGB image, got shape {image.shape}")
    if image.dtype != np.uint8:
        if not np.issubdtype(image.dtype, np.floating) or image.min() < 0 or image.max() > 1:
            raise ValueError(f"{image_name} must be uint8 or floats in [0, 1], got {image.dtype}")
        image = np.round(image * 255).astype(np.uint8)
    if min(image.shape[:2]) < MIN_SIDE:
        raise ValueError(f"{image_name} is {image.shape[0]} x {image.shape[1]} pixels; "
                         f"need at least {MIN_SIDE} on each side")  # fmt: skip
    scribbles = np.asarray(scribbles)
    if scribbles.ndim != 2 or scribbles.dtype.kind not in "iu":
        raise ValueError(f"{scribble_name} must be an (H, W) integer map (single channel), "
                         f"got {scribbles.dtype} {scribbles.shape}")  # fmt: skip
    if scribbles.shape != image.shape[:2]:
        raise ValueError(
            f"{scribble_name} are {scribbles.shape[0]} x {scribbles.shape[1]} pixels but "
            f"{image_name} is {image.shape[0]} x {image.shape[1]}; draw them on the image itself"
        )
    ids = np.unique(scribbles)
    ids = ids[ids != IGNORE_INDEX]
    if len(ids) == 0:
        raise ValueError(f"{scribble_name} hold no scribble: every pixel is {IGNORE_INDEX} "
                         "(unlabelled); draw at least two classes")  # fmt: skip
    if ids.min() < 0 or ids.max() > IGNORE_INDEX:
        raise ValueError(f"{scribble_name}: ids must lie in 0..254 (255 = unlabelled), got "
                         f"{ids.min()}..{ids.max()}")  # fmt: skip
    if len(ids) == 1:
        raise ValueError(f"{scribble_name} hold one class only (id {ids[0]}); a segmentation "
                         "needs at least two: scribble the background too")  # fmt: skip
    if num_classes is None:
        missing = sorted(set(range(int(ids.max()) + 1)) - set(ids.tolist()))
        if missing:
            raise ValueError(
                f"{scribble_name}: ids out of range: classes are 0..K-1 with K = "
                f"{int(ids.max()) + 1}, but {missing} have no scribble (ids {ids.tolist()}); "
                "number the classes 0, 1, 2, ..."
            )
        num_classes = int(ids.max()) + 1
    elif ids.max() >= num_classes:
        raise ValueError(f"{scribble_name}: ids out of range: {ids[ids >= num_classes].tolist()}"
                         f" >= num_classes {num_classes}")  # fmt: skip
    return image, scribbles.astype(np.uint8), int(num_classes)


# ---------------------------------------------------------------------- the forest


def forest_features(image):
    """Compute the forest's filter bank: `skimage.feature.multiscale_basic_features`.

    Parameters
    ----------
    image : (H, W, 3) uint8 ndarray

    Returns
    -------
    features : (H, W, F) float32 ndarray
        Intensity, edges and texture at scales 1 to 16 px, per colour channel (scikit-image's
        trainable-segmentation example settings).
    """
    from skimage.feature import multiscale_basic_features

    return multiscale_basic_features(
        image, channel_axis=-1, sigma_min=1, sigma_max=16, workers=1
    ).astype(np.float32)


def _forest(image, scribbles, seed):
    """Random forest on the filter bank, trained on the scribbled pixels (scikit-image)."""
    from skimage.future import fit_segmenter, predict_segmenter
    from sklearn.ensemble import RandomForestClassifier

    features = forest_features(image)
    forest = RandomForestClassifier(
        n_estimators=RECIPE.forest_trees, max_depth=RECIPE.forest_depth, n_jobs=1,
        random_state=seed,
    )  # fmt: skip
    # scikit-image counts classes from 1 and reads 0 as unlabelled
    training = np.where(scribbles == IGNORE_INDEX, 0, scribbles.astype(np.int32) + 1)
    forest = fit_segmenter(training, features, forest)
    return (predict_segmenter(features, forest) - 1).astype(np.uint8)


# ---------------------------------------------------------------------- the network methods


def _superpixels(image):
    """SLIC superpixels of `RECIPE.superpixel_area` pixels each, whatever the image size."""
    count = max(16, image.shape[0] * image.shape[1] // RECIPE.superpixel_area)
    return superpixel_maps.segment(image, "slic", n_segments=count)


class _Crops:
    """Random crops and flips of one image, its scribbles and superpixels, as training batches.

    All crops of a batch are cut at once by index arithmetic (no loop over crops).
    """

    def __init__(self, image, scribbles, superpixels, num_classes, seed):
        self.image = torch.from_numpy(image).permute(2, 0, 1).float() / 255  # (3, H, W)
        self.label = torch.from_numpy(scribbles).long()  # (H, W)
        self.superpixel = torch.from_numpy(superpixels).long()  # (H, W)
        height, width = scribbles.shape
        self.size = (min(RECIPE.crop, height), min(RECIPE.crop, width))
        drawn = np.unique(scribbles[scribbles != IGNORE_INDEX]).astype(np.int64)
        tags = torch.zeros(num_classes, dtype=torch.bool)
        tags[torch.from_numpy(drawn)] = True
        self.tags = tags.expand(RECIPE.batch, -1)
        self.generator = torch.Generator().manual_seed(seed)

    def batch(self):
        """Return one training batch of crops.

        Returns
        -------
        batch : dict
            ``image`` (B, 3, h, w) float in [0, 1], ``label`` and ``superpixel`` (B, h, w)
            int64, ``tags`` (B, C) bool: what `train.train_step` takes.
        """
        (height, width), (ch, cw), n = self.label.shape, self.size, RECIPE.batch
        top = torch.randint(0, height - ch + 1, (n,), generator=self.generator)
        left = torch.randint(0, width - cw + 1, (n,), generator=self.generator)
        flip = torch.rand(n, generator=self.generator) < 0.5
        offsets = torch.arange(cw)
        cols = left[:, None] + torch.where(flip[:, None], cw - 1 - offsets, offsets)  # (B, cw)
        rows = (top[:, None] + torch.arange(ch))[:, :, None]  # (B, ch, 1)
        cols = cols[:, None, :]  # (B, 1, cw)
        return {
            "image": self.image[:, rows, cols].permute(1, 0, 2, 3).contiguous(),
            "label": self.label[rows, cols],
            "superpixel": self.superpixel[rows, cols],
            "tags": self.tags,
        }


def _downsample(maps, size):
    """Nearest sampling of (H, W) integer maps to the embedding resolution (exact for ids)."""
    small = F.interpolate(maps[None, None].float(), size=size, mode="nearest")
    return small[0, 0].long()


def _block_labels(scribbles, size, num_classes):
    """Bring (H, W) scribbles to the embedding resolution: the most drawn class of each block.

    Nearest sampling keeps one pixel in 16 and so loses most of a 5 px point; a block with any
    scribbled pixel keeps its label here, so every mark gives the kNN bank a prototype.
    """
    labels = torch.from_numpy(scribbles).long()
    drawn = labels != IGNORE_INDEX
    one_hot = F.one_hot(labels.clamp(max=num_classes - 1), num_classes) * drawn[..., None]
    counts = F.adaptive_avg_pool2d(one_hot.permute(2, 0, 1)[None].float(), size)[0]  # (C, h, w)
    best = counts.argmax(0)
    return torch.where(counts.sum(0) > 0, best, torch.full_like(best, IGNORE_INDEX))


def _probabilities(net, head, image, scribbles, superpixels, num_classes, predictor):
    """Class probabilities (C, H, W) of the whole image by `predictor` ("knn" or "head")."""
    net.eval(), head.eval()
    with torch.no_grad():
        pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255  # (1, 3, H, W)
        emb = net(pixels).permute(0, 2, 3, 1)  # (1, h, w, D)
        if predictor == "head":
            logits = head(emb, size=image.shape[:2])  # (1, C, H, W)
            probs = logits.softmax(dim=1)[0]
        else:
            size = tuple(emb.shape[1:3])
            labels = _block_labels(scribbles, size, num_classes)[None]  # (1, h, w)
            sp = _downsample(torch.from_numpy(superpixels), size)[None]
            grid = TrainConfig().kmeans_grid
            bank = knn.build_prototype_bank(emb, labels, grid=grid, superpixels=sp)
            if len(bank) == 0:  # scribbles thinner than the embedding's 4 px pixels
                raise ValueError("no scribble survives at 1/4 resolution; draw thicker strokes")
            _, votes = knn.knn_predict(
                emb, bank, num_classes=num_classes, k=RECIPE.knn_k, grid=grid, superpixels=sp
            )  # (1, C, h, w)
            probs = F.interpolate(votes, size=image.shape[:2], mode="bilinear")[0]
    net.train(), head.train()
    return probs


def _refine(image, probs, use_crf):
    """Return the (H, W) uint8 mask of (C, H, W) probabilities, through the CRF if asked."""
    if use_crf:
        # the CRF's appearance kernel is 67 px wide on the paper's ~500 px VOC images: scale
        # it with the picture, as `crf.dense_crf` advises
        scale = max(image.shape[:2]) / 500
        probs = crf.dense_crf(image, probs.float().clamp(min=1e-4), bi_xy_std=67 * scale)
    return np.asarray(probs.argmax(0), dtype=np.uint8)


def _network(method, image, scribbles, num_classes, steps, seed, callback, choices):
    """Train the one-image network; return the final mask, calling `callback` on the way."""
    torch.manual_seed(seed)
    superpixels = _superpixels(image)
    cfg = _config(method, num_classes, choices["feature_affinity"], choices["low_level"])
    net, head = train.build_model(cfg, num_classes)
    optimizer = torch.optim.SGD(
        train.param_groups(net, head, cfg), lr=cfg.lr, momentum=cfg.momentum
    )
    memory = PrototypeMemory(cfg.memory_size, affinity_threshold=cfg.affinity_threshold)
    crops = _Crops(image, scribbles, superpixels, num_classes, seed)
    predictor = "head" if method == "partial_ce" else choices["predictor"]
    use_crf = choices["crf"]
    device = torch.device("cpu")
    mask = None
    for step in range(1, steps + 1):
        lr = schedules.poly_lr(step - 1, cfg.lr, steps, warmup_steps=cfg.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        train.train_step(crops.batch(), net, head, optimizer, memory, cfg, device)
        if step == steps or (callback is not None and step % RECIPE.update_every == 0):
            probs = _probabilities(net, head, image, scribbles, superpixels, num_classes, predictor)
            mask = _refine(image, probs, use_crf and step == steps)
            if callback is not None:
                callback(step, mask)
    return mask


def segment(
    image,
    scribbles,
    method="spml",
    *,
    steps=None,
    seed=0,
    callback=None,
    num_classes=None,
    choices=None,
):
    """Segment one image from scribbles drawn on it.

    Parameters
    ----------
    image : (H, W, 3) uint8 ndarray, or float ndarray in [0, 1]
        The picture (e.g. `labelio.read_image`); about 128-256 px on the longer side keeps a
        network method within seconds on a laptop CPU.
    scribbles : (H, W) int ndarray
        Class ids 0..K-1 where drawn, 255 = unlabelled; at least two classes.
    method : {"spml", "forest", "partial_ce"}, optional
        See the module docstring.
    steps : int, optional
        Training steps of the network methods (default ``RECIPE.steps``); ignored by the forest.
    seed : int, optional
        Seeds weights, crops and the forest: same seed, same mask (on the CPU).
    callback : callable, optional
        ``callback(step, mask)`` every ``RECIPE.update_every`` steps and at the end, with the
        (H, W) uint8 mask so far: a widget shows progress with it. The forest calls it once.
    num_classes : int, optional
        K, when some classes may have no scribble (`check_inputs`).
    choices : dict, optional
        Overrides of `SPML_CHOICES` (``predictor``, ``crf``, ``feature_affinity``,
        ``low_level``), for the benchmark that decided them and for lessons.

    Returns
    -------
    mask : (H, W) uint8 ndarray
        A class id 0..K-1 for every pixel.

    Raises
    ------
    ValueError
        On bad input (`check_inputs`), an unknown method or choice, or ``steps < 1``.

    Examples
    --------
    >>> image = np.zeros((32, 32, 3), np.uint8); image[:, 16:] = 255
    >>> scribbles = np.full((32, 32), 255, np.uint8)
    >>> scribbles[4:28, 4:8], scribbles[4:28, 24:28] = 0, 1
    >>> mask = segment(image, scribbles, "forest")
    >>> mask.dtype, mask[:, :14].max(), mask[:, 18:].min()  # away from the step
    (dtype('uint8'), np.uint8(0), np.uint8(1))
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    unknown = sorted(set(choices or {}) - set(SPML_CHOICES))
    if unknown:
        raise ValueError(f"unknown choice(s) {unknown}; known: {sorted(SPML_CHOICES)}")
    steps = RECIPE.steps if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    image, scribbles, num_classes = check_inputs(image, scribbles, num_classes=num_classes)
    if method == "forest":
        mask = _forest(image, scribbles, seed)
        if callback is not None:
            callback(1, mask)
        return mask
    choices = {**SPML_CHOICES, **(choices or {})}
    return _network(method, image, scribbles, num_classes, int(steps), seed, callback, choices)
