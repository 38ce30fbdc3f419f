"""How `losses.pixel_segment_loss` is computed: blocks of pixels against prototype columns.

The ``P x S`` similarity matrix of a real batch does not fit in memory (65,536 pixels against
20,000 prototypes is 5.2 GB in float32), so the loss walks over blocks of pixels, and a custom
autograd function keeps only ``(P, D)`` and ``(S, D)`` gradients, never a block: the sweep that
forms a block's loss also contracts its ``d loss / d logits`` into them.

The work is a list of *parts*, each a set of pixels against a set of prototype columns
(`BlockPlan.plan`). Where reading values back is free (`PLAN_DEVICES`, the CPU) the plan
leaves out what cannot matter (unlabelled pixels, ignored prototypes, pairs of different
groups) and picks the kernel:

* **set parts**, for few distinct labels (or label sets) and big blocks (co-occurrence): the
  pixels of a part share one label, and its columns are ordered ``[same(i) | diff(i)]``, the
  trainable prototypes first within each. Sums over same(i) are sums over a slice, and as
  ``d loss_i / d logit_is = e_is / total_i - [s in same(i)] e_is / pos_i`` has one row factor
  per slice, the gradient is two matmuls scaled afterwards: no (pixels x prototypes) mask.
* **masked parts**, everything else: each block decides every pixel's sets with masks. With
  groups (the low-level relation: a pixel meets the segments of its own image) the groups are
  padded into one batch, ``(groups, pixels, prototypes)``, so one ``bmm`` serves them all.
  Off the CPU there is one masked part, every pixel against every prototype with no
  read-back: ignored prototypes get a -inf logit bias, other groups a -inf logit inside the
  block, unlabelled pixels weight 0.

Both give the same losses and gradients (tests/method/test_losses.py compares them with each
other, with `losses.dense_pixel_segment_loss` and with a brute-force float64 formula).

Numerics: logits are taken in base 2 (prototypes pre-scaled by ``kappa * log2(e)``) and
shifted by a per-pixel bound of the row's largest logit, ``kappa * log2(e) * |v_i| *
max_s |u_s|``, that one matmul subtracts (pixels carry ``-bound`` as an extra column,
prototypes a 1): every ``exp2`` is of a number <= 0, so nothing overflows at any kappa, and
torch's vectorised ``exp2`` runs about 1.7x faster on the CPU than its ``exp``. For unit rows
the logits lie within ``2 kappa`` of the bound, so nothing underflows either up to kappa = 43
(float32); beyond, sums that underflow are clamped, and the loss held finite, not exact.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

__all__ = ["BlockPlan", "PixelSegmentLoss", "default_chunk_size", "unique_rows"]

# Elements of one block's (pixels x prototypes) logit matrix: 2**22 float32 values are 16 MB.
# A set part needs that one buffer, a masked part also a masked copy and a bool mask (~2.3x).
# Smaller blocks stay closer to the CPU caches between the passes over them (2**22 was the
# fastest of 2**16 .. 2**24 in benchmarks/contrastive_speed.py); much smaller ones pay the
# Python cost per block and lose matmul efficiency.
CHUNK_ELEMENTS = 2**22

# Devices where the block plan may read values back (which pixels are labelled, how many per
# group, which labels occur) for free: on the CPU the "device" is the host. Elsewhere that
# would be a sync, so every pixel meets every prototype under masks instead.
PLAN_DEVICES = ("cpu",)
# Set parts: at most this many distinct labels (label sets) in a call, and at least this many
# (pixel, prototype) pairs per part on average. A set part saves about five passes over its
# block but costs some 40 small tensor operations: below ~2**18 pairs (on a 2-core CPU) the
# one masked block of all pixels is faster (semantic annotation: ~9 classes of ~60,000 pairs
# each; co-occurrence: ~7 tag sets of ~600,000).
MAX_LABEL_SETS = 64
SET_PART_PAIRS = 2**18

LOG2E = math.log2(math.e)  # exp(x) = exp2(x * log2(e))


def default_chunk_size(num_prototypes):
    """Pixels per block so that one block's logit matrix holds about `CHUNK_ELEMENTS` values.

    Parameters
    ----------
    num_prototypes : int
        Number of prototypes S (columns of the block).

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


