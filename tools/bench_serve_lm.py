"""What does serving a language model cost? `edgekit serve` of an LM folder against generating
with onnxruntime-genai in-process, and against llama.cpp's own server on a GGUF of the same
weights, measured side by side (`python tools/bench_serve.py --lm FOLDER [--gguf FILE]`).

Each round runs, in turn: greedy generation in this process (onnxruntime-genai, the loop the
server runs), a prompt streamed through `edgekit serve` (the OpenAI API, raw HTTP with
server-sent events) and, with --gguf, through `python -m llama_cpp.server`. The same prompt text
but for a number in front (a new one each request, so no server reuses a cached prefill), same
threads, greedy, `--tokens` new tokens. Printed per side: the median time to first token
(request sent -> first text) and generation tokens/s (tokens after the first / time from the
first to the last), the server's ratio to in-process and llama.cpp's figures beside them.
Then (section 5) what serving several clients at once gives: the aggregate tokens/s of 4
requests one after another, side by side (one token step of each in turn, as the server runs
them) and as one batch of 4 (what continuous batching would give), in this process.
Targets: through edgekit's server tg >= 0.95x in-process and TTFT at most 2 ms more; the exit
code is 1 when one is not met.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from http.client import HTTPConnection
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The for statement is used to iterate over the elements of a sequence"
# Each request's prompt starts with its own number: llama.cpp's server keeps the last prompt's KV
# cache and computes only what is new, so the same prompt again would time one token, not a prefill.
PROMPTS = (f"{n}. {PROMPT}" for n in itertools.count(1000))
TG_TARGET, TTFT_TARGET_MS = 0.95, 2.0
SETTLE_S = 0.3
CLIENTS = 4


def in_process(model, tokenizer, og, prompt: str, tokens: int) -> tuple[float, float, int]:
    """(TTFT s, tg tokens/s, tokens) of greedy generation with onnxruntime-genai here."""
    params = og.GeneratorParams(model)
    ids = tokenizer.encode(prompt)
    params.set_search_options(max_length=len(ids) + tokens, do_sample=False)
    stream = tokenizer.create_stream()
    start = time.perf_counter()
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    first = last = None
    count = 0
    while not generator.is_done():
        generator.generate_next_token()
        stream.decode(int(generator.get_next_tokens()[0]))
        last = time.perf_counter()
        first = first or last
        count += 1
    return first - start, (count - 1) / (last - first), count


def streamed(port: int, model: str, prompt: str, tokens: int) -> tuple[float, float, int]:
    """(TTFT s, tg tokens/s, tokens) of a streamed /v1/completions request, read off a raw
    socket as the bytes arrive (a buffered HTTP client would hand over several events at once
    and flatter the rate)."""
    body = json.dumps({
        "model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True},
    }).encode()  # fmt: skip
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
            f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
    first = last = count = None
    seen, pieces = b"", 0
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.perf_counter()
        sock.sendall(head + body)
        while b"data: [DONE]" not in seen:
            data = sock.recv(1 << 16)
            if not data:
                break
            now = time.perf_counter()
            seen += data
            for event in re.findall(rb"data: (\{.*?\})\r?\n", data):
                event = json.loads(event)
                if event.get("usage"):
                    count = event["usage"]["completion_tokens"]
                if any(c.get("text") for c in event.get("choices") or []):
                    pieces += 1
                    last = now
                    first = first or now
    count = count or pieces  # a server without usage in its stream: one event a token
    return first - start, (count - 1) / (last - first), count


class Process:
    """A server process on a free port, ready once it answers `ready_path`."""

    def __init__(self, argv: list[str], port: int, ready_path: str):
        self.port = port
        # its log goes to a file: a pipe nobody reads fills up (llama.cpp logs every tensor it
        # loads) and then stops the server
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=self.log,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{argv[:4]} exited: {self.log.read()[-2000:].decode()}")
            try:
                conn = HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", ready_path)
                if conn.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"{argv[:4]} did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()


def concurrent(model, tokenizer, og, prompt: str, tokens: int, clients: int) -> dict[str, float]:
    """Aggregate generation tokens/s of `clients` requests at once, three ways in this process:
    one after another, side by side (one token step of each in turn: what the server does), and
    as one batch (one generator, batch_size = clients: what continuous batching would give)."""
    ids = tokenizer.encode(prompt)

    def generator(batch: int):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + tokens, do_sample=False, batch_size=batch)
        gen = og.Generator(model, params)
        gen.append_tokens(np.array([ids] * batch, dtype=np.int32))
        return gen

    def sequential():
        for _ in range(clients):
            gen = generator(1)
            while not gen.is_done():
                gen.generate_next_token()

    def side_by_side():
        gens = [generator(1) for _ in range(clients)]
        while gens:
            for gen in list(gens):
                gen.generate_next_token()
                if gen.is_done():
                    gens.remove(gen)

    def batched():
        gen = generator(clients)
        while not gen.is_done():
            gen.generate_next_token()

    rates = {}
    for label, run in (("one after another", sequential), ("side by side", side_by_side),
                       ("one batch", batched)):  # fmt: skip
        time.sleep(SETTLE_S)
        start = time.perf_counter()
        run()
        rates[label] = clients * tokens / (time.perf_counter() - start)
    return rates


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(folder: Path, gguf: Path | None, rounds: int, tokens: int, threads: int) -> int:
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    config.overlay(json.dumps(
        {"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}
    ))  # fmt: skip
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", folder.resolve().name)
    port = free_port()
    edgekit = Process(
        [sys.executable, "-m", "edgekit.cli", "serve", str(folder), "--port", str(port),
         "--threads", str(threads)],
        port, "/health",
    )  # fmt: skip
    sides = {"in-process": lambda: in_process(model, tokenizer, og, next(PROMPTS), tokens)}
    sides["edgekit serve"] = lambda: streamed(port, name, next(PROMPTS), tokens)
    llama = None
    if gguf is not None:
        llama_port = free_port()
        llama = Process(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--n_threads",
             str(threads), "--n_threads_batch", str(threads), "--host", "127.0.0.1",
             "--port", str(llama_port), "--n_ctx", "2048"],
            llama_port, "/v1/models",
        )  # fmt: skip
        sides["llama.cpp server"] = lambda: streamed(llama_port, "x", next(PROMPTS), tokens)
    results: dict[str, list[tuple[float, float, int]]] = {side: [] for side in sides}
    try:
        for side in sides.values():
            side()  # warm-up
        for _ in range(rounds):
            for label, side in sides.items():
                # onnxruntime's threads spin for a while after a run: let the last side's go
                # idle, or they take the cores from this one
                time.sleep(SETTLE_S)
                results[label].append(side())
    finally:
        edgekit.stop()
        if llama is not None:
            llama.stop()
    print(f"\n4. language model {folder} ({threads} threads, {tokens} new tokens, greedy, "
          f"{rounds} rounds interleaved, medians)")  # fmt: skip
    print(f"{'':18} {'TTFT':>10} {'vs in-process':>14} {'tg tok/s':>9} {'vs in-process':>14} "
          f"{'tokens':>6}")  # fmt: skip
    base_ttft = statistics.median(r[0] for r in results["in-process"]) * 1e3
    base_tg = statistics.median(r[1] for r in results["in-process"])
    summary = {}
    for label, rows in results.items():
        ttft = statistics.median(r[0] for r in rows) * 1e3
        tg = statistics.median(r[1] for r in rows)
        summary[label] = (ttft, tg)
        print(f"{label:18} {ttft:7.2f} ms {ttft - base_ttft:+11.2f} ms {tg:9.1f} "
              f"{tg / base_tg:13.3f}x {rows[0][2]:6d}")  # fmt: skip
    print(f"\n5. {CLIENTS} requests at once, aggregate tokens/s (prefill included; median of "
          f"{rounds} rounds, in-process onnxruntime-genai)")  # fmt: skip
    together: dict[str, list[float]] = {}
    for _ in range(rounds):
        for label, rate in concurrent(model, tokenizer, og, PROMPT, tokens, CLIENTS).items():
            together.setdefault(label, []).append(rate)
    base = statistics.median(together["one after another"])
    for label, rates in together.items():
        rate = statistics.median(rates)
        print(f"{label:18} {rate:9.1f} tok/s {rate / base:6.2f}x")
    ttft, tg = summary["edgekit serve"]
    checks = [
        (f"tg through the server >= {TG_TARGET}x in-process", tg / base_tg >= TG_TARGET),
        (f"TTFT added by the server <= {TTFT_TARGET_MS} ms", ttft - base_ttft <= TTFT_TARGET_MS),
    ]
    if "llama.cpp server" in summary:
        l_ttft, l_tg = summary["llama.cpp server"]
        print(f"edgekit serve vs llama.cpp server: TTFT {ttft / l_ttft:.2f}x, "
              f"tg {tg / l_tg:.2f}x (goal: TTFT <= 1, tg >= 1)")  # fmt: skip
    for text, met in checks:
        print(f"target: {text}: {'met' if met else 'NOT MET'}")
    return 0 if all(met for _, met in checks) else 1
