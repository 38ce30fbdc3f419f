import json

import numpy as np
import pytest
import torch
from PIL import Image

from spml_lab import constants
from spml_lab.constants import IGNORE_INDEX
from spml_lab.data import datasets, labelio


def _write_image(path, array, fmt="JPEG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def _random_sample(rng, height, width, num_classes):
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    label = rng.integers(0, num_classes, (height, width)).astype(np.uint8)
    superpixel = (np.arange(height)[:, None] // 4) * 100 + np.arange(width)[None, :] // 4
    return image, label, superpixel


def _make_data_folder(root, num=3, size=24):
    """What `spml-lab make-data` writes, by hand: dataset.json, folders, lists."""
    rng = np.random.default_rng(2)
    names = [f"{i:05d}" for i in range(num)]
    lists = {a: [] for a in constants.ANNOTATIONS}
    for name in names:
        image, label, superpixel = _random_sample(rng, size, size, 4)
        label[:, :8] = 0
        _write_image(root / "images" / "train" / f"{name}.jpg", image)
        labelio.write_label_png(root / "semantic" / "train" / f"{name}.png", label)
        labelio.write_id_png(root / "superpixels" / "train" / f"{name}.png", superpixel)
        sparse = np.where(rng.random(label.shape) < 0.1, label, IGNORE_INDEX).astype(np.uint8)
        for annotation in ("points", "scribbles", "boxes"):
            labelio.write_label_png(root / annotation / "train" / f"{name}.png", sparse)
        for annotation in constants.ANNOTATIONS:
            folder = "semantic" if annotation in ("full", "tags") else annotation
            lists[annotation].append(
                f"images/train/{name}.jpg {folder}/train/{name}.png superpixels/train/{name}.png"
            )
    (root / "lists").mkdir()
    for annotation, lines in lists.items():
        (root / "lists" / f"train_{annotation}.txt").write_text("\n".join(lines) + "\n")
    meta = {
        "name": "tiny",
        "kind": "objects",
        "size": size,
        "seed": 0,
        "difficulty": 0.5,
        "class_names": ["background", "a", "b", "c"],
        "splits": {"train": num},
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _png_list(root, image, label, superpixel=None, name="x"):
    """Write one sample with a lossless PNG image and return its one-line list file."""
    _write_image(root / f"{name}_img.png", image, fmt="PNG")
    labelio.write_label_png(root / f"{name}_lab.png", label)
    columns = [f"{name}_img.png", f"{name}_lab.png"]
    if superpixel is not None:
        labelio.write_id_png(root / f"{name}_sp.png", superpixel)
        columns.append(f"{name}_sp.png")
    (root / f"{name}.txt").write_text(" ".join(columns) + "\n")
    return root / f"{name}.txt"


# ------------------------------------------------------------------ layouts


def test_an_item_holds_the_listed_files_and_the_tags_of_its_label(tmp_path):
    image, label, superpixel = _random_sample(np.random.default_rng(0), 20, 30, 21)
    superpixel = superpixel * 3  # ids above 255 (16-bit files) survive
    data = datasets.SegmentationList(tmp_path, _png_list(tmp_path, image, label, superpixel), 21)
    item = data[0]
    assert item["name"] == "x_img" and item["index"] == 0
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 20, 30)
    np.testing.assert_allclose(item["image"].numpy(), image.transpose(2, 0, 1) / 255, atol=1e-6)
    assert item["label"].dtype == torch.int64
    np.testing.assert_array_equal(item["label"].numpy(), label)
    assert item["superpixel"].dtype == torch.int64 and item["superpixel"].max() > 255
    np.testing.assert_array_equal(item["superpixel"].numpy(), superpixel)
    assert item["tags"].tolist() == [c in np.unique(label) for c in range(21)]


def test_a_superpixel_column_repeating_the_label_means_no_superpixels(tmp_path):
    # SPML's evaluation lists put the label path in the superpixel column as a placeholder
    image, label, _ = _random_sample(np.random.default_rng(0), 8, 8, 3)
    list_file = _png_list(tmp_path, image, label)
    list_file.write_text("x_img.png x_lab.png x_lab.png\n")
    data = datasets.SegmentationList(tmp_path, list_file, 3)
    assert not data.has_superpixels and (data[0]["superpixel"] == -1).all()


def test_flip_classes_swap_left_and_right_in_a_mirrored_item(tmp_path):
    label = np.full((6, 8), IGNORE_INDEX, dtype=np.uint8)
    label[2, 1:3] = 1  # a "right" part on the left half
    image = np.random.default_rng(1).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    list_file = _png_list(tmp_path, image, label)
    data = datasets.SegmentationList(tmp_path, list_file, 3, train=True, flip_classes=[0, 2, 1])
    plain = datasets.SegmentationList(tmp_path, list_file, 3)[0]
    seen = set()
    for epoch in range(12):
        data.set_epoch(epoch)
        item = data[0]
        flipped = torch.equal(item["image"], plain["image"].flip(-1))
        if flipped:  # right (1) on the left becomes left (2) on the right
            assert torch.equal(item["label"] == 2, (plain["label"] == 1).flip(-1))
            assert not (item["label"] == 1).any()
        else:
            assert torch.equal(item["label"], plain["label"])
        seen.add(flipped)
    assert seen == {True, False}


def test_from_folder_and_tags_only(tmp_path):
    root = _make_data_folder(tmp_path)
    full = datasets.from_folder(root, "train", "full")
    assert full.class_names == ["background", "a", "b", "c"] and full.has_superpixels
    tags = datasets.from_folder(root, "train", "tags")
    item, reference = tags[2], full[2]
    assert (item["label"] == IGNORE_INDEX).all()  # the mask only gave the tags
    assert torch.equal(item["tags"], reference["tags"]) and item["tags"][0]
    points = datasets.from_folder(root, "train", "points")[0]
    assert (points["label"] != IGNORE_INDEX).float().mean() < 0.3
    with pytest.raises(ValueError, match=r"no split 'test'; it has \['train'\]"):
        datasets.from_folder(root, "test", "full")
    with pytest.raises(ValueError, match="unknown annotation"):
        datasets.from_folder(root, "train", "polygons")
    with pytest.raises(FileNotFoundError, match="dataset.json not found"):
        datasets.from_folder(tmp_path / "nowhere")


def test_embedded_missing_samples_say_how_to_make_them(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "DATA_SAMPLES", tmp_path)
    with pytest.raises(FileNotFoundError, match="make data-samples"):
        datasets.embedded("objects")
    _make_data_folder(tmp_path / "objects")
    data = datasets.embedded("objects", "train", "scribbles", train=True, crop_size=16)
    assert data[0]["image"].shape == (3, 16, 16)


@pytest.mark.skipif(
    not (datasets.DATA_SAMPLES / "objects" / "dataset.json").is_file(),
    reason="spml_lab/data_samples/ not generated yet",
)
def test_committed_embedded_samples_load():
    for kind in ("objects", "parts"):
        data = datasets.embedded(kind, "train", "scribbles")
        item = data[0]
        assert item["label"].shape == item["image"].shape[1:] == item["superpixel"].shape


def test_dataloader_batches_items(tmp_path):
    root = _make_data_folder(tmp_path, num=4)
    data = datasets.from_folder(root, "train", "scribbles", train=True, crop_size=(16, 12))
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=4)))
    assert batch["image"].shape == (4, 3, 16, 12) and batch["label"].shape == (4, 16, 12)
    assert batch["tags"].shape == (4, 4) and batch["index"].tolist() == [0, 1, 2, 3]
    assert batch["name"] == ["00000", "00001", "00002", "00003"]


