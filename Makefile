# Parley — `make run` runs the stack, `make test` runs the suite. Both install what is missing.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
# No uv on PATH: install it for this Python (user site, else the interpreter's own).
UV := $(PYTHON) -m uv
UV_BOOTSTRAP := uv-bootstrap
endif
VENV := .venv
STAMP := $(VENV)/.synced

.PHONY: uv-bootstrap help install run test k8s-render test-unit test-integration test-e2e test-faults lint typecheck check token bench mongod clean

help:
	@echo "make run     - run history, gateway, worker (and the provider simulator without keys)"
	@echo "make test    - run the whole test suite against real RabbitMQ, Redis and MongoDB"
	@echo "make token USER=user-123 - mint a development JWT"
	@echo "make lint | typecheck | check | bench | clean"
	@echo "make k8s-render [OVERLAY=dev|prod] - print the rendered Kubernetes manifests"

uv-bootstrap:
	@$(PYTHON) -m uv --version >/dev/null 2>&1 || \
	  $(PYTHON) -m pip install --quiet --user uv 2>/dev/null || \
	  $(PYTHON) -m pip install --quiet uv
	@$(PYTHON) -m uv --version >&2

$(STAMP): uv.lock pyproject.toml libs/common/pyproject.toml services/*/pyproject.toml tools/*/pyproject.toml | $(UV_BOOTSTRAP)
	$(UV) sync --frozen --all-packages
	@touch $@

install: $(STAMP)

mongod: install
	@$(UV) run --frozen --no-sync python scripts/ensure_mongod.py

run: install
	@$(UV) run --frozen --no-sync python scripts/devstack.py

test: install mongod
	$(UV) run --frozen --no-sync pytest

test-unit: install
	$(UV) run --frozen --no-sync pytest tests/unit

test-integration: install mongod
	$(UV) run --frozen --no-sync pytest tests/integration

test-e2e: install mongod
	$(UV) run --frozen --no-sync pytest tests/e2e

test-faults: install mongod
	$(UV) run --frozen --no-sync pytest tests/faults

lint: install
	$(UV) run --frozen --no-sync ruff check .
	$(UV) run --frozen --no-sync ruff format --check .

typecheck: install
	$(UV) run --frozen --no-sync mypy

check: lint typecheck test

token: install
	@$(UV) run --frozen --no-sync python scripts/mint_token.py "$(or $(USER_ID),$(USER))"

bench: install mongod
	$(UV) run --frozen --no-sync python -m bench $(BENCH_ARGS)

# Kustomize overlays rendered without kustomize (scripts/k8s_render.py); OVERLAY=dev|prod,
# default both. KUSTOMIZE=1 renders with a kustomize or kubectl found on PATH instead.
k8s-render: install
	@$(UV) run --frozen --no-sync python scripts/k8s_render.py \
	  $(if $(OVERLAY),--overlay $(OVERLAY)) $(if $(KUSTOMIZE),--kustomize)

clean:
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache
