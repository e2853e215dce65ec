"""LM showdown: llama.cpp (through llama-cpp-python) against onnxruntime-genai on the same weights.

For each model (the trained tiny LM, and a Qwen2.5-0.5B-shaped model with random weights built
here: small models are overhead-bound and flatter everyone), from one Hugging Face folder:
  - onnxruntime-genai folders made by its model builder with edgekit's LM recipes
    (edgekit.lm.variants): fp32, int8, int4 (block 32, symmetric, accuracy_level 4, the token
    embedding int4 too) and int4-mixed (the sensitive MatMuls at int8, k-quant scales); each
    computes the LM head at a prefill's last position only;
  - GGUF files made by llama.cpp's own converter (convert_hf_to_gguf.py, from llama-cpp-python's
    source distribution), F32, then Q8_0 and Q4_0 with llama.cpp's quantizer (llama_model_quantize).
Every variant is timed interleaved in one edgekit.lm.bench.measure_lm run, each in its own worker
process, the same threads (2): the GGUF files by a worker in this file that speaks the bench
worker's protocol with llama.cpp doing the work. Printed: pp512 and tg128 tokens/s, each also as
a ratio to llama.cpp Q4_0 (with the range the two 95% intervals allow), TTFT, peak RSS (VmHWM:
llama.cpp maps the GGUF file, whose touched pages count as resident), and on the trained model each
variant's perplexity on held-out text and its mean KL divergence / same-top-1 share against the
onnxruntime-genai fp32 logits (llama.cpp's `perplexity --kl-divergence` figures; the same token ids
go to every variant, so the tokenizers cannot differ there).

llama.cpp's converter refuses a BPE tokenizer whose pre-tokenizer it does not recognise (it hashes
the token ids of a test string); a byte-level BPE trained with `tokenizers` (ByteLevel
pre-tokenizer, GPT-2's split regex) is GPT-2's pre-tokenizer, so the conversion is told "gpt-2" for
an unknown hash. The table's "tokenize" line checks that choice: llama.cpp's tokenization of the
held-out text against the `tokenizers` one.

    pip install llama-cpp-python sentencepiece   # builds llama.cpp from source (~11 min, 2 cores)
    pip download --no-binary :all: --no-deps llama-cpp-python -d SRC && tar xzf SRC/*.tar.gz -C SRC
    python tools/lm_showdown.py --converter SRC/llama_cpp_python-*/vendor/llama.cpp \\
        [--tiny models/tiny-lm --heldout models/tiny-lm-heldout.txt] [--vocab 151936] [--only tiny]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgekit.lm import bench_worker
from edgekit.lm.bench_worker import Worker as GenaiWorker
from edgekit.lm.bench_worker import peak_rss_bytes
from edgekit.lm.variants import RECIPES

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
THREADS = 2
# name -> builder precision and extra options: edgekit's own LM recipes, so the table times
# the variants `edgekit optimize` makes and picks from
GENAI = {
    f"ort-genai {name}": (RECIPES[name].precision, [f"{k}={v}" for k, v in RECIPES[name].builder_options.items()])
    for name in ("fp32", "int8", "int4", "int4-mixed")
}  # fmt: skip
GGUF = ("F32", "Q8_0", "Q4_0")
BASELINE = "llama.cpp Q4_0"
REFERENCE = "ort-genai fp32"


def run(cmd: list[str], **kwargs) -> None:
    """A niced build step (conversions are not timing runs); its output only when it fails."""
    proc = subprocess.run(["nice", "-n", "19", *cmd], capture_output=True, text=True, **kwargs)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


# ---- the models -----------------------------------------------------------------------------


def qwen_shaped(out: Path, vocab: int, tokenizer_from: Path) -> Path:
    """Qwen2.5-0.5B's shape (24 layers, hidden 896, 14 heads, 2 KV heads, intermediate 4864, tied
    embeddings) with random weights, and the tiny model's tokenizer (ids past it are padding)."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    )
    with torch.no_grad():
        model = Qwen2ForCausalLM(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(out)
    return out


def genai_variants(hf: Path, work: Path) -> dict[str, Path]:
    out = {}
    for name, (precision, extra) in GENAI.items():
        folder = work / name.replace(" ", "-")
        if not (folder / "genai_config.json").is_file():
            cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf),
                   "-o", str(folder), "-p", precision, "-e", "cpu", "-c", str(work / "cache")]  # fmt: skip
            run(cmd + (["--extra_options", *extra] if extra else []), timeout=3600)
        out[name] = folder
    return out


