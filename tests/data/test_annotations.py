import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from spml_lab.constants import IGNORE_INDEX
from spml_lab.data import annotations, labelio, synthetic


def _scene():
    """40x40: a big box (class 1), a small box (class 2) overlapping it, a void stripe."""
    semantic = np.zeros((40, 40), np.uint8)
    instance = np.zeros((40, 40), np.int32)
    semantic[5:25, 5:25], instance[5:25, 5:25] = 1, 1  # 20x20 box
    semantic[20:30, 20:30], instance[20:30, 20:30] = 2, 2  # 10x10 box on its corner
    semantic[35:, :] = IGNORE_INDEX  # void
    return semantic, instance


def _regions_of(semantic, instance):
    """(mask, class) per instance, split by class."""
    out = []
    for inst in np.unique(instance[instance > 0]):
        for cls in np.unique(semantic[(instance == inst) & (semantic != IGNORE_INDEX)]):
            out.append(((instance == inst) & (semantic == cls), int(cls)))
    return out


@pytest.fixture(scope="module")
def scenes():
    return {
        kind: synthetic.generate(6, kind=kind, size=96, seed=3) for kind in ("objects", "parts")
    }


# ------------------------------------------------------------------ boxes


def test_boxes_hand_built_overlap_goes_to_smaller_box():
    semantic, instance = _scene()
    boxes = annotations.weak_labels(semantic, instance, "boxes")
    expected = np.zeros((40, 40), np.uint8)
    expected[5:25, 5:25] = 1
    expected[20:30, 20:30] = 2  # the smaller box wins the overlap
    np.testing.assert_array_equal(boxes, expected)


def test_boxes_smaller_box_wins_even_when_listed_first():
    semantic = np.zeros((30, 30), np.uint8)
    instance = np.zeros((30, 30), np.int32)
    semantic[2:28, 2:28], instance[2:28, 2:28] = 3, 2  # big, higher id
    semantic[10:14, 10:14], instance[10:14, 10:14] = 1, 1  # small, inside the big one
    boxes = annotations.weak_labels(semantic, instance, "boxes")
    assert (boxes[10:14, 10:14] == 1).all()
    assert (boxes[2:28, 2:28] != 0).all() and (boxes == 3).sum() == 26 * 26 - 16
    assert (boxes[:2] == 0).all() and (boxes[:, 28:] == 0).all()


def test_instance_boxes_rows():
    semantic, instance = _scene()
    rows = annotations.instance_boxes(semantic, instance)
    assert rows.tolist() == [[1, 5, 5, 25, 25], [2, 20, 20, 30, 30]]


def test_boxes_cover_every_object_pixel(scenes):
    for s in scenes.values():
        labels = annotations.weak_labels_batch(s.semantic, s.instance, "boxes")
        assert labels.dtype == np.uint8 and (labels != IGNORE_INDEX).all()
        fg = s.semantic > 0
        assert (labels[fg] > 0).all()  # every object pixel lies in some box


# ------------------------------------------------------------------ points and scribbles


@pytest.mark.parametrize("kind", ["points", "scribbles"])
@pytest.mark.parametrize("scene_kind", ["objects", "parts"])
def test_marks_carry_only_the_true_class(scenes, kind, scene_kind):
    s = scenes[scene_kind]
    for fraction in (1.0, 0.3) if kind == "scribbles" else (None,):
        options = {} if fraction is None else {"keep_fraction": fraction}
        labels = annotations.weak_labels_batch(s.semantic, s.instance, kind, radius=3, **options)
        assert labels.shape == s.semantic.shape and labels.dtype == np.uint8
        marked = labels != IGNORE_INDEX
        assert marked.any()
        np.testing.assert_array_equal(labels[marked], s.semantic[marked])


@pytest.mark.parametrize("kind", ["points", "scribbles"])
def test_every_instance_and_the_background_get_a_mark(scenes, kind):
    for s in scenes.values():
        for n in range(len(s)):
            labels = annotations.weak_labels(s.semantic[n], s.instance[n], kind)
            for mask, cls in _regions_of(s.semantic[n], s.instance[n]):
                assert (labels[mask] == cls).any(), f"image {n}: a region of class {cls} unmarked"
            assert (labels == 0).any()


