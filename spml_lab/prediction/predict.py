"""From a trained run to masks: predict with a loaded run (`spml_lab.training.runs.load_run`).

* ``softmax``: the softmax head on the unit embeddings, upsampled and averaged over the image and
  its mirror image (`predict_softmax`), optionally refined by a dense CRF
  (`spml_lab.prediction.crf`).
* ``knn``: segment the image by k-means and label each segment by its k nearest prototypes of
  the *training* images, built from their weak labels (`build_bank`).

`spml_lab.prediction.evaluate` scores these predictions; ``spml-lab predict`` writes them as masks.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from spml_lab import checks
from spml_lab.constants import KMEANS_ITERATIONS
from spml_lab.data import datasets, labelio
from spml_lab.method.label_maps import downsample_nearest
from spml_lab.nets import embedding_nets
from spml_lab.prediction import knn, probabilities
from spml_lab.prediction.crf import dense_crf_batch

__all__ = [
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
    >>> from spml_lab.training.config import TrainConfig
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
    >>> from spml_lab.training.config import TrainConfig
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
    >>> from spml_lab.nets import heads
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
    >>> from spml_lab.nets import heads
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
    settings = {"k": knn.NEIGHBOURS, "grid": knn.retrieval_grid(cfg.kmeans_grid),
                "iterations": KMEANS_ITERATIONS}  # fmt: skip
    settings.update(knn_options or {})
    return settings


def build_bank(run, *, batch_size=8, max_images=None, knn_options=None):
    """Prototype bank of a run's training images and weak labels, for kNN retrieval.

    Parameters
    ----------
    run : runs.Run
        From `spml_lab.training.runs.load_run`.
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
            labels = downsample_nearest(batch["label"].to(emb.device), emb.shape[1:3])
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
