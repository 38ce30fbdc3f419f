"""Classroom exercises: write the rule for a pixel's positive and negative segments, get a hint.

Each relation notebook hands the student per-segment tensors (`segment_fields`: index, image,
superpixel, weak label, image tags, affinity label, one entry per segment of the batch) and a
pixel's own values (`pixel_fields`; `describe_pixel` prints those of the drawn pixel and returns
both). The student writes a **rule**, a function ``rule(seg, me)`` that returns two boolean
expressions over them: the pixel's positive and negative segments. `check` tries the rule on a
few pixels (`cases`): the pixel drawn in the notebook, pixels of other images, and one pixel
that needs the own-segment fallback (no other segment is "same" as it, so ``pos(i)`` is its own
segment). It compares each answer with what the loss really uses
(`relations.positives_negatives`) and prints "Right!" or, per pixel, a hint naming one segment
that is wrong and why (a missed positive, a segment of another image, the pixel's own segment,
an unlabelled segment, the background tag ...). An answer read off the picture of one pixel, or
a rule without the fallback, fails. `solution` shows and returns the reference rule's answer;
``check(..., show_solution=True)`` (the teacher's copy of a notebook) shows the reference rule
and checks it in place of the student's.

Memory segments are left out here: the exercise is about one batch.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

import numpy as np
import torch

from spml_lab.classroom import lesson_batch
from spml_lab.constants import IGNORE_INDEX  # one definition of "unlabelled"
from spml_lab.method import losses, relations

__all__ = [
    "SegmentFields",
    "PixelFields",
    "segment_fields",
    "pixel_fields",
    "describe_pixel",
    "Case",
    "cases",
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
        The segment's number, to compare with a pixel's own segment: 0 .. S-1, its row in
        the batch (in a `Case` that leaves segments out, the numbers of the full batch).
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
    """Per-segment tensors of a `lesson_batch.LessonBatch`, for the student's expressions.

    Parameters
    ----------
    batch : lesson_batch.LessonBatch
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
    batch : lesson_batch.LessonBatch
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
    batch : lesson_batch.LessonBatch
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
    >>> from spml_lab.classroom import lesson_batch
    >>> batch = lesson_batch.make_batch(indices=(0,))
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
# Each says which segments are "same" as the pixel and which take part at all, then hands them
# to the rule every relation shares (`losses.segment_roles`): positives are the other "same"
# segments, or the pixel's own one when there are none; negatives take part and are not "same".


def _low_level(seg, me):
    same = seg.superpixel == me.superpixel
    takes_part = seg.image == me.image  # superpixel ids mean nothing in another image
    return losses.segment_roles(same, takes_part, seg.index == me.segment)


def _semantic_annotation(seg, me):
    same = seg.label == me.label
    takes_part = seg.label != IGNORE_INDEX  # unlabelled segments are neither positive nor negative
    return losses.segment_roles(same, takes_part, seg.index == me.segment)


def _cooccurrence(seg, me):
    same = (seg.tags[:, 1:] & me.tags[1:]).any(1)  # a common tag; background says nothing
    takes_part = torch.ones_like(same)  # every segment: no tag in common makes a negative
    return losses.segment_roles(same, takes_part, seg.index == me.segment)