def test_points_are_one_pixel_per_region_at_radius_zero():
    semantic, instance = _scene()
    points = annotations.weak_labels(semantic, instance, "points", radius=0)
    # regions: instance 1, instance 2, and the (connected) background
    assert (points != IGNORE_INDEX).sum() == 3
    assert sorted(points[points != IGNORE_INDEX].tolist()) == [0, 1, 2]


def test_points_sit_inside_away_from_the_boundary():
    semantic, instance = _scene()
    points = annotations.weak_labels(semantic, instance, "points", radius=0)
    ((y, x),) = np.argwhere(points == 2)
    assert 22 <= y <= 27 and 22 <= x <= 27  # the inner half of a 10x10 square


def test_one_background_point_per_connected_background_region():
    semantic = np.zeros((20, 30), np.uint8)
    instance = np.zeros((20, 30), np.int32)
    semantic[:, 10:14], instance[:, 10:14] = 4, 1  # full-height bar splits the background
    points = annotations.weak_labels(semantic, instance, "points", radius=0)
    ys, xs = np.nonzero(points == 0)
    assert len(ys) == 2 and (xs < 10).sum() == 1 and (xs >= 14).sum() == 1


def test_small_background_slivers_are_skipped_but_one_background_mark_remains():
    semantic = np.full((20, 20), 3, np.uint8)
    instance = np.ones((20, 20), np.int32)
    semantic[0:2, 0:2] = instance[0:2, 0:2] = 0  # two 4-pixel background corners
    semantic[18:, 18:] = instance[18:, 18:] = 0
    points = annotations.weak_labels(semantic, instance, "points", radius=0, min_area=10)
    assert (points == 0).sum() == 1  # only the largest (first) sliver
    points = annotations.weak_labels(semantic, instance, "points", radius=0, min_area=1)
    assert (points == 0).sum() == 2


def test_marks_are_clipped_to_their_region():
    semantic = np.zeros((12, 12), np.uint8)
    semantic[:, 6:] = 1
    instance = (semantic > 0).astype(np.int32)
    labels = annotations.weak_labels(semantic, instance, "scribbles", radius=6)
    marked = labels != IGNORE_INDEX
    np.testing.assert_array_equal(labels[marked], semantic[marked])


def test_void_pixels_are_never_marked():
    semantic, instance = _scene()
    for kind in ("points", "scribbles"):
        labels = annotations.weak_labels(semantic, instance, kind, radius=5)
        assert (labels[35:] == IGNORE_INDEX).all()


def test_without_instances_components_are_objects():
    semantic = np.zeros((30, 30), np.uint8)
    semantic[2:8, 2:8] = 1
    semantic[20:28, 20:28] = 1  # a second object of the same class
    points = annotations.weak_labels(semantic, None, "points", radius=0)
    assert (points == 1).sum() == 2 and (points == 0).sum() == 1


def test_parts_get_one_point_per_part_class():
    semantic = np.zeros((20, 20), np.uint8)
    instance = np.zeros((20, 20), np.int32)
    semantic[2:10, 5:15], semantic[10:18, 5:15] = 1, 2  # one figure, two parts
    instance[2:18, 5:15] = 7
    points = annotations.weak_labels(semantic, instance, "points", radius=0)
    assert sorted(points[points != IGNORE_INDEX].tolist()) == [0, 1, 2]


def test_keep_fraction_shortens_scribbles_proportionally(scenes):
    s = scenes["objects"]
    counts = {}
    for fraction in (1.0, 0.8, 0.5, 0.3):
        labels = annotations.weak_labels_batch(
            s.semantic, s.instance, "scribbles", radius=0, keep_fraction=fraction
        )
        counts[fraction] = (labels != IGNORE_INDEX).sum()
    regions = sum(len(_regions_of(s.semantic[n], s.instance[n])) + 3 for n in range(len(s)))
    for fraction in (0.8, 0.5, 0.3):  # rounding costs at most one pixel per region
        assert abs(counts[fraction] - fraction * counts[1.0]) <= regions
    dilated = [
        annotations.coverage(
            annotations.weak_labels_batch(s.semantic, s.instance, "scribbles", keep_fraction=f)
        ).mean()
        for f in (1.0, 0.8, 0.5, 0.3)
    ]
    assert dilated == sorted(dilated, reverse=True) and dilated[-1] < 0.6 * dilated[0]


