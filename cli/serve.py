"""Run the service: `up` (embedded Redis + API + one worker + the webhook dispatcher), or `api` /
`worker` separately."""

from __future__ import annotations

import argparse
import logging
import os
import signal

# bandit B404/B603: subprocess starts this project's own parts (fixed argv, no shell).
import subprocess  # nosec B404
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--burst", action="store_true",
                        help="worker: quit when the queues are empty")


def run(args: argparse.Namespace) -> int:
    from jobs.settings import Settings

    settings = Settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.part == "api":
        import uvicorn

        from service.app import create_app

        if settings.api_workers > 1:
            if not settings.redis_url:
                print("sdedit: error: SDEDIT_API_WORKERS > 1 needs SDEDIT_REDIS_URL (the embedded "
                      "Redis belongs to one process; `sdedit up` passes its URL on)",
                      file=sys.stderr)
                return 2
            # Each worker process builds its own app from the same SDEDIT_* environment.
            uvicorn.run("service.app:create_app", factory=True, workers=settings.api_workers,
                        host=settings.host, port=settings.port, access_log=settings.access_log)
            return 0
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                    access_log=settings.access_log)
        return 0
    if args.part == "worker":
        from jobs.connection import connect
        from worker.main import run_worker

        run_worker(settings, connect(settings), burst=args.burst)
        return 0
    return up(settings)


def up(settings) -> int:
    """Everything on one machine: a real Redis (embedded unless REDIS_URL), the API, one worker
    and the webhook dispatcher."""
    from jobs.connection import connect, socket_url, stop_embedded

    env = dict(os.environ)
    embedded = None
    if not settings.redis_url:
        embedded = connect(settings)
        env["SDEDIT_REDIS_URL"] = socket_url(embedded)
        print(f"embedded Redis: {env['SDEDIT_REDIS_URL']} (data in {settings.data_dir})")
    if not settings.api_keys and not settings.auth_disabled:
        env["SDEDIT_AUTH_DISABLED"] = "true"
        print("auth is OFF: no SDEDIT_API_KEYS set (fine on your own machine, never in production)")
    # Ctrl-C and `kill` (SIGTERM) stop everything the same way, even when started in the
    # background (where a shell makes the process ignore SIGINT).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    children = [subprocess.Popen([sys.executable, "-m", "cli", part], env=env)  # nosec B603
                for part in ("api", "worker", "dispatcher")]
    print(f"SDEdit service: http://{settings.host}:{settings.port} "
          f"(API docs at /docs; models: {', '.join(settings.models)}); Ctrl-C stops everything",
          flush=True)
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        print("a part of the service exited; stopping the rest", file=sys.stderr)
    except KeyboardInterrupt:
        print("stopping ...")
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if embedded is not None:
            stop_embedded(embedded)
    return 0 if all(child.returncode in (0, -signal.SIGTERM) for child in children) else 1
