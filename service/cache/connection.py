"""Build the Redis client from settings: a plain URL, TLS (``rediss://``) or Sentinel."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis

from service.settings import Settings


def connect_redis(settings: Settings) -> Redis:
    """A client for ``TOKEN_BROKER_REDIS_URL``; connects lazily, on first use."""
    assert settings.redis_url is not None
    # A blocking pool queues a burst of requests for a connection instead of failing them.
    pool = BlockingConnectionPool.from_url(
        settings.redis_url.get_secret_value(),
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout_seconds,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        health_check_interval=30,
    )
    return Redis(connection_pool=pool)
