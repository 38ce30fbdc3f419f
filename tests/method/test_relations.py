import contextlib
import math
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F

from spml_lab import constants
from spml_lab.constants import IGNORE_INDEX
from spml_lab.method import relations
from spml_lab.method.clustering import Segments, build_segments
from spml_lab.method.losses import pixel_segment_loss, relation_masks
from spml_lab.method.memory import MemoryBank, PrototypeMemory
from spml_lab.method.relations import (
    PAPER_SETTINGS,
    RELATIONS,
    RelationSetting,
    affinity_labels,
    feature_affinity,
    low_level_similarity,
    positives_negatives,
    semantic_annotation,
    semantic_cooccurrence,
    spml_loss,
)

# ---------------------------------------------------------------------------------------------
# A hand-built batch: 2 images of 4 pixels (2 x 2), 3 segments each, and a memory of 3 segments.
#
#   segment  pixels  image  superpixel  label  prototype   affinity label
#   s0       0, 1    0      0           1      x           1
#   s1       2       0      0           -      ~x (cos .98) 1  (borrowed from s0)
#   s2       3       0      1           0      y           0
#   s3       4, 5    1      0           2      x           2
#   s4       6       1      1           -      z           -  (nothing close in image 1)
#   s5       7       1      1           2      y           2
#   m0 (6)           -1                 1      x           1    tags {bg, 1}
#   m1 (7)           -2                 3      y           3    tags {bg, 3}
#   m2 (8)           -3                 -      z           -    tags {bg} only
#
# Image tags: image 0 {bg, 1}, image 1 {bg, 1, 2}; four classes (0 = background).
# ---------------------------------------------------------------------------------------------
X, Y, Z = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]
NEAR_X = [0.98, math.sqrt(1 - 0.98**2), 0.0]


def hand_batch(tags1=(True, True, True, False)):
    emb = torch.tensor([[X, X, NEAR_X, Y], [X, X, Z, Y]], dtype=torch.float64)  # (2, 4, 3)
    labels = torch.tensor([[1, 1, IGNORE_INDEX, 0], [2, 2, IGNORE_INDEX, 2]])
    tags = torch.tensor([[True, True, False, False], list(tags1)])
    segments = Segments(
        segment_ids=torch.tensor([[0, 0, 1, 2], [3, 3, 4, 5]]),
        prototypes=torch.tensor([X, NEAR_X, Y, X, Z, Y], dtype=torch.float64),
        labels=torch.tensor([1, IGNORE_INDEX, 0, 2, IGNORE_INDEX, 2]),
        image_ids=torch.tensor([0, 0, 0, 1, 1, 1]),
        superpixels=torch.tensor([0, 0, 1, 0, 1, 1]),
        clusters=torch.tensor([0, 1, 2, 0, 1, 2]),
        sizes=torch.tensor([2, 1, 1, 2, 1, 1]),
        tags=tags[torch.tensor([0, 0, 0, 1, 1, 1])],
    )
    return emb, labels, tags, segments


def hand_memory():
    return MemoryBank(
        prototypes=torch.tensor([X, Y, Z], dtype=torch.float64),
        labels=torch.tensor([1, 3, IGNORE_INDEX]),
        tags=torch.tensor([[1, 1, 0, 0], [1, 0, 0, 1], [1, 0, 0, 0]], dtype=torch.bool),
        image_ids=torch.tensor([-1, -2, -3]),
        affinity_labels=torch.tensor([1, 3, IGNORE_INDEX]),
    )


def index_set(mask):
    return set(torch.nonzero(mask).flatten().tolist())


def test_hand_batch_is_what_build_segments_makes():
    emb, labels, tags, hand = hand_batch()
    clusters = torch.tensor([[0, 0, 1, 2], [0, 0, 1, 2]])
    superpixels = torch.tensor([[0, 0, 0, 1], [0, 0, 1, 1]])
    built = build_segments(emb, clusters, superpixels, labels, tags=tags)
    for name in ("segment_ids", "labels", "image_ids", "superpixels", "sizes", "tags"):
        assert torch.equal(getattr(built, name), getattr(hand, name)), name
    torch.testing.assert_close(built.prototypes, hand.prototypes)


def test_affinity_labels_of_hand_batch():
    _, _, _, segments = hand_batch()
    assert affinity_labels(segments).tolist() == [1, 1, 0, 2, IGNORE_INDEX, 2]
    # s1 to s0 has cosine 0.98: a stricter threshold leaves s1 unlabelled
    strict = affinity_labels(segments, threshold=0.99)
    assert strict.tolist() == [1, IGNORE_INDEX, 0, 2, IGNORE_INDEX, 2]


