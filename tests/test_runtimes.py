"""The runtimes beside onnxruntime (edgekit.runtimes): each installed runtime converts small models
made here, its outputs match the float reference (fp32: within rounding; int8: cosine >= 0.99),
its settings are read back from the runtime, and `edgekit bench` times its artifact. A runtime
that is not installed is skipped with the reason its available() gives."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import run_edgekit, torch_blocked_env

from edgekit import runtimes
from edgekit.runtimes import ConversionError, fit_feeds

RUNTIMES_DIR = Path(__file__).parents[1] / "edgekit" / "runtimes"
# what converts to each runtime, beside the runtime itself
CONVERTERS = {"openvino": "nncf", "litert": "litert_torch", "executorch": "executorch.exir"}
SUFFIX = {"onnxruntime": ".onnx", "openvino": ".xml", "litert": ".tflite", "executorch": ".pte"}
CALIBRATION = 16


def need(runtime: str, convert: bool = False) -> None:
    ok, why = runtimes.module(runtime).available()
    if not ok:
        pytest.skip(why)
    converter = CONVERTERS.get(runtime)
    if convert and converter and importlib.util.find_spec(converter.split(".")[0]) is None:
        pytest.skip(f"{converter} (the {runtime} converter) is not installed")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ------------------------------------------------------------------ no conversion: fast


def test_runtime_by_suffix_or_name():
    assert runtimes.runtime_for("m.onnx") == "onnxruntime"
    assert runtimes.runtime_for("a/b/M.XML") == "openvino"
    assert runtimes.runtime_for("m.tflite") == "litert"
    assert runtimes.runtime_for("m.pte") == "executorch"
    assert runtimes.runtime_for("model.bin") == "onnxruntime"  # any other file is ONNX
    assert runtimes.runtime_for("m.onnx", "ov") == "openvino"
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        runtimes.runtime_for("m.onnx", "tensorrt")


def test_runtime_modules_import_nothing_heavy_at_import_time():
    """Copied beside the worker to devices: the standard library and numpy when imported (and
    edgekit.errors where edgekit is installed); each runtime's own package only inside functions."""
    for path in RUNTIMES_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        top = set()
        for node in tree.body:
            if isinstance(node, ast.Import):
                top |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                top.add(node.module.split(".")[0])
        assert top - set(sys.stdlib_module_names) <= {"numpy"}, path.name


@pytest.mark.parametrize(
    "runtime, package", [("openvino", "openvino"), ("litert", "ai_edge_litert")]
)
def test_a_runtime_that_does_not_import_says_why(runtime, package, monkeypatch):
    for name in [n for n in sys.modules if n.split(".")[0] == package] or [package]:
        # `import package` (and of a submodule an earlier test imported) raises ImportError
        monkeypatch.setitem(sys.modules, name, None)
    ok, why = runtimes.module(runtime).available()
    assert not ok and "does not import" in why and "pip install" in why
    with pytest.raises(runtimes.base.RuntimeUnavailable, match="pip install"):
        runtimes.load(f"m{SUFFIX[runtime]}", 1)


def test_feeds_fit_by_name_or_position_and_integer_width():
    session = runtimes.Session(
        "litert",
        Path("m.tflite"),
        1,
        inputs=[runtimes.TensorInfo("args_0", "int32", (1, 4))],
    )
    ids = np.array([[1, 2, 3, 4]], np.int64)
    feeds, notes = fit_feeds(session, {"input_ids": ids})
    assert feeds["args_0"].dtype == np.int32 and notes and "by position" in notes[0]
    with pytest.raises(ValueError, match="do not fit"):
        fit_feeds(session, {"input_ids": ids * 2**40})
    with pytest.raises(ValueError, match="no array"):
        fit_feeds(session, {"a": ids, "b": ids})
    scalar = runtimes.Session(
        "openvino", Path("m.xml"), 1, inputs=[runtimes.TensorInfo("gain", "float32", ())]
    )  # a rank-0 input stays rank 0, whether fed as a 0-d array or as one value
    for given in (np.array(2.0, np.float32), np.array([2.0], np.float32)):
        assert fit_feeds(scalar, {"gain": given})[0]["gain"].shape == ()


class Evaluable:
    """What the shared converter asks of the torch module it is given (.eval())."""

    def eval(self):
        return self


def test_the_torch_converter_writes_atomically_and_fails_as_a_conversion_error(tmp_path):
    """runtimes.base.torch_converter: the convert() of LiteRT and ExecuTorch around their own
    lowering (their converters are not installed here, so the real lowering runs in the slow
    tests where they are)."""
    out = tmp_path / "m.pte"
    convert = runtimes.base.torch_converter(
        "executorch", lambda module, args, precision, calibration: lambda p: p.write_text(precision)
    )
    assert convert(Evaluable(), (), out, "int8") == out and out.read_text() == "int8"
    with pytest.raises(ConversionError, match="executorch fp16 conversion failed.*fp32 or int8"):
        convert(Evaluable(), (), out, "fp16")

    def broken(module, args, precision, calibration):
        def write(path):
            path.write_text("half")
            raise RuntimeError("lowering failed\nsecond line")

        return write

    with pytest.raises(
        ConversionError, match="fp32 conversion failed: RuntimeError: lowering failed"
    ):
        runtimes.base.torch_converter("litert", broken)(Evaluable(), (), out)
    assert out.read_text() == "int8" and [p.name for p in tmp_path.iterdir()] == ["m.pte"]


