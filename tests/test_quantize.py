"""int8 recipes: which ones the op mix calls for, the types each CPU gets, and what is recorded."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import float_model, int8_context
from onnx import helper

from edgekit.accuracy import run_onnx
from edgekit.passes import Variant
from edgekit.passes.int8 import int8_settings, int8_variants
from edgekit.passes.int8.opmix import op_mix, plan

pytestmark = pytest.mark.slow  # every test here starts a process or exports with torch

AVX2_ONLY = {"arch": "x86_64", "features": ["avx2", "fma"]}


@pytest.mark.parametrize(
    ("arch", "features", "activation", "reduce_range", "says"),
    [
        ("x86_64", ["avx2", "fma", "avx512f", "avx512_vnni"], "QUInt8", False, "with VNNI"),
        ("x86_64", ["avx2", "avx_vnni"], "QUInt8", False, "with VNNI"),
        ("x86_64", ["avx2", "amx_int8"], "QUInt8", False, "with VNNI"),
        ("x86_64", ["avx2", "fma"], "QUInt8", True, "without VNNI"),
        ("aarch64", ["asimd", "asimddp"], "QInt8", False, "with the int8 dot product"),
        ("aarch64", ["asimd"], "QInt8", False, "without the int8 dot product"),
    ],
)
def test_int8_types_follow_the_cpu_features(arch, features, activation, reduce_range, says):
    settings = int8_settings(arch, features)
    assert settings["activation_type"] == activation and settings["weight_type"] == "QInt8"
    assert settings["reduce_range"] is reduce_range
    assert says in settings["cpu"]


def decisions(mix, mode="auto"):
    return {d.recipe.name: d for d in plan({**dict.fromkeys(MIX_KEYS, 0), **mix}, mode)}


MIX_KEYS = ("conv", "matmul", "recurrent", "attention")


def test_conv_heavy_models_get_static_and_dynamic_only_to_show_its_slowdown():
    d = decisions({"conv": 20, "matmul": 1})
    assert d["int8-static"].tried and d["int8-static"].fix_drift
    assert d["int8-dynamic"].tried and not d["int8-dynamic"].fix_drift
    assert "ConvInteger" in d["int8-dynamic"].why and "10x slower" in d["int8-dynamic"].why
    assert not d["int8-dynamic-pc"].tried and "ConvInteger" in d["int8-dynamic-pc"].why


@pytest.mark.parametrize("mix", [{"matmul": 36}, {"recurrent": 2, "matmul": 1}, {"attention": 6}])
def test_matmul_and_recurrent_heavy_models_get_every_int8_recipe(mix):
    d = decisions({"conv": 1, **mix})
    int8 = ("int8-dynamic", "int8-dynamic-pc", "int8-static")
    assert all(d[n].tried and d[n].fix_drift for n in int8)
    assert d["int8-dynamic-outliers"].tried is (mix.get("matmul", 0) > 0)
    assert d["int8-dynamic-smooth"].tried is (mix.get("matmul", 0) > 0)
    # weight-only: measured slower than fp32 (8 bits) or over budget (4 bits) on x86: `all` only
    assert not d["int8-weights"].tried and "measured 0.5–0.7x" in d["int8-weights"].why
    assert decisions({"conv": 1, **mix}, "all")["int4-weights"].tried
    if "recurrent" in mix:
        assert "LSTM/GRU/RNN stay float" in d["int8-static"].why


def test_modes_and_models_with_nothing_to_quantize():
    assert not any(x.tried for x in decisions({"conv": 3}, "none").values())
    assert not decisions({"conv": 3, "matmul": 1})["int8-dynamic-outliers"].tried
    assert [n for n, x in decisions({"conv": 3}, "static").items() if x.tried] == ["int8-static"]
    assert [n for n, x in decisions({"conv": 3}, "dynamic").items() if x.tried] == [
        "int8-dynamic",
        "int8-dynamic-pc",
    ]
    assert all(x.tried for x in decisions({"conv": 3}, "all").values())
    nothing = decisions({})
    assert not any(x.tried for x in nothing.values())
    assert "nothing int8 would speed up" in nothing["int8-static"].why


def small_cnn(path):
    """x (N, 3, 16, 16) → conv → relu → conv → relu → global pool → flatten → fc (N, 10)."""
    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.normal(0, 0.3, (8, 3, 3, 3)),
        "w2": rng.normal(0, 0.3, (8, 8, 3, 3)),
        "fc_w": rng.normal(0, 0.3, (10, 8)),
        "fc_b": np.zeros(10),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    return float_model(path, "cnn", nodes, {"x": ["n", 3, 16, 16]}, {"y": ["n", 10]}, weights)


def context(tmp_path, path, budget="top1>=0.9"):
    feeds = {"x": np.random.default_rng(1).uniform(size=(16, 3, 16, 16)).astype(np.float32)}
    return int8_context(tmp_path, path, feeds, budget, AVX2_ONLY)


def test_a_small_cnn_gets_calibrated_static_int8_with_its_settings_recorded(tmp_path):
    path = small_cnn(tmp_path / "simplified.onnx")
    assert op_mix(onnx.load(str(path)))["conv"] == 2
    ctx = context(tmp_path, path)
    variants = {v.name: v for v in int8_variants(Variant("simplified", path), ctx)}
    assert set(variants) == {"int8-dynamic", "int8-static"}
    static = variants["int8-static"]
    assert static.error is None and static.parent == "simplified"
    settings = static.passes[-1]["settings"]
    assert settings["reduce_range"] is True and settings["activation_type"] == "QUInt8"
    assert settings["cpu_features"] == ["avx2", "fma"] and "without VNNI" in settings["cpu"]
    assert (
        settings["calibration"] == "MinMax" and settings["calibration_data"] == "generated inputs"
    )
    assert any("generated random inputs" in n for n in static.notes)
    ops = {n.op_type for n in onnx.load(str(static.path)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert any("ConvInteger" in n for n in variants["int8-dynamic"].notes)
    assert ctx.notes[0].startswith("int8 op mix of simplified: 2 Conv, 1 MatMul/Gemm")
    assert any(n.startswith("int8-dynamic-pc: skipped") for n in ctx.notes)


def test_a_pruned_parent_names_its_int8_children_after_itself(tmp_path):
    path = small_cnn(tmp_path / "structured-0.5.onnx")
    ctx = context(tmp_path, path)
    parent = Variant("structured-0.5", path)
    variants = int8_variants(parent, ctx, mode="static", calibration="percentile")
    assert [v.name for v in variants] == ["structured-0.5+int8-static"]
    assert variants[0].parent == "structured-0.5" and variants[0].error is None
    assert variants[0].passes[-1]["settings"]["calibration"] == "Percentile"


def layernorm_matmul(path, gamma_outliers=(3, 40.0)):
    """x (N, 4, 16) → LayerNorm (one gamma channel ×40, as trained BERTs have) → MatMul+bias →
    Relu → MatMul: an outlier channel into the first MatMul, none into the second."""
    rng = np.random.default_rng(0)
    gamma = np.ones(16)
    gamma[gamma_outliers[0]] = gamma_outliers[1]
    weights = {
        "gamma": gamma,
        "beta": np.zeros(16),
        "w1": rng.normal(0, 0.3, (16, 32)),
        "b1": rng.normal(0, 0.3, 32),
        "w2": rng.normal(0, 0.3, (32, 8)),
    }
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], name="norm", axis=-1),
        helper.make_node("MatMul", ["n", "w1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="fc1_bias"),
        helper.make_node("Relu", ["hb"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
    ]
    return float_model(path, "ln", nodes, {"x": ["n", 4, 16]}, {"y": ["n", 4, 8]}, weights)


def test_outlier_channels_are_found_and_both_rewrites_compute_the_same_function(tmp_path):
    from edgekit.passes.int8 import outliers

    path = layernorm_matmul(tmp_path / "ln.onnx")
    feeds = {"x": np.random.default_rng(1).normal(size=(8, 4, 16)).astype(np.float32)}
    found = outliers.find(path, feeds)
    assert list(found) == ["n"] and list(found["n"]) == [3] and found["n"][3] > 6
    expected = run_onnx(path, feeds)[0]

    how = outliers.smooth(path, tmp_path / "smooth.onnx", found)
    assert how == ["n: into norm"]  # folded into the LayerNorm: no op added
    smoothed = onnx.load(str(tmp_path / "smooth.onnx"))
    assert [n.op_type for n in smoothed.graph.node] == [
        n.op_type for n in onnx.load(str(path)).graph.node
    ]
    np.testing.assert_allclose(run_onnx(tmp_path / "smooth.onnx", feeds)[0], expected, atol=1e-4)

    kept = outliers.decompose(path, tmp_path / "split.onnx", found)
    assert kept == ["fc1/outliers"]
    split = onnx.load(str(tmp_path / "split.onnx"))
    ops = [n.op_type for n in split.graph.node]
    assert ops.count("MatMul") == 3 and "Gather" in ops
    # the float part joins after the bias Add, so onnxruntime can still fuse the int8 MatMul+bias
    by_output = {o: n for n in split.graph.node for o in n.output}
    assert by_output["h"].name == "fc1" and by_output["hb"].name == "fc1/outliers/add"
    np.testing.assert_allclose(run_onnx(tmp_path / "split.onnx", feeds)[0], expected, atol=1e-4)


def test_recipes_that_cannot_win_are_skipped_and_the_report_says_why(tmp_path):
    path = layernorm_matmul(tmp_path / "simplified.onnx", gamma_outliers=(3, 1.0))  # no outliers
    feeds = {"x": np.random.default_rng(1).normal(size=(16, 4, 16)).astype(np.float32)}

    def ctx(cpu=None):
        return int8_context(tmp_path, path, feeds, "cosine>=0.99", cpu)

    auto = ctx(cpu=AVX2_ONLY)
    made = [v.name for v in int8_variants(Variant("simplified", path), auto)]
    # int8-dynamic is within budget: the per-channel and outlier recipes do its work and more
    assert made == ["int8-dynamic", "int8-static"]
    for name in ("int8-dynamic-pc", "int8-dynamic-smooth", "int8-dynamic-outliers"):
        (note,) = [n for n in auto.notes if n.startswith(f"{name}: ")]
        assert note.startswith(f"{name}: skipped — cannot win: int8-dynamic is within the drift")
    # "the same int8 ops on the same shapes": what the skipped per-channel recipe would have made
    asked = {v.name: v for v in int8_variants(Variant("simplified", path), ctx(), "dynamic")}
    ops = {
        name: [(n.op_type, n.domain) for n in onnx.load(str(v.path)).graph.node]
        for name, v in asked.items()
    }
    assert ops["int8-dynamic"] == ops["int8-dynamic-pc"]
