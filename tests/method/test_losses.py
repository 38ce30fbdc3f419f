import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from spml_lab.constants import IGNORE_INDEX
from spml_lab.method import loss_blocks, losses
from spml_lab.method.losses import default_chunk_size, pixel_segment_loss


def unit(rows, dim, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(rows, dim, generator=g, dtype=dtype), dim=1)


def brute_force(v, labels, seg, u, plabels, kappa, ignore_index=IGNORE_INDEX, groups=None):
    """The formula of DESIGN.md, one pixel and one prototype at a time, in float64.

    With ``groups = (pixel_groups, prototype_groups)`` a pixel only sees its group's prototypes.
    """
    multi = labels.ndim == 2
    v, u = v.double().tolist(), u.double().tolist()

    def labelled(lab):
        return any(lab) if multi else (lab >= 0 and lab != ignore_index)

    def agree(a, b):
        return any(x and y for x, y in zip(a, b, strict=True)) if multi else a == b

    losses = []
    for i in range(len(v)):
        lab = labels[i].tolist()
        if not labelled(lab):
            losses.append(0.0)
            continue
        e = [math.exp(kappa * sum(a * b for a, b in zip(v[i], u_s, strict=True))) for u_s in u]
        same, diff = [], []
        for s in range(len(u)):
            plab = plabels[s].tolist()
            if not multi and not labelled(plab):
                continue  # ignored prototypes: neither positive nor negative
            if groups is not None and int(groups[0][i]) != int(groups[1][s]):
                continue  # another group: neither positive nor negative
            (same if agree(lab, plab) else diff).append(s)
        own = int(seg[i])
        others = [s for s in same if s != own]
        pos = sum(e[s] for s in others) if others else e[own]
        neg = sum(e[s] for s in diff)
        losses.append(-math.log(pos / (pos + neg)))
    return torch.tensor(losses, dtype=torch.float64)


def single_label_case(seed, num_pixels=40, num_prototypes=12, num_labels=4):
    g = torch.Generator().manual_seed(seed)
    v, u = unit(num_pixels, 5, seed), unit(num_prototypes, 5, seed + 100)
    plabels = torch.randint(0, num_labels, (num_prototypes,), generator=g)
    plabels[0] = IGNORE_INDEX  # one unlabelled prototype
    labels = torch.randint(0, num_labels + 1, (num_pixels,), generator=g)  # num_labels: rare
    labels[:3] = torch.tensor([IGNORE_INDEX, -1, IGNORE_INDEX])  # unlabelled pixels
    seg = torch.randint(0, num_prototypes, (num_pixels,), generator=g)
    return v, labels, seg, u, plabels


def label_set_case(seed, num_pixels=30, num_prototypes=10, num_classes=4):
    g = torch.Generator().manual_seed(seed)
    v, u = unit(num_pixels, 6, seed), unit(num_prototypes, 6, seed + 100)
    labels = torch.rand(num_pixels, num_classes, generator=g) < 0.3
    plabels = torch.rand(num_prototypes, num_classes, generator=g) < 0.3
    labels[0] = False  # an unlabelled pixel
    plabels[1] = False  # an empty prototype label set: a negative for everyone
    seg = torch.randint(0, num_prototypes, (num_pixels,), generator=g)
    # class 0 only on prototype 2: a pixel in segment 2 with label set {0} has no other positive
    plabels[:, 0] = False
    plabels[2, 0] = True
    labels[1], seg[1] = torch.nn.functional.one_hot(torch.tensor(0), num_classes).bool(), 2
    return v, labels, seg, u, plabels


