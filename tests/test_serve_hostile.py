"""`edgekit serve` under hostile and careless clients, as a real process on a free port: a big
JSON request while others poll health, slow clients against a connection cap and timeouts,
disconnects, NaN inputs and outputs, SIGTERM with idle keep-alive connections, an access log on a
full disk."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.client import HTTPConnection

import numpy as np
import pytest
from serve_helpers import Server, http, linear_model, metric, metric_values, output_folder, poll

pytestmark = pytest.mark.slow  # every test here starts a server


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return output_folder(tmp_path_factory.mktemp("hostile") / "model.edgekit")


def infer_body(rows: int, value: str = "0.5") -> bytes:
    data = ",".join([value] * (rows * 16))
    head = f'{{"inputs": [{{"name": "x", "datatype": "FP32", "shape": [{rows}, 16], "data": ['
    return (head + data + "]}]}").encode()


def health_while(url: str, work) -> tuple[object, float]:
    """work()'s result, and the slowest /v2/health/ready answer while it ran (polled by another
    client every 20 ms)."""
    done, slowest = threading.Event(), [0.0]

    def poll_health():
        while not done.is_set():
            start = time.monotonic()
            assert http(f"{url}/v2/health/ready")[0] == 200
            slowest[0] = max(slowest[0], time.monotonic() - start)
            time.sleep(0.02)

    poller = threading.Thread(target=poll_health)
    poller.start()
    try:
        time.sleep(0.1)
        return work(), slowest[0]
    finally:
        done.set()
        poller.join(timeout=30)


def rss(url: str) -> float:
    return metric(
        metric_values(http(f"{url}/metrics")[2].decode()), "process_resident_memory_bytes"
    )


def test_a_big_json_request_stalls_no_one_and_costs_bounded_memory(folder):
    srv = Server(folder, "--variant", "fp32", "--threads", "1")  # --max-body-mb 64: 1M numbers
    try:
        url = f"{srv.url}/v2/models/fp32/infer"
        before = rss(srv.url)
        # 4M numbers in 16 MB of JSON (under the body limit): refused before parsing
        (status, _, data), slowest = health_while(srv.url, lambda: http(url, infer_body(250_000)))
        assert status == 400 and "binary" in json.loads(data)["error"]
        assert slowest < 1.0, f"health took {slowest:.2f} s"
        assert rss(srv.url) - before < 150e6
        # ~1M numbers, within the bound: answered, read and built off the event loop
        (status, _, data), slowest = health_while(srv.url, lambda: http(url, infer_body(65_000)))
        assert status == 200 and json.loads(data)["outputs"][0]["shape"] == [65_000, 4]
        assert slowest < 3.0, f"health took {slowest:.2f} s"
    finally:
        assert srv.stop() == 0


def read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def test_slow_clients_get_408_the_ones_over_the_cap_503_and_a_normal_client_is_served(folder):
    srv = Server(folder, "--variant", "fp32", "--max-connections", "20", "--client-timeout", "1")
    host, port = srv.hostport.rsplit(":", 1)
    slow = []
    try:
        # 40 clients that never finish their headers, 10 that stop in the middle of a body
        for i in range(50):
            sock = socket.create_connection((host, int(port)), timeout=10)
            if i < 40:
                sock.sendall(b"POST /v2/models/fp32/infer HTTP/1.1\r\nHost: x\r\n")
            else:
                sock.sendall(
                    b"POST /v2/models/fp32/infer HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Length: 100000\r\n\r\n" + b"{" * 100
                )
            slow.append(sock)
        answers = [read_all(sock, 10) for sock in slow]
        over_cap = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
        timed_out = [a for a in answers if a.startswith(b"HTTP/1.1 408")]
        assert len(over_cap) == 30 and b"--max-connections" in over_cap[0]
        assert len(timed_out) == 20 and b"--client-timeout" in timed_out[0]
        # a normal client, while the slow ones still hold their end open
        body = infer_body(1)
        status, _, data = poll(
            lambda: http(f"{srv.url}/v2/models/fp32/infer", body),
            lambda reply: reply[0] == 200,
            timeout=10,
        )
        assert status == 200, data
    finally:
        for sock in slow:
            sock.close()
        assert srv.stop() == 0


def test_a_client_that_goes_away_is_not_a_bad_request(folder):
    srv = Server(folder, "--variant", "fp32")
    host, port = srv.hostport.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /v2/models/fp32/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
            )
        labels = {"model": "fp32"}
        values = poll(
            lambda: metric_values(http(f"{srv.url}/metrics")[2].decode()),
            lambda v: metric(v, "edgekit_requests_total", outcome="disconnected", **labels),
            timeout=10,
        )
        assert metric(values, "edgekit_requests_total", outcome="disconnected", **labels) == 1
        assert metric(values, "edgekit_requests_total", outcome="bad_request", **labels) == 0
    finally:
        assert srv.stop() == 0


def test_nan_inputs_are_out_of_range_and_the_shadow_keeps_sampling_nan_outputs(folder):
    srv = Server(folder, "--shadow", "fp32", "--shadow-rate", "1")
    try:
        url = f"{srv.url}/v2/models/int8-static/infer"
        for _ in range(8):  # NaN in, NaN out (Triton's JSON spelling, which Python reads)
            status, _, data = http(url, infer_body(1, "NaN"))
            assert status == 200
            assert all(np.isnan(json.loads(data)["outputs"][0]["data"]))
        assert http(url, infer_body(1, "Infinity"))[0] == 200
        for _ in range(3):
            assert http(url, infer_body(1, "0.5"))[0] == 200
        summary = poll(
            lambda: json.loads(http(f"{srv.url}/edgekit/monitor")[2])["int8-static"],
            lambda s: s["drift"]["totals"]["comparisons"] >= 12,
            timeout=20,
        )
        totals = summary["drift"]["totals"]
        assert totals["comparisons"] == 12 and totals["nonfinite"] == 9, totals
        assert summary["drift"]["breached"] is True  # NaN is never within a budget
        assert summary["inputs"]["x"]["outside"] == 9 and summary["inputs"]["x"]["checked"] == 12
        values = metric_values(http(f"{srv.url}/metrics")[2].decode())
        shadow = {"model": "int8-static", "shadow": "fp32"}
        assert metric(values, "edgekit_shadow_nonfinite_comparisons_total", **shadow) == 9
    finally:
        assert srv.stop() == 0


def test_sigterm_answers_a_request_sent_on_an_idle_keep_alive_connection(folder):
    srv = Server(folder, "--variant", "fp32")
    host, port = srv.hostport.rsplit(":", 1)
    conn = HTTPConnection(host, int(port), timeout=10)
    body = infer_body(1)
    try:
        conn.request("POST", "/v2/models/fp32/infer", body)
        assert conn.getresponse().read() and True
        srv.proc.send_signal(15)
        time.sleep(0.3)  # the server has begun to stop; the client cannot know yet
        conn.request("POST", "/v2/models/fp32/infer", body)
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("connection") == "close"
        assert json.loads(response.read())["outputs"][0]["shape"] == [1, 4]
    finally:
        conn.close()
        assert srv.stop() == 0


def test_a_full_disk_under_the_access_log_fails_no_request(folder):
    srv = Server(folder, "--variant", "fp32", "--access-log", "/dev/full")
    try:
        for _ in range(3):
            assert http(f"{srv.url}/v2/models/fp32/infer", infer_body(1))[0] == 200
        assert http(f"{srv.url}/v2/models/fp32")[0] == 200
        stderr = poll(lambda: "".join(srv.stderr), lambda text: "access log" in text, timeout=10)
        assert stderr.count("cannot write the access log") == 1, stderr
    finally:
        assert srv.stop() == 0


def test_a_model_file_that_is_not_onnx_exits_2(tmp_path):
    from helpers import run_edgekit

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    half = tmp_path / "half.onnx"
    half.write_bytes(linear_model(tmp_path / "whole.onnx").read_bytes()[:100])
    for path in (bad, half):
        done = run_edgekit("serve", path, "--port", "0", timeout=60)
        assert done.returncode == 2, done.stderr
        assert "onnxruntime cannot load" in done.stderr and "Traceback" not in done.stderr
