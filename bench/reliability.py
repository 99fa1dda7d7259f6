"""The reliability suite: faults against real processes, with figures.

Each scenario starts a Debian `redis-server` (AOF on), the API and workers as the README says,
drives them over real HTTP on 127.0.0.1, injects its fault, and checks that every accepted job
ends in exactly one terminal state. It prints its figures and, with --write, puts them in
docs/results/reliability.md. CI runs each at a small size (tests/test_reliability.py); the
full sizes are one command each:

    python -m bench.reliability redis-restart --jobs 200 --write
    python -m bench.reliability killed-workers --jobs 60 --kills 20 --steps 1000 --write
    python -m bench.reliability killed-api --submissions 2000 --write
    python -m bench.reliability burst --submissions 10000 --clients 32 --queue-limit 8000 --write
    python -m bench.reliability fairness --jobs 1000 --write
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.processes import Cluster, metric, png, until
from jobs.settings import model_entry

RESULTS = Path(__file__).parents[1] / "docs" / "results" / "reliability.md"
TERMINAL = ("finished", "failed", "canceled")
FIELDS = {"t0": "0.3", "steps": "8"}


def submit(client: httpx.Client, model: str, seed: int = 0) -> httpx.Response:
    return client.post("/v1/edits", data={"model": model, "seed": str(seed), **FIELDS},
                       files={"image": ("g.png", png(seed))})


def accepted(response: httpx.Response) -> str:
    if response.status_code != 202:
        raise AssertionError(f"submission refused: {response.status_code} {response.text}")
    return response.json()["id"]


def statuses(client: httpx.Client, ids: list[str]) -> dict[str, dict]:
    out = {}
    for job_id in ids:
        response = client.get(f"/v1/edits/{job_id}")
        out[job_id] = response.json() if response.status_code == 200 else {"status": "lost"}
    return out


def wait_terminal(client: httpx.Client, ids: list[str], timeout: float) -> dict[str, dict]:
    """Every job's last status; those not terminal by the deadline count as stuck."""
    deadline = time.monotonic() + timeout
    pending = list(ids)
    final: dict[str, dict] = {}
    while pending and time.monotonic() < deadline:
        for job_id, state in statuses(client, pending).items():
            if state["status"] in TERMINAL or state["status"] == "lost":
                final[job_id] = state
        pending = [i for i in pending if i not in final]
        time.sleep(0.5)
    final.update(statuses(client, pending))
    return final


def outcome_counts(final: dict[str, dict]) -> dict[str, int]:
    counts = {k: 0 for k in ("finished", "failed", "canceled", "lost", "stuck")}
    for state in final.values():
        status = state["status"]
        counts[status if status in counts else "stuck"] += 1
    return counts


def latency_s(state: dict) -> float | None:
    if not state.get("ended_at"):
        return None
    return (datetime.fromisoformat(state["ended_at"]) -
            datetime.fromisoformat(state["created_at"])).total_seconds()


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else (values or [0.0])[0]


# --- scenarios ------------------------------------------------------------------------------

