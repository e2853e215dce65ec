"""What does serving cost? `edgekit serve` against onnxruntime in-process, measured side by side.

1. Added latency, concurrency 1: rounds alternate a block of in-process `session.run` calls and a
   block of requests to a running `edgekit serve` (binary tensors, one keep-alive connection),
   same model, same intra-op threads. Printed: p50 and p99 of each and the difference (what the
   server adds per request), for the shipped model and a ResNet-18-shaped model.
2. Throughput and p99 at concurrency 1, 4 and 16 (one keep-alive connection per client thread),
   without batching and with --max-batch 16 (timeout 0 and 2 ms), rounds interleaved.
3. Memory: the server's peak RSS over `edgekit bench`'s worker's peak RSS for the same model.

Client and server share this machine's cores: at concurrency 16 the Python client threads compete
with the server, so the throughput figures are a floor. Needs torch (to export the models) and
the serve extra.

    python tools/bench_serve.py [--rounds 5] [--block 200] [--seconds 2]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
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


class Client:
    """One keep-alive connection; binary tensors in and out, as Triton's client sends them."""

    def __init__(self, server: Server, x: np.ndarray):
        self.conn = http.client.HTTPConnection(server.host, server.port)
        head = json.dumps(
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                         "parameters": {"binary_data_size": x.nbytes}}],
             "parameters": {"binary_data_output": True}}
        ).encode()  # fmt: skip
        self.body = head + x.tobytes()
        self.headers = {"Inference-Header-Content-Length": str(len(head))}
        self.path = f"/v2/models/{server.name}/infer"

    def call(self) -> float:
        start = time.perf_counter()
        try:
            self.conn.request("POST", self.path, self.body, self.headers)
        except (BrokenPipeError, ConnectionResetError):  # the server closed an idle connection
            self.conn.close()
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
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    server = Server(path, threads)
    client = Client(server, x)
    if "resnet" in name:
        block = max(10, block // 20)
    for _ in range(block):  # warm both
        session.run(None, {"x": x})
        client.call()
    local, remote = [], []
    for r in range(rounds):
        order = ("local", "remote") if r % 2 == 0 else ("remote", "local")
        for side in order:
            for _ in range(block):
                if side == "local":
                    start = time.perf_counter()
                    session.run(None, {"x": x})
                    local.append(time.perf_counter() - start)
                else:
                    remote.append(client.call())
    rss = psutil.Process(server.proc.pid).memory_info().rss
    hwm = _hwm(server.proc.pid)
    server.stop()
    return {"local": local, "remote": remote, "server_rss": rss, "server_hwm": hwm}


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--block", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    from edgekit.benchmark import device

    threads = device.physical_cores()
    print(f"edgekit serve vs onnxruntime in-process; {threads} intra-op threads; "
          f"{os.cpu_count()} logical CPUs; onnxruntime {ort.__version__}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        models = export_models(tmp)
        print("\n1. added latency per request, concurrency 1 (interleaved blocks)")
        print(f"{'model':12} {'in-process p50':>15} {'server p50':>11} {'added p50':>10} "
              f"{'in-process p99':>15} {'server p99':>11} {'added p99':>10}")  # fmt: skip
        memory = {}
        for name, (path, shape) in models.items():
            r = added_latency(name, path, shape, threads, args.rounds, args.block)
            lp50, rp50, lp99, rp99 = (pct(r["local"], 50), pct(r["remote"], 50),
                                      pct(r["local"], 99), pct(r["remote"], 99))  # fmt: skip
            print(f"{name:12} {lp50:12.3f} ms {rp50:8.3f} ms {rp50 - lp50:7.3f} ms "
                  f"{lp99:12.3f} ms {rp99:8.3f} ms {rp99 - lp99:7.3f} ms")  # fmt: skip
            memory[name] = (r["server_hwm"] or r["server_rss"], worker_rss(path, tmp))
        print("\n3. memory: server peak RSS vs edgekit bench worker peak RSS, same model")
        for name, (server_rss, worker) in memory.items():
            print(f"{name:12} server {server_rss / 1e6:7.1f} MB  worker {worker / 1e6:7.1f} MB  "
                  f"overhead {(server_rss - worker) / 1e6:+6.1f} MB")  # fmt: skip

        path, shape = models["digits_cnn"]
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        configs = {
            "no batching": (),
            "batch 16, 0 ms": ("--max-batch", "16", "--batch-timeout-ms", "0"),
            "batch 16, 2 ms": ("--max-batch", "16", "--batch-timeout-ms", "2"),
        }
        servers = {label: Server(path, threads, *extra) for label, extra in configs.items()}
        results: dict[tuple[str, int], list[tuple[float, float]]] = {}
        try:
            for _ in range(max(2, args.rounds // 2)):
                for conc in (1, 4, 16):
                    for label, server in servers.items():
                        results.setdefault((label, conc), []).append(
                            load(server, x, conc, args.seconds)
                        )
        finally:
            for server in servers.values():
                server.stop()
        print("\n2. digits_cnn throughput (median over rounds) and p99, interleaved")
        print(f"{'concurrency':>11} {'config':16} {'req/s':>8} {'p99':>9} {'vs no batching':>15}")
        for conc in (1, 4, 16):
            base = np.median([t for t, _ in results[("no batching", conc)]])
            for label in configs:
                runs = results[(label, conc)]
                rps, p99 = np.median([t for t, _ in runs]), np.median([p for _, p in runs])
                print(f"{conc:>11} {label:16} {rps:8.0f} {p99:6.2f} ms {rps / base:14.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