def fallback_used(labels, seg, plabels):
    """Per pixel: True when same(i) holds no segment besides its own."""
    if labels.ndim == 2:
        agree = (labels.long() @ plabels.long().T) > 0
    else:
        agree = labels[:, None] == plabels[None, :]
    agree[torch.arange(len(seg)), seg] = False
    return ~agree.any(1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kappa", [1.0, 8.0])
def test_single_labels_match_brute_force(seed, kappa):
    v, labels, seg, u, plabels = single_label_case(seed)
    fallback = fallback_used(labels, seg, plabels)[3:]
    assert fallback.any() and (~fallback).any()  # both branches of pos(i) are exercised
    got = pixel_segment_loss(v, labels, seg, u, plabels, kappa, reduction="none")
    torch.testing.assert_close(got, brute_force(v, labels, seg, u, plabels, kappa))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_sets_match_brute_force(seed):
    v, labels, seg, u, plabels = label_set_case(seed)
    fallback = fallback_used(labels, seg, plabels)[1:]
    assert fallback.any() and (~fallback).any()
    got = pixel_segment_loss(v, labels, seg, u, plabels, 6.0, reduction="none")
    torch.testing.assert_close(got, brute_force(v, labels, seg, u, plabels, 6.0))


def test_label_sets_accept_int_and_float_multi_hot():
    v, labels, seg, u, plabels = label_set_case(3)
    ref = pixel_segment_loss(v, labels, seg, u, plabels, 6.0)
    as_int = pixel_segment_loss(v, labels.long(), seg, u, plabels.long(), 6.0)
    as_float = pixel_segment_loss(v, labels.double(), seg, u, plabels.double(), 6.0)
    torch.testing.assert_close(as_int, ref)
    torch.testing.assert_close(as_float, ref)


def test_reductions_average_over_labelled_pixels():
    v, labels, seg, u, plabels = single_label_case(4)
    per_pixel = pixel_segment_loss(v, labels, seg, u, plabels, 4.0, reduction="none")
    assert torch.all(per_pixel[:3] == 0)  # the unlabelled pixels
    total = pixel_segment_loss(v, labels, seg, u, plabels, 4.0, reduction="sum")
    mean = pixel_segment_loss(v, labels, seg, u, plabels, 4.0)
    torch.testing.assert_close(total, per_pixel.sum())
    torch.testing.assert_close(mean, per_pixel.sum() / (len(labels) - 3))


def test_own_segment_is_the_fallback_positive():
    # pixel 0 (label 0) is alone with its class: only its own segment 0 is positive
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    u = torch.tensor([[0.6, 0.8], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    labels, seg, plabels = torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([0, 1, 1])
    got = pixel_segment_loss(v, labels, seg, u, plabels, 2.0, reduction="none")
    e_own, e_other = math.exp(2 * 0.6), 2 * math.exp(0.0)
    assert got[0].item() == pytest.approx(-math.log(e_own / (e_own + e_other)))
    # pixel 1 has segment 2 besides its own segment 1: the own segment is left out
    e_pos, e_neg = math.exp(2.0), math.exp(2 * 0.8)
    assert got[1].item() == pytest.approx(-math.log(e_pos / (e_pos + e_neg)))


def test_own_segment_with_another_label_counts_as_negative():
    v, u = unit(1, 3, 5), unit(3, 3, 6)
    labels, seg, plabels = torch.tensor([0]), torch.tensor([2]), torch.tensor([0, 0, 1])
    got = pixel_segment_loss(v, labels, seg, u, plabels, 3.0, reduction="none")
    torch.testing.assert_close(got, brute_force(v, labels, seg, u, plabels, 3.0))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", [single_label_case, label_set_case])
def test_gradcheck(case, reduction):
    v, labels, seg, u, plabels = case(7, num_pixels=9, num_prototypes=6)
    v.requires_grad_(True)
    u.requires_grad_(True)

    def loss(v, u):
        return pixel_segment_loss(v, labels, seg, u, plabels, 3.0, reduction, chunk_size=4)

    assert torch.autograd.gradcheck(loss, (v, u))


def test_gradients_match_dense_autograd_reference():
    # an independent dense formulation, differentiated by autograd
    v, labels, seg, u, plabels = single_label_case(8)
    kappa = 5.0

    def dense(v, u):
        logits = kappa * v @ u.T
        keep = (plabels != IGNORE_INDEX)[None, :]
        same = (labels[:, None] == plabels[None, :]) & keep
        others = same.clone()
        others[torch.arange(len(seg)), seg] = False
        own = logits.gather(1, seg[:, None])[:, 0]
        lse = lambda m: torch.logsumexp(logits.masked_fill(~m, -1e30), 1)  # noqa: E731
        log_pos = torch.where(others.any(1), lse(others), own)
        log_neg = lse(~same & keep)
        valid = (labels >= 0) & (labels != IGNORE_INDEX)
        return (torch.logaddexp(log_pos, log_neg) - log_pos)[valid].mean()

    v1, u1 = v.clone().requires_grad_(), u.clone().requires_grad_()
    dense(v1, u1).backward()
    v2, u2 = v.clone().requires_grad_(), u.clone().requires_grad_()
    pixel_segment_loss(v2, labels, seg, u2, plabels, kappa).backward()
    torch.testing.assert_close(v2.grad, v1.grad)
    torch.testing.assert_close(u2.grad, u1.grad)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_chunked_equals_unchunked(reduction):
    v, labels, seg, u, plabels = single_label_case(9, num_pixels=50, num_prototypes=20)
    results = []
    for chunk_size in (1, 7, 50, None):
        vv, uu = v.clone().requires_grad_(), u.clone().requires_grad_()
        loss = pixel_segment_loss(
            vv, labels, seg, uu, plabels, 10.0, reduction, chunk_size=chunk_size
        )
        loss.sum().backward()
        results.append((loss.detach(), vv.grad, uu.grad))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kappa_20_in_half_precision_is_finite_and_close(dtype):
    v, labels, seg, u, plabels = single_label_case(10, num_pixels=200, num_prototypes=50)
    v, u = v.to(dtype).requires_grad_(), u.to(dtype).requires_grad_()
    loss = pixel_segment_loss(v, labels, seg, u, plabels, 20.0)
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss) and torch.isfinite(v.grad).all() and torch.isfinite(u.grad).all()
    ref = pixel_segment_loss(v.detach().double(), labels, seg, u.detach().double(), plabels, 20.0)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-3)


def test_autocast_region_keeps_float32():
    v, labels, seg, u, plabels = single_label_case(11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = pixel_segment_loss(v.float(), labels, seg, u.float(), plabels, 20.0)
    ref = pixel_segment_loss(v, labels, seg, u, plabels, 20.0)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_identical_embeddings_are_finite_with_exact_value():
    # every similarity is 1: loss = log((pos + neg) / pos) with pos, neg counting segments
    v = torch.ones(6, 4) / 2
    u = torch.ones(5, 4) / 2
    labels, plabels = torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 0, 1, 1, 1])
    seg = torch.tensor([0, 0, 1, 2, 3, 4])
    v.requires_grad_(True)
    loss = pixel_segment_loss(v, labels, seg, u, plabels, 20.0, reduction="none")
    # label 0: one other positive, three negatives; label 1: two others, two negatives
    want = torch.tensor([math.log(4)] * 3 + [math.log(2)] * 3)
    torch.testing.assert_close(loss, want)
    loss.sum().backward()
    assert torch.isfinite(v.grad).all()


