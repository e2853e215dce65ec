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
    method: str  # "dynamic" or "static"
    per_channel: bool


DYNAMIC = Recipe("int8-dynamic", "dynamic", False)
DYNAMIC_PC = Recipe("int8-dynamic-pc", "dynamic", True)
STATIC = Recipe("int8-static", "static", False)
RECIPES = (DYNAMIC, DYNAMIC_PC, STATIC)


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
    ]
