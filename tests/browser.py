"""Drive a real JupyterLab in headless Chromium, so tests see the widgets a student sees.

nbval and papermill run notebooks without a frontend: a widget there is only a model in the
kernel, and nothing checks that a slider really redraws a picture. This helper starts an
isolated JupyterLab server, opens a notebook in headless Chromium through Selenium, runs it from
the Run menu and moves sliders with the keyboard. It is test infrastructure, not a test module
(pytest only collects ``test_*.py``); tests import it as ``from browser import ...`` because
pytest puts ``tests/`` on ``sys.path`` (the folder has no ``__init__.py``).

Nothing here downloads anything: Selenium gets explicit paths to the system Chromium and
chromedriver (Debian: ``apt-get install chromium chromium-driver``), so Selenium Manager never
runs, and JupyterLab is told not to fetch news or look for updates.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import weakref
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

APT_INSTALL = "apt-get install -y chromium chromium-driver"
# The Debian launcher /usr/bin/chromium is a shell script that sources /etc/chromium.d; the real
# binary behind it takes our flags as they are, so it comes first.
BROWSER_CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome")
DRIVER_CANDIDATES = ("/usr/bin/chromedriver", "chromedriver")

# Where failure screenshots of each driver go (set by `chromium`).
_ARTIFACTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Lab:
    """A running JupyterLab server: its address, token, served folder and log file."""

    url: str
    token: str
    root: Path
    log: Path


def find_chromium():
    """Paths of the Chromium binary and of its chromedriver.

    ``SPML_CHROMIUM`` and ``SPML_CHROMEDRIVER`` override the search.

    Returns
    -------
    browser, driver : str
        Absolute paths.

    Raises
    ------
    FileNotFoundError
        If either is missing; the message names the apt-get line that installs them.
    """
    found = []
    for variable, candidates in (
        ("SPML_CHROMIUM", BROWSER_CANDIDATES),
        ("SPML_CHROMEDRIVER", DRIVER_CANDIDATES),
    ):
        names = [os.environ[variable]] if os.environ.get(variable) else candidates
        paths = [shutil.which(name) for name in names]
        path = next((p for p in paths if p), None)
        if path is None:
            raise FileNotFoundError(
                f"none of {list(names)} is an executable (set {variable} to override); "
                f"install Chromium and its driver with `{APT_INSTALL}`"
            )
        found.append(path)
    return tuple(found)


def free_port():
    """A TCP port on 127.0.0.1 that nobody listens on right now.

    Examples
    --------
    >>> 1024 <= free_port() <= 65535
    True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def _api(lab_url, token, path, *, method="GET", timeout=5.0):
    request = urllib.request.Request(
        f"{lab_url}{path}", method=method, headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.read()


def _tail(path, lines=40):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"<no log: {error}>"


def _children(pid):
    """Direct child processes of `pid` as {pid: command line} (empty where /proc is absent)."""
    children = {}
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in task.read_text().split():
                children[int(child)] = _cmdline(int(child))
    return children


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


@contextlib.contextmanager
def jupyter_lab(workdir, *, timeout=90.0):
    """Run an isolated JupyterLab server for the duration of a ``with`` block.

    Parameters
    ----------
    workdir : str or Path
        Empty folder for the server: ``root/`` is the folder it serves (copy notebooks there),
        ``jupyter/`` holds its config, settings, runtime files and ``lab.log``.
    timeout : float, optional
        Seconds to wait for the server to answer ``/api/status``.

    Yields
    ------
    lab : Lab
        ``lab.url`` (``http://127.0.0.1:PORT``), ``lab.token``, ``lab.root``, ``lab.log``.

    Raises
    ------
    AssertionError
        If the server exits or does not answer in time; the message holds its log.

    Notes
    -----
    The user's own Jupyter config, settings and IPython profile are hidden (every Jupyter path
    points into `workdir`), so a developer's setup cannot change what the test sees. First-start
    pop-ups are switched off by settings, not clicked away: no news (``news_url=None`` and
    ``fetchNews``), no update check, no kernel chooser (notebooks name ``python3``). Cells are
    not virtualised (``windowingMode: none``), so a widget far down a notebook is in the DOM.
    """
    workdir = Path(workdir)
    root, home = workdir / "root", workdir / "jupyter"
    root.mkdir(parents=True, exist_ok=True)
    settings = home / "user-settings"
    _write_json(
        settings / "@jupyterlab/apputils-extension/notification.jupyterlab-settings",
        {"fetchNews": "false", "checkForUpdates": False},
    )
    _write_json(
        settings / "@jupyterlab/notebook-extension/tracker.jupyterlab-settings",
        {"windowingMode": "none"},
    )
    # Autosave would rewrite the copied notebook under the test's feet; nothing needs it.
    _write_json(
        settings / "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings",
        {"autosave": False},
    )
    token = secrets.token_hex(24)
    env = dict(
        os.environ,
        JUPYTER_TOKEN=token,  # not on the command line, where `ps` would show it
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
        IPYTHONDIR=str(home / "ipython"),
        JUPYTER_PLATFORM_DIRS="1",  # silences the path-migration warning in the log
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--allow-root",  # CI containers run as root; the server is private to this test anyway
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",  # fail loudly rather than serve on another port
        f"--ServerApp.root_dir={root}",
        "--ServerApp.terminals_enabled=False",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",  # the default one asks PyPI
        # Safety nets if the test process is killed before it can shut the server down.
        "--MappingKernelManager.cull_idle_timeout=900",
        "--MappingKernelManager.cull_connected=True",
        "--ServerApp.shutdown_no_activity_timeout=900",
    ]
    log = home / "lab.log"
    with open(log, "wb") as log_file:
        server = subprocess.Popen(
            command,
            env=env,
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl+C in the terminal must not reach it half-way
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise AssertionError(
                    f"JupyterLab exited with code {server.returncode} before answering; "
                    f"log {log}:\n{_tail(log)}"
                )
            with contextlib.suppress(OSError):
                if _api(url, token, "/api/status", timeout=2.0)[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"JupyterLab did not answer {url}/api/status within {timeout:.0f} s; "
                    f"log {log}:\n{_tail(log)}"
                )
            time.sleep(0.25)
        yield Lab(url=url, token=token, root=root, log=log)
    finally:
        _stop_server(server, url, token)


def _stop_server(server, url, token):
    """Shut the server down through its API, then by signals; kill kernels it leaves behind."""
    kernels = _children(server.pid)  # kernels run in their own sessions, so record them now
    if server.poll() is None:
        with contextlib.suppress(OSError):
            _api(url, token, "/api/shutdown", method="POST")  # also shuts its kernels down
    for stop in (None, server.terminate, server.kill):
        if stop is not None:
            stop()
        try:
            server.wait(timeout=15)
            break
        except subprocess.TimeoutExpired:
            continue
    for pid, cmdline in kernels.items():
        # Only a process that is still the very one we saw (same command line) is ours to kill.
        if cmdline is not None and _cmdline(pid) == cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def chromium(artifacts_dir, *, width=1400, height=1000, timeout=60.0):
    """A headless Chromium WebDriver for the duration of a ``with`` block.

    Parameters
    ----------
    artifacts_dir : str or Path
        Folder for ``chromedriver.log`` and the screenshots taken when a wait fails.
    width, height : int, optional
        Window size in CSS pixels.
    timeout : float, optional
        Page-load and script timeout in seconds.

    Yields
    ------
    driver : selenium.webdriver.Chrome

    Raises
    ------
    FileNotFoundError
        If Chromium or chromedriver is not installed (see `find_chromium`).
    """
    browser, driver_path = find_chromium()
    artifacts_dir = Path(artifacts_dir)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = browser  # with Service's path set, Selenium Manager never runs
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI containers run as root, where the sandbox cannot start
        "--disable-gpu",
        "--disable-dev-shm-usage",  # small /dev/shm in containers crashes tabs
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-extensions",
        "--disable-sync",
        "--no-first-run",
        "--no-default-browser-check",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(
        executable_path=driver_path, log_output=str(artifacts_dir / "chromedriver.log")
    )
    driver = webdriver.Chrome(service=service, options=options)
    try:
        _ARTIFACTS[driver] = artifacts_dir
        driver.set_page_load_timeout(timeout)
        driver.set_script_timeout(timeout)
        yield driver
    finally:
        driver.quit()


def failure_report(driver, what):
    """Save a screenshot and return a message with it and the browser console's last lines.

    Parameters
    ----------
    driver : selenium WebDriver
    what : str
        What was expected; it starts the message and names the screenshot.

    Returns
    -------
    message : str
    """
    folder = _ARTIFACTS.get(driver) or Path(tempfile.mkdtemp(prefix="spml-browser-"))
    name = "_".join("".join(c if c.isalnum() else " " for c in what).split())[:60]
    shot = folder / f"failure-{name}-{time.strftime('%H%M%S')}.png"
    try:
        driver.save_screenshot(str(shot))
    except WebDriverException as error:
        shot = f"<none: {error.msg}>"
    try:
        console = [f"{e['level']} {e['message']}" for e in driver.get_log("browser")][-30:]
    except WebDriverException as error:
        console = [f"<unavailable: {error.msg}>"]
    return f"{what}\nscreenshot: {shot}\nbrowser console:\n" + "\n".join(console)


def wait_until(driver, condition, what, *, timeout=60.0, poll=0.25):
    """Call ``condition(driver)`` until it returns something truthy, and return that.

    Parameters
    ----------
    driver : selenium WebDriver
    condition : callable
        Takes the driver; a stale element counts as "not yet" (the DOM was re-rendered).
    what : str or callable
        What we wait for, for the failure message ("waiting for the kernel"); a callable
        returning the text is called only on failure, so it can report the state at that time.
    timeout, poll : float, optional
        Seconds in all, and between tries.

    Raises
    ------
    AssertionError
        After `timeout`, or as soon as JupyterLab shows a dialog (nothing the tests wait for
        happens behind one), with a screenshot path and the browser console (`failure_report`).
    """
    deadline = time.monotonic() + timeout
    while True:
        # A dialog blocks everything the test could wait for; report it now, not at the timeout.
        dialogs = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".jp-Dialog-content")]
        if dialogs:
            what = what() if callable(what) else what
            raise AssertionError(
                failure_report(driver, f"JupyterLab shows a dialog {dialogs} while {what}")
            )
        with contextlib.suppress(StaleElementReferenceException):
            result = condition(driver)
            if result:
                return result
        if time.monotonic() > deadline:
            what = what() if callable(what) else what
            raise AssertionError(failure_report(driver, f"timed out after {timeout:.0f} s {what}"))
        time.sleep(poll)


