"""Webhooks in the Standard Webhooks format: events kept in Redis until a dispatcher delivers them.

An event for one URL is a *message*: a small JSON body (ids, status, links; never image bytes)
fixed when the event happens, and a `webhook-id` that every retry of it repeats. Messages are
created idempotently (one per id) and scheduled in a sorted set by the time of their next
attempt; a dispatcher (worker.dispatcher) claims due ones for a lease, sends them signed, and
records each attempt. Nothing lives in a process: a restarted API, worker or dispatcher loses
no message, and a dispatcher killed mid-attempt leaves its claim to expire and be retried.

Signatures: `v1,` + base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}` with the
API key's `whsec_` secret; after a rotation the previous secret also signs for a grace period
(space-separated signatures, as the spec's zero-downtime rotation asks). Imports no torch.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import random
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from redis import Redis
from redis.client import Pipeline

from jobs.contract import (
    WEBHOOK_DUE_KEY,
    webhook_attempts_key,
    webhook_index_key,
    webhook_message_key,
    webhook_secret_key,
)
from jobs.settings import Settings

# bandit B105: the Standard Webhooks prefix of every secret, not a secret itself.
SECRET_PREFIX = "whsec_"  # nosec B105
SECRET_BYTES = 32
Subject = Literal["edit", "batch"]


# --- where a webhook may go (SSRF guard) ------------------------------------------------------

class UrlRefused(ValueError):
    """A webhook URL the service will not call, with the reason."""


def webhook_host(url: str) -> tuple[str, int]:
    """Host and port of an acceptable http(s) URL; UrlRefused otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UrlRefused("webhook_url: must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("webhook_url: credentials in the URL are not accepted")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UrlRefused("webhook_url: invalid port") from None
    return parts.hostname, port


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # is_global is False for loopback, private, link-local (169.254.169.254, the cloud metadata
    # address), shared (100.64/10), reserved and unspecified ranges.
    return ip.is_global and not ip.is_multicast


def resolve_webhook_url(url: str, allow_hosts: list[str]) -> list[str]:
    """The addresses a webhook URL may be sent to: every address its host resolves to must be
    public unless the host is in `allow_hosts`. UrlRefused names what is wrong."""
    host, port = webhook_host(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):  # also a NUL or an overlong label in the host
        raise UrlRefused(f"webhook_url: host {host!r} does not resolve") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if host.lower() not in {h.lower() for h in allow_hosts}:
        private = [a for a in addresses if not _public(a)]
        if private:
            raise UrlRefused(f"webhook_url: {host!r} resolves to a loopback, private, link-local "
                             f"or metadata address ({private[0]}); refused")
    return addresses


# --- signatures ---------------------------------------------------------------------------------

def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: str) -> str:
    """One signature of the `webhook-signature` header: `v1,<base64 HMAC-SHA256>`."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(signing_secrets: list[str], message_id: str, timestamp: int,
                     body: str) -> str:
    return " ".join(sign(s, message_id, timestamp, body) for s in signing_secrets)


# --- events -------------------------------------------------------------------------------------

def event_body(event: str, data: dict[str, Any]) -> str:
    """The JSON body sent for an event (compact; signed byte for byte)."""
    return json.dumps({"type": event, "timestamp": datetime.now(UTC).isoformat(), "data": data},
                      separators=(",", ":"))


def retry_delay(attempt: int, schedule: list[float], jitter: float,
                retry_after: float | None = None) -> float | None:
    """Seconds until the attempt after failed attempt number `attempt` (1-based), or None when
    the schedule is spent. A receiver's Retry-After wins over the schedule."""
    if attempt > len(schedule):
        return None
    if retry_after is not None:
        return retry_after
    # bandit B311: jitter spreads retries out in time; it protects nothing, so no CSPRNG.
    return schedule[attempt - 1] * random.uniform(1.0 - jitter, 1.0 + jitter)  # nosec B311


@dataclass(frozen=True)
class Message:
    id: str
    owner: str
    url: str
    type: str
    body: str
    attempts: int
    state: str


@dataclass(frozen=True)
class Attempt:
    at: float
    status_code: int | None
    error: str | None
    duration_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {"at": datetime.fromtimestamp(self.at, UTC).isoformat(),
                "status_code": self.status_code, "error": self.error,
                "duration_ms": round(self.duration_ms, 1)}


