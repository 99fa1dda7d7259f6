"""A submitted batch from HTTP to validated edits: every line is checked before anything is queued.

The body is JSON: `requests` (each a `custom_id`, a base64 `image`, an optional base64 `mask` and
edit parameters, as the JSON form of POST /v1/edits) and the batch's options (`priority`,
`webhook_url`, `webhook_events`). A bad line rejects the whole batch with a 422 that names it:
`requests[3] (custom_id 'cat-7'): t0: Input should be less than or equal to 1`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from fastapi import Request

from jobs.contract import OPTION_FIELDS
from jobs.queue import JobQueue
from jobs.rules import EditParameters
from jobs.settings import Settings
from service.errors import ApiError
from service.submission import Submission, check_images, json_submission, parse_parameters

MAX_CUSTOM_ID = 200


@dataclass(frozen=True)
class BatchLine:
    custom_id: str
    params: EditParameters
    submission: Submission
    size: tuple[int, int]


async def read_batch(request: Request, settings: Settings) -> dict:
    """The JSON body of a batch, refused over max_batch_bytes (413) before it is all read."""
    limit = settings.max_batch_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"batch body of {declared} bytes exceeds the limit of {limit}")
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise ApiError(415, "send the batch as application/json")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise ApiError(413, f"batch body exceeds the limit of {limit} bytes")
    try:
        body = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise ApiError(422, "body: not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(422, "body: the JSON body must be an object")
    return body


def parse_batch(body: dict, settings: Settings, queue: JobQueue) -> tuple[list[BatchLine], dict]:
    """Every line checked as POST /v1/edits checks an edit; (lines, the batch's option fields)."""
    unknown = sorted(set(body) - {"requests", *OPTION_FIELDS})
    if unknown:
        raise ApiError(422, f"{', '.join(unknown)}: unknown field(s); accepted: requests, "
                            f"{', '.join(OPTION_FIELDS)}")
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise ApiError(422, "requests: a non-empty list of requests")
    if len(requests) > settings.max_batch_requests:
        raise ApiError(422, f"requests: at most {settings.max_batch_requests} per batch, got "
                            f"{len(requests)}")
    seen: dict[str, int] = {}
    lines = []
    for index, line in enumerate(requests):
        where = f"requests[{index}]"
        if not isinstance(line, dict):
            raise ApiError(422, f"{where}: must be an object")
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not 0 < len(custom_id) <= MAX_CUSTOM_ID \
                or not custom_id.isprintable():
            raise ApiError(422, f"{where}.custom_id: a string of 1 to {MAX_CUSTOM_ID} printable "
                                "characters")
        if custom_id in seen:
            raise ApiError(422, f"{where}.custom_id: duplicate {custom_id!r} (also "
                                f"requests[{seen[custom_id]}])")
        seen[custom_id] = index
        lines.append(_parse_line(line, f"{where} (custom_id {custom_id!r})", settings, queue))
    return lines, {k: body[k] for k in OPTION_FIELDS if k in body}


def _parse_line(line: dict, where: str, settings: Settings, queue: JobQueue) -> BatchLine:
    options = sorted(set(line) & set(OPTION_FIELDS))
    try:
        if options:
            raise ApiError(422, f"{', '.join(options)}: an option of the whole batch, not of a "
                                "request")
        submission = json_submission({k: v for k, v in line.items() if k != "custom_id"})
        params = parse_parameters(submission.fields, submission.mask is not None, settings, queue)
        size = check_images(submission, settings)
    except ApiError as exc:  # one status for every bad line: the batch is unprocessable
        raise ApiError(422, f"{where}: {exc.detail}") from None
    return BatchLine(line["custom_id"], params, submission, size)
