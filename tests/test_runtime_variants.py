"""The runtime is part of the variant: `edgekit optimize` makes OpenVINO (LiteRT, ExecuTorch)
variants beside the ONNX ones, measures their drift and speed, and `edgekit serve` and
--export-repository run them on their runtime. Runtimes not installed here are skipped with the
reason their available() gives (LiteRT and ExecuTorch are not in the dev extra)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from helpers import run_edgekit, save_graph
from onnx import TensorProto, helper, numpy_helper
from serve_helpers import Server, linear_model

from edgekit import runtimes
from edgekit.accuracy import run_onnx
from edgekit.errors import EdgekitError
from edgekit.model.samples import resolve_samples
from edgekit.passes.runtimes import select

QUICK = ("--min-time", "0.2", "--max-time", "0.6")


def need(runtime: str) -> None:
    ok, why = runtimes.module(runtime).available()
    if not ok:
        pytest.skip(why)


# ------------------------------------------------------------------ fast


def test_runtime_selection_names_the_missing_ones_with_their_pip_line(monkeypatch):
    with pytest.raises(EdgekitError, match="unknown runtime 'tensorrt'"):
        select("ort,tensorrt")
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # LiteRT does not import
    chosen = select(None)
    assert "litert" not in chosen.runtimes and "onnxruntime" not in chosen.runtimes
    assert "litert" in chosen.notes[0] and "pip install ai-edge-litert" in chosen.notes[0]
    with pytest.raises(EdgekitError, match="pip install ai-edge-litert"):
        select("ort,litert")  # asked for by name: fail before minutes of work
    assert select("ort").runtimes == ()


def test_generated_float_inputs_are_normal_unless_a_range_is_given():
    samples = resolve_samples(["x:1x64:float32", "y:1x64:float32:2-3"], None, None, 64)
    x, y = samples.feeds["x"], samples.feeds["y"]
    assert abs(x.mean()) < 0.05 and 0.9 < x.std() < 1.1 and x.min() < -2  # N(0, 1)
    assert y.min() >= 2 and y.max() < 3  # the range --input gave
    data = samples.to_json()["generated_inputs"]
    assert data["x"].startswith("normal") and data["y"].startswith("uniform")
    (note,) = samples.generated_note()
    assert "SYNTHETIC" in note and "calibrated" in note and "--data" in note


def _conv_onnx(path):
    """x[N,3,8,8] -> Conv(3->4) -> Relu -> y: a float model for OpenVINO to convert."""
    w = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [numpy_helper.from_array(w, "w")],
    )
    return save_graph(graph, path)


def test_drift_runs_an_openvino_variant_like_an_onnx_one(tmp_path):
    need("openvino")
    from edgekit.runtimes import ov

    onnx_path = _conv_onnx(tmp_path / "m.onnx")
    xml = ov.convert(onnx_path, tmp_path / "m.xml", "fp32")
    feeds = {"x": np.random.default_rng(1).normal(size=(6, 3, 8, 8)).astype(np.float32)}
    expected = run_onnx(onnx_path, feeds, chunk=4)
    got = run_onnx(xml, feeds, chunk=4)
    assert got[0].shape == (6, 4, 8, 8)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-4, atol=1e-4)


def test_a_failed_conversion_is_an_error_row_and_onnx_input_needs_the_torch_model(tmp_path):
    need("openvino")
    from edgekit.passes import PassContext, Variant
    from edgekit.passes.runtimes import _from_torch, _make
    from edgekit.runtimes import ov

    parent = Variant("simplified", _conv_onnx(tmp_path / "simplified.onnx"))
    # int8 without calibration samples: OpenVINO's converter refuses, the row says why
    failed = _make(parent, "openvino", "int8", {}, lambda out: ov.convert(parent.path, out, "int8"))
    assert failed.path is None and failed.runtime == "openvino"
    assert "int8 needs calibration samples" in failed.error
    assert failed.parent == "simplified" and failed.passes[-1]["name"] == "convert-openvino"
    made = _make(parent, "openvino", "fp32", {}, lambda out: ov.convert(parent.path, out))
    assert made.error is None and made.path.name == "openvino-fp32.xml"

    ctx = PassContext(tmp_path, {}, None, [], False, None, step=None)  # no torch module loaded
    assert _from_torch("litert", parent, ctx) == []
    assert "needs the PyTorch model" in ctx.notes[0]


def _attention_onnx(path):
    """x[N,4,8] -> q, k, v MatMuls -> Softmax(q kᵀ) v -> y: MatMul-heavy, like a transformer."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), w) for w in "qkv"
    ]
    graph = helper.make_graph(
        [
            *(helper.make_node("MatMul", ["x", w], [f"{w}x"]) for w in "qkv"),
            helper.make_node("Transpose", ["kx"], ["kt"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["qx", "kt"], ["s"]),
            helper.make_node("Softmax", ["s"], ["a"], axis=-1),
            helper.make_node("MatMul", ["a", "vx"], ["y"]),
        ],
        "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8])],
        weights,
    )
    return save_graph(graph, path)


@pytest.mark.slow  # real NNCF quantization: ~50 s
def test_openvino_int8_takes_nncfs_transformer_scheme_for_matmul_heavy_models(tmp_path):
    need("openvino")
    from edgekit.passes import PassContext, Variant
    from edgekit.passes.runtimes import _openvino

    rng = np.random.default_rng(2)
    for make, shape, scheme in (
        (_attention_onnx, (8, 4, 8), "transformer"),
        (_conv_onnx, (8, 3, 8, 8), "default"),
    ):
        folder = tmp_path / scheme
        folder.mkdir()
        parent = Variant("simplified", make(folder / "simplified.onnx"))
        feeds = {"x": rng.normal(size=shape).astype(np.float32)}
        ctx = PassContext(folder, feeds, None, [], True, None, step=None)
        int8 = {v.name: v for v in _openvino(parent, ctx)}["openvino-int8"]
        assert int8.error is None and int8.path.is_file(), int8.error
        assert int8.passes[-1]["settings"]["nncf_model_type"] == scheme


def test_export_repository_writes_the_openvino_backend_and_refuses_litert(tmp_path):
    need("openvino")
    from edgekit.runtimes import ov
    from edgekit.serve import repository
    from edgekit.serve.server import choose

    xml = ov.convert(linear_model(tmp_path / "lin.onnx"), tmp_path / "lin.xml", "fp32")
    out = tmp_path / "repo"
    _, choices = choose(xml, None)
    written, skipped = repository.export(
        choices, out, max_batch=8, batch_timeout_ms=1, instances=1, threads=2
    )
    folder = written[0]
    assert not skipped
    assert (folder / "1" / "model.xml").read_text() == xml.read_text()
    assert (folder / "1" / "model.bin").read_bytes() == xml.with_suffix(".bin").read_bytes()
    config = (folder / "config.pbtxt").read_text()
    assert 'backend: "openvino"' in config and "onnxruntime" not in config
    assert 'key: "INFERENCE_NUM_THREADS"' in config and "max_batch_size: 8" in config

    tflite = tmp_path / "lin.tflite"
    tflite.write_bytes(b"not read")
    _, choices = choose(tflite, None)
    with pytest.raises(EdgekitError, match="Triton has no litert backend"):
        repository.export(
            choices, tmp_path / "r2", max_batch=1, batch_timeout_ms=0, instances=1, threads=None
        )
    assert not (tmp_path / "r2").exists()


# ------------------------------------------------------------------ slow: processes


@pytest.mark.slow  # starts a server process
def test_serve_an_openvino_variant_to_tritons_client(tmp_path):
    need("openvino")
    tritonclient_http = pytest.importorskip("tritonclient.http")
    from edgekit.runtimes import ov

    onnx_path = linear_model(tmp_path / "lin.onnx")
    xml = ov.convert(onnx_path, tmp_path / "lin.xml", "fp32")
    srv = Server(xml, "--threads", "1", "--max-batch", "4")
    try:
        client = tritonclient_http.InferenceServerClient(srv.hostport)
        assert client.is_model_ready("lin")
        meta = client.get_model_metadata("lin")
        assert meta["platform"] == "openvino"
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
        x = np.random.default_rng(2).normal(size=(3, 16)).astype(np.float32)
        tensor = tritonclient_http.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        got = client.infer("lin", [tensor]).as_numpy("y")
        np.testing.assert_allclose(got, run_onnx(onnx_path, {"x": x})[0], rtol=1e-5, atol=1e-5)
    finally:
        assert srv.stop() == 0, "".join(srv.stderr)


@pytest.fixture(scope="module")
def tiny_cnn(tmp_path_factory):
    """A small CNN saved as a state_dict with its --arch file (trained-like: BatchNorm stats)."""
    folder = tmp_path_factory.mktemp("cnn")
    arch = folder / "net.py"
    arch.write_text(
        "from torch import nn\n"
        "class Net(nn.Sequential):\n"
        "    def __init__(self):\n"
        "        super().__init__(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),\n"
        "            nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "            nn.Linear(16, 5))\n"
    )
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("net", arch)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    net = module.Net().eval()
    weights = folder / "net.pt"
    torch.save(net.state_dict(), weights)
    return weights, f"{arch}:Net"