@pytest.mark.parametrize(
    "labels, plabels",
    [
        (torch.full((8,), IGNORE_INDEX), torch.tensor([0, 1, IGNORE_INDEX])),
        (torch.zeros(8, 3, dtype=torch.bool), torch.eye(3, dtype=torch.bool)),
    ],
)
def test_no_labelled_pixels_gives_zero_with_gradient_path(labels, plabels):
    v, u = unit(8, 4, 12, torch.float32), unit(3, 4, 13, torch.float32)
    v.requires_grad_(True)
    u.requires_grad_(True)
    seg = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    loss = pixel_segment_loss(v, labels, seg, u, plabels, 10.0)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(v.grad == 0) and torch.all(u.grad == 0)


def test_no_prototypes_gives_zero():
    v = unit(4, 3, 14).requires_grad_()
    loss = pixel_segment_loss(
        v,
        torch.zeros(4, dtype=torch.long),
        torch.zeros(4, dtype=torch.long),
        torch.zeros(0, 3, dtype=torch.float64),
        torch.zeros(0, dtype=torch.long),
        5.0,
    )
    loss.backward()
    assert loss.item() == 0.0 and torch.all(v.grad == 0)


def test_all_prototypes_ignored_is_finite():
    v, u = unit(4, 3, 15), unit(3, 3, 16)
    labels, seg = torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1, 2, 0])
    loss = pixel_segment_loss(
        v, labels, seg, u, torch.full((3,), IGNORE_INDEX), 5.0, reduction="none"
    )
    assert torch.all(loss == 0)  # own segment as positive, no negatives: -log(1)


