"""--input against what an ONNX file declares, single values, and input files that mislead
(issues 19 and 20). Fast: small graphs made here, real onnxruntime sessions, no processes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from helpers import save_graph
from onnx import TensorProto, helper

from edgekit import cpus
from edgekit.accuracy import run_onnx
from edgekit.errors import EdgekitError
from edgekit.model.inputs import parse_arguments, parse_input_spec
from edgekit.model.load import load_model, load_onnx
from edgekit.model.samples import generate_samples, load_npz, resolve_samples
from models import vad_model

F = TensorProto.FLOAT


@pytest.fixture(scope="module")
def vad(tmp_path_factory):
    return vad_model(tmp_path_factory.mktemp("vad") / "vad.onnx")


VAD_SPECS = ["input:1x512:float32", "state:2xBx128"]


@pytest.mark.parametrize("sr", ["sr:scalar:int64:16000", "sr=16000", "sr:scalar:int64:16000-16000"])
def test_the_users_specs_complete_unknown_axes_and_a_value_is_fed_every_run(vad, sr):
    from_file = load_onnx(vad).input_specs
    samples = resolve_samples([sr, *VAD_SPECS], from_file, None, generated=8)
    specs = {s.name: s for s in samples.specs}
    assert list(specs) == ["input", "state", "sr"]  # the file's order
    assert specs["state"].batch_axis == 1 and specs["state"].shape == (2, 1, 128)
    assert specs["sr"].dtype == "int64" and specs["sr"].value == 16000
    fed = samples.first_batch()  # as the model takes one batch
    assert fed["sr"].tolist() == 16000 and fed["state"].shape == (2, 1, 128)
    assert samples.feeds["input"].shape == (8, 512) and samples.feeds["state"].shape == (8, 2, 128)
    assert specs["sr"].to_json()["value"] == 16000


def test_without_input_the_unknown_axis_is_still_asked_for(vad):
    with pytest.raises(EdgekitError, match="unknown size on axis 1"):
        resolve_samples([], load_onnx(vad).input_specs, None, generated=8)


def test_without_input_the_data_arrays_give_the_unknown_axes(vad, tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "input": rng.normal(size=(6, 512)).astype(np.float32),
        "state": rng.normal(size=(2, 6, 128)).astype(np.float32),
        "sr": np.array(16000, np.int64),
    }
    np.savez(tmp_path / "data.npz", **arrays)
    samples = resolve_samples([], load_onnx(vad).input_specs, tmp_path / "data.npz", 8)
    assert [s.shape for s in samples.specs] == [(1, 512), (2, 1, 128), ()]
    assert run_onnx(vad, samples.feeds, specs=samples.specs)[1].shape == (2, 6, 128)


@pytest.mark.slow  # starts a benchmark worker
def test_the_bench_records_the_batch_of_a_model_batched_on_axis_1(tmp_path):
    from edgekit.api import bench
    from edgekit.benchmark import BenchOptions

    state = helper.make_tensor_value_info("state", F, [2, "n", 4])
    out = helper.make_tensor_value_info("out", F, [2, "n", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["state"], ["out"])], "g", [state], [out])
    path = save_graph(graph, tmp_path / "state.onnx")
    report = bench([path], BenchOptions(min_time=0.05, max_time=0.5), inputs=["state:2xB3x4"])
    # batches of 3 samples: the state input's axis 0 (2) is not its batch axis
    assert report.settings["batch"] == 3


@pytest.mark.parametrize(
    ("texts", "words"),
    [
        (["input:1x512x3"], "3 axes, but the model's input has 2"),
        (["state:3xBx128"], "fixes that axis at 2"),
        (["input:1x512:int64"], "the model takes float32"),
        (["nope:1x4"], "not an input of this ONNX model"),
        (["sr=0.5"], "whole number"),
        (["sr=true"], "int64"),
        (["input:1x512", "input:1x256"], "twice"),
    ],
)
def test_specs_that_do_not_fit_the_file_are_refused_clearly(vad, texts, words):
    from edgekit.model.onnx_inputs import OnnxInputs

    with pytest.raises(EdgekitError, match=words):
        OnnxInputs.read(vad).resolve(texts)


def test_a_model_without_inputs_says_so(tmp_path):
    y = helper.make_tensor_value_info("y", F, [2])
    nodes = [helper.make_node("Constant", [], ["y"], value=helper.make_tensor("c", F, [2], [1, 2]))]
    path = save_graph(helper.make_graph(nodes, "const", [], [y]), tmp_path / "const.onnx")
    with pytest.raises(EdgekitError, match="takes no inputs"):
        resolve_samples([], load_onnx(path).input_specs, None, generated=4)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("x:" + "1" * 400 + "x3", "400 digits"),
        ("x:" + "x".join(["1"] * 100), "100 axes"),
        ("x:B" + "9" * 400, "400 digits"),
        ("x:" + "x".join(["99999"] * 32), "refuses inputs over"),
        ("sr:scalar:int64:5-3", "empty value range"),
        ("sr:scalar:int8:300", "does not fit int8"),
    ],
)
def test_absurd_shapes_and_ranges_are_clear_errors(text, words):
    with pytest.raises(EdgekitError, match=words):
        parse_input_spec(text)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_constant_that_is_not_finite_is_refused(value):
    with pytest.raises(EdgekitError, match="not a finite number"):
        parse_arguments(["x:1x4", f"sr={value}"])


def test_a_single_value_is_every_sample(vad):
    spec = parse_input_spec("gain:-4:float32:0.5")
    assert (np.asarray(generate_samples([spec], 3)["gain"]) == 0.5).all()


def test_data_given_a_folder_says_it_is_a_folder(tmp_path):
    with pytest.raises(EdgekitError, match="is a folder"):
        load_npz(tmp_path)


def test_external_data_that_is_a_symlink_is_named_as_one(tmp_path):
    x = helper.make_tensor_value_info("x", F, ["batch", 64])
    y = helper.make_tensor_value_info("y", F, ["batch", 64])
    weight = np.ones((64, 64), np.float32)
    from onnx import numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y],
        [numpy_helper.from_array(weight, "w")],
    )  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    model = save_graph(
        graph, elsewhere / "m.onnx", save_as_external_data=True, location="m.onnx.data",
        size_threshold=0,
    )  # fmt: skip
    folder = tmp_path / "model"
    folder.mkdir()
    os.replace(model, folder / "m.onnx")
    (folder / "m.onnx.data").symlink_to(elsewhere / "m.onnx.data")
    with pytest.raises(EdgekitError, match="symbolic link"):
        load_model(folder / "m.onnx")


def test_for_cpu_nested_too_deep_is_a_clear_error(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(EdgekitError, match="nested too deep"):
        cpus.resolve(str(deep))


def test_for_cpu_file_too_large_is_refused_before_reading(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as handle:  # sparse: no 17 MB written
        handle.truncate(17 * 2**20)
    with pytest.raises(EdgekitError, match="MB"):
        cpus.resolve(str(big))
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"device": cpus.PROFILES["rpi5"]}))
    assert cpus.resolve(str(ok))["arch"] == "aarch64"


@pytest.mark.parametrize(
    "text",
    ["x:1xBxB", "x:Bx", "sr=hello", "x:-"],
)
def test_bad_input_notation_is_a_clear_error(tmp_path, text):
    with pytest.raises(EdgekitError):
        parse_arguments([text, "y:1x2"])
