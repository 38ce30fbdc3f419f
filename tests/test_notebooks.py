"""Notebooks are stored clean, start with their parameters, and run under papermill.

nbval (``pytest --nbval-lax notebooks``) runs them with their stored parameters; here papermill
runs them with injected ones, the way `spml-lab run-notebook` and batch sweeps do.
"""

import ast
import functools
import json
import re
from pathlib import Path

import pytest

from spml_lab.sweeps import claims, runner

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# Parameters papermill injects in CI: small, and different from the stored ones where that is
# cheap, so the injected cell is really used.
CI_PARAMETERS = {
    "00_quickstart.ipynb": {"SEED": 1},
    "01_superpixels.ipynb": {"NUM_SCENES": 4, "SEED": 1},
    "02_weak_annotations.ipynb": {"NUM_STATS": 24, "SEED": 1},
    "03_class_activation_maps.ipynb": {"SEED": 1, "NUM_SHOWN": 2},
    "04_segments.ipynb": {"SEED": 1, "ROUNDS": [0, 1, 5], "N_SEGMENTS": [8, 32]},
    "05_relation_low_level_similarity.ipynb": {"SHOW_SOLUTIONS": True, "SEED": 1, "MAX_STEPS": 20},
    "06_relation_semantic_annotation.ipynb": {"SHOW_SOLUTIONS": True, "SEED": 1, "MAX_STEPS": 20},
    "07_relation_semantic_cooccurrence.ipynb": {
        "SHOW_SOLUTIONS": True,
        "SEED": 1,
        "MAX_STEPS": 20,
    },
    "08_relation_feature_affinity.ipynb": {"SHOW_SOLUTIONS": True, "SEED": 1, "MAX_STEPS": 20},
    "09_training.ipynb": {"SEED": 1, "MAX_STEPS": 40, "VAL_IMAGES": 8, "TRAINED_RUN": ""},
    # 09-11 load the shipped runs with their stored parameters (nbval); here they train tiny
    # runs of their own, the code path a user's own run takes
    "10_embedding_visualization.ipynb": {"SEED": 1, "RUNS": ""},
    "11_inference_and_evaluation.ipynb": {
        "RUN": "",
        "SEED": 1,
        "MAX_STEPS": 20,
        "MAX_IMAGES": 8,
        "TRAIN_IMAGES": 16,
        "STAGE2_STEPS": 30,
    },
    "12_relation_ablation.ipynb": {"METRIC": "miou_knn"},
    "13_your_own_photo.ipynb": {
        "SHOW_SOLUTIONS": True,
        "SEED": 1,
        "SIDE": 64,
        "STEPS": 10,
        "SCENE_SIZE": 64,
    },
}


# Lessons that show measured results: they read them from the committed CSVs at run time
MEASURED = [n for n in CI_PARAMETERS if n[:2] in ("05", "06", "07", "08", "11", "12")]
DECIMAL = re.compile(r"[+-]?\d+\.\d+")
SETTINGS_IN_TEXT = {"0.95"}  # method settings a lesson may write: feature affinity's threshold


@functools.cache
def _committed_numbers():
    """Every number of the committed study files, and what the notebooks derive from them."""
    numbers = set()
    for name in ("relations_cpu_reduced_claims.csv", "relations_cpu_reduced_summary.csv"):
        for row in claims.read_results(name):
            for value in row.values():
                if DECIMAL.fullmatch(value or ""):
                    numbers |= {float(value), -float(value), 2 * float(value)}
    return numbers


def _check_measured_outputs(name, cells):
    """Every decimal printed by a cell tagged `measured` is a committed number (to rounding)."""
    committed = _committed_numbers()
    measured = [c for c in cells if "measured" in c["metadata"].get("tags", [])]
    assert measured, f"{name} shows no measured result"
    for cell in measured:
        text = "".join("".join(o.get("text", "")) for o in cell["outputs"])
        shown = [float(v) for v in DECIMAL.findall(text)]
        assert shown, f"{name}: a measured cell printed no number"
        for value in shown:
            assert any(abs(value - c) <= 0.0005001 for c in committed), (
                f"{name} shows {value}, which is no number of the committed study files"
            )


@pytest.mark.parametrize("name", MEASURED)
def test_lessons_type_no_measured_number_in_their_text(name):
    cells = json.loads((ROOT / "notebooks" / name).read_text())["cells"]
    for cell in cells:
        if cell["cell_type"] == "markdown":
            typed = set(re.findall(r"\b0\.\d\d", "".join(cell["source"]))) - SETTINGS_IN_TEXT
            assert not typed, f"{name}: markdown types {typed}; read them from the CSV instead"


def _code_cells(path):
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_without_outputs(path):
    for cell in _code_cells(path):
        assert cell.get("outputs", []) == [], f"{path.name} has stored outputs"
        assert cell.get("execution_count") is None, f"{path.name} has execution counts"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_starts_with_literal_parameters_cell(path):
    first = _code_cells(path)[0]
    assert "parameters" in first["metadata"].get("tags", []), f"{path.name}: untagged"
    source = "".join(first["source"])
    for node in ast.parse(source).body:
        assert isinstance(node, ast.Assign), f"{path.name}: parameters cell holds non-assignments"
        ast.literal_eval(node.value)  # literals only: papermill and sweeps replace them
    for line in source.splitlines():
        if "=" in line:
            assert "#" in line, f"{path.name}: parameter without a comment: {line!r}"


def test_every_notebook_has_ci_parameters():
    assert sorted(p.name for p in NOTEBOOKS) == sorted(CI_PARAMETERS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_runs_under_papermill_with_injected_parameters(path, tmp_path):
    executed = runner.run_notebook(path, tmp_path, CI_PARAMETERS[path.name], progress=False)
    cells = json.loads(executed.read_text())["cells"]
    assert any("injected-parameters" in c["metadata"].get("tags", []) for c in cells)
    assert list((tmp_path / "figures").glob("*.png")), f"{path.name} drew no figure"
    if path.name in MEASURED:
        _check_measured_outputs(path.name, cells)


def test_unknown_parameter_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not defined in its `parameters` cell"):
        runner.run_notebook(NOTEBOOKS[0], tmp_path, {"NO_SUCH_PARAMETER": 1}, progress=False)