def kernel_status(driver):
    """Status of the active notebook's kernel ("idle", "busy", "starting", ...) or None."""
    found = driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook-ExecutionIndicator[data-status]")
    return found[0].get_attribute("data-status") if found else None


def open_notebook(driver, base_url, token, path, *, timeout=120.0):
    """Open ``path`` (relative to the server's root) in JupyterLab and wait for an idle kernel.

    The token in the URL logs the browser in (the server then sets a cookie).
    """
    driver.get(f"{base_url}/lab/tree/{quote(str(path))}?token={quote(token)}")
    wait_until(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell"),
        f"waiting for JupyterLab to show the cells of {path}",
        timeout=timeout,
    )

    def kernel_ready(d):
        # The toolbar says "idle" even before a kernel exists, and Run All in that moment opens
        # the kernel chooser; so the server must also report this notebook's kernel as idle with
        # the browser's websocket connected.
        try:
            sessions = json.loads(_api(base_url, token, "/api/sessions")[1])
        except OSError:  # a busy server may miss the 5 s read timeout; ask again next poll
            return False
        kernels = [s["kernel"] for s in sessions if s["path"] == str(path) and s.get("kernel")]
        ready = any(k["execution_state"] == "idle" and k["connections"] > 0 for k in kernels)
        return ready and kernel_status(d) == "idle"

    wait_until(
        driver,
        kernel_ready,
        lambda: f"waiting for the kernel of {path} to start (toolbar: {kernel_status(driver)!r})",
        timeout=timeout,
    )


