"""What does serving cost? `edgekit serve` against onnxruntime in-process, measured side by side.

1. Added latency, concurrency 1: rounds rotate blocks of in-process `session.run` calls, requests
   to a running `edgekit serve` (binary tensors, one keep-alive connection) and the same requests
   through Python's http.client; same model, same intra-op threads. Printed: p50 and p99 of each
   and the difference (what the server adds per request), for the shipped model and a
   ResNet-18-shaped model. The server line uses a client that sends prepared bytes and reads by
   Content-Length, so it is the server's cost; the http.client line is what a plain Python caller
   pays on top.
2. Throughput and p99 at concurrency 1, 4 and 16 (one keep-alive connection per client thread),
   without batching (--max-batch 1) and with --max-batch 16 (timeout 0, the default, and 2 ms),
   configurations interleaved. Section 1 runs the server with its defaults.
3. Memory: the server's peak RSS over `edgekit bench`'s worker's peak RSS for the same model.

It ends with the project's targets (added p50 <= 0.5 ms on the shipped model, RSS overhead
<= 40 MB), each "met" or "NOT MET"; the exit code is 1 when one is not met.

Client and server share this machine's cores: at concurrency 16 the Python client threads compete
with the server, so the throughput figures are a floor. Needs torch (to export the models) and
the serve extra.

    python tools/bench_serve.py [--rounds 6] [--block 300] [--seconds 2]
    python tools/bench_serve.py --lm LM_FOLDER [--gguf FILE] [--tokens 128]   (see bench_serve_lm.py)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))


def export_models(tmp: Path) -> dict[str, tuple[Path, tuple]]:
    import torch

    sys.path.insert(0, str(ROOT / "models"))
    from digits_cnn import DigitsCNN
    from reference_models import ResNet18

    digits = DigitsCNN()
    digits.load_state_dict(torch.load(ROOT / "models" / "digits_cnn.pt"))
    models = {"digits_cnn": (digits, (1, 1, 8, 8)), "resnet18": (ResNet18(), (1, 3, 224, 224))}
    out = {}
    for name, (module, shape) in models.items():
        path = tmp / f"{name}.onnx"
        torch.onnx.export(
            module.eval(), torch.zeros(shape), path, input_names=["x"], output_names=["y"],
            dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, dynamo=False,
        )  # fmt: skip
        out[name] = (path, shape)
    return out


class Server:
    def __init__(self, model: Path, threads: int, *extra: str):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgekit.cli", "serve", str(model), "--port", "0",
             "--threads", str(threads), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        line = self.proc.stdout.readline()
        match = re.search(r"at http://([\d.]+):(\d+)", line)
        if not match:
            raise RuntimeError(line + self.proc.stderr.read())
        self.host, self.port = match[1], int(match[2])
        self.name = model.stem

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def infer_body(x: np.ndarray) -> tuple[bytes, int]:
    """An infer request body with x as a binary tensor, and the length of its JSON header."""
    head = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                     "parameters": {"binary_data_size": x.nbytes}}],
         "parameters": {"binary_data_output": True}}
    ).encode()  # fmt: skip
    return head + x.tobytes(), len(head)


class Client:
    """One keep-alive connection sending binary tensors, as Triton's client does. It writes request
    bytes prepared once and reads the response by its Content-Length, so the time measured is the
    server's and the kernel's, not a Python HTTP library's (http.client adds ~0.2 ms per request
    here: section 1 prints that too, as `LibraryClient`)."""

    def __init__(self, server: Server, x: np.ndarray):
        self.address = (server.host, server.port)
        body, head_length = infer_body(x)
        self.request = (
            f"POST /v2/models/{server.name}/infer HTTP/1.1\r\nHost: {server.host}\r\n"
            f"Content-Length: {len(body)}\r\nInference-Header-Content-Length: {head_length}\r\n"
            "\r\n"
        ).encode() + body
        self.sock = None

    def call(self) -> float:
        if self.sock is None:
            self.sock = socket.create_connection(self.address)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.perf_counter()
        self.sock.sendall(self.request)
        data = b""
        while True:
            chunk = self.sock.recv(1 << 20)
            if not chunk:  # the server closed an idle connection: reconnect and time again
                self.sock = None
                return self.call()
            data += chunk
            end = data.find(b"\r\n\r\n")
            if end < 0:
                continue
            head = data[:end].decode("latin-1").lower()
            length = int(head.split("content-length:")[1].split("\r\n")[0])
            if len(data) >= end + 4 + length:
                break
        elapsed = time.perf_counter() - start
        assert head.startswith("http/1.1 200"), head
        return elapsed


class LibraryClient:
    """The same request through Python's http.client: what a plain Python caller pays."""

    def __init__(self, server: Server, x: np.ndarray):
        self.conn = http.client.HTTPConnection(server.host, server.port)
        self.body, head_length = infer_body(x)
        self.headers = {"Inference-Header-Content-Length": str(head_length)}
        self.path = f"/v2/models/{server.name}/infer"

    def call(self) -> float:
        start = time.perf_counter()
        self.conn.request("POST", self.path, self.body, self.headers)
        response = self.conn.getresponse()
        response.read()
        elapsed = time.perf_counter() - start
        assert response.status == 200
        return elapsed


