import functools
import math

import numpy as np
import pytest
import torch

from spml_lab.classroom import exercises, lesson_batch
from spml_lab.constants import IGNORE_INDEX
from spml_lab.method import relations
from spml_lab.method.clustering import build_segments
from spml_lab.nets import embedding_nets

# ---------------------------------------------------------------------------------------------
# A hand-built batch: 3 images of 2 x 3 pixels, classes background, a, b, c (0 .. 3).
#
#   seg  image  superpixel  label  embedding  affinity label  image tags
#   0 A  0      0           a      x          a               {bg, a, b}
#   1 B  0      0           -      ~x         a (from A)
#   2 C  0      1           -      z          -  (nothing close in image 0)
#   3 D  0      1           b      y          b
#   4 E  1      0           -      ~y         c (from H)      {bg, a, c}
#   5 F  1      0           a      x          a
#   6 G  1      1           -      z          -
#   7 H  1      1           c      y          c
#   8 I  2      0           -      z          bg (from J)     {bg}
#   9 J  2      0           bg     z          bg
# ---------------------------------------------------------------------------------------------
X, Y, Z = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]
NX = [0.98, math.sqrt(1 - 0.98**2), 0.0]
NY = [math.sqrt(1 - 0.98**2), 0.98, 0.0]


def hand_batch():
    emb = torch.tensor(
        [
            [[X, NX, Z], [X, NX, Y]],
            [[X, X, NY], [Z, Z, Y]],
            [[Z, Z, Z], [Z, Z, Z]],
        ]
    )  # (3, 2, 3, 3)
    clusters = torch.tensor([[[0, 1, 2], [0, 1, 2]], [[0, 0, 0], [0, 0, 0]], [[0] * 3] * 2])
    superpixels = torch.tensor([[[0, 0, 1], [0, 0, 1]], [[0, 0, 0], [1, 1, 1]], [[0] * 3] * 2])
    labels = torch.tensor(
        [
            [[1, IGNORE_INDEX, IGNORE_INDEX], [1, IGNORE_INDEX, 2]],
            [[1, 1, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, 3]],
            [[0, IGNORE_INDEX, IGNORE_INDEX], [IGNORE_INDEX] * 3],
        ]
    )
    tags = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 1], [1, 0, 0, 0]], dtype=torch.bool)
    segments = build_segments(emb, clusters, superpixels, labels, tags=tags)
    return lesson_batch.LessonBatch(
        images=np.zeros((3, 8, 12, 3), np.uint8),
        truth=np.zeros((3, 8, 12), np.int64),
        embeddings=emb,
        labels=labels,
        superpixels=superpixels,
        tags=tags,
        segments=segments,
        class_names=["background", "a", "b", "c"],
        names=["i0", "i1", "i2"],
    )


def mask(indices, size=10):
    out = torch.zeros(size, dtype=torch.bool)
    out[list(indices)] = True
    return out


PIXEL_A = 0  # image 0, row 0, column 0: segment A
PIXEL_D = 5  # image 0, row 1, column 2: segment D, the only segment labelled b

EXPECTED = {
    ("low_level", PIXEL_A): ({1}, {2, 3}),
    ("semantic_annotation", PIXEL_A): ({5}, {3, 7, 9}),
    ("semantic_annotation", PIXEL_D): ({3}, {0, 5, 7, 9}),  # alone in b: own segment
    ("cooccurrence", PIXEL_A): ({1, 2, 3, 4, 5, 6, 7}, {8, 9}),
    ("feature_affinity", PIXEL_A): ({1, 5}, {3, 4, 7, 8, 9}),
}


def test_hand_batch_is_as_drawn():
    batch = hand_batch()
    seg = exercises.segment_fields(batch)
    assert seg.label.tolist() == [1, IGNORE_INDEX, IGNORE_INDEX, 2, IGNORE_INDEX,
                                  1, IGNORE_INDEX, 3, IGNORE_INDEX, 0]  # fmt: skip
    assert seg.affinity.tolist() == [1, 1, IGNORE_INDEX, 2, 3, 1, IGNORE_INDEX, 3, 0, 0]
    assert seg.superpixel.tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 0, 0]
    me = exercises.pixel_fields(batch, PIXEL_A)
    assert (me.image, me.segment, me.superpixel, me.label, me.affinity) == (0, 0, 0, 1, 1)
    assert me.tags.tolist() == [True, True, True, False]


