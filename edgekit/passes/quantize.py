"""int8 quantization with onnxruntime's tools."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from edgekit.passes import PassContext, PassFailed, Variant, attempt


def int8_variants(parent: Variant, ctx: PassContext) -> list[Variant]:
    """The int8 recipes worth trying for this model, each its own variant."""
    settings = {"weight_type": "QInt8", "per_channel": False, "reduce_range": False}
    with ctx.step("quantizing: int8 dynamic"):
        return [
            attempt(
                parent,
                "int8-dynamic",
                "quantize-dynamic",
                settings,
                lambda: _quantize_dynamic(parent, ctx.path_for("int8-dynamic"), settings),
            )
        ]


def _quantize_dynamic(parent: Variant, out_path: Path, settings: dict) -> Variant:
    """Weights int8 ahead of time, activations quantized on the fly: right for MatMul/Gemm-heavy
    models; Conv turns into ConvInteger, which is slow on CPU."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        staged = Path(tmp) / out_path.name
        try:
            quantize_dynamic(
                parent.path,
                staged,
                weight_type=QuantType.QInt8,
                per_channel=settings["per_channel"],
                reduce_range=settings["reduce_range"],
            )
        except Exception as exc:
            raise PassFailed(f"onnxruntime's quantize_dynamic failed: {exc}") from None
        os.replace(staged, out_path)  # same folder: an atomic rename
    variant = parent.child(out_path.stem, out_path, "quantize-dynamic", settings)
    ops = {n.op_type for n in onnx.load(str(out_path), load_external_data=False).graph.node}
    if "ConvInteger" in ops:
        variant.notes.append(
            "dynamic int8 turned Conv into ConvInteger, which has no fast CPU kernel: "
            "compare its measured latency with fp32"
        )
    return variant
