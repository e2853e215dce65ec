"""Pruning on real torch models, exported for real and run with onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import REPO, run_edgekit
from torch import nn

from edgekit.accuracy import run_onnx, task_accuracy
from edgekit.api import no_progress
from edgekit.errors import EdgekitError
from edgekit.model.export import export_onnx, torch_outputs
from edgekit.model.inputs import InputSpec
from edgekit.model.load import LoadedModel
from edgekit.model.samples import generate_samples
from edgekit.passes import PassContext, Variant, pipeline
from edgekit.passes.int8 import Int8
from edgekit.passes.prune import Prune, _prune_structured, plan_pruning, pruned_variants
from edgekit.recommend import Budget

pytestmark = pytest.mark.slow  # every test here starts a process or exports with torch

SPECS = [InputSpec("image", (1, 3, 16, 16))]


class ResidualNet(nn.Module):
    """stem → residual block (the add ties three convs' channels together) → pool → classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        return self.fc(x.mean((2, 3)))


class HardCodedWidth(ResidualNet):
    """Its forward() hard-codes a channel count, which no dependency graph can see."""

    def forward(self, x):
        return self.fc(self.stem(x).view(x.shape[0], 16, -1).mean(2))


def _setup(tmp_path, module, labels=None, fmt="state_dict"):
    torch.manual_seed(0)
    loaded = LoadedModel(tmp_path / "model.pt", fmt, "0" * 64, module.eval(), None)
    feeds = generate_samples(SPECS, 16)
    fp32 = Variant("fp32", tmp_path / "fp32.onnx")
    export_onnx(loaded, SPECS, fp32.path)
    ctx = PassContext(
        staging=tmp_path,
        feeds=feeds,
        labels=labels,
        reference=torch_outputs(loaded, feeds),
        data_is_real=False,
        budget=Budget("cosine", 0.99),
        step=no_progress,
    )
    return loaded, fp32, ctx


def _run(tmp_path, module, prune, with_int8=False, **plan_args):
    loaded, fp32, ctx = _setup(tmp_path, module, plan_args.pop("labels", None))
    ctx.loaded, ctx.specs = loaded, SPECS
    plan = plan_pruning(prune, specs=SPECS, eval_feeds=ctx.feeds, **plan_args)
    # the pipeline adds the int8 of every pruned variant when int8 runs before pruning
    passes = [Int8(), Prune(plan)] if with_int8 else [Prune(plan)]
    variants = pipeline.run(passes, fp32, ctx)[1:]
    return {v.name: v for v in variants}, ctx


def test_structured_pruning_keeps_the_residual_add_and_the_classifier(tmp_path):
    variants, ctx = _run(
        tmp_path,
        ResidualNet(),
        ["structured:0.5"],
        with_int8=True,
        finetune_epochs=0,
        train_data=None,
    )
    pruned = variants["structured-0.5"]
    assert pruned.error is None and pruned.parent == "fp32"
    info = pruned.extra["pruning"]
    assert info["macs_after"] < 0.4 * info["macs_before"]
    assert info["params_after"] < info["params_before"] and info["round_to"] == 8
    assert pruned.passes[0]["settings"]["kept_output_layers"] == ["fc"]
    outputs = run_onnx(pruned.path, ctx.feeds)
    assert outputs[0].shape == (16, 4)
    assert any("export parity of the pruned model" in n for n in pruned.notes)
    # The combined variant: int8 of the pruned model, its parent recorded.
    combined = [v for name, v in variants.items() if name.startswith("structured-0.5+int8")]
    assert combined and all(v.parent == "structured-0.5" for v in combined)
    assert all(v.path is None or v.path.name == f"{v.name}.onnx" for v in combined)


def test_structured_export_matches_the_pruned_torch_model(tmp_path):
    module = ResidualNet().eval()
    example = (torch.rand(1, 3, 16, 16),)
    _prune_structured(module, 0.5, example)
    assert module.conv1.out_channels == 8 and module.fc.out_features == 4
    loaded = LoadedModel(tmp_path / "m.pt", "state_dict", "0" * 64, module, None)
    export_onnx(loaded, SPECS, tmp_path / "pruned.onnx")
    feeds = generate_samples(SPECS, 8, seed=3)
    got = run_onnx(tmp_path / "pruned.onnx", feeds)[0]
    np.testing.assert_allclose(got, torch_outputs(loaded, feeds)[0], atol=1e-4)


def test_unstructured_reports_sparsity_and_compressed_size_not_speed(tmp_path):
    variants, _ = _run(
        tmp_path, ResidualNet(), ["unstructured:0.5"], finetune_epochs=0, train_data=None
    )
    pruned = variants["unstructured-0.5"]
    info = pruned.extra["pruning"]
    assert info["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert info["compressed_size_bytes"] < info["fp32_compressed_size_bytes"]
    assert info["macs_after"] == info["macs_before"]
    assert any(n.startswith("no speedup expected: dense kernels") for n in pruned.notes)


def test_finetune_reports_accuracy_before_and_after(tmp_path):
    """The accuracies the fine-tuning reports are those of the exported models, measured apart:
    before = the same pruning without fine-tuning, after = the fine-tuned variant."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 16)
    train = tmp_path / "train.npz"
    np.savez(
        train, image=generate_samples(SPECS, 32, seed=5)["image"], labels=rng.integers(0, 4, 32)
    )
    nets = []
    for _ in range(2):  # two identical networks: one fine-tuned, one not
        torch.manual_seed(0)
        nets.append(ResidualNet())
    (tmp_path / "tuned").mkdir()
    (tmp_path / "plain").mkdir()
    tuned, ctx = _run(
        tmp_path / "tuned",
        nets[0],
        ["structured:0.5"],
        finetune_epochs=1,
        train_data=train,
        labels=labels,
    )
    plain, _ = _run(
        tmp_path / "plain", nets[1], ["structured:0.5"], finetune_epochs=0, train_data=None
    )
    pruned = tuned["structured-0.5-ft"]
    finetune = pruned.extra["pruning"]["finetune"]
    assert finetune["epochs"] == 1 and finetune["train_samples"] == 32
    assert any(n.startswith("fine-tuned 1 epoch(s) on ") for n in pruned.notes)

    def onnx_accuracy(variant):
        return task_accuracy(run_onnx(variant.path, ctx.feeds)[0], labels)

    one_sample = 1 / len(labels)  # export error may flip a near-tie
    before = onnx_accuracy(plain["structured-0.5"])
    assert finetune["accuracy_before"] == pytest.approx(before, abs=one_sample)
    assert finetune["accuracy_after"] == pytest.approx(onnx_accuracy(pruned), abs=one_sample)
    assert not ctx.notes  # no evaluation sample is in the training data


def test_training_on_the_evaluation_samples_is_called_out(tmp_path):
    feeds = generate_samples(SPECS, 16)
    train = tmp_path / "train.npz"
    np.savez(train, image=feeds["image"], labels=np.zeros(16, dtype=np.int64))
    plan = plan_pruning(["structured:0.5"], 1, train, SPECS, feeds)
    assert "16 of the 16 evaluation samples also appear in --train-data" in plan.notes[0]


@pytest.mark.parametrize(
    "args",
    [
        (["structured:1.5"], 0, None),
        (["channels:0.5"], 0, None),
        (["structured:0.5"], 2, None),  # fine-tuning without training data
        ([], 2, "x.npz"),  # nothing to fine-tune
    ],
)
def test_bad_pruning_options_are_refused_up_front(args):
    with pytest.raises(EdgekitError):
        plan_pruning(*args, SPECS, generate_samples(SPECS, 2))


def test_a_model_torch_pruning_cannot_handle_gets_an_error_row(tmp_path):
    variants, _ = _run(
        tmp_path,
        HardCodedWidth(),
        ["structured:0.5", "unstructured:0.5"],
        finetune_epochs=0,
        train_data=None,
    )
    assert "structured pruning does not work on this model" in variants["structured-0.5"].error
    assert variants["unstructured-0.5"].error is None  # masks keep the shapes


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_a_torchscript_source_gets_error_rows_not_a_crash(tmp_path):
    scripted = torch.jit.script(ResidualNet().eval())
    loaded, fp32, ctx = _setup(tmp_path, scripted, fmt="torchscript")
    plan = plan_pruning(["structured:0.3", "unstructured:0.5"], 0, None, SPECS, ctx.feeds)
    variants = pruned_variants(plan, loaded, SPECS, fp32, ctx)
    assert [v.name for v in variants] == ["structured-0.3", "unstructured-0.5"]
    assert all("pruning needs the model's nn.Module" in v.error for v in variants)


def test_cli_reports_accuracy_before_and_after_finetuning(tmp_path):
    models = REPO / "models"
    result = run_edgekit(
        "optimize", models / "digits_cnn.pt", "--arch", f"{models / 'digits_cnn.py'}:DigitsCNN",
        "--data", models / "digits_test.npz", "--prune", "structured:0.5",
        "--finetune-epochs", "1", "--train-data", models / "digits_train.npz",
        "-o", tmp_path / "out", "--min-time", "0.1", "--max-time", "0.3", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = {v["name"]: v for v in json.loads(result.stdout)["variants"]}
    finetune = rows["structured-0.5-ft"]["pruning"]["finetune"]
    assert finetune["accuracy_before"] < 0.6 < 0.9 < finetune["accuracy_after"]
    assert rows["structured-0.5-ft"]["accuracy"]["task_accuracy"] == pytest.approx(
        finetune["accuracy_after"], abs=0.01
    )
