"""What a model input is (InputSpec, Constant) and the --input notation that says it:
NAME:SHAPE[:DTYPE[:LOW-HIGH]] and NAME=VALUE. Torch-free: the device side uses it too."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgekit.errors import EdgekitError

MAX_SAMPLE_BYTES = 2 * 2**30  # one declared input, or the random samples made for it
SUPPORTED_DTYPES = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")


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
            out["value"] = number(self.value, self.dtype)
            out["bound"] = (
                f"tensor input fed the value {out['value']} on every run ({self.notation()})"
            )
        return out


def number(value: float, dtype: str) -> int | float | bool:
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
    low, high = default_range(dtype)
    if match["low"] is not None:
        low, high = _parse_range(text, match["low"], match["high"], dtype)
    return InputSpec(match["name"], shape, dtype, low, high, batch_axis)


def ranged_inputs(texts: Sequence[str]) -> frozenset[str]:
    """The names of the inputs whose value range (LOW-HIGH, or one value) --input gives."""
    matches = [_SPEC_RE.match(text.strip()) for text in texts]
    return frozenset(m["name"] for m in matches if m and m["low"] is not None)


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


def default_range(dtype: str) -> tuple[float, float]:
    return (0.0, 100.0) if np.issubdtype(np.dtype(dtype), np.integer) else (0.0, 1.0)


def batch_of(specs: list[InputSpec]) -> int:
    """The batch of a run: the first input with a batch axis decides (1 when none has one)."""
    return next((s.batch for s in specs if s.batch_axis is not None), 1)
