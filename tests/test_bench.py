"""edgekit bench: FLOP counting, the worker, the runner's interleaving, and the real CLI.
No timing assertions: only structure, order and counts."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import run_edgekit, save_graph
from onnx import TensorProto, helper, numpy_helper

from edgekit import onnxfile
from edgekit.benchmark import BenchOptions, flops, measure

pytestmark = pytest.mark.slow  # every test here starts a process or exports with torch

TINY = ["--min-time", "0.05", "--max-time", "0.2"]


def _save(path: Path, nodes, inputs, inits, external: bool = False) -> Path:
    graph = helper.make_graph(
        nodes, path.stem, inputs, [helper.make_tensor_value_info(nodes[-1].output[0], 1, None)],
        inits,
    )  # fmt: skip
    if external:
        return save_graph(graph, path, save_as_external_data=True, location=path.name + ".data",
                          size_threshold=0)  # fmt: skip
    return save_graph(graph, path)


def _w(name, *shape):
    return numpy_helper.from_array(np.full(shape, 0.01, np.float32), name)


def flops_model(path: Path, external: bool = False) -> Path:
    """x[N,3,8,8] -> Conv 4x3x3x3 pad 1 -> Conv group 2 (4x2x3x3) pad 1 -> Flatten -> Gemm 256x10
    -> MatMul 10x6."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=2),
        helper.make_node("Flatten", ["c2"], ["f"]),
        helper.make_node("Gemm", ["f", "g"], ["h"]),
        helper.make_node("MatMul", ["h", "m"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])]
    inits = [_w("w1", 4, 3, 3, 3), _w("w2", 4, 2, 3, 3), _w("g", 256, 10), _w("m", 10, 6)]
    return _save(path, nodes, inputs, inits, external)


def failing_model(path: Path) -> Path:
    """Loads fine, fails on the first run: a Reshape of 192 values to 7 x -1."""
    shape = numpy_helper.from_array(np.array([7, -1], np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])]
    return _save(path, nodes, inputs, [shape])


@pytest.fixture
def models(tmp_path):
    return {
        "a": flops_model(tmp_path / "a.onnx"),
        "b": flops_model(tmp_path / "b.onnx"),
        "bad": failing_model(tmp_path / "bad.onnx"),
    }


def feeds(batch=1):
    return {"x": np.random.default_rng(0).uniform(size=(batch, 3, 8, 8)).astype(np.float32)}


# ---------------------------------------------------------------- FLOPs and files


def test_flops_counted_by_hand(tmp_path):
    path = flops_model(tmp_path / "m.onnx")
    # Conv 1: output 4x8x8 = 256 elements, each 3 in-channels x 3x3 kernel = 27 MACs -> 6912
    # Conv 2 (group 2): output 256 elements, each 4/2 = 2 channels x 9 = 18 MACs   -> 4608
    # Gemm [1,256] x [256,10]: 10 outputs x 256                                     -> 2560
    # MatMul [1,10] x [10,6]: 6 outputs x 10                                        ->   60
    count = flops.count(path, feeds(1))
    assert count["by_op"] == {"Conv": 6912 + 4608, "Gemm": 2560, "MatMul": 60}
    assert count["macs"] == 14140 and count["flops"] == 28280 and count["complete"]
    # the actual batch is used: batch 2 doubles everything
    assert flops.count(path, feeds(2))["macs"] == 2 * 14140


def test_size_on_disk_includes_external_data(tmp_path):
    path = flops_model(tmp_path / "ext.onnx", external=True)
    data = tmp_path / "ext.onnx.data"
    assert data.is_file()
    assert onnxfile.files_on_disk(path) == [path, data]
    assert onnxfile.size_on_disk(path) == path.stat().st_size + data.stat().st_size


# ---------------------------------------------------------------- the worker


