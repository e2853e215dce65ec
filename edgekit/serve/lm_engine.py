"""A language model served: the model generates in its own process (edgekit.serve.lm_worker; it
holds the GIL while it computes, so it stays off the server's), the server sends it requests and
hands the text it streams back to each request's queue. The event loop reads the worker's pipe
itself: a token is one wake-up of the loop, with no thread between (a reader thread cost a thread
switch and a wake-up of the loop per token, taken from the cores the model computes on).

    engine = LMEngine(folder, threads, metrics)   # starts the worker, waits until it is loaded
    job = engine.submit({"prompt": "...", "max_tokens": 20, ...})   # on the event loop
    await job.events.get()   # ("accepted", {...}) | ("rejected", {...}), then ("started", {...})
                             # once its prefill is done, ("text", str)..., then ("done", reason)
                             # or ("error", message)
    engine.cancel(job)       # its client went away
    engine.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import EdgekitError


@dataclass
class Job:
    """One request: the worker's messages about it arrive on `events`."""

    id: int
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    submitted_at: float = field(default_factory=time.perf_counter)
    prompt_tokens: int = 0
    max_tokens: int = 0
    completion_tokens: int = 0
    last_token_at: float | None = None
    running: bool = False
    ended: bool = False

    def put(self, kind: str, value) -> None:
        self.events.put_nowait((kind, value))


class LMEngine:
    def __init__(self, folder: Path, threads: int, metrics=None):
        """metrics(engine) -> an edgekit.serve.metrics.LMMetrics, or None."""
        self.folder = Path(folder)
        self.jobs: dict[int, Job] = {}
        self.ids = itertools.count(1)
        self.lock = threading.Lock()  # stdin writes come from the loop and from close()
        self.loop = None  # the event loop reading the worker's answers, from the first request on
        self.unread = b""
        self.on_done = None  # on_done(prompt ids, generated ids) after each answered request
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgekit.serve.lm_worker", str(self.folder), str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        ready = self._first_message()
        self.context_length = ready["context_length"]
        self.vocab_size = ready["vocab_size"]
        self.kv_bytes_per_token = ready["kv_bytes_per_token"]
        self.metrics = metrics(self) if metrics else None

    def _first_message(self) -> dict:
        line = b""
        while not line.endswith(b"\n"):  # the worker says nothing more until it is asked
            chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
            if not chunk:
                break
            line += chunk
        try:
            message = json.loads(line)
        except ValueError:
            message = {"failed": "the worker ended before it loaded the model"}
        if "ready" in message:
            return message["ready"]
        self.proc.kill()
        self.proc.wait()
        reason = message.get("failed", "no answer")
        if "missing" in message:
            raise EdgekitError(
                "Serving a language model needs onnxruntime-genai, which is not installed: "
                "python3 -m pip install onnxruntime-genai"
            )
        raise EdgekitError(
            f"Cannot load the language model in {self.folder}: {reason}. Serve a folder that "
            "`edgekit optimize` wrote for a language model (genai_config.json, model.onnx and "
            "the tokenizer files)."
        )

    @property
    def worker_ended(self) -> bool:
        """The model's worker process has ended: nothing will answer a request any more."""
        return self.proc.poll() is not None

    @property
    def kv_tokens(self) -> int:
        """The tokens the KV caches of the running generations are allocated for
        (onnxruntime-genai allocates prompt + max_tokens up front)."""
        return sum(j.prompt_tokens + j.max_tokens for j in list(self.jobs.values()) if j.running)

    def submit(self, request: dict) -> Job:
        """request: prompt or messages, max_tokens (None: the rest of the context), temperature,
        top_p, seed, stop (lm_worker's "start" command without op and id)."""
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
            os.set_blocking(self.proc.stdout.fileno(), False)
            self.loop.add_reader(self.proc.stdout.fileno(), self._read)
        job = Job(next(self.ids))
        if self.worker_ended:
            job.ended = True
            job.put("error", self._gone())
            return job
        self.jobs[job.id] = job
        self._send({"op": "start", "id": job.id, **request})
        return job

    def cancel(self, job: Job) -> None:
        if not job.ended:
            self._send({"op": "cancel", "id": job.id})

    def _send(self, command: dict) -> None:
        line = (json.dumps(command) + "\n").encode()
        # a worker that is gone (BrokenPipe) or closed (ValueError): the reader ends every job
        with self.lock, contextlib.suppress(BrokenPipeError, ValueError):
            self.proc.stdin.write(line)

    def close(self) -> None:
        with self.lock, contextlib.suppress(OSError):
            self.proc.stdin.close()  # the worker ends at the end of its input
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.loop is not None and not self.loop.is_closed():
            self.loop.remove_reader(self.proc.stdout.fileno())

    def _read(self) -> None:
        """The worker's pipe is readable: dispatch the whole lines that came."""
        fd = self.proc.stdout.fileno()
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        now = time.perf_counter()
        if chunk:
            *lines, self.unread = (self.unread + chunk).split(b"\n")
            for line in lines:
                message = json.loads(line)
                job = self.jobs.get(message.get("id"))
                if job is not None:
                    self._dispatch(job, message, now)
            return
        self.loop.remove_reader(fd)
        for job in list(self.jobs.values()):  # the worker ended: nothing more will come
            job.ended = True
            job.put("error", self._gone())
        self.jobs.clear()

    def _gone(self) -> str:
        code = self.proc.wait()
        return f"the model's worker process ended (exit code {code}): restart the server"

    def _dispatch(self, job: Job, message: dict, now: float) -> None:
        m = self.metrics
        if "token" in message:
            if not message.get("extra"):
                job.completion_tokens += 1
                if m is not None:
                    m.token(job, now)
                job.last_token_at = now
            if message["token"]:
                job.put("text", message["token"])
        elif "accepted" in message:
            job.prompt_tokens = message["accepted"]["prompt_tokens"]
            job.max_tokens = message["accepted"]["max_tokens"]
            job.put("accepted", message["accepted"])
        elif "started" in message:
            job.running = True
            if m is not None:
                m.started(job, message["started"]["queued_s"])
            job.put("started", message["started"])
        else:
            job.ended = True
            self.jobs.pop(job.id, None)
            if "rejected" in message:
                job.put("rejected", message["rejected"])
            elif "error" in message:
                job.put("error", message["error"])
            else:
                job.put("done", message["done"])
                if self.on_done is not None:
                    self.on_done(message["prompt"], message["tokens"])
