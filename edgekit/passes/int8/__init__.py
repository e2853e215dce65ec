"""int8 quantization with onnxruntime's tools: the recipes the op mix calls for, with types chosen
for the CPU that will run the model (edgekit.cpus: --for-cpu, the --target device, or this
machine), and per-node sensitivity exclusion when a recipe breaks the budget. The pass is here;
its helpers beside it: opmix (which recipes the op mix calls for), outliers (the outlier-channel
rewrites), sensitivity (the nodes to keep in float)."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import onnx

from edgekit.accuracy import fixed_batch
from edgekit.cpus import int8_settings
from edgekit.model.samples import model_feeds
from edgekit.passes import Pass, PassContext, PassFailed, Variant, attempt
from edgekit.passes.int8 import outliers
from edgekit.passes.int8.opmix import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION,
    DYNAMIC,
    DYNAMIC_PC,
    OUTLIERS,
    SMOOTH,
    Decision,
    Recipe,
    describe,
    op_mix,
    plan,
)
from edgekit.passes.int8.outliers import OUTLIER_RATIO
from edgekit.passes.int8.sensitivity import fix_drift

CALIBRATION_SAMPLES = 64

MAX_SEARCHES = 2  # sensitivity searches per parent, the closest recipes first
NBITS_BLOCK = 32  # MatMulNBits: weights quantized in blocks of 32 along K
NBITS_ACCURACY_LEVEL = 4  # int8 compute inside MatMulNBits (activations quantized per block)

# (path to write, nodes to keep in float) → writes the quantized model
Quantizer = Callable[[Path, list[str]], None]


@dataclass(frozen=True)
class Int8Settings:
    mode: str = "auto"  # --int8: one of opmix.MODES
    calibration: str = DEFAULT_CALIBRATION  # --calibration: one of CALIBRATION_METHODS


@dataclass(frozen=True)
class Int8(Pass):
    """The int8 variants of the float model the passes before it built (float_parent); the
    pipeline also calls `variants_of` on every float variant a later pass makes."""

    name: ClassVar[str] = "int8"
    settings: Int8Settings = Int8Settings()

    @classmethod
    def check(cls, options, specs, feeds) -> Int8:
        from edgekit.errors import EdgekitError
        from edgekit.passes.int8.opmix import MODES

        if options.int8 not in MODES or options.calibration not in CALIBRATION_METHODS:
            raise EdgekitError(
                f"--int8 takes one of {', '.join(MODES)} and --calibration one of "
                f"{', '.join(CALIBRATION_METHODS)}."
            )
        return cls(Int8Settings(options.int8, options.calibration))

    def run(self, variants: list[Variant], ctx: PassContext) -> list[Variant]:
        from edgekit import cpus
        from edgekit.passes import float_parent

        ctx.notes.append(
            f"int8 variants made for {cpus.describe(ctx.cpu)} ({ctx.cpu.get('source')})"
        )
        return self.variants_of(float_parent(variants), ctx)

    def variants_of(self, parent: Variant, ctx: PassContext) -> list[Variant]:
        return int8_variants(parent, ctx, self.settings.mode, self.settings.calibration)


def int8_variants(
    parent: Variant,
    ctx: PassContext,
    mode: str = "auto",
    calibration: str = DEFAULT_CALIBRATION,
) -> list[Variant]:
    """The int8 recipes worth trying for this model, each its own variant; when none is within
    the drift budget, `-excl` variants that keep the most sensitive nodes in float (the closest
    recipe first, until one is within budget: edgekit.passes.int8.sensitivity), made for the
    CPU in ctx.cpu. The report's notes say what each recipe reached against the budget."""
    arch, features = ctx.cpu["arch"], ctx.cpu["features"]
    types = {**int8_settings(arch, features), "cpu_arch": arch, "cpu_features": list(features)}
    # A pruned parent's children say what they were made from: structured-0.5+int8-static.
    prefix = "" if parent.name in ("fp32", "simplified") else f"{parent.name}+"
    mix = op_mix(onnx.load(str(parent.path), load_external_data=False))
    ctx.notes.append(f"int8 op mix of {parent.name}: {describe(mix)} (--int8 {mode})")
    # Quantization is judged against the float model it quantizes. A pruned parent's own drift
    # from fp32 is pruning's: no node kept in float can take it back, so it must not send the
    # sensitivity search after it. (The report still gives every variant's drift against fp32.)
    reference = ctx.reference if not prefix else ctx.outputs(parent.path)
    with contextlib.ExitStack() as stack:
        made = []  # (decision, variant, quantizer, nodes the recipe keeps in float)
        drifts: dict[str, tuple] = {}
        for decision in plan(mix, mode):
            name = prefix + decision.recipe.name
            beaten = _cannot_win(decision.recipe, made, drifts) if mode == "auto" else None
            if decision.tried and beaten:
                ctx.notes.append(f"{name}: skipped — cannot win: {beaten}")
                continue
            ctx.notes.append(decision.note(name))
            if not decision.tried:
                continue
            with ctx.step(f"quantizing: {name}"):
                work = Path(stack.enter_context(_workdir(ctx)))
                settings = _settings(decision.recipe, types, calibration, ctx)
                for one in _recipe_variant(decision, name, parent, settings, work, ctx):
                    made.append(one)
                    if not one[1].error:  # now: whether the next recipes can still win
                        drifts[one[1].name] = _drift(one[1], ctx, reference)
        fixed = _fix_closest(made, drifts, ctx, reference, parent.name if prefix else "fp32")
    variants = []
    for _, variant, _, _ in made:
        variants += [variant, *fixed.get(variant.name, [])]
    if drifts:
        ctx.notes.append(_outcome(drifts, ctx, parent.name if prefix else None))
    return variants


