"""Per-node sensitivity: when an int8 recipe breaks the drift budget, find the quantized nodes
that cause the drift and keep them in float, greedily, until the variant is within budget.

How: re-quantize with one node (or one group of consecutive nodes, when there are many) kept in
float and measure how much of the output error goes away, on a few samples; then keep the worst
nodes in float one at a time, checking the budget on all samples after each, up to a limit.
Cost: one quantization and a short inference per group, so at most MAX_TRIALS of them.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np

from edgekit.accuracy import drift
from edgekit.passes import PassContext, Variant
from edgekit.recommend import METRICS

MAX_TRIALS = 24  # ranking runs (one per node or group): what 2 cores do in about a minute
RANK_SAMPLES = 16
MAX_EXCLUDED_FRACTION = 0.2  # beyond this much float the variant is no longer really int8


def fix_drift(
    variant: Variant, quantizer, candidates: list[str], ctx: PassContext
) -> Variant | None:
    """`variant` re-made with its worst nodes kept in float, named `<variant>-excl`, with
    `extra["sensitivity"]`; None when the variant is already within budget or nothing helps.
    `quantizer(path, nodes_to_exclude)` writes the recipe's model; `candidates` are the nodes it
    quantizes, in graph order."""
    budget = ctx.budget
    baseline = drift(ctx.reference, ctx.reference, ctx.labels)[0]
    accuracy_before = _accuracy(variant.path, ctx)
    ok, before = budget.check(accuracy_before, baseline)
    if ok:
        return None
    name = f"{variant.name}-excl"
    groups = _groups(candidates, MAX_TRIALS)
    limit = max(1, math.floor(MAX_EXCLUDED_FRACTION * len(candidates)))
    few = {k: v[:RANK_SAMPLES] for k, v in ctx.feeds.items()}
    reference = [r[:RANK_SAMPLES] for r in ctx.reference]

    with (
        tempfile.TemporaryDirectory(dir=ctx.staging) as tmp,
        ctx.step(f"sensitivity of {variant.name} ({before}, budget {budget})") as update,
    ):
        trial = Path(tmp) / "trial.onnx"
        error = _error(variant.path, few, reference, ctx)
        recovery = []
        for i, group in enumerate(groups):
            update(f"ranking {i + 1}/{len(groups)}: {group[0]}")
            quantizer(trial, group)
            recovery.append((error - _error(trial, few, reference, ctx), group))
        ranked = [g for r, g in sorted(recovery, key=lambda x: -x[0]) if r > 0]

        excluded: list[str] = []
        after, accuracy = before, None
        for group in ranked:
            if len(excluded) + len(group) > limit:
                break
            excluded += group
            update(f"keeping {len(excluded)} node(s) in float")
            quantizer(trial, excluded)
            accuracy = _accuracy(trial, ctx)
            ok, after = budget.check(accuracy, baseline)
            if ok:
                break
        if not excluded:
            ctx.notes.append(
                f"{variant.name}: over budget ({before}); no node or group of its "
                f"{len(candidates)} quantized nodes, kept in float within the limit of {limit}, "
                "reduced the error"
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
            {**last, "settings": {**last["settings"], "nodes_to_exclude": excluded}},
        ],
        notes=list(variant.notes),
    )
    fixed.extra["sensitivity"] = {
        "excluded": excluded,
        "quantized_nodes": len(candidates),
        "metric": budget.metric,
        "drift_before": _value(accuracy_before, baseline, budget),
        "drift_after": _value(accuracy, baseline, budget),
        "budget": str(budget),
        "within_budget": ok,
        "trials": len(groups),
        "grouped": len(groups) < len(candidates),
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
        f"({', '.join(excluded)}): {before} → {after}, {outcome}"
    )
    fixed.notes.append(summary)
    ctx.notes.append(f"{name}: {variant.name} was over budget ({before}); sensitivity {summary}")
    return fixed


def _groups(nodes: list[str], most: int) -> list[list[str]]:
    """Each node alone, or consecutive nodes together (about one layer each) when there are many."""
    size = math.ceil(len(nodes) / most) if nodes else 1
    return [nodes[i : i + size] for i in range(0, len(nodes), size)]


def _accuracy(path: Path, ctx: PassContext) -> dict:
    return drift(ctx.reference, ctx.outputs(path), ctx.labels)[0]


def _error(path: Path, feeds: dict, reference: list[np.ndarray], ctx: PassContext) -> float:
    """Mean squared output error: smooth, so it ranks nodes where top-1 agreement cannot."""
    outputs = ctx.outputs(path, feeds)
    return float(
        sum(
            np.mean((r.astype(np.float64) - o) ** 2)
            for r, o in zip(reference, outputs, strict=True)
        )
    )


def _value(accuracy: dict | None, baseline: dict, budget) -> float | None:
    """The budget's metric as a number (the accuracy drop for accuracy-drop)."""
    value = (accuracy or {}).get(METRICS[budget.metric][0])
    if budget.metric == "accuracy-drop" and value is not None:
        return baseline["task_accuracy"] - value
    return value
