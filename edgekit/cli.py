"""The `edgekit` command line: parse, hand over to a command module, turn errors into exit codes.

Each command lives in `edgekit/commands/<name>.py` with `HELP`, `add_arguments(parser)` and
`run(args) -> int`. Command modules import torch only inside `run`, so `--help` and the
device-side commands work on a core install without torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from edgekit import __version__
from edgekit.errors import EdgekitError

COMMANDS = ("optimize", "bench", "compare", "serve", "deploy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgekit",
        description="Get trained PyTorch models onto edge devices and measure what they cost there.",
    )
    parser.add_argument("--version", action="version", version=f"edgekit {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks for unexpected errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"edgekit.commands.{name}")
        command = sub.add_parser(
            name,
            help=module.HELP,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (a service manager, `kill`): unwind like Ctrl-C so staging folders and worker
    processes are cleaned up on the way out."""


def _terminate(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.run(args)
    except EdgekitError as exc:
        print(f"edgekit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        print("edgekit: interrupted; earlier outputs are kept as they were.", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except Exception as exc:  # a bug in edgekit, not bad input: say so plainly
        if args.debug or os.environ.get("EDGEKIT_DEBUG"):
            raise
        print(
            f"edgekit: internal error: {type(exc).__name__}: {exc}\n"
            "This is a bug in edgekit. Run again with --debug for the traceback and report it.",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
