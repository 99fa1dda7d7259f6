"""The service's own cost: accepted jobs per second at the API, and end-to-end overhead.

Starts a real Redis (embedded, or SDEDIT_REDIS_URL), `sdedit api` and `sdedit worker` as
processes, then
1. submits `--submits` jobs over HTTP as fast as one client can (jobs/s accepted by the API);
2. at low load (one job at a time) measures each job's latency from submission to the finished
   state (server timestamps: created_at -> RQ ended_at) and subtracts the pure compute time of
   the same edit run in-process with sdedit(); prints p50 / p95 of that overhead.

    python -m bench.service_overhead --model MODEL_OR_FOLDER [--jobs 30] [--steps 10]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

from jobs.connection import connect, socket_url
from jobs.queue import TERMINAL, edit_of, fetch, rq_queue
from jobs.settings import Settings


def png(size: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (220, 60, 60)).save(buffer, "PNG")
    return buffer.getvalue()


def wait_ready(client: httpx.Client, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the service did not become ready")


def pure_compute(model_name: str, steps: int, t0: float, reps: int) -> float:
    from models.imageio import prepare_guide
    from models.loader import load_model
    from models.sdedit import sdedit

    model = load_model(model_name)
    guide = prepare_guide(Image.open(io.BytesIO(png(model.resolution))), model.resolution)
    sdedit(model, guide, t0=t0, steps=steps)  # warm-up
    times = []
    for seed in range(reps):
        start = time.perf_counter()
        sdedit(model, guide, t0=t0, steps=steps, seed=seed)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="emoji")
    parser.add_argument("--jobs", type=int, default=30, help="low-load jobs for the overhead")
    parser.add_argument("--submits", type=int, default=200, help="jobs for the accept rate")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--t0", type=float, default=0.5)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="sdedit-bench-"))
    settings = Settings(data_dir=data_dir, models=[args.model], auth_disabled=True,
                        max_queue_depth=10**6, port=args.port)
    connection = connect(settings)
    url = os.environ.get("SDEDIT_REDIS_URL") or socket_url(connection)
    env = {**os.environ, "SDEDIT_REDIS_URL": url, "SDEDIT_MODELS": f'["{args.model}"]',
           "SDEDIT_AUTH_DISABLED": "true", "SDEDIT_PORT": str(args.port),
           "SDEDIT_MAX_QUEUE_DEPTH": str(10**6), "SDEDIT_METRICS_PORT": "0",
           "SDEDIT_PROGRESS_INTERVAL_S": "0.25"}
    api = subprocess.Popen([sys.executable, "-m", "cli", "api"], env=env,
                           stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    worker = None
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=30)
        image = png(64)
        fields = {"model": args.model, "t0": str(args.t0), "steps": str(args.steps)}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                client.get("/healthz")
                break
            except httpx.TransportError:
                time.sleep(0.2)
        start = time.perf_counter()
        for _ in range(args.submits):
            response = client.post("/v1/edits", data=fields, files={"image": ("g.png", image)})
            response.raise_for_status()
        accept_rate = args.submits / (time.perf_counter() - start)
        connection.delete(rq_queue(connection, args.model).key)  # drop the backlog

        worker = subprocess.Popen([sys.executable, "-m", "cli", "worker"], env=env,
                                  stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        wait_ready(client)
        compute = pure_compute(args.model, args.steps, args.t0, reps=5)
        overheads, latencies = [], []
        for _ in range(args.jobs + 2):
            response = client.post("/v1/edits", data=fields, files={"image": ("g.png", image)})
            job_id = response.json()["id"]
            while client.get(f"/v1/edits/{job_id}").json()["status"] not in TERMINAL:
                time.sleep(0.05)  # latency comes from server timestamps; polling must not load the CPU
            job = fetch(connection, job_id)
            latency = (job.ended_at - edit_of(job).created_at).total_seconds()
            latencies.append(latency)
            overheads.append(latency - compute)
        overheads, latencies = overheads[2:], latencies[2:]  # the first jobs warm the worker up
    finally:
        for process in (api, worker):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)
        connection.shutdown() if hasattr(connection, "shutdown") else None

    print(f"model={args.model} steps={args.steps} t0={args.t0} redis={'embedded' if 'unix' in url else url}")
    print(f"API accepted jobs/s (one client, sequential): {accept_rate:.0f}")
    print(f"pure compute of one job (sdedit in-process): {compute * 1e3:.1f} ms")
    print(f"job latency p50 / p95: {percentile(latencies, 0.5) * 1e3:.1f} / "
          f"{percentile(latencies, 0.95) * 1e3:.1f} ms")
    print(f"end-to-end overhead p50 / p95: {percentile(overheads, 0.5) * 1e3:.1f} / "
          f"{percentile(overheads, 0.95) * 1e3:.1f} ms (goal p50 <= 50 ms)")


if __name__ == "__main__":
    main()
