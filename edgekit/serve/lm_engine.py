"""A language model served: onnxruntime-genai's generation loop on one worker thread, tokens
handed to the event loop as they come.

Requests that arrive together are generated side by side: the worker takes one token step of
each active generation in turn (at most MAX_ACTIVE, each with its own KV cache), so a second
client's first token does not wait for the first client's whole answer. The steps themselves run
one at a time: on a 2-core device one step already uses every core (tools/bench_serve.py --lm
measures what this gives against one-at-a-time).

A job is cancelled (its client went away, or the server stops) by setting `job.cancelled`: the
worker drops it before its next step. Torch-free: onnxruntime-genai only.
"""

from __future__ import annotations

import asyncio
import json
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import EdgekitError

MAX_ACTIVE = 4  # generations side by side; each holds a KV cache of its prompt + max_tokens
GENAI_CONFIG = "genai_config.json"


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Job:
    """One generation. The worker puts ("text", str), then ("done", finish_reason) or
    ("error", message) on `events`, always through the event loop's thread."""

    prompt: list[int]
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.perf_counter)
    completion_tokens: int = 0
    last_token_at: float | None = None
    tokens: list[int] = field(default_factory=list)  # the generated ids (for the drift shadow)

    def put(self, kind: str, value) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


class StopText:
    """Text that is safe to send while watching for stop strings: a suffix that could still
    grow into a stop string is held back; a stop string ends the text before it."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops, self.held = [s for s in stops if s], ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """(text to send now, whether a stop string was reached)."""
        text = self.held + piece
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return text[: min(hits)], True
        keep = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:n]):
                    keep = max(keep, n)
                    break
        self.held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        text, self.held = self.held, ""
        return text


class _Running:
    """A job on the worker: its generator, its detokenizer stream and its stop watcher."""

    def __init__(self, engine: LMEngine, job: Job):
        og = engine.og
        self.job, self.stop = job, StopText(job.sampling.stop)
        s = job.sampling
        params = og.GeneratorParams(engine.model)
        params.set_search_options(
            max_length=len(job.prompt) + s.max_tokens,
            do_sample=s.temperature > 0,
            temperature=s.temperature if s.temperature > 0 else 1.0,
            top_p=s.top_p,
            random_seed=s.seed if s.seed is not None else secrets.randbelow(2**31),
        )
        self.generator = og.Generator(engine.model, params)
        self.stream = engine.tokenizer.create_stream()
        self.started = time.perf_counter()
        self.generator.append_tokens(job.prompt)  # the prefill

    def step(self, engine: LMEngine) -> bool:
        """One token; False once the job has ended (its last event sent)."""
        job, gen = self.job, self.generator
        if job.cancelled.is_set():
            return False
        gen.generate_next_token()
        token = int(gen.get_next_tokens()[0])
        now = time.perf_counter()
        job.completion_tokens += 1
        engine.metrics.token(job, now)
        job.last_token_at = now
        if token in engine.eos_ids:
            job.completion_tokens -= 1  # the end-of-text token is not part of the answer
            return self.finish("stop", engine)
        job.tokens.append(token)
        text, stopped = self.stop.feed(self.stream.decode(token))
        if text:
            job.put("text", text)
        if stopped:
            return self.finish("stop", engine)
        if job.completion_tokens >= job.sampling.max_tokens or gen.is_done():
            return self.finish("length", engine)
        return True

    def finish(self, reason: str, engine: LMEngine) -> bool:
        rest = self.stop.flush() if reason == "length" else ""
        if rest:
            self.job.put("text", rest)
        self.job.put("done", reason)
        if engine.on_done is not None:
            engine.on_done(self.job.prompt, self.job.tokens)
        return False


class LMEngine:
    """The model, its tokenizer and the worker thread that generates."""

    def __init__(self, folder: Path, threads: int, metrics=None):
        """metrics: made by metrics(engine) -> an edgekit.serve.metrics.LMMetrics, or None."""
        try:
            import onnxruntime_genai as og
        except ImportError:
            raise EdgekitError(
                "Serving a language model needs onnxruntime-genai, which is not installed: "
                "python3 -m pip install onnxruntime-genai"
            ) from None
        self.og, self.folder = og, Path(folder)
        try:
            settings = json.loads((self.folder / GENAI_CONFIG).read_text())
            model_settings = settings["model"]
            self.context_length = int(model_settings["context_length"])
            self.vocab_size = int(model_settings["vocab_size"])
            eos = model_settings.get("eos_token_id")
            self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
            decoder = model_settings["decoder"]
            self.kv_bytes_per_token = (
                2 * int(decoder["num_hidden_layers"]) * int(decoder["num_key_value_heads"])
                * int(decoder["head_size"]) * 4
            )  # fmt: skip  # key + value, float32 cache (what the CPU builder writes)
            config = og.Config(str(self.folder))
            config.overlay(
                json.dumps(
                    {"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}
                )
            )
            self.model = og.Model(config)
            self.tokenizer = og.Tokenizer(self.model)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise EdgekitError(
                f"Cannot load the language model in {self.folder}: {exc}. Serve a folder that "
                "`edgekit optimize` wrote for a language model (genai_config.json, model.onnx "
                "and the tokenizer files)."
            ) from None
        self.chat_template = chat_template(self.folder)
        self.metrics = metrics(self) if metrics else _Unobserved()
        self.on_done = None  # on_done(prompt ids, generated ids) after each answered request
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.kv_tokens = 0  # tokens the KV caches of the running jobs are allocated for
        self.closed = False
        self.worker = threading.Thread(target=self._work, name="lm-generate", daemon=True)
        self.worker.start()

    # -- on the event loop --------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def chat_prompt(self, messages: list[dict]) -> str:
        """The prompt the model's chat template makes of the messages; ValueError without one."""
        if self.chat_template is None:
            raise ValueError(
                "this model has no chat template (none in its tokenizer_config.json or "
                "chat_template.jinja): use /v1/completions with a plain prompt"
            )
        return self.tokenizer.apply_chat_template(
            json.dumps(messages), template_str=self.chat_template, add_generation_prompt=True
        )

    def submit(self, prompt: list[int], sampling: Sampling) -> Job:
        job = Job(prompt, sampling, asyncio.get_running_loop())
        self.jobs.put(job)
        return job

    def close(self) -> None:
        self.closed = True
        self.jobs.put(None)
        self.worker.join(timeout=30)

    # -- on the worker thread -----------------------------------------------------------------

    def _work(self) -> None:
        running: list[_Running] = []
        while not self.closed:
            while len(running) < MAX_ACTIVE:
                try:
                    job = self.jobs.get(block=not running)
                except queue.Empty:
                    break
                if job is None:
                    break
                started = self._start(job)
                if started is not None:
                    running.append(started)
            for one in list(running):
                try:
                    going = one.step(self)
                except Exception as exc:  # noqa: BLE001 - the client gets the reason
                    one.job.put("error", f"generation failed: {exc}")
                    going = False
                if not going:
                    running.remove(one)
            self.kv_tokens = sum(len(r.job.prompt) + r.job.sampling.max_tokens for r in running)
        for one in running:
            one.job.put("error", "the server is shutting down")
        while True:  # answer what is still queued
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.put("error", "the server is shutting down")

    def _start(self, job: Job) -> _Running | None:
        if job.cancelled.is_set():
            return None
        try:
            self.metrics.started(job, time.perf_counter())
            return _Running(self, job)
        except Exception as exc:  # noqa: BLE001
            job.put("error", f"generation failed: {exc}")
            return None


class _Unobserved:
    def started(self, job: Job, now: float) -> None:
        pass

    def token(self, job: Job, now: float) -> None:
        pass


def chat_template(folder: Path) -> str | None:
    """The chat template a Hugging Face folder carries: chat_template.jinja (transformers 5) or
    tokenizer_config.json's "chat_template"."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    template = config.get("chat_template") if isinstance(config, dict) else None
    return template if isinstance(template, str) and template.strip() else None
