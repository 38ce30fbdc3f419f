import numpy as np
import pytest
import torch
from skimage.measure import label as connected_components

from spml_lab.constants import IGNORE_INDEX
from spml_lab.data import annotations
from spml_lab.labelling import cam


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
    assert got.tolist() == [[[IGNORE_INDEX, 1, IGNORE_INDEX, 3, IGNORE_INDEX]]]


def test_tag_labels_by_hand_with_background_score():
    cams = _cams([0, 0, 0, 0], [0.1, 0.7, 0.25, 0.0], [1, 1, 1, 1], [0.05, 0.2, 0.1, 0.0])
    tags = torch.tensor([[True, True, False, True]])
    # background = (1 - max tagged CAM) ** 6: 0.9**6 = 0.531, 0.3**6, 0.75**6 = 0.178, 1
    # px2: winner 0.25 (class 1) above 0.2; with threshold 0.3 it is unlabelled
    got = cam.cam_pseudo_labels(cams, tags, threshold=0.2, alpha=6)
    assert got.tolist() == [[[0, 1, 1, 0]]]
    assert cam.cam_pseudo_labels(cams, tags, threshold=0.3, alpha=6).tolist() == [
        [[0, 1, IGNORE_INDEX, 0]]
    ]
    # without the background tag, background never appears either
    no_bg = torch.tensor([[False, True, False, True]])
    assert cam.cam_pseudo_labels(cams, no_bg, alpha=6).tolist() == [
        [[IGNORE_INDEX, 1, 1, IGNORE_INDEX]]
    ]


def brute_force_tags(cams, tags, threshold, alpha):
    batch, classes, height, width = cams.shape
    out = np.full((batch, height, width), IGNORE_INDEX, np.uint8)
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
    assert (got[0] == IGNORE_INDEX).all()


def test_tag_labels_resize_to_size():
    cams = torch.zeros(1, 2, 2, 2)
    cams[0, 1, 0, 0] = 1.0
    got = cam.cam_pseudo_labels(cams, torch.tensor([[False, True]]), alpha=None, size=(8, 8))
    assert got.shape == (1, 8, 8)
    assert got[0, 0, 0] == 1 and got[0, -1, -1] == IGNORE_INDEX


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
    assert plain.tolist() == [[[IGNORE_INDEX, 1, IGNORE_INDEX, IGNORE_INDEX, 2, IGNORE_INDEX, 0]]]
    # alpha 6: n = 0 gives background score 1 > 0.5; n = 0.5 gives 0.016 and 0.5: unlabelled
    seam = cam.box_pseudo_labels(cams, boxes, threshold=0.5, alpha=6)
    assert seam.tolist() == [[[0, 1, IGNORE_INDEX, 0, 2, IGNORE_INDEX, 0]]]


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
                        out[b, y, x] = IGNORE_INDEX
                        continue
                    n = (cams[b, cls, y, x] - low) / (high - low)
                    bg = (1 - n) ** alpha if alpha is not None else -1.0
                    if bg >= n:
                        out[b, y, x] = 0 if bg > threshold else IGNORE_INDEX
                    else:
                        out[b, y, x] = cls if n > threshold else IGNORE_INDEX
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
    boxes[0, 7, 7] = IGNORE_INDEX
    cams = torch.zeros(1, 2, 2, 2)
    cams[0, 1, 0, 0] = 1.0
    got = cam.box_pseudo_labels(cams, boxes, alpha=None)
    assert got.shape == (1, 8, 8)
    assert (
        got[0, 0, 0] == 1
        and got[0, 3, 3] == IGNORE_INDEX
        and got[0, 5, 5] == 0
        and got[0, 7, 7] == IGNORE_INDEX
    )


def test_box_labels_reject_unknown_class():
    with pytest.raises(ValueError, match="2 channels"):
        cam.box_pseudo_labels(torch.zeros(1, 2, 3, 3), torch.full((1, 3, 3), 4))
