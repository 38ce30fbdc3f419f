"""The four SPML relations: which segments are positive and which negative for each pixel.

SPML trains one pixel-to-segment contrastive loss (`losses.pixel_segment_loss`) several times
over, each time with a different notion of "same": a *relation* says which label a pixel and a
segment carry, which pixels take part and which segments they are contrasted with.

==================== ========================== ============ =====================================
relation             label                      pixels       prototypes
==================== ========================== ============ =====================================
low_level            superpixel id              all          segments of the pixel's own image
semantic_annotation  weak class label           labelled     labelled segments, batch + memory
cooccurrence         image tags, no background  all          all segments, batch + memory
feature_affinity     nearest labelled segment   all          all segments, batch + memory
==================== ========================== ============ =====================================

Every relation function takes the batch as flattened pixel rows plus the `Segments` built from
it, turns the relation into labels (and groups) for the loss, and makes one loss call: no Python
loop over pixels, segments or images, and no read-back from the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from spml_lab.constants import IGNORE_INDEX, SHORTENED_SCRIBBLES  # one "unlabelled"
from spml_lab.method import clustering, distributed
from spml_lab.method.losses import (
    default_chunk_size,
    pixel_segment_loss,
    relation_masks,
    valid_labels,
)

__all__ = [
    "RELATIONS",
    "RelationSetting",
    "PAPER_SETTINGS",
    "PAPER_KIND",
    "paper_settings",
    "affinity_labels",
    "low_level_similarity",
    "semantic_annotation",
    "semantic_cooccurrence",
    "feature_affinity",
    "spml_loss",
    "positives_negatives",
]

RELATIONS = ("low_level", "semantic_annotation", "cooccurrence", "feature_affinity")


@dataclass
class RelationSetting:
    """The knobs of one relation.

    Attributes
    ----------
    concentration : float
        ``kappa`` of ``exp(kappa * v . u)``: larger is sharper (a lower temperature).
    weight : float
        Factor of this relation's loss in the total.
    """

    concentration: float
    weight: float


# The paper code's VOC runs (bashscripts/voc12/train_spml_{scribble,point,box,tag}.sh): low-level
# 16 / 0.1 and semantic annotation kappa 6 in all of them; the weight of semantic annotation and
# co-occurrence (and co-occurrence's kappa) differ per annotation kind. Feature affinity 12 / 0.5
# comes from the DensePose point run, which has no tags (so no co-occurrence) and no memory.
_PER_KIND = {
    # kind:      (w_ann, kappa_occ, w_occ)
    "scribbles": (1.0, 12.0, 0.5),
    "points": (0.1, 8.0, 0.1),
    "boxes": (0.3, 8.0, 0.3),
    "tags": (0.3, 8.0, 0.3),
}
# annotation names of the data side -> the paper's kind; full masks take the scribble run's
PAPER_KIND = {"cam_boxes": "boxes", "cam_tags": "tags", "full": "scribbles",
              **dict.fromkeys(SHORTENED_SCRIBBLES, "scribbles")}  # fmt: skip


def paper_settings(annotation="scribbles"):
    """Return the paper's kappa and weight of every relation for one annotation kind.

    Parameters
    ----------
    annotation : str, optional
        ``"scribbles"``, ``"points"``, ``"boxes"``, ``"tags"``, or a data-side name that maps
        to one (``"cam_boxes"``, ``"cam_tags"``; ``"full"`` takes the scribble run's).

    Returns
    -------
    settings : dict of str to RelationSetting
        All four relations, in `RELATIONS` order; enable the subset that fits the data.

    Raises
    ------
    ValueError
        For an annotation kind the paper has no run for.

    Examples
    --------
    >>> paper_settings("points")["semantic_annotation"]
    RelationSetting(concentration=6.0, weight=0.1)
    >>> paper_settings("cam_boxes")["cooccurrence"]
    RelationSetting(concentration=8.0, weight=0.3)
    """
    kind = PAPER_KIND.get(annotation, annotation)
    if kind not in _PER_KIND:
        known = sorted([*_PER_KIND, *PAPER_KIND])
        raise ValueError(f"no paper settings for annotation {annotation!r}; known: {known}")
    w_ann, kappa_occ, w_occ = _PER_KIND[kind]
    return {
        "low_level": RelationSetting(concentration=16.0, weight=0.1),
        "semantic_annotation": RelationSetting(concentration=6.0, weight=w_ann),
        "cooccurrence": RelationSetting(concentration=kappa_occ, weight=w_occ),
        "feature_affinity": RelationSetting(concentration=12.0, weight=0.5),
    }


# the scribble run's settings, the paper's headline run
PAPER_SETTINGS = paper_settings("scribbles")


class _Inputs(NamedTuple):
    """One relation written as arguments of `pixel_segment_loss`."""

    embeddings: torch.Tensor  # (P, D)
    labels: torch.Tensor  # (P,) int64, or (P, C) bool label sets
    segment_ids: torch.Tensor  # (P,) int64, clamped to >= 0
    prototypes: torch.Tensor  # (S_total, D)
    prototype_labels: torch.Tensor  # (S_total,) or (S_total, C)
    pixel_groups: torch.Tensor | None  # (P,) image of each pixel (low-level only)
    prototype_groups: torch.Tensor | None  # (S,)
    ignore_index: int | None
    trainable: int | None = None  # prototypes [trainable:] are the detached memory
    global_batch: bool = False  # mean over the labelled pixels of every process


def _flatten(embeddings, segments, values, name):
    """(B, N, D)-or-(B, H, W, D) embeddings as (P, D) rows; `values` (B, ...) as (P,)."""
    if embeddings.ndim not in (3, 4):
        raise ValueError(
            f"embeddings must be (B, N, D) or (B, H, W, D), got {tuple(embeddings.shape)}"
        )
    num_images, dim = embeddings.shape[0], embeddings.shape[-1]
    rows = embeddings.reshape(-1, dim)  # (P, D)
    for key, value in (("segments.segment_ids", segments.segment_ids), (name, values)):
        if value is not None and (value.shape[0] != num_images or value.numel() != len(rows)):
            raise ValueError(
                f"{key} must hold one value per pixel of embeddings {tuple(embeddings.shape)}, "
                f"got shape {tuple(value.shape)}"
            )
    return rows, num_images, len(rows) // max(num_images, 1)


def _memory_bank(memory):
    """Return a `memory.MemoryBank` (or None) from a bank, a `PrototypeMemory`, or None."""
    if memory is not None and hasattr(memory, "bank"):
        memory = memory.bank()
    return memory


def _gather(values, index, fill):
    """``values[index]``, or all `fill` when there are no values (no segment at all)."""
    if values.shape[0] == 0:
        return torch.full(index.shape, fill, dtype=values.dtype, device=index.device)
    return values[index]


def affinity_labels(segments, *, threshold=0.95, ignore_index=IGNORE_INDEX):
    """Feature-affinity label of each segment: its own, or that of a close labelled segment.

    Parameters
    ----------
    segments : clustering.Segments
        With ``prototypes`` (S, D), ``labels`` (S,) and ``image_ids`` (S,).
    threshold : float, optional
        Least prototype cosine for an unlabelled segment to take a neighbour's label.
    ignore_index : int, optional
        Label of unlabelled segments, in and out.

    Returns
    -------
    labels : (S,) int64 tensor
        A labelled segment keeps its label; an unlabelled one takes the label of the most
        similar labelled segment *of the same image* when their cosine is >= `threshold`,
        else `ignore_index`.

    Notes
    -----
    This is the paper code's nearest-neighbour tagging for DensePose (top-1 retrieval among
    the labelled segments of the same image, cosine threshold 0.95). A labelled segment is its
    own nearest neighbour (cosine 1), so keeping its label is the same rule. Prototypes are
    compared without gradient. The ``S x S`` similarities are formed in row blocks.

    Examples
    --------
    >>> from spml_lab.method.clustering import Segments
    >>> protos = torch.tensor([[1.0, 0.0], [0.99, 0.141], [0.0, 1.0], [1.0, 0.0]])
    >>> seg = Segments(segment_ids=torch.zeros(1, 4, dtype=torch.long), prototypes=protos,
    ...                labels=torch.tensor([3, 255, 255, 255]),
    ...                image_ids=torch.tensor([0, 0, 0, 1]), superpixels=torch.zeros(4),
    ...                clusters=torch.zeros(4), sizes=torch.ones(4))
    >>> affinity_labels(seg)  # segment 3 lies in another image than segment 0
    tensor([  3,   3, 255, 255])
    """
    prototypes = segments.prototypes.detach()  # (S, D)
    labels, images = segments.labels.long(), segments.image_ids
    labelled = (labels >= 0) & (labels != ignore_index)  # (S,)
    out = labels.clone()
    num_segments = prototypes.shape[0]
    for start in range(0, num_segments, default_chunk_size(num_segments)):
        rows = slice(start, min(start + default_chunk_size(num_segments), num_segments))
        similarity = prototypes[rows] @ prototypes.T  # (r, S)
        candidate = (images[rows, None] == images[None, :]) & labelled[None, :]  # (r, S)
        similarity = similarity.masked_fill(~candidate, float("-inf"))
        best, nearest = similarity.max(1)  # (r,)
        borrowed = torch.where(best >= threshold, labels[nearest], ignore_index)
        out[rows] = torch.where(labelled[rows], labels[rows], borrowed)
    return out


def _relation_inputs(
    relation, embeddings, labels, tags, segments, memory, threshold, location_weight=1.0
):
    """Pixel labels, prototypes and prototype labels of one relation (see module table)."""
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; known: {RELATIONS}")
    if relation == "low_level":
        return _low_level_inputs(embeddings, segments, location_weight)[0]
    needs = {"semantic_annotation": ("labels", labels), "cooccurrence": ("tags", tags)}
    if relation in needs and needs[relation][1] is None:
        raise ValueError(f"relation {relation!r} needs {needs[relation][0]}, got None")
    rows, num_images, per_image = _flatten(
        embeddings, segments, labels if relation == "semantic_annotation" else None, "labels"
    )
    seg = segments.segment_ids.reshape(-1).long()  # (P,)
    kept = seg >= 0  # -1: pixel left out of every segment, hence of every loss
    own = seg.clamp(min=0)
    prototypes = segments.prototypes  # (S, D), differentiable
    bank = _memory_bank(memory)
    if relation == "semantic_annotation":
        pixel_labels = torch.where(kept, labels.reshape(-1).long(), -1)
        proto_labels, bank_labels = segments.labels.long(), "labels"
    elif relation == "cooccurrence":
        if tags.ndim != 2 or tags.shape[0] != num_images:
            raise ValueError(f"tags must be (B, C) with B={num_images}, got {tuple(tags.shape)}")
        foreground = tags.bool()[:, 1:]  # (B, C - 1): column 0 (background) says nothing
        pixel_labels = foreground.repeat_interleave(per_image, 0) & kept[:, None]  # (P, C-1)
        if segments.tags is not None:  # each segment carries its image's tags
            proto_labels = segments.tags.bool()[:, 1:]
        elif segments.is_global:
            raise ValueError("joined segments of several processes must carry their tags")
        else:
            proto_labels = foreground[segments.image_ids]
        bank_labels = "tags"
        if bank is not None and bank.tags is None:
            raise ValueError("memory holds no tags; push segments built with tags")
        if bank is not None and bank.tags.shape[1] != tags.shape[1]:
            raise ValueError(f"memory tags have {bank.tags.shape[1]} classes, tags {tags.shape[1]}")
    else:  # feature_affinity
        proto_labels = affinity_labels(segments, threshold=threshold)  # (S,)
        pixel_labels = torch.where(kept, _gather(proto_labels, own, -1), -1)
        bank_labels = "affinity_labels"
        if bank is not None and bank.affinity_labels is None:
            raise ValueError(
                "memory holds no affinity labels; make it with PrototypeMemory(keep_affinity=True)"
            )
    if bank is not None:
        extra = getattr(bank, bank_labels)
        if bank_labels == "tags":
            extra = extra.bool()[:, 1:]
        prototypes = torch.cat([prototypes, bank.prototypes.to(prototypes)])
        proto_labels = torch.cat([proto_labels, extra.to(proto_labels)])
    ignore = None if relation == "cooccurrence" else IGNORE_INDEX
    trainable = segments.prototypes.shape[0]
    return _Inputs(
        rows, pixel_labels, own, prototypes, proto_labels, None, None, ignore, trainable,
        segments.is_global,
    )  # fmt: skip


def _low_level_inputs(embeddings, segments, location_weight):
    """Write the low-level relation as loss arguments: ``[v, location]`` rows, per-image weights.

    Pixels and prototypes are compared on the k-means features (`clustering.with_location`),
    a pixel meets the segments of its own image only (groups), and each pixel weighs
    ``1 / (kept pixels of its image)`` so that the weighted sum is the sum of per-image means.
    """
    if embeddings.ndim == 3 and location_weight:
        raise ValueError(
            "low-level similarity on [embedding, location] needs (B, H, W, D) embeddings to "
            f"know each pixel's place, got {tuple(embeddings.shape)}; pass location_weight=0 "
            "for (B, N, D) rows"
        )
    if embeddings.ndim == 4 and location_weight:
        height, width = embeddings.shape[1:3]
        locations = clustering.location_features(
            height, width, dtype=embeddings.dtype, device=embeddings.device
        )
        embeddings = clustering.with_location(embeddings, locations, weight=location_weight)
    rows, num_images, per_image = _flatten(embeddings, segments, None, "labels")
    seg = segments.segment_ids.reshape(-1).long()  # (P,)
    kept = seg >= 0  # -1: pixel left out of every segment, hence of every loss
    own = seg.clamp(min=0)
    # prototypes of the same features; rows of other processes' segments stay zero, and a
    # pixel never meets them (they lie in other images)
    prototypes = clustering.segment_prototypes(rows, seg, segments.num_segments)  # (S, D')
    # superpixel ids repeat across images, so the image is the group: a pixel meets the
    # segments of its own image only; ids may be 255, hence no ignore_index
    pixel_labels = torch.where(kept, _gather(segments.superpixels.long(), own, -1), -1)
    local_image = torch.arange(num_images, device=seg.device).repeat_interleave(per_image)
    dtype = torch.promote_types(rows.dtype, torch.float32)
    kept_weight = kept.to(dtype)
    counts = torch.zeros(num_images, dtype=dtype, device=seg.device)
    counts = counts.index_add(0, local_image, kept_weight)
    weights = kept_weight / counts.clamp(min=1.0)[local_image]  # (P,) per-image means
    inputs = _Inputs(
        rows, pixel_labels, own, prototypes, segments.superpixels.long(),
        local_image + segments.first_image, segments.image_ids, None, None, segments.is_global,
    )  # fmt: skip
    return inputs, weights, (counts > 0).sum()


def _loss(inputs, concentration, pixel_weights=None, count=None):
    """Compute a relation's loss: the mean over its pixels (of all processes if global).

    With `pixel_weights`, the weighted sum divided by `count` (summed over processes), e.g.
    per-image weights and the number of images for a mean of per-image means.
    """
    summed = inputs.global_batch or pixel_weights is not None
    loss = pixel_segment_loss(
        inputs.embeddings,
        inputs.labels,
        inputs.segment_ids,
        inputs.prototypes,
        inputs.prototype_labels,
        concentration,
        ignore_index=inputs.ignore_index,
        pixel_groups=inputs.pixel_groups,
        prototype_groups=inputs.prototype_groups,
        trainable_prototypes=inputs.trainable,
        reduction="sum" if summed else "mean",
        pixel_weights=pixel_weights,
    )
    if not summed:
        return loss
    if count is None:
        multi_label = inputs.labels.ndim == 2
        count = valid_labels(inputs.labels, multi_label, inputs.ignore_index).sum()
    return distributed.global_mean(loss, count)


def low_level_similarity(embeddings, segments, *, concentration, location_weight=1.0):
    """Low-level image similarity: pixels of one superpixel belong together.

    Parameters
    ----------
    embeddings : (B, H, W, D) float tensor
        Unit-row pixel embeddings, channels last; (B, N, D) rows only with
        ``location_weight=0`` (the pixels' places are unknown then).
    segments : clustering.Segments
        Built from the same batch *with superpixels*; ``segment_ids`` (B, H, W) or (B, N),
        -1 for pixels left out.
    concentration : float
        ``kappa`` (16 in the paper's runs).
    location_weight : float, optional
        Weight of the location half of the features compared (`clustering.with_location`):
        1, the paper's VOC model, compares ``[v_i, location_i]`` re-normalised, the features
        k-means clusters; 0 compares the plain embedding (the paper's DensePose model).

    Returns
    -------
    loss : () float tensor
        Mean over the images that keep a pixel of each image's mean over its kept pixels.

    Notes
    -----
    Label = superpixel id; a segment's superpixel is its pixels' (segments are pure in it).
    Positives: the other segments of the pixel's superpixel, else its own segment; negatives:
    the segments of other superpixels *of the same image* (the loss's group option, no loop
    over images). The memory bank takes no part: superpixel ids mean nothing across images.
    Segments built without superpixels all share id 0, so there are no negatives and the
    loss is 0.

    As in the paper's VOC code, pixels and prototypes here are the k-means features
    ``[v, location]``, re-normalised, and the prototypes are recomputed from them (the
    normalised mean of the segment's features, not the embedding prototypes of `Segments`):
    two superpixels of one image that look alike can then be told apart by where they are,
    so the network need not write each pixel's position into its embedding to lower this
    loss. The loss is the mean of per-image means (one weighted sum, no loop over images),
    so an image with few kept pixels (padding) weighs as much as a full one.

    Examples
    --------
    Superpixel 0 holds two similar segments, superpixel 1 a distant one: a small loss.

    >>> import torch.nn.functional as F
    >>> from spml_lab.method.clustering import build_segments
    >>> emb = F.normalize(torch.tensor([[[[1.0, 0.1], [1.0, 0.0], [0.0, 1.0]]]]), dim=-1)
    >>> seg = build_segments(emb, torch.tensor([[[0, 1, 2]]]), torch.tensor([[[0, 0, 1]]]))
    >>> low_level_similarity(emb, seg, concentration=4.0)
    tensor(0.0490)
    >>> low_level_similarity(emb, seg, concentration=4.0, location_weight=0.0)
    tensor(0.0302)
    """
    inputs, weights, num_images = _low_level_inputs(embeddings, segments, location_weight)
    return _loss(inputs, concentration, weights, num_images)  # the mean of per-image means


def semantic_annotation(embeddings, labels, segments, memory=None, *, concentration):
    """Semantic annotation: pixels and segments of the same (weak) class belong together.

    Parameters
    ----------
    embeddings : (B, N, D) or (B, H, W, D) float tensor
        Unit-row pixel embeddings.
    labels : (B, N) or (B, H, W) int tensor
        Weak labels (points, scribbles, CAM pseudo labels); 255 or negative = unlabelled.
    segments : clustering.Segments
        Built from the same batch and labels.
    memory : memory.MemoryBank or memory.PrototypeMemory, optional
        Prototypes of earlier batches, joined after the batch's segments.
    concentration : float
        ``kappa`` (6 in the paper's runs).

    Returns
    -------
    loss : () float tensor
        Mean over labelled kept pixels; an exact 0 with a (zero) gradient when there are none.

    Notes
    -----
    Positives: the other labelled segments (batch and memory) of the pixel's class, else its
    own segment; negatives: labelled segments of other classes. Unlabelled segments are
    neither, as the paper's code drops them before this loss (Eq. 2 with the label relation).

    Examples
    --------
    Orthogonal pixels, each its own segment, labels 0, 0, 1, unlabelled. Pixels 0 and 1 have
    one positive and one negative, both at similarity 0: log 2 each. Pixel 2, alone in class
    1, falls back on its own segment (similarity 1): ``log(1 + 2 exp(-6))``. The unlabelled
    pixel and its segment take no part.

    >>> from spml_lab.method.clustering import build_segments
    >>> emb = torch.eye(4)[None]
    >>> labels = torch.tensor([[0, 0, 1, 255]])
    >>> seg = build_segments(emb, torch.tensor([[0, 1, 2, 3]]), labels=labels)
    >>> semantic_annotation(emb, labels, seg, concentration=6.0)
    tensor(0.4637)
    """
    inputs = _relation_inputs(
        "semantic_annotation", embeddings, labels, None, segments, memory, None
    )
    return _loss(inputs, concentration)


def semantic_cooccurrence(embeddings, tags, segments, memory=None, *, concentration):
    """Semantic co-occurrence: images sharing a foreground tag share their segments.

    Parameters
    ----------
    embeddings : (B, N, D) or (B, H, W, D) float tensor
        Unit-row pixel embeddings.
    tags : (B, C) bool tensor
        Image tags; column 0 is background and is left out.
    segments : clustering.Segments
        Built from the same batch.
    memory : memory.MemoryBank or memory.PrototypeMemory, optional
        Must carry tags when given.
    concentration : float
        ``kappa`` (8-12 in the paper's runs).

    Returns
    -------
    loss : () float tensor
        Mean over kept pixels of images with at least one foreground tag.

    Notes
    -----
    Every pixel takes its image's foreground tag set, every segment (batch and memory) its
    image's; they are "same" when the sets share a tag. Positives are thus all other segments
    of images sharing a tag (its own image's included), negatives the segments of images
    without a common tag. A pixel of an image with only background has an empty set and takes
    no part; a segment of such an image is a negative for everyone, as in the paper's code.

    Examples
    --------
    >>> from spml_lab.method.clustering import build_segments
    >>> emb = torch.eye(2)[:, None, :]  # two images of one pixel each
    >>> seg = build_segments(emb, torch.zeros(2, 1, dtype=torch.long))
    >>> tags = torch.tensor([[True, True, False], [True, False, True]])  # no shared tag
    >>> semantic_cooccurrence(emb, tags, seg, concentration=8.0)
    tensor(0.0003)
    """
    inputs = _relation_inputs("cooccurrence", embeddings, None, tags, segments, memory, None)
    return _loss(inputs, concentration)


def feature_affinity(embeddings, segments, memory=None, *, concentration, threshold=0.95):
    """Feature affinity: unlabelled segments borrow the label of a close labelled segment.

    Parameters
    ----------
    embeddings : (B, N, D) or (B, H, W, D) float tensor
        Unit-row pixel embeddings.
    segments : clustering.Segments
        Built from the same batch and its weak labels.
    memory : memory.MemoryBank or memory.PrototypeMemory, optional
        Its segments carry the affinity labels computed when they were pushed.
    concentration : float
        ``kappa`` (12 in the paper's DensePose runs).
    threshold : float, optional
        Least prototype cosine to borrow a label (`affinity_labels`).

    Returns
    -------
    loss : () float tensor
        Mean over kept pixels whose segment has an affinity label.

    Notes
    -----
    Each segment's label is `affinity_labels`: its own weak label, else that of the most
    similar labelled segment of its image if the cosine is >= `threshold`, else none. A pixel
    takes its segment's label. Then the loss runs as for semantic annotation over batch and
    memory segments: segments with no affinity label are neither positive nor negative, and
    their pixels take no part.

    The paper's code keeps these as label *sets* of the top-1 neighbour, so a set holds at
    most one label, and "share a label" is "equal labels": single labels are the same thing.
    Where nothing is close enough it fills the set with *every* class, which makes such a
    segment a positive for every pixel and its pixels loss-free; we make it neither positive
    nor negative instead (an unknown segment says nothing, as in semantic annotation). Its
    neighbour search uses prototypes with location features; ours uses the embedding
    prototypes. It recomputes memory labels each step from the frozen memory prototypes,
    which gives the labels computed once at push time, so the memory stores those.

    Examples
    --------
    >>> from spml_lab.method.clustering import build_segments
    >>> import torch.nn.functional as F
    >>> emb = F.normalize(torch.tensor([[[1.0, 0.0], [1.0, 0.2], [0.0, 1.0], [-1.0, 0.1]]]), dim=-1)
    >>> labels = torch.tensor([[4, 255, 7, 255]])
    >>> seg = build_segments(emb, torch.tensor([[0, 1, 2, 3]]), labels=labels)
    >>> affinity_labels(seg)  # segment 1 is close to segment 0; segment 3 to no labelled one
    tensor([  4,   4,   7, 255])
    >>> feature_affinity(emb, seg, concentration=2.0)
    tensor(0.2034)
    """
    inputs = _relation_inputs(
        "feature_affinity", embeddings, None, None, segments, memory, threshold
    )
    return _loss(inputs, concentration)


def spml_loss(
    embeddings,
    labels,
    tags,
    segments,
    memory=None,
    *,
    settings,
    affinity_threshold=0.95,
    location_weight=1.0,
):
    """Compute the SPML training loss: the enabled relations, weighted and summed.

    Parameters
    ----------
    embeddings : (B, N, D) or (B, H, W, D) float tensor
        Unit-row pixel embeddings.
    labels : (B, N) or (B, H, W) int tensor, or None
        Weak labels (255 = unlabelled); needed by ``"semantic_annotation"``.
    tags : (B, C) bool tensor, or None
        Image tags, column 0 background; needed by ``"cooccurrence"``.
    segments : clustering.Segments
        Built from the same batch.
    memory : memory.MemoryBank or memory.PrototypeMemory, optional
        Earlier batches' prototypes (not used by ``"low_level"``).
    settings : dict of str to RelationSetting
        The *enabled* relations (names from `RELATIONS`) with their kappa and weight, e.g. a
        subset of `PAPER_SETTINGS`.
    affinity_threshold : float, optional
        Cosine threshold of ``"feature_affinity"``.
    location_weight : float, optional
        Location weight of ``"low_level"`` (`low_level_similarity`).

    Returns
    -------
    losses : dict of str to () float tensor
        One unweighted loss per enabled relation, in `RELATIONS` order, and ``"total"``, the
        sum of weight times loss (an exact 0 with a graph when nothing is enabled).

    Raises
    ------
    ValueError
        If `settings` names an unknown relation, or an enabled relation lacks its input.

    Examples
    --------
    >>> from spml_lab.method.clustering import build_segments
    >>> emb = torch.eye(3)[None, None]  # one image of 1 x 3 pixels
    >>> seg = build_segments(emb, torch.tensor([[[0, 1, 2]]]), torch.tensor([[[0, 0, 1]]]))
    >>> out = spml_loss(emb, None, None, seg, settings={"low_level": RelationSetting(16.0, 0.1)})
    >>> sorted(out), bool(torch.isclose(out["total"], 0.1 * out["low_level"]))
    (['low_level', 'total'], True)
    """
    unknown = sorted(set(settings) - set(RELATIONS))
    if unknown:
        raise ValueError(f"unknown relation(s) {unknown} in settings; known: {list(RELATIONS)}")
    bank = _memory_bank(memory)  # concatenated once for all relations
    calls = {
        "low_level": lambda k: low_level_similarity(
            embeddings, segments, concentration=k, location_weight=location_weight
        ),
        "semantic_annotation": lambda k: semantic_annotation(
            embeddings, labels, segments, bank, concentration=k
        ),
        "cooccurrence": lambda k: semantic_cooccurrence(
            embeddings, tags, segments, bank, concentration=k
        ),
        "feature_affinity": lambda k: feature_affinity(
            embeddings, segments, bank, concentration=k, threshold=affinity_threshold
        ),
    }
    out = {}
    # exact 0 that keeps the graph; one element only, as an fp16 sum of all could overflow
    total = embeddings.reshape(-1)[:1].float().sum() * 0.0
    for name in RELATIONS:
        if name in settings:
            out[name] = calls[name](settings[name].concentration)
            total = total + settings[name].weight * out[name]
    out["total"] = total
    return out


def positives_negatives(
    relation, pixel, embeddings, labels, tags, segments, memory=None, *, threshold=0.95
):
    """Find the positive and negative prototypes of one pixel under a relation (for pictures).

    Parameters
    ----------
    relation : str
        One of `RELATIONS`.
    pixel : int
        Flat pixel index ``b * N + n`` (row-major within the image).
    embeddings, labels, tags, segments, memory
        As in `spml_loss`; `labels` and `tags` may be None when the relation does not use them.
    threshold : float, optional
        Cosine threshold of ``"feature_affinity"``.

    Returns
    -------
    positives, negatives : (S_total,) bool tensors
        Over the batch's segments followed by the memory's (``S_total = S + M``): the segments
        whose similarities form ``pos(i)`` (the other "same" segments, or the pixel's own one
        when there are none) and those forming the negative sum. Both empty when the pixel
        takes no part in the relation.

    Raises
    ------
    ValueError
        On an unknown relation or a pixel index out of range.

    Notes
    -----
    Not for training steps: it reads values back from the device. It reuses the relation's
    loss inputs, so it shows exactly what the loss uses.

    Examples
    --------
    >>> from spml_lab.method.clustering import build_segments
    >>> emb = torch.eye(3)[None]
    >>> seg = build_segments(emb, torch.tensor([[0, 1, 2]]), torch.tensor([[0, 0, 1]]))
    >>> positives_negatives("low_level", 0, emb, None, None, seg)
    (tensor([False,  True, False]), tensor([False, False,  True]))
    """
    # which segments are positive or negative depends on labels only, not on the features
    # compared, so low-level's sets need no pixel locations
    inputs = _relation_inputs(
        relation, embeddings, labels, tags, segments, memory, threshold, location_weight=0.0
    )
    num_pixels = inputs.embeddings.shape[0]
    if not 0 <= int(pixel) < num_pixels:
        raise ValueError(f"pixel must lie in [0, {num_pixels}), got {pixel}")
    bank = _memory_bank(memory)
    total = segments.num_segments + (0 if bank is None else bank.prototypes.shape[0])
    row = slice(int(pixel), int(pixel) + 1)  # the pixel's row of the loss's masks
    pixel_groups = None if inputs.pixel_groups is None else inputs.pixel_groups[row]
    positives, negatives = relation_masks(
        inputs.labels[row], inputs.prototype_labels, inputs.segment_ids[row],
        ignore_index=inputs.ignore_index, pixel_groups=pixel_groups,
        prototype_groups=inputs.prototype_groups,
    )  # fmt: skip
    positives, negatives = positives[0], negatives[0]
    pad = total - len(positives)  # low-level: the memory takes no part
    positives = torch.cat([positives, positives.new_zeros(pad)])
    return positives, torch.cat([negatives, negatives.new_zeros(pad)])
