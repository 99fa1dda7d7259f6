"""Idempotency-Key (IETF httpapi draft): a retried POST gets the first response, not a second job.

A key is scoped to its API key (owner) and route, and kept `idempotency_ttl_s`. The request it
came with is remembered as a fingerprint of its parsed fields and file contents, so a client's
retry matches even though its multipart boundary is new. States: `pending` while the first
request is being handled (a duplicate then gets 409), `done` with the response (replayed).
The response is written in the same Redis transaction that creates the job (see `remember`), so
there is never a job without its key or a key without its job. Imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from redis import Redis
from redis.client import Pipeline

from jobs.contract import idempotency_key

# How long a `pending` claim lives if the process handling it dies: longer than any submission
# takes (validation happens before the claim; the claim covers the Redis transaction).
PENDING_TTL_S = 300
MAX_KEY_LENGTH = 255


def fingerprint(request: Any) -> str:
    """A stable digest of a parsed request (JSON-able values; bytes as their SHA-256)."""

    def plain(value: Any) -> Any:
        if isinstance(value, bytes):
            return {"sha256": hashlib.sha256(value).hexdigest()}
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    canonical = json.dumps(plain(request), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_key(header: str) -> str:
    """The key of an Idempotency-Key header: a Structured Field string ("...") or a bare token.

    ValueError for an empty, overlong or non-printable key.
    """
    key = header.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable() or not key.isascii():
        raise ValueError(f"Idempotency-Key: 1 to {MAX_KEY_LENGTH} printable ASCII characters")
    return key


@dataclass(frozen=True)
class Claim:
    """What a key says about a request: go ahead (`new`), replay, or refuse."""

    outcome: Literal["new", "replay", "in_progress", "mismatch"]
    status: int = 0
    body: dict | None = None
    token: str = ""  # identifies a `new` claim, so only its holder releases it


class IdempotencyStore:
    def __init__(self, connection: Redis, ttl_s: int) -> None:
        self.connection = connection
        self.ttl_s = ttl_s

    @staticmethod
    def _key(owner: str, scope: str, key: str) -> str:
        return idempotency_key(owner, scope, hashlib.sha256(key.encode()).hexdigest()[:32])

    def claim(self, owner: str, scope: str, key: str, digest: str) -> Claim:
        """Take the key for this request (atomic: of concurrent duplicates exactly one is
        `new`), or say why not."""
        redis_key = self._key(owner, scope, key)
        token = uuid.uuid4().hex
        pending = json.dumps({"state": "pending", "fingerprint": digest, "token": token})
        if self.connection.set(redis_key, pending, nx=True, ex=PENDING_TTL_S):
            return Claim("new", token=token)
        raw = self.connection.get(redis_key)
        if raw is None:  # expired between the two calls: take it now
            return self.claim(owner, scope, key, digest)
        record = json.loads(raw)
        if record["fingerprint"] != digest:
            return Claim("mismatch")
        if record["state"] == "pending":
            return Claim("in_progress")
        return Claim("replay", record["status"], record["body"])

    def remember(self, pipeline: Pipeline, owner: str, scope: str, key: str, digest: str,
                 status: int, body: dict) -> None:
        """Queue the response onto the transaction that creates what the request asked for."""
        record = json.dumps({"state": "done", "fingerprint": digest, "status": status,
                             "body": body})
        pipeline.set(self._key(owner, scope, key), record, ex=self.ttl_s)

    def release(self, owner: str, scope: str, key: str, token: str) -> None:
        """Forget a pending claim whose request failed, so a retry is handled afresh (errors are
        not remembered: nothing was created)."""
        redis_key = self._key(owner, scope, key)
        raw = self.connection.get(redis_key)
        if raw is not None and json.loads(raw).get("token") == token:
            self.connection.delete(redis_key)
