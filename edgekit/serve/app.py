"""The HTTP side: the Open Inference Protocol's routes, /metrics and the monitors.

Routes (all JSON; errors are {"error": "..."}):
  GET  /v2/health/live · /v2/health/ready          no API key needed (for probes)
  GET  /v2                                         server metadata and extensions
  GET  /v2/models/{name}[/versions/1]              inputs and outputs
  GET  /v2/models/{name}[/versions/1]/ready
  POST /v2/models/{name}[/versions/1]/infer        JSON tensors or the binary extension
  GET  /metrics                                    Prometheus text format
  GET  /edgekit/monitor                            live drift and input-range summary

The model runs on worker threads (edgekit.serve.model); the event loop only parses and answers.
Inference requests are plain ASGI (`Inference`), everything else goes through Starlette: the
framework's routing, request and response objects cost ~0.1 ms per request on a 2-core machine,
a fifth of the added-latency budget on a small model (tools/bench_serve.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import re
import stat
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgekit import __version__
from edgekit.errors import EdgekitError
from edgekit.serve.metrics import Metrics, ModelMetrics
from edgekit.serve.model import ModelFailed, ServedModel
from edgekit.serve.monitor import InputRange, Shadow
from edgekit.serve.protocol import (
    EXTENSIONS,
    HEADER_LENGTH,
    BadRequest,
    build_response,
    request_cost,
    response_cost,
)
from edgekit.serve.protocol import parse_request as parse_infer


@dataclass
class Served:
    model: ServedModel
    ranges: InputRange
    metrics: ModelMetrics
    shadow: Shadow | None = None


@dataclass
class State:
    models: dict[str, Served]
    metrics: Metrics
    max_body: int  # bytes
    api_key: str | None = None
    access_log: object = None  # an unbuffered binary file (open_access_log), or None
    log_lock: threading.Lock = field(default_factory=threading.Lock)
    log_failed: bool = False
    # One thread: a big request is read and answered off the event loop (health, metadata and
    # small requests go on), and one at a time, which bounds the memory big requests take.
    pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="serve-parse")
    )

    async def off_loop(self, cost: int, function, *args):
        """function(*args), on the pool when its cost (protocol.request_cost, response_cost)
        makes it slow, else here: a hop to a thread and back costs ~0.1 ms."""
        if cost <= ON_LOOP_COST:
            return function(*args)
        return await asyncio.get_running_loop().run_in_executor(self.pool, function, *args)

    def lookup(self, name: str, version: str) -> Served:
        if name not in self.models:
            raise BadRequest(f"unknown model '{name}'; this server has: {', '.join(self.models)}")
        if version != "1":
            raise BadRequest(f"model '{name}' has only version 1, not '{version}'")
        return self.models[name]

    def authorized(self, header: str) -> bool:
        """Whether the Authorization header's value carries the API key (if one is set)."""
        if self.api_key is None:
            return True
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        )


