"""LoadedModel → one self-contained ONNX file with a dynamic batch axis, and a parity check.

ScriptModule → TorchScript exporter (the only one that takes it). nn.Module → dynamo exporter,
falling back to the TorchScript exporter. ExportedProgram → dynamo exporter.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from edgekit.accuracy import run_onnx
from edgekit.errors import EdgekitError
from edgekit.model.inputs import InputSpec, generate_samples
from edgekit.model.load import LoadedModel, one_line

TORCHSCRIPT_OPSET = 17
_EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's hard limit is 2 GiB; leave headroom
_EXPORT_BATCH = (
    2  # torch.export specializes sizes 0 and 1: trace with 2 so the batch stays symbolic
)
_VERIFY_BATCHES = (1, 4)
# Samples on which an exported (or rewritten) model is checked against its source.
PARITY_SAMPLES = 16


class _BatchError(EdgekitError):
    """The exported graph does not take a batch size other than the example's."""


def export_onnx(model: LoadedModel, specs: list[InputSpec], out_path: Path) -> dict:
    """Export to `out_path` atomically. Returns {"exporter", "opset", "notes"}."""
    import torch

    if model.module is None:
        raise EdgekitError(f"{model.path} is already ONNX ({model.format}); it needs no export.")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    feeds = generate_samples(specs, _EXPORT_BATCH, seed=0)
    args = tuple(torch.from_numpy(feeds[s.name]) for s in specs)
    output_names = _output_names(torch_outputs(model, feeds))
    names = [s.name for s in specs]

    tmp_dir = Path(
        tempfile.mkdtemp(prefix=f".{out_path.name}.", suffix=".export", dir=out_path.parent)
    )
    tmp_file = tmp_dir / out_path.name  # same name: an external-data file keeps the right link
    notes: list[str] = []
    try:
        attempts = _attempts(model, args, names, output_names, tmp_file, notes)
        errors: list[tuple[str, Exception]] = []
        for exporter, run in attempts:
            for stale in tmp_dir.iterdir():
                stale.unlink()
            try:
                with _quiet():
                    run()
                _verify(tmp_file, specs)
            except Exception as exc:
                errors.append((exporter, exc))
                continue
            if errors:
                notes.append(
                    f"the {errors[0][0]} exporter failed ({_short(errors[0][1])}); "
                    f"used the {exporter} exporter instead, which records the path the example "
                    "input takes through any data-dependent branches"
                )
            result = {"exporter": exporter, "opset": _opset(tmp_file), "notes": notes}
            _move_into_place(tmp_dir, out_path)
            return result
        raise _export_error(model, errors)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def torch_outputs(model: LoadedModel, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run the torch model on `feeds` (in their order, batch axis first); flattened outputs."""
    import torch
    from torch.utils._pytree import tree_leaves

    if model.module is None:
        raise EdgekitError(f"{model.path} is an ONNX file; there is no torch model to run.")
    module = _callable(model)
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in feeds.values()]
    try:
        with torch.inference_mode():
            outputs = module(*tensors)
    except Exception as exc:
        shapes = ", ".join(f"{k}: {tuple(v.shape)} {v.dtype}" for k, v in feeds.items())
        raise EdgekitError(
            f"Running the model on inputs [{shapes}] failed ({_raised(exc)}). Check the input "
            "shapes, dtypes and their order with --input NAME:SHAPE:DTYPE, one per forward() "
            "argument, in order."
        ) from None
    leaves = [t for t in tree_leaves(outputs) if isinstance(t, torch.Tensor)]
    if not leaves:
        raise EdgekitError("The model returned no tensors; edgekit needs tensor outputs.")
    return [t.detach().cpu().numpy() for t in leaves]


def check_parity(model: LoadedModel, onnx_path: Path, feeds: dict[str, np.ndarray]) -> dict:
    """Compare torch and onnxruntime on the first PARITY_SAMPLES of the feeds. Fails past
    max(1e-3, 1e-3 * max|ref|)."""
    feeds = {k: v[:PARITY_SAMPLES] for k, v in feeds.items()}
    reference = torch_outputs(model, feeds)
    got = run_onnx(Path(onnx_path), feeds)
    if len(got) != len(reference):
        raise EdgekitError(
            f"The ONNX model {onnx_path} has {len(got)} output(s) but the torch model has "
            f"{len(reference)}; they do not compute the same thing. Export again."
        )
    diffs, scale = [], 0.0
    for i, (ref, out) in enumerate(zip(reference, got, strict=True)):
        if ref.shape != out.shape:
            raise EdgekitError(
                f"Output {i} has shape {out.shape} in ONNX but {ref.shape} in torch; the export "
                "changed the model. Export again, or give an ONNX file you made yourself."
            )
        ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
        diff = np.abs(ref64 - out64)
        diff[np.isnan(ref64) & np.isnan(out64)] = 0.0  # NaN in both is agreement
        diffs.append(diff.ravel())
        if ref64.size:
            scale = max(scale, float(np.nanmax(np.abs(ref64))))
    diff = np.concatenate(diffs)
    max_err = float(np.max(diff)) if diff.size else 0.0
    mean_err = float(np.mean(diff)) if diff.size else 0.0
    tolerance = max(1e-3, 1e-3 * scale)
    if not max_err <= tolerance:  # also catches NaN
        raise EdgekitError(
            f"The ONNX export does not match the torch model: max abs error {max_err:.4g} "
            f"(mean {mean_err:.4g}) is above the tolerance {tolerance:.4g} = max(1e-3, 1e-3 x "
            f"max|reference| {scale:.4g}). Look for layers left in training mode, random ops, or "
            "data-dependent control flow that the export froze; or export the model to ONNX "
            "yourself and pass the .onnx file."
        )
    return {"max_abs_err": max_err, "mean_abs_err": mean_err}


# ---------------------------------------------------------------------------- exporters


def _attempts(model, args, names, output_names, tmp_file, notes):
    """(exporter name, callable) pairs to try in order."""
    import torch

    batch = torch.export.Dim("batch")
    dynamic = tuple({0: batch} for _ in args)
    external = _weight_bytes(model) > _EXTERNAL_DATA_BYTES

    def dynamo(module):
        return lambda: torch.onnx.export(
            module,
            args,
            str(tmp_file),
            input_names=names,
            output_names=output_names,
            dynamic_shapes=None if isinstance(module, torch.export.ExportedProgram) else dynamic,
            dynamo=True,
            external_data=external,
        )

    def torchscript():
        torch.onnx.export(
            model.module,
            args,
            str(tmp_file),
            input_names=names,
            output_names=output_names,
            dynamic_axes={n: {0: "batch"} for n in [*names, *output_names]},
            opset_version=TORCHSCRIPT_OPSET,
            dynamo=False,
        )

    if isinstance(model.module, torch.jit.ScriptModule):
        return [("torchscript", torchscript)]
    if isinstance(model.module, torch.export.ExportedProgram):
        program = model.module
        if _program_has_dynamic_batch(program):
            return [("dynamo", dynamo(program))]
        # Saved with a fixed batch (torch.export's default): re-trace its graph with a dynamic batch.
        notes.append("the .pt2 program had a fixed batch size; re-traced it with a dynamic batch")
        return [("dynamo", dynamo(_program_module(program)))]
    return [("dynamo", dynamo(model.module)), ("torchscript", torchscript)]


def _program_has_dynamic_batch(program) -> bool:
    import torch

    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            value = node.meta.get("val")
            if not (isinstance(value, torch.Tensor) and value.dim() > 0):
                return False
            if not isinstance(value.shape[0], torch.SymInt):
                return False
    return True


def _verify(path: Path, specs: list[InputSpec]) -> None:
    """Every input has a symbolic batch axis; at batch 1 and 4 it runs and every output has
    that batch as axis 0."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    static = [
        value.name
        for value in model.graph.input
        if not value.type.tensor_type.shape.dim or not value.type.tensor_type.shape.dim[0].dim_param
    ]
    if static:
        raise _BatchError(f"the inputs {static} have a fixed batch axis in the exported graph")
    for batch in _VERIFY_BATCHES:
        try:
            outputs = run_onnx(path, generate_samples(specs, batch, seed=batch))
        except Exception as exc:
            raise _BatchError(f"onnxruntime failed with batch {batch}: {_short(exc)}") from None
        shapes = [out.shape for out in outputs]
        if any(not shape or shape[0] != batch for shape in shapes):
            raise _BatchError(f"with batch {batch} the outputs have shapes {shapes}")


