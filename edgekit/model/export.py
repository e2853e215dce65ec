"""LoadedModel → one self-contained ONNX file with a dynamic batch axis, and a parity check.

ScriptModule → the TorchScript exporter, then torch's TorchScript → ExportedProgram converter
with the dynamo exporter. nn.Module → dynamo exporter, then the TorchScript exporter.
ExportedProgram → dynamo exporter. Each input is dynamic on its own batch axis (none for inputs
without one); non-tensor arguments (LoadedModel.constants) are baked in.
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
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgekit.accuracy import differences, first_samples, largest_finite, run_onnx
from edgekit.errors import EdgekitError
from edgekit.model.fused_kernels import fused_decompositions
from edgekit.model.inputs import InputSpec, batch_of
from edgekit.model.load import LoadedModel, one_line
from edgekit.model.samples import generate_samples, model_feeds
from edgekit.onnxfile import EXTERNAL_DATA_BYTES

TORCHSCRIPT_OPSET = 17
_EXPORT_BATCH = (
    2  # torch.export specializes sizes 0 and 1: trace with 2 so the batch stays symbolic
)
_VERIFY_BATCHES = (1, 4)
# Samples on which an exported (or rewritten) model is checked against its source.
PARITY_SAMPLES = 16


class _BatchError(EdgekitError):
    """The exported graph does not take a batch size other than the example's."""


def export_onnx(model: LoadedModel, specs: list[InputSpec], out_path: Path) -> dict:
    """Export to `out_path` atomically. Returns {"exporter", "opset", "notes", "fixed_batch",
    ...}: `fixed_batch` is the batch the graph is fixed at when a dynamic batch could not be
    exported, else None."""
    if model.module is None:
        raise EdgekitError(f"{model.path} is already ONNX ({model.format}); it needs no export.")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    feeds = generate_samples(specs, _EXPORT_BATCH, seed=0)
    args = _tensors(specs, feeds)
    names = [s.name for s in specs]
    output_names, outputs = torch_named_outputs(model, feeds, specs)
    output_names = [n if n not in names else f"{n}_out" for n in output_names]
    out_axes = _output_batch_axes(model, specs, outputs)

    tmp_dir = Path(
        tempfile.mkdtemp(prefix=f".{out_path.name}.", suffix=".export", dir=out_path.parent)
    )
    tmp_file = tmp_dir / out_path.name  # same name: an external-data file keeps the right link
    notes: list[str] = []
    try:
        attempts = _attempts(model, specs, args, names, output_names, out_axes, tmp_file, notes)
        exporter, errors = _first_that_works(
            attempts, tmp_dir, lambda: _verify(tmp_file, specs, out_axes)
        )
        fixed = None
        if exporter is None and any(_is_guard_error(exc) for _, exc in errors):
            # A dynamic batch axis turned sizes into data-dependent symbols the exporter cannot
            # reason about; with the batch fixed at the one the model is timed at, it can.
            fixed = batch_of(specs)
            fixed_args = _tensors(specs, generate_samples(specs, fixed, seed=0))
            attempts = _attempts(
                model, specs, fixed_args, names, output_names, out_axes, tmp_file, notes, False
            )
            exporter, more = _first_that_works(
                attempts, tmp_dir, lambda: _verify(tmp_file, specs, out_axes, fixed)
            )
            errors += [(f"{name} (batch {fixed})", exc) for name, exc in more]
        if exporter is None:
            raise _export_error(model, errors)
        for failed, exc in errors:
            notes.append(f"the {failed} exporter failed ({_short(exc)})")
        if errors:
            why = (
                "which records the path the example input takes through any data-dependent branches"
                if exporter == "torchscript"
                else "which exports the program torch's converter made of the TorchScript graph"
                if exporter == "torchscript-to-exportedprogram"
                else "which traces the Python code"
            )
            notes.append(f"used the {exporter} exporter instead, {why}")
        if fixed is not None:
            notes.append(
                f"the batch is fixed at {fixed} in the exported graph: exported with a dynamic "
                "batch, the exporter failed on a data-dependent size; the model runs, is timed "
                f"and is served at batch {fixed} only"
            )
        result = {
            "exporter": exporter,
            "opset": _opset(tmp_file),
            "notes": notes,
            "attempts": [
                *({"exporter": e, "error": _short(x)} for e, x in errors),
                {"exporter": exporter, "error": None},
            ],
            "output_names": output_names,
            "constants": {c.name: c.value for c in model.constants},
            "fixed_batch": fixed,
        }
        _move_into_place(tmp_dir, out_path)
        return result
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _tensors(specs: list[InputSpec], feeds: dict[str, np.ndarray]) -> tuple:
    import torch

    fed = model_feeds(feeds, specs)
    return tuple(torch.from_numpy(fed[s.name]) for s in specs)


