"""/v1/batches: submit many edits at once, follow the batch, read its results, cancel it."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from jobs.batches import FINAL_STATUSES, BatchView, batch_links
from jobs.contract import BatchOptions
from jobs.queue import JobQueue
from service.batches import parse_batch, read_batch
from service.deps import Caller, IdempotencyDep, MetricsDep, QueueDep, SettingsDep, WebhooksDep
from service.errors import ERROR_RESPONSES, ApiError
from service.idempotency import Idempotent
from service.options import edit_fields, parse_options
from service.schemas import BatchAccepted, BatchStatus, Deliveries
from service.submission import ensure_key_room, ensure_room, new_edit

router = APIRouter(prefix="/v1/batches", tags=["batches"], responses=ERROR_RESPONSES)

SUBMIT_BODY = {"requestBody": {"content": {"application/json": {
    "schema": {"type": "object", "required": ["requests"], "properties": {
        "requests": {"type": "array", "items": {
            "type": "object", "required": ["custom_id", "image"],
            "properties": {"custom_id": {"type": "string"},
                           "image": {"type": "string", "format": "byte"},
                           "mask": {"type": "string", "format": "byte"}},
            "additionalProperties": True,
            "description": "an edit as the JSON form of POST /v1/edits, plus custom_id"}},
        **BatchOptions.model_json_schema()["properties"]}},
    "example": {"requests": [{"custom_id": "cat-1", "image": "<base64 PNG>", "t0": 0.5},
                             {"custom_id": "cat-2", "image": "<base64 PNG>", "seed": 3}],
                "webhook_url": "https://example.com/hooks/sdedit"}}}}}


def owned(queue: JobQueue, batch_id: str, owner: str) -> BatchView:
    """The batch, or 404 (also for another key's batch: no existence leak)."""
    view = queue.find_batch(batch_id, owner)
    if view is None:
        raise ApiError(404, f"no batch {batch_id!r}")
    return view


@router.post("", status_code=202, response_model=BatchAccepted, openapi_extra=SUBMIT_BODY,
             responses={400: {"description": "malformed Idempotency-Key"}})
async def submit(request: Request, owner: Caller, queue: QueueDep, settings: SettingsDep,
                 metrics: MetricsDep, idempotency: IdempotencyDep) -> Any:
    """Submit a batch: every request is checked first, then each becomes an edit job (priority
    `batch` unless asked otherwise). Answers 202 with the batch id and each request's edit id."""
    body = await read_batch(request, settings)
    lines, raw_options = await run_in_threadpool(parse_batch, body, settings, queue)
    options = await run_in_threadpool(parse_options, raw_options, settings, BatchOptions)
    parsed = {"options": options.model_dump(mode="json"), "requests": [
        {"custom_id": line.custom_id, "parameters": line.params.model_dump(mode="json"),
         "image": line.submission.guide, "mask": line.submission.mask} for line in lines]}
    with Idempotent(request, idempotency, owner, "batches", parsed) as once:
        if once.replay is not None:
            return once.replay
        ensure_key_room(queue, settings, owner, len(lines))
        models = Counter(line.params.model for line in lines)
        for model, count in models.items():
            ensure_room(queue, settings, model, options.priority, count)
        batch_id = f"batch_{uuid.uuid4().hex}"
        items = [(new_edit(line.params, owner, line.size, line.submission.mask is not None,
                           batch_id=batch_id, custom_id=line.custom_id, **edit_fields(options)),
                  line.submission.guide, line.submission.mask) for line in lines]
        accepted = BatchAccepted.model_validate({
            "id": batch_id, "status": "queued", "priority": options.priority,
            "request_counts": {"total": len(items), "finished": 0, "failed": 0, "canceled": 0},
            "requests": [{"custom_id": edit.custom_id, "id": edit.id} for edit, _, _ in items],
            "links": batch_links(batch_id)}).model_dump(mode="json")
        queue.submit_batch(batch_id, owner, options, items, also=once.remember(202, accepted))
    for model, count in models.items():
        metrics.accepted.labels(model).inc(count)
    return accepted


@router.get("/{batch_id}", response_model=BatchStatus)
def status(batch_id: str, owner: Caller, queue: QueueDep) -> Any:
    """Status (queued, in_progress, completed, canceling, canceled, expired), request counts,
    timestamps."""
    return owned(queue, batch_id, owner).public()


@router.get("/{batch_id}/results", response_class=Response,
            responses={200: {"content": {"application/x-ndjson": {}}}})
def results(batch_id: str, owner: Caller, queue: QueueDep) -> Response:
    """JSON lines, one per ended request (finished, failed or canceled) in request order:
    custom_id, edit id, status, image links or error. Partial while the batch runs."""
    lines = queue.batch_results(owned(queue, batch_id, owner))
    return Response("".join(json.dumps(line) + "\n" for line in lines),
                    media_type="application/x-ndjson")


@router.delete("/{batch_id}", response_model=BatchStatus)
def cancel(batch_id: str, owner: Caller, queue: QueueDep) -> Any:
    """Cancel what has not ended: queued requests at once, running ones within a sampler step."""
    view = owned(queue, batch_id, owner)
    if view.status in FINAL_STATUSES:
        raise ApiError(409, f"batch {batch_id} is already {view.status}")
    queue.cancel_batch(view)
    return owned(queue, batch_id, owner).public()


@router.get("/{batch_id}/deliveries", response_model=Deliveries)
def deliveries(batch_id: str, owner: Caller, queue: QueueDep, webhooks: WebhooksDep) -> Any:
    """Every webhook message about the batch (batch.* events), with each delivery attempt."""
    owned(queue, batch_id, owner)
    return {"deliveries": webhooks.deliveries(("batch", batch_id))}
