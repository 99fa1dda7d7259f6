"""Deliver webhooks (signed, retried, durable in Redis) and expire overdue batches."""

from __future__ import annotations

import argparse
import logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # configured by SDEDIT_* environment variables only


def run(args: argparse.Namespace) -> int:
    from jobs.connection import connect
    from jobs.settings import Settings
    from worker.dispatcher import run_dispatcher

    settings = Settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run_dispatcher(settings, connect(settings))
    return 0
