"""Does edgekit's bench measure what a plain loop around `session.run` measures?

Builds a modest CNN with onnx.helper, then alternates, in one run: edgekit's bench (worker process,
rounds, warm-up) and a hand-written loop in this process, each for the same time. Prints the ratio of
the two medians; it must lie within 0.95-1.05 (exit code 1 otherwise).

The verdict uses the median of the per-alternation ratios: on a shared host the machine's speed can
change by 2x within a minute, and each alternation's two halves share whatever state it was in. The
order alternates too (bench-loop, loop-bench, ...) so a steady trend favours neither side.

    python tools/bench_fidelity.py [--rounds 8] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgekit.benchmark import BenchOptions, device, measure


def build_cnn(path: Path) -> dict[str, np.ndarray]:
    """3x64x64 -> conv 32 -> relu -> conv 32 -> relu -> conv 64 (stride 2) -> global pool -> gemm 10."""
    rng = np.random.default_rng(0)

    def weight(name, *shape):
        return numpy_helper.from_array((0.1 * rng.standard_normal(shape)).astype(np.float32), name)

    inits = [weight("w1", 32, 3, 3, 3), weight("w2", 32, 32, 3, 3), weight("w3", 64, 32, 3, 3),
             weight("fc", 64, 10)]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["c3"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fidelity_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return {"x": rng.uniform(0, 1, (1, 3, 64, 64)).astype(np.float32)}


def hand_loop(session, feeds, seconds: float) -> list[float]:
    samples = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter_ns()
        session.run(None, feeds)
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="alternations of bench and loop")
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per half")
    args = parser.parse_args()

    threads = device.physical_cores()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cnn.onnx"
        feeds = build_cnn(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads  # the same thread count as the bench's default
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for _ in range(20):  # plain warm-up, as a hand-written benchmark would do
            session.run(None, feeds)

        bench_all, loop_all, ratios = [], [], []
        options = BenchOptions(min_time=args.seconds, max_time=args.seconds)

        def bench_half():
            result = measure({"cnn": path}, feeds, options)
            return result.variants["cnn"].latency_ms["samples"]

        for i in range(args.rounds):
            if i % 2 == 0:
                bench, loop = bench_half(), hand_loop(session, feeds, args.seconds)
            else:
                loop, bench = hand_loop(session, feeds, args.seconds), bench_half()
            bench_all += bench
            loop_all += loop
            ratios.append(float(np.median(bench) / np.median(loop)))
            print(
                f"alternation {i + 1} ({'bench first' if i % 2 == 0 else 'loop first '}): "
                f"edgekit median {np.median(bench):.4f} ms ({len(bench)} runs) | "
                f"hand loop median {np.median(loop):.4f} ms ({len(loop)} runs) | "
                f"ratio {ratios[-1]:.4f}"
            )

    pooled = float(np.median(bench_all) / np.median(loop_all))
    ratio = float(np.median(ratios))
    print(f"threads: {threads}")
    print(f"edgekit bench median: {np.median(bench_all):.4f} ms over {len(bench_all)} runs")
    print(f"hand loop median:     {np.median(loop_all):.4f} ms over {len(loop_all)} runs")
    print(f"ratio of pooled medians (drift-sensitive): {pooled:.4f}")
    ok = 0.95 <= ratio <= 1.05
    verdict = "within" if ok else "OUTSIDE"
    print(
        f"ratio edgekit / hand loop (median of paired ratios): {ratio:.4f}  ({verdict} 0.95-1.05)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