CONVERT = """
import sys
src, hf, outfile = sys.argv[1:4]
sys.path[:0] = [src, src + "/gguf-py"]
sys.argv = ["convert_hf_to_gguf.py", hf, "--outfile", outfile, "--outtype", "f32"]
import convert_hf_to_gguf
from conversion.base import TextModel

known = TextModel.get_vocab_base_pre


def pre_tokenizer(self, tokenizer):
    # `tokenizers`' ByteLevel pre-tokenizer splits with GPT-2's regex: llama.cpp's "gpt-2"
    try:
        return known(self, tokenizer)
    except NotImplementedError:
        print("pre-tokenizer hash not in llama.cpp's list: gpt-2 (byte-level BPE)", file=sys.stderr)
        return "gpt-2"


TextModel.get_vocab_base_pre = pre_tokenizer
convert_hf_to_gguf.main()
"""


def gguf_variants(hf: Path, work: Path, converter: Path) -> dict[str, Path]:
    import llama_cpp

    f32 = work / "model-F32.gguf"
    if not f32.is_file():
        run([sys.executable, "-c", CONVERT, str(converter), str(hf), str(f32)], timeout=3600)
    out = {"llama.cpp F32": f32}
    for quant in GGUF[1:]:
        path = work / f"model-{quant}.gguf"
        if not path.is_file():
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")
            params.nthread = THREADS
            code = llama_cpp.llama_model_quantize(
                str(f32).encode(), str(path).encode(), llama_cpp.byref(params)
            )
            if code != 0:
                sys.exit(f"llama_model_quantize to {quant} failed ({code})")
        out[f"llama.cpp {quant}"] = path
    return out


# ---- the llama.cpp worker: edgekit/lm/bench_worker.py's protocol, llama.cpp doing the work -----


class LlamaWorker(GenaiWorker):
    """pp N: N prompt tokens in one llama_decode batch into an empty KV cache; TTFT: that at the
    shortest length plus picking the first token; tg N: N steps of one token each (decode, then
    the greedy pick), after a short prompt and its first token: as the onnxruntime-genai worker."""

    def cmd_load(self, req):
        from llama_cpp import Llama

        self.lengths = [int(n) for n in req["prompt_lengths"]]
        self.gen_tokens, self.tg_prompt = int(req["gen_tokens"]), int(req["tg_prompt"])
        longest = max(max(self.lengths) + 1, self.tg_prompt + self.gen_tokens + 1)
        threads = int(req["threads"])
        self.baseline = peak_rss_bytes()
        start = time.perf_counter()
        self.model = self.llm = Llama(  # self.model: the worker's 'loaded' mark
            model_path=req["model"],
            n_ctx=longest,
            n_batch=max(self.lengths),
            n_ubatch=max(self.lengths),
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        load_ms = (time.perf_counter() - start) * 1000
        if longest > self.llm._model.n_ctx_train():
            raise ValueError(
                f"{longest} tokens exceed the model's context {self.llm._model.n_ctx_train()}"
            )
        self.vocab = self.llm.n_vocab()
        self.rng = np.random.default_rng(int(req.get("seed", 0)))
        deadline = time.perf_counter() + float(req.get("warmup_max_s", 2.0))
        sets = 0
        while sets < 2 or time.perf_counter() < deadline and sets < 5:
            self.one_set()
            sets += 1
        return {
            "threads": self.llm.context_params.n_threads,
            "context_length": self.llm.n_ctx(),
            "load_ms": load_ms,
            "warmup_sets": sets,
            "warmup_settled": True,
            "baseline_rss_bytes": self.baseline,
            "notes": ["llama.cpp maps the GGUF file: its touched pages count in peak RSS"],
        }

    def prompt(self, n):
        return self.rng.integers(2, self.vocab, size=n).tolist()

    def pick(self):
        return int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))

    def one_set(self):
        llm = self.llm
        result = {"pp_ms": {}, "ttft_ms": None, "tg_ms": None}
        for n in sorted(self.lengths):
            ids = self.prompt(n)
            llm.reset()
            t0 = time.perf_counter_ns()
            llm.eval(ids)  # reset + eval clears the KV cache from position 0 first
            t1 = time.perf_counter_ns()
            self.pick()
            t2 = time.perf_counter_ns()
            result["pp_ms"][str(n)] = (t1 - t0) / 1e6
            if result["ttft_ms"] is None:
                result["ttft_ms"] = (t2 - t0) / 1e6
        llm.reset()
        llm.eval(self.prompt(self.tg_prompt))
        token = self.pick()
        t0 = time.perf_counter_ns()
        for _ in range(self.gen_tokens):
            llm.eval([token])
            token = self.pick()
        result["tg_ms"] = (time.perf_counter_ns() - t0) / 1e6
        return result


