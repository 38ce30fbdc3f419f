# Two commands do everything on a fresh machine:
#   make demo   set up .venv (torch, the package, the dense CRF) and run `spml-lab demo`: SPML and
#               partial cross-entropy trained on the embedded scribbles, scored and drawn beside
#               the shipped 1000-step runs (outputs/demo/spml_vs_baseline.png, results.md)
#   make lab    set up the course (Jupyter, UMAP, widgets) and open JupyterLab on notebooks/
#   make test   set up .venv with everything (Jupyter, UMAP, test tools; Debian's chromium for the
#               widget test), lint, and run every test, doctest and notebook
# On a GPU machine install your CUDA build of torch into .venv first, or pass TORCH=torch.

PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet --disable-pip-version-check
CORE := $(VENV)/.core
STAMP := $(VENV)/.installed

.PHONY: demo lab test test-fast lint browser data-samples sample-runs screenshots clean

# the demo needs only the package and the CRF (a minute to install); the course and the tests
# add Jupyter, UMAP, scikit-learn and the test tools on top
$(CORE): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH)"
	$(PIP) -e ".[crf]"
	touch $(CORE)

# the course alone: Jupyter, UMAP and the widgets, no test tools or browser
LAB := $(VENV)/.lab
$(LAB): $(CORE)
	$(PIP) -e ".[crf,notebooks]"
	touch $(LAB)

lab: $(LAB)
	$(BIN)/jupyter lab notebooks/

$(STAMP): $(CORE)
	$(PIP) -e ".[crf,notebooks,dev]"
	touch $(STAMP)

demo: $(CORE)
	$(BIN)/spml-lab demo --out outputs/demo

# The widget test drives a real browser: Debian's chromium + chromedriver (nothing downloads one).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# .pre-commit-config.yaml: ruff check, ruff format --check, notebooks stored without outputs;
# local hooks run from .venv/bin (first on PATH), so nothing is fetched
lint: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pre-commit run --all-files
	$(BIN)/lint-imports  # the layers contract of pyproject.toml

browser:
	@command -v chromedriver >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
		chromium chromium-driver; }

# One torch thread per process: the suite runs a kernel, a browser and pytest side by side on
# two cores, and OpenMP threads that outnumber free cores spin and slow everything down 10x.
# Tests in parallel (pytest-xdist), one process per core up to 4: each test, notebook kernel
# and browser session is single-threaded, so two processes on two cores share the work (the
# whole suite on a 2-core machine that other jobs also used: 37 min with two, 57 min with
# one). Plain `pytest` runs serially.
XDIST := -n auto --maxprocesses=4 --dist worksteal

test: lint browser
	OMP_NUM_THREADS=1 $(BIN)/pytest $(XDIST) --durations=15

# The unit tests and doctests while you work: no notebook runs (naming tests and spml_lab
# replaces testpaths, so nbval collects no notebook; papermill's runs are deselected), no
# browser, nothing marked slow. `make test` runs everything.
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/pytest $(XDIST) tests spml_lab -m "not slow" \
		--ignore=tests/test_browser.py --ignore=tests/test_browser_scribble.py \
		--deselect tests/test_notebooks.py::test_runs_under_papermill_with_injected_parameters

# The explorer screenshot of the README, taken by the browser test.
screenshots: $(STAMP) browser
	SPML_SCREENSHOT_DIR=outputs/screenshots $(BIN)/pytest tests/test_browser.py -k 10 -p no:cacheprovider
	@echo "copy outputs/screenshots/10_embedding_visualization-widget.png to docs/figures/explorer.png"

# Regenerate the committed embedded samples (tests/data/test_data_samples.py checks they
# match). The objects are the accuracy benchmark's calibrated scenes (benchmarks/accuracy.py
# DATA), so the shipped runs and every notebook see the data on which the method was measured.
# They are package data (spml_lab.data.datasets.DATA_SAMPLES), so a wheel carries them.
SAMPLES := spml_lab/data_samples
data-samples: $(STAMP)
	$(BIN)/spml-lab make-data $(SAMPLES)/objects --kind objects --train 64 --val 32 --seed 0 \
		--size 96 --difficulty 0.1 --object-scale 2.0 --superpixels 16
	$(BIN)/spml-lab make-data $(SAMPLES)/parts --kind parts --train 64 --val 32 --seed 1

# Retrain the runs shipped in $(SAMPLES)/runs/ (tests/test_sample_runs.py re-scores them).
sample-runs: $(STAMP)
	$(BIN)/python benchmarks/sample_runs.py --jobs 2

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
