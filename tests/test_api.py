"""The HTTP API against a real (embedded) Redis and a real batching worker with a tiny model."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from jobs.queue import JobQueue
from jobs.settings import Settings
from service.app import create_app
from tests.conftest import api_client, run_worker

KEY, OTHER_KEY = "key-alice", "key-bob"


def png(size: tuple[int, int] = (24, 24), colour: tuple[int, int, int] = (200, 40, 40),
        mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else 255).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def service(vp_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("redis"), models=[str(vp_dir)],
                        api_keys=[KEY, OTHER_KEY], max_samples=4, max_batch=8,
                        max_upload_bytes=200_000, max_pixels=1000 * 1000, max_queue_depth=5)
    yield from api_client(settings, KEY)



def submit(client, settings, **fields):
    files = {"image": ("guide.png", fields.pop("image", png()), "image/png")}
    if "mask" in fields:
        files["mask"] = ("mask.png", fields.pop("mask"), "image/png")
    data = {"model": settings.models[0], "t0": "0.3", "steps": "5", **fields}
    return client.post("/v1/edits", data=data, files=files)


def test_submit_run_and_fetch_results(client, settings, runner):
    response = submit(client, settings, samples="2", seed="4")
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    queued = client.get(f"/v1/edits/{job_id}").json()
    assert queued["status"] == "queued" and queued["position"] == 0
    run_worker(runner, settings)
    done = client.get(f"/v1/edits/{job_id}").json()
    assert done["status"] == "finished"
    assert done["progress"] == {"step": 5, "total": 5}
    assert done["links"]["images"] == [f"/v1/edits/{job_id}/images/0",
                                       f"/v1/edits/{job_id}/images/1"]
    image = client.get(f"/v1/edits/{job_id}/images/1")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(image.content)) as result:
        assert result.size == (16, 16) and result.mode == "RGB"
    assert client.get(f"/v1/edits/{job_id}/images/2").status_code == 404


def test_output_size_input_returns_a_whole_image_edit_at_the_input_size(client, settings, runner):
    job_id = submit(client, settings, output_size="input").json()["id"]
    run_worker(runner, settings)
    with Image.open(io.BytesIO(client.get(f"/v1/edits/{job_id}/images/0").content)) as result:
        assert result.size == (24, 24)


def test_region_masked_without_a_mask_is_refused(client, settings):
    response = submit(client, settings, region="masked")
    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith("region: 'masked' edits the regions")


def test_a_mask_drawn_on_an_exif_rotated_photo_matches_it_as_displayed(client, settings, runner):
    """A 30x20 JPEG whose EXIF says 'rotate 90': shown 20x30, and the mask is drawn at 20x30."""
    photo = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (30, 20), (10, 200, 90)).save(photo, "JPEG", exif=exif)
    mask = Image.new("L", (20, 30), 0)
    mask.paste(255, (5, 5, 12, 14))
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    response = submit(client, settings, image=photo.getvalue(), mask=buffer.getvalue())
    assert response.status_code == 202, response.text
    run_worker(runner, settings)
    job_id = response.json()["id"]
    assert client.get(f"/v1/edits/{job_id}").json()["status"] == "finished"
    with Image.open(io.BytesIO(client.get(f"/v1/edits/{job_id}/images/0").content)) as result:
        assert result.size == (20, 30)


def test_json_submission_with_mask_and_webp_output(client, settings, runner):
    mask = png(mode="L")
    body = {"image": base64.b64encode(png()).decode(), "mask": base64.b64encode(mask).decode(),
            "model": settings.models[0], "t0": 0.2, "steps": 4, "output_format": "webp"}
    response = client.post("/v1/edits", json=body)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    run_worker(runner, settings)
    image = client.get(f"/v1/edits/{job_id}/images/0")
    assert image.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(image.content)).format == "WEBP"


@pytest.mark.parametrize("change,status,message", [
    ({"image": b"not an image"}, 415, "image: not a recognised image"),
    ({"image": b"x" * 200_001}, 413, "exceeds the limit"),
    ({"image": png((2000, 2000))}, 413, "pixels exceeds the limit"),
    ({"mask": png((10, 10), mode="L")}, 422, "mask: 10x10 does not match the image's 24x24"),
    ({"t0": "1.5"}, 422, "t0: Input should be less than or equal to 1"),
    ({"t0": "abc"}, 422, "t0"),
    ({"steps": "0"}, 422, "steps"),
    ({"samples": "5"}, 422, "samples: at most 4 per job"),
    ({"sampler": "euler"}, 422, "sampler"),
    ({"model": "nope"}, 404, "unknown model 'nope'"),
    ({"colour": "red"}, 422, "colour: unknown field(s)"),
])
def test_bad_inputs_get_4xx_json_naming_the_problem(client, settings, change, status, message):
    response = submit(client, settings, **change)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and message in error["message"]


@pytest.mark.parametrize("change,message", [
    ({"sampler": "pc"}, "sampler: 'pc' does not apply to a VP model; choose one of ancestral, ddim"),
    ({"t0": "0.0004", "steps": ""}, "t0: 0.0004 rounds to zero noise levels for a model with 1000"),
    ({"t0": "0.01", "steps": "11"}, "steps: at most 10 for t0=0.01 on this model"),
])
def test_what_the_worker_would_reject_the_api_rejects_first(client, settings, runner, change,
                                                           message):
    runner.publish()  # the model's spec, as a live worker publishes it
    response = submit(client, settings, **change)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"].startswith(message)
    # The same parameters reach a worker only through the queue; nothing was queued.
    assert client.get("/metrics").text.count("sdedit_queue_depth{") == 1
    assert client.app.state.queue.depth(settings.models[0]) == 0


def test_the_model_spec_outlives_its_workers(client, settings, runner):
    """A queued edit for a model whose workers are all down is still checked by its rules."""
    runner.publish()
    client.app.state.queue.connection.delete(f"sdedit:model:{settings.models[0]}:alive")
    assert client.get("/readyz").status_code == 503
    assert client.get("/v1/models").json()["models"][0]["available"] is False
    assert submit(client, settings, sampler="pc").status_code == 422
    assert submit(client, settings, sampler="ddim").status_code == 202


def test_bad_bodies(client, settings):
    assert client.post("/v1/edits", content=b"x", headers={"content-type": "text/plain"}
                       ).status_code == 415
    bad_json = client.post("/v1/edits", content=b"{", headers={"content-type": "application/json"})
    assert bad_json.status_code == 422 and "not valid JSON" in bad_json.json()["error"]["message"]
    bad_b64 = client.post("/v1/edits", json={"image": "###", "model": settings.models[0]})
    assert bad_b64.status_code == 422 and "base64" in bad_b64.json()["error"]["message"]
    no_image = client.post("/v1/edits", data={"t0": "0.5"}, files={"other": ("a", b"b")})
    assert no_image.status_code == 422


def test_unknown_routes_and_oversized_bodies_get_json_errors(client, settings):
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["status"] == 404
    wrong_method = client.put("/v1/edits")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    huge = client.post("/v1/edits", content=b"{}", headers={
        "content-type": "application/json", "content-length": str(10**9)})
    assert huge.status_code == 413 and "exceeds the limit" in huge.json()["error"]["message"]


def test_full_queue_answers_429_with_retry_after(client, settings):
    for _ in range(settings.max_queue_depth):
        assert submit(client, settings).status_code == 202
    response = submit(client, settings)
    assert response.status_code == 429
    assert response.headers["retry-after"] == str(settings.retry_after_s)


def test_api_keys_and_job_isolation(client, settings):
    job_id = submit(client, settings).json()["id"]
    assert client.get(f"/v1/edits/{job_id}", headers={"Authorization": ""}).status_code == 401
    wrong = client.get(f"/v1/edits/{job_id}", headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "unknown API key"
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    assert client.get(f"/v1/edits/{job_id}", headers=other).status_code == 404
    assert client.delete(f"/v1/edits/{job_id}", headers=other).status_code == 404
    assert client.get(f"/v1/edits/{job_id}/images/0", headers=other).status_code == 404


def test_cancel_a_queued_job(client, settings, runner):
    job_id = submit(client, settings).json()["id"]
    assert client.delete(f"/v1/edits/{job_id}").json()["status"] == "canceled"
    run_worker(runner, settings)
    assert client.get(f"/v1/edits/{job_id}").json()["status"] == "canceled"
    assert client.delete(f"/v1/edits/{job_id}").status_code == 409


def test_models_and_readiness_follow_the_workers(client, settings, runner):
    assert client.get("/readyz").status_code == 503
    assert client.get("/readyz/api").json() == {"status": "ready"}  # no worker needed
    assert client.get("/v1/models").json()["models"][0]["available"] is False
    runner.publish()
    assert client.get("/readyz").json() == {"status": "ready"}
    info = client.get("/v1/models").json()["models"][0]
    assert info["family"] == "vp" and info["resolution"] == 16 and info["default_sampler"] == "ancestral"
    assert info["available"] is True and info["levels"] == 1000
    assert info["samplers"] == ["ancestral", "ddim"] and info["defaults"]["t0"] == 0.5


def test_each_models_counters_are_born_at_zero():
    """So rate() and increase() see the first accepted job (a series born at 1 loses it)."""
    from prometheus_client import generate_latest

    from service.metrics import ApiMetrics

    text = generate_latest(ApiMetrics(["a", "b"]).registry).decode()
    for model in ("a", "b"):
        assert f'sdedit_api_jobs_accepted_total{{model="{model}"}} 0.0' in text


def test_metrics_count_requests_and_queue_depth(client, settings):
    submit(client, settings)
    text = client.get("/metrics").text
    assert 'sdedit_api_requests_total{method="POST",route="/v1/edits",status="202"}' in text
    assert "sdedit_queue_depth" in text and "sdedit_api_request_seconds_bucket" in text


def test_worker_metrics_record_jobs_batches_and_latency(client, settings, runner):
    from prometheus_client import REGISTRY, generate_latest

    submit(client, settings, samples="3")
    run_worker(runner, settings)
    runner.publish()
    text = generate_latest(REGISTRY).decode()
    model = settings.models[0]
    assert f'sdedit_worker_jobs_total{{model="{model}",outcome="finished"}}' in text
    assert f'sdedit_worker_batch_occupancy_bucket{{le="4.0",model="{model}"}}' in text
    for name in ("step_seconds", "job_seconds", "queue_wait_seconds", "model_load_seconds",
                 "forwards_total", "jobs_waiting", "time_to_first_step_seconds_count"):
        assert f"sdedit_worker_{name}" in text


def test_slots_waiting_counts_the_samples_of_queued_jobs(client, settings, runner):
    from prometheus_client import REGISTRY

    submit(client, settings, samples="3")
    submit(client, settings, samples="2")
    runner.publish()
    model = settings.models[0]
    assert REGISTRY.get_sample_value("sdedit_worker_slots_waiting", {"model": model}) == 5
    assert REGISTRY.get_sample_value("sdedit_worker_jobs_waiting", {"model": model}) == 2


@pytest.mark.parametrize("max_wait_s", [0.2, float("inf")])
def test_a_queued_job_waits_at_most_max_wait_s_for_a_full_batch(client, settings, max_wait_s):
    from prometheus_client import REGISTRY

    from jobs.queue import fetch
    from worker.main import EditRunner, build_engine
    from worker.rq_adapter import BatchWorker

    small = settings.model_copy(update={"max_batch": 2, "max_samples": 2,
                                        "max_wait_s": max_wait_s})
    runner = EditRunner(build_engine(small), JobQueue(client.app.state.queue.connection, small),
                        small)
    model = settings.models[0]
    admissions = REGISTRY.get_sample_value("sdedit_worker_wait_bound_admissions_total",
                                           {"model": model}) or 0
    long = submit(client, settings, samples="2", t0="1.0", steps="1000").json()["id"]
    short = submit(client, settings, samples="1").json()["id"]
    connection = runner.queue.connection
    BatchWorker(small.models, runner, connection=connection,
                max_wait_s=small.max_wait_s).work(burst=True)
    long_job, short_job = fetch(connection, long), fetch(connection, short)
    assert long_job.get_status() == short_job.get_status() == "finished"
    bounded = max_wait_s < float("inf")
    # Bounded: the short job joins the full batch mid-way and is done long before the long one.
    assert (short_job.ended_at < long_job.ended_at) == bounded
    assert (short_job.started_at - short_job.enqueued_at).total_seconds() >= 0.2
    assert REGISTRY.get_sample_value("sdedit_worker_wait_bound_admissions_total",
                                     {"model": model}) == admissions + bounded


def test_rq_registries_show_the_truth(client, settings, runner):
    from rq.registry import (
        CanceledJobRegistry,
        FailedJobRegistry,
        FinishedJobRegistry,
        StartedJobRegistry,
    )

    from jobs.queue import rq_queue

    connection = client.app.state.queue.connection
    done = submit(client, settings).json()["id"]
    canceled = submit(client, settings).json()["id"]
    client.delete(f"/v1/edits/{canceled}")
    connection.delete(f"sdedit:input:{submit(client, settings).json()['id']}:guide")  # lost input
    run_worker(runner, settings)
    queue = rq_queue(connection, settings.models[0])
    assert FinishedJobRegistry(queue=queue).get_job_ids() == [done]
    assert CanceledJobRegistry(queue=queue).get_job_ids() == [canceled]
    failed = FailedJobRegistry(queue=queue).get_job_ids()
    assert len(failed) == 1
    assert StartedJobRegistry(queue=queue).get_job_ids() == [] and queue.count == 0
    error = client.get(f"/v1/edits/{failed[0]}").json()["error"]
    assert "no longer stored" in error


def test_jobs_travel_as_json_not_pickle(client, settings):
    import json
    import zlib

    job_id = submit(client, settings).json()["id"]
    raw = client.app.state.queue.connection.hget(f"rq:job:{job_id}", "data")
    payload = json.loads(zlib.decompress(raw))
    assert payload[0] == "worker.tasks.run_edit" and payload[3]["job"]["id"] == job_id


def test_a_job_over_its_timeout_fails_with_the_reason(client, settings, runner):
    from datetime import UTC, datetime

    from jobs.contract import EditJob
    from jobs.queue import failure_reason, fetch, state_of

    queue = JobQueue(client.app.state.queue.connection, settings.model_copy(
        update={"job_timeout_s": 1}))
    edit = EditJob(id="slow", owner="x", created_at=datetime.now(UTC), width=24, height=24,
                   model=settings.models[0], t0=1.0)  # 1000 levels: far more than a second
    queue.submit(edit, png(), None)
    run_worker(runner, settings)
    job = fetch(queue.connection, "slow")
    assert state_of(job) == "failed"
    assert "exceeded its timeout of 1 s" in failure_reason(job)


def test_redis_down_is_503(settings, tmp_path):
    down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down)) as client:
        client.headers["Authorization"] = f"Bearer {KEY}"
        response = submit(client, down)
        ready = client.get("/readyz/api")
    assert response.status_code == 503 and "Redis" in response.json()["error"]["message"]
    assert ready.status_code == 503 and ready.headers["retry-after"]


def test_openapi_documents_both_submission_forms_and_errors(client):
    spec = client.get("/openapi.json").json()
    submit_op = spec["paths"]["/v1/edits"]["post"]
    content = submit_op["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(content)
    assert "example" in content["application/json"]
    assert {"202", "413", "415", "422", "429", "503"} <= set(submit_op["responses"])
    assert "example" in spec["components"]["schemas"]["EditStatus"]


@pytest.mark.parametrize("job_id", ["%C3%88%C3%A9%22%C3%9AG%C3%96", "%F0%B2%93%81", "a%00b",
                                    "%0A", "x" * 300])
@pytest.mark.parametrize("method,suffix", [("GET", ""), ("GET", "/images/0"), ("DELETE", "")])
def test_ids_that_rq_refuses_are_unknown_jobs_not_500s(client, job_id, method, suffix):
    """Found by schemathesis: RQ raises ValueError for ids outside [A-Za-z0-9_-]."""
    response = client.request(method, f"/v1/edits/{job_id}{suffix}")
    assert response.status_code == 404, response.text
    assert response.json()["error"]["status"] == 404
