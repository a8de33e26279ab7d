# Two commands do everything on a fresh machine (python3 3.11, make, git):
#   make demo        bootstrap .venv and run the default pipeline on the embedded demo data
#   make test        bootstrap .venv, run ruff (make lint), then the test suite (what CI runs: bash .ci/run)
# The other targets:
#   make bootstrap   create .venv and install the project with its dev extra, pinned by requirements.lock
#   make test-fast   the test suite without the end-to-end runs (the tests marked `slow`)
#   make repro       the chain as DVC stages (`dvc repro`)
#   make viz         Kedro-Viz in the browser (`kedro viz run`)
#   make bench       all five benchmarks/bench_*.py at full size (kedro run first if no demo data); JSON in benchmarks/results/
#   make bench-quick the same five at smoke size (--quick or fewer repeats/steps); JSON in benchmarks/results/quick/
#   make lint        ruff check src tests benchmarks notebooks (settings in pyproject.toml)
#   make lock        re-resolve pyproject.toml in a throwaway venv and rewrite requirements.lock
#   make clean-data  delete the generated outputs: untracked files under data/0*/, dvclive/, .dvc/cache/
# PYTEST_ARGS is passed to pytest (make test PYTEST_ARGS="-x -k shards"); TEST_WORKERS (default 2) is the
# number of pytest-xdist worker processes of make test / test-fast (work stealing; 0: in-process).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
PIP_INSTALL := pip install --disable-pip-version-check -q
DEMO_DATA := data/05_model_input/negatives.parquet
TEST_WORKERS ?= 2
TEST_DIST := -n $(TEST_WORKERS) --dist worksteal
export KEDRO_DISABLE_TELEMETRY := 1
export DVC_NO_ANALYTICS := 1
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: bootstrap demo test test-fast repro viz bench bench-quick lint lock clean-data

bootstrap: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 is needed, found {sys.version.split()[0]} at {sys.executable}; set PYTHON=/path/to/python3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m $(PIP_INSTALL) -c $(LOCK) -e ".[dev]"
	touch $(STAMP)

demo: bootstrap
	$(BIN)/kedro run

test: lint
	$(BIN)/python -m pytest $(TEST_DIST) $(PYTEST_ARGS)

test-fast: bootstrap
	$(BIN)/python -m pytest -m "not slow" $(TEST_DIST) $(PYTEST_ARGS)

repro: bootstrap
	$(BIN)/dvc repro

viz: bootstrap
	$(BIN)/kedro viz run

# bench_training trains on the ingested demo data: the default chain makes it once.
$(DEMO_DATA): | $(STAMP)
	$(BIN)/kedro run

bench: bootstrap $(DEMO_DATA)
	$(BIN)/python benchmarks/bench_ingestion.py
	$(BIN)/python benchmarks/bench_model.py
	$(BIN)/python benchmarks/bench_negatives.py
	$(BIN)/python benchmarks/bench_storage.py
	$(BIN)/python benchmarks/bench_training.py

bench-quick: bootstrap $(DEMO_DATA)
	$(BIN)/python benchmarks/bench_ingestion.py --repeats 1 --long-minutes 1 --out benchmarks/results/quick/bench_ingestion.json
	$(BIN)/python benchmarks/bench_model.py --quick --out benchmarks/results/quick/bench_model.json
	$(BIN)/python benchmarks/bench_negatives.py --quick --out benchmarks/results/quick/bench_negatives.json
	$(BIN)/python benchmarks/bench_storage.py --quick --out benchmarks/results/quick/bench_storage.json
	$(BIN)/python benchmarks/bench_training.py --steps 3 --out benchmarks/results/quick/bench_training.json

lint: bootstrap
	$(BIN)/ruff check src tests benchmarks notebooks

# The lock is what a fresh resolve of pyproject.toml gives today: a throwaway venv installs the
# project without constraints and its `pip freeze` (the project itself excluded) replaces the lock
# in one move, so an interrupted run leaves the old lock in place. Commit the new lock.
lock:
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 is needed, found {sys.version.split()[0]} at {sys.executable}; set PYTHON=/path/to/python3.11"'
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp" $(LOCK).tmp' EXIT; \
	echo "resolving pyproject.toml in $$tmp/venv (no constraints)"; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m $(PIP_INSTALL) -e ".[dev]"; \
	"$$tmp/venv/bin/python" -m pip freeze --disable-pip-version-check --exclude-editable > "$$tmp/freeze"; \
	{ echo "# requirements.lock: every package (transitive ones included) that \`make bootstrap\` installs,"; \
	  echo "# i.e. \`pip install -e \".[dev]\"\` of pyproject.toml, at versions tested together. make bootstrap"; \
	  echo "# installs with it as constraints: pip install -c requirements.lock -e \".[dev]\"."; \
	  echo "# Made on Linux x86_64 with Python 3.11; entries a platform does not need (nvidia-*, triton) are"; \
	  echo "# ignored there. Refresh it after changing dependencies in pyproject.toml with \`make lock\` (a fresh"; \
	  echo "# resolve in a throwaway venv, then pip freeze --exclude-editable) and commit the result."; \
	  grep -viE '^pemt[-_]pipeline([=@ ]|$$)' "$$tmp/freeze"; \
	} > $(LOCK).tmp; \
	n=$$(grep -vc '^#' $(LOCK).tmp); [ "$$n" -gt 0 ] || { echo "empty freeze: $(LOCK) left as it was" >&2; exit 1; }; \
	mv $(LOCK).tmp $(LOCK); \
	echo "wrote $(LOCK): $$n packages"

# Generated outputs only: files git does not track under data/0*/ (the .gitkeep, .gitignore and
# *.dvc files are kept even when untracked), the folders they leave empty, dvclive/ at the root and
# DVC's cache. The folder skeleton, dvc.lock and the local remote .dvc_remote/ stay.
clean-data:
	@if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	    git ls-files -z --others -- data/0*/; \
	else \
	    find data/0*/ ! -type d -print0; \
	fi | { grep -zvE '(^|/)(\.gitkeep|\.gitignore|[^/]*\.dvc)$$' || true; } | xargs -0 -r rm -fv
	@find data/0*/ -mindepth 1 -depth -type d -empty -print -delete | sed 's/^/removed folder /'
	@for d in dvclive .dvc/cache; do if [ -e "$$d" ]; then rm -rf "$$d"; echo "removed $$d/"; fi; done
