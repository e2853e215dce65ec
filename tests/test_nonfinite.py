"""Models whose outputs are NaN or infinite everywhere (issue 19): the equivalence check of a
rewrite, the export parity check and the reference check end in a clear answer, never exit 3."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import run_edgekit, save_graph
from onnx import TensorProto, helper

from edgekit.accuracy import drift, run_onnx
from edgekit.errors import EdgekitError
from edgekit.passes import PassContext, same_function
from edgekit.recommend import Budget
from models import sqrt_classifier, sqrt_samples

F = TensorProto.FLOAT


def scaled(path, factor: float):
    x = helper.make_tensor_value_info("x", F, ["batch", 4])
    y = helper.make_tensor_value_info("y", F, ["batch", 4])
    k = helper.make_tensor("k", F, [], [factor])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "s", [x], [y], [k])
    return save_graph(graph, path)


@pytest.mark.parametrize("factor", [float("nan"), float("inf")])
def test_a_rewrite_of_a_model_that_is_nonfinite_everywhere_is_the_same_function(tmp_path, factor):
    before, after = scaled(tmp_path / "a.onnx", factor), scaled(tmp_path / "b.onnx", factor)
    feeds = {"x": np.random.default_rng(0).uniform(1, 2, (8, 4)).astype(np.float32)}
    ctx = PassContext(tmp_path, feeds, None, [], False, None, None)
    same_function(before, after, ctx, "the rewrite")  # no TypeError from max(1.0, *())
    assert after.exists()


def test_a_rewrite_that_turns_numbers_into_nan_still_fails(tmp_path):
    from edgekit.passes import PassFailed

    before, after = scaled(tmp_path / "a.onnx", 2.0), scaled(tmp_path / "b.onnx", float("nan"))
    feeds = {"x": np.ones((4, 4), np.float32)}
    with pytest.raises(PassFailed):
        same_function(before, after, PassContext(tmp_path, feeds, None, [], False, None, None), "r")


def test_the_same_infinity_in_both_runs_is_agreement():
    from edgekit.accuracy import difference

    inf = np.full((2, 3), np.inf, np.float32)
    assert difference(inf, inf) == 0.0
    assert difference(inf, np.zeros_like(inf)) == np.inf
    assert np.isnan(difference(np.full_like(inf, np.nan), np.zeros_like(inf)))  # NaN vs a number


def test_a_reference_that_is_nonfinite_on_every_sample_is_exit_2(tmp_path):
    from edgekit.accuracy import check_finite_reference

    path = scaled(tmp_path / "nan.onnx", float("nan"))
    reference = run_onnx(path, {"x": np.ones((4, 4), np.float32)})
    with pytest.raises(EdgekitError, match="NaN or infinite on every sample"):
        check_finite_reference(reference, ["y"], "y", None)
    some = reference[0].copy()
    some[0] = 1.0  # one good sample: reported, not refused
    check_finite_reference([some], ["y"], "y", None)


# ---- NaN outputs are failed samples, never perfect agreement

FAST = ["--min-time", "0.2", "--max-time", "0.5"]


def test_nan_outputs_of_a_real_model_are_failed_samples_not_perfect_agreement(tmp_path):
    x = sqrt_samples()
    feeds = {"x": x}
    reference = run_onnx(sqrt_classifier(tmp_path / "safe.onnx", safe=True), feeds)
    outputs = run_onnx(sqrt_classifier(tmp_path / "nan.onnx"), feeds)
    assert np.isnan(outputs[0][:10]).all() and np.isfinite(outputs[0][10:]).all()
    labels = reference[0].argmax(1)

    acc, unmeasured = drift(reference, outputs, labels)
    assert acc["nonfinite_samples"] == 10 and acc["reference_nonfinite_samples"] == 0
    assert acc["samples"] == 64
    # the 54 finite samples agree exactly; the 10 NaN ones are disagreements and wrong answers
    assert acc["top1_agreement"] == pytest.approx(54 / 64)
    assert acc["task_accuracy"] == pytest.approx(54 / 64)
    # the error and cosine over all samples are undefined: null with the reason, never 1.0
    assert acc["cosine_min"] is None and acc["max_abs_err"] is None
    assert "10 of 64 samples gave NaN or infinity" in unmeasured["accuracy.cosine_min"]
    json.dumps(acc, allow_nan=False)  # strict JSON: no NaN slipped through

    ok, why = Budget("cosine", 0.99).check(acc, None)
    assert not ok and "10 of 64" in why
    ok, why = Budget("top1", 0.5).check(acc, None)  # 0.84 > 0.5, still refused
    assert not ok and "NaN" in why
    base, _ = drift(reference, reference, labels)
    assert not Budget("accuracy-drop", 0.5).check(acc, base)[0]


def test_a_model_that_only_returns_nan_scores_zero(tmp_path):
    x = -sqrt_samples(negative=0)  # every sample negative: every output NaN
    reference = run_onnx(sqrt_classifier(tmp_path / "safe.onnx", safe=True), {"x": x})
    outputs = run_onnx(sqrt_classifier(tmp_path / "nan.onnx"), {"x": x})
    acc, _ = drift(reference, outputs, reference[0].argmax(1))
    assert acc["nonfinite_samples"] == 64
    assert acc["cosine_min"] is None
    assert acc["top1_agreement"] == 0.0 and acc["task_accuracy"] == 0.0


def test_a_nan_reference_is_said_plainly(tmp_path):
    x = sqrt_samples()
    outputs = run_onnx(sqrt_classifier(tmp_path / "nan.onnx"), {"x": x})
    acc, unmeasured = drift(outputs, outputs)
    assert acc["reference_nonfinite_samples"] == 10
    assert (
        "float reference itself gave NaN or infinity on 10 of 64"
        in (unmeasured["accuracy.cosine_min"])
    )
    ok, why = Budget("top1", 0.9).check(acc, acc)
    assert not ok and "reference itself" in why


@pytest.mark.slow
def test_optimize_says_when_the_float_reference_gives_nan(tmp_path):
    model = sqrt_classifier(tmp_path / "nan.onnx")
    data = tmp_path / "data.npz"
    np.savez(data, x=sqrt_samples(16, negative=4))
    out = tmp_path / "out"
    proc = run_edgekit("optimize", model, "--data", data, "--int8", "none", "--threads", "1",
                       "-o", out, *FAST)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    fp32 = report["variants"][0]
    assert fp32["accuracy"]["reference_nonfinite_samples"] == 4
    assert fp32["accuracy"]["cosine_min"] is None and fp32["accuracy"]["top1_agreement"] == 0.75
    assert report["recommendation"]["variant"] == "fp32"
    assert (
        "float reference itself gave NaN or infinity on 4 of 16"
        in (report["recommendation"]["reason"])
    )
    assert "reference itself gave NaN" in (out / "report.md").read_text()


@pytest.mark.slow
def test_a_model_whose_outputs_are_all_nan_is_a_clear_exit_2(tmp_path):
    model = scaled(tmp_path / "nan.onnx", float("nan"))
    result = run_edgekit("optimize", model, "-o", tmp_path / "out", "--int8", "none", *FAST)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "NaN or infinite on every sample" in result.stderr
