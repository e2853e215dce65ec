"""Hardening of loading: hostile or broken files and flags give exit 2 and a message that says
what to do; nothing from an untrusted file runs. Real torch saves, real CLI."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_edgekit

from edgekit.errors import EdgekitError
from edgekit.model.load import load_model

pytestmark = pytest.mark.slow  # every test here starts a process or exports with torch


class _Evil:
    """Unpickling this creates the marker file: stands in for any code a pickle can run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_bytes(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(_Evil(marker), buffer)
    return buffer.getvalue()


def _rewrite(src: Path, dst: Path, replace: dict[str, bytes]) -> Path:
    """Copy a .pt2 archive, replacing entries named without the archive's top folder."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, replace.get(name.split("/", 1)[1], zin.read(name)))
    return dst


@pytest.fixture(scope="module")
def pt2(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pt2")
    net = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    torch.export.save(torch.export.export(net, (torch.randn(2, 4),)), folder / "ok.pt2")
    return folder / "ok.pt2"


def _malicious(pt2: Path, folder: Path, where: str, marker: Path) -> Path:
    if where == "sample_inputs":
        return _rewrite(
            pt2, folder / "evil.pt2", {"data/sample_inputs/model.pt": _evil_bytes(marker)}
        )
    with zipfile.ZipFile(pt2) as archive:
        config_name = next(n for n in archive.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(archive.read(config_name))
    entry = next(iter(config["config"].values()))
    entry["use_pickle"] = True
    return _rewrite(
        pt2,
        folder / "evil.pt2",
        {
            "data/weights/model_weights_config.json": json.dumps(config).encode(),
            f"data/weights/{entry['path_name']}": _evil_bytes(marker),
        },
    )


@pytest.mark.parametrize("suffix", [".pt2", ".pt"])
@pytest.mark.parametrize(
    "where, entry",
    [("sample_inputs", "data/sample_inputs/model.pt"), ("weights", "data/weights/weight_0")],
)
def test_pt2_with_code_in_a_pickle_is_refused(pt2, tmp_path, where, entry, suffix):
    marker = tmp_path / "MARKER"
    evil = _malicious(pt2, tmp_path, where, marker)
    evil = evil.rename(evil.with_suffix(suffix))
    result = run_edgekit("optimize", evil, "-o", tmp_path / "out")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{entry} (calls io.open)" in result.stderr
    assert "can run any code from the file" in result.stderr
    assert "--trust-pickle" in result.stderr
    assert not marker.exists()
    # The flag is what lets it through: with it, torch unpickles as it always did.
    with pytest.raises(EdgekitError):  # the object is no tensor, but it was unpickled
        load_model(evil, trust_pickle=True)
    assert marker.exists()


def test_a_normal_pt2_still_loads(pt2):
    model = load_model(pt2)
    assert model.format == "exported_program"
    assert model.input_specs[0].shape == (1, 4)


def test_malformed_pt2_says_why_without_torchs_traceback(pt2, tmp_path):
    # A pickle of an empty dict where torch expects a torch.save file: torch logs a traceback
    # and raises "check the warnings above".
    broken = _rewrite(pt2, tmp_path / "broken.pt2", {"data/sample_inputs/model.pt": b"\x80\x02}."})
    result = run_edgekit("optimize", broken, "-o", tmp_path / "out")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "warnings above" not in result.stderr
    assert "Invalid magic number" in result.stderr


# ---------------------------------------------------------------------------- bad input: exit 2


def _onnx(path: Path, *, dims=("N", 4), outputs=True, opset=17) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y] if outputs else []
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(model, path)
    return path


def _fails(*args) -> str:
    result = run_edgekit("optimize", *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    return " ".join(result.stderr.split())


@pytest.mark.parametrize(
    "spec, words",
    [
        ("x:100000x100000x100:float32", "describes a tensor of 3,725.3 GiB"),
        ("x:1x4:int8:0-1000", "does not fit int8 (-128 to 127)"),
        ("x:1x4:int64:0.5-3.7", "fractional value range 0.5-3.7. Use whole numbers"),
        ("x:1x4:float16:0-100000", "beyond the largest float16"),
        ("x:1x4:float32:1.2.3-4", "is not two numbers"),
    ],
)
def test_bad_input_spec(tmp_path, spec, words):
    message = _fails(_onnx(tmp_path / "m.onnx"), "--input", spec, "-o", tmp_path / "out")
    assert words in message


@pytest.mark.parametrize(
    "arrays, words",
    [
        ({"x": np.zeros((0, 4), np.float32)}, "'x' in DATA holds 0 samples"),
        # rank-0 inputs exist (issue 11), so a scalar is refused against the model's input
        ({"x": np.float32(1.0)}, "'x' has shape (), but the model input takes 1x4"),
        ({"x": np.array([[np.nan, 1, 2, 3]], np.float32)}, "holds 1 NaN or infinite value(s)"),
        (
            {"x": np.zeros((2, 4), np.float32), "labels": np.zeros((2, 3))},
            "labels in DATA have shape (2, 3); they must have shape (N,)",
        ),
        ({"labels": np.arange(3)}, "DATA holds only labels and no input arrays. Add one array"),
    ],
)
def test_bad_data_file(tmp_path, arrays, words):
    data = tmp_path / "data.npz"
    np.savez(data, **arrays)
    message = _fails(_onnx(tmp_path / "m.onnx"), "--data", data, "-o", tmp_path / "out")
    assert words.replace("DATA", str(data)) in message


@pytest.mark.parametrize(
    "name, words",
    [("data.csv", "is not an .npz archive (a zip file)"), ("data.npy", "is a single .npy array")],
)
def test_data_file_that_is_not_npz(tmp_path, name, words):
    data = tmp_path / name
    if name.endswith(".npy"):
        np.save(data, np.zeros((2, 4), np.float32))
    else:
        data.write_text("x0,x1,x2,x3\n1,2,3,4\n")
    message = _fails(_onnx(tmp_path / "m.onnx"), "--data", data, "-o", tmp_path / "out")
    assert words in message
    assert "pickled" not in message


def test_onnx_without_outputs(tmp_path):
    message = _fails(_onnx(tmp_path / "m.onnx", outputs=False), "-o", tmp_path / "out")
    assert "graph declares no outputs" in message


def test_onnx_without_graph(tmp_path):
    import onnx

    model = onnx.ModelProto(ir_version=8, producer_name="x")
    model.opset_import.add().version = 17
    onnx.save(model, tmp_path / "m.onnx")
    message = _fails(tmp_path / "m.onnx", "-o", tmp_path / "out")
    assert "ONNX model without a graph: it holds no operators" in message


def test_onnx_input_with_a_zero_dimension(tmp_path):
    message = _fails(_onnx(tmp_path / "m.onnx", dims=("N", 0)), "-o", tmp_path / "out")
    assert "has size 0 on axis 1" in message
    assert "unknown size" not in message


def test_onnxruntime_message_keeps_the_reason(tmp_path):
    message = _fails(_onnx(tmp_path / "m.onnx", opset=99), "-o", tmp_path / "out")
    assert "Current official support for domain ai.onnx is till opset" in message
    assert "onnxruntime_src" not in message  # its C++ source location is noise


ARCH_PY = """
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        try:
            return {"a": self.fc}[x.dtype]
        except KeyError as exc:
            raise ValueError(f"Net wants 3 channels, got {x.shape[1]}") from exc
"""


def test_forward_error_shows_what_forward_raised(tmp_path):
    (tmp_path / "arch.py").write_text(ARCH_PY)
    torch.save({"fc.weight": torch.zeros(3, 4), "fc.bias": torch.zeros(3)}, tmp_path / "sd.pt")
    message = _fails(
        tmp_path / "sd.pt", "--arch", f"{tmp_path / 'arch.py'}:Net", "--input", "x:1x4",
        "-o", tmp_path / "out",
    )  # fmt: skip
    assert "failed (ValueError: Net wants 3 channels, got 4)" in message


def test_torchscript_forward_error_shows_the_error_not_the_script_traceback(tmp_path):
    net = torch.jit.script(torch.nn.Linear(4, 3))
    torch.jit.save(net, tmp_path / "m.pt")
    message = _fails(tmp_path / "m.pt", "--input", "x:1x5", "-o", tmp_path / "out")
    assert (
        "failed (RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x5 and 4x3))" in message
    )


def test_arch_file_that_is_not_python(tmp_path):
    torch.save({"fc.weight": torch.zeros(3, 4)}, tmp_path / "sd.pt")
    (tmp_path / "weights.pkl").write_bytes(b"\x80\x04N.")
    message = _fails(
        tmp_path / "sd.pt", "--arch", f"{tmp_path / 'weights.pkl'}:Foo", "-o", tmp_path / "out"
    )
    assert "weights.pkl: this is not a Python source file (.py)" in message
    assert "NoneType" not in message


# ---------------------------------------------------------------------------- external data


def _external(folder: Path, location: str = "model.onnx.data") -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [weight]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    onnx.save_model(model, path, save_as_external_data=True, location=location, size_threshold=0)
    return path


def test_onnx_with_external_data_loads_and_lists_its_files(tmp_path):
    from edgekit.model.load import onnx_files

    path = _external(tmp_path / "m")
    model = load_model(path)
    assert model.format == "onnx"
    assert model.files == [path, tmp_path / "m" / "model.onnx.data"]
    assert onnx_files(path) == model.files


def test_onnx_external_data_outside_its_folder_is_refused(tmp_path):
    import onnx

    path = _external(tmp_path / "m")
    model = onnx.load(str(path), load_external_data=False)
    (tmp_path / "secret.bin").write_bytes((tmp_path / "m" / "model.onnx.data").read_bytes())
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../secret.bin"
    onnx.save(model, path)
    message = _fails(path, "-o", tmp_path / "out")
    assert "'../secret.bin', which is not a file in the model's folder" in message


def test_onnx_external_data_missing(tmp_path):
    path = _external(tmp_path / "m")
    (tmp_path / "m" / "model.onnx.data").unlink()
    message = _fails(path, "-o", tmp_path / "out")
    assert "external-data file 'model.onnx.data', which is missing" in message
