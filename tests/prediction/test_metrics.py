import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import jaccard_score

from spml_lab.prediction import metrics


def test_confusion_matches_sklearn():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, size=(4, 17, 13))
    pred = rng.integers(0, 5, size=(4, 17, 13))
    target[rng.random(target.shape) < 0.1] = 255
    ours = metrics.confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), 5)
    keep = target != 255
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
    target[1, :3] = 255  # unlabelled pixels do not count
    target[2] = 255  # nothing counted at all
    pred[3] = target[3]  # a perfect image
    got = metrics.image_miou(pred, target, 4)
    for b in range(5):
        expected = metrics.mean_iou(metrics.confusion_matrix(pred[b], target[b], 4))[0]
        if b == 2:
            assert math.isnan(got[b]) and math.isnan(expected)
        else:
            assert got[b].item() == pytest.approx(expected, abs=1e-12)
    assert got[3] == 1.0
