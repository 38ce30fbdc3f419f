"""From a trained run to masks: load a run (stage 1 + optional stage-2 head) and predict.

* ``softmax``: the softmax head on the unit embeddings, upsampled and averaged over the image and
  its mirror image (`predict_softmax`), optionally refined by a dense CRF
  (`spml_lab.prediction.crf`).
* ``knn``: segment the image by k-means and label each segment by its k nearest prototypes of
  the *training* images, built from their weak labels (`build_bank`).

`load_run` checks what it loads and names the file and the keys when something does not fit.
`spml_lab.prediction.evaluate` scores these predictions; ``spml-lab predict`` writes them as masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from spml_lab import checks, devices
from spml_lab.data import datasets, labelio
from spml_lab.nets import embedding_nets, heads
from spml_lab.prediction import knn, probabilities
from spml_lab.prediction.crf import dense_crf_batch
from spml_lab.training import checkpoints, train
from spml_lab.training.checkpoints import CONFIG, FINAL, load_checkpoint
from spml_lab.training.config import RESUMABLE_CHANGES, TrainConfig

__all__ = [
    "STAGE2",
    "Run",
    "load_run",
    "dataset_for",
    "image_batches",
    "to_uint8",
    "check_images",
    "predict_softmax",
    "predict",
    "working_size",
    "upsample_labels",
    "predict_file",
    "build_bank",
    "knn_settings",
]

STAGE2 = "stage2.pt"  # the stage-2 head, written by `spml_lab.prediction.stage2.fit_head`


@dataclass
class Run:
    """A finished stage-1 run, ready to predict with.

    Attributes
    ----------
    path : Path
        The run folder.
    net : torch.nn.Module
        Embedding network, in eval mode.
    head : heads.SoftmaxHead
        Stage-1 softmax head, in eval mode.
    cfg : TrainConfig
        The run's config.
    num_classes : int
    class_names : list of str or None
    step : int
        Training steps done.
    stage2_head : heads.SoftmaxHead or None
        The head of RUN_DIR/stage2.pt when it exists.
    data_fingerprint : dict or None
        What the run trained on (`datasets.data_fingerprint`); None for runs written before
        runs recorded it.
    """

    path: Path
    net: torch.nn.Module
    head: torch.nn.Module
    cfg: TrainConfig
    num_classes: int
    class_names: list | None
    step: int
    stage2_head: torch.nn.Module | None = None
    data_fingerprint: dict | None = None

    @property
    def device(self):
        """Device the network's weights live on."""
        return next(self.net.parameters()).device


def _read_checkpoint(path, needs):
    """Load a checkpoint dict and check that it has the entries `needs`."""
    state = load_checkpoint(path)  # names the file when it cannot be read
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a checkpoint dict, got {type(state).__name__}")
    missing = [key for key in needs if key not in state]
    if missing:
        raise ValueError(f"{path}: not a checkpoint of this kind, it lacks entries {missing}")
    return state


def _load_weights(module, state, path, entry, what):
    """`load_state_dict`, naming the first offending keys when the weights do not fit."""
    expected = module.state_dict()
    if not isinstance(state, dict):
        raise ValueError(f"{path}: entry {entry!r} is not a state dict")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} saved vs {tuple(v.shape)} built"
        for k, v in expected.items()
        if k in state and getattr(state[k], "shape", v.shape) != v.shape
    ]
    problems = [
        f"{name} {items[:3]}{' ...' if len(items) > 3 else ''}"
        for name, items in (("missing keys", missing), ("unexpected keys", unexpected))
        if items
    ] + (["shape mismatches " + "; ".join(shapes[:3])] if shapes else [])
    if problems:
        raise ValueError(
            f"{path}: the {entry!r} weights do not fit the {what} its config builds: "
            + ", ".join(problems)
        )
    module.load_state_dict(state)


