"""What the ONNX file says about cost: multiply-accumulates of the heavy operators.

Counted: Conv, ConvInteger, QLinearConv, MatMul, MatMulInteger, QLinearMatMul, Gemm (the operators
that dominate CNNs and transformers). Elementwise ops, pooling and normalisation are left out, so
GFLOP/s is "useful arithmetic per second", comparable between variants of one model.
FLOPs = 2 x MACs. Shapes come from onnx shape inference with the actual input shapes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx

# op type -> (index of the data input, index of the weight / second input)
CONV_OPS = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3)}
MATMUL_OPS = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3)}


def _shapes(model: onnx.ModelProto) -> dict[str, list[int] | None]:
    shapes: dict[str, list[int] | None] = {}
    graph = model.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        known = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        shapes[value.name] = None if None in known else known
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _node_macs(node, shapes) -> int | None:
    op = node.op_type
    if op in CONV_OPS:
        _, w_idx = CONV_OPS[op]
        weight, out = shapes.get(node.input[w_idx]), shapes.get(node.output[0])
        if not weight or not out:
            return None
        # each output element: (C_in / group) * prod(kernel) MACs; weight is [C_out, C_in/g, k...]
        return math.prod(out) * math.prod(weight[1:])
    if op in MATMUL_OPS:
        a_idx, _ = MATMUL_OPS[op]
        a, out = shapes.get(node.input[a_idx]), shapes.get(node.output[0])
        if not a or out is None:
            return None
        return math.prod(out) * a[-1]  # each output element is a dot product of length K
    if op == "Gemm":
        a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
        if not a or not out:
            return None
        k = a[0] if _attr(node, "transA", 0) else a[1]
        return math.prod(out) * k
    return 0


def count(model_path: Path, feeds: dict[str, np.ndarray]) -> dict:
    """{"macs", "flops", "by_op": {op: macs}, "complete": bool, "unknown_nodes": [...]}.
    `complete` is false when some counted node's shapes could not be inferred."""
    model = onnx.load(str(model_path), load_external_data=False)
    for value in model.graph.input:
        if value.name in feeds:  # pin every input to the shape actually benchmarked
            dims = value.type.tensor_type.shape.dim
            del dims[:]
            for size in feeds[value.name].shape:
                dims.add().dim_value = int(size)
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = _shapes(model)
    by_op: dict[str, int] = {}
    unknown = []
    for node in model.graph.node:
        macs = _node_macs(node, shapes)
        if macs is None:
            unknown.append(node.name or node.op_type)
        elif macs:
            by_op[node.op_type] = by_op.get(node.op_type, 0) + macs
    total = sum(by_op.values())
    return {
        "macs": total,
        "flops": 2 * total,
        "by_op": by_op,
        "complete": not unknown,
        "unknown_nodes": unknown[:20],
    }
