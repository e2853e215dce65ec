"""The server's request path in process, under mutated requests: the ASGI app that uvicorn runs,
called directly with JSON and binary infer requests changed at random (seeded, bounded). Every
answer is 200 or 4xx with a JSON error, never a 500 or an exception; afterwards a correct request
still gets the right outputs."""

from __future__ import annotations

import asyncio
import copy
import json
import random

import numpy as np
import onnxruntime as ort
import pytest
from serve_helpers import output_folder

from edgekit.serve import ServeOptions, build_app

KEY = "fuzz-key"
CASES = 400  # per kind (JSON, binary, bytes); the whole test takes a few seconds
PATH = "/v2/models/m/infer"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app `edgekit serve` runs, as the library builds it: one model (with its input's
    calibration range from the report), an API key, an access log."""
    tmp = tmp_path_factory.mktemp("fuzz")
    folder = output_folder(tmp / "m.edgekit")
    (tmp / "key").write_text(KEY)
    options = ServeOptions(
        folder, variant="fp32", name="m", threads=1, max_batch=4, max_body_mb=1,
        api_key_file=tmp / "key", access_log=str(tmp / "access.jsonl"),
    )  # fmt: skip
    with build_app(options) as service:
        yield service.app, folder / "fp32.onnx"


async def call(app, body: bytes, headers: dict | None = None, path: str = PATH):
    """(status, body) of one request through the ASGI app, as uvicorn would run it (an exception
    out of the app is uvicorn's 500)."""
    scope = {
        "type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
        "query_string": b"", "http_version": "1.1", "scheme": "http", "root_path": "",
        "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        + [(b"content-length", str(len(body)).encode()), (b"authorization", b"Bearer " + KEY.encode())],
    }  # fmt: skip
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)] or [b""]

    async def receive():
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    sent = []

    async def send(message):
        sent.append(message)

    try:
        await app(scope, receive, send)
    except Exception as exc:  # what uvicorn would answer 500
        return 500, f"{type(exc).__name__}: {exc}".encode()
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def x_of(rows: int) -> np.ndarray:
    return np.linspace(-1, 1, rows * 16, dtype=np.float32).reshape(rows, 16)


def json_request(rows: int = 2) -> dict:
    return {
        "id": "r",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 16],
                    "data": x_of(rows).ravel().tolist()}],
        "outputs": [{"name": "y", "parameters": {"binary_data": False}}],
    }  # fmt: skip


def binary_request(rows: int = 2) -> tuple[dict, bytes]:
    head = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 16],
                    "parameters": {"binary_data_size": rows * 64}}],
        "parameters": {"binary_data_output": True},
    }  # fmt: skip
    return head, x_of(rows).tobytes()


JUNK = [
    None, True, False, 0, -1, 1, 2**31, 2**63, 2**63 - 1, -(2**63), 2**64, 10**400, 1.5,
    float("nan"), float("inf"), -float("inf"), "", "x", "FP32", "y", "\x00", "\u202e", "é" * 50,
    [], [1], [[1]], [0] * 100, [2**63] * 2, {}, {"binary_data_size": 64}, {"binary_data": 1},
    list(range(100)), [-1, 16], [1] * 100,
]  # fmt: skip


def mutate_value(rng: random.Random, value):
    """A structurally changed copy of a JSON value: one spot replaced, removed or extended."""
    if isinstance(value, dict) and value and rng.random() < 0.7:
        key = rng.choice(list(value))
        out = dict(value)
        roll = rng.random()
        if roll < 0.2:
            del out[key]
        elif roll < 0.6:
            out[key] = mutate_value(rng, value[key])
        else:
            out[key] = copy.deepcopy(rng.choice(JUNK))
        return out
    if isinstance(value, list) and value and rng.random() < 0.7:
        out = list(value)
        i = rng.randrange(len(out))
        roll = rng.random()
        if roll < 0.2:
            del out[i]
        elif roll < 0.4:
            out.append(copy.deepcopy(rng.choice(JUNK)))
        else:
            out[i] = mutate_value(rng, value[i])
        return out
    return copy.deepcopy(rng.choice(JUNK))


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        roll, i = rng.random(), rng.randrange(len(data) + 1)
        if roll < 0.3 and data:
            data[min(i, len(data) - 1)] = rng.randrange(256)
        elif roll < 0.5:
            del data[i:]
        elif roll < 0.7:
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif roll < 0.85:
            data[i:i] = rng.choice([b"[" * 100_000, b"{" * 1000, b"NaN", b"-Infinity", b"1e999"])
        else:
            del data[i : i + rng.randint(1, 32)]
    return bytes(data)


