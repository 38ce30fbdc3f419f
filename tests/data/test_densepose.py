import json

import numpy as np
import pytest
from mini_densepose import write_mini_densepose
from skimage.draw import disk

from spml_lab.constants import IGNORE_INDEX
from spml_lab.data import datasets, densepose, densepose_files, labelio


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return write_mini_densepose(tmp_path_factory.mktemp("download"))


@pytest.fixture(scope="module")
def prepared(mini, tmp_path_factory):
    """The miniature prepared in one process."""
    out = tmp_path_factory.mktemp("prepared") / "densepose"
    densepose.prepare_densepose(mini.files, mini.images, out, workers=1)
    return out


def _fresh(tmp_path):
    """A private miniature download (tests that damage it)."""
    return write_mini_densepose(tmp_path / "download")


def _edit_json(path, change):
    coco = json.loads(path.read_text())
    change(coco)
    path.write_text(json.dumps(coco))


def _first_person(coco):
    return next(a for a in coco["annotations"] if "dp_masks" in a)


# ---------------------------------------------------------------------- what is written


def test_splits_classes_and_flips_read_through_the_generic_reader(mini, prepared):
    train = datasets.from_folder(prepared, "train", "points")
    assert [item["name"] for item in train] == mini.splits["train"]
    val = datasets.from_folder(prepared, "val", "full")
    assert [item["name"] for item in val] == mini.splits["val"]
    meta = datasets.read_metadata(prepared / "dataset.json")
    assert meta["splits"] == {"train": 3, "val": 2}
    assert meta["unannotated"] == {"train": 1, "val": 0}  # image 77 has no DensePose person
    assert meta["class_names"][1] == "torso" and meta["class_names"][14] == "head"
    assert len(meta["class_names"]) == 15
    # a mirrored crop swaps left and right parts: the flip table reaches the dataset
    assert train._flip_lut[[2, 3, 10, 11, 14]].tolist() == [3, 2, 11, 10, 14]
    assert meta["points"]["radius"] == densepose.POINT_RADIUS
    assert "nearest their mean" in meta["points"]["rule"]


def test_ground_truth_is_the_part_grids_in_their_boxes_and_others_unknown(mini, prepared):
    # expected: scikit-image's nearest resize of each 256 x 256 grid into its integer box,
    # larger persons first; 255 on the COCO person without DensePose and on the crowd
    for name, expected in mini.semantic.items():
        written = labelio.read_label_png(prepared / "semantic" / f"{name}.png")
        np.testing.assert_array_equal(written, expected, err_msg=name)
    assert (mini.semantic["COCO_train2014_000000000049"] == IGNORE_INDEX).any()
    assert (mini.semantic["COCO_train2014_000000000061"] == IGNORE_INDEX).any()  # the crowd


def test_one_point_per_part_nearest_the_mean_of_the_points_on_their_part(mini, prepared):
    for name, points in mini.points.items():
        semantic = mini.semantic[name]
        expected = np.full(semantic.shape, IGNORE_INDEX, dtype=np.uint8)
        for part, row, col in points:
            # pixels within POINT_RADIUS of the point, inclusive (draw.disk is strict: + 1e-6)
            rows, cols = disk((row, col), densepose.POINT_RADIUS + 1e-6, shape=semantic.shape)
            keep = semantic[rows, cols] == part  # the disc stays on its part
            expected[rows[keep], cols[keep]] = part
        written = labelio.read_label_png(prepared / "points" / f"{name}.png")
        np.testing.assert_array_equal(written, expected, err_msg=name)
        labelled = written != IGNORE_INDEX
        assert (written[labelled] == semantic[labelled]).all()  # only true classes
    # the trap: a "right hand" point lies on the arm; no hand is seen, so no hand point
    assert not any(2 in {part for part, *_ in points} for points in mini.points.values())
    # torso: B (row 36, col 32), not C, which the stray torso point on the legs would give
    assert (1, 36, 32) in mini.points["COCO_train2014_000000000036"]
    points = labelio.read_label_png(prepared / "points" / "COCO_train2014_000000000036.png")
    assert points[36, 32] == 1


def test_images_are_the_jpegs_byte_for_byte_and_superpixels_have_regions(mini, prepared):
    for name in mini.semantic:
        assert (prepared / "images" / f"{name}.jpg").read_bytes() == mini.jpegs[name].read_bytes()
        sp = labelio.read_id_png(prepared / "superpixels" / f"{name}.png")
        assert sp.shape == mini.semantic[name].shape and len(np.unique(sp)) > 1
    assert not (prepared / "images" / "COCO_train2014_000000000077.jpg").exists()


def test_person_parts_maps_pixel_centres_into_the_float_box():
    # a box 2.5 px wide from x = 1.0: pixel centres 1.5, 2.5, 3.5 fall at 0.2, 0.6, 1.0 of it
    left = np.zeros((256, 256), bool)
    left[:, :128] = True
    masks = [None] * 14
    masks[0] = densepose_files.mask_utils.encode(np.asfortranarray(left.astype(np.uint8)))
    masks[1] = densepose_files.mask_utils.encode(np.asfortranarray((~left).astype(np.uint8)))
    person = densepose_files.Person((1.0, 0.0, 2.5, 1.0), masks, [], [], [])
    assert densepose_files.person_parts(person, (2, 5)).tolist() == [
        [0, 1, 2, 0, 0],  # 0.2 -> left half (torso), 0.6 -> right half; 3.5 is outside
        [0, 0, 0, 0, 0],
    ]


# ---------------------------------------------------------------------- bad input


def _bad_json(change):
    return lambda mini: _edit_json(mini.files["train"], change)


