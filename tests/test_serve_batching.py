"""Dynamic batching in edgekit.serve.model, without a server: real onnxruntime sessions fed by
ServedModel's worker threads, requests submitted from an asyncio loop as the endpoints do."""

from __future__ import annotations

import asyncio

import numpy as np
import onnxruntime as ort
import pytest
from helpers import save_graph
from onnx import TensorProto, helper
from serve_helpers import dynamic_int8_model, fragile_model, linear_model

from edgekit.serve.model import ModelFailed, ServedModel


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batching")
    relu = helper.make_graph(  # x[N, M] -> relu: any trailing shape
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "M"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "M"])],
    )
    fixed = helper.make_graph(  # x[1, 16]: axis 0 fixed
        [helper.make_node("Relu", ["x"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
    )
    return {
        "linear": linear_model(tmp / "linear.onnx"),
        "relu": save_graph(relu, tmp / "relu.onnx"),
        "fixed": save_graph(fixed, tmp / "fixed.onnx"),
        "fragile": fragile_model(tmp / "fragile.onnx"),
        "dynamic-int8": dynamic_int8_model(tmp / "dynamic-int8.onnx"),
    }


def rows(n: int, seed: int, width: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, width)).astype(np.float32)


def run_together(model: ServedModel, feeds: list[dict]) -> list:
    """Submit every request at once (as concurrent requests do); each one's Done or exception."""

    async def main():
        return await asyncio.gather(*(model.run(f) for f in feeds), return_exceptions=True)

    return asyncio.run(main())


def served(path, **settings) -> ServedModel:
    return ServedModel(path.stem, path, threads=1, **settings)


def test_requests_waiting_together_run_as_one_batch_and_get_their_own_rows(models):
    model = served(models["linear"], max_batch=7, batch_timeout_s=0.5)  # full: no wait
    try:
        xs = [rows(n, seed) for seed, n in enumerate((1, 2, 1, 3))]
        done = run_together(model, [{"x": x} for x in xs])
        assert [d.batch_rows for d in done] == [7, 7, 7, 7]  # one run of 1+2+1+3 rows
        reference = ort.InferenceSession(str(models["linear"]))
        for x, d in zip(xs, done, strict=True):
            np.testing.assert_allclose(d.outputs["y"], reference.run(None, {"x": x})[0], rtol=1e-5)
        assert len({d.compute_s for d in done}) == 1  # the same run, timed once
    finally:
        model.stop()


def test_a_batch_stops_at_max_batch_rows_and_the_rest_runs_next(models):
    model = served(models["linear"], max_batch=4, batch_timeout_s=0.2)
    try:
        done = run_together(model, [{"x": rows(1, seed)} for seed in range(6)])
        assert [d.batch_rows for d in done] == [4, 4, 4, 4, 2, 2]
    finally:
        model.stop()


def test_requests_with_other_trailing_shapes_are_not_stacked(models):
    model = served(models["relu"], max_batch=8, batch_timeout_s=0.2)
    try:
        feeds = [{"x": rows(1, 0, width=3)}, {"x": rows(1, 1, width=5)}, {"x": rows(2, 2, width=5)}]
        done = run_together(model, feeds)
        assert [d.batch_rows for d in done] == [1, 3, 3]
        for feed, d in zip(feeds, done, strict=True):
            np.testing.assert_array_equal(d.outputs["y"], np.maximum(feed["x"], 0))
    finally:
        model.stop()


@pytest.mark.parametrize(
    "which,why",
    [("fixed", "its axis 0 is fixed"), ("dynamic-int8", "DynamicQuantizeLinear")],
)
def test_models_that_cannot_batch_say_why_and_run_one_request_at_a_time(models, which, why):
    model = served(models[which], max_batch=8, batch_timeout_s=0.2)
    try:
        assert why in model.unbatched and model.max_batch == 1
        x = rows(1, 0)
        done = run_together(model, [{"x": x}, {"x": x * 2}])
        assert [d.batch_rows for d in done] == [1, 1]
    finally:
        model.stop()


def test_a_failing_run_fails_every_request_in_its_batch_and_the_worker_goes_on(models):
    model = served(models["fragile"], max_batch=2, batch_timeout_s=0.5)
    try:
        failed = run_together(model, [{"x": rows(1, 0)}, {"x": rows(1, 1)}])  # 2 rows: not /5
        assert all(isinstance(f, ModelFailed) for f in failed), failed
        (done,) = run_together(model, [{"x": rows(5, 2)}])  # over max_batch: runs alone
        assert done.outputs["y"].shape == (16, 5)
    finally:
        model.stop()
