"""Schedules of a training loop: the learning rate of each step, the data order of each epoch.

Stage 1 (`train.fit`), stage 2, the one-image segmenter and the CAM tag classifier all follow
these two schedules, so they sit in the package's lowest layer (numpy only), where every stage
can share them without importing another.
"""

from __future__ import annotations

import numpy as np

__all__ = ["poly_lr", "epoch_order"]


def poly_lr(step, base_lr, max_steps, *, warmup_steps=0, power=0.9, policy="poly"):
    """Learning rate of step `step` (0-based): poly decay with a linear warm-up.

    Parameters
    ----------
    step : int
        Steps done so far.
    base_lr : float
    max_steps : int
    warmup_steps : int, optional
        The LR ramps linearly from ``base_lr / 10`` to `base_lr` over these steps.
    power : float, optional
        Poly exponent: ``base_lr * (1 - step / max_steps) ** power``.
    policy : {"poly", "constant"}, optional

    Returns
    -------
    lr : float

    Notes
    -----
    As the paper's ``lr_poly``: during warm-up the LR is the smaller of the ramp and the
    decay, so a warm-up longer than the run never overshoots it.

    Examples
    --------
    >>> poly_lr(0, 0.01, 100, warmup_steps=10), round(poly_lr(50, 0.01, 100), 6)
    (0.001, 0.005359)
    """
    factor = 1.0 if policy == "constant" else (1.0 - step / max_steps) ** power
    if step < warmup_steps:
        ramp = step / warmup_steps
        factor = min(0.1 * (1.0 - ramp) + ramp, factor)
    return base_lr * factor


def epoch_order(num_items, seed, epoch):
    """Return the order in which epoch `epoch` visits the data: a permutation of (seed, epoch).

    Examples
    --------
    >>> order = epoch_order(5, 0, 1)
    >>> bool((order == epoch_order(5, 0, 1)).all()), sorted(order.tolist())
    (True, [0, 1, 2, 3, 4])
    """
    return np.random.default_rng([seed, epoch]).permutation(num_items)
