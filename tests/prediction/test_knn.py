import pytest
import torch
import torch.nn.functional as F

from spml_lab.constants import IGNORE_INDEX
from spml_lab.method import clustering
from spml_lab.prediction import knn


def angles_to_vectors(degrees):
    radians = torch.deg2rad(torch.as_tensor(degrees, dtype=torch.float64)).float()
    return torch.stack([torch.cos(radians), torch.sin(radians)], dim=-1)


def halves(left_degrees, right_degrees, height=4, width=6):
    """(1, H, W, 2) unit embeddings: left half at one angle, right half at another."""
    emb = torch.empty(1, height, width, 2)
    emb[:, :, : width // 2] = angles_to_vectors(left_degrees)
    emb[:, :, width // 2 :] = angles_to_vectors(right_degrees)
    return emb


def hand_bank():
    angles = [10, -20, 30, 80, 100, 120, 200]
    labels = [1, 2, 2, 1, 3, 3, 0]
    return knn.PrototypeBank(angles_to_vectors(angles), torch.tensor(labels))


def test_knn_k3_majority_by_hand():
    # segment at 0 deg: nearest 10 (1), -20 (2), 30 (2) -> 2 wins 2:1
    # segment at 90 deg: nearest 80 (1), 100 (3), 120 (3) -> 3 wins 2:1
    labels, votes = knn.knn_predict(halves(0, 90), hand_bank(), num_classes=4, k=3, grid=(1, 2))
    want = torch.tensor([2, 2, 2, 3, 3, 3]).expand(1, 4, 6)
    assert torch.equal(labels, want)
    torch.testing.assert_close(votes[0, :, 0, 0], torch.tensor([0, 1 / 3, 2 / 3, 0]))
    torch.testing.assert_close(votes[0, :, 0, 5], torch.tensor([0, 1 / 3, 0, 2 / 3]))


def test_knn_tie_goes_to_the_larger_summed_similarity():
    # segment at 90 deg, k=2: 80 (label 1) and 100 (label 3) tie 1:1 on votes and on
    # similarity; move 100 to 95 so label 3 is closer and must win (lowest id would be 1)
    bank = knn.PrototypeBank(angles_to_vectors([80, 95, 200]), torch.tensor([1, 3, 0]))
    labels, votes = knn.knn_predict(halves(90, 90), bank, num_classes=4, k=2, grid=(1, 1))
    assert torch.all(labels == 3)
    torch.testing.assert_close(votes[0, :, 0, 0], torch.tensor([0, 0.5, 0, 0.5]))


def test_knn_k_larger_than_bank_uses_the_whole_bank():
    bank = knn.PrototypeBank(angles_to_vectors([0, 5, 90]), torch.tensor([1, 1, 2]))
    labels, votes = knn.knn_predict(halves(90, 90), bank, num_classes=3, k=20, grid=(1, 1))
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


def random_embeddings(seed, shape=(3, 10, 12, 6)):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def random_bank(seed, size=40, dim=6, num_classes=5):
    g = torch.Generator().manual_seed(seed)
    prototypes = F.normalize(torch.randn(size, dim, generator=g), dim=1)
    return knn.PrototypeBank(prototypes, torch.randint(0, num_classes, (size,), generator=g))


def test_knn_matches_brute_force_on_random_segments():
    emb, bank = random_embeddings(3), random_bank(4)
    labels, votes = knn.knn_predict(emb, bank, num_classes=5, k=5, grid=(3, 3), chunk_size=4)
    segments = clustering.segment_batch(emb, grid=(3, 3))
    want = brute_force_knn(segments.prototypes, bank, 5, 5)[segments.segment_ids]
    assert torch.equal(labels, want)
    torch.testing.assert_close(votes.sum(dim=1), torch.ones(3, 10, 12))
    # every pixel's label got the most votes (ties aside)
    assert torch.all(votes.gather(1, labels[:, None]) == votes.amax(dim=1, keepdim=True))


def test_knn_batched_equals_per_image():
    emb, bank = random_embeddings(5), random_bank(6)
    labels, votes = knn.knn_predict(emb, bank, num_classes=5, k=7, grid=(2, 3))
    for b in range(emb.shape[0]):
        one_labels, one_votes = knn.knn_predict(
            emb[b : b + 1], bank, num_classes=5, k=7, grid=(2, 3)
        )
        assert torch.equal(one_labels[0], labels[b])
        torch.testing.assert_close(one_votes[0], votes[b])


def test_knn_rejects_bad_banks():
    emb = halves(0, 90)
    with pytest.raises(ValueError, match="empty"):
        empty = knn.PrototypeBank(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
        knn.knn_predict(emb, empty, num_classes=4)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        knn.knn_predict(emb, hand_bank(), num_classes=3)
    with pytest.raises(ValueError, match="dimension"):
        bank3 = knn.PrototypeBank(torch.eye(3), torch.zeros(3, dtype=torch.long))
        knn.knn_predict(emb, bank3, num_classes=3)


def test_build_prototype_bank_keeps_labelled_segments_only():
    emb = halves(0, 90)
    labels = torch.full((1, 4, 6), IGNORE_INDEX)
    labels[0, 0, 0], labels[0, 1, 1] = 2, 2  # two pixels of class 2 on the left
    labels[0, 3, 4] = 1  # one pixel of class 1 on the right
    bank = knn.build_prototype_bank(emb, labels, grid=(1, 2))
    assert bank.labels.tolist() == [2, 1]
    torch.testing.assert_close(bank.prototypes, angles_to_vectors([0, 90]))


def test_build_prototype_bank_splits_a_cluster_by_label():
    # one k-means cluster holding pixels of two classes gives two prototypes
    g = torch.Generator().manual_seed(7)
    emb = F.normalize(torch.tensor([1.0, 0.0]) + 0.1 * torch.randn(1, 3, 4, 2, generator=g), dim=-1)
    labels = torch.tensor(
        [
            [
                [0, 0, IGNORE_INDEX, IGNORE_INDEX],
                [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX],
                [IGNORE_INDEX, IGNORE_INDEX, 3, 3],
            ]
        ]
    )
    bank = knn.build_prototype_bank(emb, labels, grid=(1, 1))
    assert bank.labels.tolist() == [0, 3]
    want = torch.stack([emb[0, 0, :2].mean(0), emb[0, 2, 2:].mean(0)])
    torch.testing.assert_close(bank.prototypes, F.normalize(want, dim=1))


def test_bank_from_train_images_predicts_their_classes():
    # train and test images share the two half-plane classes: retrieval must recover them
    train = torch.cat([halves(0, 90), halves(5, 95)])
    labels = torch.full((2, 4, 6), IGNORE_INDEX)
    labels[:, :, :3], labels[:, :, 3:] = 1, 2
    labels[:, 1:3] = IGNORE_INDEX  # only a few labelled rows
    banks = [knn.build_prototype_bank(train[i : i + 1], labels[i : i + 1]) for i in range(2)]
    bank = knn.PrototypeBank.concat(banks)
    assert len(bank) == sum(len(b) for b in banks) and set(bank.labels.tolist()) == {1, 2}
    got, _ = knn.knn_predict(halves(-3, 88), bank, num_classes=3, k=3, grid=(1, 2))
    assert torch.equal(got[0], labels[0, 0].expand(4, 6))


def test_prototype_bank_validates_and_concat_needs_banks():
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        knn.PrototypeBank(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one"):
        knn.PrototypeBank.concat([])


# ---------------------------------------------------------------- flips and resizing
