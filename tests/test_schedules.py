"""The schedules every training loop shares: learning rate per step, data order per epoch."""

import numpy as np
import pytest

from spml_lab import schedules


def test_poly_lr_warms_up_from_a_tenth_and_decays_to_zero():
    lrs = [schedules.poly_lr(s, 1.0, 100, warmup_steps=10) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[5] == pytest.approx(0.55)
    assert lrs[10] == pytest.approx(0.9**0.9) and lrs[100] == 0.0
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    # the ramp never exceeds the decay (a warm-up longer than the run)
    assert schedules.poly_lr(9, 1.0, 10, warmup_steps=100) == pytest.approx(0.1**0.9)
    assert schedules.poly_lr(50, 0.3, 100, policy="constant") == 0.3


def test_epoch_order_is_a_seeded_permutation():
    a, b = schedules.epoch_order(10, 3, 0), schedules.epoch_order(10, 3, 1)
    assert sorted(a.tolist()) == list(range(10)) and not np.array_equal(a, b)
    assert np.array_equal(a, schedules.epoch_order(10, 3, 0))
