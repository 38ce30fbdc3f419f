import numpy as np
import pytest
import torch

from spml_lab.labelling import tag_training


def squares(num, seed, size=32, side=8):
    """Noise images, each with one square of class 1 (red), 2 (green) or 3 (blue)."""
    rng = np.random.default_rng(seed)
    items, boxes = [], []
    for _ in range(num):
        image = rng.uniform(0.3, 0.7, size=(3, size, size)).astype(np.float32)
        k = int(rng.integers(1, 4))
        y, x = rng.integers(0, size - side, size=2)
        image[:, y : y + side, x : x + side] = 0.1
        image[k - 1, y : y + side, x : x + side] = 0.9
        tags = torch.zeros(4, dtype=torch.bool)
        tags[[0, k]] = True
        items.append({"image": torch.from_numpy(image), "tags": tags})
        boxes.append((k, y, x))
    return items, boxes


def test_classifier_learns_tags_and_cams_peak_in_the_object():
    train, _ = squares(48, seed=0)
    test, where = squares(32, seed=1)
    # dilations (1,): a 27 px receptive field, so positions away from the square cannot see it
    net = tag_training.train_tag_classifier(
        train, steps=80, batch_size=8, lr=1e-2, seed=0, width=16, dilations=(1,)
    )
    images = torch.stack([item["image"] for item in test])
    tags = torch.stack([item["tags"] for item in test])
    with torch.no_grad():
        accuracy = ((net(images) > 0) == tags[:, 1:]).float().mean()
    maps = net.cams(images, size=(32, 32))
    hits = 0
    for b, (k, y, x) in enumerate(where):
        peak = int(maps[b, k].argmax())
        py, px = divmod(peak, 32)
        hits += (y - 1 <= py < y + 9) and (x - 1 <= px < x + 9)  # the square, 1 px of slack
    assert accuracy > 0.9
    assert hits / len(where) > 0.8


def test_training_is_deterministic_with_a_seed():
    data, _ = squares(8, seed=2)
    nets = [
        tag_training.train_tag_classifier(data, steps=3, batch_size=4, seed=s, width=8)
        for s in (5, 5, 6)
    ]
    states = [net.state_dict() for net in nets]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_training_rejects_bad_sizes():
    data, _ = squares(4, seed=3)
    with pytest.raises(ValueError, match="exceeds the 4 images"):
        tag_training.train_tag_classifier(data, steps=1, batch_size=5)
    with pytest.raises(ValueError, match="must be >= 1"):
        tag_training.train_tag_classifier(data, steps=0)
