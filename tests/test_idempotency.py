"""Idempotency-Key on POST /v1/edits: a retry gets the first response and never a second job."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from jobs.connection import connect, socket_url, stop_embedded
from jobs.queue import JobQueue
from jobs.settings import Settings
from service.app import create_app
from tests.conftest import api_client, free_port

KEY, OTHER_KEY = "key-alice", "key-bob"


def png(colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), colour).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def service(vp_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("redis"), models=[str(vp_dir)],
                        api_keys=[KEY, OTHER_KEY], max_queue_depth=3, idempotency_ttl_s=3600)
    yield from api_client(settings, KEY)


def post(client, settings, key: str | bytes | None = "k-1", image: bytes | None = None, **fields):
    data = {"model": settings.models[0], "t0": "0.3", "steps": "5", **fields}
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.post("/v1/edits", data=data, headers=headers,
                       files={"image": ("guide.png", image or png(), "image/png")})


def depth(client, settings) -> int:
    return client.app.state.queue.depth(settings.models[0])


def test_a_retry_with_the_same_key_gets_the_first_response_and_no_second_job(client, settings):
    first = post(client, settings)
    assert first.status_code == 202, first.text
    retry = post(client, settings)  # a new multipart body (new boundary), the same request
    assert retry.status_code == 202
    assert retry.json() == first.json() and retry.headers["idempotent-replayed"] == "true"
    # The same fields and file contents sent as JSON are the same request too.
    as_json = client.post("/v1/edits", headers={"Idempotency-Key": "k-1"}, json={
        "image": base64.b64encode(png()).decode(), "model": settings.models[0], "t0": 0.3,
        "steps": 5})
    assert as_json.status_code == 202 and as_json.json()["id"] == first.json()["id"]
    assert depth(client, settings) == 1
    assert post(client, settings, key="k-2").json()["id"] != first.json()["id"]
    assert depth(client, settings) == 2


@pytest.mark.parametrize("change", [{"t0": "0.4"}, {"image": png((0, 0, 255))},
                                    {"priority": "batch"}])
def test_the_same_key_with_a_different_request_is_422(client, settings, change):
    assert post(client, settings).status_code == 202
    response = post(client, settings, **change)
    assert response.status_code == 422
    assert "already used with a different request" in response.json()["error"]["message"]
    assert depth(client, settings) == 1


def test_keys_belong_to_their_api_key(client, settings):
    mine = post(client, settings).json()["id"]
    client.headers["Authorization"] = f"Bearer {OTHER_KEY}"
    try:
        theirs = post(client, settings)
    finally:
        client.headers["Authorization"] = f"Bearer {KEY}"
    assert theirs.status_code == 202 and theirs.json()["id"] != mine
    assert depth(client, settings) == 2


def test_a_failed_request_leaves_no_trace_of_its_key(client, settings):
    """A 429 (queue full) created nothing: the retry with the same key is handled afresh."""
    fillers = [post(client, settings, key=None).json()["id"] for _ in range(settings.max_queue_depth)]
    assert post(client, settings).status_code == 429
    client.delete(f"/v1/edits/{fillers[0]}")
    retry = post(client, settings)
    assert retry.status_code == 202 and "idempotent-replayed" not in retry.headers


def test_a_key_is_kept_for_the_configured_time(client, settings):
    post(client, settings)
    connection = client.app.state.queue.connection
    [key] = connection.keys("sdedit:idempotency:*")
    assert settings.idempotency_ttl_s - 60 < connection.ttl(key) <= settings.idempotency_ttl_s


@pytest.mark.parametrize("header", ["", " ", "x" * 256, "caf\u00e9".encode("latin-1")])
def test_malformed_keys_are_400(client, settings, header):
    response = post(client, settings, key=header)
    assert response.status_code == 400 and "Idempotency-Key" in response.json()["error"]["message"]
    assert depth(client, settings) == 0


def test_a_structured_field_string_key_is_the_same_key(client, settings):
    first = post(client, settings, key='"k-9"').json()["id"]
    assert post(client, settings, key="k-9").json()["id"] == first


def test_a_duplicate_while_the_first_is_being_handled_is_409(client, settings):
    """Two API processes on one Redis: the first holds the key while it enqueues."""
    connection = client.app.state.queue.connection
    second_settings = settings.model_copy(update={"redis_url": socket_url(connection)})
    entered, release = threading.Event(), threading.Event()
    with TestClient(create_app(second_settings)) as second:
        second.headers["Authorization"] = f"Bearer {KEY}"
        queue: JobQueue = second.app.state.queue
        submit = queue.submit

        def slow_submit(*args, **kwargs):
            entered.set()
            assert release.wait(10)
            return submit(*args, **kwargs)

        queue.submit = slow_submit
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(post, second, settings)
            assert entered.wait(10)
            duplicate = post(client, settings)
            assert duplicate.status_code == 409
            assert "still being handled" in duplicate.json()["error"]["message"]
            release.set()
            assert first.result().status_code == 202
    assert post(client, settings).json()["id"] == first.result().json()["id"]
    assert depth(client, settings) == 1


def test_concurrent_duplicates_over_http_make_exactly_one_job(vp_dir, tmp_path):
    """Two `sdedit api` processes, one Redis, 16 simultaneous submissions with one key."""
    settings = Settings(data_dir=tmp_path / "redis", models=[str(vp_dir)])
    connection = connect(settings)
    ports = [free_port(), free_port()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDEDIT_")}
    env.update({"SDEDIT_REDIS_URL": socket_url(connection), "SDEDIT_MODELS": f'["{vp_dir}"]',
                "SDEDIT_API_KEYS": f'["{KEY}"]'})
    apis = [subprocess.Popen([sys.executable, "-m", "cli", "api"], cwd=tmp_path,
                             env={**env, "SDEDIT_PORT": str(port)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for port in ports]
    try:
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        deadline = time.monotonic() + 60
        for url in urls:
            while True:
                try:
                    if httpx.get(f"{url}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the APIs did not start"
                    time.sleep(0.2)
        barrier = threading.Barrier(16)
        image = png()

        def duplicate(k: int) -> httpx.Response:
            barrier.wait()
            return httpx.post(f"{urls[k % 2]}/v1/edits", timeout=30,
                              headers={"Authorization": f"Bearer {KEY}",
                                       "Idempotency-Key": "same-key"},
                              data={"model": settings.models[0], "t0": "0.3"},
                              files={"image": ("g.png", image, "image/png")})

        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(duplicate, range(16)))
        assert {r.status_code for r in responses} <= {202, 409}, [r.text for r in responses]
        ids = {r.json()["id"] for r in responses if r.status_code == 202}
        assert len(ids) == 1
        assert JobQueue(connection, settings).depth(settings.models[0]) == 1
    finally:
        for api in apis:
            api.terminate()
            api.wait(timeout=30)
        stop_embedded(connection)
