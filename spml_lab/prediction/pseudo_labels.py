"""Pseudo labels: a weakly trained head's softmax spread over whole objects by a random walk.

Pseudo labels turn weak labels into dense ones, as the paper's ``pseudo_softmaxrw_crf``
script does for each training image::

    softmax of the stage-1 head, flip-averaged              (C, h, w)
      -> only the image's tags (+ background), each class map divided by its maximum
      -> random walk on the embedding affinity exp(100 (cos - 1))   spreads to whole objects
      -> upsampled to the image, dense CRF                          snaps to image edges
      -> argmax over the tagged classes                             (H, W) uint8

`spml_lab.prediction.stage2` trains a fresh head on them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from spml_lab.nets import embedding_nets, heads  # noqa: F401  (heads: the docstring examples)
from spml_lab.prediction import probabilities
from spml_lab.prediction.crf import dense_crf_batch
from spml_lab.prediction.predict import check_images, to_uint8

__all__ = ["PseudoLabels", "random_walk", "walk_size", "from_head", "embed_views", "tag_argmax"]


class PseudoLabels(NamedTuple):
    """Pseudo labels of a batch and the maps they come from (for pictures).

    Attributes
    ----------
    labels : (B, H, W) uint8 tensor
        The pseudo labels; only classes of the image's tags (and background).
    softmax : (B, C, H, W) float tensor
        Tag-restricted softmax, each class divided by its maximum (the walk's input).
    walked : (B, C, H, W) float tensor
        After the random walk.
    crf : (B, C, H, W) float tensor or None
        After the dense CRF (None when it was switched off).
    """

    labels: torch.Tensor
    softmax: torch.Tensor
    walked: torch.Tensor
    crf: torch.Tensor | None


def _affinity_chunk(features, columns, sharpness, threshold):
    """Affinity of every pixel to the pixels `columns`: (B, N, len(columns))."""
    cosine = torch.bmm(features.transpose(1, 2), features[:, :, columns])
    # exp(s (cos - 1)) lies in (0, 1]: the exponent is never positive, so no overflow
    affinity = torch.exp(sharpness * (cosine - 1.0))
    if threshold is not None:
        affinity = affinity * (cosine >= threshold)
    return affinity


def random_walk(probs, embeddings, *, steps=64, sharpness=100.0, threshold=None, chunk_size=None):
    """Propagate class probabilities over the embedding affinity by a random walk.

    Parameters
    ----------
    probs : (B, C, h, w) float tensor
        Per-pixel class scores, e.g. from `restrict_to_tags`.
    embeddings : (B, h, w, D) float tensor
        Pixel embeddings at the same resolution, channels last (re-normalised to unit length
        here).
    steps : int, optional
        Walk steps. The paper squares its transition matrix 6 times: 2**6 = 64 steps.
    sharpness : float, optional
        Affinity ``a_ij = exp(sharpness * (cos_ij - 1))``: at the paper's 100, cos 0.99 gives
        0.37 and cos 0.9 gives 5e-5. The paper writes ``exp(5 (cos - 1)) ** 20`` (a scale and
        a power), but ``exp(s x) ** p = exp(s p x)``: only their product, 100, changes the
        walk, so one parameter holds it.
    threshold : float, optional
        If given, affinities of pixel pairs with cosine below it are set to exactly 0.
    chunk_size : int, optional
        Columns of the ``N x N`` affinity (N = h * w) held at once per image. Default: as many
        as fit in 2**26 floats (256 MiB) across the batch.

    Returns
    -------
    walked : (B, C, h, w) float32 tensor
        ``walked[:, :, j] = sum_i probs[:, :, i] T^steps[i, j]`` with the column-stochastic
        ``T[i, j] = a_ij / sum_k a_kj``: each step replaces a pixel's scores by the
        affinity-weighted mean of all pixels' scores, so distributions stay distributions.

    Raises
    ------
    ValueError
        If the shapes do not match or a parameter is out of range.

    Notes
    -----
    Rather than forming ``T^64`` by repeated squaring (6 products of N x N matrices, N^3
    each), the walk applies T to the C-channel scores 64 times (C N^2 each: far fewer
    operations for C << N), so T never has to be held whole. If one chunk covers all N
    columns the affinity is computed once and kept (B N^2 floats); otherwise each step
    recomputes it chunk by chunk (a product and an ``exp`` over N^2 per step; memory
    B N chunk_size). Sizes: at 1/8 of a 512 crop (64 x 64, the paper's choice) N^2 = 16.7M
    floats = 64 MiB per image, kept whole for up to 4 images by default (about 10 s per
    image for 64 steps on 2 CPU cores); at 1/4 (128 x 128) N^2 = 268M = 1 GiB per image, so
    it is recomputed in chunks, ~16x the work per step and ~10x slower again for the
    recomputation: walk at 1/8 resolution and upsample the result (`upsample_probs`).
    Runs without autograd.

    Examples
    --------
    >>> emb = torch.tensor([[[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]]])  # (1, 1, 3, 2): 0, 1 alike
    >>> probs = torch.tensor([[[[0.8, 0.2, 0.1]], [[0.2, 0.8, 0.9]]]])
    >>> random_walk(probs, emb, steps=1, threshold=0.5)[0, :, 0]
    tensor([[0.5000, 0.5000, 0.1000],
            [0.5000, 0.5000, 0.9000]])
    """
    probabilities.check_maps("probs", probs)
    probabilities.check_maps("embeddings", embeddings)
    if embeddings.shape[0] != probs.shape[0] or embeddings.shape[1:3] != probs.shape[2:]:
        raise ValueError(
            f"embeddings {tuple(embeddings.shape)} and probs {tuple(probs.shape)} need the "
            "same batch size and spatial size"
        )
    if steps < 0 or (chunk_size is not None and chunk_size < 1):
        raise ValueError(f"steps must be >= 0 and chunk_size >= 1, got {steps}, {chunk_size}")
    num_images, num_classes, height, width = probs.shape
    num_pixels = height * width
    if chunk_size is None:
        chunk_size = max(1, 2**26 // max(num_images * num_pixels, 1))
    with torch.no_grad():
        channels_first = embeddings.detach().float().permute(0, 3, 1, 2)
        features = F.normalize(channels_first.reshape(num_images, -1, num_pixels), dim=1)
        walked = probs.detach().float().reshape(num_images, num_classes, num_pixels)
        chunks = [slice(start, start + chunk_size) for start in range(0, num_pixels, chunk_size)]
        sharpness = float(sharpness)

        def transitions():
            for columns in chunks:
                affinity = _affinity_chunk(features, columns, sharpness, threshold)
                # column sums over all N rows: the chunk holds whole columns
                total = affinity.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
                yield columns, affinity / total  # (B, N, chunk)

        kept = list(transitions()) if len(chunks) == 1 else None
        for _ in range(steps):
            step = torch.empty_like(walked)
            for columns, transition in kept or transitions():
                step[:, :, columns] = torch.bmm(walked, transition)
            walked = step
    return walked.view(num_images, num_classes, height, width)


def walk_size(size, max_pixels=4096):
    """Resolution of the random walk: the embedding's, shrunk to at most `max_pixels`.

    Parameters
    ----------
    size : (int, int)
        Embedding resolution ``(h, w)``.
    max_pixels : int, optional
        Cap on ``h * w``: the walk holds an ``(h w)^2`` affinity per image. The default is
        the paper's 64 x 64 (1/8 of its 512 crops).

    Returns
    -------
    size : (int, int)
        Same aspect ratio, at least 1 x 1.

    Examples
    --------
    >>> walk_size((32, 32)), walk_size((128, 96))
    ((32, 32), (73, 55))
    """
    height, width = (int(s) for s in size)
    if height * width <= max_pixels:
        return height, width
    shrink = math.sqrt(max_pixels / (height * width))
    return max(1, int(height * shrink)), max(1, int(width * shrink))


def from_head(
    net,
    head,
    images,
    tags,
    *,
    flip=True,
    walk_steps=64,
    max_walk_pixels=4096,
    crf=True,
    crf_options=None,
    background=0,
    embeddings=None,
):
    """Pseudo labels of training images: tag softmax -> random walk -> dense CRF -> argmax.

    Parameters
    ----------
    net : torch.nn.Module
        Embedding network (eval mode).
    head : heads.SoftmaxHead
        The stage-1 softmax head.
    images : (B, 3, H, W) float tensor in [0, 1]
    tags : (B, C) bool tensor
        Classes present in each image (from its weak labels).
    flip : bool, optional
        Average the softmax and the embeddings over the image and its mirror image.
    walk_steps : int, optional
        Random-walk steps (the paper: 2**6 = 64).
    max_walk_pixels : int, optional
        The walk runs at embedding resolution, shrunk to at most this many pixels
        (`walk_size`).
    crf : bool, optional
        Refine the walked maps with `spml_lab.prediction.crf.dense_crf_batch`.
    crf_options : dict, optional
        Keyword arguments of `spml_lab.prediction.crf.dense_crf`.
    background : int or None, optional
        Class allowed in every image (`probabilities.restrict_to_tags`).
    embeddings : (B, h, w, D) or (2B, h, w, D) float tensor, optional
        `embed_views` of the images, given by a caller that keeps them (stage 2 trains its
        head on them). Default: computed here.

    Returns
    -------
    pseudo : PseudoLabels
        Labels (B, H, W) uint8 and the maps at image resolution, on the CPU.

    Raises
    ------
    ValueError
        On malformed images or tags, or more than 255 classes.

    Notes
    -----
    As the paper's script, each class map is divided by its maximum over the image before
    the walk (``scale_to_max``): a tagged class the head is unsure about gets the same peak
    as a confident one, and the walk then spreads it over pixels of similar embedding. The
    paper walks at 1/8 of the image (64 x 64 on VOC); the small CPU net embeds at 1/4,
    32 x 32 for 128 px images, cheap enough to walk at directly. The paper averages the
    affinities of the two flips; here the two flips' embeddings are averaged (and the walk
    re-normalises them). The final argmax runs over the allowed classes only, so a label
    never names a class outside the tags (the CRF alone could, in principle).

    Examples
    --------
    >>> torch.manual_seed(0)
    <torch._C.Generator object at ...>
    >>> net, head = embedding_nets.SmallEmbeddingNet(8, 8).eval(), heads.SoftmaxHead(8, 4)
    >>> tags = torch.tensor([[False, False, True, False]])
    >>> pseudo = from_head(net, head, torch.rand(1, 3, 16, 16), tags)
    >>> sorted(pseudo.labels.unique().tolist()) in ([0], [2], [0, 2])
    True
    """
    check_images(images)
    num_images, num_classes = images.shape[0], head.classifier.out_channels
    if num_classes > 256:
        raise ValueError(f"pseudo labels are uint8: at most 256 classes, got {num_classes}")
    if not isinstance(tags, torch.Tensor) or tuple(tags.shape) != (num_images, num_classes):
        raise ValueError(
            f"tags must be a ({num_images}, {num_classes}) bool tensor, got "
            f"{tuple(getattr(tags, 'shape', ()))}"
        )
    size = tuple(images.shape[-2:])
    if embeddings is None:
        embeddings = embed_views(net, images, flip=flip)  # (2B or B, h, w, D)
    if embeddings.shape[0] != num_images * (2 if flip else 1):
        raise ValueError(
            f"embeddings must hold {num_images * (2 if flip else 1)} images (the images"
            f"{' and their mirror images' if flip else ''}), got {embeddings.shape[0]}"
        )

    with torch.no_grad():
        # probabilities and embeddings together, so one flip average covers both
        joint = torch.softmax(head(embeddings).float(), dim=1)
        joint = torch.cat([joint, embeddings.permute(0, 3, 1, 2)], 1)  # (2B or B, C + D, h, w)
        if flip:  # as `probabilities.flip_average`
            joint = (joint[:num_images] + joint[num_images:].flip(-1)) / 2
        small = walk_size(joint.shape[-2:], max_walk_pixels)
        if small != tuple(joint.shape[-2:]):
            joint = F.interpolate(joint, size=small, mode="bilinear", align_corners=False)
        probs, emb = joint[:, :num_classes], joint[:, num_classes:].permute(0, 2, 3, 1)
        tags = tags.to(probs.device).bool()
        # log-probabilities as logits: the restricted softmax renormalises over the tags
        logits = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
        scaled = probabilities.restrict_to_tags(
            logits, tags, background=background, scale_to_max=True
        )
        walked = random_walk(scaled, emb, steps=walk_steps)
        scaled = probabilities.upsample_probs(scaled, size).cpu()
        walked = probabilities.upsample_probs(walked, size).cpu()
        refined = dense_crf_batch(to_uint8(images), walked, **(crf_options or {})) if crf else None
        labels = tag_argmax(walked if refined is None else refined, tags, background=background)
    return PseudoLabels(labels.to(torch.uint8), scaled, walked, refined)


def embed_views(net, images, *, flip=True):
    """Embed images and, with `flip`, their mirror images: what pseudo labels are made from.

    Parameters
    ----------
    net : torch.nn.Module
        Embedding network.
    images : (B, 3, H, W) float tensor in [0, 1]
    flip : bool, optional
        Also embed the mirror images.

    Returns
    -------
    embeddings : (2B, h, w, D) float tensor, or (B, h, w, D) without `flip`
        `embedding_nets.embed` of the images, then of their mirror images (not mirrored back).

    Notes
    -----
    Each view is embedded as a batch of its own: the network's convolutions round
    differently at another batch size, and stage 2 caches these very embeddings for its head,
    so its head is trained on exactly what the pseudo labels were made from.
    """
    views = [images, images.flip(-1)] if flip else [images]
    return torch.cat([embedding_nets.embed(net, view) for view in views])


def tag_argmax(maps, tags, *, background=0):
    """Return each pixel's class among its image's tags (and `background`): a masked argmax.

    Parameters
    ----------
    maps : (B, C, H, W) float tensor
        Class scores (any step of `from_head`).
    tags : (B, C) bool tensor
    background : int or None, optional
        Class allowed in every image.

    Returns
    -------
    labels : (B, H, W) int64 tensor
        On the maps' device.

    Examples
    --------
    >>> maps = torch.tensor([[[[0.1]], [[0.9]], [[0.5]]]])  # class 1 wins, but is not tagged
    >>> tag_argmax(maps, torch.tensor([[False, False, True]])).flatten().tolist()
    [2]
    """
    allowed = tags.to(maps.device).bool().clone()
    if background is not None:
        allowed[:, background] = True
    return maps.masked_fill(~allowed[:, :, None, None], float("-inf")).argmax(dim=1)
