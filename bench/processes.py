"""Real processes for the reliability suite: a Debian `redis-server` with AOF, and the API and
workers started as the README says (`sdedit api`, `sdedit worker`), all on 127.0.0.1."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

PASSWORD = "reliability-suite"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            value = predicate()
            if value:
                return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def png(seed: int = 0, size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (seed * 37 % 256, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class Process:
    name: str
    command: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen | None = None

    def start(self) -> Process:
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(self.command, env=self.env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signum)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
        if not self.alive:
            return
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(timeout=30)


@dataclass
class Cluster:
    """One Redis, any number of APIs and workers; everything stopped by `close`."""

    folder: Path
    models: list[str]
    settings: dict[str, str] = field(default_factory=dict)  # extra SDEDIT_* for API and workers
    redis_port: int = field(default_factory=free_port)
    processes: list[Process] = field(default_factory=list)
    redis: Process | None = None

    @property
    def redis_url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.redis_port}/0"

    def start_redis(self) -> Process:
        """redis-server with AOF (fsync on every write) in `folder`: a restart finds every
        acknowledged write."""
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed (Debian package redis-server)")
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [server, "--port", str(self.redis_port), "--bind", "127.0.0.1",
                   "--requirepass", PASSWORD, "--dir", str(self.folder), "--appendonly", "yes",
                   "--appendfsync", "always", "--save", "", "--daemonize", "no"]
        self.redis = Process("redis", command, dict(os.environ), self.folder / "redis.log").start()
        self.processes.append(self.redis)
        until(self._redis_answers, 30, "redis-server to answer")
        return self.redis

    def _redis_answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.redis_url).ping())
        except redis.exceptions.RedisError:
            return False

    def connection(self):
        import redis

        return redis.Redis.from_url(self.redis_url)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SDEDIT_")}
        env.update({"SDEDIT_REDIS_URL": self.redis_url, "SDEDIT_MODELS": _json(self.models),
                    "SDEDIT_AUTH_DISABLED": "true", "SDEDIT_METRICS_PORT": "0",
                    "OMP_NUM_THREADS": "1", **self.settings, **extra})
        return env

    def start_api(self, **settings: str) -> tuple[Process, str]:
        port = free_port()
        api = Process(f"api-{port}", [sys.executable, "-m", "cli", "api"],
                      self.env(SDEDIT_PORT=str(port), **settings),
                      self.folder / f"api-{port}.log").start()
        self.processes.append(api)
        url = f"http://127.0.0.1:{port}"
        until(lambda: httpx.get(f"{url}/healthz").status_code == 200, 60, "the API to start")
        return api, url

    def start_worker(self, **settings: str) -> tuple[Process, int]:
        port = free_port()
        worker = Process(f"worker-{port}", [sys.executable, "-m", "cli", "worker"],
                         self.env(SDEDIT_METRICS_PORT=str(port), **settings),
                         self.folder / f"worker-{port}.log").start()
        self.processes.append(worker)
        return worker, port

    def close(self) -> None:
        for process in reversed(self.processes):
            process.kill()


def _json(values: list[str]) -> str:
    import json

    return json.dumps(values)


def metric(port: int, name: str, labels: dict[str, str] | None = None) -> float:
    """The sum of a metric's samples (matching labels) in a process's Prometheus exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in (labels or {}).items()):
                total += sample.value
    return total