IDENTITY_HEADER = "edgekit-pid"  # on health responses; launcher.py reads it
# Requests and responses that cost up to 16 KB of JSON parsing (~0.8 ms) are read and built on the
# event loop.
ON_LOOP_COST = 16 * 1024
UNAUTHORIZED = "missing or wrong API key: send the header `Authorization: Bearer <key>`"
INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def build_app(state: State, on_ready=None):
    """The ASGI app; `on_ready()` is called once the server accepts requests."""
    metrics = state.metrics

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if on_ready is not None:
            on_ready()
        yield

    def guarded(handler):
        async def wrapper(request: Request):
            if not state.authorized(request.headers.get("authorization", "")):
                metrics.requests.labels("", "unauthorized").inc()
                return error(401, UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})
            return await handler(request)

        return wrapper

    def served(request: Request) -> Served:
        params = request.path_params
        return state.lookup(params["name"], params.get("version", "1"))

    # Which process answers: `edgekit deploy` checks that the server it started is the one that
    # answers, not another one already on the port.
    identity = {IDENTITY_HEADER: str(os.getpid())}

    async def live(request):
        return JSONResponse({"live": True}, headers=identity)

    async def ready(request):
        return JSONResponse({"ready": True}, headers=identity)

    async def server_metadata(request):
        return JSONResponse({"name": "edgekit", "version": __version__, "extensions": EXTENSIONS})

    async def model_metadata(request):
        try:
            return JSONResponse(served(request).model.metadata())
        except BadRequest as exc:
            return error(400, str(exc))

    async def model_ready(request):
        try:
            return JSONResponse({"name": served(request).model.name, "ready": True})
        except BadRequest as exc:
            return error(400, str(exc))

    async def prometheus(request):
        data = await asyncio.to_thread(generate_latest, metrics.registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    async def monitor(request):
        return JSONResponse(
            {
                name: {
                    "inputs": entry.ranges.summary(),
                    "drift": entry.shadow.summary()
                    if entry.shadow
                    else {"note": "no shadow: start the server with --shadow fp32"},
                }
                for name, entry in state.models.items()
            }
        )

    async def http_error(request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail))

    async def internal_error(request, exc: Exception):
        return error(500, f"internal error in edgekit: {type(exc).__name__}: {exc}")

    routes = [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", guarded(server_metadata)),
        Route("/metrics", guarded(prometheus)),
        Route("/edgekit/monitor", guarded(monitor)),
    ]
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes += [
            Route(base, guarded(model_metadata)),
            Route(base + "/ready", guarded(model_ready)),
        ]
    framework = Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error, Exception: internal_error},
        lifespan=lifespan,
    )
    inference = Inference(state)

    async def app(scope, receive, send):
        match = INFER_PATH.fullmatch(scope["path"]) if scope["type"] == "http" else None
        if match:
            await inference(scope, receive, send, match[1], match[2] or "1")
        elif scope["type"] == "http" and state.access_log is not None:
            await logged(scope, receive, send)
        else:
            await framework(scope, receive, send)

    async def logged(scope, receive, send):
        """The framework's routes with an access log line each (inference logs its own)."""
        start, status = time.perf_counter(), [500]

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await framework(scope, receive, send_and_note)
        finally:
            log_line(state, scope, "", status[0], time.perf_counter() - start, {})

    return app


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


@dataclass
class Answer:
    status: int
    body: bytes
    media: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    async def send(self, send) -> None:
        pairs = [
            (b"content-type", self.media.encode()),
            (b"content-length", b"%d" % len(self.body)),
        ]
        pairs += [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status, "headers": pairs})
        await send({"type": "http.response.body", "body": self.body})


def failure(status: int, message: str, **headers: str) -> Answer:
    return Answer(status, json.dumps({"error": message}).encode(), headers=headers)


