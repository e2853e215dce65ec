"""Runtime variants: the float model on the other runtimes, in fp32 and int8.

The runtime is part of the variant: the same model in int8 runs at a different speed (and
drift) on OpenVINO, LiteRT or ExecuTorch than on onnxruntime. Each selected runtime that is
installed here gets its variants, measured and recommended like the ONNX ones:

  openvino-fp32, openvino-int8 (NNCF, on the samples the static ONNX int8 is calibrated on; its
  transformer scheme for MatMul-heavy models),
  openvino-<bf16|f16> (only where the CPU runs OpenVINO in a low precision by default),
  litert-fp32, litert-int8, executorch-fp32, executorch-int8 (from the torch module: PT2E static
  int8 on the same samples; an ONNX input file has no torch module to convert).

A conversion that fails is an error row with the reason; the others go on.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.passes import Pass, PassContext, Variant, float_parent

ORT = "onnxruntime"


@dataclass(frozen=True)
class RuntimeSettings:
    runtimes: tuple[str, ...] = ()  # the runtimes besides onnxruntime to make variants for
    notes: tuple[str, ...] = ()  # the runtimes not installed here, with their pip line


def select(asked: str | None) -> RuntimeSettings:
    """--runtime ort,openvino,... (None: every runtime installed here). A runtime asked for by
    name that is not installed is an EdgekitError with its pip line."""
    from edgekit import runtimes

    if asked is None:
        names, explicit = list(runtimes.MODULES), False
    else:
        names, explicit = [], True
        for text in asked.split(","):
            try:
                names.append(runtimes.module(text.strip()).NAME)
            except ValueError as exc:
                raise EdgekitError(f"Cannot read --runtime {asked!r}: {exc}.") from None
    chosen, missing = [], []
    for name in dict.fromkeys(names):
        if name == ORT:
            continue  # the ONNX variants are always made: the others start from them
        ok, why = runtimes.module(name).available()
        if ok:
            chosen.append(name)
        elif explicit:
            raise EdgekitError(
                f"--runtime {name}: it cannot run here ({why}). Install it with "
                f"`{runtimes.module(name).PIP}`, or leave it out of --runtime."
            )
        else:
            missing.append(f"{name} ({why}: `{runtimes.module(name).PIP}`)")
    notes = (f"runtimes not installed here, so not measured: {'; '.join(missing)}",)
    return RuntimeSettings(tuple(chosen), notes if missing else ())


@dataclass(frozen=True)
class Runtimes(Pass):
    """Each selected runtime's variants of the float model."""

    name: ClassVar[str] = "runtimes"
    settings: RuntimeSettings = RuntimeSettings()

    @classmethod
    def check(cls, options, specs, feeds) -> Runtimes:
        return cls(select(options.runtimes))

    def run(self, variants: list[Variant], ctx: PassContext) -> list[Variant]:
        ctx.notes.extend(self.settings.notes)
        parent = float_parent(variants)
        made: list[Variant] = []
        for runtime in self.settings.runtimes:
            with ctx.step(f"converting to {runtime}"):
                if runtime == "openvino":
                    made += _openvino(parent, ctx)
                else:
                    made += _from_torch(runtime, parent, ctx)
        return made


def _calibration(parent: Variant, ctx: PassContext) -> list[dict[str, np.ndarray]]:
    """The samples the static ONNX int8 is calibrated on, one model-layout batch each."""
    from edgekit.accuracy import fixed_batch
    from edgekit.passes.int8 import CALIBRATION_SAMPLES, _CalibrationReader

    samples = min(CALIBRATION_SAMPLES, len(next(iter(ctx.feeds.values()))))
    step = fixed_batch(parent.path, ctx.feeds, ctx.specs) or 1
    reader = _CalibrationReader(ctx, samples, step)
    return list(iter(reader.get_next, None))


def _make(parent: Variant, runtime: str, precision: str, settings: dict, convert) -> Variant:
    """The variant `<runtime>-<precision>`: convert(out) writes it; a failure is its error row."""
    from edgekit import runtimes
    from edgekit.runtimes import ConversionError

    name = f"{runtime}-{precision}"
    out = parent.path.parent / f"{name}{runtimes.module(runtime).SUFFIX}"
    settings = {"runtime": runtime, "precision": precision, **settings}
    try:
        with _quiet_stdout():
            convert(out)
        variant = parent.child(name, out, f"convert-{runtime}", settings)
    except ConversionError as exc:
        variant = parent.failed_child(name, f"convert-{runtime}", settings, str(exc))
    variant.runtime = runtime
    return variant


