"""A submitted edit from HTTP to a validated EditJob: body parsing, parameter rules, image checks.

Everything the worker would reject is rejected here first: ranges and types (jobs.rules), the
model's own rules from the spec its workers published (sampler family, t0 below one level,
steps above the levels from t0), limits from the settings, and the images' headers.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from jobs import fairness
from jobs.contract import EditJob
from jobs.queue import JobQueue
from jobs.rules import (
    PARAMETER_FIELDS,
    EditParameters,
    RuleViolation,
    check,
    check_mask,
    describe,
)
from jobs.settings import Settings
from service.errors import ApiError
from service.images import ImageRejected, inspect_image


@dataclass(frozen=True)
class Submission:
    fields: dict
    guide: bytes
    mask: bytes | None


async def read_submission(request: Request, settings: Settings) -> Submission:
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
            raise ApiError(422, "image: missing file field")
        fields = {k: v for k, v in form.items() if k not in ("image", "mask")}
        guide = await image.read(settings.max_upload_bytes + 1)
        mask_bytes = await mask.read(settings.max_upload_bytes + 1) \
            if isinstance(mask, UploadFile) else None
        return Submission(fields, guide, mask_bytes)
    if content_type.startswith("application/json"):
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(422, "body: not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(422, "body: the JSON body must be an object")
        return json_submission(body)
    raise ApiError(415, "send multipart/form-data (file fields image, mask) or application/json "
                        "(base64 fields image, mask)")


def json_submission(body: dict) -> Submission:
    """A JSON object's fields with its base64 `image` and `mask` decoded (also a batch line)."""
    body = dict(body)
    images = {}
    for name in ("image", "mask"):
        value = body.pop(name, None)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ApiError(422, f"{name}: must be a base64 string")
        try:
            images[name] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, f"{name}: not valid base64") from None
    if "image" not in images:
        raise ApiError(422, "image: missing field (base64 image)")
    return Submission(body, images["image"], images.get("mask"))


def parse_parameters(fields: dict, has_mask: bool, settings: Settings,
                     queue: JobQueue) -> EditParameters:
    """The edit's parameters, checked against the rules and the model's published spec."""
    unknown = sorted(set(fields) - set(PARAMETER_FIELDS))
    if unknown:
        raise ApiError(422, f"{', '.join(unknown)}: unknown field(s); accepted: "
                            f"{', '.join(PARAMETER_FIELDS)}")
    fields = {k: v for k, v in fields.items() if v not in ("", None)}
    try:
        params = EditParameters.model_validate(fields)
    except ValidationError as exc:
        raise ApiError(422, describe(exc)) from None
    if params.model not in settings.models:
        raise ApiError(404, f"model: unknown model {params.model!r}; served: "
                            f"{', '.join(settings.models)}")
    if params.samples > settings.max_samples:
        raise ApiError(422, f"samples: at most {settings.max_samples} per job")
    try:
        check_mask(params, has_mask)
    except RuleViolation as exc:
        raise ApiError(422, str(exc)) from None
    spec = queue.model_spec(params.model)
    # A model no worker has published yet cannot be checked here; its worker checks on admission.
    if spec is not None:
        try:
            check(params, spec.family, spec.levels, text=spec.text)
        except RuleViolation as exc:
            raise ApiError(422, str(exc)) from None
        if params.samples > spec.max_batch:
            raise ApiError(422, f"samples: at most {spec.max_batch} per job on this model's workers")
    return params


def check_images(submission: Submission, settings: Settings) -> tuple[int, int]:
    """The guide's size, after the size, format and mask checks (413, 415, 422)."""
    try:
        info = inspect_image(submission.guide, "image", settings.max_upload_bytes,
                             settings.max_pixels)
        if submission.mask is not None:
            mask = inspect_image(submission.mask, "mask", settings.max_upload_bytes,
                                 settings.max_pixels)
            # Compared as displayed (EXIF orientation applied), as the worker reads both.
            if (mask.width, mask.height) != (info.width, info.height):
                raise ImageRejected(422, f"mask: {mask.width}x{mask.height} does not match the "
                                         f"image's {info.width}x{info.height} (as displayed, "
                                         "after EXIF orientation)")
    except ImageRejected as exc:
        raise ApiError(exc.status, exc.message) from None
    return info.width, info.height


def new_edit(params: EditParameters, owner: str, size: tuple[int, int], has_mask: bool,
             **options: object) -> EditJob:
    """The job contract of an edit; options: EditJob's option fields (priority, webhook, batch)."""
    return EditJob(**params.model_dump(), **options, id=uuid.uuid4().hex, owner=owner,
                   created_at=datetime.now(UTC), width=size[0], height=size[1], has_mask=has_mask)


def ensure_key_room(queue: JobQueue, settings: Settings, owner: str, count: int = 1) -> None:
    """429 with Retry-After when the key already has its limit of jobs waiting or running."""
    limit = settings.max_jobs_per_key
    if not limit:
        return
    in_flight = fairness.jobs_in_flight(queue.connection, owner, limit)
    if in_flight + count > limit:
        raise ApiError(429, f"limit of {limit} jobs waiting or running per API key reached "
                            f"({in_flight} now); retry later",
                       headers={"Retry-After": str(settings.retry_after_s)})


def ensure_room(queue: JobQueue, settings: Settings, model: str, priority: str,
                count: int = 1) -> None:
    """429 with Retry-After when the model's queue of this priority cannot take `count` jobs."""
    depth, limit = queue.depth(model, priority), queue.depth_limit(priority)
    if depth + count > limit:
        raise ApiError(429, f"the {priority} queue of {model!r} is full ({depth} of {limit} jobs); "
                            "retry later", headers={"Retry-After": str(settings.retry_after_s)})
