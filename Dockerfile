# syntax=docker/dockerfile:1
# token-broker container image: `token-broker serve` on 0.0.0.0:8080 as UID 10001.
#
#   docker build -t registry.example.com/token-broker:0.1.0 .
#
# Runtime dependencies come only from requirements.lock (exact pins, every file hashed;
# regenerate it with `make lock`), as wheels: nothing is compiled, so neither stage needs a
# compiler and the final stage is the slim base plus one virtualenv.
# tests/deploy/test_dockerfile.py runs hadolint on this file and checks the facts below.

FROM python:3.11.14-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN python -m venv /opt/venv

# Dependencies first: this layer is rebuilt only when the lock changes.
COPY requirements.lock /tmp/requirements.lock
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --require-hashes --only-binary=:all: \
        -r /tmp/requirements.lock

# Then the project itself, as a wheel, without dependencies (they are all in the lock);
# `pip check` fails the build if the lock misses one.
COPY pyproject.toml README.md /src/
COPY service /src/service
RUN /opt/venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/dist /src \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps /tmp/dist/*.whl \
    && /opt/venv/bin/pip check


FROM python:3.11.14-slim-bookworm

# A fixed numeric user, so Kubernetes can check runAsNonRoot without a name lookup.
RUN groupadd --system --gid 10001 broker \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
        --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin broker

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Listen on every interface inside the container (the broker's own default is loopback).
# DL3064 reads "TOKEN" in the names as a secret; these three are an address, a port and a
# path. Secrets reach the container as mounted files (TOKEN_BROKER_*_FILE), never as ENV.
# hadolint ignore=DL3064
ENV TOKEN_BROKER_HOST=0.0.0.0 \
    TOKEN_BROKER_PORT=8080 \
    TOKEN_BROKER_CONFIG=/etc/token-broker/config.yaml

USER 10001:10001
EXPOSE 8080

# Liveness without curl: the stdlib fetches /healthz (no I/O behind it); any error or
# non-2xx answer is an exception, so a non-zero exit.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('TOKEN_BROKER_PORT', '8080'), timeout=3)"]

ENTRYPOINT ["token-broker"]
CMD ["serve"]
