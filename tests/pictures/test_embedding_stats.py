import numpy as np
import pytest
import torch
from sklearn.metrics import silhouette_samples, silhouette_score

from spml_lab.constants import IGNORE_INDEX
from spml_lab.method.clustering import build_segments
from spml_lab.pictures import embedding_stats


def position_map(num_images=2, height=3, width=4):
    """(B, h, w, D) embeddings whose vector spells out (image, y, x, 1): easy to trace."""
    b, y, x = np.meshgrid(np.arange(num_images), np.arange(height), np.arange(width), indexing="ij")
    return np.stack([b, y, x, np.ones_like(b)], axis=-1).astype(float)


def test_sample_pixels_layout_and_nearest_downsampling():
    emb = position_map()  # (2, 3, 4, 4)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(2, 12, 16))  # 4x the embedding size
    labels[0, ::4, ::4][0, 0] = IGNORE_INDEX  # one unknown pixel at a kept position
    weak = np.full((2, 12, 16), IGNORE_INDEX)
    weak[1, 4, 8] = 2  # one labelled pixel: embedding pixel (1, 1, 2)
    sample = embedding_stats.sample_pixels(emb, labels, annotation=weak, num_samples=None)
    assert len(sample["classes"]) == 2 * 3 * 4 - 1  # all but the unknown pixel
    # every row traces back to its own position and to the label every 4th pixel
    b, y, x = sample["images"], sample["y"], sample["x"]
    assert (sample["vectors"][:, :3] == np.stack([b, y, x], 1)).all()
    assert (sample["classes"] == labels[b, 4 * y, 4 * x]).all()
    assert not ((b == 0) & (y == 0) & (x == 0)).any()
    assert sample["labelled"].tolist() == ((b == 1) & (y == 1) & (x == 2)).tolist()
    assert not sample["segment"].any()


def test_sample_pixels_is_seeded_and_takes_tensors():
    emb = position_map(3, 8, 8)
    labels = np.zeros((3, 8, 8), int)
    a = embedding_stats.sample_pixels(emb, labels, num_samples=50, seed=1)
    b = embedding_stats.sample_pixels(
        torch.from_numpy(emb), torch.from_numpy(labels), num_samples=50, seed=1
    )
    c = embedding_stats.sample_pixels(emb, labels, num_samples=50, seed=2)
    assert len(a["vectors"]) == 50
    assert all((a[k] == b[k]).all() for k in a)
    assert not (a["vectors"] == c["vectors"]).all()
    flat = (a["images"] * 8 + a["y"]) * 8 + a["x"]
    assert len(set(flat.tolist())) == 50  # without replacement


def test_sample_pixels_balance_evens_out_classes():
    labels = np.zeros((1, 20, 20), int)
    labels[0, :2, :5] = 1  # 10 pixels of class 1 among 400
    emb = np.ones((1, 20, 20, 2))
    plain = embedding_stats.sample_pixels(emb, labels, num_samples=20, seed=0)
    balanced = embedding_stats.sample_pixels(emb, labels, num_samples=20, seed=0, balance=True)
    assert (plain["classes"] == 1).sum() <= 3
    assert 6 <= (balanced["classes"] == 1).sum() <= 10


def test_sample_pixels_refuses_bad_input():
    emb = np.ones((1, 4, 4, 2))
    with pytest.raises(ValueError, match="embeddings"):
        embedding_stats.sample_pixels(np.ones((4, 4, 2)), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="labels hold 2 images"):
        embedding_stats.sample_pixels(emb, np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="unknown"):
        embedding_stats.sample_pixels(emb, np.full((1, 4, 4), IGNORE_INDEX))


def test_sample_segments_matches_a_loop_over_segments():
    rng = np.random.default_rng(3)
    emb = torch.nn.functional.normalize(torch.randn(2, 6, 6, 3), dim=-1)
    clusters = torch.from_numpy(rng.integers(0, 3, size=(2, 6, 6)))
    weak = torch.full((2, 6, 6), IGNORE_INDEX)
    weak[0, :2] = 1
    segments = build_segments(emb, clusters, labels=weak)
    truth = rng.integers(0, 4, size=(2, 12, 12))
    truth[1, :, :] = np.where(rng.random((12, 12)) < 0.3, IGNORE_INDEX, truth[1])
    sample = embedding_stats.sample_segments(segments, truth)
    small = truth[:, ::2, ::2]
    ids = segments.segment_ids.numpy()
    expected = []
    for s in range(segments.num_segments):
        values = small[ids == s]
        values = values[values != IGNORE_INDEX]
        if len(values):
            counts = np.bincount(values)
            ys, xs = np.nonzero(ids[segments.image_ids[s]] == s)
            expected.append((s, counts.argmax(), round(ys.mean()), round(xs.mean())))
    rows = [np.flatnonzero((segments.prototypes.numpy() == v).all(1))[0] for v in sample["vectors"]]
    assert rows == [e[0] for e in expected]
    assert sample["classes"].tolist() == [e[1] for e in expected]
    assert sample["y"].tolist() == [e[2] for e in expected]
    assert sample["x"].tolist() == [e[3] for e in expected]
    assert sample["labelled"].tolist() == (segments.labels[rows] != IGNORE_INDEX).tolist()
    assert sample["sizes"].tolist() == segments.sizes[rows].tolist()
    assert sample["segment"].all()


def test_join_samples_concatenates_and_fills_sizes():
    emb = position_map()
    pixels = embedding_stats.sample_pixels(emb, np.zeros((2, 3, 4), int), num_samples=5)
    more = dict(pixels, sizes=np.full(5, 7), segment=np.ones(5, bool))
    joined = embedding_stats.join_samples(pixels, more)
    assert joined["vectors"].shape == (10, 4)
    assert joined["sizes"].tolist() == [1] * 5 + [7] * 5
    assert joined["segment"].tolist() == [False] * 5 + [True] * 5
    with pytest.raises(ValueError, match="lacks key"):
        embedding_stats.join_samples({"classes": np.zeros(1)}, {"classes": np.zeros(1), "y": [0]})


