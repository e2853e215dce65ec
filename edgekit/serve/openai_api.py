"""The OpenAI HTTP API for a served language model, as llama.cpp's server, Ollama and vLLM speak it:

  GET  /v1/models                 the one model served
  POST /v1/completions            {"model", "prompt", ...}
  POST /v1/chat/completions       {"model", "messages", ...} (the model's own chat template)
  GET  /health                    no API key needed (for probes)
  GET  /metrics · /edgekit/monitor

`stream: true` answers with server-sent events, one chunk per piece of text, then `data: [DONE]`.
Errors have OpenAI's shape: {"error": {"message", "type", "param", "code"}}. Generation runs on
the engine's worker thread (edgekit.serve.lm_engine); a client that goes away stops its generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
import uuid
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from edgekit.serve.app import IDENTITY_HEADER, ClientGone, read_body
from edgekit.serve.lm_engine import Job, LMEngine
from edgekit.serve.metrics import Metrics
from edgekit.serve.middleware import note
from edgekit.serve.protocol import BadRequest

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
MAX_STOPS = 4  # as OpenAI's API
MAX_SEED = 2**31 - 1


class APIError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        if self.status == 401:
            kind = "authentication_error"
        body = {"message": str(self), "type": kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


@dataclass(frozen=True)
class Ask:
    """A checked request: what the model's worker is asked (lm_worker's "start" command) and how
    the answer goes back."""

    request: dict
    stream: bool
    include_usage: bool


def _number(body: dict, key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise APIError(400, f"'{key}' must be a number from {low:g} to {high:g}", key)
    if not low <= value <= high:
        raise APIError(400, f"'{key}' must be from {low:g} to {high:g}; got {value}", key)
    return float(value)


def _integer(body: dict, key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise APIError(400, f"'{key}' must be a whole number from {low} to {high}", key)
    return value


def _stops(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOPS
        or not all(isinstance(s, str) and s for s in stops)
    ):
        raise APIError(400, f"'stop' must be a string or a list of up to {MAX_STOPS}", "stop")
    return tuple(stops)


def _content(message: dict, index: int) -> str:
    """A message's text: a string, or a list of {"type": "text", "text": ...} parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    raise APIError(
        400,
        f"messages[{index}].content must be a string or a list of text parts (this model "
        "reads text only)",
        f"messages[{index}].content",
    )


def messages_of(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", "messages")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise APIError(
                400,
                f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}",
                f"messages[{i}].role",
            )
        checked.append({"role": message["role"], "content": _content(message, i)})
    return checked


def ask_of(body: dict, chat: bool) -> Ask:
    """The request checked (APIError 400 for what no model can do); the model's worker checks
    what depends on the model (the prompt's length against its context)."""
    n = body.get("n", 1)
    if n != 1:
        raise APIError(400, "'n' must be 1: one answer per request", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise APIError(400, "'stream_options' must be an object", "stream_options")
    if chat:
        request = {"messages": messages_of(body), "prompt": None}
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise APIError(400, "'prompt' must be a string", "prompt")
        request = {"messages": None, "prompt": prompt}
    key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    request.update(
        max_tokens=_integer(body, key, 1, 2**31),
        max_tokens_key=key,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 1e-9, 1.0),
        seed=_integer(body, "seed", 0, MAX_SEED),
        stop=list(_stops(body)),
    )
    return Ask(request, stream, bool(options.get("include_usage")))