def test_worker_imports_only_stdlib_numpy_and_its_runtimes():
    source = (Path(__file__).parents[1] / "edgekit/benchmark/worker.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    # edgekit.runtimes here, the copied runtimes/ folder on a device
    assert imported - set(sys.stdlib_module_names) == {"numpy", "edgekit", "runtimes"}


def test_worker_runs_as_copied_to_a_device(tmp_path):
    """As on a Pi: worker.py and the runtimes folder, in a folder without edgekit, speaking its
    JSON-lines protocol."""
    root = Path(__file__).parents[1] / "edgekit"
    worker = shutil.copy(root / "benchmark/worker.py", tmp_path)
    shutil.copytree(root / "runtimes", tmp_path / "runtimes")
    model = flops_model(tmp_path / "m.onnx")
    np.savez(tmp_path / "feeds.npz", **feeds())
    requests = [
        {"cmd": "memory"},  # loads nothing: the baseline memory
        {"cmd": "load", "model": str(model), "feeds": str(tmp_path / "feeds.npz"), "threads": 1,
         "warmup_max_s": 0.2},
        {"cmd": "round", "seconds": 0.01},
        {"cmd": "memory"},
        {"cmd": "profile", "seconds": 0.05},
        {"cmd": "nonsense"},
        {"cmd": "quit"},
    ]  # fmt: skip
    out = subprocess.run(
        [sys.executable, worker],
        input="".join(json.dumps(r) + "\n" for r in requests),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    replies = [json.loads(line) for line in out.stdout.splitlines()]
    hello, empty, load, rnd, mem, prof, bad, bye = replies
    assert hello["ready"] and empty["peak_rss_bytes"] > 0
    assert load["ok"] and load["session_create_ms"] > 0 and load["warmup_runs"] > 0
    assert rnd["samples_ns"] and all(isinstance(s, int) for s in rnd["samples_ns"])
    assert mem["peak_rss_bytes"] >= load["baseline_rss_bytes"]
    assert {op["op_type"] for op in prof["ops"]} >= {"Conv", "Gemm"}
    assert not bad["ok"] and "nonsense" in bad["error"]
    assert bye["ok"]


# ---------------------------------------------------------------- the runner


def test_rounds_interleave_and_a_failing_model_becomes_an_error_row(models):
    opts = BenchOptions(threads=[1], min_time=0.05, max_time=0.2)
    result = measure(models, feeds(), opts)
    # the real order in which rounds ran: a b a b ... (bad failed at load and has no rounds)
    log = result.round_log
    assert len(log) >= 4 and log == ["a", "b"] * (len(log) // 2)
    good, bad = result.variants["b"], result.variants["bad"]
    assert bad.error and "Reshape" in bad.error
    assert bad.latency_ms is None and bad.memory is None and bad.relative is None
    assert "latency_ms" in bad.unmeasured
    assert good.error is None
    assert len(good.latency_ms["samples"]) == min(good.latency_ms["n"], 2000)
    assert sum(good.latency_ms["round_sizes"]) == good.latency_ms["n"]
    assert good.relative["baseline"] == "a" and len(good.relative["ci95"]) == 2
    assert good.memory["peak_rss_bytes"] > good.memory["model_rss_bytes"] >= 0
    assert result.variants["a"].relative is None  # the baseline


def test_wide_intervals_are_one_warning_naming_every_model_and_one_line_says_what_to_do(models):
    two = {k: models[k] for k in ("a", "b")}
    # a target no run meets: both medians are known less well than it
    opts = BenchOptions(threads=[1], min_time=0.05, max_time=0.2, target_ci=1e-9)
    result = measure(two, feeds(), opts)
    targets = [w for w in result.warnings if "% target" in w]
    assert len(targets) == 1, result.warnings
    wide = targets[0]
    assert wide.startswith("The medians are known to ±") and "a ±" in wide and ", b ±" in wide
    assert result.warnings[-1].startswith("What to do: ")
    assert sum(w.startswith("What to do: ") for w in result.warnings) == 1


def test_load_before_and_after_is_one_warning():
    from edgekit.benchmark import device

    busy = {"cores": 2, "logical_cpus": 2, "load_avg_before": [3.4], "load_avg_after": [2.8]}
    (warning,) = device.condition_warnings(busy, [2])
    assert "load average was 3.4 before and 2.8 after the benchmark, on 2 logical CPUs" in warning


def test_thread_sweep_keys_and_order(models):
    two = {k: models[k] for k in ("a", "b")}
    result = measure(two, feeds(), BenchOptions(threads=[1, 2], min_time=0.05, max_time=0.1))
    names = ["a@1t", "b@1t", "a@2t", "b@2t"]
    assert list(result.variants) == names
    assert result.round_log[:8] == names * 2
    assert result.variants["b@2t"].threads == 2
    assert result.variants["b@2t"].relative["baseline"] == "a@1t"
    assert result.settings["threads_sweep"] == [1, 2]


# ---------------------------------------------------------------- the CLI


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_cli_report_fields(models, tmp_path):
    out = tmp_path / "out"
    proc = run_edgekit("bench", models["a"], models["b"], models["bad"], "-o", out,
                       "--threads", "1", "--profile", "--json", *TINY)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # --json: stdout is exactly the report
    assert report == _report(out)
    assert report["command"] == "bench" and report["schema_version"] == 1
    (given,) = report["inputs"]
    assert given["name"] == "x" and given["shape"] == [1, 3, 8, 8] and given["dtype"] == "float32"
    assert given["batch_axis"] == 0  # how the input was bound, in the report
    for key in ("cpu", "arch", "cores", "logical_cpus", "features", "governor", "temperature_c",
                "throttled", "load_avg_before", "load_avg_after", "python", "onnxruntime", "numpy",
                "os"):  # fmt: skip
        assert key in report["device"]
    for key in ("intra_op_threads", "inter_op_threads", "allow_spinning", "arena",
                "graph_optimization_level", "execution_provider", "batch", "interleaved",
                "min_time_s", "max_time_s", "target_ci"):  # fmt: skip
        assert key in report["settings"]
    a, b, bad = report["variants"]
    assert [a["name"], b["name"], bad["name"]] == ["a", "b", "bad"]
    for key in ("p50", "p90", "p99", "mean", "std", "min", "mad", "n", "median_ci95", "samples",
                "rounds", "round_sizes", "outliers"):  # fmt: skip
        assert key in b["latency_ms"]
    lo, hi = b["latency_ms"]["median_ci95"]
    assert lo <= b["latency_ms"]["p50"] <= hi
    assert set(b["cold_start"]) >= {"session_create_ms", "first_run_ms", "warmup_runs"}
    assert b["relative"]["baseline"] == "a" and b["relative"]["speedup"] > 0
    assert b["memory"]["peak_rss_bytes"] > 0 and b["memory"]["model_rss_bytes"] is not None
    assert b["size_bytes"] == models["b"].stat().st_size and len(b["sha256"]) == 64
    assert b["flops"]["macs"] == 14140 and b["gflops_per_s"] > 0 and b["threads"] == 1
    assert b["profile"]["ops"][0]["op_type"] in {"Conv", "Gemm", "MatMul", "ReorderOutput"}
    assert b["accuracy"] is None and "accuracy" in b["unmeasured"]
    assert bad["error"] and bad["latency_ms"] is None
    assert (out / "report.md").is_file()


def test_cli_works_with_torch_unimportable(models, tmp_path, block_imports):
    env = block_imports()
    probe = subprocess.run(
        [sys.executable, "-c",
         "import sys, edgekit.benchmark, edgekit.commands.bench\n"
         "assert 'torch' not in sys.modules\n"
         "try:\n    import torch\nexcept ImportError:\n    print('blocked')"],
        capture_output=True, text=True, env={**__import__('os').environ, **env},
    )  # fmt: skip
    assert probe.returncode == 0 and probe.stdout.strip() == "blocked", probe.stderr
    helped = run_edgekit("bench", "--help", env=env)
    assert helped.returncode == 0 and "--threads" in helped.stdout
    out = tmp_path / "out"
    proc = run_edgekit("bench", models["a"], "-o", out, *TINY, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "a" in proc.stdout and _report(out)["variants"][0]["latency_ms"]["n"] > 0


def unknown_shape_model(path: Path) -> Path:
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "C", 8, 8])]
    return _save(path, nodes, inputs, [])


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("not-onnx", "is not a model file edgekit can read"),
        ("unknown-shape", "unknown size on axis 1"),
    ],
)
def test_bad_input_exits_2_without_a_report(case, message, tmp_path):
    if case == "missing":
        path = tmp_path / "nope.onnx"
    elif case == "not-onnx":
        path = tmp_path / "notes.onnx"
        path.write_text("this is a text file, not a model\n")
    else:
        path = unknown_shape_model(tmp_path / "dyn.onnx")
    out = tmp_path / "out"
    proc = run_edgekit("bench", path, "-o", out, *TINY)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("edgekit: error:")
    assert not out.exists()


