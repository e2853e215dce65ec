"""The middleware around the server's endpoints (edgekit.serve.middleware), driven in process as
uvicorn drives an ASGI app: authentication, request counting, the access log and its writer."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import threading
import time

import pytest
from serve_helpers import metric, metric_values

from edgekit.serve import middleware
from edgekit.serve.metrics import Metrics
from edgekit.serve.protocol import Answer, failure


async def call(app, path: str = "/v2/models/m/infer", headers: dict | None = None):
    """(status or None, headers, body) of one request through `app`."""
    scope = {
        "type": "http", "method": "POST", "path": path, "client": ("10.0.0.7", 5000),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }  # fmt: skip
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    if not sent:
        return None, {}, b""
    head = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], head, sent[1]["body"]


def endpoint(status: int | None, model: str = "m"):
    """An inference endpoint that answers `status` (None: the client went away unanswered)."""

    async def app(scope, receive, send):
        said = middleware.note(scope)
        said.inference, said.model = True, model
        said.timing["queue_ms"] = 1.23456
        if status is not None:
            await (Answer(200, b"{}") if status == 200 else failure(status, "no")).send(send)

    return app


def test_a_wrong_or_missing_key_is_401_before_any_endpoint_runs_and_probes_need_none():
    metrics, ran = Metrics(), []

    async def inner(scope, receive, send):
        ran.append(scope["path"])
        await Answer(200, b"{}").send(send)

    app = middleware.Authenticate(inner, "s3cret", metrics)

    async def main():
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic s3cret"}):
            status, head, body = await call(app, "/metrics", headers)
            assert status == 401 and head["www-authenticate"] == "Bearer"
            assert "API key" in json.loads(body)["error"]
        assert ran == []
        assert (await call(app, "/v2/health/ready"))[0] == 200
        assert (await call(app, "/metrics", {"Authorization": "bearer  s3cret"}))[0] == 200

    asyncio.run(main())
    assert ran == ["/v2/health/ready", "/metrics"]
    values = metric_values(middleware_metrics_text(metrics))
    assert metric(values, "edgekit_requests_total", model="", outcome="unauthorized") == 3


def middleware_metrics_text(metrics: Metrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


@pytest.mark.parametrize(
    "status,outcome",
    [(200, "success"), (400, "bad_request"), (405, "bad_request"), (500, "error"),
     (None, "disconnected")],
)  # fmt: skip
def test_inference_requests_are_counted_by_model_and_outcome(status, outcome):
    metrics = Metrics()
    series = {"m": metrics.for_model("m")}
    app = middleware.CountRequests(endpoint(status), metrics, series)
    asyncio.run(call(app))
    asyncio.run(call(middleware.CountRequests(endpoint(status, model=""), metrics, series)))
    values = metric_values(middleware_metrics_text(metrics))
    assert metric(values, "edgekit_requests_total", model="m", outcome=outcome) == 1
    assert metric(values, "edgekit_requests_total", model="", outcome=outcome) == 1
    assert metric(values, "edgekit_request_duration_seconds_count", model="m") == 1


def test_the_access_log_has_a_line_per_request_with_what_the_endpoint_said(tmp_path):
    log = tmp_path / "access.jsonl"
    writer = middleware.LogWriter(middleware.open_access_log(str(log)))
    app = middleware.AccessLog(endpoint(200), writer)
    asyncio.run(call(app))
    asyncio.run(call(middleware.AccessLog(endpoint(None), writer), "/gone"))
    writer.close()  # writes what is queued
    first, second = (json.loads(line) for line in log.read_text().splitlines())
    assert (first["method"], first["path"], first["status"], first["model"]) == (
        "POST", "/v2/models/m/infer", 200, "m",
    )  # fmt: skip
    assert first["client"] == "10.0.0.7" and first["queue_ms"] == 1.235 and first["ms"] >= 0
    assert (second["path"], second["status"]) == ("/gone", 499)


def test_a_log_that_cannot_be_written_blocks_no_request():
    """A pipe nobody reads from: a write blocks once the pipe is full. Requests are answered
    all the same (the writer thread waits, not the event loop), and the lines come once the
    reader does."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETFL, fcntl.fcntl(write_end, fcntl.F_GETFL) | os.O_NONBLOCK)
    try:
        while True:
            os.write(write_end, b"\0" * 65536)
    except BlockingIOError:
        pass  # full
    os.set_blocking(write_end, True)
    writer = middleware.LogWriter(open(write_end, "ab", buffering=0))  # noqa: SIM115
    app = middleware.AccessLog(endpoint(200), writer)

    async def requests():
        for _ in range(50):
            assert (await call(app))[0] == 200

    start = time.perf_counter()
    asyncio.run(asyncio.wait_for(requests(), timeout=10))
    assert time.perf_counter() - start < 5
    chunks = []

    def read_all():
        with open(read_end, "rb") as reader:
            while chunk := reader.read(65536):
                chunks.append(chunk)

    reader = threading.Thread(target=read_all)
    reader.start()
    writer.close()  # the queued lines, written once the reader reads; then the pipe closes
    reader.join(timeout=30)
    data = b"".join(chunks)
    assert data.count(b'"path": "/v2/models/m/infer"') == 50


def test_a_full_disk_is_said_once_and_serving_goes_on(capfd):
    writer = middleware.LogWriter(middleware.open_access_log("/dev/full"))
    app = middleware.AccessLog(endpoint(200), writer)
    for _ in range(3):
        assert asyncio.run(call(app))[0] == 200
    writer.close()
    err = capfd.readouterr().err
    assert err.count("cannot write the access log") == 1 and "serving goes on" in err
