"""Models as users really have them (issue 11): built here, saved the way users save them, and
run through the real `edgekit optimize` CLI. Every report row must be measured, not an error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import run_edgekit
from onnx import TensorProto, helper
from torch import nn

from models import relu_model, vad_model

pytestmark = pytest.mark.slow  # every test here starts a process or exports with torch

FAST = ("--int8", "none", "--min-time", "0.1", "--max-time", "0.3", "--json")


def optimize(model: Path, *args: str) -> dict:
    result = run_edgekit("optimize", model, "-o", model.parent / "out", *FAST, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    for row in report["variants"]:
        assert row["error"] is None, (row["name"], row["error"])
        assert row["latency_ms"]["p50"] > 0, row["name"]
        assert row["accuracy"]["cosine_min"] is not None, row["name"]
    return report


def export_settings(report: dict) -> dict:
    fp32 = next(v for v in report["variants"] if v["name"] == "fp32")
    return next(p["settings"] for p in fp32["passes"] if p["name"] == "export")


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(32, 4)

    def forward(self, ids):
        return self.head(self.encoder(self.embed(ids)).mean(1))


def test_traced_transformer_encoder_falls_back_to_the_converter(tmp_path):
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (2, 8))
    traced = torch.jit.trace(Encoder().eval(), ids, check_trace=False)
    torch.jit.save(traced, tmp_path / "encoder.pt")
    report = optimize(tmp_path / "encoder.pt", "--input", "ids:1x8:int64:0-50")
    settings = export_settings(report)
    assert settings["exporter"] == "torchscript-to-exportedprogram"
    assert settings["attempts"][0]["exporter"] == "torchscript"
    assert "unknown rank" in settings["attempts"][0]["error"]
    assert any("torchscript exporter failed" in n for n in settings["notes"])


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = self.fc(x)
        if bool(y.sum() > 0):  # noqa: SIM108 (control flow is the point)
            y = y * 2
        else:
            y = y - 1
        for _ in range(2):
            y = torch.relu(y) + 0.5
        return y


def test_scripted_model_with_control_flow(tmp_path):
    torch.jit.save(torch.jit.script(Branchy().eval()), tmp_path / "branchy.pt")
    report = optimize(tmp_path / "branchy.pt", "--input", "x:1x8")
    assert export_settings(report)["exporter"] == "torchscript"


class WithRate(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor, sr: int):
        return self.fc(x) * (float(sr) / 8000.0)


def test_torchscript_with_an_int_argument_bound_to_a_constant(tmp_path):
    torch.jit.save(torch.jit.script(WithRate().eval()), tmp_path / "rate.pt")
    report = optimize(tmp_path / "rate.pt", "--input", "x:1x16", "--input", "sr=16000")
    assert export_settings(report)["constants"] == {"sr": 16000}
    bound = {i["name"]: i for i in report["inputs"]}
    assert bound["sr"]["value"] == 16000 and "constant" in bound["sr"]["bound"]
    graph = onnx.load(str(tmp_path / "out" / "fp32.onnx"))
    assert [i.name for i in graph.graph.input] == ["x"]


def state_dict_and_arch(tmp_path: Path, source: str, cls: str) -> tuple[Path, str]:
    """A user's model file (`source`, as <cls>.py) and a state_dict of its class `cls` (<cls>.pt):
    (the .pt, the --arch value)."""
    code, weights = tmp_path / f"{cls.lower()}.py", tmp_path / f"{cls.lower()}.pt"
    code.write_text(source)
    namespace: dict = {}
    exec(source, namespace)
    torch.save(namespace[cls]().state_dict(), weights)
    return weights, f"{code}:{cls}"


GRU_ARCH = """
import torch
from torch import nn


