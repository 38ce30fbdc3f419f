import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import silhouette_score  # noqa: E402

from spml_lab.pictures import embedding_stats, embedding_viz, viz


@pytest.fixture(scope="module")
def two_clusters():
    """Two tight, far-apart groups of 16-d vectors and their UMAP (numba compiles once here)."""
    rng = np.random.default_rng(0)
    centres = np.zeros((2, 16))
    centres[0, 0] = centres[1, 1] = 1.0  # orthogonal directions: cosine distance 1
    classes = np.repeat([0, 1], 120)
    vectors = centres[classes] + 0.05 * rng.normal(size=(240, 16))
    points = embedding_viz.umap_project(vectors, random_state=3)
    return vectors, classes, points


def test_umap_is_repeatable_with_a_seed(two_clusters):
    vectors, _, points = two_clusters
    assert points.shape == (240, 2) and points.dtype == np.float32
    again = embedding_viz.umap_project(torch.from_numpy(vectors), random_state=3)
    assert np.array_equal(points, again)


def test_umap_separates_two_well_separated_clusters(two_clusters):
    _, classes, points = two_clusters
    assert silhouette_score(points, classes) > 0.9
    # every point's 5 nearest neighbours in the picture share its class
    distance = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(distance, np.inf)
    neighbours = np.argsort(distance, axis=1)[:, :5]
    assert (classes[neighbours] == classes[:, None]).mean() > 0.99


def test_umap_project_refuses_too_few_points():
    with pytest.raises(ValueError, match="N >= 3"):
        embedding_viz.umap_project(np.ones((2, 4)))


def test_umap_scatter_draws_one_titled_panel_per_colouring(two_clusters):
    vectors, classes, points = two_clusters
    sample = {
        "classes": classes,
        "labelled": np.arange(240) % 10 == 0,
        "images": np.arange(240) % 3,
        "segment": np.arange(240) >= 230,
    }
    fig = embedding_viz.umap_scatter(
        points, sample, class_names=["background", "cat"], title="two clusters"
    )
    assert [ax.get_title() for ax in fig.axes] == ["true class", "annotation", "image"]
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes]
    assert legends[0] == ["background", "cat", "segment"]
    assert legends[1] == ["labelled", "unlabelled", "segment"]
    assert legends[2] == ["image 0", "image 1", "image 2", "segment"]
    # class colours are the palette's; each point drawn once (pixels and segments apart)
    first = fig.axes[0]
    drawn = np.concatenate([c.get_facecolors()[:, :3] for c in first.collections])
    assert len(drawn) == 240
    expected = {tuple(np.round(c / 255, 6)) for c in viz.palette(2)}
    assert {tuple(np.round(c, 6)) for c in drawn} == expected
    assert "segments" in fig._suptitle.get_text()
    plt.close(fig)
    with pytest.raises(ValueError, match="by must name"):
        embedding_viz.umap_scatter(points, sample, by=("colour",))
    with pytest.raises(ValueError, match="points must be"):
        embedding_viz.umap_scatter(points[:5], sample)


def test_similarity_maps_match_brute_force_cosines():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(3, 5, 4, 6)).transpose(0, 2, 3, 1)  # (B, h, w, D)
    emb[2, 1, 1] = 0.0  # an all-zero embedding: cosine 0
    maps = embedding_viz.similarity_maps(emb, (1, 2, 3))
    assert maps.shape == (3, 4, 6)
    assert maps.min() >= -1.0 and maps.max() <= 1.0
    assert maps[1, 2, 3] == pytest.approx(1.0, abs=1e-12)
    assert maps[2, 1, 1] == 0.0
    q = emb[1, 2, 3]
    for b, y, x in [(0, 0, 0), (2, 3, 5), (1, 1, 4)]:
        v = emb[b, y, x]
        assert maps[b, y, x] == pytest.approx(v @ q / np.linalg.norm(v) / np.linalg.norm(q))
    tensor = embedding_viz.similarity_maps(torch.from_numpy(emb), (1, 2, 3))
    assert np.allclose(tensor, maps)
    with pytest.raises(ValueError, match="query"):
        embedding_viz.similarity_maps(emb, (0, 4, 0))


