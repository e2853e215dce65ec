"""edgekit's language-model timing worker: one long-lived process that times one LM variant folder
(genai_config.json + model.onnx + tokenizer) with onnxruntime-genai's Generator.

Self-contained on purpose, like edgekit/benchmark/worker.py, whose line protocol it speaks (one JSON
object per line; {"ok": true, "ready": true, ...} first, then one reply per request): the standard
library, numpy and onnxruntime_genai, never torch, so it can be copied to a device and run there as
`python3 bench_worker.py`.

  {"cmd": "load", "model": DIR, "threads": 2, "prompt_lengths": [128, 512], "gen_tokens": 128,
   "tg_prompt": 16, "warmup_max_s": 2.0, "seed": 0}
      -> threads (read back from the configuration the model was created with),
         context_length (the longest sequence any run holds), model_context_length, load_ms,
         warmup_sets, baseline_rss_bytes
  {"cmd": "round", "seconds": 0.2}  -> pp_ms {length: [ms ...]}, ttft_ms [...], tg_ms [...]: whole
                                      sets (every measurement once) for about that long, at least one
  {"cmd": "memory"}                 -> peak_rss_bytes (VmHWM), baseline_rss_bytes
  {"cmd": "quit"}

What is timed (llama-bench's definitions): pp N = N prompt tokens through the model in one
append_tokens (the prefill); TTFT = that prefill at the shortest prompt length plus picking the first
token; tg N = N generation steps (one token through the model each, KV cache in use) after a short
prompt and its first token. Prompts are random token ids from the vocabulary: the work per token does
not depend on which tokens they are. Greedy search; min_length keeps an end-of-text token from
stopping a generation early.
"""

import gc
import json
import os
import sys
import time

import numpy as np


