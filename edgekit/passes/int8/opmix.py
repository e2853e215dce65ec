"""Look before quantizing: which int8 recipes are worth trying for this model's op mix, and why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

# op type → the family that decides the int8 recipe
FAMILIES = {
    "Conv": "conv",
    "ConvTranspose": "conv",
    "MatMul": "matmul",
    "Gemm": "matmul",
    "LSTM": "recurrent",
    "GRU": "recurrent",
    "RNN": "recurrent",
    "Attention": "attention",  # onnxruntime's fused contrib ops
    "MultiHeadAttention": "attention",
}
MODES = ("auto", "dynamic", "static", "all", "none")  # --int8
# --calibration: how static int8 picks activation ranges → onnxruntime's CalibrationMethod.
# MinMax is the default: exact ranges, fast and deterministic on small calibration sets and
# 2 cores; nodes whose outliers it handles badly are what the sensitivity pass keeps in float.
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
DEFAULT_CALIBRATION = "minmax"


@dataclass(frozen=True)
class Recipe:
    name: str  # the variant name (a pruned parent's name is prefixed)
    method: str  # "dynamic", "static" or "weight-only" (MatMulNBits)
    per_channel: bool
    outliers: str | None = None  # "smooth" or "split": edgekit.passes.int8.outliers
    bits: int = 8


DYNAMIC = Recipe("int8-dynamic", "dynamic", False)
DYNAMIC_PC = Recipe("int8-dynamic-pc", "dynamic", True)
STATIC = Recipe("int8-static", "static", False)
SMOOTH = Recipe("int8-dynamic-smooth", "dynamic", True, outliers="smooth")
OUTLIERS = Recipe("int8-dynamic-outliers", "dynamic", True, outliers="split")
WEIGHTS_INT8 = Recipe("int8-weights", "weight-only", True, bits=8)
WEIGHTS_INT4 = Recipe("int4-weights", "weight-only", True, bits=4)
RECIPES = (DYNAMIC, DYNAMIC_PC, STATIC, SMOOTH, OUTLIERS, WEIGHTS_INT8, WEIGHTS_INT4)
# Measured on the outlier encoder (tools/int8_showdown.py; 6 layers, seq 128, batch 1, 2-core x86
# AVX2 without VNNI): why auto leaves the weight-only recipes to `--int8 all`.
WEIGHT_ONLY_WHY = (
    "weight-only MatMulNBits: near-float drift at 8 bits (cosine 0.9989) but measured 0.5–0.7x "
    "fp32 speed, and 4 bits 0.9–1.1x at cosine 0.96 on a 2-core x86 without VNNI; `--int8 all` "
    "tries it"
)


@dataclass(frozen=True)
class Decision:
    recipe: Recipe
    tried: bool
    why: str
    fix_drift: bool = True  # run the sensitivity pass when over budget

    def note(self, name: str) -> str:
        return f"{name}: {'tried' if self.tried else 'skipped'} — {self.why}"


def op_mix(model: onnx.ModelProto) -> dict[str, int]:
    """Node counts per family (every family present, 0 when absent)."""
    mix = dict.fromkeys(("conv", "matmul", "recurrent", "attention"), 0)
    for node in model.graph.node:
        if node.op_type in FAMILIES:
            mix[FAMILIES[node.op_type]] += 1
    return mix


def describe(mix: dict[str, int]) -> str:
    return (
        f"{mix['conv']} Conv, {mix['matmul']} MatMul/Gemm, {mix['recurrent']} LSTM/GRU/RNN, "
        f"{mix['attention']} fused Attention"
    )


def plan(mix: dict[str, int], mode: str = "auto") -> list[Decision]:
    """One decision per recipe. `auto` goes by the op mix; the others are the user's choice."""
    if mode not in MODES:
        raise ValueError(f"unknown int8 mode {mode!r}")
    if mode == "none":
        return [Decision(r, False, "--int8 none") for r in RECIPES]
    if mode != "auto":
        chosen = {
            "dynamic": (DYNAMIC, DYNAMIC_PC),
            "static": (STATIC,),
            "all": RECIPES,
        }[mode]
        return [
            Decision(r, r in chosen, f"--int8 {mode}" if r in chosen else f"not in --int8 {mode}")
            for r in RECIPES
        ]

    dense = mix["matmul"] + mix["recurrent"] + mix["attention"]
    if mix["conv"] + dense == 0:
        why = "no Conv, MatMul/Gemm or recurrent ops: nothing int8 would speed up"
        return [Decision(r, False, why) for r in RECIPES]
    if mix["conv"] >= dense:
        convinteger = (
            "dynamic int8 turns Conv into ConvInteger, which has no fast CPU kernel "
            "(~10x slower than fp32 on a ResNet-18 shape on a 2-core x86)"
        )
        return [
            Decision(
                DYNAMIC,
                True,
                f"Conv-heavy; tried only so its measured slowdown shows: {convinteger}",
                fix_drift=False,
            ),
            Decision(DYNAMIC_PC, False, f"Conv-heavy: {convinteger}; `--int8 all` tries it"),
            Decision(STATIC, True, "Conv-heavy: static QDQ int8 runs Conv on fast int8 kernels"),
            Decision(SMOOTH, False, "Conv-heavy: outlier channels are a MatMul matter"),
            Decision(OUTLIERS, False, "Conv-heavy: outlier channels are a MatMul matter"),
            Decision(WEIGHTS_INT8, False, "Conv-heavy: MatMulNBits quantizes MatMuls only"),
            Decision(WEIGHTS_INT4, False, "Conv-heavy: MatMulNBits quantizes MatMuls only"),
        ]
    static_why = "activations calibrated ahead of time: usually the fastest int8"
    if mix["recurrent"]:
        static_why += " (LSTM/GRU/RNN stay float: onnxruntime quantizes them only dynamically)"
    return [
        Decision(
            DYNAMIC, True, "MatMul/Gemm/recurrent-heavy: weights int8 ahead, activations on the fly"
        ),
        Decision(
            DYNAMIC_PC,
            True,
            "per-channel weight scales: closer to fp32 where output channels differ in range "
            "(MiniLM-like: cosine ~0.88 per-tensor vs ~0.98 per-channel)",
        ),
        Decision(STATIC, True, static_why),
        Decision(
            SMOOTH,
            mix["matmul"] > 0,
            "activation channels 6x above the rest (trained transformers' LayerNorm and FFN "
            "outliers) scaled down into the weights that read them (SmoothQuant's migration): "
            "tight int8 ranges at no run-time cost"
            if mix["matmul"]
            else "no MatMul",
        ),
        Decision(
            OUTLIERS,
            mix["matmul"] > 0,
            "those channels kept in float beside each int8 MatMul (LLM.int8()'s decomposition): "
            "exact whatever the weights, at the cost of a small float MatMul each"
            if mix["matmul"]
            else "no MatMul",
        ),
        Decision(WEIGHTS_INT8, False, WEIGHT_ONLY_WHY),
        Decision(WEIGHTS_INT4, False, WEIGHT_ONLY_WHY),
    ]
