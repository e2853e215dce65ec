"""Drift is measured at the batch the model is timed and deployed at: dynamic int8 computes its
activation scales over the whole batch, so the same variant scores differently at batch 64."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.accuracy import drift, run_onnx
from edgekit.api import OptimizeOptions, optimize

pytestmark = pytest.mark.slow  # every test here starts a process or exports with torch


def test_dynamic_int8_drift_is_measured_at_the_deployment_batch(tmp_path):
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(32, 16)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])],
        [weight],
    )
    model = tmp_path / "linear.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    x = rng.normal(size=(64, 32)).astype(np.float32)
    x[7] *= 1000  # one loud sample: at batch 64 it sets the activation scale for all the others
    data = tmp_path / "data.npz"
    np.savez(data, x=x)

    options = OptimizeOptions(
        inputs=["x:1x32"], data=data, int8="dynamic", min_time=0.05, max_time=0.2,
        out_dir=tmp_path / "out",
    )  # fmt: skip
    report = optimize(model, options).to_json()
    assert report["data"]["drift_batch"] == 1
    row = next(v for v in report["variants"] if v["name"] == "int8-dynamic")
    int8 = tmp_path / "out" / row["file"]
    reference = run_onnx(model, {"x": x})
    at_batch_1 = drift(reference, run_onnx(int8, {"x": x}, chunk=1))[0]["cosine_min"]
    at_batch_64 = drift(reference, run_onnx(int8, {"x": x}, chunk=64))[0]["cosine_min"]
    assert at_batch_64 < 0.9 < 0.99 < at_batch_1  # the batch changes the answer
    assert row["accuracy"]["cosine_min"] == at_batch_1
