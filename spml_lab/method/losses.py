"""The pixel-to-segment contrastive loss (SPML), for single labels and label sets.

Each pixel embedding ``v_i`` is compared with every segment prototype ``u_s`` through
``e_s = exp(kappa * v_i . u_s)``. Segments whose label agrees with the pixel's are its positives,
all others its negatives, and the loss is a soft nearest-neighbour classification:

    loss_i = -log( pos(i) / (pos(i) + sum_{s in diff(i)} e_s) )

where ``pos(i)`` sums the positives other than the pixel's own segment ``o(i)``, falling back to
``e_{o(i)}`` alone when there are none. "Agrees" means equal labels for single labels, and at
least one shared label for label sets (multi-hot rows). The four SPML relations (low-level image
similarity, semantic annotation, semantic co-occurrence, feature affinity) are this one loss
with different labels, prototypes and ``kappa``.

The ``P x S`` similarity matrix of a real batch does not fit in memory, so
`pixel_segment_loss` walks over blocks of pixels in log space, its gradients formed in the same
sweep (`loss_blocks`); `dense_pixel_segment_loss` is the same loss written for reading, and
`relation_masks` the one statement of which segments are positive and negative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spml_lab.constants import IGNORE_INDEX
from spml_lab.method.loss_blocks import BlockPlan, PixelSegmentLoss, default_chunk_size, unique_rows

__all__ = [
    "pixel_segment_loss",
    "dense_pixel_segment_loss",
    "relation_masks",
    "segment_roles",
    "default_chunk_size",
    "valid_labels",
    "unique_rows",
]

_REDUCTIONS = ("mean", "sum", "none")


def _check_inputs(
    embeddings, labels, segment_ids, prototypes, prototype_labels, reduction, groups=(None, None)
):
    """Raise ValueError on inconsistent shapes; return whether labels are multi-hot sets."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if embeddings.ndim != 2 or prototypes.ndim != 2:
        raise ValueError(
            f"embeddings and prototypes must be 2-D, got shapes {tuple(embeddings.shape)} "
            f"and {tuple(prototypes.shape)}"
        )
    num_pixels, dim = embeddings.shape
    if prototypes.shape[1] != dim:
        raise ValueError(f"prototypes have dimension {prototypes.shape[1]} but embeddings {dim}")
    if labels.ndim not in (1, 2) or labels.shape[0] != num_pixels:
        raise ValueError(
            f"labels must be (P,) or (P, C) with P={num_pixels}, got {tuple(labels.shape)}"
        )
    multi_label = labels.ndim == 2
    want = (prototypes.shape[0], labels.shape[1]) if multi_label else (prototypes.shape[0],)
    if tuple(prototype_labels.shape) != want:
        raise ValueError(
            f"prototype_labels must have shape {want} to match labels {tuple(labels.shape)} "
            f"and prototypes {tuple(prototypes.shape)}, got {tuple(prototype_labels.shape)}"
        )
    if segment_ids.shape != (num_pixels,):
        raise ValueError(
            f"segment_ids must have shape ({num_pixels},), got {tuple(segment_ids.shape)}"
        )
    if segment_ids.dtype.is_floating_point or segment_ids.dtype == torch.bool:
        raise ValueError(f"segment_ids must be an integer tensor, got {segment_ids.dtype}")
    pixel_groups, prototype_groups = groups
    if (pixel_groups is None) != (prototype_groups is None):
        raise ValueError("pixel_groups and prototype_groups must be given together")
    if pixel_groups is not None:
        for name, value, size in (
            ("pixel_groups", pixel_groups, num_pixels),
            ("prototype_groups", prototype_groups, prototypes.shape[0]),
        ):
            if tuple(value.shape) != (size,):
                raise ValueError(f"{name} must have shape ({size},), got {tuple(value.shape)}")
            if value.dtype.is_floating_point or value.dtype == torch.bool:
                raise ValueError(f"{name} must be an integer tensor, got {value.dtype}")
    return multi_label