@pytest.mark.slow  # exports with torch, starts benchmark workers
def test_optimize_makes_measures_and_recommends_openvino_variants(tiny_cnn, tmp_path):
    need("openvino")
    weights, arch = tiny_cnn
    out = tmp_path / "out"
    result = run_edgekit(
        "optimize", weights, "--arch", arch, "--input", "x:1x3x16x16:float32",
        "--runtime", "ort,openvino", "-o", out, *QUICK,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    rows = {v["name"]: v for v in report["variants"]}
    assert {"openvino-fp32", "openvino-int8"} <= set(rows)
    for name in ("openvino-fp32", "openvino-int8"):
        row = rows[name]
        assert row["error"] is None and row["runtime"] == "openvino", row
        assert (out / row["file"]).is_file() and (out / row["file"]).with_suffix(".bin").is_file()
        assert row["latency_ms"]["p50"] > 0
        assert row["accuracy"]["cosine_min"] is not None
    assert rows["openvino-fp32"]["accuracy"]["cosine_min"] > 0.9999
    assert rows["openvino-int8"]["accuracy"]["cosine_min"] > 0.9
    assert rows["fp32"]["runtime"] == "onnxruntime"
    assert report["recommendation"]["variant"] in rows  # any runtime may win
    notes = " ".join(report["notes"])
    assert "no litert variants" not in notes  # not asked for
    assert "SYNTHETIC" in notes