DAMAGE = {
    "missing file": (lambda m: m.files["train"].unlink(), FileNotFoundError, "not found"),
    "not json": (lambda m: m.files["train"].write_text("{"), ValueError, "not valid JSON"),
    "no annotations key": (_bad_json(lambda c: c.pop("annotations")), ValueError,
                           "has no 'annotations'"),
    "image without file_name": (_bad_json(lambda c: c["images"][0].pop("file_name")),
                                ValueError, "has no 'file_name'"),
    "person without dp_I": (_bad_json(lambda c: _first_person(c).pop("dp_I")), ValueError,
                            "has no 'dp_I'"),
    "13 masks": (_bad_json(lambda c: _first_person(c)["dp_masks"].pop()), ValueError,
                 "must list 14 part masks, got 13"),
    "mask of 128 px": (_bad_json(lambda c: _first_person(c)["dp_masks"][0].update(
        size=[128, 128])), ValueError, "not the 256 x 256"),
    "point outside the box grid": (_bad_json(lambda c: _first_person(c)["dp_x"].__setitem__(
        0, 300.0)), ValueError, "dp_x must lie in"),
    "fewer dp_I than dp_x": (_bad_json(lambda c: _first_person(c)["dp_I"].pop()), ValueError,
                             "one per point"),
    "part 25": (_bad_json(lambda c: _first_person(c)["dp_I"].__setitem__(0, 25.0)), ValueError,
                "dp_I must lie in"),
    "mismatched image id": (_bad_json(lambda c: _first_person(c).update(image_id=999)),
                            ValueError, "refers to image_id 999"),
    "image id twice": (_bad_json(lambda c: c["images"].append(dict(c["images"][0]))),
                       ValueError, "listed twice"),
    "image in two splits": (lambda m: _edit_json(m.files["val"], lambda c: c["images"].append(
        {"id": 5, "file_name": "COCO_train2014_000000000036.jpg", "height": 96, "width": 128}
    ) or c["annotations"].append({**_first_person(json.loads(m.files["train"].read_text())),
                                  "image_id": 5})), ValueError, "in one split only"),
    "wrong size in json": (_bad_json(lambda c: c["images"][0].update(height=97)), ValueError,
                           "annotation file says 97 x 128"),
    "missing image": (lambda m: m.jpegs["COCO_val2014_000000000095"].unlink(),
                      FileNotFoundError, "COCO_val2014_000000000095.jpg not found"),
}  # fmt: skip


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_bad_input_names_the_file_before_anything_is_written(tmp_path, damage):
    mini = _fresh(tmp_path)
    change, kind, message = DAMAGE[damage]
    change(mini)
    out = tmp_path / "out"
    with pytest.raises(kind, match=message) as error:
        densepose.prepare_densepose(mini.files, mini.images, out, workers=1)
    named = [str(path) for path in (*mini.files.values(), *mini.jpegs.values())]
    assert any(path in str(error.value) for path in named), str(error.value)
    assert not out.exists()


def test_skip_bad_leaves_a_missing_image_out_and_reports_it(tmp_path):
    mini = _fresh(tmp_path)
    missing = mini.jpegs["COCO_val2014_000000000095"]
    missing.unlink()
    out = tmp_path / "out"
    prepared = densepose.prepare_densepose(mini.files, mini.images, out, workers=1, skip_bad=True)
    assert prepared.splits == {"train": 3, "val": 1}
    report = json.loads((out / "bad_images.json").read_text())
    assert [(r["id"], r["file"]) for r in report] == [("COCO_val2014_000000000095", str(missing))]
    assert len(datasets.from_folder(out, "val", "full")) == 1


def test_bad_arguments_and_folders_are_refused(tmp_path, mini):
    with pytest.raises(FileNotFoundError, match="COCO images folder"):
        densepose.prepare_densepose(mini.files, tmp_path / "nowhere", tmp_path / "a")
    with pytest.raises(ValueError, match="point_radius"):
        densepose.prepare_densepose(mini.files, mini.images, tmp_path / "a", point_radius=-1)
    with pytest.raises(ValueError, match="at least one split"):
        densepose.prepare_densepose({}, mini.images, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        densepose.prepare_densepose(mini.files, mini.images, other, workers=1)
    assert sorted(p.name for p in other.iterdir()) == ["mine.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        densepose.prepare_densepose(mini.files, mini.images, a_file, workers=1)


# ---------------------------------------------------------------------- resume


def test_an_interrupted_prepare_continues_and_a_finished_one_is_skipped(
    tmp_path, mini, monkeypatch
):
    out = tmp_path / "dp"
    calls = []
    real = densepose._prepare_one

    def interrupted(job):
        if len(calls) == 2:
            raise KeyboardInterrupt  # as Ctrl-C during the third image
        calls.append(job.image.image_id)
        return real(job)

    monkeypatch.setattr(densepose, "_prepare_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        densepose.prepare_densepose(mini.files, mini.images, out, workers=1)
    assert not (out / "dataset.json").exists()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert len(stamps) == 2 * 3  # two whole images: semantic, points, superpixels

    redone = []
    monkeypatch.setattr(densepose, "_prepare_one", lambda job: redone.append(job) or real(job))
    prepared = densepose.prepare_densepose(mini.files, mini.images, out, workers=1)
    assert not prepared.skipped and len(redone) == 3  # only the three not done
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert prepared.splits == {"train": 3, "val": 2}

    again = densepose.prepare_densepose(mini.files, mini.images, out, workers=1)
    assert again.skipped and again.splits == {"train": 3, "val": 2} and len(redone) == 3
    with pytest.raises(FileExistsError, match="point_radius"):
        densepose.prepare_densepose(mini.files, mini.images, out, workers=1, point_radius=1)