def valid_labels(labels, multi_label, ignore_index):
    """Which pixels carry a label and so take part in the loss (see `pixel_segment_loss` Notes).

    Parameters
    ----------
    labels : (N,) int tensor or (N, C) 0/1 tensor
        One label per pixel, or (``multi_label``) a set of labels per pixel.
    multi_label : bool
    ignore_index : int or None
        Label value of "unlabelled" (single labels only); negative labels are always unlabelled.

    Returns
    -------
    valid : (N,) bool tensor

    Examples
    --------
    >>> valid_labels(torch.tensor([0, 255, -1, 2]), False, 255).tolist()
    [True, False, False, True]
    """
    if multi_label:
        return (labels != 0).any(1)
    valid = labels >= 0
    if ignore_index is not None:
        valid = valid & (labels != ignore_index)
    return valid


def pixel_segment_loss(
    embeddings,
    labels,
    segment_ids,
    prototypes,
    prototype_labels,
    concentration,
    reduction="mean",
    *,
    ignore_index=IGNORE_INDEX,
    chunk_size=None,
    pixel_groups=None,
    prototype_groups=None,
    trainable_prototypes=None,
    pixel_weights=None,
):
    """Pixel-to-segment contrastive loss of SPML, computed in blocks and in log space.

    Parameters
    ----------
    embeddings : (P, D) float tensor
        Pixel embeddings ``v_i``, unit rows.
    labels : (P,) int tensor, or (P, C) multi-hot tensor (bool, int or float)
        Each pixel's label, or its label set for set-valued relations (image tags, affinity).
    segment_ids : (P,) int tensor
        Row of each pixel's own segment ``o(i)`` in `prototypes`. Ignored pixels may hold any
        value (they are clamped to 0 internally).
    prototypes : (S, D) float tensor
        Segment prototypes ``u_s``, unit rows (current batch, optionally plus a memory bank).
    prototype_labels : (S,) int tensor, or (S, C) multi-hot tensor
        Label (or label set) of each prototype; same kind as `labels`.
    concentration : float
        ``kappa``, the inverse temperature of the von Mises-Fisher similarity
        (6-16 in the paper's VOC runs).
    reduction : {"mean", "sum", "none"}, optional
        ``"mean"`` averages over labelled pixels, ``"sum"`` adds them, ``"none"`` returns the
        per-pixel loss, 0 at ignored pixels.
    ignore_index : int or None, optional
        Single-label value meaning "unlabelled"; negative labels are always unlabelled. Pass
        None when labels are ids that may legitimately equal 255 (e.g. superpixel ids).
    chunk_size : int, optional
        Pixels per block; default `default_chunk_size` of the prototypes a block meets (a
        ~16 MB float32 logit block).
    pixel_groups : (P,) int tensor, optional
        Group of each pixel, e.g. its image in the batch. Given together with
        `prototype_groups`, pixel i is compared only with the prototypes of its own group
        (the low-level relation contrasts a pixel with the segments of its own image only),
        without a Python loop over groups.
    prototype_groups : (S,) int tensor, optional
        Group of each prototype; any integers (a memory bank may use negative ids).
    trainable_prototypes : int, optional
        Only the first `trainable_prototypes` prototypes need a gradient: the rest are a
        detached memory bank, whose gradient is then reported as 0 without being computed
        (about a third of the work when the memory is twice the batch). Default: all.
    pixel_weights : (P,) float tensor, optional
        Non-negative weight of each pixel's loss, with ``reduction="sum"`` only: the loss is
        ``sum_i w_i loss_i`` over labelled pixels, in the same single sweep. Weights of
        ``1 / (labelled pixels of i's image)`` give the sum of per-image means, which is how
        the paper's code averages the low-level relation. Not differentiated.

    Returns
    -------
    loss : () or (P,) float tensor
        At least float32 (bf16/fp16 inputs are upcast), float64 for float64 inputs.

    Raises
    ------
    ValueError
        If shapes disagree, `reduction` is unknown, `chunk_size` is not positive, or (on CPU
        only, where checking costs no device sync) a labelled pixel's segment id is outside
        ``[0, S)``.

    Notes
    -----
    Ignored pixels: a single label that is negative or equals `ignore_index`, or an all-zero
    label set. They contribute 0 loss and no gradient; ``"mean"`` divides by the number of
    labelled pixels, and with none at all the loss is an exact 0 that still backpropagates
    (zero gradients), so a batch without labels needs no special case.

    Ignored prototypes (single labels only): a prototype whose label is negative or equals
    `ignore_index` is neither positive nor negative for any pixel (an unlabelled segment says
    nothing about "different class"), as the paper's code drops unlabelled prototypes from its
    semantic-annotation loss. It still serves as ``e_{o(i)}`` in the own-segment fallback. An
    all-zero prototype label set is a known empty set and therefore a negative for everyone.

    ``same(i)`` is decided by the labels alone, so a pixel whose own segment has a different
    label sees that segment among its negatives, exactly as the formula reads.

    Groups: a prototype whose group differs from the pixel's is neither positive nor negative
    for it (like an ignored prototype: its logit is -inf before the row shift, so its ``exp``
    is exactly 0, and it leaves the positive count), for single labels and label sets alike.
    The own segment is normally in the pixel's group; if not, it only serves as the fallback
    positive. Off the CPU each block then also compares ``(p, S)`` group ids and counts
    positives by a row sum instead of the sorted-key search.

    Memory and speed: pixels are processed in blocks of `chunk_size` against all S
    prototypes, reusing one set of ``(chunk_size, S)`` buffers, so peak memory does not grow
    with P. For ``"mean"`` and ``"sum"`` with gradients required, the same sweep also forms
    ``d loss / d logits`` block by block and contracts it into the ``(P, D)`` and ``(S, D)``
    gradients, which backward only scales: one matmul for the logits, one ``exp`` per element
    and two gradient matmuls, instead of a second sweep. For ``"none"`` backward sweeps the
    blocks again, weighting pixels by the incoming gradient. Double backward is not supported.

    On the CPU, where it costs no device sync, the blocks skip the work that cannot matter:
    unlabelled pixels, ignored prototypes, and with groups every pair of different groups
    (each group's pixels meet only its own prototypes). On other devices every pixel meets
    every prototype under masks, with no read-back; the results are the same.

    Numerics: arithmetic runs in float32 or wider with autocast off (bf16/fp16 inputs are
    upcast), and each row is shifted by its largest logit (own segment's included), so no
    ``exp`` exceeds 1 and
    kappa = 20 in bf16 is finite. This is the log-sum-exp trick with one shift shared by the
    positive and negative sums; it is exact unless a pixel's positives all lie more than ~87
    (float32) below its best logit, which for unit rows needs kappa > 43; the loss is
    then held finite (clamped) rather than exact. Off the CPU no ``.item()`` or boolean
    indexing: empty sets are handled with masks, and the Python loop is over blocks only (on
    the CPU, over the blocks of each group).

    References
    ----------
    .. [1] T.-W. Ke, J.-J. Hwang, S. X. Yu, "Universal Weakly Supervised Segmentation by
       Pixel-to-Segment Contrastive Learning", ICLR 2021, Eq. (1)-(2).

    Examples
    --------
    Two pixels, three segments; pixel 0 lies in segment 0 and has segment 1 as its other
    positive.

    >>> v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> u = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> loss = pixel_segment_loss(v, torch.tensor([0, 1]), torch.tensor([0, 2]), u,
    ...                           torch.tensor([0, 0, 1]), 1.0, reduction="none")
    >>> torch.allclose(loss, torch.log1p(torch.exp(torch.tensor([-1.0, -1.0 + 0.6931472]))))
    True
    """
    multi_label = _check_inputs(
        embeddings,
        labels,
        segment_ids,
        prototypes,
        prototype_labels,
        reduction,
        (pixel_groups, prototype_groups),
    )
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    if pixel_weights is not None:
        if reduction != "sum":
            raise ValueError(f"pixel_weights need reduction='sum', got {reduction!r}")
        if tuple(pixel_weights.shape) != (embeddings.shape[0],):
            raise ValueError(
                f"pixel_weights must have shape ({embeddings.shape[0]},), "
                f"got {tuple(pixel_weights.shape)}"
            )
    if trainable_prototypes is not None and not 0 <= trainable_prototypes <= prototypes.shape[0]:
        raise ValueError(
            f"trainable_prototypes must lie in [0, {prototypes.shape[0]}], "
            f"got {trainable_prototypes}"
        )
    num_pixels, num_prototypes = embeddings.shape[0], prototypes.shape[0]
    dtype = torch.promote_types(embeddings.dtype, prototypes.dtype)
    dtype = torch.promote_types(dtype, torch.float32)  # bf16 / fp16 inputs: float32 maths
    valid = valid_labels(labels, multi_label, ignore_index)  # (P,)
    if num_prototypes == 0 or num_pixels == 0:
        # nothing to contrast with: exact zeros that keep a (zero) gradient path
        zero = embeddings.to(dtype).sum(1) * 0.0 + prototypes.to(dtype).sum() * 0.0  # (P,)
        return zero if reduction == "none" else zero.sum()
    if embeddings.device.type == "cpu":  # a value check here would be a sync on a GPU
        bad = valid & ((segment_ids < 0) | (segment_ids >= num_prototypes))
        if bool(bad.any()):
            raise ValueError(f"segment_ids of labelled pixels must lie in [0, {num_prototypes})")

    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        embeddings = embeddings.to(dtype)
        prototypes = prototypes.to(dtype)
        if multi_label:
            keys = (labels != 0).to(dtype)  # (P, C); float, so one matmul counts overlaps
            proto_keys, proto_valid = (prototype_labels != 0).to(dtype), None
        else:
            keys = torch.where(valid, labels.long(), -2)  # (P,)
            proto_valid = valid_labels(prototype_labels, False, ignore_index)  # (S,)
            proto_keys = torch.where(proto_valid, prototype_labels.long(), -1)
        plan = BlockPlan(
            embeddings,
            prototypes,
            keys,
            proto_keys,
            proto_valid,
            torch.where(valid, segment_ids.long(), 0),
            float(concentration),
            None if chunk_size is None else int(chunk_size),
            None if pixel_groups is None else (pixel_groups.long(), prototype_groups.long()),
            valid,
            None if trainable_prototypes is None else int(trainable_prototypes),
        )
        weights = valid.to(dtype)  # (P,)
        if pixel_weights is not None:
            weights = weights * pixel_weights.detach().to(dtype)
        if reduction == "mean":
            weights = weights / weights.sum().clamp(min=1.0)
        # needs_input_grad ignores no_grad mode: ask autograd's own question here
        track = torch.is_grad_enabled() and (embeddings.requires_grad or prototypes.requires_grad)
        return PixelSegmentLoss.apply(
            embeddings, prototypes, plan, weights, reduction != "none", track
        )


