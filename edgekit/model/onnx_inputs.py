"""The inputs an ONNX file declares, read by onnxruntime, and the --input specs checked against
them. Torch-free: the device side uses it too."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.model.inputs import (
    Constant,
    InputSpec,
    default_range,
    parse_constant,
    parse_input_spec,
)
from edgekit.runtimes.ort import DTYPES as ONNX_DTYPES  # ORT's type strings -> numpy dtypes


@dataclass(frozen=True)
class FileInput:
    """One input as an ONNX file declares it: each axis's size, or None where the file leaves
    it unknown (symbolic); `dtype` is None for a type edgekit cannot make samples of."""

    name: str
    dims: tuple[int | None, ...]
    dtype: str | None
    onnx_type: str
    declared: str  # the shape as the file writes it, e.g. [2, 'batch', 128]


@dataclass(frozen=True)
class OnnxInputs:
    """The inputs an ONNX file declares: `specs()` takes everything from the file; `resolve()`
    puts the user's --input first and checks each against the file."""

    inputs: tuple[FileInput, ...]

    @classmethod
    def read(cls, path: Path) -> OnnxInputs:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: failures come back as exceptions
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return cls(
            tuple(
                FileInput(
                    arg.name,
                    tuple(d if isinstance(d, int) and d >= 0 else None for d in arg.shape),
                    ONNX_DTYPES.get(arg.type),
                    arg.type,
                    str(arg.shape),
                )
                for arg in session.get_inputs()
            )
        )

    def specs(self, arrays: dict[str, np.ndarray] | None = None) -> list[InputSpec]:
        """Specs from the file (and the --data `arrays`). The first unknown axis of an input is
        its batch axis (size 1); any other unknown axis takes its size from the input's data
        array, else is an error that asks for `--input`. A rank-0 input, and a fully fixed input
        of a model whose other inputs have an unknown axis, have no batch axis."""
        if not self.inputs:
            raise _no_inputs()
        any_unknown = any(d is None for i in self.inputs for d in i.dims)
        specs = []
        for one in self.inputs:
            dims: list[int] = []
            batch_axis = None
            for axis, dim in enumerate(one.dims):
                if dim == 0:
                    raise EdgekitError(
                        f"The model's input {one.name!r} has size 0 on axis {axis} (shape "
                        f"{one.declared}): the graph declares a tensor with no elements, usually "
                        "because the model was exported from an empty example input. Export it "
                        "again from an example with every axis at least 1."
                    )
                array = (arrays or {}).get(one.name)
                if dim is not None:
                    dims.append(dim)
                elif batch_axis is None:
                    batch_axis = axis
                    dims.append(1)
                elif array is not None and array.ndim == len(one.dims):
                    dims.append(array.shape[axis])
                else:
                    example = "x".join(
                        "B" if a == batch_axis else str(d or "N") for a, d in enumerate(one.dims)
                    )
                    raise EdgekitError(
                        f"The model's input {one.name!r} has an unknown size on axis {axis} "
                        f"(shape {one.declared}). Give it explicitly, e.g. `--input {one.name}:"
                        f"{example}:{one.dtype or 'float32'}` with real numbers for N (B marks "
                        "the batch axis)."
                    )
            dtype = _supported(one)
            if batch_axis is None and dims and not any_unknown:
                batch_axis = 0  # every axis fixed (batch 1 baked in): axis 0 is still the batch
            specs.append(InputSpec(one.name, tuple(dims), dtype, *default_range(dtype), batch_axis))
        return specs

    def resolve(self, texts: Sequence[str]) -> list[InputSpec]:
        """The user's --input specs, checked against the file, in the file's order; an input the
        user left out comes from the file. NAME=VALUE feeds that input the value on every run."""
        by_name = {one.name: one for one in self.inputs}
        given: dict[str, InputSpec] = {}
        for text in texts:
            constant = parse_constant(text, 0)
            name = constant.name if constant else text.strip().split(":", 1)[0]
            one = by_name.get(name)
            if one is None:
                known = ", ".join(f"{i.name} {i.declared}" for i in self.inputs) or "none"
                raise EdgekitError(
                    f"--input {text!r} names {name!r}, which is not an input of this ONNX model "
                    f"(its inputs: {known}). Name each --input after one of them."
                )
            if name in given:
                raise EdgekitError(f"--input names {name!r} twice; give each input once.")
            if constant is not None:
                given[name] = _fed_constant(one, constant, text)
            else:
                given[name] = _checked_against(
                    parse_input_spec(text, one.dtype or "float32"), one, text
                )
        rest = OnnxInputs(tuple(i for i in self.inputs if i.name not in given))
        from_file = {s.name: s for s in rest.specs()} if rest.inputs else {}
        return [given.get(one.name) or from_file[one.name] for one in self.inputs]


