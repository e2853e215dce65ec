"""onnxsim simplification, checked numerically against its parent."""

from __future__ import annotations

import contextlib
import io

import onnx

from edgekit.fsutil import atomic_write_bytes
from edgekit.passes import PassContext, PassFailed, Variant, attempt, same_function


def check(options, specs, feeds) -> None:
    return None


def run(variants: list[Variant], ctx: PassContext, settings: None) -> list[Variant]:
    with ctx.step("simplifying with onnxsim"):
        return [simplify(variants[0], ctx)]


def simplify(parent: Variant, ctx: PassContext) -> Variant:
    return attempt(
        parent, "simplified", "simplify", {"tool": "onnxsim"}, lambda: _simplify(parent, ctx)
    )


def _simplify(parent: Variant, ctx: PassContext) -> Variant:
    try:
        import onnxsim
    except ImportError as exc:  # e.g. a platform without an onnxsim wheel: a note, not a crash
        raise PassFailed(
            f"onnxsim cannot be imported here ({exc}): the exported model is kept unsimplified and "
            "int8 is made from it. Install onnxsim (`pip install onnxsim`) to simplify."
        ) from None

    out_path = ctx.path_for("simplified")
    model = onnx.load(str(parent.path))
    try:
        # onnxsim prints its own tables; the report says what matters.
        with contextlib.redirect_stdout(io.StringIO()):
            simplified, _ = onnxsim.simplify(model, check_n=0)
    except Exception as exc:
        raise PassFailed(
            f"onnxsim could not simplify the model ({exc}); the exported model is kept"
        ) from None
    atomic_write_bytes(out_path, simplified.SerializeToString())
    same_function(parent.path, out_path, ctx, "the simplified model")
    variant = parent.child("simplified", out_path, "simplify", {"tool": "onnxsim"})
    variant.notes.append(f"onnxsim: {len(model.graph.node)} → {len(simplified.graph.node)} nodes")
    return variant
