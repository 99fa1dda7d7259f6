"""Real worker processes: cancel a running job, and a worker killed mid-job loses no job."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from jobs.connection import socket_url
from jobs.queue import fetch
from jobs.settings import Settings
from service.app import create_app


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (30, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def until(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture()
def stack(vp_dir: Path, tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "redis", models=[str(vp_dir)], auth_disabled=True,
                        heartbeat_s=1.0, maintenance_s=1)
    workers: list[subprocess.Popen] = []
    with TestClient(create_app(settings)) as client:
        env = {**os.environ, "SDEDIT_REDIS_URL": socket_url(client.app.state.queue.connection),
               "SDEDIT_MODELS": f'["{vp_dir}"]', "SDEDIT_HEARTBEAT_S": "1",
               "SDEDIT_MAINTENANCE_S": "1", "SDEDIT_METRICS_PORT": "0", "OMP_NUM_THREADS": "1"}

        def start_worker() -> subprocess.Popen:
            worker = subprocess.Popen([sys.executable, "-m", "cli", "worker"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            workers.append(worker)
            return worker

        def submit(**fields: str) -> str:
            data = {"model": vp_dir.name, "t0": "1.0", **fields}
            response = client.post("/v1/edits", data=data, files={"image": ("g.png", png())})
            assert response.status_code == 202, response.text
            return response.json()["id"]

        def status(job_id: str) -> dict:
            return client.get(f"/v1/edits/{job_id}").json()

        yield client, start_worker, submit, status
    for worker in workers:
        if worker.poll() is None:
            worker.kill()
        worker.wait()


def test_cancel_a_running_job_frees_the_worker(stack):
    client, start_worker, submit, status = stack
    start_worker()
    long_job = submit()  # every one of the 1000 levels: far longer than the test waits
    until(lambda: status(long_job)["progress"]["step"] > 0, 60, "the job to make progress")
    assert client.delete(f"/v1/edits/{long_job}").json()["status"] == "canceling"
    until(lambda: status(long_job)["status"] == "canceled", 10, "the running job to be canceled")
    step = status(long_job)["progress"]["step"]
    assert step < 1000
    short_job = submit(t0="0.1", steps="3")
    until(lambda: status(short_job)["status"] == "finished", 30, "the next job to finish")
    assert status(long_job)["progress"]["step"] == step  # it really stopped


def test_a_killed_worker_loses_no_job(stack):
    client, start_worker, submit, status = stack
    first = start_worker()
    job_id = submit(t0="0.6", steps="600")
    until(lambda: status(job_id)["progress"]["step"] > 0, 60, "the job to start")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert status(job_id)["status"] == "started"  # as RQ sees it, until the heartbeat expires
    start_worker()  # its maintenance finds the abandoned job and retries it (Retry(max=1))
    until(lambda: status(job_id)["status"] == "finished", 120, "the retried job to finish")
    assert client.get(f"/v1/edits/{job_id}/images/0").status_code == 200


def test_a_job_whose_worker_dies_twice_fails_with_a_reason(stack):
    client, start_worker, submit, status = stack
    job_id = submit(t0="0.6", steps="600")
    runners: set[str] = set()

    def started_by_a_new_worker() -> bool:
        job = fetch(client.app.state.queue.connection, job_id)
        return job.get_status() == "started" and job.worker_name not in runners

    for attempt in range(2):
        worker = start_worker()
        until(started_by_a_new_worker, 60, f"attempt {attempt} to start")
        runners.add(fetch(client.app.state.queue.connection, job_id).worker_name)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    start_worker()
    until(lambda: status(job_id)["status"] == "failed", 60, "the job to fail")
    assert "Abandoned" in (status(job_id)["error"] or "")


def test_rq_suspend_pauses_taking_jobs_and_rq_resume_resumes(stack):
    """`rq suspend` as an operator runs it: the running job finishes, queued ones wait."""
    client, start_worker, submit, status = stack
    url = socket_url(client.app.state.queue.connection)
    rq = Path(sys.executable).with_name("rq")

    def rq_command(name: str) -> None:
        subprocess.run([str(rq), name, "--url", url], check=True, capture_output=True)

    start_worker()
    running = submit(t0="0.4", steps="400")
    until(lambda: status(running)["progress"]["step"] > 0, 60, "the first job to start")
    rq_command("suspend")
    waiting = submit(t0="0.1", steps="3")
    until(lambda: status(running)["status"] == "finished", 60, "the running job to finish")
    time.sleep(2.5)  # several admission rounds of a worker that would otherwise take it at once
    assert status(waiting)["status"] == "queued" and status(waiting)["position"] == 0
    rq_command("resume")
    until(lambda: status(waiting)["status"] == "finished", 30, "the queued job after resume")
