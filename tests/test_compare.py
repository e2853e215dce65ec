"""`edgekit compare`: the real CLI on real report files, torch blocked where it must not be needed."""

from __future__ import annotations

import json

import pytest
from fixtures.sample_reports import FIXTURES, PI, make_report, write
from helpers import run_edgekit

from edgekit.report.compare import compare
from edgekit.stats import sample_ratio
from models import relu_model


@pytest.fixture
def two_runs(tmp_path):
    """Two runs of the same model on one machine: same true latencies, different noise."""
    a = write(make_report(seed=1), tmp_path / "a.json")
    b = write(make_report(seed=2), tmp_path / "b.json")
    return a, b


@pytest.fixture
def slow_int8(tmp_path):
    """Run B's int8-static variant made 30% slower (as with fewer threads)."""
    return write(make_report(seed=3, slow={"int8-static": 1.3}, threads=1), tmp_path / "slow.json")


def test_ratio_ci_covers_truth_and_is_repeatable():
    import numpy as np

    rng = np.random.default_rng(5)
    a = 1 + rng.exponential(0.1, 3000)
    b = 1.2 * (1 + rng.exponential(0.1, 3000))
    ratio, ci = sample_ratio(a, b)
    assert ci[0] < 1.2 < ci[1] and ci[0] < ratio < ci[1]
    assert sample_ratio(a, b) == (ratio, ci)  # fixed seed
    assert sample_ratio(a[:5], b[:5])[1] is None  # too few samples: no interval


