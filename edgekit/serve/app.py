"""The HTTP side: Starlette routes for the Open Inference Protocol, /metrics and the monitors.

Routes (all JSON; errors are {"error": "..."}):
  GET  /v2/health/live · /v2/health/ready          no API key needed (for probes)
  GET  /v2                                         server metadata and extensions
  GET  /v2/models/{name}[/versions/1]              inputs and outputs
  GET  /v2/models/{name}[/versions/1]/ready
  POST /v2/models/{name}[/versions/1]/infer        JSON tensors or the binary extension
  GET  /metrics                                    Prometheus text format
  GET  /edgekit/monitor                            live drift and input-range summary

The model runs on worker threads (edgekit.serve.model); the event loop only parses and answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import sys
import threading
import time
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgekit import __version__
from edgekit.serve.metrics import Metrics
from edgekit.serve.model import ModelFailed, ServedModel
from edgekit.serve.monitor import InputRange, Shadow
from edgekit.serve.protocol import EXTENSIONS, HEADER_LENGTH, BadRequest, build_response
from edgekit.serve.protocol import parse_request as parse_infer


@dataclass
class Served:
    model: ServedModel
    ranges: InputRange
    shadow: Shadow | None = None


@dataclass
class State:
    models: dict[str, Served]
    metrics: Metrics
    max_body: int  # bytes
    api_key: str | None = None
    access_log: object = None  # a text file, or None
    log_lock: threading.Lock = field(default_factory=threading.Lock)


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def build_app(state: State, on_ready=None) -> Starlette:
    """The ASGI app; `on_ready()` is called once the server accepts requests."""
    metrics = state.metrics

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if on_ready is not None:
            on_ready()
        yield

    def authorized(request: Request) -> bool:
        if state.api_key is None:
            return True
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), state.api_key.encode()
        )

    def guarded(handler):
        async def wrapper(request: Request):
            if not authorized(request):
                metrics.requests.labels("", "unauthorized").inc()
                return error(
                    401,
                    "missing or wrong API key: send the header `Authorization: Bearer <key>`",
                    {"WWW-Authenticate": "Bearer"},
                )
            return await handler(request)

        return wrapper

    def served(request: Request) -> Served:
        name = request.path_params["name"]
        version = request.path_params.get("version", "1")
        if name not in state.models:
            raise BadRequest(f"unknown model '{name}'; this server has: {', '.join(state.models)}")
        if version != "1":
            raise BadRequest(f"model '{name}' has only version 1, not '{version}'")
        return state.models[name]

    async def live(request):
        return JSONResponse({"live": True})

    async def ready(request):
        return JSONResponse({"ready": True})

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

    async def infer(request: Request):
        start = time.perf_counter()
        name, outcome, status, timing = "", "bad_request", 400, {}
        try:
            entry = served(request)
            name = entry.model.name
            metrics.inflight.labels(name).inc()
            try:
                body = await read_body(request, state.max_body)
                parsed = parse_infer(body, request.headers.get(HEADER_LENGTH))
                feeds = entry.model.check(parsed)
                entry.ranges.observe(feeds)
                done = await asyncio.wrap_future(entry.model.submit(feeds))
                content, headers = build_response(name, "1", parsed, done.outputs)
            finally:
                metrics.inflight.labels(name).dec()
            outcome, status = "success", 200
            timing = {"queue_ms": done.queue_s * 1e3, "compute_ms": done.compute_s * 1e3}
            metrics.queue_seconds.labels(name).observe(done.queue_s)
            metrics.compute_seconds.labels(name).observe(done.compute_s)
            metrics.batch_rows.labels(name).observe(done.batch_rows)
            if entry.shadow is not None:
                entry.shadow.maybe(feeds, done.outputs)
            media = "application/octet-stream" if headers else "application/json"
            return Response(content, media_type=media, headers=headers)
        except BadRequest as exc:
            return error(400, str(exc))
        except ModelFailed as exc:
            outcome, status = "error", 500
            return error(500, str(exc))
        finally:
            elapsed = time.perf_counter() - start
            metrics.requests.labels(name, outcome).inc()
            if name:
                metrics.request_seconds.labels(name).observe(elapsed)
            if state.access_log is not None:
                log_line(state, request, name, status, elapsed, timing)

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

    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    routes = [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", guarded(server_metadata)),
        Route("/metrics", guarded(prometheus)),
        Route("/edgekit/monitor", guarded(monitor)),
    ]
    for base in (model, versioned):
        routes += [
            Route(base, guarded(model_metadata)),
            Route(base + "/ready", guarded(model_ready)),
            Route(base + "/infer", guarded(infer), methods=["POST"]),
        ]
    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error, Exception: internal_error},
        lifespan=lifespan,
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused (BadRequest) as soon as it is known to be over the limit."""
    too_big = f"the request body is over the server's limit of {limit / 2**20:g} MB (--max-body-mb)"
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise BadRequest("Content-Length is not a number")
        if int(length) > limit:
            raise BadRequest(too_big)
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise BadRequest("compressed request bodies (Content-Encoding) are not supported")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(too_big)
        chunks.append(chunk)
    return b"".join(chunks)


def log_line(state: State, request: Request, model: str, status: int, elapsed: float, timing):
    record = {
        "ts": time.time(),
        "client": request.client.host if request.client else None,
        "method": request.method,
        "path": request.url.path,
        "model": model,
        "status": status,
        "ms": round(elapsed * 1e3, 3),
        **{k: round(v, 3) for k, v in timing.items()},
    }
    with state.log_lock:
        state.access_log.write(json.dumps(record) + "\n")
        state.access_log.flush()


def open_access_log(path: str):
    if path == "-":
        return sys.stdout
    return open(path, "a", buffering=1)  # noqa: SIM115 (open while the server runs)
