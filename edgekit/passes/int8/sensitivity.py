"""Sensitivity: when an int8 recipe breaks the drift budget, find the quantized nodes that cause
the drift and keep them in float, until the variant is within budget.

The nodes are the ones the quantizer really touched, read from the quantized model (integer ops,
MatMulNBits, or nodes fed by DequantizeLinear/DynamicQuantizeLinear). They are tried in groups:
first by role (every `MatMul` reading a `LayerNormalization`, every one reading a `Gelu`: where
trained transformers' outlier channels go, that is one group per layer kind), then as runs of
consecutive nodes (about a layer each). Each group is re-quantized in float once, on a few
samples, and ranked by how much output error it removes per node; the best groups are then kept
in float one after another, checking the budget on all samples after each, and the search stops
at the budget or at MAX_EXCLUDED_FRACTION of the nodes. Cost: at most MAX_TRIALS quantizations and
short inferences to rank, plus one per group kept.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from edgekit.accuracy import drift
from edgekit.passes import PassContext, Variant
from edgekit.recommend import METRICS

MAX_TRIALS = 16  # ranking runs (one per group): what 2 cores do in about a minute
RANK_SAMPLES = 16
MAX_EXCLUDED_FRACTION = 0.4  # beyond this much float the variant is no longer really int8
NAMED_IN_NOTES = 6  # nodes named in a note; the report's `sensitivity.excluded` has them all

# Ops that only exist because a node was quantized, and the ops that are quantized themselves.
_QUANT_PLUMBING = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
_INTEGER_OPS = {
    "MatMulInteger",
    "ConvInteger",
    "QLinearMatMul",
    "QLinearConv",
    "QGemm",
    "QAttention",
    "DynamicQuantizeLSTM",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "MatMulNBits",
}
# Ops looked through when naming what a node reads (layout, casts, the outlier split's mask).
_LOOK_THROUGH = {"Reshape", "Transpose", "Cast", "Flatten", "Squeeze", "Unsqueeze", "Mul", "Split"}
_QUANT_SUFFIXES = ("_quant", "_Q4", "_Q8")  # names onnxruntime gives the integer node


def quantized_nodes(path: Path) -> list[tuple[str, str]]:
    """(name, role) of every node the quantizer touched in the model at `path`, in graph order.
    The name is the float node's (what `nodes_to_exclude` takes); the role says what it is and
    what it reads, e.g. `MatMul reading LayerNormalization`."""
    graph = onnx.load(str(path), load_external_data=False).graph
    producers = {o: n for n in graph.node for o in n.output}
    touched = {n.name for n in graph.node if n.op_type in _INTEGER_OPS}
    for dq in (n for n in graph.node if n.op_type == "DequantizeLinear"):
        source = producers.get(dq.input[0])
        if source is not None and source.op_type != "QuantizeLinear":
            touched.add(source.name)  # it ran on int8 data (a quantized Gather, say)
        else:  # QDQ: what reads the dequantized activation or weight runs on int8
            touched.update(n.name for n in graph.node if dq.output[0] in n.input)
    return [
        (_float_name(n), _role(n, producers))
        for n in graph.node
        if n.name in touched and n.op_type not in _QUANT_PLUMBING
    ]


def _float_name(node) -> str:
    for suffix in _QUANT_SUFFIXES:
        if node.name.endswith(suffix):
            return node.name[: -len(suffix)]
    return node.name


def _role(node, producers) -> str:
    kind = {"MatMulInteger": "MatMul", "MatMulNBits": "MatMul", "ConvInteger": "Conv"}.get(
        node.op_type, node.op_type.removeprefix("QLinear")
    )
    source = producers.get(node.input[0]) if node.input else None
    for _ in range(8):  # through quantization plumbing and layout ops to the real producer
        if source is None or source.op_type not in _QUANT_PLUMBING | _LOOK_THROUGH:
            break
        source = producers.get(source.input[0])
    return f"{kind} reading {source.op_type if source is not None else 'a model input'}"


def fix_drift(
    variant: Variant,
    quantizer,
    ctx: PassContext,
    keep_float: tuple[str, ...] = (),
    reference: list[np.ndarray] | None = None,
    against: str = "fp32",
) -> Variant | None:
    """`variant` re-made with its worst nodes kept in float, named `<variant>-excl`, with
    `extra["sensitivity"]`; None when the variant is already within budget or nothing helps.
    `quantizer(path, nodes_to_exclude)` writes the recipe's model; `keep_float` are nodes the
    recipe itself keeps in float (not candidates). Drift is measured against `reference`, the
    outputs of the float model that was quantized, named `against` (default: fp32's): only
    the drift that quantization caused is the search's to remove."""
    budget = ctx.budget
    reference = ctx.reference if reference is None else reference
    baseline = drift(reference, reference, ctx.labels)[0]
    accuracy_before = _accuracy(variant.path, ctx, reference)
    ok, before = budget.check(accuracy_before, baseline)
    if ok:
        return None
    name = f"{variant.name}-excl"
    touched = [(n, r) for n, r in quantized_nodes(variant.path) if n not in keep_float]
    candidates = [n for n, _ in touched]
    groups = _groups(touched, MAX_TRIALS)
    limit = max(1, math.floor(MAX_EXCLUDED_FRACTION * len(candidates)))
    few = {k: v[:RANK_SAMPLES] for k, v in ctx.feeds.items()}
    few_reference = [r[:RANK_SAMPLES] for r in reference]

    with (
        tempfile.TemporaryDirectory(dir=ctx.staging) as tmp,
        ctx.step(f"sensitivity of {variant.name} ({before}, budget {budget})") as update,
    ):
        trial = Path(tmp) / "trial.onnx"
        error = _error(variant.path, few, few_reference, ctx)
        recovery = []
        for i, (label, group) in enumerate(groups):
            update(f"ranking {i + 1}/{len(groups)}: {label}")
            quantizer(trial, [*keep_float, *group])
            gain = (error - _error(trial, few, few_reference, ctx)) / len(group)
            recovery.append((gain, label, group))
        ranked = [
            (label, g) for gain, label, g in sorted(recovery, key=lambda x: -x[0]) if gain > 0
        ]

        excluded: list[str] = []
        kept_groups: list[str] = []
        after, accuracy = before, None
        for label, group in ranked:
            new = [n for n in group if n not in excluded]
            if not new or len(excluded) + len(new) > limit:
                continue
            excluded += new
            kept_groups.append(label)
            update(f"keeping {len(excluded)} node(s) in float")
            quantizer(trial, [*keep_float, *excluded])
            accuracy = _accuracy(trial, ctx, reference)
            ok, after = budget.check(accuracy, baseline)
            if ok:
                break
        if not excluded:
            ctx.notes.append(
                f"{variant.name}: over budget ({before}); no group of its {len(candidates)} "
                f"quantized nodes, kept in float within the limit of {limit}, reduced the error"
            )
            return None
        out_path = ctx.path_for(name)
        os.replace(trial, out_path)

    last = variant.passes[-1]
    fixed = Variant(
        name=name,
        path=out_path,
        parent=variant.parent,
        passes=[
            *variant.passes[:-1],
            {
                **last,
                "settings": {
                    **last["settings"],
                    "nodes_to_exclude": [*last["settings"].get("nodes_to_exclude", []), *excluded],
                },
            },
        ],
        notes=list(variant.notes),
    )
    fixed.extra["sensitivity"] = {
        "excluded": excluded,
        "groups_kept_in_float": kept_groups,
        "quantized_nodes": len(candidates),
        "metric": budget.metric,
        "drift_before": metric_value(accuracy_before, baseline, budget),
        "drift_after": metric_value(accuracy, baseline, budget),
        "drift_against": against,
        "budget": str(budget),
        "within_budget": ok,
        "trials": len(groups),
        "grouped": any(len(g) > 1 for _, g in groups),
        "limit": limit,
    }
    outcome = (
        f"within {budget}"
        if ok
        else f"still over {budget} at the limit of {limit} float node(s) "
        f"({MAX_EXCLUDED_FRACTION:.0%} of the quantized nodes)"
    )
    summary = (
        f"kept {len(excluded)} of {len(candidates)} quantized nodes in float "
        f"({'; '.join(kept_groups)}: {_names(excluded)}): {before} → {after}, {outcome}"
    )
    fixed.notes.append(summary)
    ctx.notes.append(
        f"{name}: {variant.name} was over budget ({before} against {against}); sensitivity "
        f"{summary}"
    )
    return fixed


def _names(nodes: list[str]) -> str:
    shown = ", ".join(nodes[:NAMED_IN_NOTES])
    return (
        shown if len(nodes) <= NAMED_IN_NOTES else f"{shown} and {len(nodes) - NAMED_IN_NOTES} more"
    )


def _groups(touched: list[tuple[str, str]], most: int) -> list[tuple[str, list[str]]]:
    """(label, nodes) to rank: one group per role when there are several roles (all the MatMuls
    reading LayerNorms, ...), then each node alone or runs of consecutive nodes (about a layer
    each) within what is left of `most` trials."""
    nodes = [n for n, _ in touched]
    by_role: dict[str, list[str]] = {}
    for node, role in touched:
        by_role.setdefault(role, []).append(node)
    roles = []
    if len(by_role) > 1:
        roles = sorted(by_role.items(), key=lambda kv: -len(kv[1]))[: most // 2]
        roles = [(f"all {len(g)} {role}", g) for role, g in roles if len(g) > 1]
    room = max(1, most - len(roles))
    size = math.ceil(len(nodes) / room) if nodes else 1
    runs = [nodes[i : i + size] for i in range(0, len(nodes), size)]
    return roles + [(r[0] if len(r) == 1 else f"{r[0]}…{r[-1]}", r) for r in runs]


def _accuracy(path: Path, ctx: PassContext, reference: list[np.ndarray]) -> dict:
    return drift(reference, ctx.outputs(path), ctx.labels)[0]


def _error(path: Path, feeds: dict, reference: list[np.ndarray], ctx: PassContext) -> float:
    """Mean squared output error: smooth, so it ranks nodes where top-1 agreement cannot."""
    outputs = ctx.outputs(path, feeds)
    return float(
        sum(
            np.mean((r.astype(np.float64) - o) ** 2)
            for r, o in zip(reference, outputs, strict=True)
        )
    )


def metric_value(accuracy: dict | None, baseline: dict, budget) -> float | None:
    """The budget's metric as a number (the accuracy drop for accuracy-drop)."""
    value = (accuracy or {}).get(METRICS[budget.metric][0])
    if budget.metric == "accuracy-drop" and value is not None:
        return baseline["task_accuracy"] - value
    return value
