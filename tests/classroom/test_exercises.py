import math

import numpy as np
import pytest
import torch

from spml_lab.classroom import demo, exercises
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
U = 255
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
    labels = torch.tensor([[[1, U, U], [1, U, 2]], [[1, 1, U], [U, U, 3]], [[0, U, U], [U] * 3]])
    tags = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 1], [1, 0, 0, 0]], dtype=torch.bool)
    segments = build_segments(emb, clusters, superpixels, labels, tags=tags)
    return demo.DemoBatch(
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
    assert seg.label.tolist() == [1, U, U, 2, U, 1, U, 3, U, 0]
    assert seg.affinity.tolist() == [1, 1, U, 2, 3, 1, U, 3, 0, 0]
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
def test_right_answers_are_accepted(key, capsys):
    relation, pixel = key
    pos, neg = (mask(s) for s in EXPECTED[key])
    assert exercises.diagnose(relation, pos, neg, hand_batch(), pixel) is None
    assert exercises.check(relation, pos, neg, hand_batch(), pixel) is True
    assert capsys.readouterr().out.startswith("Right!")
    # numpy answers are fine too
    assert exercises.diagnose(relation, pos.numpy(), neg.numpy(), hand_batch(), pixel) is None


def test_unanswered_says_so_and_is_not_right(capsys):
    assert exercises.check("low_level", None, None, hand_batch(), PIXEL_A) is False
    assert capsys.readouterr().out.startswith("Not answered yet")
    assert exercises.check("low_level", mask({1}), None, hand_batch(), PIXEL_A) is False


def test_wrong_form_is_named(capsys):
    batch = hand_batch()
    assert exercises.check("low_level", mask({1}).long(), mask({2, 3}), batch, PIXEL_A) is False
    assert "booleans" in capsys.readouterr().out
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
def test_each_wrong_kind_gets_its_hint(case, capsys):
    relation, pixel, pos, neg, words = WRONG[case]
    batch = hand_batch()
    hint = exercises.diagnose(relation, mask(pos), mask(neg), batch, pixel)
    assert hint is not None and words in hint, hint
    assert exercises.check(relation, mask(pos), mask(neg), batch, pixel) is False
    assert capsys.readouterr().out.startswith("Not yet: ")


def test_hint_counts_the_other_wrong_segments():
    hint = exercises.diagnose("low_level", mask({1}), mask({2, 3, 4, 5, 6}), hand_batch(), 0)
    assert "segment 4" in hint and "(and 2 more extra negatives)" in hint


def test_pixel_taking_no_part_is_reported():
    # pixel 1 (image 0, row 0, column 1) is unlabelled: no semantic-annotation loss
    hint = exercises.diagnose("semantic_annotation", mask(set()), mask(set()), hand_batch(), 1)
    assert "takes no part" in hint


def test_bad_relation_and_pixel():
    with pytest.raises(ValueError, match="unknown relation"):
        exercises.check("colour", mask({1}), mask({2}), hand_batch(), 0)
    with pytest.raises(ValueError, match="pixel must lie"):
        exercises.pixel_fields(hand_batch(), 18)


@pytest.mark.parametrize("relation", relations.RELATIONS)
def test_solutions_agree_with_the_loss_on_embedded_data(relation):
    torch.manual_seed(0)
    batch = demo.make_batch("objects", "scribbles", net=embedding_nets.SmallEmbeddingNet(8, 8))
    seg = exercises.segment_fields(batch)
    for seed in range(2):
        pixel = demo.pick_pixel(batch, relation, seed=seed, image=None)
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
    assert seg.label.tolist() == [1, U, U, 2, U, 1, U, 3, U, 0]  # the table's columns
    assert seg.affinity.tolist() == [1, 1, U, 2, 3, 1, U, 3, 0, 0]
    assert (me.image, me.segment, me.superpixel, me.label, me.affinity) == (0, 3, 1, 2, 2)


@pytest.mark.parametrize("key", list(EXPECTED), ids=lambda k: f"{k[0]}-{k[1]}")
def test_show_solution_prints_and_checks_the_reference_answer(key, capsys):
    relation, pixel = key
    pos, neg = EXPECTED[key]
    wrong = mask(set()), mask(set())  # the student's answer is set aside
    assert exercises.check(relation, *wrong, hand_batch(), pixel, show_solution=True) is True
    out = capsys.readouterr().out
    assert "def _" in out  # the reference code is shown
    assert out.endswith(f"Right! {len(pos)} positive and {len(neg)} negative segments.\n")
    assert exercises.check(relation, *wrong, hand_batch(), pixel) is False


def _notebook_pixels(relation, seed):
    """The batch and pixel a relation notebook (05-08) draws with its stored or CI seed."""
    if relation == "feature_affinity":
        batch = demo.make_batch("parts", "points", seed=seed)
        affinity = relations.affinity_labels(batch.segments)[batch.segments.segment_ids]
        where = (batch.labels == 255) & (affinity != 255) & (affinity > 0)
    else:
        annotation = "tags" if relation == "cooccurrence" else "scribbles"
        batch = demo.make_batch("objects", annotation, seed=seed)
        labelled_object = (batch.labels > 0) & (batch.labels != 255)
        where = labelled_object if relation == "semantic_annotation" else None
    return batch, demo.pick_pixel(batch, relation, seed=seed, where=where)


@pytest.mark.parametrize("seed", [0, 1])  # the notebooks' stored seed and the CI one
@pytest.mark.parametrize("relation", relations.RELATIONS)
def test_teachers_copy_of_each_relation_notebook_says_right(relation, seed, capsys):
    batch, pixel = _notebook_pixels(relation, seed)
    assert exercises.check(relation, None, None, batch, pixel, show_solution=True) is True
    assert "Right!" in capsys.readouterr().out