# A recipe that does the work of an earlier one, and more, cannot be faster than it; its only
# purpose is less drift. Once the earlier one is within budget it cannot win (the recommendation
# is the fastest variant within budget), so it is not made. recipe → (earlier recipe, why).
_NO_FASTER_THAN = {
    DYNAMIC_PC.name: [
        (DYNAMIC.name, "the same int8 ops on the same shapes, only its weight scales differ"),
    ],
    SMOOTH.name: [
        (DYNAMIC.name, "that recipe's int8 MatMuls per channel, plus a Mul per outlier input "
         "where the scale cannot go into a LayerNorm"),
        (DYNAMIC_PC.name, "the same int8 MatMuls, plus a Mul per outlier input where the scale "
         "cannot go into a LayerNorm"),
    ],
    OUTLIERS.name: [
        (DYNAMIC.name, "that recipe's int8 MatMuls per channel, plus a float MatMul and an Add "
         "beside each"),
        (DYNAMIC_PC.name, "the same int8 MatMuls, plus a float MatMul and an Add beside each"),
        (SMOOTH.name, "the same int8 MatMuls and at least its Muls, plus a float MatMul and an "
         "Add beside each"),
    ],
}  # fmt: skip


def _cannot_win(recipe: Recipe, made: list[tuple], drifts: dict) -> str | None:
    """Why `recipe` cannot be the recommendation, given the recipes already made; else None."""
    within = {d.recipe.name: v.name for d, v, _, _ in made if drifts.get(v.name, (False,))[0]}
    for earlier, what in _NO_FASTER_THAN.get(recipe.name, []):
        if earlier in within:
            return (
                f"{within[earlier]} is within the drift budget, and this recipe runs {what}: "
                f"it cannot be faster than {within[earlier]}"
            )
    return None


