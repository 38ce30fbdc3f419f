import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spml_lab import clustering, inference


def angles_to_vectors(degrees):
    radians = torch.deg2rad(torch.as_tensor(degrees, dtype=torch.float64)).float()
    return torch.stack([torch.cos(radians), torch.sin(radians)], dim=-1)


def halves(left_degrees, right_degrees, height=4, width=6):
    """(1, 2, H, W) unit embeddings: left half at one angle, right half at another."""
    emb = torch.empty(1, height, width, 2)
    emb[:, :, : width // 2] = angles_to_vectors(left_degrees)
    emb[:, :, width // 2 :] = angles_to_vectors(right_degrees)
    return emb.permute(0, 3, 1, 2)


# ---------------------------------------------------------------- restrict_to_tags


def test_restrict_to_tags_zeroes_absent_classes_and_renormalises():
    logits = torch.log(torch.tensor([1.0, 2.0, 3.0, 4.0])).view(1, 4, 1, 1)
    tags = torch.tensor([[False, False, True, True]])  # background 0 allowed anyway
    got = inference.restrict_to_tags(logits, tags)[0, :, 0, 0]
    # softmax of log(w) over allowed classes {0, 2, 3} = w / (1 + 3 + 4)
    torch.testing.assert_close(got, torch.tensor([1 / 8, 0.0, 3 / 8, 4 / 8]))


def test_restrict_to_tags_all_classes_is_plain_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, 4, generator=g)
    got = inference.restrict_to_tags(logits, torch.ones(2, 5, dtype=torch.bool))
    torch.testing.assert_close(got, torch.softmax(logits, dim=1))


def test_restrict_to_tags_per_image_and_without_background():
    logits = torch.zeros(2, 3, 1, 1)
    tags = torch.tensor([[False, True, False], [False, False, True]])
    got = inference.restrict_to_tags(logits, tags, background=None)[:, :, 0, 0]
    torch.testing.assert_close(got, tags.float())


def test_restrict_to_tags_scale_to_max_divides_by_each_class_peak():
    logits = torch.log(torch.tensor([[0.8, 0.6], [0.2, 0.4]])).view(1, 2, 1, 2)
    got = inference.restrict_to_tags(logits, torch.ones(1, 2, dtype=torch.bool), scale_to_max=True)
    want = torch.tensor([[0.8 / 0.8, 0.6 / 0.8], [0.2 / 0.4, 0.4 / 0.4]]).view(1, 2, 1, 2)
    torch.testing.assert_close(got, want)


def test_restrict_to_tags_rejects_mismatched_tags():
    with pytest.raises(ValueError, match="tags"):
        inference.restrict_to_tags(torch.zeros(1, 3, 2, 2), torch.ones(1, 4, dtype=torch.bool))


# ---------------------------------------------------------------- random_walk


def two_groups(seed):
    """Pixels of two groups with identical embeddings inside a group, orthogonal across."""
    g = torch.Generator().manual_seed(seed)
    group = torch.randint(0, 2, (2, 3, 5), generator=g)  # (B, h, w)
    group[:, 0, 0], group[:, 0, 1] = 0, 1  # both groups present in each image
    emb = torch.eye(4)[group + 2 * torch.arange(2)[:, None, None]].permute(0, 3, 1, 2)
    probs = torch.distributions.Dirichlet(torch.ones(3)).sample((2, 3, 5)).permute(0, 3, 1, 2)
    return group, emb, probs


@pytest.mark.parametrize("threshold", [0.5, None])
def test_random_walk_averages_within_groups_not_across(threshold):
    torch.manual_seed(0)
    group, emb, probs = two_groups(0)
    got = inference.random_walk(probs, emb, steps=3, threshold=threshold)
    for b in range(2):
        for k in range(2):
            inside = group[b] == k
            mean = probs[b][:, inside].mean(dim=1)  # (C,)
            want = mean[:, None].expand(-1, int(inside.sum()))
            torch.testing.assert_close(got[b][:, inside], want)
    torch.testing.assert_close(got.sum(dim=1), torch.ones(2, 3, 5))


def brute_force_walk(probs, emb, steps, sharpness, threshold):
    """Dense float64 reference: T = A / column sums, walked = P T^steps, image by image."""
    out = []
    for p, e in zip(probs.double(), emb.double(), strict=True):
        e = F.normalize(e.reshape(e.shape[0], -1), dim=0).numpy()
        cosine = e.T @ e
        affinity = np.exp(sharpness * (cosine - 1))
        if threshold is not None:
            affinity = affinity * (cosine >= threshold)
        transition = affinity / affinity.sum(axis=0, keepdims=True)
        walked = p.reshape(p.shape[0], -1).numpy() @ np.linalg.matrix_power(transition, steps)
        out.append(walked.reshape(p.shape))
    return torch.from_numpy(np.stack(out)).float()


@pytest.mark.parametrize("chunk_size", [None, 7, 1])
@pytest.mark.parametrize("threshold", [None, 0.3])
def test_random_walk_matches_dense_matrix_power(chunk_size, threshold):
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(2, 3, 4, 5, generator=g)  # not unit: random_walk normalises
    probs = torch.rand(2, 4, 4, 5, generator=g)
    got = inference.random_walk(
        probs, emb, steps=5, scale=0.5, power=4, threshold=threshold, chunk_size=chunk_size
    )
    want = brute_force_walk(probs, emb, 5, 2.0, threshold)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_random_walk_zero_steps_is_identity_and_rows_stay_distributions():
    g = torch.Generator().manual_seed(2)
    emb = torch.randn(1, 6, 5, 5, generator=g)
    probs = torch.softmax(torch.randn(1, 3, 5, 5, generator=g), dim=1)
    torch.testing.assert_close(inference.random_walk(probs, emb, steps=0), probs)
    walked = inference.random_walk(probs, emb, steps=64, scale=0.1, power=1)
    torch.testing.assert_close(walked.sum(dim=1), torch.ones(1, 5, 5))
    assert walked.min() >= 0


def test_random_walk_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="same batch size and spatial size"):
        inference.random_walk(torch.rand(1, 2, 4, 4), torch.rand(1, 3, 4, 5))
    with pytest.raises(ValueError, match="probs"):
        inference.random_walk(torch.rand(2, 4, 4), torch.rand(1, 3, 4, 4))


