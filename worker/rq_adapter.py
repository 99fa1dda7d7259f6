"""Everything the project needs from RQ, in one module. Tested with rq 3.0 (pinned >=3.0,<3.1).

Jobs travel as JSON (RQ's JSONSerializer), never pickle: the job's function is
`worker.tasks.run_edit` and its one keyword argument is the `EditJob` contract as JSON.

`BatchWorker` is an RQ worker whose loop keeps many jobs running at once: it pops a job when
its engine has room, marks it started exactly as RQ's own workers do (execution, started
registry, heartbeats), runs one engine step at a time, and finishes, fails or cancels each job
through RQ's own bookkeeping, so `rq info` and rq-dashboard show the truth. A worker that is
killed leaves its jobs in the started registry; RQ's registry cleanup (run by every worker's
maintenance) then retries each once (Retry(max=1)) or fails it as abandoned.

This module imports no torch: the API uses the enqueue and query helpers.
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.exceptions import DequeueTimeout, InvalidJobOperation, NoSuchJobError, StopRequested
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

from service.contract import EditJob, queue_name
from worker import metrics

TASK = "worker.tasks.run_edit"
TERMINAL = ("finished", "failed", "canceled")
IDLE_POLL_S = 5  # an idle worker wakes this often to publish that it is alive
HEAD_CHECK_S = 0.5  # a full worker looks at the age of its queues' oldest job this often
WAITING_SCAN_LIMIT = 1000  # queued jobs whose samples are counted for the slots-waiting metric


def queue_for(connection: Redis, model: str) -> Queue:
    return Queue(queue_name(model), connection=connection, serializer=JSONSerializer)


def enqueue_edit(connection: Redis, job: EditJob, result_ttl: int, timeout: int) -> Job:
    """Put a validated job on its model's queue; retried once if its worker dies."""
    return queue_for(connection, job.model).enqueue(
        TASK, job=job.model_dump(mode="json"), job_id=job.id, result_ttl=result_ttl,
        failure_ttl=result_ttl, job_timeout=timeout, retry=Retry(max=1),
        description=f"sdedit {job.model} t0={job.t0} samples={job.samples}")


def queue_depth(connection: Redis, model: str) -> int:
    return queue_for(connection, model).count


def fetch(connection: Redis, job_id: str) -> Job | None:
    try:
        return Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except NoSuchJobError:
        return None


def contract_of(job: Job) -> EditJob:
    return EditJob.model_validate(job.kwargs["job"])


def status_of(job: Job) -> str:
    """queued, started, finished, failed or canceled (deferred/scheduled count as queued)."""
    status = job.get_status(refresh=True)
    if status in (JobStatus.STARTED, JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED):
        return str(status.value)
    if status == JobStatus.STOPPED:
        return "canceled"
    return "queued"


def waiting_samples(connection: Redis, model: str, limit: int = WAITING_SCAN_LIMIT) -> int:
    """Samples (engine slots) the first `limit` queued jobs of a model will need."""
    queue = queue_for(connection, model)
    jobs = Job.fetch_many(queue.get_job_ids(0, limit), connection=connection,
                          serializer=JSONSerializer)
    return sum(contract_of(job).samples for job in jobs if job is not None)


def oldest_wait(queue: Queue) -> float | None:
    """Seconds the job at the head of a queue has waited, None if the queue is empty."""
    for job_id in queue.get_job_ids(0, 1):
        job = fetch(queue.connection, job_id)
        if job is not None and job.enqueued_at is not None:
            return (datetime.now(UTC) - job.enqueued_at).total_seconds()
    return None


def position(connection: Redis, job: Job) -> int | None:
    return queue_for(connection, contract_of(job).model).get_job_position(job.id)


def cancel_queued(job: Job) -> bool:
    """Cancel a job that has not started; False if it already left the queue."""
    if job.get_status(refresh=True) not in (JobStatus.QUEUED, JobStatus.DEFERRED,
                                             JobStatus.SCHEDULED):
        return False
    try:
        job.cancel()
    except InvalidJobOperation:
        return False
    return True


