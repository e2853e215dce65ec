"""What the server runs: one session per served model (onnxruntime, or the runtime the variant
was made for: edgekit.runtimes), fed by worker threads from a queue. With --max-batch N, a worker takes the requests waiting in the queue (up to N rows, waiting
at most --batch-timeout-ms for more), stacks them along axis 0, runs once and splits the outputs
back. Queue time (enqueued → its run starts) and compute time (the run) are measured apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit import textsafe
from edgekit.errors import EdgekitError
from edgekit.onnxfile import op_types
from edgekit.serve.protocol import FROM_ORT, TO_NUMPY, BadRequest, InferRequest


class ModelFailed(Exception):
    """onnxruntime failed on inputs that passed the checks: HTTP 500."""


@dataclass
class Tensor:
    name: str
    datatype: str  # OIP datatype, e.g. FP32
    shape: list[int]  # -1 for a dynamic axis

    def metadata(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape}


@dataclass
class Job:
    feeds: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future  # of the event loop that waits for it
    enqueued: float = field(default_factory=time.perf_counter)

    def settle(self, result) -> None:
        """Hand the Done (or the exception) to the waiting event loop, from a worker thread."""
        # RuntimeError: the loop has closed, the server stopped before the run ended
        with contextlib.suppress(RuntimeError):
            self.future.get_loop().call_soon_threadsafe(_settle, self.future, result)


def _settle(future: asyncio.Future, result) -> None:
    if future.done():  # cancelled: the client went away
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


@dataclass
class Done:
    outputs: dict[str, np.ndarray]
    queue_s: float
    compute_s: float
    batch_rows: int


def load_session(path: Path, threads: int = 0):
    """A session for the file on its runtime (onnxruntime for an .onnx, else the runtime its
    suffix names: edgekit.runtimes), with onnxruntime's interface; EdgekitError when the runtime
    is missing or cannot load it."""
    from edgekit import runtimes

    runtime = runtimes.runtime_for(path)
    if runtime != "onnxruntime":
        ok, why = runtimes.module(runtime).available()
        if not ok:
            raise EdgekitError(
                f"{path} runs on {runtime}, which cannot run here ({why}). Install it with "
                f"`{runtimes.module(runtime).PIP}`."
            )
    try:
        if runtime != "onnxruntime":
            return RuntimeSession(runtimes.load(path, threads))
        import onnxruntime as ort

        return ort.InferenceSession(
            str(path), session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # the runtimes' errors have no common base class
        text = str(exc).strip()
        reason = text.splitlines()[0][:300].rstrip(".") if text else type(exc).__name__
        raise EdgekitError(
            f"{runtime} cannot load {path}: {textsafe.plain(reason)}. The file is damaged, "
            "truncated or not its model format: copy it (or the whole optimize output folder) "
            "again."
        ) from None


# numpy dtype name -> onnxruntime's type text (protocol.FROM_ORT reads that)
_ORT_TYPES = {"float32": "float", "float64": "double", "bool": "bool"}


@dataclass
class _Info:
    name: str
    type: str
    shape: tuple


class RuntimeSession:
    """Another runtime's session (edgekit.runtimes.Session) with the part of onnxruntime's
    InferenceSession the server uses: get_inputs/get_outputs (None for a dynamic axis) and
    run(output_names, feeds)."""

    def __init__(self, session) -> None:
        self.session = session
        self.runtime = session.runtime

    @staticmethod
    def _infos(items) -> list[_Info]:
        return [
            _Info(t.name, f"tensor({_ORT_TYPES.get(t.dtype, t.dtype)})", t.shape) for t in items
        ]

    def get_inputs(self) -> list[_Info]:
        return self._infos(self.session.inputs)

    def get_outputs(self) -> list[_Info]:
        return self._infos(self.session.outputs)

    def run(self, output_names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        values = self.session.run(feeds)
        names = [o.name for o in self.session.outputs]
        return [values[names.index(n)] for n in output_names or names]


def session_options(threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads  # 0: onnxruntime's default (one per core)
    opts.inter_op_num_threads = 1
    return opts


def _dims(shape) -> list[int]:
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


# The platform model metadata names, as Triton names its backends' models.
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "openvino": "openvino"}

# Ops that quantize a whole tensor with one scale computed at run time: batched, each request's
# int8 range would be set by the requests run with it, and its outputs would change with them.
PER_BATCH_OPS = {"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"}


def axis_0_dynamic(inputs: list[Tensor], outputs: list[Tensor]) -> bool:
    return all(t.shape and t.shape[0] == -1 for t in inputs + outputs)


def batch_obstacle(path: Path, inputs: list[Tensor], outputs: list[Tensor]) -> str | None:
    """Why requests to this model must not be stacked into one run, or None when they may be."""
    if not axis_0_dynamic(inputs, outputs):
        return "its axis 0 is fixed"
    if Path(path).suffix.lower() != ".onnx":
        return None  # another runtime's artifact: static int8 only (no per-batch scales)
    try:
        found = sorted(op_types(path) & PER_BATCH_OPS)
    except (OSError, ValueError) as exc:  # onnxruntime read it, so this is unlikely
        return f"edgekit could not read its op types ({exc})"
    if found:
        return (
            f"it quantizes activations over the whole batch ({', '.join(found)}), so a "
            "request's outputs would depend on the requests run with it"
        )
    return None


def describe(path: Path, session=None) -> tuple[list[Tensor], list[Tensor]]:
    """The model's inputs and outputs with OIP datatypes and -1 for dynamic axes."""
    if session is None:
        session = load_session(path)

    def tensors(items):
        return [Tensor(t.name, FROM_ORT.get(t.type, t.type), _dims(t.shape)) for t in items]

    return tensors(session.get_inputs()), tensors(session.get_outputs())


