#!/usr/bin/env python3
"""Container health check of the SDEdit images (standard library only; no project imports).

    sdedit-healthcheck api      GET /healthz on SDEDIT_PORT (default 8000)
    sdedit-healthcheck worker   GET /metrics on SDEDIT_METRICS_PORT (default 9100); healthy once
                                every model is loaded (sdedit_worker_model_load_seconds has a
                                sample), so a worker still loading its models is "starting"

Exit status 0 = healthy, 1 = unhealthy (Docker's HEALTHCHECK convention); the reason goes to
stdout, which `docker inspect` shows. SDEDIT_HEALTHCHECK_HOST (default 127.0.0.1) is for tests.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 3.0
LOADED = "sdedit_worker_model_load_seconds{"


def fetch(port: str, path: str) -> str:
    host = os.environ.get("SDEDIT_HEALTHCHECK_HOST", "127.0.0.1")
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=TIMEOUT_S) as response:
        return response.read().decode("utf-8", "replace")


def check(part: str) -> str | None:
    """None when healthy, else why not."""
    if part == "api":
        fetch(os.environ.get("SDEDIT_PORT", "8000"), "/healthz")  # non-2xx raises HTTPError
        return None
    if part == "worker":
        port = os.environ.get("SDEDIT_METRICS_PORT", "9100")
        if port == "0":
            return "SDEDIT_METRICS_PORT=0: the worker serves no metrics, so it cannot be checked"
        exposition = fetch(port, "/metrics")
        if not any(line.startswith(LOADED) for line in exposition.splitlines()):
            return "models still loading"
        return None
    return f"unknown part {part!r}: use api or worker"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 1
    try:
        problem = check(argv[1])
    except (OSError, urllib.error.URLError) as exc:  # refused, timed out, HTTP error status
        problem = f"unreachable: {exc}"
    print(problem or "healthy")
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
