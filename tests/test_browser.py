"""A slider in a notebook really redraws its picture in a real browser (JupyterLab + Chromium).

nbval only proves that widget cells run; here JupyterLab runs the notebook in headless Chromium,
the "x" slider is moved with the keyboard and the ipywidgets Image must change. Set
SPML_SCREENSHOT_DIR to keep a screenshot of the widget area. Without Chromium the test fails (a
browser test that skips in CI proves nothing) unless SPML_SKIP_BROWSER=1 says to skip it.

To check another notebook, add it to SOURCES: its widget box needs the CSS class
"spml-explorer", an Image with class "spml-similarity" and a slider labelled "x" (the
conventions of `spml_lab.pictures.explorer`); the dict holds parameters injected after its
`parameters` cell, to keep it small.
"""

import os
from pathlib import Path

import nbformat
import pytest
from browser import (
    chromium,
    element_png,
    find_slider,
    image_src,
    jupyter_lab,
    open_notebook,
    press_slider,
    run_all_cells,
    slider_bounds,
    wait_until,
)
from selenium.webdriver.common.by import By

from spml_lab.sweeps import runner

ROOT = Path(__file__).resolve().parent.parent
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
STEPS = 5  # arrow-key presses on the "x" slider (one step each)

# (notebook, injected parameters); None is the small fixture notebook written below.
SOURCES = [
    pytest.param(None, {}, id="fixture"),
    pytest.param(
        ROOT / "notebooks" / "10_embedding_visualization.ipynb",
        {"STAT_IMAGES": 8, "STAT_SAMPLES": 1000, "UMAP_SAMPLES": 300},
        id="10",
    ),
]

FIXTURE_PARAMETERS = """\
SIZE = 48  # image side in pixels; the real explorer shows 128
START = 10  # first value of the "x" slider"""

FIXTURE_WIDGETS = """\
import io

import ipywidgets as widgets
import numpy as np
from PIL import Image as PILImage


def draw(x):
    \"\"\"PNG of a blue square with an orange vertical band centred on column `x`.\"\"\"
    columns = np.arange(SIZE)
    band = np.exp(-((columns - x) ** 2) / 8.0)  # (SIZE,) in [0, 1]
    grey = np.broadcast_to(band * 255, (SIZE, SIZE)).astype(np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(np.stack([grey, grey // 2, 255 - grey], axis=-1)).save(buffer, format="PNG")
    return buffer.getvalue()


slider = widgets.IntSlider(value=START, min=0, max=SIZE - 1, description="x")
image = widgets.Image(value=draw(START), format="png", width=192, height=192)
image.add_class("spml-similarity")
slider.observe(lambda change: setattr(image, "value", draw(change["new"])), names="value")
box = widgets.VBox([slider, image])
box.add_class("spml-explorer")
assert draw(START) != draw(START + 1)
box"""


def write_fixture_notebook(path):
    """A two-cell notebook: literal parameters, then a slider that redraws an Image."""
    parameters = nbformat.v4.new_code_cell(FIXTURE_PARAMETERS, metadata={"tags": ["parameters"]})
    notebook = nbformat.v4.new_notebook(
        cells=[parameters, nbformat.v4.new_code_cell(FIXTURE_WIDGETS)],
        metadata={"kernelspec": KERNELSPEC},
    )
    nbformat.write(notebook, path)


def copy_with_parameters(source, path, parameters):
    """Copy a notebook, adding a cell with `parameters` right after its ``parameters`` cell."""
    unknown = sorted(set(parameters) - set(runner.parameter_names(source)))
    assert not unknown, f"{source.name}: {unknown} are not in its parameters cell"
    notebook = nbformat.read(source, as_version=4)
    if parameters:
        first = next(i for i, c in enumerate(notebook.cells) if c.cell_type == "code")
        lines = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
        injected = nbformat.v4.new_code_cell(lines, metadata={"tags": ["injected-parameters"]})
        notebook.cells.insert(first + 1, injected)
    nbformat.write(notebook, path)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize(("notebook", "parameters"), SOURCES)
def test_slider_changes_widget_image(notebook, parameters, browser_paths, tmp_path):
    with jupyter_lab(tmp_path / "lab") as lab:
        name = "widgets.ipynb" if notebook is None else notebook.name
        if notebook is None:
            write_fixture_notebook(lab.root / name)
        else:
            copy_with_parameters(notebook, lab.root / name, parameters)
        with chromium(tmp_path / "browser") as driver:
            open_notebook(driver, lab.url, lab.token, name)
            run_all_cells(driver)
            box = wait_until(
                driver,
                lambda d: d.find_elements(By.CSS_SELECTOR, ".spml-explorer"),
                "waiting for the .spml-explorer widget box",
            )[0]
            image = box.find_element(By.CSS_SELECTOR, "img.spml-similarity")
            wait_until(driver, lambda d: image_src(image), "waiting for the Image to load")
            slider = find_slider(driver, "x", within=box)
            src, png = image_src(image), element_png(image)
            low, start, high = slider_bounds(slider)
            # Towards the far end, so a slider that starts near its maximum still moves STEPS.
            steps = STEPS if start + STEPS <= high else -STEPS
            assert low <= start + steps <= high, f"'x' spans {low}..{high}: too short to move"

            press_slider(driver, slider, steps)
            wait_until(
                driver,
                lambda d: slider_bounds(slider)[1] == start + steps,
                lambda: (
                    f"for {steps} arrow presses to move 'x' from {start} "
                    f"(now {slider_bounds(slider)[1]})"
                ),
            )
            wait_until(
                driver,
                lambda d: image_src(image) != src,
                "for the Image to be redrawn after the 'x' slider moved",
            )
            # The src is a fresh blob URL per redraw; the pixels on screen must differ too.
            wait_until(
                driver,
                lambda d: element_png(image) != png,
                "for the Image's pixels on screen to change (its src did)",
                timeout=10,
            )

            folder = os.environ.get("SPML_SCREENSHOT_DIR")
            if folder:
                Path(folder).mkdir(parents=True, exist_ok=True)
                shot = Path(folder) / f"{Path(name).stem}-widget.png"
                shot.write_bytes(box.screenshot_as_png)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_run_all_cells_reports_the_failing_cell(browser_paths, tmp_path):
    # The harness itself must not call a broken notebook fine: the traceback is the message.
    cells = [nbformat.v4.new_code_cell(code) for code in ("x = 1", "x / 0", "y = 2")]
    notebook = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": KERNELSPEC})
    with jupyter_lab(tmp_path / "lab") as lab:
        nbformat.write(notebook, lab.root / "broken.ipynb")
        with chromium(tmp_path / "browser") as driver:
            open_notebook(driver, lab.url, lab.token, "broken.ipynb")
            with pytest.raises(AssertionError, match=r"(?s)a cell raised.*ZeroDivisionError"):
                run_all_cells(driver)
