"""Per-pixel class maps: tag-restricted softmax, test-time flip averaging, upsampling.

Every predictor of the package ends in class maps ``(B, C, h, w)``; these are the operations
they share: restrict a softmax to the classes an image is tagged with (the pseudo labels),
average a prediction with the mirror image's (test time), and resize the maps to the image
(for the dense CRF).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["check_maps", "restrict_to_tags", "flip_average", "upsample_probs"]


def check_maps(name, tensor, ndim=4):
    """Raise a ValueError unless `tensor` is a torch tensor with `ndim` dimensions.

    Parameters
    ----------
    name : str
        What the error calls the tensor (the caller's argument name).
    tensor : object
    ndim : int, optional

    Examples
    --------
    >>> check_maps("probs", torch.zeros(1, 2, 3))
    Traceback (most recent call last):
    ...
    ValueError: probs must be a 4-d torch tensor, got (1, 2, 3)
    """
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != ndim:
        shape = tuple(getattr(tensor, "shape", ()))
        raise ValueError(f"{name} must be a {ndim}-d torch tensor, got {shape}")


def restrict_to_tags(logits, tags, *, background=0, scale_to_max=False):
    """Softmax over only the classes an image is tagged with (background always allowed).

    Parameters
    ----------
    logits : (B, C, H, W) float tensor
        Class scores of a softmax head.
    tags : (B, C) bool tensor
        True for the classes present in each image (image-level tags).
    background : int or None, optional
        Class allowed in every image whatever its tags; None allows only the tags.
    scale_to_max : bool, optional
        Then divide each class map by its maximum over the image, as the paper's pseudo-label
        script does before the random walk: it lifts tagged classes the head is unsure about
        to the same peak as confident ones. The maps then no longer sum to 1 per pixel.

    Returns
    -------
    probs : (B, C, H, W) float tensor
        Softmax over the allowed classes; exactly 0 for the others, so each pixel's
        probabilities sum to 1 (unless `scale_to_max`).

    Raises
    ------
    ValueError
        If the shapes do not match.

    Examples
    --------
    >>> logits = torch.zeros(1, 3, 1, 1)
    >>> restrict_to_tags(logits, torch.tensor([[False, False, True]]))[0, :, 0, 0]
    tensor([0.5000, 0.0000, 0.5000])
    """
    check_maps("logits", logits)
    if tags.shape != logits.shape[:2]:
        raise ValueError(
            f"tags must have shape (B, C) = {tuple(logits.shape[:2])}, got {tuple(tags.shape)}"
        )
    allowed = tags.bool().clone()
    if background is not None:
        allowed[:, background] = True
    # -inf logits give exact zeros after the softmax, and the softmax renormalises the rest
    masked = logits.float().masked_fill(~allowed[:, :, None, None], float("-inf"))
    probs = torch.softmax(masked, dim=1).nan_to_num(0.0)  # no allowed class at all: zeros
    if scale_to_max:
        peak = probs.amax(dim=(2, 3), keepdim=True)
        probs = probs / peak.clamp_min(torch.finfo(probs.dtype).tiny)
    return probs


def flip_average(fn, images):
    """Test-time flip augmentation: average ``fn`` on the images and their mirror images.

    Parameters
    ----------
    fn : callable
        Maps ``(B, ..., H, W)`` images to ``(B, C, H, W)`` maps aligned with them (e.g.
        probabilities).
    images : (B, 3, H, W) tensor
        Input batch.

    Returns
    -------
    maps : (B, C, H, W) tensor
        ``(fn(x) + flip(fn(flip(x)))) / 2`` with ``flip`` mirroring the width axis; both
        halves go through `fn` as one batch of 2B images.

    Examples
    --------
    >>> images = torch.arange(3.0).view(1, 1, 1, 3)
    >>> flip_average(lambda x: x[..., :1] * torch.ones_like(x), images)  # not equivariant
    tensor([[[[1., 1., 1.]]]])
    """
    check_maps("images", images)
    num_images = images.shape[0]
    maps = fn(torch.cat([images, images.flip(-1)]))
    if not isinstance(maps, torch.Tensor) or maps.ndim != 4 or maps.shape[0] != 2 * num_images:
        raise ValueError(
            f"fn must return (B, C, H, W) maps, got {tuple(getattr(maps, 'shape', ()))}"
        )
    return (maps[:num_images] + maps[num_images:].flip(-1)) / 2


def upsample_probs(probs, size):
    """Bilinearly resize class probability maps (e.g. to the image size for the CRF).

    Parameters
    ----------
    probs : (B, C, h, w) float tensor
        Per-pixel class probabilities.
    size : (int, int)
        Target ``(H, W)``.

    Returns
    -------
    resized : (B, C, H, W) float tensor
        Each output pixel is a convex combination of input pixels (``align_corners=False``),
        so probabilities that summed to 1 still do.

    Examples
    --------
    >>> upsample_probs(torch.tensor([[[[0.0, 1.0]]]]), (1, 4))
    tensor([[[[0.0000, 0.2500, 0.7500, 1.0000]]]])
    """
    check_maps("probs", probs)
    height, width = (int(s) for s in size)
    if min(height, width) < 1:
        raise ValueError(f"size must be two positive ints (H, W), got {size}")
    return F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)
