import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spml_lab.classroom import lesson_batch, lessons
from spml_lab.constants import IGNORE_INDEX
from spml_lab.data import datasets
from spml_lab.method import clustering, losses, memory, relations
from spml_lab.nets import embedding_nets
from spml_lab.training.config import TrainConfig


def small_net(seed=0):
    torch.manual_seed(seed)
    return embedding_nets.SmallEmbeddingNet(embedding_dim=8, width=8)


def test_make_batch_brings_labels_and_superpixels_to_embedding_size():
    batch = lesson_batch.make_batch("objects", "scribbles", indices=(2, 5), net=small_net())
    data = datasets.embedded("objects", "train", "scribbles")
    assert batch.images.shape == (2, 96, 96, 3) and batch.images.dtype == np.uint8
    assert tuple(batch.embeddings.shape) == (2, 24, 24, 8) and batch.scale == 4
    # nearest sampling of every 4th row and column, as the label of a training step
    assert torch.equal(batch.labels[1], data[5]["label"][::4, ::4])
    assert torch.equal(batch.superpixels[0], data[2]["superpixel"][::4, ::4])
    assert torch.equal(batch.tags[1], data[5]["tags"])
    full = datasets.embedded("objects", "train", "full")[2]["label"].numpy()
    assert (batch.truth[0] == full).all()
    assert batch.names == [data[2]["name"], data[5]["name"]]
    # segments are pure in superpixel and label, and cover every pixel
    ids = batch.segments.segment_ids
    assert (ids >= 0).all()
    assert torch.equal(batch.segments.superpixels[ids], batch.superpixels)
    labels = batch.segments.labels[ids]
    assert torch.equal(labels, batch.labels)


def test_make_batch_default_net_is_seeded():
    a = lesson_batch.make_batch("parts", "points", indices=(0,), seed=3)
    b = lesson_batch.make_batch("parts", "points", indices=(0,), seed=3)
    assert torch.equal(a.embeddings, b.embeddings)
    assert torch.allclose(a.embeddings.norm(dim=-1), torch.ones(1, 32, 32))


def test_make_batch_with_tags_has_no_pixel_labels():
    batch = lesson_batch.make_batch("objects", "tags", indices=(0, 1), net=small_net())
    assert (batch.labels == IGNORE_INDEX).all() and batch.tags[:, 1:].any(1).all()


@pytest.mark.parametrize("indices", [(), (0, 10_000), (-1,)])
def test_make_batch_refuses_bad_indices(indices):
    with pytest.raises(ValueError, match="indices"):
        lesson_batch.make_batch(indices=indices, net=small_net())


def test_pixel_index_and_position_round_trip():
    batch = lesson_batch.make_batch(indices=(0, 1), net=small_net())
    for b, y, x in [(0, 0, 0), (1, 23, 23), (1, 5, 17)]:
        pixel = lesson_batch.pixel_index(batch, b, y, x)
        assert lesson_batch.pixel_position(batch, pixel) == (b, y, x)
        assert batch.embeddings.reshape(-1, 8)[pixel].equal(batch.embeddings[b, y, x])


@pytest.mark.parametrize("relation", relations.RELATIONS)
def test_pick_pixel_has_positives_other_than_its_own_segment(relation):
    # a fine grid: enough suitable segments in image 0 for different seeds to pick different
    # pixels (on training's 2 x 2 grid every seed picks the same for semantic annotation)
    batch = lesson_batch.make_batch("objects", "scribbles", net=small_net(), grid=(5, 5))
    picks = set()
    for seed in range(5):
        pixel = lesson_batch.pick_pixel(batch, relation, seed=seed)
        b, y, x = lesson_batch.pixel_position(batch, pixel)
        assert b == 0
        own = int(batch.segments.segment_ids[b, y, x])
        pos, neg = relations.positives_negatives(
            relation, pixel, batch.embeddings, batch.labels, batch.tags, batch.segments
        )
        assert pos.any() and neg.any() and not pos[own]
        picks.add(pixel)
    assert pixel == lesson_batch.pick_pixel(batch, relation, seed=4)  # same seed, same pixel
    assert len(picks) > 1


