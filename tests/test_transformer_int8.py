"""A sentence-embedding transformer with trained-BERT-like outlier channels reaches cosine>=0.99
in int8, measurably faster than fp32: the whole pipeline on a state_dict, as a user has it."""

from __future__ import annotations

import collections
import sys

import numpy as np
import onnx
import pytest
import torch
from helpers import REPO

from edgekit.accuracy import run_onnx
from edgekit.api import OptimizeOptions, no_progress, optimize
from edgekit.passes import PassContext, Variant
from edgekit.passes.int8 import int8_variants
from edgekit.passes.int8.sensitivity import quantized_nodes
from edgekit.recommend import parse_budget

pytestmark = pytest.mark.slow  # every test here starts a process or exports with torch

sys.path.insert(0, str(REPO / "tools"))
from reference_models import SentenceEncoder4, sentence_batch  # noqa: E402

BUDGET = parse_budget("cosine>=0.99")


@pytest.fixture(scope="module")
def encoder_run(tmp_path_factory):
    """`edgekit optimize` on a 4-layer outlier encoder saved as a state_dict, with padded
    sentences as --data."""
    tmp = tmp_path_factory.mktemp("encoder")
    torch.manual_seed(0)
    torch.save(SentenceEncoder4().state_dict(), tmp / "encoder.pt")
    np.savez(tmp / "sentences.npz", **sentence_batch(16))
    options = OptimizeOptions(
        arch=f"{REPO / 'tools' / 'reference_models.py'}:SentenceEncoder4",
        data=tmp / "sentences.npz",
        out_dir=tmp / "out",
        # 8 variants interleaved; at 0.1–0.5 s each the 95% intervals on this shared 2-core
        # machine were ±30–70%: too wide to call anything faster
        min_time=0.5,
        max_time=2.0,
        budget=BUDGET,
    )
    return optimize(tmp / "encoder.pt", options).to_json(), tmp / "out"


def test_an_int8_variant_reaches_the_budget(encoder_run):
    """Drift only: whether it is faster is measured side by side by tools/int8_showdown.py, not
    by a timed unit test on a shared machine."""
    report, out = encoder_run
    rows = {v["name"]: v for v in report["variants"]}
    plain = rows["int8-dynamic"]["accuracy"]["cosine_min"]
    assert plain < 0.99  # the outlier channels break plain per-tensor int8
    within = [
        name
        for name, row in rows.items()
        if name.startswith("int8-") and row["error"] is None
        and BUDGET.check(row["accuracy"], rows["fp32"]["accuracy"])[0]
    ]  # fmt: skip
    assert within, [(n, r["accuracy"] and r["accuracy"]["cosine_min"]) for n, r in rows.items()]
    chosen = rows[report["recommendation"]["variant"]]
    assert BUDGET.check(chosen["accuracy"], rows["fp32"]["accuracy"])[0]  # never over budget
    assert any(n.startswith("int8 drift against the budget cosine>=0.99") for n in report["notes"])
    # static int8 gets through pre-processing (symbolic shape inference fails on this graph)
    assert rows["int8-static"]["error"] is None
    assert any("symbolic shape inference failed" in n for n in rows["int8-static"]["notes"])


def test_simplification_keeps_the_matmuls(encoder_run):
    report, out = encoder_run
    simplified = onnx.load(str(out / "simplified.onnx"), load_external_data=False)
    ops = collections.Counter(n.op_type for n in simplified.graph.node)
    assert ops["Gemm"] == 0 and ops["MatMul"] >= 16
    note = next(v for v in report["variants"] if v["name"] == "simplified")["notes"][0]
    assert "simplified again without them" in note


def test_the_sensitivity_note_counts_the_nodes_really_quantized(encoder_run, tmp_path):
    """Plain dynamic int8 only: over budget, so the sensitivity search runs; it counts and names
    the nodes onnxruntime really quantized: 16 MatMuls in 4 layers (QKV, output, FFN in, FFN
    out) and the token embedding's Gather."""
    _, out = encoder_run
    simplified = tmp_path / "simplified.onnx"
    simplified.write_bytes((out / "simplified.onnx").read_bytes())
    feeds = sentence_batch(16)
    ctx = PassContext(
        staging=tmp_path,
        feeds=feeds,
        labels=None,
        reference=run_onnx(simplified, feeds, chunk=1),
        data_is_real=True,
        budget=BUDGET,
        step=no_progress,
    )
    variants = {v.name: v for v in int8_variants(Variant("simplified", simplified), ctx, "dynamic")}
    (excl,) = [v for n, v in variants.items() if n.endswith("-excl")]
    quantized = onnx.load(str(variants["int8-dynamic"].path), load_external_data=False)
    integer = [n for n in quantized.graph.node if n.op_type == "MatMulInteger"]
    touched = quantized_nodes(variants["int8-dynamic"].path)
    assert len(integer) == 16 and len(touched) == 17
    assert [role for _, role in touched].count("Gather reading a model input") == 1
    sensitivity = excl.extra["sensitivity"]
    assert sensitivity["quantized_nodes"] == 17
    float_names = {n.name for n in onnx.load(str(simplified)).graph.node}
    assert sensitivity["excluded"] and set(sensitivity["excluded"]) <= float_names
    note = next(n for n in ctx.notes if n.startswith(f"{excl.name}:"))
    assert "of 17 quantized nodes" in note
