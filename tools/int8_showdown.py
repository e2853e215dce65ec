"""int8 showdown: does edgekit's int8 beat the usual hand recipe? (issues 4 and 11)

Builds a ResNet-18-shaped CNN, a 6-layer transformer encoder, and a 6-layer sentence encoder with
trained-BERT-like outlier channels (token ids + attention mask, mean pooling, L2 norm; see
tools/reference_models.py) — random weights: latency and drift only — saves each as a state_dict
a user would have, runs `edgekit optimize` on each, and prints side by side, as latency ratios to
ORT fp32 measured interleaved in one run: PyTorch eager fp32, ORT fp32, naive `quantize_dynamic`
of the raw export, and edgekit's recommended variant, with drift.

    python tools/int8_showdown.py [--min-time 2] [--max-time 6] [--only outlier]

The model classes double as `--arch` factories (`tools/int8_showdown.py:ResNet18`).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import quantize_dynamic
from reference_models import ResNet18, SentenceEncoder, sentence_batch
from showdown_common import arguments, selected
from torch import nn

from edgekit import stats
from edgekit.accuracy import drift, run_onnx
from edgekit.benchmark import BenchOptions, measure
from edgekit.recommend import parse_budget

HERE = Path(__file__).resolve()


class EncoderLayer(nn.Module):
    def __init__(self, hidden: int = 384, heads: int = 6, ffn: int = 1536) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.ff1 = nn.Linear(hidden, ffn)
        self.ff2 = nn.Linear(ffn, hidden)
        self.norm2 = nn.LayerNorm(hidden)

    def forward(self, x):
        n, s, h = x.shape
        q, k, v = self.qkv(x).reshape(n, s, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / (h // self.heads) ** 0.5, dim=-1)
        x = self.norm1(x + self.out((att @ v).transpose(1, 2).reshape(n, s, h)))
        return self.norm2(x + self.ff2(nn.functional.gelu(self.ff1(x))))


class Encoder(nn.Module):
    """A MiniLM-L6-sized encoder: 6 layers, hidden 384, 6 heads, FFN 1536; input (N, 128, 384)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(EncoderLayer() for _ in range(6)))

    def forward(self, x):
        return self.layers(x)


def uniform(spec: str, value_range: tuple[float, float]):
    """Drift samples for a one-input model: uniform in `value_range`, the --input spec's shape."""
    name, shape, _ = spec.split(":", 2)
    shape = tuple(int(d) for d in shape.split("x"))

    def samples(count: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(1)
        return {name: rng.uniform(*value_range, (count, *shape[1:])).astype(np.float32)}

    return samples


def sentences(count: int) -> dict[str, np.ndarray]:
    return sentence_batch(count, seed=1)  # other sentences than the --data edgekit is given


# name → (factory, edgekit arguments, drift samples, speedup required)
MODELS = {
    "ResNet-18 CNN": (
        ResNet18,
        ["--input", "x:1x3x224x224:float32"],
        uniform("x:1x3x224x224:float32", (0.0, 1.0)),
        1.0,
    ),
    "6-layer encoder": (
        Encoder,
        ["--input", "x:1x128x384:float32:-2-2"],
        uniform("x:1x128x384:float32:-2-2", (-2.0, 2.0)),
        1.3,
    ),
    "6-layer sentence encoder with outlier channels": (
        SentenceEncoder,
        ["--data", "{work}/sentences.npz", "--max-drift", "cosine>=0.99"],
        sentences,
        1.3,
    ),
}
DRIFT_SAMPLES = 16


def main() -> int:
    args, work = arguments(__doc__, "int8-showdown-", min_time=2.0, max_time=6.0)
    np.savez(work / "sentences.npz", **sentence_batch(32))  # padded token ids and masks
    torch.set_num_threads(2)
    blocks, passed = [], True
    for title, (factory, extra, samples, required) in MODELS.items():
        if not selected(title, args):
            continue
        torch.manual_seed(0)  # the same weights for a model whether run alone (--only) or not
        model = factory().eval()
        stem = factory.__name__.lower()
        torch.save(model.state_dict(), work / f"{stem}.pt")  # what a user has: weights + class
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "edgekit.cli", "optimize", work / f"{stem}.pt",
             "--arch", f"{HERE}:{factory.__name__}", *(a.format(work=work) for a in extra),
             "-o", work / stem, "-q", "--min-time", str(args.min_time),
             "--max-time", str(args.max_time)],
            check=True, cwd=HERE.parents[1],
        )  # fmt: skip
        seconds = time.perf_counter() - started
        report = json.loads((work / stem / "report.json").read_text())
        rows = side_by_side(model, samples(DRIFT_SAMPLES), report, work / stem, args)
        speedup = rows[-1][1]
        rec = {v["name"]: v for v in report["variants"]}
        within, measured = parse_budget(report["budget"]).check(
            rec[report["recommendation"]["variant"]]["accuracy"], rec["fp32"]["accuracy"]
        )
        ok = report["recommendation"]["variant"] != "fp32" and speedup >= required and within
        passed &= ok
        blocks.append(
            [
                f"== {title}: edgekit optimize took {seconds:.0f} s; batch 1, 2 threads",
                f"{'':28}{'speed vs ORT fp32':>18}   drift vs torch eager ({DRIFT_SAMPLES} samples)",
                *(f"{label:28}{ratio:>17.2f}x   {d}" for label, ratio, d in rows),
                f"budget: {report['budget']}; recommended: {report['recommendation']['variant']}"
                f" — {report['recommendation']['reason']}",
                *(f"  {note}" for note in report["notes"]),
                f"{'PASS' if ok else 'FAIL'}: the recommendation must be ≥ {required:.1f}x ORT "
                f"fp32 (measured just now, interleaved) and within budget ({measured})",
            ]
        )
    print()
    for lines in blocks:
        print(*lines, sep="\n", end="\n\n")
    return 0 if passed else 1


