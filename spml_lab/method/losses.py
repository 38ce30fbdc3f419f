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

The ``P x S`` similarity matrix of a real batch does not fit in memory (65,536 pixels against
20,000 prototypes is 5.2 GB in float32), so the loss walks over blocks of pixels with the
log-sum-exp shift (every ``exp`` is of ``logit - row max`` <= 0, so nothing overflows), and a
custom autograd function keeps only ``(P, D)`` and ``(S, D)`` gradients, never a block.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from spml_lab.constants import IGNORE_INDEX

__all__ = [
    "pixel_segment_loss",
    "dense_pixel_segment_loss",
    "relation_masks",
    "segment_roles",
    "default_chunk_size",
    "valid_labels",
    "unique_rows",
]

# Elements of one block's (pixels x prototypes) logit matrix: 2**22 float32 values are 16 MB.
# With the masked copy and the bool mask a block's work buffers take ~2.3x that (~40 MB).
# Smaller blocks stay closer to the CPU caches between the passes over them (2**22 was the
# fastest of 2**16 .. 2**24 in benchmarks/contrastive_speed.py); much smaller ones pay the
# Python cost per block and lose matmul efficiency.
CHUNK_ELEMENTS = 2**22

_REDUCTIONS = ("mean", "sum", "none")

# Devices where the block plan may read values back (which pixels are labelled, how many per
# group) for free: on the CPU the "device" is the host. Elsewhere that would be a sync, so
# every pixel meets every prototype under masks instead (see `_Problem`).
PLAN_DEVICES = ("cpu",)
# Split label-set pixels into parts by their set when a call has at most this many sets.
MAX_LABEL_SETS = 64


