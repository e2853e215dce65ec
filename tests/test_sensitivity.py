"""Sensitivity exclusion on a model that plain int8 breaks: real quantization, real onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import float_model, int8_context, save_graph
from onnx import TensorProto, helper, numpy_helper

from edgekit.accuracy import drift, run_onnx
from edgekit.api import OptimizeOptions, optimize
from edgekit.passes import Variant
from edgekit.passes.int8 import int8_variants
from edgekit.passes.int8.sensitivity import MAX_TRIALS, _groups
from edgekit.recommend import parse_budget

pytestmark = pytest.mark.slow  # every test here starts a process or exports with torch

VNNI_CPU = {"arch": "x86_64", "features": ["avx2", "avx512_vnni"]}


def outlier_model(path):
    """x (N, 32) → fc1 → relu → fc2 → relu → fc3 → (N, 8, 2). fc1's bias puts a huge value in
    one channel (the massive activations of real transformers) that fc2 ignores (zero weights):
    quantizing fc2's input per tensor leaves every other channel a few int8 steps."""
    rng = np.random.default_rng(0)
    w1, b1 = rng.normal(0, 0.2, (32, 64)), np.zeros(64)
    b1[0] = 200.0  # plain dynamic int8: cosine ~0.83
    w2 = rng.normal(0, 0.2, (64, 64))
    w2[0] = 0.0
    w3 = rng.normal(0, 0.2, (64, 16))
    inits = [
        numpy_helper.from_array(a.astype(np.float32), n)
        for a, n in [
            (w1, "w1"),
            (b1, "b1"),
            (w2, "w2"),
            (w3, "w3"),
            (np.array([-1, 8, 2]), "shape"),
        ]
    ]
    inits[-1] = numpy_helper.from_array(np.array([-1, 8, 2], dtype=np.int64), "shape")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"),
        helper.make_node("Add", ["h1", "b1"], ["h1b"], name="fc1_bias"),
        helper.make_node("Relu", ["h1b"], ["a1"], name="relu1"),
        helper.make_node("MatMul", ["a1", "w2"], ["h2"], name="fc2"),
        helper.make_node("Relu", ["h2"], ["a2"], name="relu2"),
        helper.make_node("MatMul", ["a2", "w3"], ["h3"], name="fc3"),
        helper.make_node("Reshape", ["h3", "shape"], ["y"], name="to_pairs"),
    ]
    graph = helper.make_graph(
        nodes,
        "outlier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 2])],
        inits,
    )
    return save_graph(graph, path)


def test_sensitivity_keeps_the_outlier_layer_in_float(tmp_path):
    path = outlier_model(tmp_path / "fp32.onnx")
    feeds = {"x": np.random.default_rng(1).normal(size=(32, 32)).astype(np.float32)}
    ctx = int8_context(tmp_path, path, feeds, "cosine>=0.99", VNNI_CPU)
    variants = int8_variants(Variant("fp32", path), ctx, mode="dynamic")
    # The closest over-budget recipe is searched first; once it is within budget, no other is.
    (fixed,) = [v for v in variants if v.name.endswith("-excl")]
    report = fixed.extra["sensitivity"]
    assert report["excluded"] == ["fc2"] and report["quantized_nodes"] == 3  # fc1, fc2, fc3
    assert report["drift_before"] < 0.99 <= report["drift_after"]
    assert report["within_budget"] and report["budget"] == "cosine>=0.99"
    assert fixed.passes[-1]["settings"]["nodes_to_exclude"] == ["fc2"]
    assert any(f"{fixed.name}:" in n and "fc2" in n and "of 3 quantized" in n for n in ctx.notes)
    assert any("no sensitivity search" in n for n in ctx.notes)