def header_length_junk(rng: random.Random, good: int) -> str:
    return str(
        rng.choice([good, good - 1, good + 1, 0, -1, 2**63, "", " 12", "1e3", "x", "٣", good * 2])
    )


def check(status: int, body: bytes, what) -> None:
    assert status == 200 or 400 <= status < 500, (what, status, body[:300])
    if status != 200:
        assert "error" in json.loads(body), (what, body[:300])


def test_mutated_requests_get_200_or_4xx_and_the_server_stays_correct(served):
    app, path = served
    rng = random.Random(19)

    async def fuzz():
        for case in range(CASES):
            # JSON requests, changed in structure
            body = json_request(rng.randint(1, 3))
            for _ in range(rng.randint(1, 3)):
                body = mutate_value(rng, body)
            raw = json.dumps(body).encode()
            check(*await call(app, raw), ("json", case, raw[:300]))
            # binary requests: header changed in structure, or the tensor bytes cut or grown
            head, tensor = binary_request(rng.randint(1, 3))
            if rng.random() < 0.6:
                head = mutate_value(rng, head)
            text = json.dumps(head).encode()
            if rng.random() < 0.4:
                tensor = tensor[: rng.randrange(len(tensor) + 1)] + b"\0" * rng.randint(0, 8)
            length = header_length_junk(rng, len(text)) if rng.random() < 0.3 else str(len(text))
            headers = {"Inference-Header-Content-Length": length}
            check(*await call(app, text + tensor, headers), ("binary", case, text, length))
            # bytes changed anywhere, JSON or binary
            raw = json.dumps(json_request(1)).encode() if case % 2 else text + tensor
            check(*await call(app, mutate_bytes(rng, raw)), ("bytes", case))

    asyncio.run(fuzz())

    async def correct():
        x = x_of(3)
        expected = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
        status, data = await call(app, json.dumps(json_request(3)).encode())
        assert status == 200
        got = np.array(json.loads(data)["outputs"][0]["data"], np.float32).reshape(3, 4)
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        head, tensor = binary_request(3)
        text = json.dumps(head).encode()
        headers = {"Inference-Header-Content-Length": str(len(text))}
        status, data = await call(app, text + tensor, headers)
        assert status == 200
        # the binary output follows the JSON header; its length is in the header's parameters
        size = json.loads(data[: data.index(b"}]}") + 3])["outputs"][0]["parameters"]
        got = np.frombuffer(data[-size["binary_data_size"] :], np.float32).reshape(3, 4)
        np.testing.assert_array_equal(got, expected)

    asyncio.run(correct())


@pytest.mark.parametrize(
    "what,body",
    [
        ("a dimension of 2^63", {"inputs": [{"name": "x", "datatype": "FP32",
                                              "shape": [2**63, 0], "data": []}]}),
        ("a dimension of 2^63 in binary", {"inputs": [{"name": "x", "datatype": "FP32",
         "shape": [2**63, 0], "parameters": {"binary_data_size": 0}}]}),
        ("rank 100", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1] * 100,
                                  "parameters": {"binary_data_size": 4}}]}),
        ("an id of 5000 digits", b'{"id": ' + b"9" * 5000 + b', "inputs": []}'),
    ],
)  # fmt: skip
def test_requests_that_were_500_are_400_with_the_reason(served, what, body):
    app, _ = served
    text = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Inference-Header-Content-Length": str(len(text))} if "binary" in what else {}
    if "rank" in what:
        text, headers = text + b"\0" * 4, {"Inference-Header-Content-Length": str(len(text))}
    status, data = asyncio.run(call(app, text, headers))
    assert status == 400, (what, data)
    assert json.loads(data)["error"]


def test_json_nested_100000_deep_is_a_400(served):
    app, _ = served
    status, data = asyncio.run(call(app, b"[" * 100_000 + b"]" * 100_000))
    assert status == 400 and "nested too deeply" in json.loads(data)["error"]
