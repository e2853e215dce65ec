"""ExecuTorch (XNNPACK delegate): runs the .pte that torch.export + XNNPACK lowering makes.

Its Python runtime links libtorch and takes torch tensors: running a .pte from Python imports
torch (the worker's peak memory includes torch's libraries). On a device without torch
ExecuTorch runs through a C++ runner built against the wheel's torch-free libraries instead.
The pybinding is imported directly (`executorch.extension.pybindings._C`): the usual
`executorch.runtime` import pulls in the whole compiler stack (~13 s, +130 MB)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import (
    RuntimeUnavailable,
    Session,
    TensorInfo,
    calibrated_pt2e,
    torch_converter,
)

NAME = "executorch"
SUFFIX = ".pte"
PIP = "python3 -m pip install executorch  (its Python runtime needs torch too)"
TORCH_NOTE = (
    "the ExecuTorch Python runtime imports torch: the peak memory includes torch's libraries "
    "(loaded before the model: they are in the baseline); a C++ runner on the device needs no torch"
)
# c10::ScalarType codes the method metadata gives -> numpy dtype names
SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16",
                6: "float32", 7: "float64", 11: "bool"}  # fmt: skip


def available() -> tuple[bool, str]:
    try:
        from importlib.metadata import version

        import executorch.extension.pybindings._C  # noqa: F401  (imports torch: it links libtorch)
    except Exception as exc:  # ImportError, or an OSError from a libtorch that does not match
        return False, f"executorch's runtime does not import ({type(exc).__name__}: {exc}): {PIP}"
    return True, f"executorch {version('executorch')}"


def _pybinding():
    try:
        import executorch.extension.pybindings._C as et_c
        import torch
    except Exception as exc:
        raise RuntimeUnavailable(
            f"executorch's runtime does not import ({type(exc).__name__}: {exc}): {PIP}"
        ) from None
    return et_c, torch


def _dtype(code) -> str:
    return SCALAR_TYPES.get(int(code), str(code))


class EtSession(Session):
    def __init__(self, path: Path, threads: int):
        et_c, self.torch = _pybinding()
        super().__init__(NAME, Path(path), threads)
        if threads:  # process-wide, and the pool ExecuTorch's XNNPACK delegate runs on
            et_c._unsafe_reset_threadpool(int(threads))
        self.et_c = et_c
        self.module = et_c._load_for_executorch(str(path))
        meta = self.module.method_meta("forward")
        self.inputs = [
            TensorInfo(f"input_{i}", _dtype(t.dtype()), tuple(t.sizes()))
            for i, t in ((i, meta.input_tensor_meta(i)) for i in range(meta.num_inputs()))
        ]
        self.outputs = [
            TensorInfo(f"output_{i}", _dtype(t.dtype()), tuple(t.sizes()))
            for i, t in ((i, meta.output_tensor_meta(i)) for i in range(meta.num_outputs()))
        ]
        self.notes.append(TORCH_NOTE)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        args = [self.torch.from_numpy(feeds[i.name]) for i in self.inputs]
        return [t.numpy() for t in self.module.forward(args)]

    def settings(self) -> dict:
        from importlib.metadata import version

        return {
            "runtime": NAME,
            "version": f"executorch {version('executorch')}",
            "threads": int(self.et_c._threadpool_get_thread_count()),
            "imports_torch": True,
        }


load = EtSession  # load(path, threads)


def _lower(module, example_inputs, precision, calibration):
    """The .pte: torch.export, then lowered to the XNNPACK delegate; int8 is PT2E static int8
    with XNNPACKQuantizer (per-channel symmetric)."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if precision == "int8":
        module = _int8(torch, module, example_inputs, calibration)
    program = torch.export.export(module, example_inputs)
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    data = edge.to_executorch().buffer
    return lambda p: p.write_bytes(data)


convert = torch_converter(NAME, _lower)  # convert(module, example_inputs, out, precision, ...)


def _int8(torch, module, example_inputs, calibration):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True)
    )
    return calibrated_pt2e(torch, module, example_inputs, calibration, quantizer)
