import numpy as np
import pytest
import torch
from skimage.measure import label as connected_components

from spml_lab.data import annotations, datasets
from spml_lab.prediction import cam


def _cams(*rows):
    """(1, C, 1, W) CAMs from one list per class (background row first)."""
    return torch.tensor(rows, dtype=torch.float32)[None, :, None, :]


# ---------------------------------------------------------------------- tags


def test_tag_labels_by_hand_without_background_score():
    # classes: 0 background, 1 and 3 tagged, 2 not tagged (its CAM is the highest everywhere)
    cams = _cams(
        [0.9, 0.9, 0.9, 0.9, 0.9],  # ignored: background comes from the rule, not channel 0
        [0.1, 0.7, 0.2, 0.3, 0.0],
        [1.0, 1.0, 1.0, 1.0, 1.0],
        [0.05, 0.2, 0.1, 0.6, 0.2],
    )
    tags = torch.tensor([[True, True, False, True]])
    got = cam.cam_pseudo_labels(cams, tags, threshold=0.2, alpha=None)
    # px0: best 0.1 -> 255; px1: 1; px2: 0.2 exactly at the threshold -> 255; px3: 3; px4: 255
    assert got.dtype == torch.uint8 and got.shape == (1, 1, 5)
    assert got.tolist() == [[[255, 1, 255, 3, 255]]]


def test_tag_labels_by_hand_with_background_score():
    cams = _cams([0, 0, 0, 0], [0.1, 0.7, 0.25, 0.0], [1, 1, 1, 1], [0.05, 0.2, 0.1, 0.0])
    tags = torch.tensor([[True, True, False, True]])
    # background = (1 - max tagged CAM) ** 6: 0.9**6 = 0.531, 0.3**6, 0.75**6 = 0.178, 1
    # px2: winner 0.25 (class 1) above 0.2; with threshold 0.3 it is unlabelled
    got = cam.cam_pseudo_labels(cams, tags, threshold=0.2, alpha=6)
    assert got.tolist() == [[[0, 1, 1, 0]]]
    assert cam.cam_pseudo_labels(cams, tags, threshold=0.3, alpha=6).tolist() == [[[0, 1, 255, 0]]]
    # without the background tag, background never appears either
    no_bg = torch.tensor([[False, True, False, True]])
    assert cam.cam_pseudo_labels(cams, no_bg, alpha=6).tolist() == [[[255, 1, 1, 255]]]


def brute_force_tags(cams, tags, threshold, alpha):
    batch, classes, height, width = cams.shape
    out = np.full((batch, height, width), 255, np.uint8)
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                fg = [k for k in range(1, classes) if tags[b, k]]
                scores = {k: float(cams[b, k, y, x]) for k in fg}
                if alpha is not None and tags[b, 0]:
                    top = max(scores.values(), default=0.0)
                    scores[0] = (1.0 - top) ** alpha
                if scores:
                    k = min(scores, key=lambda c: (-scores[c], c))  # ties: lower class
                    if scores[k] > threshold:
                        out[b, y, x] = k
    return out


@pytest.mark.parametrize("alpha, threshold", [(6.0, 0.2), (6.0, 0.5), (2.0, 0.3), (None, 0.2)])
def test_tag_labels_match_brute_force(alpha, threshold):
    g = torch.Generator().manual_seed(0)
    cams = torch.rand(3, 5, 4, 6, generator=g)
    tags = torch.rand(3, 5, generator=g) < 0.5
    tags[0] = False  # an image without tags: all unlabelled
    got = cam.cam_pseudo_labels(cams, tags, threshold=threshold, alpha=alpha)
    want = brute_force_tags(cams.numpy(), tags.numpy(), threshold, alpha)
    np.testing.assert_array_equal(got.numpy(), want)
    assert (got[0] == 255).all()


def test_tag_labels_resize_to_size():
    cams = torch.zeros(1, 2, 2, 2)
    cams[0, 1, 0, 0] = 1.0
    got = cam.cam_pseudo_labels(cams, torch.tensor([[False, True]]), alpha=None, size=(8, 8))
    assert got.shape == (1, 8, 8)
    assert got[0, 0, 0] == 1 and got[0, -1, -1] == 255


