"""Helpers for the serve, deploy and model-repository tests: tiny ONNX models, an optimize output
folder written by hand with the report contract, and a real `edgekit serve` process."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from helpers import save_graph
from onnx import TensorProto, helper, numpy_helper

from edgekit.fsutil import sha256_file
from edgekit.report.schema import Report, Variant
from edgekit.report.write import write_outputs
from models import matmul_model

REPO = Path(__file__).resolve().parents[1]


def linear_model(path: Path, scale: float = 1.0) -> Path:
    """x[N,16] float -> y[N,4] = x @ W (a 4-class 'classifier')."""
    return matmul_model(path, 16, 4, "N", scale)


def dynamic_int8_model(path: Path) -> Path:
    """linear_model quantized by onnxruntime's quantize_dynamic: DynamicQuantizeLinear picks one
    int8 scale for the whole input tensor at run time."""
    from onnxruntime.quantization import quantize_dynamic

    float_model = linear_model(path.with_name(path.stem + "-float.onnx"))
    quantize_dynamic(str(float_model), str(path))
    return path


def fragile_model(path: Path) -> Path:
    """x[N,16] -> Reshape(-1, 5): fails at run time unless N is a multiple of 5."""
    shape = numpy_helper.from_array(np.array([-1, 5], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "fragile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5])],
        [shape],
    )
    return save_graph(graph, path)


def slow_model(path: Path, layers: int = 60) -> Path:
    """x[N,512] through `layers` MatMuls with one shared weight: slow enough to be in flight."""
    w = np.full((512, 512), 1 / 512, np.float32)
    nodes = [
        helper.make_node("MatMul", [f"h{i}" if i else "x", "w"], [f"h{i + 1}"])
        for i in range(layers)
    ]
    nodes.append(helper.make_node("Identity", [f"h{layers}"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 512])],
        [numpy_helper.from_array(w, "w")],
    )
    return save_graph(graph, path)


def output_folder(folder: Path, calibration: bool = True) -> Path:
    """What `edgekit optimize` writes, by hand: fp32 and a slightly drifted 'int8-static', the
    latter recommended, a drift budget, and the input's calibration range."""
    folder.mkdir(parents=True, exist_ok=True)
    linear_model(folder / "fp32.onnx")
    linear_model(folder / "int8-static.onnx", scale=1.01)
    fragile_model(folder / "fragile.onnx")
    entry = {"name": "x", "shape": [1, 16], "dtype": "float32"}
    if calibration:
        entry["calibration"] = {"min": -1.0, "max": 1.0, "samples": 64, "source": "generated"}
    report = Report(
        "optimize",
        inputs=[entry],
        variants=[
            Variant("fp32", file="fp32.onnx", sha256=sha256_file(folder / "fp32.onnx")),
            Variant("int8-static", parent="fp32", file="int8-static.onnx"),
            Variant("fragile", parent="fp32", file="fragile.onnx"),
        ],
        budget="cosine>=0.99",
        recommendation={"variant": "int8-static", "reason": "test"},
    )
    write_outputs(report, folder)
    return folder


class Server:
    """`edgekit serve ARGS --port 0` in a real process; `url` once it says where it listens."""

    def __init__(self, *args, env: dict | None = None, cwd=None, timeout: float = 60):
        full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgekit.cli", "serve", *map(str, args), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
            cwd=cwd,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, False), daemon=True).start()
        deadline = time.monotonic() + timeout
        self.url = None
        while self.url is None:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.stop()
                raise RuntimeError(f"edgekit serve did not start: {''.join(self.stderr)}")
            match = re.search(r"at (http://\S+)", line)
            if match:
                self.url = match[1]
        self.hostport = self.url.removeprefix("http://")

    def _pump(self, stream, to_queue: bool) -> None:
        for line in stream:
            if to_queue:
                self.lines.put(line)
            else:
                self.stderr.append(line)
        if to_queue:
            self.lines.put(None)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)


def http(url: str, body: bytes | dict | None = None, headers: dict | None = None):
    """(status, headers with lower-case names, body bytes) of a GET, or a POST when body is given."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return (
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                response.read(),
            )
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def poll(read, done, timeout: float, every: float = 0.05):
    """read() until done(value) or `timeout` seconds pass; the last value (the caller asserts)."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(every)


def infer_at_once(hostport: str, model: str, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Output 'y' for each x, the requests sent all at once by Triton's client (binary)."""
    import tritonclient.http as tritonclient_http

    client = tritonclient_http.InferenceServerClient(hostport, concurrency=len(xs))
    tensors = [tritonclient_http.InferInput("x", list(x.shape), "FP32") for x in xs]
    for tensor, x in zip(tensors, xs, strict=True):
        tensor.set_data_from_numpy(x)
    pending = [client.async_infer(model, [tensor]) for tensor in tensors]
    return [p.get_result().as_numpy("y") for p in pending]


def metric_values(text: str) -> dict:
    """{(name, frozenset(labels.items())): value} from Prometheus text, via prometheus_client's
    own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return values


def metric(values: dict, name: str, **labels) -> float:
    return values.get((name, frozenset(labels.items())), 0.0)
