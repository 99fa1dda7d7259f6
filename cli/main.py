"""The `sdedit` command line: one entry point whose subcommands import only what they need."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from cli import batch, dispatcher, edit, serve, submit

# Each subcommand module has add_arguments(parser) and run(args) -> exit code.
COMMANDS = {"edit": edit, "submit": submit, "batch": batch, "up": serve, "api": serve,
            "worker": serve, "dispatcher": dispatcher}


HELP = {
    "up": "Start everything on this machine: Redis (embedded unless SDEDIT_REDIS_URL), the API, "
          "one worker and the webhook dispatcher.",
    "api": "Run the HTTP API (configured by SDEDIT_* environment variables).",
    "worker": "Run a worker that holds the models and batches jobs (SDEDIT_* variables).",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdedit",
        description="SDEdit: guided image synthesis and editing with stochastic differential "
                    "equations (Meng et al., ICLR 2022).")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        doc = HELP.get(name) or (module.__doc__ or "").strip().splitlines()[0]
        command = sub.add_parser(name, help=doc, description=doc)
        module.add_arguments(command)
        if module is serve:
            command.set_defaults(part=name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] = COMMANDS[args.command].run
    try:
        return run(args)
    except KeyboardInterrupt:
        print("sdedit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
