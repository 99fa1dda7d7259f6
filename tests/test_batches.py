"""Batches: every line checked first, each request an ordinary edit, results per custom_id,
cancel and expiry, idempotent submission, the CLI and the client over real HTTP."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import pytest
from PIL import Image
from standardwebhooks import Webhook

from cli.main import main as cli_main
from jobs.settings import Settings
from service.client import SDEditClient
from tests.conftest import api_client, run_worker
from tests.test_webhooks import Receiver

KEY, OTHER_KEY = "key-alice", "key-bob"


def png(colour: tuple[int, int, int] = (200, 40, 40), size: int = 16, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (size, size), colour if mode == "RGB" else 255).save(buffer, "PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def service(vp_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("redis"), models=[str(vp_dir)],
                        api_keys=[KEY, OTHER_KEY], max_batch_requests=4, max_batch_bytes=20_000,
                        batch_window_s=2, metrics_port=0)
    yield from api_client(settings, KEY)


def line(settings, custom_id: str, **fields) -> dict:
    return {"custom_id": custom_id, "image": b64(png()), "model": settings.models[0], "t0": 0.2,
            "steps": 3, **fields}


def post(client, requests: list[dict], key: str | None = None, **options):
    headers = {"Idempotency-Key": key} if key else {}
    return client.post("/v1/batches", json={"requests": requests, **options}, headers=headers)


def nothing_queued(client, settings) -> bool:
    queue = client.app.state.queue
    return queue.depth(settings.models[0]) == 0 and not queue.connection.keys("sdedit:batch:*")


@pytest.mark.parametrize("bad,message", [
    ({"t0": 1.5}, "requests[1] (custom_id 'b'): t0: Input should be less than or equal to 1"),
    ({"image": "###"}, "requests[1] (custom_id 'b'): image: not valid base64"),
    ({"image": b64(b"not an image")}, "requests[1] (custom_id 'b'): image: not a recognised"),
    ({"mask": b64(png(size=8, mode="L"))}, "requests[1] (custom_id 'b'): mask: 8x8 does not match"),
    ({"model": "nope"}, "requests[1] (custom_id 'b'): model: unknown model 'nope'"),
    ({"colour": "red"}, "requests[1] (custom_id 'b'): colour: unknown field(s)"),
    ({"priority": "interactive"}, "requests[1] (custom_id 'b'): priority: an option of the whole"),
    ({"custom_id": "a"}, "requests[1].custom_id: duplicate 'a' (also requests[0])"),
    ({"custom_id": ""}, "requests[1].custom_id: a string of 1 to 200"),
])
def test_a_bad_line_rejects_the_whole_batch_naming_it(client, settings, bad, message):
    response = post(client, [line(settings, "a"), {**line(settings, "b"), **bad}])
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"].startswith(message)
    assert nothing_queued(client, settings)


@pytest.mark.parametrize("body,status,message", [
    ({"requests": []}, 422, "requests: a non-empty list"),
    ({"requests": "x"}, 422, "requests: a non-empty list"),
    ({"requests": [{"custom_id": str(k)} for k in range(5)]}, 422, "requests: at most 4 per batch"),
    ({"requests": [{"custom_id": "a"}], "extra": 1}, 422, "extra: unknown field(s)"),
    ({"requests": [{"custom_id": "a", "image": "A" * 30_000}]}, 413, "exceeds the limit"),
    ({"webhook_url": "http://10.0.0.1/"}, 422, "webhook_url:"),
])
def test_limits_and_bad_bodies(client, settings, body, status, message):
    body = {"requests": [line(settings, "a")]} | body
    response = client.post("/v1/batches", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]
    assert nothing_queued(client, settings)


def test_a_batch_runs_as_ordinary_edits_with_results_per_custom_id(client, settings, runner):
    requests = [line(settings, "plain"), line(settings, "masked", mask=b64(png(mode="L"))),
                line(settings, "two", samples=2, seed=5), line(settings, "dropped")]
    accepted = post(client, requests)
    assert accepted.status_code == 202, accepted.text
    batch = accepted.json()
    assert batch["status"] == "queued" and batch["priority"] == "batch"
    ids = {r["custom_id"]: r["id"] for r in batch["requests"]}
    assert list(ids) == ["plain", "masked", "two", "dropped"]

    # Each request is an ordinary edit: its own status, queue position, cancel.
    edit = client.get(f"/v1/edits/{ids['two']}").json()
    assert edit["status"] == "queued" and edit["parameters"]["samples"] == 2
    assert edit["position"] == 2  # within the batch queue of its model
    assert client.delete(f"/v1/edits/{ids['dropped']}").json()["status"] == "canceled"
    status = client.get(f"/v1/batches/{batch['id']}").json()
    assert status["status"] == "queued" and status["in_progress_at"] is None
    assert status["request_counts"] == {"total": 4, "finished": 0, "failed": 0, "canceled": 1}
    partial = client.get(f"/v1/batches/{batch['id']}/results")
    assert partial.headers["content-type"] == "application/x-ndjson"
    assert [json.loads(r)["custom_id"] for r in partial.text.splitlines()] == ["dropped"]

    run_worker(runner, settings)
    status = client.get(f"/v1/batches/{batch['id']}").json()
    assert status["status"] == "completed" and status["ended_at"] is not None
    assert status["in_progress_at"] is not None
    assert status["request_counts"] == {"total": 4, "finished": 3, "failed": 0, "canceled": 1}
    results = [json.loads(r) for r in client.get(f"/v1/batches/{batch['id']}/results").text
               .splitlines()]
    assert [(r["custom_id"], r["id"], r["status"]) for r in results] == [
        ("plain", ids["plain"], "finished"), ("masked", ids["masked"], "finished"),
        ("two", ids["two"], "finished"), ("dropped", ids["dropped"], "canceled")]
    assert results[2]["images"] == [f"/v1/edits/{ids['two']}/images/0",
                                    f"/v1/edits/{ids['two']}/images/1"]
    image = client.get(results[2]["images"][1])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert client.delete(f"/v1/batches/{batch['id']}").status_code == 409


def test_a_failed_request_is_reported_with_its_error(client, settings, runner):
    batch = post(client, [line(settings, "ok"), line(settings, "lost")]).json()
    lost = batch["requests"][1]["id"]
    client.app.state.queue.connection.delete(f"sdedit:input:{lost}:guide")
    run_worker(runner, settings)
    status = client.get(f"/v1/batches/{batch['id']}").json()
    assert status["status"] == "completed"
    assert status["request_counts"] == {"total": 2, "finished": 1, "failed": 1, "canceled": 0}
    failed = json.loads(client.get(f"/v1/batches/{batch['id']}/results").text.splitlines()[1])
    assert failed["status"] == "failed" and "no longer stored" in failed["error"]


def test_cancel_a_batch_cancels_what_has_not_ended(client, settings):
    batch = post(client, [line(settings, c) for c in "abc"], webhook_url="http://127.0.0.1:9/",
                 webhook_events=["batch.canceled"])
    assert batch.status_code == 422  # the receiver's address is refused without the allow list
    batch = post(client, [line(settings, c) for c in "abc"]).json()
    canceled = client.delete(f"/v1/batches/{batch['id']}").json()
    assert canceled["status"] == "canceled" and canceled["cancel_requested_at"] is not None
    assert canceled["request_counts"] == {"total": 3, "finished": 0, "failed": 0, "canceled": 3}
    assert client.app.state.queue.depth(settings.models[0]) == 0
    assert client.delete(f"/v1/batches/{batch['id']}").status_code == 409
    for request in batch["requests"]:
        assert client.get(f"/v1/edits/{request['id']}").json()["status"] == "canceled"


def test_a_batch_past_its_window_expires(client, settings):
    """The sweep (part of `sdedit dispatcher`) cancels what is left and ends it `expired`."""
    from jobs.connection import connect
    from worker.dispatcher import Dispatcher

    # A public address (never called here: only the sweep runs).
    batch = post(client, [line(settings, "a"), line(settings, "b")],
                 webhook_url="http://93.184.215.14/hook").json()
    dispatcher = Dispatcher(connect(settings), settings)
    try:
        dispatcher.queue.expire_batches()
        assert client.get(f"/v1/batches/{batch['id']}").json()["status"] == "queued"
        time.sleep(settings.batch_window_s + 0.2)
        dispatcher.queue.expire_batches()
    finally:
        dispatcher.close()
    status = client.get(f"/v1/batches/{batch['id']}").json()
    assert status["status"] == "expired" and status["expired_at"] is not None
    assert status["request_counts"]["canceled"] == 2
    [message] = client.get(f"/v1/batches/{batch['id']}/deliveries").json()["deliveries"]
    assert message["type"] == "batch.expired" and message["id"] == f"msg_{batch['id']}_expired"


def test_batches_belong_to_their_key(client, settings):
    batch_id = post(client, [line(settings, "a")]).json()["id"]
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    for method, path in (("get", ""), ("get", "/results"), ("delete", ""), ("get", "/deliveries")):
        response = getattr(client, method)(f"/v1/batches/{batch_id}{path}", headers=other)
        assert response.status_code == 404, (method, path)
    assert client.get(f"/v1/batches/{batch_id}").status_code == 200


def test_an_idempotency_key_makes_one_batch(client, settings):
    requests = [line(settings, "a"), line(settings, "b")]
    first = post(client, requests, key="batch-1")
    retry = post(client, json.loads(json.dumps(requests)), key="batch-1")
    assert retry.status_code == 202 and retry.json() == first.json()
    assert retry.headers["idempotent-replayed"] == "true"
    assert client.app.state.queue.depth(settings.models[0]) == 2
    changed = post(client, [line(settings, "a"), line(settings, "b", t0=0.3)], key="batch-1")
    assert changed.status_code == 422
    assert client.app.state.queue.depth(settings.models[0]) == 2


@pytest.mark.parametrize("running_service", [{"SDEDIT_WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',
                                              "SDEDIT_DISPATCHER_POLL_S": "0.1"}], indirect=True)
def test_sdedit_batch_submit_and_the_client_over_http(running_service, vp_dir, tmp_path, capsys):
    url, _ = running_service
    model = Settings(models=[str(vp_dir)]).models[0]  # the name it is served under
    hook = Receiver()
    try:
        folder = tmp_path / "in"
        folder.mkdir()
        for name, colour in (("red", (200, 0, 0)), ("blue", (0, 0, 200))):
            (folder / f"{name}.png").write_bytes(png(colour))
        (folder / "blue.mask.png").write_bytes(png(mode="L"))
        out = tmp_path / "out"
        code = cli_main(["batch", "submit", str(folder), "--model", model, "--t0", "0.2",
                         "--steps", "3", "-n", "2", "--url", url, "--webhook-url", hook.url,
                         "--wait", "-o", str(out)])
        assert code == 0, capsys.readouterr().err
        printed = capsys.readouterr().out.split()
        batch_id = printed[0]
        assert sorted(p.name for p in out.iterdir()) == [
            "blue-0.png", "blue-1.png", "red-0.png", "red-1.png", "results.jsonl"]
        results = [json.loads(r) for r in (out / "results.jsonl").read_text().splitlines()]
        assert [(r["custom_id"], r["status"]) for r in results] == [("blue", "finished"),
                                                                    ("red", "finished")]
        hook.wait_for(lambda: len(hook.requests) == 1, 30, "batch.completed")
        with SDEditClient(url) as client:
            event = Webhook(client.webhook_secret()).verify(hook.requests[0]["body"],
                                                            hook.requests[0]["headers"])
            assert event["type"] == "batch.completed" and event["data"]["id"] == batch_id
            assert event["data"]["request_counts"]["finished"] == 2

            # A JSONL file: base64 and paths; per-line parameters win over the options.
            jsonl = tmp_path / "requests.jsonl"
            jsonl.write_text(json.dumps({"custom_id": "x", "image": "in/red.png", "seed": 9}) + "\n"
                             + json.dumps({"custom_id": "y", "image": b64(png())}) + "\n")
            assert cli_main(["batch", "submit", str(jsonl), "--model", model, "--t0", "0.2",
                             "--steps", "2", "--url", url]) == 0
            jsonl_batch = capsys.readouterr().out.strip()
            state = client.wait_batch(jsonl_batch, poll=0.2, timeout=60, progress=False)
            assert state["status"] == "completed"
            seeds = {r["custom_id"]: client.status(r["id"])["parameters"]["seed"]
                     for r in client.batch_results(jsonl_batch)}
            assert seeds == {"x": 9, "y": 0}
    finally:
        hook.close()
