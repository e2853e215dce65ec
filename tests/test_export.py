"""Export to ONNX with real torch exporters and check parity in real onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgekit.errors import EdgekitError
from edgekit.model.export import check_parity, export_onnx, torch_outputs
from edgekit.model.inputs import Constant, InputSpec
from edgekit.model.load import LoadedModel, load_model
from edgekit.model.samples import generate_samples

pytestmark = pytest.mark.slow  # every test here starts a process or exports with torch

IMAGE = [InputSpec("image", (1, 3, 8, 8))]
TEXT = [InputSpec("features", (1, 6)), InputSpec("ids", (1, 5), "int64", 0, 20)]


class SmallCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, image):
        x = self.bn(self.conv(image)).relu()
        return self.fc(x.mean(dim=(2, 3)))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1))
        self.head = nn.Linear(4, 2)

    def forward(self, image):
        x = self.stem(image)
        x = (x + self.block(x)).relu()  # the skip connection
        return self.head(x.flatten(2).mean(-1))


class TwoInputs(nn.Module):
    """Float features plus int64 token ids through an Embedding; two outputs."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 6)
        self.mix = nn.Linear(6, 4)

    def forward(self, features, ids):
        hidden = self.mix(features + self.embed(ids).mean(1))
        return hidden, hidden.softmax(-1)