def relation_masks(
    labels,
    prototype_labels,
    segment_ids,
    *,
    ignore_index=IGNORE_INDEX,
    pixel_groups=None,
    prototype_groups=None,
):
    """Return each pixel's positive and negative segments: the rule of the loss, as masks.

    The one statement of the rule. `dense_pixel_segment_loss` sums over these masks,
    `relations.positives_negatives` shows one row of them, and the classroom exercises check
    a student's rule against them; `pixel_segment_loss` computes the same sets inside its
    blocks, fused for speed, and is tested equal to the dense loss.

    Parameters
    ----------
    labels : (P,) int tensor or (P, C) 0/1 tensor
        Each pixel's label, or set of labels.
    prototype_labels : (S,) int tensor or (S, C) 0/1 tensor
        Each segment's label (set); same kind as `labels`.
    segment_ids : (P,) int64 tensor
        Each pixel's own segment ``o(i)``, an index into the segments.
    ignore_index, pixel_groups, prototype_groups : optional
        As `pixel_segment_loss`.

    Returns
    -------
    positive : (P, S) bool tensor
        ``same(i)`` without ``o(i)``, or ``o(i)`` alone when that is empty (the fallback).
    negative : (P, S) bool tensor
        ``diff(i)``: the segments that take part and are not "same". ``o(i)`` is among them
        when its own label differs from the pixel's.

    Notes
    -----
    "Same": equal labels, or label sets that share a label. A segment takes part for a pixel
    unless its single label is unlabelled (it is then neither positive nor negative; an empty
    label *set* is a known set, so a negative) or it lies in another group. A pixel that is
    unlabelled takes no part: its rows are all False.

    Examples
    --------
    >>> pos, neg = relation_masks(torch.tensor([1, 2]), torch.tensor([1, 1, 2]),
    ...                           torch.tensor([0, 2]))
    >>> pos.int().tolist(), neg.int().tolist()  # pixel 1: no other "same", so o(i) alone
    ([[0, 1, 0], [0, 0, 1]], [[0, 0, 1], [1, 1, 0]])
    """
    multi_label = labels.ndim == 2
    if multi_label:  # label sets: "same" when the two sets share a label
        same = (labels.float() @ prototype_labels.float().T) > 0  # (P, S)
        takes_part = torch.ones_like(same)
    else:  # an unlabelled segment is neither a positive nor a negative
        same = labels[:, None] == prototype_labels[None, :]  # (P, S)
        takes_part = valid_labels(prototype_labels, False, ignore_index)[None, :].expand_as(same)
    if pixel_groups is not None:  # e.g. low-level: only the segments of the pixel's own image
        takes_part = takes_part & (pixel_groups[:, None] == prototype_groups[None, :])
    own = F.one_hot(segment_ids.clamp(min=0), len(prototype_labels)).bool()  # (P, S): o(i)
    positive, negative = segment_roles(same, takes_part, own)
    pixel = valid_labels(labels, multi_label, ignore_index)[:, None]  # (P, 1)
    return positive & pixel, negative & pixel


