"""Input specifications and sample data. Torch-free: the device side uses it too."""

from __future__ import annotations

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
    _check_sample_bytes(text, shape, dtype)
    low, high = _default_range(dtype)
    if match["low"] is not None:
        low, high = _parse_range(text, match["low"], match["high"], dtype)
    return InputSpec(match["name"], shape, dtype, low, high)


def _check_sample_bytes(text: str, shape: tuple[int, ...], dtype: str) -> None:
    size = math.prod(shape) * np.dtype(dtype).itemsize
    if size > MAX_SAMPLE_BYTES:
        raise EdgekitError(
            f"The input spec {text!r} describes a tensor of {size / 2**30:,.1f} GiB "
            f"({size:,} bytes); edgekit refuses inputs over {MAX_SAMPLE_BYTES / 2**30:g} GiB. "
            "Check the shape (axes separated by x, batch first, e.g. 1x3x224x224)."
        )


def _parse_range(text: str, low_text: str, high_text: str, dtype: str) -> tuple[float, float]:
    """LOW-HIGH of generated values; for integer dtypes both are whole numbers inside the
    dtype's range, HIGH exclusive (the largest value drawn is HIGH-1)."""
    try:
        low, high = float(low_text), float(high_text)
    except ValueError:
        raise EdgekitError(
            f"The input spec {text!r} has a value range {low_text}-{high_text} that is not two "
            "numbers. Write it as LOW-HIGH, e.g. 0-1 or 0-30522."
        ) from None
    if high <= low:
        raise EdgekitError(
            f"The input spec {text!r} has an empty value range {low_text}-{high_text}. "
            "Write LOW-HIGH with LOW below HIGH, e.g. 0-1."
        )
    if dtype == "bool":
        return low, high
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        if not (low.is_integer() and high.is_integer()):
            raise EdgekitError(
                f"The input spec {text!r} gives the integer input a fractional value range "
                f"{low_text}-{high_text}. Use whole numbers, e.g. 0-{max(int(high), 1)}."
            )
        if low < info.min or high - 1 > info.max:
            raise EdgekitError(
                f"The input spec {text!r} has a value range {low_text}-{high_text} that does not "
                f"fit {dtype} ({info.min} to {info.max}). Use a range inside it, e.g. "
                f"0-{info.max + 1}, or a wider dtype."
            )
    elif max(abs(low), abs(high)) > np.finfo(dtype).max:
        raise EdgekitError(
            f"The input spec {text!r} has a value range {low_text}-{high_text} beyond the largest "
            f"{dtype} ({float(np.finfo(dtype).max):g}). Use a smaller range or a wider dtype."
        )
    return low, high


def specs_from_onnx(path: Path) -> list[InputSpec]:
    """Read input specs from an ONNX file. A symbolic batch axis becomes 1; any other unknown
    axis is an error that asks for `--input`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: failures come back as exceptions
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    specs = []
    for arg in session.get_inputs():
        dims = []
        for axis, dim in enumerate(arg.shape):
            if isinstance(dim, int) and dim > 0:
                dims.append(dim)
            elif axis == 0:
                dims.append(1)
            elif dim == 0:
                raise EdgekitError(
                    f"The model's input {arg.name!r} has size 0 on axis {axis} (shape {arg.shape}): "
                    "the graph declares a tensor with no elements, usually because the model was "
                    "exported from an empty example input. Export it again from an example with "
                    "every axis at least 1."
                )
            else:
                example = "x".join("N" for _ in arg.shape[1:])
                raise EdgekitError(
                    f"The model's input {arg.name!r} has an unknown size on axis {axis} "
                    f"(shape {arg.shape}). Give it explicitly, e.g. `--input {arg.name}:1x{example}:"
                    f"{_ONNX_TO_NUMPY.get(arg.type, 'float32')}` with real numbers for N."
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
        size = math.prod(shape) * np.dtype(spec.dtype).itemsize
        if size > MAX_SAMPLE_BYTES:
            raise EdgekitError(
                f"{count} random sample(s) for the input {spec.name!r} of shape {spec.shape} "
                f"would take {size / 2**30:,.1f} GiB; edgekit refuses over "
                f"{MAX_SAMPLE_BYTES / 2**30:g} GiB. Check the input's shape, or pass fewer real "
                "samples with --data FILE.npz."
            )
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
    save_hint = "Save it with numpy.savez(path, <input name>=array, ..., labels=array)."
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
    counts = {len(a) for a in arrays.values()} | ({len(labels)} if labels is not None else set())
    if len(counts) != 1:
        raise EdgekitError(
            f"The arrays in {path} have different sample counts ({sorted(counts)}); "
            "every input and the labels must have the same first axis."
        )
    return arrays, labels


def _check_data_array(path: Path, name: str, array: np.ndarray) -> None:
    if array.ndim == 0:
        raise EdgekitError(
            f"The array {name!r} in {path} is a single number (a scalar), not samples. Save "
            "inputs with the samples on the first axis, e.g. shape (N, 3, 224, 224)."
        )
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
        if _kind(array.dtype) != _kind(np.dtype(spec.dtype)):
            raise EdgekitError(
                f"The data array {spec.name!r} holds {array.dtype} values, but the model input "
                f"takes {spec.dtype}: converting would change the values. Save the array as "
                f"{spec.dtype} (or fix the --input spec)."
            )


def _kind(dtype: np.dtype) -> str:
    """b(ool), i(nteger) or f(loat): within a kind, data is converted to the input's dtype."""
    return "i" if dtype.kind == "u" else dtype.kind


@dataclass
class Samples:
    """The inputs of a run: their specs and the samples (batch axis first) that drift,
    calibration and the benchmark use."""

    specs: list[InputSpec]
    feeds: dict[str, np.ndarray]  # every sample, in the input's dtype
    labels: np.ndarray | None
    data: Path | None  # the --data file; None when the samples are generated

    @property
    def batch(self) -> int:
        """The batch the model is timed (and drift measured) at: the first input's axis 0."""
        return self.specs[0].shape[0]

    def first_batch(self) -> dict[str, np.ndarray]:
        """One batch, as the benchmark feeds it."""
        return {s.name: np.ascontiguousarray(self.feeds[s.name][: s.shape[0]]) for s in self.specs}

    def to_json(self) -> dict:
        """The report's `data` section."""
        return {
            "path": str(self.data) if self.data else None,
            "samples": len(next(iter(self.feeds.values()))),
            "labels": self.labels is not None,
            "generated": self.data is None,
        }


def resolve_samples(
    texts: Sequence[str], from_file: list[InputSpec] | None, data: Path | None, generated: int
) -> Samples:
    """The one rule for both commands: the specs from --input, else the shapes the model file
    carries, else the shapes of the --data arrays; the samples from --data (at least one batch),
    else `generated` random ones (at least one batch)."""
    arrays, labels = load_npz(data) if data else (None, None)
    if texts:
        specs = [parse_input_spec(t) for t in texts]
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
    batch = specs[0].shape[0]
    if arrays is None:
        return Samples(specs, generate_samples(specs, max(generated, batch)), None, None)
    check_data_matches(specs, arrays, str(data))
    count = len(next(iter(arrays.values())))
    if count < batch:
        raise EdgekitError(
            f"The data file {data} has {count} sample(s), fewer than one batch of the model "
            f"({batch}, axis 0 of --input). Give more samples or a smaller batch."
        )
    feeds = {s.name: arrays[s.name].astype(s.dtype, copy=False) for s in specs}
    return Samples(specs, feeds, labels, Path(data))
