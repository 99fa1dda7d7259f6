"""The job contract: what the API enqueues and the worker consumes, and where its data lives.

An edit travels through RQ as JSON (never pickle): the RQ job's single keyword argument `job` is
`EditJob.model_dump(mode="json")`. Input image bytes live in Redis under `input_key`, results
under `result_key`, both with TTLs, so the payload stays small.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from jobs.rules import EditParameters

KEY_PREFIX = "sdedit"


class EditJob(EditParameters):
    """A queued edit: the parameters plus where its inputs are and who owns it."""

    id: str
    owner: str = Field(description="hash of the API key that submitted it ('public' without auth)")
    created_at: datetime
    width: int
    height: int
    has_mask: bool = False


def queue_name(model: str) -> str:
    """One RQ queue per model, so workers subscribe to the models they hold."""
    return f"{KEY_PREFIX}:{model}"


def model_of_queue(name: str) -> str:
    return name.split(":", 1)[1]


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