@pytest.mark.slow
def test_two_runs_table_and_gates_pass(two_runs, tmp_path, block_imports):
    a, b = two_runs
    result = run_edgekit(
        "compare", a, b, "--fail-if-slower", 5, "--fail-if-drift", 0.95, "--fail-if-larger", 10,
        env={**block_imports(), "COLUMNS": "220"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for name in ("fp32", "simplified", "int8-static", "int8-dynamic", "pruned-30"):
        assert name in out
    assert "no significant difference" in out and "gates passed" in out
    assert "AMD EPYC 7B13" in out


@pytest.mark.slow
def test_markdown_format(two_runs):
    result = run_edgekit("compare", *two_runs, "--format", "md")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert table[0].startswith("| variant | p50 A ms |") and set(table[1]) <= set("|-")
    assert len(table) == 2 + 5
    # every row has as many cells as the header (a "|" inside a cell would break the table)
    widths = {line.replace("\\|", "").count("|") for line in table}
    assert len(widths) == 1


@pytest.mark.slow
def test_slower_gate_trips(two_runs, slow_int8, tmp_path, block_imports):
    a, _ = two_runs
    result = run_edgekit(
        "compare", a, slow_int8, "--fail-if-slower", 10, "--format", "md",
        env=block_imports(),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "gate tripped: --fail-if-slower 10%: int8-static" in result.stderr
    assert "1.30x" in result.stderr and "95% CI" in result.stderr
    # only int8-static tripped; the same gate at 40% lets a 30% slowdown pass
    assert result.stderr.count("gate tripped") == 1
    assert run_edgekit("compare", a, slow_int8, "--fail-if-slower", 40).returncode == 0


@pytest.mark.slow
def test_drift_and_size_gates(two_runs):
    a, b = two_runs
    drift = run_edgekit("compare", a, b, "--fail-if-drift", 0.99, "--json")
    assert drift.returncode == 1
    tripped = [g for g in json.loads(drift.stdout)["gates"] if g["tripped"]]
    assert [(g["gate"], g["variant"]) for g in tripped] == [("--fail-if-drift", "pruned-30")]
    assert "0.971200" in tripped[0]["message"]
    # one report: every variant against fp32; int8 shrinks, nothing grows
    assert run_edgekit("compare", a, "--fail-if-larger", 0).returncode == 0


@pytest.mark.slow
def test_one_report_against_float_root(two_runs):
    result = run_edgekit("compare", two_runs[0], "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["mode"] == "one-report"
    rows = {r["variant"]: r for r in data["rows"]}
    assert set(rows) == {"simplified", "int8-static", "int8-dynamic", "pruned-30"}
    assert {r["baseline"] for r in rows.values()} == {"fp32"}  # via simplified, up to the root
    assert rows["int8-static"]["latency"]["significant"] is True
    assert rows["int8-static"]["latency"]["ratio"] < 0.6  # 0.031 / 0.060 ms
    assert rows["int8-dynamic"]["latency"]["ratio"] > 1.4  # the slow ConvInteger recipe


@pytest.mark.slow
def test_missing_and_failed_variants_and_two_devices(tmp_path):
    a = write(make_report(seed=1), tmp_path / "laptop.json")
    pi = make_report(seed=2, device=PI, drop=("pruned-30",), failed={"int8-dynamic": "ORT crashed"})
    b = write(pi, tmp_path / "pi.json")
    result = run_edgekit("compare", a, b, "--format", "md", "--fail-if-slower", 5)
    assert result.returncode == 0, result.stderr  # a failed variant is shown, not a gate
    out = result.stdout
    assert "only in A: pruned-30" in out
    assert "FAILED in B: ORT crashed" in out
    assert "AMD EPYC 7B13" in out and "Cortex-A76" in out and "two devices" in out


@pytest.mark.slow
def test_unusable_input_exit_2(tmp_path, two_runs):
    for bad in (FIXTURES / "foreign.json", FIXTURES / "future_version.json", tmp_path / "no.json"):
        result = run_edgekit("compare", two_runs[0], bad, "--fail-if-slower", 5)
        assert result.returncode == 2, (bad, result.stderr)
        assert "Traceback" not in result.stderr
    assert run_edgekit("compare", *two_runs, two_runs[0]).returncode == 2
    assert run_edgekit("compare", *two_runs, "--fail-if-drift", 3).returncode == 2


@pytest.mark.slow
def test_help_without_torch(block_imports):
    result = run_edgekit("compare", "--help", env=block_imports())
    assert result.returncode == 0, result.stderr
    assert "--fail-if-slower" in result.stdout and "cosine_min" in result.stdout


def test_api_names_gate_variant_and_numbers():
    a, b = make_report(seed=1, n=300), make_report(seed=2, n=300, slow={"fp32": 2.0})
    result = compare(a, b, fail_if_slower=5)
    assert result["exit_code"] == 1
    (gate,) = [g for g in result["gates"] if g["tripped"]]
    assert gate["variant"] == "fp32" and "2.0" in gate["message"]


def _chain_model(path, matmuls: int, width: int = 1024):
    """A model named the same in both runs; more chained MatMuls make it really slower.
    Wide enough that the MatMuls, not the per-call overhead, set the time."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.eye(width, dtype=np.float32) * 0.5, "w")
    names = ["x"] + [f"h{i}" for i in range(matmuls - 1)] + ["y"]
    nodes = [helper.make_node("MatMul", [names[i], "w"], [names[i + 1]]) for i in range(matmuls)]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", width])],
        [weight],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.slow
def test_gate_on_real_benchmarks(tmp_path):
    """Real `edgekit bench` reports: the gate passes on a rerun of the same models and trips
    when the model under the same name was made 32x heavier, with and without --normalize.
    The gap is far wider than the gate: at 2 vs 16 narrow MatMuls call overhead made it only
    1.9x on a loaded machine, under the 2x the gate asks for."""
    quick = ("--min-time", "0.3", "--max-time", "1", "-q")
    base = _chain_model(tmp_path / "base" / "base.onnx", 4)
    light = _chain_model(tmp_path / "light" / "model.onnx", 1)
    heavy = _chain_model(tmp_path / "heavy" / "model.onnx", 32)
    for name, model in (("a", light), ("a_again", light), ("b", heavy)):
        result = run_edgekit("bench", base, model, "-o", tmp_path / name, *quick)
        assert result.returncode == 0, result.stderr
    report = {n: tmp_path / n / "report.json" for n in ("a", "a_again", "b")}

    for extra in ((), ("--normalize",)):
        gate = ("--fail-if-slower", "100", *extra)
        same = run_edgekit("compare", report["a"], report["a_again"], *gate)
        assert same.returncode == 0, same.stdout + same.stderr
        slower = run_edgekit("compare", report["a"], report["b"], *gate)
        assert slower.returncode == 1, slower.stdout + slower.stderr
        assert "--fail-if-slower" in slower.stdout + slower.stderr


@pytest.mark.slow
def test_normalize_cancels_machine_drift_but_not_a_real_slowdown(tmp_path):
    everything = {
        n: 1.4 for n in ("fp32", "simplified", "int8-static", "int8-dynamic", "pruned-30")
    }
    drifted = write(make_report(seed=4, slow=everything), tmp_path / "drifted.json")
    base = write(make_report(seed=1), tmp_path / "base.json")
    raw = run_edgekit("compare", base, drifted, "--fail-if-slower", "10")
    assert raw.returncode == 1  # without normalizing, the machine's slowdown trips the gate
    normalized = run_edgekit("compare", base, drifted, "--fail-if-slower", "10", "--normalize")
    assert normalized.returncode == 0, normalized.stdout
    assert "--normalize" in normalized.stdout

    int8_slower = {**everything, "int8-static": 1.4 * 1.3}
    worse = write(make_report(seed=5, slow=int8_slower), tmp_path / "worse.json")
    gated = run_edgekit("compare", base, worse, "--fail-if-slower", "10", "--normalize")
    assert gated.returncode == 1
    assert "int8-static" in gated.stdout + gated.stderr


@pytest.mark.slow
def test_report_keeps_a_bounded_sample_and_compare_still_has_an_interval(tmp_path):
    """A 2 µs model timed for up to a second runs ~10^5 times: report.json keeps at most 2000
    timings per variant, in run order, and per-round medians; compare still gives an interval."""
    a = relu_model(tmp_path / "a.onnx")
    b = relu_model(tmp_path / "b.onnx")
    out = tmp_path / "out"
    result = run_edgekit("bench", a, b, "-o", out, "--min-time", "0.2", "--max-time", "1", "-q")
    assert result.returncode == 0, result.stderr
    report_json = out / "report.json"
    assert report_json.stat().st_size < 150_000  # was megabytes with every sample
    for v in json.loads(report_json.read_text())["variants"]:
        lat = v["latency_ms"]
        assert lat["n"] > 2000 and len(lat["samples"]) == 2000
        assert len(lat["round_medians"]) == lat["rounds"] == len(lat["round_sizes"])
        assert min(lat["samples"]) >= lat["min"] - 1e-6
    compared = run_edgekit("compare", report_json, report_json, "--json")
    assert compared.returncode == 0, compared.stderr
    rows = json.loads(compared.stdout)["rows"]
    assert [r["variant"] for r in rows] == ["a", "b"]
    for row in rows:
        lo, hi = row["latency"]["ci95"]
        assert lo <= row["latency"]["ratio"] <= hi and row["b"]["n_samples"] == 2000


@pytest.mark.slow
def test_language_model_reports_compare_by_generation_speed(tiny_llama_optimized, tmp_path):
    out, _ = tiny_llama_optimized
    report = json.loads((out / "report.json").read_text())
    same = run_edgekit("compare", out, out, "--fail-if-slower", "10")
    assert same.returncode == 0, same.stderr
    assert "tg128 tok/s" in same.stdout and "KLD" in same.stdout
    itself = compare(report, report)
    assert all(row["latency"]["significant"] is False for row in itself["rows"])

    # B generates at a tenth of the rate, intervals and all: 10x the time per token, significant
    # (the tiny model's quick intervals are wide)
    slower = json.loads(json.dumps(report))
    for v in slower["variants"]:
        for key in ("median", "low", "high"):
            v["tokens_per_s"]["tg128"][key] /= 10
    b = tmp_path / "b.json"
    b.write_text(json.dumps(slower))
    result = compare(report, slower, fail_if_slower=10)
    assert result["task"] == "causal-lm" and result["exit_code"] == 1
    for row in result["rows"]:
        assert row["latency"]["ratio"] == pytest.approx(10.0)
        assert row["latency"]["significant"] is True
    tripped = run_edgekit("compare", out / "report.json", b, "--fail-if-slower", "10")
    assert tripped.returncode == 1 and "GATE TRIPPED" in tripped.stdout

    # a language model's report against a tensor model's is refused
    mixed = run_edgekit("compare", out / "report.json", write(make_report(), tmp_path / "t.json"))
    assert mixed.returncode == 2 and "same kind of model" in mixed.stderr