def _fix_closest(
    made: list[tuple], drifts: dict, ctx: PassContext, reference: list, against: str
) -> dict[str, list[Variant]]:
    """While no recipe is within budget, the sensitivity search on the over-budget ones, the
    closest first, until one comes back within budget; at most MAX_SEARCHES of them (each costs
    a minute or so on 2 cores for a 6-layer encoder)."""
    fixed: dict[str, list[Variant]] = {}
    order = sorted(
        (m for m in made if m[1].name in drifts and m[0].fix_drift),
        key=lambda m: -drifts[m[1].name][2],
    )
    searches = 0
    for _decision, variant, quantizer, keep in order:
        within = [n for n, (ok, _, _) in drifts.items() if ok]
        if variant.name in within:
            continue
        why = (
            f"{within[0]} is within budget"
            if within
            else f"{MAX_SEARCHES} closer recipe(s) were searched first"
            if searches == MAX_SEARCHES
            else None
        )
        if why:
            ctx.notes.append(
                f"{variant.name}: over budget ({drifts[variant.name][1]}); no sensitivity "
                f"search, {why}"
            )
            continue
        searches += 1
        excl = fix_drift(variant, quantizer, ctx, keep, reference, against)
        if excl is not None:
            fixed[variant.name] = [excl]
            drifts[excl.name] = _drift(excl, ctx, reference)
    return fixed


def _workdir(ctx: PassContext):
    return tempfile.TemporaryDirectory(dir=ctx.staging, prefix=".int8-")


def _drift(variant: Variant, ctx: PassContext, reference: list) -> tuple[bool, str, float]:
    """(within budget, the measured value as text, how close: higher is closer), against
    `reference`: the outputs of the float model the variant quantizes."""
    from edgekit.accuracy import drift
    from edgekit.passes.int8.sensitivity import metric_value

    baseline = drift(reference, reference, ctx.labels)[0]
    accuracy = drift(reference, ctx.outputs(variant.path), ctx.labels)[0]
    ok, text = ctx.budget.check(accuracy, baseline)
    value = metric_value(accuracy, baseline, ctx.budget)
    if value is None:
        return ok, text, -math.inf
    return ok, text, -value if ctx.budget.metric == "accuracy-drop" else value


def _outcome(drifts: dict[str, tuple], ctx: PassContext, pruned: str | None) -> str:
    """Every int8 variant's drift against the budget, in one note: nothing hidden."""
    each = "; ".join(f"{n} {text}{'' if ok else ' (over)'}" for n, (ok, text, _) in drifts.items())
    against = (
        f" (quantization alone: drift against {pruned}, the pruned float model; the variants' "
        "drift against fp32 is in the table)"
        if pruned
        else ""
    )
    if any(ok for ok, _, _ in drifts.values()):
        return f"int8 drift against the budget {ctx.budget}{against}: {each}"
    return (
        f"no int8 recipe reached the budget {ctx.budget}{against}: {each}; the float model "
        "stays the recommendation unless another variant is within budget and faster"
    )


def _recipe_variant(
    decision: Decision, name: str, parent: Variant, settings: dict, work: Path, ctx: PassContext
) -> list[tuple]:
    """[(decision, the recipe's variant, its quantizer, nodes it keeps in float)]; [] when the
    recipe has nothing to do for this model (a note says so)."""
    pass_name = {"weight-only": "quantize-weight-only"}.get(
        decision.recipe.method, f"quantize-{decision.recipe.method}"
    )
    quantizer, keep, notes = _prepare(decision.recipe, parent, settings, work, ctx)
    if quantizer is None and decision.recipe.outliers:
        ctx.notes.append(f"{name}: {notes[0]}")
        return []
    if keep:
        settings = {**settings, "nodes_to_exclude": list(keep)}
    variant = attempt(
        parent,
        name,
        pass_name,
        settings,
        lambda: _make(parent, name, pass_name, settings, quantizer, [], ctx),
    )
    variant.notes += notes
    return [(decision, variant, quantizer, keep)]


