"""int8 quantization with onnxruntime's tools: the recipes the op mix calls for, with types chosen
for the CPU that will run the model (edgekit.cpus: --for-cpu, the --target device, or this
machine), and per-node sensitivity exclusion when a recipe breaks the budget."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx

from edgekit.cpus import int8_settings
from edgekit.passes import PassContext, PassFailed, Variant, attempt
from edgekit.passes.opmix import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION,
    Decision,
    Recipe,
    describe,
    op_mix,
    plan,
)

CALIBRATION_SAMPLES = 64

# The nodes each method quantizes (what sensitivity may keep in float).
_DYNAMIC_OPS = {"Conv", "MatMul", "Attention", "LSTM"}
_STATIC_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}

# (path to write, nodes to keep in float) → writes the quantized model
Quantizer = Callable[[Path, list[str]], None]


def check(options, specs, feeds) -> tuple[str, str, tuple[str, list[str]]]:
    """(--int8 mode, --calibration method, the (arch, features) of the CPU the variants are for)."""
    from edgekit import cpus
    from edgekit.errors import EdgekitError
    from edgekit.passes.opmix import MODES

    if options.int8 not in MODES or options.calibration not in CALIBRATION_METHODS:
        raise EdgekitError(
            f"--int8 takes one of {', '.join(MODES)} and --calibration one of "
            f"{', '.join(CALIBRATION_METHODS)}."
        )
    made_for = cpus.made_for(options)
    return options.int8, options.calibration, (made_for["arch"], list(made_for["features"]))


def run(variants: list[Variant], ctx: PassContext, settings) -> list[Variant]:
    from edgekit import cpus
    from edgekit.passes import float_parent

    made_for = cpus.made_for(ctx.options)
    ctx.notes.append(f"int8 variants made for {cpus.describe(made_for)} ({made_for.get('source')})")
    return int8_variants(float_parent(variants), ctx, *settings)


def _this_cpu() -> tuple[str, list[str]]:
    from edgekit import cpus

    here = cpus.this_machine()
    return here["arch"], here["features"]


def int8_variants(
    parent: Variant,
    ctx: PassContext,
    mode: str = "auto",
    calibration: str = DEFAULT_CALIBRATION,
    cpu: tuple[str, list[str]] | None = None,
) -> list[Variant]:
    """The int8 recipes worth trying for this model, each its own variant, plus an `-excl`
    variant where sensitivity exclusion brought an over-budget recipe back within budget."""
    arch, features = cpu or _this_cpu()
    types = {**int8_settings(arch, features), "cpu_arch": arch, "cpu_features": list(features)}
    # A pruned parent's children say what they were made from: structured-0.5+int8-static.
    prefix = "" if parent.name in ("fp32", "simplified") else f"{parent.name}+"
    mix = op_mix(onnx.load(str(parent.path), load_external_data=False))
    ctx.notes.append(f"int8 op mix of {parent.name}: {describe(mix)} (--int8 {mode})")
    variants = []
    for decision in plan(mix, mode):
        name = prefix + decision.recipe.name
        ctx.notes.append(decision.note(name))
        if decision.tried:
            settings = _settings(decision.recipe, types, calibration, ctx)
            variants += _recipe_variants(decision, name, parent, settings, ctx)
    return variants


def _recipe_variants(
    decision: Decision, name: str, parent: Variant, settings: dict, ctx: PassContext
) -> list[Variant]:
    """The recipe's variant and, when it is over budget, its sensitivity-fixed `-excl` one."""
    from edgekit.passes.sensitivity import fix_drift

    pass_name = f"quantize-{decision.recipe.method}"
    with tempfile.TemporaryDirectory(dir=ctx.staging, prefix=".int8-") as work:
        with ctx.step(f"quantizing: {name}"):
            quantizer, candidates, notes = _prepare(
                decision.recipe, parent, settings, Path(work), ctx
            )
            variant = attempt(
                parent,
                name,
                pass_name,
                settings,
                lambda: _make(parent, name, pass_name, settings, quantizer, [], ctx),
            )
        variant.notes += notes
        if not decision.fix_drift or variant.error or not candidates:
            return [variant]
        fixed = fix_drift(variant, quantizer, candidates, ctx)
        return [variant] if fixed is None else [variant, fixed]


def _settings(recipe: Recipe, types: dict, calibration: str, ctx: PassContext) -> dict:
    settings = {"method": recipe.method, "per_channel": recipe.per_channel, **types}
    dynamic_kernel = settings.pop("int8_kernel_dynamic", None)
    if recipe.method == "dynamic":
        settings["activation_type"] = "QUInt8 (quantized at run time)"
        if dynamic_kernel:  # u8 activations: onnxruntime's u8s8 kernel for this CPU
            settings["int8_kernel"] = dynamic_kernel
        return settings
    if calibration not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {calibration!r}")
    samples = min(CALIBRATION_SAMPLES, len(next(iter(ctx.feeds.values()))))
    settings.update(
        format="QDQ",
        pre_process="onnxruntime quant_pre_process",
        calibration=CALIBRATION_METHODS[calibration],
        calibration_samples=samples,
        calibration_data="--data" if ctx.data_is_real else "generated inputs",
    )
    return settings


