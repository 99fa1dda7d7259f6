"""Batches: many requests submitted at once, each an ordinary edit job tagged with the batch.

A batch's record (a hash) holds its owner, options, timestamps and flags (cancel requested,
expired, ended); its requests are a list of (custom_id, job id) in request order. Its status and
request counts are derived from its jobs' RQ states whenever they are read, so they never
disagree with the jobs themselves. The end of a batch (every request finished, failed or
canceled) is noticed in O(1) per ending request (a set of ended job ids) and reported once:
batch.completed, batch.canceled or batch.expired. A batch still unfinished `batch_window_s`
after submission expires: a sweep (the dispatcher's) cancels what is left. Imports no torch.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.client import Pipeline
from rq.job import Job

from jobs.contract import BATCH_DEADLINES_KEY, BatchOptions, batch_jobs_key, batch_key, resolved_events
from jobs.settings import Settings
from jobs.webhooks import WebhookStore

ENDED_STATES = ("finished", "failed", "canceled")
FINAL_STATUSES = ("completed", "canceled", "expired")
RQ_STATES = {"finished": "finished", "failed": "failed", "canceled": "canceled",
             "stopped": "canceled", "started": "started"}


def ended_key(batch_id: str) -> str:
    return f"{batch_key(batch_id)}:ended"


def _iso(timestamp: str | float | None) -> str | None:
    if timestamp in (None, ""):
        return None
    return datetime.fromtimestamp(float(timestamp), UTC).isoformat()


@dataclass(frozen=True)
class RequestState:
    custom_id: str
    job_id: str
    state: str  # queued, started, finished, failed, canceled
    started_at: str | None


@dataclass(frozen=True)
class BatchView:
    id: str
    owner: str
    status: str
    requests: list[RequestState]
    record: dict[str, str]

    @property
    def counts(self) -> dict[str, int]:
        counts = {"total": len(self.requests), "finished": 0, "failed": 0, "canceled": 0}
        for request in self.requests:
            if request.state in ENDED_STATES:
                counts[request.state] += 1
        return counts

    def public(self) -> dict[str, Any]:
        record = self.record
        started = [r.started_at for r in self.requests if r.started_at]
        return {
            "id": self.id, "status": self.status, "priority": record["priority"],
            "request_counts": self.counts,
            "created_at": _iso(record["created_at"]),
            "in_progress_at": min(started) if started else None,
            "expires_at": _iso(record["expires_at"]),
            "cancel_requested_at": _iso(record.get("cancel_requested_at")),
            "expired_at": _iso(record.get("expired_at")),
            "ended_at": _iso(record.get("ended_at")),
            "links": batch_links(self.id)}


def batch_links(batch_id: str) -> dict[str, str]:
    return {"self": f"/v1/batches/{batch_id}", "results": f"/v1/batches/{batch_id}/results"}


class BatchStore:
    def __init__(self, connection: Redis, settings: Settings, webhooks: WebhookStore) -> None:
        self.connection = connection
        self.settings = settings
        self.webhooks = webhooks
        # A batch's records outlive its window by the results' lifetime.
        self.ttl_s = settings.batch_window_s + settings.result_ttl_s + 3600

    def create(self, pipeline: Pipeline, batch_id: str, owner: str, options: BatchOptions,
               requests: list[tuple[str, str]]) -> None:
        """Queue a batch's record onto the transaction that enqueues its jobs.
        requests: (custom_id, job id) in request order."""
        now = time.time()
        expires_at = now + self.settings.batch_window_s
        pipeline.hset(batch_key(batch_id), mapping={
            "id": batch_id, "owner": owner, "priority": options.priority,
            "webhook_url": options.webhook_url or "",
            "webhook_events": json.dumps(resolved_events(options)),
            "created_at": now, "expires_at": expires_at, "total": len(requests)})
        pipeline.rpush(batch_jobs_key(batch_id), *(json.dumps(r) for r in requests))
        for key in (batch_key(batch_id), batch_jobs_key(batch_id)):
            pipeline.expire(key, self.ttl_s)
        pipeline.zadd(BATCH_DEADLINES_KEY, {batch_id: expires_at})

    def record(self, batch_id: str) -> dict[str, str] | None:
        raw = self.connection.hgetall(batch_key(batch_id))
        return {k.decode(): v.decode() for k, v in raw.items()} if raw else None

    def requests(self, batch_id: str) -> list[RequestState]:
        """Every request with its job's state, in request order."""
        pairs = [json.loads(r) for r in self.connection.lrange(batch_jobs_key(batch_id), 0, -1)]
        with self.connection.pipeline(transaction=False) as pipeline:
            for _, job_id in pairs:
                pipeline.hmget(Job.key_for(job_id), "status", "started_at")
            replies = pipeline.execute()
        out = []
        for (custom_id, job_id), (status, started_at) in zip(pairs, replies, strict=True):
            # A job whose record has expired (after result_ttl_s) counts as failed.
            state = RQ_STATES.get(status.decode(), "queued") if status else "failed"
            started = started_at.decode() if started_at else None
            if started:
                started = datetime.fromisoformat(started.replace("Z", "+00:00")).isoformat()
            out.append(RequestState(custom_id, job_id, state, started))
        return out

    def view(self, batch_id: str) -> BatchView | None:
        record = self.record(batch_id)
        if record is None:
            return None
        requests = self.requests(batch_id)
        return BatchView(batch_id, record["owner"], self._status(record, requests), requests,
                         record)

    @staticmethod
    def _status(record: dict[str, str], requests: list[RequestState]) -> str:
        if record.get("final_status"):
            return record["final_status"]
        if all(r.state in ENDED_STATES for r in requests):
            return ("expired" if record.get("expired_at") else
                    "canceled" if record.get("cancel_requested_at") else "completed")
        if record.get("expired_at") or record.get("cancel_requested_at"):
            return "canceling"
        # Work has happened once a request ran (a request canceled while queued is not work).
        ran = any(r.state in ("started", "finished", "failed") for r in requests)
        return "in_progress" if ran else "queued"

    def flag(self, batch_id: str, name: str) -> bool:
        """Set cancel_requested_at or expired_at once; False if it was set already."""
        return bool(self.connection.hsetnx(batch_key(batch_id), name, time.time()))

    def request_ended(self, batch_id: str, job_id: str) -> None:
        """One request ended (reported once per job); the last one ends the batch."""
        with self.connection.pipeline() as pipeline:
            pipeline.sadd(ended_key(batch_id), job_id)
            pipeline.expire(ended_key(batch_id), self.ttl_s)
            pipeline.scard(ended_key(batch_id))
            pipeline.hget(batch_key(batch_id), "total")
            _, _, ended, total = pipeline.execute()
        if total is not None and ended >= int(total):
            self.finish_if_ended(batch_id)

    def finish_if_ended(self, batch_id: str) -> str | None:
        """If every request has ended, record the batch's final status and report it (once).
        The final status, or None while requests are still running."""
        view = self.view(batch_id)
        if view is None:
            return None
        if view.status not in FINAL_STATUSES:
            return None
        if self.connection.hsetnx(batch_key(batch_id), "ended_at", time.time()):
            self.connection.hset(batch_key(batch_id), "final_status", view.status)
            self.connection.zrem(BATCH_DEADLINES_KEY, batch_id)
            self._notify(view)
        return view.status

    def overdue(self, limit: int = 100) -> list[str]:
        """Batches past their window (or due for another look after an expiry)."""
        ids = self.connection.zrangebyscore(BATCH_DEADLINES_KEY, "-inf", time.time(), 0, limit)
        return [i.decode() for i in ids]

    def look_again(self, batch_id: str, seconds: float) -> None:
        self.connection.zadd(BATCH_DEADLINES_KEY, {batch_id: time.time() + seconds})

    def forget(self, batch_id: str) -> None:
        self.connection.zrem(BATCH_DEADLINES_KEY, batch_id)

    def _notify(self, view: BatchView) -> None:
        record = view.record
        event = f"batch.{view.status}"
        if not record.get("webhook_url") or event not in json.loads(record["webhook_events"]):
            return
        data = {"id": view.id, "status": view.status, "request_counts": view.counts,
                "links": batch_links(view.id)}
        self.webhooks.emit(f"msg_{view.id}_{view.status}", view.owner, record["webhook_url"],
                           event, data, ("batch", view.id))
