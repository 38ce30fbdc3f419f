"""Notebooks are stored clean, start with their parameters, and run under papermill.

nbval (``pytest --nbval-lax notebooks``) runs them with their stored parameters; here papermill
runs them with injected ones, the way `spml-lab run-notebook` and batch sweeps do.
"""

import ast
import json
from pathlib import Path

import pytest

from spml_lab.batch import runner

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
}


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


def test_unknown_parameter_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not defined in its `parameters` cell"):
        runner.run_notebook(NOTEBOOKS[0], tmp_path, {"NO_SUCH_PARAMETER": 1}, progress=False)
