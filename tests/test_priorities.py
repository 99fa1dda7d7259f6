"""Priorities: interactive jobs go ahead of batch jobs at the next iteration; batch jobs keep a
bounded share (never starved); queues, positions and metrics per priority."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from jobs.contract import model_of_queue, priority_of_queue, queue_name
from jobs.queue import fetch
from jobs.settings import Settings
from tests.conftest import api_client
from worker.priorities import BatchShare


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 160, 40)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def service(vp_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("redis"), models=[str(vp_dir)],
                        auth_disabled=True, max_batch=2, max_samples=1, max_queue_depth=10,
                        max_batch_queue_depth=2, progress_interval_s=0.0, metrics_port=0)
    yield from api_client(settings)


def submit(client, settings, **fields) -> str:
    data = {"model": settings.models[0], "t0": "0.2", "steps": "3", **fields}
    response = client.post("/v1/edits", data=data, files={"image": ("g.png", png(), "image/png")})
    assert response.status_code == 202, response.text
    return response.json()["id"]


@pytest.mark.parametrize("model", ["emoji", "google/ddpm-church-256", "/models/my:model"])
def test_each_model_has_an_interactive_and_a_batch_queue(model):
    assert queue_name(model) == f"sdedit:{model}"
    assert queue_name(model, "batch") == f"sdedit:{model}@batch"
    for priority in ("interactive", "batch"):
        assert model_of_queue(queue_name(model, priority)) == model
        assert priority_of_queue(queue_name(model, priority)) == priority


def test_model_names_may_not_contain_the_queue_separator():
    with pytest.raises(ValidationError, match="may not contain '@'"):
        Settings(models=["emoji@batch"])


def test_batch_work_gets_its_share_of_time_while_interactive_work_runs():
    share = BatchShare(0.2)
    assert share.include_batch("m", interactive=False, batch=True)  # alone: runs freely
    spent = {"interactive": 0.0, "batch": 0.0}
    decisions = []
    for _ in range(2000):
        stepped = share.include_batch("m", interactive=True, batch=True)
        decisions.append(stepped)
        seconds = 8.0 if stepped else 1.0  # an iteration with the batch slots costs more
        spent["batch" if stepped else "interactive"] += seconds
        share.record("m", seconds, contended=True, batch_stepped=stepped)
    assert decisions[0] is False  # interactive work goes ahead at once
    assert spent["batch"] / sum(spent.values()) == pytest.approx(0.2, abs=0.01)
    assert share.include_batch("m", interactive=True, batch=False)  # contention over: reset
    assert share.include_batch("m", interactive=True, batch=True) is False


def test_an_interactive_job_goes_ahead_of_a_full_batch_and_batch_work_still_moves(client,
                                                                                 settings):
    """Two long batch jobs fill the engine (max_batch 2); an interactive job submitted while
    they run joins at the next iteration, the batch slots mostly sit out, yet still advance."""
    from worker.main import EditRunner, build_engine
    from worker.rq_adapter import BatchWorker

    queue = client.app.state.queue
    runner = EditRunner(build_engine(settings), queue, settings)
    iterations: list[set[str]] = []  # the edits stepped in each iteration
    engine_step = runner.engine.step

    def spy(on_forward=None, hold=()):
        iterations.append(set(runner.engine.edits) - set(hold))
        return engine_step(on_forward=on_forward, hold=hold)

    runner.engine.step = spy
    batch = [submit(client, settings, priority="batch", t0="1.0", steps="300") for _ in range(2)]
    interactive: list[str] = []

    def submit_when_batch_runs() -> None:
        deadline = time.monotonic() + 60
        while queue.record(*queue.find(batch[1], "public")).progress[0] < 5:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        interactive.append(submit(client, settings, steps="40"))

    thread = threading.Thread(target=submit_when_batch_runs)
    thread.start()
    BatchWorker(settings.models, runner, connection=queue.connection).work(burst=True)
    thread.join()

    jobs = {job_id: fetch(queue.connection, job_id) for job_id in batch + interactive}
    assert all(job.get_status() == "finished" for job in jobs.values())
    fast = jobs[interactive[0]]
    assert all(fast.ended_at < jobs[b].ended_at for b in batch)
    assert (fast.started_at - fast.enqueued_at).total_seconds() < 2  # no wait for a free slot
    contended = [stepped for stepped in iterations if interactive[0] in stepped]
    assert len(contended) == 40
    with_batch = [stepped for stepped in contended if set(batch) <= stepped]
    assert not set(batch) & contended[0]  # the first iteration is the interactive job's alone
    assert 1 <= len(with_batch) <= len(contended) // 2  # a bounded share, never starved


def test_positions_and_queue_limits_are_per_priority(client, settings):
    first = submit(client, settings)
    batch = [submit(client, settings, priority="batch") for _ in range(2)]
    second = submit(client, settings)
    states = {job_id: client.get(f"/v1/edits/{job_id}").json()
              for job_id in [first, second, *batch]}
    assert [states[i]["position"] for i in (first, second)] == [0, 1]
    assert [states[i]["position"] for i in batch] == [0, 1]
    assert [states[i]["priority"] for i in (first, batch[0])] == ["interactive", "batch"]
    full = client.post("/v1/edits", data={"model": settings.models[0], "priority": "batch"},
                       files={"image": ("g.png", png(), "image/png")})
    assert full.status_code == 429 and "batch queue" in full.json()["error"]["message"]
    submit(client, settings)  # the interactive queue still takes jobs
    text = client.get("/metrics").text
    model = settings.models[0]
    assert f'sdedit_queue_depth_by_priority{{model="{model}",priority="batch"}} 2.0' in text
    assert f'sdedit_queue_depth_by_priority{{model="{model}",priority="interactive"}} 3.0' in text
    assert f'sdedit_queue_depth{{model="{model}"}} 5.0' in text


def test_worker_metrics_per_priority(client, settings):
    from prometheus_client import REGISTRY

    from worker.main import EditRunner, build_engine
    from worker.rq_adapter import BatchWorker

    model = settings.models[0]

    def latency_count(priority: str) -> float:
        return REGISTRY.get_sample_value("sdedit_worker_job_latency_seconds_count",
                                         {"model": model, "priority": priority}) or 0.0

    before = {p: latency_count(p) for p in ("interactive", "batch")}
    submit(client, settings)
    submit(client, settings, priority="batch")
    queue = client.app.state.queue
    BatchWorker(settings.models, EditRunner(build_engine(settings), queue, settings),
                connection=queue.connection).work(burst=True)
    assert {p: latency_count(p) - before[p] for p in before} == {"interactive": 1, "batch": 1}
    assert REGISTRY.get_sample_value("sdedit_worker_jobs_waiting_by_priority",
                                     {"model": model, "priority": "batch"}) is not None
    assert REGISTRY.get_sample_value("sdedit_worker_slots_running",
                                     {"model": model, "priority": "interactive"}) == 0
