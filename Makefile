# Two commands do everything on a fresh machine (python3 3.11, make, git):
#   make demo   bootstrap .venv and run the default pipeline on the embedded demo data
#   make test   bootstrap .venv and run the test suite (make test-fast: without the end-to-end runs)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export KEDRO_DISABLE_TELEMETRY := 1
export DVC_NO_ANALYTICS := 1
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: bootstrap demo test test-fast repro viz bench clean-data

bootstrap: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 is needed, found {sys.version.split()[0]} at {sys.executable}; set PYTHON=/path/to/python3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e ".[dev]"
	touch $(STAMP)

demo: bootstrap
	$(BIN)/kedro run

test: bootstrap
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: bootstrap
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

repro: bootstrap
	$(BIN)/dvc repro

viz: bootstrap
	$(BIN)/kedro viz run

bench: bootstrap
	$(BIN)/python benchmarks/bench_ingestion.py
	$(BIN)/python benchmarks/bench_model.py
	$(BIN)/python benchmarks/bench_storage.py