def test_huge_kappa_stays_finite():
    v, labels, seg, u, plabels = single_label_case(17)
    v.requires_grad_(True)
    loss = pixel_segment_loss(v, labels, seg, u, plabels, 500.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(v.grad).all()


def test_ignore_index_none_treats_255_as_a_label():
    v, u = unit(3, 3, 18), unit(3, 3, 19)
    labels, seg, plabels = (
        torch.tensor([IGNORE_INDEX, IGNORE_INDEX, 3]),
        torch.tensor([0, 1, 2]),
        torch.tensor([IGNORE_INDEX, IGNORE_INDEX, 3]),
    )
    got = pixel_segment_loss(v, labels, seg, u, plabels, 4.0, reduction="none", ignore_index=None)
    torch.testing.assert_close(got, brute_force(v, labels, seg, u, plabels, 4.0, ignore_index=None))
    assert torch.all(got > 0)


def test_bad_inputs_raise():
    v, labels, seg, u, plabels = single_label_case(20)
    with pytest.raises(ValueError, match="reduction"):
        pixel_segment_loss(v, labels, seg, u, plabels, 1.0, reduction="max")
    with pytest.raises(ValueError, match="prototype_labels"):
        pixel_segment_loss(v, labels, seg, u, plabels[:-1], 1.0)
    with pytest.raises(ValueError, match="dimension"):
        pixel_segment_loss(v, labels, seg, u[:, :3], plabels, 1.0)
    with pytest.raises(ValueError, match="segment_ids"):
        pixel_segment_loss(v, labels, seg.clone().fill_(99), u, plabels, 1.0)
    with pytest.raises(ValueError, match="chunk_size"):
        pixel_segment_loss(v, labels, seg, u, plabels, 1.0, chunk_size=0)


def test_default_chunk_size_bounds_the_block():
    assert default_chunk_size(20_000) * 20_000 * 4 <= 128 * 2**20
    assert default_chunk_size(0) >= 1 and default_chunk_size(10**9) == 1


MEMORY_CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    import torch
    import torch.nn.functional as F
    from spml_lab.method.losses import pixel_segment_loss
    torch.manual_seed(0)
    P, S, D, chunk = (int(a) for a in sys.argv[1:5])
    v = F.normalize(torch.randn(P, D), dim=1).requires_grad_()
    u = F.normalize(torch.randn(S, D), dim=1).requires_grad_()
    labels, plabels = torch.randint(0, 21, (P,)), torch.randint(0, 21, (S,))
    seg = torch.randint(0, S, (P,))
    pixel_segment_loss(v[:64], labels[:64], seg[:64], u, plabels, 12.0).backward()  # warm-up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    pixel_segment_loss(v, labels, seg, u, plabels, 12.0, chunk_size=chunk).backward()
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"increase_kib": after - before, "seconds": seconds}))
    """
)


def test_peak_memory_does_not_grow_with_the_similarity_matrix():
    # scaled-down version of benchmarks/loss_memory.py (65,536 x 20,000 there): a dense
    # float32 P x S matrix would be 328 MB; the blocks of 512 pixels need ~23 MB
    num_pixels, num_prototypes, chunk = 16_384, 5_000, 512
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            MEMORY_CHILD,
            str(num_pixels),
            str(num_prototypes),
            "64",
            str(chunk),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    dense_kib = num_pixels * num_prototypes * 4 / 1024
    assert result["increase_kib"] < dense_kib / 4


def test_loss_on_built_segments_backpropagates_through_prototypes():
    from spml_lab.method import clustering

    g = torch.Generator().manual_seed(21)
    emb = F.normalize(torch.randn(2, 8, 8, 6, generator=g), dim=-1).requires_grad_()
    labels = torch.full((2, 8, 8), IGNORE_INDEX)
    labels[:, :2] = torch.randint(0, 3, (2, 2, 8), generator=g)
    superpixels = torch.arange(64).reshape(8, 8).div(16, rounding_mode="floor").expand(2, 8, 8)
    seg = clustering.segment_batch(emb, superpixels, labels, (2, 2), 3)
    loss = pixel_segment_loss(
        emb.reshape(-1, 6),
        labels.reshape(-1),
        seg.segment_ids.reshape(-1),
        seg.prototypes,
        seg.labels,
        6.0,
    )
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    # segments are pure in label: unlabelled pixels neither carry loss nor shape a labelled
    # prototype, and unlabelled prototypes take no part, so their gradient is exactly zero
    assert torch.all(emb.grad[:, 2:] == 0) and emb.grad[:, :2].abs().sum() > 0
    # the prototypes are part of the graph: detaching them changes the gradient
    detached = emb.detach().clone().requires_grad_()
    pixel_segment_loss(
        detached.reshape(-1, 6),
        labels.reshape(-1),
        seg.segment_ids.reshape(-1),
        seg.prototypes.detach(),
        seg.labels,
        6.0,
    ).backward()
    assert not torch.allclose(detached.grad, emb.grad)


def grouped_case(case, seed, num_groups=3):
    v, labels, seg, u, plabels = case(seed)
    g = torch.Generator().manual_seed(seed + 50)
    proto_groups = torch.randint(0, num_groups, (len(u),), generator=g) - 1  # ids -1, 0, 1
    pixel_groups = proto_groups[seg].clone()  # a pixel lies in its own segment's group
    return v, labels, seg, u, plabels, (pixel_groups, proto_groups)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", [single_label_case, label_set_case])
def test_groups_match_brute_force(case, seed):
    v, labels, seg, u, plabels, groups = grouped_case(case, seed)
    got = pixel_segment_loss(
        v,
        labels,
        seg,
        u,
        plabels,
        5.0,
        reduction="none",
        pixel_groups=groups[0],
        prototype_groups=groups[1],
    )
    want = brute_force(v, labels, seg, u, plabels, 5.0, groups=groups)
    torch.testing.assert_close(got, want)
    ungrouped = pixel_segment_loss(v, labels, seg, u, plabels, 5.0, reduction="none")
    assert not torch.allclose(got, ungrouped)  # the groups changed something


def test_groups_fallback_counts_own_group_only():
    # pixel 0 (label 0, group 0) shares its label with segment 1, but segment 1 is in group 1:
    # its only positive is its own segment 0; segment 2 (group 0, label 1) is its negative
    v = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    u = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    got = pixel_segment_loss(
        v,
        torch.tensor([0]),
        torch.tensor([0]),
        u,
        torch.tensor([0, 0, 1]),
        2.0,
        reduction="none",
        pixel_groups=torch.tensor([0]),
        prototype_groups=torch.tensor([0, 1, 0]),
    )
    e_own, e_neg = math.exp(2 * 0.6), math.exp(0.0)
    assert got.item() == pytest.approx(-math.log(e_own / (e_own + e_neg)))


def test_own_segment_in_another_group_is_only_the_fallback():
    v, u = unit(2, 3, 30), unit(3, 3, 31)
    labels, seg, plabels = torch.tensor([0, 0]), torch.tensor([0, 1]), torch.tensor([1, 0, 1])
    groups = (torch.tensor([5, 5]), torch.tensor([7, 5, 5]))
    got = pixel_segment_loss(
        v,
        labels,
        seg,
        u,
        plabels,
        3.0,
        reduction="none",
        pixel_groups=groups[0],
        prototype_groups=groups[1],
    )
    torch.testing.assert_close(got, brute_force(v, labels, seg, u, plabels, 3.0, groups=groups))


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("case", [single_label_case, label_set_case])
def test_groups_gradcheck_and_chunking(case, reduction):
    v, labels, seg, u, plabels = case(7, num_pixels=9, num_prototypes=6)
    proto_groups = torch.tensor([0, 1, 0, 1, 0, 1])
    pixel_groups = proto_groups[seg]
    v.requires_grad_(True)
    u.requires_grad_(True)

    def loss(v, u, chunk_size=4):
        return pixel_segment_loss(
            v,
            labels,
            seg,
            u,
            plabels,
            3.0,
            reduction,
            chunk_size=chunk_size,
            pixel_groups=pixel_groups,
            prototype_groups=proto_groups,
        )

    assert torch.autograd.gradcheck(loss, (v, u))
    torch.testing.assert_close(loss(v, u, 1), loss(v, u, None))


def test_groups_at_kappa_20_in_bfloat16_are_finite():
    v, labels, seg, u, plabels, groups = grouped_case(single_label_case, 4)
    v, u = v.bfloat16().requires_grad_(), u.bfloat16().requires_grad_()
    loss = pixel_segment_loss(
        v, labels, seg, u, plabels, 20.0, pixel_groups=groups[0], prototype_groups=groups[1]
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(v.grad).all() and torch.isfinite(u.grad).all()


def test_bad_groups_raise():
    v, labels, seg, u, plabels = single_label_case(22)
    with pytest.raises(ValueError, match="together"):
        pixel_segment_loss(v, labels, seg, u, plabels, 1.0, pixel_groups=seg)
    with pytest.raises(ValueError, match="prototype_groups must have shape"):
        pixel_segment_loss(v, labels, seg, u, plabels, 1.0, pixel_groups=seg, prototype_groups=seg)
    with pytest.raises(ValueError, match="pixel_groups must be an integer"):
        pixel_segment_loss(
            v,
            labels,
            seg,
            u,
            plabels,
            1.0,
            pixel_groups=seg.float(),
            prototype_groups=torch.zeros(len(u), dtype=torch.long),
        )


@pytest.mark.parametrize("plan", [True, False])
@pytest.mark.parametrize("case", [single_label_case, label_set_case])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_detached_memory_gets_no_gradient_and_changes_nothing_else(
    case, plan, reduction, monkeypatch
):
    if not plan:  # the masked path that GPUs take: every pixel against every column
        monkeypatch.setattr(loss_blocks, "PLAN_DEVICES", ())
    v, labels, seg, u, plabels = case(11)
    seg = seg % 4  # own segments among the first 4 (the batch); the rest are memory
    results = []
    for trainable in (None, 4):
        vv, uu = v.clone().requires_grad_(), u.clone().requires_grad_()
        loss = pixel_segment_loss(
            vv, labels, seg, uu, plabels, 7.0, reduction, trainable_prototypes=trainable
        )
        loss.sum().backward()
        results.append((loss.detach(), vv.grad, uu.grad))
    (full_loss, full_v, full_u), (loss, grad_v, grad_u) = results
    torch.testing.assert_close(loss, full_loss)
    torch.testing.assert_close(grad_v, full_v)
    torch.testing.assert_close(grad_u[:4], full_u[:4])
    assert full_u[4:].abs().sum() > 0 and grad_u[4:].abs().sum() == 0


def test_trainable_prototypes_out_of_range_raises():
    v, labels, seg, u, plabels = single_label_case(0)
    with pytest.raises(ValueError, match="trainable_prototypes"):
        pixel_segment_loss(v, labels, seg, u, plabels, 1.0, trainable_prototypes=len(u) + 1)


@pytest.mark.parametrize("num_columns", [1, 7, 62, 70])
def test_unique_label_sets_match_torch_unique(num_columns):
    g = torch.Generator().manual_seed(num_columns)
    rows = (torch.rand(300, num_columns, generator=g) < 0.3).float()
    expected_sets, expected_inverse = torch.unique(rows, dim=0, return_inverse=True)
    sets, inverse = losses.unique_rows(rows)
    assert torch.equal(sets, expected_sets) and torch.equal(inverse, expected_inverse)


def test_pixel_weights_give_the_weighted_sum_and_its_gradient():
    # independent reference: the per-pixel losses of reduction="none", weighted by hand
    v, labels, seg, u, plabels = single_label_case(9)
    weights = torch.rand(len(labels), generator=torch.Generator().manual_seed(1), dtype=v.dtype)
    v1, u1 = v.clone().requires_grad_(), u.clone().requires_grad_()
    (
        pixel_segment_loss(v1, labels, seg, u1, plabels, 4.0, reduction="none") * weights
    ).sum().backward()
    v2, u2 = v.clone().requires_grad_(), u.clone().requires_grad_()
    got = pixel_segment_loss(
        v2, labels, seg, u2, plabels, 4.0, reduction="sum", pixel_weights=weights
    )
    want = (pixel_segment_loss(v, labels, seg, u, plabels, 4.0, reduction="none") * weights).sum()
    torch.testing.assert_close(got, want)
    got.backward()
    torch.testing.assert_close(v2.grad, v1.grad)
    torch.testing.assert_close(u2.grad, u1.grad)
    with pytest.raises(ValueError, match="reduction='sum'"):
        pixel_segment_loss(v, labels, seg, u, plabels, 4.0, pixel_weights=weights)
    with pytest.raises(ValueError, match="pixel_weights must have shape"):
        pixel_segment_loss(v, labels, seg, u, plabels, 4.0, "sum", pixel_weights=weights[:2])


@pytest.mark.parametrize("case", [single_label_case, label_set_case])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_the_readable_dense_loss_equals_the_blockwise_one_with_gradients(case, reduction):
    v, labels, seg, u, plabels = case(4)
    g = torch.Generator().manual_seed(4)
    groups = (
        torch.randint(0, 3, (len(v),), generator=g),
        torch.randint(0, 3, (len(u),), generator=g),
    )
    for grouping in ({}, {"pixel_groups": groups[0], "prototype_groups": groups[1]}):
        grads = []
        for fn in (losses.dense_pixel_segment_loss, pixel_segment_loss):
            v1, u1 = v.double().requires_grad_(), u.double().requires_grad_()
            loss = fn(v1, labels, seg, u1, plabels, 6.0, reduction, **grouping)
            (loss.sum() if reduction == "none" else loss).backward()
            grads.append((loss.detach(), v1.grad, u1.grad))
        for dense, blockwise in zip(*grads, strict=True):
            torch.testing.assert_close(dense, blockwise)
    # and on the brute-force formula itself
    want = brute_force(v, labels, seg, u, plabels, 6.0)
    got = losses.dense_pixel_segment_loss(v.double(), labels, seg, u.double(), plabels, 6.0, "none")
    torch.testing.assert_close(got, want)


def brute_force_sets(labels, seg, plabels, ignore_index=IGNORE_INDEX, groups=None):
    """Each pixel's positive and negative prototype sets, read off DESIGN.md one pair at a time."""
    multi = labels.ndim == 2

    def labelled(lab):
        return any(lab) if multi else (lab >= 0 and lab != ignore_index)

    def agree(a, b):
        return any(x and y for x, y in zip(a, b, strict=True)) if multi else a == b

    positive = torch.zeros(len(labels), len(plabels), dtype=torch.bool)
    negative = torch.zeros_like(positive)
    for i in range(len(labels)):
        lab = labels[i].tolist()
        if not labelled(lab):
            continue  # takes no part: neither row has a member
        same = []
        for s in range(len(plabels)):
            plab = plabels[s].tolist()
            if (not multi and not labelled(plab)) or (
                groups is not None and int(groups[0][i]) != int(groups[1][s])
            ):
                continue
            if agree(lab, plab):
                same.append(s)
            else:
                negative[i, s] = True
        others = [s for s in same if s != int(seg[i])]
        positive[i, others or [int(seg[i])]] = True
    return positive, negative


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", [single_label_case, label_set_case])
@pytest.mark.parametrize("grouped", [False, True])
def test_relation_masks_are_the_sets_of_the_formula(case, seed, grouped):
    if grouped:
        _, labels, seg, _, plabels, groups = grouped_case(case, seed)
        options = {"pixel_groups": groups[0], "prototype_groups": groups[1]}
    else:
        (_, labels, seg, _, plabels), groups, options = case(seed), None, {}
    got = losses.relation_masks(labels, plabels, seg, **options)
    expected = brute_force_sets(labels, seg, plabels, groups=groups)
    for mask, want in zip(got, expected, strict=True):
        assert torch.equal(mask, want)
    assert fallback_used(labels, seg, plabels).any()  # the cases reach the fallback


