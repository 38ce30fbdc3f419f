import io

import pytest
import torch
import torch.nn.functional as F

from spml_lab.constants import IGNORE_INDEX
from spml_lab.method.clustering import Segments, build_segments
from spml_lab.method.memory import MemoryBank, PrototypeMemory
from spml_lab.method.relations import affinity_labels, feature_affinity, semantic_annotation


def batch(seed, num_images=2, num_pixels=12, dim=4, requires_grad=False):
    """Segments of a small random batch: 3 clusters per image, sparse labels, tags."""
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(num_images, num_pixels, dim, generator=g), dim=-1)
    emb.requires_grad_(requires_grad)
    clusters = torch.arange(num_pixels).div(4, rounding_mode="floor").expand(num_images, -1)
    labels = torch.where(
        torch.rand(num_images, num_pixels, generator=g) < 0.4,
        torch.randint(0, 3, (num_images, num_pixels), generator=g),
        IGNORE_INDEX,
    )
    tags = torch.rand(num_images, 3, generator=g) < 0.5
    tags[:, 0] = True
    return emb, labels, tags, build_segments(emb, clusters, labels=labels, tags=tags)


def test_fifo_keeps_the_newest_batches_in_order():
    memory = PrototypeMemory(2)
    pushed = [batch(seed)[3] for seed in range(4)]
    for count, segments in enumerate(pushed, start=1):
        memory.push(segments)
        assert len(memory) == min(count, 2)
    bank = memory.bank()
    torch.testing.assert_close(
        bank.prototypes, torch.cat([pushed[2].prototypes, pushed[3].prototypes])
    )
    assert torch.equal(bank.labels, torch.cat([pushed[2].labels, pushed[3].labels]))
    assert torch.equal(bank.tags, torch.cat([pushed[2].tags, pushed[3].tags]))
    assert bank.num_prototypes == pushed[2].num_segments + pushed[3].num_segments


def test_size_zero_disables_the_memory():
    memory = PrototypeMemory(0)
    memory.push(batch(0)[3])
    assert len(memory) == 0 and memory.bank() is None


def test_stored_prototypes_are_detached_copies():
    emb, _, _, segments = batch(1, requires_grad=True)
    assert segments.prototypes.requires_grad
    memory = PrototypeMemory(1)
    memory.push(segments)
    stored = memory.bank().prototypes
    assert not stored.requires_grad and stored.grad_fn is None
    before = stored.clone()
    with torch.no_grad():
        segments.prototypes.mul_(0.0)  # the batch's tensors change later: the memory does not
    assert torch.equal(memory.bank().prototypes, before)


def test_image_ids_never_meet_the_current_batch_and_stay_distinct():
    memory = PrototypeMemory(3)
    for seed in range(5):
        memory.push(batch(seed)[3])
    bank = memory.bank()
    assert (bank.image_ids < 0).all()  # current batch ids are 0 .. B-1
    # three batches of two images: six distinct images, each segment keeps its image
    assert len(set(bank.image_ids.tolist())) == 6
    # the 3rd-5th batches hold images 4..9 of the run: ids -5 .. -10
    assert sorted(set(bank.image_ids.tolist())) == list(range(-10, -4))
    segments = batch(4)[3]
    tail = bank.image_ids[-segments.num_segments :]
    assert torch.equal(tail, -1 - (8 + segments.image_ids))


def test_default_affinity_labels_use_the_memory_threshold():
    segments = batch(2)[3]
    memory = PrototypeMemory(1, affinity_threshold=0.5)
    memory.push(segments)
    want = affinity_labels(segments, threshold=0.5)
    assert torch.equal(memory.bank().affinity_labels, want)
    assert not torch.equal(want, segments.labels)  # some segment borrowed a label


