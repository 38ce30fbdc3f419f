"""`spml-lab predict` never replaces an input, refuses bad numbers and huge files, bounds memory.

Each test builds tiny images in tmp_path and labels them with a shipped run, so nothing trains.
"""

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from spml_lab import cli
from spml_lab.data import labelio
from spml_lab.nets import embedding_nets, heads
from spml_lab.prediction import predict

RUN = "shipped:baseline_scribbles"


def photo(path, height=24, width=32, seed=0):
    """Write a small random RGB photo to `path` and return its bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path.read_bytes()


def png_header_only(path, width, height):
    """A PNG whose header claims `width` x `height` RGB pixels, with next to no pixel data."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    idat = zlib.compress(b"\0")  # one byte of one row: the decoder finds the rest missing
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))  # fmt: skip


# ------------------------------------------------------------------ outputs never replace inputs


def test_a_mask_that_would_replace_another_input_is_refused_before_anything_is_written(
    tmp_path, capsys
):
    a, user_photo = tmp_path / "ow" / "a.png", tmp_path / "ow" / "a_mask.png"
    photo(a)
    kept = photo(user_photo, seed=1)  # the user's own photo, named like a.png's mask
    assert cli.main(["predict", RUN, str(a), str(user_photo), "--no-crf"]) == 2
    err = capsys.readouterr().err
    assert f"{user_photo}" in err and f"{a}" in err and "input" in err
    assert user_photo.read_bytes() == kept
    assert sorted(p.name for p in (tmp_path / "ow").iterdir()) == ["a.png", "a_mask.png"]


def test_an_out_folder_where_an_input_has_the_mask_s_name_is_refused(tmp_path, capsys):
    a = tmp_path / "in" / "a.png"
    photo(a)
    kept = photo(tmp_path / "out" / "a_mask.png", seed=1)
    args = ["predict", RUN, str(a), str(tmp_path / "out" / "a_mask.png"), "--out"]
    assert cli.main([*args, str(tmp_path / "out"), "--no-crf"]) == 2
    assert "a_mask.png" in capsys.readouterr().err
    assert (tmp_path / "out" / "a_mask.png").read_bytes() == kept


@pytest.mark.parametrize("spelling", ["absolute", "dotdot", "symlink"])
def test_one_folder_spelt_two_ways_is_one_folder(tmp_path, monkeypatch, capsys, spelling):
    monkeypatch.chdir(tmp_path)
    photo(tmp_path / "col" / "cat.png")
    photo(tmp_path / "col" / "cat.jpg", seed=1)
    (tmp_path / "link").symlink_to(tmp_path / "col")
    other = {
        "absolute": str(tmp_path / "col" / "cat.jpg"),
        "dotdot": "col/../col/cat.jpg",
        "symlink": "link/cat.jpg",
    }[spelling]
    assert cli.main(["predict", RUN, "col/cat.png", other, "--no-crf"]) == 2
    err = capsys.readouterr().err
    assert "col/cat.png" in err and other in err and "cat_mask.png" in err
    assert not (tmp_path / "col" / "cat_mask.png").exists()  # refused before anything is written


def test_a_mask_that_is_a_hard_link_to_an_input_is_refused(tmp_path, capsys):
    photo(tmp_path / "a.png")
    kept = photo(tmp_path / "b.png", seed=1)
    (tmp_path / "a_mask.png").hardlink_to(tmp_path / "b.png")  # one file, two names
    assert cli.main(["predict", RUN, str(tmp_path / "a.png"), str(tmp_path / "b.png")]) == 2
    assert f"replaces the input image {tmp_path / 'b.png'}" in capsys.readouterr().err
    assert (tmp_path / "b.png").read_bytes() == kept


