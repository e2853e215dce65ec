"""Loading every model format from real files, and every bad input giving a clear error."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_edgekit

from edgekit.errors import EdgekitError
from edgekit.model.load import load_model

pytestmark = pytest.mark.slow  # every test here starts a process or exports with torch

MODELS_PY = """
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.drop(self.fc1(x).relu()))


def build():
    return Net()


def build_wider():
    net = Net()
    net.fc2 = nn.Linear(8, 5)
    return net


def build_other():
    return nn.Sequential(nn.Linear(4, 3))
"""

# Run as a user runs a training script: `python make.py` in the folder, so `mymodels` is
# importable there, and the class defined in the script itself pickles as `__main__.Inline`.
MAKE_PY = """
import torch, torch.nn as nn
import mymodels


class Inline(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)


def main():
    torch.manual_seed(0)
    net = mymodels.Net().eval()
    x = torch.randn(2, 4)
    sd = net.state_dict()
    torch.save(sd, "sd.pt")
    torch.save({"epoch": 3, "model_state_dict": sd, "optimizer": {"lr": 0.1}}, "ckpt.pth")
    torch.save({"module." + k: v for k, v in sd.items()}, "dataparallel.pt")
    torch.save(sd, "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save(net, "pickled.pt")
    torch.save(Inline(), "pickled_main.pt")  # pickles as __main__.Inline
    torch.jit.save(torch.jit.script(net), "scripted.pt")
    torch.export.save(torch.export.export(net, (x,)), "program.pt2")
    torch.onnx.export(net, (x,), "model.onnx", dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})


if __name__ == "__main__":
    main()
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Real model files of every format, made by a fresh process like a user's script."""
    folder = tmp_path_factory.mktemp("models")
    (folder / "mymodels.py").write_text(MODELS_PY)
    (folder / "make.py").write_text(MAKE_PY)
    subprocess.run(
        [sys.executable, "make.py"], cwd=folder, check=True, capture_output=True, timeout=300
    )
    return folder


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def _error(path, **kwargs) -> str:
    with pytest.raises(EdgekitError) as info:
        load_model(path, **kwargs)
    assert info.value.exit_code == 2
    message = str(info.value)
    assert "\n" not in message.strip()  # one paragraph
    return message


# ---------------------------------------------------------------------------- formats


def test_torchscript(files):
    model = load_model(files / "scripted.pt")
    assert model.format == "torchscript"
    assert isinstance(model.module, torch.jit.ScriptModule)
    assert not model.module.training
    assert model.input_specs is None
    assert len(model.sha256) == 64


def test_exported_program_carries_input_specs(files):
    model = load_model(files / "program.pt2")
    assert model.format == "exported_program"
    assert isinstance(model.module, torch.export.ExportedProgram)
    [spec] = model.input_specs
    assert (spec.name, spec.shape, spec.dtype) == ("x", (1, 4), "float32")


@pytest.mark.parametrize("name", ["sd.pt", "ckpt.pth", "dataparallel.pt", "legacy.pt"])
def test_state_dict_with_arch_file(files, name):
    model = load_model(files / name, arch=f"{files / 'mymodels.py'}:build")
    assert model.format == "state_dict"
    assert not model.module.training
    expected = torch.load(files / "sd.pt", weights_only=True)
    for key, value in model.module.state_dict().items():
        assert torch.equal(value, expected[key])


def test_state_dict_with_arch_module_path(files, monkeypatch):
    monkeypatch.syspath_prepend(str(files))
    model = load_model(files / "sd.pt", arch="mymodels:Net")
    assert type(model.module).__name__ == "Net"


def test_pickled_module_with_code_file(files):
    model = load_model(files / "pickled.pt", trust_pickle=True, code=[str(files / "mymodels.py")])
    assert model.format == "pickled_module"
    assert type(model.module).__name__ == "Net"
    assert not model.module.training


def test_pickled_module_with_code_module_name(files, monkeypatch):
    monkeypatch.syspath_prepend(str(files))
    model = load_model(files / "pickled.pt", trust_pickle=True, code=["mymodels"])
    assert type(model.module).__name__ == "Net"


def test_pickled_from_main_with_the_training_script_as_code(files):
    # The class was pickled as `__main__.Inline`; importing make.py must not run its main block.
    before = (files / "sd.pt").stat().st_mtime_ns
    model = load_model(files / "pickled_main.pt", trust_pickle=True, code=[str(files / "make.py")])
    assert type(model.module).__name__ == "Inline"
    assert (files / "sd.pt").stat().st_mtime_ns == before