class Inference:
    """POST /v2/models/{name}[/versions/1]/infer, in plain ASGI (see the module's docstring)."""

    def __init__(self, state: State):
        self.state = state

    async def __call__(self, scope, receive, send, name: str, version: str) -> None:
        start = time.perf_counter()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        entry, outcome, answer, timing = None, "bad_request", None, {}
        try:
            if scope["method"] != "POST":
                answer = failure(405, "inference takes POST", Allow="POST")
            elif not self.state.authorized(headers.get("authorization", "")):
                outcome = "unauthorized"
                answer = failure(401, UNAUTHORIZED, **{"WWW-Authenticate": "Bearer"})
            else:
                entry = self.state.lookup(name, version)
                answer, timing = await self.infer(entry, headers, receive)
                outcome = "success"
        except BadRequest as exc:
            answer = failure(400, str(exc))
        except ClientGone:
            outcome = "disconnected"  # nobody to answer; not the request's fault
        except Exception as exc:
            outcome = "error"
            if not isinstance(exc, ModelFailed):  # a bug in edgekit
                exc = f"internal error in edgekit: {type(exc).__name__}: {exc}"
            answer = failure(500, str(exc))
        elapsed = time.perf_counter() - start
        if entry is None:
            self.state.metrics.requests.labels("", outcome).inc()
        else:
            entry.metrics.requests[outcome].inc()
            entry.metrics.request_seconds.observe(elapsed)
        if self.state.access_log is not None:
            model, status = entry.model.name if entry else "", answer.status if answer else 499
            log_line(self.state, scope, model, status, elapsed, timing)
        if answer is not None:
            await answer.send(send)

    async def infer(self, entry: Served, headers: dict, receive) -> tuple[Answer, dict]:
        series, state = entry.metrics, self.state
        series.inflight.inc()
        try:
            body = await read_body(receive, headers, state.max_body)
            length = headers.get(HEADER_LENGTH)
            cost = request_cost(body, length)
            parsed, feeds = await state.off_loop(cost, prepare, entry, body, length, state)
            done = await entry.model.run(feeds)
            content, extra = await state.off_loop(
                response_cost(parsed.header, done.outputs),
                build_response, entry.model.name, "1", parsed.header, done.outputs,
            )  # fmt: skip
        finally:
            series.inflight.dec()
        series.queue_seconds.observe(done.queue_s)
        series.compute_seconds.observe(done.compute_s)
        series.batch_rows.observe(done.batch_rows)
        if entry.shadow is not None:
            entry.shadow.maybe(feeds, done.outputs)
        media = "application/octet-stream" if extra else "application/json"
        timing = {"queue_ms": done.queue_s * 1e3, "compute_ms": done.compute_s * 1e3}
        return Answer(200, content, media, extra), timing


def prepare(entry: Served, body: bytes, header_length: str | None, state: State):
    """The request read and checked against the model, its inputs' range observed."""
    parsed = parse_infer(body, header_length, state.max_body)
    feeds = entry.model.check(parsed)
    entry.ranges.observe(feeds)
    return parsed, feeds


async def read_body(receive, headers: dict, limit: int) -> bytes | bytearray:
    """The whole body, refused (BadRequest) as soon as it is known to be over the limit."""
    too_big = f"the request body is over the server's limit of {limit / 2**20:g} MB (--max-body-mb)"
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise BadRequest("Content-Length is not a number")
        if int(length) > limit:
            raise BadRequest(too_big)
    if headers.get("content-encoding", "identity").lower() != "identity":
        raise BadRequest("compressed request bodies (Content-Encoding) are not supported")
    body = bytearray()  # grown in place: a big body is held once, not as chunks and a join
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if len(body) + len(chunk) > limit:
            raise BadRequest(too_big)
        if not message.get("more_body"):
            if not body:
                return chunk  # the whole body came in one piece: no copy
            body += chunk
            return body
        body += chunk


def log_line(state: State, scope, model: str, status: int, elapsed: float, timing):
    client = scope.get("client")
    record = {
        "ts": time.time(),
        "client": client[0] if client else None,
        "method": scope["method"],
        "path": scope["path"],
        "model": model,
        "status": status,
        "ms": round(elapsed * 1e3, 3),
        **{k: round(v, 3) for k, v in timing.items()},
    }
    line = (json.dumps(record) + "\n").encode()
    with state.log_lock:
        try:
            state.access_log.write(line)
        except OSError as exc:  # a full disk must not fail requests: say so once, go on
            if not state.log_failed:
                state.log_failed = True
                print(
                    f"edgekit: warning: cannot write the access log ({exc.strerror or exc}); "
                    "serving goes on, later lines may be lost.",
                    file=sys.stderr,
                    flush=True,
                )


def writable_kind(mode: int) -> bool:
    return stat.S_ISREG(mode) or stat.S_ISCHR(mode)  # a file, or a device such as /dev/null


def open_access_log(path: str):
    """A binary file with one unbuffered write per line (a failed write leaves nothing queued),
    or stdout for `-`. Refuses what is not a regular file or a character device (a FIFO would
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