def _feature_affinity(seg, me):
    same = seg.affinity == me.affinity
    # no close labelled segment: neither positive nor negative
    takes_part = seg.affinity != IGNORE_INDEX
    return losses.segment_roles(same, takes_part, seg.index == me.segment)


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
        Print the code of the answer, and what the rule it ends with does.

    Returns
    -------
    positives, negatives : (S,) bool tensors
    """
    answer = _relation(relation)
    if show:
        print(inspect.getsource(answer))
        print(_RULE)
    return answer(seg, me)


# what `losses.segment_roles` does, printed under a reference answer
_RULE = (
    "# losses.segment_roles(same, takes_part, own), the rule of every relation:\n"
    "#   positives = same & takes_part & ~own, or own alone when that is empty\n"
    "#   negatives = takes_part & ~same"
)


# --------------------------------------------------------------------------- the pixels tried


@dataclass(frozen=True)
class Case:
    """One pixel `check` tries a rule on.

    Attributes
    ----------
    batch : lesson_batch.LessonBatch
        The notebook's batch, or a copy of it with some segments left out (their pixels
        belong to no segment, so they take no part either).
    pixel : int
        Flat pixel index.
    index : (S',) int64 tensor
        The number in the full batch of each segment of `batch`.
    note : str
        Which pixel it is, for the printout.
    fallback : bool
        Whether the pixel needs the own-segment fallback (no other segment is "same").
    """

    batch: lesson_batch.LessonBatch
    pixel: int
    index: torch.Tensor
    note: str
    fallback: bool = False

    def fields(self):
        """Return the case's `SegmentFields` and `PixelFields`, numbered as in the full batch."""
        seg, me = segment_fields(self.batch), pixel_fields(self.batch, self.pixel)
        seg = dataclasses.replace(seg, index=self.index)
        return seg, dataclasses.replace(me, segment=int(self.index[me.segment]))


def _roles(relation, batch, pixel):
    """Return the pixel's positive and negative segments as the loss uses them, on the CPU."""
    pos, neg = relations.positives_negatives(
        relation, pixel, batch.embeddings, batch.labels, batch.tags, batch.segments
    )
    return pos.cpu(), neg.cpu()


def _leave_out(batch, keep):
    """Return a copy of `batch` with the segments where `keep` is True, and their numbers."""
    segments = batch.segments
    index = torch.nonzero(keep)[:, 0]  # (S',)
    renumber = torch.full((segments.num_segments,), -1, dtype=torch.long)
    renumber[index] = torch.arange(len(index))
    ids = segments.segment_ids
    ids = torch.where(ids >= 0, renumber[ids.clamp(min=0)], -1)  # left out: in no segment
    rows = ("prototypes", "labels", "image_ids", "superpixels", "clusters", "sizes", "tags")
    kept = {name: getattr(segments, name) for name in rows}
    kept = {name: None if value is None else value[index] for name, value in kept.items()}
    kept = dataclasses.replace(segments, segment_ids=ids, **kept)
    return dataclasses.replace(batch, segments=kept), index


def _alone(batch, relation, pixel, *, rounds=8):
    """Make the case of `pixel` in the batch without the other segments 'same' as it, or None.

    Leaving segments out can change other segments' roles (an affinity label is borrowed from
    another segment), so the "same" segments are left out until none but the pixel's own is
    left; None if the pixel then takes no part, or has no negative.
    """
    own = int(batch.segments.segment_ids.reshape(-1)[pixel])
    keep = torch.ones(batch.segments.num_segments, dtype=torch.bool)
    for _ in range(rounds):
        sub, index = _leave_out(batch, keep)
        pos, neg = _roles(relation, sub, pixel)
        if not (pos.any() and neg.any()):
            return None
        if pos[index == own].any():  # its own segment is its positive: the fallback
            b = lesson_batch.pixel_position(batch, pixel)[0]
            note = (
                f"pixel {pixel} (image {b}) in the batch without the {int((~keep).sum())} "
                "other segments 'same' as it"
            )
            return Case(sub, pixel, index, note, fallback=True)
        keep[index[pos]] = False
    return None


def _needs_fallback(relation, case):
    """Whether the case's pixel takes part with its own segment as its only positive."""
    pos, neg = _roles(relation, case.batch, case.pixel)
    own = int(case.batch.segments.segment_ids.reshape(-1)[case.pixel])
    return bool(pos[own]) and bool(neg.any())


def cases(batch, relation, pixel, *, others=2):
    """Choose the pixels `check` tries a rule on: 3 or 4, one of them needing the fallback.

    Parameters
    ----------
    batch : lesson_batch.LessonBatch
    relation : str
        One of `relations.RELATIONS`.
    pixel : int
        The pixel drawn in the notebook (flat index); tried first.
    others : int, optional
        Pixels of other images to try (`lesson_batch.pick_pixel`, one per image), at most.

    Returns
    -------
    tried : list of Case
        The drawn pixel, up to `others` pixels of the other images (pixels of the drawn
        one's image when there are too few), and exactly one pixel whose rule needs the
        own-segment fallback (`Case.fallback`). Real batches seldom hold such a pixel (a
        superpixel, class or tag met by one segment only), so unless one of the pixels
        already needs it, it is made: one of the pixels (the drawn one first) in a copy of
        the batch without the other segments "same" as it.

    Raises
    ------
    ValueError
        If no pixel can be made to need the fallback.

    Examples
    --------
    >>> from spml_lab.nets import embedding_nets
    >>> net = embedding_nets.SmallEmbeddingNet(8, 8)
    >>> batch = lesson_batch.make_batch(indices=(0, 1, 2), net=net)
    >>> tried = cases(batch, "low_level", lesson_batch.pick_pixel(batch, "low_level"))
    >>> len(tried), [case.fallback for case in tried]
    (4, [False, False, False, True])
    """
    _relation(relation)
    segments = batch.segments
    every = torch.arange(segments.num_segments)
    image = lesson_batch.pixel_position(batch, pixel)[0]
    tried = [Case(batch, int(pixel), every, f"pixel {pixel} (image {image}, the one drawn)")]
    num_images = batch.embeddings.shape[0]
    for k in [(image + j) % num_images for j in range(1, num_images)][: 2 * others]:
        if len(tried) > others:
            break
        try:
            other = lesson_batch.pick_pixel(batch, relation, image=k, tries=1)
        except ValueError:  # no pixel of image k takes part with positives of its own
            continue
        tried.append(Case(batch, other, every, f"pixel {other} (image {k})"))
    # a pixel of one segment each of the drawn one's image, labelled segments first (their
    # label cannot change when segments are left out), large ones first
    ids = segments.segment_ids.reshape(-1)
    mine = every[segments.image_ids == image]
    unlabelled = (segments.labels[mine] == IGNORE_INDEX).long()
    mine = mine[torch.argsort(unlabelled * ids.numel() - segments.sizes[mine], stable=True)]
    spare = [int(torch.nonzero(ids == s)[0, 0]) for s in mine[:8].tolist()]
    # a pixel of the batch may need the fallback already (the only segment of its class)
    tried = [dataclasses.replace(c, fallback=_needs_fallback(relation, c)) for c in tried]
    made = not any(case.fallback for case in tried)  # the fallback case is still to make
    for candidate in spare:
        if len(tried) + made >= 3:
            break
        case = Case(batch, candidate, every, f"pixel {candidate} (image {image})")
        if candidate in [c.pixel for c in tried] or not _roles(relation, batch, candidate)[1].any():
            continue  # tried already, or no negative: nothing to check
        fallback = _needs_fallback(relation, case)
        if fallback and not made:
            continue  # one pixel that needs the fallback is enough
        tried.append(dataclasses.replace(case, fallback=fallback))
        made = made and not fallback
    if not made:
        return tried
    for candidate in [case.pixel for case in tried] + spare:
        case = _alone(batch, relation, candidate)
        if case is not None:
            return [*tried, case]
    raise ValueError(f"no pixel of image {image} can be made to need the fallback ({relation})")


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
    return f"segment {int(seg.index[k])} ({', '.join(parts)})"


def _why(relation, kind, k, seg, me, truth_pos):
    """Explain why segment `k` (a row of `seg`) is wrong; `kind` says how."""
    own = seg.index == me.segment  # (S,) the pixel's own segment
    other_image = int(seg.image[k]) != me.image
    only_background = (
        bool(seg.tags[k, 0] & me.tags[0]) and not (seg.tags[k, 1:] & me.tags[1:]).any()
    )
    unknown = {"semantic_annotation": seg.label, "feature_affinity": seg.affinity}.get(relation)
    unlabelled = unknown is not None and int(unknown[k]) == IGNORE_INDEX
    borrowed = relation == "feature_affinity" and int(seg.label[k]) == IGNORE_INDEX
    others = bool(truth_pos.any()) and not bool(truth_pos[own].any())
    if bool(own[k]):
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


_NOT_ANSWERED = (
    "Not answered yet: make the rule return two boolean expressions over seg.* and me.* "
    "(positives, negatives)"
)


def _diagnose_case(relation, answer_pos, answer_neg, case):
    """`diagnose` on one `Case`: None if right, else a hint."""
    if answer_pos is None or answer_neg is None:
        return _NOT_ANSWERED
    num_segments = case.batch.segments.num_segments
    masks = [
        _as_mask(a, n, num_segments)
        for a, n in ((answer_pos, "positives"), (answer_neg, "negatives"))
    ]
    for mask in masks:
        if isinstance(mask, str):
            return mask
    answer_pos, answer_neg = masks
    truth_pos, truth_neg = _roles(relation, case.batch, case.pixel)
    if not (truth_pos.any() or truth_neg.any()):
        return "this pixel takes no part in the relation (is it unlabelled?): pick another pixel"
    seg, me = case.fields()
    both = answer_pos & answer_neg
    if both.any():
        k = int(torch.nonzero(both)[0, 0])
        return (
            f"segment {int(seg.index[k])} is in both answers: a segment is positive, "
            "negative, or neither"
        )
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
            what = _describe(relation, k, seg, case.batch.class_names)
            why = _why(relation, kind, k, seg, me, truth_pos)
            tail = f" (and {more} more {kind}{'s' * (more > 1)})" if more else ""
            return f"{kind}: {what}: {why}{tail}"
    return None


def diagnose(relation, answer_pos, answer_neg, batch, pixel):
    """Compare one pixel's answer with the truth; return None if right, else a hint.

    Parameters
    ----------
    relation : str
        One of `relations.RELATIONS`.
    answer_pos, answer_neg : (S,) bool tensor or None
        The positive and negative segments of `pixel` (what a rule returns for it).
    batch : lesson_batch.LessonBatch
    pixel : int
        Flat pixel index.

    Returns
    -------
    hint : str or None
        None when both answers are right; a hint starting with "Not answered yet" when either
        is None, else one naming the first wrong segment and why it is wrong.
    """
    _relation(relation)
    every = torch.arange(batch.segments.num_segments)
    return _diagnose_case(relation, answer_pos, answer_neg, Case(batch, int(pixel), every, ""))


def check(relation, rule, batch, pixel, *, show_solution=False):
    """Try the student's rule on a few pixels; print "Right!" or a hint per pixel.

    Parameters
    ----------
    relation : str
        One of `relations.RELATIONS`.
    rule : callable or None
        ``rule(seg, me) -> (positives, negatives)``, two (S,) bool tensors over the fields
        of a batch's segments (`SegmentFields`) and of one pixel (`PixelFields`).
    batch : lesson_batch.LessonBatch
    pixel : int
        The pixel drawn in the notebook (flat index).
    show_solution : bool, optional
        The teacher's copy: print the reference rule (`solution`) and check it instead of
        `rule`, which is then ignored.

    Returns
    -------
    right : bool
        Whether the rule checked (the reference one with `show_solution`) is right for every
        pixel of `cases`: the drawn one, pixels of other images, and one that needs the
        own-segment fallback. An answer that holds for one pixel only, or a rule without the
        fallback, is not right.
    """
    reference = _relation(relation)
    if show_solution:
        print(inspect.getsource(reference))
        rule = reference
    if rule is None:
        print(_NOT_ANSWERED)
        return False
    tried = cases(batch, relation, pixel)
    lines, right, results = [], 0, []
    for case in tried:
        answer = rule(*case.fields())
        if not (isinstance(answer, tuple) and len(answer) == 2):
            print(f"the rule must return two values, (positives, negatives); got {answer!r}")
            return False
        hint = _diagnose_case(relation, *answer, case)
        if hint == _NOT_ANSWERED:
            print(hint)
            return False
        results.append(hint is None)
        if hint is None:
            right += 1
            pos, neg = answer
            hint = f"right, {int(pos.sum())} positive and {int(neg.sum())} negative segments"
        lines.append(f"  {case.note}: {hint}")
    print("\n".join(lines))
    if right == len(tried):
        print(f"Right! Your rule holds for all {len(tried)} pixels, the fallback included.")
        return True
    print(f"Not yet: your rule holds for {right} of the {len(tried)} pixels.")
    if results[0] and not any(results[1:]):
        print(
            "It holds for the drawn pixel only: write it with the pixel's fields (me.*), so "
            "that it holds for any pixel, not as one pixel's answer."
        )
    return False