# ---------------------------------------------------------------- prototype bank + kNN


def hand_bank():
    angles = [10, -20, 30, 80, 100, 120, 200]
    labels = [1, 2, 2, 1, 3, 3, 0]
    return inference.PrototypeBank(angles_to_vectors(angles), torch.tensor(labels))


def test_knn_k3_majority_by_hand():
    # segment at 0 deg: nearest 10 (1), -20 (2), 30 (2) -> 2 wins 2:1
    # segment at 90 deg: nearest 80 (1), 100 (3), 120 (3) -> 3 wins 2:1
    labels, votes = inference.knn_predict(
        halves(0, 90), hand_bank(), num_classes=4, k=3, grid=(1, 2)
    )
    want = torch.tensor([2, 2, 2, 3, 3, 3]).expand(1, 4, 6)
    assert torch.equal(labels, want)
    torch.testing.assert_close(votes[0, :, 0, 0], torch.tensor([0, 1 / 3, 2 / 3, 0]))
    torch.testing.assert_close(votes[0, :, 0, 5], torch.tensor([0, 1 / 3, 0, 2 / 3]))


def test_knn_tie_goes_to_the_larger_summed_similarity():
    # segment at 90 deg, k=2: 80 (label 1) and 100 (label 3) tie 1:1 on votes and on
    # similarity; move 100 to 95 so label 3 is closer and must win (lowest id would be 1)
    bank = inference.PrototypeBank(angles_to_vectors([80, 95, 200]), torch.tensor([1, 3, 0]))
    labels, votes = inference.knn_predict(halves(90, 90), bank, num_classes=4, k=2, grid=(1, 1))
    assert torch.all(labels == 3)
    torch.testing.assert_close(votes[0, :, 0, 0], torch.tensor([0, 0.5, 0, 0.5]))


