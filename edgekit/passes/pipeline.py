"""The passes `optimize()` runs, in order (the contract of a pass: edgekit.passes.Pass).

Adding a pass is a module in edgekit/passes with a Pass subclass, and its line in PIPELINE. A
pass with options of its own also reads them in its `check` from a field of OptimizeOptions (a
flag of `edgekit optimize`).
"""

from __future__ import annotations

import importlib

from edgekit.passes import Pass, PassContext, Variant
from edgekit.passes.int8 import Int8

# edgekit.passes.<module>.<class>. Runtimes comes before Int8: the pipeline makes ONNX int8 only
# of the float ONNX variants after Int8; the passes before Int8 rewrite the model it starts from.
PIPELINE = (
    "simplify.Simplify",
    "runtimes.Runtimes",
    "int8.Int8",
    "prune.Prune",
)


def pass_classes() -> list[type[Pass]]:
    """The classes PIPELINE names, in its order."""
    found = []
    for entry in PIPELINE:
        module, _, name = entry.rpartition(".")
        found.append(getattr(importlib.import_module(f"edgekit.passes.{module}"), name))
    return found


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
