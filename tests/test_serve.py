"""`edgekit serve` as a real process on a free port, driven by Triton's own HTTP client (binary
tensors, its defaults) and by plain JSON over urllib. The server runs with torch unimportable."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from helpers import run_edgekit, torch_blocked_env
from serve_helpers import (
    Server,
    dynamic_int8_model,
    http,
    infer_at_once,
    metric,
    metric_values,
    output_folder,
    poll,
    slow_model,
)

from edgekit.fsutil import sha256_file

pytestmark = pytest.mark.slow  # every test here starts a process or exports with torch

tritonclient_http = pytest.importorskip("tritonclient.http")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return output_folder(tmp_path_factory.mktemp("served") / "model.edgekit")


@pytest.fixture(scope="module")
def server(folder, tmp_path_factory):
    """All variants, a small body limit, a shadow on every request, an access log; torch
    blocked as on a device with the core install and the serve extra."""
    tmp = tmp_path_factory.mktemp("blocked")
    log = tmp / "access.jsonl"
    srv = Server(
        folder, "--variant", "all", "--max-body-mb", "0.01", "--shadow", "fp32",
        "--shadow-rate", "1", "--access-log", log, "--threads", "1",
        env=torch_blocked_env(tmp),
    )  # fmt: skip
    srv.access_log = log
    yield srv
    assert srv.stop() == 0, "".join(srv.stderr)


def reference(folder, name, x):
    session = ort.InferenceSession(str(folder / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def infer_json(url, model, body, headers=None):
    status, _, data = http(f"{url}/v2/models/{model}/infer", body, headers)
    return status, json.loads(data)


def test_triton_client_with_its_defaults_gets_onnxruntime_outputs(server, folder):
    client = tritonclient_http.InferenceServerClient(server.hostport)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("int8-static")
    meta = client.get_model_metadata("int8-static")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]

    x = np.random.default_rng(1).uniform(-1, 1, (3, 16)).astype(np.float32)
    tensor = tritonclient_http.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)  # binary_data=True: the client's default
    result = client.infer("int8-static", [tensor], request_id="req-1")
    assert result.get_response()["id"] == "req-1"
    assert result.get_response()["outputs"][0]["parameters"]["binary_data_size"] == 3 * 4 * 4
    np.testing.assert_array_equal(result.as_numpy("y"), reference(folder, "int8-static", x))

    # a requested output in JSON, the input as JSON too
    tensor.set_data_from_numpy(x, binary_data=False)
    wanted = [tritonclient_http.InferRequestedOutput("y", binary_data=False)]
    result = client.infer("fp32", [tensor], outputs=wanted)
    assert "data" in result.get_response()["outputs"][0]
    np.testing.assert_allclose(result.as_numpy("y"), reference(folder, "fp32", x), rtol=1e-6)


def test_plain_json_request_and_binary_by_hand(server, folder):
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)
    status, body = infer_json(
        server.url,
        "fp32",
        {"id": "42", "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 16],
                                "data": x.tolist()}]},
    )  # fmt: skip
    assert status == 200 and body["id"] == "42" and body["model_name"] == "fp32"
    (out,) = body["outputs"]
    assert out["name"] == "y" and out["shape"] == [2, 4] and out["datatype"] == "FP32"
    expected = reference(folder, "fp32", x)
    np.testing.assert_allclose(np.array(out["data"]).reshape(2, 4), expected, rtol=1e-6)

    # binary in, binary out for the one output asked for, by hand
    head = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 16],
                     "parameters": {"binary_data_size": x.nbytes}}],
         "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}
    ).encode()  # fmt: skip
    status, headers, data = http(
        f"{server.url}/v2/models/fp32/infer",
        head + x.tobytes(),
        {"Inference-Header-Content-Length": str(len(head))},
    )
    assert status == 200
    size = int(headers["inference-header-content-length"])
    meta = json.loads(data[:size])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 2 * 4 * 4
    got = np.frombuffer(data[size:], np.float32).reshape(2, 4)
    np.testing.assert_array_equal(got, expected)


def test_the_same_header_with_other_tensors_gets_their_own_outputs(server, folder):
    """A binary client sends one JSON header again and again; the server reads it once. Each
    request must still get the outputs of its own tensors, also through /versions/1/."""
    head = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16],
                     "parameters": {"binary_data_size": 64}}],
         "parameters": {"binary_data_output": True}}
    ).encode()  # fmt: skip
    headers = {"Inference-Header-Content-Length": str(len(head))}
    rng = np.random.default_rng(7)
    for path in ["fp32", "fp32/versions/1"] * 3:
        x = rng.uniform(-1, 1, (1, 16)).astype(np.float32)
        status, got, data = http(
            f"{server.url}/v2/models/{path}/infer", head + x.tobytes(), headers
        )
        assert status == 200
        size = int(got["inference-header-content-length"])
        y = np.frombuffer(data[size:], np.float32).reshape(1, 4)
        np.testing.assert_allclose(y, reference(folder, "fp32", x), rtol=1e-6)
    # the same JSON-data request twice: same answer both times
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.25] * 16}]}
    first, second = infer_json(server.url, "fp32", body), infer_json(server.url, "fp32", body)
    assert first == second and first[0] == 200


def test_infer_takes_post_only(server):
    status, headers, data = http(f"{server.url}/v2/models/fp32/infer")
    assert status == 405 and headers["allow"] == "POST"
    assert "POST" in json.loads(data)["error"]


def binary(declared: int, sent: int) -> tuple[bytes, dict]:
    """A binary-extension body declaring `declared` bytes for x[1,16] and carrying `sent`."""
    head = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16],
                     "parameters": {"binary_data_size": declared}}]}
    ).encode()  # fmt: skip
    return head + b"\0" * sent, {"Inference-Header-Content-Length": str(len(head))}


BAD = [
    # (what, model, body or raw bytes, headers, status, words in the message)
    ("unknown model", "nope", {"inputs": []}, None, 400, "unknown model 'nope'"),
    ("malformed JSON", "fp32", b"{not json", None, 400, "not valid JSON"),
    ("no inputs", "fp32", {"inputs": []}, None, 400, "no 'inputs'"),
    ("wrong input name", "fp32",
     {"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 16], "data": [0] * 16}]},
     None, 400, "has no input 'z'"),
    ("wrong shape", "fp32",
     {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 15], "data": [0] * 15}]},
     None, 400, "not [1, 15]"),
    ("data does not fill the shape", "fp32",
     {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0] * 3}]},
     None, 400, "has 3 elements"),
    ("wrong datatype", "fp32",
     {"inputs": [{"name": "x", "datatype": "INT64", "shape": [1, 16], "data": [0] * 16}]},
     None, 400, "is FP32, not INT64"),
    ("unknown datatype", "fp32",
     {"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [1, 16], "data": [0] * 16}]},
     None, 400, "datatype 'FLOAT'"),
    ("unknown output", "fp32",
     {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0] * 16}],
      "outputs": [{"name": "nope"}]}, None, 400, "has no output 'nope'"),
    ("header length past the body", "fp32", b'{"inputs": []}',
     {"Inference-Header-Content-Length": "999"}, 400, "Inference-Header-Content-Length is 999"),
    ("binary size past the body", "fp32", *binary(64, 10), 400, "does not fit"),
    ("binary size not the shape's", "fp32", *binary(60, 60), 400, "needs 64"),
    ("bytes left over", "fp32", *binary(64, 70), 400, "add up to 64"),
    ("body over --max-body-mb", "fp32", b"x" * 20000, None, 400, "--max-body-mb"),
    ("the model fails", "fragile",
     {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0] * 16}]},
     None, 500, "model 'fragile' failed"),
]  # fmt: skip


@pytest.mark.parametrize("what,model,body,headers,status,words", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_status_and_message_and_the_server_goes_on(
    server, what, model, body, headers, status, words
):
    got, _, data = http(f"{server.url}/v2/models/{model}/infer", body, headers)
    assert got == status
    message = json.loads(data)["error"]
    assert words in message, message
    # still serving
    x = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
    assert infer_json(server.url, "fp32", x)[0] == 200


def test_fragile_model_runs_when_its_inputs_fit(server):
    x = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [5, 16], "data": [1.0] * 80}]}
    status, body = infer_json(server.url, "fragile", x)
    assert status == 200 and body["outputs"][0]["shape"] == [16, 5]


def test_metrics_parse_and_counters_move(server, folder):
    before = metric_values(http(f"{server.url}/metrics")[2].decode())
    x = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.1] * 16}]}
    for _ in range(3):
        assert infer_json(server.url, "int8-static", x)[0] == 200
    bad = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [0.1] * 2}]}
    assert infer_json(server.url, "int8-static", bad)[0] == 400
    after = metric_values(http(f"{server.url}/metrics")[2].decode())

    def moved(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    m = {"model": "int8-static"}
    assert moved("edgekit_requests_total", outcome="success", **m) == 3
    assert moved("edgekit_requests_total", outcome="bad_request", **m) == 1
    assert moved("edgekit_queue_duration_seconds_count", **m) == 3
    assert moved("edgekit_compute_duration_seconds_count", **m) == 3
    assert moved("edgekit_request_duration_seconds_count", **m) == 4
    assert moved("edgekit_compute_duration_seconds_sum", **m) > 0
    assert moved("edgekit_batch_size_count", **m) == 3
    assert metric(after, "edgekit_inflight_requests", **m) == 0
    assert metric(after, "process_resident_memory_bytes") > 10e6
    assert ("process_cpu_seconds_total", frozenset()) in after
    sha256 = sha256_file(folder / "fp32.onnx")
    assert metric(after, "edgekit_model_info", model="fp32", file="fp32.onnx", sha256=sha256)


def test_input_range_and_live_drift_monitor(server):
    inside = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
    outside = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [3.0] * 16}]}
    before = metric_values(http(f"{server.url}/metrics")[2].decode())
    for body in (inside, outside, outside):
        assert infer_json(server.url, "int8-static", body)[0] == 200
    summary = poll(  # the shadow runs off the request path: wait for it
        lambda: json.loads(http(f"{server.url}/edgekit/monitor")[2])["int8-static"],
        lambda summary: summary["drift"]["totals"]["comparisons"] >= 3,
        timeout=20,
    )
    after = metric_values(http(f"{server.url}/metrics")[2].decode())
    labels = {"model": "int8-static", "input": "x"}
    checked = "edgekit_input_range_checked_requests_total"
    outside_total = "edgekit_input_outside_calibration_requests_total"
    assert metric(after, checked, **labels) - metric(before, checked, **labels) == 3
    assert metric(after, outside_total, **labels) - metric(before, outside_total, **labels) == 2
    assert metric(after, "edgekit_input_range_available", **labels) == 1
    assert summary["inputs"]["x"]["calibration"]["max"] == 1.0
    drift = summary["drift"]
    assert drift["shadow"] == "fp32" and drift["budget"] == "cosine>=0.99"
    assert drift["window"]["cosine_min"] > 0.999 and drift["breached"] is False
    assert drift["window"]["top1_agreement"] == 1.0
    shadow = {"model": "int8-static", "shadow": "fp32"}
    assert metric(after, "edgekit_shadow_comparisons_total", **shadow) >= 3
    assert metric(after, "edgekit_shadow_budget_breached", budget="cosine>=0.99", **shadow) == 0


def test_no_calibration_range_says_unavailable(tmp_path):
    folder = output_folder(tmp_path / "old.edgekit", calibration=False)
    srv = Server(folder)
    try:
        summary = json.loads(http(f"{srv.url}/edgekit/monitor")[2])["int8-static"]
        assert summary["inputs"]["x"]["calibration"] is None
        assert "unavailable" in summary["inputs"]["x"]["note"]
        values = metric_values(http(f"{srv.url}/metrics")[2].decode())
        assert metric(values, "edgekit_input_range_available", model="int8-static", input="x") == 0
        assert ("edgekit_input_range_available", frozenset({("model", "int8-static"), ("input", "x")})) in values  # fmt: skip
    finally:
        assert srv.stop() == 0


def test_access_log_has_one_json_line_per_request(server):
    x = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
    assert infer_json(server.url, "fp32", x)[0] == 200
    assert http(f"{server.url}/v2/models/access-log-check")[0] == 400
    lines = poll(  # a line is written once its response has gone out: wait for it
        lambda: [json.loads(line) for line in server.access_log.read_text().splitlines()],
        lambda lines: any(line["path"] == "/v2/models/access-log-check" for line in lines),
        timeout=10,
    )
    paths = [line["path"] for line in lines]
    metadata = lines[paths.index("/v2/models/access-log-check")]
    assert (metadata["method"], metadata["status"], metadata["model"]) == ("GET", 400, "")
    assert {"ts", "client", "ms"} <= set(metadata)
    infer = [line for line in lines if line["path"] == "/v2/models/fp32/infer"][-1]
    assert (infer["method"], infer["status"], infer["model"]) == ("POST", 200, "fp32")
    assert "queue_ms" in infer and "compute_ms" in infer


def test_api_key(tmp_path, folder):
    key = tmp_path / "key"
    key.write_text("s3cret-token\n")
    srv = Server(folder, "--api-key-file", key)
    try:
        x = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0] * 16}]}
        url = f"{srv.url}/v2/models/int8-static/infer"
        assert http(url, x)[0] == 401
        status, headers, data = http(url, x, {"Authorization": "Bearer wrong"})
        assert status == 401 and "API key" in json.loads(data)["error"]
        assert http(url, x, {"Authorization": "Bearer s3cret-token"})[0] == 200
        assert http(f"{srv.url}/metrics")[0] == 401
        assert http(f"{srv.url}/v2/health/ready")[0] == 200  # probes need no key
        client = tritonclient_http.InferenceServerClient(srv.hostport)
        meta = client.get_model_metadata("int8-static", headers={"Authorization": "Bearer s3cret-token"})  # fmt: skip
        assert meta["name"] == "int8-static"
    finally:
        assert srv.stop() == 0


def test_another_address_without_a_key_warns_and_bad_input_exits_2(tmp_path):
    done = run_edgekit("serve", tmp_path / "missing", "--host", "0.0.0.0")
    assert done.returncode == 2
    assert "without --api-key-file" in done.stderr
    assert "Traceback" not in done.stderr and "not an optimize output folder" in done.stderr


@pytest.mark.parametrize(
    "args,words",
    [
        (["--variant", "nope"], "has no variant 'nope'"),
        (["--max-batch", "0"], "--max-batch must be from 1"),
        (["--shadow-rate", "2", "--shadow", "fp32"], "--shadow-rate"),
        (["--max-drift", "cosine>>1", "--shadow", "fp32"], "Cannot read the drift budget"),
    ],
)
def test_bad_arguments_exit_2_without_traceback(folder, args, words):
    done = run_edgekit("serve", folder, *args, "--port", "0", timeout=60)
    assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr


def bad_setups(tmp: Path, folder: Path) -> list[tuple[list, str]]:
    """(serve arguments, words in the message) for options and files that must exit 2."""
    import os
    import shutil

    os.mkfifo(tmp / "fifo")
    (tmp / "key-utf8").write_text("clé-secrète\n")
    edited = tmp / "edited.edgekit"
    shutil.copytree(folder, edited)
    report = json.loads((edited / "report.json").read_text())
    report["inputs"] = [1, "x"]
    (edited / "report.json").write_text(json.dumps(report))
    changed = tmp / "changed.edgekit"
    shutil.copytree(folder, changed)
    with open(changed / "fp32.onnx", "ab") as handle:
        handle.write(b"\0")  # a different file than the report's sha256 says
    return [
        ([folder, "--max-body-mb", "nan"], "--max-body-mb must be a number"),
        ([folder, "--max-body-mb", "inf"], "--max-body-mb must be a number"),
        ([folder, "--drain-timeout", "nan"], "--drain-timeout must be a number"),
        ([folder, "--batch-timeout-ms", "inf"], "--batch-timeout-ms must be a number"),
        ([folder, "--client-timeout", "0"], "--client-timeout must be a number"),
        ([folder, "--threads", "100000"], "--threads must be from 1 to"),
        ([folder, "--max-connections", "1000000"], "does not fit under this process's file"),
        ([folder, "--name", "a/b"], "The model name 'a/b' must be"),
        ([folder, "--name", "../x"], "The model name '../x' must be"),
        ([folder, "--access-log", tmp], "is not a regular file"),
        ([folder, "--access-log", tmp / "no" / "log"], "Cannot open the access log"),
        ([folder, "--access-log", tmp / "fifo"], "is not a regular file"),
        ([folder, "--api-key-file", "/dev/zero"], "at most 4096 bytes"),
        ([folder, "--api-key-file", tmp / "key-utf8"], "printable ASCII"),
        ([edited], "items that are not objects"),
        ([changed, "--variant", "fp32"], "its sha256 differs from report.json's"),
    ]


def test_bad_options_and_files_exit_2_with_what_to_do(tmp_path, folder):
    for args, words in bad_setups(tmp_path, folder):
        done = run_edgekit("serve", *args, "--port", "0", timeout=60)
        assert done.returncode == 2, (args, done.stderr)
        assert words in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)


def test_port_in_use_exits_2(server, folder):
    port = server.hostport.rsplit(":", 1)[1]
    done = run_edgekit("serve", folder, "--port", port, timeout=60)
    assert done.returncode == 2 and "Cannot listen" in done.stderr
    assert f"it is used by pid {server.proc.pid} (" in done.stderr, done.stderr


def test_dynamic_batching_stacks_concurrent_requests(tmp_path, folder):
    srv = Server(folder, "--max-batch", "16", "--batch-timeout-ms", "50")
    try:
        rng = np.random.default_rng(2)
        xs = [rng.uniform(-1, 1, (1 + i % 2, 16)).astype(np.float32) for i in range(12)]
        for x, got in zip(xs, infer_at_once(srv.hostport, "int8-static", xs), strict=True):
            np.testing.assert_allclose(got, reference(folder, "int8-static", x), rtol=1e-5)
        values = metric_values(http(f"{srv.url}/metrics")[2].decode())
        m = {"model": "int8-static"}
        count = metric(values, "edgekit_batch_size_count", **m)
        rows = metric(values, "edgekit_batch_size_sum", **m)
        assert count == 12 and rows / count > 2  # requests shared runs
    finally:
        assert srv.stop() == 0


def test_a_model_that_quantizes_per_batch_is_not_batched(tmp_path):
    """Batched, a dynamic-int8 request would be quantized with its neighbours' range: each answer
    must equal the request run alone."""
    model = dynamic_int8_model(tmp_path / "dynamic.onnx")
    srv = Server(model, "--max-batch", "16", "--batch-timeout-ms", "50")
    try:
        stderr = poll(  # stderr is read by its own thread: wait for it
            lambda: "".join(srv.stderr), lambda text: "quantizes activations" in text, timeout=10
        )
        assert "quantizes activations over the whole batch" in stderr
        rng = np.random.default_rng(3)
        xs = [rng.uniform(-1, 1, (1, 16)).astype(np.float32) * 10.0 ** (i % 3) for i in range(9)]
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        for x, got in zip(xs, infer_at_once(srv.hostport, "dynamic", xs), strict=True):
            np.testing.assert_array_equal(got, session.run(None, {"x": x})[0])
        values = metric_values(http(f"{srv.url}/metrics")[2].decode())
        assert metric(values, "edgekit_batch_size_sum", model="dynamic") == 9  # one row per run
    finally:
        assert srv.stop() == 0


def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path):
    model = slow_model(tmp_path / "slow.onnx")
    srv = Server(model, "--threads", "1")
    x = np.ones((64, 512), np.float32)
    head = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [64, 512],
                     "parameters": {"binary_data_size": x.nbytes}}],
         "parameters": {"binary_data_output": True}}
    ).encode()  # fmt: skip
    result = {}

    def call():
        result["reply"] = http(
            f"{srv.url}/v2/models/slow/infer",
            head + x.tobytes(),
            {"Inference-Header-Content-Length": str(len(head))},
        )

    start = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(call)
        values = poll(  # wait until the request is in the model
            lambda: metric_values(http(f"{srv.url}/metrics")[2].decode()),
            lambda values: metric(values, "edgekit_inflight_requests", model="slow") == 1,
            timeout=10,
            every=0.01,
        )
        assert metric(values, "edgekit_inflight_requests", model="slow") == 1
        srv.proc.send_signal(15)
        future.result(timeout=60)
    status, headers, data = result["reply"]
    assert status == 200, data
    size = int(headers["inference-header-content-length"])
    assert len(data) - size == x.nbytes
    assert srv.proc.wait(timeout=60) == 0
    assert time.monotonic() - start < 60