# ---- drift: logits of every variant on the same held-out token windows -----------------------


def genai_logits(folder: Path, windows: list[np.ndarray]) -> list[np.ndarray]:
    """(T, vocab) logits per window from the folder's model.onnx with plain onnxruntime, one
    forward pass each with an empty KV cache (what optimize's drift uses)."""
    from edgekit.lm.logits import LogitsModel

    model = LogitsModel(folder, threads=THREADS)
    return [model.sequence_logits(ids).astype(np.float32) for ids in windows]


def gguf_logits(path: Path, windows: list[np.ndarray]) -> list[np.ndarray]:
    from llama_cpp import Llama

    t = max(len(w) for w in windows)
    llm = Llama(model_path=str(path), n_ctx=t, n_batch=t, n_ubatch=t, n_threads=THREADS,
                logits_all=True, verbose=False)  # fmt: skip
    out = []
    for ids in windows:
        llm.reset()
        llm.eval(ids.tolist())
        out.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
    return out


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def drift(reference: list[np.ndarray], variant: list[np.ndarray], windows) -> dict:
    nll, kld, same = [], [], []
    for ref, var, ids in zip(reference, variant, windows, strict=True):
        lp, lq = log_softmax(ref[:-1]), log_softmax(var[:-1])
        nll.extend(-lq[np.arange(len(ids) - 1), ids[1:]])
        kld.extend((np.exp(lp) * (lp - lq)).sum(-1))
        same.extend(ref[:-1].argmax(-1) == var[:-1].argmax(-1))
    return {
        "ppl": float(np.exp(np.mean(nll))),
        "kld": float(np.mean(kld)),
        "same": float(np.mean(same)),
    }


def windows_of(hf: Path, text: str, window: int, count: int) -> list[np.ndarray]:
    from tokenizers import Tokenizer

    ids = np.array(Tokenizer.from_file(str(hf / "tokenizer.json")).encode(text).ids)
    starts = range(0, len(ids) - window, window)
    return [ids[s : s + window] for s in list(starts)[:count]]


def tokenizer_agreement(hf: Path, gguf: Path, text: str) -> float:
    from llama_cpp import Llama
    from tokenizers import Tokenizer

    ours = Tokenizer.from_file(str(hf / "tokenizer.json")).encode(text).ids
    llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    theirs = llm.tokenize(text.encode(), add_bos=False, special=False)
    return float(ours == theirs)


# ---- the run ----------------------------------------------------------------------------------


def showdown(title, hf, work, converter, args, heldout: str | None) -> None:
    from edgekit.lm.bench import measure_lm

    work.mkdir(parents=True, exist_ok=True)
    print(f"\n== {title}: building variants in {work}", file=sys.stderr)
    variants = genai_variants(hf, work)
    gguf = gguf_variants(hf, work, converter)
    if not args.with_f32_gguf and heldout is None:
        gguf.pop("llama.cpp F32")  # the size people run: a second 2 GB float copy adds nothing
    variants.update(gguf)
    command = [sys.executable, str(HERE), "--worker"]
    print(f"timing {len(variants)} variants interleaved, {THREADS} threads", file=sys.stderr)
    result = measure_lm(
        variants,
        threads=THREADS,
        prompt_lengths=(512,),
        gen_tokens=128,
        min_time=args.min_time,
        max_time=args.max_time,
        on_progress=lambda m: print(m, file=sys.stderr) if "loading" in m else None,
        workers={name: command for name in gguf},
    )
    figures = {}
    tokenize = None
    if heldout is not None:
        windows = windows_of(hf, heldout, args.window, args.windows)
        logits = {
            name: (gguf_logits(path, windows) if name in gguf else genai_logits(path, windows))
            for name, path in variants.items()
        }
        figures = {n: drift(logits[REFERENCE], lg, windows) for n, lg in logits.items()}
        tokenize = tokenizer_agreement(hf, gguf["llama.cpp Q4_0"], heldout[:4000])
    print_table(title, variants, result, figures, tokenize)


