# ScribbleSeg — developer entry points. `make run`, `make test` and `make demo` set up .venv themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of PyTorch (never the CUDA wheels in CI); override e.g. TORCH_SPEC="torch" on a GPU box.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
DEMO_DIR ?= out/demo

.PHONY: setup run test test-fast demo lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[napari,distributed,dev]"
	touch $(STAMP)

setup: $(STAMP)

# Starts napari with the plugin and the 2D sample (image + scribbles).
run: setup
	bash scripts/with-display.sh $(PY) -m scribbleseg.napari --sample nuclei2d

# The whole suite; without a display (CI) it runs under Xvfb.
test: setup
	bash scripts/with-display.sh $(PY) -m pytest -q -p no:cacheprovider

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not gui"

# Headless end to end on the 2D sample: train, predict, evaluate, export.
demo: setup
	bash scripts/demo.sh $(PY) $(DEMO_DIR)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

format: setup
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) build dist out .pytest_cache .ruff_cache
