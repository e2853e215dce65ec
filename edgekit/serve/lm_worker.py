"""The process that generates for a served language model (started by edgekit.serve.lm_engine).

onnxruntime-genai holds Python's GIL while it computes a token: run in a thread of the server, a
step of 7 ms delayed the event loop by as much (measured: a 1 ms sleep on the loop's thread woke
7 ms late, median, while a generation ran beside it), and the server's answers came in bursts. So
the model lives here, in its own process, and the server only moves text.

Protocol: JSON lines. In on stdin, one command a line:
  {"op": "start", "id": N, "prompt": str | null, "messages": [...] | null, "max_tokens": int |
   null, "temperature": t, "top_p": p, "seed": int | null, "stop": [str, ...]}
  {"op": "cancel", "id": N}
Out on the protocol pipe (fd 1 as started; the worker's own stdout goes to stderr):
  {"ready": {"context_length": n, "vocab_size": n, "kv_bytes_per_token": n}}  once, first
  {"id": N, "accepted": {"prompt_tokens": n, "max_tokens": m}}  or  {"id": N, "rejected": {...}}
  {"id": N, "started": {"queued_s": s}}       its prefill is done (after s seconds in the queue)
  {"id": N, "token": "text"}                  each generated token, with its text ("" while a
                                              character's bytes are incomplete)
  {"id": N, "done": "stop" | "length", "tokens": [ids], "prompt": [ids]}  or  {"id": N, "error": ...}
Generations that are running go side by side: one token step of each in turn (at most
MAX_ACTIVE, each with its own KV cache), so a short answer does not wait for a long one. What a
pass of that loop has to say goes out in one write at its end (tokens after an answer's first
at least every COALESCE_S: see Answers), never while a prefill computes. The worker ends when
stdin closes.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import sys
import time
from collections import deque
from pathlib import Path

from edgekit.lm.folder import chat_template

MAX_ACTIVE = 4  # generations side by side; each holds a KV cache of its prompt + max_tokens
COALESCE_S = 0.005  # tokens after an answer's first go out at least this often
GENAI_CONFIG = "genai_config.json"


class StopText:
    """Text that is safe to send while watching for stop strings: a suffix that could still
    grow into a stop string is held back; a stop string ends the text before it."""

    def __init__(self, stops):
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


class Rejected(Exception):
    def __init__(self, message: str, param: str, code: str | None = None):
        super().__init__(message)
        self.body = {"message": message, "param": param, "code": code}


class Model:
    def __init__(self, folder: Path, threads: int):
        import onnxruntime_genai as og

        self.og, self.folder = og, folder
        settings = json.loads((folder / GENAI_CONFIG).read_text())["model"]
        self.context_length = int(settings["context_length"])
        self.vocab_size = int(settings["vocab_size"])
        eos = settings.get("eos_token_id")
        self.eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        decoder = settings["decoder"]
        # key + value per layer, float32 (the cache the CPU builder writes)
        self.kv_bytes_per_token = (
            2 * int(decoder["num_hidden_layers"]) * int(decoder["num_key_value_heads"])
            * int(decoder["head_size"]) * 4
        )  # fmt: skip
        config = og.Config(str(folder))
        config.overlay(json.dumps(
            {"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}
        ))  # fmt: skip
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        self.template = chat_template(folder)

    def prompt(self, command: dict) -> list[int]:
        if command.get("messages") is not None:
            if self.template is None:
                raise Rejected(
                    "this model has no chat template (none in its tokenizer_config.json or "
                    "chat_template.jinja): use /v1/completions with a plain prompt",
                    "messages",
                )
            text = self.tokenizer.apply_chat_template(
                json.dumps(command["messages"]), template_str=self.template,
                add_generation_prompt=True,
            )  # fmt: skip
        else:
            text = command["prompt"]
        return [int(t) for t in self.tokenizer.encode(text)]


class Generation:
    """One request on the worker: its generator, detokenizer stream and stop watcher."""

    def __init__(self, model: Model, command: dict, prompt: list[int], max_tokens: int):
        self.id, self.prompt, self.max_tokens = command["id"], prompt, max_tokens
        self.command, self.model = command, model
        self.stop = StopText(command.get("stop") or ())
        self.tokens: list[int] = []
        self.generator = None
        self.received = time.perf_counter()

    def begin(self) -> None:
        og, c = self.model.og, self.command
        temperature = c.get("temperature", 1.0)
        params = og.GeneratorParams(self.model.model)
        params.set_search_options(
            max_length=len(self.prompt) + self.max_tokens,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else 1.0,
            top_p=c.get("top_p", 1.0),
            random_seed=c["seed"] if c.get("seed") is not None else secrets.randbelow(2**31),
        )
        self.stream = self.model.tokenizer.create_stream()
        self.generator = og.Generator(self.model.model, params)
        self.generator.append_tokens(self.prompt)  # the prefill

    def step(self, say) -> bool:
        """One token; False once it has ended (its last message sent)."""
        gen = self.generator
        gen.generate_next_token()
        token = int(gen.get_next_tokens()[0])
        if token in self.model.eos_ids:  # the end-of-text token is not part of the answer
            return self.finish("stop", say)
        self.tokens.append(token)
        text, stopped = self.stop.feed(self.stream.decode(token))
        say({"id": self.id, "token": text}, urgent=len(self.tokens) == 1)  # the first: TTFT
        if stopped:
            return self.finish("stop", say)
        if len(self.tokens) >= self.max_tokens or gen.is_done():
            rest = self.stop.flush()
            if rest:
                say({"id": self.id, "token": rest, "extra": True})
            return self.finish("length", say)
        return True

    def finish(self, reason: str, say) -> bool:
        say({"id": self.id, "done": reason, "tokens": self.tokens, "prompt": self.prompt})
        return False


def accept(model: Model, command: dict) -> Generation:
    """The request checked against the model (Rejected: what to change)."""
    prompt = model.prompt(command)
    where = "messages" if command.get("messages") is not None else "prompt"
    room = model.context_length - len(prompt)
    if room < 1:
        raise Rejected(
            f"This model's maximum context length is {model.context_length} tokens; the prompt "
            f"has {len(prompt)}. Shorten the prompt.",
            where,
            "context_length_exceeded",
        )
    asked = command.get("max_tokens")
    if asked is not None and asked > room:
        raise Rejected(
            f"This model's maximum context length is {model.context_length} tokens; the prompt "
            f"has {len(prompt)} and {command.get('max_tokens_key', 'max_tokens')} asks for "
            f"{asked} more. Ask for at most {room}.",
            command.get("max_tokens_key", "max_tokens"),
            "context_length_exceeded",
        )
    return Generation(model, command, prompt, asked or room)


class Answers:
    """The protocol pipe. What a pass of the loop says goes out at its end, in one write, but for
    tokens after an answer's first: those wait up to COALESCE_S. A model faster than that then
    wakes the server once for several tokens, not once a token (on a small device each wake-up of
    the server and its client takes the cores from the next token); a slower one waits for nothing.
    """

    def __init__(self, fd: int):
        self.file, self.urgent, self.sent_at = os.fdopen(fd, "w"), False, 0.0

    def say(self, message: dict, urgent: bool = True) -> None:
        self.file.write(json.dumps(message) + "\n")
        self.urgent |= urgent

    def flush(self, idle: bool) -> None:
        """At the end of a pass; `idle`: nothing runs, the loop is about to wait."""
        now = time.perf_counter()
        if self.urgent or idle or now - self.sent_at >= COALESCE_S:
            self.file.flush()
            self.urgent, self.sent_at = False, now


class Commands:
    """Lines from stdin, read without blocking the token steps."""

    def __init__(self, fd: int):
        self.fd, self.buffer, self.closed = fd, b"", False

    def read(self, wait: bool) -> list[dict]:
        ready, _, _ = select.select([self.fd], [], [], None if wait else 0)
        if not ready:
            return []
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            self.closed = True
            return []
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the server; stdin's end stops us
    out = Answers(os.dup(1))
    os.dup2(2, 1)  # anything the libraries print goes to stderr, never into the protocol
    say = out.say

    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        say({"missing": "onnxruntime-genai"})
        return 1
    try:
        model = Model(Path(argv[0]), int(argv[1]))
    except Exception as exc:  # noqa: BLE001 - the server says it in its error
        say({"failed": f"{type(exc).__name__}: {exc}"})
        return 1
    say({"ready": {"context_length": model.context_length, "vocab_size": model.vocab_size,
                   "kv_bytes_per_token": model.kv_bytes_per_token}})  # fmt: skip
    out.flush(idle=True)
    commands = Commands(sys.stdin.fileno())
    waiting: deque[Generation] = deque()
    running: list[Generation] = []
    cancelled: set[int] = set()
    while not (commands.closed and not running and not waiting):
        out.flush(idle=not (running or waiting))
        for command in commands.read(wait=not (running or waiting) and not commands.closed):
            if command["op"] == "cancel":
                cancelled.add(command["id"])
                continue
            try:
                job = accept(model, command)
            except Rejected as exc:
                say({"id": command["id"], "rejected": exc.body})
                continue
            except Exception as exc:  # noqa: BLE001
                say({"id": command["id"], "error": f"{type(exc).__name__}: {exc}"})
                continue
            say({"id": job.id, "accepted": {"prompt_tokens": len(job.prompt),
                                            "max_tokens": job.max_tokens}})  # fmt: skip
            waiting.append(job)
        if commands.closed:  # the server is gone or stopping: nobody reads what comes next
            break
        while waiting and len(running) < MAX_ACTIVE:
            job = waiting.popleft()
            if job.id in cancelled:
                continue
            queued_s = time.perf_counter() - job.received
            try:
                job.begin()
                say({"id": job.id, "started": {"queued_s": queued_s}})
                running.append(job)
            except Exception as exc:  # noqa: BLE001
                say({"id": job.id, "error": f"generation failed: {exc}"})
        for job in list(running):
            going = False
            if job.id not in cancelled:
                try:
                    going = job.step(say)
                except Exception as exc:  # noqa: BLE001
                    say({"id": job.id, "error": f"generation failed: {exc}"})
            if not going:
                running.remove(job)
                cancelled.discard(job.id)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