def _settings(recipe: Recipe, types: dict, calibration: str, ctx: PassContext) -> dict:
    if recipe.method == "weight-only":
        return {
            "method": "weight-only",
            "tool": "onnxruntime MatMulNBitsQuantizer",
            "bits": recipe.bits,
            "block_size": NBITS_BLOCK,
            "symmetric": True,
            "accuracy_level": NBITS_ACCURACY_LEVEL,
            "activation_type": "float (weights dequantized in the kernel)",
            "cpu": types["cpu"],
            "cpu_features": types["cpu_features"],
        }
    settings = {"method": recipe.method, "per_channel": recipe.per_channel, **types}
    dynamic_kernel = settings.pop("int8_kernel_dynamic", None)
    if recipe.method == "dynamic":
        settings["activation_type"] = "QUInt8 (quantized at run time)"
        if dynamic_kernel:  # u8 activations: onnxruntime's u8s8 kernel for this CPU
            settings["int8_kernel"] = dynamic_kernel
        if recipe.outliers:
            settings["outlier_channels"] = {
                "threshold": f"peak above {OUTLIER_RATIO:g}x the median channel's",
                "handling": {
                    "smooth": "scaled into the weights (SmoothQuant migration, alpha 1)",
                    "split": "kept in float beside the int8 MatMul (LLM.int8() decomposition)",
                }[recipe.outliers],
            }
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
) -> tuple[Quantizer | None, tuple[str, ...], list[str]]:
    """A quantizer for this recipe, the nodes the recipe itself keeps in float, and notes.
    Work done once (pre-processing, calibration, the outlier split) is cached in `work`."""
    if recipe.method == "weight-only":
        return _weight_only(recipe, parent), (), []
    if recipe.method == "dynamic":
        return _dynamic(recipe, parent, settings, work, ctx)
    return _static(parent, settings, work, ctx)


def _dynamic(recipe: Recipe, parent: Variant, settings: dict, work: Path, ctx: PassContext):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, keep, notes = parent.path, (), []
    if recipe.outliers:
        found = outliers.find(parent.path, ctx.feeds, ctx.specs)
        if not found:
            why = (
                f"no MatMul input has channels above {OUTLIER_RATIO:g}x the median channel's "
                "peak: nothing to rewrite (int8-dynamic-pc is the same recipe)"
            )
            return None, (), [why]
        source = work / f"{recipe.outliers}.onnx"
        settings["outlier_channels"]["found"] = {x: sorted(c) for x, c in found.items()}
        peaks = sorted(r for c in found.values() for r in c.values())
        where = (
            f"{min(len(c) for c in found.values())}–{max(len(c) for c in found.values())} "
            f"channels at {peaks[0]:.0f}–{peaks[-1]:.0f}x the median channel's peak on each of "
            f"{len(found)} MatMul inputs (found on {outliers.SAMPLES} samples)"
        )
        if recipe.outliers == "smooth":
            how = outliers.smooth(parent.path, source, found)
            folded = sum(": into " in h for h in how)
            notes.append(
                f"outlier channels scaled into the weights that read them: {where}; the scale "
                f"folded into {folded} LayerNorm(s), {len(how) - folded} Mul(s) added"
            )
        else:
            keep = tuple(outliers.decompose(parent.path, source, found))
            notes.append(f"outlier channels kept in float beside {len(keep)} int8 MatMuls: {where}")

    def quantizer(out: Path, exclude: list[str]) -> None:
        quantize_dynamic(
            source,
            out,
            weight_type=QuantType[settings["weight_type"]],
            per_channel=settings["per_channel"],
            reduce_range=settings["reduce_range"],
            nodes_to_exclude=[*keep, *exclude],
        )

    return _quiet(quantizer), keep, notes