# Create a message once (by id), schedule it, and index it under its edit or batch.
_EMIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[1])
return 1
"""

# Claim due messages: push their next attempt time to the end of a lease, so concurrent
# dispatchers never send the same attempt, and a dispatcher that dies leaves them due again.
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""


class WebhookStore:
    """Secrets, messages and attempts of webhooks in Redis."""

    def __init__(self, connection: Redis, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings
        self._emit = connection.register_script(_EMIT)
        self._claim = connection.register_script(_CLAIM)
        # Messages outlive their retries, so an edit's deliveries can be read after the last.
        schedule = settings.webhook_retry_schedule_s
        self.retention_s = int(sum(schedule) * (1 + settings.webhook_jitter)
                               + settings.result_ttl_s + 3600)

    # --- secrets, one per API key --------------------------------------------------------------

    def secret(self, owner: str) -> dict[str, Any]:
        """The owner's signing secret (created on first use) and the previous one's expiry."""
        key = webhook_secret_key(owner)
        self.connection.hsetnx(key, "current", new_secret())
        record = {k.decode(): v.decode() for k, v in self.connection.hgetall(key).items()}
        until = float(record.get("previous_until", 0))
        return {"secret": record["current"],
                "previous_valid_until": (datetime.fromtimestamp(until, UTC).isoformat()
                                         if until > time.time() else None)}

    def rotate(self, owner: str) -> dict[str, Any]:
        """A new secret; the old one keeps signing for webhook_secret_grace_s."""
        key = webhook_secret_key(owner)
        self.secret(owner)

        def swap(pipeline: Pipeline) -> None:
            current = pipeline.hget(key, "current")
            pipeline.multi()
            pipeline.hset(key, mapping={
                "current": new_secret(), "previous": current,
                "previous_until": time.time() + self.settings.webhook_secret_grace_s})

        self.connection.transaction(swap, key)
        return self.secret(owner)

    def signing_secrets(self, owner: str) -> list[str]:
        """The secrets a message is signed with now: the current one, and the previous one
        while its grace period lasts."""
        key = webhook_secret_key(owner)
        self.connection.hsetnx(key, "current", new_secret())
        current, previous, until = self.connection.hmget(key, "current", "previous",
                                                          "previous_until")
        out = [current.decode()]
        if previous and float(until) > time.time():
            out.append(previous.decode())
        return out

    # --- messages ------------------------------------------------------------------------------

    def emit(self, message_id: str, owner: str, url: str, event: str, data: dict[str, Any],
             subject: tuple[Subject, str]) -> bool:
        """Create and schedule a message for immediate delivery; False if it already exists
        (the same event reported twice is sent once)."""
        fields = {"id": message_id, "owner": owner, "url": url, "type": event,
                  "body": event_body(event, data), "created_at": time.time(), "state": "pending",
                  "attempts": 0}
        now = time.time()
        args: list[Any] = [self.retention_s, now, message_id]
        for name, value in fields.items():
            args += [name, value]
        keys = [webhook_message_key(message_id), WEBHOOK_DUE_KEY, webhook_index_key(*subject)]
        return bool(self._emit(keys=keys, args=args))

    def claim_due(self, limit: int, lease_s: float) -> list[str]:
        now = time.time()
        ids = self._claim(keys=[WEBHOOK_DUE_KEY], args=[now, now + lease_s, limit])
        return [i.decode() for i in ids]

    def message(self, message_id: str) -> Message | None:
        raw = self.connection.hgetall(webhook_message_key(message_id))
        if not raw:
            self.connection.zrem(WEBHOOK_DUE_KEY, message_id)  # expired: nothing to send
            return None
        record = {k.decode(): v.decode() for k, v in raw.items()}
        return Message(id=record["id"], owner=record["owner"], url=record["url"],
                       type=record["type"], body=record["body"],
                       attempts=int(record["attempts"]), state=record["state"])

    def record_attempt(self, message: Message, attempt: Attempt, state: str,
                       next_at: float | None) -> None:
        """Keep an attempt and what follows it: another attempt at next_at, or a final state
        (delivered, failed, gone, refused)."""
        key = webhook_message_key(message.id)
        attempts_key = webhook_attempts_key(message.id)
        with self.connection.pipeline() as pipeline:
            pipeline.rpush(attempts_key, json.dumps(attempt.as_dict()))
            pipeline.expire(attempts_key, self.retention_s)
            pipeline.hset(key, mapping={"state": state, "attempts": message.attempts + 1,
                                        "next_at": next_at or ""})
            if next_at is None:
                pipeline.zrem(WEBHOOK_DUE_KEY, message.id)
            else:
                pipeline.zadd(WEBHOOK_DUE_KEY, {message.id: next_at})
            pipeline.execute()

    def deliveries(self, subject: tuple[Subject, str]) -> list[dict[str, Any]]:
        """The messages about an edit or batch with every recorded attempt, oldest first."""
        ids = [i.decode() for i in self.connection.lrange(webhook_index_key(*subject), 0, -1)]
        with self.connection.pipeline(transaction=False) as pipeline:
            for message_id in ids:
                pipeline.hgetall(webhook_message_key(message_id))
                pipeline.lrange(webhook_attempts_key(message_id), 0, -1)
            replies = pipeline.execute()
        out = []
        for raw, attempts in zip(replies[::2], replies[1::2], strict=True):
            if not raw:
                continue
            record = {k.decode(): v.decode() for k, v in raw.items()}
            next_at = float(record["next_at"]) if record.get("next_at") else None
            out.append({
                "id": record["id"], "type": record["type"], "url": record["url"],
                "status": record["state"],
                "created_at": datetime.fromtimestamp(float(record["created_at"]), UTC).isoformat(),
                "next_attempt_at": (datetime.fromtimestamp(next_at, UTC).isoformat()
                                    if next_at else None),
                "attempts": [json.loads(a) for a in attempts]})
        return out
