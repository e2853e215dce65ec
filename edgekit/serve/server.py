"""Loading what to serve (an optimize output folder or one .onnx file) and running uvicorn.

Torch-free: imports only the core install and the `serve` extra (uvicorn, starlette,
prometheus_client).
"""

from __future__ import annotations

import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from edgekit import textsafe
from edgekit.errors import EdgekitError

SERVE_EXTRA = ("uvicorn", "starlette", "prometheus_client")
PIP_LINE = "python3 -m pip install 'edgekit[serve]'"


def check_extra() -> None:
    import importlib.util

    missing = [m for m in SERVE_EXTRA if importlib.util.find_spec(m) is None]
    if missing:
        raise EdgekitError(
            f"`edgekit serve` needs {', '.join(missing)}, which are not installed. Install the "
            f"serve extra: {PIP_LINE}"
        )


@dataclass
class Choice:
    name: str  # the model name in URLs
    path: Path
    variant: dict | None  # the report's variant row, if served from a folder


def choose(path: Path, variant: str | None, name: str | None = None):
    """(report or None, [Choice]) for `edgekit serve PATH [--variant NAME|all] [--name N]`."""
    path = Path(path)
    if path.is_file() and path.suffix == ".onnx":
        if variant not in (None, "all"):
            raise EdgekitError(f"--variant needs an optimize output folder; {path} is one file.")
        return None, [Choice(name or _name(path.stem), path, None)]
    if not path.is_dir():
        raise EdgekitError(
            f"{path}: not an optimize output folder nor an .onnx file. Give the folder that "
            "`edgekit optimize` wrote (MODEL.edgekit/) or one .onnx file."
        )
    from edgekit.report.read import read_report

    report = read_report(path)
    rows = {v["name"]: v for v in report["variants"]}
    if variant == "all":
        picked = [v for v in report["variants"] if not v.get("error") and v.get("file")]
        if not picked:
            raise EdgekitError(f"{path}/report.json has no variant that was made without error.")
        if name:
            raise EdgekitError("--name names one model; with --variant all each keeps its own.")
    else:
        if variant is None:
            rec = report.get("recommendation") or {}
            variant = rec.get("variant")
            if variant is None:
                raise EdgekitError(
                    f"{path}/report.json recommends no variant. Pick one with --variant NAME "
                    f"(the report has: {', '.join(textsafe.plain(n) for n in rows)})."
                )
        if variant not in rows:
            raise EdgekitError(
                f"{path}/report.json has no variant {textsafe.plain(variant)!r}; it has: "
                f"{', '.join(textsafe.plain(n) for n in rows)}."
            )
        picked = [rows[variant]]
    choices = []
    for row in picked:
        if row.get("error") or not row.get("file"):
            raise EdgekitError(
                f"The variant {textsafe.plain(row['name'])!r} failed when it was made "
                f"({textsafe.plain(row.get('error') or 'no file')}); pick another with --variant."
            )
        file = variant_file(path, row)
        choices.append(Choice(name or _name(row["name"]), file, row))
    return report, choices


def variant_file(folder: Path, row: dict) -> Path:
    file = (folder / str(row["file"])).resolve()
    if not file.is_relative_to(folder.resolve()):
        raise EdgekitError(
            f"The report's file for variant {textsafe.plain(row['name'])!r} points outside "
            f"{folder}; the report may have been edited."
        )
    if not file.is_file():
        raise EdgekitError(
            f"{file} is missing: the report names it for variant "
            f"{textsafe.plain(row['name'])!r}. Copy the whole output folder."
        )
    return file


def _name(text: str) -> str:
    """A model name that is safe in a URL path segment."""
    import re

    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "model"
    return safe[:100]


def bind(host: str, port: int) -> socket.socket:
    """The listening socket. Made with proto IPPROTO_TCP on purpose: asyncio sets TCP_NODELAY only
    on sockets that say they are TCP, and without it each response (headers and body written
    apart) waits ~40 ms for the client's delayed ACK."""
    sock = None
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise EdgekitError(
            f"Cannot listen on {host}:{port}: {exc.strerror or exc}. Pick another --port "
            "(or stop what uses it), or another --host."
        ) from None
    return sock


def serve(app, sock: socket.socket, drain_s: float) -> None:
    """Run uvicorn on the bound socket until SIGTERM or Ctrl-C; in-flight requests finish first
    (up to drain_s seconds)."""
    import uvicorn

    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=drain_s,
        server_header=False,
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once it has drained; with these no-op
    # handlers in place, that lands here and the process exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[sock])
    sys.stdout.flush()