def pct(values, q) -> float:
    return float(np.percentile(values, q)) * 1e3


def added_latency(name, path, shape, threads, rounds, block) -> dict:
    """Times of in-process runs ('local'), server requests ('server') and the same requests
    through http.client ('http.client'), in blocks whose order rotates every round."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    server = Server(path, threads)

    def local() -> float:
        start = time.perf_counter()
        session.run(None, {"x": x})
        return time.perf_counter() - start

    sides = {"local": local, "server": Client(server, x).call,
             "http.client": LibraryClient(server, x).call}  # fmt: skip
    if "resnet" in name:
        block = max(10, block // 20)
    for call in sides.values():  # warm up
        for _ in range(block):
            call()
    times = {side: [] for side in sides}
    order = list(sides)
    for _ in range(rounds):
        for side in order:
            times[side] += [sides[side]() for _ in range(block)]
        order = order[1:] + order[:1]
    times["server_rss"] = psutil.Process(server.proc.pid).memory_info().rss
    times["server_hwm"] = _hwm(server.proc.pid)
    server.stop()
    return times


def _hwm(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def worker_rss(path: Path, tmp: Path) -> int:
    out = tmp / f"bench-{path.stem}"
    subprocess.run(
        [sys.executable, "-m", "edgekit.cli", "bench", str(path), "-o", str(out), "-q",
         "--min-time", "0.5", "--max-time", "1"],
        check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    return report["variants"][0]["memory"]["peak_rss_bytes"]


def load(server: Server, x: np.ndarray, concurrency: int, seconds: float) -> tuple[float, float]:
    """(requests per second, p99 ms) with `concurrency` clients for `seconds`."""
    clients = [Client(server, x) for _ in range(concurrency)]
    for c in clients:
        c.call()
    times: list[list[float]] = [[] for _ in clients]
    stop = time.perf_counter() + seconds

    def drive(i):
        while time.perf_counter() < stop:
            times[i].append(clients[i].call())

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    flat = [v for ts in times for v in ts]
    return len(flat) / elapsed, pct(flat, 99)


# The project's targets for the shipped model on a 2-core machine.
TARGET_ADDED_MS = 0.5
TARGET_RSS_MB = 40

BATCHING = {
    "no batching": ("--max-batch", "1"),
    "batch 16, 0 ms": ("--max-batch", "16", "--batch-timeout-ms", "0"),
    "batch 16, 2 ms": ("--max-batch", "16", "--batch-timeout-ms", "2"),
}


def throughput(name: str, path: Path, shape: tuple, threads: int, args) -> None:
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    seconds = args.seconds * (4 if "resnet" in name else 1)  # enough requests for a p99
    servers = {label: Server(path, threads, *extra) for label, extra in BATCHING.items()}
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    try:
        for _ in range(max(2, args.rounds // 2)):
            for conc in (1, 4, 16):
                for label, server in servers.items():
                    results.setdefault((label, conc), []).append(load(server, x, conc, seconds))
    finally:
        for server in servers.values():
            server.stop()
    for conc in (1, 4, 16):
        base = np.median([t for t, _ in results[("no batching", conc)]])
        for label in BATCHING:
            runs = results[(label, conc)]
            rps, p99 = np.median([t for t, _ in runs]), np.median([p for _, p in runs])
            shown = name if (conc, label) == (1, "no batching") else ""
            print(f"{shown:12} {conc:>11} {label:16} {rps:8.0f} {p99:6.2f} ms {rps / base:14.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--block", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--lm", type=Path, help="only the language-model case, on this LM folder")
    parser.add_argument("--gguf", type=Path, help="with --lm: llama.cpp's server on this GGUF too")
    parser.add_argument("--tokens", type=int, default=128, help="with --lm: new tokens a request")
    args = parser.parse_args()
    from edgekit.benchmark import device

    threads = device.physical_cores()
    if args.lm:
        import bench_serve_lm

        return bench_serve_lm.run(args.lm, args.gguf, args.rounds, args.tokens, threads)
    print(f"edgekit serve vs onnxruntime in-process; {threads} intra-op threads; "
          f"{os.cpu_count()} logical CPUs; onnxruntime {ort.__version__}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        models = export_models(tmp)
        print("\n1. added latency per request, concurrency 1 (interleaved blocks)")
        print(f"{'model':12} {'':17} {'p50':>9} {'added p50':>10} {'p99':>9} {'added p99':>10}")
        memory, added = {}, {}
        for name, (path, shape) in models.items():
            r = added_latency(name, path, shape, threads, args.rounds, args.block)
            base50, base99 = pct(r["local"], 50), pct(r["local"], 99)
            for side, label in (("local", "in-process"), ("server", "server"),
                                ("http.client", "  via http.client")):  # fmt: skip
                p50, p99 = pct(r[side], 50), pct(r[side], 99)
                rest = (f"{p50 - base50:+7.3f} ms {p99:6.3f} ms {p99 - base99:+7.3f} ms"
                        if side != "local" else f"{'':10} {p99:6.3f} ms")  # fmt: skip
                print(f"{name if side == 'local' else '':12} {label:17} {p50:6.3f} ms {rest}")
            memory[name] = (r["server_hwm"] or r["server_rss"], worker_rss(path, tmp))
            added[name] = pct(r["server"], 50) - base50

        print("\n2. throughput (median over rounds) and p99, configurations interleaved")
        print(f"{'model':12} {'concurrency':>11} {'config':16} {'req/s':>8} {'p99':>9} "
              f"{'vs no batching':>15}")  # fmt: skip
        for name, (path, shape) in models.items():
            throughput(name, path, shape, threads, args)

        print("\n3. memory: server peak RSS vs edgekit bench worker peak RSS, same model")
        for name, (server_rss, worker) in memory.items():
            print(f"{name:12} server {server_rss / 1e6:7.1f} MB  worker {worker / 1e6:7.1f} MB  "
                  f"overhead {(server_rss - worker) / 1e6:+6.1f} MB")  # fmt: skip

    overhead = max(server - worker for server, worker in memory.values()) / 1e6
    checks = [
        (f"added latency p50 on digits_cnn {added['digits_cnn']:.3f} ms <= "
         f"{TARGET_ADDED_MS} ms", added["digits_cnn"] <= TARGET_ADDED_MS),
        (f"server RSS overhead {overhead:.1f} MB <= {TARGET_RSS_MB} MB", overhead <= TARGET_RSS_MB),
    ]  # fmt: skip
    print()
    for text, met in checks:
        print(f"{'met' if met else 'NOT MET'}: {text}")
    return 0 if all(met for _, met in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