def _supported(one: FileInput) -> str:
    if one.dtype is None:
        raise EdgekitError(
            f"The model's input {one.name!r} has type {one.onnx_type}, which edgekit cannot "
            "generate samples for. Supply real data with `--data FILE.npz`."
        )
    return one.dtype


def _no_inputs() -> EdgekitError:
    return EdgekitError(
        "This ONNX model takes no inputs: it computes the same outputs on every run, from "
        "constants alone, so there is nothing to feed it, no drift to measure and no latency that "
        "means anything for a model that takes data. Check that this is the model you meant; a "
        "model exported without its inputs (e.g. torch.onnx.export with the inputs folded into "
        "constants) must be exported again with its inputs as graph inputs."
    )


def _checked_against(spec: InputSpec, one: FileInput, text: str) -> InputSpec:
    """`spec` (from --input) if it fits the file's declared rank, fixed sizes and dtype."""
    dtype = _supported(one)
    fix = f"The file declares {one.name!r} as {dtype} of shape {one.declared}"
    if len(spec.shape) != len(one.dims):
        raise EdgekitError(
            f"--input {text!r} gives {one.name!r} {len(spec.shape)} axes, but the model's input "
            f"has {len(one.dims)}. {fix}: give one size per axis (scalar for rank 0)."
        )
    wrong = [
        (axis, dim, size)
        for axis, (dim, size) in enumerate(zip(one.dims, spec.shape, strict=True))
        if dim is not None and dim != size and axis != spec.batch_axis
    ]
    if spec.batch_axis is not None and one.dims[spec.batch_axis] not in (None, spec.batch):
        wrong.append((spec.batch_axis, one.dims[spec.batch_axis], spec.batch))
    if wrong:
        axis, dim, size = wrong[0]
        raise EdgekitError(
            f"--input {text!r} gives {one.name!r} size {size} on axis {axis}, but the model fixes "
            f"that axis at {dim}. {fix}: keep its fixed sizes (and mark the batch axis with B "
            "where it is unknown, e.g. 2xBx128)."
        )
    if spec.dtype != dtype:
        raise EdgekitError(
            f"--input {text!r} gives {one.name!r} the dtype {spec.dtype}, but the model takes "
            f"{dtype}. {fix}: give {dtype} (or leave the dtype out)."
        )
    return spec


def _fed_constant(one: FileInput, constant: Constant, text: str) -> InputSpec:
    """`sr=16000` for an ONNX model: the input stays a graph input and every run feeds it
    that value (no batch axis; an unknown axis of the input is 1)."""
    dtype = _supported(one)
    value = constant.value
    whole = isinstance(value, bool) or float(value).is_integer()
    if (dtype == "bool") != isinstance(value, bool) or (dtype[0] in "iu" and not whole):
        raise EdgekitError(
            f"--input {text!r} feeds {one.name!r} the value {value!r}, but the model's input is "
            f"{dtype}. Give a value of that type (true/false for bool, a whole number for an "
            "integer input)."
        )
    if dtype[0] in "iu" and not np.iinfo(dtype).min <= value <= np.iinfo(dtype).max:
        raise EdgekitError(
            f"--input {text!r} feeds {one.name!r} the value {value}, outside {dtype}. Give a "
            "value that fits the model's input."
        )
    shape = tuple(1 if d is None else d for d in one.dims)
    return InputSpec(one.name, shape, dtype, float(value), float(value), None)
