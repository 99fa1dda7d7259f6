"""API errors: one JSON shape, {"error": {"status", "message"}}, for every failure."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs.rules import describe
from service.schemas import ErrorBody

# The statuses every route may answer with, documented with the error body's schema.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (401, 404, 409, 410, 413, 415, 422, 429, 503)}


class ApiError(HTTPException):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"error": {"status": status, "message": message}}


def install_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Turn HTTP errors, request validation errors and a Redis outage into the JSON shape."""

    @app.exception_handler(StarletteHTTPException)  # also unknown routes, 405s, form errors
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(exc.status_code, str(exc.detail)),
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(422, describe(exc)), status_code=422)

    @app.exception_handler(redis.exceptions.ConnectionError)
    async def redis_down(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body(503, "the job store (Redis) is unreachable; retry later"),
                            status_code=503, headers={"Retry-After": str(retry_after_s)})
