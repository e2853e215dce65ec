"""The Open Inference Protocol parser and response builder (edgekit.serve.protocol), called
directly: no server, no model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.serve.protocol import (
    BadRequest,
    build_response,
    failure,
    parse_request,
    request_cost,
    response_cost,
)

MB = 2**20


def binary_body(arrays: dict[str, np.ndarray], **request) -> tuple[bytes, str]:
    """(body, Inference-Header-Content-Length) of a binary-extension request."""
    inputs = [
        {"name": name, "datatype": {"float32": "FP32", "int64": "INT64"}[str(a.dtype)],
         "shape": list(a.shape), "parameters": {"binary_data_size": a.nbytes}}
        for name, a in arrays.items()
    ]  # fmt: skip
    head = json.dumps({"inputs": inputs, **request}).encode()
    return head + b"".join(a.tobytes() for a in arrays.values()), str(len(head))


def test_json_request_gives_arrays_of_the_declared_type_and_shape():
    body = {
        "id": 7,
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [0, 1, 2, 3, 4, 5]},
            {"name": "ids", "datatype": "INT64", "shape": [2], "data": [2**40, -1]},
        ],
        "outputs": [{"name": "b", "parameters": {"binary_data": True}}, {"name": "a"}],
        "parameters": {"binary_data_output": False},
    }
    request = parse_request(json.dumps(body).encode(), None, MB)
    x, ids = request.inputs["x"], request.inputs["ids"]
    assert x.dtype == np.float32 and x.shape == (2, 3) and x[1, 2] == 5
    assert ids.dtype == np.int64 and ids.tolist() == [2**40, -1]
    header = request.header
    assert header.id == "7" and header.outputs == ("b", "a")
    assert header.binary == {"b": True} and header.binary_default is False


def test_binary_request_reads_each_input_from_its_slice_of_the_body():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    ids = np.array([[5, 6]], np.int64)
    body, length = binary_body({"x": x, "ids": ids})
    request = parse_request(body, length, MB)
    np.testing.assert_array_equal(request.inputs["x"], x)
    np.testing.assert_array_equal(request.inputs["ids"], ids)
    assert request.header.outputs is None  # all outputs


def test_the_same_small_header_is_read_once_and_its_data_cannot_be_changed():
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    ).encode()
    first, second = parse_request(body, None, MB), parse_request(bytearray(body), None, MB)
    assert first.header is second.header  # cached
    with pytest.raises(ValueError):
        first.inputs["x"][0, 0] = 9  # shared between requests: read-only


def json_input(**fields) -> bytes:
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2], **fields}
    return json.dumps({"inputs": [tensor]}).encode()


BAD = [
    # (what, body, Inference-Header-Content-Length, words in the message)
    ("not JSON", b"{nope", None, "not valid JSON"),
    ("not an object", b"[1, 2]", None, "must be a JSON object"),
    ("no inputs", b'{"inputs": []}', None, "no 'inputs' list"),
    ("an input twice", json.dumps({"inputs": [json.loads(json_input())["inputs"][0]] * 2}).encode(),
     None, "given twice"),
    ("unknown datatype", json_input(datatype="FLOAT"), None, "datatype 'FLOAT'"),
    ("BYTES is not served", json_input(datatype="BYTES"), None, "datatype 'BYTES'"),
    ("negative dimension", json_input(shape=[-1, 2]), None, "list of integers"),
    ("boolean dimension", json_input(shape=[True, 2]), None, "list of integers"),
    ("rank over 32", json_input(shape=[1] * 33, data=[1]), None, "rank 33"),
    ("too few numbers", json_input(data=[1]), None, "has 1 elements but shape [1, 2] needs 2"),
    ("not numbers", json_input(data=["a", "b"]), None, "not a list of FP32 numbers"),
    ("neither data nor binary",
     json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2]}]}).encode(), None,
     "neither 'data' nor"),
    ("nested too deeply", b"[" * 100_000 + b"]" * 100_000, None, "nested too deeply"),
    ("header length not a number", b"{}", "x", "not an integer"),
    ("header length past the body", b"{}", "3", "is 3 but the body has 2 bytes"),
    ("header length zero", b"{}", "0", "is 0"),
    ("classification", json.dumps({"inputs": json.loads(json_input())["inputs"],
     "outputs": [{"name": "y", "parameters": {"classification": 3}}]}).encode(), None,
     "classification extension"),
]  # fmt: skip


@pytest.mark.parametrize("what,body,length,words", BAD, ids=[b[0] for b in BAD])
def test_a_bad_request_is_a_bad_request_that_says_why(what, body, length, words):
    with pytest.raises(BadRequest) as caught:
        parse_request(body, length, MB)
    assert words in str(caught.value), str(caught.value)


def test_binary_sizes_must_match_the_shape_and_add_up_to_the_body():
    x = np.zeros((1, 4), np.float32)
    body, length = binary_body({"x": x})
    with pytest.raises(BadRequest, match="does not fit the 8 bytes left"):
        parse_request(body[:-8], length, MB)
    with pytest.raises(BadRequest, match="add up to 16"):
        parse_request(body + b"\0", length, MB)
    wrong = body.replace(b'"binary_data_size": 16', b'"binary_data_size": 12')
    with pytest.raises(BadRequest, match="needs 16"):
        parse_request(wrong[:-4], str(int(length)), MB)


def test_json_numbers_are_bounded_by_the_body_limit_before_parsing():
    numbers = 2000
    body = json_input(shape=[1, numbers], data=[0] * numbers)
    with pytest.raises(BadRequest, match="Send large tensors as binary"):
        parse_request(body, None, 64 * 1000)  # room for 1000 numbers
    assert parse_request(body, None, 64 * 4000).inputs["x"].shape == (1, numbers)


def test_response_in_json_or_binary_as_asked_with_the_id():
    y = np.arange(4, dtype=np.float32).reshape(2, 2)
    z = np.array([1, 0], np.int64)
    request = json.dumps(
        {"id": "r1", "inputs": json.loads(json_input())["inputs"],
         "outputs": [{"name": "z"}, {"name": "y", "parameters": {"binary_data": True}}]}
    ).encode()  # fmt: skip
    header = parse_request(request, None, MB).header
    body, extra = build_response("m", "1", header, {"y": y, "z": z})
    size = int(extra["Inference-Header-Content-Length"])
    head = json.loads(body[:size])
    assert head["id"] == "r1" and head["model_name"] == "m" and head["model_version"] == "1"
    assert [o["name"] for o in head["outputs"]] == ["z", "y"]  # in the order asked
    assert head["outputs"][0] == {"name": "z", "datatype": "INT64", "shape": [2], "data": [1, 0]}
    assert head["outputs"][1]["parameters"] == {"binary_data_size": 16}
    np.testing.assert_array_equal(np.frombuffer(body[size:], np.float32).reshape(2, 2), y)
    plain = parse_request(json_input(), None, MB).header
    body, extra = build_response("m", "1", plain, {"y": y})
    assert extra == {} and json.loads(body)["outputs"][0]["data"] == [0, 1, 2, 3]


def test_costs_count_json_bytes_and_a_fraction_of_binary_bytes():
    x = np.zeros((1, 1024), np.float32)
    body, length = binary_body({"x": x})
    assert request_cost(body, length) == int(length) + 4096 // 16
    assert request_cost(body, None) == len(body)  # all JSON
    header = parse_request(body, length, MB).header
    assert response_cost(header, {"y": x}) == 1024 * 24  # written as JSON numbers


def test_every_error_is_a_json_object_with_the_message():
    answer = failure(405, "inference takes POST", Allow="POST")
    assert answer.status == 405 and answer.headers == {"Allow": "POST"}
    assert json.loads(answer.body) == {"error": "inference takes POST"}
