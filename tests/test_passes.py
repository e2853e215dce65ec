"""The passes as objects: each pass's settings (frozen, read from the options by `check`), the
settings each variant records, and the pipeline's one int8 rule. Fast: tiny ONNX graphs."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import shutil

import numpy as np
import pytest

from edgekit.accuracy import run_onnx
from edgekit.api import OptimizeOptions, no_progress
from edgekit.errors import EdgekitError
from edgekit.model.inputs import InputSpec
from edgekit.model.samples import generate_samples
from edgekit.passes import Pass, PassContext, Variant, pipeline
from edgekit.passes.int8 import Int8, Int8Settings, _settings
from edgekit.passes.int8.opmix import DYNAMIC, Recipe
from edgekit.passes.prune import PrunePlan, PruneSpec
from edgekit.passes.prune import _settings as prune_settings
from edgekit.passes.runtimes import RuntimeSettings
from edgekit.passes.simplify import SimplifySettings
from edgekit.recommend import parse_budget
from models import matmul_model

SPECS = [InputSpec("x", (1, 8))]
CPU = {"arch": "x86_64", "features": ["avx2", "fma"], "source": "--for-cpu x86-avx2"}


def checked(**options):
    feeds = generate_samples(SPECS, 4)
    return [p.check(OptimizeOptions(**options), SPECS, feeds) for p in pipeline.pass_classes()]


def test_each_pass_reads_its_options_into_frozen_settings():
    simplify, runtimes, int8, prune = checked(
        int8="dynamic", calibration="percentile", prune=["structured:0.3"], runtimes="ort"
    )
    names = [p.name for p in (simplify, runtimes, int8, prune)]
    assert names == ["simplify", "runtimes", "int8", "prune"]
    assert simplify.settings == SimplifySettings()
    assert runtimes.settings == RuntimeSettings()
    assert int8.settings == Int8Settings(mode="dynamic", calibration="percentile")
    assert prune.settings == PrunePlan(specs=(PruneSpec("structured", 0.3),))
    for one in (simplify, runtimes, int8, prune):
        assert dataclasses.is_dataclass(one.settings)
        field = next(iter(dataclasses.fields(one.settings)), None)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(one.settings, field.name if field else "anything", None)
        with pytest.raises(dataclasses.FrozenInstanceError):
            one.settings = None


def test_every_pass_in_the_package_is_in_the_pipeline():
    """A pass is its module plus its line in PIPELINE: a Pass subclass left out of it fails here."""
    import edgekit.passes as package

    for module in pkgutil.walk_packages(package.__path__, "edgekit.passes."):
        importlib.import_module(module.name)
    assert set(Pass.__subclasses__()) == set(pipeline.pass_classes())


@pytest.mark.parametrize(
    "options",
    [{"int8": "fast"}, {"calibration": "guess"}, {"prune": ["structured:2"]}],
)
def test_bad_options_fail_in_check_before_any_work(options):
    with pytest.raises(EdgekitError):
        checked(**options)


def test_the_settings_each_variant_records_are_as_before():
    assert prune_settings(PruneSpec("unstructured", 0.5)) == {
        "amount": 0.5,
        "method": "global L1 magnitude",
        "layers": "Conv, Linear",
    }
    assert prune_settings(PruneSpec("structured", 0.3)) == {
        "ratio": 0.3,
        "importance": "L1 magnitude per channel group",
        "round_to": 8,
        "tool": "torch-pruning",
    }
    types = {"cpu": "x86 AVX2", "weight_type": "QInt8", "reduce_range": True}
    types |= {"activation_type": "QUInt8", "cpu_arch": "x86_64", "cpu_features": ["avx2"]}
    assert _settings(DYNAMIC, types, "minmax", None) == {
        "method": "dynamic",
        "per_channel": False,
        **types,
        "activation_type": "QUInt8 (quantized at run time)",
    }
    ctx = context_for(None, {"x": np.zeros((100, 8), np.float32)})
    static = _settings(Recipe("int8-static", "static", per_channel=True), types, "entropy", ctx)
    assert static == {
        "method": "static",
        "per_channel": True,
        **types,
        "format": "QDQ",
        "pre_process": "onnxruntime quant_pre_process",
        "calibration": "Entropy",
        "calibration_samples": 64,
        "calibration_data": "generated inputs",
    }


def context_for(path, feeds, staging=None):
    return PassContext(
        staging=staging,
        feeds=feeds,
        labels=None,
        reference=run_onnx(path, feeds) if path else [],
        data_is_real=False,
        budget=parse_budget("cosine>=0.9"),
        step=no_progress,
        cpu=CPU,
    )


@dataclasses.dataclass(frozen=True)
class Copy:
    """A trivial float pass: the float parent, copied."""

    name = "copy"
    settings: tuple = ()

    def run(self, variants, ctx):
        parent = variants[0]
        shutil.copy(parent.path, ctx.path_for("copy"))
        return [parent.child("copy", ctx.path_for("copy"), self.name, {})]


def test_the_pipeline_makes_the_int8_of_every_float_variant_a_later_pass_makes(tmp_path):
    fp32 = Variant("fp32", matmul_model(tmp_path / "fp32.onnx", 8, 4, "n"))
    feeds = {"x": np.random.default_rng(1).normal(size=(8, 8)).astype(np.float32)}
    ctx = context_for(fp32.path, feeds, tmp_path)
    variants = pipeline.run([Int8(Int8Settings("dynamic")), Copy()], fp32, ctx)
    assert [(v.name, v.parent) for v in variants] == [
        ("fp32", None),
        ("int8-dynamic", "fp32"),
        ("int8-dynamic-pc", "fp32"),
        ("copy", "fp32"),
        ("copy+int8-dynamic", "copy"),
        ("copy+int8-dynamic-pc", "copy"),
    ]
    assert [p["name"] for p in variants[-1].passes] == ["copy", "quantize-dynamic"]
    assert variants[-1].passes[-1]["settings"]["cpu_arch"] == "x86_64"  # ctx.cpu, not this machine
    made_for = [n for n in ctx.notes if n.startswith("int8 variants made for")]
    assert made_for == [
        "int8 variants made for unknown CPU (x86_64; avx2 fma) (--for-cpu x86-avx2)"
    ]
    # before Int8 in the order, a pass rewrites the float model int8 starts from: no extra int8
    ctx = context_for(fp32.path, feeds, tmp_path)
    names = [v.name for v in pipeline.run([Copy(), Int8(Int8Settings("dynamic"))], fp32, ctx)]
    assert names == ["fp32", "copy", "int8-dynamic", "int8-dynamic-pc"]


def test_samples_are_batch_first_and_fed_in_the_model_layout():
    from edgekit.model.samples import batch_first, model_feeds

    specs = [
        InputSpec("state", (2, 1, 3), batch_axis=1),
        InputSpec("scale", (4,), batch_axis=None),
        InputSpec("x", (1, 3)),
    ]
    feeds = generate_samples(specs, 5)
    assert {n: a.shape for n, a in feeds.items()} == {
        "state": (5, 2, 3),
        "scale": (5, 4),
        "x": (5, 3),
    }
    assert all(len(a) == 5 for a in feeds.values())
    taken = {n: a[1:3] for n, a in feeds.items()}  # samples 1 and 2 of every input
    fed = model_feeds(taken, specs)
    assert {n: a.shape for n, a in fed.items()} == {"state": (2, 2, 3), "scale": (4,), "x": (2, 3)}
    np.testing.assert_array_equal(fed["state"][:, 0], feeds["state"][1])  # sample 1, on axis 1
    np.testing.assert_array_equal(fed["scale"], feeds["scale"][0])  # one value, every sample
    assert all(a.flags.c_contiguous and a.flags.writeable for a in fed.values())
    # --data holds the model's layout: batch_first then model_feeds gives it back
    state = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    back = model_feeds({"state": batch_first(state, specs[0], 5)}, specs)["state"]
    np.testing.assert_array_equal(back, state)
    assert model_feeds({"y": np.ones((2, 3))})["y"].shape == (2, 3)  # no spec: batch axis 0


def test_a_variants_outputs_on_the_samples_are_run_once(tmp_path):
    """The int8 pass judges each recipe by its drift and the report gives it again: the model
    runs once on the samples. A rewritten file runs again; a trial file elsewhere is not kept."""
    fp32 = Variant("fp32", matmul_model(tmp_path / "fp32.onnx", 8, 4, "n"))
    feeds = {"x": np.random.default_rng(1).normal(size=(8, 8)).astype(np.float32)}
    ctx = context_for(fp32.path, feeds, tmp_path)
    first = ctx.outputs(fp32.path)
    assert ctx.outputs(fp32.path) is first
    np.testing.assert_array_equal(first[0], run_onnx(fp32.path, feeds)[0])
    matmul_model(fp32.path, 8, 4, "n")  # written again (a new modification time): run again
    assert ctx.outputs(fp32.path) is not first
    (tmp_path / "trials").mkdir()
    trial = matmul_model(tmp_path / "trials" / "t.onnx", 8, 4, "n")
    assert ctx.outputs(trial) is not ctx.outputs(trial)
