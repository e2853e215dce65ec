"""Input specifications and sample data. Torch-free: the device side uses it too."""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError

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
    """One model input. Axis 0 is the batch axis and is exported dynamic."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    # Value range for generated samples; integer inputs (token ids) need one that fits the vocabulary.
    low: float = 0.0
    high: float = 1.0

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


_SPEC_RE = re.compile(
    r"^(?P<name>[^:]+):(?P<shape>\d+(?:x\d+)*)(?::(?P<dtype>\w+))?(?::(?P<low>-?[\d.]+)-(?P<high>-?[\d.]+))?$"
)


def parse_input_spec(text: str) -> InputSpec:
    """Parse `NAME:1x3x224x224[:dtype[:low-high]]`, e.g. `ids:1x128:int64:0-30522`."""
    match = _SPEC_RE.match(text.strip())
    if not match:
        raise EdgekitError(
            f"Cannot read the input spec {text!r}. Write it as NAME:SHAPE[:DTYPE[:LOW-HIGH]], "
            "for example `--input image:1x3x224x224:float32` or `--input ids:1x128:int64:0-30522`."
        )
    dtype = match["dtype"] or "float32"
    if dtype not in SUPPORTED_DTYPES:
        raise EdgekitError(
            f"The input spec {text!r} names the dtype {dtype!r}, which edgekit does not support. "
            f"Use one of: {', '.join(SUPPORTED_DTYPES)}."
        )
    shape = tuple(int(d) for d in match["shape"].split("x"))
    if any(d <= 0 for d in shape):
        raise EdgekitError(
            f"The input spec {text!r} has a zero-sized axis; every axis must be >= 1."
        )
    is_int = np.issubdtype(np.dtype(dtype), np.integer)
    default_high = 100.0 if is_int else 1.0
    low = float(match["low"]) if match["low"] is not None else 0.0
    high = float(match["high"]) if match["high"] is not None else default_high
    if high <= low:
        raise EdgekitError(f"The input spec {text!r} has an empty value range {low}-{high}.")
    return InputSpec(match["name"], shape, dtype, low, high)


def specs_from_onnx(path: Path) -> list[InputSpec]:
    """Read input specs from an ONNX file. A symbolic batch axis becomes 1; any other unknown
    axis is an error that asks for `--input`."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    specs = []
    for arg in session.get_inputs():
        dims = []
        for axis, dim in enumerate(arg.shape):
            if isinstance(dim, int) and dim > 0:
                dims.append(dim)
            elif axis == 0:
                dims.append(1)
            else:
                raise EdgekitError(
                    f"The model's input {arg.name!r} has an unknown size on axis {axis} "
                    f"(shape {arg.shape}). Give it explicitly, e.g. "
                    f"`--input {arg.name}:1x{'x'.join('N' for _ in arg.shape[1:])}:float32` "
                    "with real numbers for N."
                )
        dtype = _ONNX_TO_NUMPY.get(arg.type)
        if dtype is None:
            raise EdgekitError(
                f"The model's input {arg.name!r} has type {arg.type}, which edgekit cannot generate "
                "samples for. Supply real data with `--data FILE.npz`."
            )
        specs.append(InputSpec(arg.name, tuple(dims), dtype, *_default_range(dtype)))
    return specs


def _default_range(dtype: str) -> tuple[float, float]:
    return (0.0, 100.0) if np.issubdtype(np.dtype(dtype), np.integer) else (0.0, 1.0)


def generate_samples(specs: list[InputSpec], count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`count` random samples per input, stacked on the batch axis: shape (count, *spec.shape[1:])."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        shape = (count, *spec.shape[1:])
        if spec.dtype == "bool":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        elif np.issubdtype(np.dtype(spec.dtype), np.integer):
            feeds[spec.name] = rng.integers(int(spec.low), int(spec.high), size=shape).astype(
                spec.dtype
            )
        else:
            feeds[spec.name] = rng.uniform(spec.low, spec.high, size=shape).astype(spec.dtype)
    return feeds


def load_npz(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Read `--data FILE.npz`: arrays named after the inputs, plus optional `labels`.
    Never unpickles: object arrays are refused."""
    path = Path(path)
    if not path.is_file():
        raise EdgekitError(
            f"The data file {path} does not exist. Pass an existing .npz file to --data."
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise EdgekitError(
            f"The data file {path} is not a readable .npz archive ({exc}). Save it with "
            "numpy.savez(path, <input name>=array, ..., labels=array)."
        ) from None
    labels = arrays.pop("labels", None)
    if not arrays:
        raise EdgekitError(f"The data file {path} holds no input arrays (only {sorted(arrays)}).")
    counts = {len(a) for a in arrays.values()} | ({len(labels)} if labels is not None else set())
    if len(counts) != 1:
        raise EdgekitError(
            f"The arrays in {path} have different sample counts ({sorted(counts)}); "
            "every input and the labels must have the same first axis."
        )
    return arrays, labels


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
    for spec in specs:
        array = arrays[spec.name]
        if tuple(array.shape[1:]) != tuple(spec.shape[1:]):
            raise EdgekitError(
                f"The data array {spec.name!r} has samples of shape {tuple(array.shape[1:])}, but the "
                f"model input expects {tuple(spec.shape[1:])} (after the batch axis). Fix the data "
                "or the --input spec."
            )