def side_by_side(model, samples: dict, report, out: Path, args) -> list[tuple[str, float, str]]:
    """(label, speed vs ORT fp32, drift) rows: torch eager, ORT fp32, naive dynamic int8 of the
    raw export, edgekit's recommendation. ORT rows interleaved by edgekit's bench; torch eager
    interleaved with an ORT fp32 session in this process."""
    recommended = report["recommendation"]["variant"]
    logging.disable(logging.WARNING)  # its advice to pre-process: the naive recipe skips that
    quantize_dynamic(out / "fp32.onnx", out / "naive.onnx")  # the usual recipe, by hand
    files = {
        "ORT fp32": out / "fp32.onnx",
        "naive quantize_dynamic": out / "naive.onnx",
        f"edgekit: {recommended}": out / f"{recommended}.onnx",
    }
    tensors = [torch.from_numpy(v) for v in samples.values()]
    with torch.no_grad():
        reference = [model(*tensors).numpy()]
    batch = {k: v[:1] for k, v in samples.items()}
    bench = measure(files, batch, BenchOptions(min_time=args.min_time, max_time=args.max_time))

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    # Spinning ORT threads would steal the 2 cores from torch's turn in the same process.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        str(files["ORT fp32"]), options, providers=["CPUExecutionProvider"]
    )
    first = [t[:1] for t in tensors]
    runs = {"eager": lambda: model(*first), "ort": lambda: session.run(None, batch)}
    rounds = {k: [] for k in runs}
    deadline = time.perf_counter() + 2 * args.min_time
    with torch.no_grad():
        for run in runs.values():
            run()  # warm-up
        while time.perf_counter() < deadline or len(rounds["eager"]) < 5:
            for key, run in runs.items():
                start = time.perf_counter()
                run()
                rounds[key].append([(time.perf_counter() - start) * 1e3])
    eager = 1 / stats.paired_ratio(rounds["ort"], rounds["eager"])["ratio"]

    rows = [("PyTorch eager fp32", eager, "(reference)")]
    for label, path in files.items():
        relative = bench.variants[label].relative
        accuracy, _ = drift(reference, run_onnx(path, samples, chunk=1))
        text = f"cosine_min {accuracy['cosine_min']:.5f}"
        if accuracy["top1_agreement"] is not None:
            text += f", top1 {accuracy['top1_agreement']:.3f}"
        if relative and relative.get("ci95"):
            label_ci = f" (95% CI {relative['ci95'][0]:.2f}–{relative['ci95'][1]:.2f})"
            text += label_ci
        rows.append((label, relative["speedup"] if relative else 1.0, text))
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
