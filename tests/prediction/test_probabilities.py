import math

import pytest
import torch
import torch.nn.functional as F

from spml_lab.prediction import probabilities


def test_restrict_to_tags_zeroes_absent_classes_and_renormalises():
    logits = torch.log(torch.tensor([1.0, 2.0, 3.0, 4.0])).view(1, 4, 1, 1)
    tags = torch.tensor([[False, False, True, True]])  # background 0 allowed anyway
    got = probabilities.restrict_to_tags(logits, tags)[0, :, 0, 0]
    # softmax of log(w) over allowed classes {0, 2, 3} = w / (1 + 3 + 4)
    torch.testing.assert_close(got, torch.tensor([1 / 8, 0.0, 3 / 8, 4 / 8]))


def test_restrict_to_tags_all_classes_is_plain_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, 4, generator=g)
    got = probabilities.restrict_to_tags(logits, torch.ones(2, 5, dtype=torch.bool))
    torch.testing.assert_close(got, torch.softmax(logits, dim=1))


def test_restrict_to_tags_per_image_and_without_background():
    logits = torch.zeros(2, 3, 1, 1)
    tags = torch.tensor([[False, True, False], [False, False, True]])
    got = probabilities.restrict_to_tags(logits, tags, background=None)[:, :, 0, 0]
    torch.testing.assert_close(got, tags.float())


def test_restrict_to_tags_scale_to_max_divides_by_each_class_peak():
    logits = torch.log(torch.tensor([[0.8, 0.6], [0.2, 0.4]])).view(1, 2, 1, 2)
    got = probabilities.restrict_to_tags(
        logits, torch.ones(1, 2, dtype=torch.bool), scale_to_max=True
    )
    want = torch.tensor([[0.8 / 0.8, 0.6 / 0.8], [0.2 / 0.4, 0.4 / 0.4]]).view(1, 2, 1, 2)
    torch.testing.assert_close(got, want)


def test_restrict_to_tags_rejects_mismatched_tags():
    with pytest.raises(ValueError, match="tags"):
        probabilities.restrict_to_tags(torch.zeros(1, 3, 2, 2), torch.ones(1, 4, dtype=torch.bool))


# ---------------------------------------------------------------- random_walk


def test_flip_average_of_an_equivariant_fn_is_the_fn():
    g = torch.Generator().manual_seed(8)
    images = torch.rand(2, 3, 5, 7, generator=g)
    weight = torch.rand(4, 3, 1, 1, generator=g)

    def pointwise(x):  # 1x1 convolution: commutes with flips
        return torch.softmax(F.conv2d(x, weight), dim=1)

    torch.testing.assert_close(probabilities.flip_average(pointwise, images), pointwise(images))


def test_flip_average_symmetrises_a_non_equivariant_fn():
    images = torch.arange(4.0).view(1, 1, 1, 4)
    calls = []

    def left_ramp(x):  # output depends on the column index, not on the image: not equivariant
        calls.append(x.shape[0])
        return torch.arange(4.0).expand(x.shape[0], 1, 1, 4)

    got = probabilities.flip_average(left_ramp, images)
    torch.testing.assert_close(got, torch.full((1, 1, 1, 4), 1.5))  # (i + (3 - i)) / 2
    assert calls == [2]  # one batched call for both views


def test_upsample_probs_keeps_distributions_and_matches_interpolate():
    g = torch.Generator().manual_seed(9)
    probs = torch.softmax(torch.randn(2, 3, 4, 5, generator=g), dim=1)
    got = probabilities.upsample_probs(probs, (8, 10))
    assert got.shape == (2, 3, 8, 10)
    torch.testing.assert_close(got.sum(dim=1), torch.ones(2, 8, 10))
    # output pixel (1, 1) has its centre at input (0.25, 0.25) (align_corners=False)
    p = probs[0, 0]
    want = 0.5625 * p[0, 0] + 0.1875 * p[0, 1] + 0.1875 * p[1, 0] + 0.0625 * p[1, 1]
    assert math.isclose(float(got[0, 0, 1, 1]), float(want), rel_tol=1e-5)
    with pytest.raises(ValueError, match="size"):
        probabilities.upsample_probs(probs, (0, 3))