# ------------------------------------------------------------------ bad input


def test_missing_and_empty_list_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"list file not found: .*nope\.txt"):
        datasets.SegmentationList(tmp_path, tmp_path / "nope.txt", 2)
    (tmp_path / "empty.txt").write_text("\n  \n# only a comment\n")
    with pytest.raises(ValueError, match=r"empty\.txt is empty"):
        datasets.SegmentationList(tmp_path, tmp_path / "empty.txt", 2)


def test_missing_listed_file_names_it_and_the_line(tmp_path):
    image, label, _ = _random_sample(np.random.default_rng(0), 8, 8, 2)
    list_file = _png_list(tmp_path, image, label)
    list_file.write_text(list_file.read_text() + "x_img.png gone.png\n")
    with pytest.raises(
        FileNotFoundError, match=r"gone\.png not found \(listed in .*x\.txt line 2: 'x_img.png"
    ):
        datasets.SegmentationList(tmp_path, list_file, 2)


def test_malformed_lines(tmp_path):
    image, label, _ = _random_sample(np.random.default_rng(0), 8, 8, 2)
    list_file = _png_list(tmp_path, image, label)
    (tmp_path / "four.txt").write_text("a b c d\n")
    with pytest.raises(ValueError, match=r"four\.txt line 1: expected 'image \[label"):
        datasets.SegmentationList(tmp_path, tmp_path / "four.txt", 2)
    (tmp_path / "mixed.txt").write_text(list_file.read_text() + "x_img.png\n")
    with pytest.raises(ValueError, match=r"mixed\.txt line 2: 1 columns where the first line"):
        datasets.SegmentationList(tmp_path, tmp_path / "mixed.txt", 2)