def test_labels_per_segment_and_tags_override():
    segments = batch(3)[3]
    memory = PrototypeMemory(1)
    custom = torch.arange(segments.num_segments)
    tags = torch.tensor([[True, False, False, True], [True, True, False, False]])
    memory.push(segments, custom, tags=tags)
    bank = memory.bank()
    assert torch.equal(bank.affinity_labels, custom)
    assert torch.equal(bank.tags, tags[segments.image_ids])


def test_bank_has_no_tags_unless_every_batch_has_them():
    memory = PrototypeMemory(2)
    segments = batch(4)[3]
    memory.push(Segments(**{**vars(segments), "tags": None}))
    memory.push(segments)
    assert memory.bank().tags is None
    memory.push(segments)  # the untagged batch drops out
    assert memory.bank().tags is not None


def test_bad_inputs_raise():
    for size in (-1, 1.5, True):
        with pytest.raises(ValueError, match="size"):
            PrototypeMemory(size)
    segments = batch(5)[3]
    memory = PrototypeMemory(2)
    with pytest.raises(ValueError, match="labels_per_segment"):
        memory.push(segments, torch.zeros(segments.num_segments + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="tags must be"):
        memory.push(segments, tags=torch.ones(3, 3, dtype=torch.bool))
    memory.push(segments)
    with pytest.raises(ValueError, match="classes"):
        memory.push(segments, tags=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="lacks"):
        memory.load_state_dict({"batches": []})
    with pytest.raises(ValueError, match="fields"):
        memory.load_state_dict({"images_pushed": 0, "batches": [{"prototypes": None}]})


def save_and_load(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_banks_equal(a: MemoryBank, b: MemoryBank):
    for name in ("prototypes", "labels", "tags", "image_ids", "affinity_labels"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_state_dict_round_trip_restores_the_bank_and_the_id_counter():
    memory = PrototypeMemory(2)
    for seed in range(3):
        memory.push(batch(seed)[3])
    restored = PrototypeMemory(2)
    restored.load_state_dict(save_and_load(memory.state_dict()))
    assert len(restored) == 2
    assert_banks_equal(restored.bank(), memory.bank())
    segments = batch(9)[3]
    memory.push(segments)
    restored.push(segments)  # a resumed run goes on exactly as the original
    assert_banks_equal(restored.bank(), memory.bank())


def test_loading_into_a_smaller_memory_keeps_the_newest_batches():
    memory = PrototypeMemory(3)
    pushed = [batch(seed)[3] for seed in range(3)]
    for segments in pushed:
        memory.push(segments)
    small = PrototypeMemory(1)
    small.load_state_dict(memory.state_dict())
    assert len(small) == 1
    assert torch.equal(small.bank().labels, pushed[-1].labels)


def test_memory_feeds_the_relations():
    memory = PrototypeMemory(2)
    emb, labels, _, segments = batch(6)
    without = semantic_annotation(emb, labels, segments, memory, concentration=6.0)
    memory.push(batch(7)[3])
    with_memory = semantic_annotation(emb, labels, segments, memory, concentration=6.0)
    assert torch.isfinite(with_memory) and with_memory.item() != without.item()


def test_a_memory_without_affinity_labels_keeps_everything_else():
    # a run without feature affinity leaves its S x S comparison out: the same bank otherwise,
    # saved and restored with it; the feature-affinity relation then names what is missing
    full, lean = PrototypeMemory(2), PrototypeMemory(2, keep_affinity=False)
    for seed in range(3):
        full.push(batch(seed)[3])
        lean.push(batch(seed)[3])
    bank = lean.bank()
    assert bank.affinity_labels is None
    for name in ("prototypes", "labels", "tags", "image_ids"):
        assert torch.equal(getattr(bank, name), getattr(full.bank(), name))
    restored = PrototypeMemory(2, keep_affinity=False)
    restored.load_state_dict(save_and_load(lean.state_dict()))
    assert restored.bank().affinity_labels is None
    emb, labels, _, segments = batch(4)
    with pytest.raises(ValueError, match="keep_affinity=True"):
        feature_affinity(emb, segments, lean, concentration=12.0)
