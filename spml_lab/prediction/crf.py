"""Dense CRF refinement of class probabilities (fully connected CRF, pydensecrf2 backend).

A network's probabilities are blurry at object borders: the embedding is computed at a
fraction of the image resolution and then upsampled. A fully connected CRF (Krahenbuhl &
Koltun, 2011) sharpens them with the image itself. Every pair of pixels i, j pays a penalty
for taking different labels,

    w_pos * exp(-|p_i - p_j|^2 / 2 pos_xy_std^2)
  + w_bi  * exp(-|p_i - p_j|^2 / 2 bi_xy_std^2 - |I_i - I_j|^2 / 2 bi_rgb_std^2),

so that nearby pixels (first, "smoothness" kernel) and pixels of similar colour within a
wide window (second, "appearance" kernel) agree, while the unary term ``-log(prob)`` keeps
the network's opinion. Mean-field inference runs in C++ per image (pydensecrf2); SPML uses
it for its pseudo labels and for its final predictions.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["dense_crf", "dense_crf_batch"]

# probabilities are floored before the log: a hard zero would be an infinite unary energy
_MIN_PROB = 1e-5


def _backend():
    """Import the compiled pydensecrf module, or say how to install it."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as err:
        raise ImportError(
            "dense_crf needs the pydensecrf2 package (import name `pydensecrf`), which is not "
            'installed: pip install "spml-lab[crf]" (it compiles C++ code, so a compiler '
            "is needed)"
        ) from err
    return dcrf


def _as_numpy(array, name):
    """Return `array` as numpy: itself, or a CPU copy of a torch tensor."""
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    if isinstance(array, np.ndarray):
        return array
    raise ValueError(f"{name} must be a numpy array or a torch tensor, got {type(array).__name__}")


