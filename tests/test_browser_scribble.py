"""The scribble widget in a real browser: strokes drawn with the mouse train a mask that changes.

JupyterLab runs a two-cell notebook in headless Chromium (the helpers of tests/browser.py, as
in tests/test_browser.py). Selenium drags the mouse over the ipycanvas canvas as a user would
(ActionChains: press, move, release), once per class, presses Train and waits for SPML's
mask; then it turns on live mode and paints a third class, which must retrain by itself and
change the mask on screen. The picture is tiny (three vertical bands, 48 x 64 px) and SPML
trains 10 steps, so the whole test takes seconds beyond JupyterLab's start. Set
SPML_SCREENSHOT_DIR to keep a screenshot of the widget.
"""

import os
from pathlib import Path

import nbformat
import pytest
from browser import (
    chromium,
    element_png,
    jupyter_lab,
    open_notebook,
    run_all_cells,
    wait_until,
)
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
STEPS = 10  # SPML's training steps: two progress masks (`one_image.RECIPE.update_every`)

WIDGET = f"""\
import numpy as np

from spml_lab.classroom import scribble_widget

bands = np.zeros((48, 64, 3), np.uint8)  # left dark, middle grey, right bright
bands[:, 21:43], bands[:, 43:] = (120, 120, 120), (250, 220, 40)
pad = scribble_widget.ScribbleWidget(
    bands, class_names=["left", "middle", "right"], side=64, steps={STEPS}, radius=2
)
pad.widget"""


def drag(driver, canvas, points):
    """Press the mouse at the first (x, y) photo pixel, move through the rest, release."""
    scale = canvas.size["width"] / 64  # CSS pixels per photo pixel
    centre = (canvas.size["width"] / 2, canvas.size["height"] / 2)
    offsets = [(round(x * scale - centre[0]), round(y * scale - centre[1])) for x, y in points]
    actions = ActionChains(driver, duration=20)  # ms per movement: a hand, not a teleport
    actions.move_to_element_with_offset(canvas, *offsets[0]).click_and_hold()
    for (x0, y0), (x1, y1) in zip(offsets, offsets[1:], strict=False):
        actions.move_by_offset(x1 - x0, y1 - y0)
    actions.release().perform()


def click_button(box, label):
    buttons = [b for b in box.find_elements(By.CSS_SELECTOR, "button") if b.text == label]
    assert len(buttons) == 1, f"expected one button {label!r}, found {len(buttons)}"
    buttons[0].click()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_strokes_train_a_mask_that_changes_when_a_stroke_is_added(browser_paths, tmp_path):
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(WIDGET)], metadata={"kernelspec": KERNELSPEC}
    )
    with jupyter_lab(tmp_path / "lab") as lab:
        nbformat.write(notebook, lab.root / "scribble.ipynb")
        with chromium(tmp_path / "browser") as driver:
            open_notebook(driver, lab.url, lab.token, "scribble.ipynb")
            run_all_cells(driver)
            box = wait_until(
                driver,
                lambda d: d.find_elements(By.CSS_SELECTOR, ".spml-scribble"),
                "waiting for the scribble widget",
            )[0]
            canvas = box.find_element(By.CSS_SELECTOR, "canvas.spml-scribble-canvas")
            mask = box.find_element(By.CSS_SELECTOR, "img.spml-mask-spml")
            status = box.find_element(By.CSS_SELECTOR, ".spml-scribble-status")
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", canvas)
            wait_until(driver, lambda d: "paint strokes" in status.text, "for the widget")
            blank = element_png(canvas)

            drag(driver, canvas, [(8, 5), (8, 25), (10, 43)])  # brush "left", selected first
            wait_until(driver, lambda d: element_png(canvas) != blank, "for the stroke to show")
            click_button(box, "right")
            drag(driver, canvas, [(55, 5), (55, 43)])
            photo = element_png(mask)
            click_button(box, "Train")
            wait_until(
                driver,
                lambda d: status.text.startswith("done"),
                lambda: f"for training to end (status {status.text!r})",
                timeout=120,
            )
            assert f"step {STEPS} of {STEPS}" in box.text
            trained = element_png(mask)
            assert trained != photo, "SPML's mask never appeared over the photo"

            box.find_element(By.CSS_SELECTOR, ".widget-checkbox input").click()  # live mode
            click_button(box, "middle")
            drag(driver, canvas, [(32, 5), (32, 43)])  # release: live mode retrains
            wait_until(
                driver,
                lambda d: element_png(mask) != trained,
                lambda: f"for the mask to change after a new stroke (status {status.text!r})",
                timeout=120,
            )
            wait_until(
                driver,
                lambda d: status.text.startswith("done"),
                lambda: f"for the live run to end (status {status.text!r})",
                timeout=120,
            )
            folder = os.environ.get("SPML_SCREENSHOT_DIR")
            if folder:
                Path(folder).mkdir(parents=True, exist_ok=True)
                (Path(folder) / "scribble-widget.png").write_bytes(box.screenshot_as_png)