@pytest.mark.parametrize("key", list(EXPECTED), ids=lambda k: f"{k[0]}-{k[1]}")
def test_truth_and_solution_match_the_table(key, capsys):
    relation, pixel = key
    batch = hand_batch()
    pos, neg = relations.positives_negatives(
        relation, pixel, batch.embeddings, batch.labels, batch.tags, batch.segments
    )
    expected = [mask(s) for s in EXPECTED[key]]
    assert pos.tolist() == expected[0].tolist() and neg.tolist() == expected[1].tolist()
    seg, me = exercises.segment_fields(batch), exercises.pixel_fields(batch, pixel)
    answer = exercises.solution(relation, seg, me, show=True)
    assert "def _" in capsys.readouterr().out  # the code is shown
    assert [a.tolist() for a in answer] == [e.tolist() for e in expected]


@pytest.mark.parametrize("key", list(EXPECTED), ids=lambda k: f"{k[0]}-{k[1]}")
def test_right_answers_are_accepted(key):
    relation, pixel = key
    pos, neg = (mask(s) for s in EXPECTED[key])
    assert exercises.diagnose(relation, pos, neg, hand_batch(), pixel) is None
    # numpy answers are fine too
    assert exercises.diagnose(relation, pos.numpy(), neg.numpy(), hand_batch(), pixel) is None


def test_unanswered_says_so_and_is_not_right(capsys):
    assert exercises.check("low_level", None, hand_batch(), PIXEL_A) is False
    assert capsys.readouterr().out.startswith("Not answered yet")
    half = lambda seg, me: (seg.index == 1, None)  # noqa: E731
    assert exercises.check("low_level", half, hand_batch(), PIXEL_A) is False
    assert capsys.readouterr().out.startswith("Not answered yet")


def test_wrong_form_is_named(capsys):
    batch = hand_batch()
    longs = lambda seg, me: (mask({1}).long(), mask({2, 3}))  # noqa: E731
    assert exercises.check("low_level", longs, batch, PIXEL_A) is False
    assert "booleans" in capsys.readouterr().out
    assert exercises.check("low_level", lambda seg, me: mask({1}), batch, PIXEL_A) is False
    assert "must return two values" in capsys.readouterr().out
    hint = exercises.diagnose("low_level", mask({1}, 9), mask({2, 3}), batch, PIXEL_A)
    assert "shape (10,)" in hint
    assert "bool tensor" in exercises.diagnose("low_level", [True], mask({2}), batch, PIXEL_A)


