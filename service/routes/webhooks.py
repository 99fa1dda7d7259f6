"""Webhooks: the caller's signing secret (and its rotation), and the deliveries of an edit."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.deps import Caller, QueueDep, WebhooksDep
from service.errors import ERROR_RESPONSES, ApiError
from service.schemas import Deliveries, WebhookSecret

router = APIRouter(tags=["webhooks"], responses=ERROR_RESPONSES)


@router.get("/v1/webhook-secret", response_model=WebhookSecret)
def secret(owner: Caller, webhooks: WebhooksDep) -> Any:
    """The `whsec_` secret that signs this API key's webhooks (created on first use)."""
    return webhooks.secret(owner)


@router.post("/v1/webhook-secret/rotate", response_model=WebhookSecret)
def rotate(owner: Caller, webhooks: WebhooksDep) -> Any:
    """A new secret; webhooks are also signed with the previous one until
    `previous_valid_until`, so receivers can switch without missing one."""
    return webhooks.rotate(owner)


@router.get("/v1/edits/{job_id}/deliveries", response_model=Deliveries)
def edit_deliveries(job_id: str, owner: Caller, queue: QueueDep, webhooks: WebhooksDep) -> Any:
    """Every webhook message about an edit, with each delivery attempt."""
    if queue.find(job_id, owner) is None:
        raise ApiError(404, f"no edit job {job_id!r}")
    return {"deliveries": webhooks.deliveries(("edit", job_id))}
