"""Webhooks: Standard Webhooks signatures (checked by the `standardwebhooks` package), durable
deliveries retried through a dispatcher restart, SSRF refusals, events of every ending."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from PIL import Image
from standardwebhooks import Webhook, WebhookVerificationError

from jobs.connection import socket_url
from jobs.settings import Settings
from jobs.webhooks import UrlRefused, resolve_webhook_url, signature_header
from tests.conftest import api_client, run_worker

# An answer of the receiver: status, headers, seconds to stall before answering.
Answer = tuple[int, dict[str, str], float]


class Receiver:
    """A real HTTP server on loopback that records every request and answers as scripted:
    script(attempt, event type) -> Answer, attempt counted per webhook-id from 1."""

    def __init__(self, script: Callable[[int, str], Answer] | None = None) -> None:
        self.script = script or (lambda attempt, kind: (200, {}, 0.0))
        self.requests: list[dict] = []
        self.changed = threading.Condition()
        self.release = threading.Event()  # ends stalled answers early
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["content-length"])).decode()
                with receiver.changed:
                    webhook_id = self.headers.get("webhook-id", "")
                    attempt = 1 + sum(r["headers"].get("webhook-id") == webhook_id
                                      for r in receiver.requests)
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers),
                                              "body": body, "at": time.time()})
                    receiver.changed.notify_all()
                kind = json.loads(body).get("type", "") if body.startswith("{") else ""
                status, headers, stall = receiver.script(attempt, kind)
                if stall:
                    receiver.release.wait(stall)
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:  # the dispatcher is gone (killed mid-attempt)
                    pass

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of(self, kind: str) -> list[dict]:
        return [r for r in self.requests if json.loads(r["body"])["type"] == kind]

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        with self.changed:
            assert self.changed.wait_for(predicate, timeout), f"timed out waiting for {what}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (30, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


FAST = {"webhook_allow_hosts": ["127.0.0.1"], "webhook_timeout_s": 1.0,
        "webhook_retry_schedule_s": [1.0, 1.0, 1.0, 1.0], "webhook_jitter": 0.0,
        "dispatcher_poll_s": 0.1, "progress_interval_s": 0.0, "webhook_progress_interval_s": 0.05,
        "heartbeat_s": 1.0}


@pytest.fixture(scope="module")
def service(vp_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("redis"), models=[str(vp_dir)],
                        auth_disabled=True, metrics_port=0, **FAST)
    yield from api_client(settings)


@pytest.fixture()
def receiver():
    receivers: list[Receiver] = []

    def make(script: Callable[[int, str], Answer] | None = None) -> Receiver:
        receivers.append(Receiver(script))
        return receivers[-1]

    yield make
    for r in receivers:
        r.close()


def submit(client, settings, **fields) -> str:
    data = {"model": settings.models[0], "t0": "0.2", "steps": "3", **fields}
    response = client.post("/v1/edits", data=data, files={"image": ("g.png", png(), "image/png")})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def deliveries(client, job_id: str) -> dict[str, dict]:
    response = client.get(f"/v1/edits/{job_id}/deliveries")
    assert response.status_code == 200, response.text
    return {d["type"]: d for d in response.json()["deliveries"]}


def dispatch_until_idle(settings, rounds: int = 50) -> None:
    """An in-process dispatcher: rounds until nothing is due now."""
    from jobs.connection import connect
    from worker.dispatcher import Dispatcher

    dispatcher = Dispatcher(connect(settings), settings)
    try:
        for _ in range(rounds):
            if not dispatcher.run_once():
                return
    finally:
        dispatcher.close()


def verify(secret: str, request: dict) -> dict:
    """The independent implementation's verdict on one received request."""
    return Webhook(secret).verify(request["body"], request["headers"])


