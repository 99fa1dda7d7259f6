"""Response bodies of the API, so the OpenAPI schema documents them with examples."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.rules import EditParameters

Status = Literal["queued", "started", "finished", "failed", "canceled"]


class Links(BaseModel):
    self: str = Field(examples=["/v1/edits/3f2c9a"])
    images: list[str] = Field([], examples=[["/v1/edits/3f2c9a/images/0"]])


class Accepted(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {
        "id": "3f2c9a", "status": "queued", "links": {"self": "/v1/edits/3f2c9a", "images": []}}})

    id: str
    status: Literal["queued"]
    links: Links


class Progress(BaseModel):
    step: int = Field(description="reverse sampler steps done, over all repeats (a VE step's "
                                  "corrector forwards count with its predictor)")
    total: int = Field(description="reverse sampler steps of the whole edit (steps x repeats)")


class EditStatus(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {
        "id": "3f2c9a", "status": "started", "model": "emoji",
        "parameters": {"model": "emoji", "t0": 0.5, "steps": None, "sampler": None, "eta": 0.0,
                       "repeats": 1, "samples": 2, "seed": 7, "output_format": "png"},
        "progress": {"step": 120, "total": 500}, "position": None,
        "created_at": "2026-11-26T12:00:00+00:00", "started_at": "2026-11-26T12:00:01+00:00",
        "ended_at": None, "error": None, "links": {"self": "/v1/edits/3f2c9a", "images": []}}})

    id: str
    status: Status
    model: str
    parameters: EditParameters
    progress: Progress
    position: int | None = Field(description="0 = next to run among the queued jobs of its "
                                             "priority; null unless queued")
    priority: Literal["interactive", "batch"] = Field(
        "interactive", description="interactive jobs go ahead of batch jobs")
    batch_id: str | None = Field(None, description="the batch it belongs to, if any")
    custom_id: str | None = Field(None, description="its request's custom_id in the batch")
    created_at: str
    started_at: str | None
    ended_at: str | None
    error: str | None
    links: Links


class RequestCounts(BaseModel):
    total: int
    finished: int
    failed: int
    canceled: int


class BatchLinks(BaseModel):
    self: str = Field(examples=["/v1/batches/batch_7e1d"])
    results: str = Field(examples=["/v1/batches/batch_7e1d/results"])


class BatchRequest(BaseModel):
    custom_id: str
    id: str = Field(description="the request's edit job (GET /v1/edits/{id})")


class BatchAccepted(BaseModel):
    id: str
    status: Literal["queued"]
    priority: Literal["interactive", "batch"]
    request_counts: RequestCounts
    requests: list[BatchRequest]
    links: BatchLinks


class BatchStatus(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {
        "id": "batch_7e1d", "status": "in_progress", "priority": "batch",
        "request_counts": {"total": 500, "finished": 120, "failed": 1, "canceled": 0},
        "created_at": "2026-11-26T12:00:00+00:00", "in_progress_at": "2026-11-26T12:00:02+00:00",
        "expires_at": "2026-11-27T12:00:00+00:00", "cancel_requested_at": None,
        "expired_at": None, "ended_at": None,
        "links": {"self": "/v1/batches/batch_7e1d", "results": "/v1/batches/batch_7e1d/results"}}})

    id: str
    status: Literal["queued", "in_progress", "completed", "canceling", "canceled", "expired"]
    priority: Literal["interactive", "batch"]
    request_counts: RequestCounts
    created_at: str
    in_progress_at: str | None = Field(description="when its first request started")
    expires_at: str = Field(description="requests not ended by then are canceled (expired)")
    cancel_requested_at: str | None
    expired_at: str | None
    ended_at: str | None = Field(description="when its last request ended")
    links: BatchLinks


# bandit B105: a made-up example for the OpenAPI schema, valid nowhere.
EXAMPLE_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # nosec B105


class WebhookSecret(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {
        "secret": EXAMPLE_SECRET, "previous_valid_until": None}})

    secret: str = Field(description="verify webhook-signature with it (Standard Webhooks)")
    previous_valid_until: str | None = Field(
        description="after a rotation, the previous secret also signs until then")


class Attempt(BaseModel):
    at: str
    status_code: int | None = Field(description="the receiver's answer; null if none came")
    error: str | None
    duration_ms: float


class Delivery(BaseModel):
    id: str = Field(description="webhook-id: the same on every attempt of this message")
    type: str = Field(examples=["edit.finished"])
    url: str
    status: Literal["pending", "delivered", "failed", "gone", "refused"] = Field(
        description="pending: an attempt is due at next_attempt_at; gone: the receiver answered "
                    "410; refused: the URL resolves to a non-public address")
    created_at: str
    next_attempt_at: str | None
    attempts: list[Attempt]


class Deliveries(BaseModel):
    deliveries: list[Delivery]


class Cancellation(BaseModel):
    id: str
    status: Literal["canceled", "canceling"]


class ErrorDetail(BaseModel):
    status: int
    message: str


class ErrorBody(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {
        "error": {"status": 422, "message": "t0: Input should be less than or equal to 1"}}})

    error: ErrorDetail
