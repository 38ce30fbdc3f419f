import importlib.util
import sys

import numpy as np
import pytest
import torch

from spml_lab.prediction import crf

# tests that run the CRF need the optional backend; the others (errors, messages) do not
needs_backend = pytest.mark.skipif(
    importlib.util.find_spec("pydensecrf") is None, reason='needs pip install "spml-lab[crf]"'
)


def two_region_scene(height=48, width=64, edge=32, shift=6, ramp=20):
    """Red left / blue right image; foreground probabilities ramp over `ramp` px around a
    boundary `shift` px right of the colour edge, so the argmax misplaces the border."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :edge] = (200, 40, 40)
    image[:, edge:] = (40, 40, 200)
    x = np.arange(width)
    centre = edge + shift - 0.5
    foreground = np.clip(0.5 + (x - centre) / ramp, 0.02, 0.98)
    probs = np.stack([1 - foreground, foreground])[:, None, :].repeat(height, axis=1)
    truth = np.broadcast_to(x >= edge, (height, width))
    return image, probs.astype(np.float32), truth


def accuracy(probs, truth):
    return float(((probs.argmax(0) == 1) == truth).mean())


@needs_backend
def test_crf_moves_a_blurred_boundary_onto_the_colour_edge():
    image, probs, truth = two_region_scene()
    before = accuracy(probs, truth)
    assert before == pytest.approx(1 - 6 / 64)  # six columns on the wrong side
    refined = crf.dense_crf(image, probs)
    assert accuracy(refined, truth) == 1.0


@needs_backend
def test_crf_with_colour_kernel_off_keeps_the_wrong_boundary():
    # the fix must come from the image: without the appearance kernel nothing moves the edge
    image, probs, truth = two_region_scene()
    refined = crf.dense_crf(image, probs, bi_weight=0.0)
    assert accuracy(refined, truth) < 0.95


@needs_backend
def test_crf_output_is_float32_distributions_of_input_shape():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    probs = rng.dirichlet(np.ones(4), size=(10, 12)).transpose(2, 0, 1)  # float64
    refined = crf.dense_crf(image, probs, iterations=3)
    assert refined.shape == (4, 10, 12) and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-5)
    assert refined.min() >= 0


@needs_backend
def test_crf_zero_iterations_is_softmax_of_unary():
    # mean field starts from softmax(-unary) = the (floored, renormalised) input
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    probs = rng.dirichlet(np.ones(3), size=(5, 6)).transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_allclose(crf.dense_crf(image, probs, iterations=0), probs, atol=1e-5)


@needs_backend
def test_crf_tensor_in_tensor_out():
    image, probs, truth = two_region_scene(height=16, width=64)
    refined = crf.dense_crf(torch.from_numpy(image), torch.from_numpy(probs))
    assert isinstance(refined, torch.Tensor) and refined.dtype == torch.float32
    np.testing.assert_array_equal(refined.numpy(), crf.dense_crf(image, probs))


@needs_backend
def test_crf_batch_equals_per_image_calls():
    first, probs_a, _ = two_region_scene(height=12, width=64)
    second, probs_b, _ = two_region_scene(height=12, width=64, shift=-5)
    images, probs = np.stack([first, second]), np.stack([probs_a, probs_b])
    got = crf.dense_crf_batch(images, probs, iterations=5)
    assert got.shape == (2, 2, 12, 64)
    for b in range(2):
        np.testing.assert_array_equal(got[b], crf.dense_crf(images[b], probs[b], iterations=5))
    as_tensor = crf.dense_crf_batch(torch.from_numpy(images), torch.from_numpy(probs), iterations=5)
    np.testing.assert_array_equal(as_tensor.numpy(), got)


def test_missing_backend_says_how_to_install(monkeypatch):
    # a None entry in sys.modules makes `import pydensecrf.densecrf` raise ImportError
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    image, probs, _ = two_region_scene(height=4, width=8, edge=4, shift=0, ramp=4)
    with pytest.raises(ImportError, match=r'pip install "spml-lab\[crf\]"'):
        crf.dense_crf(image, probs)


@pytest.mark.parametrize(
    "image, probs, match",
    [
        (np.zeros((4, 5, 3), np.float32), np.ones((2, 4, 5), np.float32), "uint8"),
        (np.zeros((4, 5), np.uint8), np.ones((2, 4, 5), np.float32), "image"),
        (np.zeros((4, 5, 3), np.uint8), np.ones((4, 5), np.float32), "probs"),
        (np.zeros((4, 5, 3), np.uint8), np.ones((2, 4, 5), np.int64), "float"),
        (np.zeros((4, 5, 3), np.uint8), np.ones((2, 8, 10), np.float32), "upsample"),
        ([[0]], np.ones((2, 4, 5), np.float32), "numpy array or a torch tensor"),
    ],
)
def test_crf_rejects_bad_inputs(image, probs, match):
    with pytest.raises(ValueError, match=match):
        crf.dense_crf(image, probs)


def test_crf_rejects_bad_parameters_and_batches():
    image, probs, _ = two_region_scene(height=4, width=8, edge=4, shift=0, ramp=4)
    with pytest.raises(ValueError, match="bi_rgb_std"):
        crf.dense_crf(image, probs, bi_rgb_std=0)
    with pytest.raises(ValueError, match="same B"):
        crf.dense_crf_batch(image[None], np.stack([probs, probs]))
