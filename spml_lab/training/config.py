"""`TrainConfig`: every knob of a stage-1 SPML training run, with one name everywhere.

The same field names are the keys of a run's ``config.yaml``, the flags of ``spml-lab train``
(``--lr 0.01 --annotation points --kmeans-grid 4 4 --no-low-level``) and the globals of a
notebook's ``parameters`` cell, so a papermill sweep, a YAML file and a shell command describe
a run in the same words. CLI flags are generated from the dataclass fields; each field's help
text says why it exists and what the paper used (its VOC scripts ``bashscripts/voc12/
train_spml_*.sh`` and ``configs/voc12_template.yaml`` [1]_).

Precedence when several sources are given: dataclass defaults < ``--config`` YAML < flags.

The defaults are the calibrated recipe of the embedded objects, the default data: the small
network (width 32, D = 32) from scratch, whole 96 px scenes, batch 8, LR 0.05, a 2 x 2 k-means
grid, chosen with the baselines alone (``benchmarks/calibrate.py``, setting ``cal_d10_do10`` of
``benchmarks/results/calibration.csv``). They live here, not in a preset, so that every way of
starting a run on the default data (``spml-lab train`` with no flags, ``TrainConfig()`` in a
notebook, the benchmarks, ``spml-lab demo``) trains what was measured, and a field's help is the
one place that says its value and why. The presets (`presets`) only add a budget (60 steps on a
laptop, the benchmark's 1000) or change the scale (ResNet-101 at 512 px on a GPU); other data
than 96 px scenes may want another ``crop_size`` and ``kmeans_grid``.

References
----------
.. [1] Ke, Hwang, Yu. "Universal Weakly Supervised Segmentation by Pixel-to-Segment Contrastive
   Learning", ICLR 2021; code: github.com/twke18/SPML.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from spml_lab import devices
from spml_lab.constants import (
    ANNOTATIONS,
    KMEANS_GRID,
    KMEANS_ITERATIONS,
    PSEUDO_ANNOTATIONS,
    SHORTENED_SCRIBBLES,
)
from spml_lab.method.relations import RELATIONS, RelationSetting, paper_settings

__all__ = [
    "TrainConfig",
    "add_arguments",
    "add_field_arguments",
    "field_values",
    "from_arguments",
    "given_fields",
    "option",
    "RESUMABLE_CHANGES",
]

MODELS = ("small", "resnet50", "resnet101")
MIN_CROP = 16
LR_POLICIES = ("poly", "constant")
EMBEDDED_KINDS = ("objects", "parts")
# Fields that may differ between a run and its resumption without changing what it computes.
RESUMABLE_CHANGES = (
    "resume", "device", "num_workers", "progress", "log_every", "out_dir", "pretrained",
    "check_files_limit", "cache_data",
)  # fmt: skip


def option(default, why, choices=None, kind=None, nargs=None):
    """Make a dataclass field whose why-text is also its CLI help (one source for both).

    Parameters
    ----------
    default : object
        The field's default.
    why : str
        What the field does; the help of its flag (`add_field_arguments`).
    choices : sequence, optional
        The values the flag accepts.
    kind : type, optional
        The value type of a field whose default is None ("decided by another field").
    nargs : str, optional
        ``"+"`` for a field that takes one or more values (a tuple).
    """
    kind = kind or type(default)
    metadata = {"help": why, "choices": choices, "kind": kind, "nargs": nargs}
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Settings of one stage-1 training run (embedding + softmax head on weak labels).

    Defaults are the calibrated recipe on the embedded objects data (the module's docstring
    says why they live here) for 300 steps, a few minutes on a laptop; each field's help
    (``TrainConfig.help(name)``, ``spml-lab train --help``) gives the paper's VOC value. Values
    are checked on construction: a bad one raises ``ValueError`` naming the field.

    Examples
    --------
    >>> cfg = TrainConfig(lr=0.02, annotation="points")
    >>> cfg.lr, cfg.kmeans_grid, sorted(cfg.relation_settings())
    (0.02, (2, 2), ['cooccurrence', 'low_level', 'semantic_annotation'])
    >>> TrainConfig(batch_size=0)
    Traceback (most recent call last):
    ...
    ValueError: TrainConfig.batch_size must be >= 1, got 0
    """

    # ---- data
    data: str = option(
        "embedded:objects",
        "'embedded:objects' / 'embedded:parts' (the committed samples) or a folder written "
        "by `spml-lab make-data`",
    )
    annotation: str = option(
        "scribbles",
        "weak labels to train on; the paper reports all five; 'cam_tags' / 'cam_boxes' are the "
        "CAM pseudo labels SPML trains on for tags and boxes (`spml-lab cam-labels`); "
        "'scribbles_80/50/30' shortened scribbles (`make_data.write_shortened_scribbles`)",
        ANNOTATIONS + PSEUDO_ANNOTATIONS + SHORTENED_SCRIBBLES,
    )
    split: str = option("train", "split of the dataset to train on (paper: VOC train+)")
    crop_size: int = option(
        96, "square training crop in pixels: the embedded scenes whole (paper: 512 on VOC)"
    )
    scale_range: tuple = option(
        (0.5, 1.5), "random rescale range before cropping (paper: random_scale 0.5-1.5)"
    )
    flip: bool = option(True, "random horizontal flips (paper: random_mirror true)")
    num_workers: int = option(0, "DataLoader worker processes; 0 loads in the main process")
    cache_data: bool = option(
        False,
        "keep the decoded training files in memory after their first read (data that fits in "
        "RAM, such as the embedded benchmark's; each DataLoader worker keeps its own copy)",
    )
    check_files_limit: int = option(
        5000,
        "read and check every file of a training list of at most this many lines before step 0 "
        "(a bad file fails at once, not at the step that draws it); 0 = never (VOC-sized lists "
        "take minutes to check)",
    )
    # ---- model
    model: str = option(
        "small",
        "embedding network: 'small' trains from scratch on a CPU; 'resnet50' / 'resnet101' are "
        "DeepLab-v2 (ASPP) nets at output stride 8 (paper: ResNet-101)",
        MODELS,
    )
    embedding_dim: int = option(32, "embedding dimension D (paper: 64)")
    width: int = option(
        32, "channels of the small net's trunk (speed vs capacity); the calibrated recipe's"
    )
    head_dropout: float = option(
        0.75,
        "dropout of the stage-1 softmax head before its classifier (paper: 0.75; its stage-2 "
        "classifier uses 0.65)",
    )
    pretrained: str = option(
        "",
        "torchvision ImageNet checkpoint (.pth) for the resnet50/101 backbone; '' = random "
        "init; ignored by 'small' (paper: ImageNet-pretrained ResNet-101)",
    )
    # ---- the four relations: on/off, kappa (concentration), weight in the total loss
    low_level: bool = option(True, "low-level image similarity (superpixels); paper: on")
    low_level_concentration: float = option(16.0, "kappa of low-level similarity (paper: 16)")
    low_level_weight: float = option(0.1, "weight of low-level similarity (paper: 0.1)")
    low_level_location_weight: float = option(
        1.0,
        "weight of the location features that low-level similarity compares with the embedding, "
        "[v, w * location] re-normalised as for k-means (paper: 1 in its VOC model; 0, the "
        "plain embedding, in its DensePose model)",
    )
    semantic_annotation: bool = option(True, "semantic annotation (weak labels); paper: on")
    semantic_annotation_concentration: float = option(
        6.0, "kappa of semantic annotation (paper: 6)"
    )
    semantic_annotation_weight: float | None = option(
        None,
        "weight of semantic annotation; unset: the paper's for the annotation kind (scribbles "
        "1.0, points 0.1, boxes and tags 0.3; relations.paper_settings)",
        kind=float,
    )
    cooccurrence: bool = option(True, "semantic co-occurrence (image tags); paper: on for VOC")
    cooccurrence_concentration: float | None = option(
        None,
        "kappa of co-occurrence; unset: the paper's for the annotation kind (scribbles 12, "
        "points, boxes and tags 8)",
        kind=float,
    )
    cooccurrence_weight: float | None = option(
        None,
        "weight of co-occurrence; unset: the paper's for the annotation kind (scribbles 0.5, "
        "points 0.1, boxes and tags 0.3)",
        kind=float,
    )
    feature_affinity: bool = option(
        False, "feature affinity (nearest labelled segment); paper: on for DensePose only"
    )
    feature_affinity_concentration: float = option(12.0, "kappa of feature affinity (paper: 12)")
    feature_affinity_weight: float = option(0.5, "weight of feature affinity (paper: 0.5)")
    affinity_threshold: float = option(
        0.95, "least prototype cosine to borrow a label in feature affinity (paper: 0.95)"
    )
    memory_size: int = option(2, "batches of prototypes kept as extra contrast (paper: 2; 0 = off)")
    contrast_images: int = option(
        0,
        "images whose segments a pixel is contrasted with: the global batch plus the memory, "
        "which then keeps ceil(contrast_images / global batch) - 1 batches in place of "
        "memory_size; 0 = batch x (1 + memory_size) (paper: 16 + 2 x 16 = 48)",
    )
    softmax_weight: float | None = option(
        None,
        "weight of the softmax head's cross-entropy; unset: the semantic annotation weight, as "
        "the paper's (CE + L_ann) x w_ann, or 1 when head_trains_embedding (the baselines)",
        kind=float,
    )
    head_trains_embedding: bool = option(
        False,
        "let the softmax head's cross-entropy train the network too (not detached); with every "
        "relation off this is the partial cross-entropy baseline (paper: off, SPML detaches)",
    )
    # ---- segments
    kmeans_grid: tuple = option(
        KMEANS_GRID,
        "initial k-means grid (gy, gx) at embedding resolution: 2 x 2 cells of 144 pixels on the "
        "24 x 24 map of a 96 px crop (constants.KMEANS_GRID says why; paper: 6 x 6 on 128 x 128 "
        "embeddings of 512 crops)",
    )
    kmeans_iterations: int = option(KMEANS_ITERATIONS, "spherical k-means rounds (paper: 10)")
    # ---- optimisation
    lr: float = option(
        0.05,
        "SGD base learning rate: the calibrated recipe's for the small net from scratch (paper: "
        "3e-3 with an ImageNet ResNet)",
    )
    lr_policy: str = option("poly", "LR schedule: poly decay (paper) or constant", LR_POLICIES)
    lr_power: float = option(0.9, "power of the poly decay (paper: 0.9)")
    warmup_steps: int = option(20, "linear warm-up from lr/10 over these steps (paper: 100)")
    momentum: float = option(0.9, "SGD momentum (paper: 0.9)")
    weight_decay: float = option(5e-4, "L2 weight decay on weights, not biases (paper: 5e-4)")
    backbone_lr_mult: float = option(1.0, "LR multiplier of the trunk (paper: 1 for ResNet res3-5)")
    head_lr_mult: float = option(
        10.0, "LR multiplier of the embedding head and softmax classifier (paper: 10)"
    )
    bias_lr_mult: float = option(
        2.0, "extra LR multiplier of biases, which get no decay (paper: 2)"
    )
    batch_size: int = option(
        8, "images per step: the calibrated recipe's (paper: 4 per GPU on 4 GPUs)"
    )
    max_steps: int = option(300, "optimisation steps (paper: 30,000)")
    seed: int = option(0, "seeds weights, data order and augmentation (paper: 235)")
    # ---- hardware and bookkeeping
    device: str = option(devices.DEFAULT, devices.HELP)
    amp: bool = option(True, "bf16 autocast of the network on CUDA (ignored on CPU)")
    checkpoint_every: int = option(100, "steps between checkpoints (paper: snapshot_step)")
    log_every: int = option(10, "steps between metrics.csv rows and progress updates (paper: 100)")
    out_dir: str = option(
        "runs/spml", "run folder: config.yaml, metrics.csv, checkpoint.pt, final.pt"
    )
    progress: bool = option(True, "show a tqdm progress bar")
    resume: bool = option(False, "continue the run in out_dir from its last checkpoint")

    def __post_init__(self):
        for spec in dataclasses.fields(self):
            setattr(self, spec.name, _coerce(spec, getattr(self, spec.name)))
        self._validate()

    # ------------------------------------------------------------------ views

    def relation_settings(self):
        """Return the enabled relations with their kappa and weight.

        Returns
        -------
        settings : dict of str to relations.RelationSetting
            In `relations.RELATIONS` order, enabled relations only.
        """
        return {
            name: RelationSetting(self._knob(name, "concentration"), self._knob(name, "weight"))
            for name in RELATIONS
            if getattr(self, name)
        }

    def _knob(self, name, part):
        """Return a relation's concentration or weight: the field, else the paper's for the kind."""
        value = getattr(self, f"{name}_{part}")
        return getattr(paper_settings(self.annotation)[name], part) if value is None else value

    @property
    def resolved_softmax_weight(self):
        """The `softmax_weight` training uses: the field, else its default for the run.

        Unset (None), it is the semantic annotation weight (the paper's ``(CE + L_ann) x w_ann``),
        or 1 when the head trains the embedding (the baselines).

        Examples
        --------
        >>> TrainConfig(annotation="points").resolved_softmax_weight
        0.1
        >>> TrainConfig(annotation="points", head_trains_embedding=True).resolved_softmax_weight
        1.0
        """
        if self.softmax_weight is not None:
            return self.softmax_weight
        if self.head_trains_embedding:
            return 1.0
        return self._knob("semantic_annotation", "weight")

    def memory_batches(self, world_size=1):
        """Batches the prototype memory keeps (`contrast_images` or `memory_size`).

        Examples
        --------
        >>> TrainConfig(batch_size=4).memory_batches()
        2
        >>> TrainConfig(batch_size=4, contrast_images=48).memory_batches()  # 4 + 11 x 4 images
        11
        """
        if not self.contrast_images:
            return self.memory_size
        batch = self.batch_size * world_size
        return max(0, -(-self.contrast_images // batch) - 1)

    def to_dict(self):
        """Return the fields as plain YAML/JSON-friendly values (tuples as lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values, *, source="TrainConfig"):
        """Build from a mapping, naming unknown keys (with the closest field) in the error.

        Parameters
        ----------
        values : dict
            Field name to value; missing fields keep their defaults.
        source : str, optional
            What to call the mapping in error messages (e.g. the YAML path).

        Returns
        -------
        cfg : TrainConfig

        Raises
        ------
        ValueError
            On an unknown key or a bad value.
        """
        if not isinstance(values, dict):
            raise ValueError(f"{source} must be a mapping of field names to values")
        names = [spec.name for spec in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"{source}: unknown field {key!r}{hint}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path):
        """Read a config written by `to_yaml` (or by hand; missing keys keep defaults).

        Parameters
        ----------
        path : str or Path

        Returns
        -------
        cfg : TrainConfig

        Raises
        ------
        FileNotFoundError
            If `path` does not exist.
        ValueError
            On YAML that is not a mapping, an unknown key or a bad value.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:  # PyYAML names "<unicode string>", not the file
            raise ValueError(f"{path}: not valid YAML ({error})") from error
        return cls.from_dict(values, source=str(path))

    def to_yaml(self, path=None):
        """Write the config as YAML (field order kept); return the text.

        Parameters
        ----------
        path : str or Path, optional
            File to write; None only returns the text.

        Returns
        -------
        text : str

        Examples
        --------
        >>> "lr: 0.05" in TrainConfig().to_yaml()
        True
        """
        text = "# spml-lab train config (keys are TrainConfig fields)\n" + yaml.safe_dump(
            self.to_dict(), sort_keys=False
        )
        if path is not None:
            Path(path).write_text(text)
        return text

    def replace(self, **changes):
        """Return a copy with some fields changed (validated like a new config)."""
        return dataclasses.replace(self, **changes)

    def differences(self, other, *, ignore=()):
        """Return ``{field: (self value, other value)}`` for fields that differ.

        Parameters
        ----------
        other : TrainConfig
        ignore : sequence of str, optional
            Fields not compared.
        """
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: (mine[k], theirs[k]) for k in mine if k not in ignore and mine[k] != theirs[k]}

    @staticmethod
    def help(name):
        """Return the why-text of field `name`."""
        return {spec.name: spec.metadata["help"] for spec in dataclasses.fields(TrainConfig)}[name]

    # ------------------------------------------------------------------ checks

    def _validate(self):
        def need(ok, name, what):
            if not ok:
                raise ValueError(f"TrainConfig.{name} must be {what}, got {getattr(self, name)!r}")

        for spec in dataclasses.fields(self):  # inf or nan anywhere trains NaN weights
            value = getattr(self, spec.name)
            values = value if isinstance(value, tuple) else (value,)
            finite = all(math.isfinite(v) for v in values if isinstance(v, float))
            need(finite, spec.name, "finite")

        for spec in dataclasses.fields(self):
            choices = spec.metadata["choices"]
            if choices is not None:
                need(getattr(self, spec.name) in choices, spec.name, f"one of {list(choices)}")
        need(self.data.strip() != "", "data", "'embedded:KIND' or a dataset folder")
        if self.data.startswith("embedded:"):
            kind = self.data.split(":", 1)[1]
            need(kind in EMBEDDED_KINDS, "data", f"'embedded:' + one of {list(EMBEDDED_KINDS)}")
        need(self.split.strip() != "", "split", "a split name")
        # the networks bring a crop to 1/4 (the small net) or 1/8 (ResNet) of its side, and
        # k-means needs a few pixels per cell there
        need(self.crop_size >= MIN_CROP, "crop_size", f">= {MIN_CROP} pixels")
        for name in ("embedding_dim", "batch_size", "max_steps"):
            need(getattr(self, name) >= 1, name, ">= 1")
        need(self.width >= 2 and self.width % 2 == 0, "width", "an even int >= 2")
        low, high = self.scale_range
        need(0 < low <= high, "scale_range", "(low, high) with 0 < low <= high")
        for name in RELATIONS:
            kappa, weight = getattr(self, f"{name}_concentration"), getattr(self, f"{name}_weight")
            need(kappa is None or kappa > 0, f"{name}_concentration", "> 0")
            need(weight is None or weight >= 0, f"{name}_weight", ">= 0")
        need(self.softmax_weight is None or self.softmax_weight >= 0, "softmax_weight", ">= 0")
        need(self.low_level_location_weight >= 0, "low_level_location_weight", ">= 0")
        if not (self.head_trains_embedding or any(getattr(self, name) for name in RELATIONS)):
            raise ValueError(
                f"TrainConfig: enable at least one relation of {list(RELATIONS)} or "
                "head_trains_embedding; with neither the embedding is never trained"
            )
        need(-1 <= self.affinity_threshold <= 1, "affinity_threshold", "a cosine in [-1, 1]")
        need(0 <= self.head_dropout < 1, "head_dropout", "a probability in [0, 1)")
        names = ("memory_size", "contrast_images", "kmeans_iterations", "warmup_steps")
        names += ("check_files_limit",)
        for name in (*names, "num_workers", "seed"):
            need(getattr(self, name) >= 0, name, ">= 0")
        need(min(self.kmeans_grid) >= 1, "kmeans_grid", "two ints >= 1 (gy, gx)")
        for name in ("lr", "lr_power"):
            need(getattr(self, name) > 0, name, "> 0")
        need(0 <= self.momentum < 1, "momentum", "in [0, 1)")
        for name in ("weight_decay", "backbone_lr_mult", "head_lr_mult", "bias_lr_mult"):
            need(getattr(self, name) >= 0, name, ">= 0")
        for name in ("checkpoint_every", "log_every"):
            need(getattr(self, name) >= 1, name, ">= 1")
        need(self.out_dir.strip() != "", "out_dir", "a folder path")
        devices.check_device(self.device, argument="TrainConfig.device")


def _coerce(spec, value):
    """Bring a value from YAML, a notebook or the CLI to the field's type, or say why not."""
    default, name = spec.default, f"TrainConfig.{spec.name}"
    if default is None:  # "unset": None stays None, anything else is of the field's kind
        return None if value is None else _scalar(name, spec.metadata["kind"], value)
    if isinstance(default, tuple):
        if isinstance(value, str) or not hasattr(value, "__len__") or len(value) != len(default):
            raise ValueError(f"{name} must be {len(default)} values, got {value!r}")
        kind = type(default[0])
        return tuple(_scalar(name, kind, v) for v in value)
    return _scalar(name, type(default), value)


def _scalar(name, kind, value):
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"{name} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")
    return value


