"""Named starting points for a `TrainConfig`: a laptop CPU, the benchmark, one GPU at scale.

The calibrated recipe of the embedded data is `TrainConfig`'s own defaults (its docstring says
why); a preset adds a budget to it, or changes the scale, and anything given explicitly wins.
``"auto"`` picks ``"gpu"`` when CUDA is there, else ``"cpu"``, so one notebook or script is a
one-minute classroom run on a laptop and a real run on a GPU machine.

* **benchmark**: the reduced accuracy benchmark's runs (``benchmarks/accuracy.py``): the
  defaults (the small network, width 32, D = 32, from scratch, 96 px crops, batch 8, LR 0.05,
  a 2 x 2 k-means grid) with 24 contrast images, 1000 steps. The shipped runs and
  ``spml-lab demo`` train with it.
* **cpu**: the same for 60 steps, about a minute on two cores.
* **gpu**: ResNet-101 DeepLab-v2 (output stride 8, ASPP), 512 px crops, batch 8, D = 64, 3000
  steps, the paper's 6 x 6 k-means grid and 100 warm-up steps; LR 3e-3 from ImageNet weights
  (``pretrained``), 0.01 from scratch. Images are first brought to the crop's size (the
  embedded scenes are 96 px) and then jittered by the paper's 0.5-1.5 scale range.

`PARTIAL_CROSS_ENTROPY` turns any of them into the baseline: every relation off, the head's
cross-entropy training the network. Notebook parameters are TrainConfig field names in upper
case (``MAX_STEPS``, ``CROP_SIZE``); `notebook_fields` turns a parameters cell into TrainConfig
keywords, so no notebook maps names by hand.
"""

from __future__ import annotations

import dataclasses

import torch

from spml_lab.constants import PAPER_KMEANS_GRID
from spml_lab.data import datasets
from spml_lab.training.config import TrainConfig

__all__ = ["PARTIAL_CROSS_ENTROPY", "PRESETS", "choose", "notebook_fields", "preset_config"]

# the network, crop, batch, LR and k-means grid are TrainConfig's defaults; the benchmark adds
# how many images a pixel is contrasted with. The paper contrasts a global batch of 16 with 2
# memory batches of 16 (48 images); on the CPU a step of 8 crops then takes 0.28 s against 0.23 s
# with 24, which would bring the 82-minute reduced benchmark past its 90; so: 2 memory batches of
# its own batch of 8, pinned as 24 images whatever the batch
_BENCHMARK = {"contrast_images": 24}
PRESETS = {
    "benchmark": {**_BENCHMARK, "max_steps": 1000},
    "cpu": {**_BENCHMARK, "max_steps": 60, "warmup_steps": 10},
    "gpu": {"model": "resnet101", "crop_size": 512, "batch_size": 8, "embedding_dim": 64,
            "max_steps": 3000, "lr": 0.01, "warmup_steps": 100, "kmeans_grid": PAPER_KMEANS_GRID,
            "num_workers": 4, "checkpoint_every": 500, "device": "cuda"},
}  # fmt: skip
# the baseline: relations off, the head trains the network; dropout 0.1 trains the baseline's
# classifier much faster than the paper's 0.75 (benchmarks/results/calibration.csv), a
# stronger baseline for SPML to beat
PARTIAL_CROSS_ENTROPY = {
    "low_level": False,
    "semantic_annotation": False,
    "cooccurrence": False,
    "feature_affinity": False,
    "head_trains_embedding": True,
    "head_dropout": 0.1,
}
# the paper's LR for the ImageNet-initialised ResNet (from scratch 0.01 learns more)
PRETRAINED_LR = 3e-3
_FIELDS = {spec.name for spec in dataclasses.fields(TrainConfig)}


def choose(preset="auto", *, cuda=None):
    """Return the preset's name: ``"auto"`` becomes ``"gpu"`` with CUDA, else ``"cpu"``.

    Parameters
    ----------
    preset : {"auto", "cpu", "gpu", "benchmark"}, optional
    cuda : bool, optional
        Whether CUDA is available (default: ask torch).

    Raises
    ------
    ValueError
        If `preset` is unknown, or ``"gpu"`` is asked for without CUDA.

    Examples
    --------
    >>> choose("auto", cuda=False), choose("gpu", cuda=True)
    ('cpu', 'gpu')
    """
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if preset == "auto":
        return "gpu" if cuda else "cpu"
    if preset not in PRESETS:
        raise ValueError(
            f"preset must be 'auto', {' or '.join(map(repr, PRESETS))}, got {preset!r}"
        )
    if preset == "gpu" and not cuda:
        raise ValueError("preset 'gpu' needs CUDA; use 'cpu' or 'auto' on this machine")
    return preset


def notebook_fields(parameters):
    """TrainConfig keywords from a notebook's parameters: ``MAX_STEPS = 40`` -> ``max_steps=40``.

    Parameters
    ----------
    parameters : mapping of str to object
        A notebook's names (``globals()``); upper-case names of TrainConfig fields are kept,
        ``None`` values (= the preset's) and everything else are left out.

    Examples
    --------
    >>> notebook_fields({"MAX_STEPS": 40, "CROP_SIZE": None, "PRESET": "cpu", "seed": 1})
    {'max_steps': 40}
    """
    return {
        name.lower(): value
        for name, value in parameters.items()
        if name.isupper() and name.lower() in _FIELDS and value is not None
    }


def preset_config(preset="auto", **fields):
    """Return the TrainConfig of `preset` with `fields` on top.

    Parameters
    ----------
    preset : {"auto", "cpu", "gpu", "benchmark"}, optional
    **fields
        TrainConfig fields; they win over the preset's (``None`` = the preset's).

    Returns
    -------
    cfg : TrainConfig
        With ``device`` "cuda" for the GPU preset; there ``scale_range`` is centred on the
        scale that brings the data's images to the crop size (given ``scale_range`` wins).

    Examples
    --------
    >>> cfg = preset_config("cpu", max_steps=10, annotation="points")
    >>> cfg.model, cfg.crop_size, cfg.max_steps, cfg.annotation
    ('small', 96, 10, 'points')
    >>> preset_config("benchmark", **PARTIAL_CROSS_ENTROPY).relation_settings()
    {}
    """
    name = choose(preset)
    given = {k: v for k, v in fields.items() if v is not None}
    values = dict(PRESETS[name])
    if name == "gpu":
        if given.get("pretrained"):
            values["lr"] = PRETRAINED_LR
        crop = given.get("crop_size", values["crop_size"])
        scale = crop / image_side(given.get("data", TrainConfig.data))
        values["scale_range"] = (0.5 * scale, 1.5 * scale)
    return TrainConfig(**{**values, **given})


def image_side(data):
    """Return the longer side in pixels of the first val image of `data` (TrainConfig.data)."""
    image = datasets.open_data(data, "val", "full")[0]["image"]
    return max(image.shape[1:])
