"""docker-compose.yml's topology without containers: a real redis-server with AOF and a password,
two API replicas and two workers as separate processes, started with the commands and settings
that `docker-compose --profile cpu config` renders (only addresses, ports, the model and the
recovery periods differ), all over TCP on 127.0.0.1, and a real Prometheus scraping them with
deploy/prometheus/prometheus.yml's jobs.

A few dozen jobs; one worker is SIGKILLed while it runs a batch and restarted (compose's
`restart: unless-stopped`): every job must end finished. Then every query of the Grafana
dashboard runs against Prometheus, every metric it names must be in the live expositions, and
the Kubernetes worker's preStop hook drains a busy worker without losing or retrying a job.

Needs Debian's redis-server, prometheus and docker-compose (.ci/run installs them).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from PIL import Image
from test_deploy_config import (
    DEPLOY,
    METRIC,
    dashboard_panels,
    need,
    rendered_compose,
)

from tests.conftest import free_port

JOBS = 32
# What the test changes in the rendered compose settings, and why: addresses and ports (one
# host instead of a network of containers), the tiny test checkpoint instead of the bundled
# model, and short recovery periods so that a killed worker's jobs come back in seconds.
OVERRIDDEN = {"SDEDIT_REDIS_URL", "SDEDIT_HOST", "SDEDIT_PORT", "SDEDIT_METRICS_PORT",
              "SDEDIT_MODELS", "SDEDIT_HEARTBEAT_S", "SDEDIT_MAINTENANCE_S"}
HEALTHCHECK = DEPLOY / "docker" / "healthcheck.py"


def until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError, redis.exceptions.ConnectionError):
            value = predicate()
            if value:
                return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def png(seed: int) -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", (16, 16), tuple(rng.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def samples(exposition: str) -> dict[str, list[tuple[str, float]]]:
    """Sample name -> [(labels, value)] of a Prometheus text exposition."""
    found: dict[str, list[tuple[str, float]]] = {}
    for line in exposition.splitlines():
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if match:
            found.setdefault(match.group(1), []).append((match.group(2) or "", float(match.group(3))))
    return found


def families(exposition: str) -> set[str]:
    return set(re.findall(r"^# TYPE (\S+) ", exposition, re.M))


def executable(command: list[str]) -> list[str]:
    """The compose command run from this virtualenv (`sdedit` is its console script)."""
    assert command[0] == "sdedit", command
    script = Path(sys.executable).parent / "sdedit"
    return [str(script), *command[1:]] if script.exists() else [sys.executable, "-m", "cli",
                                                                 *command[1:]]


@dataclass
class Part:
    name: str
    command: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen | None = None
    started: float = 0.0

    def start(self, cwd: Path) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command, env=self.env, cwd=cwd, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        self.started = time.monotonic()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@dataclass
class Stack:
    tmp: Path
    parts: list[Part] = field(default_factory=list)

    def add(self, part: Part) -> Part:
        self.parts.append(part)
        part.start(self.tmp)
        return part

    def alive(self) -> None:
        for part in self.parts:
            if part.process is not None and part.process.poll() is not None and part.name != "dead":
                raise AssertionError(f"{part.name} exited ({part.process.returncode}):\n{part.tail()}")

    def stop(self) -> None:
        for part in reversed(self.parts):
            part.kill()


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[Stack]:
    running = Stack(tmp_path)
    try:
        yield running
    finally:
        running.stop()


def base_env() -> dict[str, str]:
    """This process's environment without any SDEDIT_ setting, one thread per process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SDEDIT_", "PYTHONPROFILE"))}
    env["OMP_NUM_THREADS"] = "1"
    return env


def healthcheck(part: str, port: int) -> subprocess.CompletedProcess:
    variable = "SDEDIT_PORT" if part == "api" else "SDEDIT_METRICS_PORT"
    return subprocess.run([sys.executable, str(HEALTHCHECK), part], capture_output=True, text=True,
                          env={**base_env(), variable: str(port)}, timeout=30, check=False)


def exposition(port: int) -> str:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    response.raise_for_status()
    return response.text


def active_jobs(port: int) -> float:
    with contextlib.suppress(httpx.HTTPError):
        return sum(v for _, v in samples(exposition(port)).get("sdedit_worker_active_jobs", []))
    return 0.0