# relation, pixel, positives, negatives given, words the hint must contain
WRONG = {
    "missed positive": ("low_level", PIXEL_A, set(), {2, 3}, "missed positive: segment 1"),
    "own segment as positive": (
        "low_level", PIXEL_A, {0, 1}, {2, 3}, "own segment is a positive only when",
    ),
    "fallback missed": ("semantic_annotation", PIXEL_D, set(), {0, 5, 7, 9}, "fallback"),
    "own segment as negative": ("low_level", PIXEL_A, {1}, {0, 2, 3}, "never a negative"),
    "another image (low level)": (
        "low_level", PIXEL_A, {1}, {2, 3, 4}, "compares a pixel only with the segments of its own",
    ),
    "positive in another image missed": (
        "semantic_annotation", PIXEL_A, set(), {3, 7, 9}, "every image of the batch",
    ),
    "unlabelled as negative": (
        "semantic_annotation", PIXEL_A, {5}, {1, 3, 7, 9}, "is unlabelled",
    ),
    "same label as negative": ("semantic_annotation", PIXEL_D, {3}, {0, 5, 7, 9, 3}, "both"),
    "background shared": (
        "cooccurrence", PIXEL_A, set(range(1, 10)), set(), "only the background tag",
    ),
    "weak label instead of affinity": (
        "feature_affinity", PIXEL_A, {5}, {3, 7, 9}, "compare seg.affinity, not seg.label",
    ),
    "no affinity label as negative": (
        "feature_affinity", PIXEL_A, {1, 5}, {2, 3, 4, 7, 8, 9}, "has no affinity label",
    ),
    "different superpixel as positive": ("low_level", PIXEL_A, {1, 2}, {3}, "not 'same'"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(WRONG))
def test_each_wrong_kind_gets_its_hint(case):
    relation, pixel, pos, neg, words = WRONG[case]
    hint = exercises.diagnose(relation, mask(pos), mask(neg), hand_batch(), pixel)
    assert hint is not None and words in hint, hint


def test_hint_counts_the_other_wrong_segments():
    hint = exercises.diagnose("low_level", mask({1}), mask({2, 3, 4, 5, 6}), hand_batch(), 0)
    assert "segment 4" in hint and "(and 2 more extra negatives)" in hint


def test_pixel_taking_no_part_is_reported():
    # pixel 1 (image 0, row 0, column 1) is unlabelled: no semantic-annotation loss
    hint = exercises.diagnose("semantic_annotation", mask(set()), mask(set()), hand_batch(), 1)
    assert "takes no part" in hint


def test_bad_relation_and_pixel():
    with pytest.raises(ValueError, match="unknown relation"):
        exercises.check("colour", lambda seg, me: (mask({1}), mask({2})), hand_batch(), 0)
    with pytest.raises(ValueError, match="pixel must lie"):
        exercises.pixel_fields(hand_batch(), 18)


@pytest.mark.parametrize("relation", relations.RELATIONS)
def test_solutions_agree_with_the_loss_on_embedded_data(relation):
    torch.manual_seed(0)
    batch = lesson_batch.make_batch(
        "objects", "scribbles", net=embedding_nets.SmallEmbeddingNet(8, 8)
    )
    seg = exercises.segment_fields(batch)
    for seed in range(2):
        pixel = lesson_batch.pick_pixel(batch, relation, seed=seed, image=None)
        pos, neg = exercises.solution(
            relation, seg, exercises.pixel_fields(batch, pixel), show=False
        )
        assert exercises.diagnose(relation, pos, neg, batch, pixel) is None


def test_describe_pixel_prints_the_pixel_and_returns_its_fields(capsys):
    batch = hand_batch()
    seg, me = exercises.describe_pixel(batch, PIXEL_D)
    # segment D of the table: image 0, superpixel 1, label b, affinity b; image 0 has bg, a, b
    assert capsys.readouterr().out == (
        "Pixel 5: image 0, own segment 3, superpixel 1, label 2, affinity label 2, "
        "tags ['background', 'a', 'b']; 10 segments\n"
    )
    # the table's columns
    assert seg.label.tolist() == [1, IGNORE_INDEX, IGNORE_INDEX, 2, IGNORE_INDEX,
                                  1, IGNORE_INDEX, 3, IGNORE_INDEX, 0]  # fmt: skip
    assert seg.affinity.tolist() == [1, 1, IGNORE_INDEX, 2, 3, 1, IGNORE_INDEX, 3, 0, 0]
    assert (me.image, me.segment, me.superpixel, me.label, me.affinity) == (0, 3, 1, 2, 2)


@pytest.mark.parametrize("key", list(EXPECTED), ids=lambda k: f"{k[0]}-{k[1]}")
def test_show_solution_prints_and_checks_the_reference_answer(key, capsys):
    relation, pixel = key
    pos, neg = EXPECTED[key]
    wrong = lambda seg, me: (seg.index < 0, seg.index < 0)  # noqa: E731  (set aside)
    assert exercises.check(relation, wrong, hand_batch(), pixel, show_solution=True) is True
    out = capsys.readouterr().out
    assert "def _" in out  # the reference code is shown
    drawn = f"pixel {pixel} (image 0, the one drawn): right, {len(pos)} positive and {len(neg)}"
    assert drawn in out
    assert out.endswith("pixels, the fallback included.\n") and "\nRight! Your rule" in out
    assert exercises.check(relation, wrong, hand_batch(), pixel) is False


@functools.cache
def _notebook_pixels(relation, seed):
    """The batch and pixel a relation notebook (05-08) draws with its stored or CI seed."""
    if relation == "feature_affinity":
        batch = lesson_batch.make_batch("parts", "points", seed=seed)
        affinity = relations.affinity_labels(batch.segments)[batch.segments.segment_ids]
        where = (batch.labels == IGNORE_INDEX) & (affinity != IGNORE_INDEX) & (affinity > 0)
    else:
        annotation = "tags" if relation == "cooccurrence" else "scribbles"
        batch = lesson_batch.make_batch("objects", annotation, seed=seed)
        labelled_object = (batch.labels > 0) & (batch.labels != IGNORE_INDEX)
        where = labelled_object if relation == "semantic_annotation" else None
    return batch, lesson_batch.pick_pixel(batch, relation, seed=seed, where=where)


@pytest.mark.parametrize("seed", [0, 1])  # the notebooks' stored seed and the CI one
@pytest.mark.parametrize("relation", relations.RELATIONS)
def test_teachers_copy_of_each_relation_notebook_says_right(relation, seed, capsys):
    batch, pixel = _notebook_pixels(relation, seed)
    assert exercises.check(relation, None, batch, pixel, show_solution=True) is True
    assert "Right!" in capsys.readouterr().out
    tried = exercises.cases(batch, relation, pixel)
    assert 3 <= len(tried) <= 5 and tried[0].pixel == pixel
    assert [case.fallback for case in tried].count(True) == 1
    for case in tried:  # each takes part; the fallback one has its own segment alone
        pos, neg = relations.positives_negatives(
            relation, case.pixel, case.batch.embeddings, case.batch.labels, case.batch.tags,
            case.batch.segments,
        )  # fmt: skip
        own = int(case.batch.segments.segment_ids.reshape(-1)[case.pixel])
        assert neg.any() and bool(pos[own]) == case.fallback
        if case.fallback:
            assert int(pos.sum()) == 1


def student_rule(relation, *, fallback=True):
    """A correct rule written otherwise than the reference one; or one without the fallback."""

    def rule(seg, me):
        if relation == "low_level":
            mine = seg.image == me.image
            same = mine & (seg.superpixel == me.superpixel)
            negatives = mine & ~same
        elif relation == "semantic_annotation":
            same = seg.label == me.label
            negatives = (seg.label != IGNORE_INDEX) & ~same
        elif relation == "cooccurrence":
            same = (seg.tags[:, 1:] & me.tags[1:]).any(1)
            negatives = ~same
        else:
            same = seg.affinity == me.affinity
            negatives = (seg.affinity != IGNORE_INDEX) & ~same
        positives = same & (seg.index != me.segment)
        if fallback and not positives.any():
            positives = seg.index == me.segment
        return positives, negatives

    return rule


@pytest.mark.parametrize("relation", relations.RELATIONS)
def test_a_correct_rule_passes(relation, capsys):
    batch, pixel = _notebook_pixels(relation, 0)
    assert exercises.check(relation, student_rule(relation), batch, pixel) is True
    out = capsys.readouterr().out
    assert "def _" not in out  # the student's copy shows no solution
    assert out.endswith("Right! Your rule holds for all 4 pixels, the fallback included.\n")


@pytest.mark.parametrize("relation", relations.RELATIONS)
def test_a_rule_without_the_fallback_fails(relation, capsys):
    batch, pixel = _notebook_pixels(relation, 0)
    rule = student_rule(relation, fallback=False)
    assert exercises.check(relation, rule, batch, pixel) is False
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "Not yet: your rule holds for 3 of the 4 pixels."
    # the pixels of the batch are right; the one without other "same" segments is not
    assert all(": right, " in line for line in out[:3])
    assert "'same' as it: missed positive: " in out[3] and "(the fallback)" in out[3]


@pytest.mark.parametrize("relation", relations.RELATIONS)
def test_a_hard_coded_answer_for_one_pixel_fails(relation, capsys):
    batch, pixel = _notebook_pixels(relation, 0)
    num_segments = batch.segments.num_segments
    pos, neg = relations.positives_negatives(
        relation, pixel, batch.embeddings, batch.labels, batch.tags, batch.segments
    )
    read_off = (pos[:num_segments], neg[:num_segments])  # the drawn pixel's answer, by hand
    assert exercises.diagnose(relation, *read_off, batch, pixel) is None
    assert exercises.check(relation, lambda seg, me: read_off, batch, pixel) is False
    out = capsys.readouterr().out.splitlines()
    assert ": right, " in out[0] and out[-2].startswith("Not yet: your rule holds for 1 of")
    assert out[-1].startswith("It holds for the drawn pixel only")


def test_cases_of_the_hand_batch():
    batch = hand_batch()
    # pixel A (class a): pixel F of image 1, then A without F, the other segment of class a
    tried = exercises.cases(batch, "semantic_annotation", PIXEL_A)
    assert [case.pixel for case in tried] == [PIXEL_A, 6, PIXEL_A]
    assert [case.fallback for case in tried] == [False, False, True]
    assert tried[-1].index.tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9]  # segment F (5) left out
    seg, me = tried[-1].fields()
    assert me.segment == 0 and seg.index.tolist() == tried[-1].index.tolist()
    # the copy's rows: A is the positive, D, H, J (rows 3, 6, 8) the negatives
    answer = mask({0}, 9), mask({3, 6, 8}, 9)
    assert exercises.diagnose("semantic_annotation", *answer, tried[-1].batch, PIXEL_A) is None
    # pixel D is the only segment of class b: it needs the fallback as it is, none is made
    tried = exercises.cases(batch, "semantic_annotation", PIXEL_D)
    assert [case.fallback for case in tried] == [True, False, False]
    assert all(len(case.index) == 10 for case in tried)
