"""What every runtime module shares: the session interface, tensor descriptions, errors."""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

try:  # on a device this package runs beside the worker, without the rest of edgekit
    from edgekit.errors import EdgekitError as _Error
except ImportError:  # pragma: no cover - exercised on devices
    _Error = Exception


class ConversionError(_Error):
    """Making a runtime's artifact failed: the caller turns it into a failed variant row."""


class RuntimeUnavailable(_Error):
    """The runtime is not installed (or cannot import) here; the message says what to install."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple  # ints, None for a dynamic axis


@dataclass
class Session:
    """A loaded artifact, ready to run. Runtime modules subclass it and fill these in."""

    runtime: str
    path: Path
    threads: int
    inputs: list[TensorInfo] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def settings(self) -> dict:
        """The settings as the runtime reports them (not as they were asked for)."""
        raise NotImplementedError


def fit_feeds(
    session: Session, arrays: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The arrays as the session's inputs: by name when the names match, else by position (an
    ONNX input `x` is a .tflite's `args_0`), integer arrays cast to the input's integer type
    (int64 token ids to an int32 input), one value to a rank-0 input. Returns (feeds, notes); ValueError when they cannot fit."""
    names = [t.name for t in session.inputs]
    notes = []
    if all(n in arrays for n in names):
        chosen = [arrays[n] for n in names]
    elif len(arrays) == len(names):
        chosen = list(arrays.values())
        notes.append(
            f"inputs fed by position: the feeds {list(arrays)} to the model's inputs {names}"
        )
    else:
        missing = [n for n in names if n not in arrays]
        raise ValueError(f"the feeds have no array for the model input(s) {missing}")
    feeds = {}
    for info, array in zip(session.inputs, chosen, strict=True):
        want = np.dtype(info.dtype)
        if array.dtype != want and array.dtype.kind in "iu" and want.kind in "iu":
            if array.size and (
                array.min() < np.iinfo(want).min or array.max() > np.iinfo(want).max
            ):
                raise ValueError(f"input {info.name}: values do not fit {want}")
            array = array.astype(want)
        if info.shape is not None and len(info.shape) == 0 and array.size == 1:
            array = array.reshape(())  # a scalar input held as one value: onnxruntime takes both
        # (np.ascontiguousarray would turn a rank-0 array into shape (1,))
        feeds[info.name] = np.require(array, requirements="C")
    return feeds, notes


def os_threads() -> int | None:
    """This process's OS thread count (a runtime's pool shows up here), None where unreadable."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def write_atomically(out: Path, write) -> Path:
    """Call write(tmp_path) for a temporary file beside `out`, then rename it to `out`: a failed
    conversion never leaves a half-written artifact, nor destroys an earlier one."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=out.suffix, dir=out.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as an ordinary new file, not mkstemp's 0600
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    return out


def conversion_failed(runtime: str, precision: str, exc: BaseException) -> ConversionError:
    text = str(exc).strip().splitlines()
    reason = text[0][:400] if text else ""
    return ConversionError(
        f"{runtime} {precision} conversion failed: {type(exc).__name__}: {reason}. This runtime "
        "cannot take this model as it is; the other runtimes' variants are unaffected."
    )


def torch_converter(runtime: str, lower):
    """convert(module, example_inputs, out, precision="fp32", calibration=None) -> out, for a
    runtime whose artifact is made from the torch module: lower(module, example_inputs,
    precision, calibration) returns write(path), which writes the artifact; precision is "fp32"
    or "int8" (PT2E static int8 calibrated on `calibration`, argument tuples like
    `example_inputs`). The artifact is written atomically; any failure is a ConversionError."""

    def convert(module, example_inputs: tuple, out, precision="fp32", calibration=None) -> Path:
        try:
            if precision not in ("fp32", "int8"):
                raise ValueError(f"unknown precision {precision!r}: fp32 or int8")
            write_atomically(
                Path(out), lower(module.eval(), example_inputs, precision, calibration)
            )
        except Exception as exc:
            raise conversion_failed(runtime, precision, exc) from exc
        return Path(out)

    return convert


def calibrated_pt2e(torch, module, example_inputs, calibration, quantizer, **convert_options):
    """PT2E static int8 of `module`: export, prepare with `quantizer`, run the calibration
    argument tuples, convert. The LiteRT and ExecuTorch converters differ only in the quantizer."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if not calibration:
        raise ValueError("int8 needs calibration samples")
    graph = prepare_pt2e(torch.export.export(module, example_inputs).module(), quantizer)
    with torch.no_grad():
        for args in calibration:
            graph(*args)
    return convert_pt2e(graph, **convert_options)
