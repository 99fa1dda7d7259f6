"""The job contract: what the API enqueues and the worker consumes. Pydantic only, no torch.

A job travels through RQ as JSON (never pickle): the RQ job's single keyword argument `job`
is `EditJob.model_dump(mode="json")`. Input image bytes live in Redis under `input_key`,
results under `result_key`, both with TTLs, so a job payload stays small.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SAMPLERS = ("ancestral", "ddim", "pc")
OUTPUT_FORMATS = ("png", "webp")
KEY_PREFIX = "sdedit"


class EditParameters(BaseModel):
    """The user-facing knobs of one edit, validated identically by the API and the worker."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("emoji", description="name of a served model (see GET /v1/models)")
    t0: float = Field(0.5, gt=0.0, le=1.0,
                      description="noise strength: small = faithful to the guide, large = realistic")
    steps: int | None = Field(None, ge=1, le=2000,
                              description="reverse steps; default: every level from t0 (the paper)")
    sampler: Literal["ancestral", "ddim", "pc"] | None = Field(
        None, description="ancestral or ddim (VP models), pc (VE models); default per model")
    eta: float = Field(0.0, ge=0.0, le=1.0, description="DDIM noise")
    repeats: int = Field(1, ge=1, le=10, description="K sequential SDEdit passes")
    samples: int = Field(1, ge=1, description="output images (the limit is a setting)")
    seed: int = Field(0, ge=0, lt=2**63, description="sample k uses seed + k")
    output_format: Literal["png", "webp"] = Field("png", description="result image format")


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


def input_key(job_id: str, part: Literal["guide", "mask"]) -> str:
    return f"{KEY_PREFIX}:input:{job_id}:{part}"


def result_key(job_id: str, index: int) -> str:
    return f"{KEY_PREFIX}:result:{job_id}:{index}"


def progress_key(job_id: str) -> str:
    return f"{KEY_PREFIX}:progress:{job_id}"


def cancel_key(job_id: str) -> str:
    return f"{KEY_PREFIX}:cancel:{job_id}"


def model_info_key(model: str) -> str:
    """Published by every worker that serves the model (expires when none is alive)."""
    return f"{KEY_PREFIX}:model:{model}"
