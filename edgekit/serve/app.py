"""The endpoints: the Open Inference Protocol's routes, /metrics and the monitors. The API key,
the access log and the request counters are middleware around them (edgekit.serve.middleware).

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
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgekit import __version__
from edgekit.serve.metrics import Metrics, ModelMetrics
from edgekit.serve.middleware import note
from edgekit.serve.model import ModelFailed, ServedModel
from edgekit.serve.monitor import InputRange, Shadow
from edgekit.serve.protocol import (
    EXTENSIONS,
    HEADER_LENGTH,
    Answer,
    BadRequest,
    build_response,
    failure,
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

    def close(self) -> None:
        """Stop the models' worker threads and the shadows'."""
        for entry in self.models.values():
            entry.model.stop()
            if entry.shadow:
                entry.shadow.stop()
        self.pool.shutdown()


IDENTITY_HEADER = "edgekit-pid"  # on health responses; launcher.py reads it
# Requests and responses that cost up to 16 KB of JSON parsing (~0.8 ms) are read and built on the
# event loop.
ON_LOOP_COST = 16 * 1024
INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


def routes(state: State, on_ready=None):
    """The endpoints as one ASGI app, without the middleware (edgekit.serve.service.Service.load
    wraps them); `on_ready()` is called once the server accepts requests."""
    metrics = state.metrics

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if on_ready is not None:
            on_ready()
        yield

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
            return failure(400, str(exc))

    async def model_ready(request):
        try:
            return JSONResponse({"name": served(request).model.name, "ready": True})
        except BadRequest as exc:
            return failure(400, str(exc))

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
        return failure(exc.status_code, str(exc.detail))

    async def internal_error(request, exc: Exception):
        return failure(500, f"internal error in edgekit: {type(exc).__name__}: {exc}")

    table = [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server_metadata),
        Route("/metrics", prometheus),
        Route("/edgekit/monitor", monitor),
    ]
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        table += [Route(base, model_metadata), Route(base + "/ready", model_ready)]
    framework = Starlette(
        routes=table,
        exception_handlers={HTTPException: http_error, Exception: internal_error},
        lifespan=lifespan,
    )
    inference = Inference(state)

    async def app(scope, receive, send):
        match = INFER_PATH.fullmatch(scope["path"]) if scope["type"] == "http" else None
        if match:
            await inference(scope, receive, send, match[1], match[2] or "1")
        else:
            await framework(scope, receive, send)

    return app


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class Inference:
    """POST /v2/models/{name}[/versions/1]/infer, in plain ASGI (see the module's docstring)."""

    def __init__(self, state: State):
        self.state = state

    async def __call__(self, scope, receive, send, name: str, version: str) -> None:
        said = note(scope)
        said.inference = True
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            if scope["method"] != "POST":
                answer = failure(405, "inference takes POST", Allow="POST")
            else:
                entry = self.state.lookup(name, version)
                said.model = entry.model.name
                answer = await self.infer(entry, headers, receive, said.timing)
        except BadRequest as exc:
            answer = failure(400, str(exc))
        except ClientGone:
            return  # nobody to answer; not the request's fault
        except Exception as exc:
            if not isinstance(exc, ModelFailed):  # a bug in edgekit
                exc = f"internal error in edgekit: {type(exc).__name__}: {exc}"
            answer = failure(500, str(exc))
        await answer.send(send)

    async def infer(self, entry: Served, headers: dict, receive, timing: dict) -> Answer:
        """The answer to an infer request for `entry`; `timing` receives queue_ms and
        compute_ms."""
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
        timing.update(queue_ms=done.queue_s * 1e3, compute_ms=done.compute_s * 1e3)
        media = "application/octet-stream" if extra else "application/json"
        return Answer(200, content, media, extra)


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