def click_menu(driver, *labels):
    """Click through JupyterLab's main menu by visible labels.

    Examples: ``click_menu(driver, "Run", "Run All Cells")``. Labels, not command ids, because
    the ids behind a menu entry change between JupyterLab versions (``runmenu:run-all`` in 4.x).
    """
    selector = "#jp-MainMenu .lm-MenuBar-itemLabel"
    for label in labels:
        wait_until(
            driver,
            lambda d, label=label, selector=selector: [
                item for item in d.find_elements(By.CSS_SELECTOR, selector) if item.text == label
            ],
            f"waiting for the menu entry {label!r} (menu path {list(labels)})",
        )[0].click()
        selector = (
            ".lm-Menu:not(.lm-mod-hidden) .lm-Menu-item:not(.lm-mod-disabled) .lm-Menu-itemLabel"
        )


def _prompts(driver):
    return [
        p.text.strip()
        for p in driver.find_elements(By.CSS_SELECTOR, ".jp-CodeCell .jp-InputArea-prompt")
    ]


# An exception's output starts a line with its type ("ZeroDivisionError: ...", also for a
# SyntaxError, which has no "Traceback" line); warnings on stderr ("UserWarning: ...") do not.
_EXCEPTION = re.compile(r"^\w*(Error|Exception|Interrupt)\b", re.MULTILINE)


