"""A Triton / KServe model repository for the variant(s) `edgekit serve` would serve, for when
a deployment outgrows one device and moves to a serving engine:

    OUT/<name>/config.pbtxt        platform onnxruntime_onnx, inputs, outputs, batching, instances
    OUT/<name>/1/model.onnx        (and its external-data file, under its own name)
    OUT/<name>/1/model.xml, .bin   an OpenVINO variant, for Triton's openvino backend

LiteRT and ExecuTorch variants have no Triton backend: with other variants to export they are
skipped with a note, alone they are an EdgekitError (exit 2) saying so.

The config is written in protobuf text format by hand (no protobuf needed here); the tests parse
it with Triton's own model_config.proto from the tritonclient package. It mirrors the serve flags:
--max-batch N (default 16) gives max_batch_size N, dims without the batch axis and
dynamic_batching with --batch-timeout-ms as the queue delay (Triton then refuses requests of more
than N rows); --max-batch 1, a fixed axis 0 or a model that quantizes per batch (see
edgekit.serve.model.batch_obstacle) give max_batch_size 0 with the batch axis in dims (any batch
size, as edgekit serve accepts, no batching); --instances sets the instance count, --threads
onnxruntime's intra-op threads.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgekit import textsafe
from edgekit.errors import EdgekitError
from edgekit.fsutil import atomic_write_bytes, atomic_write_text, check_output_dir
from edgekit.onnxfile import files_on_disk
from edgekit.runtimes import runtime_for
from edgekit.serve.model import Tensor, batch_obstacle, describe


def _type(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


# runtime -> Triton's config line for it; the runtimes missing here have no Triton backend
BACKENDS = {"onnxruntime": 'platform: "onnxruntime_onnx"', "openvino": 'backend: "openvino"'}


def no_backend(choice) -> str | None:
    """Why Triton cannot serve the choice's file, or None when it can."""
    runtime = runtime_for(choice.path)
    if runtime in BACKENDS:
        return None
    return (
        f"{textsafe.plain(choice.name)} is a {runtime} model ({choice.path.suffix}): Triton has "
        f"no {runtime} backend; export an ONNX or OpenVINO variant (--variant NAME)"
    )


def config_text(
    name: str,
    inputs: list[Tensor],
    outputs: list[Tensor],
    max_batch: int,
    batch_timeout_ms: float,
    instances: int,
    threads: int | None,
    runtime: str = "onnxruntime",
) -> str:
    """The config for max_batch N > 1, or 0 when requests must not be batched."""
    batched = max_batch > 1

    def tensors(key: str, items: list[Tensor]) -> list[str]:
        lines = []
        for t in items:
            dims = t.shape[1:] if batched else t.shape
            lines += [
                f"{key} {{",
                f'  name: "{t.name}"',
                f"  data_type: {_type(t.datatype)}",
                f"  dims: [ {', '.join(str(d) for d in dims)} ]",
                "}",
            ]
        return lines

    lines = [
        f'name: "{name}"',
        BACKENDS[runtime],
        f"max_batch_size: {max_batch if batched else 0}",
        *tensors("input", inputs),
        *tensors("output", outputs),
        f"instance_group [ {{ kind: KIND_CPU, count: {instances} }} ]",
    ]
    if batched:
        delay = round(batch_timeout_ms * 1000)
        lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {delay}", "}"]
    if threads:
        key = "INFERENCE_NUM_THREADS" if runtime == "openvino" else "intra_op_thread_count"
        lines += [
            "parameters {",
            f'  key: "{key}"',
            f'  value: {{ string_value: "{threads}" }}',
            "}",
        ]
    return "\n".join(lines) + "\n"


def export(choices, out: Path, *, max_batch: int, batch_timeout_ms: float, instances: int,
           threads: int | None, force: bool = False) -> tuple[list[Path], list[str]]:  # fmt: skip
    """Write OUT/<name>/config.pbtxt and OUT/<name>/1/model.<onnx|xml> per choice; returns the
    folders written and a note per choice skipped (no Triton backend). Files already there are
    replaced only with `force`: otherwise exit 2 naming them, before anything is written."""
    skipped = [why for c in choices if (why := no_backend(c))]
    choices = [c for c in choices if not no_backend(c)]
    if not choices:
        raise EdgekitError(f"Cannot export a Triton model repository: {'; '.join(skipped)}.")
    given = out
    out = check_output_dir(out, "--export-repository")
    present = [
        path
        for choice in choices
        for path in _targets(choice, out / choice.name).values()
        if os.path.lexists(path)
    ]
    if present and not force:
        shown = ", ".join(textsafe.plain(p.relative_to(out)) for p in present[:8])
        raise EdgekitError(
            f"--export-repository {given} already holds {shown}{', …' if len(present) > 8 else ''}"
            ". Exporting would replace them. Add --force to replace them, or choose another "
            "--export-repository folder."
        )
    written = []
    for choice in choices:
        inputs, outputs = describe(choice.path)
        for t in inputs + outputs:
            if '"' in t.name or "\\" in t.name:
                raise EdgekitError(
                    f"{choice.path}: the tensor name {t.name!r} has a quote or backslash, which a "
                    "Triton config cannot hold plainly; rename it in the model."
                )
        folder = out / choice.name
        for file, target in _targets(choice, folder).items():
            if file is not None:
                atomic_write_bytes(target, file.read_bytes())
        batch = max_batch if batch_obstacle(choice.path, inputs, outputs) is None else 0
        runtime = runtime_for(choice.path)
        text = config_text(
            choice.name, inputs, outputs, batch, batch_timeout_ms, instances, threads, runtime
        )
        atomic_write_text(folder / "config.pbtxt", text)
        written.append(folder)
    return written, skipped


def _targets(choice, folder: Path) -> dict:
    """{source file (None: the config): where it goes}: the model as 1/model.onnx, its external
    data under its own name beside it (an OpenVINO IR as 1/model.xml and 1/model.bin, the names
    Triton's openvino backend loads), and config.pbtxt."""
    files = files_on_disk(choice.path)
    if runtime_for(choice.path) == "openvino":
        return {
            files[0]: folder / "1" / "model.xml",
            files[1]: folder / "1" / "model.bin",
            None: folder / "config.pbtxt",
        }
    files = {
        file: folder / "1" / ("model.onnx" if file == choice.path else file.name) for file in files
    }
    return {**files, None: folder / "config.pbtxt"}
