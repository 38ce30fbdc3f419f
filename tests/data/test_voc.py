import json

import numpy as np
import pytest
from mini_voc import CLASSES, write_mini_voc, write_palette_png
from PIL import Image
from scipy import ndimage

from spml_lab.constants import IGNORE_INDEX
from spml_lab.data import datasets, labelio, voc, voc_files


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return write_mini_voc(tmp_path_factory.mktemp("download"))


@pytest.fixture(scope="module")
def prepared(mini, tmp_path_factory):
    """The miniature download prepared with SBD and ScribbleSup, in one process."""
    out = tmp_path_factory.mktemp("prepared") / "voc"
    voc.prepare_voc(mini.devkit, out, sbd=mini.sbd, scribbles=mini.scribbles, workers=1)
    return out


def _ids(root, split, annotation="full"):
    return [item["name"] for item in datasets.from_folder(root, split, annotation)]


def _fresh(tmp_path, **options):
    """A private miniature download (tests that damage it)."""
    return write_mini_voc(tmp_path / "download", **options)


# ---------------------------------------------------------------------- what is written


def test_splits_are_the_image_sets_and_train_aug_the_set_arithmetic(mini, prepared):
    assert _ids(prepared, "train") == mini.splits["train"]
    assert _ids(prepared, "val") == mini.splits["val"]
    assert set(_ids(prepared, "train_aug")) == mini.train_aug
    assert len(_ids(prepared, "train_aug")) == len(mini.train_aug) == 6  # no duplicate
    meta = datasets.read_metadata(prepared / "dataset.json")
    assert meta["splits"] == {"train": 3, "val": 2, "train_aug": 6}
    assert meta["class_names"] == list(CLASSES)


def test_dense_labels_are_the_palette_indices_or_the_sbd_class_map(mini, prepared):
    for name in mini.train_aug | set(mini.splits["val"]):
        written = labelio.read_label_png(prepared / "semantic" / f"{name}.png")
        np.testing.assert_array_equal(written, mini.semantic[name])
    # SegmentationClass wins where both exist: its 255 band is in the written file
    assert (labelio.read_label_png(prepared / "semantic" / "2007_000001.png") == IGNORE_INDEX).any()
    assert not (
        labelio.read_label_png(prepared / "semantic" / "2008_000001.png") == IGNORE_INDEX
    ).any()
    assert datasets.read_metadata(prepared / "dataset.json")["ground_truth"] == {
        "SegmentationClass": 5,
        "SBD GTcls": 3,
    }


def test_images_are_the_jpegs_byte_for_byte(mini, prepared):
    for name in mini.splits["train"]:
        source = mini.voc_dir / "JPEGImages" / f"{name}.jpg"
        assert (prepared / "images" / f"{name}.jpg").read_bytes() == source.read_bytes()


def test_boxes_are_the_xml_boxes_smaller_over_larger(mini, prepared):
    for name in mini.train_aug:
        expected = np.zeros(mini.semantic[name].shape, np.uint8)
        boxes = mini.boxes[name]
        area = (boxes[:, 3] - boxes[:, 1]) * (boxes[:, 4] - boxes[:, 2])
        for cls, y0, x0, y1, x1 in boxes[np.argsort(-area, kind="stable")]:
            expected[y0:y1, x0:x1] = cls
        got = labelio.read_label_png(prepared / "boxes" / f"{name}.png")
        np.testing.assert_array_equal(got, expected, err_msg=name)


def test_tags_are_the_xml_object_names_and_background(mini, prepared):
    data = datasets.from_folder(prepared, "train_aug", "tags")
    for index in range(len(data)):
        item = data[index]
        expected = {0} | {CLASSES.index(n) for n in mini.names[item["name"]]}
        assert set(np.flatnonzero(item["tags"].numpy()).tolist()) == expected
        assert (item["label"] == IGNORE_INDEX).all()  # tags only: no pixel is labelled


