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
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

$(VENV_TRAINER)/.installed: requirements/trainer-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV_TRAINER)
	$(VENV_TRAINER)/bin/pip install -q --upgrade pip
	$(VENV_TRAINER)/bin/pip install -q --no-deps -r requirements/trainer-dev.txt
	$(VENV_TRAINER)/bin/pip install -q --no-deps -e .
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
	$(PY) -m pytest tests/ndvi_worker $(PYTEST_ARGS)

test-launcher: venv-worker ## launcher tests (.venv)
	$(PY) -m pytest tests/launcher -m "not docker" $(PYTEST_ARGS)

test-trainer: venv-trainer ## trainer and serving tests (.venv-trainer)
	$(PY_TRAINER) -m pytest tests/segmentation_trainer $(PYTEST_ARGS)

.PHONY: lint format
lint: venv-worker ## ruff lint + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv-worker ## ruff fix + format
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# ---------------------------------------------------------------- images (containers/, docker-compose.yml)
# Offline builds: `make wheelhouse` downloads (and, for sdists, builds) every pinned wheel on the host;
# the Dockerfiles install from it with --no-index. Classic builder (DOCKER_BUILDKIT=0) works everywhere.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
GIT_SHA := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
IMAGE_TAG ?= $(VERSION)-$(GIT_SHA)
BASE_IMAGE ?= python:3.11-slim-bookworm
LOCAL_BASE_IMAGE ?= earthmon-base:bookworm
TRAINER_FLAVOUR ?= cpu
PROCESSING_IMAGE ?= earthmon-processing
TRAINING_IMAGE ?= earthmon-training
TRAINING_DEV_TAG := $(if $(filter gpu,$(TRAINER_FLAVOUR)),dev-gpu,dev)
TRAINING_VERSION_TAG := $(IMAGE_TAG)$(if $(filter gpu,$(TRAINER_FLAVOUR)),-gpu,)
REGISTRY ?=
SOURCE_URL ?= https://github.com/earthmon/earthmon
DOCKER_BUILD := env DOCKER_BUILDKIT=0 docker build --network host --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	--build-arg VERSION=$(VERSION) --build-arg REVISION=$(shell git rev-parse HEAD 2>/dev/null || echo unknown) \
	--build-arg SOURCE=$(SOURCE_URL)
# Shared libraries MXNet's wheels need and do not bundle (Debian bookworm packages, unpacked into the venv), and
# nginx (the binary only: the front of `serve`).
TRAINER_DEBS := libgomp1 libquadmath0 nginx
TRAINER_LOCK := requirements/trainer$(if $(filter gpu,$(TRAINER_FLAVOUR)),-gpu,).txt

.PHONY: wheelhouse wheelhouse-worker wheelhouse-trainer wheelhouse-build wheelhouse-moto clean-wheelhouse
wheelhouse: wheelhouse-worker wheelhouse-trainer ## download/build every pinned wheel on the host (offline image builds)
wheelhouse-build:
	PYTHON=$(PYTHON) containers/wheelhouse.sh containers/build-requirements.txt wheelhouse/build
wheelhouse-worker: wheelhouse-build
	PYTHON=$(PYTHON) containers/wheelhouse.sh requirements/worker.txt wheelhouse/worker
wheelhouse-trainer: wheelhouse-build
	PYTHON=$(PYTHON) containers/wheelhouse.sh $(TRAINER_LOCK) wheelhouse/trainer-$(TRAINER_FLAVOUR) $(TRAINER_DEBS)
wheelhouse-moto: wheelhouse-build
	@mkdir -p wheelhouse/moto
	grep -E '^moto==' requirements/dev.txt | sed 's/^moto==/moto[server]==/' > wheelhouse/moto/requirements.in
	$(PYTHON) -m pip download --quiet --no-cache-dir --disable-pip-version-check --dest wheelhouse/moto \
		-r wheelhouse/moto/requirements.in -c requirements/dev.txt 2>&1 | { grep -v 'is ignored' || true; }
	cp wheelhouse/moto/requirements.in wheelhouse/moto/requirements.txt
	cp requirements/dev.txt wheelhouse/moto/constraints.txt
clean-wheelhouse: ## remove the wheelhouse
	rm -rf wheelhouse

.PHONY: base-image build build-processing build-training
base-image: ## build the local debootstrap bookworm base (for machines that cannot pull; then BASE_IMAGE=earthmon-base:bookworm)
	containers/base/build-debootstrap-base.sh $(LOCAL_BASE_IMAGE)

build: build-processing build-training ## build both images (BASE_IMAGE=..., TRAINER_FLAVOUR=cpu|gpu)

# Each image gets its own build context with only what it needs (hard links, so staging is instant): the
# classic builder sends the whole context to the engine, and the wheelhouses of all images are several GB.
# stage_context(NAME, PATHS, WHEELHOUSE SETS)
stage_context = rm -rf build/context/$(1) && mkdir -p build/context/$(1)/wheelhouse && \
	cp -al pyproject.toml README.md .dockerignore requirements containers $(2) build/context/$(1)/ && \
	cp -al $(addprefix wheelhouse/,$(3) build) build/context/$(1)/wheelhouse/

build-processing: wheelhouse-worker ## build earthmon-processing:dev and :<version>-<sha>
	$(call stage_context,processing,ndvi_worker,worker)
	$(DOCKER_BUILD) -f build/context/processing/containers/processing/Dockerfile \
		-t $(PROCESSING_IMAGE):dev -t $(PROCESSING_IMAGE):$(IMAGE_TAG) build/context/processing