# (relation, pixel) -> (positives, negatives), prototypes 0-5 = s0-s5, 6-8 = m0-m2
EXPECTED_WITH_MEMORY = {
    ("low_level", 0): ({1}, {2}),
    ("low_level", 2): ({0}, {2}),
    ("low_level", 3): ({2}, {0, 1}),  # alone in superpixel 1: own segment is the positive
    ("low_level", 6): ({5}, {3}),
    ("low_level", 7): ({4}, {3}),
    ("semantic_annotation", 0): ({6}, {2, 3, 5, 7}),
    ("semantic_annotation", 2): (set(), set()),  # unlabelled pixel
    ("semantic_annotation", 3): ({2}, {0, 3, 5, 6, 7}),  # only label-0 segment: its own
    ("semantic_annotation", 6): (set(), set()),
    ("semantic_annotation", 7): ({3}, {0, 2, 6, 7}),
    ("cooccurrence", 0): ({1, 2, 3, 4, 5, 6}, {7, 8}),
    ("cooccurrence", 2): ({0, 2, 3, 4, 5, 6}, {7, 8}),
    ("cooccurrence", 6): ({0, 1, 2, 3, 5, 6}, {7, 8}),
    ("feature_affinity", 0): ({1, 6}, {2, 3, 5, 7}),
    ("feature_affinity", 2): ({0, 6}, {2, 3, 5, 7}),  # borrowed label 1
    ("feature_affinity", 3): ({2}, {0, 1, 3, 5, 6, 7}),
    ("feature_affinity", 6): (set(), set()),  # segment without affinity label
    ("feature_affinity", 7): ({3}, {0, 1, 2, 6, 7}),
}


@pytest.mark.parametrize("key", sorted(EXPECTED_WITH_MEMORY))
def test_positives_negatives_by_hand_with_memory(key):
    relation, pixel = key
    emb, labels, tags, segments = hand_batch()
    pos, neg = positives_negatives(relation, pixel, emb, labels, tags, segments, hand_memory())
    assert pos.shape == neg.shape == (9,)
    assert (index_set(pos), index_set(neg)) == EXPECTED_WITH_MEMORY[key]


@pytest.mark.parametrize(
    "relation, pixel, expected",
    [
        ("semantic_annotation", 0, ({0}, {2, 3, 5})),  # memory gone: own segment is the positive
        ("semantic_annotation", 7, ({3}, {0, 2})),
        ("cooccurrence", 2, ({0, 2, 3, 4, 5}, set())),
        ("feature_affinity", 2, ({0}, {2, 3, 5})),
    ],
)
def test_positives_negatives_by_hand_without_memory(relation, pixel, expected):
    emb, labels, tags, segments = hand_batch()
    pos, neg = positives_negatives(relation, pixel, emb, labels, tags, segments)
    assert pos.shape == (6,)
    assert (index_set(pos), index_set(neg)) == expected


def test_background_only_image_leaves_cooccurrence():
    emb, labels, tags, segments = hand_batch(tags1=(True, False, False, False))
    memory = hand_memory()
    pos, neg = positives_negatives("cooccurrence", 6, emb, labels, tags, segments, memory)
    assert not pos.any() and not neg.any()
    # its segments (empty tag sets) become negatives for image 0's pixels
    pos, neg = positives_negatives("cooccurrence", 0, emb, labels, tags, segments, memory)
    assert (index_set(pos), index_set(neg)) == ({1, 2, 6}, {3, 4, 5, 7, 8})


def test_left_out_pixel_takes_part_in_nothing():
    emb, labels, tags, segments = hand_batch()
    segments.segment_ids = segments.segment_ids.clone()
    segments.segment_ids[1, 3] = -1  # pixel 7
    for relation in RELATIONS:
        pos, neg = positives_negatives(relation, 7, emb, labels, tags, segments, hand_memory())
        assert not pos.any() and not neg.any(), relation


def test_positives_negatives_bad_inputs():
    emb, labels, tags, segments = hand_batch()
    with pytest.raises(ValueError, match="unknown relation"):
        positives_negatives("colour", 0, emb, labels, tags, segments)
    with pytest.raises(ValueError, match="pixel must lie"):
        positives_negatives("low_level", 8, emb, labels, tags, segments)
    with pytest.raises(ValueError, match="needs tags"):
        positives_negatives("cooccurrence", 0, emb, labels, None, segments)


# ---------------------------------------------------------------------------------------------
# Brute force: every relation written from its definition, pixel by pixel, prototype by prototype
# ---------------------------------------------------------------------------------------------