def _errors(driver):
    """Texts of the outputs that show an exception (JupyterLab renders them as stderr)."""
    outputs = driver.find_elements(
        By.CSS_SELECTOR, '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
    )
    return [e.text for e in outputs if "Traceback" in e.text or _EXCEPTION.search(e.text)]


def run_all_cells(driver, *, timeout=180.0):
    """Run every cell through the Run menu, as a student would, and wait for the result.

    Done means: the kernel is idle, no prompt shows ``[*]`` and every code cell has an
    execution count (a failing cell stops the run, leaving the rest unnumbered). So the
    notebook must be fresh (stored without execution counts, as ours are) and hold no empty
    code cell, which JupyterLab never numbers.

    Raises
    ------
    AssertionError
        If a cell raised (the message holds its traceback) or the run did not end in time.
    """
    click_menu(driver, "Run", "Run All Cells")

    def finished(d):
        prompts = _prompts(d)
        if kernel_status(d) != "idle" or any("*" in p for p in prompts):
            return False
        return bool(_errors(d)) or all(p[1:-2].strip().isdigit() for p in prompts)

    wait_until(
        driver, finished, lambda: f"running all cells (prompts {_prompts(driver)})", timeout=timeout
    )
    errors = _errors(driver)
    assert not errors, failure_report(driver, "a cell raised:\n" + "\n\n".join(errors))


def find_slider(driver, description, *, within=None):
    """The ipywidgets slider whose description (its label) is `description`.

    Parameters
    ----------
    driver : selenium WebDriver
    description : str
        Exact label text, e.g. ``"x"``.
    within : WebElement, optional
        Search only inside this element (e.g. the ``.spml-explorer`` box).

    Raises
    ------
    AssertionError
        If no such slider is on the page, or more than one.
    """
    scope = within if within is not None else driver
    sliders = [
        s
        for s in scope.find_elements(By.CSS_SELECTOR, ".widget-slider")
        if s.find_element(By.CSS_SELECTOR, ".widget-label").text.strip() == description
    ]
    assert len(sliders) == 1, failure_report(
        driver, f"expected one slider labelled {description!r}, found {len(sliders)}"
    )
    return sliders[0]


def slider_bounds(slider):
    """``(minimum, value, maximum)`` of a slider as floats, read from its handle's ARIA state."""
    handle = slider.find_element(By.CSS_SELECTOR, ".noUi-handle")
    return tuple(float(handle.get_attribute(f"aria-value{k}")) for k in ("min", "now", "max"))


def press_slider(driver, slider, steps):
    """Move a slider `steps` steps by keyboard (ArrowRight; ArrowLeft when negative).

    The handle is focused by script rather than clicked: a click on the track would also move
    the slider, to wherever the click landed.
    """
    handle = slider.find_element(By.CSS_SELECTOR, ".noUi-handle")
    driver.execute_script(
        "arguments[0].scrollIntoView({block: 'center'}); arguments[0].focus();", handle
    )
    key = Keys.ARROW_RIGHT if steps > 0 else Keys.ARROW_LEFT
    actions = ActionChains(driver)
    for _ in range(abs(steps)):
        actions.send_keys(key)
    actions.perform()


def image_src(element):
    """The ``src`` of an ipywidgets Image (a ``blob:`` URL that changes with every redraw)."""
    return element.get_attribute("src")


def element_png(element):
    """Screenshot of one element as PNG bytes (what is on screen, not what was sent)."""
    return element.screenshot_as_png