def _static(parent: Variant, settings: dict, work: Path, ctx: PassContext):
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    pre, cache = work / "pre.onnx", work / "calibration.json"
    notes = []
    try:
        _pre_process(parent.path, pre)
    except _SymbolicShapesFailed as exc:
        notes.append(
            f"quant_pre_process: onnxruntime's symbolic shape inference failed ({exc}); "
            "pre-processed without it (ONNX shape inference and graph optimization only)"
        )
    except Exception as exc:
        return None, (), [f"onnxruntime's quant_pre_process failed ({exc})"]
    samples = settings["calibration_samples"]
    source = "--data" if ctx.data_is_real else "generated random inputs (no --data)"
    notes.insert(0, f"calibrated ({settings['calibration']}) on {samples} samples from {source}")
    if not ctx.data_is_real:
        notes[0] += ": real data may range differently; pass --data for trustworthy ranges"

    def quantizer(out: Path, exclude: list[str]) -> None:
        quantize_static(
            pre,
            out,
            _CalibrationReader(ctx, samples, fixed_batch(parent.path, ctx.feeds, ctx.specs) or 1),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType[settings["activation_type"]],
            weight_type=QuantType[settings["weight_type"]],
            per_channel=settings["per_channel"],
            reduce_range=settings["reduce_range"],
            nodes_to_exclude=exclude,
            calibrate_method=CalibrationMethod[settings["calibration"]],
            calibration_cache_path=cache,  # calibrate once; sensitivity trials reuse the ranges
        )

    return _quiet(quantizer), (), notes


class _SymbolicShapesFailed(Exception):
    pass


def _pre_process(source: Path, out: Path) -> None:
    """onnxruntime's quant_pre_process; its symbolic shape inference fails on many exported
    transformers (an Expand whose target shape it cannot compute): then without that step, and
    _SymbolicShapesFailed says why (the file is written)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with _silenced(out.parent):
            quant_pre_process(str(source), str(out))
        return
    except Exception as exc:
        first = f"{type(exc).__name__}: {exc}"
    with _silenced(out.parent):
        quant_pre_process(str(source), str(out), skip_symbolic_shape=True)
    raise _SymbolicShapesFailed(first)


def _weight_only(recipe: Recipe, parent: Variant) -> Quantizer:
    """MatMulNBits: weights in `bits`-bit blocks, activations float (int8 inside the kernel at
    accuracy level 4)."""

    def quantizer(out: Path, exclude: list[str]) -> None:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        model = onnx.load(str(parent.path))
        quant = MatMulNBitsQuantizer(
            model,
            bits=recipe.bits,
            block_size=NBITS_BLOCK,
            is_symmetric=True,
            accuracy_level=NBITS_ACCURACY_LEVEL,
            nodes_to_exclude=list(exclude),
        )
        quant.process()
        onnx.save(quant.model.model, str(out))

    return _quiet(quantizer)


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
    """onnxruntime's CalibrationDataReader over the first `samples` of ctx.feeds, `step` per
    call (one, or the batch a model fixes on its batch axis), in the model's layout."""

    def __init__(self, ctx: PassContext, samples: int, step: int = 1) -> None:
        starts = range(0, max(samples, step) - step + 1, step)
        self._batches = iter(
            model_feeds({k: v[i : i + step] for k, v in ctx.feeds.items()}, ctx.specs)
            for i in starts
        )

    def get_next(self) -> dict | None:
        return next(self._batches, None)


_CONTAINED = threading.Lock()  # the working directory and tempfile's folder are per process


@contextlib.contextmanager
def _silenced(work: Path):
    """onnxruntime's quantization tools log warnings and print (the report says what matters),
    and write temporary files to the current directory (symbolic shape inference saves
    `sym_shape_infer_temp.onnx` and a uuid-named .data file there when it gives up) and to the
    system's temporary folder (quant_pre_process, quantize_static): they run with both pointing
    to a new folder in `work`, which is in the staging folder (removed on every exit, swept
    after a kill). Paths given to the tools must be absolute."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with _CONTAINED, tempfile.TemporaryDirectory(dir=work, prefix=".ort-") as tmp:
            cwd = os.open(".", getattr(os, "O_PATH", os.O_RDONLY))
            saved, tempfile.tempdir = tempfile.tempdir, tmp
            try:
                os.chdir(tmp)
                with contextlib.redirect_stdout(io.StringIO()):
                    yield
            finally:
                os.fchdir(cwd)
                os.close(cwd)
                tempfile.tempdir = saved
    finally:
        logging.disable(previous)


def _quiet(quantizer: Quantizer) -> Quantizer:
    def run(out: Path, exclude: list[str]) -> None:
        with _silenced(out.parent):
            quantizer(out, exclude)

    return run
