"""Route dependencies: the settings, the caller's identity (API key), the queue client, metrics."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request

from jobs import fairness
from jobs.idempotency import IdempotencyStore
from jobs.queue import JobQueue
from jobs.settings import Settings
from jobs.webhooks import WebhookStore
from service.errors import ApiError
from service.metrics import ApiMetrics

# Every dependency is `async def` on purpose: FastAPI runs a plain `def` dependency in a thread
# pool, and these are all cheap; a thread hop per dependency per request cost more than they do.


async def app_settings(request: Request) -> Settings:
    """The settings the app was created with (one object per process)."""
    return request.app.state.settings


async def caller(request: Request, settings: Annotated[Settings, Depends(app_settings)]) -> str:
    """The caller's identity: a hash of its API key, or 'public' when auth is off."""
    if settings.auth_disabled:
        return "public"
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'",
                       headers={"WWW-Authenticate": "Bearer"})
    # Compared in constant time with every accepted key (no early exit), so response times do
    # not tell how much of a guess was right. Keys are never logged.
    matched = False
    for accepted in settings.api_keys:
        matched |= hmac.compare_digest(accepted.encode(), key.encode())
    if not matched:
        raise ApiError(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
    owner = hashlib.sha256(key.encode()).hexdigest()[:24]
    if settings.rate_limit_per_minute:
        wait = fairness.rate_limited(request.app.state.queue.connection, owner,
                                     settings.rate_limit_per_minute)
        if wait is not None:
            raise ApiError(429, f"rate limit of {settings.rate_limit_per_minute} requests per "
                                f"minute per API key reached; retry in {wait} s",
                           headers={"Retry-After": str(wait)})
    return owner


async def job_queue(request: Request) -> JobQueue:
    return request.app.state.queue


async def api_metrics(request: Request) -> ApiMetrics:
    return request.app.state.metrics


async def idempotency_store(request: Request,
                            settings: Annotated[Settings, Depends(app_settings)]
                            ) -> IdempotencyStore:
    return IdempotencyStore(request.app.state.queue.connection, settings.idempotency_ttl_s)


async def webhook_store(request: Request) -> WebhookStore:
    return request.app.state.queue.webhooks


SettingsDep = Annotated[Settings, Depends(app_settings)]
Caller = Annotated[str, Depends(caller)]
QueueDep = Annotated[JobQueue, Depends(job_queue)]
MetricsDep = Annotated[ApiMetrics, Depends(api_metrics)]
IdempotencyDep = Annotated[IdempotencyStore, Depends(idempotency_store)]
WebhooksDep = Annotated[WebhookStore, Depends(webhook_store)]
