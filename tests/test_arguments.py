"""Arguments the CLI refuses with a clear message: labels that cannot match, numbers out of
range, benchmarks where every model failed, missing optional extras, unusable output folders.
(NaN outputs are in test_nonfinite, the recommendation without an interval in test_recommend.)
Real ONNX models (onnx.helper), real onnxruntime, the real CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import run_edgekit, save_graph
from onnx import TensorProto, helper, numpy_helper

from edgekit.accuracy import check_labels
from edgekit.errors import EdgekitError
from models import CLASSES, relu_model, sqrt_classifier, sqrt_samples

FAST = ["--min-time", "0.2", "--max-time", "0.5"]


def _save(path: Path, nodes, inputs, inits=(), out_shape=None) -> Path:
    graph = helper.make_graph(
        nodes,
        path.stem,
        inputs,
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, out_shape)],
        list(inits),
    )
    return save_graph(graph, path)


def failing_model(path: Path) -> Path:
    """Passes the ONNX check and loads; fails on the first run (Reshape of 12 values to 5 x -1)."""
    shape = numpy_helper.from_array(np.array([5, -1], np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])]
    return _save(path, nodes, inputs, [shape])


# ---------------------------------------------------------------- labels that cannot match


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.array(["cat", "dog"] * 8), "not class numbers"),
        (np.eye(CLASSES)[np.arange(16) % CLASSES], "one-hot"),
        (np.zeros((16, 2, 2), np.int64), "shape (16, 2, 2)"),
        (np.arange(15) % CLASSES, "15 labels for 16 samples"),
        (np.arange(16), "13 of 16 are outside"),
        (np.full(16, -1), "class indices 0 to 2"),
        (np.full(16, 0.5), "not whole numbers"),
        (np.full(16, np.nan), "not whole numbers"),
    ],
)
def test_labels_that_cannot_match_are_refused(labels, message):
    logits = [np.random.default_rng(0).normal(size=(16, CLASSES)).astype(np.float32)]
    with pytest.raises(EdgekitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_labels(labels, logits, "data.npz")


def test_good_labels_pass():
    logits = [np.zeros((4, CLASSES), np.float32)]
    check_labels(np.array([0, 1, 2, 0]), logits, "d.npz")
    check_labels(np.array([[0], [1], [2], [0]]), logits, "d.npz")  # a column
    check_labels(np.array([0.0, 1.0, 2.0, 0.0]), logits, "d.npz")  # whole floats
    check_labels(None, logits, "d.npz")
    check_labels(np.array([7, 9]), [np.zeros((2, 5, 5))], "d.npz")  # not a classifier


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["out-of-range", "strings", "one-hot"])
def test_optimize_refuses_labels_that_cannot_match(kind, tmp_path):
    model = sqrt_classifier(tmp_path / "m.onnx", safe=True)
    x = sqrt_samples(16, negative=0)
    labels = {
        "out-of-range": np.arange(16) + 3,
        "strings": np.array(["a"] * 16),
        "one-hot": np.eye(CLASSES)[np.arange(16) % CLASSES],
    }[kind]
    data = tmp_path / "data.npz"
    np.savez(data, x=x, labels=labels)
    out = tmp_path / "out"
    proc = run_edgekit("optimize", model, "--data", data, "--int8", "none", "-q", "-o", out, *FAST)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("edgekit: error: The labels in")
    assert str(data) in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


# ---------------------------------------------------------------- option limits


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["--min-time", "nan", "--max-time", "nan"], "above 0"),
        (["--min-time", "0.2", "--max-time", "inf"], "above 0"),
        (["--min-time", "-1"], "above 0"),
        (["--min-time", "2", "--max-time", "1"], "less than --min-time"),
        (["--max-time", "1e9"], "at most 3600"),
        (["--min-time", "soon"], "expected seconds"),
        (["--threads", "100000"], "give 1 to 256"),
        (["--threads", "0"], "give 1 to 256"),
        (["--threads", "-1"], "give 1 to 256"),
        (["--threads", "1,0"], "give 1 to 256"),
        (["--threads", "two"], "whole number of threads"),
    ],
)
@pytest.mark.parametrize("command", ["bench", "optimize"])
def test_numbers_are_checked_at_the_edge(command, args, message, tmp_path):
    model = relu_model(tmp_path / "m.onnx")
    if command == "optimize" and args[:2] == ["--threads", "1,0"]:
        message = "whole number of threads"  # optimize takes one thread count
    out = tmp_path / "out"
    start = time.monotonic()
    proc = run_edgekit(command, model, "-o", out, *args, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - start < 30 and not out.exists()


@pytest.mark.slow
def test_bench_and_optimize_share_one_definition_per_option(tmp_path):
    model = relu_model(tmp_path / "m.onnx")
    for args in (["--threads", "100000"], ["--max-time", "nan"], ["--min-time", "3", "--max-time", "2"]):  # fmt: skip
        errors = [
            run_edgekit(c, model, *args, timeout=60)
            .stderr.strip()
            .splitlines()[-1]
            .split(": ", 1)[-1]
            for c in ("bench", "optimize")
        ]
        assert errors[0] == errors[1]


@pytest.mark.slow
def test_finetune_epochs_must_not_be_negative(tmp_path):
    model = relu_model(tmp_path / "m.onnx")
    proc = run_edgekit("optimize", model, "--finetune-epochs", "-1", "-o", tmp_path / "o")
    assert proc.returncode == 2 and "give 0 (no fine-tuning)" in proc.stderr


# ---------------------------------------------------------------- every model failed


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--json"], ["-q"]])
def test_bench_exits_1_when_every_model_failed(extra, tmp_path):
    a, b = failing_model(tmp_path / "a.onnx"), failing_model(tmp_path / "b.onnx")
    out = tmp_path / "out"
    proc = run_edgekit("bench", a, b, "-o", out, "--threads", "1", *FAST, *extra)
    assert proc.returncode == 1, proc.stderr
    assert "edgekit: error: a failed:" in proc.stderr and "edgekit: error: b failed:" in proc.stderr
    assert "every model failed (2 of 2)" in proc.stderr and "Traceback" not in proc.stderr
    report = json.loads((out / "report.json").read_text())  # the errors are kept
    assert all(v["error"] for v in report["variants"])


# ---------------------------------------------------------------- optional extras


@pytest.fixture
def state_dict_file(tmp_path) -> Path:
    torch = pytest.importorskip("torch")
    path = tmp_path / "linear.pt"
    torch.save(torch.nn.Linear(4, 3).state_dict(), path)
    return path


@pytest.mark.slow
def test_optimize_without_torch_says_which_extra_to_install(
    state_dict_file, tmp_path, block_imports
):
    out = tmp_path / "out"
    proc = run_edgekit("optimize", state_dict_file, "-o", out, env=block_imports())
    assert proc.returncode == 2, proc.stderr
    assert "internal error" not in proc.stderr and "bug in edgekit" not in proc.stderr
    assert proc.stderr.startswith("edgekit: error: `edgekit optimize` needs torch")
    assert "pip install 'edgekit[torch]'" in proc.stderr
    assert "https://download.pytorch.org/whl/cpu" in proc.stderr  # CPU torch first
    assert not out.exists()


@pytest.mark.parametrize(
    "module, extra",
    [("onnxsim", "torch"), ("torch_pruning", "torch"), ("matplotlib", "html"),
     ("uvicorn", "serve"), ("starlette", "serve"), ("prometheus_client", "serve")],
)  # fmt: skip
def test_every_optional_module_names_its_extra(module, extra, tmp_path, monkeypatch, capsys):
    """The real CLI entry point, with a command whose import of `module` fails."""
    from edgekit import cli
    from edgekit.commands import bench

    def run(args):
        raise ModuleNotFoundError(f"No module named '{module}'", name=module)

    monkeypatch.setattr(bench, "run", run)
    code = cli.main(["bench", str(relu_model(tmp_path / "m.onnx"))])
    err = capsys.readouterr().err
    assert code == 2 and f"needs {module}" in err and f"pip install 'edgekit[{extra}]'" in err
    assert ("download.pytorch.org" in err) == (extra == "torch")

    def broken(args):  # an import error inside edgekit itself is still a bug
        raise ModuleNotFoundError("No module named 'edgekit.nothing'", name="edgekit.nothing")

    monkeypatch.setattr(bench, "run", broken)
    assert cli.main(["bench", str(tmp_path / "m.onnx")]) == 3
    assert "bug in edgekit" in capsys.readouterr().err


# ---------------------------------------------------------------- unusable -o


@pytest.mark.slow
@pytest.mark.parametrize("where", ["/dev/null", "file", "/proc/nope"])
def test_bench_refuses_an_output_it_cannot_write_before_the_work(where, tmp_path):
    model = relu_model(tmp_path / "m.onnx")
    if where == "file":
        where = tmp_path / "report.txt"
        where.write_text("keep me\n")
    start = time.monotonic()
    # a long --min-time: if the benchmark ran first, this would take over 60 s
    proc = run_edgekit("bench", model, "-o", where, "--min-time", "60", "--max-time", "60")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("edgekit: error: -o ") and "Traceback" not in proc.stderr
    assert time.monotonic() - start < 40
    if isinstance(where, Path):
        assert where.read_text() == "keep me\n"
