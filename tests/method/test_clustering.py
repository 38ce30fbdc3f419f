import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import adjusted_rand_score

from spml_lab.constants import IGNORE_INDEX
from spml_lab.method import clustering


def test_grid_labels_small_case_by_hand():
    # y = round([0, .25, .5, .75, 1]) = [0, 0, 0, 1, 1] (0.5 rounds to even 0)
    # x = round([0, 2/3, 4/3, 2]) = [0, 1, 1, 2]; label = y + 2 * x
    want = torch.tensor([[0, 2, 2, 4], [0, 2, 2, 4], [0, 2, 2, 4], [1, 3, 3, 5], [1, 3, 3, 5]])
    assert torch.equal(clustering.grid_labels(5, 4, (2, 3)), want)


def test_grid_labels_round_half_to_even():
    # linspace(0, 3, 7) = 0, .5, 1, 1.5, 2, 2.5, 3 -> 0, 0, 1, 2, 2, 2, 3
    got = clustering.grid_labels(7, 1, (4, 1))[:, 0]
    assert got.tolist() == [0, 0, 1, 2, 2, 2, 3]


@pytest.mark.parametrize(
    "height, width, grid", [(33, 65, (5, 5)), (64, 48, (6, 4)), (2, 3, (4, 5))]
)
def test_grid_labels_match_numpy(height, width, grid):
    y = np.round(np.linspace(0, grid[0] - 1, height)).astype(int)
    x = np.round(np.linspace(0, grid[1] - 1, width)).astype(int)
    want = y[:, None] + grid[0] * x[None, :]
    np.testing.assert_array_equal(clustering.grid_labels(height, width, grid).numpy(), want)


def test_grid_labels_reject_bad_sizes():
    with pytest.raises(ValueError, match="positive"):
        clustering.grid_labels(0, 4, (2, 2))
    with pytest.raises(ValueError, match="positive"):
        clustering.grid_labels(4, 4, (0, 2))


def test_location_features_span_the_unit_square_centred():
    loc = clustering.location_features(4, 6)
    assert loc.shape == (4, 6, 2)
    torch.testing.assert_close(loc[0, 0], torch.tensor([-0.5, -0.5]))
    torch.testing.assert_close(loc[-1, -1], torch.tensor([0.5, 0.5]))
    assert torch.all(loc[:, :, 0] == loc[:, :1, 0])  # y constant along a row
    assert torch.all(loc[:, :, 1] == loc[:1, :, 1])  # x constant along a column


def test_with_location_concatenates_then_normalises():
    g = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(3, 4, 5, generator=g), dim=-1)
    loc = clustering.location_features(3, 4)
    got = clustering.with_location(emb, loc, weight=2.0)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(3, 4))
    raw = torch.cat([emb, 2.0 * loc], dim=-1)
    torch.testing.assert_close(got, raw / raw.norm(dim=-1, keepdim=True))


