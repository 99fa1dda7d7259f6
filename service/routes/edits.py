"""/v1/edits: submit an edit, follow it, fetch its images, cancel it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from jobs.contract import OPTION_FIELDS, EditOptions, edit_links
from jobs.queue import TERMINAL, EditRecord, JobQueue, state_of
from jobs.rules import PARAMETER_FIELDS, EditParameters
from service.deps import Caller, IdempotencyDep, MetricsDep, QueueDep, SettingsDep
from service.errors import ERROR_RESPONSES, ApiError
from service.idempotency import Idempotent
from service.options import edit_fields, parse_options, split_options
from service.schemas import Accepted, Cancellation, EditStatus
from service.submission import (
    check_images,
    ensure_key_room,
    ensure_room,
    new_edit,
    parse_parameters,
    read_submission,
)

LARGE_UPLOAD_BYTES = 256 * 1024
MEDIA_TYPES = {"png": "image/png", "webp": "image/webp"}

router = APIRouter(prefix="/v1/edits", tags=["edits"], responses=ERROR_RESPONSES)

SUBMIT_BODY = {"requestBody": {"content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary"},
        "mask": {"type": "string", "format": "binary",
                 "description": "white (>= 128) may change, black is kept"},
        **{k: {"type": "string"} for k in PARAMETER_FIELDS + OPTION_FIELDS}}}},
    "application/json": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "byte"},
        "mask": {"type": "string", "format": "byte"},
        **EditParameters.model_json_schema()["properties"],
        **EditOptions.model_json_schema()["properties"]}},
        "example": {"image": "<base64 PNG>", "t0": 0.5, "samples": 2, "seed": 7}}}}}


links = edit_links


def status_body(record: EditRecord) -> dict[str, Any]:
    edit = record.edit
    return {
        "id": edit.id, "status": record.state, "model": edit.model,
        "parameters": edit.model_dump(include=set(PARAMETER_FIELDS)),
        "progress": {"step": record.progress[0], "total": record.progress[1]},
        "position": record.position, "priority": edit.priority,
        "batch_id": edit.batch_id, "custom_id": edit.custom_id,
        "created_at": edit.created_at.isoformat(),
        "started_at": record.started_at.isoformat() if record.started_at else None,
        "ended_at": record.ended_at.isoformat() if record.ended_at else None,
        "error": record.error,
        "links": links(edit.id, edit.samples if record.state == "finished" else 0),
    }


def owned(queue: JobQueue, job_id: str, owner: str):
    """The RQ job and contract, or 404 (also for another key's job: no existence leak)."""
    found = queue.find(job_id, owner)
    if found is None:
        raise ApiError(404, f"no edit job {job_id!r}")
    return found


@router.post("", status_code=202, response_model=Accepted, openapi_extra=SUBMIT_BODY,
             responses={400: {"description": "malformed Idempotency-Key"}})
async def submit(request: Request, owner: Caller, queue: QueueDep, settings: SettingsDep,
                 metrics: MetricsDep, idempotency: IdempotencyDep) -> Any:
    """Submit an edit: a guide image, an optional mask, parameters and options (priority,
    webhook). Answers 202. With an Idempotency-Key header a retry gets the first answer."""
    submission = await read_submission(request, settings)
    fields, raw_options = split_options(submission.fields)
    params = parse_parameters(fields, submission.mask is not None, settings, queue)
    # A webhook URL is resolved (DNS) to refuse internal addresses: off the event loop.
    options = (await run_in_threadpool(parse_options, raw_options, settings)
               if raw_options.get("webhook_url") else parse_options(raw_options, settings))
    # Decoding a large photo takes tens of milliseconds or more: off the event loop (a small
    # image decodes faster than a thread hop costs).
    size = (await run_in_threadpool(check_images, submission, settings)
            if len(submission.guide) > LARGE_UPLOAD_BYTES else check_images(submission, settings))
    parsed = {"parameters": params.model_dump(mode="json"),
              "options": options.model_dump(mode="json"),
              "image": submission.guide, "mask": submission.mask}
    with Idempotent(request, idempotency, owner, "edits", parsed) as once:
        if once.replay is not None:
            return once.replay
        ensure_key_room(queue, settings, owner)
        ensure_room(queue, settings, params.model, options.priority)
        edit = new_edit(params, owner, size, submission.mask is not None, **edit_fields(options))
        body = Accepted.model_validate({"id": edit.id, "status": "queued",
                                        "links": links(edit.id)}).model_dump(mode="json")
        queue.submit(edit, submission.guide, submission.mask, also=once.remember(202, body))
    metrics.accepted.labels(params.model).inc()
    return body


@router.get("/{job_id}", response_model=EditStatus)
def status(job_id: str, owner: Caller, queue: QueueDep) -> Any:
    """Status, progress, queue position, timestamps, result links and error of a job."""
    return status_body(queue.record(*owned(queue, job_id, owner)))


@router.get("/{job_id}/images/{index}", response_class=Response,
            responses={200: {"content": {"image/png": {}, "image/webp": {}}}})
def image(job_id: str, index: int, owner: Caller, queue: QueueDep) -> Response:
    """The index-th result image of a finished job (PNG, or WebP if requested)."""
    job, edit = owned(queue, job_id, owner)
    if not 0 <= index < edit.samples:
        raise ApiError(404, f"job {job_id} has images 0..{edit.samples - 1}")
    state = state_of(job)
    if state != "finished":
        raise ApiError(409, f"job {job_id} is {state}; images exist once it is finished")
    data = queue.result(job_id, index)
    if data is None:
        raise ApiError(410, f"the results of job {job_id} have expired")
    return Response(data, media_type=MEDIA_TYPES[edit.output_format])


@router.delete("/{job_id}", response_model=Cancellation)
def cancel(job_id: str, owner: Caller, queue: QueueDep) -> Any:
    """Cancel a queued job at once, or a running one within one sampler step."""
    job, _ = owned(queue, job_id, owner)
    state = state_of(job)
    if state in TERMINAL:
        raise ApiError(409, f"job {job_id} is already {state}")
    return {"id": job_id, "status": queue.cancel(job)}