# ---------------------------------------------------------------------- command line


def add_arguments(parser):
    """Add one flag per `TrainConfig` field to an argparse parser, plus ``--config``.

    Flags default to "not given", so `from_arguments` can layer them over a YAML file.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    """
    parser.add_argument(
        "--config", default=None, help="YAML file of TrainConfig fields; flags override it"
    )
    add_field_arguments(parser, TrainConfig)


def add_field_arguments(parser, cls, defaults=None):
    """Add one flag per field of an `option`-built dataclass to an argparse parser.

    Flags are the field names with ``-`` or ``_`` (``--kmeans-grid`` = ``--kmeans_grid``);
    booleans get ``--flag`` / ``--no-flag`` (help lists ``--flag``); tuples take several
    values. A flag not given leaves its name out of the parsed namespace (`field_values`).

    Parameters
    ----------
    parser : argparse.ArgumentParser
    cls : type
        A dataclass whose fields carry `option` metadata.
    defaults : cls instance, optional
        The defaults the help shows, when the caller starts from other values than the class's.
    """
    for spec in dataclasses.fields(cls):
        spellings = dict.fromkeys([spec.name.replace("_", "-"), spec.name])  # one if no "_"
        names = [f"--{name}" for name in spellings]
        default = spec.default if defaults is None else getattr(defaults, spec.name)
        help_text = spec.metadata["help"]
        options = {"dest": spec.name, "default": argparse.SUPPRESS}
        if spec.metadata["kind"] is bool:
            negative = [f"--no-{name}" for name in spellings]
            why = f"{help_text} (default: {default}; {negative[0]} turns it off)"
            parser.add_argument(*names, action="store_true", help=why, **options)
            parser.add_argument(*negative, action="store_false", help=argparse.SUPPRESS, **options)
            continue
        if spec.metadata.get("nargs"):
            options.update(nargs=spec.metadata["nargs"], type=spec.metadata["kind"])
        elif isinstance(default, tuple):
            options.update(nargs=len(default), type=type(default[0]), metavar=spec.name.upper())
        else:
            options["type"] = spec.metadata["kind"]
        if spec.metadata["choices"] is not None:
            options["choices"] = spec.metadata["choices"]
        parser.add_argument(*names, help=f"{help_text} (default: {default!r})", **options)


