"""Loading what to serve (an optimize output folder or one .onnx file) and running uvicorn.

Torch-free: imports only the core install and the `serve` extra (uvicorn, starlette,
prometheus_client).
"""

from __future__ import annotations

import errno
import re
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from edgekit import textsafe
from edgekit.errors import EdgekitError
from edgekit.fsutil import sha256_file, sha256_folder

SERVE_EXTRA = ("uvicorn", "httptools", "starlette", "prometheus_client")
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


# The model files `edgekit serve` takes: ONNX, and the other runtimes' (edgekit.runtimes).
MODEL_SUFFIXES = (".onnx", ".xml", ".tflite", ".pte")


def is_lm_variant(path: Path) -> bool:
    """A language model's folder as onnxruntime-genai runs it (edgekit.serve.lm_engine)."""
    return (path / "genai_config.json").is_file()


def choose(path: Path, variant: str | None, name: str | None = None):
    """(report or None, [Choice]) for `edgekit serve PATH [--variant NAME|all] [--name N]`."""
    path = Path(path)
    if name is not None:
        check_name(name)
    if path.is_dir() and is_lm_variant(path):  # one language model's folder
        if variant not in (None, "all"):
            raise EdgekitError(f"--variant needs an optimize output folder; {path} is one model.")
        return None, [Choice(name or _name(path.name), path, None)]
    if path.is_file() and path.suffix.lower() in MODEL_SUFFIXES:
        if variant not in (None, "all"):
            raise EdgekitError(f"--variant needs an optimize output folder; {path} is one file.")
        return None, [Choice(name or _name(path.stem), path, None)]
    if not path.is_dir():
        raise EdgekitError(
            f"{path}: not an optimize output folder nor a model file. Give the folder that "
            "`edgekit optimize` wrote (MODEL.edgekit/) or one .onnx (.xml, .tflite, .pte) file."
        )
    from edgekit.report.read import read_report

    report = read_report(path).to_json()  # the serve code reads the JSON dict
    if not all(isinstance(i, dict) for i in report["inputs"]):
        raise EdgekitError(
            f'{path}/report.json: its "inputs" list holds items that are not objects; the '
            "report may have been edited. Write it again with `edgekit optimize`, or serve the "
            ".onnx file itself."
        )
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
    folder_variant = row.get("runtime") == "onnxruntime-genai"  # a language model's folder
    if not (file.is_dir() if folder_variant else file.is_file()):
        raise EdgekitError(
            f"{file} is missing: the report names it for variant "
            f"{textsafe.plain(row['name'])!r}. Copy the whole output folder."
        )
    want = row.get("sha256")
    if want and (sha256_folder(file) if folder_variant else sha256_file(file)) != want:
        raise EdgekitError(
            f"{file} is not the file the report describes for variant "
            f"{textsafe.plain(row['name'])!r} (its sha256 differs from report.json's): it was "
            "changed or only partly copied. Copy the whole output folder again."
        )
    return file


# The one rule for the names edgekit serves and deploys under (model names in URLs, deployment
# folders, systemd unit names): safe in a URL path segment, a file name and a unit file.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_name(name: str, what: str = "The model name", flag: str = "--name") -> str:
    if not NAME.fullmatch(name):
        raise EdgekitError(
            f"{what} {textsafe.plain(name)!r} must be 1 to 64 letters, digits, _ . - starting "
            f"with a letter or digit; give another with {flag}."
        )
    return name


def _name(text: str) -> str:
    """A name that follows NAME, made from a file or variant name."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).lstrip("-._")[:64]
    return safe or "model"


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
        owner = port_owner(port) if exc.errno == errno.EADDRINUSE else None
        raise EdgekitError(
            f"Cannot listen on {host}:{port}: {exc.strerror or exc}"
            f"{f'; it is used by {owner}' if owner else ''}. Pick another --port (or stop what "
            "uses it), or another --host."
        ) from None
    return sock


def port_owner(port: int) -> str | None:
    """'pid N (command line)' of the process listening on the TCP port, when this user may see
    it."""
    import psutil

    try:
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                if conn.pid is None:
                    return "another user's process"
                command = " ".join(psutil.Process(conn.pid).cmdline())[:200]
                return f"pid {conn.pid} ({textsafe.plain(command)})"
    except (psutil.Error, OSError):
        return None
    return None


# The server's own files (the listening socket, model files, logs, onnxruntime's and the event
# loop's descriptors) take a few dozen; connections may use the rest of the file limit.
FILES_KEPT = 64
MAX_CONNECTIONS = 1000


def connection_limit(requested: int | None) -> int:
    """--max-connections, or its default: MAX_CONNECTIONS, or less to stay under the process's
    file limit (RLIMIT_NOFILE; 1024 under systemd by default)."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    room = MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else soft - FILES_KEPT
    if requested is None:
        if room < 1:
            raise EdgekitError(
                f"The file limit (ulimit -n) is {soft}: too low to serve. Raise it (ulimit -n "
                "4096, or LimitNOFILE= in a systemd unit)."
            )
        return min(MAX_CONNECTIONS, room)
    if requested > room:
        raise EdgekitError(
            f"--max-connections {requested} does not fit under this process's file limit "
            f"(ulimit -n {soft}, less {FILES_KEPT} for the server's own files). Lower it, or "
            "raise the limit (ulimit -n, or LimitNOFILE= in a systemd unit)."
        )
    return requested


def serve(
    app, sock: socket.socket, drain_s: float, max_connections: int, client_timeout: float
) -> None:
    """Run uvicorn on the bound socket until SIGTERM or Ctrl-C; in-flight requests finish first
    (up to drain_s seconds). Connections: see edgekit.serve.connections."""
    import uvicorn

    from edgekit.serve.connections import protocol

    config = uvicorn.Config(
        app,
        http=protocol(max_connections, client_timeout),
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
