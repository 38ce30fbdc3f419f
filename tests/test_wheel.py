"""A wheel, what a non-editable ``pip install .`` installs, carries the samples and the runs."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import spml_lab
from spml_lab.data import datasets
from spml_lab.training import runs
from spml_lab.training.config import EMBEDDED_KINDS

ROOT = Path(__file__).resolve().parents[1]
# everything the build reads: the metadata, the readme and licence it names, the package
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "spml_lab")
# DATA_SAMPLES as a path inside the wheel, e.g. "spml_lab/data_samples"
SAMPLES = datasets.DATA_SAMPLES.relative_to(Path(spml_lab.__file__).resolve().parents[1])

# run where the wheel was unpacked: what the installed package finds for each name
FIND = """
import json
import spml_lab
from spml_lab.data import datasets
from spml_lab.training import runs

found = {"package": spml_lab.__file__}
for kind in KINDS:
    dataset = datasets.open_data(f"embedded:{kind}", "val", "scribbles")
    found[kind] = [str(dataset.list_file), dataset[0]["image"].shape[0]]
found["run"] = str(runs.load_run("shipped:spml_scribbles").path)
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    # build from a copy: an in-tree build leaves build/ and *.egg-info in the checkout
    tree = tmp_path_factory.mktemp("tree")
    for name in BUILD_INPUTS:
        source = ROOT / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
            shutil.copytree(source, tree / name, ignore=ignore)
        else:
            shutil.copy2(source, tree / name)
    out = tmp_path_factory.mktemp("dist")
    # offline, with the installed build backend (setuptools, in the dev extra)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check"]
        + ["--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir", str(out), str(tree)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (built,) = out.glob("spml_lab-*.whl")
    return built


def test_wheel_holds_the_embedded_samples_and_the_shipped_runs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = [SAMPLES / "runs" / "runs.csv", SAMPLES / "scribbles" / "strokes.json"]
    for kind in EMBEDDED_KINDS:
        expected.append(SAMPLES / kind / "dataset.json")
        lists = sorted((datasets.DATA_SAMPLES / kind / "lists").glob("*.txt"))
        assert lists, kind
        expected += [SAMPLES / kind / "lists" / path.name for path in lists]
    for name in runs.shipped_runs():
        expected += [SAMPLES / "runs" / name / file for file in (runs.FINAL, runs.CONFIG)]
    missing = [path.as_posix() for path in expected if path.as_posix() not in names]
    assert missing == []


def test_unpacked_wheel_finds_embedded_data_and_shipped_runs(wheel, tmp_path):
    # a wheel installs by unpacking; PYTHONPATH puts this copy before any editable install,
    # and the working folder is elsewhere, so nothing resolves through the checkout
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = FIND.replace("KINDS", repr(EMBEDDED_KINDS))
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    site = site.resolve()  # the package resolves its own path
    assert Path(found["package"]).parent == site / "spml_lab"
    assert Path(found["run"]) == site / SAMPLES / "runs" / "spml_scribbles"
    for kind in EMBEDDED_KINDS:
        list_file, channels = found[kind]
        assert Path(list_file).is_relative_to(site / SAMPLES / kind) and channels == 3
