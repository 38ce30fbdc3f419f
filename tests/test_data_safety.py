"""`make-data` and `prepare voc` refuse bad numbers and bad files before writing anything.

A refused or failed call leaves the disk as it found it, so the corrected rerun just works.
"""

import json

import pytest
from mini_voc import write_mini_voc

from spml_lab import cli
from spml_lab.data import make_data, superpixels, voc

TINY = ["--train", "1", "--val", "1", "--size", "48", "--quiet"]


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---------------------------------------------------------------------- make-data


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--superpixels", "0", "must be >= 1, got 0"),
        ("--superpixels", "-5", "must be >= 1, got -5"),
        ("--train", "0", "must be >= 1, got 0"),
        ("--val", "-1", "must be >= 1, got -1"),
        ("--test", "-1", "must be >= 0, got -1"),
        ("--size", "10", "must be >= 48, got 10"),
        ("--seed", "-1", "must be >= 0, got -1"),
        ("--difficulty", "1.5", "must be in [0, 1], got 1.5"),
        ("--difficulty", "nan", "must be a finite number, got nan"),
        ("--object-scale", "0", "must be in [0.25, 3], got 0.0"),
    ],
)
def test_make_data_flags_are_checked_before_anything_is_written(
    tmp_path, capsys, flag, value, message
):
    out = tmp_path / "data"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["make-data", str(out), *TINY, flag, value])
    assert exit_.value.code == 2
    assert f"spml-lab make-data: error: argument {flag}: {message}" in capsys.readouterr().err
    assert _listing(tmp_path) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"superpixel_options": {"n_segments": 0}}, r"n_segments'\] must be >= 1, got 0"),
        ({"superpixel_options": {"n_segments": -5}}, r"n_segments'\] must be >= 1, got -5"),
        ({"superpixel_options": {"n_segments": 2.5}}, "must be an integer, got 2.5"),
        ({"superpixel_options": {"n_segment": 8}}, "unknown option 'n_segment'"),
        (
            {"superpixel_method": "felzenszwalb", "superpixel_options": {"n_segments": 8}},
            "no n_segments parameter",
        ),
        ({"num_train": 0}, "num_train must be >= 1, got 0"),
        ({"num_test": -1}, "num_test must be >= 0, got -1"),
        ({"size": 10}, "size must be >= 48, got 10"),
        ({"seed": -1}, "seed must be >= 0, got -1"),  # not the split's derived seed, -2
    ],
)
def test_write_dataset_refuses_the_same_numbers_before_writing(tmp_path, options, message):
    settings = {"num_train": 1, "num_val": 1, "size": 48, "progress": False, **options}
    with pytest.raises(ValueError, match=message):
        make_data.write_dataset(tmp_path / "data", **settings)
    assert _listing(tmp_path) == []


def test_a_failed_make_data_leaves_nothing_and_the_rerun_works(tmp_path, monkeypatch):
    real, calls = superpixels.segment, []

    def fails_in_val(image, *args, **kwargs):  # the third image: train is written by then
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real(image, *args, **kwargs)

    monkeypatch.setattr(superpixels, "segment", fails_in_val)
    out = tmp_path / "new" / "data"  # its parent is made by the call, and removed with it
    args = ["make-data", str(out), "--train", "2", "--val", "1", "--size", "48", "--quiet"]
    with pytest.raises(RuntimeError, match="disk full"):
        cli.main(args)
    assert _listing(tmp_path) == []

    kept = tmp_path / "mine"  # a folder the user made stays, empty as it was
    kept.mkdir()
    calls.clear()
    with pytest.raises(RuntimeError, match="disk full"):
        cli.main(["make-data", str(kept), *args[2:]])
    assert _listing(tmp_path) == ["mine"]

    monkeypatch.setattr(superpixels, "segment", real)
    assert cli.main(args) == 0
    assert json.loads((out / "dataset.json").read_text())["splits"] == {"train": 2, "val": 1}
    assert sorted(p.name for p in out.parent.iterdir()) == ["data"]  # no temporary folder left
    assert cli.main(["make-data", str(kept), *args[2:]]) == 0
    assert (kept / "dataset.json").is_file()


# ---------------------------------------------------------------------- prepare voc


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return write_mini_voc(tmp_path_factory.mktemp("download"), num_train=1, num_val=1, num_sbd=0)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--superpixels", "0", "must be >= 1, got 0"),
        ("--workers", "0", "must be >= 1, got 0"),
        ("--seed", "-3", "must be >= 0, got -3"),
    ],
)
def test_prepare_voc_flags_are_checked_before_anything_is_written(
    mini, tmp_path, capsys, flag, value, message
):
    out = tmp_path / "voc"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["prepare", "voc", str(mini.devkit), "--out", str(out), flag, value])
    assert exit_.value.code == 2
    assert f"spml-lab prepare voc: error: argument {flag}: {message}" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"superpixel_options": {"n_segments": 0}}, r"n_segments'\] must be >= 1, got 0"),
        ({"workers": 0}, "workers must be >= 1, got 0"),
        ({"seed": -1}, "seed must be >= 0, got -1"),
        ({"point_radius": -1}, "point_radius must be >= 0, got -1"),
    ],
)
def test_prepare_voc_refuses_the_same_numbers_before_prepare_json(mini, tmp_path, options, message):
    out = tmp_path / "voc"
    with pytest.raises(ValueError, match=message):
        voc.prepare_voc(mini.devkit, out, **{"workers": 1, **options})
    assert not out.exists()  # no prepare.json recording n_segments 0


@pytest.mark.parametrize(
    ("text", "message"), [("{not json", "not valid JSON"), ("[1, 2]", "not a JSON object")]
)
def test_a_corrupt_prepare_json_is_named(mini, tmp_path, capsys, text, message):
    out = tmp_path / "voc"
    voc.prepare_voc(mini.devkit, out, workers=1)
    (out / "prepare.json").write_text(text)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(ValueError, match=f"prepare.json: {message}"):
        voc.prepare_voc(mini.devkit, out, workers=1)
    status = cli.main(["prepare", "voc", str(mini.devkit), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and f"spml-lab prepare: error: {out / 'prepare.json'}: {message}" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