def test_onnx(files):
    model = load_model(files / "model.onnx")
    assert model.format == "onnx"
    assert model.module is None
    specs = model.input_specs.specs()  # what the ONNX file declares
    assert [(s.name, s.shape, s.dtype) for s in specs] == [("x", (1, 4), "float32")]


@pytest.mark.parametrize(
    ("source", "fake_name", "fmt"),
    [
        ("scripted.pt", "model.onnx", "torchscript"),
        ("program.pt2", "model.pt", "exported_program"),
        ("model.onnx", "weights.pt", "onnx"),
        ("sd.pt", "model.pt2", "state_dict"),
    ],
)
def test_detection_ignores_the_extension(files, tmp_path, source, fake_name, fmt):
    path = _copy(files / source, tmp_path / fake_name)
    arch = f"{files / 'mymodels.py'}:build" if fmt == "state_dict" else None
    assert load_model(path, arch=arch).format == fmt


# ---------------------------------------------------------------------------- bad inputs


def test_missing_file(tmp_path):
    assert "does not exist" in _error(tmp_path / "nope.pt")


def test_directory(tmp_path):
    assert "folder" in _error(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "empty" in _error(tmp_path / "empty.pt")


@pytest.mark.parametrize("source", ["scripted.pt", "sd.pt", "program.pt2", "model.onnx"])
def test_truncated_file(files, tmp_path, source):
    data = (files / source).read_bytes()
    path = tmp_path / source
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in _error(path)


@pytest.mark.parametrize("kind", ["text", "random", "npz"])
def test_not_a_model(tmp_path, kind):
    path = tmp_path / "model.pt"
    if kind == "text":
        path.write_text("hello, this is not a model\n" * 20)
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        with open(path, "wb") as handle:
            np.savez(handle, x=np.ones((3, 4)))
    message = _error(path)
    assert "not a model" in message
    assert "ONNX" in message


def test_state_dict_without_arch(files):
    message = _error(files / "sd.pt")
    assert "--arch" in message
    assert "state_dict" in message


@pytest.mark.parametrize(
    ("arch", "words"),
    [
        ("no_colon_here", ["module:Factory"]),
        ("edgekit_no_such_module:Net", ["--arch", "No module named"]),
        ("{files}/missing.py:Net", ["--arch", "no such file"]),
        ("{files}/mymodels.py:Missing", ["no class or function named 'Missing'"]),
        ("{files}/mymodels.py:build_wider", ["do not fit", "size mismatch"]),
        ("{files}/mymodels.py:build_other", ["missing key", "unexpected key", "fc1.weight"]),
        ("torch.nn:Linear", ["no arguments"]),
    ],
)
def test_bad_arch(files, arch, words):
    message = _error(files / "sd.pt", arch=arch.format(files=files))
    for word in words:
        assert word in message


def test_pickle_without_trust(files):
    message = _error(files / "pickled.pt")
    assert "--trust-pickle" in message
    assert "--code" in message
    assert "runs code" in message


def test_trusted_pickle_whose_class_cannot_be_imported(files):
    message = _error(files / "pickled_main.pt", trust_pickle=True)
    assert "--code" in message
    assert "__main__.Inline" in message


def test_bad_code_file(files, tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("import edgekit_definitely_missing_package\n")
    message = _error(files / "pickled.pt", trust_pickle=True, code=[str(broken)])
    assert "--code" in message
    assert "edgekit_definitely_missing_package" in message


# ---------------------------------------------------------------------------- the CLI


def _cli_error(model: Path, out: Path, *extra) -> str:
    result = run_edgekit("optimize", model, "-o", out, *extra)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / "report.json").exists()
    return result.stderr


def test_cli_missing_file(tmp_path):
    assert "does not exist" in _cli_error(tmp_path / "nope.pt", tmp_path / "out")


def test_cli_truncated_file(files, tmp_path):
    data = (files / "scripted.pt").read_bytes()
    (tmp_path / "model.pt").write_bytes(data[: len(data) // 2])
    assert "truncated" in _cli_error(tmp_path / "model.pt", tmp_path / "out")


def test_cli_state_dict_without_arch(files, tmp_path):
    assert "--arch" in _cli_error(files / "sd.pt", tmp_path / "out")


def test_cli_pickle_without_trust(files, tmp_path):
    stderr = _cli_error(files / "pickled.pt", tmp_path / "out")
    assert "--trust-pickle" in stderr
    assert "--code" in stderr


def test_cli_not_a_model(tmp_path):
    (tmp_path / "notes.pt").write_text(textwrap.dedent("just some text\n") * 10)
    assert "not a model" in _cli_error(tmp_path / "notes.pt", tmp_path / "out")


# ---- hostile or broken files and flags: exit 2 and a message that says what to do; nothing
# from an untrusted file runs


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
