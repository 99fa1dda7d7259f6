"""`sdedit worker`: one long-lived process per accelerator, models loaded once, jobs batched."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import torch
from redis import Redis

from jobs.connection import OUTAGE
from jobs.contract import EditJob
from jobs.queue import JobQueue
from jobs.rules import ModelSpec
from jobs.settings import Settings
from models.loader import load_model, network_dtype
from models.regions import EditPlan
from models.sdedit import Model, sdedit
from worker import metrics
from worker.engine import Engine, RunningEdit
from worker.jobio import ProgressWriter, load_plan, store_results
from worker.priorities import BatchShare
from worker.rq_adapter import BatchWorker

log = logging.getLogger("sdedit.worker")
MODEL_ALIVE_TTL_S = 30


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def warm_up(model: Model) -> None:
    """A one-step edit at batch 1 (encode, forward, decode), so the first edit does not pay for
    lazy initialisation and a model that cannot run fails at start-up, not on a job."""
    guide = torch.full((model.channels, model.resolution, model.resolution), 0.5)
    sdedit(model, guide, t0=1.0, steps=1)


class EditRunner:
    """Connects edits (EditJob contracts) to the engine: inputs in, results and progress out."""

    def __init__(self, engine: Engine, queue: JobQueue, settings: Settings) -> None:
        self.engine = engine
        self.queue = queue
        self.settings = settings
        self.edits: dict[str, EditJob] = {}
        self.plans: dict[str, EditPlan] = {}
        self.not_stepped: dict[str, EditJob] = {}  # admitted, first forward still to come
        self.progress = ProgressWriter(queue, settings.progress_interval_s)
        # Finished edits whose results are not stored yet, and outcomes not yet handed to the
        # worker: both survive a Redis outage (step raises, and the next step goes on from here).
        self.unstored: list[RunningEdit] = []
        self.outcomes: list[tuple[str, dict[str, Any] | BaseException]] = []
        self.share = BatchShare(settings.batch_share)
        self.iteration: dict[str, tuple[bool, bool]] = {}  # model: (contended, batch stepped)

    def room(self, model: str, priority: str = "interactive") -> bool:
        """Room for the largest allowed edit. A batch edit needs free slots; an interactive one
        counts only interactive slots (batch slots sit out while it runs, worker.priorities),
        within the memory bound of overflow_room."""
        if priority == "batch":
            return self.engine.free_slots(model) >= self._largest_edit
        return (self._slots(model, "interactive") + self._largest_edit <= self.engine.max_batch
                and self.overflow_room(model))

    def _running(self, model: str, priority: str) -> list[RunningEdit]:
        return [running for running in self.engine.edits.values() if running.model == model
                and running.id in self.edits and self.edits[running.id].priority == priority]

    def _slots(self, model: str, priority: str) -> int:
        return sum(len(running.slots) for running in self._running(model, priority))

    def _held(self) -> set[str]:
        """The batch edits that sit out the next iteration (worker.priorities)."""
        held: set[str] = set()
        for model in self.engine.models:
            batch = {running.id for running in self._running(model, "batch")}
            interactive = bool(self._running(model, "interactive"))
            stepped = self.share.include_batch(model, interactive, bool(batch))
            self.iteration[model] = (interactive and bool(batch), stepped)
            if not stepped:
                held |= batch
        return held

    def overflow_room(self, model: str) -> bool:
        """Room for one more edit beyond a full batch: at most max_batch extra slots, which the
        engine runs as extra forwards of at most max_batch each (memory stays bounded)."""
        return self.engine.free_slots(model) + self.engine.max_batch >= self._largest_edit

    @property
    def _largest_edit(self) -> int:
        return min(self.settings.max_samples, self.engine.max_batch)

    def admit(self, edit: EditJob) -> None:
        metrics.QUEUE_WAIT_SECONDS.labels(edit.model).observe(
            (datetime.now(UTC) - edit.created_at).total_seconds())
        model = self.engine.models[edit.model]
        plan = load_plan(self.queue, edit, model, self._largest_edit)
        running = self.engine.admit(edit.id, edit.model, plan.guides, plan.masks,
                                    edit.sampling(), edit.samples, edit.seed)
        self.edits[edit.id] = edit
        self.plans[edit.id] = plan
        self.not_stepped[edit.id] = edit
        self.progress.update(edit.id, 0, running.total)

    def step(self) -> list[tuple[str, dict[str, Any] | BaseException]]:
        """One engine iteration; the outcomes of the edits that ended (results stored).

        A Redis outage (ConnectionError) propagates, but loses nothing: finished edits wait in
        `unstored` and outcomes in `outcomes` until a later step succeeds.
        """
        self._store_finished()  # what an outage kept back
        if self.engine.busy:
            self._engine_step()
            self._store_finished()
        outcomes, self.outcomes = self.outcomes, []
        return outcomes

    def _engine_step(self) -> None:
        oom_before = self.engine.oom_events
        try:
            self.unstored += self.engine.step(on_forward=self._observe_forward,
                                              hold=self._held())
        except Exception as exc:  # a failing forward fails the edits that were in it
            log.exception("engine step failed")
            for edit_id in list(self.engine.edits):
                self.drop(edit_id)
                self.outcomes.append((edit_id, exc))
            return
        metrics.OUT_OF_MEMORY.inc(self.engine.oom_events - oom_before)
        now = datetime.now(UTC)
        for edit in self.not_stepped.values():
            metrics.FIRST_STEP_SECONDS.labels(edit.model).observe(
                (now - edit.created_at).total_seconds())
        self.not_stepped.clear()
        for running in self.engine.edits.values():
            self.progress.update(running.id, running.done, running.total)

    def _store_finished(self) -> None:
        while self.unstored:
            running = self.unstored[0]
            edit, plan = self.edits[running.id], self.plans[running.id]
            try:
                summary = store_results(self.queue, edit, plan.finish(running.results))
                self.progress.update(running.id, running.total, running.total)
                outcome: dict[str, Any] | BaseException = summary
            except OUTAGE:
                raise  # kept in unstored: stored once Redis is back
            except Exception as exc:
                outcome = exc
            self.unstored.pop(0)
            self.edits.pop(running.id)
            self.plans.pop(running.id)
            self.outcomes.append((running.id, outcome))

    def _observe_forward(self, model: str, occupancy: int, seconds: float) -> None:
        metrics.FORWARDS.labels(model).inc()
        metrics.BATCH_OCCUPANCY.labels(model).observe(occupancy)
        metrics.STEP_SECONDS.labels(model).observe(seconds)
        contended, batch_stepped = self.iteration.get(model, (False, True))
        self.share.record(model, seconds, contended, batch_stepped)
        if contended and not batch_stepped:
            metrics.BATCH_HELD_ITERATIONS.labels(model).inc()
        for priority in ("interactive", "batch"):
            metrics.SLOTS_RUNNING.labels(model, priority).set(self._slots(model, priority))

    def canceled(self, job_ids: Iterable[str]) -> list[str]:
        return self.queue.canceled(list(job_ids))

    def drop(self, job_id: str) -> None:
        self.engine.cancel(job_id)
        self.unstored = [r for r in self.unstored if r.id != job_id]
        self.edits.pop(job_id, None)
        self.plans.pop(job_id, None)
        self.not_stepped.pop(job_id, None)

    def publish(self) -> None:
        """Publish each served model's spec (the API checks edits against it) and liveness."""
        for name, model in self.engine.models.items():
            spec = ModelSpec(name=name, family=model.sde.family, levels=model.sde.num_levels,
                             resolution=model.resolution, channels=model.channels,
                             max_batch=self.engine.max_batch, text=model.text)
            self.queue.publish(spec, MODEL_ALIVE_TTL_S)
            metrics.JOBS_WAITING.labels(name).set(self.queue.depth(name))
            metrics.SLOTS_WAITING.labels(name).set(self.queue.waiting_samples(name))


