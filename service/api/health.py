"""``/healthz`` (liveness), ``/readyz`` (readiness) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.deps import json_response, runtime
from service.api.errors import NO_STORE
from service.observe import metrics

router = APIRouter()


@router.get("/healthz", responses={200: {"description": "The process is alive."}})
async def healthz() -> Response:
    """Liveness: no I/O."""
    return json_response({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """Readiness: ``ready``, or ``degraded`` while Redis is down (still serving, from memory)."""
    checks = await runtime(request).ready()
    status = "degraded" if "degraded" in checks.values() else "ready"
    return Response(
        content=orjson.dumps({"status": status, "checks": checks}),
        media_type="application/json",
        headers=NO_STORE,
    )


@router.get("/metrics", include_in_schema=False)
async def metrics_text() -> Response:
    """Prometheus exposition; label values come from configuration only."""
    return Response(content=metrics.render(), media_type=CONTENT_TYPE_LATEST, headers=NO_STORE)