def field_values(namespace, cls):
    """Return the fields of `cls` that parsed arguments gave (`add_field_arguments`).

    Examples
    --------
    >>> parser = argparse.ArgumentParser()
    >>> add_field_arguments(parser, TrainConfig)
    >>> field_values(parser.parse_args(["--lr", "0.05", "--no-flip"]), TrainConfig)
    {'flip': False, 'lr': 0.05}
    """
    names = {spec.name for spec in dataclasses.fields(cls)}
    return {key: value for key, value in sorted(vars(namespace).items()) if key in names}


def given_fields(namespace):
    """Return the fields a ``--config`` file and flags set, without the defaults.

    What a preset is overlaid with (``spml-lab train --preset``): the preset fills only what
    neither the file nor a flag says.

    Examples
    --------
    >>> parser = argparse.ArgumentParser()
    >>> add_arguments(parser)
    >>> given_fields(parser.parse_args(["--lr", "0.05"]))
    {'lr': 0.05}
    """
    values, given = vars(namespace), {}
    if values.get("config") is not None:
        written = TrainConfig.from_yaml(values["config"]).to_dict()  # checked, coerced
        keys = yaml.safe_load(Path(values["config"]).read_text()) or {}
        given = {key: written[key] for key in keys}
    return {**given, **field_values(namespace, TrainConfig)}


def from_arguments(namespace):
    """Build a `TrainConfig` from parsed arguments: defaults < ``--config`` file < flags.

    Parameters
    ----------
    namespace : argparse.Namespace
        From a parser prepared by `add_arguments`.

    Returns
    -------
    cfg : TrainConfig

    Examples
    --------
    >>> parser = argparse.ArgumentParser()
    >>> add_arguments(parser)
    >>> cfg = from_arguments(parser.parse_args(["--lr", "0.05", "--kmeans-grid", "3", "2",
    ...                                         "--no-low-level"]))
    >>> cfg.lr, cfg.kmeans_grid, cfg.low_level
    (0.05, (3, 2), False)
    """
    values = vars(namespace)
    base = (
        TrainConfig() if values.get("config") is None else TrainConfig.from_yaml(values["config"])
    )
    return base.replace(**field_values(namespace, TrainConfig))