def test_knn_k_larger_than_bank_uses_the_whole_bank():
    bank = inference.PrototypeBank(angles_to_vectors([0, 5, 90]), torch.tensor([1, 1, 2]))
    labels, votes = inference.knn_predict(halves(90, 90), bank, num_classes=3, k=20, grid=(1, 1))
    assert torch.all(labels == 1)  # 2 of the 3 bank prototypes say 1, however far
    torch.testing.assert_close(votes[0, :, 0, 0], torch.tensor([0, 2 / 3, 1 / 3]))


def brute_force_knn(segment_prototypes, bank, k, num_classes):
    """Python loops: sort by similarity, count votes, break ties by summed similarity."""
    out = []
    for query in segment_prototypes.tolist():
        sims = [sum(a * b for a, b in zip(query, p, strict=True)) for p in bank.prototypes.tolist()]
        order = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        count, summed = [0] * num_classes, [0.0] * num_classes
        for i in order:
            count[int(bank.labels[i])] += 1
            summed[int(bank.labels[i])] += sims[i]
        out.append(max(range(num_classes), key=lambda c: (count[c], summed[c])))
    return torch.tensor(out)


def random_embeddings(seed, shape=(3, 6, 10, 12)):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=1)


def random_bank(seed, size=40, dim=6, num_classes=5):
    g = torch.Generator().manual_seed(seed)
    prototypes = F.normalize(torch.randn(size, dim, generator=g), dim=1)
    return inference.PrototypeBank(prototypes, torch.randint(0, num_classes, (size,), generator=g))


def test_knn_matches_brute_force_on_random_segments():
    emb, bank = random_embeddings(3), random_bank(4)
    labels, votes = inference.knn_predict(emb, bank, num_classes=5, k=5, grid=(3, 3), chunk_size=4)
    segments = clustering.segment_batch(emb.permute(0, 2, 3, 1), grid=(3, 3))
    want = brute_force_knn(segments.prototypes, bank, 5, 5)[segments.segment_ids]
    assert torch.equal(labels, want)
    torch.testing.assert_close(votes.sum(dim=1), torch.ones(3, 10, 12))
    # every pixel's label got the most votes (ties aside)
    assert torch.all(votes.gather(1, labels[:, None]) == votes.amax(dim=1, keepdim=True))


def test_knn_batched_equals_per_image():
    emb, bank = random_embeddings(5), random_bank(6)
    labels, votes = inference.knn_predict(emb, bank, num_classes=5, k=7, grid=(2, 3))
    for b in range(emb.shape[0]):
        one_labels, one_votes = inference.knn_predict(
            emb[b : b + 1], bank, num_classes=5, k=7, grid=(2, 3)
        )
        assert torch.equal(one_labels[0], labels[b])
        torch.testing.assert_close(one_votes[0], votes[b])