def redis_restart(folder: Path, model: str, jobs: int = 40, down_s: float = 3.0,
                  restarts: int = 1) -> dict[str, Any]:
    """Stop Redis (same AOF) while jobs are queued and running, start it again."""
    name = model_entry(model)[0]  # what clients ask for (a folder entry is named by its base name)
    cluster = Cluster(folder, [model], {"SDEDIT_HEARTBEAT_S": "2", "SDEDIT_MAINTENANCE_S": "5"})
    try:
        cluster.start_redis()
        api, url = cluster.start_api()
        worker, worker_port = cluster.start_worker()
        client = httpx.Client(base_url=url, timeout=30)
        until(lambda: client.get("/readyz").status_code == 200, 120, "a live worker")
        ids = [accepted(submit(client, name, seed)) for seed in range(jobs)]
        during: list[dict[str, Any]] = []
        recoveries = []
        for _ in range(restarts):
            until(lambda: metric(worker_port, "sdedit_worker_active_jobs") > 0, 60,
                  "the worker to run jobs")
            cluster.redis.stop()  # SIGTERM: Redis flushes its AOF and exits
            down = submit(client, name)
            ready = client.get("/readyz")
            during.append({"submit": down.status_code, "retry_after": down.headers.get("retry-after"),
                           "json": down.headers.get("content-type", "").startswith("application/json"),
                           "readyz": ready.status_code})
            time.sleep(down_s)
            restarted = time.monotonic()
            cluster.start_redis()
            until(lambda: client.get("/readyz").status_code == 200, 120, "readiness after restart")
            recoveries.append(time.monotonic() - restarted)
        final = wait_terminal(client, ids, timeout=60 + jobs * 2)
        counts = outcome_counts(final)
        finished_runs = metric(worker_port, "sdedit_worker_jobs_total", {"outcome": "finished"})
        return {"jobs": jobs, "restarts": restarts, "down_s": down_s, **counts,
                "run_twice_to_completion": int(finished_runs) - counts["finished"],
                "worker_alive_throughout": worker.alive, "api_alive_throughout": api.alive,
                "while_down": during, "recover_s_max": round(max(recoveries), 2)}
    finally:
        cluster.close()


def killed_workers(folder: Path, model: str, jobs: int = 30, kills: int = 3, steps: int = 100,
                   seed: int = 0) -> dict[str, Any]:
    """SIGKILL the worker at random moments while it runs batches; the suite restarts it (as
    a supervisor would) and the new worker's maintenance retries what the dead one held."""
    name = model_entry(model)[0]  # what clients ask for (a folder entry is named by its base name)
    rng = random.Random(seed)
    cluster = Cluster(folder, [model], {"SDEDIT_HEARTBEAT_S": "1", "SDEDIT_MAINTENANCE_S": "2"})
    try:
        cluster.start_redis()
        _, url = cluster.start_api()
        cluster.start_worker()  # a steady worker beside the one that is killed
        victim, victim_port = cluster.start_worker()
        client = httpx.Client(base_url=url, timeout=30)
        until(lambda: client.get("/readyz").status_code == 200, 120, "a live worker")
        ids = [accepted(client.post("/v1/edits", files={"image": ("g.png", png(s))}, data={
            "model": name, "seed": str(s), "t0": "1.0", "steps": str(steps)})) for s in range(jobs)]
        done = 0
        killed_running = 0
        for _ in range(kills):
            port = victim_port

            def busy_or_all_done() -> str | None:
                if metric(port, "sdedit_worker_active_jobs") > 0:  # noqa: B023
                    return "busy"
                ended = [st for st in statuses(client, ids).values() if st["status"] in TERMINAL]
                return "done" if len(ended) == len(ids) else None

            if until(busy_or_all_done, 300, "the worker to run a batch") == "done":
                break  # every job ended before all the kills were spent
            time.sleep(rng.uniform(0.0, 1.0))  # a random moment of that batch
            killed_running += int(metric(victim_port, "sdedit_worker_active_jobs"))
            victim.kill()
            done += 1
            victim, victim_port = cluster.start_worker()
        final = wait_terminal(client, ids, timeout=120 + jobs * steps / 10)
        counts = outcome_counts(final)
        # Reasons by kind (RQ's messages carry a timestamp each).
        reasons = dict(Counter(re.sub(r", at .*", "", s.get("error") or "")
                               for s in final.values() if s["status"] == "failed"))
        connection = cluster.connection()
        retried = {i for i in ids if connection.hget(f"rq:job:{i}", "retries_left") == b"0"}
        affected = [latency_s(final[i]) for i in retried if latency_s(final[i])]
        others = [latency_s(final[i]) for i in set(ids) - retried if latency_s(final[i])]
        return {"jobs": jobs, "steps_per_job": steps, "kills": done,
                "jobs_running_when_killed": killed_running, **counts,
                "retried_jobs": len(retried), "failure_reasons": reasons,
                "p95_latency_s_retried": round(p95(affected), 2) if affected else None,
                "p95_latency_s_others": round(p95(others), 2) if others else None,
                "p95_extra_latency_s_per_kill": round((p95(affected) - p95(others)), 2)
                if affected and others else None,
                "dead_worker_noticed_after_s": "3 x SDEDIT_HEARTBEAT_S + 1 (here 4), then the "
                                               "next maintenance (SDEDIT_MAINTENANCE_S, here 2)"}
    finally:
        cluster.close()


