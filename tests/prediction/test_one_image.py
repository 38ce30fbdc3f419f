import numpy as np
import pytest
import torch

from spml_lab.constants import IGNORE_INDEX
from spml_lab.prediction import one_image

COLOURS = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 40]], np.uint8)


def quadrants(size=48):
    """A four-quadrant image, its true mask and one short stroke inside each quadrant."""
    half = size // 2
    truth = np.zeros((size, size), np.uint8)
    truth[:half, half:], truth[half:, :half], truth[half:, half:] = 1, 2, 3
    image = COLOURS[truth].copy()
    rng = np.random.default_rng(0)  # mild noise: the net must not rely on exact colours
    image = np.clip(image + rng.integers(-15, 16, image.shape), 0, 255).astype(np.uint8)
    scribbles = np.full((size, size), IGNORE_INDEX, np.uint8)
    for r, c in ((0, 0), (0, 1), (1, 0), (1, 1)):
        y, x = r * half + half // 2, c * half + 4
        scribbles[y - 2 : y + 2, x : x + half - 8] = truth[y, x]
    return image, truth, scribbles


def test_forest_recovers_two_colour_halves_away_from_the_step():
    image = np.zeros((32, 40, 3), np.uint8)
    image[:, 20:] = 255
    scribbles = np.full((32, 40), IGNORE_INDEX, np.uint8)
    scribbles[10:20, 2:6], scribbles[10:20, 30:34] = 1, 0  # ids need not follow the picture
    mask = one_image.segment(image, scribbles, "forest")
    truth = np.where(np.arange(40) < 20, 1, 0)[None].repeat(32, 0)
    # the filter bank blurs the step: the pixel pair beside it has no scribbled look-alike
    away = np.r_[0:18, 22:40]
    np.testing.assert_array_equal(mask[:, away], truth[:, away])


@pytest.mark.parametrize("method", ["spml", "partial_ce"])
def test_network_methods_recover_four_quadrants(method):
    image, truth, scribbles = quadrants()
    mask = one_image.segment(image, scribbles, method, steps=30)
    assert mask.shape == truth.shape and mask.dtype == np.uint8
    assert (mask == truth).mean() > 0.9  # borders are blurred by the 1/4-resolution embedding


def test_callback_sees_progress_and_the_final_mask():
    image, _, scribbles = quadrants(32)
    seen = []
    mask = one_image.segment(image, scribbles, steps=25, callback=lambda s, m: seen.append((s, m)))
    every = one_image.RECIPE.update_every
    assert [s for s, _ in seen] == [*range(every, 25, every), 25]
    assert all(m.shape == (32, 32) and m.dtype == np.uint8 for _, m in seen)
    np.testing.assert_array_equal(seen[-1][1], mask)


def test_same_seed_same_mask():
    image, _, scribbles = quadrants(32)
    first = one_image.segment(image, scribbles, steps=5, seed=3)
    np.testing.assert_array_equal(first, one_image.segment(image, scribbles, steps=5, seed=3))


def test_crops_are_crops_of_the_image_flipped_or_not():
    image, truth, scribbles = quadrants(40)
    superpixels = np.arange(40 * 40).reshape(40, 40)  # every pixel its own id: positions
    crops = one_image._Crops(image, scribbles, superpixels, 4, seed=0)
    crops.size = (16, 24)
    batch = crops.batch()
    assert batch["image"].shape == (one_image.RECIPE.batch, 3, 16, 24)
    flips = 0
    for b in range(one_image.RECIPE.batch):  # check each crop against plain slicing
        ids = batch["superpixel"][b].numpy()
        top, left = divmod(int(ids.min()), 40)
        window = (slice(top, top + 16), slice(left, left + 24))
        flipped = ids[0, 0] != ids.min()
        flips += flipped
        step = -1 if flipped else 1
        np.testing.assert_array_equal(ids, superpixels[window][:, ::step])
        expected = torch.from_numpy(image[window][:, ::step].copy()).permute(2, 0, 1) / 255
        assert torch.equal(batch["image"][b], expected.float())
        np.testing.assert_array_equal(batch["label"][b].numpy(), scribbles[window][:, ::step])
    assert batch["tags"].all()  # the four classes are scribbled


def image_and_scribbles():
    image = np.zeros((20, 24, 3), np.uint8)
    scribbles = np.full((20, 24), IGNORE_INDEX, np.uint8)
    scribbles[2, :5], scribbles[9, :5] = 0, 1
    return image, scribbles


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda i, s: (i, s[:10]), "scribbles are 10 x 24 pixels but image is 20 x 24"),
        (lambda i, s: (i, np.full_like(s, IGNORE_INDEX)), "hold no scribble"),
        (lambda i, s: (i, np.where(s == 1, 0, s)), "one class only"),
        (lambda i, s: (i, np.where(s == 1, 3, s)), r"ids out of range.*\[1, 2\] have no scribble"),
        (lambda i, s: (i, s[..., None].repeat(3, -1)), "single channel"),
        (lambda i, s: (i[..., 0], s), r"\(H, W, 3\) RGB image"),
        (lambda i, s: (i[:8, :8], s[:8, :8]), "need at least 16"),
        (lambda i, s: (i.astype(np.float32) + 2, s), "uint8 or floats in"),
    ],
)
def test_bad_input_is_named(change, message):
    image, scribbles = change(*image_and_scribbles())
    with pytest.raises(ValueError, match=message):
        one_image.segment(image, scribbles, "forest")


def test_ids_at_or_above_num_classes_are_out_of_range():
    image, scribbles = image_and_scribbles()
    assert one_image.check_inputs(image, np.where(scribbles == 1, 2, scribbles),
                                  num_classes=3)[2] == 3  # fmt: skip
    with pytest.raises(ValueError, match=r"ids out of range: \[2\] >= num_classes 2"):
        one_image.check_inputs(image, np.where(scribbles == 1, 2, scribbles), num_classes=2)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"method": "magic"}, "unknown method"), ({"steps": 0}, "steps must be"),
     ({"choices": {"crff": True}}, "unknown choice")],
)  # fmt: skip
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        one_image.segment(*image_and_scribbles(), **options)


def test_low_level_choice_turns_the_relation_off_and_its_default_is_on():
    image, _, scribbles = quadrants(48)  # smaller or shorter runs may end in the same mask
    default = one_image.segment(image, scribbles, steps=10, seed=1)
    on = one_image.segment(image, scribbles, steps=10, seed=1, choices={"low_level": True})
    off = one_image.segment(image, scribbles, steps=10, seed=1, choices={"low_level": False})
    np.testing.assert_array_equal(default, on)
    assert one_image.SPML_CHOICES["low_level"] is True
    assert not np.array_equal(default, off)  # the loss changed, so did the training