def ratio(m, ref, key) -> str:
    a, b = getattr(m, key), getattr(ref, key)
    a, b = next(iter(a.values())), next(iter(b.values()))
    low = a["low"] / b["high"] if a["low"] and b["high"] else None
    high = a["high"] / b["low"] if a["high"] and b["low"] else None
    span = f" [{low:.2f}–{high:.2f}]" if low else ""
    return f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}{span}"


def print_table(title, variants, result, figures, tokenize) -> None:
    ref = result.get(BASELINE)
    head = ["variant", "size MB", "pp512 tok/s", "× Q4_0", "tg128 tok/s", "× Q4_0", "TTFT ms",
            "peak RSS MB"]  # fmt: skip
    if figures:
        head += ["PPL", "KLD", "same top-1"]
    rows, failed = [], []
    for name, m in result.items():
        size = sum(f.stat().st_size for f in Path(variants[name]).glob("*.onnx*")) or (
            Path(variants[name]).stat().st_size if Path(variants[name]).is_file() else 0
        )
        if m.error:
            failed.append(f"{name}: error: {m.error}")
            continue
        pp, tg = m.pp[512], m.tg[128]
        ok = ref is not None and ref.error is None
        row = [
            name,
            f"{size / 1e6:.1f}",
            f"{pp['tokens_per_s']:.1f}",
            ratio(m, ref, "pp") if ok else "—",
            f"{tg['tokens_per_s']:.1f}",
            ratio(m, ref, "tg") if ok else "—",
            f"{m.ttft_ms['median']:.1f}",
            f"{m.peak_rss_bytes / 1e6:.0f}",
        ]
        if figures:
            f = figures[name]
            row += [f"{f['ppl']:.3f}", f"{f['kld']:.5f}", f"{f['same']:.3f}"]
        rows.append(row)
    widths = [max(len(str(r[i])) for r in [head, *rows] if i < len(r)) for i in range(len(head))]
    print(f"\n{title} — {THREADS} threads, interleaved in one run; × Q4_0 = tokens/s ÷ llama.cpp "
          "Q4_0's [range from the two 95% intervals]")  # fmt: skip
    for r in [head, *rows]:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths, strict=False))))  # fmt: skip
    for line in failed:
        print(line)
    if figures:
        print(f"PPL on held-out text, KLD and same top-1 vs {REFERENCE} logits")
    if tokenize is not None:
        print(f"tokenize: llama.cpp's tokens of the held-out text equal `tokenizers`' ones: "
              f"{'yes' if tokenize == 1 else 'no'} (pre-tokenizer gpt-2)")  # fmt: skip
    for name, m in result.items():
        for note in m.notes:
            if "random token ids" not in note:
                print(f"note {name}: {note}")


def main() -> None:
    if sys.argv[1:] == ["--worker"]:
        return bench_worker.main(LlamaWorker())
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--converter", type=Path, required=True,
                        help="llama.cpp's source folder (convert_hf_to_gguf.py, gguf-py)")  # fmt: skip
    parser.add_argument("--tiny", type=Path, default=REPO / "models" / "tiny-lm")
    parser.add_argument("--heldout", type=Path, default=REPO / "models" / "tiny-lm-heldout.txt")
    parser.add_argument("--vocab", type=int, default=151936, help="the 0.5B shape's vocabulary")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lm_showdown"))
    parser.add_argument("--only", choices=("tiny", "qwen"))
    parser.add_argument("--min-time", type=float, default=3)
    parser.add_argument("--max-time", type=float, default=15)
    parser.add_argument("--window", type=int, default=256, help="tokens per held-out window")
    parser.add_argument("--windows", type=int, default=16, help="held-out windows at most")
    parser.add_argument("--with-f32-gguf", action="store_true")
    args = parser.parse_args()
    if not (args.converter / "convert_hf_to_gguf.py").is_file():
        sys.exit(f"{args.converter} has no convert_hf_to_gguf.py: give llama.cpp's source folder")
    if args.only != "qwen":
        showdown("trained tiny LM", args.tiny, args.work / "tiny", args.converter, args,
                 args.heldout.read_text())  # fmt: skip
    if args.only != "tiny":
        hf = qwen_shaped(args.work / f"qwen0.5b-v{args.vocab}-hf", args.vocab, args.tiny)
        showdown(f"Qwen2.5-0.5B shape, random weights, vocabulary {args.vocab}", hf,
                 args.work / f"qwen0.5b-v{args.vocab}", args.converter, args, None)  # fmt: skip


if __name__ == "__main__":
    main()