def test_unknown_shape_can_be_given_with_input(tmp_path):
    path = unknown_shape_model(tmp_path / "dyn.onnx")
    out = tmp_path / "out"
    proc = run_edgekit("bench", path, "-o", out, "--input", "x:2x5x8x8:float32", "-q", *TINY)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    report = _report(out)
    assert report["inputs"][0]["shape"] == [2, 5, 8, 8] and report["settings"]["batch"] == 2


def test_a_silent_worker_is_a_clear_error_not_a_hang(monkeypatch):
    """A worker (or an SSH link) that stops answering must not stall the run forever."""
    import sys
    import time

    from edgekit.benchmark import runner

    monkeypatch.setattr(runner, "REPLY_TIMEOUT_S", 1.0)
    start = time.monotonic()
    with pytest.raises(runner.WorkerError, match="sent nothing for 1 s"):
        runner.Worker([sys.executable, "-c", "import time; time.sleep(60)"])
    assert time.monotonic() - start < 30


# ---------------------------------------------------------------- stopping early (optimize)


def matmul_chain(path: Path, count: int) -> Path:
    """x[N,256] -> `count` MatMuls 256x256 -> y: the work (and the time) grows with `count`."""
    nodes = [
        helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", "w"], [f"h{i + 1}"])
        for i in range(count)
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])]
    return _save(path, nodes, inputs, [_w("w", 256, 256)])


