"""``create_app(settings)``: the FastAPI application, built at start-up, never at import."""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import __version__
from service.api import errors
from service.api.admin import router as admin_router
from service.api.bench import router as bench_router
from service.api.health import router as health_router
from service.api.middleware.body_limits import BodyLimit
from service.api.middleware.header_limits import HeaderLimits
from service.api.middleware.proxies import TrustedProxies
from service.api.middleware.request_id import RequestId
from service.api.oauth2 import router as oauth2_router
from service.api.token import router as token_router
from service.api.wellknown import router as wellknown_router
from service.config.settings import Settings
from service.observe import audit
from service.observe.logs import drain
from service.runtime import Runtime, build_runtime, load_checked


def create_app(
    settings: Settings, *, clock: Callable[[], float] = time.time, served: bool = False
) -> FastAPI:
    """An app for ``settings``; raises ``ConfigError`` listing every config problem.

    ``clock`` is injectable so tests can move time instead of sleeping. ``served``: this
    process exists to run this app (``serve``), so it may tune the process for it.
    """
    config = load_checked(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = build_runtime(settings, config, clock=clock)
        app.state.runtime = runtime
        runtime.start()
        if served:
            _freeze_start_up_heap()
        hangup = _on_sighup(runtime)
        try:
            yield
        finally:
            if hangup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            await runtime.aclose()
            drain()
            audit.drain()

    app = FastAPI(
        title="token-broker",
        version=__version__,
        description="Short-lived OIDC client-credentials tokens for OpenMetadata ingestion.",
        lifespan=lifespan,
        docs_url="/docs" if settings.docs else None,
        redoc_url="/redoc" if settings.docs else None,
    )
    app.include_router(token_router)
    app.include_router(oauth2_router)
    app.include_router(health_router)
    app.include_router(admin_router)
    app.include_router(wellknown_router)
    if settings.bench_endpoints:
        app.include_router(bench_router)
    errors.install(app)
    # Added innermost first: a request meets RequestId, HeaderLimits, BodyLimit, then
    # TrustedProxies (headers already bounded), before any route. Plain ASGI classes, not
    # BaseHTTPMiddleware: each layer costs one call (bench/README.md).
    app.add_middleware(TrustedProxies, trusted=settings.trusted_proxies)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        HeaderLimits,
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
    )
    app.add_middleware(RequestId)
    return app


def _freeze_start_up_heap() -> None:
    """Keep the objects built at start-up out of every later garbage collection.

    Imports and start-up leave ~100k long-lived objects; a full collection walks them all
    (~50 ms here) and, under load, in-flight requests' objects promoted to the oldest
    generation trigger one every few seconds: a pause of every request on the loop, the
    tail of the latency figures (bench/README.md). Frozen, they are never walked again.
    """
    gc.collect()
    gc.freeze()


def _on_sighup(runtime: Runtime) -> bool:
    """Reload the configuration on SIGHUP; False where signals cannot be handled here."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[bool]] = set()

    def reload() -> None:
        task = loop.create_task(runtime.reload("SIGHUP"))
        pending.add(task)
        task.add_done_callback(pending.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, reload)
    except (NotImplementedError, RuntimeError, ValueError):
        return False  # not the main thread (e.g. tests driving the app in-process)
    return True


def app_from_env() -> FastAPI:
    """uvicorn factory: each worker builds its settings once, at start-up."""
    from service.observe.logs import configure_logging  # noqa: PLC0415 - only for served processes
    from service.observe.sink import AuditSink, open_stderr  # noqa: PLC0415 - likewise

    settings = Settings()
    if configure_logging(settings.log_level):
        # Audit lines skip the logging thread: written from the loop, and a hand-out waits
        # for its line to be queued (fails closed when the reader of stderr is stuck).
        audit.use_sink(AuditSink(open_stderr()))
    return create_app(settings, served=True)
