"""Input specifications and sample data. Torch-free: the device side uses it too."""

from __future__ import annotations

import dataclasses
import math
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError

MAX_SAMPLE_BYTES = 2 * 2**30  # one declared input, or the random samples made for it
SUPPORTED_DTYPES = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")
_ONNX_TO_NUMPY = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


@dataclass(frozen=True)
class InputSpec:
    """One tensor input of the model. `shape` is one batch of it; `batch_axis` is the axis samples
    are stacked on (exported dynamic), or None for an input that is the same for every sample
    (a rank-0 input, a table): never sliced or concatenated."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    # Value range for generated samples; integer inputs (token ids) need one that fits the vocabulary.
    # low == high: that one value in every sample (a sample rate fed as a graph input).
    low: float = 0.0
    high: float = 1.0
    batch_axis: int | None = 0

    @property
    def value(self) -> float | None:
        """The one value every sample holds, or None for a range."""
        return self.low if self.low == self.high else None

    @property
    def batch(self) -> int | None:
        return None if self.batch_axis is None else self.shape[self.batch_axis]

    def sample_shape(self, count: int) -> tuple[int, ...]:
        """The shape of `count` samples of this input."""
        if self.batch_axis is None:
            return self.shape
        shape = list(self.shape)
        shape[self.batch_axis] = count
        return tuple(shape)

    def notation(self) -> str:
        """The shape as --input writes it: 1x3x8x8, 2xBx128, -2x128 (no batch axis), scalar."""
        if not self.shape:
            return "scalar"
        if self.batch_axis is None:
            return "-" + "x".join(map(str, self.shape))
        if self.batch_axis == 0:
            return "x".join(map(str, self.shape))
        dims = [str(d) for d in self.shape]
        dims[self.batch_axis] = "B" if self.batch == 1 else f"B{self.batch}"
        return "x".join(dims)

    def to_json(self) -> dict:
        out = {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "batch_axis": self.batch_axis,
            "bound": (
                f"tensor input, samples on axis {self.batch_axis} ({self.notation()})"
                if self.batch_axis is not None
                else f"tensor input without a batch axis ({self.notation()}): the same value "
                "for every sample"
            ),
        }
        if self.value is not None:
            out["value"] = _number(self.value, self.dtype)
            out["bound"] = (
                f"tensor input fed the value {out['value']} on every run ({self.notation()})"
            )
        return out


def _number(value: float, dtype: str) -> int | float | bool:
    if dtype == "bool":
        return bool(value)
    return int(value) if np.issubdtype(np.dtype(dtype), np.integer) else float(value)


@dataclass(frozen=True)
class Constant:
    """A forward() argument that is not a tensor (`--input sr=16000`): passed to the torch model
    as it is and baked into the export; not an ONNX input."""

    name: str
    value: int | float | bool
    position: int  # among forward()'s arguments

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "value": self.value,
            "dtype": type(self.value).__name__,
            "bound": "constant: passed to the torch model and baked into the ONNX graph",
        }


_SPEC_RE = re.compile(
    r"^(?P<name>[^:=]+):(?P<shape>scalar|-?\d+(?:x\d+)*|(?:(?:\d+|B\d*)x)*B\d*(?:x(?:\d+))*)"
    r"(?::(?P<dtype>\w+))?(?::(?P<low>-?[\d.]+)(?:-(?P<high>-?[\d.]+))?)?$"
)
_CONSTANT_RE = re.compile(r"^(?P<name>[A-Za-z_][\w.]*)=(?P<value>[^:]+)$")
MAX_RANK = 32  # onnxruntime and numpy take up to 64 axes; no real model input comes near
_MAX_AXIS_DIGITS = 10  # an axis of 10^10 elements is already far past MAX_SAMPLE_BYTES


def parse_constant(text: str, position: int) -> Constant | None:
    """`sr=16000`, `scale=0.5`, `causal=true`; None if `text` is not of that form."""
    match = _CONSTANT_RE.match(text.strip())
    if not match:
        return None
    raw = match["value"].strip()
    value: int | float | bool
    if raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    else:
        try:
            value = int(raw) if re.fullmatch(r"[+-]?\d{1,30}", raw) else float(raw)
        except ValueError:
            raise EdgekitError(
                f"The input {text!r} binds {match['name']} to {raw!r}, which is not an int, "
                "a float or true/false. Constants take those; give a tensor input as "
                "NAME:SHAPE[:DTYPE], e.g. `--input x:1x16000:float32`."
            ) from None
        if not math.isfinite(value):
            raise EdgekitError(
                f"The input {text[:80]!r} binds {match['name']} to {raw[:40]}, which is not a "
                "finite number: the model's outputs would be NaN or infinite, and drift cannot be "
                f"measured on them. Give the value the model is used with, e.g. "
                f"`--input {match['name']}=16000`."
            )
    return Constant(match["name"], value, position)


def parse_arguments(texts: Sequence[str]) -> tuple[list[InputSpec], list[Constant]]:
    """--input texts in forward() order: tensor specs and constants."""
    specs, constants = [], []
    for position, text in enumerate(texts):
        constant = parse_constant(text, position)
        if constant is not None:
            constants.append(constant)
        else:
            specs.append(parse_input_spec(text))
    if constants and not specs:
        raise EdgekitError(
            "Every --input binds a constant; the model needs at least one tensor input. Add one "
            "as NAME:SHAPE[:DTYPE], e.g. `--input x:1x16000:float32`."
        )
    return specs, constants


def parse_input_spec(text: str, default_dtype: str = "float32") -> InputSpec:
    """Parse `NAME:SHAPE[:dtype[:low-high]]`, e.g. `ids:1x128:int64:0-30522`, `h:1xBx16`,
    `table:-4x8`, `gain:scalar`, `sr:scalar:int64:16000` (one value). `default_dtype` when the
    spec names none (an ONNX file's own type for that input)."""
    match = _SPEC_RE.match(text.strip())
    if not match:
        raise EdgekitError(
            f"Cannot read the input spec {text!r}. Write it as NAME:SHAPE[:DTYPE[:LOW-HIGH]], "
            "for example `--input image:1x3x224x224:float32`, `--input ids:1x128:int64:0-30522`, "
            "`--input state:2xBx128` (B: the batch axis), `--input table:-4x8` (no batch axis), "
            "`--input gain:scalar`, `--input sr:scalar:int64:16000` (one value), or NAME=VALUE "
            "for a non-tensor argument (`--input sr=16000`)."
        )
    dtype = match["dtype"] or default_dtype
    if dtype not in SUPPORTED_DTYPES:
        raise EdgekitError(
            f"The input spec {text!r} names the dtype {dtype!r}, which edgekit does not support. "
            f"Use one of: {', '.join(SUPPORTED_DTYPES)}."
        )
    if match["shape"].count("B") > 1:
        raise EdgekitError(
            f"The input spec {text!r} marks more than one batch axis; B marks the one axis "
            "samples are stacked on, e.g. `state:2xBx128`."
        )
    shape, batch_axis = _parse_shape(text, match["shape"])
    if any(d <= 0 for d in shape):
        raise EdgekitError(
            f"The input spec {text!r} has a zero-sized axis; every axis must be >= 1."
        )
    _check_sample_bytes(text, shape, dtype)
    low, high = _default_range(dtype)
    if match["low"] is not None:
        low, high = _parse_range(text, match["low"], match["high"], dtype)
    return InputSpec(match["name"], shape, dtype, low, high, batch_axis)


def _parse_shape(text: str, shape: str) -> tuple[tuple[int, ...], int | None]:
    if shape == "scalar":
        return (), None
    dims = shape.removeprefix("-").split("x")
    if len(dims) > MAX_RANK:
        raise EdgekitError(
            f"The input spec {text[:80]!r}… has {len(dims)} axes; edgekit takes at most "
            f"{MAX_RANK}. Check the shape: axes separated by x, batch first, e.g. 1x3x224x224."
        )
    long = next((d for d in dims if len(d.lstrip("B")) > _MAX_AXIS_DIGITS), None)
    if long is not None:
        raise EdgekitError(
            f"The input spec {text[:60]!r}… has an axis of {len(long.lstrip('B'))} digits, larger "
            f"than any tensor edgekit accepts (at most {MAX_SAMPLE_BYTES / 2**30:g} GiB per "
            "input). Check the shape: axes separated by x, batch first, e.g. 1x3x224x224."
        )
    if shape.startswith("-"):
        return tuple(int(d) for d in dims), None
    sizes, batch_axis = [], 0
    for axis, dim in enumerate(dims):
        if dim.startswith("B"):
            batch_axis = axis
            sizes.append(int(dim[1:] or 1))
        else:
            sizes.append(int(dim))
    return tuple(sizes), batch_axis


def _check_sample_bytes(text: str, shape: tuple[int, ...], dtype: str) -> None:
    size = math.prod(shape) * np.dtype(dtype).itemsize
    if size > MAX_SAMPLE_BYTES:
        amount = f"{size / 2**30:,.1f} GiB ({size:,} bytes)" if size < 2**60 else "over 2^30 GiB"
        raise EdgekitError(
            f"The input spec {text[:80]!r} describes a tensor of {amount}; edgekit refuses "
            f"inputs over {MAX_SAMPLE_BYTES / 2**30:g} GiB. "
            "Check the shape (axes separated by x, batch first, e.g. 1x3x224x224)."
        )


def _parse_range(
    text: str, low_text: str, high_text: str | None, dtype: str
) -> tuple[float, float]:
    """LOW-HIGH of generated values; for integer dtypes both are whole numbers inside the
    dtype's range, HIGH exclusive (the largest value drawn is HIGH-1). A single number, or
    LOW-HIGH with LOW == HIGH, is that one value in every sample."""
    try:
        low = float(low_text)
        high = low if high_text is None else float(high_text)
    except ValueError:
        raise EdgekitError(
            f"The input spec {text!r} has a value range {low_text}-{high_text} that is not two "
            "numbers. Write it as LOW-HIGH, e.g. 0-1 or 0-30522, or one number for a single value."
        ) from None
    shown = low_text if high_text is None else f"{low_text}-{high_text}"
    if not (math.isfinite(low) and math.isfinite(high)):
        raise EdgekitError(
            f"The input spec {text!r} has a value range {shown} that is not finite. Give finite "
            "numbers, e.g. 0-1."
        )
    if high < low:
        raise EdgekitError(
            f"The input spec {text!r} has an empty value range {shown}. Write LOW-HIGH with LOW "
            "below HIGH, e.g. 0-1, or one number for a single value, e.g. 16000."
        )
    if dtype == "bool":
        return low, high
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        if not (low.is_integer() and high.is_integer()):
            raise EdgekitError(
                f"The input spec {text!r} gives the integer input a fractional value range "
                f"{shown}. Use whole numbers, e.g. 0-{max(int(high), 1)}."
            )
        top = high if high == low else high - 1  # HIGH is exclusive in a range
        if low < info.min or top > info.max:
            raise EdgekitError(
                f"The input spec {text!r} has a value range {shown} that does not "
                f"fit {dtype} ({info.min} to {info.max}). Use a range inside it, e.g. "
                f"0-{info.max + 1}, or a wider dtype."
            )
    elif max(abs(low), abs(high)) > np.finfo(dtype).max:
        raise EdgekitError(
            f"The input spec {text!r} has a value range {shown} beyond the largest "
            f"{dtype} ({float(np.finfo(dtype).max):g}). Use a smaller range or a wider dtype."
        )
    return low, high


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
                    _ONNX_TO_NUMPY.get(arg.type),
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
            specs.append(
                InputSpec(one.name, tuple(dims), dtype, *_default_range(dtype), batch_axis)
            )
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


def _default_range(dtype: str) -> tuple[float, float]:
    return (0.0, 100.0) if np.issubdtype(np.dtype(dtype), np.integer) else (0.0, 1.0)


def generate_samples(specs: list[InputSpec], count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`count` random samples per input, stacked on its batch axis (an input without one gets
    one value, the same for every sample), as SampleArrays."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        shape = spec.sample_shape(count)
        size = math.prod(shape) * np.dtype(spec.dtype).itemsize
        if size > MAX_SAMPLE_BYTES:
            raise EdgekitError(
                f"{count} random sample(s) for the input {spec.name!r} of shape {spec.shape} "
                f"would take {size / 2**30:,.1f} GiB; edgekit refuses over "
                f"{MAX_SAMPLE_BYTES / 2**30:g} GiB. Check the input's shape, or pass fewer real "
                "samples with --data FILE.npz."
            )
        if spec.value is not None:
            feeds[spec.name] = np.full(shape, spec.value, dtype=spec.dtype)
        elif spec.dtype == "bool":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        elif np.issubdtype(np.dtype(spec.dtype), np.integer):
            feeds[spec.name] = rng.integers(int(spec.low), int(spec.high), size=shape).astype(
                spec.dtype
            )
        else:
            feeds[spec.name] = rng.uniform(spec.low, spec.high, size=shape).astype(spec.dtype)
    return {spec.name: as_samples(feeds[spec.name], spec, count) for spec in specs}


class SampleArray(np.ndarray):
    """The samples of one input, which know their batch axis: `a[i:j]` takes samples i to j on
    that axis and `len(a)` counts samples, so code written for batch-first arrays (the passes'
    calibration and parity slices) stays right for an input batched on another axis; an input
    without a batch axis is the same for every sample and is never sliced (`a[i:j]` is `a`).
    Other indexing is numpy's. np.asarray(a) gives the plain array."""

    batch_axis: int | None = 0
    _count: int = 0

    def __array_finalize__(self, obj) -> None:
        self.batch_axis = getattr(obj, "batch_axis", 0)
        self._count = getattr(obj, "_count", 0)

    def __getitem__(self, key):
        if isinstance(key, slice) and self.batch_axis != 0:
            if self.batch_axis is None:
                out = self.view(SampleArray)
                out._count = len(range(*key.indices(self._count)))
                return out
            index = [slice(None)] * self.ndim
            index[self.batch_axis] = key
            return super().__getitem__(tuple(index))
        return super().__getitem__(key)

    def __len__(self) -> int:
        if self.batch_axis is None:
            return self._count
        return self.shape[self.batch_axis]

    def __reduce__(self):  # pickled (multiprocessing) as a plain array
        return np.asarray(self).__reduce__()


def as_samples(array: np.ndarray, spec: InputSpec, count: int) -> SampleArray:
    out = np.asarray(array).view(SampleArray)
    out.batch_axis = spec.batch_axis
    out._count = count
    return out


def sample_count(feeds: dict[str, np.ndarray]) -> int:
    """How many samples the feeds hold (inputs without a batch axis count as every sample)."""
    counts = [len(a) for a in feeds.values() if getattr(a, "batch_axis", 0) is not None]
    return min(counts) if counts else len(next(iter(feeds.values())))


def load_npz(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Read `--data FILE.npz`: arrays named after the inputs, plus optional `labels`.
    Never unpickles: object arrays are refused."""
    path = Path(path)
    save_hint = "Save it with numpy.savez(path, <input name>=array, ..., labels=array)."
    if path.is_dir():
        raise EdgekitError(
            f"The data file {path} is a folder. Pass the .npz file itself to --data. " + save_hint
        )
    if not path.is_file():
        raise EdgekitError(
            f"The data file {path} does not exist. Pass an existing .npz file to --data."
        )
    with open(path, "rb") as handle:
        head = handle.read(6)
    if head == b"\x93NUMPY":
        raise EdgekitError(
            f"The data file {path} is a single .npy array, not an .npz archive of named arrays. "
            + save_hint
        )
    if not head.startswith(b"PK"):
        raise EdgekitError(
            f"The data file {path} is not an .npz archive (a zip file). " + save_hint
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise EdgekitError(
            f"The data file {path} is not a readable .npz archive ({exc}). " + save_hint
        ) from None
    labels = arrays.pop("labels", None)
    if not arrays:
        only = "only labels" if labels is not None else "no arrays"
        raise EdgekitError(
            f"The data file {path} holds {only} and no input arrays. Add one array per model "
            "input, named after the input, with samples on the first axis. " + save_hint
        )
    for name, array in arrays.items():
        _check_data_array(path, name, array)
    if labels is not None and labels.ndim != 1:
        raise EdgekitError(
            f"The labels in {path} have shape {labels.shape}; they must have shape (N,): one "
            "class index (or value) per sample. Save argmax(one_hot, axis=1) for one-hot labels."
        )
    return arrays, labels


def _check_data_array(path: Path, name: str, array: np.ndarray) -> None:
    if array.ndim == 0:
        return  # a rank-0 input's value, the same for every sample; checked against the spec
    if len(array) == 0:
        raise EdgekitError(
            f"The array {name!r} in {path} holds 0 samples (shape {array.shape}). Save at least "
            "one sample on the first axis."
        )
    if np.issubdtype(array.dtype, np.floating):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise EdgekitError(
                f"The array {name!r} in {path} holds {bad} NaN or infinite value(s); drift and "
                "accuracy cannot be measured on them. Replace or drop those samples."
            )


def specs_from_data(arrays: dict[str, np.ndarray]) -> list[InputSpec]:
    """Input specs with batch 1 taken from the arrays of a data file, in file order."""
    specs = []
    for name, array in arrays.items():
        dtype = str(array.dtype)
        if dtype not in SUPPORTED_DTYPES:
            raise EdgekitError(
                f"The data array {name!r} has dtype {dtype}, which is not supported."
            )
        low, high = (
            (float(array.min()), float(array.max())) if array.size else _default_range(dtype)
        )
        if high <= low:
            high = low + 1
        if array.ndim == 0:
            specs.append(InputSpec(name, (), dtype, low, high, None))
        else:
            specs.append(InputSpec(name, (1, *array.shape[1:]), dtype, low, high))
    return specs


def check_data_matches(specs: list[InputSpec], arrays: dict[str, np.ndarray], source: str) -> None:
    """Fail clearly when data arrays do not fit the model's inputs (names, shapes, dtypes)."""
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise EdgekitError(
            f"The data in {source} has no array for the model input(s) {missing}; it has "
            f"{sorted(arrays)}. Name the arrays after the inputs (or rename the inputs with --input)."
        )
    counts = set()
    for spec in specs:
        array = arrays[spec.name]
        if spec.batch_axis is None:
            if tuple(array.shape) != tuple(spec.shape):
                raise EdgekitError(
                    f"The data array {spec.name!r} has shape {tuple(array.shape)}, but the model "
                    f"input has no batch axis and shape {tuple(spec.shape)} (the same value for "
                    "every sample): save it with exactly that shape. Fix the data or the --input "
                    "spec (B marks a batch axis, e.g. 2xBx128)."
                )
        else:
            axis = spec.batch_axis
            got = array.shape[:axis] + array.shape[axis + 1 :] if array.ndim > axis else None
            want = spec.shape[:axis] + spec.shape[axis + 1 :]
            if got is None or array.ndim != len(spec.shape) or tuple(got) != tuple(want):
                raise EdgekitError(
                    f"The data array {spec.name!r} has shape {tuple(array.shape)}, but the model "
                    f"input takes {spec.notation()} (samples on axis {axis}, the rest "
                    f"{tuple(want)}). Fix the data or the --input spec."
                )
            counts.add(array.shape[axis])
        if _kind(array.dtype) != _kind(np.dtype(spec.dtype)):
            raise EdgekitError(
                f"The data array {spec.name!r} holds {array.dtype} values, but the model input "
                f"takes {spec.dtype}: converting would change the values. Save the array as "
                f"{spec.dtype} (or fix the --input spec)."
            )

    if len(counts) > 1:
        raise EdgekitError(
            f"The arrays in {source} have different sample counts ({sorted(counts)}) on their "
            "batch axes; every input (and the labels) must hold the same samples."
        )


def _kind(dtype: np.dtype) -> str:
    """b(ool), i(nteger) or f(loat): within a kind, data is converted to the input's dtype."""
    return "i" if dtype.kind == "u" else dtype.kind


@dataclass
class Samples:
    """The inputs of a run: their specs and the samples (batch axis first) that drift,
    calibration and the benchmark use."""

    specs: list[InputSpec]
    feeds: dict[str, np.ndarray]  # every sample, in the input's dtype (SampleArrays)
    labels: np.ndarray | None
    data: Path | None  # the --data file; None when the samples are generated
    constants: list[Constant] = dataclasses.field(default_factory=list)
    ranged: frozenset[str] = frozenset()  # inputs whose value range --input gave
    # How each generated input was made, where it differs from its spec's range (fitted_to).
    generated_as: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def batch(self) -> int:
        """The batch the model is timed (and drift measured) at: the first batched input's."""
        return batch_of(self.specs)

    def first_batch(self) -> dict[str, np.ndarray]:
        """One batch, as the benchmark feeds it (plain arrays)."""
        return {
            s.name: np.array(self.feeds[s.name][: self.batch], order="C", subok=False)
            for s in self.specs
        }

    def to_json(self) -> dict:
        """The report's `data` section; `generated_inputs` says how each input was made."""
        out = {
            "path": str(self.data) if self.data else None,
            "samples": sample_count(self.feeds),
            "labels": self.labels is not None,
            "generated": self.data is None,
        }
        if self.data is None:
            out["generated_inputs"] = {
                s.name: self.generated_as.get(s.name) or _generated_text(s) for s in self.specs
            }
        return out

    def generated_note(self) -> list[str]:
        """The report note that says what the generated inputs hold; [] with --data."""
        if self.data is not None:
            return []
        made = "; ".join(f"{k}: {v}" for k, v in self.to_json()["generated_inputs"].items())
        return [f"no --data: drift is measured on generated inputs ({made})"]

    def fitted_to(self, path: Path) -> Samples:
        """Generated integer inputs as the model at `path` (its ONNX graph) reads them, where
        --input gave no range: an attention mask all ones, token type ids zeros, position ids
        0, 1, 2, …, and token ids across the vocabulary (the rows of the embedding table a
        Gather reads with that input); other inputs as they are."""
        if self.data is not None:
            return self
        rows = gathered_rows(path)
        count = sample_count(self.feeds)
        rng = np.random.default_rng(1)
        feeds, said = dict(self.feeds), dict(self.generated_as)
        for spec in self.specs:
            integer = spec.dtype != "bool" and np.issubdtype(np.dtype(spec.dtype), np.integer)
            if not integer or spec.name in self.ranged or spec.value is not None:
                continue
            made = _integer_values(spec, rows.get(spec.name), spec.sample_shape(count), rng)
            if made is not None:
                feeds[spec.name] = as_samples(made[0], spec, count)
                said[spec.name] = made[1]
        return dataclasses.replace(self, feeds=feeds, generated_as=said)


def _generated_text(spec: InputSpec) -> str:
    if spec.value is not None:
        return f"the value {_number(spec.value, spec.dtype)} in every sample"
    if spec.dtype == "bool":
        return "random true/false"
    if np.issubdtype(np.dtype(spec.dtype), np.integer):
        return f"random integers {int(spec.low)} to {int(spec.high) - 1}"
    return f"uniform random {spec.low:g} to {spec.high:g}"


def _integer_values(spec: InputSpec, rows: int | None, shape: tuple, rng):
    """(values, what they are) for an integer input the name or the graph explains; else None."""
    name = spec.name.lower()
    if "mask" in name:
        return np.ones(shape, spec.dtype), "all ones (an attention mask: every position attended)"
    if name.endswith(("token_type_ids", "segment_ids")):
        return np.zeros(shape, spec.dtype), "all zeros (token type ids: one segment)"
    if name.endswith("position_ids") and shape:
        positions = np.broadcast_to(np.arange(shape[-1]), shape).astype(spec.dtype)
        return positions, "0, 1, 2, … along the last axis (position ids)"
    if rows and rows - 1 <= np.iinfo(spec.dtype).max:
        return rng.integers(0, rows, size=shape).astype(spec.dtype), (
            f"token ids drawn from 0 to {rows - 1} (the embedding table a Gather reads with "
            f"this input has {rows} rows)"
        )
    return None


# Ops that pass an input's values on unchanged (as indices) on the way to a Gather.
_PASS_THROUGH = {"Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Expand"}


def gathered_rows(path: Path) -> dict[str, int]:
    """{graph input: rows of the table (an initializer) a Gather reads with it as indices}."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inputs = {i.name for i in graph.input}
    tables = {t.name: t.dims[0] for t in graph.initializer if t.dims}
    producer = {out: node for node in graph.node for out in node.output}
    rows: dict[str, int] = {}
    for node in graph.node:
        if node.op_type != "Gather" or len(node.input) < 2 or node.input[0] not in tables:
            continue
        if any(a.name == "axis" and a.i != 0 for a in node.attribute):
            continue
        source = node.input[1]
        while source not in inputs and source in producer:
            before = producer[source]
            if before.op_type not in _PASS_THROUGH or not before.input:
                break
            source = before.input[0]
        if source in inputs:
            rows[source] = max(rows.get(source, 0), int(tables[node.input[0]]))
    return rows


def resolve_samples(
    texts: Sequence[str],
    from_file: list[InputSpec] | OnnxInputs | None,
    data: Path | None,
    generated: int,
) -> Samples:
    """The one rule for both commands: the specs from --input (checked against an ONNX file's
    inputs), else the shapes the model file carries, else the shapes of the --data arrays; the
    samples from --data (at least one batch), else `generated` random ones (at least one batch)."""
    arrays, labels = load_npz(data) if data else (None, None)
    constants: list[Constant] = []
    if isinstance(from_file, OnnxInputs):
        specs = from_file.resolve(texts) if texts else from_file.specs(arrays)
    elif texts:
        specs, constants = parse_arguments(texts)
    elif from_file:
        specs = from_file
    elif arrays is not None:
        specs = specs_from_data(arrays)
    else:
        raise EdgekitError(
            "This model file does not say what input it takes. Give its shape with "
            "`--input NAME:1x3x224x224:float32` (repeat for several inputs), or pass real samples "
            "with `--data FILE.npz` (arrays named after the inputs)."
        )
    batch = batch_of(specs)
    if arrays is None:  # whole batches: a model exported with its batch fixed runs no other
        feeds = generate_samples(specs, -(-max(generated, batch) // batch) * batch)
        matches = [_SPEC_RE.match(text.strip()) for text in texts]
        ranged = {m["name"] for m in matches if m and m["low"] is not None}
        return Samples(specs, feeds, None, None, constants, frozenset(ranged))
    check_data_matches(specs, arrays, str(data))
    batched = [s for s in specs if s.batch_axis is not None]
    count = arrays[batched[0].name].shape[batched[0].batch_axis] if batched else 1
    if labels is not None and len(labels) != count:
        raise EdgekitError(
            f"The data file {data} has {len(labels)} labels for {count} samples; give one label "
            "per sample."
        )
    if count < batch:
        raise EdgekitError(
            f"The data file {data} has {count} sample(s), fewer than one batch of the model "
            f"({batch}, the batch axis of --input). Give more samples or a smaller batch."
        )
    feeds = {
        s.name: as_samples(arrays[s.name].astype(s.dtype, copy=False), s, count) for s in specs
    }
    return Samples(specs, feeds, labels, Path(data), constants)


def batch_of(specs: list[InputSpec]) -> int:
    """The batch of a run: the first input with a batch axis decides (1 when none has one)."""
    return next((s.batch for s in specs if s.batch_axis is not None), 1)
