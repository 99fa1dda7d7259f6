"""`sdedit worker`: one long-lived process per accelerator, models loaded once, jobs batched."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import torch
from redis import Redis

from jobs.contract import EditJob
from jobs.queue import JobQueue
from jobs.rules import ModelSpec
from jobs.settings import Settings
from models.loader import load_model
from models.network import ScoreModel
from models.regions import EditPlan
from worker import metrics
from worker.engine import Engine
from worker.jobio import ProgressWriter, load_plan, store_results
from worker.rq_adapter import BatchWorker

log = logging.getLogger("sdedit.worker")
MODEL_ALIVE_TTL_S = 30


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def warm_up(model: ScoreModel) -> None:
    """One forward at batch 1, so the first edit does not pay for lazy initialisation."""
    x = torch.zeros(1, model.channels, model.resolution, model.resolution, device=model.device)
    with torch.inference_mode():
        model.predict(x, torch.tensor([0]))


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

    def room(self, model: str) -> bool:
        return self.engine.free_slots(model) >= self._largest_edit

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
        oom_before = self.engine.oom_events
        try:
            finished = self.engine.step(on_forward=self._observe_forward)
        except Exception as exc:  # a failing forward fails the edits that were in it
            log.exception("engine step failed")
            outcomes: list[tuple[str, dict[str, Any] | BaseException]] = []
            for edit_id in list(self.engine.edits):
                self.drop(edit_id)
                outcomes.append((edit_id, exc))
            return outcomes
        metrics.OUT_OF_MEMORY.inc(self.engine.oom_events - oom_before)
        now = datetime.now(UTC)
        for edit in self.not_stepped.values():
            metrics.FIRST_STEP_SECONDS.labels(edit.model).observe(
                (now - edit.created_at).total_seconds())
        self.not_stepped.clear()
        for running in self.engine.edits.values():
            self.progress.update(running.id, running.done, running.total)
        outcomes = []
        for running in finished:
            edit = self.edits.pop(running.id)
            plan = self.plans.pop(running.id)
            try:
                summary = store_results(self.queue, edit, plan.finish(running.results))
                self.progress.update(running.id, running.total, running.total)
                outcomes.append((running.id, summary))
            except Exception as exc:
                outcomes.append((running.id, exc))
        return outcomes

    @staticmethod
    def _observe_forward(model: str, occupancy: int, seconds: float) -> None:
        metrics.FORWARDS.labels(model).inc()
        metrics.BATCH_OCCUPANCY.labels(model).observe(occupancy)
        metrics.STEP_SECONDS.labels(model).observe(seconds)

    def canceled(self, job_ids: Iterable[str]) -> list[str]:
        return self.queue.canceled(list(job_ids))

    def drop(self, job_id: str) -> None:
        self.engine.cancel(job_id)
        self.edits.pop(job_id, None)
        self.plans.pop(job_id, None)
        self.not_stepped.pop(job_id, None)

    def publish(self) -> None:
        """Publish each served model's spec (the API checks edits against it) and liveness."""
        for name, model in self.engine.models.items():
            spec = ModelSpec(name=name, family=model.sde.family, levels=model.sde.num_levels,
                             resolution=model.resolution, channels=model.channels,
                             max_batch=self.engine.max_batch)
            self.queue.publish(spec, MODEL_ALIVE_TTL_S)
            metrics.JOBS_WAITING.labels(name).set(self.queue.depth(name))
            metrics.SLOTS_WAITING.labels(name).set(self.queue.waiting_samples(name))


def build_engine(settings: Settings) -> Engine:
    device = pick_device(settings.device)
    models = {}
    for name in settings.models:
        start = time.perf_counter()
        model = load_model(name, device=device)
        warm_up(model)
        metrics.MODEL_LOAD_SECONDS.labels(name).set(time.perf_counter() - start)
        metrics.start_at_zero(name)
        models[name] = model
        log.info("loaded %s: %s, %d px, on %s", name, model.sde.family.upper(), model.resolution,
                 device)
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
