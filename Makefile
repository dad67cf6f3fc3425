# earthmon: make help lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
VENV_TRAINER := .venv-trainer
PY := $(VENV)/bin/python
PY_TRAINER := $(VENV_TRAINER)/bin/python
DEMO_DIR ?= demo-output
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

# ---------------------------------------------------------------- environments
$(VENV)/.installed: requirements/dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements/dev.txt
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e .
	touch $@

$(VENV_TRAINER)/.installed: requirements/trainer-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV_TRAINER)
	$(VENV_TRAINER)/bin/pip install -q --upgrade pip
	$(VENV_TRAINER)/bin/pip install -q -r requirements/trainer-dev.txt
	$(VENV_TRAINER)/bin/pip install -q --no-deps --no-build-isolation -e .
	touch $@

.PHONY: venv venv-worker venv-trainer
venv: venv-worker venv-trainer ## create .venv (worker + launcher + dev tools) and .venv-trainer (MXNet trainer)
venv-worker: $(VENV)/.installed
venv-trainer: $(VENV_TRAINER)/.installed

# ---------------------------------------------------------------- run
.PHONY: demo
demo: venv-worker ## run the NDVI worker on generated sample scenes (no Docker, no cloud)
	$(PY) -m ndvi_worker.demo --dir $(DEMO_DIR)

# ---------------------------------------------------------------- checks
.PHONY: test test-worker test-launcher test-trainer
test: test-worker test-launcher test-trainer ## run every test (worker, launcher, trainer) in its own environment

test-worker: venv-worker ## worker tests (.venv)
	$(PY) -m pytest tests/worker $(PYTEST_ARGS)

test-launcher: venv-worker ## launcher tests (.venv)
	$(PY) -m pytest tests/launcher $(PYTEST_ARGS)

test-trainer: venv-trainer ## trainer and serving tests (.venv-trainer)
	$(PY_TRAINER) -m pytest tests/trainer $(PYTEST_ARGS)

.PHONY: lint format
lint: venv-worker ## ruff lint + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv-worker ## ruff fix + format
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# ---------------------------------------------------------------- benchmarks
.PHONY: bench-worker
bench-worker: venv-worker ## NDVI worker vs naive baseline vs GDAL floor on a full-size synthetic scene
	$(PY) benchmarks/bench_worker.py

.PHONY: clean
clean: ## remove environments, caches and demo output
	rm -rf $(VENV) $(VENV_TRAINER) $(DEMO_DIR) .pytest_cache .ruff_cache .hypothesis build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