@pytest.mark.parametrize("case", [single_label_case, label_set_case])
def test_the_block_kernel_sums_over_relation_masks(case):
    # the kernel decides the sets inside its blocks; its losses are those of the masks
    v, labels, seg, u, plabels = case(3)
    positive, negative = losses.relation_masks(labels, plabels, seg)
    e = torch.exp(4.0 * v @ u.T)
    pos, neg = (e * positive).sum(1), (e * negative).sum(1)
    expected = torch.where(positive.any(1), torch.log((pos + neg) / pos), 0.0)
    got = pixel_segment_loss(v, labels, seg, u, plabels, 4.0, reduction="none", chunk_size=7)
    torch.testing.assert_close(got, expected)


# The three kernels of `loss_blocks` and how to make a call take each of them: set parts (the
# CPU's co-occurrence path), masked parts (the CPU's other relations; padded groups with
# groups), and one masked part of every pixel against every prototype (off the CPU).
KERNELS = {
    "set parts": {"SET_PART_PAIRS": 0},
    "masked parts": {"SET_PART_PAIRS": 2**62},
    "one masked part": {"PLAN_DEVICES": ()},
}


@pytest.fixture(params=list(KERNELS))
def kernel(request, monkeypatch):
    for name, value in KERNELS[request.param].items():
        monkeypatch.setattr(loss_blocks, name, value)
    return request.param