def _first_that_works(attempts, tmp_dir: Path, verify) -> tuple[str | None, list]:
    """The name of the first exporter whose file passes `verify` (None if none did), and the
    (exporter, exception) of each one that failed before it."""
    errors: list[tuple[str, Exception]] = []
    for exporter, run in attempts:
        for stale in tmp_dir.iterdir():
            stale.unlink()
        try:
            with _quiet():
                run()
            verify()
        except Exception as exc:
            errors.append((exporter, exc))
            continue
        return exporter, errors
    return None, errors


# torch's words for a size it could not decide at export time (GuardOnDataDependentSymNode and
# friends): a symbolic batch that became an unbacked symbol inside the graph.
_GUARD_WORDS = ("data-dependent", "GuardOnDataDependentSymNode")


def _is_guard_error(exc: BaseException) -> bool:
    text = " ".join(f"{type(c).__name__}: {c}" for c in _causes(exc))
    return not isinstance(exc, _BatchError) and any(w in text for w in _GUARD_WORDS)


def torch_outputs(
    model: LoadedModel, feeds: dict[str, np.ndarray], specs: Sequence[InputSpec] = ()
) -> list[np.ndarray]:
    """Run the torch model on `feeds` (batch-first, in their order, fed in the layout `specs`
    give; constants bound); flattened outputs."""
    return torch_named_outputs(model, feeds, specs)[1]


def torch_named_outputs(
    model: LoadedModel, feeds: dict[str, np.ndarray], specs: Sequence[InputSpec] = ()
) -> tuple[list[str], list[np.ndarray]]:
    """The torch model's outputs on `feeds`, flattened (tuples, lists, dicts), with their names:
    `output` for a single tensor, dict keys for a dict, `output_<i>` for a sequence."""
    import torch
    from torch.utils._pytree import tree_flatten_with_path

    if model.module is None:
        raise EdgekitError(f"{model.path} is an ONNX file; there is no torch model to run.")
    module = _callable(model)
    fed = model_feeds(feeds, specs)
    tensors = [torch.from_numpy(a) for a in fed.values()]
    try:
        with torch.inference_mode():
            outputs = module(*_with_constants(tensors, model.constants))
    except Exception as exc:
        shapes = ", ".join(f"{k}: {tuple(v.shape)} {v.dtype}" for k, v in fed.items())
        shapes += "".join(f", {c.name}={c.value}" for c in model.constants)
        raise EdgekitError(
            f"Running the model on inputs [{shapes}] failed ({_raised(exc)}). Check the input "
            "shapes, dtypes and their order with --input NAME:SHAPE:DTYPE (or NAME=VALUE for a "
            "non-tensor argument), one per forward() argument, in order."
        ) from None
    leaves = [(path, t) for path, t in tree_flatten_with_path(outputs)[0]]
    tensors_out = [(path, t) for path, t in leaves if isinstance(t, torch.Tensor)]
    if not tensors_out:
        raise EdgekitError("The model returned no tensors; edgekit needs tensor outputs.")
    names = _output_names([path for path, _ in tensors_out])
    return names, [t.detach().cpu().numpy() for _, t in tensors_out]


def _with_constants(items: list, constants: list, take=lambda c: c.value) -> list:
    """forward()'s arguments: `items` (the tensors) with the bound constants at their positions;
    with `take=lambda c: c.name`, their names."""
    out = list(items)
    for constant in sorted(constants, key=lambda c: c.position):
        out.insert(constant.position, take(constant))
    return out


