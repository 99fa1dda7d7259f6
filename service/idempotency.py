"""Idempotency-Key on a POST route: claim the key, replay the first response, or refuse.

    with Idempotent(request, store, owner, "edits", parsed_request) as once:
        if once.replay is not None:
            return once.replay
        queue.submit(..., also=once.remember(202, body))

Same key and same request (parsed fields and file contents): the first response again, with
`Idempotent-Replayed: true`. Same key, different request: 422. Same key while the first request
is still being handled: 409. A request that fails leaves no trace of its key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from redis.client import Pipeline

from jobs.idempotency import Claim, IdempotencyStore, fingerprint, parse_key
from service.errors import ApiError

HEADER = "idempotency-key"


class Idempotent:
    def __init__(self, request: Request, store: IdempotencyStore, owner: str, scope: str,
                 parsed: Any) -> None:
        header = request.headers.get(HEADER)
        try:
            self.key = None if header is None else parse_key(header)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        self.store, self.owner, self.scope = store, owner, scope
        self.digest = fingerprint(parsed) if self.key is not None else ""
        self.claim: Claim | None = None
        self.replay: JSONResponse | None = None

    def __enter__(self) -> Idempotent:
        if self.key is None:
            return self
        claim = self.store.claim(self.owner, self.scope, self.key, self.digest)
        if claim.outcome == "mismatch":
            raise ApiError(422, "Idempotency-Key: already used with a different request; use a "
                                "new key for a new request")
        if claim.outcome == "in_progress":
            raise ApiError(409, "Idempotency-Key: a request with this key is still being "
                                "handled; retry later")
        if claim.outcome == "replay":
            self.replay = JSONResponse(claim.body, status_code=claim.status,
                                       headers={"Idempotent-Replayed": "true"})
        else:
            self.claim = claim
        return self

    def remember(self, status: int, body: dict) -> Callable[[Pipeline], None] | None:
        """The write that stores the response, for the transaction that creates the resource."""
        if self.claim is None:
            return None
        key, owner, scope, digest = self.key, self.owner, self.scope, self.digest

        def write(pipeline: Pipeline) -> None:
            self.store.remember(pipeline, owner, scope, key, digest, status, body)

        return write

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None and self.claim is not None:
            self.store.release(self.owner, self.scope, self.key, self.claim.token)
