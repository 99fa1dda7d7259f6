"""Accepted submissions per second through the real API, and the share of the machine it used.

Starts a Debian redis-server and `sdedit api` (SDEDIT_API_WORKERS processes, no access log), as
a deployment would, and a load generator in a process of its own: `clients` concurrent HTTP
clients POST /v1/edits (multipart, a 24x24 PNG, t0 and steps) for `--seconds` each. The model's
spec is published as a worker would, so every submission goes through the full rule checks;
no worker runs, so the jobs wait in the queue (its limit is raised out of the way). Prints
accepted jobs/s, latency p50/p95 and the CPU the API, Redis and the load generator used (as a
share of all cores).

    python -m bench.submit_rate --clients 1 8 32 --seconds 10 --api-workers 1 2
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from bench.processes import Cluster, png
from jobs.queue import JobQueue
from jobs.rules import ModelSpec
from jobs.settings import Settings


def generate(url: str, clients: int, seconds: float, results: multiprocessing.Queue) -> None:
    """The load generator's process: `clients` concurrent submitters for `seconds`."""
    image = png(3, size=24)

    async def client(deadline: float, latencies: list[float], codes: list[int]) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                response = await http.post("/v1/edits", data={"t0": "0.5", "steps": "10"},
                                            files={"image": ("g.png", image)})
                latencies.append(time.perf_counter() - start)
                codes.append(response.status_code)

    async def main() -> None:
        latencies: list[float] = []
        codes: list[int] = []
        deadline = time.perf_counter() + seconds
        start = time.perf_counter()
        await asyncio.gather(*(client(deadline, latencies, codes) for _ in range(clients)))
        results.put({"elapsed": time.perf_counter() - start, "latencies": latencies,
                     "accepted": codes.count(202), "other": len(codes) - codes.count(202)})

    asyncio.run(main())


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            for p in [process, *process.children(recursive=True)]:
                times = p.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def measure(url: str, clients: int, seconds: float, api: psutil.Process,
            redis: psutil.Process) -> dict[str, float]:
    results: multiprocessing.Queue = multiprocessing.Queue()
    load = multiprocessing.Process(target=generate, args=(url, clients, seconds, results))
    api_before, redis_before = cpu_seconds([api]), cpu_seconds([redis])
    wall = time.perf_counter()
    load.start()
    loader = psutil.Process(load.pid)
    load_cpu = 0.0
    while load.is_alive():
        with_children = cpu_seconds([loader])
        load_cpu = max(load_cpu, with_children)
        time.sleep(0.2)
    result = results.get()
    load.join()
    wall = time.perf_counter() - wall
    cores = os.cpu_count() or 1
    latencies = sorted(result["latencies"])
    return {"clients": clients, "accepted_per_s": result["accepted"] / result["elapsed"],
            "refused": result["other"],
            "p50_ms": 1e3 * statistics.median(latencies),
            "p95_ms": 1e3 * latencies[int(0.95 * (len(latencies) - 1))],
            "api_cpu": (cpu_seconds([api]) - api_before) / wall / cores,
            "redis_cpu": (cpu_seconds([redis]) - redis_before) / wall / cores,
            "load_cpu": load_cpu / wall / cores}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--api-workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} cores; load generator in its own process; shares are of all cores")
    print("api workers | clients | accepted/s | p50 ms | p95 ms | API cpu | Redis cpu | load cpu")
    for workers in args.api_workers:
        with tempfile.TemporaryDirectory() as folder:
            cluster = Cluster(Path(folder), ["emoji"],
                              {"SDEDIT_MAX_QUEUE_DEPTH": "10000000", "SDEDIT_ACCESS_LOG": "false",
                               "SDEDIT_API_WORKERS": str(workers)})
            try:
                cluster.start_redis()
                settings = Settings(redis_url=cluster.redis_url, models=["emoji"])
                JobQueue(cluster.connection(), settings).publish(
                    ModelSpec(name="emoji", family="vp", levels=1000, resolution=32,
                              channels=3, max_batch=16), alive_ttl_s=3600)
                api, url = cluster.start_api()
                time.sleep(1.0 if workers > 1 else 0.2)  # every uvicorn worker up
                measure(url, 4, 2.0, psutil.Process(api.popen.pid),
                        psutil.Process(cluster.redis.popen.pid))  # warm-up, not reported
                for clients in args.clients:
                    r = measure(url, clients, args.seconds, psutil.Process(api.popen.pid),
                                psutil.Process(cluster.redis.popen.pid))
                    print(f"{workers:>11} | {clients:>7} | {r['accepted_per_s']:>10.0f} | "
                          f"{r['p50_ms']:>6.1f} | {r['p95_ms']:>6.1f} | {r['api_cpu']:>7.0%} | "
                          f"{r['redis_cpu']:>9.0%} | {r['load_cpu']:>8.0%}", flush=True)
            finally:
                cluster.close()


if __name__ == "__main__":
    main()