@torch.library.custom_op("edgekit_test::odd", mutates_args=())
def odd(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@odd.register_fake
def _(x):
    return torch.empty_like(x)


class UsesCustomOp(nn.Module):
    def forward(self, image):
        return odd(image) + 1


def _loaded(module, fmt="pickled_module") -> LoadedModel:
    if isinstance(module, nn.Module):
        module.eval()
    return LoadedModel(Path("model.pt"), fmt, "0" * 64, module, None)


def _seeded(cls):
    torch.manual_seed(0)
    return cls().eval()


def _batch_dims(path: Path) -> list:
    model = onnx.load(str(path))
    values = [*model.graph.input, *model.graph.output]
    return [v.type.tensor_type.shape.dim[0].dim_param for v in values]


def _export_and_check(model: LoadedModel, specs, path: Path) -> dict:
    info = export_onnx(model, specs, path)
    assert info["opset"] >= 17
    assert all(_batch_dims(path))  # every input and output has a symbolic batch axis
    for batch in (1, 5):
        feeds = generate_samples(specs, batch, seed=batch)
        parity = check_parity(model, path, feeds)
        assert parity["max_abs_err"] < 1e-4
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert all(out.shape[0] == batch for out in session.run(None, feeds))
    return info


def test_nn_module_uses_dynamo(tmp_path):
    path = tmp_path / "cnn.onnx"
    info = _export_and_check(_loaded(_seeded(SmallCnn)), IMAGE, path)
    assert info["exporter"] == "dynamo"
    assert info["notes"] == []
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["image"]
    assert [o.name for o in graph.output] == ["output"]
    assert not graph.initializer or all(not t.external_data for t in graph.initializer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.onnx"]  # one file, no temp left


def test_script_module_uses_torchscript_exporter(tmp_path):
    scripted = torch.jit.script(_seeded(SmallCnn))
    info = _export_and_check(_loaded(scripted, "torchscript"), IMAGE, tmp_path / "s.onnx")
    assert info["exporter"] == "torchscript"


def test_exported_program_saved_with_fixed_batch(tmp_path):
    program = torch.export.export(_seeded(Residual), (torch.randn(1, 3, 8, 8),))
    torch.export.save(program, tmp_path / "residual.pt2")
    model = load_model(tmp_path / "residual.pt2")
    info = _export_and_check(model, model.input_specs, tmp_path / "residual.onnx")
    assert info["exporter"] == "dynamo"
    assert any("fixed batch" in note for note in info["notes"])


def test_exported_program_with_dynamic_batch(tmp_path):
    batch = torch.export.Dim("batch")
    program = torch.export.export(
        _seeded(SmallCnn), (torch.randn(2, 3, 8, 8),), dynamic_shapes=({0: batch},)
    )
    path = tmp_path / "p.onnx"
    info = _export_and_check(_loaded(program, "exported_program"), IMAGE, path)
    written = next(o.version for o in onnx.load(str(path)).opset_import if o.domain == "")
    assert (info["exporter"], info["opset"], info["notes"]) == ("dynamo", written, [])
    assert info["attempts"] == [{"exporter": "dynamo", "error": None}]
    assert written >= 18  # the dynamo exporter's opsets, not the TorchScript exporter's 17


def test_two_inputs_float_and_token_ids(tmp_path):
    path = tmp_path / "two.onnx"
    _export_and_check(_loaded(_seeded(TwoInputs)), TEXT, path)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["features", "ids"]
    assert graph.input[1].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [o.name for o in graph.output] == ["output_0", "output_1"]


def test_residual_connection(tmp_path):
    _export_and_check(_loaded(_seeded(Residual)), IMAGE, tmp_path / "res.onnx")


class ReportsItsMode(nn.Module):
    """Returns whether it ran in inference mode and whether it was in training mode."""

    def forward(self, x):
        flags = [torch.is_inference_mode_enabled(), torch.is_grad_enabled(), self.training]
        return x.flatten(1)[:, :1] * 0 + torch.tensor([flags], dtype=x.dtype)


def test_torch_outputs_flattens_and_runs_in_inference_mode():
    outputs = torch_outputs(_loaded(_seeded(TwoInputs)), generate_samples(TEXT, 3))
    assert [o.shape for o in outputs] == [(3, 4), (3, 4)]
    np.testing.assert_allclose(outputs[1].sum(-1), 1.0, rtol=1e-5)
    (flags,) = torch_outputs(_loaded(ReportsItsMode().eval()), generate_samples(IMAGE, 2))
    assert flags.tolist() == [[1.0, 0.0, 0.0]] * 2  # inference mode, no autograd, eval mode


def test_parity_fails_against_a_different_model(tmp_path):
    path = tmp_path / "a.onnx"
    export_onnx(_loaded(_seeded(SmallCnn)), IMAGE, path)
    torch.manual_seed(1)
    other = _loaded(SmallCnn())
    with pytest.raises(EdgekitError) as info:
        check_parity(other, path, generate_samples(IMAGE, 4))
    assert info.value.exit_code == 2
    message = str(info.value)
    assert "max abs error" in message
    assert "tolerance" in message


def test_failed_export_names_the_op_and_keeps_the_earlier_file(tmp_path):
    path = tmp_path / "model.onnx"
    export_onnx(_loaded(_seeded(SmallCnn)), IMAGE, path)
    before = path.read_bytes()
    with pytest.raises(EdgekitError) as info:
        export_onnx(_loaded(UsesCustomOp()), IMAGE, path)
    assert info.value.exit_code == 2
    assert "edgekit_test" in str(info.value) and "odd" in str(info.value)
    assert "ONNX file" in str(info.value) or ".onnx" in str(info.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_hard_coded_batch_is_explained(tmp_path):
    class FixedBatch(nn.Module):
        def forward(self, image):
            return image.reshape(2, -1)  # only works for the example's batch

    with pytest.raises(EdgekitError) as info:
        export_onnx(_loaded(FixedBatch()), IMAGE, tmp_path / "fixed.onnx")
    assert "batch" in str(info.value)
    assert not list(tmp_path.iterdir())


class MaskedEncoder(nn.Module):
    """A padding mask through the fused encoder layer and the fused attention (eval, no grad)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)

    def forward(self, ids, mask):
        padding = mask == 0
        h = self.encoder(self.embed(ids), src_key_padding_mask=padding)
        out, weights = self.attn(h, h, h, key_padding_mask=padding)
        return out.mean(1), weights


def test_fused_kernels_with_a_padding_mask_export_exactly(tmp_path):
    torch.manual_seed(0)
    ids, mask = torch.randint(0, 50, (2, 8)), torch.ones(2, 8, dtype=torch.int64)
    mask[1, 5:] = 0
    with torch.no_grad():
        traced = torch.jit.trace(MaskedEncoder().eval(), (ids, mask), check_trace=False)
    graph = str(traced.inlined_graph)
    assert "_transformer_encoder_layer_fwd" in graph and "_native_multi_head_attention" in graph
    specs = [InputSpec("ids", (1, 8), "int64", 0, 50), InputSpec("mask", (1, 8), "int64", 0, 2)]
    info = export_onnx(_loaded(traced, "torchscript"), specs, tmp_path / "masked.onnx")
    assert info["exporter"] == "torchscript-to-exportedprogram" and info["fixed_batch"] is None
    feeds = generate_samples(specs, 6, seed=1)
    feeds["mask"][:, 0] = 1  # every sample attends to at least one position
    assert (
        check_parity(_loaded(traced, "torchscript"), tmp_path / "masked.onnx", feeds)["max_abs_err"]
        < 1e-5
    )


def test_the_nested_tensor_fast_path_says_how_to_trace_again(tmp_path):
    class Nested(MaskedEncoder):
        def forward(self, ids, mask):
            return self.encoder(self.embed(ids), src_key_padding_mask=mask == 0).mean(1)

    model = Nested()
    model.encoder.use_nested_tensor = True  # the default of nn.TransformerEncoder
    ids, mask = torch.randint(0, 50, (2, 8)), torch.ones(2, 8, dtype=torch.int64)
    mask[1, 5:] = 0
    with torch.no_grad():
        traced = torch.jit.trace(model.eval(), (ids, mask), check_trace=False)
    specs = [InputSpec("ids", (1, 8), "int64", 0, 50), InputSpec("mask", (1, 8), "int64", 1, 2)]
    with pytest.raises(EdgekitError, match="enable_nested_tensor=False"):
        export_onnx(_loaded(traced, "torchscript"), specs, tmp_path / "nested.onnx")


class Scaled(nn.Module):
    """forward(x, gain, y): a float argument between two tensors, bound with --input gain=VALUE."""

    def forward(self, x, gain, y):
        return x * gain + y


def test_nn_module_with_a_bound_constant_exports_it_baked_in(tmp_path):
    model = _loaded(Scaled())
    model.constants = [Constant("gain", 2.5, 1)]
    specs = [InputSpec("x", (1, 4)), InputSpec("y", (1, 4))]
    path = tmp_path / "scaled.onnx"
    info = _export_and_check(model, specs, path)
    assert (info["exporter"], info["constants"]) == ("dynamo", {"gain": 2.5})
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["x", "y"]
    feeds = generate_samples(specs, 3, seed=1)
    (out,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(out, feeds["x"] * 2.5 + feeds["y"], rtol=1e-6)