def _move_into_place(tmp_dir: Path, out_path: Path) -> None:
    files = sorted(tmp_dir.iterdir(), key=lambda f: f.name == out_path.name)  # the .onnx last
    for file in files:
        os.replace(file, out_path.parent / file.name)
    if len(files) == 1:  # a data file left by an earlier, larger export no longer belongs
        (out_path.parent / f"{out_path.name}.data").unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress prints, logs and warnings (Python and C++ level).
    Exceptions still propagate."""
    sink = io.StringIO()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as devnull:
        try:
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
            with (
                warnings.catch_warnings(),
                contextlib.redirect_stdout(sink),
                contextlib.redirect_stderr(sink),
            ):
                warnings.simplefilter("ignore")
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


# ---------------------------------------------------------------------------- helpers


def _callable(model: LoadedModel):
    import torch

    if isinstance(model.module, torch.export.ExportedProgram):
        return _program_module(model.module)
    return model.module


def _program_module(program):
    """The program as a callable module without its input-shape guards: a program saved with a
    fixed batch (torch.export's default) would otherwise refuse every other batch size."""
    module = program.module(check_guards=False)
    for key, hook in list(module._forward_pre_hooks.items()):
        if getattr(hook, "__name__", "") == "_check_input_constraints_pre_hook":
            del module._forward_pre_hooks[key]
    return module


def _output_names(outputs: list) -> list[str]:
    return ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]


