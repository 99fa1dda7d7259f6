"""Per-key fairness of the queue order, and the per-key request-rate and jobs-in-flight limits."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from jobs.queue import JobQueue, fetch
from jobs.settings import Settings
from service.app import create_app

KEYS = ("key-a", "key-b", "key-c")


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 20, 30)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture()
def service(vp_dir: Path, tmp_path: Path, request: pytest.FixtureRequest):
    settings = Settings(data_dir=tmp_path / "redis", models=[str(vp_dir)], api_keys=list(KEYS),
                        max_batch=1, max_samples=1, **getattr(request, "param", {}))
    with TestClient(create_app(settings)) as client:
        yield client, settings


def submit(client: TestClient, settings: Settings, key: str):
    return client.post("/v1/edits", headers={"Authorization": f"Bearer {key}"},
                       data={"model": settings.models[0], "t0": "0.1", "steps": "2"},
                       files={"image": ("g.png", png())})


def queue_order(client: TestClient, settings: Settings) -> list[str]:
    connection = client.app.state.queue.connection
    return [i.decode() for i in connection.lrange(f"rq:queue:sdedit:{settings.models[0]}", 0, -1)]


def run_worker(client: TestClient, settings: Settings) -> None:
    from worker.main import EditRunner, build_engine
    from worker.rq_adapter import BatchWorker

    queue = JobQueue(client.app.state.queue.connection, settings)
    runner = EditRunner(build_engine(settings), queue, settings)
    BatchWorker(settings.models, runner, connection=queue.connection).work(burst=True)


def test_one_keys_single_job_waits_behind_one_job_not_behind_the_other_keys_backlog(service):
    client, settings = service
    backlog = [submit(client, settings, "key-a").json()["id"] for _ in range(10)]
    single = submit(client, settings, "key-b").json()["id"]
    order = queue_order(client, settings)
    assert order.index(single) == 1 and len(order) == 11
    assert client.get(f"/v1/edits/{single}",
                      headers={"Authorization": "Bearer key-b"}).json()["position"] == 1
    assert [i for i in order if i != single] == backlog  # the backlog keeps its own order


def test_keys_interleave_and_the_served_order_follows_the_queue(service):
    client, settings = service
    a = [submit(client, settings, "key-a").json()["id"] for _ in range(4)]
    b = [submit(client, settings, "key-b").json()["id"] for _ in range(4)]
    assert queue_order(client, settings) == [x for pair in zip(a, b, strict=True) for x in pair]
    run_worker(client, settings)  # max_batch 1: one job at a time, in queue order
    connection = client.app.state.queue.connection
    started = sorted(a + b, key=lambda i: fetch(connection, i).started_at)
    assert started == [x for pair in zip(a, b, strict=True) for x in pair]


def test_a_new_key_joins_behind_what_is_being_served_after_the_workers_moved_on(service):
    client, settings = service
    first = [submit(client, settings, "key-a").json()["id"] for _ in range(3)]
    run_worker(client, settings)  # the queue's virtual time moves past those three
    later = [submit(client, settings, "key-a").json()["id"] for _ in range(5)]
    newcomer = submit(client, settings, "key-c").json()["id"]
    order = queue_order(client, settings)
    assert order.index(newcomer) == 1 and order[0] == later[0] and not set(first) & set(order)


def test_a_canceled_job_never_costs_a_later_job_its_place(service):
    client, settings = service
    jobs = [submit(client, settings, "key-a").json()["id"] for _ in range(3)]
    # The job key-b's would be placed before is canceled (its tag is now stale).
    client.delete(f"/v1/edits/{jobs[1]}", headers={"Authorization": "Bearer key-a"})
    single = submit(client, settings, "key-b").json()["id"]
    order = queue_order(client, settings)
    assert order == [jobs[0], single, jobs[2]]


@pytest.mark.parametrize("service", [{"rate_limit_per_minute": 3}], indirect=True)
def test_the_request_rate_limit_is_per_key_and_says_when_to_retry(service):
    client, settings = service
    headers = {"Authorization": "Bearer key-a"}
    assert [client.get("/v1/edits/x", headers=headers).status_code for _ in range(3)] == [404] * 3
    limited = client.get("/v1/edits/x", headers=headers)
    assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 60
    assert "rate limit of 3 requests per minute per API key" in limited.json()["error"]["message"]
    assert client.get("/v1/edits/x", headers={"Authorization": "Bearer key-b"}).status_code == 404


@pytest.mark.parametrize("service", [{"max_jobs_per_key": 2}], indirect=True)
def test_the_jobs_in_flight_limit_is_per_key_and_frees_up_as_jobs_end(service):
    client, settings = service
    assert [submit(client, settings, "key-a").status_code for _ in range(2)] == [202, 202]
    refused = submit(client, settings, "key-a")
    assert refused.status_code == 429 and refused.headers["retry-after"]
    assert "limit of 2 jobs waiting or running per API key" in refused.json()["error"]["message"]
    assert submit(client, settings, "key-b").status_code == 202  # another key is not affected
    run_worker(client, settings)
    assert submit(client, settings, "key-a").status_code == 202  # its jobs ended