def test_scribbles_are_the_polylines_and_points_their_middles(mini, prepared):
    for name in mini.train_aug:
        scribbles = labelio.read_label_png(prepared / "scribbles" / f"{name}.png")
        points = labelio.read_label_png(prepared / "points" / f"{name}.png")
        for cls, vertices in mini.scribble_lines[name][1:]:  # objects, drawn over background
            (row, x0), (_, x1) = vertices[0].astype(int), vertices[-1].astype(int)
            assert (scribbles[row, x0 : x1 + 1] == cls).all()
            assert points[row, (x0 + x1) // 2] == cls
        # a 3 px disc around a 1 px line: nothing labelled 4 rows away from every stroke
        rows = {int(v[0, 0]) for _, v in mini.scribble_lines[name]}
        far = [r for r in range(scribbles.shape[0]) if min(abs(r - s) for s in rows) > 3]
        assert (scribbles[far] == IGNORE_INDEX).all()
        # one point per scribble, each a disc of radius 6 at most
        components = ndimage.label(points != IGNORE_INDEX)[1]
        assert 1 <= components <= len(mini.scribble_lines[name])
    meta = datasets.read_metadata(prepared / "dataset.json")
    assert meta["points"]["source"] == "scribbles" and meta["scribbles"]["radius"] == 3


def test_superpixels_settings_are_recorded_and_give_regions(prepared):
    meta = datasets.read_metadata(prepared / "dataset.json")
    assert (meta["superpixel_method"], meta["superpixel_options"]) == (
        "watershed",
        {"n_segments": 64},
    )
    ids = labelio.read_id_png(prepared / "superpixels" / "2007_000001.png")
    assert 20 <= len(np.unique(ids)) <= 80  # ~64 seeds on a 48 x 64 image


def test_points_from_masks_one_per_instance_or_component(mini, tmp_path):
    out = tmp_path / "voc"
    voc.prepare_voc(mini.devkit, out, sbd=mini.sbd, workers=1)
    meta = datasets.read_metadata(out / "dataset.json")
    assert meta["points"]["source"] == "masks" and meta["scribbles"] is None
    assert not (out / "lists" / "train_scribbles.txt").exists()
    for name in mini.train_aug:
        points = labelio.read_label_png(out / "points" / f"{name}.png")
        truth = mini.full_semantic[name]
        labelled = points != IGNORE_INDEX
        assert (points[labelled] == truth[labelled]).all()  # only ever the true class
        objects = {cls for cls, *_ in mini.boxes[name].tolist()}
        assert set(np.unique(points[labelled]).tolist()) >= objects  # every object has one
        # one mark per instance (SegmentationObject) or per connected piece of a class (SBD)
        eight = np.ones((3, 3))
        for cls in objects:
            marks = ndimage.label(points == cls, structure=eight)[1]
            if name in mini.splits["train"]:
                regions = sum(c == cls for c, *_ in mini.boxes[name].tolist())
            else:
                regions = ndimage.label(truth == cls, structure=eight)[1]
            assert 1 <= marks <= regions, (name, cls)


# ---------------------------------------------------------------------- bad input


def _missing_jpeg(mini):
    path = mini.voc_dir / "JPEGImages" / "2007_000002.jpg"
    path.unlink()
    return path, FileNotFoundError, "JPEG"


def _mask_size(mini):
    path = mini.voc_dir / "SegmentationClass" / "2007_000002.png"
    write_palette_png(path, np.zeros((40, 48), np.uint8))  # the image is 64 x 48 (H x W)
    return path, ValueError, "mask is 40 x 48"


def _broken_xml(mini):
    path = mini.voc_dir / "Annotations" / "2007_000002.xml"
    path.write_text("<annotation><size><width>64</width>")
    return path, ValueError, "XML does not parse"


def _palette_index(mini):
    path = mini.voc_dir / "SegmentationClass" / "2007_000002.png"
    label = labelio.read_label_png(path).copy()
    label[0, 0] = 30
    write_palette_png(path, label)
    return path, ValueError, r"palette indices \[30\] are outside the 21 VOC classes"


def _bad_mat(mini):
    path = mini.sbd / "cls" / "2008_000001.mat"
    path.write_bytes(b"not a mat file")
    return path, ValueError, "not a readable .mat"


def _broken_scribbles(mini):
    path = mini.scribbles / "2007_000002.xml"
    path.write_text("<annotation><object><name>cat")
    return path, ValueError, "XML does not parse"


BAD = [_missing_jpeg, _mask_size, _broken_xml, _palette_index, _bad_mat, _broken_scribbles]


@pytest.mark.parametrize("damage", BAD, ids=[f.__name__.strip("_") for f in BAD])
def test_bad_input_names_the_file_or_is_reported_with_skip_bad(tmp_path, damage):
    mini = _fresh(tmp_path, num_train=2, num_val=1, num_sbd=1)
    path, error, reason = damage(mini)
    sources = {"sbd": mini.sbd, "scribbles": mini.scribbles, "workers": 1}
    with pytest.raises(error, match=reason) as raised:
        voc.prepare_voc(mini.devkit, tmp_path / "strict", **sources)
    assert str(path) in str(raised.value)
    assert not (tmp_path / "strict" / "dataset.json").exists()
    out = tmp_path / "strict"  # the stopped prepare continues, leaving the bad image out
    result = voc.prepare_voc(mini.devkit, out, skip_bad=True, **sources)
    report = json.loads((out / voc.BAD_REPORT).read_text())
    assert [r["file"] for r in report] == [str(path)] and report == result.bad
    assert reason.replace("\\", "") in report[0]["reason"]
    bad_id = path.stem
    assert report[0]["id"] == bad_id
    listed = (out / "lists" / "train_aug_full.txt").read_text()
    assert bad_id not in listed and listed.count("\n") == len(mini.train_aug) - 1
    assert datasets.read_metadata(out / "dataset.json")["bad_images"] == 1


def test_rgb_mask_is_refused_not_read_by_colour(tmp_path):
    mini = _fresh(tmp_path, num_train=1, num_val=1, num_sbd=0)
    path = mini.voc_dir / "SegmentationClass" / "2007_000001.png"
    Image.open(path).convert("RGB").save(path)
    with pytest.raises(ValueError, match="colour channels") as raised:
        voc.prepare_voc(mini.devkit, tmp_path / "out", workers=1)
    assert str(path) in str(raised.value)


def test_unknown_class_name_in_xml(tmp_path):
    mini = _fresh(tmp_path, num_train=1, num_val=1, num_sbd=0)
    path = mini.voc_dir / "Annotations" / "2007_000001.xml"
    path.write_text(path.read_text().replace("<name>", "<name>x", 1))
    with pytest.raises(ValueError, match="unknown class name 'x"):
        voc.prepare_voc(mini.devkit, tmp_path / "out", workers=1)


# ---------------------------------------------------------------------- resume, folders


def test_an_interrupted_prepare_continues_and_a_finished_one_is_skipped(tmp_path, monkeypatch):
    mini = _fresh(tmp_path, num_train=3, num_val=2, num_sbd=0)
    out = tmp_path / "voc"
    calls = []
    real = voc._prepare_one

    def interrupted(job):
        if len(calls) == 3:
            raise KeyboardInterrupt  # as Ctrl-C during the fourth image
        calls.append(job.image_id)
        return real(job)

    monkeypatch.setattr(voc, "_prepare_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        voc.prepare_voc(mini.devkit, out, workers=1)
    assert not (out / "dataset.json").exists()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert len(stamps) == 3 * 5  # three images, five PNGs each
    calls.clear()
    monkeypatch.setattr(voc, "_prepare_one", lambda job: calls.append(job.image_id) or real(job))
    result = voc.prepare_voc(mini.devkit, out, workers=1)
    assert calls == ["2009_000001", "2009_000002"] and not result.skipped  # only the rest
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert not list(out.rglob("*.part"))
    again = voc.prepare_voc(mini.devkit, out, workers=1)
    assert again.skipped and again.splits == {"train": 3, "val": 2}
    assert calls == ["2009_000001", "2009_000002"]


def test_a_folder_of_something_else_or_other_settings_is_never_written(tmp_path):
    mini = _fresh(tmp_path, num_train=1, num_val=1, num_sbd=0)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no earlier prepare"):
        voc.prepare_voc(mini.devkit, other, workers=1)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    out = tmp_path / "voc"
    voc.prepare_voc(mini.devkit, out, workers=1)
    with pytest.raises(FileExistsError, match="point_radius"):
        voc.prepare_voc(mini.devkit, out, workers=1, point_radius=2)


def test_missing_folders_and_lists_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="JPEGImages"):
        voc.prepare_voc(tmp_path, tmp_path / "out")
    mini = _fresh(tmp_path, num_train=1, num_val=1, num_sbd=0)
    (mini.voc_dir / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match="val.txt: list file not found"):
        voc.prepare_voc(mini.devkit, tmp_path / "out")


def test_readers_give_the_written_values(mini):
    annotation = voc_files.read_voc_xml(mini.voc_dir / "Annotations" / "2007_000001.xml")
    np.testing.assert_array_equal(annotation.boxes, mini.boxes["2007_000001"])
    assert annotation.size == (48, 64) and list(annotation.names) == mini.names["2007_000001"]
    sbd = voc_files.read_sbd_mat(mini.sbd / "cls" / "2008_000001.mat")
    np.testing.assert_array_equal(sbd, mini.full_semantic["2008_000001"])
    lines = voc_files.read_scribble_xml(mini.scribbles / "2007_000001.xml")
    for (cls, got), (want_cls, want) in zip(lines, mini.scribble_lines["2007_000001"], strict=True):
        assert cls == want_cls
        np.testing.assert_allclose(got, want)


def test_draw_scribbles_equals_a_whole_image_dilation():
    from skimage.morphology import disk

    rng = np.random.default_rng(0)
    scribbles = [(c, rng.uniform(-5, 60, (4, 2))) for c in (0, 3, 3, 7)]  # some off the image
    got = voc_files.draw_scribbles(scribbles, (50, 40), radius=4)
    expected = np.full((50, 40), IGNORE_INDEX, np.uint8)
    for cls in (0, 3, 7):
        lines = voc_files.draw_scribbles([s for s in scribbles if s[0] == cls], (50, 40), 0)
        expected[ndimage.binary_dilation(lines != IGNORE_INDEX, structure=disk(4))] = cls
    np.testing.assert_array_equal(got, expected)
