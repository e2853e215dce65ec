"""Outlier channels taken out of int8's way: two exact rewrites of the float model.

Trained transformers put a few hidden channels 20–50x above the rest (LayerNorm gammas, massive
FFN activations). Per-tensor int8 activations then spend their 256 steps on those channels and
leave the others a handful. For each weight MatMul whose input has such channels:

`smooth` (SmoothQuant's migration, on the outlier channels only): X @ W = (X / s) @ (s W), s the
channel's peak over the typical one; 1 elsewhere. The division goes into the LayerNorm that makes
X (free) or a Mul. Exact in float; int8 then sees tight activations and weight rows scaled up by s,
which per-channel int8 weights absorb as long as those rows were small (as they are in trained
models, where small weights read the big channels).

`decompose` (LLM.int8()'s mixed-precision decomposition): whatever the weights,

    X @ W  =  (X * keep) @ W          int8: the outlier channels zeroed, a tight activation range
            + X[..., idx] @ W[idx]     float: a few channels, a few hundred multiply-adds per row

Outlier channels are found on the float model's own activations (`ctx.feeds`): a channel whose
largest |value| is more than OUTLIER_RATIO times the median channel's. The float MatMuls are
named `<node>/outliers` so the quantizer can be told to leave them alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

if TYPE_CHECKING:
    from edgekit.model.inputs import InputSpec

OUTLIER_RATIO = 6.0  # LLM.int8() draws the line at |x| >= 6 for unit-scale activations
MAX_OUTLIERS = 8  # beyond this many channels in one input it is not a few outliers
SAMPLES = 8
SUFFIX = "/outliers"


def weight_matmuls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """MatMuls whose B is a 2-D weight: the ones int8 quantizes."""
    weights = {i.name: i for i in model.graph.initializer}
    return [
        n
        for n in model.graph.node
        if n.op_type == "MatMul" and n.input[1] in weights and len(weights[n.input[1]].dims) == 2
    ]


def find(
    path: Path, feeds: dict[str, np.ndarray], specs: Sequence[InputSpec] = ()
) -> dict[str, dict[int, float]]:
    """{MatMul input tensor: {outlier channel: its peak over the median channel's}} on the first
    SAMPLES samples (batch-first, fed in the layout `specs` give)."""
    import onnxruntime as ort

    from edgekit.accuracy import fixed_batch
    from edgekit.model.samples import model_feeds

    model = onnx.load(str(path))
    inputs = sorted({n.input[0] for n in weight_matmuls(model)})
    graph_inputs = {i.name for i in model.graph.input}
    probed = [name for name in inputs if name not in graph_inputs]
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(
        helper.make_empty_tensor_value_info(name) for name in probed if name not in existing
    )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    peaks: dict[str, np.ndarray] = {}
    step = fixed_batch(path, feeds, specs) or 1  # one sample a run, or the batch the graph fixes
    count = max(step, min(SAMPLES, len(next(iter(feeds.values())))))
    for i in range(0, count - step + 1, step):
        fed = model_feeds({k: v[i : i + step] for k, v in feeds.items()}, specs)
        outputs = session.run(None, fed)
        values = dict(zip(names, outputs, strict=True))
        values.update(fed)
        for name in inputs:
            x = np.abs(values[name].astype(np.float32)).reshape(-1, values[name].shape[-1])
            peak = x.max(axis=0)
            peaks[name] = peak if name not in peaks else np.maximum(peaks[name], peak)
    found = {}
    for name, peak in peaks.items():
        typical = float(np.median(peak))
        typical = max(typical, 1e-12)
        channels = np.flatnonzero(peak > OUTLIER_RATIO * typical)
        if 0 < len(channels) <= MAX_OUTLIERS:
            found[name] = {int(c): float(peak[c] / typical) for c in channels}
    return found


def smooth(path: Path, out: Path, outliers: dict[str, dict[int, float]]) -> list[str]:
    """Write `path` with each outlier channel scaled down to the typical range before the
    MatMuls that read it, and their weight rows scaled up as much (SmoothQuant's migration,
    on the outlier channels only): the same function, no float part, tight int8 ranges.
    The scale goes into the LayerNormalization that makes the input where only these MatMuls
    read it (no extra op), else into one Mul per input. Returns how each input was scaled."""
    model = onnx.load(str(path))
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    how, new_nodes, scaled = [], [], {}
    for x, channels in outliers.items():
        users = readers.get(x, [])
        matmuls = [
            u for u in users if u.op_type == "MatMul" and u.input[0] == x and u.input[1] in weights
        ]
        width = weights[matmuls[0].input[1]].dims[0] if matmuls else 0
        if not matmuls or any(weights[m.input[1]].dims[0] != width for m in matmuls):
            continue
        s = np.ones(width, dtype=np.float32)
        for c, ratio in channels.items():
            s[c] = ratio
        for m in matmuls:
            _rescale(graph, weights, m, 1, s[:, None])
        norm = producers.get(x)
        only_matmuls = len(matmuls) == len(users) and x not in outputs
        if norm is not None and norm.op_type == "LayerNormalization" and only_matmuls:
            for i in (1, 2):
                if len(norm.input) > i and norm.input[i] in weights:
                    _rescale(graph, weights, norm, i, 1.0 / s)
            how.append(f"{x}: into {norm.name}")
            continue
        graph.initializer.append(numpy_helper.from_array(1.0 / s, f"{x}{SUFFIX}/scale"))
        scaled[x] = f"{x}{SUFFIX}/scaled"
        new_nodes.append(
            helper.make_node(
                "Mul", [x, f"{x}{SUFFIX}/scale"], [scaled[x]], name=f"{x}{SUFFIX}/scale"
            )
        )
        for m in matmuls:
            m.input[0] = scaled[x]
        how.append(f"{x}: Mul")
    ordered = []
    for node in graph.node:  # each Mul right after the node that makes its input
        ordered.append(node)
        ordered += [n for n in new_nodes if n.input[0] in node.output]
    ordered = [n for n in new_nodes if n.input[0] not in producers] + ordered
    del graph.node[:]
    graph.node.extend(ordered)
    _drop_unused_initializers(graph)
    onnx.save(model, str(out))
    return how


def _drop_unused_initializers(graph) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _rescale(graph, weights: dict, node, i: int, factor: np.ndarray) -> None:
    """Give `node` its own copy of initializer input `i`, multiplied by `factor` (exporters and
    onnxsim share identical initializers between nodes)."""
    source = weights[node.input[i]]
    name = f"{node.input[i]}{SUFFIX}/{node.name}"
    value = (numpy_helper.to_array(source) * factor).astype(numpy_helper.to_array(source).dtype)
    graph.initializer.append(numpy_helper.from_array(value, name))
    weights[name] = graph.initializer[-1]
    node.input[i] = name


def decompose(path: Path, out: Path, outliers: dict[str, list[int]]) -> list[str]:
    """Write `path` with every weight MatMul reading an input in `outliers` split in two;
    returns the names of the float MatMuls (to keep out of quantization)."""
    model = onnx.load(str(path))
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    masks: dict[str, str] = {}  # input → its masked copy (one Mul per input, shared)
    pending: dict[str, onnx.NodeProto] = {}  # bias Add's name → the float part's Add after it
    kept_float, new_nodes = [], []
    for node in graph.node:
        x = node.input[0] if node.op_type == "MatMul" else None
        w = weights.get(node.input[1]) if x in outliers else None
        if w is None or len(w.dims) != 2:
            new_nodes.append(node)
            if node.name in pending:
                new_nodes.append(pending.pop(node.name))
            continue
        channels, base = sorted(outliers[x]), node.name or node.output[0]
        if x not in masks:
            masks[x] = f"{x}{SUFFIX}/masked"
            new_nodes += _mask_and_pick(graph, x, channels, w.dims[0])
        weight = numpy_helper.to_array(w)[channels]
        graph.initializer.append(numpy_helper.from_array(weight, f"{base}{SUFFIX}/weight"))
        side = f"{node.output[0]}{SUFFIX}/float"
        new_nodes.append(
            helper.make_node(
                "MatMul",
                [f"{x}{SUFFIX}/picked", f"{base}{SUFFIX}/weight"],
                [side],
                name=f"{base}{SUFFIX}",
            )
        )
        kept_float.append(f"{base}{SUFFIX}")
        # The float part joins after the bias Add when there is one: onnxruntime fuses an int8
        # MatMul with its bias only when the Add reads the MatMul directly.
        users = readers.get(node.output[0], [])
        bias = users[0] if len(users) == 1 and users[0].op_type == "Add" else None
        if bias is not None and any(i in weights for i in bias.input):
            total = bias.output[0]
            bias.output[0] = f"{total}{SUFFIX}/int8"
            pending[bias.name] = helper.make_node(
                "Add", [bias.output[0], side], [total], name=f"{base}{SUFFIX}/add"
            )
            new_nodes.append(
                helper.make_node("MatMul", [masks[x], node.input[1]], list(node.output), name=base)
            )
        else:
            main = f"{node.output[0]}{SUFFIX}/int8"
            new_nodes += [
                helper.make_node("MatMul", [masks[x], node.input[1]], [main], name=base),
                helper.make_node(
                    "Add", [main, side], list(node.output), name=f"{base}{SUFFIX}/add"
                ),
            ]
    del graph.node[:]
    graph.node.extend(new_nodes)
    onnx.save(model, str(out))
    return kept_float


def _mask_and_pick(graph, x: str, channels: list[int], width: int) -> list[onnx.NodeProto]:
    """`x` with its outlier channels zeroed (for int8), and those channels alone (for float)."""
    keep = np.ones(width, dtype=np.float32)
    keep[channels] = 0.0
    graph.initializer.extend(
        [
            numpy_helper.from_array(keep, f"{x}{SUFFIX}/keep"),
            numpy_helper.from_array(np.array(channels, np.int64), f"{x}{SUFFIX}/index"),
        ]
    )
    return [
        helper.make_node(
            "Mul", [x, f"{x}{SUFFIX}/keep"], [f"{x}{SUFFIX}/masked"], name=f"{x}{SUFFIX}/mask"
        ),
        helper.make_node(
            "Gather",
            [x, f"{x}{SUFFIX}/index"],
            [f"{x}{SUFFIX}/picked"],
            name=f"{x}{SUFFIX}/pick",
            axis=-1,
        ),
    ]
