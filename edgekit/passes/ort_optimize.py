"""onnxruntime's graph optimizations (constant folding, redundant-node removal, fusions such as
Conv+Add+Relu, GELU, LayerNorm and attention) applied once, offline, and saved as a variant.

A session applies the same optimizations each time it starts, so the steady-state latency should
match the parent's; what the offline copy can save is session creation, the cold start on the
device. ORT_ENABLE_EXTENDED and not ALL: ALL adds layout changes for this machine's CPU (NCHWc
blocking), and the variant must run on the device it is made for.
"""

from __future__ import annotations

import onnx

from edgekit.passes import PassContext, PassFailed, Variant, attempt, float_parent, same_function

NAME = "ort-extended"
SETTINGS = {"tool": "onnxruntime", "graph_optimization_level": "ORT_ENABLE_EXTENDED"}


def check(options, specs, feeds) -> None:
    return None


def run(variants: list[Variant], ctx: PassContext, settings: None) -> list[Variant]:
    parent = float_parent(variants)
    with ctx.step("optimizing the graph offline with onnxruntime"):
        return [attempt(parent, NAME, "ort-optimize", SETTINGS, lambda: _optimize(parent, ctx))]


def _optimize(parent: Variant, ctx: PassContext) -> Variant:
    import onnxruntime as ort

    out_path = ctx.path_for(NAME)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(out_path)
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(parent.path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        out_path.unlink(missing_ok=True)
        raise PassFailed(f"onnxruntime could not optimize the model ({exc})") from None
    same_function(parent.path, out_path, ctx, "the offline-optimized model")
    variant = parent.child(NAME, out_path, "ort-optimize", dict(SETTINGS))
    before = onnx.load(str(parent.path), load_external_data=False).graph.node
    after = onnx.load(str(out_path), load_external_data=False).graph.node
    note = f"onnxruntime ORT_ENABLE_EXTENDED: {len(before)} → {len(after)} nodes"
    fused = sorted({n.op_type for n in after if n.domain == "com.microsoft"})
    if fused:
        note += f"; fused onnxruntime-only ops ({', '.join(fused)}): runs on onnxruntime only"
    variant.notes.append(note)
    return variant
