# Two commands do everything on a fresh machine:
#   make demo   set up .venv, run the quickstart notebook headlessly, write it and its figures to outputs/
#   make test   set up .venv, lint, and run every test, doctest and notebook
# On a GPU machine install your CUDA build of torch into .venv first, or pass TORCH=torch.

PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint data-samples clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[crf,notebooks,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/spml-lab run-notebook notebooks/00_quickstart.ipynb --out outputs

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

# Regenerate the committed embedded samples (tests/test_data_samples.py checks they match).
data-samples: $(STAMP)
	$(BIN)/spml-lab make-data data_samples/objects --kind objects --train 64 --val 32 --seed 0
	$(BIN)/spml-lab make-data data_samples/parts --kind parts --train 64 --val 32 --seed 1

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