def test_the_message_names_the_file_actually_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    photo(tmp_path / "col" / "cat.png")
    assert cli.main(["predict", RUN, "col/../col/cat.png", "--no-crf"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'col' / 'cat_mask.png'}"


# ---------------------------------------------------------------------- numbers


def test_a_negative_max_side_is_refused_by_the_flag_and_by_the_library(tmp_path, capsys):
    photo(tmp_path / "a.png")
    with pytest.raises(SystemExit) as exit:
        cli.main(["predict", RUN, str(tmp_path / "a.png"), "--max-side", "-5"])
    assert exit.value.code == 2
    assert "argument --max-side: must be >= 0, got -5" in capsys.readouterr().err
    assert not (tmp_path / "a_mask.png").exists()
    net, head = embedding_nets.SmallEmbeddingNet(8, 8).eval(), heads.SoftmaxHead(8, 3).eval()
    with pytest.raises(ValueError, match="max_side must be >= 1, got -5"):
        predict.predict(net, head, torch.rand(1, 3, 8, 8), max_side=-5)
    with pytest.raises(ValueError, match="max_side must be >= 1, got 0"):
        labelio.read_image(tmp_path / "a.png", max_side=0)


# ---------------------------------------------------------------------- huge files


def test_a_decompression_bomb_gets_a_clear_error_naming_the_file_and_the_limit(tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    png_header_only(bomb, 20000, 20000)
    assert cli.main(["predict", RUN, str(bomb)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"spml-lab predict: error: {bomb}: 20000 x 20000")
    assert "400,000,000 pixels" in err and f"{2 * Image.MAX_IMAGE_PIXELS:,}" in err
    assert "--max-pixels" in err


def test_max_pixels_raises_the_limit(tmp_path, monkeypatch, capsys):
    bomb = tmp_path / "bomb.png"
    png_header_only(bomb, 2000, 1000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500_000)  # Pillow refuses above 1,000,000
    assert cli.main(["predict", RUN, str(bomb)]) == 2
    assert "more than the limit of 1,000,000" in capsys.readouterr().err
    # raised high enough, the limit lets the file through to the decoder (which finds no pixels)
    assert cli.main(["predict", RUN, str(bomb), "--max-pixels", "2000000"]) == 2
    assert f"{bomb}: cannot read image" in capsys.readouterr().err


def test_the_pixel_limit_follows_pillow_s_and_the_argument(tmp_path, monkeypatch):
    photo(tmp_path / "a.png", 30, 40)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # the default limit is Pillow's, x 2
    with pytest.raises(ValueError, match=r"a.png: 40 x 30 = 1,200 pixels, more than .* 1,000"):
        labelio.read_image(tmp_path / "a.png")
    assert labelio.read_image(tmp_path / "a.png", max_pixels=1200).shape == (30, 40, 3)
    with pytest.raises(ValueError, match="more than the limit of 1,199"):
        labelio.image_size(tmp_path / "a.png", max_pixels=1199)
    assert Image.MAX_IMAGE_PIXELS == 500  # Pillow's own setting is left as it was


# ---------------------------------------------------------------------- bounded memory


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_a_large_photo_is_decoded_at_most_twice_max_side(tmp_path, monkeypatch, suffix):
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (13, 25, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(coarse).resize((2400, 1200), Image.BILINEAR))
    Image.fromarray(big).save(tmp_path / f"big{suffix}")
    decoded = []  # the size at which Pillow decodes the pixels: what the decoder's memory holds
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(
        ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or load(self)
    )
    image = labelio.read_image(tmp_path / f"big{suffix}", max_side=200)
    assert labelio.image_size(tmp_path / f"big{suffix}") == (1200, 2400)
    assert 200 <= max(image.shape[:2]) < 400 and image.dtype == np.float32
    assert image.shape[0] * 2 == image.shape[1]  # the aspect ratio is kept
    if suffix == ".jpg":  # JPEG decodes at 1/2, 1/4 or 1/8 scale: never the full 2400 x 1200
        assert decoded and max(max(size) for size in decoded) < 2 * 200
    # the same picture: each pixel is the mean of the full-size block it covers (a smooth
    # image, so JPEG's scaled decoding and a box filter agree to a few grey levels)
    factor = 2400 // image.shape[1]
    blocks = big.reshape(1200 // factor, factor, 2400 // factor, factor, 3).mean((1, 3))
    assert np.abs(image * 255 - blocks).mean() < 3


def test_labels_come_back_to_full_size_as_torch_s_nearest_upsampling_does():
    rng = np.random.default_rng(0)
    for (h, w), (height, width) in [((7, 5), (100, 33)), ((64, 48), (1001, 750)), ((3, 3), (3, 3))]:
        small = rng.integers(0, 9, (h, w), dtype=np.uint8)
        want = torch.nn.functional.interpolate(
            torch.from_numpy(small)[None, None].float(), size=(height, width), mode="nearest"
        )[0, 0]
        up = predict.upsample_labels(small, (height, width))
        assert up.dtype == np.uint8 and up.shape == (height, width)
        np.testing.assert_array_equal(up, want.numpy().astype(np.uint8))
        batch = torch.from_numpy(small.astype(np.int64))[None]  # (1, h, w) int64 tensor
        assert torch.equal(predict.upsample_labels(batch, (height, width))[0], want.long())


def test_predict_file_labels_a_large_photo_at_its_full_size(tmp_path):
    torch.manual_seed(0)
    net, head = embedding_nets.SmallEmbeddingNet(8, 8).eval(), heads.SoftmaxHead(8, 3).eval()
    photo(tmp_path / "wide.jpg", 300, 900)
    labels = predict.predict_file(net, head, tmp_path / "wide.jpg", max_side=64, crf=False)
    assert labels.shape == (300, 900) and labels.dtype == np.uint8
    # the same as labelling the decoded photo at 64 px and bringing the labels back up
    small = labelio.read_image(tmp_path / "wide.jpg", max_side=64)  # decoded at 38 x 113
    assert max(small.shape[:2]) >= 64
    tensor = torch.from_numpy(small.transpose(2, 0, 1).copy())[None]
    coarse = predict.predict(
        net, head, torch.nn.functional.interpolate(tensor, size=(21, 64), mode="bilinear",
                                                   antialias=True).clamp(0, 1), crf=False
    )  # fmt: skip
    want = torch.nn.functional.interpolate(coarse[:, None].float(), size=(300, 900))[0, 0]
    np.testing.assert_array_equal(labels, want.numpy().astype(np.uint8))