def killed_api(folder: Path, model: str, submissions: int = 200, clients: int = 8,
               kill_after: float = 2.0) -> dict[str, Any]:
    """SIGKILL the API during submissions: every job is in Redis with its inputs, or absent."""
    name = model_entry(model)[0]  # what clients ask for (a folder entry is named by its base name)
    cluster = Cluster(folder, [model], {"SDEDIT_MAX_QUEUE_DEPTH": str(10 * submissions)})
    try:
        cluster.start_redis()
        api, url = cluster.start_api()
        acknowledged: list[str] = []
        errors = 0
        lock = threading.Lock()

        def one(seed: int) -> None:
            nonlocal errors
            try:
                with httpx.Client(base_url=url, timeout=10) as client:
                    response = submit(client, name, seed)
                with lock:
                    if response.status_code == 202:
                        acknowledged.append(response.json()["id"])
            except httpx.HTTPError:
                with lock:
                    errors += 1

        killer = threading.Timer(kill_after, api.kill)
        killer.start()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(submissions)))
        killer.join()
        connection = cluster.connection()
        queued = {i.decode() for i in connection.lrange(f"rq:queue:sdedit:{name}", 0, -1)}
        jobs = {k.decode().split(":", 2)[2] for k in connection.scan_iter("rq:job:*")}
        inputs = {k.decode().split(":")[2] for k in connection.scan_iter("sdedit:input:*:guide")}
        return {"submissions": submissions, "acknowledged": len(acknowledged),
                "cut_off": errors, "jobs_in_redis": len(jobs), "queued": len(queued),
                "jobs_without_inputs": len(jobs - inputs), "inputs_without_job": len(inputs - jobs),
                "queued_without_record": len(queued - jobs),
                "acknowledged_but_missing": len(set(acknowledged) - jobs)}
    finally:
        cluster.close()


def burst(folder: Path, model: str, submissions: int = 300, clients: int = 32,
          queue_limit: int = 200) -> dict[str, Any]:
    """Many concurrent clients: accepted per second, 429s beyond the queue limit, all accepted
    jobs end; Redis memory per queued job."""
    name = model_entry(model)[0]  # what clients ask for (a folder entry is named by its base name)
    cluster = Cluster(folder, [model], {"SDEDIT_MAX_QUEUE_DEPTH": str(queue_limit)})
    try:
        cluster.start_redis()
        _, url = cluster.start_api()
        connection = cluster.connection()
        before = int(connection.info("memory")["used_memory"])
        accepted: list[str] = []
        refused: list[httpx.Response] = []
        lock = threading.Lock()
        image = png(1)

        def one(seed: int) -> None:
            with httpx.Client(base_url=url, timeout=30) as client:
                response = client.post("/v1/edits", data={"model": name, **FIELDS},
                                       files={"image": ("g.png", image)})
            with lock:
                (accepted.append(response.json()["id"]) if response.status_code == 202
                 else refused.append(response))

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(submissions)))
        elapsed = time.perf_counter() - start
        queued = connection.llen(f"rq:queue:sdedit:{name}")
        per_job = (int(connection.info("memory")["used_memory"]) - before) / max(queued, 1)
        bad_refusals = [r for r in refused
                        if r.status_code != 429 or not r.headers.get("retry-after")]
        cluster.start_worker(SDEDIT_MAX_BATCH="16")
        client = httpx.Client(base_url=url, timeout=30)
        final = wait_terminal(client, accepted, timeout=120 + len(accepted))
        return {"submissions": submissions, "clients": clients, "queue_limit": queue_limit,
                "accepted": len(accepted), "refused_429": len(refused) - len(bad_refusals),
                "refused_otherwise": len(bad_refusals),
                "accepted_per_s": round(len(accepted) / elapsed, 1),
                "redis_bytes_per_queued_job": round(per_job), **outcome_counts(final)}
    finally:
        cluster.close()