def kernel_blocks(monkeypatch):
    """Count the blocks each kernel computes (a spy on both block methods)."""
    counts = {"set": 0, "masked": 0}
    for key, name in (("set", "_set_block"), ("masked", "_masked_block")):
        original = getattr(loss_blocks.BlockPlan, name)

        def spy(self, *args, _original=original, _key=key):
            counts[_key] += 1
            return _original(self, *args)

        monkeypatch.setattr(loss_blocks.BlockPlan, name, spy)
    return counts


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("case", [single_label_case, label_set_case])
def test_every_kernel_gives_the_dense_loss_and_gradients(kernel, case, reduction, grouped):
    v, labels, seg, u, plabels, groups = grouped_case(case, 5)
    options = {"pixel_groups": groups[0], "prototype_groups": groups[1]} if grouped else {}
    # prototypes 6.. are a detached memory: no gradient, the same loss
    seg = seg % 6
    results = []
    for fn, extra in (
        (losses.dense_pixel_segment_loss, {}),
        (pixel_segment_loss, {"trainable_prototypes": 6, "chunk_size": 7}),
    ):
        v1, u1 = v.clone().requires_grad_(), u.clone().requires_grad_()
        loss = fn(v1, labels, seg, u1, plabels, 6.0, reduction, **options, **extra)
        loss.sum().backward()
        results.append((loss.detach(), v1.grad, u1.grad[:6]))
    for dense, blockwise in zip(*results, strict=True):
        torch.testing.assert_close(blockwise, dense)
    want = brute_force(v, labels, seg, u, plabels, 6.0, groups=groups if grouped else None)
    torch.testing.assert_close(
        pixel_segment_loss(v, labels, seg, u, plabels, 6.0, "none", **options), want
    )


