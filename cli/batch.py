"""Submit a batch of edits to a running service, optionally wait for it and download the results."""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
from pathlib import Path

from cli.edit import parameter_arguments, parameters
from cli.submit import report_errors
from jobs.contract import BATCH_EVENTS, EDIT_EVENTS
from jobs.rules import OUTPUT_FORMATS, PARAMETER_FIELDS

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="batch_command", required=True)
    submit = sub.add_parser(
        "submit", help="submit a folder of images or a JSONL file of requests",
        description="Submit a batch. DIR: every image is a request (custom_id = its file name "
                    "without extension; NAME.mask.png is the mask of NAME.png). FILE.jsonl: one "
                    "request per line, {custom_id, image, mask?, parameters...}, with image and "
                    "mask as base64 or as paths relative to the file. Options given here are "
                    "the defaults of every request.")
    submit.add_argument("source", type=Path, help="DIR or FILE.jsonl")
    parameter_arguments(submit, defaults=False)
    submit.add_argument("--model", help="served model name (default: the service's default)")
    submit.add_argument("--format", dest="output_format", choices=OUTPUT_FORMATS)
    submit.add_argument("--priority", choices=["batch", "interactive"],
                        help="of every request (default batch)")
    submit.add_argument("--webhook-url", help="receives the batch's signed events")
    submit.add_argument("--webhook-events", nargs="+", choices=BATCH_EVENTS + EDIT_EVENTS,
                        help="default: batch.completed batch.canceled batch.expired")
    submit.add_argument("--idempotency-key", help="a retry with the same key makes no new batch")
    submit.add_argument("--url", default=os.environ.get("SDEDIT_URL", "http://127.0.0.1:8000"))
    submit.add_argument("--api-key", default=os.environ.get("SDEDIT_API_KEY"))
    submit.add_argument("--wait", action="store_true",
                        help="wait with a progress bar over the requests, then download")
    submit.add_argument("-o", "--out", type=Path, default=Path("."),
                        help="output folder (with --wait): CUSTOM_ID-K.png and results.jsonl")


def folder_requests(folder: Path) -> list[dict]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    masks = {p.name.split(".mask.")[0]: p for p in files if ".mask." in p.name}
    return [{"custom_id": p.stem, "image": p, **({"mask": masks[p.stem]} if p.stem in masks else {})}
            for p in files if ".mask." not in p.name]


def jsonl_requests(path: Path) -> list[dict]:
    """Lines of a JSONL file; image and mask may be base64 or a path relative to the file."""
    requests = []
    for number, text in enumerate(path.read_text().splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(line, dict):
            raise ValueError(f"{path}:{number}: each line must be a JSON object")
        for name in ("image", "mask"):
            value = line.get(name)
            if isinstance(value, str):
                line[name] = _image_bytes(value, path.parent, f"{path}:{number}: {name}")
        requests.append(line)
    return requests


def _image_bytes(value: str, folder: Path, where: str) -> bytes:
    candidate = folder / value
    if len(value) < 4096 and candidate.is_file():
        return candidate.read_bytes()
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where}: neither a file nor base64") from None


def run(args: argparse.Namespace) -> int:
    from service.client import SDEditClient

    try:
        if args.source.is_dir():
            requests = folder_requests(args.source)
        elif args.source.is_file():
            requests = jsonl_requests(args.source)
        else:
            raise ValueError(f"{args.source}: no such file or folder")
        if not requests:
            raise ValueError(f"{args.source}: no requests (no images or lines)")
        # Ranges are checked here as the API checks them; the model's own rules by the API.
        parameters(args, model=args.model, output_format=args.output_format)
    except ValueError as exc:
        print(f"sdedit: error: {exc}", file=sys.stderr)
        return 2
    defaults = {k: getattr(args, k) for k in PARAMETER_FIELDS if getattr(args, k, None) is not None}
    requests = [{**defaults, **request} for request in requests]

    def talk() -> int:
        with SDEditClient(args.url, args.api_key) as client:
            batch = client.submit_batch(requests, idempotency_key=args.idempotency_key,
                                        priority=args.priority, webhook_url=args.webhook_url,
                                        webhook_events=args.webhook_events)
            print(batch["id"])
            if not args.wait:
                return 0
            state = client.wait_batch(batch["id"])
            for path in client.download_batch(batch["id"], args.out):
                print(path)
            counts = state["request_counts"]
            if counts["finished"] != counts["total"]:
                print(f"sdedit: batch {batch['id']} {state['status']}: {counts['failed']} failed, "
                      f"{counts['canceled']} canceled (see {args.out / 'results.jsonl'})",
                      file=sys.stderr)
                return 1
        return 0

    return report_errors(args.url, talk)
