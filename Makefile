# Two commands matter: `make demo` (local broker + identity provider + CLI) and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help install system-deps node-deps lint typecheck test unit demo clean

help:
	@echo "make demo   - start an identity provider and the broker, fetch a token twice via the CLI"
	@echo "make test   - install everything, then ruff, mypy --strict and the whole pytest suite"

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

node-deps: system-deps
	cd tests/idp && { test -d node_modules || npm ci --no-audit --no-fund --loglevel=error; }

lint: install
	$(VENV)/bin/ruff check service tests
	$(VENV)/bin/ruff format --check service tests

typecheck: install
	$(VENV)/bin/mypy

test: install node-deps lint typecheck
	$(PY) -m pytest

unit: install
	$(PY) -m pytest tests/unit

demo: install node-deps
	$(PY) -m scripts.demo

clean:
	rm -rf $(VENV) tests/idp/node_modules .demo .mypy_cache .ruff_cache .pytest_cache
