"""An ONNX file on disk: the files it is made of (the .onnx and its external data), their size,
the operators it uses, and a copy of it. Torch-free."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# protobuf's hard limit is 2 GiB: a model with more weights than this keeps them in a .data file
EXTERNAL_DATA_BYTES = 1_800_000_000


def _tensors(graph):
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("g"):
                yield from _tensors(a.g)
            for g in a.graphs:
                yield from _tensors(g)


def files_on_disk(model_path: Path) -> list[Path]:
    """The .onnx file and the external-data files it points to (which belong to it); another
    runtime's artifact alone, except an OpenVINO .xml, whose weights are the .bin beside it; every
    file of a folder (a language model's variant)."""
    import onnx  # here: the server lists ops without loading onnx

    from edgekit.runtimes import runtime_for

    model_path = Path(model_path)
    if model_path.is_dir():  # a language model's variant folder: everything in it
        return sorted(p for p in model_path.rglob("*") if p.is_file())
    runtime = runtime_for(model_path)
    if runtime == "openvino":
        return [model_path, model_path.with_suffix(".bin")]
    if runtime != "onnxruntime":
        return [model_path]
    model = onnx.load(str(model_path), load_external_data=False)
    files = [model_path]
    for tensor in _tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), None)
            path = model_path.parent / location if location else None
            if path and path not in files:
                files.append(path)
    return files


def size_on_disk(model_path: Path) -> int:
    return sum(p.stat().st_size for p in files_on_disk(model_path) if p.is_file())


def copy_onnx(files: list[Path], dest: Path) -> None:
    """The source model (`files`: the .onnx, then its external data, checked by the loader) as
    `dest`, with its external data, if any, as `dest`.data."""
    if len(files) == 1:
        shutil.copyfile(files[0], dest)
        return
    import onnx

    model = onnx.load(str(files[0]))  # with the external data
    big = sum(f.stat().st_size for f in files) > EXTERNAL_DATA_BYTES
    onnx.save_model(model, str(dest), save_as_external_data=big, location=f"{dest.name}.data")


def op_types(path: Path) -> set[str]:
    """The op types in an ONNX file's main graph, read from the protobuf wire format, skipping
    the weights on disk: onnx.load would add the file's size to the server's peak memory
    (measured: +16 MB for a ResNet-18)."""
    ops = set()
    with open(path, "rb") as f:
        for field, size in _fields(f, os.fstat(f.fileno()).st_size):
            if field != 7:  # ModelProto.graph
                continue
            for field_in_graph, node_size in _fields(f, f.tell() + size):
                if field_in_graph != 1:  # GraphProto.node
                    continue
                for field_in_node, length in _fields(f, f.tell() + node_size):
                    if field_in_node == 4:  # NodeProto.op_type
                        ops.add(f.read(length).decode("utf-8", "replace"))
    return ops


def _fields(f, end: int):
    """(field number, length) of each length-delimited field of the message from f's position to
    `end`, with f at the field's first byte; after each, f moves to the field's end."""
    while f.tell() < end:
        key = _varint(f)
        wire = key & 7
        if wire == 0:
            _varint(f)
        elif wire in (1, 5):
            f.seek(8 if wire == 1 else 4, 1)
        elif wire == 2:
            length = _varint(f)
            start = f.tell()
            yield key >> 3, length
            f.seek(start + length)
        else:
            raise ValueError(f"protobuf wire type {wire}")


def _varint(f) -> int:
    value = shift = 0
    while byte := f.read(1):
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
    raise ValueError("the file ends inside a number")
