"""The recommendation: measurably faster within budget, else the simpler thing to ship."""

from __future__ import annotations

from edgekit.accuracy import drift, run_onnx
from edgekit.recommend import Budget, recommend
from edgekit.report.schema import Variant
from models import sqrt_classifier, sqrt_samples

COSINE = Budget("cosine", 0.99)


def _row(name, speedup=None, ci=None, size=1000, cosine=1.0, accuracy=None):
    relative = None if name == "fp32" else {"baseline": "fp32", "speedup": speedup, "ci95": ci}
    if accuracy is None:
        accuracy = {"cosine_min": cosine, "nonfinite_samples": 0, "reference_nonfinite_samples": 0}
    return Variant(
        name, size_bytes=size, latency_ms={"p50": 1.0}, relative=relative, accuracy=accuracy
    ).to_json()


def test_a_variant_that_is_not_measurably_faster_and_barely_smaller_is_not_shipped():
    """onnxsim's graph, 0.93x by the medians and a few bytes smaller (as seen on a transformer):
    the export as it is is the simpler thing, and the reason says so."""
    rows = [_row("fp32"), _row("simplified", 0.93, [0.85, 1.02], size=990)]
    rec = recommend(rows, "fp32", COSINE)
    assert rec["variant"] == "fp32"
    assert "simplified: as fast as fp32 within noise (0.93x, 95% CI 0.85–1.02)" in rec["reason"]
    assert "simpler thing to ship" in rec["reason"]


def test_among_variants_as_fast_as_fp32_the_smallest_file_wins():
    rows = [
        _row("fp32"),
        _row("simplified", 1.01, [0.97, 1.05], size=990),
        _row("int8-dynamic", 1.03, [0.98, 1.08], size=300),
        _row("int8-static", 0.99, [0.95, 1.04], size=260),
    ]
    rec = recommend(rows, "fp32", COSINE)
    assert rec["variant"] == "int8-static"
    assert rec["reason"].startswith("as fast as fp32 within noise (0.99x")
    assert "26% of its size" in rec["reason"]


def test_measurably_faster_beats_smaller():
    rows = [
        _row("fp32"),
        _row("int8-static", 1.0, [0.95, 1.05], size=250),
        _row("simplified", 1.1, [1.05, 1.15], size=1000),
    ]
    rec = recommend(rows, "fp32", COSINE)
    assert rec["variant"] == "simplified" and "1.10x faster than fp32" in rec["reason"]


def test_over_budget_and_slower_variants_are_named_when_fp32_is_kept():
    rows = [
        _row("fp32"),
        _row("int8-dynamic", 1.8, [1.7, 1.9], size=250, cosine=0.95),
        _row("int8-static", 0.5, [0.45, 0.55], size=250),
        _row("simplified", 1.0, [0.97, 1.03], size=995),
    ]
    rec = recommend(rows, "fp32", COSINE)
    assert rec["variant"] == "fp32"
    assert "int8-dynamic: over budget (cosine_min 0.9500)" in rec["reason"]
    assert "int8-static: 2.00x slower than fp32" in rec["reason"]


# ---- no interval for the speedup


def test_recommend_copes_without_an_interval():
    rows = [_row("fp32", size=100), _row("int8", 1.8, None, cosine=0.999, size=25)]
    rec = recommend(rows, "fp32", COSINE)
    assert rec["variant"] == "int8"  # smaller, and not measurably slower
    assert "not measurably faster" in rec["reason"]
    assert "interval could not be computed" in rec["reason"]

    rows = [_row("fp32", size=100), _row("sim", 1.8, None, cosine=0.999, size=100)]
    rec = recommend(rows, "fp32", COSINE)
    assert rec["variant"] == "fp32"
    assert (
        "measurably faster" in rec["reason"] and "interval could not be computed" in rec["reason"]
    )

    rows = [_row("fp32", size=100), _row("int8", 0.5, None, cosine=0.999, size=25)]
    rec = recommend(rows, "fp32", COSINE)
    assert rec["variant"] == "fp32" and "2.00x slower" in rec["reason"]


def test_recommend_prefers_measurably_faster_over_a_bigger_guess():
    rows = [
        _row("fp32", size=100),
        _row("a", 2.5, None, size=100, cosine=0.999),  # the biggest number, but no interval
        _row("b", 1.5, [1.4, 1.6], size=100, cosine=0.999),
    ]
    rec = recommend(rows, "fp32", COSINE)
    assert rec["variant"] == "b" and "1.50x faster" in rec["reason"]


def test_recommend_copes_without_a_speedup():
    rows = [_row("fp32", size=100), _row("int8", 1.0, None, cosine=0.999, size=25)]
    rows[1]["relative"]["speedup"] = None
    rec = recommend(rows, "fp32", COSINE)
    assert rec["variant"] == "fp32" and "int8: not measured" in rec["reason"]


# ---- NaN samples


def test_a_variant_with_nan_samples_is_never_recommended(tmp_path):
    x = sqrt_samples()
    reference = run_onnx(sqrt_classifier(tmp_path / "safe.onnx", safe=True), {"x": x})
    outputs = run_onnx(sqrt_classifier(tmp_path / "nan.onnx"), {"x": x})
    base, _ = drift(reference, reference)
    nan_acc, _ = drift(reference, outputs)
    rows = [
        _row("fp32", size=100, accuracy=base),
        _row("int8", 3.0, [2.8, 3.2], 25, accuracy=nan_acc),
    ]
    rec = recommend(rows, "fp32", COSINE)
    assert rec["variant"] == "fp32"
    assert "int8: over budget (10 of 64 samples gave NaN or infinity" in rec["reason"]


def test_the_reason_names_the_runtime_of_the_pick():
    rows = [_row("fp32"), _row("openvino-int8", 2.0, [1.9, 2.1], size=250)]
    rows[1]["runtime"] = "openvino"
    rec = recommend(rows, "fp32", COSINE)
    assert rec["variant"] == "openvino-int8" and rec["reason"].endswith("; runs on openvino")


def test_a_variant_whose_timing_stopped_early_is_never_the_pick():
    """Its timing ended when it was measurably slower than another within budget: fewer rounds
    must not make it the pick by the luck of a shorter run, and the reason says why not."""
    stopped = "stopped early: 1.06x the time of int8-dynamic-smooth (99% CI 1.02–1.10)"
    rows = [
        _row("fp32"),
        _row("int8-dynamic-smooth", 2.2, [2.1, 2.3], size=250),
        _row("openvino-bf16", 2.3, [2.0, 2.6], size=500),
    ]
    rows[2]["latency_ms"]["stopped_early"] = stopped
    rec = recommend(rows, "fp32", COSINE)
    assert rec["variant"] == "int8-dynamic-smooth"  # not bf16, 2.3x by its shorter run
    rows[1]["latency_ms"]["stopped_early"] = stopped
    rec = recommend(rows, "fp32", COSINE)
    assert rec["variant"] == "fp32" and f"openvino-bf16: {stopped}" in rec["reason"]
