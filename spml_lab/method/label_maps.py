"""A batch's label maps at the embedding resolution, where the contrastive part works.

The network embeds a (H, W) image at (h, w) = (H/4, W/4); segments, prototypes and the losses
live at (h, w), so the weak labels and the superpixels are brought there by nearest sampling
(never interpolated: they are ids). A training step (`spml_lab.training.train`), the kNN bank
(`spml_lab.prediction.predict.build_bank`) and the classroom batches sample them the same way.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["downsample_nearest", "StepMaps", "step_maps"]


def downsample_nearest(maps, size):
    """Bring integer maps to the embedding resolution by nearest sampling.

    Parameters
    ----------
    maps : (B, H, W) int tensor
        Labels or superpixel ids.
    size : (int, int)
        Output (h, w).

    Returns
    -------
    (B, h, w) tensor
        Output pixel (i, j) is input pixel ``(floor(i H / h), floor(j W / w))``, as
        ``F.interpolate(mode="nearest")``, in integer arithmetic (exact for any id).

    Examples
    --------
    >>> downsample_nearest(torch.arange(16).view(1, 4, 4), (2, 2))
    tensor([[[ 0,  2],
             [ 8, 10]]])
    """
    height, width = maps.shape[-2:]
    rows = torch.arange(size[0], device=maps.device) * height // size[0]
    cols = torch.arange(size[1], device=maps.device) * width // size[1]
    return maps.index_select(-2, rows).index_select(-1, cols)


class StepMaps(NamedTuple):
    """A batch's label maps at the embedding resolution, as a training step uses them.

    Attributes
    ----------
    labels : (B, h, w) int64 tensor
        Weak labels, nearest-sampled (`downsample_nearest`); 255 = unlabelled.
    superpixels : (B, h, w) int64 tensor or None
        Superpixel ids, with the crop padding's -1 replaced by 0 (None without superpixels).
    valid : (B, h, w) bool tensor or None
        Pixels that have a superpixel (False on crop padding): they stay out of k-means and
        the losses (None without superpixels).
    """

    labels: torch.Tensor
    superpixels: torch.Tensor | None
    valid: torch.Tensor | None


def step_maps(batch, size, *, device="cpu", superpixels=True):
    """Bring a batch's labels and superpixels to the embedding resolution, as a step does.

    Parameters
    ----------
    batch : dict
        Collated items with ``label`` (B, H, W) and, when `superpixels`, ``superpixel``.
    size : (int, int)
        The embedding resolution (h, w).
    device : str or torch.device, optional
    superpixels : bool, optional
        Whether the batch's superpixel maps are real (False: the list had none).

    Returns
    -------
    maps : StepMaps

    Examples
    --------
    >>> batch = {"label": torch.zeros(1, 4, 4, dtype=torch.long),
    ...          "superpixel": torch.tensor([[[0, 0, 1, -1]] * 4])}
    >>> maps = step_maps(batch, (2, 2))
    >>> maps.superpixels.tolist(), maps.valid.tolist()
    ([[[0, 1], [0, 1]]], [[[True, True], [True, True]]])
    """
    labels = downsample_nearest(batch["label"].to(device, non_blocking=True), size)
    if not superpixels:
        return StepMaps(labels, None, None)
    small = downsample_nearest(batch["superpixel"].to(device, non_blocking=True), size)
    valid = small >= 0  # crop padding has no superpixel: out of k-means and losses
    return StepMaps(labels, small.clamp(min=0), valid)
