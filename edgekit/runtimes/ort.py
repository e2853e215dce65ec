"""onnxruntime (CPU execution provider): runs the .onnx files edgekit exports and quantizes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .base import RuntimeUnavailable, Session, TensorInfo

NAME = "onnxruntime"
SUFFIX = ".onnx"
PIP = "python3 -m pip install onnxruntime numpy"

CONFIG_KEYS = (
    "session.intra_op.allow_spinning",
    "session.inter_op.allow_spinning",
    "session.force_spinning_stop",
)
# ORT's type strings -> numpy dtype names
DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def available() -> tuple[bool, str]:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return False, f"onnxruntime does not import ({exc}): {PIP}"
    return True, f"onnxruntime {ort.__version__}"


def session_options(
    threads: int,
    *,
    spinning: bool = True,
    stop_spinning: bool = True,
    arena: bool = True,
    opt_level: str = "ORT_ENABLE_ALL",
    profile: bool = False,
):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or 0)  # 0: onnxruntime's default (one per core)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, opt_level)
    opts.enable_cpu_mem_arena = bool(arena)
    spin = "1" if spinning else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    # Threads spin only while run() is busy; when it returns they sleep. Without this an idle
    # worker's threads keep spinning after its round and take the cores from the next worker.
    opts.add_session_config_entry("session.force_spinning_stop", "1" if stop_spinning else "0")
    opts.log_severity_level = 3
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="edgekit-prof-"), "p")
    return opts


def applied(opts) -> dict:
    """The settings as the session options hold them (not as they were asked for)."""
    config = {key: opts.get_session_config_entry(key) for key in CONFIG_KEYS}
    return {
        **config,
        "intra_op_num_threads": opts.intra_op_num_threads,
        "inter_op_num_threads": opts.inter_op_num_threads,
        "graph_optimization_level": str(opts.graph_optimization_level).split(".")[-1],
        "execution_mode": str(opts.execution_mode).split(".")[-1],
        "enable_cpu_mem_arena": opts.enable_cpu_mem_arena,
    }


def _tensors(items) -> list[TensorInfo]:
    return [
        TensorInfo(
            t.name,
            DTYPES.get(t.type, t.type),
            tuple(d if isinstance(d, int) else None for d in t.shape),
        )
        for t in items
    ]


class OrtSession(Session):
    def __init__(self, path: Path, threads: int, **options):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeUnavailable(f"onnxruntime does not import ({exc}): {PIP}") from None
        super().__init__(NAME, Path(path), threads)
        self.options = options
        self.opts = session_options(threads, **options)
        self.session = ort.InferenceSession(
            str(path), sess_options=self.opts, providers=["CPUExecutionProvider"]
        )
        self.inputs = _tensors(self.session.get_inputs())
        self.outputs = _tensors(self.session.get_outputs())

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feeds)

    def settings(self) -> dict:
        import onnxruntime as ort

        return {
            "runtime": NAME,
            "version": ort.__version__,
            "threads": self.opts.intra_op_num_threads,
            "execution_provider": "CPUExecutionProvider",
            **applied(self.opts),
        }

    def profiling_session(self):
        """A separate session with ORT's profiler on (profiling slows runs down)."""
        import onnxruntime as ort

        opts = session_options(self.threads, profile=True, **self.options)
        return ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])


def load(path, threads: int, **options) -> OrtSession:
    """options: spinning, stop_spinning, arena, opt_level (the bench worker's knobs)."""
    return OrtSession(path, threads, **options)
