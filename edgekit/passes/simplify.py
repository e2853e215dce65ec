"""onnxsim simplification, checked numerically against its parent."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import onnx

from edgekit.accuracy import run_onnx
from edgekit.fsutil import atomic_write_bytes
from edgekit.passes import PassContext, PassFailed, Variant, attempt

# The simplified model must compute the same function; only float reassociation may differ.
TOLERANCE = 1e-4


def simplify(parent: Variant, ctx: PassContext) -> Variant:
    return attempt(
        parent, "simplified", "simplify", {"tool": "onnxsim"}, lambda: _simplify(parent, ctx)
    )


def _simplify(parent: Variant, ctx: PassContext) -> Variant:
    import onnxsim

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

    feeds = {k: v[:16] for k, v in ctx.feeds.items()}
    before, after = run_onnx(parent.path, feeds), run_onnx(out_path, feeds)
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(before, after, strict=True))
    tolerance = TOLERANCE * max(1.0, *(float(np.max(np.abs(b))) for b in before))
    if worst > tolerance:
        out_path.unlink(missing_ok=True)
        raise PassFailed(
            f"the simplified model's outputs differ from the exported model's by {worst:.3g} "
            f"(tolerance {tolerance:.3g}); the exported model is kept"
        )
    variant = parent.child("simplified", out_path, "simplify", {"tool": "onnxsim"})
    variant.notes.append(f"onnxsim: {len(model.graph.node)} → {len(simplified.graph.node)} nodes")
    return variant
