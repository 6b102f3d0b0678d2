# Two commands matter: `make demo` (local broker + identity provider + CLI) and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help install system-deps node-deps lint typecheck test unit interop demo soak bench lock clean runner

help:
	@echo "make demo   - start an identity provider and the broker, fetch a token twice via the CLI"
	@echo "make test   - install everything, then ruff, mypy --strict and the whole pytest suite"
	@echo "make runner - dist/token_broker_runner-*.whl and dist/token-broker-runner.pyz (stdlib only)"
	@echo "make interop - the real OpenMetadata metadata CLI under token-broker exec / sidecar"
	@echo "               (builds the cached .interop/venv when tests/interop/*.txt changed)"
	@echo "make soak   - replicas + Redis + issuer under load with an issuer outage and a Redis crash"
	@echo "               (not in test/CI; SOAK_ARGS=\"--duration 60 --clients 50\"; see scripts/soak.py)"
	@echo "make bench  - loopback benchmark: cached hand-out vs bare endpoint (wrk), issuer calls, memory"
	@echo "               (not in test/CI; BENCH_ARGS=--quick; writes bench/results/latest.{json,md})"
	@echo "make lock   - regenerate requirements.lock, the image's hashed runtime pins (LOCK_ARGS=--upgrade)"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# redis-server and node are system packages; install them only when missing. Debian 12's
# nodejs is 18, too old for the identity providers: the check says so now, with the fix.
system-deps:
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }
	@command -v node >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm; }
	@sh scripts/check-node.sh

# The same helper the test fixtures use: reinstalls only when package-lock.json changed.
node-deps: install system-deps
	$(PY) -c "from tests.support.processes import ensure_node_modules; ensure_node_modules()"

lint: install
	$(VENV)/bin/ruff check service tests scripts bench
	$(VENV)/bin/ruff format --check service tests scripts bench

typecheck: install
	$(VENV)/bin/mypy

test: install node-deps lint typecheck
	$(PY) -m pytest

unit: install
	$(PY) -m pytest tests/unit

# The runner alone, for other people's images: a zero-dependency wheel and a zipapp.
runner: install
	$(PY) scripts/build_runner.py

# The real `metadata` CLI lives in .interop/venv, rebuilt only when the sha256 of
# tests/interop/requirements.txt + constraints.txt differs from the stamp inside it.
interop: install node-deps
	$(PY) -m tests.interop.ensure_venv
	$(PY) -m pytest tests/interop -p no:cacheprovider

# The demo runs `npm ci` in tests/idp itself (ensure_node_modules), only when the lockfile changed.
demo: install system-deps
	$(PY) -m scripts.demo

# Not part of `make test` or CI: minutes of load; summary in .soak/latest.json, exit 1 on any failure.
soak: install node-deps
	$(PY) -m scripts.soak $(SOAK_ARGS)

# Not part of `make test` or CI: ~8 minutes (BENCH_ARGS=--quick: ~4) of loopback load with wrk
# (a Debian package, installed here only when missing); see bench/README.md.
bench: install node-deps
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(PY) -m bench.run $(BENCH_ARGS)

# requirements.lock: the container image's runtime dependencies, exact pins with the hash of
# every file, resolved for CPython 3.11 on Linux by a pinned uv in a throwaway venv. Existing
# pins are kept; `make lock LOCK_ARGS=--upgrade` moves everything to the newest release.
UV_VERSION := 0.13.9
LOCK_COMMAND := uv pip compile pyproject.toml --python-version 3.11 --python-platform linux --generate-hashes
lock:
	@set -euo pipefail; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/pip" install --quiet "uv==$(UV_VERSION)"; \
	"$$tmp/venv/bin/"$(LOCK_COMMAND) $(LOCK_ARGS) --quiet \
	  --custom-compile-command "make lock  # uv $(UV_VERSION): $(LOCK_COMMAND)" \
	  --output-file requirements.lock

clean:
	rm -rf $(VENV) .interop tests/idp/node_modules .demo .soak .mypy_cache .ruff_cache .pytest_cache