def test_shortened_scribble_is_one_connected_piece():
    semantic = np.zeros((40, 60), np.uint8)
    semantic[10:30, 5:55] = 1
    instance = (semantic > 0).astype(np.int32)
    for seed in range(5):
        labels = annotations.weak_labels(
            semantic, instance, "scribbles", radius=0, keep_fraction=0.5, seed=seed
        )
        _, count = ndimage.label(labels == 1, structure=np.ones((3, 3)))
        assert count == 1


def test_keep_fraction_zero_gives_one_skeleton_pixel():
    semantic, instance = _scene()
    labels = annotations.weak_labels(semantic, instance, "scribbles", radius=0, keep_fraction=0)
    assert (labels != IGNORE_INDEX).sum() == 3


def test_same_seed_same_labels_other_seed_other_labels(scenes):
    s = scenes["objects"]
    for kind in ("points", "scribbles"):
        options = {"keep_fraction": 0.5} if kind == "scribbles" else {}
        a = annotations.weak_labels_batch(s.semantic, s.instance, kind, seed=1, **options)
        b = annotations.weak_labels_batch(s.semantic, s.instance, kind, seed=1, **options)
        c = annotations.weak_labels_batch(s.semantic, s.instance, kind, seed=2, **options)
        np.testing.assert_array_equal(a, b)
        assert (a != c).any()


def test_batch_equals_per_image_calls(scenes):
    s = scenes["parts"]
    batch = annotations.weak_labels_batch(s.semantic, s.instance, "points", seed=4)
    for n in range(len(s)):
        one = annotations.weak_labels(s.semantic[n], s.instance[n], "points", seed=(4, n))
        np.testing.assert_array_equal(batch[n], one)


# ------------------------------------------------------------------ tags, coverage, errors


def test_tags_are_the_set_of_classes(scenes):
    for s in scenes.values():
        num_classes = len(s.class_names)
        tags = annotations.weak_labels_batch(
            s.semantic, s.instance, "tags", num_classes=num_classes
        )
        assert tags.shape == (len(s), num_classes) and tags.dtype == bool
        for n in range(len(s)):
            assert set(np.flatnonzero(tags[n])) == set(np.unique(s.semantic[n]).tolist())


def test_tags_ignore_void_and_check_range():
    semantic, instance = _scene()
    assert annotations.weak_labels(semantic, instance, "tags", num_classes=4).tolist() == [
        True,
        True,
        True,
        False,
    ]
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        annotations.weak_labels(semantic, instance, "tags", num_classes=2)
    with pytest.raises(ValueError, match="needs num_classes="):
        annotations.weak_labels(semantic, instance, "tags")


def test_bad_arguments():
    semantic, instance = _scene()
    with pytest.raises(ValueError, match="unknown kind 'polygons'"):
        annotations.weak_labels(semantic, instance, "polygons")
    with pytest.raises(TypeError, match="takes no option"):
        annotations.weak_labels(semantic, instance, "points", keep_fraction=0.5)
    with pytest.raises(ValueError, match="instance has shape"):
        annotations.weak_labels(semantic, instance[:10], "points")
    with pytest.raises(ValueError, match="keep_fraction must lie"):
        annotations.weak_labels(semantic, instance, "scribbles", keep_fraction=1.5)
    with pytest.raises(ValueError, match="2-D"):
        annotations.weak_labels(semantic[None], instance[None], "boxes")


def test_coverage():
    labels = np.full((2, 4, 5), IGNORE_INDEX, np.uint8)
    labels[0, :2] = 1
    np.testing.assert_allclose(annotations.coverage(labels), [0.5, 0.0])
    assert annotations.coverage(labels[0]) == 0.5


# ------------------------------------------------------------------ PNG files