def _bake_constants(path: Path, constants: list) -> None:
    """Graph inputs named after the constants become initializers holding their values."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    values = {c.name: c.value for c in constants}
    kept = []
    for value in model.graph.input:
        if value.name not in values:
            kept.append(value)
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        array = np.array(values[value.name], dtype=dtype)
        model.graph.initializer.append(numpy_helper.from_array(array, value.name))
    del model.graph.input[:]
    model.graph.input.extend(kept)
    onnx.save(model, str(path))


def _output_batch_axes(
    model: LoadedModel, specs: list[InputSpec], two: list[np.ndarray]
) -> list[int | None]:
    """Each output's batch axis: the axis whose size follows the batch (`two`: the outputs for
    _EXPORT_BATCH samples, and those for one more); None for an output that does not depend on
    it. (A forward pass of a large model takes seconds: the outputs at hand are used.)"""
    if not any(s.batch_axis is not None for s in specs):
        return [None] * len(two)
    three = torch_outputs(model, generate_samples(specs, _EXPORT_BATCH + 1, seed=3), specs)
    axes = []
    for a, b in zip(two, three, strict=True):
        changed = [i for i, (x, y) in enumerate(zip(a.shape, b.shape, strict=False)) if x != y]
        axes.append(changed[0] if len(a.shape) == len(b.shape) and changed else None)
    return axes


def check_parity(
    model: LoadedModel,
    onnx_path: Path,
    feeds: dict[str, np.ndarray],
    specs: Sequence[InputSpec] = (),
) -> dict:
    """Compare torch and onnxruntime on the first PARITY_SAMPLES of the (batch-first) feeds.
    Fails past max(1e-3, 1e-3 * max|ref|)."""
    feeds = first_samples(onnx_path, feeds, PARITY_SAMPLES, specs)
    reference = torch_outputs(model, feeds, specs)
    got = run_onnx(Path(onnx_path), feeds, specs=specs)
    if len(got) != len(reference):
        raise EdgekitError(
            f"The ONNX model {onnx_path} has {len(got)} output(s) but the torch model has "
            f"{len(reference)}; they do not compute the same thing. Export again."
        )
    diffs = []
    for i, (ref, out) in enumerate(zip(reference, got, strict=True)):
        if ref.shape != out.shape:
            raise EdgekitError(
                f"Output {i} has shape {out.shape} in ONNX but {ref.shape} in torch; the export "
                "changed the model. Export again, or give an ONNX file you made yourself."
            )
        diffs.append(differences(ref, out).ravel())  # the same NaN or inf in both agrees
    scale = largest_finite(reference)
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


def _attempts(
    model, specs, args, names, output_names, out_axes, tmp_file, notes, dynamic_batch=True
):
    """(exporter name, callable) pairs to try in order; with `dynamic_batch` False, every axis
    keeps its size in `args`."""
    import torch

    batch = torch.export.Dim("batch")
    dynamic = tuple(
        None if spec.batch_axis is None or not dynamic_batch else {spec.batch_axis: batch}
        for spec in specs
    )
    dynamic_axes = {
        name: {axis: "batch"}
        for name, axis in [
            *((s.name, s.batch_axis) for s in specs),
            *zip(output_names, out_axes, strict=True),
        ]
        if axis is not None and dynamic_batch
    }
    external = _weight_bytes(model) > EXTERNAL_DATA_BYTES
    bound = _bound(model)

    def dynamo(module, shapes=dynamic):
        return lambda: torch.onnx.export(
            module,
            args,
            str(tmp_file),
            input_names=names,
            output_names=output_names,
            dynamic_shapes=None if isinstance(module, torch.export.ExportedProgram) else shapes,
            dynamo=True,
            external_data=external,
        )

    def torchscript():
        scripted = isinstance(model.module, torch.jit.ScriptModule) and model.constants
        # A ScriptModule cannot be traced inside a wrapper: export it with the constants as
        # graph inputs, then turn those inputs into initializers (baked in).
        torch.onnx.export(
            model.module if scripted else bound,
            tuple(_with_constants(args, model.constants)) if scripted else args,
            str(tmp_file),
            input_names=_with_constants(names, model.constants, lambda c: c.name)
            if scripted
            else names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=TORCHSCRIPT_OPSET,
            dynamo=False,
        )
        if scripted:
            _bake_constants(tmp_file, model.constants)

    def converted():
        """TorchScript → ExportedProgram (torch's converter; shapes fixed at the example), then
        re-exported with the dynamic batch axes and exported by the dynamo exporter."""
        from torch._export.converter import TS2EPConverter

        full = tuple(_with_constants(args, model.constants))
        program = TS2EPConverter(model.module, full).convert()
        program = program.run_decompositions(fused_decompositions())
        module = program.module()
        shapes = dynamic
        if model.constants:
            module, shapes = _Bound(module, model.constants), (dynamic,)  # forward(*tensors)
        program = torch.export.export(module, args, dynamic_shapes=shapes, strict=False)
        dynamo(program)()

    if isinstance(model.module, torch.jit.ScriptModule):
        return [("torchscript", torchscript), ("torchscript-to-exportedprogram", converted)]
    if isinstance(model.module, torch.export.ExportedProgram):
        program = model.module
        if _program_has_dynamic_batch(program) or not dynamic_batch:
            return [("dynamo", dynamo(program))]
        # Saved with a fixed batch (torch.export's default): re-trace its graph with a dynamic batch.
        notes.append("the .pt2 program had a fixed batch size; re-traced it with a dynamic batch")
        return [("dynamo", dynamo(_program_module(program)))]
    # the bound module and the explicit-state one take *tensors
    varargs = model.constants or bool(model.state)
    shapes = (dynamic,) if varargs else dynamic
    return [("dynamo", dynamo(bound, shapes)), ("torchscript", torchscript)]


def _bound(model: LoadedModel):
    """The module to export: the model itself, or with its constants bound."""
    if not model.constants:
        return model.module
    return _Bound(model.module, model.constants)


def _make_bound_class():
    import torch

    class Bound(torch.nn.Module):
        """forward(*tensors) = inner(*tensors with the constants at their positions)."""

        def __init__(self, inner, constants):
            super().__init__()
            self.inner = inner
            self.constants = constants

        def forward(self, *tensors):
            return self.inner(*_with_constants(tensors, self.constants))

    return Bound


def _Bound(inner, constants):  # noqa: N802 (a class made on first use: torch is imported lazily)
    global _BOUND_CLASS
    if _BOUND_CLASS is None:
        _BOUND_CLASS = _make_bound_class()
    return _BOUND_CLASS(inner, constants)


_BOUND_CLASS = None


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


def _verify(
    path: Path, specs: list[InputSpec], out_axes: list[int | None], fixed: int | None = None
) -> None:
    """Every input with a batch axis has it symbolic; at batch 1 and 4 (`fixed`: at that batch
    only, the graph may fix it) it runs and every output that follows the batch in torch has
    that batch on the same axis."""
    import onnx

    if fixed is not None:
        _run_at(path, specs, out_axes, fixed)
        return
    model = onnx.load(str(path), load_external_data=False)
    by_name = {s.name: s for s in specs}
    static = []
    for value in model.graph.input:
        spec = by_name.get(value.name)
        if spec is None or spec.batch_axis is None:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) <= spec.batch_axis or not dims[spec.batch_axis].dim_param:
            static.append(value.name)
    if static:
        raise _BatchError(f"the inputs {static} have a fixed batch axis in the exported graph")
    if not any(s.batch_axis is not None for s in specs):
        run_onnx(path, generate_samples(specs, 1), specs=specs)
        return
    for batch in _VERIFY_BATCHES:
        _run_at(path, specs, out_axes, batch)


def _run_at(path: Path, specs: list[InputSpec], out_axes: list[int | None], batch: int) -> None:
    try:
        outputs = run_onnx(
            path, generate_samples(specs, batch, seed=batch), chunk=batch, specs=specs
        )
    except Exception as exc:
        raise _BatchError(f"onnxruntime failed with batch {batch}: {_short(exc)}") from None
    shapes = [out.shape for out in outputs]
    if len(shapes) != len(out_axes) or any(
        axis is not None and (len(shape) <= axis or shape[axis] != batch)
        for shape, axis in zip(shapes, out_axes, strict=False)
    ):
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


def _output_names(paths: list) -> list[str]:
    """`output` for one tensor; a dict's keys (joined with `.` when nested); `output_<i>` for
    the i-th tensor of a sequence. Unique."""
    if len(paths) == 1 and not any(hasattr(k, "key") for k in paths[0]):
        return ["output"]
    names: list[str] = []
    for i, path in enumerate(paths):
        keys = [str(k.key) for k in path if hasattr(k, "key")]
        name = ".".join(keys) if keys else f"output_{i}"
        while name in names:
            name = f"{name}_{i}"
        names.append(name)
    return names


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
    nested = (
        " The model was traced through PyTorch's nested-tensor fast path (nn.TransformerEncoder "
        "with a padding mask, traced in eval mode without autograd): trace it again with "
        "enable_nested_tensor=False on the encoder, and edgekit exports it."
        if op and "nested_tensor" in op
        else ""
    )
    return EdgekitError(
        f"Exporting {model.path} to ONNX failed with {tried}: {what} "
        f"({_short(errors[-1][1])}).{nested} Export the model to ONNX yourself (rewriting or "
        f"replacing that part) and pass the .onnx file, or try a different torch version "
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