def test_pca_colours_agree_across_images_of_an_embedding_map():
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(2, 6, 5, 5))  # (B, D, h, w)
    emb[1, :, 4, 0] = emb[0, :, 0, 3]  # one vector in two images at different places
    rgb = viz.pca_rgb(emb.transpose(0, 2, 3, 1))
    assert rgb.shape == (2, 5, 5, 3)
    assert (rgb[1, 4, 0] == rgb[0, 0, 3]).all()
    # and the projection is the batch's: the second image alone would colour it differently
    alone = viz.pca_rgb(emb[1:].transpose(0, 2, 3, 1))
    assert (alone[0, 4, 0] != rgb[1, 4, 0]).any()


def test_heat_rgb_follows_the_colour_map_and_clips():
    values = np.array([[-2.0, -1.0, 0.0, 0.5, 1.0, 3.0]])
    rgb = embedding_viz.heat_rgb(values)
    cmap = plt.get_cmap("RdBu_r")
    expected = [cmap(f)[:3] for f in (0.0, 0.0, 0.5, 0.75, 1.0, 1.0)]
    assert rgb.shape == (1, 6, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb[0] - np.round(np.array(expected) * 255)).max() <= 1
    assert (embedding_viz.heat_rgb(values, vmin=0, vmax=1)[0, 4] == rgb[0, 5]).all()


def test_show_similarity_marks_the_query_and_has_a_colour_bar():
    images = np.zeros((3, 16, 16, 3), np.uint8)
    emb = np.random.default_rng(0).normal(size=(3, 4, 4, 4))
    maps = embedding_viz.similarity_maps(emb, (2, 1, 3))
    fig = embedding_viz.show_similarity(images, maps, (2, 1, 3), title="q")
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 6 and len(fig.axes) == 7  # two rows of three, the colour bar
    # the star lies at the centre of embedding pixel (1, 3) in both rows of image 2
    stars = [ax for ax in panels if ax.lines]
    assert len(stars) == 2
    assert stars[0].lines[0].get_xydata()[0].tolist() == [13.5, 5.5]
    assert panels[0].get_title() == "image 0" and panels[2].get_title() == "image 2 (query)"
    assert fig.axes[-1].get_ylabel() == "cosine"
    plt.close(fig)
    with pytest.raises(ValueError, match="maps 3"):
        embedding_viz.show_similarity(images[:2], maps, (0, 0, 0))


def test_plot_cosine_distributions_labels_both_kinds_per_model():
    rng = np.random.default_rng(0)
    good = embedding_stats.cosine_distributions(
        np.eye(2)[np.repeat([0, 1], 20)] + 0.1 * rng.normal(size=(40, 2)),
        np.repeat([0, 1], 20), num_pairs=200,
    )  # fmt: skip
    bad = (rng.uniform(-1, 1, 200), rng.uniform(-1, 1, 200))
    fig = embedding_viz.plot_cosine_distributions({"trained": good, "random": bad}, title="t")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [
        "trained: same class", "trained: different classes",
        "random: same class", "random: different classes",
    ]  # fmt: skip
    assert ax.get_xlabel().startswith("cosine") and ax.get_ylabel() == "density"
    assert len(ax.lines) == 4
    # the trained model's same-class curve peaks near cosine 1, its other one near 0
    peak = [line.get_xdata()[np.argmax(line.get_ydata())] for line in ax.lines[:2]]
    assert peak[0] > 0.9 and abs(peak[1]) < 0.3
    assert min(line.get_xdata().min() for line in ax.lines) >= -1.0
    plt.close(fig)


def test_similarity_range_spans_the_low_quantile_to_one_at_least_a_tenth_wide():
    near_one = np.linspace(0.97, 1.0, 200)
    assert embedding_viz.similarity_range(near_one) == (0.9, 1.0)  # at least 0.1 wide
    spread = np.linspace(0.0, 1.0, 1001)  # its 2nd percentile is 0.02: floored to 0.0
    assert embedding_viz.similarity_range(spread) == (0.0, 1.0)
    assert embedding_viz.similarity_range(spread, quantile=0.25) == (0.2, 1.0)


def test_plot_cosine_distributions_can_cut_the_axis_to_the_pairs():
    rng = np.random.default_rng(0)
    pairs = {"net": (rng.uniform(0.8, 1.0, 200), rng.uniform(0.55, 0.9, 200))}
    full = embedding_viz.plot_cosine_distributions(pairs)
    cut = embedding_viz.plot_cosine_distributions(pairs, cut=True)
    assert full.axes[0].get_xlim() == (-1.05, 1.05)
    assert cut.axes[0].get_xlim() == (0.5, 1.0)  # the lowest 0.5 % floored to a tenth
    plt.close("all")
