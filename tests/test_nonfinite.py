"""Models whose outputs are NaN or infinite everywhere (issue 19): the equivalence check of a
rewrite, the export parity check and the reference check end in a clear answer, never exit 3."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import save_graph
from onnx import TensorProto, helper

from edgekit.accuracy import run_onnx
from edgekit.errors import EdgekitError
from edgekit.passes import PassContext, same_function

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
