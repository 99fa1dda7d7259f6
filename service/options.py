"""Job options beside the edit parameters: priority and webhook, parsed and checked.

Options are not sampler parameters (jobs.rules): they say how a job is scheduled and reported.
In a multipart form `webhook_events` is one comma-separated field; in JSON, a list. A webhook URL
must be http(s) and, unless its host is in SDEDIT_WEBHOOK_ALLOW_HOSTS, resolve only to public
addresses (no loopback, private, link-local or metadata addresses: SSRF).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from jobs.contract import OPTION_FIELDS, BatchOptions, EditOptions, resolved_events
from jobs.rules import describe
from jobs.settings import Settings
from jobs.webhooks import UrlRefused, resolve_webhook_url
from service.errors import ApiError


def split_options(fields: dict) -> tuple[dict, dict]:
    """(parameter fields, option fields) of a submission's fields."""
    options = {k: v for k, v in fields.items() if k in OPTION_FIELDS}
    return {k: v for k, v in fields.items() if k not in OPTION_FIELDS}, options


def parse_options(raw: dict[str, Any], settings: Settings,
                  kind: type[EditOptions | BatchOptions] = EditOptions) -> EditOptions | BatchOptions:
    """Checked options (422 naming the field); resolves the webhook URL's host (blocking DNS:
    call it from a thread in async code)."""
    raw = {k: v for k, v in raw.items() if v not in ("", None)}
    events = raw.get("webhook_events")
    if isinstance(events, str):
        raw["webhook_events"] = [e.strip() for e in events.split(",") if e.strip()]
    try:
        options = kind.model_validate(raw)
    except ValidationError as exc:
        raise ApiError(422, describe(exc)) from None
    if options.webhook_url is None:
        if options.webhook_events:
            raise ApiError(422, "webhook_events: needs a webhook_url")
        return options
    try:
        resolve_webhook_url(options.webhook_url, settings.webhook_allow_hosts)
    except UrlRefused as exc:
        raise ApiError(422, str(exc)) from None
    return options


def edit_fields(options: EditOptions | BatchOptions) -> dict[str, Any]:
    """The EditJob fields an edit's options set (a batch's request gets its edit.* events)."""
    events = [e for e in resolved_events(options) if e.startswith("edit.")]
    return {"priority": options.priority, "webhook_events": events,
            "webhook_url": options.webhook_url if events else None}
