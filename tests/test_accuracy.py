import numpy as np
import pytest

from edgekit.accuracy import drift, task_accuracy
from edgekit.errors import EdgekitError
from edgekit.recommend import Budget, default_budget, parse_budget, recommend
from edgekit.report.schema import Variant


def test_drift_of_identical_outputs_is_zero_with_perfect_agreement():
    logits = np.random.default_rng(0).normal(size=(20, 10)).astype(np.float32)
    acc, unmeasured = drift([logits], [logits.copy()], labels=logits.argmax(1))
    assert acc["max_abs_err"] == 0 and acc["mean_abs_err"] == 0
    assert acc["cosine_min"] == pytest.approx(1.0)
    assert acc["top1_agreement"] == 1.0 and acc["task_accuracy"] == 1.0
    assert unmeasured == {}


def test_drift_numbers_by_hand():
    ref = np.array([[1.0, 0.0], [0.0, 2.0]])
    out = np.array(
        [[0.0, 1.0], [0.0, 1.0]]
    )  # sample 0 orthogonal and flips top-1; sample 1 same direction
    acc, _ = drift([ref], [out], labels=np.array([0, 0]))
    assert acc["max_abs_err"] == 1.0
    assert acc["mean_abs_err"] == pytest.approx((1 + 1 + 0 + 1) / 4)
    assert acc["cosine_min"] == pytest.approx(0.0)
    assert acc["top1_agreement"] == 0.5
    assert acc["task_accuracy"] == 0.0


def test_unmeasurable_metrics_are_null_with_reasons():
    ref = np.ones((4, 3, 5))  # not classifier-shaped
    acc, unmeasured = drift([ref], [ref * 2])
    assert acc["top1_agreement"] is None and acc["task_accuracy"] is None
    assert "classifier" in unmeasured["accuracy.top1_agreement"]
    assert "labels" in unmeasured["accuracy.task_accuracy"]
    assert acc["cosine_min"] == pytest.approx(1.0)  # scaled output: same direction


def test_task_accuracy():
    assert task_accuracy(np.eye(4), np.array([0, 1, 2, 0])) == 0.75


@pytest.mark.parametrize(
    "text,expected",
    [
        ("cosine>=0.99", Budget("cosine", 0.99)),
        ("top1>=0.995", Budget("top1", 0.995)),
        ("accuracy-drop<=0.01", Budget("accuracy-drop", 0.01)),
    ],
)
def test_parse_budget(text, expected):
    assert parse_budget(text) == expected


@pytest.mark.parametrize("text", ["cosine<=0.99", "speed>=2", "top1", ""])
def test_bad_budget_is_a_clear_error(text):
    with pytest.raises(EdgekitError, match="cosine>=0.99"):
        parse_budget(text)


def test_default_budget_by_output_kind():
    assert default_budget(classifier=True, labelled=True).metric == "accuracy-drop"
    assert default_budget(classifier=True, labelled=False).metric == "top1"
    assert default_budget(classifier=False, labelled=False).metric == "cosine"


def _row(name, speedup, ci, cosine, size=100, task=None):
    return Variant(
        name,
        size_bytes=size,
        latency_ms={"p50": 1.0 / speedup},
        relative=None if name == "fp32" else {"baseline": "fp32", "speedup": speedup, "ci95": ci},
        accuracy={"cosine_min": cosine, "task_accuracy": task},
    ).to_json()


def test_recommends_fastest_within_budget():
    rows = [
        _row("fp32", 1, None, 1.0),
        _row("a", 1.5, [1.4, 1.6], 0.999),
        _row("b", 3.0, [2.8, 3.2], 0.90),  # fastest but over budget
    ]
    rec = recommend(rows, "fp32", Budget("cosine", 0.99))
    assert rec["variant"] == "a"
    assert "1.50x faster" in rec["reason"]


def test_never_recommends_a_slower_variant():
    rows = [_row("fp32", 1, None, 1.0), _row("int8", 0.1, [0.09, 0.11], 0.999, size=25)]
    rec = recommend(rows, "fp32", Budget("cosine", 0.99))
    assert rec["variant"] == "fp32"
    assert "slower" in rec["reason"]


def test_equal_speed_but_smaller_is_recommended_and_says_so():
    rows = [_row("fp32", 1, None, 1.0), _row("int8", 1.01, [0.97, 1.05], 0.999, size=25)]
    rec = recommend(rows, "fp32", Budget("cosine", 0.99))
    assert rec["variant"] == "int8"
    assert "within noise" in rec["reason"] and "25%" in rec["reason"]


def test_accuracy_drop_budget_uses_the_baseline_accuracy():
    rows = [
        _row("fp32", 1, None, 1.0, task=0.95),
        _row("a", 2.0, [1.9, 2.1], 0.9, task=0.90),
        _row("b", 1.5, [1.4, 1.6], 0.9, task=0.945),
    ]
    assert recommend(rows, "fp32", Budget("accuracy-drop", 0.01))["variant"] == "b"
