"""The runtimes a variant can run on: onnxruntime, OpenVINO, LiteRT and ExecuTorch.

One module per runtime, each with the same functions:

  NAME, SUFFIX, PIP          its name in reports, its artifact's suffix, the pip line for a device
  available() -> (bool, str) whether it can run here: (True, "openvino 2026.4.1") or (False, why)
  load(path, threads, **options) -> Session
  convert(...)               make its artifact (host side; imports torch, nncf, ... lazily)

A Session has `inputs` / `outputs` (TensorInfo: name, numpy dtype, shape with None for a dynamic
axis), `run(feeds) -> list[np.ndarray]` (feeds by input name, float outputs as the float model
gives them), `settings()` (what the runtime says it uses: threads, precision, hints, read back)
and `notes` (what a reader of the numbers must know, e.g. that the runtime imports torch).

This package is copied beside the benchmark worker to devices: it imports only the standard
library and numpy, and each runtime only when asked for. Nothing here imports torch at import time.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from .base import ConversionError, Session, TensorInfo, fit_feeds  # noqa: F401

# name -> module, in the order reports list them
MODULES = {
    "onnxruntime": "ort",
    "openvino": "ov",
    "litert": "tflite",
    "executorch": "et",
}
ALIASES = {"ort": "onnxruntime", "ov": "openvino", "tflite": "litert", "et": "executorch"}


def module(name: str):
    """The module of a runtime by its name (or alias); ValueError for an unknown one."""
    name = ALIASES.get(name, name)
    if name not in MODULES:
        known = ", ".join(MODULES)
        raise ValueError(f"unknown runtime {name!r}: the runtimes are {known}")
    return importlib.import_module(f".{MODULES[name]}", __name__)


def runtime_for(path, name: str | None = None) -> str:
    """The runtime that runs the artifact: `name` when given, else by the file's suffix (.xml
    OpenVINO, .tflite LiteRT, .pte ExecuTorch); any other file is ONNX, for onnxruntime."""
    if name:
        return module(name).NAME
    suffix = Path(path).suffix.lower()
    for runtime in MODULES:
        if suffix == module(runtime).SUFFIX:
            return runtime
    return "onnxruntime"


def availability() -> dict[str, tuple[bool, str]]:
    """Every runtime: (usable here, its version or the reason it is not)."""
    return {name: module(name).available() for name in MODULES}


def load(path, threads: int, runtime: str | None = None, **options) -> Session:
    """A session for the artifact, on the runtime its suffix (or `runtime`) names."""
    return module(runtime_for(path, runtime)).load(Path(path), threads, **options)


def describe(path, runtime: str | None = None) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The artifact's inputs and outputs, as its runtime loads it (one thread)."""
    session = load(path, 1, runtime)
    return session.inputs, session.outputs