def dot(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


def normalise(a):
    n = math.sqrt(dot(a, a))
    return [x / n for x in a]


def hand_affinity(entries, threshold):
    """Affinity label per entry (dicts with u, image, label) by the rule, in plain Python."""
    out = []
    for e in entries:
        if e["label"] is not None:
            out.append(e["label"])
            continue
        best, label = -2.0, None
        for f in entries:
            if f["image"] == e["image"] and f["label"] is not None:
                cos = dot(e["u"], f["u"])
                if cos > best:
                    best, label = cos, f["label"]
        out.append(label if best >= threshold else None)
    return out


def brute_force(relation, emb, seg_ids, superpixels, labels, tags, bank, kappa, threshold):
    """Mean loss of one relation; raw per-pixel data, loops only, float64."""
    num_images, num_pixels = seg_ids.shape
    emb = emb.reshape(num_images, num_pixels, -1).double().tolist()
    members = defaultdict(list)
    for b in range(num_images):
        for n in range(num_pixels):
            if seg_ids[b, n] >= 0:
                members[int(seg_ids[b, n])].append((b, n))
    protos = []
    for s in range(len(members)):
        (b0, n0) = members[s][0]
        total = [sum(emb[b][n][d] for b, n in members[s]) for d in range(len(emb[0][0]))]
        lab = int(labels[b0, n0])
        protos.append(
            {
                "u": normalise(total),
                "image": b0,
                "sp": int(superpixels[b0, n0]),
                "label": None if lab == IGNORE_INDEX else lab,
                "tags": {c for c in range(1, tags.shape[1]) if tags[b0, c]},
            }
        )
    for p, a in zip(protos, hand_affinity(protos, threshold), strict=True):
        p["aff"] = a
    if bank is not None and relation != "low_level":
        mem = [
            {
                "u": bank.prototypes[m].double().tolist(),
                "image": int(bank.image_ids[m]),
                "label": None if int(bank.labels[m]) == IGNORE_INDEX else int(bank.labels[m]),
                "tags": {c for c in range(1, bank.tags.shape[1]) if bank.tags[m, c]},
            }
            for m in range(len(bank.labels))
        ]
        for p, a in zip(mem, hand_affinity(mem, threshold), strict=True):
            p["aff"] = a
        want = [IGNORE_INDEX if a is None else a for a in (p["aff"] for p in mem)]
        assert bank.affinity_labels.tolist() == want  # what the memory stored at push time
        protos = protos + mem

    losses = []
    for b in range(num_images):
        for n in range(num_pixels):
            own = int(seg_ids[b, n])
            if own < 0:
                continue
            if relation == "low_level":
                key = int(superpixels[b, n])
                cand = [s for s, p in enumerate(protos) if p["image"] == b]
                same = {s for s in cand if protos[s]["sp"] == key}
            elif relation == "semantic_annotation":
                if int(labels[b, n]) == IGNORE_INDEX:
                    continue
                key = int(labels[b, n])
                cand = [s for s, p in enumerate(protos) if p["label"] is not None]
                same = {s for s in cand if protos[s]["label"] == key}
            elif relation == "cooccurrence":
                key = {c for c in range(1, tags.shape[1]) if tags[b, c]}
                if not key:
                    continue
                cand = list(range(len(protos)))
                same = {s for s in cand if protos[s]["tags"] & key}
            else:
                key = protos[own]["aff"]
                if key is None:
                    continue
                cand = [s for s, p in enumerate(protos) if p["aff"] is not None]
                same = {s for s in cand if protos[s]["aff"] == key}
            e = {s: math.exp(kappa * dot(emb[b][n], protos[s]["u"])) for s in cand + [own]}
            others = same - {own}
            pos = sum(e[s] for s in others) if others else e[own]
            neg = sum(e[s] for s in cand if s not in same)
            losses.append(-math.log(pos / (pos + neg)))
    return sum(losses) / max(len(losses), 1), len(losses)


def brute_force_low_level(emb, seg_ids, superpixels, kappa, location_weight):
    """The paper's VOC low-level loss by hand: per image, pixels and prototypes on
    ``normalise([v, w * (y, x)])`` with y, x in [-0.5, 0.5]; the mean over images of each
    image's mean over its kept pixels. Loops only, float64."""
    num_images, height, width, _ = emb.shape
    image_means, count = [], 0
    for b in range(num_images):
        feats, members = {}, defaultdict(list)
        for r in range(height):
            for c in range(width):
                y, x = r / (height - 1) - 0.5, c / (width - 1) - 0.5
                v = emb[b, r, c].double().tolist() + [location_weight * y, location_weight * x]
                feats[r, c] = normalise(v)
                if seg_ids[b, r, c] >= 0:
                    members[int(seg_ids[b, r, c])].append((r, c))
        protos = {
            s: (normalise([sum(feats[p][d] for p in pix) for d in range(len(feats[pix[0]]))]),
                int(superpixels[b, pix[0][0], pix[0][1]]))
            for s, pix in members.items()
        }  # fmt: skip
        losses = []
        for s_own, pix in members.items():
            for p in pix:
                key = protos[s_own][1]
                e = {s: math.exp(kappa * dot(feats[p], u)) for s, (u, _) in protos.items()}
                others = [s for s, (_, sp) in protos.items() if sp == key and s != s_own]
                pos = sum(e[s] for s in others) if others else e[s_own]
                neg = sum(e[s] for s, (_, sp) in protos.items() if sp != key)
                losses.append(-math.log(pos / (pos + neg)))
        if losses:
            image_means.append(sum(losses) / len(losses))
            count += len(losses)
    return sum(image_means) / len(image_means), count


@pytest.mark.parametrize("location_weight", [1.0, 0.5])
def test_low_level_on_embedding_and_location_matches_the_papers_definition(location_weight):
    emb, _, _, superpixels, segments = random_batch(0)
    got = low_level_similarity(emb, segments, concentration=4.0, location_weight=location_weight)
    want, count = brute_force_low_level(
        emb, segments.segment_ids, superpixels, 4.0, location_weight
    )
    assert count > 10
    assert got.item() == pytest.approx(want, rel=1e-9)
    plain = low_level_similarity(emb, segments, concentration=4.0, location_weight=0.0)
    assert abs(got.item() - plain.item()) > 1e-3  # the location features change the loss


def test_low_level_averages_per_image_means():
    """An image with few kept pixels weighs as much as a full one (the paper's mean of means)."""
    emb, _, _, superpixels, segments = random_batch(0)
    ids = segments.segment_ids.clone()
    ids[1, 1:] = -1  # image 1 keeps one row only
    kept = build_segments(emb, ids, superpixels)
    got = low_level_similarity(emb, kept, concentration=4.0)
    want, _ = brute_force_low_level(emb, kept.segment_ids, superpixels, 4.0, 1.0)
    assert got.item() == pytest.approx(want, rel=1e-9)
    pooled = []  # one mean over all kept pixels differs
    for b in range(2):
        one = build_segments(emb[b : b + 1], ids[b : b + 1], superpixels[b : b + 1])
        n = int((one.segment_ids >= 0).sum())
        pooled.append((low_level_similarity(emb[b : b + 1], one, concentration=4.0).item(), n))
    assert got.item() == pytest.approx((pooled[0][0] + pooled[1][0]) / 2, rel=1e-9)
    weighted = sum(m * n for m, n in pooled) / sum(n for _, n in pooled)
    assert abs(got.item() - weighted) > 1e-3


def test_low_level_gradient_matches_autograd_of_the_brute_force():
    emb, _, _, superpixels, segments = random_batch(1)
    leaf = emb.clone().requires_grad_(True)
    clusters = segments.segment_ids  # each segment its own cluster: same segments again
    seg = build_segments(leaf, clusters, superpixels)
    low_level_similarity(leaf, seg, concentration=4.0).backward()
    # dense autograd reference of the same definition
    ref = emb.clone().requires_grad_(True)
    height, width = ref.shape[1:3]
    y = torch.linspace(-0.5, 0.5, height, dtype=ref.dtype)
    x = torch.linspace(-0.5, 0.5, width, dtype=ref.dtype)
    loc = torch.stack(torch.meshgrid(y, x, indexing="ij"), -1).expand(2, -1, -1, -1)
    feats = F.normalize(torch.cat([ref, loc], -1), dim=-1)
    total = 0.0
    for b in range(2):
        ids, sp = seg.segment_ids[b].reshape(-1), superpixels[b].reshape(-1)
        f = feats[b].reshape(-1, feats.shape[-1])[ids >= 0]
        ids, sp = ids[ids >= 0], sp[seg.segment_ids[b].reshape(-1) >= 0]
        uniq, inv = torch.unique(ids, return_inverse=True)
        protos = F.normalize(torch.zeros(len(uniq), f.shape[1], dtype=f.dtype).index_add(0, inv, f))
        proto_sp = torch.zeros(len(uniq), dtype=torch.long).scatter(0, inv, sp)
        logits = 4.0 * f @ protos.T
        same = sp[:, None] == proto_sp[None, :]
        own = F.one_hot(inv, len(uniq)).bool()
        others = same & ~own
        pos_mask = torch.where(others.any(1, keepdim=True), others, own)
        pos = torch.logsumexp(logits.masked_fill(~pos_mask, -torch.inf), 1)
        every = torch.logsumexp(logits.masked_fill(~(pos_mask | ~same), -torch.inf), 1)
        total = total + (every - pos).mean() / 2
    total.backward()
    torch.testing.assert_close(leaf.grad, ref.grad, rtol=1e-8, atol=1e-10)


def test_low_level_with_location_needs_the_image_layout():
    emb, _, _, _, segments = random_batch(0)
    with pytest.raises(ValueError, match="location_weight=0"):
        low_level_similarity(emb.reshape(2, 36, -1), segments, concentration=4.0)


def random_batch(seed, num_images=2, size=6, dim=5, num_classes=4):
    """Embeddings clustered by a class map, sparse labels, odd superpixel ids, left-out pixels."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.zeros(num_images, size, size, dtype=torch.long)
    for b in range(num_images):  # two classes per image: left / right part, varying border
        cut = 2 + b
        classes[b, :, :cut], classes[b, :, cut:] = 1 + b, 2 + b
    classes[:, :2, :2] = 0  # a background corner
    centres = F.normalize(torch.randn(num_classes, dim, generator=g, dtype=torch.float64), dim=1)
    noise = 0.5 * torch.randn(num_images, size, size, dim, generator=g, dtype=torch.float64)
    emb = F.normalize(centres[classes] + noise, dim=-1)
    rows = torch.arange(size)
    blocks = (rows[:, None] // 3) * 2 + rows[None, :] // 3  # four 3x3 superpixels
    superpixels = torch.tensor([0, 7, 255, 3])[blocks].expand(num_images, -1, -1)
    clusters = ((rows[:, None] // 4) * 2 + rows[None, :] // 4).expand(num_images, -1, -1)
    clusters = clusters.clone()
    clusters[0, 5, 5] = clusters[1, 0, 3] = -1  # pixels left out
    labels = torch.where(torch.rand(classes.shape, generator=g) < 0.3, classes, IGNORE_INDEX)
    labels[1, :, :2] = IGNORE_INDEX  # class-0 pixels of image 1 unlabelled
    tags = torch.zeros(num_images, num_classes, dtype=torch.bool)
    tags[torch.arange(num_images)[:, None, None], classes] = True
    segments = build_segments(emb, clusters, superpixels, labels, tags=tags)
    return emb, labels, tags, superpixels, segments


def filled_memory(threshold, seeds=(11, 12, 13)):
    memory = PrototypeMemory(2, affinity_threshold=threshold)
    for seed in seeds:
        emb, _, tags, _, segments = random_batch(seed)
        if seed == seeds[-1]:
            tags = tags.clone()
            tags[1] = torch.tensor([True, False, False, False])  # background-only image
        memory.push(segments, tags=tags)
    return memory


THRESHOLD = 0.8  # low enough that some unlabelled segments borrow a label, some do not


@pytest.mark.parametrize("relation", RELATIONS)
@pytest.mark.parametrize("with_memory", [False, True])
def test_relation_losses_match_brute_force(relation, with_memory):
    emb, labels, tags, superpixels, segments = random_batch(0)
    memory = filled_memory(THRESHOLD) if with_memory else None
    bank = None if memory is None else memory.bank()
    kappa = {"low_level": 4.0, "semantic_annotation": 6.0}.get(relation, 3.0)
    calls = {
        "low_level": lambda: low_level_similarity(
            emb, segments, concentration=kappa, location_weight=0.0
        ),
        "semantic_annotation": lambda: semantic_annotation(
            emb, labels, segments, memory, concentration=kappa
        ),
        "cooccurrence": lambda: semantic_cooccurrence(
            emb, tags, segments, memory, concentration=kappa
        ),
        "feature_affinity": lambda: feature_affinity(
            emb, segments, memory, concentration=kappa, threshold=THRESHOLD
        ),
    }
    got = calls[relation]()
    if relation == "low_level":  # the plain-embedding form averages per image too
        want, count = brute_force_low_level(emb, segments.segment_ids, superpixels, kappa, 0.0)
        assert count > 10
        assert got.item() == pytest.approx(want, rel=1e-9)
        return
    want, count = brute_force(
        relation, emb.reshape(2, 36, -1), segments.segment_ids.reshape(2, 36),
        superpixels.reshape(2, 36), labels.reshape(2, 36), tags, bank, kappa, THRESHOLD,
    )  # fmt: skip
    assert count > 10
    assert got.item() == pytest.approx(want, rel=1e-9)


def test_random_batch_exercises_affinity_both_ways():
    _, _, _, _, segments = random_batch(0)
    unlabelled = segments.labels == IGNORE_INDEX
    aff = affinity_labels(segments, threshold=THRESHOLD)
    assert (unlabelled & (aff != IGNORE_INDEX)).any() and (unlabelled & (aff == IGNORE_INDEX)).any()


def test_relations_accept_flat_and_image_shaped_inputs():
    emb, labels, tags, _, segments = random_batch(1)
    memory = filled_memory(0.95)
    flat = Segments(**{**vars(segments), "segment_ids": segments.segment_ids.reshape(2, -1)})
    settings = {name: RelationSetting(5.0, 1.0) for name in RELATIONS}
    # flat rows carry no pixel places: the low-level relation then compares plain embeddings
    a = spml_loss(emb, labels, tags, segments, memory, settings=settings, location_weight=0.0)
    b = spml_loss(
        emb.reshape(2, 36, -1), labels.reshape(2, -1), tags, flat, memory, settings=settings,
        location_weight=0.0,
    )  # fmt: skip
    for name in a:
        torch.testing.assert_close(a[name], b[name])


def test_memory_object_and_its_bank_give_the_same_loss():
    emb, labels, _, _, segments = random_batch(2)
    memory = filled_memory(0.95)
    a = semantic_annotation(emb, labels, segments, memory, concentration=6.0)
    b = semantic_annotation(emb, labels, segments, memory.bank(), concentration=6.0)
    assert a.item() == b.item()


def test_gradients_reach_embeddings_through_pixels_and_prototypes():
    emb, labels, tags, superpixels, _ = random_batch(3)
    emb = emb.clone().requires_grad_()
    clusters = torch.zeros(2, 6, 6, dtype=torch.long)
    segments = build_segments(emb, clusters, superpixels, labels, tags=tags)
    memory = filled_memory(0.95)
    out = spml_loss(emb, labels, tags, segments, memory, settings=PAPER_SETTINGS)
    out["total"].backward()
    assert torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0
    assert not memory.bank().prototypes.requires_grad


# ---------------------------------------------------------------------------------------------
# Numerics and empty cases
# ---------------------------------------------------------------------------------------------


def all_losses(emb, labels, tags, segments, memory, kappa):
    settings = {name: RelationSetting(kappa, 1.0) for name in RELATIONS}
    # flat (B, N, D) hand batches carry no pixel places: plain-embedding low-level
    weight = 1.0 if emb.ndim == 4 else 0.0
    return spml_loss(emb, labels, tags, segments, memory, settings=settings, location_weight=weight)


@pytest.mark.parametrize("with_memory", [False, True])
def test_kappa_20_with_bfloat16_embeddings_is_finite(with_memory):
    emb, labels, tags, superpixels, _ = random_batch(4)
    emb = emb.bfloat16().requires_grad_()
    clusters = torch.arange(36).reshape(6, 6).div(5, rounding_mode="floor").expand(2, 6, 6)
    segments = build_segments(emb, clusters, superpixels, labels, tags=tags)
    memory = filled_memory(0.95) if with_memory else None
    out = all_losses(emb, labels, tags, segments, memory, 20.0)
    out["total"].backward()
    for name, value in out.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), name
    assert torch.isfinite(emb.grad).all()
    ref = all_losses(emb.detach().double(), labels, tags, segments, memory, 20.0)
    for name in RELATIONS:
        assert out[name].item() == pytest.approx(ref[name].item(), rel=0.05, abs=1e-3)


def test_identical_embeddings_give_set_size_ratios():
    # every similarity is 1, so loss_i = log((|pos| + |neg|) / |pos|), counted by hand sets
    emb, labels, tags, hand = hand_batch()
    emb = torch.full_like(emb, 1 / math.sqrt(3))
    clusters = torch.tensor([[0, 0, 1, 2], [0, 0, 1, 2]])
    superpixels = torch.tensor([[0, 0, 0, 1], [0, 0, 1, 1]])
    segments = build_segments(emb, clusters, superpixels, labels, tags=tags)
    memory = hand_memory()
    memory.prototypes = torch.full_like(memory.prototypes, 1 / math.sqrt(3))
    out = all_losses(emb, labels, tags, segments, memory, 20.0)
    for relation in RELATIONS:
        per_pixel = []
        for pixel in range(8):
            pos, neg = positives_negatives(relation, pixel, emb, labels, tags, segments, memory)
            if pos.any():
                per_pixel.append(math.log((pos.sum() + neg.sum()).item() / pos.sum().item()))
        assert out[relation].item() == pytest.approx(sum(per_pixel) / len(per_pixel)), relation


def test_pixel_whose_only_positive_is_its_own_segment():
    # only pixel 3 (label 0, embedding y) counts; s2 is the only label-0 segment; negatives are
    # the labelled s0 (x), s3 (x), s5 (y): loss = log((e^k + 1 + 1 + e^k) / e^k)
    emb, labels, _, segments = hand_batch()
    only = torch.full_like(labels, IGNORE_INDEX)
    only[0, 3] = 0
    kappa = 6.0
    got = semantic_annotation(emb, only, segments, concentration=kappa)
    assert got.item() == pytest.approx(math.log((2 * math.exp(kappa) + 2) / math.exp(kappa)))


def test_no_labelled_pixels_gives_zero_with_a_graph():
    emb, labels, tags, superpixels, _ = random_batch(5)
    emb = emb.clone().requires_grad_()
    none = torch.full_like(labels, IGNORE_INDEX)
    for relation in ("semantic_annotation", "feature_affinity"):
        segments = build_segments(emb, torch.zeros_like(labels), superpixels, none, tags=tags)
        out = spml_loss(emb, none, tags, segments, settings={relation: RelationSetting(10.0, 1.0)})
        assert out[relation].item() == 0.0
        out["total"].backward()
        assert torch.all(emb.grad == 0)


def test_image_without_labels_beside_a_labelled_one_is_finite():
    emb, labels, tags, superpixels, _ = random_batch(6)
    labels = labels.clone()
    labels[1] = IGNORE_INDEX
    segments = build_segments(emb, torch.zeros_like(labels), superpixels, labels, tags=tags)
    out = all_losses(emb, labels, tags, segments, filled_memory(0.95), 12.0)
    assert all(torch.isfinite(v) for v in out.values())
    assert out["semantic_annotation"] > 0


def test_background_only_tags_give_zero_cooccurrence():
    emb, labels, _, superpixels, segments = random_batch(7)
    emb = emb.clone().requires_grad_()
    tags = torch.zeros(2, 4, dtype=torch.bool)
    tags[:, 0] = True
    loss = semantic_cooccurrence(emb, tags, segments, concentration=8.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(emb.grad == 0)


def test_empty_memory_is_no_memory():
    emb, labels, tags, _, segments = random_batch(8)
    empty = PrototypeMemory(2)
    assert empty.bank() is None
    settings = {name: RelationSetting(8.0, 1.0) for name in RELATIONS}
    a = spml_loss(emb, labels, tags, segments, empty, settings=settings)
    b = spml_loss(emb, labels, tags, segments, None, settings=settings)
    for name in a:
        assert a[name].item() == b[name].item()


def test_full_memory_is_finite_and_changes_the_loss():
    emb, labels, tags, _, segments = random_batch(9)
    memory = filled_memory(0.95, seeds=(21, 22, 23, 24))
    assert len(memory) == 2
    with_memory = all_losses(emb, labels, tags, segments, memory, 12.0)
    without = all_losses(emb, labels, tags, segments, None, 12.0)
    assert all(torch.isfinite(v) for v in with_memory.values())
    assert with_memory["low_level"].item() == without["low_level"].item()  # memory not used
    assert with_memory["semantic_annotation"].item() != without["semantic_annotation"].item()


def test_cooccurrence_memory_without_tags_raises():
    emb, labels, tags, _, segments = random_batch(10)
    memory = PrototypeMemory(1)
    untagged = Segments(**{**vars(segments), "tags": None})
    memory.push(untagged)
    with pytest.raises(ValueError, match="memory holds no tags"):
        semantic_cooccurrence(emb, tags, segments, memory, concentration=8.0)


# ---------------------------------------------------------------------------------------------
# spml_loss and settings
# ---------------------------------------------------------------------------------------------


def test_spml_loss_total_is_the_weighted_sum_of_enabled_relations():
    emb, labels, tags, _, segments = random_batch(11)
    memory = filled_memory(0.9)
    settings = {
        "semantic_annotation": RelationSetting(6.0, 1.0),
        "low_level": RelationSetting(16.0, 0.1),
        "feature_affinity": RelationSetting(12.0, 0.5),
    }
    out = spml_loss(emb, labels, None, segments, memory, settings=settings, affinity_threshold=0.9)
    assert list(out) == ["low_level", "semantic_annotation", "feature_affinity", "total"]
    alone = {
        "low_level": low_level_similarity(emb, segments, concentration=16.0),
        "semantic_annotation": semantic_annotation(
            emb, labels, segments, memory, concentration=6.0
        ),
        "feature_affinity": feature_affinity(
            emb, segments, memory, concentration=12.0, threshold=0.9
        ),
    }
    for name, value in alone.items():
        assert out[name].item() == value.item()
    want = sum(settings[name].weight * value.item() for name, value in alone.items())
    assert out["total"].item() == pytest.approx(want)


def test_spml_loss_with_nothing_enabled_is_zero_with_a_graph():
    emb, labels, tags, _, segments = random_batch(12)
    emb = emb.clone().requires_grad_()
    out = spml_loss(emb, labels, tags, segments, settings={})
    assert list(out) == ["total"] and out["total"].item() == 0.0
    out["total"].backward()


def test_spml_loss_unknown_relation_names_them():
    emb, labels, tags, _, segments = random_batch(13)
    settings = {"low_level": RelationSetting(1.0, 1.0), "colour": RelationSetting(1.0, 1.0)}
    settings["texture"] = RelationSetting(1.0, 1.0)
    with pytest.raises(ValueError, match=r"\['colour', 'texture'\]"):
        spml_loss(emb, labels, tags, segments, settings=settings)


def test_spml_loss_missing_inputs_raise():
    emb, labels, tags, _, segments = random_batch(14)
    with pytest.raises(ValueError, match="needs labels"):
        spml_loss(
            emb,
            None,
            tags,
            segments,
            settings={"semantic_annotation": PAPER_SETTINGS["semantic_annotation"]},
        )
    with pytest.raises(ValueError, match="tags must be"):
        semantic_cooccurrence(emb, tags[:1], segments, concentration=1.0)
    with pytest.raises(ValueError, match="labels must hold one value per pixel"):
        semantic_annotation(emb, labels[:, :3], segments, concentration=1.0)
    with pytest.raises(ValueError, match="embeddings must be"):
        low_level_similarity(emb[0, 0], segments, concentration=1.0)


def test_paper_settings_cover_every_relation():
    assert set(PAPER_SETTINGS) == set(RELATIONS)
    assert PAPER_SETTINGS["low_level"] == RelationSetting(16.0, 0.1)
    assert PAPER_SETTINGS["semantic_annotation"] == RelationSetting(6.0, 1.0)
    assert constants.IGNORE_INDEX == 255


def to_meta(obj):
    fields = vars(obj).items()
    return type(obj)(**{k: v.to("meta") if torch.is_tensor(v) else v for k, v in fields})


def test_loss_path_reads_nothing_back_from_the_device(monkeypatch):
    # on the meta device any data-dependent read (.item(), bool(tensor), nonzero, boolean
    # indexing) raises, so a forward and backward pass there proves the path has no syncs;
    # autocast knows no meta device, and the loss only uses it to switch autocast off
    monkeypatch.setattr(torch, "autocast", lambda **kwargs: contextlib.nullcontext())
    emb, labels, tags, _, segments = random_batch(15)
    memory = PrototypeMemory(2)
    memory.push(to_meta(random_batch(16)[4]))  # push itself runs on meta too
    emb = emb.to("meta").float().requires_grad_()
    out = spml_loss(
        emb, labels.to("meta"), tags.to("meta"), to_meta(segments), memory,
        settings=PAPER_SETTINGS,
    )  # fmt: skip
    out["total"].backward()
    assert out["total"].device.type == "meta" and emb.grad.shape == emb.shape


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("relation", RELATIONS)
def test_positives_negatives_agree_with_the_loss_on_random_segment_batches(relation, seed):
    # the loss's block kernel decides the sets on its own (fused, sorted keys); each pixel's
    # loss from positives_negatives' sets must equal the kernel's, so the sets are the same
    emb, labels, tags, _, segments = random_batch(seed)
    memory = filled_memory(THRESHOLD)
    inputs = relations._relation_inputs(
        relation, emb, labels, tags, segments, memory, THRESHOLD, location_weight=0.0
    )
    kappa = 3.0
    kernel = pixel_segment_loss(
        inputs.embeddings, inputs.labels, inputs.segment_ids, inputs.prototypes,
        inputs.prototype_labels, kappa, "none", ignore_index=inputs.ignore_index,
        pixel_groups=inputs.pixel_groups, prototype_groups=inputs.prototype_groups,
    )  # fmt: skip
    e = torch.exp(kappa * inputs.embeddings @ inputs.prototypes.T)  # (P, S)
    compared = len(inputs.prototypes)  # low-level meets no memory: its sets are padded
    taking_part = 0
    for pixel in range(len(inputs.embeddings)):
        pos, neg = positives_negatives(
            relation, pixel, emb, labels, tags, segments, memory, threshold=THRESHOLD
        )
        assert not (pos[compared:].any() or neg[compared:].any())
        pos_sum, neg_sum = e[pixel, pos[:compared]].sum(), e[pixel, neg[:compared]].sum()
        expected = torch.log((pos_sum + neg_sum) / pos_sum) if pos.any() else 0.0
        assert float(kernel[pixel]) == pytest.approx(float(expected), rel=1e-9, abs=1e-12)
        taking_part += bool(pos.any())
    assert 0 < taking_part  # the batch exercises the rule


@pytest.mark.parametrize("relation", RELATIONS)
def test_positives_negatives_is_a_row_of_relation_masks(relation):
    emb, labels, tags, _, segments = random_batch(5)
    memory = filled_memory(THRESHOLD)
    inputs = relations._relation_inputs(
        relation, emb, labels, tags, segments, memory, THRESHOLD, location_weight=0.0
    )
    masks = relation_masks(
        inputs.labels, inputs.prototype_labels, inputs.segment_ids,
        ignore_index=inputs.ignore_index, pixel_groups=inputs.pixel_groups,
        prototype_groups=inputs.prototype_groups,
    )  # fmt: skip
    for pixel in range(len(inputs.embeddings)):
        roles = positives_negatives(relation, pixel, emb, labels, tags, segments, memory,
                                    threshold=THRESHOLD)  # fmt: skip
        for mask, role in zip(masks, roles, strict=True):
            assert torch.equal(role[: mask.shape[1]], mask[pixel]), pixel
