"""Prometheus metrics, named by Prometheus conventions with a ``token_broker_`` prefix.

Label values come only from configuration (profile and caller names) or from fixed sets
defined here, never from request input: a caller who could choose a label value could blow
up the series count or smuggle text into the metrics output.
"""

from __future__ import annotations

import functools
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

# RFC 6749 section 5.2 codes an issuer may answer with; anything else is "other".
ISSUER_ERRORS = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "invalid_target",
        "access_denied",
        "server_error",
        "temporarily_unavailable",
    }
)
UNKNOWN = "(unknown)"

handouts = Counter(
    "token_broker_handouts_total",
    "Token requests answered, by profile and outcome (issued, denied, error).",
    ["profile", "outcome"],
    registry=REGISTRY,
)
cache_lookups = Counter(
    "token_broker_cache_lookups_total",
    "Cache lookups by layer (local, redis) and result (hit, miss).",
    ["layer", "result"],
    registry=REGISTRY,
)
issuer_budget_exceeded = Counter(
    "token_broker_issuer_budget_exceeded_total",
    "Exchanges refused because the profile spent its issuer budget for the minute.",
    ["profile"],
    registry=REGISTRY,
)
client_disconnects = Counter(
    "token_broker_client_disconnects_total",
    "Requests whose client went away before its body arrived in full.",
    registry=REGISTRY,
)
issuer_requests = Counter(
    "token_broker_issuer_requests_total",
    "Token requests sent to the issuer, by profile and outcome "
    "(ok, refused, unavailable, timeout).",
    ["profile", "outcome"],
    registry=REGISTRY,
)
issuer_refusals = Counter(
    "token_broker_issuer_refusals_total",
    "Exchanges the issuer refused (not retried), by profile and RFC 6749 error code.",
    ["profile", "error"],
    registry=REGISTRY,
)
issuer_latency = Histogram(
    "token_broker_issuer_request_duration_seconds",
    "Duration of one token request to the issuer.",
    ["profile"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
remaining_life = Histogram(
    "token_broker_handout_remaining_seconds",
    "Remaining life of handed-out tokens.",
    ["profile"],
    buckets=(60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400),
    registry=REGISTRY,
)
circuit_state = Gauge(
    "token_broker_circuit_state",
    "Issuer circuit breaker per profile: 0 closed, 1 half-open, 2 open.",
    ["profile"],
    registry=REGISTRY,
)
circuit_rejections = Counter(
    "token_broker_circuit_rejections_total",
    "Exchanges not attempted because the profile's circuit was open.",
    ["profile"],
    registry=REGISTRY,
)
redis_up = Gauge(
    "token_broker_redis_up",
    "1 while Redis answers, 0 while the broker runs degraded on its in-process cache.",
    registry=REGISTRY,
)
redis_errors = Counter(
    "token_broker_redis_errors_total",
    "Redis calls that failed or timed out (each one degrades the broker until a probe).",
    registry=REGISTRY,
)
rate_limited = Counter(
    "token_broker_rate_limited_total",
    "Requests refused with 429, by reason (caller, auth_failures).",
    ["reason"],
    registry=REGISTRY,
)
config_reloads = Counter(
    "token_broker_config_reloads_total",
    "Configuration reloads by result (applied, rejected).",
    ["result"],
    registry=REGISTRY,
)
singleflight_waiters = Gauge(
    "token_broker_singleflight_waiters",
    "Requests waiting on an exchange another request (or replica) is making.",
    registry=REGISTRY,
)
admin_actions = Counter(
    "token_broker_admin_actions_total",
    "Admin API calls by action.",
    ["action"],
    registry=REGISTRY,
)
auth_failures = Counter(
    "token_broker_auth_failures_total",
    "Refused caller authentications.",
    registry=REGISTRY,
)


@functools.cache
def labelled(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, looked up once: ``labels()`` takes a lock and validates on
    every call, which showed in the hot path. Unbounded, as label values come from config.
    """
    return metric.labels(*values)


def issuer_error_label(code: str | None) -> str:
    """The issuer's error code when it is a standard one, else ``other``."""
    return code if code in ISSUER_ERRORS else "other"


def render() -> bytes:
    """The exposition text for ``/metrics``."""
    return generate_latest(REGISTRY)