def test_silhouette_per_class_equals_scikit_learn():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 5))
    classes = np.array([0] * 30 + [1] * 25 + [2] * 1 + [5] * 14)  # a singleton, a gap in ids
    vectors = centres[np.minimum(classes, 2)] + 0.8 * rng.normal(size=(70, 5))
    per_class, overall = embedding_stats.silhouette_per_class(vectors, classes, chunk_size=16)
    reference = silhouette_samples(vectors, classes, metric="cosine")
    assert sorted(per_class) == [0, 1, 2, 5]
    for c, score in per_class.items():
        assert score == pytest.approx(reference[classes == c].mean(), abs=1e-9)
    assert per_class[2] == 0.0  # a point alone in its class scores 0
    assert overall == pytest.approx(silhouette_score(vectors, classes, metric="cosine"), abs=1e-9)


def test_silhouette_per_class_refuses_one_class():
    with pytest.raises(ValueError, match="two classes"):
        embedding_stats.silhouette_per_class(np.eye(3), np.zeros(3))
    with pytest.raises(ValueError, match="classes has 2"):
        embedding_stats.silhouette_per_class(np.eye(3), np.zeros(2))


def test_cosine_distributions_on_vectors_with_known_cosines():
    # class 0: two vectors at cosine 0.9; class 1: four vectors, pairwise cosine 0.8 except one
    # pair at 0.6; the two classes live in orthogonal subspaces (cosine 0)
    a = np.zeros((2, 7))
    a[:, 0] = np.sqrt(0.9)
    a[[0, 1], [1, 2]] = np.sqrt(0.1)
    b = np.zeros((4, 7))
    b[:, 3] = np.sqrt(0.8)
    b[np.arange(4), [4, 5, 6, 6]] = np.sqrt(0.2) * np.array([1, 1, 1, -1])
    vectors = np.concatenate([b[:2], a, b[2:]])  # classes interleaved: sorting must work
    classes = np.array([1, 1, 0, 0, 1, 1])
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    gram = unit @ unit.T
    same = (classes[:, None] == classes[None]) & ~np.eye(6, dtype=bool)
    intra, inter = embedding_stats.cosine_distributions(vectors, classes, num_pairs=20_000)
    assert intra.shape == inter.shape == (20_000,)
    assert np.allclose(inter, 0.0)
    # intra: uniform over the 2 + 12 ordered same-class pairs, so 0.9 and 0.6 come 2 / 14 of
    # the time each, 0.8 10 / 14
    values, counts = np.unique(np.round(gram[same], 9), return_counts=True)
    assert values.tolist() == [0.6, 0.8, 0.9] and counts.tolist() == [2, 10, 2]
    drawn = np.round(intra, 9)
    for value, count in zip(values, counts, strict=True):
        assert (drawn == value).mean() == pytest.approx(count / same.sum(), abs=0.015)
    assert np.isin(drawn, values).all()


def test_cosine_distributions_is_seeded_and_refuses_impossible_pairs():
    rng = np.random.default_rng(0)
    vectors, classes = rng.normal(size=(20, 3)), rng.integers(0, 3, 20)
    a = embedding_stats.cosine_distributions(vectors, classes, num_pairs=50, seed=4)
    b = embedding_stats.cosine_distributions(vectors, classes, num_pairs=50, seed=4)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="no class has two rows"):
        embedding_stats.cosine_distributions(np.eye(3), np.arange(3))
    with pytest.raises(ValueError, match="one class"):
        embedding_stats.cosine_distributions(np.eye(3), np.zeros(3))


def test_compare_embeddings_rows_agree_with_the_parts():
    rng = np.random.default_rng(1)
    classes = rng.integers(0, 2, 40)
    good = np.eye(3)[classes] + 0.1 * rng.normal(size=(40, 3))
    bad = rng.normal(size=(40, 3))
    rows = embedding_stats.compare_embeddings(
        {"good": (good, classes), "bad": (bad, classes)}, class_names=["bg", "cat"], num_pairs=300
    )
    assert [r["model"] for r in rows] == ["good", "bad"]
    per_class, overall = embedding_stats.silhouette_per_class(good, classes)
    intra, inter = embedding_stats.cosine_distributions(good, classes, num_pairs=300)
    assert rows[0]["silhouette"] == overall and rows[0]["silhouette cat"] == per_class[1]
    assert rows[0]["gap"] == pytest.approx(intra.mean() - inter.mean())
    assert rows[0]["gap"] > 0.8 > abs(rows[1]["gap"])
    assert rows[0]["silhouette"] > 0.8 > rows[1]["silhouette"]


def test_probes_tell_position_from_class():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (6, 8, 8))  # classes scattered, independent of position
    onehot = np.eye(3)[labels] + 0.01 * rng.normal(size=(6, 8, 8, 3))  # (B, h, w, D)
    what = embedding_stats.probe_position_and_class(onehot, labels, num_samples=300)
    assert what["class_balanced_accuracy"] == 1.0 and what["position_r2"] < 0.05
    yy, xx = np.meshgrid(np.linspace(-0.5, 0.5, 8), np.linspace(-0.5, 0.5, 8), indexing="ij")
    where = np.broadcast_to(np.stack([yy, xx], -1), (6, 8, 8, 2))
    got = embedding_stats.probe_position_and_class(where, labels, num_samples=300)
    assert got["position_r2"] > 0.99 and got["class_balanced_accuracy"] < 0.5  # chance: 1/3