def test_tag_labels_reject_bad_shapes():
    with pytest.raises(ValueError, match="tags must be"):
        cam.cam_pseudo_labels(torch.zeros(1, 3, 2, 2), torch.zeros(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="cams must be"):
        cam.cam_pseudo_labels(torch.zeros(3, 2, 2), torch.zeros(1, 3, dtype=torch.bool))


# ---------------------------------------------------------------------- boxes


def test_box_regions_match_skimage():
    rng = np.random.default_rng(0)
    boxes = rng.integers(0, 3, size=(3, 7, 9))
    regions, count = cam.box_regions(torch.from_numpy(boxes))
    regions = regions.numpy()
    want_count = 0
    for b in range(3):
        for cls in (1, 2):
            pieces = connected_components(boxes[b] == cls, connectivity=1)
            want_count += pieces.max()
            for piece in range(1, pieces.max() + 1):
                ids = np.unique(regions[b][pieces == piece])
                assert len(ids) == 1 and ids[0] > 0  # one region per component
                assert (regions[b] == ids[0]).sum() == (pieces == piece).sum()  # and only it
    assert count == want_count
    assert ((regions == 0) == (boxes == 0)).all()


def test_box_labels_by_hand_overlap_and_threshold():
    # a class-1 box cut in two by a smaller class-2 box drawn over it, then background
    boxes = torch.tensor([[[1, 1, 1, 2, 2, 1, 0]]])
    cams = _cams(
        [0, 0, 0, 0, 0, 0, 0],
        [0.0, 1.0, 0.5, 0.9, 0.9, 0.4, 0.9],  # left piece: n = 0, 1, 0.5 (exactly at 0.5)
        [0, 0, 0, 0.3, 0.7, 0, 0],  # small box: n = 0, 1; class 1's 0.9 there is ignored
    )
    plain = cam.box_pseudo_labels(cams, boxes, threshold=0.5, alpha=None)
    assert plain.dtype == torch.uint8
    # the right class-1 piece is one pixel: a flat CAM, unlabelled; outside: background
    assert plain.tolist() == [[[255, 1, 255, 255, 2, 255, 0]]]
    # alpha 6: n = 0 gives background score 1 > 0.5; n = 0.5 gives 0.016 and 0.5: unlabelled
    seam = cam.box_pseudo_labels(cams, boxes, threshold=0.5, alpha=6)
    assert seam.tolist() == [[[0, 1, 255, 0, 2, 255, 0]]]


def brute_force_boxes(cams, boxes, threshold, alpha):
    out = np.zeros(boxes.shape, np.uint8)
    for b in range(len(boxes)):
        for cls in np.unique(boxes[b]):
            if cls == 0:
                continue
            pieces = connected_components(boxes[b] == cls, connectivity=1)
            for piece in range(1, pieces.max() + 1):
                mask = pieces == piece
                values = cams[b, cls][mask]
                low, high = values.min(), values.max()
                for y, x in zip(*np.nonzero(mask), strict=True):
                    if high - low <= 1e-6:
                        out[b, y, x] = 255
                        continue
                    n = (cams[b, cls, y, x] - low) / (high - low)
                    bg = (1 - n) ** alpha if alpha is not None else -1.0
                    if bg >= n:
                        out[b, y, x] = 0 if bg > threshold else 255
                    else:
                        out[b, y, x] = cls if n > threshold else 255
    return out


@pytest.mark.parametrize("alpha", [6.0, None])
def test_box_labels_match_brute_force_on_drawn_boxes(alpha):
    # boxes drawn by annotations.weak_labels: overlapping objects, the smaller box wins
    semantic = np.zeros((2, 20, 24), np.uint8)
    semantic[0, 2:14, 2:16] = 1
    semantic[0, 8:12, 10:20] = 2
    semantic[0, 15:19, 3:8] = 1
    semantic[1, 4:16, 6:18] = 3
    semantic[1, 6:9, 8:11] = 1
    boxes = annotations.weak_labels_batch(semantic, None, "boxes", min_area=1)
    assert set(np.unique(boxes[0])) == {0, 1, 2}
    g = torch.Generator().manual_seed(1)
    cams = torch.rand(2, 4, 20, 24, generator=g)
    got = cam.box_pseudo_labels(cams, torch.from_numpy(boxes), threshold=0.5, alpha=alpha)
    want = brute_force_boxes(cams.numpy().astype(np.float64), boxes, 0.5, alpha)
    np.testing.assert_array_equal(got.numpy(), want)


def test_box_labels_resize_cams_and_keep_unknown():
    boxes = torch.zeros(1, 8, 8, dtype=torch.long)
    boxes[0, :4, :4] = 1
    boxes[0, 7, 7] = 255
    cams = torch.zeros(1, 2, 2, 2)
    cams[0, 1, 0, 0] = 1.0
    got = cam.box_pseudo_labels(cams, boxes, alpha=None)
    assert got.shape == (1, 8, 8)
    assert got[0, 0, 0] == 1 and got[0, 3, 3] == 255 and got[0, 5, 5] == 0 and got[0, 7, 7] == 255


def test_box_labels_reject_unknown_class():
    with pytest.raises(ValueError, match="2 channels"):
        cam.box_pseudo_labels(torch.zeros(1, 2, 3, 3), torch.full((1, 3, 3), 4))


# ---------------------------------------------------------------------- classifier


def test_classifier_shapes_and_cam_range():
    torch.manual_seed(0)
    net = cam.TagClassifier(5, width=8).eval()
    images = torch.rand(2, 3, 20, 28)
    logits = net(images)
    assert logits.shape == (2, 4)
    torch.testing.assert_close(logits, net.raw_cams(images).mean(dim=(2, 3)))
    maps = net.cams(images, size=(20, 28))
    assert maps.shape == (2, 5, 20, 28)
    assert (maps[:, 0] == 0).all() and maps.min() >= 0 and maps.max() <= 1
    positive = net.raw_cams(images).clamp(min=0).amax(dim=(2, 3)) > 0
    peaks = maps[:, 1:].amax(dim=(2, 3))
    torch.testing.assert_close(peaks[positive], torch.ones_like(peaks[positive]), atol=1e-3, rtol=0)


def squares(num, seed, size=32, side=8):
    """Noise images, each with one square of class 1 (red), 2 (green) or 3 (blue)."""
    rng = np.random.default_rng(seed)
    items, boxes = [], []
    for _ in range(num):
        image = rng.uniform(0.3, 0.7, size=(3, size, size)).astype(np.float32)
        k = int(rng.integers(1, 4))
        y, x = rng.integers(0, size - side, size=2)
        image[:, y : y + side, x : x + side] = 0.1
        image[k - 1, y : y + side, x : x + side] = 0.9
        tags = torch.zeros(4, dtype=torch.bool)
        tags[[0, k]] = True
        items.append({"image": torch.from_numpy(image), "tags": tags})
        boxes.append((k, y, x))
    return items, boxes


def test_classifier_learns_tags_and_cams_peak_in_the_object():
    train, _ = squares(48, seed=0)
    test, where = squares(32, seed=1)
    # dilations (1,): a 27 px receptive field, so positions away from the square cannot see it
    net = cam.train_tag_classifier(
        train, steps=80, batch_size=8, lr=1e-2, seed=0, width=16, dilations=(1,)
    )
    images = torch.stack([item["image"] for item in test])
    tags = torch.stack([item["tags"] for item in test])
    with torch.no_grad():
        accuracy = ((net(images) > 0) == tags[:, 1:]).float().mean()
    maps = net.cams(images, size=(32, 32))
    hits = 0
    for b, (k, y, x) in enumerate(where):
        peak = int(maps[b, k].argmax())
        py, px = divmod(peak, 32)
        hits += (y - 1 <= py < y + 9) and (x - 1 <= px < x + 9)  # the square, 1 px of slack
    assert accuracy > 0.9
    assert hits / len(where) > 0.8


def test_training_is_deterministic_with_a_seed():
    data, _ = squares(8, seed=2)
    nets = [
        cam.train_tag_classifier(data, steps=3, batch_size=4, seed=s, width=8) for s in (5, 5, 6)
    ]
    states = [net.state_dict() for net in nets]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_training_rejects_bad_sizes():
    data, _ = squares(4, seed=3)
    with pytest.raises(ValueError, match="exceeds the 4 images"):
        cam.train_tag_classifier(data, steps=1, batch_size=5)
    with pytest.raises(ValueError, match="must be >= 1"):
        cam.train_tag_classifier(data, steps=0)


# ---------------------------------------------------------------------- quality


def test_pseudo_label_quality_by_hand():
    # claimed pixels: (t 0, p 0), (t 1, p 1), (t 0, p 1), (t 2, p 2); truth 255 at one claimed
    # pixel (not scored) and two pixels unclaimed
    pseudo = torch.tensor([[0, 1, 1, 255], [2, 1, 255, 0]])
    truth = torch.tensor([[0, 1, 0, 1], [2, 255, 2, 1]])
    q = cam.pseudo_label_quality(pseudo, truth, 3)
    # confusion rows t: [[1, 1, 0], [1, 1, 0], [0, 0, 1]] (the last claimed 0 is truth 1)
    # IoU: 0: 1 / (2 + 2 - 1); 1: 1 / (2 + 2 - 1); 2: 1 / 1
    assert q.miou_on_labelled == pytest.approx((1 / 3 + 1 / 3 + 1) / 3)
    assert q.labelled_fraction == 6 / 8  # claimed pixels count whatever the truth says


def test_pseudo_label_quality_matches_scikit_learn_and_accepts_maps_of_different_sizes():
    from sklearn.metrics import jaccard_score

    rng = np.random.default_rng(0)
    pseudo = [torch.from_numpy(rng.choice([0, 1, 2, 3, 255], size=s)) for s in ((5, 7), (4, 3))]
    truth = [torch.from_numpy(rng.integers(0, 4, size=tuple(p.shape))) for p in pseudo]
    q = cam.pseudo_label_quality(pseudo, truth, 4)
    p = np.concatenate([x.numpy().ravel() for x in pseudo])
    t = np.concatenate([x.numpy().ravel() for x in truth])
    known = p != 255
    present = np.union1d(p[known], t[known])
    want = jaccard_score(t[known], p[known], labels=present, average="macro")
    assert q.miou_on_labelled == pytest.approx(want)
    assert q.labelled_fraction == pytest.approx(known.mean())


def test_pseudo_label_quality_of_no_claim_is_nan_and_shapes_must_agree():
    q = cam.pseudo_label_quality(torch.full((2, 2), 255), torch.zeros(2, 2, dtype=torch.long), 2)
    assert np.isnan(q.miou_on_labelled) and q.labelled_fraction == 0.0
    with pytest.raises(ValueError, match="differ"):
        cam.pseudo_label_quality(torch.zeros(2, 2), torch.zeros(2, 3), 2)


# ---------------------------------------------------------------------- files


def test_write_pseudo_labels_round_trip(tmp_path):
    root = datasets.DATA_SAMPLES / "objects"
    torch.manual_seed(0)
    net = cam.TagClassifier(9, width=8).eval()
    for kind in ("tags", "boxes"):
        list_file = cam.write_pseudo_labels(
            net, root, "val", kind, out_root=tmp_path, threshold=0.3, alpha=None
        )
        source = datasets.embedded("objects", "val", kind)
        written = datasets.SegmentationList(tmp_path, list_file, 9)
        assert len(written) == len(source) and written.has_superpixels
        for i in range(3):
            item, original = written[i], source[i]
            assert torch.equal(item["image"], original["image"])
            maps = net.cams(item["image"][None], size=item["image"].shape[-2:])
            rule = dict(threshold=0.3, alpha=None)
            if kind == "tags":
                want = cam.cam_pseudo_labels(maps, original["tags"][None], **rule)
            else:
                want = cam.box_pseudo_labels(maps, original["label"][None], **rule)
            assert torch.equal(item["label"], want[0].long())