def unique_rows(rows):
    """``torch.unique(rows, dim=0, return_inverse=True)`` for 0/1 rows, fast for few columns.

    The plan groups pixels by their label set with it (multi-label relations). With at most
    62 columns each row is packed into one int64 code, so the unique runs on a vector:
    ``unique(dim=0)`` sorts rows lexicographically and costs ~10x more. Codes sort in the
    same order as the rows do, so the sets come back in the same order too.

    Parameters
    ----------
    rows : (n, C) 0/1 tensor

    Returns
    -------
    sets : (k, C) tensor
        The distinct rows, in the dtype of `rows`.
    inverse : (n,) int64 tensor
        Index of each row in `sets`.

    Examples
    --------
    >>> sets, inverse = unique_rows(torch.tensor([[1, 0], [0, 1], [1, 0]]))
    >>> sets.tolist(), inverse.tolist()
    ([[0, 1], [1, 0]], [1, 0, 1])
    """
    num_columns = rows.shape[1]
    if num_columns > 62:
        return torch.unique(rows, dim=0, return_inverse=True)
    weights = 2 ** torch.arange(num_columns - 1, -1, -1, device=rows.device)  # (C,) int64
    codes = (rows.long() * weights).sum(1)  # (n,)
    values, inverse = torch.unique(codes, return_inverse=True)
    bits = (values[:, None] // weights) % 2  # (k, C)
    return bits.to(rows.dtype), inverse


class _SetParts(NamedTuple):
    """Parts of pixels sharing one label (set), each against its columns ordered same | diff.

    All parts of a call in one object, built without a Python loop over them: part ``j``
    holds the rows ``rows[starts[j] : starts[j + 1]]`` and the columns ``cols[j]``. What
    depends on a pixel's own segment but not on the logits is worked out once for every row
    (the arrays below are in the order of `rows`); blocks slice it.
    """

    rows: torch.Tensor  # (n,) pixel indices, sorted by part
    starts: list  # k + 1 offsets of the parts in `rows`
    cols: torch.Tensor  # (k, c) prototype of each column: same and trainable, same, diff...
    logit_cols: torch.Tensor  # (k, c, D + 1) base-2 logit factors [kappa log2(e) u, 1]
    scaled: torch.Tensor  # (k, c, D) kappa * u: the gradients' factor
    # per part: columns [:same] are same(i), the rest diff(i); [:same_trainable] and
    # [same : same + diff_trainable] need a gradient, the others are the detached memory
    counts: list  # k tuples (same, same_trainable, diff_trainable)
    chunk_size: int  # pixels per block
    own_col: torch.Tensor  # (n, 1) column of o(i), where it is one
    own_here: torch.Tensor | None  # (n, 1) o(i) is a column (None: for every row)
    has_pos: torch.Tensor  # (n, 1) same(i) holds a segment besides o(i)
    e_own: torch.Tensor  # (n, 1) exp(own logit - shift)
    own_total: torch.Tensor  # (n, 1) e_own times the times it counts in pos + neg
    own_fallback: torch.Tensor  # (n, 1) e_own where it is pos(i), else 0

    def blocks(self):
        for part in range(len(self.counts)):
            stop = self.starts[part + 1]
            for start in range(self.starts[part], stop, self.chunk_size):
                yield part, slice(start, min(start + self.chunk_size, stop))

    def block_elements(self):
        rows = max(b - a for a, b in zip(self.starts, self.starts[1:], strict=False))
        return min(self.chunk_size, rows) * self.cols.shape[1]


class _MaskedPart(NamedTuple):
    """Pixels against prototype columns in ``G`` padded groups; masks decide the sets.

    ``G = 1`` without groups, with no padding. Padded rows carry weight 0, padded columns a
    -inf logit bias.
    """

    rows: torch.Tensor | None  # (G, Pm) pixel indices; None: every pixel (one group)
    row_valid: torch.Tensor | None  # (G, Pm) bool, False for padding; None: none
    cols: torch.Tensor | None  # (G, Sm) prototype of each column; None: every prototype
    logit_cols: torch.Tensor  # (G, Sm, D + 1) base-2 logit factors [kappa log2(e) u, 1]
    scaled: torch.Tensor  # (G, Sm, D) kappa * u: the gradients' factor
    keys: torch.Tensor  # (G, Sm) int64 or (G, Sm, C) float: the columns' label keys
    # (1, Sm) single-label keys sorted, to count positives by searching them: one group only
    # (a batched search is slower than counting in the block), without a group mask
    sorted_keys: torch.Tensor | None
    bias: torch.Tensor | None  # (G, 1, Sm) 0 / -inf: padded or ignored columns
    col_of: torch.Tensor | None  # (S,) flat column (group * Sm + column) of each prototype, or -1
    trainable: torch.Tensor | int  # (G, Sm) bool, or the leading trainable columns (G = 1)
    group_mask: bool  # compare pixel and prototype groups inside every block (off the CPU)
    rows_per_block: int
    groups_per_block: int
    num_pixels: int = 0  # pixels of the call, when `rows` is None

    def blocks(self):
        if self.rows is None:  # every pixel, in order: slices
            for start in range(0, self.num_pixels, self.rows_per_block):
                yield slice(start, start + self.rows_per_block)
            return
        groups, rows = self.rows.shape
        for g in range(0, groups, self.groups_per_block):
            for r in range(0, rows, self.rows_per_block):
                yield (slice(g, g + self.groups_per_block), slice(r, r + self.rows_per_block))

    def block_elements(self):
        groups, rows = (1, self.num_pixels) if self.rows is None else self.rows.shape
        groups, rows = min(groups, self.groups_per_block), min(rows, self.rows_per_block)
        return groups * rows * self.logit_cols.shape[1]


class BlockPlan:
    """Inputs of one loss call in the form the block kernels want, plus reusable buffers.

    Parameters
    ----------
    embeddings : (P, D) float tensor
    prototypes : (S, D) float tensor
    keys : (P,) int64 or (P, C) float tensor
        Single labels, -2 for unlabelled pixels; or multi-hot label sets.
    proto_keys : (S,) int64 or (S, C) float tensor
        Single labels, -1 for ignored prototypes (never equal to a pixel's); or label sets.
    proto_valid : (S,) bool tensor or None
        Prototypes that take part (single labels); None for label sets (all take part).
    segment_ids : (P,) int64 tensor
        Own segment of each pixel, a valid index.
    kappa : float
    chunk_size : int or None
        Pixels per block; None: `default_chunk_size` of each part's columns.
    groups : ((P,) int64, (S,) int64) or None
        Pixel and prototype groups.
    valid : (P,) bool tensor or None
        Pixels that take part; None: plan nothing, one masked part.
    trainable : int or None
        Prototypes [trainable:] are a detached memory: no gradient is formed for them.
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
        # detached: the kernels run outside autograd, `PixelSegmentLoss` owns the graph
        self.embeddings = embeddings.detach()  # (P, D)
        self.prototypes = prototypes.detach()  # (S, D)
        self.kappa = kappa
        self.scaled = kappa * self.prototypes  # (S, D): kappa folded in once
        # [v, -bound] . [kappa log2(e) u, 1] = base-2 logit minus the row's bound (module notes)
        scale = kappa * LOG2E
        largest = self.prototypes.norm(dim=1).max() if len(self.prototypes) else 0.0
        bound = scale * largest * self.embeddings.norm(dim=1, keepdim=True)  # (P, 1)
        self.pixels = torch.cat([self.embeddings, -bound], 1)  # (P, D + 1)
        ones = self.prototypes.new_ones(self.prototypes.shape[0], 1)
        self.logit_prototypes = torch.cat([scale * self.prototypes, ones], 1)  # (S, D + 1)
        self.e_own = None  # (P, 1) exp(own logit - shift), of the pixels the plan keeps
        self.keys = keys
        self.proto_keys = proto_keys
        self.proto_valid = proto_valid
        self.segment_ids = segment_ids
        self.multi_label = keys.ndim == 2
        self.chunk_size = chunk_size
        self.groups = groups
        self.trainable = self.prototypes.shape[0] if trainable is None else trainable
        self.parts = self.plan(valid)
        self.release()

    # ------------------------------------------------------------------ the plan

    def plan(self, valid):
        """Split the work into parts (see the module notes); a list of parts."""
        device = self.embeddings.device
        if device.type not in PLAN_DEVICES or valid is None:
            self.e_own = self._e_own(slice(None))
            return [self._whole_part()]
        # on the host nonzero and tolist cost no device sync: leave out what cannot matter
        rows = valid.nonzero()[:, 0]  # labelled pixels
        if self.proto_valid is None:
            cols = torch.arange(self.prototypes.shape[0], device=device)
        else:
            cols = self.proto_valid.nonzero()[:, 0]  # prototypes that take part
        if len(rows) == 0:
            return []
        # exp(logit - shift) of each pixel's own segment, from its own dot product: an ignored
        # (or left out) own segment still serves as the fallback positive, while no column
        # sum counts it
        self.e_own = torch.zeros_like(self.pixels[:, :1]).index_copy_(0, rows, self._e_own(rows))
        if self.groups is not None:
            return [self._masked_part(rows, cols)]
        if self.multi_label:
            labels, inverse = unique_rows(_rows(self.keys, rows))
        else:
            labels, inverse = torch.unique(_rows(self.keys, rows), return_inverse=True)
        pairs = len(rows) * len(cols)
        if len(labels) > MAX_LABEL_SETS or pairs < SET_PART_PAIRS * len(labels):
            return [self._masked_part(rows, cols)]
        return [self._set_parts(rows, cols, labels, inverse)]

    def _e_own(self, rows):
        """``exp(logit - shift)`` of the own segments of pixels `rows`, (p, 1)."""
        own = self.logit_prototypes.index_select(0, self.segment_ids[rows])
        return torch.exp2((self.pixels[rows] * own).sum(1, keepdim=True))

    def _set_parts(self, rows, cols, labels, inverse):
        """Make the set parts of pixels `rows`, labels ``labels[inverse]``, against `cols`.

        Vectorised over the parts: one sort orders every part's columns.
        """
        device = rows.device
        num_parts, num_prototypes = len(labels), self.prototypes.shape[0]
        order = torch.argsort(inverse, stable=True)
        rows, part_of_row = rows[order], inverse[order]  # sorted by part
        starts = [0, *torch.cumsum(torch.bincount(inverse, minlength=num_parts), 0).tolist()]
        keys = _rows(self.proto_keys, cols)
        same = (labels @ keys.T) > 0 if self.multi_label else labels[:, None] == keys  # (k, c)
        # column order: same and trainable, same and detached, diff and trainable, diff
        rank = 2 * (~same).to(torch.uint8) + (cols >= self.trainable).to(torch.uint8)
        cols = cols[torch.argsort(rank, dim=1, stable=True)]  # (k, c)
        part_rank = torch.arange(num_parts, device=device)[:, None] * 4 + rank
        counts = torch.bincount(part_rank.reshape(-1), minlength=4 * num_parts).view(-1, 4)
        counts = [(a + b, a, c) for a, b, c, _ in counts.tolist()]  # on the host: no sync
        col_of = torch.full((num_parts, num_prototypes), -1, dtype=torch.long, device=device)
        col_of.scatter_(1, cols, torch.arange(cols.shape[1], device=device).expand_as(cols))
        # o(i) of each row: is it a column (an ignored own segment is not), is it "same"
        own = _rows(self.segment_ids, rows)
        own_col = col_of[part_of_row, own][:, None]  # (n, 1)
        here = own_col >= 0
        if self.multi_label:
            own_same = (_rows(self.proto_keys, own) * _rows(labels, part_of_row)).sum(
                1, keepdim=True
            ) > 0
        else:
            own_same = (_rows(self.proto_keys, own) == _rows(labels, part_of_row))[:, None]
        num_same = torch.tensor([c[0] for c in counts], device=device)[part_of_row, None]
        has_pos = num_same > (own_same & here).long()  # same(i) without o(i) is not empty
        # o(i) is in pos + neg once as the fallback positive, once more as a negative
        e_own = _rows(self.e_own, rows)
        own_total = e_own * ((~own_same & here).to(e_own.dtype) + (~has_pos).to(e_own.dtype))
        return _SetParts(
            rows, starts, cols, _rows(self.logit_prototypes, cols), _rows(self.scaled, cols),
            counts, self.chunk_size or default_chunk_size(cols.shape[1]), own_col.clamp(min=0),
            None if bool(here.all()) else here, has_pos, e_own, own_total,
            torch.where(has_pos, 0.0, e_own),
        )  # fmt: skip

    def _whole_part(self):
        """One masked part: every pixel against every prototype, nothing read back."""
        bias = None  # ignored prototypes get a -inf logit
        if self.proto_valid is not None:
            bias = torch.where(self.proto_valid, 0.0, float("-inf")).to(self.scaled.dtype)
            bias = bias[None, None]  # (1, 1, S)
        num_pixels = self.embeddings.shape[0]
        keys = self.proto_keys[None]
        search = not (self.multi_label or self.groups is not None)
        return _MaskedPart(
            None, None, None, self.logit_prototypes[None], self.scaled[None], keys,
            torch.sort(keys).values if search else None, bias, None, self.trainable,
            self.groups is not None,
            self.chunk_size or default_chunk_size(self.prototypes.shape[0]), 1, num_pixels,
        )  # fmt: skip

    def _masked_part(self, rows, cols):
        """Make the masked part of pixels `rows` against prototypes `cols` (groups padded)."""
        device = rows.device
        if self.groups is None:  # one group, unpadded, in index order: trainable ones lead
            row_index, row_valid, col_index, col_valid = rows[None], None, cols[None], None
        else:
            row_index, row_valid, col_index, col_valid = self._by_group(rows, cols)
        num_rows, num_cols = row_index.shape[1], col_index.shape[1]
        col_of = torch.full((self.prototypes.shape[0],), -1, dtype=torch.long, device=device)
        flat = torch.arange(col_index.numel(), device=device)
        if col_valid is None:
            col_of[cols] = flat
            bias, keys = None, _rows(self.proto_keys, col_index)
            trainable = int((cols < self.trainable).sum())  # on the host: no device sync
        else:
            col_of[col_index[col_valid]] = flat.view_as(col_index)[col_valid]  # g * Sm + column
            bias = torch.where(col_valid, 0.0, float("-inf")).to(self.scaled.dtype)[:, None]
            if self.multi_label:  # padding: the empty set
                keys = _rows(self.proto_keys, col_index) * col_valid[..., None]
            else:  # padding: an ignored prototype
                keys = torch.where(col_valid, _rows(self.proto_keys, col_index), -1)
            trainable = col_valid & (col_index < self.trainable)
        pixels = self.chunk_size or default_chunk_size(num_cols)
        rows_per_block = max(1, min(num_rows, pixels))
        return _MaskedPart(
            row_index, row_valid, col_index, _rows(self.logit_prototypes, col_index),
            _rows(self.scaled, col_index), keys,
            torch.sort(keys).values if col_valid is None and not self.multi_label else None,
            bias, col_of, trainable,
            False, rows_per_block, max(1, pixels // rows_per_block),
        )  # fmt: skip

    def _by_group(self, rows, cols):
        """Pixels `rows` and prototypes `cols` as padded ``(G, Pm)`` and ``(G, Sm)`` tables.

        Row g holds group g's pixels (prototypes), in index order; returns the pixel table,
        where it is not padding, the prototype table and where it is not padding.
        """
        pixel_groups, proto_groups = self.groups
        row_groups, order = torch.sort(pixel_groups[rows], stable=True)
        rows = rows[order]
        col_groups, order = torch.sort(proto_groups[cols], stable=True)
        cols = cols[order]  # within a group in index order: the trainable ones first
        values, row_counts = torch.unique_consecutive(row_groups, return_counts=True)
        first = torch.searchsorted(col_groups, values)
        col_counts = torch.searchsorted(col_groups, values, right=True) - first  # (G,)
        row_start = torch.cumsum(row_counts, 0) - row_counts
        num_rows, num_cols = int(row_counts.max()), int(col_counts.max())
        return (
            *_pad(rows, row_start, row_counts, num_rows),
            *_pad(cols, first, col_counts, num_cols),
        )

    # ------------------------------------------------------------------ buffers and blocks

    def release(self):
        """Drop the work buffers; `block` makes them again when needed."""
        self._flat = None

    def _buffers(self, shape):
        """Return views of shape `shape` of the reused buffers: exp, masked, mask, outside."""
        if self._flat is None:
            # one set of flat buffers, big enough for every block of every part and reused
            # by all: a fresh large tensor per block would page-fault on CPU each time
            size = max(part.block_elements() for part in self.parts)
            masked = [part for part in self.parts if isinstance(part, _MaskedPart)]
            device = self.embeddings.device

            def flags(needed):
                return torch.empty(size, dtype=torch.bool, device=device) if needed else None

            self._flat = (
                self.embeddings.new_empty(size),
                self.embeddings.new_empty(size) if masked else None,
                flags(bool(masked) and not self.multi_label),
                flags(any(part.group_mask for part in masked)),
            )
        n = math.prod(shape)
        return [None if b is None else b[:n].view(shape) for b in self._flat]

    def blocks(self):
        """Yield ``(part, selection)`` for every block of every part."""
        for part in self.parts:
            for selection in part.blocks():
                yield part, selection

    def block(self, part, selection, weights=None, grad_u=None):
        """Loss of the pixels of one block; with `weights`, also the weighted gradients.

        Parameters
        ----------
        part, selection
            From `blocks`.
        weights : (P,) float tensor, optional
            Weight of every pixel's loss; when given, gradients are formed too.
        grad_u : (S, D) float tensor, optional
            With `weights`: the prototypes' gradient (unscaled by kappa) is added into it.

        Returns
        -------
        index : (p,) int64 tensor or slice
            The block's pixels.
        loss : (p,) float tensor
        grad_v : (p, D) float tensor or None
            Gradient of ``sum(weights * loss)`` with respect to the block's pixels.
        """
        if isinstance(part, _SetParts):
            return self._set_block(part, selection, weights, grad_u)
        return self._masked_block(part, selection, weights, grad_u)

    def _finish(self, same_sum, all_sum, e_own, has_pos, own_total):
        """Return the loss and its pieces from the column sums (o(i) left out of them).

        `own_total` is e_own times the times o(i) counts in pos + neg. Returns ``loss``,
        ``pos`` and ``total`` = pos + neg.
        """
        tiny = torch.finfo(e_own.dtype).tiny
        # pos: the other positives, else the own segment; clamp only guards exp underflow
        # (module notes)
        pos = torch.where(has_pos, same_sum, e_own).clamp_min_(tiny)
        # total >= pos: equal in exact arithmetic when neg is empty
        total = torch.maximum(all_sum.add_(own_total), pos)
        # one log of the ratio: the logits' shift makes both sums small, and the difference
        # of their logs would lose digits
        return torch.log(total / pos), pos, total

    def _set_block(self, parts, selection, weights, grad_u):
        """Compute a block of set parts: pixels of one part, same(i) its first columns.

        The block is laid out prototypes x pixels, (c, p): the slices same(i) and diff(i)
        are then contiguous rows, and the logit matmul and the reductions run faster on the
        CPU than in the (p, c) layout (about 1.6x for a block of 1,400 x 1,000).
        """
        part, rows = selection
        index = parts.rows[rows]
        logit_cols, scaled, cols = parts.logit_cols[part], parts.scaled[part], parts.cols[part]
        exp = self._buffers((len(cols), len(index)))[0]
        exp = torch.mm(logit_cols, _rows(self.pixels, index).T, out=exp).exp2_()  # (c, p)
        here = None if parts.own_here is None else parts.own_here[rows].T
        _zero_at(exp, parts.own_col[rows].T, here, dim=0)
        (ns, same_trainable, diff_trainable) = parts.counts[part]
        has_pos, e_own = parts.has_pos[rows], parts.e_own[rows]
        same_sum = exp[:ns].sum(0)[:, None]  # (p, 1)
        all_sum = same_sum + exp[ns:].sum(0)[:, None]
        loss, pos, total = self._finish(same_sum, all_sum, e_own, has_pos, parts.own_total[rows])
        if weights is None:
            return index, loss[:, 0], None
        # d loss_i / d logit_is = exp_is * (1 / total_i - [s in same(i)] / pos_i): one pixel
        # factor per slice, so each slice's gradient is a matmul scaled afterwards
        w = _rows(weights, index)[:, None]  # (p, 1)
        inv_total, w_pos = w / total, w / pos
        factor_same = inv_total - torch.where(has_pos, w_pos, 0.0)  # (p, 1)
        # d loss / d own logit: o(i)'s term, kept out of the columns
        own_grad = parts.own_total[rows] * inv_total - parts.own_fallback[rows] * w_pos
        own = _rows(self.segment_ids, index)
        grad_v = own_grad * _rows(self.scaled, own)
        grad_v.addcmul_(factor_same, exp[:ns].T @ scaled[:ns])
        grad_v.addcmul_(inv_total, exp[ns:].T @ scaled[ns:])  # (p, D)
        v = _rows(self.embeddings, index)
        # trainable columns only: the detached memory's share of the matmul is skipped
        for first, count, factor in (
            (0, same_trainable, factor_same),
            (ns, diff_trainable, inv_total),
        ):
            if count:
                block = slice(first, first + count)
                grad_u.index_add_(0, cols[block], exp[block] @ (factor * v))
        grad_u.index_add_(0, own, own_grad * v)
        return index, loss[:, 0], grad_v

    def _masked_block(self, part, selection, weights, grad_u):
        """Compute a block of a masked part: ``(g, r)`` pixels, sets decided by masks."""
        if part.rows is None:  # every pixel, one group
            index = selection
            rows = torch.arange(self.embeddings.shape[0], device=self.pixels.device)[index]
            rows = rows[None]  # (1, r)
            valid = None
            group_slice = slice(None)
        else:
            group_slice, row_slice = selection
            rows = part.rows[group_slice, row_slice]  # (g, r)
            valid = None if part.row_valid is None else part.row_valid[group_slice, row_slice]
            index = rows.reshape(-1) if valid is None else rows[valid]
        pixels = _rows(self.pixels, rows)  # (g, r, D + 1)
        own = _rows(self.segment_ids, rows)[..., None]  # (g, r, 1)
        logit_cols = part.logit_cols[group_slice]  # (g, c, D + 1)
        shape = (*rows.shape, logit_cols.shape[1])
        exp, masked, mask, outside = self._buffers(shape)
        bias = None if part.bias is None else part.bias[group_slice]
        _bmm(pixels, logit_cols.transpose(1, 2), out=exp, bias=bias)  # (g, r, c)
        inside = None  # o(i) lies in the pixel's group
        if part.group_mask:  # every prototype is a column: compare groups in the block
            pixel_groups, proto_groups = self.groups
            groups = pixel_groups[rows][..., None]  # (1, r, 1)
            torch.ne(groups, proto_groups, out=outside)  # (1, r, S)
            exp.masked_fill_(outside, float("-inf"))  # before exp2: exactly 0
            inside = proto_groups[own] == groups
        exp = exp.exp2_()
        e_own = _rows(self.e_own, rows)  # (g, r, 1)
        if part.col_of is None:
            col, here = own, None
        else:  # o(i) is a column where it lies in the pixel's group and takes part
            num_cols = exp.shape[-1]
            first = 0 if group_slice.start is None else group_slice.start
            group = torch.arange(first, first + exp.shape[0], device=own.device)[:, None, None]
            flat = _rows(part.col_of, own)  # (g, r, 1)
            col = flat - group * num_cols
            here = (flat >= 0) & (col >= 0) & (col < num_cols)
            col = col.clamp(0, max(num_cols - 1, 0))
            inside = here  # a planned part's columns are those of the pixel's group
        _zero_at(exp, col, here)

        keys = _rows(self.keys, rows)  # (g, r) or (g, r, C)
        own_keys = _rows(self.proto_keys, own[..., 0])
        col_keys = part.keys[group_slice]
        if self.multi_label:
            own_same = (keys * own_keys).sum(-1, keepdim=True) > 0  # (g, r, 1)
            own_diff = ~own_same
        else:
            own_keys = own_keys[..., None]
            own_same = own_keys == keys[..., None]
            own_diff = (own_keys != keys[..., None]) & (own_keys != -1)
        if inside is not None:
            own_same, own_diff = own_same & inside, own_diff & inside
        if self.multi_label:
            same = _bmm(keys, col_keys.transpose(1, 2), out=masked)  # shared labels
            same.clamp_(max=1.0)  # 0 / 1
            if part.group_mask:
                same.masked_fill_(outside, 0.0)
            _zero_at(same, col, here)
            has_pos = same.amax(-1, keepdim=True) > 0 if same.shape[-1] else own_same & False
            masked = same.mul_(exp)
        else:
            torch.eq(keys[..., None], col_keys[:, None, :], out=mask)  # (g, r, c)
            if part.group_mask:  # every prototype is a column: only the pixel's group counts
                mask.masked_fill_(outside, False)
            if part.sorted_keys is None:  # count in the block
                same_count = mask.sum(-1, keepdim=True)
            else:  # prototypes per label from the sorted keys: no (r, c) reduction
                sorted_keys = part.sorted_keys[0]
                same_count = torch.searchsorted(sorted_keys, keys[0], right=True)
                same_count = (same_count - torch.searchsorted(sorted_keys, keys[0]))[None, :, None]
            counted = own_same if here is None else own_same & here  # o(i) among the columns
            has_pos = same_count > counted.long()
            torch.where(mask, exp, exp.new_zeros(()), out=masked)  # exp is 0 at o(i)
        # o(i) is in pos + neg once as the fallback positive, once more as a negative
        own_total = e_own * (own_diff.to(e_own.dtype) + (~has_pos).to(e_own.dtype))
        loss, pos, total = self._finish(
            masked.sum(-1, keepdim=True), exp.sum(-1, keepdim=True), e_own, has_pos, own_total
        )
        loss = loss[..., 0]  # (g, r)
        loss = loss.reshape(-1) if valid is None else loss[valid]
        if weights is None:
            return index, loss, None

        # d loss_i / d logit_is = exp_is / total_i - [s in pos(i)] exp_is / pos_i
        w = _rows(weights, rows)[..., None]  # (g, r, 1)
        if valid is not None:
            w = w * valid[..., None]  # padding rows: weight 0
        inv_total, w_pos = w / total, w / pos
        inv_pos = torch.where(has_pos, w_pos, 0.0)
        grad = exp.mul_(inv_total).addcmul_(masked, -inv_pos)  # (g, r, c), 0 at o(i)
        # d loss / d own logit: o(i)'s term, kept out of the columns
        own_grad = own_total * inv_total - torch.where(has_pos, 0.0, e_own) * w_pos
        grad_v = _bmm(
            grad, part.scaled[group_slice], bias=own_grad * _rows(self.scaled, own[..., 0])
        )
        v = _rows(self.embeddings, rows)  # (g, r, D)
        if isinstance(part.trainable, int):  # one group: the trainable columns lead
            k = part.trainable  # memory columns get no gradient: skip their matmul share
            if k:
                g_u = grad[0, :, :k].T @ v[0]  # (k, D)
                if part.cols is None:
                    grad_u[:k] += g_u
                else:
                    grad_u.index_add_(0, part.cols[0, :k], g_u)
        else:
            g_u = _bmm(grad.transpose(1, 2), v)  # (g, c, D)
            trainable = part.trainable[group_slice]
            grad_u.index_add_(0, part.cols[group_slice][trainable], g_u[trainable])
        grad_u.index_add_(0, own.reshape(-1), (own_grad * v).reshape(-1, v.shape[-1]))
        grad_v = grad_v.reshape(-1, grad_v.shape[-1]) if valid is None else grad_v[valid]
        return index, loss, grad_v


def _bmm(a, b, out=None, bias=None):
    """``bias + a @ b`` of (g, n, k) and (g, k, m) batches; one plain matmul when g = 1.

    `bias` broadcasts against the (g, n, m) result. ``bmm`` of a single batch is slower on
    the CPU than ``mm`` of its matrices, and most masked parts are one group.
    """
    if a.shape[0] == 1:
        out2 = None if out is None else out[0]
        if bias is None:
            return torch.mm(a[0], b[0], out=out2)[None]
        return torch.addmm(bias[0], a[0], b[0], out=out2)[None]
    if bias is None:
        return torch.bmm(a, b, out=out)
    return torch.baddbmm(bias, a, b, out=out)


def _rows(table, index):
    """``table[index]`` for an integer index tensor of any shape, by ``index_select``.

    The same rows as advanced indexing, gathered 3-5x faster on the CPU (it copies whole
    rows), which matters for the many small gathers of a block.
    """
    return table.index_select(0, index.reshape(-1)).view(*index.shape, *table.shape[1:])


def _pad(values, starts, counts, width):
    """Lay runs ``values[starts[g] : starts[g] + counts[g]]`` out as rows of a (G, width) table.

    Returns the table, padded with ``values[0]``, and a bool table that is False at padding.
    """
    position = torch.arange(width, device=values.device)
    present = position < counts[:, None]  # (G, width)
    return values[torch.where(present, starts[:, None] + position, 0)], present


def _zero_at(matrix, index, present, dim=-1):
    """Zero `matrix` in place at `index` along `dim` (``scatter_``), where `present`.

    `present` None: everywhere. Elsewhere the old value is written back (the own segment is
    no column of this part).
    """
    if matrix.shape[dim] == 0:
        return
    if present is None:
        matrix.scatter_(dim, index, 0.0)
    else:
        matrix.scatter_(dim, index, torch.where(present, 0.0, matrix.gather(dim, index)))


class PixelSegmentLoss(torch.autograd.Function):
    """Blockwise loss with hand-written gradients (see `losses.pixel_segment_loss` Notes).

    ``apply(embeddings, prototypes, plan, weights, reduce, track)``: the loss of `plan`
    (a `BlockPlan` of these embeddings and prototypes), each pixel's loss times `weights`,
    summed when `reduce`; `track` says whether a gradient is wanted.
    """

    @staticmethod
    def forward(ctx, embeddings, prototypes, plan, weights, reduce, track):
        """Sweep the blocks of `plan`: the loss, and with `reduce` and `track` its gradients."""
        ctx.plan, ctx.reduce = plan, reduce
        want = reduce and track
        if want:
            grad_v = torch.zeros_like(embeddings)
            grad_u = torch.zeros_like(prototypes)
        loss = torch.zeros_like(weights)  # pixels left out of the plan: 0
        for part, selection in plan.blocks():
            index, block_loss, gv = plan.block(
                part, selection, weights if want else None, grad_u if want else None
            )
            loss[index] = block_loss
            if want:
                grad_v[index] = gv
        plan.release()
        loss = loss * weights
        if want:
            ctx.plan = None  # the saved gradients are all backward needs
            # gradients of sum(weights * loss) were made alongside it: a backward pass
            # then costs nothing instead of a second sweep over the P x S similarities
            ctx.save_for_backward(grad_v, grad_u.mul_(plan.kappa))
            return loss.sum()
        ctx.save_for_backward(weights)
        return loss.sum() if reduce else loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        """Scale the saved gradients, or (per-pixel losses) sweep the blocks again."""
        plan = ctx.plan
        if ctx.reduce:
            grad_v, grad_u = ctx.saved_tensors
            return grad_output * grad_v, grad_output * grad_u, None, None, None, None
        # per-pixel output: the weights are the incoming gradient, so sweep the blocks again
        (weights,) = ctx.saved_tensors
        weights = grad_output * weights
        grad_v = torch.zeros_like(plan.embeddings)
        grad_u = torch.zeros_like(plan.prototypes)
        for part, selection in plan.blocks():
            index, _, gv = plan.block(part, selection, weights, grad_u)
            grad_v[index] = gv
        plan.release()
        return grad_v, grad_u.mul_(plan.kappa), None, None, None, None