def failure_reason(job: Job) -> str | None:
    result = job.latest_result()
    if result is None or not result.exc_string:
        return None
    lines = [line for line in result.exc_string.strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


class Runner(Protocol):
    """The engine side of a BatchWorker (see worker.main.JobRunner)."""

    def room(self, model: str) -> bool: ...

    def overflow_room(self, model: str) -> bool: ...

    def admit(self, job: EditJob) -> None: ...

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


class JobCanceled(Exception):
    pass


class BatchWorker(SimpleWorker):
    """An RQ worker that keeps many jobs in flight through a batching Runner."""

    def __init__(self, models: list[str], runner: Runner, connection: Redis,
                 heartbeat_s: float = 10.0, maintenance_interval: int = 60,
                 max_wait_s: float = float("inf"), **kwargs: Any) -> None:
        super().__init__([queue_for(connection, m) for m in models], connection=connection,
                         serializer=JSONSerializer, maintenance_interval=maintenance_interval,
                         **kwargs)
        self.runner = runner
        self.running: dict[str, Running] = {}
        self.heartbeat_s = heartbeat_s
        self.max_wait_s = max_wait_s
        self.head_checked: dict[str, float] = {}
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
        self._install_signal_handlers()
        self.worked = False
        beats = threading.Thread(target=self._heartbeat_loop, name="heartbeats", daemon=True)
        beats.start()
        try:
            while True:
                try:
                    if not self._iteration(burst):
                        break
                except StopRequested:  # raised by RQ's signal handler while we wait idle
                    break
        finally:
            self.stop_beats.set()
            beats.join()
            self.teardown()
        return self.worked

    def _iteration(self, burst: bool) -> bool:
        """Maintenance, admission and one engine step; False when the worker should stop."""
        if self.should_run_maintenance_tasks:
            self.run_maintenance_tasks()
        if time.monotonic() - self.last_publish >= self.heartbeat_s:
            self.runner.publish()
            self.heartbeat()
            self.last_publish = time.monotonic()
        if self._stop_requested and not self.running:
            return False
        admitted = 0 if self._stop_requested else self._admit(block=not self.running and not burst)
        self.worked |= admitted > 0
        if not self.running:
            return not (burst and admitted == 0)
        self._check_cancel_and_timeouts()
        self._finish(self.runner.step())
        return True

    def _admit(self, block: bool) -> int:
        """Pop jobs while the runner has room for them; block briefly only when idle.

        Queues are served first come first served and never skip their head job. While a
        model's batch is full, its oldest queued job is let in anyway once it has waited
        max_wait_s (the runner then splits each iteration into several forwards), so no job
        waits longer than that for jobs that run long.
        """
        admitted = 0
        for queue in self.queues:
            model = queue.name.split(":", 1)[1]
            while True:
                over_full = not self.runner.room(model)
                if over_full and not self._head_waited_too_long(queue, model):
                    break
                try:
                    result = Queue.dequeue_any([queue], timeout=IDLE_POLL_S if block else None,
                                               connection=self.connection, serializer=self.serializer)
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
                block = False
        return admitted

    def _head_waited_too_long(self, queue: Queue, model: str) -> bool:
        if self.max_wait_s == float("inf") or not self.runner.overflow_room(model):
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
        with self.lock:
            self.running[job.id] = Running(job, queue, execution, time.monotonic())
            metrics.ACTIVE_JOBS.set(len(self.running))
        try:
            self.runner.admit(contract_of(job))
        except Exception as exc:  # bad inputs or an expired upload: this job fails, others go on
            self._finish([(job.id, exc)])

    def _check_cancel_and_timeouts(self) -> None:
        now = time.monotonic()
        for job_id in self.runner.canceled(list(self.running)):
            self.runner.drop(job_id)
            with self.lock:
                self._cancel(self.running.pop(job_id))
        for job_id, run in list(self.running.items()):
            timeout = run.job.timeout
            if timeout and timeout > 0 and now - run.started > timeout:
                self.runner.drop(job_id)
                self._finish([(job_id, TimeoutError(f"job exceeded its timeout of {timeout} s"))])

    def _finish(self, outcomes: list[tuple[str, dict[str, Any] | BaseException]]) -> None:
        with self.lock:
            self._finish_locked(outcomes)

    def _finish_locked(self, outcomes: list[tuple[str, dict[str, Any] | BaseException]]) -> None:
        for job_id, outcome in outcomes:
            run = self.running.pop(job_id, None)
            if run is None:
                continue
            model = contract_of(run.job).model
            metrics.JOB_SECONDS.labels(model).observe(time.monotonic() - run.started)
            if isinstance(outcome, BaseException):
                metrics.JOBS.labels(model, "failed").inc()
                metrics.FAILURES.labels(model, type(outcome).__name__).inc()
                exc_info = (type(outcome), outcome, outcome.__traceback__)
                self.log.warning("Job %s failed: %s", job_id,
                                 "".join(traceback.format_exception_only(outcome)).strip())
                self._finalize_failure(run.job, run.queue, run.execution, exc_info)
            else:
                metrics.JOBS.labels(model, "finished").inc()
                self._finalize_success(run.job, run.queue, run.execution, outcome)
        metrics.ACTIVE_JOBS.set(len(self.running))
        if not self.running:
            self.set_state("idle")

    def _cancel(self, run: Running) -> None:
        with self.connection.pipeline() as pipeline:
            self.cleanup_execution(run.job, pipeline=pipeline, execution=run.execution)
            pipeline.execute()
        with contextlib.suppress(InvalidJobOperation):  # canceled twice: already done
            run.job.cancel()
        metrics.JOBS.labels(contract_of(run.job).model, "canceled").inc()
        self.log.info("Job %s canceled while running", run.job.id)

    def _heartbeat_loop(self) -> None:
        while not self.stop_beats.wait(self.heartbeat_s):
            with self.lock:
                for run in list(self.running.values()):
                    try:
                        self.maintain_heartbeats(run.job, run.execution)
                    except RedisError as exc:  # the main loop will meet the same outage
                        self.log.warning("heartbeat of job %s failed: %s", run.job.id, exc)
