"""The queue client: every Redis read and write of an edit job, for the API and the workers.

Jobs are RQ jobs on one queue per model and priority, carried as JSON (RQ's JSONSerializer,
never pickle): the task is `worker.tasks.run_edit` and its one keyword argument is the `EditJob`
contract. Input bytes, results, progress, cancel flags and model specs live under the keys of
jobs.contract. What happens to an edit (started, progress, ended) is reported here too, by
whoever makes it happen, and becomes webhook messages (jobs.webhooks). Tested with rq 3.0
(pinned >=3.0,<3.1). Imports no torch.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from redis import Redis
from redis.client import Pipeline
from rq import Queue, Retry
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from jobs import fairness
from jobs.batches import ENDED_STATES, FINAL_STATUSES, BatchStore, BatchView
from jobs.contract import (
    PRIORITIES,
    BatchOptions,
    EditJob,
    cancel_key,
    edit_links,
    input_key,
    model_alive_key,
    model_spec_key,
    progress_key,
    queue_name,
    result_key,
)
from jobs.rules import ModelSpec
from jobs.settings import Settings
from jobs.webhooks import WebhookStore

TASK = "worker.tasks.run_edit"
SPEC_CACHE_S = 2.0
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # what RQ accepts as a job id (ours are uuid4 hex)
TERMINAL = ENDED_STATES  # finished, failed, canceled
EXPIRY_RECHECK_S = 60  # an expired batch with requests still running is looked at again after
WAITING_SCAN_LIMIT = 1000  # queued jobs whose samples are counted for the slots-waiting metric


def rq_queue(connection: Redis, model: str, priority: str = "interactive") -> Queue:
    return Queue(queue_name(model, priority), connection=connection, serializer=JSONSerializer)


def fetch(connection: Redis, job_id: str) -> Job | None:
    """The RQ job of an edit, or None (unknown or expired)."""
    # RQ refuses ids other than letters, digits, '_' and '-' (ValueError): no such job either.
    if not JOB_ID.fullmatch(job_id):
        return None
    try:
        return Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except NoSuchJobError:
        return None


def edit_of(job: Job) -> EditJob:
    """The edit contract carried by an RQ job."""
    return EditJob.model_validate(job.kwargs["job"])


def state_of(job: Job) -> str:
    """queued, started, finished, failed or canceled (deferred/scheduled count as queued)."""
    status = job.get_status(refresh=True)
    if status in (JobStatus.STARTED, JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED):
        return str(status.value)
    if status == JobStatus.STOPPED:
        return "canceled"
    return "queued"


def failure_reason(job: Job) -> str | None:
    """The last line of the exception that failed the job."""
    result = job.latest_result()
    if result is None or not result.exc_string:
        return None
    lines = [line for line in result.exc_string.strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


def oldest_wait(queue: Queue) -> float | None:
    """Seconds the job at the head of a queue has waited, None if the queue is empty."""
    for job_id in queue.get_job_ids(0, 1):
        job = fetch(queue.connection, job_id)
        if job is not None and job.enqueued_at is not None:
            return (datetime.now(UTC) - job.enqueued_at).total_seconds()
    return None


@dataclass(frozen=True)
class EditRecord:
    """What a client may learn about an edit: its contract and where it stands."""

    edit: EditJob
    state: str
    position: int | None
    progress: tuple[int, int]  # sampler steps done, total
    started_at: datetime | None
    ended_at: datetime | None
    error: str | None


class JobQueue:
    """Submit, follow, cancel and collect edits; publish and read model specs."""

    def __init__(self, connection: Redis, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings
        # One Queue object per queue: RQ caches the server version on it (a round trip saved).
        self._queues: dict[tuple[str, str], Queue] = {}
        self._specs: dict[str, tuple[float, ModelSpec]] = {}
        self.webhooks = WebhookStore(connection, settings)
        self.batches = BatchStore(connection, settings, self.webhooks)
        # Running edits that asked for edit.progress events, with the time of the last one.
        self._progress_events: dict[str, tuple[EditJob, float]] = {}

    def queue(self, model: str, priority: str = "interactive") -> Queue:
        if (model, priority) not in self._queues:
            self._queues[model, priority] = rq_queue(self.connection, model, priority)
        return self._queues[model, priority]

    # --- the API side ---------------------------------------------------------------------

    def submit(self, edit: EditJob, guide: bytes, mask: bytes | None,
               also: Callable[[Pipeline], None] | None = None) -> None:
        """Store the inputs and enqueue the job in one transaction: a job is in the queue with
        its inputs, or not at all. Retried once if its worker dies. `also` adds writes of its
        own to the same transaction (e.g. the response of an Idempotency-Key)."""
        with self.connection.pipeline() as pipeline:
            pipeline.multi()  # before any command: RQ enqueues inside our transaction
            self.enqueue(pipeline, edit, guide, mask)
            if also is not None:
                also(pipeline)
            pipeline.execute()

    def enqueue(self, pipeline: Pipeline, edit: EditJob, guide: bytes, mask: bytes | None) -> None:
        """Queue an edit's inputs and RQ job onto a transaction (on the queue of its priority)."""
        ttl = self.settings.input_ttl_s
        pipeline.set(input_key(edit.id, "guide"), guide, ex=ttl)
        if mask is not None:
            pipeline.set(input_key(edit.id, "mask"), mask, ex=ttl)
        queue = self.queue(edit.model, edit.priority)
        queue.enqueue(
            TASK, job=edit.model_dump(mode="json"), job_id=edit.id,
            result_ttl=self.settings.result_ttl_s, failure_ttl=self.settings.result_ttl_s,
            job_timeout=self.settings.job_timeout_s, retry=Retry(max=1), pipeline=pipeline,
            description=f"sdedit {edit.model} t0={edit.t0} samples={edit.samples}")
        fairness.place(pipeline, queue.key, edit.id, edit.owner)  # behind fewer jobs of others
        fairness.track(pipeline, edit.owner, edit.id, self.settings.result_ttl_s)

    def submit_batch(self, batch_id: str, owner: str, options: BatchOptions,
                     items: list[tuple[EditJob, bytes, bytes | None]],
                     also: Callable[[Pipeline], None] | None = None) -> None:
        """A batch's record and all its jobs (with their inputs) in one transaction."""
        with self.connection.pipeline() as pipeline:
            pipeline.multi()
            for edit, guide, mask in items:
                self.enqueue(pipeline, edit, guide, mask)
            self.batches.create(pipeline, batch_id, owner, options,
                                [(edit.custom_id, edit.id) for edit, _, _ in items])
            if also is not None:
                also(pipeline)
            pipeline.execute()

    def find_batch(self, batch_id: str, owner: str) -> BatchView | None:
        """A batch of this owner with its requests' states; None also for another owner's."""
        view = self.batches.view(batch_id)
        return view if view is not None and view.owner == owner else None

    def cancel_batch(self, view: BatchView) -> None:
        """Cancel every request that has not ended (queued ones at once, running ones within a
        step); the batch ends `canceled` when the last one has."""
        self.batches.flag(view.id, "cancel_requested_at")
        self._cancel_requests(view)

    def expire_batches(self) -> int:
        """Expire the batches past their window: cancel what is left. Returns how many."""
        overdue = self.batches.overdue()
        for batch_id in overdue:
            view = self.batches.view(batch_id)
            if view is None:
                self.batches.forget(batch_id)  # its records have expired
                continue
            if view.status not in FINAL_STATUSES:
                self.batches.flag(batch_id, "expired_at")
                self._cancel_requests(view)
            if self.batches.finish_if_ended(batch_id) is None:
                self.batches.look_again(batch_id, EXPIRY_RECHECK_S)
        return len(overdue)

    def _cancel_requests(self, view: BatchView) -> None:
        for request in view.requests:
            if request.state not in ENDED_STATES:
                job = fetch(self.connection, request.job_id)
                if job is not None and state_of(job) not in TERMINAL:
                    self.cancel(job)
        self.batches.finish_if_ended(view.id)

    def batch_results(self, view: BatchView) -> list[dict]:
        """One line per ended request, in request order: its edit, status, images or error."""
        ended = [r for r in view.requests if r.state in ENDED_STATES]
        jobs = Job.fetch_many([r.job_id for r in ended], connection=self.connection,
                              serializer=JSONSerializer)
        lines = []
        for request, job in zip(ended, jobs, strict=True):
            line: dict = {"custom_id": request.custom_id, "id": request.job_id,
                          "status": request.state, "images": [], "error": None}
            if job is None:
                line["error"] = "the job's record has expired"
            elif request.state == "finished":
                line["images"] = edit_links(job.id, edit_of(job).samples)["images"]
            elif request.state == "failed":
                line["error"] = failure_reason(job)
            lines.append(line)
        return lines

    def depth(self, model: str, priority: str | None = None) -> int:
        """Queued jobs of a model: of one priority, or of all."""
        priorities = PRIORITIES if priority is None else (priority,)
        return sum(self.queue(model, p).count for p in priorities)

    def depth_limit(self, priority: str) -> int:
        return (self.settings.max_queue_depth if priority == "interactive"
                else self.settings.max_batch_queue_depth)

    def find(self, job_id: str, owner: str) -> tuple[Job, EditJob] | None:
        """The RQ job and contract of an edit of this owner; None also for another owner's."""
        job = fetch(self.connection, job_id)
        if job is None:
            return None
        edit = edit_of(job)
        return (job, edit) if edit.owner == owner else None

    def record(self, job: Job, edit: EditJob) -> EditRecord:
        state = state_of(job)
        progress = self.connection.hgetall(progress_key(job.id))
        return EditRecord(
            edit=edit, state=state,
            position=(self.queue(edit.model, edit.priority).get_job_position(job.id)
                      if state == "queued" else None),
            progress=(int(progress.get(b"done", 0)), int(progress.get(b"total", 0))),
            started_at=job.started_at, ended_at=job.ended_at,
            error=failure_reason(job) if state == "failed" else None)

    def cancel(self, job: Job) -> str:
        """Flag the edit canceled: 'canceled' if it had not started, else 'canceling' (the
        worker drops it within one step)."""
        self.connection.set(cancel_key(job.id), 1, ex=self.settings.result_ttl_s)
        if job.get_status(refresh=True) in (JobStatus.QUEUED, JobStatus.DEFERRED,
                                             JobStatus.SCHEDULED):
            try:
                job.cancel()
            except InvalidJobOperation:  # it left the queue meanwhile
                return "canceling"
            self.edit_ended(edit_of(job), "canceled")
            return "canceled"
        return "canceling"

    def result(self, job_id: str, index: int) -> bytes | None:
        return self.connection.get(result_key(job_id, index))

    def model_spec(self, model: str) -> ModelSpec | None:
        """The spec its workers published; a found one is kept SPEC_CACHE_S in this process (a
        submit then checks its rules without a Redis round trip; specs change on redeploys)."""
        cached = self._specs.get(model)
        if cached is not None and time.monotonic() - cached[0] < SPEC_CACHE_S:
            return cached[1]
        raw = self.connection.get(model_spec_key(model))
        spec = ModelSpec.model_validate_json(raw) if raw else None
        if spec is not None:
            self._specs[model] = (time.monotonic(), spec)
        return spec

    def alive(self, models: list[str]) -> dict[str, bool]:
        flags = self.connection.mget([model_alive_key(m) for m in models]) if models else []
        return {m: flag is not None for m, flag in zip(models, flags, strict=True)}

    def public_models(self, models: list[str]) -> list[dict]:
        """The /v1/models entries: each model's spec and whether a live worker serves it."""
        alive = self.alive(models)
        out = []
        for name in models:
            spec = self.model_spec(name)
            out.append(spec.public(alive[name]) if spec else {"name": name, "available": False})
        return out

    def ping(self) -> None:
        self.connection.ping()

    # --- the worker side --------------------------------------------------------------------

    def inputs(self, edit: EditJob) -> tuple[bytes | None, bytes | None]:
        guide, mask = self.connection.mget(input_key(edit.id, "guide"), input_key(edit.id, "mask"))
        return guide, mask

    def store_results(self, edit: EditJob, images: list[bytes]) -> None:
        """All result images in one transaction: never a half-written result. The inputs stay
        until their TTL: if the worker dies before RQ records the success, a retry finds them."""
        with self.connection.pipeline(transaction=True) as pipeline:
            for k, data in enumerate(images):
                pipeline.set(result_key(edit.id, k), data, ex=self.settings.result_ttl_s)
            pipeline.execute()

    def write_progress(self, job_id: str, done: int, total: int) -> None:
        key = progress_key(job_id)
        with self.connection.pipeline(transaction=False) as pipeline:
            pipeline.hset(key, mapping={"done": done, "total": total})
            pipeline.expire(key, self.settings.result_ttl_s)
            pipeline.execute()
        watched = self._progress_events.get(job_id)
        now = time.monotonic()
        if watched is not None and done < total and \
                now - watched[1] >= self.settings.webhook_progress_interval_s:
            self._progress_events[job_id] = (watched[0], now)
            self._notify(watched[0], "edit.progress", f"progress_{done}", status="started",
                         progress={"step": done, "total": total})

    # --- what happens to an edit: webhook events ----------------------------------------------

    def edit_started(self, edit: EditJob) -> None:
        """A worker took the edit (reported once, even if a retry takes it again)."""
        self._notify(edit, "edit.started", "started", status="started")
        if edit.webhook_url and "edit.progress" in edit.webhook_events:
            self._progress_events[edit.id] = (edit, -math.inf)

    def edit_ended(self, edit: EditJob, state: str, error: str | None = None) -> None:
        """The edit reached a terminal state (finished, failed, canceled), as recorded in RQ."""
        self._progress_events.pop(edit.id, None)
        self._notify(edit, f"edit.{state}", state, status=state, error=error)
        if edit.batch_id is not None:
            self.batches.request_ended(edit.batch_id, edit.id)

    def _notify(self, edit: EditJob, event: str, suffix: str, status: str,
                **extra: object) -> None:
        if not edit.webhook_url or event not in edit.webhook_events:
            return
        data = {"id": edit.id, "status": status, "model": edit.model, "priority": edit.priority,
                "batch_id": edit.batch_id, "custom_id": edit.custom_id,
                "links": edit_links(edit.id, edit.samples if status == "finished" else 0),
                **extra}
        self.webhooks.emit(f"msg_{edit.id}_{suffix}", edit.owner, edit.webhook_url, event, data,
                           ("edit", edit.id))

    def canceled(self, job_ids: list[str]) -> list[str]:
        if not job_ids:
            return []
        flags = self.connection.mget([cancel_key(i) for i in job_ids])
        return [i for i, flag in zip(job_ids, flags, strict=True) if flag is not None]

    def publish(self, spec: ModelSpec, alive_ttl_s: int) -> None:
        """Publish a served model's spec (kept) and that a worker serves it (expires)."""
        with self.connection.pipeline(transaction=False) as pipeline:
            pipeline.set(model_spec_key(spec.name), spec.model_dump_json())
            pipeline.set(model_alive_key(spec.name), 1, ex=alive_ttl_s)
            pipeline.execute()

    def waiting_samples(self, model: str, limit: int = WAITING_SCAN_LIMIT) -> int:
        """Samples (engine slots) the first `limit` queued jobs of a model will need
        (interactive ones first)."""
        ids = []
        for priority in PRIORITIES:
            ids += self.queue(model, priority).get_job_ids(0, limit - len(ids))
            if len(ids) >= limit:
                break
        jobs = Job.fetch_many(ids, connection=self.connection, serializer=JSONSerializer)
        return sum(edit_of(job).samples for job in jobs if job is not None)
