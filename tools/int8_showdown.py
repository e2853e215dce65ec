"""int8 showdown: does edgekit's int8 beat the usual hand recipe? (issue 4)

Builds a ResNet-18-shaped CNN and a 6-layer transformer encoder (random weights: latency and
drift only), saves each as a state_dict a user would have, runs `edgekit optimize` on each, and
prints side by side, as latency ratios to ORT fp32 measured interleaved in one run: PyTorch
eager fp32, ORT fp32, naive `quantize_dynamic` of the raw export, and edgekit's recommended
variant, with drift.

    python tools/int8_showdown.py [--min-time 2] [--max-time 6]

The model classes double as `--arch` factories (`tools/int8_showdown.py:ResNet18`).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import quantize_dynamic
from reference_models import ResNet18
from torch import nn

from edgekit.accuracy import drift, run_onnx
from edgekit.benchmark import BenchOptions, measure, stats
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


MODELS = {  # name → (factory, --input spec, range of the drift samples, speedup required)
    "ResNet-18 CNN": (ResNet18, "x:1x3x224x224:float32", (0.0, 1.0), 1.0),
    "6-layer encoder": (Encoder, "x:1x128x384:float32:-2-2", (-2.0, 2.0), 1.3),
}
DRIFT_SAMPLES = 16


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds per variant, at least")
    parser.add_argument("--max-time", type=float, default=6.0, help="seconds per variant, at most")
    parser.add_argument("--keep", type=Path, help="keep the models and reports in this folder")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="int8-showdown-"))
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    blocks, passed = [], True
    for title, (factory, spec, value_range, required) in MODELS.items():
        model = factory().eval()
        stem = factory.__name__.lower()
        torch.save(model.state_dict(), work / f"{stem}.pt")  # what a user has: weights + class
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "edgekit.cli", "optimize", work / f"{stem}.pt",
             "--arch", f"{HERE}:{factory.__name__}", "--input", spec, "-o", work / stem, "-q",
             "--min-time", str(args.min_time), "--max-time", str(args.max_time)],
            check=True, cwd=HERE.parents[1],
        )  # fmt: skip
        seconds = time.perf_counter() - started
        report = json.loads((work / stem / "report.json").read_text())
        rows = side_by_side(model, spec, value_range, report, work / stem, args)
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


def side_by_side(model, spec, value_range, report, out: Path, args) -> list[tuple[str, float, str]]:
    """(label, speed vs ORT fp32, drift) rows: torch eager, ORT fp32, naive dynamic int8 of the
    raw export, edgekit's recommendation. ORT rows interleaved by edgekit's bench; torch eager
    interleaved with an ORT fp32 session in this process."""
    name, shape, _ = spec.split(":", 2)
    shape = tuple(int(d) for d in shape.split("x"))
    recommended = report["recommendation"]["variant"]
    logging.disable(logging.WARNING)  # its advice to pre-process: the naive recipe skips that
    quantize_dynamic(out / "fp32.onnx", out / "naive.onnx")  # the usual recipe, by hand
    files = {
        "ORT fp32": out / "fp32.onnx",
        "naive quantize_dynamic": out / "naive.onnx",
        f"edgekit: {recommended}": out / f"{recommended}.onnx",
    }
    samples = np.random.default_rng(1).uniform(*value_range, (DRIFT_SAMPLES, *shape[1:]))
    samples = samples.astype(np.float32)
    with torch.no_grad():
        reference = [model(torch.from_numpy(samples)).numpy()]
    batch = {name: samples[:1]}
    bench = measure(files, batch, BenchOptions(min_time=args.min_time, max_time=args.max_time))

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    # Spinning ORT threads would steal the 2 cores from torch's turn in the same process.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        str(files["ORT fp32"]), options, providers=["CPUExecutionProvider"]
    )
    x = torch.from_numpy(samples[:1])
    runs = {"eager": lambda: model(x), "ort": lambda: session.run(None, batch)}
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
        relative = bench.variants[label]["relative"]
        accuracy, _ = drift(reference, run_onnx(path, {name: samples}))
        text = f"cosine_min {accuracy['cosine_min']:.5f}"
        if accuracy["top1_agreement"] is not None:
            text += f", top1 {accuracy['top1_agreement']:.3f}"
        rows.append((label, relative["speedup"] if relative else 1.0, text))
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
