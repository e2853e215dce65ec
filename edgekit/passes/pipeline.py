"""The passes `optimize()` runs, in order (the contract of a pass: edgekit.passes.Pass).

Adding a pass is a module with a `Pass` class, a line in PIPELINE, and its options (a field of
OptimizeOptions and a flag of `edgekit optimize`) read by its `check`.
"""

from __future__ import annotations

from edgekit.passes import Pass, PassContext, Variant
from edgekit.passes.int8 import Int8
from edgekit.passes.prune import Prune
from edgekit.passes.runtimes import Runtimes
from edgekit.passes.simplify import Simplify

PIPELINE: tuple[type[Pass], ...] = (
    Simplify,
    Runtimes,  # before Int8: the pipeline makes ONNX int8 only of the float ONNX variants after it
    Int8,  # the passes before it rewrite the float model it starts from
    Prune,
)


def run(passes: list[Pass], fp32: Variant, ctx: PassContext) -> list[Variant]:
    """Every variant, fp32 first: each pass on the variants so far, in order. Every float variant
    a pass after Int8 makes is followed by its int8 variants, made as the user asked (--int8,
    --calibration) for ctx.cpu: no pass calls another."""
    int8 = next((p for p in passes if isinstance(p, Int8)), None)
    variants = [fp32]
    after_int8 = False
    for one in passes:
        for variant in one.run(variants, ctx):
            variants.append(variant)
            if after_int8 and variant.error is None:
                variants += int8.variants_of(variant, ctx)
        after_int8 = after_int8 or one is int8
    return variants
