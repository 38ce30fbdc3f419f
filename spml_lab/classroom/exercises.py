"""Classroom exercises: write down a pixel's positive and negative segments, get a hint.

Each relation notebook hands the student per-segment tensors (`segment_fields`: image, superpixel,
weak label, image tags, affinity label, one entry per segment of the batch) and the chosen pixel's
own values (`pixel_fields`; `describe_pixel` prints them and returns both). The student writes
two boolean expressions over them, the positive and the negative segments of the pixel, and
`check` compares them with what the loss really uses (`relations.positives_negatives`): it prints
"Right!" or a hint naming one segment that is wrong and why (a missed positive, a segment of
another image, the pixel's own segment, an unlabelled segment, the background tag ...).
`solution` shows and returns the reference answer; ``check(..., show_solution=True)`` (the
teacher's copy of a notebook) shows it and checks it in place of the student's.

Memory segments are left out here: the exercise is about one batch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch

from spml_lab.constants import IGNORE_INDEX  # one definition of "unlabelled"
from spml_lab.method import relations

__all__ = [
    "SegmentFields",
    "PixelFields",
    "segment_fields",
    "pixel_fields",
    "describe_pixel",
    "diagnose",
    "check",
    "solution",
]


@dataclass(frozen=True)
class SegmentFields:
    """What the exercise knows about every segment of the batch (each an (S,) tensor).

    Attributes
    ----------
    index : (S,) int64 tensor
        0 .. S-1, to compare with a pixel's own segment.
    image : (S,) int64 tensor
        Image of the batch the segment lies in.
    superpixel : (S,) int64 tensor
        Its superpixel id (within its image).
    label : (S,) int64 tensor
        Its weak label, 255 = unlabelled.
    tags : (S, C) bool tensor
        The tags of its image; column 0 is background.
    affinity : (S,) int64 tensor
        Its feature-affinity label (`relations.affinity_labels`), 255 = none.
    """

    index: torch.Tensor
    image: torch.Tensor
    superpixel: torch.Tensor
    label: torch.Tensor
    tags: torch.Tensor
    affinity: torch.Tensor


@dataclass(frozen=True)
class PixelFields:
    """The chosen pixel's values, in the terms of `SegmentFields`.

    Attributes
    ----------
    image, segment, superpixel, label, affinity : int
        Its image, its own segment, its superpixel, its weak label (255 = unlabelled) and its
        segment's affinity label.
    tags : (C,) bool tensor
        Its image's tags.
    """

    image: int
    segment: int
    superpixel: int
    label: int
    tags: torch.Tensor
    affinity: int


def segment_fields(batch, *, threshold=0.95):
    """Per-segment tensors of a `demo.DemoBatch`, for the student's expressions.

    Parameters
    ----------
    batch : demo.DemoBatch
    threshold : float, optional
        Cosine threshold of the affinity labels.

    Returns
    -------
    seg : SegmentFields
    """
    segments = batch.segments
    return SegmentFields(
        index=torch.arange(segments.num_segments),
        image=segments.image_ids.long(),
        superpixel=segments.superpixels.long(),
        label=segments.labels.long(),
        tags=batch.tags.bool()[segments.image_ids],
        affinity=relations.affinity_labels(segments, threshold=threshold),
    )


def pixel_fields(batch, pixel, *, threshold=0.95):
    """Collect the values of one pixel (flat index ``b * h * w + y * w + x``).

    Parameters
    ----------
    batch : demo.DemoBatch
    pixel : int
    threshold : float, optional
        Cosine threshold of the affinity labels.

    Returns
    -------
    me : PixelFields

    Raises
    ------
    ValueError
        If `pixel` is out of range or left out of every segment.
    """
    ids = batch.segments.segment_ids.reshape(-1)
    if not 0 <= int(pixel) < len(ids):
        raise ValueError(f"pixel must lie in [0, {len(ids)}), got {pixel}")
    own = int(ids[pixel])
    if own < 0:
        raise ValueError(f"pixel {pixel} belongs to no segment")
    image = int(batch.segments.image_ids[own])
    return PixelFields(
        image=image,
        segment=own,
        superpixel=int(batch.segments.superpixels[own]),
        label=int(batch.labels.reshape(-1)[pixel]),
        tags=batch.tags.bool()[image],
        affinity=int(relations.affinity_labels(batch.segments, threshold=threshold)[own]),
    )


def describe_pixel(batch, pixel, *, threshold=0.95):
    """Print the exercise's pixel and return the fields the student's expressions use.

    Parameters
    ----------
    batch : demo.DemoBatch
    pixel : int
        Flat pixel index.
    threshold : float, optional
        Cosine threshold of the affinity labels.

    Returns
    -------
    seg : SegmentFields
        Per segment: index, image, superpixel, label, tags, affinity.
    me : PixelFields
        The pixel's image, own segment, superpixel, label, tags and affinity label.

    Examples
    --------
    >>> from spml_lab.classroom import demo
    >>> batch = demo.make_batch(indices=(0,))
    >>> seg, me = describe_pixel(batch, 0)  # doctest: +ELLIPSIS
    Pixel 0: image 0, own segment ..., superpixel ..., tags ['background', ...]; ... segments
    >>> len(seg.index) == batch.segments.num_segments
    True
    """
    seg = segment_fields(batch, threshold=threshold)
    me = pixel_fields(batch, pixel, threshold=threshold)
    tags = [
        name for name, tagged in zip(batch.class_names, me.tags.tolist(), strict=True) if tagged
    ]
    print(
        f"Pixel {pixel}: image {me.image}, own segment {me.segment}, superpixel {me.superpixel}, "
        f"label {me.label}, affinity label {me.affinity}, tags {tags}; {len(seg.index)} segments"
    )
    return seg, me


# --------------------------------------------------------------------------- reference answers
# Each returns (positives, negatives). The last line of each adds the fallback: with no other
# "same" segment, the pixel's own segment is its positive.


def _low_level(seg, me):
    mine = seg.image == me.image  # superpixel ids mean nothing in another image
    positives = mine & (seg.superpixel == me.superpixel) & (seg.index != me.segment)
    negatives = mine & (seg.superpixel != me.superpixel)
    positives = positives | ((seg.index == me.segment) & ~positives.any())
    return positives, negatives


def _semantic_annotation(seg, me):
    labelled = seg.label != 255  # unlabelled segments are neither positive nor negative
    positives = (seg.label == me.label) & (seg.index != me.segment)
    negatives = labelled & (seg.label != me.label)
    positives = positives | ((seg.index == me.segment) & ~positives.any())
    return positives, negatives


def _cooccurrence(seg, me):
    shared = (seg.tags[:, 1:] & me.tags[1:]).any(1)  # a common tag; background says nothing
    positives = shared & (seg.index != me.segment)
    negatives = ~shared
    positives = positives | ((seg.index == me.segment) & ~positives.any())
    return positives, negatives


def _feature_affinity(seg, me):
    known = seg.affinity != 255  # no close labelled segment: neither positive nor negative
    positives = (seg.affinity == me.affinity) & (seg.index != me.segment)
    negatives = known & (seg.affinity != me.affinity)
    positives = positives | ((seg.index == me.segment) & ~positives.any())
    return positives, negatives


_SOLUTIONS = {
    "low_level": _low_level,
    "semantic_annotation": _semantic_annotation,
    "cooccurrence": _cooccurrence,
    "feature_affinity": _feature_affinity,
}


def _relation(relation):
    if relation not in _SOLUTIONS:
        raise ValueError(f"unknown relation {relation!r}; known: {relations.RELATIONS}")
    return _SOLUTIONS[relation]


def solution(relation, seg, me, *, show=True):
    """Return (and print) the reference answer for a relation.

    Parameters
    ----------
    relation : str
        One of `relations.RELATIONS`.
    seg : SegmentFields
    me : PixelFields
    show : bool, optional
        Print the code of the answer.

    Returns
    -------
    positives, negatives : (S,) bool tensors
    """
    answer = _relation(relation)
    if show:
        print(inspect.getsource(answer))
    return answer(seg, me)


# --------------------------------------------------------------------------- checking


def _as_mask(answer, name, num_segments):
    """Return the answer as an (S,) bool tensor, or a hint saying why it is not one."""
    if isinstance(answer, np.ndarray):
        answer = torch.from_numpy(answer)
    if not isinstance(answer, torch.Tensor):
        return f"{name} must be a bool tensor, got {type(answer).__name__}"
    if answer.dtype != torch.bool:
        return f"{name} must hold booleans (use ==, !=, &, |, ~), got dtype {answer.dtype}"
    if tuple(answer.shape) != (num_segments,):
        return (
            f"{name} must have shape ({num_segments},), one entry per segment, "
            f"got {tuple(answer.shape)}"
        )
    return answer.cpu()


def _describe(relation, k, seg, names):
    def name(c):
        return names[c] if 0 <= c < len(names) else str(c)

    label = int(seg.label[k])
    parts = [f"image {int(seg.image[k])}"]
    if relation == "low_level":
        parts.append(f"superpixel {int(seg.superpixel[k])}")
    elif relation == "cooccurrence":
        tags = [name(c) for c in torch.nonzero(seg.tags[k])[:, 0].tolist()]
        parts.append("tags " + "+".join(tags))
    else:
        parts.append("unlabelled" if label == IGNORE_INDEX else f"label {name(label)}")
        if relation == "feature_affinity":
            affinity = int(seg.affinity[k])
            parts.append(
                "no affinity label"
                if affinity == IGNORE_INDEX
                else f"affinity label {name(affinity)}"
            )
    return f"segment {k} ({', '.join(parts)})"


def _why(relation, kind, k, seg, me, truth_pos):
    """Explain why segment `k` is wrong; `kind` says how (e.g. "missed positive")."""
    other_image = int(seg.image[k]) != me.image
    only_background = (
        bool(seg.tags[k, 0] & me.tags[0]) and not (seg.tags[k, 1:] & me.tags[1:]).any()
    )
    unknown = {"semantic_annotation": seg.label, "feature_affinity": seg.affinity}.get(relation)
    unlabelled = unknown is not None and int(unknown[k]) == IGNORE_INDEX
    borrowed = relation == "feature_affinity" and int(seg.label[k]) == IGNORE_INDEX
    others = bool(truth_pos.any()) and not bool(truth_pos[me.segment])
    if k == me.segment:
        if kind == "extra positive" and others:
            return (
                "the pixel's own segment is a positive only when no other segment is "
                "'same'; here others are, so leave it out"
            )
        if kind == "missed positive":
            return (
                "no other segment is 'same' as the pixel, so its own segment is the "
                "positive (the fallback)"
            )
        if kind == "extra negative":
            return "the pixel's own segment is never a negative"
    if relation == "low_level" and other_image and kind.startswith("extra"):
        return (
            "it lies in another image: the low-level relation compares a pixel only with "
            "the segments of its own image (superpixel ids mean nothing across images)"
        )
    if other_image and kind.startswith("missed"):
        return (
            "it lies in another image: this relation compares a pixel with the segments "
            "of every image of the batch (and the memory)"
        )
    if unlabelled and kind.startswith("extra"):
        what = "has no affinity label" if relation == "feature_affinity" else "is unlabelled"
        return f"it {what}: such a segment is neither positive nor negative"
    if relation == "cooccurrence" and only_background:
        return (
            "its image shares only the background tag with the pixel's image; "
            "background (column 0) says nothing, so it is a negative"
        )
    if borrowed and kind.startswith("missed"):
        return (
            "it has no weak label but borrows one from a close labelled segment of its "
            "image: compare seg.affinity, not seg.label"
        )
    if kind == "extra negative":
        return "it is 'same' as the pixel, so it is a positive, not a negative"
    if kind == "extra positive":
        return "it is not 'same' as the pixel"
    return f"it is a {kind.split()[1]} you missed"


def diagnose(relation, answer_pos, answer_neg, batch, pixel):
    """Compare an answer with the truth; return None if right, else a hint.

    Parameters
    ----------
    relation : str
        One of `relations.RELATIONS`.
    answer_pos, answer_neg : (S,) bool tensor or None
        The student's positive and negative segments of `pixel`.
    batch : demo.DemoBatch
    pixel : int
        Flat pixel index.

    Returns
    -------
    hint : str or None
        None when both answers are right; a hint starting with "Not answered yet" when either
        is None, else one naming the first wrong segment and why it is wrong.
    """
    _relation(relation)
    if answer_pos is None or answer_neg is None:
        return (
            "Not answered yet: set answer_pos and answer_neg to boolean expressions "
            "over seg.* and me.*"
        )
    num_segments = batch.segments.num_segments
    masks = [
        _as_mask(a, n, num_segments)
        for a, n in ((answer_pos, "answer_pos"), (answer_neg, "answer_neg"))
    ]
    for mask in masks:
        if isinstance(mask, str):
            return mask
    answer_pos, answer_neg = masks
    truth_pos, truth_neg = relations.positives_negatives(
        relation, pixel, batch.embeddings, batch.labels, batch.tags, batch.segments
    )
    truth_pos, truth_neg = truth_pos.cpu(), truth_neg.cpu()
    if not (truth_pos.any() or truth_neg.any()):
        return "this pixel takes no part in the relation (is it unlabelled?): pick another pixel"
    seg, me = segment_fields(batch), pixel_fields(batch, pixel)
    both = answer_pos & answer_neg
    if both.any():
        k = int(torch.nonzero(both)[0, 0])
        return f"segment {k} is in both answers: a segment is positive, negative, or neither"
    checks = (
        ("missed positive", truth_pos & ~answer_pos),
        ("extra positive", answer_pos & ~truth_pos),
        ("missed negative", truth_neg & ~answer_neg),
        ("extra negative", answer_neg & ~truth_neg),
    )
    for kind, wrong in checks:
        if wrong.any():
            k = int(torch.nonzero(wrong)[0, 0])
            more = int(wrong.sum()) - 1
            what = _describe(relation, k, seg, batch.class_names)
            why = _why(relation, kind, k, seg, me, truth_pos)
            tail = f" (and {more} more {kind}{'s' * (more > 1)})" if more else ""
            return f"{kind}: {what}: {why}{tail}"
    return None


def check(relation, answer_pos, answer_neg, batch, pixel, *, show_solution=False):
    """Print "Right!" or a hint for the student's answer, and say whether it is right.

    Parameters
    ----------
    relation, answer_pos, answer_neg, batch, pixel
        As in `diagnose`.
    show_solution : bool, optional
        The teacher's copy: print the reference answer (`solution`) and check it instead of
        `answer_pos` and `answer_neg`, which are then ignored.

    Returns
    -------
    right : bool
        Whether the answer checked (the reference one with `show_solution`) is right.
    """
    if show_solution:
        answer_pos, answer_neg = solution(
            relation, segment_fields(batch), pixel_fields(batch, pixel), show=True
        )
    hint = diagnose(relation, answer_pos, answer_neg, batch, pixel)
    if hint is None:
        print(
            f"Right! {int(answer_pos.sum())} positive and {int(answer_neg.sum())} negative "
            "segments."
        )
        return True
    print(hint if hint.startswith("Not answered yet") else f"Not yet: {hint}")
    return False
