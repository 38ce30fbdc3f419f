"""Host arrays for the pictures: tensors or arrays in, NumPy out, in the package's layouts.

Every picture and statistic takes torch tensors or NumPy arrays alike, embeddings channels last
``(B, h, w, D)`` as everything after the network does, and label maps at any resolution.
"""

from __future__ import annotations

import numpy as np

__all__ = ["to_numpy", "embedding_array", "nearest_resize"]


def to_numpy(values, dtype=None):
    """Return a tensor (on any device) or an array-like as a NumPy array.

    Examples
    --------
    >>> import torch
    >>> to_numpy(torch.ones(2), np.float64)
    array([1., 1.])
    """
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype)


def embedding_array(embeddings):
    """Embeddings ``(B, h, w, D)`` as a float64 array, checked to be a 4-d map.

    Raises
    ------
    ValueError
        If `embeddings` is not 4-d.

    Examples
    --------
    >>> embedding_array(np.zeros((2, 3)))
    Traceback (most recent call last):
    ...
    ValueError: embeddings must be a 4-d map (B, h, w, D), got shape (2, 3)
    """
    emb = to_numpy(embeddings, np.float64)
    if emb.ndim != 4:
        raise ValueError(f"embeddings must be a 4-d map (B, h, w, D), got shape {emb.shape}")
    return emb


def nearest_resize(maps, size, *, ndim=None, name="maps"):
    """Resize the last two axes of integer (or any) maps to `size` by nearest sampling.

    Row ``i`` takes source row ``(i * H) // h``, as torch's ``interpolate(mode="nearest")``
    and a training step's label maps (`train.downsample_nearest`): at a 4x ratio every 4th
    row and column is kept. Works for upsampling too.

    Parameters
    ----------
    maps : (..., H, W) ndarray or tensor
    size : (int, int)
        Output (h, w).
    ndim : int, optional
        Required number of dimensions of `maps` (e.g. 3 for a batch (B, H, W)).
    name : str, optional
        What the error calls `maps`.

    Returns
    -------
    (..., h, w) ndarray

    Examples
    --------
    >>> nearest_resize(np.arange(16).reshape(4, 4), (2, 2))
    array([[ 0,  2],
           [ 8, 10]])
    """
    maps = to_numpy(maps)
    if ndim is not None and maps.ndim != ndim:
        shape = "(B, H, W)" if ndim == 3 else f"{ndim}-d"
        raise ValueError(f"{name} must be {shape}, got shape {maps.shape}")
    rows = (np.arange(size[0]) * maps.shape[-2]) // size[0]
    cols = (np.arange(size[1]) * maps.shape[-1]) // size[1]
    return maps[..., rows, :][..., cols]