def test_size_mismatch_is_reported_at_load_time(tmp_path):
    rng = np.random.default_rng(0)
    image, label, superpixel = _random_sample(rng, 8, 10, 2)
    data = datasets.SegmentationList(tmp_path, _png_list(tmp_path, image, label[:, :9]), 2)
    with pytest.raises(ValueError, match=r"x_lab\.png: size 9x8 \(WxH\) differs from its image"):
        data[0]
    list_file = _png_list(tmp_path, image, label, superpixel[:7], name="y")
    with pytest.raises(ValueError, match=r"y_sp\.png: size 10x7 \(WxH\) differs"):
        datasets.SegmentationList(tmp_path, list_file, 2)[0]


def test_label_out_of_range(tmp_path):
    image, label, _ = _random_sample(np.random.default_rng(0), 8, 8, 2)
    label[0, 0], label[1, 1] = 7, IGNORE_INDEX
    data = datasets.SegmentationList(tmp_path, _png_list(tmp_path, image, label), 2)
    with pytest.raises(ValueError, match=r"x_lab\.png: label values \[7\] are out of range for "):
        data[0]
    assert (
        datasets.SegmentationList(tmp_path, tmp_path / "x.txt", 8)[0]["label"][1, 1] == IGNORE_INDEX
    )


def test_unreadable_png(tmp_path):
    image, label, _ = _random_sample(np.random.default_rng(0), 8, 8, 2)
    list_file = _png_list(tmp_path, image, label)
    (tmp_path / "x_lab.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    data = datasets.SegmentationList(tmp_path, list_file, 2)
    with pytest.raises(ValueError, match=r"x_lab\.png: cannot read image .*listed in .*line 1"):
        data[0]


def test_bad_options(tmp_path):
    image, label, _ = _random_sample(np.random.default_rng(0), 8, 8, 2)
    list_file = _png_list(tmp_path, image, label)
    with pytest.raises(ValueError, match="crop_size"):
        datasets.SegmentationList(tmp_path, list_file, 2, crop_size=0)
    with pytest.raises(ValueError, match="flip_classes needs one entry per class"):
        datasets.SegmentationList(tmp_path, list_file, 2, flip_classes=[0, 1, 2])
    with pytest.raises(ValueError, match="scale_range"):
        datasets.SegmentationList(tmp_path, list_file, 2, scale_range=(2.0, 1.0))


# ------------------------------------------------------------------ augmentation


@pytest.fixture
def coded(tmp_path):
    """A PNG sample whose pixels say where they came from: R = column, G = row."""
    height, width = 24, 32
    yy, xx = np.mgrid[:height, :width]
    image = np.stack([xx * 7, yy * 10, np.full_like(xx, 200)], axis=-1).astype(np.uint8)
    label = ((xx // 4 + yy // 6) % 5).astype(np.uint8)
    superpixel = yy * width + xx  # unique: locates each pixel
    return tmp_path, _png_list(tmp_path, image, label, superpixel), label


def test_crop_size_and_pad_values(coded):
    root, list_file, _ = coded
    data = datasets.SegmentationList(
        root, list_file, 5, train=True, crop_size=(48, 40), scale_range=(0.5, 0.8)
    )
    item = data[0]
    assert item["image"].shape == (3, 48, 40) and item["label"].shape == (48, 40)
    pad = item["superpixel"] == -1
    assert pad.any() and (item["label"][pad] == IGNORE_INDEX).all()
    assert (item["image"][:, pad] == 0).all()
    assert (item["label"][~pad] != IGNORE_INDEX).all()  # the coded label has no unlabelled pixel


def test_crop_smaller_than_image(coded):
    root, list_file, _ = coded
    data = datasets.SegmentationList(
        root, list_file, 5, train=True, crop_size=16, scale_range=(1.0, 1.0), flip=False
    )
    item = data[0]
    assert item["image"].shape == (3, 16, 16) and (item["superpixel"] >= 0).all()


@pytest.mark.parametrize("scale_range", [(1.0, 1.0), (0.6, 1.7)])
def test_image_label_and_superpixel_move_together(coded, scale_range):
    root, list_file, label = coded
    width = label.shape[1]
    data = datasets.SegmentationList(
        root, list_file, 5, train=True, crop_size=20, scale_range=scale_range
    )
    flips = set()
    for epoch in range(8):
        data.set_epoch(epoch)
        item = data[0]
        keep = item["superpixel"] >= 0
        source = item["superpixel"][keep].numpy()
        y, x = source // width, source % width
        # label and superpixel come from the same source pixel (both nearest-neighbour)
        np.testing.assert_array_equal(item["label"][keep].numpy(), label[y, x])
        # the image agrees to within about a pixel (bilinear, antialiased when shrinking)
        column = item["image"][0][keep].numpy() * 255 / 7
        tolerance = 0.01 if scale_range == (1.0, 1.0) else 1.5 / min(scale_range) + 0.5
        assert np.abs(column - x).max() <= tolerance
        columns = torch.nonzero(keep)[:, 1].numpy()
        flips.add(bool(np.corrcoef(columns, x)[0, 1] < 0))  # mirrored: x falls left to right
    assert flips == {True, False}  # some epochs mirrored, some not


def test_augmentation_is_deterministic(coded):
    root, list_file, _ = coded

    def draw(seed, epoch):
        data = datasets.SegmentationList(root, list_file, 5, train=True, crop_size=20, seed=seed)
        data.set_epoch(epoch)
        return data[0]

    a, b = draw(0, 0), draw(0, 0)
    for key in ("image", "label", "superpixel"):
        assert torch.equal(a[key], b[key])
    assert any(not torch.equal(a["superpixel"], draw(0, e)["superpixel"]) for e in (1, 2, 3))
    assert any(not torch.equal(a["superpixel"], draw(s, 0)["superpixel"]) for s in (1, 2, 3))


def test_eval_mode_returns_files_unchanged(coded):
    root, list_file, label = coded
    item = datasets.SegmentationList(root, list_file, 5)[0]
    np.testing.assert_array_equal(item["label"].numpy(), label)
    assert item["superpixel"][3, 5] == 3 * label.shape[1] + 5


def test_a_16_bit_grey_image_is_decoded_faithfully(tmp_path):
    ramp = (np.arange(32 * 48).reshape(32, 48) * 40).astype(np.uint16)  # up to 61,400
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as written:
        assert written.mode.startswith("I")  # not an 8-bit mode
    image = labelio.read_image(tmp_path / "grey16.png")
    np.testing.assert_allclose(image, np.repeat((ramp / 65535.0)[..., None], 3, -1), rtol=1e-6)
    assert image.max() < 1.0  # Pillow's convert("RGB") would give all 1.0
    Image.fromarray(np.full((4, 4), 1e6, np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match=r"float.tif: pixels of mode 'F'"):
        labelio.read_image(tmp_path / "float.tif")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"num_classes": 3}', "needs 'class_names'"),
        ('{"class_names": ["bg", "a"], "num_classes": 3}', "num_classes is 3 but class_names"),
    ],
)
def test_a_bad_dataset_json_is_named(tmp_path, text, message):
    (tmp_path / "dataset.json").write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        datasets.from_folder(tmp_path, "train", "full")
    assert str(tmp_path / "dataset.json") in str(error.value)


def test_a_cached_dataset_reads_each_file_once_and_gives_the_same_items(monkeypatch):
    options = {"train": True, "crop_size": 48, "seed": 3}
    plain = datasets.embedded("objects", "train", "scribbles", **options)
    cached = datasets.embedded("objects", "train", "scribbles", cache=True, **options)
    reads = []
    real = datasets.read_image
    monkeypatch.setattr(datasets, "read_image", lambda path: reads.append(path) or real(path))
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for index in (0, 5):
            want, got = plain[index], cached[index]
            assert all(torch.equal(want[k], got[k]) for k in ("image", "label", "superpixel"))
            got["label"].fill_(7)  # a receiver may change its item: the cache must not see it
    assert len(reads) == 2 * 2 + 2  # uncached: every item; cached: each sample once
    assert torch.equal(cached[0]["label"], plain[0]["label"])  # the filled copy left no trace