class Streaming(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(8, 16, batch_first=True)
        self.out = nn.Linear(16, 3)

    def forward(self, x, h):
        y, h_next = self.gru(x, h)
        return self.out(y), h_next
"""


def test_gru_with_state_batched_on_axis_1(tmp_path):
    weights, arch = state_dict_and_arch(tmp_path, GRU_ARCH, "Streaming")
    arrays = {
        "x": np.random.default_rng(0).normal(size=(12, 5, 8)).astype(np.float32),
        "h": np.random.default_rng(1).normal(size=(1, 12, 16)).astype(np.float32),
    }
    np.savez(tmp_path / "data.npz", **arrays)
    report = optimize(
        weights,
        "--arch",
        arch,
        "--input",
        "x:1x5x8",
        "--input",
        "h:1xBx16",
        "--data",
        tmp_path / "data.npz",
        "--primary-output",
        "output_0",
    )
    assert {i["name"]: i["batch_axis"] for i in report["inputs"]} == {"x": 0, "h": 1}
    graph = onnx.load(str(tmp_path / "out" / "fp32.onnx"))
    h = next(i for i in graph.graph.input if i.name == "h")
    assert h.type.tensor_type.shape.dim[1].dim_param  # the batch axis is dynamic
    fp32 = next(v for v in report["variants"] if v["name"] == "fp32")
    assert set(fp32["accuracy"]["outputs"]) == {"output_0", "output_1"}
    assert fp32["accuracy"]["outputs"]["output_0"]["shape"] == [5, 3]
    assert report["data"]["samples"] == 12


DICT_ARCH = """
from torch import nn


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.classify = nn.Linear(8, 5)

    def forward(self, x):
        embedding = self.body(x).tanh()
        return {"embedding": embedding, "logits": self.classify(embedding)}
"""


def test_model_returning_a_dict(tmp_path):
    weights, arch = state_dict_and_arch(tmp_path, DICT_ARCH, "TwoHeads")
    report = optimize(weights, "--arch", arch, "--input", "x:1x6", "--primary-output", "logits")
    graph = onnx.load(str(tmp_path / "out" / "fp32.onnx"))
    assert [o.name for o in graph.graph.output] == ["embedding", "logits"]
    fp32 = next(v for v in report["variants"] if v["name"] == "fp32")
    assert fp32["accuracy"]["primary_output"] == "logits"
    assert set(fp32["accuracy"]["outputs"]) == {"embedding", "logits"}
    assert fp32["accuracy"]["top1_agreement"] == 1.0  # logits are classifier-shaped
    assert any("'logits'" in n and "--primary-output" in n for n in report["notes"])


def test_unknown_primary_output_is_a_clear_error(tmp_path):
    weights, arch = state_dict_and_arch(tmp_path, DICT_ARCH, "TwoHeads")
    result = run_edgekit(
        "optimize", weights, "--arch", arch,
        "--input", "x:1x6", "--primary-output", "nope", *FAST,
    )  # fmt: skip
    assert result.returncode == 2
    assert "embedding" in result.stderr and "Traceback" not in result.stderr


def test_onnx_file_with_a_scalar_input(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    gain = helper.make_tensor_value_info("gain", TensorProto.FLOAT, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    weight = helper.make_tensor(
        "w", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).ravel().tolist()
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Mul", ["xw", "gain"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "scaled", [x, gain], [y], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "scaled.onnx")
    report = optimize(tmp_path / "scaled.onnx")
    bound = {i["name"]: i for i in report["inputs"]}
    assert bound["gain"]["shape"] == [] and bound["gain"]["batch_axis"] is None
    assert bound["x"]["batch_axis"] == 0


def test_constant_for_an_input_the_onnx_model_lacks_is_refused(tmp_path):
    relu_model(tmp_path / "r.onnx", ("batch", 4))
    result = run_edgekit("optimize", tmp_path / "r.onnx", "--input", "sr=16000", *FAST)
    assert result.returncode == 2 and "not an input of this ONNX model" in result.stderr


@pytest.mark.parametrize("sr", ["sr:scalar:int64:16000", "sr=16000"])
def test_onnx_with_unknown_axes_and_a_scalar_int_input(tmp_path, sr):
    vad_model(tmp_path / "vad.onnx")
    report = optimize(
        tmp_path / "vad.onnx", "--input", "input:1x512:float32", "--input", "state:2xBx128",
        "--input", sr,
    )  # fmt: skip
    bound = {i["name"]: i for i in report["inputs"]}
    assert bound["sr"]["value"] == 16000 and bound["sr"]["dtype"] == "int64"
    assert bound["state"]["batch_axis"] == 1 and bound["input"]["shape"] == [1, 512]
    graph = onnx.load(str(tmp_path / "out" / "fp32.onnx"))
    assert [i.name for i in graph.graph.input] == ["input", "state", "sr"]  # still fed


def test_a_torch_constant_that_is_nan_is_a_clear_exit_2(tmp_path):
    torch.jit.save(torch.jit.script(WithRate().eval()), tmp_path / "rate.pt")
    result = run_edgekit("optimize", tmp_path / "rate.pt", "--input", "x:1x16", "--input", "sr=nan")
    assert result.returncode == 2 and "not a finite number" in result.stderr


class StreamingState(nn.Module):
    """Keeps its recurrent state and sample rate on itself between calls, like a streaming VAD."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 16)
        self.register_buffer("h", torch.zeros(1, 16))
        self.sr: int = 0

    def remember(self, h: torch.Tensor, sr: int):
        self.h = h
        self.sr = sr

    def forward(self, x: torch.Tensor, sr: int):
        h = torch.tanh(self.fc(x) + self.h)
        if sr != self.sr:
            self.remember(h, sr)
        return h


class WrapsState(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = StreamingState()
        self.context = torch.zeros(1, 8)

    def forward(self, x: torch.Tensor, sr: int):
        self.context = x[:, -8:]
        return self.model(x, sr)


def test_stateful_torchscript_is_a_clear_exit_2_naming_the_attributes(tmp_path):
    torch.jit.save(torch.jit.script(WrapsState().eval()), tmp_path / "stateful.pt")
    result = run_edgekit(
        "optimize", tmp_path / "stateful.pt", "--input", "x:1x8", "--input", "sr=16000", *FAST
    )
    assert result.returncode == 2, result.stderr[-2000:]
    for name in ("self.context", "self.model.h", "self.model.sr"):
        assert name in result.stderr
    assert "cannot hold state between calls" in result.stderr
    assert "Traceback" not in result.stderr


class TensorState(nn.Module):
    """Streaming state that is all tensors: a context window and a recurrent state."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(8, 16)
        self.register_buffer("h", torch.zeros(1, 16))
        self.context = torch.zeros(1, 8)

    def forward(self, x: torch.Tensor):
        h = torch.tanh(self.inner(x + self.context) + self.h)
        self.h = h
        self.context = x[:, -8:]
        return h * 2


def test_tensor_state_not_named_is_exit_2_offering_the_inputs_to_give(tmp_path):
    torch.jit.save(torch.jit.script(TensorState().eval()), tmp_path / "state.pt")
    result = run_edgekit("optimize", tmp_path / "state.pt", "--input", "x:1x8", *FAST)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--input context:1x8:float32 --input h:1x16:float32" in result.stderr


def test_tensor_state_named_in_input_is_exported_as_inputs_and_outputs(tmp_path):
    torch.manual_seed(0)
    scripted = torch.jit.script(TensorState().eval())
    torch.jit.save(scripted, tmp_path / "state.pt")
    report = optimize(
        tmp_path / "state.pt", "--input", "x:1x8", "--input", "h:1x16", "--input", "context:1x8"
    )
    fp32 = next(v for v in report["variants"] if v["name"] == "fp32")
    assert any("keeps state between calls" in n and "h_next" in n for n in fp32["notes"])
    path = tmp_path / "out" / "fp32.onnx"
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["x", "h", "context"]
    assert [o.name for o in graph.output] == ["output", "h_next", "context_next"]

    # two calls of the stateful model against two calls of the graph, the state fed back
    import onnxruntime as ort

    session = ort.InferenceSession(str(path))
    rng = np.random.default_rng(0)
    state = {"h": np.zeros((1, 16), np.float32), "context": np.zeros((1, 8), np.float32)}
    for _ in range(2):
        x = rng.normal(size=(1, 8)).astype(np.float32)
        with torch.no_grad():
            expected = scripted(torch.from_numpy(x)).numpy()
        y, h, context = session.run(None, {"x": x, **state})
        np.testing.assert_allclose(y, expected, atol=1e-5)
        np.testing.assert_allclose(h, scripted.h.numpy(), atol=1e-5)
        np.testing.assert_allclose(context, scripted.context.numpy(), atol=1e-6)
        state = {"h": h, "context": context}
    # the batch stays dynamic: four streams at once
    four = {n: np.repeat(v, 4, axis=0) for n, v in {"x": x, **state}.items()}
    assert [o.shape for o in session.run(None, four)] == [(4, 16), (4, 16), (4, 8)]


def test_tensor_state_of_the_wrong_shape_is_exit_2(tmp_path):
    torch.jit.save(torch.jit.script(TensorState().eval()), tmp_path / "state.pt")
    result = run_edgekit("optimize", tmp_path / "state.pt", "--input", "x:1x8",
                         "--input", "h:1x32", "--input", "context:1x8", *FAST)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--input h:1x16:float32" in result.stderr


def test_traced_encoder_in_eval_mode_exports_its_fused_fast_path(tmp_path):
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (2, 8))
    with torch.no_grad():  # eval and no autograd: PyTorch's fused encoder-layer kernel
        traced = torch.jit.trace(Encoder().eval(), ids, check_trace=False)
    assert "aten::_transformer_encoder_layer_fwd" in str(traced.inlined_graph)
    torch.jit.save(traced, tmp_path / "fast.pt")
    report = optimize(tmp_path / "fast.pt", "--input", "ids:1x8:int64:0-50")
    settings = export_settings(report)
    assert settings["exporter"] == "torchscript-to-exportedprogram"
    assert settings["fixed_batch"] is None  # the batch stays dynamic
    fp32 = next(v for v in report["variants"] if v["name"] == "fp32")
    assert fp32["accuracy"]["cosine_min"] > 0.9999


SIZE_ARCH = """
import torch
from torch import nn


class SizeThroughTensor(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        n = int(torch.tensor(x.shape[0]).item())  # the batch as data: unbacked when dynamic
        y = self.fc(x)
        if n > 0:  # a branch on it: a guard the dynamic export cannot decide
            y = y.view(n, -1) * 2
        return y
"""


def test_a_data_dependent_batch_is_exported_fixed_at_the_benchmark_batch(tmp_path):
    weights, arch = state_dict_and_arch(tmp_path, SIZE_ARCH, "SizeThroughTensor")
    report = optimize(
        weights, "--arch", arch,
        "--input", "x:3x4", "--int8", "all",  # calibration and outlier probes in whole batches
    )  # fmt: skip
    settings = export_settings(report)
    assert settings["fixed_batch"] == 3
    assert "data-dependent" in settings["attempts"][0]["error"]
    fp32 = next(v for v in report["variants"] if v["name"] == "fp32")
    assert any("batch is fixed at 3" in n for n in fp32["notes"])
    graph = onnx.load(str(tmp_path / "out" / "fp32.onnx"))
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3
    assert report["data"]["samples"] % 3 == 0
    assert {"int8-static", "int8-dynamic"} <= {v["name"] for v in report["variants"]}


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        y, weights = self.attn(x, x, x)
        return self.head(y.mean(1)), weights


def test_traced_attention_in_eval_mode_exports_its_fused_fast_path(tmp_path):
    torch.manual_seed(0)
    with torch.no_grad():  # the fused multi-head attention kernel, its weights averaged
        traced = torch.jit.trace(Attention().eval(), torch.randn(2, 5, 16), check_trace=False)
    assert "aten::_native_multi_head_attention" in str(traced.inlined_graph)
    torch.jit.save(traced, tmp_path / "attention.pt")
    report = optimize(tmp_path / "attention.pt", "--input", "x:1x5x16")
    assert export_settings(report)["exporter"] == "torchscript-to-exportedprogram"
    fp32 = next(v for v in report["variants"] if v["name"] == "fp32")
    assert fp32["accuracy"]["outputs"]["output_1"]["shape"] == [5, 5]  # the attention weights