@pytest.mark.parametrize("palette", [True, False])
def test_label_png_round_trip(tmp_path, palette):
    label = np.random.default_rng(0).integers(0, 21, (17, 23)).astype(np.uint8)
    label[3:5] = IGNORE_INDEX
    path = tmp_path / "sub" / "label.png"
    labelio.write_label_png(path, label, palette=palette)
    with Image.open(path) as image:
        assert image.mode == ("P" if palette else "L")
        if palette:
            assert image.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
    read = labelio.read_label_png(path)
    assert read.dtype == np.uint8
    np.testing.assert_array_equal(read, label)


def test_id_png_round_trip_16_bit_and_rgb(tmp_path):
    ids = np.arange(12 * 9).reshape(12, 9) * 600  # up to 64,200: needs 16 bits
    labelio.write_id_png(tmp_path / "ids.png", ids)
    with Image.open(tmp_path / "ids.png") as image:
        assert image.mode.startswith("I;16")
    np.testing.assert_array_equal(labelio.read_id_png(tmp_path / "ids.png"), ids)
    big = ids * 200  # beyond 16 bits
    with pytest.raises(ValueError, match="use rgb=True"):
        labelio.write_id_png(tmp_path / "big.png", big)
    labelio.write_id_png(tmp_path / "big.png", big, rgb=True)
    np.testing.assert_array_equal(labelio.read_id_png(tmp_path / "big.png"), big)


def test_colour_coded_segmentation_decodes_to_distinct_ids(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[:2, :2] = (1, 2, 3)
    rgb[2:, :] = (0, 0, 255)
    Image.fromarray(rgb).save(tmp_path / "seg.png")
    ids = labelio.read_id_png(tmp_path / "seg.png")
    assert ids[0, 0] == 65536 + 2 * 256 + 3 and ids[3, 3] == 255 and ids[0, 3] == 0
    assert len(np.unique(ids)) == 3


def test_unreadable_and_wrong_label_pngs(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"junk\.png: cannot read image"):
        labelio.read_label_png(tmp_path / "junk.png")
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match=r"rgb\.png: label map has colour channels"):
        labelio.read_label_png(tmp_path / "rgb.png")
    labelio.write_id_png(tmp_path / "wide.png", np.full((3, 3), 300))
    with pytest.raises(ValueError, match=r"wide\.png: label map holds values up to 300"):
        labelio.read_label_png(tmp_path / "wide.png")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        labelio.read_label_png(tmp_path / "missing.png")
    with pytest.raises(ValueError, match=r"must lie in \[0, 255\]"):
        labelio.write_label_png(tmp_path / "x.png", np.full((2, 2), 256))


def test_voc_palette():
    palette = labelio.voc_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert palette[15].tolist() == [192, 128, 128]  # person
    assert len({tuple(c) for c in palette}) == 256


def test_accuracy_is_the_right_share_of_the_labelled_pixels_by_brute_force():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, (3, 6, 7))
    labels = np.where(rng.random(truth.shape) < 0.7, truth, rng.integers(0, 4, truth.shape))
    labels[rng.random(truth.shape) < 0.4] = IGNORE_INDEX
    labels[2] = IGNORE_INDEX  # nothing labelled: no accuracy
    expected = []
    for label, true in zip(labels, truth, strict=True):
        pairs = [(a, b) for a, b in zip(label.ravel(), true.ravel(), strict=True) if a != 255]
        expected.append(sum(a == b for a, b in pairs) / len(pairs) if pairs else np.nan)
    np.testing.assert_allclose(annotations.accuracy(labels, truth), expected)
    assert annotations.accuracy(labels[0], truth[0]) == pytest.approx(expected[0])
    with pytest.raises(ValueError, match="one"):
        annotations.accuracy(labels, truth[0])


def test_points_and_scribbles_are_always_right_and_boxes_are_not():
    scenes = synthetic.generate(3, kind="objects", size=64, seed=0)
    for kind in ("points", "scribbles", "boxes"):
        labels = annotations.weak_labels_batch(scenes.semantic, scenes.instance, kind, seed=0)
        right = annotations.accuracy(labels, scenes.semantic)
        assert (right == 1.0).all() if kind != "boxes" else (right < 1.0).any(), kind