def fairness(folder: Path, model: str, jobs: int = 100, steps: int = 20) -> dict[str, Any]:
    """One key queues `jobs` edits; another key's single edit waits about one edit, not all."""
    name = model_entry(model)[0]
    keys = ["key-backlog", "key-single"]
    cluster = Cluster(folder, [model], {"SDEDIT_AUTH_DISABLED": "false",
                                        "SDEDIT_API_KEYS": json.dumps(keys),
                                        "SDEDIT_MAX_QUEUE_DEPTH": str(jobs + 10)})
    try:
        cluster.start_redis()
        _, url = cluster.start_api()
        cluster.start_worker()
        fields = {"model": name, "t0": "1.0", "steps": str(steps)}

        def client(key: str) -> httpx.Client:
            return httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"})

        backlog, single = client(keys[0]), client(keys[1])
        until(lambda: single.get("/readyz").status_code == 200, 120, "a live worker")
        alone = accepted(single.post("/v1/edits", data=fields, files={"image": ("g.png", png(1))}))
        idle = latency_s(wait_terminal(single, [alone], 120)[alone])
        ids = [accepted(backlog.post("/v1/edits", data=fields,
                                     files={"image": ("g.png", png(s))})) for s in range(jobs)]
        one = accepted(single.post("/v1/edits", data=fields, files={"image": ("g.png", png(2))}))
        position = single.get(f"/v1/edits/{one}").json()["position"]
        queued_then = [i for i, st in statuses(backlog, ids).items() if st["status"] == "queued"]
        final = wait_terminal(single, [one], 600)[one]
        waited = latency_s(final)
        # Backlog jobs that were still queued when it arrived and yet ended before it.
        overtaken = sum(1 for st in statuses(backlog, queued_then).values()
                        if st.get("ended_at") and st["ended_at"] < final["ended_at"])
        for job_id in ids:  # the backlog is not needed any more
            backlog.delete(f"/v1/edits/{job_id}")
        return {"backlog_jobs": jobs, "steps_per_job": steps,
                "single_job_queue_position": position,
                "single_job_latency_idle_s": round(idle, 2),
                "single_job_latency_behind_backlog_s": round(waited, 2),
                "ratio": round(waited / idle, 2),
                "backlog_queued_when_it_arrived": len(queued_then),
                "of_those_ended_before_it": overtaken}
    finally:
        cluster.close()


SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "fairness": fairness,
    "redis-restart": redis_restart, "killed-workers": killed_workers,
    "killed-api": killed_api, "burst": burst}


def write_figures(name: str, figures: dict[str, Any], command: str) -> None:
    """Replace the scenario's section of docs/results/reliability.md."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Reliability figures\n"
    rows = "\n".join(f"| {k} | {v} |" for k, v in figures.items())
    section = (f"## {name}\n\n`{command}` ({datetime.now():%Y-%m-%d})\n\n| figure | value |\n"
               f"|---|---|\n{rows}\n")
    pattern = re.compile(rf"## {re.escape(name)}\n.*?(?=\n## |\Z)", re.S)
    text = pattern.sub(section.rstrip("\n"), text) if pattern.search(text) else \
        text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--model", default="emoji")
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--kills", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--restarts", type=int)
    parser.add_argument("--submissions", type=int)
    parser.add_argument("--clients", type=int)
    parser.add_argument("--queue-limit", type=int, dest="queue_limit")
    parser.add_argument("--kill-after", type=float, dest="kill_after")
    parser.add_argument("--write", action="store_true", help="put the figures in " + str(RESULTS))
    args = parser.parse_args(argv)
    options = {k: v for k, v in vars(args).items()
               if k not in ("scenario", "model", "write") and v is not None}
    with tempfile.TemporaryDirectory() as folder:
        figures = SCENARIOS[args.scenario](Path(folder), args.model, **options)
    for key, value in figures.items():
        print(f"{key:>28}: {value}")
    if args.write:
        command = "python -m bench.reliability " + " ".join(argv or __import__("sys").argv[1:])
        write_figures(args.scenario, figures, command.replace(" --write", ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