def test_signatures_verify_with_the_standardwebhooks_library():
    from jobs.webhooks import new_secret

    old, new = new_secret(), new_secret()
    body, timestamp = '{"type":"edit.finished","data":{"id":"x"}}', int(time.time())
    headers = {"webhook-id": "msg_x_finished", "webhook-timestamp": str(timestamp),
               "webhook-signature": signature_header([new, old], "msg_x_finished", timestamp,
                                                     body)}
    assert Webhook(new).verify(body, headers)["data"]["id"] == "x"
    assert Webhook(old).verify(body, headers)  # rotation: the previous secret still verifies
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(body.replace("x", "y"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


@pytest.mark.parametrize("url", [
    "http://127.0.0.2:9/hook", "http://localhost/hook", "http://10.1.2.3/hook",
    "http://192.168.0.10/hook", "http://172.16.5.4/hook", "http://169.254.169.254/latest/meta-data",
    "http://[::1]/hook", "http://[fd00:ec2::254]/hook", "http://100.100.100.200/hook",
    "http://[::ffff:127.0.0.1]/hook", "http://0.0.0.0/hook"])
def test_urls_that_resolve_to_internal_addresses_are_refused(client, settings, url):
    with pytest.raises(UrlRefused, match="refused"):
        resolve_webhook_url(url, [])
    response = client.post("/v1/edits", data={"model": settings.models[0], "webhook_url": url},
                           files={"image": ("g.png", png(), "image/png")})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"].startswith("webhook_url:")


@pytest.mark.parametrize("url,message", [
    ("ftp://example.com/x", "http:// or https://"), ("http://u:p@example.com/", "credentials"),
    ("http://no-such-host.invalid/", "does not resolve")])
def test_malformed_webhook_urls_are_refused(url, message):
    with pytest.raises(UrlRefused, match=message):
        resolve_webhook_url(url, [])


def test_allowed_hosts_pass_and_public_addresses_pass():
    assert resolve_webhook_url("http://127.0.0.1:8080/x", ["127.0.0.1"]) == ["127.0.0.1"]
    assert resolve_webhook_url("https://93.184.215.14/x", []) == ["93.184.215.14"]


def test_bad_options_are_422(client, settings):
    def post(**fields):
        return client.post("/v1/edits", data={"model": settings.models[0], **fields},
                           files={"image": ("g.png", png(), "image/png")})

    assert "webhook_events" in post(webhook_events="edit.finished").json()["error"]["message"]
    bad = post(webhook_url="http://127.0.0.1/x", webhook_events="batch.completed")
    assert bad.status_code == 422 and "webhook_events" in bad.json()["error"]["message"]
    assert post(priority="urgent").status_code == 422


def test_events_are_delivered_signed_and_survive_a_dispatcher_killed_mid_retry(
        client, settings, runner, receiver, tmp_path):
    """edit.finished: 503, then a stalled attempt during which the dispatcher is killed, then 429
    with Retry-After, then 200 from a new dispatcher. Nothing is lost; every attempt carries the
    same webhook-id, a fresh timestamp and a signature the independent library accepts."""

    def script(attempt: int, kind: str) -> Answer:
        if kind != "edit.finished":
            return 200, {}, 0.0
        return {1: (503, {}, 0.0), 2: (200, {}, 30.0), 3: (429, {"Retry-After": "2"}, 0.0)}.get(
            attempt, (200, {}, 0.0))

    hook = receiver(script)
    job_id = submit(client, settings, webhook_url=f"{hook.url}/hooks?x=1",
                    webhook_events="edit.started,edit.finished", samples="2")
    run_worker(runner, settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDEDIT_")}
    env.update({"SDEDIT_REDIS_URL": socket_url(client.app.state.queue.connection),
                "SDEDIT_WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]', "SDEDIT_WEBHOOK_TIMEOUT_S": "1",
                "SDEDIT_WEBHOOK_RETRY_SCHEDULE_S": "[1, 1, 1, 1]", "SDEDIT_WEBHOOK_JITTER": "0",
                "SDEDIT_DISPATCHER_POLL_S": "0.1"})
    dispatchers = []

    def start_dispatcher() -> subprocess.Popen:
        dispatchers.append(subprocess.Popen([sys.executable, "-m", "cli", "dispatcher"], env=env,
                                            cwd=tmp_path, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL))
        return dispatchers[-1]

    try:
        first = start_dispatcher()
        hook.wait_for(lambda: len(hook.of("edit.finished")) == 2, 30, "the stalled attempt")
        first.send_signal(signal.SIGKILL)  # mid-attempt: its claim must expire and be retried
        first.wait()
        hook.release.set()
        start_dispatcher()
        hook.wait_for(lambda: len(hook.of("edit.finished")) == 4, 60, "the retries")
        time.sleep(0.5)  # the final attempt's record
    finally:
        for process in dispatchers:
            process.kill()
            process.wait()

    secret = client.get("/v1/webhook-secret").json()["secret"]
    finished = hook.of("edit.finished")
    assert len({r["headers"]["webhook-id"] for r in finished}) == 1
    assert finished[0]["headers"]["webhook-id"] == f"msg_{job_id}_finished"
    bodies = [verify(secret, r) for r in finished]
    assert all(b == bodies[0] for b in bodies)
    assert bodies[0]["data"]["id"] == job_id and bodies[0]["data"]["status"] == "finished"
    assert bodies[0]["data"]["links"]["images"] == [f"/v1/edits/{job_id}/images/0",
                                                   f"/v1/edits/{job_id}/images/1"]
    assert all(len(r["body"]) < 1000 for r in finished)  # links, never image bytes
    stamps = [int(r["headers"]["webhook-timestamp"]) for r in finished]
    assert stamps == sorted(stamps) and stamps[-1] > stamps[0]
    assert finished[3]["at"] - finished[2]["at"] >= 1.9  # Retry-After: 2 honoured
    assert finished[0]["path"] == "/hooks?x=1"
    assert [verify(secret, r)["type"] for r in hook.of("edit.started")] == ["edit.started"]

    record = deliveries(client, job_id)
    assert record["edit.started"]["status"] == "delivered"
    done = record["edit.finished"]
    assert done["status"] == "delivered" and done["id"] == f"msg_{job_id}_finished"
    # The stalled attempt died with its dispatcher: three recorded answers.
    assert [a["status_code"] for a in done["attempts"]] == [503, 429, 200]


def test_gone_stops_and_redirects_are_not_followed(client, settings, runner, receiver):
    followed = receiver()
    answers = {"edit.started": (410, {}, 0.0),
               "edit.finished": (302, {"Location": f"{followed.url}/elsewhere"}, 0.0)}
    hook = receiver(lambda attempt, kind: answers[kind])
    job_id = submit(client, settings, webhook_url=hook.url,
                    webhook_events="edit.started,edit.finished")
    run_worker(runner, settings)
    dispatch_until_idle(settings)
    time.sleep(1.5)  # past the first retry delay: nothing more may come
    dispatch_until_idle(settings)
    record = deliveries(client, job_id)
    assert record["edit.started"]["status"] == "gone"
    assert record["edit.finished"]["status"] == "failed"
    assert [a["status_code"] for a in record["edit.finished"]["attempts"]] == [302]
    assert len(hook.requests) == 2 and followed.requests == []


def test_the_schedule_ends_in_failure_and_every_attempt_is_recorded(client, settings, runner,
                                                                   receiver):
    hook = receiver(lambda attempt, kind: (500, {}, 0.0))
    short = settings.model_copy(update={"webhook_retry_schedule_s": [0.2, 0.2]})
    job_id = submit(client, settings, webhook_url=hook.url)
    run_worker(runner, settings)
    for _ in range(20):
        dispatch_until_idle(short)
        if deliveries(client, job_id)["edit.finished"]["status"] != "pending":
            break
        time.sleep(0.1)
    record = deliveries(client, job_id)["edit.finished"]
    assert record["status"] == "failed" and record["next_attempt_at"] is None
    assert [a["status_code"] for a in record["attempts"]] == [500, 500, 500]


def test_the_dispatcher_refuses_an_internal_address_at_send_time(client, settings, runner,
                                                                receiver):
    """Accepted when submitted, internal when sent (e.g. DNS rebinding): never called."""
    hook = receiver()
    job_id = submit(client, settings, webhook_url=hook.url)
    run_worker(runner, settings)
    dispatch_until_idle(settings.model_copy(update={"webhook_allow_hosts": []}))
    record = deliveries(client, job_id)["edit.finished"]
    assert record["status"] == "refused" and "refused" in record["attempts"][0]["error"]
    assert hook.requests == []


def test_progress_events_only_when_asked_and_throttled(client, settings, runner):
    url = "http://127.0.0.1:9/hook"
    asked = submit(client, settings, webhook_url=url, t0="0.4", steps="400",
                   webhook_events="edit.progress,edit.finished")
    default = submit(client, settings, webhook_url=url, t0="0.4", steps="400")
    run_worker(runner, settings)
    progress = client.get(f"/v1/edits/{asked}/deliveries").json()["deliveries"]
    steps = [d for d in progress if d["type"] == "edit.progress"]
    assert len(steps) >= 2 and progress[-1]["type"] == "edit.finished"
    created = [datetime.fromisoformat(d["created_at"]) for d in steps]
    gaps = [(b - a).total_seconds() for a, b in zip(created, created[1:], strict=False)]
    assert min(gaps) >= settings.webhook_progress_interval_s * 0.9
    assert [d["type"] for d in deliveries(client, default).values()] == ["edit.finished"]


def test_canceled_and_failed_edits_report_their_ending(client, settings, runner):
    url = "http://127.0.0.1:9/hook"
    canceled = submit(client, settings, webhook_url=url)
    client.delete(f"/v1/edits/{canceled}")
    failed = submit(client, settings, webhook_url=url)
    client.app.state.queue.connection.delete(f"sdedit:input:{failed}:guide")  # lost input
    run_worker(runner, settings)
    assert list(deliveries(client, canceled)) == ["edit.canceled"]
    assert list(deliveries(client, failed)) == ["edit.failed"]
    messages = client.app.state.queue.webhooks
    body = json.loads(messages.message(f"msg_{failed}_failed").body)
    assert "no longer stored" in body["data"]["error"]


def test_an_abandoned_job_reports_edit_failed(client, settings, vp_dir):
    """A job whose worker is killed (and has no retry left) fails in RQ's maintenance."""
    from jobs.queue import JobQueue, fetch
    from worker.rq_adapter import BatchWorker

    connection = client.app.state.queue.connection
    job_id = submit(client, settings, webhook_url="http://127.0.0.1:9/hook", t0="1.0",
                    steps="1000")
    job = fetch(connection, job_id)
    job.retries_left = 0
    job.save()
    env = {**os.environ, "SDEDIT_REDIS_URL": socket_url(connection),
           "SDEDIT_MODELS": f'["{vp_dir}"]', "SDEDIT_HEARTBEAT_S": "1",
           "SDEDIT_METRICS_PORT": "0", "OMP_NUM_THREADS": "1"}
    worker = subprocess.Popen([sys.executable, "-m", "cli", "worker"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while client.get(f"/v1/edits/{job_id}").json()["progress"]["step"] == 0:
            assert time.monotonic() < deadline, "the worker did not start the job"
            time.sleep(0.2)
    finally:
        worker.kill()
        worker.wait()
    time.sleep(5)  # its heartbeat (3 x 1 s + 1) expires

    class Maintenance:  # clean_registries needs only the queue client of a runner
        queue = JobQueue(connection, settings)

    BatchWorker(settings.models, Maintenance(), connection=connection).clean_registries()
    assert client.get(f"/v1/edits/{job_id}").json()["status"] == "failed"
    assert list(deliveries(client, job_id)) == ["edit.failed"]


def test_rotation_keeps_the_previous_secret_signing_for_a_while(client, settings, runner,
                                                               receiver):
    hook = receiver()
    old = client.get("/v1/webhook-secret").json()
    assert old["secret"].startswith("whsec_") and old["previous_valid_until"] is None
    assert client.get("/v1/webhook-secret").json() == old  # stable until rotated
    new = client.post("/v1/webhook-secret/rotate").json()
    assert new["secret"] != old["secret"] and new["previous_valid_until"] is not None
    submit(client, settings, webhook_url=hook.url)
    run_worker(runner, settings)
    dispatch_until_idle(settings)
    [request] = hook.requests
    assert verify(new["secret"], request)["type"] == "edit.finished"
    assert verify(old["secret"], request)["type"] == "edit.finished"
    assert len(request["headers"]["webhook-signature"].split(" ")) == 2


@pytest.mark.parametrize("running_service", [{"SDEDIT_WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',
                                              "SDEDIT_DISPATCHER_POLL_S": "0.1"}], indirect=True)
def test_sdedit_up_delivers_signed_webhooks(running_service, vp_dir, receiver):
    url, _ = running_service
    hook = receiver()
    response = httpx.post(f"{url}/v1/edits", files={"image": ("g.png", png(), "image/png")},
                          data={"model": Settings(models=[str(vp_dir)]).models[0],
                                "t0": "0.2", "steps": "3",
                                "webhook_url": f"{hook.url}/done"})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    hook.wait_for(lambda: len(hook.requests) == 1, 60, "the webhook")
    secret = httpx.get(f"{url}/v1/webhook-secret").json()["secret"]
    event = verify(secret, hook.requests[0])
    assert event["type"] == "edit.finished" and event["data"]["id"] == job_id
    assert httpx.get(f"{url}{event['data']['links']['images'][0]}").status_code == 200
    assert datetime.fromisoformat(event["timestamp"]) <= datetime.now(UTC)
