"""LiteRT (ai-edge-litert's Interpreter, XNNPACK delegate): runs the .tflite that litert-torch
makes from the PyTorch model. Torch-free at run time (`pip install ai-edge-litert` alone); the
converter (litert-torch: jax, transformers, ~1.2 GB) stays on the host.

A static int8 model takes and gives int8 tensors (with a scale and zero point): run() quantizes
the float inputs and dequantizes the outputs, inside the call (microseconds, timed with it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import (
    RuntimeUnavailable,
    Session,
    TensorInfo,
    calibrated_pt2e,
    os_threads,
    torch_converter,
)

NAME = "litert"
SUFFIX = ".tflite"
PIP = "python3 -m pip install ai-edge-litert numpy"


def available() -> tuple[bool, str]:
    try:
        from ai_edge_litert import interpreter  # noqa: F401
    except ImportError as exc:
        return False, f"ai-edge-litert does not import ({exc}): {PIP}"
    from importlib.metadata import PackageNotFoundError, version

    try:
        return True, f"ai-edge-litert {version('ai-edge-litert')}"
    except PackageNotFoundError:
        return True, "ai-edge-litert"


def _details(interpreter) -> tuple[list[dict], list[dict]]:
    """Input and output details in the signature's order (forward()'s argument order) and under
    its names (args_0, output_0), when the model has a signature; else the interpreter's."""
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        return interpreter.get_input_details(), interpreter.get_output_details()
    ((key, names),) = signatures.items()
    runner = interpreter.get_signature_runner(key)
    ins, outs = runner.get_input_details(), runner.get_output_details()
    return (
        [{**ins[n], "name": n} for n in names["inputs"]],
        [{**outs[n], "name": n} for n in names["outputs"]],
    )


class LiteRtSession(Session):
    def __init__(self, path: Path, threads: int):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise RuntimeUnavailable(f"ai-edge-litert does not import ({exc}): {PIP}") from None
        super().__init__(NAME, Path(path), threads)
        before = os_threads()
        # num_threads left out means 1 (the wrapper passes `num_threads or 1`): always give it
        self.interpreter = Interpreter(model_path=str(path), num_threads=int(threads or 1))
        self.interpreter.allocate_tensors()
        self.in_details, self.out_details = _details(self.interpreter)
        self.inputs = [self._info(d) for d in self.in_details]
        self.outputs = [self._info(d) for d in self.out_details]
        self.quantized_io = any(self._scale(d) for d in self.in_details + self.out_details)
        if self.quantized_io:
            self.notes.append(
                "int8 model inputs/outputs: quantizing the inputs and dequantizing the outputs "
                "is inside each timed run"
            )
        self.run({i.name: np.zeros([d or 1 for d in i.shape], i.dtype) for i in self.inputs})
        after = os_threads()
        # The Python Interpreter has no getter for its thread count: XNNPACK's pool adds
        # threads - 1 OS threads on the first invoke, so count them.
        self.pool = None if before is None or after is None else after - before

    @staticmethod
    def _scale(d) -> bool:
        return d["dtype"] in (np.int8, np.uint8, np.int16) and d["quantization"][0] != 0.0

    def _info(self, d) -> TensorInfo:
        # a quantized tensor is float on this side: run() quantizes and dequantizes it
        dtype = "float32" if self._scale(d) else np.dtype(d["dtype"]).name
        shape = tuple(int(s) if s >= 0 else None for s in d.get("shape_signature", d["shape"]))
        return TensorInfo(d["name"], dtype, shape)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        it = self.interpreter
        for info, d in zip(self.inputs, self.in_details, strict=True):
            x = feeds[info.name]
            if self._scale(d):
                scale, zero = d["quantization"]
                limits = np.iinfo(d["dtype"])
                x = np.clip(np.round(x / scale) + zero, limits.min, limits.max).astype(d["dtype"])
            it.set_tensor(d["index"], x)
        it.invoke()
        outs = []
        for d in self.out_details:
            y = it.get_tensor(d["index"])
            if self._scale(d):
                scale, zero = d["quantization"]
                y = (y.astype(np.float32) - zero) * np.float32(scale)
            else:
                y = y.copy()
            outs.append(y)
        return outs

    def settings(self) -> dict:
        ops = sorted({o["op_name"] for o in self.interpreter._get_ops_details()})
        ok, version = available()
        return {
            "runtime": NAME,
            "version": version,
            "threads": None if self.pool is None else self.pool + 1,
            "threads_read_back_as": "OS threads added by the XNNPACK pool + 1 (no getter)",
            "asked_threads": int(self.threads or 1),
            "quantized_io": self.quantized_io,
            "delegated": "DELEGATE" in ops,
            "ops": ops,
        }


load = LiteRtSession  # load(path, threads)


def _lower(module, example_inputs, precision, calibration):
    """The .tflite through litert-torch; int8 is PT2E static int8 (litert-torch's quantizer,
    per-channel symmetric weights)."""
    import litert_torch
    import torch

    if precision == "fp32":
        edge = litert_torch.convert(module, example_inputs)
    else:
        edge = _int8(litert_torch, torch, module, example_inputs, calibration)
    return lambda p: edge.export(str(p))


convert = torch_converter(NAME, _lower)  # convert(module, example_inputs, out, precision, ...)


def _int8(litert_torch, torch, module, example_inputs, calibration):
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    quantizer = PT2EQuantizer().set_global(config)
    graph = calibrated_pt2e(
        torch, module, example_inputs, calibration, quantizer, fold_quantize=False
    )
    move_exported_model_to_eval(graph)
    for sub in graph.modules():  # exported modules refuse .eval(); litert warns in training mode
        sub.training = False
    # Without quant_config the .tflite keeps float CONV_2D between QUANTIZE/DEQUANTIZE pairs
    return litert_torch.convert(
        graph, example_inputs, quant_config=QuantConfig(pt2e_quantizer=quantizer)
    )