def test_compose_topology_without_containers(stack: Stack, vp_dir: Path, tmp_path: Path):
    redis_server, prometheus = need("redis-server"), need("prometheus")
    password, key = secrets.token_hex(16), "deploy-test-key-" + secrets.token_hex(4)
    env_file = tmp_path / "test.env"
    env_file.write_text(f"SDEDIT_REDIS_PASSWORD={password}\nSDEDIT_API_KEYS=[\"{key}\"]\n"
                        "GRAFANA_ADMIN_PASSWORD=unused\n")
    services = rendered_compose(env_file, "cpu")["services"]
    models = json.dumps([str(vp_dir)])
    queue = f"sdedit:{vp_dir.name}"  # a folder is served under its base name

    # Redis exactly as compose runs it (AOF, password), on a free port in a folder of ours.
    redis_port = free_port()
    (tmp_path / "redis").mkdir()
    redis_command = services["redis"]["command"]
    assert redis_command[0] == "redis-server" and "--requirepass" in redis_command
    stack.add(Part("redis", [redis_server, *redis_command[1:], "--port", str(redis_port),
                             "--bind", "127.0.0.1", "--dir", str(tmp_path / "redis")],
                   base_env(), tmp_path / "redis.log"))
    store = redis.Redis(port=redis_port, password=password)
    until(store.ping, 20, "redis-server")
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=redis_port).ping()

    def settings(service: str, **overrides: str) -> dict[str, str]:
        rendered = dict(services[service]["environment"])
        assert set(overrides) <= OVERRIDDEN
        url = rendered["SDEDIT_REDIS_URL"]
        assert "@redis:6379/" in url
        overrides["SDEDIT_REDIS_URL"] = url.replace("@redis:6379/", f"@127.0.0.1:{redis_port}/")
        return {**base_env(), **rendered, **overrides, "SDEDIT_MODELS": models}

    # Two API replicas; PYTHONPROFILEIMPORTTIME lists every module the API imports.
    api_ports = [free_port(), free_port()]
    apis = []
    for index, port in enumerate(api_ports):
        env = settings("api", SDEDIT_HOST="127.0.0.1", SDEDIT_PORT=str(port))
        env["PYTHONPROFILEIMPORTTIME"] = "1"
        apis.append(stack.add(Part(f"api-{index}", executable(services["api"]["command"]), env,
                                   tmp_path / f"api-{index}.log")))
    worker_ports = [free_port(), free_port()]

    def worker_part(index: int) -> Part:
        env = settings("worker-cpu", SDEDIT_METRICS_PORT=str(worker_ports[index]),
                       SDEDIT_HEARTBEAT_S="1", SDEDIT_MAINTENANCE_S="2")
        return Part(f"worker-{index}", executable(services["worker-cpu"]["command"]), env,
                    tmp_path / f"worker-{index}.log")

    workers = [stack.add(worker_part(0)), stack.add(worker_part(1))]

    # Prometheus with the compose scrape jobs, the DNS discovery replaced by the processes.
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    scrape["global"]["scrape_interval"] = "1s"
    targets = {"sdedit-api": api_ports, "sdedit-worker": worker_ports}
    for job in scrape["scrape_configs"]:
        job.pop("dns_sd_configs")
        job["static_configs"] = [{"targets": [f"127.0.0.1:{p}" for p in targets[job["job_name"]]]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(scrape))
    prometheus_url = f"http://127.0.0.1:{free_port()}"
    stack.add(Part("prometheus", [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                                  f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                  f"--web.listen-address={prometheus_url[7:]}"],
                   base_env(), tmp_path / "prometheus.log"))

    # The API answers within seconds and imports no torch (its image has none).
    for api, port in zip(apis, api_ports, strict=True):
        until(lambda p=port: httpx.get(f"http://127.0.0.1:{p}/healthz").status_code == 200, 30,
              f"{api.name} /healthz")
        assert time.monotonic() - api.started < 15, "the API took too long to start"
        imported = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)", api.log.read_text(), re.M)
        assert "fastapi" in imported and "uvicorn" in imported
        assert not [m for m in imported if m.split(".")[0] in ("torch", "diffusers")]
        assert healthcheck("api", port).returncode == 0
    # Workers: healthy (the Dockerfile's HEALTHCHECK) once their models are loaded.
    for worker, port in zip(workers, worker_ports, strict=True):
        until(lambda p=port: (stack.alive(), healthcheck("worker", p).returncode == 0)[1], 120,
              f"{worker.name} to load its model")
    apis_url = [f"http://127.0.0.1:{p}" for p in api_ports]
    until(lambda: httpx.get(f"{apis_url[0]}/readyz").status_code == 200, 30, "readiness")

    client = httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert httpx.post(f"{apis_url[0]}/v1/edits", data={"model": vp_dir.name},
                      files={"image": ("g.png", png(0))}).status_code == 401

    def submit(index: int, steps: int, count: int) -> str:
        data = {"model": vp_dir.name, "t0": "0.8", "steps": str(steps), "samples": str(count),
                "seed": str(index)}
        response = client.post(f"{apis_url[index % 2]}/v1/edits", data=data,
                               files={"image": ("g.png", png(index))})
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def status(job_id: str) -> str:
        return client.get(f"{apis_url[0]}/v1/edits/{job_id}").json()["status"]

    rng = random.Random(12)
    job_ids = [submit(i, rng.randrange(60, 120), rng.randrange(1, 4)) for i in range(JOBS)]

    # SIGKILL worker 0 while it runs a batch; compose would restart it.
    until(lambda: active_jobs(worker_ports[0]) >= 1, 60, "worker 0 to run a batch", interval=0.05)
    workers[0].kill()
    workers[0].name = "dead"
    assert healthcheck("worker", worker_ports[0]).returncode == 1
    workers[0] = stack.add(worker_part(0))

    def all_ended() -> bool:
        stack.alive()
        return all(status(j) in ("finished", "failed", "canceled") for j in job_ids)

    until(all_ended, 150, "every job to end", interval=0.5)
    assert [status(j) for j in job_ids] == ["finished"] * JOBS
    assert all(client.get(f"{apis_url[1]}/v1/edits/{j}/images/0").status_code == 200 for j in job_ids)
    # None lost or stuck: RQ's queue and started registry are empty, and the killed worker's
    # jobs were retried (RQ counts retries down from Retry(max=1)).
    assert store.llen(f"rq:queue:{queue}") == 0
    assert store.zcard(f"rq:wip:{queue}") == 0
    retries = [store.hget(f"rq:job:{j}", "retries_left") for j in job_ids]
    assert retries.count(b"0") >= 1, "the kill hit no running job"
    # Redis persisted all of it to its append-only file.
    aof = list((tmp_path / "redis").glob("appendonlydir/*.aof"))
    assert aof and sum(p.stat().st_size for p in aof) > 0

    until(lambda: healthcheck("worker", worker_ports[0]).returncode == 0, 120,
          "the restarted worker to load its model")
    check_dashboard(prometheus_url, api_ports, worker_ports)

    # The Kubernetes worker's preStop hook: SIGTERM, then wait. A busy worker finishes its own
    # jobs (warm shutdown) and exits 0; none of its jobs is retried or lost.
    manifest = yaml.safe_load((DEPLOY / "k8s" / "base" / "worker.yaml").read_text())
    [container] = manifest["spec"]["template"]["spec"]["containers"]
    drain = container["lifecycle"]["preStop"]["exec"]["command"]
    late = [submit(100 + i, 300, 2) for i in range(4)]
    busy = until(lambda: next((w for w, p in zip(workers, worker_ports, strict=True)
                               if active_jobs(p) >= 1), None), 60, "a busy worker", interval=0.05)
    hook = subprocess.Popen(drain, env={**base_env(), "WORKER_PID": str(busy.process.pid)})
    try:
        # (In a pod the worker is PID 1 and its exit ends the hook; here this test reaps it.)
        assert busy.process.wait(timeout=120) == 0, busy.tail()
        busy.name = "dead"
        assert hook.wait(timeout=10) == 0
    finally:
        if hook.poll() is None:
            hook.kill()
            hook.wait()
    until(lambda: all(status(j) == "finished" for j in late), 120, "the drained jobs")
    assert [store.hget(f"rq:job:{j}", "retries_left") for j in late] == [b"1"] * len(late)


