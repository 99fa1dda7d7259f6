"""The worker's RQ side: an RQ worker that keeps many edits in flight through a batching Runner.

`BatchWorker` follows RQ's worker lifecycle (bootstrap, suspension check, maintenance, dequeue,
execute, teardown) with one change RQ's `work()` cannot express: it pops a job whenever its
engine has room, so many jobs run at once, one engine step at a time. Each job is marked
started, finished, failed or canceled through RQ's own bookkeeping (execution, started
registry, heartbeats, results), so `rq info` and rq-dashboard show the truth, and `rq suspend` /
`rq resume` pause and resume taking jobs (running ones go on). A worker that is killed leaves its
jobs in the started registry; RQ's registry cleanup (every worker's maintenance) then retries
each once (Retry(max=1)) or fails it as abandoned. Every change of a job's state is reported to
the queue client (edit_started / edit_ended: webhooks, batches) after RQ has recorded it.

Words: `job` is an RQ job, `edit` the EditJob contract it carries; the engine's slots are its own.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.exceptions import DequeueTimeout, InvalidJobOperation, StopRequested
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.suspension import is_suspended
from rq.worker import SimpleWorker

from jobs import fairness
from jobs.connection import OUTAGE
from jobs.contract import PRIORITIES, EditJob, model_of_queue, priority_of_queue
from jobs.queue import JobQueue, edit_of, fetch, oldest_wait, rq_queue
from worker import metrics

OUTAGE_WAIT_S = 0.5  # first wait after Redis became unreachable; doubles up to the max
MAX_OUTAGE_WAIT_S = 8.0
IDLE_POLL_S = 5  # an idle worker wakes this often to publish that it is alive
HEAD_CHECK_S = 0.5  # a full worker looks at the age of its queues' oldest job this often


class Runner(Protocol):
    """The engine side of a BatchWorker (see worker.main.EditRunner), keyed by job id."""

    queue: JobQueue  # the queue client the runner reads inputs and writes results with

    def room(self, model: str, priority: str = "interactive") -> bool: ...

    def overflow_room(self, model: str) -> bool: ...

    def admit(self, edit: EditJob) -> None: ...

    def step(self) -> list[tuple[str, dict[str, Any] | BaseException]]: ...

    def canceled(self, job_ids: Iterable[str]) -> list[str]: ...

    def drop(self, job_id: str) -> None: ...

    def publish(self) -> None: ...


@dataclass
class Running:
    job: Job
    queue: Queue
    execution: Execution
    started: float


class BatchWorker(SimpleWorker):
    """An RQ worker that keeps many jobs in flight through a batching Runner."""

    def __init__(self, models: list[str], runner: Runner, connection: Redis,
                 heartbeat_s: float = 10.0, maintenance_interval: int = 60,
                 max_wait_s: float = float("inf"), **kwargs: Any) -> None:
        # Interactive queues first: RQ's blocking dequeue and _admit serve queues in this order.
        queues = [rq_queue(connection, m, p) for p in PRIORITIES for m in models]
        super().__init__(queues, connection=connection,
                         serializer=JSONSerializer, maintenance_interval=maintenance_interval,
                         **kwargs)
        self.runner = runner
        self.running: dict[str, Running] = {}
        self.heartbeat_s = heartbeat_s
        self.max_wait_s = max_wait_s
        self.head_checked: dict[str, float] = {}
        self.unfinalized: list[tuple[str, dict[str, Any] | BaseException]] = []
        self.worked = False
        self.last_publish = -heartbeat_s
        # Heartbeats come from a thread, so a network forward longer than the heartbeat TTL
        # does not make running jobs look abandoned; the lock keeps a heartbeat from
        # re-registering a job that the main thread is finishing.
        self.lock = threading.Lock()
        self.stop_beats = threading.Event()

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """A killed worker's jobs are recovered this long after its last heartbeat."""
        return int(3 * self.heartbeat_s) + 1

    def work(self, burst: bool = False, logging_level: str = "INFO", **_: Any) -> bool:  # type: ignore[override]
        """Run until stopped (or, with burst, until the queues are empty and all jobs done)."""
        self.bootstrap(logging_level)
        for signum in (signal.SIGINT, signal.SIGTERM):  # warm shutdown: finish what runs
            signal.signal(signum, self.request_stop)
        self.worked = False
        beats = threading.Thread(target=self._heartbeat_loop, name="heartbeats", daemon=True)
        beats.start()
        outage_wait = OUTAGE_WAIT_S
        try:
            while True:
                try:
                    if not self._iteration(burst):
                        break
                    outage_wait = OUTAGE_WAIT_S
                except StopRequested:  # raised by RQ's signal handler while we wait idle
                    break
                except OUTAGE as exc:
                    # Redis is down or restarting: keep the engine's state (running slots,
                    # unstored results, unfinalized outcomes) and retry with back-off.
                    self.log.warning("Redis unreachable (%s); retrying in %.1f s", exc, outage_wait)
                    metrics.REDIS_OUTAGES.inc()
                    time.sleep(outage_wait)
                    outage_wait = min(2 * outage_wait, MAX_OUTAGE_WAIT_S)
        finally:
            self.stop_beats.set()
            beats.join()
            self.teardown()
        return self.worked

    def _iteration(self, burst: bool) -> bool:
        """Suspension, maintenance, admission and one engine step; False to stop."""
        if not self.running:
            self.check_for_suspension(burst)  # RQ's own wait while `rq suspend` is in force
        if self.should_run_maintenance_tasks:
            self.run_maintenance_tasks()
        if time.monotonic() - self.last_publish >= self.heartbeat_s:
            self.runner.publish()
            for queue in self.queues:
                metrics.JOBS_WAITING_BY_PRIORITY.labels(
                    model_of_queue(queue.name), priority_of_queue(queue.name)).set(queue.count)
            self.heartbeat()
            self.last_publish = time.monotonic()
        stopping = RQPrivate.stop_requested(self)
        if stopping and not self.running:
            return False
        # Suspended with jobs in flight: no new jobs, but the running ones finish.
        admitting = not stopping and not (self.running and is_suspended(self.connection, self))
        admitted = self._admit(block=not self.running and not burst) if admitting else 0
        self.worked |= admitted > 0
        if not self.running:
            return not (burst and admitted == 0)
        self._finish([])  # outcomes an outage kept back
        self._check_cancel_and_timeouts()
        self._finish(self.runner.step())
        return True

    def _admit(self, block: bool) -> int:
        """Pop jobs while the runner has room for them; block briefly only when idle.

        Queues are served in priority order (every interactive queue, then the batch queues),
        each first come first served, never skipping its head job. An interactive job finds room
        beside batch jobs, which sit out while it runs (the runner's priorities). While a
        model's batch is full, its oldest queued interactive job is let in anyway once it has
        waited max_wait_s (the runner then splits each iteration into several forwards), so no
        interactive job waits longer than that for jobs that run long; batch jobs wait for
        free slots.
        """
        admitted = 0
        if block:  # idle: RQ's own blocking dequeue (heartbeats, reconnects with back-off)
            result = self.dequeue_job_and_maintain_ttl(IDLE_POLL_S, max_idle_time=IDLE_POLL_S)
            if result is None:
                return 0
            self._start(*result)
            admitted = 1
        for queue in self.queues:
            model, priority = model_of_queue(queue.name), priority_of_queue(queue.name)
            while True:
                over_full = not self.runner.room(model, priority)
                if over_full and (priority == "batch" or not self._head_waited_too_long(queue)):
                    break
                try:
                    result = Queue.dequeue_any([queue], timeout=None, connection=self.connection,
                                               serializer=self.serializer)
                except DequeueTimeout:
                    result = None
                if result is None:
                    break
                job, queue = result
                if over_full:
                    metrics.WAIT_BOUND_ADMISSIONS.labels(model).inc()
                    self.log.info("job %s joins the full batch of %s after waiting %s s or more",
                                  job.id, model, self.max_wait_s)
                self._start(job, queue)
                admitted += 1
        return admitted

    def _head_waited_too_long(self, queue: Queue) -> bool:
        if self.max_wait_s == float("inf") or not self.runner.overflow_room(
                model_of_queue(queue.name)):
            return False
        now = time.monotonic()
        if now - self.head_checked.get(queue.name, -HEAD_CHECK_S) < HEAD_CHECK_S:
            return False  # looked a moment ago: one Redis read per queue per HEAD_CHECK_S
        self.head_checked[queue.name] = now
        waited = oldest_wait(queue)
        if waited is None or waited < self.max_wait_s:
            return False
        self.head_checked.pop(queue.name)  # the next head may be just as old
        return True

    def _start(self, job: Job, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        self.prepare_job_execution(job, remove_from_intermediate_queue=True)
        fairness.taken(self.connection, queue.key, job.id)  # the queue's fair order moves on
        with self.lock:
            self.running[job.id] = Running(job, queue, execution, time.monotonic())
            metrics.ACTIVE_JOBS.set(len(self.running))
        edit = edit_of(job)
        try:
            self.runner.admit(edit)
        except Exception as exc:  # bad inputs or an expired upload: this job fails, others go on
            self._finish([(job.id, exc)])
            return
        self.runner.queue.edit_started(edit)

    def _check_cancel_and_timeouts(self) -> None:
        now = time.monotonic()
        for job_id in self.runner.canceled(list(self.running)):
            self.runner.drop(job_id)
            with self.lock:
                self._cancel(self.running[job_id])  # an outage here: canceled again next time
                del self.running[job_id]
        for job_id, run in list(self.running.items()):
            timeout = run.job.timeout
            if timeout and timeout > 0 and now - run.started > timeout:
                self.runner.drop(job_id)
                self._finish([(job_id, TimeoutError(f"job exceeded its timeout of {timeout} s"))])

    def _finish(self, outcomes: list[tuple[str, dict[str, Any] | BaseException]]) -> None:
        """Record each outcome in RQ; what a Redis outage interrupts is retried first thing in
        the next call (a job leaves `running` only once RQ has recorded its end)."""
        self.unfinalized += outcomes
        with self.lock:
            while self.unfinalized:
                job_id, outcome = self.unfinalized[0]
                run = self.running.get(job_id)
                if run is not None:
                    self._record_outcome(run, outcome)  # raises on an outage: kept for later
                    del self.running[job_id]
                self.unfinalized.pop(0)
            metrics.ACTIVE_JOBS.set(len(self.running))
            if not self.running:
                self.set_state("idle")

    def _record_outcome(self, run: Running, outcome: dict[str, Any] | BaseException) -> None:
        edit = edit_of(run.job)
        model = edit.model
        metrics.JOB_SECONDS.labels(model).observe(time.monotonic() - run.started)
        metrics.JOB_LATENCY_SECONDS.labels(model, edit.priority).observe(
            (datetime.now(UTC) - edit.created_at).total_seconds())
        if isinstance(outcome, BaseException):
            metrics.JOBS.labels(model, "failed").inc()
            metrics.FAILURES.labels(model, type(outcome).__name__).inc()
            reason = "".join(traceback.format_exception_only(outcome)).strip()
            self.log.warning("Job %s failed: %s", run.job.id, reason)
            RQPrivate.finalize_failure(self, run, outcome)
            # RQ retries it once (Retry(max=1)); only a failure it keeps ends the edit.
            if run.job.get_status(refresh=True) == JobStatus.FAILED:
                self.runner.queue.edit_ended(edit, "failed", reason.splitlines()[-1])
        else:
            metrics.JOBS.labels(model, "finished").inc()
            RQPrivate.finalize_success(self, run, outcome)
            self.runner.queue.edit_ended(edit, "finished")

    def _cancel(self, run: Running) -> None:
        with self.connection.pipeline() as pipeline:
            self.cleanup_execution(run.job, pipeline=pipeline, execution=run.execution)
            pipeline.execute()
        with contextlib.suppress(InvalidJobOperation):  # canceled twice: already done
            run.job.cancel()
        edit = edit_of(run.job)
        metrics.JOBS.labels(edit.model, "canceled").inc()
        metrics.JOB_LATENCY_SECONDS.labels(edit.model, edit.priority).observe(
            (datetime.now(UTC) - edit.created_at).total_seconds())
        self.log.info("Job %s canceled while running", run.job.id)
        self.runner.queue.edit_ended(edit, "canceled")

    def clean_registries(self) -> None:
        """RQ's maintenance, which fails (or retries) the jobs of killed workers, then reports
        the ones it failed: they end without passing through this worker's own code."""
        # Jobs whose heartbeat expires within the next minute cover what RQ's cleanup finds.
        horizon = time.time() + 60
        expired = [job_id for queue in self.queues for job_id in
                   StartedJobRegistry(queue=queue).get_expired_job_ids(horizon)]
        super().clean_registries()
        for job_id in expired:
            job = fetch(self.connection, job_id)
            if job is not None and job.get_status(refresh=False) == JobStatus.FAILED:
                self.runner.queue.edit_ended(edit_of(job), "failed",
                                             "the worker running it died (abandoned)")

    def _heartbeat_loop(self) -> None:
        while not self.stop_beats.wait(self.heartbeat_s):
            with self.lock:
                for run in list(self.running.values()):
                    try:
                        self.maintain_heartbeats(run.job, run.execution)
                    except RedisError as exc:  # the main loop will meet the same outage
                        self.log.warning("heartbeat of job %s failed: %s", run.job.id, exc)


class RQPrivate:
    """Every private RQ call of the project, in one place (RQ 3.0; pinned >=3.0,<3.1).

    Why they are needed: RQ ends a job inside `perform_job`, which runs the job function to
    completion; a batching worker ends each job later, when its last engine step is done, so it
    calls the two steps RQ's `perform_job` calls (`_finalize_success` / `_finalize_failure`:
    result, registries, retries, callbacks). RQ exposes its warm-shutdown flag only as
    `_stop_requested`. Check these three on any RQ upgrade.
    """

    @staticmethod
    def stop_requested(worker: SimpleWorker) -> bool:
        return bool(worker._stop_requested)

    @staticmethod
    def finalize_success(worker: SimpleWorker, run: Running, value: dict[str, Any]) -> None:
        worker._finalize_success(run.job, run.queue, run.execution, value)

    @staticmethod
    def finalize_failure(worker: SimpleWorker, run: Running, error: BaseException) -> None:
        worker._finalize_failure(run.job, run.queue, run.execution,
                                 (type(error), error, error.__traceback__))
