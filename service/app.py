"""The HTTP API (v1): submit edits, follow them, fetch results, cancel; models, health, metrics.

Routes only translate HTTP to calls of plain functions (validation in service.images and the
contract, queueing in worker.rq_adapter). Every error is JSON: {"error": {"status", "message"}}.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
import uuid
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import redis
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.contract import (
    EditJob,
    EditParameters,
    cancel_key,
    input_key,
    model_info_key,
    progress_key,
    result_key,
)
from service.images import ImageRejected, inspect_image
from service.redis_conn import connect, stop_embedded
from service.schemas import Accepted, Cancellation, EditStatus, ErrorBody
from service.settings import Settings, get_settings
from worker import rq_adapter

PARAMETER_FIELDS = tuple(EditParameters.model_fields)
MEDIA_TYPES = {"png": "image/png", "webp": "image/webp"}


class ApiError(HTTPException):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)


def error_body(status: int, message: str, details: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"status": status, "message": message}
    if details is not None:
        body["details"] = details
    return {"error": body}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("sdedit_api_requests_total", "HTTP requests",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("sdedit_api_request_seconds", "HTTP request latency",
                                 ["route", "method"], registry=self.registry)
        self.queue_depth = Gauge("sdedit_queue_depth", "jobs waiting per model", ["model"],
                                 registry=self.registry)
        self.accepted = Counter("sdedit_api_jobs_accepted_total", "jobs enqueued", ["model"],
                                registry=self.registry)


def owner_of(request: Request, settings: Annotated[Settings, Depends(get_settings)]) -> str:
    """The caller's identity: a hash of its API key, or 'public' when auth is off."""
    if settings.auth_disabled:
        return "public"
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'",
                       headers={"WWW-Authenticate": "Bearer"})
    if key not in settings.api_keys:
        raise ApiError(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def get_redis(request: Request) -> redis.Redis:
    return request.app.state.redis


Owner = Annotated[str, Depends(owner_of)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def read_submission(request: Request, settings: Settings) -> tuple[dict, bytes, bytes | None]:
    """Parameters and image bytes from a multipart form or a JSON body with base64 images."""
    # Two files (base64 adds a third) plus form overhead; refused before reading the body.
    limit = 3 * settings.max_upload_bytes + 65536
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit}")
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_part_size=settings.max_upload_bytes + 1)
        image, mask = form.get("image"), form.get("mask")
        if not isinstance(image, UploadFile):
            raise ApiError(422, "missing file field 'image'")
        fields = {k: v for k, v in form.items() if k not in ("image", "mask")}
        guide = await image.read(settings.max_upload_bytes + 1)
        mask_bytes = await mask.read(settings.max_upload_bytes + 1) if isinstance(mask, UploadFile) \
            else None
        return fields, guide, mask_bytes
    if content_type.startswith("application/json"):
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(422, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(422, "the JSON body must be an object")
        images = {}
        for name in ("image", "mask"):
            value = body.pop(name, None)
            if value is None:
                continue
            if not isinstance(value, str):
                raise ApiError(422, f"'{name}' must be a base64 string")
            try:
                images[name] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(422, f"'{name}' is not valid base64") from None
        if "image" not in images:
            raise ApiError(422, "missing field 'image' (base64 image)")
        return body, images["image"], images.get("mask")
    raise ApiError(415, "send multipart/form-data (file fields image, mask) or application/json "
                        "(base64 fields image, mask)")


def parse_parameters(fields: dict, settings: Settings) -> EditParameters:
    unknown = sorted(set(fields) - set(PARAMETER_FIELDS))
    if unknown:
        raise ApiError(422, f"unknown field(s): {', '.join(unknown)}")
    fields = {k: v for k, v in fields.items() if v not in ("", None)}
    try:
        params = EditParameters.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ApiError(422, f"{where}: {first['msg']}") from None
    if params.model not in settings.models:
        raise ApiError(404, f"unknown model {params.model!r}; served: {', '.join(settings.models)}")
    if params.samples > settings.max_samples:
        raise ApiError(422, f"samples: at most {settings.max_samples} per job")
    return params


def job_links(job_id: str, images: int = 0) -> dict[str, Any]:
    links: dict[str, Any] = {"self": f"/v1/edits/{job_id}"}
    if images:
        links["images"] = [f"/v1/edits/{job_id}/images/{k}" for k in range(images)]
    return links


def owned_job(connection: redis.Redis, job_id: str, owner: str):
    """The RQ job and its contract, or 404 (also for another key's job: no existence leak)."""
    job = rq_adapter.fetch(connection, job_id)
    contract = rq_adapter.contract_of(job) if job is not None else None
    if contract is None or contract.owner != owner:
        raise ApiError(404, f"no edit job {job_id!r}")
    return job, contract


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.redis = connect(settings)
        yield
        stop_embedded(app.state.redis)

    app = FastAPI(title="SDEdit service", version="1", lifespan=lifespan,
                  description="Guided image synthesis and editing with SDEs (Meng et al., 2022).")
    app.dependency_overrides[get_settings] = lambda: settings

    @app.middleware("http")
    async def observe(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(path, request.method, str(response.status_code)).inc()
        metrics.latency.labels(path, request.method).observe(time.perf_counter() - start)
        return response

    @app.exception_handler(StarletteHTTPException)  # also unknown routes, 405s, form errors
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(exc.status_code, str(exc.detail)), status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        return JSONResponse(error_body(422, message), status_code=422)

    @app.exception_handler(redis.exceptions.ConnectionError)
    async def redis_down(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body(503, "the job store (Redis) is unreachable; retry later"),
                            status_code=503, headers={"Retry-After": str(settings.retry_after_s)})

    errors = {code: {"model": ErrorBody} for code in (401, 404, 409, 413, 415, 422, 429, 503)}

    @app.post("/v1/edits", status_code=202, response_model=Accepted, responses=errors,
              openapi_extra={"requestBody": {"content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "string", "format": "binary"},
            "mask": {"type": "string", "format": "binary",
                     "description": "white (>= 128) may change, black is kept"},
            **{k: {"type": "string"} for k in PARAMETER_FIELDS}}}},
        "application/json": {"schema": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "string", "format": "byte"},
            "mask": {"type": "string", "format": "byte"},
            **EditParameters.model_json_schema()["properties"]}},
            "example": {"image": "<base64 PNG>", "t0": 0.5, "samples": 2, "seed": 7}}}}})
    async def submit(request: Request, owner: Owner, connection: RedisDep) -> Any:
        """Submit an edit: a guide image, an optional mask, and parameters. Answers 202."""
        fields, guide, mask = await read_submission(request, settings)
        params = parse_parameters(fields, settings)
        try:
            info = inspect_image(guide, "image", settings.max_upload_bytes, settings.max_pixels)
            if mask is not None:
                mask_info = inspect_image(mask, "mask", settings.max_upload_bytes, settings.max_pixels)
                if (mask_info.width, mask_info.height) != (info.width, info.height):
                    raise ImageRejected(422, f"mask: {mask_info.width}x{mask_info.height} does not "
                                             f"match the image's {info.width}x{info.height}")
        except ImageRejected as exc:
            raise ApiError(exc.status, exc.message) from None
        depth = rq_adapter.queue_depth(connection, params.model)
        if depth >= settings.max_queue_depth:
            raise ApiError(429, f"the queue of {params.model!r} is full ({depth} jobs); retry later",
                           headers={"Retry-After": str(settings.retry_after_s)})
        job = EditJob(**params.model_dump(), id=uuid.uuid4().hex, owner=owner,
                      created_at=datetime.now(UTC), width=info.width, height=info.height,
                      has_mask=mask is not None)
        with connection.pipeline(transaction=True) as pipeline:
            pipeline.set(input_key(job.id, "guide"), guide, ex=settings.input_ttl_s)
            if mask is not None:
                pipeline.set(input_key(job.id, "mask"), mask, ex=settings.input_ttl_s)
            pipeline.execute()
        rq_adapter.enqueue_edit(connection, job, settings.result_ttl_s, settings.job_timeout_s)
        metrics.accepted.labels(params.model).inc()
        return {"id": job.id, "status": "queued", "links": job_links(job.id)}

    @app.get("/v1/edits/{job_id}", response_model=EditStatus, responses=errors)
    def status(job_id: str, owner: Owner, connection: RedisDep) -> Any:
        """Status, progress, queue position, timestamps, result links and error of a job."""
        job, contract = owned_job(connection, job_id, owner)
        state = rq_adapter.status_of(job)
        progress = connection.hgetall(progress_key(job_id))
        body: dict[str, Any] = {
            "id": job_id, "status": state, "model": contract.model,
            "parameters": contract.model_dump(include=set(PARAMETER_FIELDS)),
            "progress": {"step": int(progress.get(b"done", 0)), "total": int(progress.get(b"total", 0))},
            "position": rq_adapter.position(connection, job) if state == "queued" else None,
            "created_at": contract.created_at.isoformat(),
            "started_at": job.started_at.isoformat() if job.started_at else None,
            "ended_at": job.ended_at.isoformat() if job.ended_at else None,
            "error": rq_adapter.failure_reason(job) if state == "failed" else None,
            "links": job_links(job_id, contract.samples if state == "finished" else 0),
        }
        return body

    @app.get("/v1/edits/{job_id}/images/{index}", response_class=Response,
             responses={200: {"content": {"image/png": {}, "image/webp": {}}}, **errors})
    def image(job_id: str, index: int, owner: Owner, connection: RedisDep) -> Response:
        """The index-th result image of a finished job (PNG, or WebP if requested)."""
        job, contract = owned_job(connection, job_id, owner)
        if not 0 <= index < contract.samples:
            raise ApiError(404, f"job {job_id} has images 0..{contract.samples - 1}")
        state = rq_adapter.status_of(job)
        if state != "finished":
            raise ApiError(409, f"job {job_id} is {state}; images exist once it is finished")
        data = connection.get(result_key(job_id, index))
        if data is None:
            raise ApiError(410, f"the results of job {job_id} have expired")
        return Response(data, media_type=MEDIA_TYPES[contract.output_format])

    @app.delete("/v1/edits/{job_id}", response_model=Cancellation, responses=errors)
    def cancel(job_id: str, owner: Owner, connection: RedisDep) -> Any:
        """Cancel a queued job at once, or a running one within one sampler step."""
        job, _ = owned_job(connection, job_id, owner)
        state = rq_adapter.status_of(job)
        if state in ("finished", "failed", "canceled"):
            raise ApiError(409, f"job {job_id} is already {state}")
        connection.set(cancel_key(job_id), 1, ex=settings.result_ttl_s)
        if state == "queued" and rq_adapter.cancel_queued(job):
            return {"id": job_id, "status": "canceled"}
        return {"id": job_id, "status": "canceling"}

    @app.get("/v1/models")
    def models(connection: RedisDep) -> dict[str, Any]:
        """Served models with resolution, SDE family and defaults (as published by workers)."""
        out = []
        for name in settings.models:
            raw = connection.get(model_info_key(name))
            info = json.loads(raw) if raw else {"name": name, "available": False}
            out.append(info)
        return {"models": out}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(connection: RedisDep) -> JSONResponse:
        connection.ping()
        missing = [m for m in settings.models if not connection.exists(model_info_key(m))]
        if missing:
            return JSONResponse(error_body(503, f"no live worker for: {', '.join(missing)}"),
                                status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics")
    def prometheus(connection: RedisDep) -> Response:
        for name in settings.models:
            metrics.queue_depth.labels(name).set(rq_adapter.queue_depth(connection, name))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # The web painter: static files, served last so the API routes take precedence.
    app.mount("/", StaticFiles(directory=Path(__file__).parent / "static", html=True),
              name="painter")
    return app