def _prepare(
    recipe: Recipe, parent: Variant, settings: dict, work: Path, ctx: PassContext
) -> tuple[Quantizer | None, list[str], list[str]]:
    """A quantizer for this recipe, the nodes it quantizes (in graph order), and notes.
    Static work done once (pre-processing, calibration) is cached in `work` for every call."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    if recipe.method == "dynamic":
        from onnxruntime.quantization import quantize_dynamic

        model = onnx.load(str(parent.path), load_external_data=False)
        constants = {i.name for i in model.graph.initializer}
        candidates = [
            n.name
            for n in model.graph.node
            if n.op_type in _DYNAMIC_OPS
            # onnxruntime quantizes a dynamic MatMul only when B is a weight
            and (n.op_type != "MatMul" or n.input[1] in constants)
        ]

        def quantizer(out: Path, exclude: list[str]) -> None:
            quantize_dynamic(
                parent.path,
                out,
                weight_type=QuantType[settings["weight_type"]],
                per_channel=settings["per_channel"],
                reduce_range=settings["reduce_range"],
                nodes_to_exclude=exclude,
            )

        return _quiet(quantizer), candidates, []

    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre, cache = work / "pre.onnx", work / "calibration.json"
    try:
        with _silenced():
            quant_pre_process(str(parent.path), str(pre))
    except Exception as exc:
        return None, [], [f"onnxruntime's quant_pre_process failed ({exc})"]
    model = onnx.load(str(pre), load_external_data=False)
    candidates = [n.name for n in model.graph.node if n.op_type in _STATIC_OPS]
    samples = settings["calibration_samples"]
    source = "--data" if ctx.data_is_real else "generated random inputs (no --data)"
    notes = [f"calibrated ({settings['calibration']}) on {samples} samples from {source}"]
    if not ctx.data_is_real:
        notes[0] += ": real data may range differently; pass --data for trustworthy ranges"

    def quantizer(out: Path, exclude: list[str]) -> None:
        quantize_static(
            pre,
            out,
            _CalibrationReader(ctx.feeds, samples),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType[settings["activation_type"]],
            weight_type=QuantType[settings["weight_type"]],
            per_channel=settings["per_channel"],
            reduce_range=settings["reduce_range"],
            nodes_to_exclude=exclude,
            calibrate_method=CalibrationMethod[settings["calibration"]],
            calibration_cache_path=cache,  # calibrate once; sensitivity trials reuse the ranges
        )

    return _quiet(quantizer), candidates, notes


def _make(
    parent: Variant,
    name: str,
    pass_name: str,
    settings: dict,
    quantizer: Quantizer | None,
    exclude: list[str],
    ctx: PassContext,
) -> Variant:
    """Write the variant's file (atomically) and return the variant."""
    if quantizer is None:
        raise PassFailed("onnxruntime's quantization pre-processing failed; see the notes")
    out_path = ctx.path_for(name)
    with tempfile.TemporaryDirectory(dir=ctx.staging) as tmp:
        staged = Path(tmp) / out_path.name
        try:
            quantizer(staged, exclude)
        except Exception as exc:
            raise PassFailed(f"onnxruntime's {pass_name.replace('-', '_')} failed: {exc}") from None
        os.replace(staged, out_path)  # same folder: an atomic rename
    variant = parent.child(name, out_path, pass_name, settings)
    ops = {n.op_type for n in onnx.load(str(out_path), load_external_data=False).graph.node}
    if "ConvInteger" in ops:
        variant.notes.append(
            "dynamic int8 turned Conv into ConvInteger, which has no fast CPU kernel: "
            "compare its measured latency with fp32"
        )
    return variant


class _CalibrationReader:
    """onnxruntime's CalibrationDataReader over the first `samples` feeds, one per call: that
    also fits models whose batch axis is fixed at 1."""

    def __init__(self, feeds: dict, samples: int) -> None:
        self._batches = iter({k: v[i : i + 1] for k, v in feeds.items()} for i in range(samples))

    def get_next(self) -> dict | None:
        return next(self._batches, None)


@contextlib.contextmanager
def _silenced():
    """onnxruntime's quantization tools log warnings and print; the report says what matters."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def _quiet(quantizer: Quantizer) -> Quantizer:
    def run(out: Path, exclude: list[str]) -> None:
        with _silenced():
            quantizer(out, exclude)

    return run
