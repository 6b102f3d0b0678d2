# Two commands matter: `make demo` (local broker + identity provider + CLI) and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help install system-deps node-deps lint typecheck test unit interop demo clean

help:
	@echo "make demo   - start an identity provider and the broker, fetch a token twice via the CLI"
	@echo "make test   - install everything, then ruff, mypy --strict and the whole pytest suite"
	@echo "make interop - the real OpenMetadata metadata CLI under token-broker exec / sidecar"
	@echo "               (builds the cached .interop/venv when tests/interop/*.txt changed)"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# redis-server and node are system packages; install them only when missing.
system-deps:
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }
	@command -v node >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm; }

# The same helper the test fixtures use: reinstalls only when package-lock.json changed.
node-deps: install system-deps
	$(PY) -c "from tests.support.processes import ensure_node_modules; ensure_node_modules()"

lint: install
	$(VENV)/bin/ruff check service tests scripts
	$(VENV)/bin/ruff format --check service tests scripts

typecheck: install
	$(VENV)/bin/mypy

test: install node-deps lint typecheck
	$(PY) -m pytest

unit: install
	$(PY) -m pytest tests/unit

# The real `metadata` CLI lives in .interop/venv, rebuilt only when the sha256 of
# tests/interop/requirements.txt + constraints.txt differs from the stamp inside it.
interop: install node-deps
	$(PY) -m tests.interop.ensure_venv
	$(PY) -m pytest tests/interop -p no:cacheprovider

# The demo runs `npm ci` in tests/idp itself (ensure_node_modules), only when the lockfile changed.
demo: install system-deps
	$(PY) -m scripts.demo

clean:
	rm -rf $(VENV) .interop tests/idp/node_modules .demo .mypy_cache .ruff_cache .pytest_cache