def dense_crf(
    image,
    probs,
    *,
    iterations=10,
    pos_xy_std=1.0,
    pos_weight=3.0,
    bi_xy_std=67.0,
    bi_rgb_std=3.0,
    bi_weight=4.0,
):
    """Refine one image's class probabilities with a fully connected CRF.

    Parameters
    ----------
    image : (H, W, 3) uint8 ndarray or tensor
        The RGB image (not normalised), channels last.
    probs : (C, H, W) float ndarray or tensor
        Class probabilities at the image's resolution (upsample first, e.g. with
        `spml_lab.prediction.probabilities.upsample_probs`). Need not sum to exactly 1.
    iterations : int, optional
        Mean-field iterations.
    pos_xy_std, pos_weight : float, optional
        Width in pixels and weight of the smoothness (position-only) kernel.
    bi_xy_std, bi_rgb_std, bi_weight : float, optional
        Width in pixels, width in colour levels and weight of the appearance (bilateral)
        kernel.

    Returns
    -------
    refined : (C, H, W) float32 ndarray or tensor
        Approximate CRF marginals: each pixel's column sums to 1. A tensor (on `probs`'
        device) when `probs` is a tensor, else an ndarray.

    Raises
    ------
    ImportError
        If pydensecrf2 is not installed.
    ValueError
        If a shape or dtype is wrong, or a parameter is not positive.

    Notes
    -----
    The defaults are the CRF settings of the SPML authors' PASCAL VOC scripts
    (``bashscripts/voc12/train_spml_*.sh`` in github.com/twke18/SPML, passed to both the
    pseudo-label and the final softmax inference): 10 iterations, smoothness kernel
    ``xy_std=1, w=3``, appearance kernel ``xy_std=67, rgb_std=3, w=4``. The small colour
    width makes the appearance kernel follow colour edges closely; rescale the xy widths
    with the image size for images much smaller than VOC's (~500 px).

    Examples
    --------
    >>> image = np.zeros((8, 8, 3), np.uint8)
    >>> image[:, 4:] = 255  # black left half, white right half
    >>> probs = np.full((2, 8, 8), 0.5, np.float32)
    >>> probs[1, :, 5:], probs[0, :, 5:] = 0.9, 0.1  # column 4 undecided
    >>> probs[1, :, :3], probs[0, :, :3] = 0.1, 0.9
    >>> dense_crf(image, probs).argmax(0)[0]
    array([0, 0, 0, 0, 1, 1, 1, 1])
    """
    image_np = _as_numpy(image, "image")
    probs_np = _as_numpy(probs, "probs")
    if image_np.ndim != 3 or image_np.shape[2] != 3 or image_np.dtype != np.uint8:
        raise ValueError(
            f"image must be an (H, W, 3) uint8 array, got {image_np.shape} {image_np.dtype}"
        )
    if probs_np.ndim != 3 or not np.issubdtype(probs_np.dtype, np.floating):
        raise ValueError(
            f"probs must be a (C, H, W) float array, got {probs_np.shape} {probs_np.dtype}"
        )
    num_classes, height, width = probs_np.shape
    if (height, width) != image_np.shape[:2]:
        raise ValueError(
            f"probs {probs_np.shape} and image {image_np.shape} differ in size; "
            "upsample probs to the image size first"
        )
    if num_classes < 1 or iterations < 0:
        raise ValueError(f"need C >= 1 classes and iterations >= 0, got {num_classes, iterations}")
    stds = {"pos_xy_std": pos_xy_std, "bi_xy_std": bi_xy_std, "bi_rgb_std": bi_rgb_std}
    for name, value in stds.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")

    dcrf = _backend()
    crf = dcrf.DenseCRF2D(width, height, num_classes)
    unary = -np.log(np.maximum(probs_np.reshape(num_classes, -1), _MIN_PROB))
    # the C++ side reads raw memory: float32, C-contiguous, or it raises / misreads
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=float(pos_xy_std), compat=float(pos_weight))
    crf.addPairwiseBilateral(
        sxy=float(bi_xy_std),
        srgb=float(bi_rgb_std),
        rgbim=np.ascontiguousarray(image_np),
        compat=float(bi_weight),
    )
    refined = np.asarray(crf.inference(int(iterations)), dtype=np.float32)
    refined = refined.reshape(num_classes, height, width)
    if isinstance(probs, torch.Tensor):
        return torch.from_numpy(refined).to(probs.device)
    return refined


def dense_crf_batch(images, probs, **options):
    """Run `dense_crf` on every image of a batch.

    Parameters
    ----------
    images : (B, H, W, 3) uint8 ndarray or tensor
        RGB images, channels last.
    probs : (B, C, H, W) float ndarray or tensor
        Class probabilities at the images' resolution.
    **options
        Keyword arguments of `dense_crf` (``iterations``, ``bi_xy_std``, ...).

    Returns
    -------
    refined : (B, C, H, W) float32 ndarray or tensor
        As `probs`' kind (a tensor on its device, or an ndarray).

    Raises
    ------
    ValueError
        If the batch sizes differ or an image is malformed (see `dense_crf`).

    Notes
    -----
    The CRF is C++ code that takes one image at a time, so this loops over the batch.

    Examples
    --------
    >>> images = np.zeros((2, 4, 4, 3), np.uint8)
    >>> refined = dense_crf_batch(images, np.full((2, 3, 4, 4), 1 / 3, np.float32))
    >>> refined.shape, bool(np.allclose(refined.sum(1), 1))
    ((2, 3, 4, 4), True)
    """
    if len(images) != len(probs) or getattr(probs, "ndim", 0) != 4:
        raise ValueError(
            f"need images (B, H, W, 3) and probs (B, C, H, W) with the same B, got "
            f"{tuple(images.shape)} and {tuple(probs.shape)}"
        )
    refined = [dense_crf(image, prob, **options) for image, prob in zip(images, probs, strict=True)]
    if isinstance(probs, torch.Tensor):
        return torch.stack(refined) if refined else probs.new_zeros(probs.shape)
    return np.stack(refined) if refined else np.zeros(probs.shape, np.float32)