def test_the_report_names_the_excluded_node_and_recommends_within_budget(tmp_path):
    """The whole pipeline on an ONNX source: drift, bench and recommendation are the real ones."""
    path = outlier_model(tmp_path / "outlier.onnx")
    options = OptimizeOptions(out_dir=tmp_path / "out", min_time=0.05, max_time=0.3, int8="dynamic")
    report = optimize(path, options).to_json()
    assert report["budget"] == "cosine>=0.99"  # the default for a non-classifier output
    rows = {v["name"]: v for v in report["variants"]}
    (excl,) = [n for n in rows if n.endswith("-excl")]
    plain, fixed = rows[excl.removesuffix("-excl")], rows[excl]
    assert plain["accuracy"]["cosine_min"] < 0.99
    assert fixed["sensitivity"]["excluded"] == ["fc2"]
    assert fixed["accuracy"]["cosine_min"] >= 0.99
    assert fixed["parent"] == "simplified" and fixed["latency_ms"]["p50"] > 0
    assert any(n.startswith(f"{excl}:") and "fc2" in n for n in report["notes"])
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["variants"][list(rows).index(excl)]["sensitivity"]["excluded"] == ["fc2"]
    recommended = rows[report["recommendation"]["variant"]]
    within, _ = parse_budget(report["budget"]).check(
        recommended["accuracy"], rows["fp32"]["accuracy"]
    )
    assert within  # never an over-budget variant such as int8-dynamic


def test_many_nodes_are_ranked_by_role_then_in_runs_of_consecutive_nodes():
    roles = ["MatMul reading LayerNormalization", "MatMul reading Gelu", "MatMul reading MatMul"]
    touched = [(f"n{i}", roles[i % 3]) for i in range(50)]
    groups = _groups(touched, MAX_TRIALS)
    assert len(groups) <= MAX_TRIALS
    assert groups[0] == (f"all 17 {roles[0]}", [f"n{i}" for i in range(0, 50, 3)])
    assert [g for _, g in groups[3:]] and sum((g for _, g in groups[3:]), []) == [
        n for n, _ in touched
    ]
    alone = [(f"n{i}", roles[0]) for i in range(5)]  # one role: no role group, each node alone
    assert _groups(alone, MAX_TRIALS) == [(f"n{i}", [f"n{i}"]) for i in range(5)]


def two_layer(path, w1, w2):
    """x (N, 32) → MatMul w1 → Relu → MatMul w2 → (N, 16)."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["a"], name="relu"),
        helper.make_node("MatMul", ["a", "w2"], ["y"], name="fc2"),
    ]
    weights = {"w1": w1, "w2": w2}
    return float_model(path, "two_layer", nodes, {"x": ["n", 32]}, {"y": ["n", 16]}, weights)


def test_a_pruned_parents_own_drift_sends_no_sensitivity_search(tmp_path):
    """Pruning moved the model far from fp32; int8 of the pruned model moves it hardly at all
    from its float parent: no node kept in float could help, so no -excl variant is made."""
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(0, 0.3, (32, 64)), rng.normal(0, 0.3, (64, 16))
    fp32 = two_layer(tmp_path / "fp32.onnx", w1, w2)
    pruned_w1 = w1.copy()
    pruned_w1[:, ::2] = 0.0  # half the hidden channels gone
    pruned = two_layer(tmp_path / "structured-0.5.onnx", pruned_w1, w2)
    feeds = {"x": rng.normal(size=(32, 32)).astype(np.float32)}
    ctx = int8_context(tmp_path, fp32, feeds, "cosine>=0.99", VNNI_CPU)
    vs_fp32 = drift(ctx.reference, run_onnx(pruned, feeds), None)[0]["cosine_min"]
    assert vs_fp32 < 0.9  # pruning alone is far over the budget against fp32
    parent = Variant("structured-0.5", pruned, parent="fp32")
    variants = int8_variants(parent, ctx, mode="dynamic")
    assert [v.name for v in variants] == [
        "structured-0.5+int8-dynamic",
        "structured-0.5+int8-dynamic-pc",
    ]
    assert not any("sensitivity" in n for n in ctx.notes)
    (outcome,) = [n for n in ctx.notes if n.startswith("int8 drift against the budget")]
    assert "drift against structured-0.5, the pruned float model" in outcome
