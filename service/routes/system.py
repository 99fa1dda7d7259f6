"""Served models, liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from jobs.contract import PRIORITIES
from service.deps import MetricsDep, QueueDep, SettingsDep
from service.errors import error_body

router = APIRouter()


@router.get("/v1/models", tags=["models"])
def models(queue: QueueDep, settings: SettingsDep) -> dict[str, Any]:
    """Served models with resolution, SDE family, levels, samplers and defaults (as published
    by their workers); `available` says whether a live worker serves it now."""
    return {"models": queue.public_models(settings.models)}


@router.get("/healthz", tags=["health"])
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["health"])
def readyz(queue: QueueDep, settings: SettingsDep) -> JSONResponse:
    queue.ping()
    missing = [m for m, alive in queue.alive(settings.models).items() if not alive]
    if missing:
        return JSONResponse(error_body(503, f"no live worker for: {', '.join(missing)}"),
                            status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("/readyz/api", tags=["health"])
def readyz_api(queue: QueueDep) -> dict[str, str]:
    """Ready to accept edits: Redis answers (workers may be scaled to zero, as KEDA does; the
    first queued job wakes them). 503 while Redis is unreachable."""
    queue.ping()
    return {"status": "ready"}


@router.get("/metrics", tags=["health"], response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}},
                             "description": "Prometheus text exposition"}})
def prometheus(queue: QueueDep, settings: SettingsDep, metrics: MetricsDep) -> Response:
    for name in settings.models:
        metrics.queue_depth.labels(name).set(queue.depth(name))
        for priority in PRIORITIES:
            metrics.queue_depth_by_priority.labels(name, priority).set(queue.depth(name, priority))
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
