"""Schemathesis checks of our own (loaded with SCHEMATHESIS_HOOKS=tests.schemathesis_hooks)."""

from __future__ import annotations

import schemathesis


@schemathesis.check
def errors_are_json_naming_their_status(ctx, response, case) -> None:
    """Every 4xx/5xx answer is {"error": {"status", "message"}} with the response's status."""
    if response.status_code < 400:
        return
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    assert content_type.startswith("application/json"), f"error as {content_type!r}"
    error = response.json().get("error", {})
    assert error.get("status") == response.status_code, f"error body {response.json()!r}"
    assert isinstance(error.get("message"), str) and error["message"], "no message"