def check_dashboard(prometheus_url: str, api_ports: list[int], worker_ports: list[int]) -> None:
    """Every dashboard query names exported metrics and returns data from the live processes."""
    expositions = {port: exposition(port) for port in [*api_ports, *worker_ports]}
    exported = set().union(*(families(text) for text in expositions.values()))
    with_samples = set().union(*(samples(text) for text in expositions.values()))
    worker_families = set().union(*(families(expositions[p]) for p in worker_ports))
    api_families = set().union(*(families(expositions[p]) for p in api_ports))

    def query(expr: str) -> list[dict[str, Any]]:
        expr = expr.replace("$__rate_interval", "5m").replace("$__range", "5m")
        expr = expr.replace('"$model"', '".*"')
        body = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def scraped() -> bool:
        targets = httpx.get(f"{prometheus_url}/api/v1/targets", timeout=10).json()["data"]
        up = {(t["labels"]["job"], t["labels"]["instance"]) for t in targets["activeTargets"]
              if t["health"] == "up"}
        return up == {("sdedit-api", f"127.0.0.1:{p}") for p in api_ports} | \
            {("sdedit-worker", f"127.0.0.1:{p}") for p in worker_ports} and \
            len(query("sdedit_worker_active_jobs")) == 2

    until(scraped, 30, "Prometheus to scrape the two APIs and the two workers")
    time.sleep(2)  # a couple more scrapes after the last job
    answered = 0
    for panel in dashboard_panels():
        for target in panel["targets"]:
            names = set(METRIC.findall(target["expr"]))
            for name in names:
                family = re.sub(r"_(bucket|sum|count)$", "", name)
                assert name in exported or family in exported, f"{name} is not exported"
                # each metric comes from the kind of process that should export it
                owner = worker_families if name.startswith("sdedit_worker_") else api_families
                assert name in owner or family in owner, f"{name} is not exported where expected"
            result = query(target["expr"])
            if names <= with_samples:  # event metrics with no event yet (failures) may be empty
                assert result, f"no data for {panel['title']!r}: {target['expr']}"
                answered += 1
    assert answered >= 20
    # The per-worker panels show both workers; the worker count says 2.
    [forwards] = [t["expr"] for p in dashboard_panels() for t in p["targets"]
                  if "sdedit_worker_forwards_total" in t["expr"] and "instance" in t["expr"]]
    instances = {r["metric"]["instance"] for r in query(forwards)}
    assert instances == {f"127.0.0.1:{p}" for p in worker_ports}
    [count] = query("count(sdedit_worker_active_jobs)")
    assert float(count["value"][1]) == 2
    [accepted] = query("sum(sdedit_api_jobs_accepted_total)")  # both replicas together
    assert float(accepted["value"][1]) == JOBS