class ServedModel:
    def __init__(
        self,
        name: str,
        path: Path,
        *,
        threads: int = 0,
        instances: int = 1,
        max_batch: int = 1,
        batch_timeout_s: float = 0.0,
    ):
        self.name, self.path = name, Path(path)
        self.session = load_session(path, threads)
        self.runtime = getattr(self.session, "runtime", "onnxruntime")
        self.inputs, self.outputs = describe(path, self.session)
        self.output_names = [o.name for o in self.outputs]
        self.rows_on_axis_0 = axis_0_dynamic(self.inputs, self.outputs)
        self.unbatched = batch_obstacle(self.path, self.inputs, self.outputs)
        self.max_batch = max_batch if self.unbatched is None else 1
        self.batch_timeout_s = batch_timeout_s
        self.jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.workers = [
            threading.Thread(target=self._work, name=f"serve-{name}-{i}", daemon=True)
            for i in range(max(1, instances))
        ]
        for worker in self.workers:
            worker.start()

    def metadata(self) -> dict:
        return {
            "name": self.name,
            "versions": ["1"],
            "platform": PLATFORMS.get(self.runtime, self.runtime),
            "inputs": [t.metadata() for t in self.inputs],
            "outputs": [t.metadata() for t in self.outputs],
        }

    def check(self, request: InferRequest) -> dict[str, np.ndarray]:
        """The feeds for onnxruntime; BadRequest names the input that does not fit the model."""
        expected = {t.name: t for t in self.inputs}
        unknown = [n for n in request.inputs if n not in expected]
        if unknown:
            raise BadRequest(
                f"model '{self.name}' has no input '{unknown[0]}'; its inputs are: "
                f"{', '.join(expected)}"
            )
        missing = [n for n in expected if n not in request.inputs]
        if missing:
            raise BadRequest(f"model '{self.name}' needs input '{missing[0]}', which is missing")
        for name in request.header.outputs or []:
            if name not in self.output_names:
                raise BadRequest(
                    f"model '{self.name}' has no output '{name}'; its outputs are: "
                    f"{', '.join(self.output_names)}"
                )
        rows = None
        for name, array in request.inputs.items():
            spec = expected[name]
            if np.dtype(TO_NUMPY.get(spec.datatype, object)) != array.dtype:
                raise BadRequest(
                    f"input '{name}' of model '{self.name}' is {spec.datatype}, not "
                    f"{request_datatype(array)}"
                )
            if len(array.shape) != len(spec.shape) or any(
                want not in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True)
            ):
                raise BadRequest(
                    f"input '{name}' of model '{self.name}' has shape {spec.shape} (-1: any), "
                    f"not {list(array.shape)}"
                )
            if self.rows_on_axis_0:
                if rows is not None and array.shape[0] != rows:
                    raise BadRequest("the inputs disagree on the batch size (axis 0)")
                rows = array.shape[0]
        return request.inputs

    async def run(self, feeds: dict[str, np.ndarray]) -> Done:
        """Run on a worker thread (ModelFailed if onnxruntime fails); the event loop goes on."""
        rows = next(iter(feeds.values())).shape[0] if self.rows_on_axis_0 else 1
        job = Job(feeds, rows, asyncio.get_running_loop().create_future())
        self.jobs.put(job)
        return await job.future

    def stop(self) -> None:
        for _ in self.workers:
            self.jobs.put(None)
        for worker in self.workers:
            worker.join(timeout=30)

    # ---- worker threads ------------------------------------------------------------------------

    def _work(self) -> None:
        carry = None
        while True:
            job = carry if carry is not None else self.jobs.get()
            if job is None:
                return
            batch, carry, stop = [job], None, False
            # with no timeout and nothing waiting there is nothing to stack: skip the look
            if self.max_batch > 1 and (self.batch_timeout_s > 0 or not self.jobs.empty()):
                batch, carry, stop = self._collect(job)
            self._run(batch)
            if stop:
                return

    def _collect(self, first: Job) -> tuple[list[Job], Job | None, bool]:
        """More jobs that stack with `first` (same trailing shapes, rows within max_batch); the job
        that did not fit, if any; whether the stop marker came."""
        batch, rows = [first], first.rows
        deadline = time.perf_counter() + self.batch_timeout_s
        shapes = {k: v.shape[1:] for k, v in first.feeds.items()}
        while rows < self.max_batch:
            try:
                wait = deadline - time.perf_counter()
                job = self.jobs.get(timeout=wait) if wait > 0 else self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return batch, None, True
            if rows + job.rows > self.max_batch or any(
                v.shape[1:] != shapes[k] for k, v in job.feeds.items()
            ):
                return batch, job, False
            batch.append(job)
            rows += job.rows
        return batch, None, False

    def _run(self, batch: list[Job]) -> None:
        start = time.perf_counter()
        if len(batch) == 1:
            feeds = batch[0].feeds
        else:
            feeds = {k: np.concatenate([j.feeds[k] for j in batch]) for k in batch[0].feeds}
        try:
            values = self.session.run(self.output_names, feeds)
        except Exception as exc:  # onnxruntime's errors have no common base class
            for job in batch:
                job.settle(ModelFailed(f"model '{self.name}' failed: {exc}"))
            return
        compute = time.perf_counter() - start
        rows = sum(j.rows for j in batch)
        offset = 0
        for job in batch:
            if len(batch) == 1:
                outputs = dict(zip(self.output_names, values, strict=True))
            else:
                outputs = {
                    n: v[offset : offset + job.rows]
                    for n, v in zip(self.output_names, values, strict=True)
                }
            offset += job.rows
            job.settle(Done(outputs, start - job.enqueued, compute, rows))


def request_datatype(array: np.ndarray) -> str:
    from edgekit.serve.protocol import FROM_NUMPY

    return FROM_NUMPY.get(array.dtype, str(array.dtype))
