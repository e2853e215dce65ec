"""The `edgekit` command line: parse, hand over to a command module, turn errors into exit codes.

Each command lives in `edgekit/commands/<name>.py` with `HELP`, `add_arguments(parser)` and
`run(args) -> int`. Command modules import torch only inside `run`, so `--help` and the
device-side commands work on a core install without torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import sys

from edgekit import __version__, textsafe
from edgekit.errors import EdgekitError

COMMANDS = ("optimize", "bench", "compare", "serve", "deploy")

# Optional modules and the extra that installs each: the core install (a device that only
# benchmarks) has none of them, and a missing one is the user's set-up, not a bug in edgekit.
EXTRAS = {
    "torch": "torch",
    "torchvision": "torch",
    "onnxscript": "torch",
    "onnxsim": "torch",
    "sympy": "torch",
    "torch_pruning": "torch",
    "matplotlib": "html",
    "onnxruntime_genai": "lm",
    "onnx_ir": "lm",
    "tokenizers": "lm",
    "transformers": "lm",
    "uvicorn": "serve",
    "starlette": "serve",
    "prometheus_client": "serve",
}
TORCH_FIRST = (
    "Install a CPU build of torch first (e.g. `pip install torch --index-url "
    "https://download.pytorch.org/whl/cpu`, or the CPU wheel of your choice from pytorch.org): "
    "a plain `pip install torch` pulls a multi-GB CUDA build. "
)


def missing_extra(exc: ImportError) -> str | None:
    """The optional module this ImportError is about, if it is one of EXTRAS."""
    name = (exc.name or "").split(".")[0]
    if name in EXTRAS:
        return name
    if exc.name is None:  # e.g. an ImportError raised by an import hook or a package's __init__
        found = re.search(r"\b(" + "|".join(EXTRAS) + r")\b", str(exc))
        return found[1] if found else None
    return None


def extra_message(command: str, module: str, exc: ImportError) -> str:
    extra = EXTRAS[module]
    first = TORCH_FIRST if extra == "torch" else ""
    return (
        f"`edgekit {command}` needs {module}, which cannot be imported here ({exc}). It comes "
        f"with the `{extra}` extra, which the core install (for devices that only benchmark) "
        f"leaves out. {first}Then: pip install 'edgekit[{extra}]'"
    )


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
        # messages quote file names and remote output: control characters are shown, not run
        text = "\n".join(textsafe.plain(line) for line in str(exc).splitlines())
        print(f"edgekit: error: {text}", file=sys.stderr)
        return exc.exit_code
    except ImportError as exc:
        module = missing_extra(exc)
        if module is None:
            return _internal_error(args, exc)
        print(f"edgekit: error: {extra_message(args.command, module, exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("edgekit: interrupted; earlier outputs are kept as they were.", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except Exception as exc:
        return _internal_error(args, exc)


def _internal_error(args, exc: Exception) -> int:
    """A bug in edgekit, not bad input: say so plainly (--debug raises it for the traceback)."""
    if args.debug or os.environ.get("EDGEKIT_DEBUG"):
        raise exc
    print(
        f"edgekit: internal error: {type(exc).__name__}: {exc}\n"
        "This is a bug in edgekit. Run again with --debug for the traceback and report it.",
        file=sys.stderr,
    )
    return 3


if __name__ == "__main__":
    sys.exit(main())
