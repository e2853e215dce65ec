"""Loading every model format from real files, and every bad input giving a clear error."""

from __future__ import annotations

import subprocess
import sys
import textwrap
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