def load_run(run, *, device=devices.DEFAULT):
    """Load a finished run: network, stage-1 head, config and (if present) the stage-2 head.

    Parameters
    ----------
    run : str or Path
        The run folder, or its ``final.pt`` (then ``config.yaml`` and ``stage2.pt`` are
        looked for beside it), or ``"embedded:NAME"``, a run shipped with the samples
        (`datasets.run_folder`).
    device : str or torch.device, optional
        Where to put the weights (`devices.resolve_device`; ``"auto"``: CUDA when present).

    Returns
    -------
    run : Run

    Raises
    ------
    FileNotFoundError
        If the folder or its ``final.pt`` does not exist.
    ValueError
        If ``final.pt`` cannot be read, its config differs from the folder's ``config.yaml``
        (the folder mixes two runs), or a state dict does not fit the model its config
        builds (the message names the file and the first offending keys).

    Examples
    --------
    >>> import tempfile
    >>> cfg = TrainConfig(max_steps=1, crop_size=32, batch_size=2, width=8, embedding_dim=8,
    ...                   progress=False, out_dir=tempfile.mkdtemp() + "/run")
    >>> run = load_run(train.fit(cfg))
    >>> run.step, run.num_classes, run.stage2_head is None
    (1, 9, True)
    """
    path = datasets.run_folder(run)
    if not path.exists():
        raise FileNotFoundError(f"run folder not found: {path}")
    folder, final = (path, path / FINAL) if path.is_dir() else (path.parent, path)
    if not final.is_file():
        raise FileNotFoundError(
            f"{final} not found: {folder} holds no finished run (spml-lab train writes "
            "final.pt when it ends)"
        )
    state = checkpoints.read_final(final)  # entries, their types, finite tensors, or the file named
    cfg = TrainConfig.from_dict(state["config"], source=f"{final} config")
    if (folder / CONFIG).is_file():
        saved = TrainConfig.from_yaml(folder / CONFIG)
        changed = saved.differences(cfg, ignore=RESUMABLE_CHANGES)
        if changed:
            raise ValueError(
                f"{final} holds a config that differs from {folder / CONFIG} in "
                + ", ".join(f"{k} ({b!r} vs {a!r})" for k, (a, b) in changed.items())
                + ": the folder mixes two runs"
            )
    num_classes = state["num_classes"]
    net, head = train.build_model(cfg, num_classes, load_pretrained=False)
    _load_weights(net, state["model"], final, "model", f"{cfg.model!r} network")
    _load_weights(head, state["head"], final, "head", "softmax head")
    device = devices.resolve_device(device)
    stage2_head = None
    if (folder / STAGE2).is_file():
        stage2_head = _load_stage2_head(folder / STAGE2, cfg, num_classes).to(device).eval()
    return Run(
        path=folder,
        net=net.to(device).eval(),
        head=head.to(device).eval(),
        cfg=cfg,
        num_classes=num_classes,
        class_names=state.get("class_names"),
        step=int(state.get("step", 0)),
        stage2_head=stage2_head,
        data_fingerprint=state.get("data_fingerprint"),
    )


def _load_stage2_head(path, cfg, num_classes):
    """Read stage2.pt and check that it was trained on this run's embedding."""
    state = _read_checkpoint(path, ("head", "run_config"))
    changed = TrainConfig.from_dict(state["run_config"], source=str(path)).differences(
        cfg, ignore=RESUMABLE_CHANGES
    )
    if changed:
        raise ValueError(
            f"{path} was trained on the embedding of another run (config differs in "
            f"{sorted(changed)}); rerun `spml-lab stage2` on this run"
        )
    head = heads.SoftmaxHead(cfg.embedding_dim, num_classes)  # eval mode: dropout unused
    _load_weights(head, state["head"], path, "head", "softmax head")
    return head


# ---------------------------------------------------------------------- data


def dataset_for(cfg, split, annotation, fingerprint=None):
    """Open one split and annotation of the run's data, without augmentation.

    Parameters
    ----------
    cfg : TrainConfig
        ``data`` is ``"embedded:KIND"`` or a `spml-lab make-data` folder.
    split : str
        E.g. ``"val"``, or ``cfg.split`` for the training images.
    annotation : str
        ``"full"`` for dense ground truth, ``cfg.annotation`` for the weak labels.
    fingerprint : dict, optional
        The run's `datasets.data_fingerprint` (``Run.data_fingerprint``): the data must still
        be the dataset the run trained on.

    Returns
    -------
    dataset : datasets.SegmentationList

    Raises
    ------
    ValueError
        If the data's ``dataset.json`` is not the one the run recorded (another dataset now
        sits at that path), naming both folders.

    Examples
    --------
    >>> dataset_for(TrainConfig(), "val", "full").annotation
    'full'
    """
    if fingerprint is not None:
        now = datasets.data_fingerprint(cfg.data)
        if now["dataset_json"] != fingerprint.get("dataset_json"):
            raise ValueError(
                f"{now['root']} is not the dataset this run trained on: its dataset.json differs "
                f"from the one recorded when the run trained on {fingerprint.get('root')}"
            )
    return datasets.open_data(cfg.data, split, annotation)