def peak_rss_bytes():
    """VmHWM of this process (getrusage's ru_maxrss survives fork+exec, so a worker started by a
    parent holding torch would report the parent's peak)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class Worker:
    def __init__(self):
        self.model = None
        self.baseline = peak_rss_bytes()

    def cmd_load(self, req):
        import onnxruntime_genai as og

        self.og = og
        folder = req["model"]
        with open(os.path.join(folder, "genai_config.json")) as handle:
            genai = json.load(handle)
        model_cfg = genai["model"]
        self.vocab = int(model_cfg["vocab_size"])
        self.context = int(model_cfg["context_length"])
        self.lengths = [int(n) for n in req["prompt_lengths"]]
        self.gen_tokens = int(req["gen_tokens"])
        self.tg_prompt = int(req["tg_prompt"])
        longest = max(max(self.lengths) + 1, self.tg_prompt + self.gen_tokens + 1)
        if longest > self.context:  # the parent checks first; this guards a direct caller
            raise ValueError(f"{longest} tokens do not fit the context of {self.context}")
        specials = set()
        for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
            value = model_cfg.get(key)
            specials.update(value if isinstance(value, list) else [value])
        self.usable = np.setdiff1d(np.arange(self.vocab), [s for s in specials if s is not None])
        self.rng = np.random.default_rng(int(req.get("seed", 0)))

        config = og.Config(folder)
        threads = int(req.get("threads") or 0)
        options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self.baseline = peak_rss_bytes()  # onnxruntime-genai imported; no model yet
        start = time.perf_counter_ns()
        self.model = og.Model(config)
        load_ns = time.perf_counter_ns() - start
        # Read back: the decoder's session options as the configuration now holds them (the file's
        # own entries with the overlay applied).
        applied = dict(model_cfg["decoder"].get("session_options") or {})
        applied.update(options)
        deadline = time.perf_counter() + float(req.get("warmup_max_s", 2.0))
        sets, totals = 0, []
        while True:  # warm-up: whole sets until one is no faster than the one before, or time's up
            t0 = time.perf_counter()
            self.one_set()
            totals.append(time.perf_counter() - t0)
            sets += 1
            settled = len(totals) >= 2 and totals[-1] >= totals[-2] * 0.98
            if settled or time.perf_counter() >= deadline:
                break
        return {
            "threads": applied.get("intra_op_num_threads"),
            "session_options": applied,
            "context_length": longest,
            "model_context_length": self.context,
            "load_ms": load_ns / 1e6,
            "warmup_sets": sets,
            "warmup_settled": settled,
            "baseline_rss_bytes": self.baseline,
        }

    def generator(self, max_length):
        og = self.og
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=max_length, min_length=max_length, do_sample=False)
        return og.Generator(self.model, params)

    def prompt(self, n):
        return self.rng.choice(self.usable, size=n).astype(np.int32)

    def prefill(self, n):
        """(prefill ns, first token ns) for a prompt of n tokens."""
        gen = self.generator(n + 1)
        ids = self.prompt(n)
        t0 = time.perf_counter_ns()
        gen.append_tokens(ids)
        t1 = time.perf_counter_ns()
        gen.generate_next_token()
        gen.get_next_tokens()
        t2 = time.perf_counter_ns()
        del gen
        return t1 - t0, t2 - t1

    def generate(self):
        """ns for gen_tokens generation steps after a short prompt and its first token."""
        gen = self.generator(self.tg_prompt + self.gen_tokens + 1)
        gen.append_tokens(self.prompt(self.tg_prompt))
        gen.generate_next_token()  # the first token comes from the prefill's logits
        t0 = time.perf_counter_ns()
        for _ in range(self.gen_tokens):
            gen.generate_next_token()  # one token through the model, then picked
        gen.get_next_tokens()
        elapsed = time.perf_counter_ns() - t0
        made = len(gen.get_sequence(0)) - self.tg_prompt
        del gen
        if made != self.gen_tokens + 1:
            raise RuntimeError(f"generated {made - 1} tokens, not {self.gen_tokens}")
        return elapsed

    def one_set(self):
        result = {"pp_ms": {}, "ttft_ms": None, "tg_ms": None}
        for n in sorted(self.lengths):
            prefill, first = self.prefill(n)
            result["pp_ms"][str(n)] = prefill / 1e6
            if result["ttft_ms"] is None:
                result["ttft_ms"] = (prefill + first) / 1e6
        result["tg_ms"] = self.generate() / 1e6
        return result

    def cmd_round(self, req):
        if self.model is None:
            raise RuntimeError("no model loaded")
        budget = float(req.get("seconds", 0.2))
        reply = {"pp_ms": {str(n): [] for n in self.lengths}, "ttft_ms": [], "tg_ms": []}
        gc.disable()  # a collection inside a timed run is Python's cost, not the model's
        try:
            start = time.perf_counter()
            while True:
                one = self.one_set()
                for n, ms in one["pp_ms"].items():
                    reply["pp_ms"][n].append(ms)
                reply["ttft_ms"].append(one["ttft_ms"])
                reply["tg_ms"].append(one["tg_ms"])
                if time.perf_counter() - start >= budget:
                    break
        finally:
            gc.enable()
        return reply

    def cmd_memory(self, req):
        return {"peak_rss_bytes": peak_rss_bytes(), "baseline_rss_bytes": self.baseline}


def main(worker=None):
    """Serve the protocol on stdin/stdout with `worker` (default: onnxruntime-genai's); another
    engine's worker subclasses Worker with its own cmd_load and one_set (tools/lm_showdown.py)."""
    # Keep the protocol channel private: stray prints from native code go to stderr instead.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    worker = worker or Worker()

    def send(message):
        proto.write(json.dumps(message) + "\n")
        proto.flush()

    send({"ok": True, "ready": True, "pid": os.getpid(), "baseline_rss_bytes": worker.baseline})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            if req.get("cmd") == "quit":
                send({"ok": True})
                break
            handler = getattr(worker, "cmd_" + str(req.get("cmd")), None)
            if handler is None:
                raise ValueError(f"unknown command {req.get('cmd')!r}")
            reply = handler(req)
            reply["ok"] = True
            send(reply)
        except Exception as exc:  # the parent turns this into the variant's error
            send({"ok": False, "error": f"{type(exc).__name__}: {exc}".strip()})


if __name__ == "__main__":
    main()
