import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from spml_lab.constants import IGNORE_INDEX
from spml_lab.pictures import viz


def test_pca_rgb_shares_one_projection_across_images():
    rng = np.random.default_rng(0)
    kinds = rng.normal(size=(4, 6))  # four kinds: three principal components carry them
    picks = rng.integers(0, 4, size=(2, 4, 5))
    emb = kinds[picks] + 0.01 * rng.normal(size=(2, 4, 5, 6))
    rgb = viz.pca_rgb(emb)
    assert rgb.shape == (2, 4, 5, 3) and rgb.dtype == np.uint8
    # the same kind of embedding gets (nearly) the same colour in both images
    for k in range(4):
        colours = rgb[picks == k].astype(int)
        assert np.ptp(colours, axis=0).max() < 40
    # a tensor gives the same picture, and so does a second call
    assert (viz.pca_rgb(torch.from_numpy(emb)) == rgb).all()
    assert (viz.pca_rgb(emb) == rgb).all()


def test_pca_rgb_sign_does_not_depend_on_the_embedding_sign_convention():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(50, 4))
    flipped = emb.copy()
    flipped[:, 0] *= -1  # a different but equivalent embedding basis
    assert viz.pca_rgb(emb).shape == (50, 3)
    # the colours of the two versions agree up to the (fixed) sign of each component
    a, b = viz.pca_rgb(emb).astype(int), viz.pca_rgb(flipped).astype(int)
    for c in range(3):
        same = np.abs(a[:, c] - b[:, c]).max() <= 1
        mirrored = np.abs(a[:, c] + b[:, c] - 255).max() <= 1
        assert same or mirrored


def test_pca_rgb_with_fewer_than_three_dimensions():
    rgb = viz.pca_rgb(np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]))
    assert rgb.shape == (3, 3) and (rgb[:, 2] == 0).all()


def test_relation_picture_paints_roles():
    image = np.full((4, 4, 3), 100, np.uint8)
    ids = np.array([[0, 1], [2, -1]])  # resized to 4 x 4 by nearest
    pos, neg = np.array([True, False, False]), np.array([False, True, False])
    pic = viz.relation_picture(image, ids, pos, neg, alpha=1.0)
    assert pic.shape == (4, 4, 3)
    assert pic[0, 0].tolist() == viz.POSITIVE_COLOUR.tolist()
    assert pic[1, 3].tolist() == [v // 2 for v in viz.NEGATIVE_COLOUR.tolist()]  # border, darker
    assert pic[0, 3].tolist() == viz.NEGATIVE_COLOUR.tolist()
    grey = pic[3, 0]
    assert (grey == grey[0]).all() and grey[0] > 100  # neither: pale grey
    assert (pic[3, 3] == grey).all()  # left-out pixels too


def test_relation_picture_rings_the_own_segment():
    image = np.zeros((6, 6, 3), np.uint8)
    ids = np.zeros((6, 6), int)
    ids[2:4, 2:4] = 1
    pos = neg = np.zeros(2, bool)
    pic = viz.relation_picture(image, ids, pos, neg, own=1)
    ring = (pic == viz.OWN_COLOUR).all(-1)
    assert not ring[2:4, 2:4].any()  # the segment itself stays visible
    assert ring[1, 2] and ring[4, 3] and not ring[0, 0]


@pytest.mark.parametrize("zoom", [None, 4])
def test_show_relation_draws_one_panel_per_image_and_a_zoom(zoom):
    images = np.zeros((3, 16, 16, 3), np.uint8)
    ids = torch.arange(48).reshape(3, 4, 4)
    pos = torch.zeros(50, dtype=torch.bool)
    pos[[1, 49]] = True
    neg = ~pos
    fig = viz.show_relation(
        images, ids, pos, neg, (1, 2, 3), zoom=zoom, outlines=ids // 2, title="t",
        col_titles=["a", "b", "c"],
    )  # fmt: skip
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 3 + (zoom is not None)
    star = panels[1].lines[0].get_xydata()[0]
    assert star.tolist() == [13.5, 9.5]  # (x + 0.5) * 4 - 0.5, (y + 0.5) * 4 - 0.5
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "positive (1)" in labels  # 48 segments in the batch, 48 and 49 in memory
    assert "memory: 1 positive, 1 negative" in fig._suptitle.get_text()
    plt.close(fig)


def test_label_pictures_colours_maps_or_draws_them_over_their_images():
    colours = np.array([[0, 0, 0], [200, 100, 0]], np.uint8)
    labels = np.array([[[1, IGNORE_INDEX]], [[0, 1]]])
    plain = viz.label_pictures(labels, colours)
    assert [p.tolist() for p in plain] == [
        [[[200, 100, 0], [255, 255, 255]]], [[[0, 0, 0], [200, 100, 0]]]
    ]  # fmt: skip
    images = np.full((2, 1, 2, 3), 100, np.uint8)
    over = viz.label_pictures(labels, colours, images=images, dim=0.5)
    assert over[0].tolist() == [[[200, 100, 0], [50, 50, 50]]]  # unlabelled: the dimmed image


def test_show_grid_takes_rows_as_a_dict_of_titles():
    picture = np.zeros((2, 2, 3), np.uint8)
    fig = viz.show_grid({"first": [picture, picture], "second": [picture]})
    assert [ax.get_ylabel() for ax in fig.axes[::2]] == ["first", "second"]
    with pytest.raises(ValueError, match="no row_titles"):
        viz.show_grid({"first": [picture]}, row_titles=["again"])


def test_fade_moves_every_value_two_thirds_of_the_way_to_light_grey():
    values = np.arange(256, dtype=np.uint8)
    expected = (35 * values.astype(int) + 65 * 254) // 100  # 0.35 v + 0.65 * 254, rounded down
    assert viz.fade(values).tolist() == expected.tolist()
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 3), dtype=np.uint8)
    faded = viz.fade(list(images))  # a sequence of images works too
    assert faded.shape == images.shape and faded.dtype == np.uint8
    assert faded.min() >= 165 and (viz.fade(images, strength=0.0) == images).all()


def test_label_pictures_blends_with_alpha_and_brings_coarse_labels_to_the_image_size():
    colours = np.array([[0, 0, 0], [200, 100, 0]], np.uint8)
    coarse = np.array([[[1, IGNORE_INDEX], [0, 1]]])  # (1, 2, 2) for a 4 x 4 image
    images = np.full((1, 4, 4, 3), 100, np.uint8)
    (picture,) = viz.label_pictures(coarse, colours, images=images, alpha=0.5, dim=0.0)
    blocks = coarse[0].repeat(2, axis=0).repeat(2, axis=1)  # each label pixel a 2 x 2 block
    expected = np.where(
        (blocks == IGNORE_INDEX)[..., None],
        100,
        np.round(0.5 * 100 + 0.5 * np.where((blocks == 1)[..., None], colours[1], colours[0])),
    )
    assert picture.tolist() == expected.tolist()
    with pytest.raises(ValueError):
        viz.label_pictures(coarse, colours, images=np.concatenate([images, images]))


def test_outline_pictures_draws_each_image_s_own_borders():
    images = np.zeros((2, 4, 4, 3), np.uint8)
    regions = torch.tensor([[[0, 1], [0, 1]], [[2, 2], [2, 2]]])  # halves; one region
    first, second = viz.outline_pictures(images, regions, (0, 255, 0))
    border = (first == (0, 255, 0)).all(-1)
    assert border[:, 1].all() and border.sum() == 4  # the left half's last column
    assert not second.any()  # no border where a single region covers the image