def test_pick_pixel_without_candidates_raises():
    batch = lesson_batch.make_batch("objects", "tags", indices=(0,), net=small_net())
    with pytest.raises(ValueError, match="no pixel"):
        lesson_batch.pick_pixel(batch, "cooccurrence")  # one image: nothing to contrast with


def brute_within_across(emb, partition):
    within, across = [], []
    for e, p in zip(emb, partition, strict=True):
        rows, ids = e.reshape(-1, e.shape[-1]), p.reshape(-1)
        same, diff = [], []
        for i, j in itertools.permutations(range(len(ids)), 2):
            if ids[i] in (-1, IGNORE_INDEX) or ids[j] in (-1, IGNORE_INDEX):
                continue
            (same if ids[i] == ids[j] else diff).append(float(rows[i] @ rows[j]))
        within.append(np.mean(same))
        across.append(np.mean(diff))
    return np.mean(within), np.mean(across)


def test_similarity_within_across_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(2, 3, 4, 5, generator=gen), dim=-1)
    partition = torch.randint(0, 3, (2, 3, 4), generator=gen)
    partition[0, 0, 0], partition[1, 2, 3] = IGNORE_INDEX, -1  # left out
    got = lesson_batch.similarity_within_across(emb, partition)
    assert np.allclose(got, brute_within_across(emb, partition))


