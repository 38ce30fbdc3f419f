import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import jaccard_score

from spml_lab.constants import IGNORE_INDEX
from spml_lab.prediction import metrics


def test_confusion_matches_sklearn():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, size=(4, 17, 13))
    pred = rng.integers(0, 5, size=(4, 17, 13))
    target[rng.random(target.shape) < 0.1] = IGNORE_INDEX
    ours = metrics.confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), 5)
    keep = target != IGNORE_INDEX
    expected = sk_confusion_matrix(target[keep], pred[keep], labels=range(5))
    np.testing.assert_array_equal(ours.numpy(), expected)


def test_mean_iou_matches_sklearn_jaccard():
    rng = np.random.default_rng(1)
    target = rng.integers(0, 4, size=500)
    pred = np.where(rng.random(500) < 0.7, target, rng.integers(0, 4, size=500))
    miou, iou = metrics.mean_iou(metrics.confusion_matrix(pred, target, 4))
    expected = jaccard_score(target, pred, average=None, labels=range(4))
    np.testing.assert_allclose(iou.numpy(), expected)
    assert miou == pytest.approx(expected.mean())


def test_absent_class_is_nan_and_excluded():
    target = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 1, 1])
    miou, iou = metrics.mean_iou(metrics.confusion_matrix(pred, target, 3))
    assert np.isnan(iou[2].item())
    # class 0: 1 / 2, class 1: 2 / 3 by hand
    assert miou == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="shape"):
        metrics.confusion_matrix(np.zeros(3), np.zeros(4), 2)
    with pytest.raises(ValueError, match="target has values outside"):
        metrics.confusion_matrix(np.zeros(3), np.array([0, 7, 1]), 2)


def test_image_miou_is_each_image_s_own_mean_iou():
    generator = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 4, (5, 6, 7), generator=generator)
    target = torch.randint(0, 4, (5, 6, 7), generator=generator)
    target[1, :3] = IGNORE_INDEX  # unlabelled pixels do not count
    target[2] = IGNORE_INDEX  # nothing counted at all
    pred[3] = target[3]  # a perfect image
    got = metrics.image_miou(pred, target, 4)
    for b in range(5):
        expected = metrics.mean_iou(metrics.confusion_matrix(pred[b], target[b], 4))[0]
        if b == 2:
            assert math.isnan(got[b]) and math.isnan(expected)
        else:
            assert got[b].item() == pytest.approx(expected, abs=1e-12)
    assert got[3] == 1.0


# ---------------------------------------------------------------------- pseudo labels


def test_pseudo_label_quality_by_hand():
    # claimed pixels: (t 0, p 0), (t 1, p 1), (t 0, p 1), (t 2, p 2); truth 255 at one claimed
    # pixel (not scored) and two pixels unclaimed
    pseudo = torch.tensor([[0, 1, 1, IGNORE_INDEX], [2, 1, IGNORE_INDEX, 0]])
    truth = torch.tensor([[0, 1, 0, 1], [2, IGNORE_INDEX, 2, 1]])
    q = metrics.pseudo_label_quality(pseudo, truth, 3)
    # confusion rows t: [[1, 1, 0], [1, 1, 0], [0, 0, 1]] (the last claimed 0 is truth 1)
    # IoU: 0: 1 / (2 + 2 - 1); 1: 1 / (2 + 2 - 1); 2: 1 / 1
    assert q.miou_on_labelled == pytest.approx((1 / 3 + 1 / 3 + 1) / 3)
    assert q.labelled_fraction == 6 / 8  # claimed pixels count whatever the truth says


def test_pseudo_label_quality_matches_scikit_learn_and_accepts_maps_of_different_sizes():
    rng = np.random.default_rng(0)
    pseudo = [
        torch.from_numpy(rng.choice([0, 1, 2, 3, IGNORE_INDEX], size=s)) for s in ((5, 7), (4, 3))
    ]
    truth = [torch.from_numpy(rng.integers(0, 4, size=tuple(p.shape))) for p in pseudo]
    q = metrics.pseudo_label_quality(pseudo, truth, 4)
    p = np.concatenate([x.numpy().ravel() for x in pseudo])
    t = np.concatenate([x.numpy().ravel() for x in truth])
    known = p != IGNORE_INDEX
    present = np.union1d(p[known], t[known])
    want = jaccard_score(t[known], p[known], labels=present, average="macro")
    assert q.miou_on_labelled == pytest.approx(want)
    assert q.labelled_fraction == pytest.approx(known.mean())


def test_pseudo_label_quality_of_no_claim_is_nan_and_shapes_must_agree():
    q = metrics.pseudo_label_quality(
        torch.full((2, 2), IGNORE_INDEX), torch.zeros(2, 2, dtype=torch.long), 2
    )
    assert np.isnan(q.miou_on_labelled) and q.labelled_fraction == 0.0
    with pytest.raises(ValueError, match="differ"):
        metrics.pseudo_label_quality(torch.zeros(2, 2), torch.zeros(2, 3), 2)


def test_pointing_game_by_a_loop_over_image_class_pairs():
    rng = np.random.default_rng(0)
    cams = torch.from_numpy(rng.random((3, 4, 5, 6)))
    truth = torch.from_numpy(rng.integers(0, 4, (3, 5, 6)))
    tags = torch.from_numpy(rng.random((3, 4)) < 0.6)
    hits, areas = [], []
    for b in range(3):
        for k in range(1, 4):  # background (0) has no map of its own
            if tags[b, k]:
                y, x = np.unravel_index(int(cams[b, k].argmax()), (5, 6))
                hits.append(int(truth[b, y, x]) == k)
                areas.append(float((truth[b] == k).double().mean()))
    score = metrics.pointing_game(cams, tags, truth)
    assert score.hit_rate == pytest.approx(np.mean(hits))
    assert score.chance == pytest.approx(np.mean(areas))
    with pytest.raises(ValueError, match="truth"):
        metrics.pointing_game(cams, tags, truth[:, :4])