def image_batches(dataset, batch_size, max_images=None):
    """Yield collated batches of consecutive images, each batch of one image size.

    Parameters
    ----------
    dataset : datasets.SegmentationList
    batch_size : int
        Most images per batch.
    max_images : int, optional
        Use only the first `max_images` images.

    Yields
    ------
    batch : dict
        ``image`` (B, 3, H, W), ``label`` (B, H, W), ``tags`` (B, C), ``name``, ``index``...

    Examples
    --------
    >>> batches = image_batches(dataset_for(TrainConfig(), "val", "full"), 3, max_images=7)
    >>> [len(b["name"]) for b in batches]
    [3, 3, 1]
    """
    if batch_size < 1 or (max_images is not None and max_images < 1):
        raise ValueError(f"batch_size and max_images must be >= 1, got {batch_size}, {max_images}")
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    buffer = []
    for index in range(count):
        item = dataset[index]
        # images of another size start a new batch: items cannot be stacked across sizes
        if buffer and (
            len(buffer) == batch_size or item["image"].shape != buffer[0]["image"].shape
        ):
            yield default_collate(buffer)
            buffer = []
        buffer.append(item)
    if buffer:
        yield default_collate(buffer)


def to_uint8(images):
    """(B, 3, H, W) floats in [0, 1] -> (B, H, W, 3) uint8 on the CPU, for the CRF."""
    return (images.detach() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()


def check_images(images):
    """Raise ValueError unless `images` is a (B, 3, H, W) tensor."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(getattr(images, "shape", ()))
        raise ValueError(f"images must be a (B, 3, H, W) float tensor, got {shape}")


# ---------------------------------------------------------------------- prediction


def predict_softmax(net, head, images, *, flip=True):
    """Class probabilities of a softmax head on the unit embeddings, at image resolution.

    Parameters
    ----------
    net : torch.nn.Module
        Embedding network (eval mode).
    head : heads.SoftmaxHead
    images : (B, 3, H, W) float tensor in [0, 1]
    flip : bool, optional
        Average with the mirrored image's prediction (`probabilities.flip_average`), as the
        paper's test-time flip.

    Returns
    -------
    probs : (B, C, H, W) float32 tensor
        On the network's device; sums to 1 over C.

    Examples
    --------
    >>> net, head = embedding_nets.SmallEmbeddingNet(8, 8).eval(), heads.SoftmaxHead(8, 3)
    >>> probs = predict_softmax(net, head, torch.rand(2, 3, 16, 12))
    >>> tuple(probs.shape), bool(torch.allclose(probs.sum(1), torch.ones(2, 16, 12)))
    ((2, 3, 16, 12), True)
    """
    check_images(images)
    size = tuple(images.shape[-2:])

    def softmax(x):
        return torch.softmax(head(embedding_nets.embed(net, x), size=size).float(), dim=1)

    with torch.no_grad():
        return probabilities.flip_average(softmax, images) if flip else softmax(images)


def predict(
    net,
    head,
    images,
    *,
    method="softmax",
    crf=False,
    flip=True,
    bank=None,
    knn_options=None,
    crf_options=None,
    max_side=None,
):
    """Label images with a trained run: softmax head or kNN retrieval, optionally + CRF.

    Parameters
    ----------
    net : torch.nn.Module
        Embedding network (eval mode).
    head : heads.SoftmaxHead
        Softmax head (stage 1 or stage 2); for ``"knn"`` it only gives the class count.
    images : (B, 3, H, W) float tensor in [0, 1]
    method : {"softmax", "knn"}, optional
    crf : bool, optional
        Refine with `crf.dense_crf_batch` before the argmax (kNN: its vote fractions,
        bilinearly upsampled, are the probabilities).
    flip : bool, optional
        Flip-average the softmax (not used by kNN).
    bank : knn.PrototypeBank, optional
        Training prototypes; required for ``"knn"`` (`build_bank`).
    knn_options : dict, optional
        Keyword arguments of `knn.knn_predict` (``k``, ``grid``, ``iterations``).
    crf_options : dict, optional
        Keyword arguments of `crf.dense_crf`.
    max_side : int, optional
        Work at most at this many pixels on the longer side (>= 1): larger images are
        downscaled (antialiased, `working_size`), labelled, and the labels brought back to
        full size by nearest sampling (`upsample_labels`), so the network's and the CRF's
        memory and time stay bounded (the paper's inference also runs at a few fixed scales);
        `predict_file` also keeps the input and the output small. None: full resolution.

    Returns
    -------
    labels : (B, H, W) int64 tensor
        On the CPU, at the input's full size.

    Raises
    ------
    ValueError
        On an unknown method, a kNN call without a bank, malformed images, or a `max_side`
        below 1 (the message names it).

    Examples
    --------
    >>> net, head = embedding_nets.SmallEmbeddingNet(8, 8).eval(), heads.SoftmaxHead(8, 3)
    >>> labels = predict(net, head, torch.rand(1, 3, 16, 16), crf=True)
    >>> labels.shape, int(labels.max()) < 3
    (torch.Size([1, 16, 16]), True)
    """
    check_images(images)
    if max_side is not None:
        checks.in_range("max_side", max_side, 1)
    size = tuple(images.shape[-2:])
    work = working_size(size, max_side)
    if work != size:
        small = F.interpolate(images.float(), size=work, mode="bilinear", antialias=True)
        labels = predict(net, head, small.clamp(0, 1), method=method, crf=crf, flip=flip,
                         bank=bank, knn_options=knn_options, crf_options=crf_options)  # fmt: skip
        return upsample_labels(labels, size)
    if method == "softmax":
        probs = predict_softmax(net, head, images, flip=flip)
    elif method == "knn":
        if bank is None:
            raise ValueError("method 'knn' needs bank= (a PrototypeBank, see build_bank)")
        with torch.no_grad():
            emb = embedding_nets.embed(net, images)
            # segment test images as the bank's were, unless knn_options says otherwise
            options = {**bank.settings, **(knn_options or {})}
            labels, votes = knn.knn_predict(
                emb, bank, num_classes=head.classifier.out_channels, **options
            )
        if not crf:  # each image pixel takes the label of the embedding pixel it lies in
            return upsample_labels(labels.cpu().long(), size)
        probs = probabilities.upsample_probs(votes, size)
    else:
        raise ValueError(f"method must be 'softmax' or 'knn', got {method!r}")
    if crf:
        probs = dense_crf_batch(to_uint8(images), probs.cpu(), **(crf_options or {}))
    return probs.argmax(dim=1).cpu()


def working_size(size, max_side):
    """Return the size `predict` labels an image at: at most `max_side` on the longer side.

    Parameters
    ----------
    size : (int, int)
        ``(H, W)`` of the image.
    max_side : int or None
        None: the image's own size.

    Returns
    -------
    work : (int, int)
        `size` scaled by ``max_side / max(size)`` and rounded (at least 1), or `size` itself
        when it already fits.

    Examples
    --------
    >>> working_size((3000, 2000), 1024), working_size((300, 200), 1024)
    ((1024, 683), (300, 200))
    """
    size = tuple(int(side) for side in size)
    if max_side is None or max(size) <= max_side:
        return size
    scale = max_side / max(size)
    return tuple(max(1, round(side * scale)) for side in size)


def _nearest_rows(length, out):
    """Source index of each of `out` output positions: torch's ``mode="nearest"`` rule."""
    # float32 like torch's CPU kernel (src = floor(dst * in / out)), so both pick the same pixels
    scale = np.float32(length) / np.float32(out)
    index = np.floor(np.arange(out, dtype=np.float32) * scale).astype(np.intp)
    return np.minimum(index, length - 1)


def upsample_labels(labels, size):
    """Bring label maps to `size` by nearest sampling, without any float copy of the output.

    Parameters
    ----------
    labels : (..., h, w) int ndarray or tensor
        E.g. a (h, w) uint8 map or (B, h, w) int64 labels from `predict`.
    size : (int, int)
        ``(H, W)`` to bring them to.

    Returns
    -------
    labels : (..., H, W) ndarray or tensor
        Same type and dtype as the input: the output costs one byte per pixel for uint8 labels,
        where ``F.interpolate`` would need a float copy (4 bytes per pixel and more).

    Notes
    -----
    Picks the same source pixel as ``torch.nn.functional.interpolate(mode="nearest")``.

    Examples
    --------
    >>> upsample_labels(np.array([[0, 1], [2, 3]], np.uint8), (3, 4)).tolist()
    [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3]]
    """
    height, width = (int(side) for side in size)
    rows = _nearest_rows(labels.shape[-2], height)
    cols = _nearest_rows(labels.shape[-1], width)
    if isinstance(labels, torch.Tensor):
        rows, cols = (
            torch.from_numpy(rows).to(labels.device),
            torch.from_numpy(cols).to(labels.device),
        )
        return labels.index_select(-2, rows).index_select(-1, cols)
    # rows first: the intermediate (..., H, w) is the small one for a wide upsampling factor
    return np.take(np.take(labels, rows, axis=-2), cols, axis=-1)


# the longer side photos are labelled at: the dense CRF's memory grows with it, and at 896 a
# 10000 x 10000 JPEG peaks at 1.3 GiB with the CRF (1024: 1.5 GiB; predict_memory.csv)
MAX_SIDE = 896


def predict_file(net, head, path, *, max_side=MAX_SIDE, max_pixels=None, **options):
    """Label one photo file at a bounded working size and return the labels at its full size.

    Beyond the uint8 labels it returns, memory does not grow with a JPEG's size: the file is
    decoded at reduced size (`labelio.read_image` with `max_side`: libjpeg's 1/2, 1/4, 1/8
    scaled decoding; other formats are decoded once at full size, then block-averaged),
    labelled at `working_size`, and the labels are brought back to the file's full size as
    one uint8 map (`upsample_labels`), never as floats.

    Parameters
    ----------
    net : torch.nn.Module
        Embedding network (eval mode).
    head : heads.SoftmaxHead
    path : str or Path
        A photo (JPEG, PNG).
    max_side : int or None, optional
        Label at most at this many pixels on the longer side (None: full resolution, which
        needs memory in proportion to the photo).
    max_pixels : int, optional
        Refuse larger files (`labelio.read_image`; default: Pillow's limit).
    **options
        Keyword arguments of `predict` (``crf``, ``flip``, ``method``, ``bank`` ...).

    Returns
    -------
    labels : (H, W) uint8 ndarray
        Class per pixel of the photo at its full size.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it cannot be decoded or is too large (`labelio.read_image`), `max_side` is below 1,
        or the head has more than 256 classes (no uint8 label map holds them).
    """
    num_classes = head.classifier.out_channels
    if num_classes > 256:
        raise ValueError(
            f"predict_file writes uint8 labels: at most 256 classes, got {num_classes}"
        )
    size = labelio.image_size(path, max_pixels=max_pixels)  # (H, W) from the header
    image = labelio.read_image(path, max_side=max_side, max_pixels=max_pixels)  # (h, w, 3)
    images = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()  # (1, 3, h, w)
    del image  # one copy of the decoded photo while the network and the CRF run
    work = working_size(size, max_side)  # from the full size: decoding rounds the sides up
    if tuple(images.shape[-2:]) != work:
        images = F.interpolate(images, size=work, mode="bilinear", antialias=True).clamp(0, 1)
    labels = predict(net, head, images, **options)[0]  # (h', w') int64, CPU
    return upsample_labels(labels.numpy().astype(np.uint8), size)


def knn_settings(cfg, knn_options=None):
    """Fill in kNN defaults: twice the training k-means grid (paper: 6 x 6 train, 12 x 12 test)."""
    settings = {"k": 20, "grid": tuple(2 * g for g in cfg.kmeans_grid), "iterations": 10}
    settings.update(knn_options or {})
    return settings


def build_bank(run, *, batch_size=8, max_images=None, knn_options=None):
    """Prototype bank of a run's training images and weak labels, for kNN retrieval.

    Parameters
    ----------
    run : Run
        From `load_run`.
    batch_size : int, optional
    max_images : int, optional
        Use only the first training images.
    knn_options : dict, optional
        ``grid`` and ``iterations`` of the k-means (default: twice the training grid, 10).

    Returns
    -------
    bank : knn.PrototypeBank
        On the run's device; one prototype per labelled segment of the training split
        (``cfg.split``, ``cfg.annotation``, no augmentation).

    Raises
    ------
    ValueError
        If no training pixel is labelled (image tags: train on CAM pseudo labels instead).
    """
    settings = knn_settings(run.cfg, knn_options)
    dataset = dataset_for(run.cfg, run.cfg.split, run.cfg.annotation, run.data_fingerprint)
    banks = []
    with torch.no_grad():
        for batch in image_batches(dataset, batch_size, max_images):
            emb = embedding_nets.embed(run.net, batch["image"])
            labels = train.downsample_nearest(batch["label"].to(emb.device), emb.shape[1:3])
            banks.append(
                knn.build_prototype_bank(
                    emb, labels, grid=settings["grid"], iterations=settings["iterations"]
                )
            )
    bank = knn.PrototypeBank.concat(banks)
    bank.settings = settings  # predict segments test images the same way
    if len(bank) == 0:
        raise ValueError(
            f"no labelled pixel in {dataset.list_file}: kNN retrieval needs weak labels "
            "(leave 'knn' out of the methods)"
        )
    return bank