# WHEELS_OVER_HTTP=1: the wheels are served to the build from the host (containers/with-wheel-server.sh) instead of
# being copied into the build context; only the Debian packages go in the context. Saves ~5 GB of disk at the peak of
# the GPU build (CI uses it there); needs a Linux Docker engine, where --network host reaches the host's loopback.
WHEELS_OVER_HTTP ?=
build-training: wheelhouse-trainer ## build earthmon-training:dev (or :dev-gpu) and :<version>-<sha>[-gpu]
	$(call stage_context,training,segmentation_trainer,$(if $(WHEELS_OVER_HTTP),,trainer-$(TRAINER_FLAVOUR)))
	$(if $(WHEELS_OVER_HTTP),mkdir -p build/context/training/wheelhouse/trainer-$(TRAINER_FLAVOUR) && \
		cp -al wheelhouse/trainer-$(TRAINER_FLAVOUR)/debs build/context/training/wheelhouse/trainer-$(TRAINER_FLAVOUR)/,)
	$(if $(PRETRAINED_DIR),mkdir -p build/context/training/pretrained && \
		cp -l $(PRETRAINED_DIR)/*.params build/context/training/pretrained/ 2>/dev/null || \
		cp $(PRETRAINED_DIR)/*.params build/context/training/pretrained/,)
	$(if $(WHEELS_OVER_HTTP),PYTHON=$(PYTHON) containers/with-wheel-server.sh wheelhouse/trainer-$(TRAINER_FLAVOUR),) \
	$(DOCKER_BUILD) -f build/context/training/containers/training/Dockerfile --build-arg FLAVOUR=$(TRAINER_FLAVOUR) \
		$(if $(WHEELS_OVER_HTTP),--build-arg WHEELHOUSE_URL,) \
		$(if $(PRETRAINED_DIR),--build-arg PRETRAINED_DIR=pretrained,) \
		-t $(TRAINING_IMAGE):$(TRAINING_DEV_TAG) -t $(TRAINING_IMAGE):$(TRAINING_VERSION_TAG) build/context/training

build-moto: wheelhouse-moto ## build earthmon-moto:dev, the local S3 of docker-compose.yml
	$(call stage_context,moto,,moto)
	$(DOCKER_BUILD) -f build/context/moto/containers/moto/Dockerfile -t earthmon-moto:dev build/context/moto

.PHONY: build-moto push
push: venv-worker ## push both images to ECR (account/region from the AWS session) or to REGISTRY=host:port
	@mkdir -p build
	$(PY) containers/push.py --json build/pushed-images.json $(if $(REGISTRY),--registry $(REGISTRY),) \
		$(PROCESSING_IMAGE):$(IMAGE_TAG) $(TRAINING_IMAGE):$(TRAINING_VERSION_TAG)

.PHONY: test-containers
# Docker-marked tests of the other suites run here, after the images are built (make test skips them).
DOCKER_TESTS_ELSEWHERE := tests/launcher/ndvi/test_products.py::test_stage_2_local_with_the_processing_image
test-containers: venv-worker ## image tests on a running Docker engine (build first; see .ci/containers)
	$(PY) -m pytest tests/containers $(DOCKER_TESTS_ELSEWHERE) $(PYTEST_ARGS)

# ---------------------------------------------------------------- benchmarks
.PHONY: bench-worker
bench-worker: venv-worker ## NDVI worker vs naive vs floor, full scene: local, nginx, shaped S3-like link (30 ms, 60 MB/s)
	$(PY) benchmarks/bench_worker.py $(BENCH_WORKER_ARGS)

.PHONY: bench-composite
bench-composite: venv-worker ## composite max/median/mean of 6 dates of a full tile vs one scene's NDVI (wall, CPU, peak RSS)
	$(PY) benchmarks/bench_composite.py $(BENCH_COMPOSITE_ARGS)

.PHONY: bench-mosaic
bench-mosaic: venv-worker ## mosaic cost on the global 0.01-degree grid: 50/200/800 synthetic tiles, then 8,581 small outputs (time per scene)
	$(PY) benchmarks/bench_mosaic.py 50 200 800
	$(PY) benchmarks/bench_mosaic.py 8581 --small --clean

.PHONY: bench-plan
bench-plan: venv-worker ## launcher: plan 8,581 scenes into 25 jobs x 20 instances (each step vs reading the items)
	$(PY) benchmarks/bench_plan.py $(BENCH_PLAN_ARGS)

.PHONY: bench-serve
bench-serve: venv-trainer ## serve: req/s and p50/p99 of 512x512 requests on the real server (layouts, --engines mxnet,onnx)
	$(PY_TRAINER) benchmarks/bench_serve.py

.PHONY: bench-train bench-train-convergence
bench-train: venv-trainer ## trainer: DeepLabV3-ResNet50 images/s and CPU use vs GluonCV's reference loop (same threads) and the machine's peak
	$(PY_TRAINER) benchmarks/bench_train_throughput.py

bench-train-convergence: venv-trainer ## trainer: validation mIoU vs wall time from scratch, built-in defaults vs documented settings
	$(PY_TRAINER) benchmarks/bench_train_convergence.py

.PHONY: clean
clean: ## remove environments, caches and demo output
	rm -rf $(VENV) $(VENV_TRAINER) $(DEMO_DIR) .pytest_cache .ruff_cache .hypothesis build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
