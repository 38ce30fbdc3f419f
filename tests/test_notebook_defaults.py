"""Notebook parameters that teach a library default hold that default, not a copy that drifts.

A `parameters` cell holds literals only (papermill overrides them), so a lesson that shows the
library's setting writes its value out; these tests keep each such literal equal to the one
definition it mirrors.
"""

import ast
import json
from pathlib import Path

import pytest

from spml_lab import constants
from spml_lab.labelling import tag_training

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def parameters(name):
    """The literal assignments of a notebook's parameters cell, as Python values."""
    cell = json.loads((NOTEBOOKS / name).read_text())["cells"][0]
    tree = ast.parse("".join(cell["source"]))
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body}


@pytest.mark.parametrize(
    "notebook, name, default",
    [
        ("04_segments.ipynb", "KMEANS_GRID", list(constants.KMEANS_GRID)),
        ("04_segments.ipynb", "KMEANS_ITERATIONS", constants.KMEANS_ITERATIONS),
        ("03_class_activation_maps.ipynb", "LR", tag_training.CLASSIFIER_LR),
        ("03_class_activation_maps.ipynb", "WIDTH", tag_training.CLASSIFIER_WIDTH),
        ("03_class_activation_maps.ipynb", "BATCH_SIZE", tag_training.CLASSIFIER_BATCH_SIZE),
    ],
)
def test_a_lesson_shows_the_library_default(notebook, name, default):
    assert parameters(notebook)[name] == default
