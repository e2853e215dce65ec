"""What every request goes through, as ASGI middleware that wraps the app once (Starlette's
pattern: each layer a plain ASGI class around the next):

    AccessLog( Authenticate( CountRequests( routes ) ) )

Authenticate answers 401 before any route runs; CountRequests keeps edgekit_requests_total and the
request duration of inference requests; AccessLog writes one JSON line per request on its own
thread. An endpoint tells the layers around it what only it knows (the model a request went to,
its queue and compute time) through the request's `Note`, kept in the ASGI scope.
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import json
import os
import stat
import sys
import threading
import time
from dataclasses import dataclass, field

from edgekit.errors import EdgekitError
from edgekit.serve.metrics import Metrics
from edgekit.serve.protocol import failure

# probes call these without a key
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/health"})
UNAUTHORIZED = "missing or wrong API key: send the header `Authorization: Bearer <key>`"


@dataclass
class Note:
    """What an endpoint says about its request to the middleware around it."""

    inference: bool = False  # an infer request: counted in edgekit_requests_total
    model: str = ""  # the model it went to, once known
    timing: dict[str, float] = field(default_factory=dict)  # queue_ms, compute_ms


def note(scope) -> Note:
    return scope.setdefault("edgekit.note", Note())


class Watched:
    """A send() that notes the response's status (None until it starts)."""

    def __init__(self, send):
        self.send, self.status = send, None

    async def __call__(self, message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)


class Authenticate:
    """Requests without `Authorization: Bearer <key>` get 401, except on OPEN_PATHS."""

    def __init__(self, app, key: str, metrics: Metrics):
        self.app, self.key = app, key.encode()
        self.rejected = metrics.requests.labels("", "unauthorized")

    def authorized(self, header: bytes) -> bool:
        scheme, _, token = header.decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode("latin-1"), self.key
        )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not self.authorized(header):
                self.rejected.inc()
                answer = failure(401, UNAUTHORIZED, **{"WWW-Authenticate": "Bearer"})
                if scope["path"].startswith("/v1/"):  # the OpenAI API's error shape
                    error = {"message": UNAUTHORIZED, "type": "authentication_error",
                             "param": None, "code": "invalid_api_key"}  # fmt: skip
                    answer.body = json.dumps({"error": error}).encode()
                await answer.send(send)
                return
        await self.app(scope, receive, send)


def outcome(status: int | None) -> str:
    if status is None:
        return "disconnected"  # the client went away before its request was read
    if status < 400:
        return "success"
    return "bad_request" if status < 500 else "error"


class Observed:
    """Middleware that lets a request through, then looks at how it went (`done`)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, watched, said = time.perf_counter(), Watched(send), note(scope)
        unanswered = None  # no response went out: the client went away, or 500 after a bug
        try:
            await self.app(scope, receive, watched)
        except BaseException:
            unanswered = 500
            raise
        finally:
            self.done(scope, said, watched.status or unanswered, time.perf_counter() - start)

    def done(self, scope, said: Note, status: int | None, seconds: float) -> None:
        raise NotImplementedError


class CountRequests(Observed):
    """edgekit_requests_total{model, outcome} and edgekit_request_duration_seconds{model} of the
    inference requests (the model is "" when the request named none this server has)."""

    def __init__(self, app, metrics: Metrics, models: dict):
        """models: name -> its ModelMetrics (series bound once)."""
        super().__init__(app)
        self.metrics, self.models = metrics, models

    def done(self, scope, said: Note, status: int | None, seconds: float) -> None:
        if not said.inference:
            return
        series = self.models.get(said.model)
        if series is None:
            self.metrics.requests.labels("", outcome(status)).inc()
        else:
            series.requests[outcome(status)].inc()
            series.request_seconds.observe(seconds)


class AccessLog(Observed):
    """One JSON line per request: ts, client, method, path, model, status (499: the client went
    away unanswered), ms, and queue_ms/compute_ms for inference."""

    def __init__(self, app, writer: LogWriter):
        super().__init__(app)
        self.writer = writer

    def done(self, scope, said: Note, status: int | None, seconds: float) -> None:
        client = scope.get("client")
        self.writer.put(
            {
                "ts": time.time(),
                "client": client[0] if client else None,
                "method": scope["method"],
                "path": scope["path"],
                "model": said.model,
                "status": status or 499,
                "ms": round(seconds * 1e3, 3),
                **{k: round(v, 3) for k, v in said.timing.items()},
            }
        )


# Lines waiting for the writer thread; past this (a disk slower than the requests) they are lost,
# as when a write fails, instead of growing the server's memory.
QUEUED_LINES = 65536
# The writer wakes this often and writes what has come meanwhile in one write: woken for each line
# (a queue's get), it cost the event loop a thread switch per request.
FLUSH_S = 0.05


class LogWriter:
    """Writes the access log on its own thread: the event loop never waits for the disk. A write
    that fails (a full disk) is said once on stderr, and serving goes on."""

    def __init__(self, file):
        self.file = file
        self.lines: collections.deque[dict] = collections.deque()  # appends are thread-safe
        self.closing = threading.Event()
        self.warned = False
        self.thread = threading.Thread(target=self._write, name="serve-access-log", daemon=True)
        self.thread.start()

    def put(self, record: dict) -> None:
        if len(self.lines) < QUEUED_LINES:
            self.lines.append(record)
        else:
            self._warn(f"{QUEUED_LINES} lines wait for the disk")

    def close(self) -> None:
        """Write the lines queued so far, then stop the thread and close the file."""
        self.closing.set()
        self.thread.join(timeout=30)
        self.file.close()

    def _write(self) -> None:
        while not self.closing.wait(FLUSH_S):
            self._flush()
        self._flush()

    def _flush(self) -> None:
        text = []
        while self.lines:
            text.append(json.dumps(self.lines.popleft()) + "\n")
        data = memoryview("".join(text).encode())
        try:
            while data:
                data = data[self.file.write(data) :]
        except OSError as exc:
            self._warn(exc.strerror or str(exc))

    def _warn(self, reason: str) -> None:
        if not self.warned:
            self.warned = True
            print(
                f"edgekit: warning: cannot write the access log ({reason}); serving goes on, "
                "later lines may be lost.",
                file=sys.stderr,
                flush=True,
            )


def writable_kind(mode: int) -> bool:
    return stat.S_ISREG(mode) or stat.S_ISCHR(mode)  # a file, or a device such as /dev/null


def open_access_log(path: str):
    """An unbuffered binary file (a failed write leaves nothing queued), or stdout for `-`. Refuses what is not a regular file or a character device (a FIFO would
    block the start until a reader comes; a folder cannot be appended to)."""
    if path == "-":
        return open(sys.stdout.fileno(), "ab", buffering=0, closefd=False)  # noqa: SIM115

    def not_a_file():
        return EdgekitError(
            f"The access log {path} is not a regular file (a folder, a FIFO?). Give a file "
            "(--access-log FILE, or - for stdout)."
        )

    with contextlib.suppress(OSError):
        if not writable_kind(os.stat(path).st_mode):
            raise not_a_file()
    try:  # O_NONBLOCK: a FIFO made meanwhile fails here instead of waiting for a reader
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        raise EdgekitError(
            f"Cannot open the access log {path}: {exc.strerror or exc}. Give a file in an "
            "existing folder you may write to (--access-log FILE, or - for stdout)."
        ) from None
    if not writable_kind(os.fstat(fd).st_mode):
        os.close(fd)
        raise not_a_file()
    os.set_blocking(fd, True)
    return open(fd, "ab", buffering=0)  # noqa: SIM115 (open while the server runs)