def separated_batch(seed, num_images=3, num_pixels=120, num_true=4, dim=8):
    """Pixels around num_true orthogonal directions; init = truth with 30% of ids wrong."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.randint(0, num_true, (num_images, num_pixels), generator=g)
    centres = torch.eye(dim)[:num_true]
    emb = centres[truth] + 0.05 * torch.randn(num_images, num_pixels, dim, generator=g)
    wrong = torch.rand(num_images, num_pixels, generator=g) < 0.3
    init = torch.where(wrong, torch.randint(0, num_true, truth.shape, generator=g), truth)
    return F.normalize(emb, dim=-1), init, truth


def test_kmeans_recovers_well_separated_clusters():
    emb, init, truth = separated_batch(0)
    got = clustering.spherical_kmeans(emb, init, 5)
    for b in range(len(truth)):
        assert adjusted_rand_score(truth[b].numpy(), got[b].numpy()) == 1.0


def test_kmeans_from_a_grid_recovers_offset_quadrants():
    # four regions whose borders do not align with the 2 x 2 initial grid
    height, width = 12, 16
    region = torch.zeros(height, width, dtype=torch.long)
    region[:, 10:] += 1
    region[4:] += 2
    g = torch.Generator().manual_seed(1)
    emb = torch.eye(6)[region] + 0.05 * torch.randn(height, width, 6, generator=g)
    emb = F.normalize(emb, dim=-1)[None]
    feats = clustering.with_location(emb, clustering.location_features(height, width))
    init = clustering.grid_labels(height, width, (2, 2)).reshape(1, -1)
    got = clustering.spherical_kmeans(feats.reshape(1, -1, 8), init, 10, num_clusters=4)
    assert adjusted_rand_score(region.reshape(-1).numpy(), got[0].numpy()) == 1.0


def test_batched_kmeans_equals_each_image_alone():
    g = torch.Generator().manual_seed(2)
    emb = F.normalize(torch.randn(4, 200, 6, generator=g, dtype=torch.float64), dim=-1)
    init = torch.randint(0, 9, (4, 200), generator=g)
    batched = clustering.spherical_kmeans(emb, init, 10, num_clusters=9)
    for b in range(4):
        alone = clustering.spherical_kmeans(emb[b : b + 1], init[b : b + 1], 10, num_clusters=9)
        assert torch.equal(batched[b], alone[0])
    # ids stay in each image's own space, not offset by the image index
    assert batched.min() >= 0 and batched.max() < 9


def test_kmeans_default_num_clusters_and_zero_iterations():
    emb, init, _ = separated_batch(3)
    assert torch.equal(clustering.spherical_kmeans(emb, init, 0), init)
    torch.testing.assert_close(
        clustering.spherical_kmeans(emb, init, 4),
        clustering.spherical_kmeans(emb, init, 4, num_clusters=int(init.max()) + 1),
    )


def test_empty_clusters_get_zero_prototypes_without_nan():
    # clusters 1..3 start empty; the pixel opposite cluster 0's mean has similarity -1 to it
    # and 0 to the empty (zero) prototypes, so it moves to the lowest empty id
    emb = torch.tensor([[[1.0, 0.0]] * 4 + [[-1.0, 0.0]]])
    init = torch.zeros(1, 5, dtype=torch.long)
    got = clustering.spherical_kmeans(emb, init, 3, num_clusters=4)
    assert got.tolist() == [[0, 0, 0, 0, 1]]
    # pixels all positive to their cluster never join an empty one
    emb, init, truth = separated_batch(4, num_true=3)
    got = clustering.spherical_kmeans(emb, init, 5, num_clusters=7)
    assert got.max() < 3


def test_kmeans_valid_mask_leaves_pixels_out():
    emb, init, _ = separated_batch(5, num_images=2)
    valid = torch.ones_like(init, dtype=torch.bool)
    valid[:, ::3] = False
    emb_noisy = emb.clone()
    emb_noisy[~valid] = F.normalize(torch.ones(emb.shape[-1]), dim=0)  # junk under the padding
    got = clustering.spherical_kmeans(emb_noisy, init, 5, num_clusters=4, valid=valid)
    assert torch.all(got[~valid] == -1)
    for b in range(2):
        keep = valid[b]
        alone = clustering.spherical_kmeans(
            emb[b, keep][None], init[b, keep][None], 5, num_clusters=4
        )
        assert torch.equal(got[b, keep], alone[0])


def test_kmeans_rejects_bad_input():
    emb, init, _ = separated_batch(6)
    with pytest.raises(ValueError, match="init_labels"):
        clustering.spherical_kmeans(emb, init[:, :-1])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        clustering.spherical_kmeans(emb, init, num_clusters=2)


def random_partition(seed, num_images=3, height=6, width=7, dim=5, num_classes=3):
    g = torch.Generator().manual_seed(seed)
    shape = (num_images, height, width)
    emb = F.normalize(torch.randn(*shape, dim, generator=g, dtype=torch.float64), dim=-1)
    clusters = torch.randint(0, 4, shape, generator=g)
    superpixels = torch.randint(0, 5, shape, generator=g)
    labels = torch.randint(0, num_classes, shape, generator=g)
    labels[torch.rand(shape, generator=g) < 0.4] = IGNORE_INDEX
    tags = torch.rand(num_images, num_classes, generator=g) < 0.5
    return emb, clusters, superpixels, labels, tags


def test_build_segments_are_pure_and_complete():
    emb, clusters, superpixels, labels, tags = random_partition(0)
    seg = clustering.build_segments(emb, clusters, superpixels, labels, tags=tags)
    ids = seg.segment_ids.numpy()
    image = np.broadcast_to(np.arange(3)[:, None, None], ids.shape)
    keys = np.stack([image, clusters.numpy(), superpixels.numpy(), labels.numpy()], -1)
    assert ids.min() == 0 and ids.max() == seg.num_segments - 1
    for s in range(seg.num_segments):
        inside = np.unique(keys[ids == s], axis=0)
        assert len(inside) == 1  # pure in image, cluster, superpixel and label
        b, c, sp, lab = inside[0]
        assert [int(seg.image_ids[s]), int(seg.clusters[s])] == [b, c]
        assert [int(seg.superpixels[s]), int(seg.labels[s])] == [sp, lab]
        assert int(seg.sizes[s]) == (ids == s).sum()
    # as many segments as distinct keys: nothing split more than needed
    assert seg.num_segments == len(np.unique(keys.reshape(-1, 4), axis=0))
    assert torch.all(seg.image_ids[1:] >= seg.image_ids[:-1])
    assert torch.equal(seg.tags, tags[seg.image_ids])


def test_build_segments_prototypes_are_normalised_means():
    emb, clusters, superpixels, labels, _ = random_partition(1)
    seg = clustering.build_segments(emb, clusters, superpixels, labels)
    flat, ids = emb.reshape(-1, emb.shape[-1]).numpy(), seg.segment_ids.reshape(-1).numpy()
    for s in range(seg.num_segments):
        mean = flat[ids == s].mean(0)
        np.testing.assert_allclose(
            seg.prototypes[s].numpy(), mean / np.linalg.norm(mean), atol=1e-12
        )


def test_build_segments_prototypes_carry_gradients():
    emb, clusters, superpixels, labels, _ = random_partition(2)
    emb.requires_grad_(True)
    seg = clustering.build_segments(emb, clusters, superpixels, labels)
    seg.prototypes.sum().backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0


def test_build_segments_leaves_out_invalid_pixels_and_defaults():
    emb, clusters, superpixels, labels, _ = random_partition(3)
    valid = torch.ones_like(clusters, dtype=torch.bool)
    valid[:, :, -2:] = False
    clusters[0, 0, 0] = -1  # left out by k-means
    seg = clustering.build_segments(emb, clusters, superpixels, labels, valid=valid)
    assert torch.all(seg.segment_ids[~valid] == -1) and seg.segment_ids[0, 0, 0] == -1
    assert int(seg.sizes.sum()) == int(valid.sum()) - 1
    # no superpixels and no labels: segments are the clusters, all unlabelled
    plain = clustering.build_segments(emb, clusters.clamp(min=0))
    per_image = clusters.clamp(min=0).reshape(3, -1)
    assert plain.num_segments == sum(len(torch.unique(row)) for row in per_image)
    assert torch.all(plain.labels == IGNORE_INDEX) and plain.tags is None


def test_build_segments_rejects_bad_input():
    emb, clusters, superpixels, labels, _ = random_partition(4)
    with pytest.raises(ValueError, match="labels"):
        clustering.build_segments(emb, clusters, superpixels, labels[:, :-1])
    with pytest.raises(ValueError, match="non-negative"):
        clustering.build_segments(emb, clusters, -superpixels - 1, labels)


def test_segment_prototypes_ignores_negative_ids():
    feats = torch.tensor([[1.0, 0.0], [0.0, 5.0], [3.0, 4.0]])
    got = clustering.segment_prototypes(feats, torch.tensor([0, -1, 1]), 3)
    torch.testing.assert_close(got, torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 0.0]]))


def test_segment_batch_end_to_end():
    # two images, each two flat halves; superpixels split the left half, labels are scribbles
    emb = torch.zeros(2, 8, 8, 4)
    emb[..., 0] = 1.0
    emb[:, :, 4:] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    superpixels = torch.zeros(2, 8, 8, dtype=torch.long)
    superpixels[:, 4:, :4] = 1
    superpixels[:, :, 4:] = 2
    labels = torch.full((2, 8, 8), IGNORE_INDEX)
    labels[:, 0, :4], labels[:, 0, 4:] = 3, 5
    tags = torch.tensor([[True, False], [False, True]])
    # embeddings alone: each half is one cluster, split by superpixel and label; per image
    # left-top unlabelled, left-top row 0 (3), left-bottom, right unlabelled, right row 0 (5)
    seg = clustering.segment_batch(
        emb, superpixels, labels, (2, 2), 5, tags=tags, location_weight=0
    )
    assert seg.segment_ids.shape == (2, 8, 8)
    assert seg.num_segments == 10
    assert seg.labels.tolist() == [IGNORE_INDEX, 3, IGNORE_INDEX, IGNORE_INDEX, 5] * 2
    assert torch.equal(seg.tags[seg.image_ids == 1], tags[1].expand(5, 2))
    # with location the 2 x 2 grid cells stay apart: the right half splits top / bottom too
    seg = clustering.segment_batch(emb, superpixels, labels, (2, 2), 5, tags=tags)
    assert seg.num_segments == 12
    right = seg.segment_ids[:, :, 4:]
    assert torch.unique(right[:, 1:4]).numel() == 2 and torch.unique(right[:, 4:]).numel() == 2
    assert set(right[:, 1:4].unique().tolist()).isdisjoint(right[:, 4:].unique().tolist())


def test_segment_statistics_count_by_hand():
    rng = np.random.default_rng(0)
    superpixels = torch.from_numpy(rng.integers(0, 5, (2, 6, 7)))
    clusters = torch.from_numpy(rng.integers(0, 3, (2, 6, 7)))
    clusters[1, 0, :3] = -1  # pixels left out
    emb = F.normalize(torch.rand(2, 6, 7, 4, dtype=torch.float64), dim=-1)
    segments = clustering.build_segments(emb, clusters, superpixels)
    stats = clustering.segment_statistics(segments, superpixels)
    kept = clusters.numpy() >= 0
    pairs = {
        (b, int(c), int(s))
        for b in range(2)
        for c, s, k in zip(
            clusters[b].ravel(), superpixels[b].ravel(), kept[b].ravel(), strict=True
        )
        if k
    }
    sps = {
        (b, int(s))
        for b in range(2)
        for s, k in zip(superpixels[b].ravel(), kept[b].ravel(), strict=True)
        if k
    }
    assert stats["segments_per_image"] == len(pairs) / 2
    assert stats["pixels_per_segment"] == kept.sum() / len(pairs)
    assert stats["superpixels_per_image"] == len(sps) / 2
    assert stats["pixels_per_superpixel"] == kept.sum() / len(sps)
