"""Pruning truth check (issue 5): what structured and unstructured pruning really give on CPU.

Builds a ResNet-18-shaped CNN (random weights: latency, MACs and sizes only), makes the
`structured-0.5` and `unstructured-0.5` variants with edgekit's pruning pass, and benchmarks
them against the unpruned fp32 export in one interleaved run (edgekit.benchmark.measure). Expected:
structured 0.5 at least 1.5x faster with MACs cut accordingly; unstructured 0.5 about half
zeros, a smaller gzip'd file, and no speedup. Exits 1 when a claim does not hold.

    python tools/prune_truth.py [--size 128] [--min-time 3] [--max-time 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference_models import ResNet18  # noqa: E402

from edgekit.api import no_progress  # noqa: E402
from edgekit.benchmark import BenchOptions, measure  # noqa: E402
from edgekit.model.export import export_onnx, torch_outputs  # noqa: E402
from edgekit.model.inputs import InputSpec  # noqa: E402
from edgekit.model.load import LoadedModel  # noqa: E402
from edgekit.model.samples import generate_samples  # noqa: E402
from edgekit.passes import PassContext, Variant  # noqa: E402
from edgekit.passes.prune import PruneSpec, prune_variant  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="input height and width")
    parser.add_argument("--min-time", type=float, default=3.0)
    parser.add_argument("--max-time", type=float, default=10.0)
    args = parser.parse_args()

    torch.manual_seed(0)
    specs = [InputSpec("image", (1, 3, args.size, args.size))]
    with tempfile.TemporaryDirectory(prefix="prune-truth-") as tmp:
        staging = Path(tmp)
        loaded = LoadedModel(staging / "resnet18.pt", "state_dict", "-", ResNet18().eval(), None)
        feeds = generate_samples(specs, 4)
        fp32 = Variant("fp32", staging / "fp32.onnx")
        export_onnx(loaded, specs, fp32.path)
        ctx = PassContext(
            staging, feeds, None, torch_outputs(loaded, feeds), False, None, no_progress
        )
        pruned = [
            prune_variant(PruneSpec(kind, 0.5), loaded, specs, fp32, ctx)
            for kind in ("structured", "unstructured")
        ]
        print(f"ResNet-18 shape, input 1x3x{args.size}x{args.size}, random weights")
        print("benchmarking fp32, structured-0.5, unstructured-0.5 (interleaved) ...", flush=True)
        bench = measure(
            {v.name: v.path for v in [fp32, *pruned]},
            {"image": feeds["image"][:1]},
            BenchOptions(min_time=args.min_time, max_time=args.max_time),
        )
    return report(bench, fp32, pruned)


def report(bench, fp32: Variant, pruned: list[Variant]) -> int:
    dev, timed = bench.device, bench.variants
    print(
        f"device: {dev['cpu']} ({dev['cores']} cores), {bench.settings['intra_op_threads']} threads"
    )
    info = {v.name: v.extra["pruning"] for v in pruned}
    base = next(iter(info.values()))
    info["fp32"] = {
        "macs_after": base["macs_before"],
        "params_after": base["params_before"],
        "sparsity": None,
        "compressed_size_bytes": base["fp32_compressed_size_bytes"],
    }
    print(
        f"\n{'variant':<18}{'MACs':>15}{'params':>13}{'sparsity':>10}{'gzip bytes':>13}"
        f"{'p50 ms':>9}  speedup vs fp32 (95% CI)"
    )
    for name in ("fp32", *(v.name for v in pruned)):
        row, t = info[name], timed[name]
        rel = t.relative
        speed = (
            f"{rel['speedup']:.2f}x [{rel['ci95'][0]:.2f}, {rel['ci95'][1]:.2f}]" if rel else "—"
        )
        sparsity = "—" if row["sparsity"] is None else f"{row['sparsity']:.3f}"
        print(
            f"{name:<18}{row['macs_after']:>15,}{row['params_after']:>13,}{sparsity:>10}"
            f"{row['compressed_size_bytes']:>13,}{t.latency_ms['p50']:>9.2f}  {speed}"
        )

    s, u = info["structured-0.5"], info["unstructured-0.5"]
    s_speed = timed["structured-0.5"].relative["speedup"]
    u_speed = timed["unstructured-0.5"].relative["speedup"]
    checks = [
        (
            s_speed >= 1.5,
            f"structured-0.5: {s_speed:.2f}x faster than fp32 (needs >= 1.5x); MACs "
            f"{s['macs_after'] / s['macs_before']:.0%} and params "
            f"{s['params_after'] / s['params_before']:.0%} of fp32",
        ),
        (
            abs(u["sparsity"] - 0.5) < 0.02,
            f"unstructured-0.5: sparsity {u['sparsity']:.3f} of the exported weights",
        ),
        (
            u["compressed_size_bytes"] < u["fp32_compressed_size_bytes"],
            f"unstructured-0.5: gzip'd {u['compressed_size_bytes']:,} bytes vs fp32 "
            f"{u['fp32_compressed_size_bytes']:,} "
            f"({u['compressed_size_bytes'] / u['fp32_compressed_size_bytes']:.0%}): the real gain",
        ),
    ]
    print()
    for ok, text in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {text}")
    print(
        f"     unstructured-0.5: measured {u_speed:.2f}x vs fp32 — no speedup claimed: dense "
        "kernels multiply the zeros too"
    )
    for warning in bench.warnings:
        print(f"warning: {warning}")
    return 0 if all(ok for ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