@contextlib.contextmanager
def _quiet_stdout():
    """Nothing on stdout (it carries `--json` reports): the converters print progress there,
    from Python (NNCF's bars, litert-torch's steps) and from C++."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        try:
            with contextlib.redirect_stdout(devnull):
                yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def _openvino(parent: Variant, ctx: PassContext) -> list[Variant]:
    from edgekit.runtimes import ov

    calibration = _calibration(parent, ctx)
    source = "--data" if ctx.data_is_real else "generated inputs"
    transformer = nncf_transformer(parent.path)
    made = [
        _make(parent, "openvino", "fp32", {"inference_precision": "f32"}, _ov(parent, "fp32")),
        _make(
            parent,
            "openvino",
            "int8",
            {
                "tool": "NNCF post-training quantization",
                "nncf_model_type": "transformer" if transformer else "default",
                "calibration_samples": sum(len(next(iter(c.values()))) for c in calibration),
                "calibration_data": source,
            },
            _ov(parent, "int8", calibration, transformer),
        ),
    ]
    low = ov.default_low_precision()
    if low:
        made.append(
            _make(parent, "openvino", low, {"inference_precision": low}, _ov(parent, "low"))
        )
    else:
        ctx.notes.append("no OpenVINO low-precision variant: this CPU runs it in f32 by default")
    return made


def _ov(parent: Variant, precision: str, calibration=None, transformer: bool = False):
    from edgekit.runtimes import ov

    return lambda out: ov.convert(parent.path, out, precision, calibration, transformer)


def nncf_transformer(path) -> bool:
    """Whether NNCF quantizes the model with its transformer scheme: for MatMul-heavy models, by
    the op mix the ONNX int8 recipes go by. On a MiniLM-shaped encoder NNCF's default scheme
    drifted to cosine 0.96, where its transformer scheme kept 1.0000."""
    import onnx

    from edgekit.passes.int8.opmix import op_mix

    mix = op_mix(onnx.load(str(path), load_external_data=False))
    return mix["matmul"] + mix["attention"] > mix["conv"]


def _is_torch_module(module) -> bool:
    """An nn.Module (torch is imported only when there is something to check: a run from an
    ONNX file does not import it for this)."""
    if module is None:
        return False
    import torch

    return isinstance(module, torch.nn.Module)


def _from_torch(runtime: str, parent: Variant, ctx: PassContext) -> list[Variant]:
    """fp32 and int8 from the torch module; without one, a note saying why not."""
    from edgekit import runtimes
    from edgekit.model.samples import model_feeds

    loaded = ctx.loaded
    module = getattr(loaded, "module", None)
    if loaded is None or loaded.format == "onnx" or not _is_torch_module(module):
        ctx.notes.append(
            f"no {runtime} variants: converting to {runtime} needs the PyTorch model "
            "(an nn.Module), and this run starts from "
            f"{'an ONNX file' if loaded is None or loaded.format == 'onnx' else loaded.format}"
        )
        return []
    import torch

    convert = runtimes.module(runtime).convert
    batch = ctx.batch  # the artifact's batch is fixed at the example's

    def batches(count: int) -> list[tuple]:
        total = len(next(iter(ctx.feeds.values())))
        return [
            tuple(
                torch.from_numpy(np.ascontiguousarray(a))
                for a in model_feeds(
                    {k: v[i : i + batch] for k, v in ctx.feeds.items()}, ctx.specs
                ).values()
            )
            for i in range(0, min(count, total) - batch + 1, batch)
        ]

    from edgekit.passes.int8 import CALIBRATION_SAMPLES

    example = batches(batch)[0]
    calibration = batches(CALIBRATION_SAMPLES)
    source = "--data" if ctx.data_is_real else "generated inputs"
    int8 = {
        "tool": "PT2E static quantization",
        "calibration_samples": len(calibration) * batch,
        "calibration_data": source,
    }
    return [
        _make(parent, runtime, "fp32", {"batch": batch}, lambda out: convert(module, example, out)),
        _make(
            parent,
            runtime,
            "int8",
            {"batch": batch, **int8},
            lambda out: convert(module, example, out, "int8", calibration),
        ),
    ]
