"""The job contract: what the API enqueues and the worker consumes, and where its data lives.

An edit travels through RQ as JSON (never pickle): the RQ job's single keyword argument `job` is
`EditJob.model_dump(mode="json")`. Input image bytes live in Redis under `input_key`, results
under `result_key`, both with TTLs, so the payload stays small.

Beside its parameters (jobs.rules) an edit carries options that are not the sampler's business:
its priority, its webhook, and the batch it belongs to. Each model has one RQ queue per priority:
`sdedit:<model>` (interactive) and `sdedit:<model>@batch` (RQ keeps them in the Redis lists
`rq:queue:sdedit:<model>` and `rq:queue:sdedit:<model>@batch`); model names never contain '@'.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.rules import EditParameters

KEY_PREFIX = "sdedit"

Priority = Literal["interactive", "batch"]
PRIORITIES: tuple[str, ...] = ("interactive", "batch")  # the order workers serve them in
QUEUE_SUFFIX: dict[str, str] = {"interactive": "", "batch": "@batch"}

EditEvent = Literal["edit.started", "edit.progress", "edit.finished", "edit.failed",
                    "edit.canceled"]
BatchEvent = Literal["batch.completed", "batch.canceled", "batch.expired"]
EDIT_EVENTS: tuple[str, ...] = ("edit.started", "edit.progress", "edit.finished", "edit.failed",
                                "edit.canceled")
BATCH_EVENTS: tuple[str, ...] = ("batch.completed", "batch.canceled", "batch.expired")
TERMINAL_EDIT_EVENTS: tuple[str, ...] = ("edit.finished", "edit.failed", "edit.canceled")


class EditOptions(BaseModel):
    """How an edit is scheduled and reported, beside its parameters (which the sampler sees)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    priority: Priority = Field("interactive", description="interactive jobs go ahead of batch jobs")
    webhook_url: str | None = Field(None, min_length=1, max_length=2000,
                                    description="http(s) URL that receives signed events")
    webhook_events: list[EditEvent] | None = Field(
        None, description="events sent to webhook_url (default: edit.finished, edit.failed, "
                          "edit.canceled); edit.progress is sent only when listed")


class BatchOptions(BaseModel):
    """The options of a batch: its requests' priority and the webhook of the batch (batch.*
    events) and of each of its requests (edit.* events, when listed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    priority: Priority = Field("batch", description="of every request of the batch")
    webhook_url: str | None = Field(None, min_length=1, max_length=2000,
                                    description="http(s) URL that receives signed events")
    webhook_events: list[EditEvent | BatchEvent] | None = Field(
        None, description="events sent to webhook_url (default: batch.completed, batch.canceled, "
                          "batch.expired); edit.* events are sent for every request")


OPTION_FIELDS: tuple[str, ...] = tuple(EditOptions.model_fields)


def resolved_events(options: EditOptions | BatchOptions) -> list[str]:
    """The events an edit or batch reports: the listed ones, or the terminal ones by default;
    none without a webhook_url."""
    if options.webhook_url is None:
        return []
    if options.webhook_events is not None:
        return list(dict.fromkeys(options.webhook_events))
    return list(BATCH_EVENTS if isinstance(options, BatchOptions) else TERMINAL_EDIT_EVENTS)


def edit_links(edit_id: str, images: int = 0) -> dict:
    """The API paths of an edit (status, result images), as responses and webhooks give them."""
    out: dict = {"self": f"/v1/edits/{edit_id}"}
    if images:
        out["images"] = [f"/v1/edits/{edit_id}/images/{k}" for k in range(images)]
    return out


class EditJob(EditParameters):
    """A queued edit: the parameters plus where its inputs are and who owns it."""

    id: str
    owner: str = Field(description="hash of the API key that submitted it ('public' without auth)")
    created_at: datetime
    width: int
    height: int
    has_mask: bool = False
    priority: Priority = "interactive"
    webhook_url: str | None = None
    webhook_events: list[str] = Field([], description="resolved: the events to send")
    batch_id: str | None = None
    custom_id: str | None = Field(None, description="the batch request this edit came from")


def queue_name(model: str, priority: str = "interactive") -> str:
    """One RQ queue per model and priority, so workers subscribe to the models they hold."""
    return f"{KEY_PREFIX}:{model}{QUEUE_SUFFIX[priority]}"


def model_of_queue(name: str) -> str:
    return name.split(":", 1)[1].removesuffix(QUEUE_SUFFIX["batch"])


def priority_of_queue(name: str) -> str:
    return "batch" if name.endswith(QUEUE_SUFFIX["batch"]) else "interactive"


def input_key(job_id: str, part: Literal["guide", "mask"]) -> str:
    return f"{KEY_PREFIX}:input:{job_id}:{part}"


def result_key(job_id: str, index: int) -> str:
    return f"{KEY_PREFIX}:result:{job_id}:{index}"


def progress_key(job_id: str) -> str:
    return f"{KEY_PREFIX}:progress:{job_id}"


def cancel_key(job_id: str) -> str:
    return f"{KEY_PREFIX}:cancel:{job_id}"


def model_spec_key(model: str) -> str:
    """The spec of a model as its workers last published it (kept while none is alive, so the
    API can still check edits queued for it)."""
    return f"{KEY_PREFIX}:model:{model}"


def model_alive_key(model: str) -> str:
    """Set by every worker that serves the model; expires when none is alive."""
    return f"{KEY_PREFIX}:model:{model}:alive"


def idempotency_key(owner: str, scope: str, key_hash: str) -> str:
    """A remembered Idempotency-Key of one API key (owner) on one route (scope)."""
    return f"{KEY_PREFIX}:idempotency:{owner}:{scope}:{key_hash}"


def batch_key(batch_id: str) -> str:
    """A batch's record (hash): owner, options, timestamps, flags."""
    return f"{KEY_PREFIX}:batch:{batch_id}"


def batch_jobs_key(batch_id: str) -> str:
    """The edit ids of a batch's requests, in request order (list)."""
    return f"{KEY_PREFIX}:batch:{batch_id}:jobs"


BATCH_DEADLINES_KEY = f"{KEY_PREFIX}:batches:deadlines"  # zset: batch id -> expiry time


def webhook_secret_key(owner: str) -> str:
    return f"{KEY_PREFIX}:webhook:secret:{owner}"


def webhook_message_key(message_id: str) -> str:
    """One event for one URL (hash): body, state, attempt count, next attempt time."""
    return f"{KEY_PREFIX}:webhook:message:{message_id}"


def webhook_attempts_key(message_id: str) -> str:
    return f"{KEY_PREFIX}:webhook:message:{message_id}:attempts"


def webhook_index_key(kind: Literal["edit", "batch"], subject_id: str) -> str:
    """The messages sent about one edit or batch, oldest first (list)."""
    return f"{KEY_PREFIX}:webhook:{kind}:{subject_id}"


WEBHOOK_DUE_KEY = f"{KEY_PREFIX}:webhook:due"  # zset: message id -> time of its next attempt