@pytest.mark.parametrize(
    "runtime",
    ["litert", pytest.param("executorch", marks=pytest.mark.slow)],  # its lowering imports torch
)
def test_convert_without_the_converter_installed_is_a_conversion_error(runtime, tmp_path):
    if importlib.util.find_spec(CONVERTERS[runtime].split(".")[0]) is not None:
        pytest.skip(f"{CONVERTERS[runtime]} is installed here")
    with pytest.raises(ConversionError, match=f"{runtime} fp32 conversion failed.*No module"):
        runtimes.module(runtime).convert(Evaluable(), (), tmp_path / f"m{SUFFIX[runtime]}")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ the models


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> (module, example args, calibration list of args, reference output, ONNX file)."""
    import torch
    from torch import nn

    class Cnn(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
            )  # fmt: skip

        def forward(self, x):
            return self.body(x)

    class Encoder(nn.Module):
        """One attention block on float token vectors: LayerNorm, Q/K/V MatMuls, softmax, FFN."""

        def __init__(self, hidden=32):
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
            self.qkv = nn.Linear(hidden, 3 * hidden)
            self.out = nn.Linear(hidden, hidden)
            self.ff = nn.Sequential(nn.Linear(hidden, 64), nn.GELU(), nn.Linear(64, hidden))

        def forward(self, x):
            q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
            att = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
            x = x + self.out(att @ v)
            return (x + self.ff(self.norm2(x))).mean(dim=1)

    torch.manual_seed(0)
    work = tmp_path_factory.mktemp("runtimes")
    made = {}
    for name, module, shape in (("cnn", Cnn(), (1, 3, 24, 24)), ("encoder", Encoder(), (1, 8, 32))):
        module.eval()
        with torch.no_grad():  # BN statistics randomised: folding them must matter
            for sub in module.modules():
                if isinstance(sub, nn.BatchNorm2d):
                    sub.running_mean.normal_(0, 0.2)
                    sub.running_var.uniform_(0.5, 2.0)
        gen = torch.Generator().manual_seed(1)
        calibration = [(torch.randn(shape, generator=gen),) for _ in range(CALIBRATION)]
        example = (torch.randn(shape, generator=gen),)
        with torch.no_grad():
            reference = module(*example).numpy()
        onnx_path = work / f"{name}.onnx"
        torch.onnx.export(
            module, example, onnx_path, input_names=["x"], output_names=["y"], dynamo=True
        )
        made[name] = (module, example, calibration, reference, onnx_path)
    return made


_converted: dict = {}


@pytest.fixture
def artifact(models, tmp_path_factory):
    """convert(runtime, model, precision) -> path, each made once per test session."""

    def convert(runtime: str, model: str, precision: str) -> Path:
        key = (runtime, model, precision)
        if key not in _converted:
            module, example, calibration, _, onnx_path = models[model]
            out = tmp_path_factory.mktemp("artifacts") / f"{model}_{precision}{SUFFIX[runtime]}"
            mod = runtimes.module(runtime)
            if runtime == "onnxruntime":
                _converted[key] = onnx_path
            elif runtime == "openvino":
                feeds = [{"x": args[0].numpy()} for args in calibration]
                transformer = model == "encoder"
                _converted[key] = mod.convert(onnx_path, out, precision, feeds, transformer)
            else:
                _converted[key] = mod.convert(module, example, out, precision, calibration)
        return _converted[key]

    return convert


CASES = [
    (runtime, model, precision)
    for runtime in ("openvino", "litert", "executorch")
    for model in ("cnn", "encoder")
    for precision in ("fp32", "int8")
] + [("onnxruntime", "cnn", "fp32"), ("onnxruntime", "encoder", "fp32")]


@pytest.mark.slow
@pytest.mark.parametrize("runtime, model, precision", CASES)
def test_outputs_match_the_float_reference(runtime, model, precision, models, artifact):
    need(runtime, convert=True)
    path = artifact(runtime, model, precision)
    _, example, _, reference, _ = models[model]
    session = runtimes.load(path, 2)
    assert session.runtime == runtime
    feeds, _ = fit_feeds(session, {"x": example[0].numpy()})
    (out,) = session.run(feeds)
    assert out.shape == reference.shape and out.dtype == np.float32
    if precision == "fp32":
        assert np.abs(out - reference).max() <= 1e-4 * max(1.0, np.abs(reference).max())
    else:
        assert cosine(out, reference) >= 0.99
        assert np.abs(out - reference).max() > 1e-6  # really int8, not the float model again


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "litert", "executorch"])
@pytest.mark.parametrize("threads", [1, 2])
def test_threads_are_read_back_from_the_runtime(runtime, threads, artifact):
    need(runtime, convert=True)
    session = runtimes.load(artifact(runtime, "cnn", "fp32"), threads)
    settings = session.settings()
    assert settings["runtime"] == runtime and settings["threads"] == threads


@pytest.mark.slow
def test_openvino_runs_f32_as_asked_and_int8_really_in_int8(artifact):
    need("openvino", convert=True)
    fp32 = runtimes.load(artifact("openvino", "cnn", "fp32"), 2).settings()
    int8 = runtimes.load(artifact("openvino", "cnn", "int8"), 2).settings()
    assert fp32["INFERENCE_PRECISION_HINT"] == "f32" and fp32["PERFORMANCE_HINT"] == "LATENCY"
    assert not {"bf16", "f16", "u8", "i8"} & set(fp32["runtime_precisions"])
    assert {"u8", "i8"} & set(int8["runtime_precisions"])
    xml = Path(artifact("openvino", "cnn", "fp32"))
    bin_size = xml.with_suffix(".bin").stat().st_size
    assert bin_size > 4 * 16 * 3 * 3 * 3  # fp32 weights, not the fp16 save_model defaults to


@pytest.mark.slow
def test_openvino_low_precision_only_where_the_cpu_has_it(models, tmp_path):
    need("openvino", convert=True)
    ov = runtimes.module("openvino")
    low = ov.default_low_precision()
    onnx_path = models["cnn"][4]
    if low is None:
        with pytest.raises(ConversionError, match="no low precision here"):
            ov.convert(onnx_path, tmp_path / "low.xml", "low")
        return
    session = runtimes.load(ov.convert(onnx_path, tmp_path / "low.xml", "low"), 2)
    settings = session.settings()
    assert settings["INFERENCE_PRECISION_HINT"] == low and low in settings["runtime_precisions"]
    (out,) = session.run({"x": models["cnn"][1][0].numpy()})
    assert cosine(out, models["cnn"][3]) >= 0.99


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["openvino", "litert", "executorch"])
def test_a_failed_conversion_is_a_clear_error_and_leaves_no_file(runtime, tmp_path):
    need(runtime, convert=True)
    import torch

    class DataDependent(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # Python control flow on a value: torch.export cannot trace it
                return x * 2
            return x

    out = tmp_path / f"bad{SUFFIX[runtime]}"
    mod = runtimes.module(runtime)
    with pytest.raises(ConversionError, match=f"{runtime} int8 conversion failed"):
        if runtime == "openvino":
            (tmp_path / "bad.onnx").write_bytes(b"not an onnx file")
            mod.convert(tmp_path / "bad.onnx", out, "int8", [{"x": np.zeros(1, np.float32)}])
        else:
            args = (torch.randn(4),)
            mod.convert(DataDependent(), args, out, "int8", [args])
    assert list(tmp_path.glob(f"*{SUFFIX[runtime]}")) == []


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["openvino", "litert", "executorch"])
def test_edgekit_bench_times_the_artifact_with_threads_read_back(runtime, artifact, tmp_path):
    need(runtime, convert=True)
    fp32, int8 = (artifact(runtime, "encoder", p) for p in ("fp32", "int8"))
    done = run_edgekit(
        "bench", fp32, int8, "--threads", "2", "--min-time", "0.2", "--max-time", "0.4",
        "-o", tmp_path / "out", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [v["error"] for v in report["variants"]] == [None, None]
    for v in report["variants"]:
        assert v["latency_ms"]["p50"] > 0 and v["memory"]["peak_rss_bytes"] > 0
        settings = report["settings"]["runtimes"][v["name"]]
        assert settings["runtime"] == runtime and settings["threads"] == 2
    if runtime == "executorch":
        assert any("imports torch" in n for n in report["variants"][0]["notes"])


@pytest.mark.slow
def test_a_runtime_that_cannot_run_here_is_a_failed_row_and_the_others_go_on(artifact, tmp_path):
    """ExecuTorch's Python runtime needs torch: with torch unimportable (as on a Pi with the core
    install) its artifact fails with the reason, the ONNX model is timed."""
    need("executorch", convert=True)
    done = run_edgekit(
        "bench", artifact("onnxruntime", "cnn", "fp32"), artifact("executorch", "cnn", "fp32"),
        "--threads", "1", "--min-time", "0.1", "--max-time", "0.2", "--json",
        "-o", tmp_path / "out", env=torch_blocked_env(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    onnx_row, pte_row = json.loads(done.stdout)["variants"]
    assert onnx_row["error"] is None and onnx_row["latency_ms"]["p50"] > 0
    assert "executorch's runtime does not import" in pte_row["error"]