def test_variants_that_cannot_be_the_pick_stop_early_and_say_so(tmp_path):
    models = {
        "base": matmul_chain(tmp_path / "base.onnx", 16),
        "fast": matmul_chain(tmp_path / "fast.onnx", 1),  # the pick: timed as long as the base
        "mid": matmul_chain(tmp_path / "mid.onnx", 8),  # within budget, slower than fast
        "over": matmul_chain(tmp_path / "over.onnx", 1),  # fast, but over the drift budget
    }
    x = {"x": np.random.default_rng(0).normal(size=(16, 256)).astype(np.float32)}
    # a target no run meets: without stopping early, every model is timed for max_time
    opts = BenchOptions(threads=[1], min_time=0.3, max_time=1.5, target_ci=1e-9)
    result = measure(models, x, opts, candidates={"base", "fast", "mid"})
    v = result.variants
    rounds = {name: v[name].latency_ms["rounds"] for name in models}
    assert rounds["fast"] == rounds["base"]  # the pick and the baseline: their rounds not cut
    assert v["base"].latency_ms["stopped_early"] is None
    assert v["fast"].latency_ms["stopped_early"] is None
    for name in ("mid", "over"):
        assert rounds[name] < rounds["base"] / 2, rounds
        stopped = v[name].latency_ms["stopped_early"]
        assert stopped.startswith("stopped early") and stopped in v[name].notes
        # the numbers are still what its own rounds give: interval, ratio and all
        assert v[name].latency_ms["median_ci95"] and v[name].relative["ci95"]
    assert "over the drift budget" in v["over"].latency_ms["stopped_early"]
    assert "slower than" not in v["over"].latency_ms["stopped_early"]
    assert "the time of fast" in v["mid"].latency_ms["stopped_early"]
    # a stopped model's interval is wide by design, not a warning of the run
    assert not any("mid ±" in w or "over ±" in w for w in result.warnings), result.warnings


def test_without_candidates_nothing_stops_early(tmp_path):
    models = {
        "base": matmul_chain(tmp_path / "b.onnx", 8),
        "fast": matmul_chain(tmp_path / "f.onnx", 1),
    }
    x = {"x": np.random.default_rng(0).normal(size=(16, 256)).astype(np.float32)}
    opts = BenchOptions(threads=[1], min_time=0.1, max_time=0.4, target_ci=1e-9)
    v = measure(models, x, opts).variants
    assert v["fast"].latency_ms["rounds"] == v["base"].latency_ms["rounds"]
    assert v["fast"].latency_ms["stopped_early"] is None


def test_a_clearly_slower_candidate_stops_before_min_time_and_a_tie_keeps_timing(tmp_path):
    models = {
        "base": matmul_chain(tmp_path / "base.onnx", 32),
        # a tie with fast: a close race (4 MatMuls, not 1: a run of a few microseconds more or
        # less by its place in the cycle is a larger share of a shorter run)
        "fast": matmul_chain(tmp_path / "fast.onnx", 4),
        "twin": matmul_chain(tmp_path / "twin.onnx", 4),
        "slow": matmul_chain(tmp_path / "slow.onnx", 16),  # faster than base, 4x slower than fast
    }
    x = {"x": np.random.default_rng(0).normal(size=(16, 256)).astype(np.float32)}
    # min_time = max_time: only a stop before min_time can cut a candidate's rounds
    opts = BenchOptions(threads=[1], min_time=2.0, max_time=2.0, target_ci=1e-9)
    v = measure(models, x, opts, candidates=set(models)).variants
    rounds = {name: v[name].latency_ms["rounds"] for name in models}
    assert "measurably faster than base" in v["slow"].latency_ms["stopped_early"]
    assert rounds["slow"] < rounds["base"], rounds
    for name in ("fast", "twin"):  # neither is measurably slower than the other: both timed on
        assert v[name].latency_ms["stopped_early"] is None, v[name].latency_ms["stopped_early"]
        assert rounds[name] == rounds["base"], rounds
