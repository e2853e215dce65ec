"""Samples and columns that fit the model (issue 20): generated integer inputs as the graph reads
them, and top-1 agreement only for a classifier's output. Fast: graphs made here, real
onnxruntime sessions, no processes."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import save_graph
from onnx import TensorProto, helper, numpy_helper

from edgekit.accuracy import drift_by_output, run_onnx
from edgekit.model.load import load_onnx
from edgekit.model.samples import resolve_samples
from edgekit.report.cells import headers, rows

F, I64 = TensorProto.FLOAT, TensorProto.INT64
VOCAB = 1000


def sentence_encoder(path, output="output"):
    """input_ids → word embedding (+ token type embedding), mean-pooled over the attention mask."""
    rng = np.random.default_rng(0)
    inputs = [
        helper.make_tensor_value_info(n, I64, ["batch", 6])
        for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    out = helper.make_tensor_value_info(output, F, ["batch", 16])
    tables = [
        numpy_helper.from_array(rng.normal(size=(VOCAB, 16)).astype(np.float32), "words"),
        numpy_helper.from_array(rng.normal(size=(2, 16)).astype(np.float32), "types"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Gather", ["words", "input_ids"], ["w"]),
        helper.make_node("Gather", ["types", "token_type_ids"], ["t"]),
        helper.make_node("Add", ["w", "t"], ["h"]),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=F),
        helper.make_node("Unsqueeze", ["m", "axis2"], ["m3"]),
        helper.make_node("Mul", ["h", "m3"], ["hm"]),
        helper.make_node("ReduceSum", ["hm", "axis1"], ["total"], keepdims=0),
        helper.make_node("ReduceSum", ["m3", "axis1"], ["count"], keepdims=0),
        helper.make_node("Div", ["total", "count"], [output]),
    ]
    return save_graph(helper.make_graph(nodes, "enc", inputs, [out], tables), path)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return sentence_encoder(tmp_path_factory.mktemp("enc") / "enc.onnx")


def test_generated_integer_inputs_fit_the_graph(encoder):
    from edgekit.model.samples import gathered_rows

    assert gathered_rows(encoder) == {"input_ids": VOCAB, "token_type_ids": 2}
    samples = resolve_samples([], load_onnx(encoder).input_specs, None, generated=32)
    samples = samples.fitted_to(encoder)
    feeds = {k: np.asarray(v) for k, v in samples.feeds.items()}
    assert (feeds["attention_mask"] == 1).all()
    assert (feeds["token_type_ids"] == 0).all()
    assert feeds["input_ids"].max() > 100 and feeds["input_ids"].max() < VOCAB  # the vocabulary
    said = samples.to_json()["generated_inputs"]
    assert "all ones" in said["attention_mask"] and f"0 to {VOCAB - 1}" in said["input_ids"]
    assert run_onnx(encoder, samples.feeds)[0].shape == (32, 16)  # every id is in the table


def test_a_range_the_user_gave_is_kept(encoder):
    texts = ["input_ids:1x6:int64:0-10", "attention_mask:1x6:int64:0-2", "token_type_ids:1x6"]
    samples = resolve_samples(texts, load_onnx(encoder).input_specs, None, 32).fitted_to(encoder)
    assert np.asarray(samples.feeds["input_ids"]).max() < 10
    assert set(np.unique(samples.feeds["attention_mask"])) == {0, 1}
    assert (np.asarray(samples.feeds["token_type_ids"]) == 0).all()  # no range: fitted


def test_an_embedding_gets_no_top1_and_says_why(encoder, tmp_path):
    from edgekit.accuracy import output_kinds

    samples = resolve_samples([], load_onnx(encoder).input_specs, None, 16).fitted_to(encoder)
    reference = run_onnx(encoder, samples.feeds)
    kinds = output_kinds(reference, ["output"], "output", encoder, labelled=False)
    assert kinds["output"]["kind"] == "embedding" and "Div" in kinds["output"]["why"]
    noisy = [reference[0] + 0.3 * np.random.default_rng(1).normal(size=reference[0].shape)]
    accuracy, unmeasured = drift_by_output(reference, noisy, None, ["output"], "output", kinds)
    assert accuracy["top1_agreement"] is None and accuracy["output_kind"] == "embedding"
    assert "argmax" in unmeasured["accuracy.top1_agreement"]
    report = {"variants": [{"name": "fp32", "size_bytes": 1, "latency_ms": None, "memory": None,
                            "accuracy": {**accuracy, "top1_agreement": 0.5}}]}  # fmt: skip
    top1 = headers().index("top-1")
    assert rows(report)[0][top1] == "—"  # even a report that carries a number for it


@pytest.mark.parametrize(
    ("name", "op", "kind"),
    [("logits", "Relu", "classifier"), ("output", "MatMul", "classifier"),
     ("output", "Relu", "embedding"), ("pooler_output", "MatMul", "embedding")],
)  # fmt: skip
def test_output_kind_from_its_name_and_the_op_that_computes_it(tmp_path, name, op, kind):
    from edgekit.accuracy import output_kinds

    x = helper.make_tensor_value_info("x", F, ["batch", 4])
    y = helper.make_tensor_value_info(name, F, ["batch", 3])
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"])]
    nodes.append(helper.make_node(op, ["xw"] + (["w3"] if op == "MatMul" else []), [name]))
    w3 = numpy_helper.from_array(np.eye(3, dtype=np.float32), "w3")
    path = save_graph(helper.make_graph(nodes, "k", [x], [y], [w, w3]), tmp_path / "k.onnx")
    reference = run_onnx(path, {"x": np.random.default_rng(0).normal(size=(8, 4)).astype("f")})
    assert output_kinds(reference, [name], name, path, False)[name]["kind"] == kind