def default_chunk_size(num_prototypes):
    """Pixels per block so that one block's logit matrix holds about `CHUNK_ELEMENTS` values.

    Parameters
    ----------
    num_prototypes : int
        Number of prototypes S.

    Returns
    -------
    chunk_size : int
        At least 1.

    Examples
    --------
    >>> default_chunk_size(20_000)
    209
    """
    return max(1, CHUNK_ELEMENTS // max(int(num_prototypes), 1))


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


class _Part(NamedTuple):
    """Pixels and prototype columns that one run of blocks compares (see `_Problem.plan`)."""

    rows: torch.Tensor | None  # (p,) pixel indices; None = every pixel, in order
    cols: torch.Tensor | None  # (c,) prototype indices; None = every prototype
    scaled: torch.Tensor  # (c, D) kappa * prototypes[cols]
    keys: torch.Tensor  # (c,) int64 or (c, C) float: the columns' label keys
    sorted_keys: torch.Tensor | None  # (c,) sorted single-label keys, for positive counts
    bias: torch.Tensor | None  # (1, c) 0 / -inf for ignored prototypes, or None
    col_of: torch.Tensor | None  # (S,) column of each prototype in the part, -1 if absent
    group_mask: bool  # compare pixel and prototype groups inside every block
    chunk_size: int  # pixels per block
    same_row: torch.Tensor | None  # (c,) 0/1: same(i) of every pixel of the part (label sets)
    same_count: torch.Tensor | None  # () number of ones in `same_row`
    trainable: int  # the first `trainable` columns need a gradient, the rest are detached

    @property
    def num_rows(self):
        return None if self.rows is None else self.rows.shape[0]


class _Problem:
    """Inputs of one loss call in the form the block kernel wants, plus reusable buffers.

    Single labels become int64 keys where unlabelled pixels hold -2 and ignored prototypes -1,
    so an equality test never pairs them. Label sets become float multi-hot rows.

    The work is a list of parts, each a set of pixels against a set of prototype columns,
    walked in blocks of pixels. Where reading values back is free (`PLAN_DEVICES`, the CPU)
    the plan leaves out what cannot matter: unlabelled pixels, ignored prototypes, and with
    groups every (pixel, prototype) pair of different groups, by making one part per group;
    pixels with label sets are further split by set when there are few distinct sets (image
    tags), so that a part's same(i) is one 0/1 row. Elsewhere there is one part, every pixel
    against every prototype: ignored prototypes get a -inf logit bias (their ``exp`` is
    exactly 0), a prototype of another group than the pixel gets a -inf logit inside the
    block and leaves every count, and unlabelled pixels get weight 0. Both give the same
    losses and gradients.
    """

    def __init__(
        self,
        embeddings,
        prototypes,
        keys,
        proto_keys,
        proto_valid,
        segment_ids,
        kappa,
        chunk_size,
        groups=None,
        valid=None,
        trainable=None,
    ):
        # detached: the kernel runs outside autograd, `_PixelSegmentLoss` owns the graph
        self.embeddings = embeddings.detach()  # (P, D)
        self.prototypes = prototypes.detach()  # (S, D)
        self.scaled = kappa * self.prototypes  # (S, D): kappa folded in once
        self.kappa = kappa
        self.keys = keys  # (P,) int64 or (P, C) float
        self.proto_keys = proto_keys  # (S,) int64 or (S, C) float
        self.proto_valid = proto_valid  # (S,) bool, or None for label sets (all take part)
        self.segment_ids = segment_ids  # (P,) int64, valid indices
        self.multi_label = keys.ndim == 2
        self.chunk_size = chunk_size  # None: `default_chunk_size` of each part's columns
        self.groups = groups  # None, or ((P,) int64 pixel groups, (S,) int64 prototype groups)
        # prototypes [trainable:] are a detached memory: no gradient is formed for them
        self.trainable = self.prototypes.shape[0] if trainable is None else trainable
        self.parts = self.plan(valid)
        self.release()

    def _part(self, rows, cols, group_mask, label_set=None):
        """Make the `_Part` of pixels `rows` against prototypes `cols` (None = all of them).

        `label_set` (C,): the one label set all these pixels share, if known.
        """
        num_prototypes = self.prototypes.shape[0]
        if cols is None:
            # every prototype in its own order: the trainable ones are the leading columns
            trainable = self.trainable
            scaled, keys, col_of = self.scaled, self.proto_keys, None
            bias = None  # every prototype is a column: ignored ones get a -inf logit
            if self.proto_valid is not None:
                bias = torch.where(self.proto_valid, 0.0, float("-inf")).to(scaled.dtype)[None]
        else:
            # trainable columns first (stable), so their gradient is one matmul on a view
            trainable_col = cols < self.trainable
            cols = cols[torch.argsort((~trainable_col).to(torch.uint8), stable=True)]
            trainable = int(trainable_col.sum())  # on the host: no device sync
            scaled, keys, bias = self.scaled[cols], self.proto_keys[cols], None
            col_of = torch.full((num_prototypes,), -1, dtype=torch.long, device=cols.device)
            col_of[cols] = torch.arange(len(cols), device=cols.device)
        sorted_keys = None if self.multi_label else torch.sort(keys).values
        chunk = self.chunk_size or default_chunk_size(scaled.shape[0])
        same_row = same_count = None
        if label_set is not None:
            same_row = ((keys @ label_set) > 0).to(scaled.dtype)  # (c,)
            same_count = same_row.sum()
        return _Part(
            rows, cols, scaled, keys, sorted_keys, bias, col_of, group_mask, chunk, same_row,
            same_count, trainable,
        )  # fmt: skip

    def plan(self, valid):
        """Split the work into parts (see the class notes); a list of `_Part`."""
        device = self.embeddings.device
        if device.type not in PLAN_DEVICES or valid is None:
            return [self._part(None, None, self.groups is not None)]
        # on the host nonzero and tolist cost no device sync: leave out what cannot matter
        rows = valid.nonzero()[:, 0]  # labelled pixels
        if self.proto_valid is None:
            cols = torch.arange(self.prototypes.shape[0], device=device)
        else:
            cols = self.proto_valid.nonzero()[:, 0]  # prototypes that take part
        pairs = [(rows, cols)]
        if self.groups is not None:
            # one part per group: sort pixels and prototypes by group, pair the runs
            pixel_groups, proto_groups = self.groups
            row_groups, order = torch.sort(pixel_groups[rows], stable=True)
            rows = rows[order]
            col_groups, order = torch.sort(proto_groups[cols], stable=True)
            cols = cols[order]
            values, counts = torch.unique_consecutive(row_groups, return_counts=True)
            first = torch.searchsorted(col_groups, values).tolist()
            last = torch.searchsorted(col_groups, values, right=True).tolist()
            pairs, start = [], 0
            for count, a, b in zip(counts.tolist(), first, last, strict=True):
                pairs.append((rows[start : start + count], cols[a:b]))
                start += count
        if not self.multi_label:
            return [self._part(r, c, False) for r, c in pairs]
        # few distinct label sets (image tags): split by set, so that same(i) is one row of
        # 0/1 per part, applied by broadcasting instead of a (p, c) label-overlap matmul
        sets, inverse = unique_rows(self.keys[rows])
        if len(sets) > MAX_LABEL_SETS:
            return [self._part(r, c, False) for r, c in pairs]
        which = torch.empty(self.keys.shape[0], dtype=torch.long, device=device)
        which[rows] = inverse
        parts = []
        for r, c in pairs:
            kinds, order = torch.sort(which[r], stable=True)
            r = r[order]
            values, counts = torch.unique_consecutive(kinds, return_counts=True)
            for value, part_rows in zip(values.tolist(), r.split(counts.tolist()), strict=True):
                parts.append(self._part(part_rows, c, False, sets[value]))
        return parts

    def release(self):
        """Drop the work buffers; `block` makes them again when needed."""
        self._flat = None

    def _buffers(self, rows, cols, group_mask):
        """(rows, cols) views of the reused work buffers: logits, masked, mask, outside."""
        if self._flat is None:
            # one set of flat buffers, big enough for every block of every part and reused
            # by all: a fresh large tensor per block would page-fault on CPU each time
            size = max(
                min(part.chunk_size, part.num_rows or self.embeddings.shape[0])
                * part.scaled.shape[0]
                for part in self.parts
            )
            device = self.embeddings.device
            self._flat = (
                self.embeddings.new_empty(size),
                self.embeddings.new_empty(size),
                None if self.multi_label else torch.empty(size, dtype=torch.bool, device=device),
                torch.empty(size, dtype=torch.bool, device=device)
                if any(part.group_mask for part in self.parts)
                else None,
            )
        n = rows * cols
        return [None if b is None else b[:n].view(rows, cols) for b in self._flat]

    def blocks(self):
        """Yield ``(part, index)``: pixel index tensors (or slices) of at most a part's chunk."""
        num_pixels = self.embeddings.shape[0]
        for part in self.parts:
            total = num_pixels if part.rows is None else part.num_rows
            for start in range(0, total, part.chunk_size):
                stop = min(start + part.chunk_size, total)
                yield part, slice(start, stop) if part.rows is None else part.rows[start:stop]

    def block(self, part, index, weights=None, grad_u=None):
        """Loss of the pixels `index` of `part`; with `weights`, also the weighted gradients.

        Returns ``loss`` (p,), and when `weights` (p,) is given ``grad_v`` (p, D), the
        gradient of ``sum(weights * loss)``; the prototypes' gradient (unscaled by kappa) is
        added into `grad_u` (S, D).
        """
        v = self.embeddings[index]  # (p, D)
        own = self.segment_ids[index][:, None]  # (p, 1)
        p, c = v.shape[0], part.scaled.shape[0]
        exp, masked, mask, outside = self._buffers(p, c, part.group_mask)
        if part.bias is None:
            torch.mm(v, part.scaled.T, out=exp)  # (p, c), becomes exp(logit - shift) in place
        else:
            torch.addmm(part.bias, v, part.scaled.T, out=exp)
        own_inside = None
        if self.groups is not None:
            pixel_groups, proto_groups = self.groups
            groups = pixel_groups[index][:, None]  # (p, 1)
            own_inside = proto_groups[own] == groups  # (p, 1)
            if part.group_mask:
                torch.ne(groups, proto_groups[None, :], out=outside)  # (p, S)
                exp.masked_fill_(outside, float("-inf"))  # before the shift: exp is exactly 0
        # own logit from the unbiased dot product: an ignored (or left out) own segment still
        # serves as the fallback positive, while no column sum counts it
        own_logit = (v * self.scaled[own[:, 0]]).sum(1, keepdim=True)  # (p, 1)
        # shift by the row max (own logit included): every exp is <= 1, no overflow at any
        # kappa or dtype, and the shift cancels in every ratio below
        shift = own_logit if c == 0 else torch.maximum(exp.amax(1, keepdim=True), own_logit)
        exp.sub_(shift).exp_()
        e_own = torch.exp(own_logit - shift)  # (p, 1)
        own_col, own_here = self._own_column(part, own)
        _zero_at(exp, own_col, own_here)

        # same(i) without o(i): masked copy of exp, and whether it is non-empty
        if self.multi_label and part.same_row is not None:
            # one label set for the whole part: same(i) is `same_row` for every pixel
            keys = self.keys[index]  # (p, C)
            own_same = (keys * self.proto_keys[own[:, 0]]).sum(1, keepdim=True) > 0
            own_diff = ~own_same if own_inside is None else ~own_same & own_inside
            counted = own_same if own_here is None else own_same & own_here  # o(i) in same
            has_pos = part.same_count > counted.to(exp.dtype)  # (p, 1)
            torch.mul(exp, part.same_row, out=masked)  # exp is 0 at o(i)
        elif self.multi_label:
            keys = self.keys[index]  # (p, C)
            torch.mm(keys, part.keys.T, out=masked)  # (p, c) shared-label counts
            own_same = (keys * self.proto_keys[own[:, 0]]).sum(1, keepdim=True) > 0
            own_diff = ~own_same
            if own_inside is not None:
                if part.group_mask:
                    masked.masked_fill_(outside, 0.0)
                own_diff = own_diff & own_inside
            masked.clamp_(max=1.0)
            _zero_at(masked, own_col, own_here)
            if c:
                has_pos = masked.amax(1, keepdim=True) > 0  # (p, 1)
            else:
                has_pos = torch.zeros_like(own_same)
            masked.mul_(exp)
        else:
            keys = self.keys[index][:, None]  # (p, 1)
            torch.eq(keys, part.keys[None, :], out=mask)  # (p, c)
            own_key = self.proto_keys[own]  # (p, 1)
            own_same = own_key == keys
            own_diff = (own_key != keys) & (own_key != -1)
            if own_inside is not None:
                own_same, own_diff = own_same & own_inside, own_diff & own_inside
            if part.group_mask:
                # the sorted keys know nothing of groups: count the pixel's own group only
                mask.masked_fill_(outside, False)
                same_count = mask.sum(1, keepdim=True)  # (p, 1)
            else:
                # prototypes per label from the sorted keys: no (p, c) reduction needed
                same_count = torch.searchsorted(part.sorted_keys, keys, right=True)
                same_count = same_count - torch.searchsorted(part.sorted_keys, keys)  # (p, 1)
            has_pos = same_count > own_same.long()
            torch.where(mask, exp, exp.new_zeros(()), out=masked)  # exp is 0 at o(i)

        tiny = torch.finfo(exp.dtype).tiny
        # pos: the other positives, else the own segment; clamp only guards exp underflow,
        # which needs kappa * (largest - smallest similarity) > 87 (float32)
        pos = torch.where(has_pos, masked.sum(1, keepdim=True), e_own).clamp_min(tiny)
        # total = pos + neg; exp already holds every column except o(i) and ignored ones
        own_count = own_diff.to(exp.dtype) + (~has_pos).to(exp.dtype)  # (p, 1)
        total = exp.sum(1, keepdim=True) + e_own * own_count
        total = torch.maximum(total, pos)  # equal in exact arithmetic when neg is empty
        loss = (torch.log(total) - torch.log(pos))[:, 0]  # (p,)
        if weights is None:
            return loss, None

        # d loss_i / d logit_is = exp_is / total_i - [s in pos(i)] exp_is / pos_i
        w = weights[:, None]  # (p, 1)
        inv_total = w / total
        inv_pos = torch.where(has_pos, w / pos, 0.0)
        grad = exp.mul_(inv_total).addcmul_(masked, -inv_pos)  # (p, c), 0 at o(i)
        # the own segment's term, kept out of the columns (o(i) may be no column at all)
        own_grad = e_own * (own_count * inv_total - torch.where(has_pos, 0.0, w / pos))
        grad_v = torch.addmm(own_grad * self.scaled[own[:, 0]], grad, part.scaled)  # (p, D)
        k = part.trainable  # memory columns get no gradient: skip their share of the matmul
        if part.cols is None:
            grad_u[:k].addmm_(grad[:, :k].T, v)  # (k, D), times kappa by the caller
        elif k:
            grad_u.index_add_(0, part.cols[:k], grad[:, :k].T @ v)
        grad_u.index_add_(0, own[:, 0], own_grad * v)
        return loss, grad_v

    @staticmethod
    def _own_column(part, own):
        """Column of o(i) in `part` (clamped to a valid index) and whether it is there."""
        if part.col_of is None:
            return own, None
        col = part.col_of[own]  # (p, 1)
        return col.clamp(min=0), col >= 0


def unique_rows(rows):
    """``torch.unique(rows, dim=0, return_inverse=True)`` for 0/1 rows, fast for few columns.

    The loss groups pixels by their label set with it (multi-label relations).

    With at most 62 columns each row is packed into one int64 code, so the unique runs on a
    vector: ``unique(dim=0)`` sorts rows lexicographically and costs ~10x more. Codes sort in
    the same order as the rows do, so the sets come back in the same order too.
    """
    num_columns = rows.shape[1]
    if num_columns > 62:
        return torch.unique(rows, dim=0, return_inverse=True)
    weights = 2 ** torch.arange(num_columns - 1, -1, -1, device=rows.device)  # (C,) int64
    codes = (rows.long() * weights).sum(1)  # (n,)
    values, inverse = torch.unique(codes, return_inverse=True)
    bits = (values[:, None] // weights) % 2  # (k, C)
    return bits.to(rows.dtype), inverse


def _zero_at(matrix, column, present):
    """Set ``matrix[i, column[i]] = 0`` in place where `present` (None: everywhere)."""
    if matrix.shape[1] == 0:
        return
    if present is None:
        matrix.scatter_(1, column, 0.0)
    else:  # write back the old value where the own segment is not a column of this part
        matrix.scatter_(1, column, torch.where(present, 0.0, matrix.gather(1, column)))


class _PixelSegmentLoss(torch.autograd.Function):
    """Blockwise loss with hand-written gradients (see `pixel_segment_loss` Notes)."""

    @staticmethod
    def forward(ctx, embeddings, prototypes, problem, weights, reduce, track):
        ctx.problem, ctx.reduce = problem, reduce
        want = reduce and track
        if want:
            grad_v = torch.zeros_like(embeddings)
            grad_u = torch.zeros_like(prototypes)
        loss = torch.zeros_like(weights)  # pixels left out of the plan: 0
        for part, index in problem.blocks():
            block_loss, gv = problem.block(
                part, index, weights[index] if want else None, grad_u if want else None
            )
            loss[index] = block_loss
            if want:
                grad_v[index] = gv
        problem.release()
        loss = loss * weights
        if want:
            ctx.problem = None  # the saved gradients are all backward needs
            # gradients of sum(weights * loss) were made alongside it: a backward pass
            # then costs nothing instead of a second sweep over the P x S similarities
            ctx.save_for_backward(grad_v, grad_u.mul_(problem.kappa))
            return loss.sum()
        ctx.save_for_backward(weights)
        return loss.sum() if reduce else loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        problem = ctx.problem
        if ctx.reduce:
            grad_v, grad_u = ctx.saved_tensors
            return grad_output * grad_v, grad_output * grad_u, None, None, None, None
        # per-pixel output: the weights are the incoming gradient, so sweep the blocks again
        (weights,) = ctx.saved_tensors
        weights = grad_output * weights
        grad_v = torch.zeros_like(problem.embeddings)
        grad_u = torch.zeros_like(problem.prototypes)
        for part, index in problem.blocks():
            _, gv = problem.block(part, index, weights[index], grad_u)
            grad_v[index] = gv
        problem.release()
        return grad_v, grad_u.mul_(problem.kappa), None, None, None, None


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
        problem = _Problem(
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
        return _PixelSegmentLoss.apply(
            embeddings, prototypes, problem, weights, reduction != "none", track
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