def test_segment_weights_give_the_pixel_loss():
    batch = lesson_batch.make_batch("objects", "scribbles", net=small_net(1))
    pixel = lesson_batch.pick_pixel(batch, "semantic_annotation")
    pos, neg = relations.positives_negatives(
        "semantic_annotation", pixel, batch.embeddings, batch.labels, batch.tags, batch.segments
    )
    weights = lesson_batch.segment_weights(batch, pixel, "semantic_annotation", pos, neg, 6.0)
    assert torch.isclose(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert (weights[~(pos | neg)] == 0).all()
    per_pixel = losses.pixel_segment_loss(
        batch.embeddings.reshape(-1, 8),
        batch.labels.reshape(-1),
        batch.segments.segment_ids.reshape(-1),
        batch.segments.prototypes,
        batch.segments.labels,
        6.0,
        reduction="none",
        ignore_index=IGNORE_INDEX,
    )
    assert torch.isclose(-weights[pos].sum().log(), per_pixel[pixel].double(), atol=1e-5)


def test_upsample_gives_blocks_at_image_size():
    batch = lesson_batch.make_batch(indices=(0,), net=small_net())
    up = batch.upsample(batch.labels)
    assert up.shape == (1, 96, 96)
    assert (up[:, ::4, ::4] == batch.labels.numpy()).all() and (
        up[:, 3::4, 3::4] == up[:, ::4, ::4]
    ).all()


def test_pick_pixel_respects_where():
    batch = lesson_batch.make_batch("objects", "scribbles", net=small_net())
    objects = (batch.labels > 0) & (batch.labels != IGNORE_INDEX)
    for seed in range(3):
        pixel = lesson_batch.pick_pixel(batch, "semantic_annotation", seed=seed, where=objects)
        assert objects.reshape(-1)[pixel]
    unlabelled = batch.labels == IGNORE_INDEX
    pixel = lesson_batch.pick_pixel(batch, "feature_affinity", where=unlabelled)
    assert unlabelled.reshape(-1)[pixel]


def test_segment_weights_with_memory_cover_the_memory_too():
    net = small_net(2)
    batch = lesson_batch.make_batch("objects", "scribbles", net=net)
    earlier = lesson_batch.make_batch("objects", "scribbles", indices=(4, 5), net=net)
    bank = memory.PrototypeMemory(1)
    bank.push(earlier.segments)
    objects = (batch.labels > 0) & (batch.labels != IGNORE_INDEX)
    pixel = lesson_batch.pick_pixel(batch, "semantic_annotation", where=objects)
    pos, neg = relations.positives_negatives(
        "semantic_annotation", pixel, batch.embeddings, batch.labels, batch.tags,
        batch.segments, bank,
    )  # fmt: skip
    weights = lesson_batch.segment_weights(batch, pixel, "semantic_annotation", pos, neg, 6.0, bank)
    assert len(weights) == len(pos) > batch.segments.num_segments
    assert torch.isclose(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert (weights[batch.segments.num_segments :] > 0).any()
    only_batch = lesson_batch.segment_weights(batch, pixel, "semantic_annotation", pos, neg, 6.0)
    assert len(only_batch) == batch.segments.num_segments


def test_nearest_labels_matches_brute_force():
    batch = lesson_batch.make_batch("objects", "tags", indices=(0, 1), net=small_net(3))
    reference = lesson_batch.make_batch("objects", "scribbles", indices=(2, 3), net=small_net(3))
    protos, labels = reference.segments.prototypes, reference.segments.labels
    got = lesson_batch.nearest_labels(batch, protos, labels)
    labelled = torch.nonzero(labels != IGNORE_INDEX)[:, 0]
    for s in range(0, batch.segments.num_segments, 37):
        best = max(labelled.tolist(), key=lambda r: float(batch.segments.prototypes[s] @ protos[r]))
        assert (got[batch.segments.segment_ids == s] == labels[best]).all()
    none = lesson_batch.nearest_labels(batch, protos, torch.full_like(labels, IGNORE_INDEX))
    assert (none == IGNORE_INDEX).all()


def per_pixel_loss(relation, batch, kappa):
    """The loss of every pixel of `batch` under `relation`, on the features training compares.

    Written out with `losses.pixel_segment_loss` (reduction "none"), independently of the
    relation functions: low-level similarity compares ``[v, location]`` (the training's
    location weight) with prototypes of the same features, within each image.
    """
    emb, seg = batch.embeddings, batch.segments
    num_images, height, width, dim = emb.shape
    ids = seg.segment_ids.reshape(-1)
    if relation == "low_level":
        locations = clustering.location_features(height, width)
        weight = TrainConfig().low_level_location_weight
        rows = clustering.with_location(emb, locations, weight=weight).reshape(-1, dim + 2)
        protos = clustering.segment_prototypes(rows, ids, seg.num_segments)
        groups = torch.arange(num_images).repeat_interleave(height * width)
        return losses.pixel_segment_loss(
            rows, seg.superpixels[ids], ids, protos, seg.superpixels, kappa, reduction="none",
            ignore_index=None, pixel_groups=groups, prototype_groups=seg.image_ids,
        )  # fmt: skip
    if relation == "semantic_annotation":
        labels, proto_labels = batch.labels.reshape(-1), seg.labels
    else:  # cooccurrence: image tag sets without background
        labels = batch.tags[:, 1:].repeat_interleave(height * width, 0)
        proto_labels = batch.tags[seg.image_ids][:, 1:]
    ignore = IGNORE_INDEX if relation == "semantic_annotation" else None
    return losses.pixel_segment_loss(
        emb.reshape(-1, dim), labels, ids, seg.prototypes, proto_labels, kappa,
        reduction="none", ignore_index=ignore,
    )  # fmt: skip


@pytest.mark.parametrize("relation", ["low_level", "semantic_annotation", "cooccurrence"])
def test_minus_log_of_the_positives_share_is_the_pixels_loss(relation):
    # the lesson's statement: -log of the positives' share of a pixel's softmax is its loss
    batch = lesson_batch.make_batch("objects", "scribbles", indices=(0, 2), net=small_net(1))
    kappa = 16.0
    per_pixel = per_pixel_loss(relation, batch, kappa).double()
    for seed in range(2):
        pixel = lesson_batch.pick_pixel(batch, relation, seed=seed, image=None)
        pos, neg = relations.positives_negatives(
            relation, pixel, batch.embeddings, batch.labels, batch.tags, batch.segments
        )
        weights = lesson_batch.segment_weights(batch, pixel, relation, pos, neg, kappa)
        assert float(-weights[pos].sum().log()) == pytest.approx(float(per_pixel[pixel]), abs=1e-5)
        sweep = lessons.kappa_sweep(batch, pixel, relation, [kappa], pos, neg)
        assert -math.log(sweep.shares[0]) == pytest.approx(float(per_pixel[pixel]), abs=1e-5)