def test_knn_rejects_bad_banks():
    emb = halves(0, 90)
    with pytest.raises(ValueError, match="empty"):
        empty = inference.PrototypeBank(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
        inference.knn_predict(emb, empty, num_classes=4)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        inference.knn_predict(emb, hand_bank(), num_classes=3)
    with pytest.raises(ValueError, match="dimension"):
        bank3 = inference.PrototypeBank(torch.eye(3), torch.zeros(3, dtype=torch.long))
        inference.knn_predict(emb, bank3, num_classes=3)


def test_build_prototype_bank_keeps_labelled_segments_only():
    emb = halves(0, 90)
    labels = torch.full((1, 4, 6), 255)
    labels[0, 0, 0], labels[0, 1, 1] = 2, 2  # two pixels of class 2 on the left
    labels[0, 3, 4] = 1  # one pixel of class 1 on the right
    bank = inference.build_prototype_bank(emb, labels, grid=(1, 2))
    assert bank.labels.tolist() == [2, 1]
    torch.testing.assert_close(bank.prototypes, angles_to_vectors([0, 90]))


def test_build_prototype_bank_splits_a_cluster_by_label():
    # one k-means cluster holding pixels of two classes gives two prototypes
    g = torch.Generator().manual_seed(7)
    emb = F.normalize(torch.tensor([1.0, 0.0]) + 0.1 * torch.randn(1, 3, 4, 2, generator=g), dim=-1)
    labels = torch.tensor([[[0, 0, 255, 255], [255, 255, 255, 255], [255, 255, 3, 3]]])
    bank = inference.build_prototype_bank(emb.permute(0, 3, 1, 2), labels, grid=(1, 1))
    assert bank.labels.tolist() == [0, 3]
    want = torch.stack([emb[0, 0, :2].mean(0), emb[0, 2, 2:].mean(0)])
    torch.testing.assert_close(bank.prototypes, F.normalize(want, dim=1))


def test_bank_from_train_images_predicts_their_classes():
    # train and test images share the two half-plane classes: retrieval must recover them
    train = torch.cat([halves(0, 90), halves(5, 95)])
    labels = torch.full((2, 4, 6), 255)
    labels[:, :, :3], labels[:, :, 3:] = 1, 2
    labels[:, 1:3] = 255  # only a few labelled rows
    banks = [inference.build_prototype_bank(train[i : i + 1], labels[i : i + 1]) for i in range(2)]
    bank = inference.PrototypeBank.concat(banks)
    assert len(bank) == sum(len(b) for b in banks) and set(bank.labels.tolist()) == {1, 2}
    got, _ = inference.knn_predict(halves(-3, 88), bank, num_classes=3, k=3, grid=(1, 2))
    assert torch.equal(got[0], labels[0, 0].expand(4, 6))


def test_prototype_bank_validates_and_concat_needs_banks():
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        inference.PrototypeBank(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one"):
        inference.PrototypeBank.concat([])


# ---------------------------------------------------------------- flips and resizing


def test_flip_average_of_an_equivariant_fn_is_the_fn():
    g = torch.Generator().manual_seed(8)
    images = torch.rand(2, 3, 5, 7, generator=g)
    weight = torch.rand(4, 3, 1, 1, generator=g)

    def pointwise(x):  # 1x1 convolution: commutes with flips
        return torch.softmax(F.conv2d(x, weight), dim=1)

    torch.testing.assert_close(inference.flip_average(pointwise, images), pointwise(images))


def test_flip_average_symmetrises_a_non_equivariant_fn():
    images = torch.arange(4.0).view(1, 1, 1, 4)
    calls = []

    def left_ramp(x):  # output depends on the column index, not on the image: not equivariant
        calls.append(x.shape[0])
        return torch.arange(4.0).expand(x.shape[0], 1, 1, 4)

    got = inference.flip_average(left_ramp, images)
    torch.testing.assert_close(got, torch.full((1, 1, 1, 4), 1.5))  # (i + (3 - i)) / 2
    assert calls == [2]  # one batched call for both views


def test_upsample_probs_keeps_distributions_and_matches_interpolate():
    g = torch.Generator().manual_seed(9)
    probs = torch.softmax(torch.randn(2, 3, 4, 5, generator=g), dim=1)
    got = inference.upsample_probs(probs, (8, 10))
    assert got.shape == (2, 3, 8, 10)
    torch.testing.assert_close(got.sum(dim=1), torch.ones(2, 8, 10))
    # output pixel (1, 1) has its centre at input (0.25, 0.25) (align_corners=False)
    p = probs[0, 0]
    want = 0.5625 * p[0, 0] + 0.1875 * p[0, 1] + 0.1875 * p[1, 0] + 0.0625 * p[1, 1]
    assert math.isclose(float(got[0, 0, 1, 1]), float(want), rel_tol=1e-5)
    with pytest.raises(ValueError, match="size"):
        inference.upsample_probs(probs, (0, 3))
