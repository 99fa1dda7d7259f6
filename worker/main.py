"""`sdedit worker`: one long-lived process per accelerator, models loaded once, jobs batched."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import torch
from redis import Redis

from models.loader import load_model
from models.network import ScoreModel
from models.sdedit import DEFAULT_SAMPLER, SAMPLERS, EditParams
from service.contract import EditJob, cancel_key, model_info_key
from service.settings import Settings
from worker import metrics
from worker.engine import Engine
from worker.jobio import ProgressWriter, load_inputs, store_results
from worker.rq_adapter import BatchWorker, queue_depth, waiting_samples

log = logging.getLogger("sdedit.worker")
MODEL_INFO_TTL_S = 30


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def warm_up(model: ScoreModel) -> None:
    """One forward at batch 1, so the first job does not pay for lazy initialisation."""
    x = torch.zeros(1, model.channels, model.resolution, model.resolution, device=model.device)
    with torch.inference_mode():
        model.predict(x, torch.tensor([0]))


class JobRunner:
    """Connects RQ jobs (EditJob contracts) to the engine: inputs in, results and progress out."""

    def __init__(self, engine: Engine, connection: Redis, settings: Settings) -> None:
        self.engine = engine
        self.connection = connection
        self.settings = settings
        self.contracts: dict[str, EditJob] = {}
        self.not_stepped: dict[str, EditJob] = {}  # admitted, first forward still to come
        self.progress = ProgressWriter(connection, settings.result_ttl_s,
                                       settings.progress_interval_s)

    def room(self, model: str) -> bool:
        return self.engine.free_slots(model) >= self._largest_job

    def overflow_room(self, model: str) -> bool:
        """Room for one more job beyond a full batch: at most max_batch extra slots, which the
        engine runs as extra forwards of at most max_batch each (memory stays bounded)."""
        return self.engine.free_slots(model) + self.engine.max_batch >= self._largest_job

    @property
    def _largest_job(self) -> int:
        return min(self.settings.max_samples, self.engine.max_batch)

    def admit(self, job: EditJob) -> None:
        metrics.QUEUE_WAIT_SECONDS.labels(job.model).observe(
            (datetime.now(UTC) - job.created_at).total_seconds())
        model = self.engine.models[job.model]
        guide, mask = load_inputs(self.connection, job, model)
        params = EditParams(t0=job.t0, steps=job.steps, sampler=job.sampler, eta=job.eta,
                            repeats=job.repeats)
        running = self.engine.admit(job.id, job.model, guide, mask, params, job.samples, job.seed)
        self.contracts[job.id] = job
        self.not_stepped[job.id] = job
        self.progress.update(job.id, 0, running.total)

    def step(self) -> list[tuple[str, dict[str, Any] | BaseException]]:
        oom_before = self.engine.oom_events
        try:
            finished = self.engine.step(on_forward=self._observe_forward)
        except Exception as exc:  # a failing forward fails the jobs that were in it
            log.exception("engine step failed")
            outcomes: list[tuple[str, dict[str, Any] | BaseException]] = []
            for job_id in list(self.engine.jobs):
                self.drop(job_id)
                outcomes.append((job_id, exc))
            return outcomes
        metrics.OUT_OF_MEMORY.inc(self.engine.oom_events - oom_before)
        now = datetime.now(UTC)
        for job in self.not_stepped.values():
            metrics.FIRST_STEP_SECONDS.labels(job.model).observe(
                (now - job.created_at).total_seconds())
        self.not_stepped.clear()
        for job in self.engine.jobs.values():
            self.progress.update(job.id, job.done, job.total)
        outcomes = []
        for job in finished:
            contract = self.contracts.pop(job.id)
            try:
                summary = store_results(self.connection, contract, job.results,
                                        self.settings.result_ttl_s)
                self.progress.update(job.id, job.total, job.total)
                outcomes.append((job.id, summary))
            except Exception as exc:
                outcomes.append((job.id, exc))
        return outcomes

    @staticmethod
    def _observe_forward(model: str, occupancy: int, seconds: float) -> None:
        metrics.FORWARDS.labels(model).inc()
        metrics.BATCH_OCCUPANCY.labels(model).observe(occupancy)
        metrics.STEP_SECONDS.labels(model).observe(seconds)

    def canceled(self, job_ids: Iterable[str]) -> list[str]:
        ids = list(job_ids)
        if not ids:
            return []
        flags = self.connection.mget([cancel_key(i) for i in ids])
        return [i for i, flag in zip(ids, flags, strict=True) if flag is not None]

    def drop(self, job_id: str) -> None:
        self.engine.cancel(job_id)
        self.contracts.pop(job_id, None)
        self.not_stepped.pop(job_id, None)

    def publish(self) -> None:
        """Tell the API which models this worker serves, with their defaults (expires if we die)."""
        for name, model in self.engine.models.items():
            family = model.sde.family
            info = {"name": name, "available": True, "resolution": model.resolution,
                    "channels": model.channels, "family": family,
                    "samplers": list(SAMPLERS[family]), "default_sampler": DEFAULT_SAMPLER[family],
                    "levels": model.sde.num_levels, "max_batch": self.engine.max_batch,
                    "defaults": {"t0": 0.5, "steps": None, "repeats": 1, "eta": 0.0}}
            self.connection.set(model_info_key(name), json.dumps(info), ex=MODEL_INFO_TTL_S)
            metrics.JOBS_WAITING.labels(name).set(queue_depth(self.connection, name))
            metrics.SLOTS_WAITING.labels(name).set(waiting_samples(self.connection, name))


def build_engine(settings: Settings) -> Engine:
    device = pick_device(settings.device)
    models = {}
    for name in settings.models:
        start = time.perf_counter()
        model = load_model(name, device=device)
        warm_up(model)
        metrics.MODEL_LOAD_SECONDS.labels(name).set(time.perf_counter() - start)
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
    runner = JobRunner(engine, connection, settings)
    worker = BatchWorker(settings.models, runner, connection=connection,
                         heartbeat_s=settings.heartbeat_s, maintenance_interval=settings.maintenance_s,
                         max_wait_s=settings.max_wait_s)
    return worker.work(burst=burst)
