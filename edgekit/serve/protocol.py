"""The Open Inference Protocol (KServe v2 / Triton HTTP) on the wire: request parsing, response
building, the binary tensor data extension and the datatype map. No web framework here.

A request body is JSON, or JSON followed by raw tensor bytes when the header
`Inference-Header-Content-Length` gives the JSON's length; an input whose `parameters` carry
`binary_data_size` takes that many bytes from the binary part, in the order the inputs are listed.
A response puts an output in binary when the request asked for it (`outputs[].parameters.binary_data`
or `parameters.binary_data_output`), else in JSON (`data`, row-major, flat). An error is
{"error": "..."} with its HTTP status (`failure`); `Answer` sends a response in plain ASGI.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field

import numpy as np

EXTENSIONS = ["binary_tensor_data"]
HEADER_LENGTH = "inference-header-content-length"

# OIP datatype <-> numpy dtype; ORT's type strings -> OIP datatype. BYTES (strings) is not served.
TO_NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}  # fmt: skip
FROM_NUMPY = {np.dtype(v): k for k, v in TO_NUMPY.items()}
FROM_ORT = {
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(int8)": "INT8",
    "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}  # fmt: skip


class BadRequest(Exception):
    """The client sent something the protocol or the model does not accept: HTTP 400."""


@dataclass(frozen=True)
class _Input:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    size: int | None  # bytes in the binary part; None when the data came in the JSON
    data: np.ndarray | None  # the JSON data (read-only: a cached header is shared)


@dataclass(frozen=True)
class Header:
    """What the JSON part of a request says. Shared between requests with the same header."""

    id: str | None
    tensors: tuple[_Input, ...]
    outputs: tuple[str, ...] | None  # requested output names, in order; None: all
    binary: dict[str, bool]  # output name -> send as binary
    binary_default: bool


@dataclass
class InferRequest:
    header: Header
    inputs: dict[str, np.ndarray]


# A client sending binary tensors sends the same JSON header with every request: reading it once
# saves ~10 µs of the request path. Only small headers are kept (JSON data makes headers large).
CACHED_HEADER_BYTES = 4096


def _object(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return value


# What a JSON number costs while Python parses it (a float object, the list's pointer, the text
# and the numpy copy: measured ~80 MB peak for a request of 1M numbers): a JSON request may carry
# at most max_body / JSON_BYTES_PER_NUMBER numbers (1M at the default --max-body-mb 64), counted
# before parsing. Binary tensors cost their bytes and are bounded by max_body alone.
JSON_BYTES_PER_NUMBER = 64
MAX_RANK = 32  # numpy's limit is 32 (1.x) or 64 (2.x); no served model comes near it
MAX_DIM = 2**63 - 1  # ONNX dimensions are int64


def parse_request(
    body: bytes | bytearray, header_length: str | None, max_body: int
) -> InferRequest:
    """Read an infer request body; BadRequest says what is wrong with it. The one place where a
    failure to read a request becomes a 400: whatever the body holds, the answer is never a 500."""
    try:
        return _parse_request(body, header_length, max_body)
    except BadRequest:
        raise
    except RecursionError:
        raise BadRequest("the request's JSON is nested too deeply") from None
    except (ValueError, TypeError, OverflowError, MemoryError) as exc:
        raise BadRequest(f"the request could not be read: {type(exc).__name__}: {exc}") from None


def _parse_request(body: bytes, header_length: str | None, max_body: int) -> InferRequest:
    if header_length is None:
        head, binary = body, b""
    else:
        try:
            size = int(header_length)
        except ValueError:
            raise BadRequest("Inference-Header-Content-Length is not an integer") from None
        if not 0 < size <= len(body):
            raise BadRequest(
                f"Inference-Header-Content-Length is {size} but the body has {len(body)} bytes"
            )
        head, binary = body[:size], memoryview(body)[size:]
    numbers = head.count(b",") + 1  # at least the numbers in the JSON; cheap (no parsing)
    if numbers * JSON_BYTES_PER_NUMBER > max_body:
        raise BadRequest(
            f"the request's JSON holds up to {numbers} numbers; this server reads at most "
            f"{max_body // JSON_BYTES_PER_NUMBER} in JSON (--max-body-mb / "
            f"{JSON_BYTES_PER_NUMBER}: each costs ~{JSON_BYTES_PER_NUMBER} bytes while parsed). "
            "Send large tensors as binary (the binary tensor data extension; Triton's client "
            "does by default)."
        )
    small = len(head) <= CACHED_HEADER_BYTES
    header = _cached_header(bytes(head)) if small else _read_header(head)
    inputs, offset = {}, 0
    for tensor in header.tensors:
        if tensor.size is None:
            inputs[tensor.name] = tensor.data
            continue
        if offset + tensor.size > len(binary):
            raise BadRequest(
                f"input '{tensor.name}': binary_data_size {tensor.size} does not fit the "
                f"{len(binary) - offset} bytes left in the body"
            )
        part = binary[offset : offset + tensor.size]
        inputs[tensor.name] = np.frombuffer(part, dtype=tensor.dtype).reshape(tensor.shape)
        offset += tensor.size
    if offset != len(binary):
        raise BadRequest(
            f"the binary part has {len(binary)} bytes but the inputs' binary_data_size add up "
            f"to {offset}"
        )
    return InferRequest(header, inputs)


def _read_header(head: bytes) -> Header:
    try:
        request = _object(json.loads(head), "the request")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the request header is not valid JSON: {exc}") from None
    parameters = _object(request.get("parameters") or {}, "parameters")
    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("the request has no 'inputs' list")
    inputs = {}
    for raw in raw_inputs:
        tensor = _object(raw, "each input")
        name = tensor.get("name")
        if not isinstance(name, str):
            raise BadRequest("an input has no 'name'")
        if name in inputs:
            raise BadRequest(f"input '{name}' is given twice")
        inputs[name] = _read_input(tensor, name)
    outputs, flags = None, {}
    if request.get("outputs") is not None:
        if not isinstance(request["outputs"], list):
            raise BadRequest("'outputs' must be a list")
        outputs = []
        for raw in request["outputs"]:
            out = _object(raw, "each requested output")
            if not isinstance(out.get("name"), str):
                raise BadRequest("a requested output has no 'name'")
            params = _object(out.get("parameters") or {}, "an output's parameters")
            if params.get("classification"):
                raise BadRequest("the classification extension is not supported")
            outputs.append(out["name"])
            if "binary_data" in params:
                flags[out["name"]] = bool(params["binary_data"])
    request_id = request.get("id")
    return Header(
        id=None if request_id is None else str(request_id),
        tensors=tuple(inputs.values()),
        outputs=None if outputs is None else tuple(outputs),
        binary=flags,
        binary_default=bool(parameters.get("binary_data_output", False)),
    )


_cached_header = functools.lru_cache(maxsize=64)(_read_header)


def _read_input(tensor: dict, name: str) -> _Input:
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    if datatype not in TO_NUMPY:
        raise BadRequest(
            f"input '{name}': datatype {datatype!r} is not one of {', '.join(TO_NUMPY)}"
        )
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape
    ):
        raise BadRequest(f"input '{name}': 'shape' must be a list of integers from 0 to 2^63-1")
    if len(shape) > MAX_RANK:
        raise BadRequest(f"input '{name}': rank {len(shape)} is over {MAX_RANK} dimensions")
    dtype = np.dtype(TO_NUMPY[datatype])
    count = math.prod(shape)
    params = _object(tensor.get("parameters") or {}, f"input '{name}' parameters")
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest(f"input '{name}': binary_data_size {size!r} is not a number of bytes")
        if size != count * dtype.itemsize:
            raise BadRequest(
                f"input '{name}': binary_data_size is {size} bytes but shape {shape} of "
                f"{datatype} needs {count * dtype.itemsize}"
            )
        return _Input(name, dtype, tuple(shape), size, None)
    if "data" not in tensor:
        raise BadRequest(f"input '{name}' has neither 'data' nor parameters.binary_data_size")
    try:
        array = np.asarray(tensor["data"], dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        raise BadRequest(f"input '{name}': 'data' is not a list of {datatype} numbers") from None
    if array.size != count:
        raise BadRequest(
            f"input '{name}': 'data' has {array.size} elements but shape {shape} needs {count}"
        )
    array = array.reshape(shape)
    array.flags.writeable = False
    return _Input(name, dtype, tuple(shape), None, array)


# What reading a request or building a response costs, in bytes of JSON parsed (~50 ns each on a
# 2-core VM): writing one number as JSON costs about as much as parsing 24 bytes; binary tensors
# are copied or only viewed, ~1/16 of a JSON byte each.
JSON_NUMBER_WRITE = 24
BINARY_BYTE = 1 / 16


def request_cost(body: bytes, header_length: str | None) -> int:
    head = len(body)
    if header_length is not None and header_length.isdecimal():
        head = min(int(header_length), len(body))
    return head + int((len(body) - head) * BINARY_BYTE)


def response_cost(header: Header, results: dict[str, np.ndarray]) -> int:
    return sum(
        int(a.nbytes * BINARY_BYTE)
        if header.binary.get(name, header.binary_default)
        else a.size * JSON_NUMBER_WRITE
        for name, a in results.items()
    )


def build_response(
    model: str, version: str, header: Header, results: dict[str, np.ndarray]
) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers (Inference-Header-Content-Length when binary)."""
    names = header.outputs if header.outputs is not None else list(results)
    outputs, chunks = [], []
    for name in names:
        array = np.ascontiguousarray(results[name])
        entry = {"name": name, "datatype": FROM_NUMPY[array.dtype], "shape": list(array.shape)}
        if header.binary.get(name, header.binary_default):
            data = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = array.ravel().tolist()
        outputs.append(entry)
    response = {"model_name": model, "model_version": version, "outputs": outputs}
    if header.id is not None:
        response["id"] = header.id
    head = json.dumps(response, separators=(",", ":")).encode()
    if not chunks:
        return head, {}
    return b"".join([head, *chunks]), {"Inference-Header-Content-Length": str(len(head))}


@dataclass
class Answer:
    """An HTTP response, sent in plain ASGI."""

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

    async def __call__(self, scope, receive, send) -> None:
        """As an ASGI app: how Starlette sends what an endpoint returns."""
        await self.send(send)


def failure(status: int, message: str, **headers: str) -> Answer:
    """Every error response of the server: {"error": message}."""
    return Answer(status, json.dumps({"error": message}).encode(), headers=headers)
