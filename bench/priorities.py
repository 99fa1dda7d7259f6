"""Interactive latency under a batch backlog: with a large batch queued, does an interactive job
stay within 1.5x of its latency on an idle worker?

Starts a real Redis (embedded, or SDEDIT_REDIS_URL), `sdedit api` and `sdedit worker` as
processes, then
1. idle: runs `--interactive` interactive jobs one after another and records each one's latency
   (server timestamps: submission -> RQ ended_at);
2. loaded: submits one batch of `--batch-jobs` requests (priority batch) over POST /v1/batches,
   waits until the worker is busy with it, and runs the same interactive jobs again;
prints p50 / p95 of both, their ratio (goal: p50 within 1.5x) and the batch's progress in
sampler steps per second alone and while the interactive jobs ran (batch work is slowed, never
stopped: SDEDIT_BATCH_SHARE).

    python -m bench.priorities [--model emoji] [--batch-jobs 500] [--interactive 20]
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.service_overhead import percentile, png, wait_ready
from jobs.connection import connect, socket_url, stop_embedded
from jobs.contract import progress_key
from jobs.queue import TERMINAL, edit_of, fetch
from jobs.settings import Settings


def interactive_latencies(client: httpx.Client, connection, fields: dict, image: bytes,
                          count: int) -> list[float]:
    """Latency of `count` interactive jobs run one after another (each waits for the last)."""
    latencies = []
    for _ in range(count):
        response = client.post("/v1/edits", data=fields, files={"image": ("g.png", image)})
        response.raise_for_status()
        job_id = response.json()["id"]
        while client.get(f"/v1/edits/{job_id}").json()["status"] not in TERMINAL:
            time.sleep(0.05)  # latency comes from server timestamps; polling stays light
        job = fetch(connection, job_id)
        latencies.append((job.ended_at - edit_of(job).created_at).total_seconds())
    return latencies


def steps_done(connection, job_ids: list[str]) -> int:
    """Sampler steps the batch's requests have done so far."""
    with connection.pipeline(transaction=False) as pipeline:
        for job_id in job_ids:
            pipeline.hget(progress_key(job_id), "done")
        return sum(int(done or 0) for done in pipeline.execute())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="emoji")
    parser.add_argument("--batch-jobs", type=int, default=500)
    parser.add_argument("--interactive", type=int, default=20, help="interactive jobs per phase")
    parser.add_argument("--steps", type=int, default=20, help="of each interactive job")
    parser.add_argument("--batch-steps", type=int, default=50, help="of each batch request")
    parser.add_argument("--t0", type=float, default=0.5)
    parser.add_argument("--max-batch", type=int, default=16, help="worker: slots per forward")
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="sdedit-bench-"))
    settings = Settings(data_dir=data_dir, models=[args.model])
    connection = connect(settings)
    url = os.environ.get("SDEDIT_REDIS_URL") or socket_url(connection)
    env = {**os.environ, "SDEDIT_REDIS_URL": url, "SDEDIT_MODELS": f'["{args.model}"]',
           "SDEDIT_AUTH_DISABLED": "true", "SDEDIT_PORT": str(args.port),
           "SDEDIT_MAX_BATCH": str(args.max_batch), "SDEDIT_METRICS_PORT": "0",
           "SDEDIT_MAX_BATCH_REQUESTS": str(max(1000, args.batch_jobs))}
    processes = [subprocess.Popen([sys.executable, "-m", "cli", part], env=env,
                                  stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
                 for part in ("api", "worker")]
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=120)
        wait_ready(client)
        image = png(64)
        fields = {"model": args.model, "t0": str(args.t0), "steps": str(args.steps)}
        interactive_latencies(client, connection, fields, image, 2)  # warm-up
        idle = interactive_latencies(client, connection, fields, image, args.interactive)

        line = {"image": base64.b64encode(image).decode(), "model": args.model, "t0": args.t0,
                "steps": args.batch_steps}
        response = client.post("/v1/batches", json={"requests": [
            {"custom_id": f"r{k}", "seed": k, **line} for k in range(args.batch_jobs)]})
        response.raise_for_status()
        batch_id = response.json()["id"]
        ids = [r["id"] for r in response.json()["requests"]]
        while client.get(f"/v1/batches/{batch_id}").json()["status"] == "queued":
            time.sleep(0.1)
        time.sleep(1.0)  # the engine fills with batch slots
        alone = [(time.monotonic(), steps_done(connection, ids))]
        time.sleep(3.0)
        alone.append((time.monotonic(), steps_done(connection, ids)))
        loaded = interactive_latencies(client, connection, fields, image, args.interactive)
        shared = [alone[-1], (time.monotonic(), steps_done(connection, ids))]
        left = client.get(f"/v1/batches/{batch_id}").json()["request_counts"]
        client.delete(f"/v1/batches/{batch_id}")
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=60)
        stop_embedded(connection)

    p50, p95 = percentile(loaded, 0.5) / percentile(idle, 0.5), \
        percentile(loaded, 0.95) / percentile(idle, 0.95)
    print(f"model={args.model} interactive: {args.interactive} jobs x {args.steps} steps; batch: "
          f"{args.batch_jobs} requests x {args.batch_steps} steps; max batch {args.max_batch}; "
          f"batch share {settings.batch_share}")
    print(f"idle worker   latency p50 / p95: {percentile(idle, 0.5) * 1e3:.0f} / "
          f"{percentile(idle, 0.95) * 1e3:.0f} ms")
    print(f"batch backlog latency p50 / p95: {percentile(loaded, 0.5) * 1e3:.0f} / "
          f"{percentile(loaded, 0.95) * 1e3:.0f} ms ({left['total'] - left['finished']} batch "
          "requests not yet finished at the end)")
    print(f"ratio p50 {p50:.2f}x, p95 {p95:.2f}x (goal: p50 <= 1.5x) -> "
          f"{'PASS' if p50 <= 1.5 else 'FAIL'}")

    def rate(points: list[tuple[float, int]]) -> float:
        return (points[1][1] - points[0][1]) / (points[1][0] - points[0][0])

    print(f"batch progress: {rate(alone):.0f} sampler steps/s alone, {rate(shared):.0f} while the "
          f"interactive jobs ran ({rate(shared) / rate(alone):.0%}; never starved)")


if __name__ == "__main__":
    main()