def build_engine(settings: Settings) -> Engine:
    device = pick_device(settings.device)
    models = {}
    for name in settings.models:
        start = time.perf_counter()
        model = load_model(settings.model_source(name), device=device,
                           dtype=network_dtype(settings.dtype, device))
        model.name = name
        warm_up(model)
        metrics.MODEL_LOAD_SECONDS.labels(name).set(time.perf_counter() - start)
        metrics.start_at_zero(name)
        models[name] = model
        log.info("loaded %s: %s%s, %d px, %s on %s", name, model.sde.family.upper(),
                 " text-guided latent" if model.text else "", model.resolution,
                 str(model.dtype).removeprefix("torch."), device)
    return Engine(models, max_batch=settings.max_batch)


def run_worker(settings: Settings, connection: Redis, burst: bool = False) -> bool:
    if settings.metrics_port:
        from prometheus_client import start_http_server

        try:
            start_http_server(settings.metrics_port)
        except OSError as exc:  # a busy port must not keep the worker from serving jobs
            log.warning("no metrics endpoint on port %d: %s", settings.metrics_port, exc)
    engine = build_engine(settings)
    runner = EditRunner(engine, JobQueue(connection, settings), settings)
    worker = BatchWorker(settings.models, runner, connection=connection,
                         heartbeat_s=settings.heartbeat_s, maintenance_interval=settings.maintenance_s,
                         max_wait_s=settings.max_wait_s)
    return worker.work(burst=burst)
