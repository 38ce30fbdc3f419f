import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spml_lab.prediction import pseudo_labels


def two_groups(seed):
    """Pixels of two groups with identical embeddings inside a group, orthogonal across."""
    g = torch.Generator().manual_seed(seed)
    group = torch.randint(0, 2, (2, 3, 5), generator=g)  # (B, h, w)
    group[:, 0, 0], group[:, 0, 1] = 0, 1  # both groups present in each image
    emb = torch.eye(4)[group + 2 * torch.arange(2)[:, None, None]]  # (B, h, w, D)
    probs = torch.distributions.Dirichlet(torch.ones(3)).sample((2, 3, 5)).permute(0, 3, 1, 2)
    return group, emb, probs


@pytest.mark.parametrize("threshold", [0.5, None])
def test_random_walk_averages_within_groups_not_across(threshold):
    torch.manual_seed(0)
    group, emb, probs = two_groups(0)
    got = pseudo_labels.random_walk(probs, emb, steps=3, threshold=threshold)
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
        e = F.normalize(e.reshape(-1, e.shape[-1]), dim=1).numpy().T  # (D, h w)
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
    emb = torch.randn(2, 4, 5, 3, generator=g)  # (B, h, w, D), not unit: the walk normalises
    probs = torch.rand(2, 4, 4, 5, generator=g)
    got = pseudo_labels.random_walk(
        probs, emb, steps=5, sharpness=2.0, threshold=threshold, chunk_size=chunk_size
    )
    want = brute_force_walk(probs, emb, 5, 2.0, threshold)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_random_walk_zero_steps_is_identity_and_rows_stay_distributions():
    g = torch.Generator().manual_seed(2)
    emb = torch.randn(1, 5, 5, 6, generator=g)
    probs = torch.softmax(torch.randn(1, 3, 5, 5, generator=g), dim=1)
    torch.testing.assert_close(pseudo_labels.random_walk(probs, emb, steps=0), probs)
    walked = pseudo_labels.random_walk(probs, emb, steps=64, sharpness=0.1)
    torch.testing.assert_close(walked.sum(dim=1), torch.ones(1, 5, 5))
    assert walked.min() >= 0


def test_random_walk_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="same batch size and spatial size"):
        pseudo_labels.random_walk(torch.rand(1, 2, 4, 4), torch.rand(1, 4, 5, 3))
    with pytest.raises(ValueError, match="probs"):
        pseudo_labels.random_walk(torch.rand(2, 4, 4), torch.rand(1, 4, 4, 3))
