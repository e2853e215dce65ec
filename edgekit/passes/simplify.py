"""onnxsim simplification, checked numerically against its parent, that never hides MatMuls.

onnxsim's Gemm fusions turn a transformer's 3-D MatMul+Add into Reshape+Gemm+Reshape: on
onnxruntime that ran 2–8% slower than the plain export (design.md), and the int8 recipes then
start from Gemms behind Reshapes. When the simplified graph has more Reshape→Gemm than its
parent, onnxsim runs again with those fusions off (GEMM_FUSIONS), and the note says so. A 2-D
MatMul+Add (a classifier head) still becomes a Gemm: nothing to reshape there.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import ClassVar

import onnx

from edgekit.fsutil import atomic_write_bytes
from edgekit.passes import Pass, PassContext, PassFailed, Variant, attempt, same_function

GEMM_FUSIONS = [
    "fuse_matmul_add_bias_into_gemm",
    "fuse_matmul_add_bias_into_gemm_batched",
    "fuse_transpose_into_gemm",
]


@dataclass(frozen=True)
class SimplifySettings:
    """Nothing to choose: onnxsim always runs on the export."""


@dataclass(frozen=True)
class Simplify(Pass):
    name: ClassVar[str] = "simplify"
    settings: SimplifySettings = SimplifySettings()

    def run(self, variants: list[Variant], ctx: PassContext) -> list[Variant]:
        with ctx.step("simplifying with onnxsim"):
            return [simplify(variants[0], ctx)]


def simplify(parent: Variant, ctx: PassContext) -> Variant:
    return attempt(
        parent, "simplified", "simplify", {"tool": "onnxsim"}, lambda: _simplify(parent, ctx)
    )


def reshaped_gemms(model: onnx.ModelProto) -> int:
    """Gemm nodes fed by a Reshape: the trace of a 3-D MatMul+Add flattened into a 2-D Gemm."""
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    return sum(
        1
        for n in model.graph.node
        if n.op_type == "Gemm" and producers.get(n.input[0]) == "Reshape"
    )


def _simplify(parent: Variant, ctx: PassContext) -> Variant:
    out_path = ctx.path_for("simplified")
    model = onnx.load(str(parent.path))
    settings = {"tool": "onnxsim"}
    simplified = _onnxsim(model)
    hidden = reshaped_gemms(simplified) - reshaped_gemms(model)
    note = ""
    if hidden > 0:
        settings["skipped_optimizers"] = GEMM_FUSIONS
        simplified = _onnxsim(model, GEMM_FUSIONS)
        note = (
            f"; onnxsim's Gemm fusions turned {hidden} MatMul+Add into Reshape+Gemm+Reshape "
            "(slower on onnxruntime, and hidden from MatMul int8): simplified again without "
            f"them ({reshaped_gemms(simplified)} Reshape→Gemm left)"
        )
    atomic_write_bytes(out_path, simplified.SerializeToString())
    same_function(parent.path, out_path, ctx, "the simplified model")
    variant = parent.child("simplified", out_path, "simplify", settings)
    ops = ("MatMul", "Gemm", "Reshape")
    counts = ", ".join(
        f"{op} {_count(model, op)} → {_count(simplified, op)}"
        for op in ops
        if _count(model, op) or _count(simplified, op)
    )
    variant.notes.append(
        f"onnxsim: {len(model.graph.node)} → {len(simplified.graph.node)} nodes"
        + (f" ({counts})" if counts else "")
        + note
    )
    return variant


def _count(model: onnx.ModelProto, op: str) -> int:
    return sum(1 for n in model.graph.node if n.op_type == op)


def _onnxsim(model: onnx.ModelProto, skipped: list[str] | None = None) -> onnx.ModelProto:
    try:
        import onnxsim
    except ImportError as exc:  # e.g. a platform without an onnxsim wheel: a note, not a crash
        raise PassFailed(
            f"onnxsim cannot be imported here ({exc}): the exported model is kept unsimplified and "
            "int8 is made from it. Install onnxsim (`pip install onnxsim`) to simplify."
        ) from None

    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # the parent is simplified a second time when the first one hid MatMuls
    try:
        # onnxsim prints its own tables; the report says what matters.
        with contextlib.redirect_stdout(io.StringIO()):
            simplified, _ = onnxsim.simplify(copy, check_n=0, skipped_optimizers=skipped)
    except Exception as exc:
        raise PassFailed(
            f"onnxsim could not simplify the model ({exc}); the exported model is kept"
        ) from None
    return simplified
