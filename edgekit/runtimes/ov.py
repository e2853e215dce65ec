"""OpenVINO (CPU plugin): runs an IR (.xml + .bin) made from edgekit's ONNX file. Torch-free at
run time (`pip install openvino` alone); NNCF makes the int8 IR on the host.

How an IR is to be run travels inside it: edgekit writes rt_info edgekit/inference_precision,
"f32" (the fp32 and int8 variants: the CPU's default would be bf16 or fp16 where the CPU has
them) or "default" (the low-precision variant: whatever the CPU plugin picks)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from .base import RuntimeUnavailable, Session, TensorInfo, conversion_failed, write_atomically

NAME = "openvino"
SUFFIX = ".xml"
PIP = "python3 -m pip install openvino numpy"
PRECISION_KEY = ["edgekit", "inference_precision"]
SETTINGS = (
    "INFERENCE_NUM_THREADS",
    "PERFORMANCE_HINT",
    "INFERENCE_PRECISION_HINT",
    "NUM_STREAMS",
    "ENABLE_CPU_PINNING",
    "ENABLE_HYPER_THREADING",
)
LOW_PRECISIONS = (
    "bf16",
    "f16",
)  # the CPU plugin's own low precisions, by OPTIMIZATION_CAPABILITIES


def available() -> tuple[bool, str]:
    try:
        import openvino as ov
    except ImportError as exc:
        return False, f"openvino does not import ({exc}): {PIP}"
    return True, f"openvino {ov.__version__}"


def _core():
    try:
        import openvino as ov
    except ImportError as exc:
        raise RuntimeUnavailable(f"openvino does not import ({exc}): {PIP}") from None
    return ov.Core()


def _dtype(element_type) -> str:
    return np.dtype(element_type.to_dtype()).name


def _shape(partial) -> tuple:
    return tuple(d.get_length() if d.is_static else None for d in partial)


def _precision_of(model) -> str:
    if model.has_rt_info(PRECISION_KEY):
        return str(model.get_rt_info(PRECISION_KEY).astype(str))
    return "f32"  # an IR not made by edgekit: run it in full precision


class OvSession(Session):
    def __init__(self, path: Path, threads: int, precision: str | None = None):
        core = _core()
        super().__init__(NAME, Path(path), threads)
        model = core.read_model(str(path))
        self.precision = precision or _precision_of(model)
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if self.precision != "default":
            config["INFERENCE_PRECISION_HINT"] = self.precision
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.inputs = [
            TensorInfo(
                p.get_any_name(), _dtype(p.get_element_type()), _shape(p.get_partial_shape())
            )
            for p in self.compiled.inputs
        ]
        self.outputs = [
            TensorInfo(
                p.get_any_name(), _dtype(p.get_element_type()), _shape(p.get_partial_shape())
            )
            for p in self.compiled.outputs
        ]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self.request.infer(feeds, share_inputs=True)
        return [np.array(result[port]) for port in self.compiled.outputs]

    def runtime_precisions(self) -> dict[str, int]:
        """How many nodes of the compiled model ran in each precision (u8/i8: int8 really ran)."""
        counts = Counter()
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if "runtimePrecision" in info:
                kind = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
                if kind not in ("Input", "Output", "Parameter", "Result", "Constant"):
                    counts[str(info["runtimePrecision"].astype(str))] += 1
        return dict(counts)

    def settings(self) -> dict:
        import openvino as ov

        read = {}
        for key in SETTINGS:
            try:
                value = self.compiled.get_property(key)
                name = getattr(value, "get_type_name", None)  # an element type: "f32", "bf16"
                read[key] = name() if name else str(value).split(".")[-1]
            except Exception as exc:  # property names differ between versions
                read[key] = f"unreadable: {type(exc).__name__}"
        threads = read.get("INFERENCE_NUM_THREADS")
        return {
            "runtime": NAME,
            "version": ov.__version__,
            "threads": int(threads) if str(threads).isdigit() else None,
            "asked_precision": self.precision,
            "runtime_precisions": self.runtime_precisions(),
            **read,
        }


def load(path, threads: int, precision: str | None = None) -> OvSession:
    """precision: "f32", "bf16", "f16" or "default" (the CPU's own); None: what the IR says."""
    return OvSession(path, threads, precision)


def default_low_precision() -> str | None:
    """The low precision the CPU plugin runs in by default here ("bf16" or "f16"), None when its
    default is f32: then there is no low-precision variant to make on this CPU."""
    hint = _core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    return hint.get_type_name() if hint.get_type_name() in LOW_PRECISIONS else None


def convert(
    onnx_path,
    out,
    precision: str = "fp32",
    calibration: list[dict[str, np.ndarray]] | None = None,
    transformer: bool = False,
) -> Path:
    """The ONNX file as an OpenVINO IR at `out` (.xml, with its .bin beside it).

    precision: "fp32" (weights kept fp32: compress_to_fp16=False; run with f32 forced),
    "int8" (nncf.quantize on `calibration`, one dict of input arrays per sample; `transformer`
    selects NNCF's transformer scheme), or "low" (fp32 weights, run in the CPU's default low
    precision: ConversionError where the CPU has none). ConversionError on failure."""
    import openvino as ov

    out = Path(out)
    try:
        core = ov.Core()
        model = core.read_model(str(onnx_path))
        if precision == "fp32":
            model.set_rt_info("f32", PRECISION_KEY)
        elif precision == "low":
            low = default_low_precision()
            if low is None:
                raise ValueError("this CPU runs OpenVINO in f32 by default: no low precision here")
            model.set_rt_info("default", PRECISION_KEY)
        elif precision == "int8":
            model = _quantize(model, calibration, transformer)
            model.set_rt_info("f32", PRECISION_KEY)
        else:
            raise ValueError(f"unknown precision {precision!r}: fp32, int8 or low")
        _save(ov, model, out)
    except Exception as exc:
        raise conversion_failed(NAME, precision, exc) from exc
    return out


def _quantize(model, calibration, transformer: bool):
    if not calibration:
        raise ValueError("int8 needs calibration samples")
    import nncf

    kwargs = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    if not transformer:
        kwargs["preset"] = nncf.QuantizationPreset.PERFORMANCE
    return nncf.quantize(model, nncf.Dataset(calibration), subset_size=len(calibration), **kwargs)


def _save(ov, model, out: Path) -> None:
    """The .bin first, then the .xml that names it, each written under a temporary name."""
    tmp_xml = out.with_name(f".{out.stem}.tmp.xml")
    try:
        ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
        bin_tmp = tmp_xml.with_suffix(".bin")
        write_atomically(out.with_suffix(".bin"), lambda p: Path(bin_tmp).replace(p))
        # the .xml finds its .bin by the same stem
        text = tmp_xml.read_text()
        write_atomically(out, lambda p: p.write_text(text))
    finally:
        for leftover in (tmp_xml, tmp_xml.with_suffix(".bin")):
            leftover.unlink(missing_ok=True)
