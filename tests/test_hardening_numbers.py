"""Hardening of the numbers: NaN outputs, labels that cannot match, option limits, slow models,
benchmarks where everything failed, missing optional extras, unusable output folders.
Real ONNX models (onnx.helper), real onnxruntime, the real CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import run_edgekit, save_graph
from onnx import TensorProto, helper, numpy_helper

from edgekit.accuracy import check_labels, drift, run_onnx
from edgekit.errors import EdgekitError
from edgekit.recommend import Budget, recommend
from edgekit.report.schema import Variant
from models import relu_model

FAST = ["--min-time", "0.2", "--max-time", "0.5"]
CLASSES = 3


def _save(path: Path, nodes, inputs, inits=(), out_shape=None) -> Path:
    graph = helper.make_graph(
        nodes,
        path.stem,
        inputs,
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, out_shape)],
        list(inits),
    )
    return save_graph(graph, path)


def sqrt_classifier(path: Path, safe: bool = False) -> Path:
    """x[N,4] -> Sqrt (of |x| when safe) -> MatMul 4x3 -> logits[N,3]: NaN for a negative input."""
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, CLASSES) / 10 - 0.5, "w")
    nodes = [helper.make_node("Abs", ["x"], ["a"])] if safe else []
    nodes += [
        helper.make_node("Sqrt", ["a" if safe else "x"], ["s"]),
        helper.make_node("MatMul", ["s", "w"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])]
    return _save(path, nodes, inputs, [w], ["N", CLASSES])


def samples(n: int = 64, negative: int = 10) -> np.ndarray:
    x = np.random.default_rng(0).uniform(0.1, 2.0, size=(n, 4)).astype(np.float32)
    x[:negative, 0] *= -1  # the first `negative` samples make Sqrt return NaN
    return x


def failing_model(path: Path) -> Path:
    """Passes the ONNX check and loads; fails on the first run (Reshape of 12 values to 5 x -1)."""
    shape = numpy_helper.from_array(np.array([5, -1], np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])]
    return _save(path, nodes, inputs, [shape])


# ---------------------------------------------------------------- 1. NaN is a failed sample


def test_nan_outputs_of_a_real_model_are_failed_samples_not_perfect_agreement(tmp_path):
    x = samples()
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
    x = -samples(negative=0)  # every sample negative: every output NaN
    reference = run_onnx(sqrt_classifier(tmp_path / "safe.onnx", safe=True), {"x": x})
    outputs = run_onnx(sqrt_classifier(tmp_path / "nan.onnx"), {"x": x})
    acc, _ = drift(reference, outputs, reference[0].argmax(1))
    assert acc["nonfinite_samples"] == 64
    assert acc["cosine_min"] is None
    assert acc["top1_agreement"] == 0.0 and acc["task_accuracy"] == 0.0


def test_a_nan_reference_is_said_plainly(tmp_path):
    x = samples()
    outputs = run_onnx(sqrt_classifier(tmp_path / "nan.onnx"), {"x": x})
    acc, unmeasured = drift(outputs, outputs)
    assert acc["reference_nonfinite_samples"] == 10
    assert (
        "float reference itself gave NaN or infinity on 10 of 64"
        in (unmeasured["accuracy.cosine_min"])
    )
    ok, why = Budget("top1", 0.9).check(acc, acc)
    assert not ok and "reference itself" in why


def _row(name, speedup, ci, accuracy, size=100):
    return Variant(
        name,
        size_bytes=size,
        latency_ms={"p50": 1.0 / speedup},
        relative=None if name == "fp32" else {"baseline": "fp32", "speedup": speedup, "ci95": ci},
        accuracy=accuracy,
    ).to_json()


def test_a_variant_with_nan_samples_is_never_recommended(tmp_path):
    x = samples()
    reference = run_onnx(sqrt_classifier(tmp_path / "safe.onnx", safe=True), {"x": x})
    outputs = run_onnx(sqrt_classifier(tmp_path / "nan.onnx"), {"x": x})
    base, _ = drift(reference, reference)
    nan_acc, _ = drift(reference, outputs)
    rows = [_row("fp32", 1, None, base), _row("int8", 3.0, [2.8, 3.2], nan_acc, size=25)]
    rec = recommend(rows, "fp32", Budget("cosine", 0.99))
    assert rec["variant"] == "fp32"
    assert "int8: over budget (10 of 64 samples gave NaN or infinity" in rec["reason"]


@pytest.mark.slow
def test_optimize_says_when_the_float_reference_gives_nan(tmp_path):
    model = sqrt_classifier(tmp_path / "nan.onnx")
    data = tmp_path / "data.npz"
    np.savez(data, x=samples(16, negative=4))
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


# ---------------------------------------------------------------- 2. labels that cannot match


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.array(["cat", "dog"] * 8), "not class numbers"),
        (np.eye(CLASSES)[np.arange(16) % CLASSES], "one-hot"),
        (np.zeros((16, 2, 2), np.int64), "shape (16, 2, 2)"),
        (np.arange(15) % CLASSES, "15 labels for 16 samples"),
        (np.arange(16), "13 of 16 are outside"),
        (np.full(16, -1), "class indices 0 to 2"),
        (np.full(16, 0.5), "not whole numbers"),
        (np.full(16, np.nan), "not whole numbers"),
    ],
)
def test_labels_that_cannot_match_are_refused(labels, message):
    logits = [np.random.default_rng(0).normal(size=(16, CLASSES)).astype(np.float32)]
    with pytest.raises(EdgekitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_labels(labels, logits, "data.npz")


def test_good_labels_pass():
    logits = [np.zeros((4, CLASSES), np.float32)]
    check_labels(np.array([0, 1, 2, 0]), logits, "d.npz")
    check_labels(np.array([[0], [1], [2], [0]]), logits, "d.npz")  # a column
    check_labels(np.array([0.0, 1.0, 2.0, 0.0]), logits, "d.npz")  # whole floats
    check_labels(None, logits, "d.npz")
    check_labels(np.array([7, 9]), [np.zeros((2, 5, 5))], "d.npz")  # not a classifier


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["out-of-range", "strings", "one-hot"])
def test_optimize_refuses_labels_that_cannot_match(kind, tmp_path):
    model = sqrt_classifier(tmp_path / "m.onnx", safe=True)
    x = samples(16, negative=0)
    labels = {
        "out-of-range": np.arange(16) + 3,
        "strings": np.array(["a"] * 16),
        "one-hot": np.eye(CLASSES)[np.arange(16) % CLASSES],
    }[kind]
    data = tmp_path / "data.npz"
    np.savez(data, x=x, labels=labels)
    out = tmp_path / "out"
    proc = run_edgekit("optimize", model, "--data", data, "--int8", "none", "-q", "-o", out, *FAST)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("edgekit: error: The labels in")
    assert str(data) in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


# ---------------------------------------------------------------- 3. option limits


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["--min-time", "nan", "--max-time", "nan"], "above 0"),
        (["--min-time", "0.2", "--max-time", "inf"], "above 0"),
        (["--min-time", "-1"], "above 0"),
        (["--min-time", "2", "--max-time", "1"], "less than --min-time"),
        (["--max-time", "1e9"], "at most 3600"),
        (["--min-time", "soon"], "expected seconds"),
        (["--threads", "100000"], "give 1 to 256"),
        (["--threads", "0"], "give 1 to 256"),
        (["--threads", "-1"], "give 1 to 256"),
        (["--threads", "1,0"], "give 1 to 256"),
        (["--threads", "two"], "whole number of threads"),
    ],
)
@pytest.mark.parametrize("command", ["bench", "optimize"])
def test_numbers_are_checked_at_the_edge(command, args, message, tmp_path):
    model = relu_model(tmp_path / "m.onnx")
    if command == "optimize" and args[:2] == ["--threads", "1,0"]:
        message = "whole number of threads"  # optimize takes one thread count
    out = tmp_path / "out"
    start = time.monotonic()
    proc = run_edgekit(command, model, "-o", out, *args, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - start < 30 and not out.exists()


@pytest.mark.slow
def test_bench_and_optimize_share_one_definition_per_option(tmp_path):
    model = relu_model(tmp_path / "m.onnx")
    for args in (["--threads", "100000"], ["--max-time", "nan"], ["--min-time", "3", "--max-time", "2"]):  # fmt: skip
        errors = [
            run_edgekit(c, model, *args, timeout=60)
            .stderr.strip()
            .splitlines()[-1]
            .split(": ", 1)[-1]
            for c in ("bench", "optimize")
        ]
        assert errors[0] == errors[1]


@pytest.mark.slow
def test_finetune_epochs_must_not_be_negative(tmp_path):
    model = relu_model(tmp_path / "m.onnx")
    proc = run_edgekit("optimize", model, "--finetune-epochs", "-1", "-o", tmp_path / "o")
    assert proc.returncode == 2 and "give 0 (no fine-tuning)" in proc.stderr


# ---------------------------------------------------------------- 4. no interval for the speedup


def _acc(cosine=0.999):
    return {"cosine_min": cosine, "nonfinite_samples": 0, "reference_nonfinite_samples": 0}


def test_recommend_copes_without_an_interval():
    rows = [_row("fp32", 1, None, _acc(1.0)), _row("int8", 1.8, None, _acc(), size=25)]
    rec = recommend(rows, "fp32", Budget("cosine", 0.99))
    assert rec["variant"] == "int8"  # smaller, and not measurably slower
    assert "not measurably faster" in rec["reason"]
    assert "interval could not be computed" in rec["reason"]

    rows = [_row("fp32", 1, None, _acc(1.0)), _row("sim", 1.8, None, _acc(), size=100)]
    rec = recommend(rows, "fp32", Budget("cosine", 0.99))
    assert rec["variant"] == "fp32"
    assert (
        "measurably faster" in rec["reason"] and "interval could not be computed" in rec["reason"]
    )

    rows = [_row("fp32", 1, None, _acc(1.0)), _row("int8", 0.5, None, _acc(), size=25)]
    rec = recommend(rows, "fp32", Budget("cosine", 0.99))
    assert rec["variant"] == "fp32" and "2.00x slower" in rec["reason"]


def test_recommend_prefers_measurably_faster_over_a_bigger_guess():
    rows = [
        _row("fp32", 1, None, _acc(1.0)),
        _row("a", 2.5, None, _acc()),  # the biggest number, but no interval
        _row("b", 1.5, [1.4, 1.6], _acc()),
    ]
    rec = recommend(rows, "fp32", Budget("cosine", 0.99))
    assert rec["variant"] == "b" and "1.50x faster" in rec["reason"]


def test_recommend_copes_without_a_speedup():
    rows = [_row("fp32", 1, None, _acc(1.0)), _row("int8", 1.0, None, _acc(), size=25)]
    rows[1]["relative"]["speedup"] = None
    rec = recommend(rows, "fp32", Budget("cosine", 0.99))
    assert rec["variant"] == "fp32" and "int8: not measured" in rec["reason"]


# ---------------------------------------------------------------- 5. every model failed


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--json"], ["-q"]])
def test_bench_exits_1_when_every_model_failed(extra, tmp_path):
    a, b = failing_model(tmp_path / "a.onnx"), failing_model(tmp_path / "b.onnx")
    out = tmp_path / "out"
    proc = run_edgekit("bench", a, b, "-o", out, "--threads", "1", *FAST, *extra)
    assert proc.returncode == 1, proc.stderr
    assert "edgekit: error: a failed:" in proc.stderr and "edgekit: error: b failed:" in proc.stderr
    assert "every model failed (2 of 2)" in proc.stderr and "Traceback" not in proc.stderr
    report = json.loads((out / "report.json").read_text())  # the errors are kept
    assert all(v["error"] for v in report["variants"])


# ---------------------------------------------------------------- 6. optional extras


@pytest.fixture
def state_dict_file(tmp_path) -> Path:
    torch = pytest.importorskip("torch")
    path = tmp_path / "linear.pt"
    torch.save(torch.nn.Linear(4, 3).state_dict(), path)
    return path


@pytest.mark.slow
def test_optimize_without_torch_says_which_extra_to_install(
    state_dict_file, tmp_path, block_imports
):
    out = tmp_path / "out"
    proc = run_edgekit("optimize", state_dict_file, "-o", out, env=block_imports())
    assert proc.returncode == 2, proc.stderr
    assert "internal error" not in proc.stderr and "bug in edgekit" not in proc.stderr
    assert proc.stderr.startswith("edgekit: error: `edgekit optimize` needs torch")
    assert "pip install 'edgekit[torch]'" in proc.stderr
    assert "https://download.pytorch.org/whl/cpu" in proc.stderr  # CPU torch first
    assert not out.exists()


@pytest.mark.parametrize(
    "module, extra",
    [("onnxsim", "torch"), ("torch_pruning", "torch"), ("matplotlib", "html"),
     ("uvicorn", "serve"), ("starlette", "serve"), ("prometheus_client", "serve")],
)  # fmt: skip
def test_every_optional_module_names_its_extra(module, extra, tmp_path, monkeypatch, capsys):
    """The real CLI entry point, with a command whose import of `module` fails."""
    from edgekit import cli
    from edgekit.commands import bench

    def run(args):
        raise ModuleNotFoundError(f"No module named '{module}'", name=module)

    monkeypatch.setattr(bench, "run", run)
    code = cli.main(["bench", str(relu_model(tmp_path / "m.onnx"))])
    err = capsys.readouterr().err
    assert code == 2 and f"needs {module}" in err and f"pip install 'edgekit[{extra}]'" in err
    assert ("download.pytorch.org" in err) == (extra == "torch")

    def broken(args):  # an import error inside edgekit itself is still a bug
        raise ModuleNotFoundError("No module named 'edgekit.nothing'", name="edgekit.nothing")

    monkeypatch.setattr(bench, "run", broken)
    assert cli.main(["bench", str(tmp_path / "m.onnx")]) == 3
    assert "bug in edgekit" in capsys.readouterr().err


# ---------------------------------------------------------------- 7. unusable -o


@pytest.mark.slow
@pytest.mark.parametrize("where", ["/dev/null", "file", "/proc/nope"])
def test_bench_refuses_an_output_it_cannot_write_before_the_work(where, tmp_path):
    model = relu_model(tmp_path / "m.onnx")
    if where == "file":
        where = tmp_path / "report.txt"
        where.write_text("keep me\n")
    start = time.monotonic()
    # a long --min-time: if the benchmark ran first, this would take over 60 s
    proc = run_edgekit("bench", model, "-o", where, "--min-time", "60", "--max-time", "60")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("edgekit: error: -o ") and "Traceback" not in proc.stderr
    assert time.monotonic() - start < 40
    if isinstance(where, Path):
        assert where.read_text() == "keep me\n"