def segment_roles(same, takes_part, own):
    """Turn "same", "takes part" and the own segment into positives and negatives.

    The step of `relation_masks` that every relation shares, once its labels have said which
    segments are "same" as a pixel and which take part; the classroom's reference answers
    end with it too.

    Parameters
    ----------
    same : (..., S) bool tensor
        Segments whose label agrees with the pixel's.
    takes_part : (..., S) bool tensor
        Segments that count for the pixel at all.
    own : (..., S) bool tensor
        The pixel's own segment ``o(i)`` (one True per pixel).

    Returns
    -------
    positive : (..., S) bool tensor
        ``same & takes_part`` without ``o(i)``, or ``o(i)`` alone when that is empty.
    negative : (..., S) bool tensor
        ``takes_part & ~same``.

    Examples
    --------
    >>> same, part = torch.tensor([True, False, True]), torch.tensor([True, True, False])
    >>> segment_roles(same, part, torch.tensor([True, False, False]))  # nothing but o(i)
    (tensor([ True, False, False]), tensor([False,  True, False]))
    """
    positive = same & takes_part & ~own
    positive = torch.where(positive.any(-1, keepdim=True), positive, own)  # else o(i) alone
    return positive, takes_part & ~same


def dense_pixel_segment_loss(
    embeddings,
    labels,
    segment_ids,
    prototypes,
    prototype_labels,
    concentration,
    reduction="mean",
    *,
    ignore_index=IGNORE_INDEX,
    pixel_groups=None,
    prototype_groups=None,
):
    """Compute the pixel-to-segment loss as the paper writes it, the whole matrix at once.

    The same loss as `pixel_segment_loss`, with the same arguments (minus the engine's
    knobs), written for reading: one ``(P, S)`` matrix of ``kappa v_i . u_s``, one mask of
    positives and one of negatives, two log-sum-exps. It holds ``P x S`` floats, so it suits
    a notebook batch, not a training step (`pixel_segment_loss` computes it in blocks, with
    its gradient in the same sweep).

    Parameters
    ----------
    embeddings, labels, segment_ids, prototypes, prototype_labels, concentration, reduction
        As `pixel_segment_loss`.
    ignore_index, pixel_groups, prototype_groups : optional
        As `pixel_segment_loss`.

    Returns
    -------
    loss : () or (P,) float tensor

    Examples
    --------
    >>> v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> u = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    >>> args = (v, torch.tensor([1, 2]), torch.tensor([0, 2]), u, torch.tensor([1, 1, 2]), 4.0)
    >>> torch.allclose(dense_pixel_segment_loss(*args), pixel_segment_loss(*args))
    True
    """
    logits = concentration * embeddings @ prototypes.T  # (P, S): kappa v_i . u_s
    positive, negative = relation_masks(
        labels, prototype_labels, segment_ids, ignore_index=ignore_index,
        pixel_groups=pixel_groups, prototype_groups=prototype_groups,
    )  # fmt: skip

    def log_sum_exp(mask):  # log sum_s exp(logits) over the mask; a finite fill keeps grads
        return torch.logsumexp(logits.masked_fill(~mask, torch.finfo(logits.dtype).min), 1)

    log_pos, log_neg = log_sum_exp(positive), log_sum_exp(negative)
    loss = torch.logaddexp(log_pos, log_neg) - log_pos  # -log(pos / (pos + neg))
    valid = valid_labels(labels, labels.ndim == 2, ignore_index)
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum().clamp(min=1)