def openai_routes(
    engine: LMEngine, name: str, metrics: Metrics, max_body: int, monitor, on_ready=None
):
    """The endpoints as one ASGI app, without the middleware (Service.load wraps them);
    monitor() gives /edgekit/monitor's summary."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if on_ready is not None:
            on_ready()
        yield

    created = int(time.time())

    async def body_of(request: Request) -> dict:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.scope["headers"]}
        try:
            raw = await read_body(request.receive, headers, max_body)
        except BadRequest as exc:
            raise APIError(413 if "limit" in str(exc) else 400, str(exc)) from None
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise APIError(400, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != name:
            raise APIError(
                404, f"The model {str(model)[:200]!r} does not exist; this server serves "
                f"{name!r}.", "model", "model_not_found",
            )  # fmt: skip
        return body

    async def models(request):
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": created, "owned_by": "edgekit"}
                ],
            }
        )

    async def completions(request):
        return await answer(request, chat=False)

    async def chat_completions(request):
        return await answer(request, chat=True)

    async def answer(request: Request, chat: bool):
        said = note(request.scope)
        said.inference, said.model = True, name
        try:
            body = await body_of(request)
        except ClientGone:
            return Response(status_code=499)
        except APIError as exc:
            return exc.response()
        try:
            ask = ask_of(body, chat)
        except APIError as exc:
            return exc.response()
        job = engine.submit(ask.request)
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            # The response starts once the prefill is done: sending its headers (and waking the
            # client) sooner takes the cores from the prefill, which is the time to first token.
            while (event := await _next_event(job, gone)) and event[0] != "started":
                kind, value = event
                if kind == "rejected":
                    return APIError(400, value["message"], value["param"], value["code"]).response()
                if kind == "error":
                    return APIError(500, value).response()
            if event is None:
                engine.cancel(job)
                return Response(status_code=499)  # nobody reads it: the client is gone
            ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
            if ask.stream:
                return StreamingResponse(
                    stream(job, ask, ident, chat),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache"},
                )
            return await whole(job, ask, ident, chat, gone)
        finally:
            gone.cancel()

    def usage(job: Job, ask: Ask) -> dict:
        prompt = job.prompt_tokens
        return {
            "prompt_tokens": prompt,
            "completion_tokens": job.completion_tokens,
            "total_tokens": prompt + job.completion_tokens,
        }

    def envelope(ident: str, kind: str, choices: list) -> dict:
        return {
            "id": ident,
            "object": kind,
            "created": int(time.time()),
            "model": name,
            "choices": choices,
        }

    async def whole(job: Job, ask: Ask, ident: str, chat: bool, gone: asyncio.Future):
        parts, reason = [], None
        while reason is None:
            event = await _next_event(job, gone)
            if event is None:
                engine.cancel(job)
                return Response(status_code=499)  # nobody reads it: the client is gone
            kind, value = event
            if kind == "text":
                parts.append(value)
            elif kind == "error":
                return APIError(500, value).response()
            else:
                reason = value
        text = "".join(parts)
        choice = (
            {"index": 0, "message": {"role": "assistant", "content": text}}
            if chat
            else {"index": 0, "text": text, "logprobs": None}
        )
        choice["finish_reason"] = reason
        result = envelope(ident, "chat.completion" if chat else "text_completion", [choice])
        result["usage"] = usage(job, ask)
        return JSONResponse(result)

    async def stream(job: Job, ask: Ask, ident: str, chat: bool):
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: dict | None, text: str | None, reason: str | None) -> str:
            choice = (
                {"index": 0, "delta": delta or {}}
                if chat
                else {"index": 0, "text": text or "", "logprobs": None}
            )
            choice["finish_reason"] = reason
            event = envelope(ident, kind, [choice])
            if ask.include_usage:
                event["usage"] = None
            return f"data: {json.dumps(event)}\n\n"

        def events(event: str, value) -> tuple[str, bool]:
            """(the server-sent events for one of the job's events, whether the answer ended)"""
            if event == "text":
                return chunk({"content": value}, value, None), False
            if event == "error":
                error = {"message": value, "type": "server_error", "param": None, "code": None}
                return f"data: {json.dumps({'error': error})}\n\n", True
            text = chunk({}, "", value)
            if ask.include_usage:
                last = envelope(ident, kind, [])
                last["usage"] = usage(job, ask)
                text += f"data: {json.dumps(last)}\n\n"
            return text, True

        try:
            if chat:
                yield chunk({"role": "assistant", "content": ""}, None, None)
            ended = False
            while not ended:
                # every event that has come goes out in one write: one chunk per token still,
                # but the client is woken once for the lot
                pending = [await job.events.get()]
                while not job.events.empty():
                    pending.append(job.events.get_nowait())
                parts = []
                for event, value in pending:
                    text, ended = events(event, value)
                    parts.append(text)
                    if ended:
                        break
                yield "".join(parts)
            yield "data: [DONE]\n\n"
        finally:  # also when the client went away (Starlette cancels this generator)
            engine.cancel(job)

    identity = {IDENTITY_HEADER: str(os.getpid())}  # which server answers (edgekit deploy)

    async def health(request):
        if engine.worker_ended:  # a probe's cue to restart the server
            body = {"status": "error", "reason": "the model's worker process ended"}
            return JSONResponse(body, status_code=503, headers=identity)
        return JSONResponse({"status": "ok"}, headers=identity)

    async def prometheus(request):
        data = await asyncio.to_thread(generate_latest, metrics.registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    async def monitor_summary(request):
        return JSONResponse({name: monitor()})

    async def http_error(request, exc: HTTPException):
        return APIError(exc.status_code, str(exc.detail)).response()

    async def internal_error(request, exc: Exception):
        return APIError(500, f"internal error in edgekit: {type(exc).__name__}: {exc}").response()

    return Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/health", health),
            Route("/v2/health/live", health),
            Route("/v2/health/ready", health),
            Route("/metrics", prometheus),
            Route("/edgekit/monitor", monitor_summary),
        ],
        exception_handlers={HTTPException: http_error, Exception: internal_error},
        lifespan=lifespan,
    )


async def _next_event(job: Job, gone: asyncio.Future) -> tuple | None:
    """The job's next event, or None once its client has gone away."""
    get = asyncio.ensure_future(job.events.get())
    done, _ = await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
    if get in done:
        return get.result()
    get.cancel()
    return None


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone away."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