def _weight_bytes(model: LoadedModel) -> int:
    try:
        tensors = model.module.state_dict().values()
        return sum(t.numel() * t.element_size() for t in tensors)
    except Exception:
        return 0


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


_OP_PATTERNS = (
    re.compile(r"operator '([\w:.]+)'"),  # TorchScript exporter: Exporting the operator 'aten::x'
    re.compile(r"op='([\w.]+)'"),  # dynamo: <OpOverload(op='mylib.foo', overload='default')>
    re.compile(r"\b(\w+::\w+)"),  # any namespace::op mentioned
)


def _find_op(text: str) -> str | None:
    for pattern in _OP_PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


def _export_error(model: LoadedModel, errors: list[tuple[str, Exception]]) -> EdgekitError:
    import torch

    batch_errors = [exc for _, exc in errors if isinstance(exc, _BatchError)]
    if batch_errors and len(batch_errors) == len(errors):
        hint = (
            " For a .pt2 file, export the program with dynamic_shapes={'x': {0: torch.export.Dim("
            "'batch')}}."
            if model.format == "exported_program"
            else ""
        )
        return EdgekitError(
            f"The exported ONNX model of {model.path} does not take a dynamic batch size "
            f"({_short(batch_errors[-1])}). The model probably hard-codes its batch size, e.g. "
            f"x.view(1, -1): use x.flatten(1) or x.view(x.size(0), -1) instead.{hint}"
        )
    text = " ".join(_ANSI.sub("", str(cause)) for _, exc in errors for cause in _causes(exc))
    op = _find_op(text)
    what = f"the operator {op} is not supported by the ONNX exporter" if op else "the export failed"
    tried = " and ".join(f"the {name} exporter" for name, _ in errors)
    return EdgekitError(
        f"Exporting {model.path} to ONNX failed with {tried}: {what} "
        f"({_short(errors[-1][1])}). Export the model to ONNX yourself (rewriting or replacing "
        f"that part) and pass the .onnx file, or try a different torch version "
        f"(this is torch {torch.__version__})."
    )


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and what caused it; the exporters wrap the real reason in boilerplate."""
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)
    return chain


def _raised(exc: BaseException) -> str:
    """What forward() raised, as `Type: message`. A TorchScript error's own type and message
    are its last line, after the script's traceback."""
    text = _ANSI.sub("", str(exc)).strip()
    if "Traceback of TorchScript" in text:
        return one_line(text.splitlines()[-1], 500)
    return one_line(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, 500)


def _short(exc: BaseException, limit: int = 300) -> str:
    """The root cause in a line or two, e.g. `GuardOnDataDependentSymNode: Could not guard ...`."""
    root = _causes(exc)[-1]
    lines = [line.strip() for line in _ANSI.sub("", str(root)).splitlines() if line.strip()]
    text = f"{type(root).__name__}: {' '.join(lines[:2])}" if lines else type(root).__name__
    return one_line(text, limit)
