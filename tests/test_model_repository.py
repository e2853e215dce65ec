"""`edgekit serve PATH --export-repository OUT`: a Triton/KServe model repository whose
config.pbtxt parses with Triton's own model_config.proto (shipped in the tritonclient package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from helpers import run_edgekit
from serve_helpers import dynamic_int8_model, output_folder

pytestmark = pytest.mark.slow  # every test here starts a process or exports with torch

tritonclient = pytest.importorskip("tritonclient")
text_format = pytest.importorskip("google.protobuf.text_format")


def model_config_pb2():
    """Triton's model_config.proto, compiled, as tritonclient ships it (imported by path: the
    tritonclient.grpc package itself wants grpcio, which the HTTP client does not need)."""
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(path: Path):
    pb2 = model_config_pb2()
    return pb2, text_format.Parse(path.read_text(), pb2.ModelConfig())


def test_every_variant_without_batching(tmp_path):
    folder = output_folder(tmp_path / "m.edgekit")
    out = tmp_path / "repo"
    done = run_edgekit("serve", folder, "--variant", "all", "--max-batch", "1",
                       "--export-repository", out)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["fp32", "fragile", "int8-static"]
    pb2, config = parse(out / "fp32" / "config.pbtxt")
    assert config.name == "fp32" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 0  # the batch axis is in dims: any batch size
    (x,) = config.input
    assert (x.name, x.data_type, list(x.dims)) == ("x", pb2.TYPE_FP32, [-1, 16])
    (y,) = config.output
    assert (y.name, y.data_type, list(y.dims)) == ("y", pb2.TYPE_FP32, [-1, 4])
    assert not config.HasField("dynamic_batching")
    assert config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_CPU
    # the copied model is the variant, byte for byte, and runs
    model = out / "fp32" / "1" / "model.onnx"
    assert model.read_bytes() == (folder / "fp32.onnx").read_bytes()
    x = np.ones((2, 16), np.float32)
    assert ort.InferenceSession(str(model)).run(None, {"x": x})[0].shape == (2, 4)


def test_recommended_variant_with_dynamic_batching(tmp_path):
    folder = output_folder(tmp_path / "m.edgekit")
    out = tmp_path / "repo"
    done = run_edgekit("serve", folder, "--name", "digits", "--max-batch", "8",
                       "--batch-timeout-ms", "2", "--instances", "2", "--threads", "1",
                       "--export-repository", out)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [p.name for p in out.iterdir()] == ["digits"]
    pb2, config = parse(out / "digits" / "config.pbtxt")
    assert config.max_batch_size == 8
    assert list(config.input[0].dims) == [16] and list(config.output[0].dims) == [4]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert config.instance_group[0].count == 2
    assert config.parameters["intra_op_thread_count"].string_value == "1"
    assert (out / "digits" / "1" / "model.onnx").read_bytes() == (
        folder / "int8-static.onnx"
    ).read_bytes()


def test_batching_by_default_except_for_a_model_that_quantizes_per_batch(tmp_path):
    folder = output_folder(tmp_path / "m.edgekit")
    out = tmp_path / "repo"
    done = run_edgekit("serve", folder, "--export-repository", out)
    assert done.returncode == 0, done.stderr
    _, config = parse(out / "int8-static" / "config.pbtxt")
    assert config.max_batch_size == 16 and list(config.input[0].dims) == [16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 0

    dynamic = dynamic_int8_model(tmp_path / "dynamic.onnx")
    done = run_edgekit("serve", dynamic, "--export-repository", out)
    assert done.returncode == 0, done.stderr
    _, config = parse(out / "dynamic" / "config.pbtxt")
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [-1, 16]
    assert not config.HasField("dynamic_batching")


def test_output_that_is_a_file_exits_2(tmp_path):
    folder = output_folder(tmp_path / "m.edgekit")
    (tmp_path / "file").write_text("x")
    done = run_edgekit("serve", folder, "--export-repository", tmp_path / "file")
    assert done.returncode == 2 and "is a file" in done.stderr


def test_files_already_there_are_replaced_only_with_force(tmp_path):
    folder = output_folder(tmp_path / "m.edgekit")
    out = tmp_path / "repo"
    assert run_edgekit("serve", folder, "--export-repository", out).returncode == 0
    config, model = out / "int8-static" / "config.pbtxt", out / "int8-static" / "1" / "model.onnx"
    config.write_text(config.read_text() + "# tuned by hand\n")
    files = sorted(p for p in out.rglob("*") if p.is_file())
    before = {p: p.read_bytes() for p in files}

    done = run_edgekit("serve", folder, "--export-repository", out)
    assert done.returncode == 2, done.stderr
    assert "int8-static/config.pbtxt" in done.stderr and "int8-static/1/model.onnx" in done.stderr
    assert "--force" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p for p in out.rglob("*") if p.is_file()) == files
    assert {p: p.read_bytes() for p in files} == before

    done = run_edgekit("serve", folder, "--export-repository", out, "--force")
    assert done.returncode == 0, done.stderr
    assert "# tuned by hand" not in config.read_text()
    assert ort.InferenceSession(str(model)).get_inputs()