@pytest.mark.parametrize("case", [single_label_case, label_set_case])
def test_each_kernel_is_the_one_taken(kernel, case, monkeypatch):
    v, labels, seg, u, plabels = case(2)
    counts = kernel_blocks(monkeypatch)
    pixel_segment_loss(v.requires_grad_(), labels, seg, u, plabels, 6.0).backward()
    if kernel == "set parts":  # one part per label (set), no mask
        assert counts["set"] >= 2 and counts["masked"] == 0
    else:
        assert counts["set"] == 0 and counts["masked"] >= 1


def test_cooccurrence_sized_calls_take_set_parts_and_annotation_sized_ones_masks(monkeypatch):
    # SET_PART_PAIRS picks the kernel by size: few label sets over many pairs (image tags
    # against batch and memory) go to set parts, labels of fewer pairs each to one masked part
    g = torch.Generator().manual_seed(0)
    v, u = unit(2000, 8, 0, torch.float32), unit(600, 8, 1, torch.float32)
    seg = torch.randint(0, 600, (2000,), generator=g)
    tags = torch.eye(4, dtype=torch.bool)[torch.randint(0, 4, (2000,), generator=g)]
    proto_tags = torch.eye(4, dtype=torch.bool)[torch.randint(0, 4, (600,), generator=g)]
    counts = kernel_blocks(monkeypatch)
    pixel_segment_loss(v, tags, seg, u, proto_tags, 8.0)
    assert counts == {"set": 4, "masked": 0}
    counts = kernel_blocks(monkeypatch)
    labels = torch.randint(0, 9, (2000,), generator=g)
    labels[200:] = 255  # a tenth of the pixels labelled, as scribbles are
    pixel_segment_loss(v, labels, seg, u, torch.randint(0, 9, (600,), generator=g), 6.0)
    assert counts == {"set": 0, "masked": 1}


@pytest.mark.parametrize("scale", [0.25, 3.0])
def test_rows_that_are_not_unit_keep_the_formula(kernel, scale):
    # the logits' shift bounds them by the rows' norms, not by 1: nothing overflows, the
    # loss is still the formula's
    v, labels, seg, u, plabels = label_set_case(6)
    v = v * scale
    got = pixel_segment_loss(v, labels, seg, u, plabels, 8.0, reduction="none")
    torch.testing.assert_close(got, brute_force(v, labels, seg, u, plabels, 8.0))
