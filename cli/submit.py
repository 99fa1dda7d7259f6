"""Submit an edit to a running service, optionally wait for it and download the results."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from cli.edit import parameter_arguments, parameters
from jobs.rules import OUTPUT_FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("guide", type=Path, help="guide image")
    parser.add_argument("--mask", type=Path, help="mask image: white may change, black is kept")
    parameter_arguments(parser, defaults=False)
    parser.add_argument("--model", help="served model name (default: the service's default)")
    parser.add_argument("--format", dest="output_format", choices=OUTPUT_FORMATS)
    parser.add_argument("--url", default=os.environ.get("SDEDIT_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--api-key", default=os.environ.get("SDEDIT_API_KEY"))
    parser.add_argument("--wait", action="store_true", help="wait with a progress bar, then download")
    parser.add_argument("-o", "--out", type=Path, default=Path("."), help="output folder (with --wait)")


def report_errors(url: str, talk: Callable[[], int]) -> int:
    """Run a conversation with the service; its error answers and an unreachable service become
    one line on stderr and exit code 2."""
    import httpx

    from service.client import ServiceError

    try:
        return talk()
    except ServiceError as exc:
        print(f"sdedit: error: {exc.message} (HTTP {exc.status})", file=sys.stderr)
        return 2
    except httpx.TransportError as exc:
        print(f"sdedit: error: cannot reach {url}: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from service.client import SDEditClient

    for path in (args.guide, args.mask):
        if path is not None and not path.is_file():
            print(f"sdedit: error: {path}: no such file", file=sys.stderr)
            return 2
    # Ranges are checked here as the API checks them; the model's own rules by the API.
    try:
        parameters(args, model=args.model, output_format=args.output_format)
    except ValueError as exc:
        print(f"sdedit: error: {exc}", file=sys.stderr)
        return 2
    params = {k: getattr(args, k) for k in ("t0", "steps", "sampler", "eta", "repeats", "samples",
                                            "seed", "model", "output_format", "region",
                                            "output_size", "padding", "feather", "prompt",
                                            "negative_prompt", "guidance_scale")}

    def talk() -> int:
        with SDEditClient(args.url, args.api_key) as client:
            job_id = client.submit(args.guide, args.mask, **params)
            print(job_id)
            if not args.wait:
                return 0
            state = client.wait(job_id)
            if state["status"] != "finished":
                print(f"sdedit: job {job_id} {state['status']}: {state.get('error') or ''}",
                      file=sys.stderr)
                return 1
            for path in client.download(job_id, args.out, args.guide.stem):
                print(path)
        return 0

    return report_errors(args.url, talk)
