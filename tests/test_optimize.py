"""`edgekit optimize` end to end on the shipped model: real export, real onnxruntime, real files."""

import json
import os
import shutil
import stat
from html import escape as html_escape

import numpy as np
import pytest
from helpers import REPO, run_edgekit

from edgekit import textsafe
from edgekit.onnxfile import files_on_disk
from edgekit.recommend import parse_budget
from edgekit.report.read import read_report
from edgekit.report.schema import SCHEMA_VERSION, VARIANT_KEYS

pytestmark = pytest.mark.slow  # every test here starts a process or exports with torch

MODEL = REPO / "models" / "digits_cnn.pt"
ARCH = f"{REPO / 'models' / 'digits_cnn.py'}:DigitsCNN"
DATA = REPO / "models" / "digits_test.npz"
QUICK = ("--min-time", "0.2", "--max-time", "0.6")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    result = run_edgekit("optimize", MODEL, "--arch", ARCH, "--data", DATA, "-o", out, *QUICK)
    assert result.returncode == 0, result.stderr
    return out, result


def test_writes_every_output_and_nothing_half_done(demo):
    out, _ = demo
    names = {p.name for p in out.iterdir()}
    assert {"report.json", "report.md", "report.html", "fp32.onnx", "simplified.onnx"} <= names
    assert "int8-dynamic.onnx" in names
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".edgekit-staging")]
    assert not [n for n in names if n.endswith(".tmp")]
    umask = os.umask(0)
    os.umask(umask)
    for name in ("report.json", "report.md", "fp32.onnx", "int8-dynamic.onnx"):
        # written through temporary files, yet readable as any new file would be
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~umask, name


def test_report_contract(demo):
    out, _ = demo
    report = json.loads((out / "report.json").read_text())
    assert report["schema_version"] == SCHEMA_VERSION
    for key in ("edgekit_version", "source", "device", "variants", "recommendation"):
        assert report[key], key
    assert report["source"]["format"] == "state_dict"
    assert len(report["source"]["sha256"]) == 64
    assert {"cpu", "arch", "cores"} <= set(report["device"])
    by_name = {v["name"]: v for v in report["variants"]}
    assert {"fp32", "simplified", "int8-dynamic"} <= set(by_name)
    for v in report["variants"]:
        assert set(VARIANT_KEYS) <= set(v), v["name"]
        if v["error"]:
            continue
        assert (out / v["file"]).is_file()
        # an OpenVINO .xml's weights are the .bin beside it: both count
        files = files_on_disk(out / v["file"])
        assert v["size_bytes"] == sum(f.stat().st_size for f in files), v["name"]
        for key in ("p50", "p90", "p99", "mean", "std", "n"):
            assert v["latency_ms"][key] is not None, (v["name"], key)
        assert v["memory"]["peak_rss_bytes"] > 0
        for key in ("max_abs_err", "mean_abs_err", "cosine_min", "top1_agreement"):
            assert v["accuracy"][key] is not None, (v["name"], key)
        # labelled data: task accuracy for every variant, and the model is really good
        assert v["accuracy"]["task_accuracy"] > 0.9, v["name"]
    # the default set: no offline ORT_ENABLE_EXTENDED copy (sessions apply ORT_ENABLE_ALL anyway)
    onnx_rows = {n for n, v in by_name.items() if v["runtime"] == "onnxruntime"}
    assert onnx_rows == {"fp32", "simplified", "int8-dynamic", "int8-static"}
    timings = report["timings"]  # where the time went, step by step
    steps = [s["step"] for s in timings["steps"]]
    assert steps[:2] == ["loading the model", "exporting to ONNX"]
    assert "quantizing: int8-static" in steps and steps[-1].startswith("benchmarking fp32, ")
    assert sum(s["seconds"] for s in timings["steps"]) <= timings["total_s"]
    assert by_name["int8-dynamic"]["size_bytes"] <= 0.30 * by_name["fp32"]["size_bytes"]
    assert report["recommendation"]["variant"] in by_name
    assert read_report(out / "report.json").to_json()["variants"]  # our own reader accepts it


def test_terminal_table_and_markdown(demo):
    out, result = demo
    assert "int8-dynamic" in result.stdout and "task acc" in result.stdout
    assert "recommended:" in result.stdout
    # a warning that applies to several variants is one line; what to do is said at most once
    terminal = " ".join(result.stdout.split())
    assert terminal.count("95% interval") <= 1 and terminal.count("what to do:") <= 1
    assert "(" not in result.stderr.split("✓ loading the model")[1].splitlines()[0]  # no -v
    assert f"report written to {out}" in " ".join(result.stderr.split())
    md = (out / "report.md").read_text()
    assert "| variant |" in md and "int8-dynamic" in md
    # which int8 recipes were tried or skipped, and why, reach the pages people read
    decisions = json.loads((out / "report.json").read_text())["notes"]
    assert any(n.startswith("int8-static: tried") for n in decisions)
    html = (out / "report.html").read_text()
    for note in decisions:
        assert textsafe.markdown(note) in md  # notes are data: escaped for Markdown
        assert html_escape(note) in html


def test_a_failed_run_leaves_the_earlier_report_untouched(demo, tmp_path):
    out, _ = demo
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = tmp_path / "bad.npz"
    np.savez(bad, input=np.zeros((4, 3, 8, 8), np.float32))  # 3 channels: export fails
    result = run_edgekit("optimize", MODEL, "--arch", ARCH, "--data", bad, "-o", out, *QUICK)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "(1, 8, 8)" not in result.stderr
    assert "shape" in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_onnx_source_skips_export_and_generates_inputs(demo, tmp_path):
    out, _ = demo
    onnx_file = tmp_path / "digits.onnx"
    shutil.copy(out / "fp32.onnx", onnx_file)
    result = run_edgekit("optimize", onnx_file, "--json", *QUICK)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # --json prints only the report
    assert report["source"]["format"] == "onnx"
    assert report["data"]["generated"] is True
    fp32 = report["variants"][0]
    assert fp32["accuracy"]["task_accuracy"] is None
    assert "labels" in fp32["unmeasured"]["accuracy.task_accuracy"]
    assert (tmp_path / "digits.edgekit" / "report.json").is_file()  # default: beside the model


def test_verbose_shows_where_the_time_went(demo, tmp_path):
    out, _ = demo
    onnx_file = tmp_path / "digits.onnx"
    shutil.copy(out / "fp32.onnx", onnx_file)
    result = run_edgekit("optimize", onnx_file, "-v", "--int8", "none", *QUICK)
    assert result.returncode == 0, result.stderr
    assert "✓ simplifying with onnxsim (" in result.stderr  # each step with its seconds
    report = json.loads((tmp_path / "digits.edgekit" / "report.json").read_text())
    total = report["timings"]["total_s"]
    assert f"time: {total:.1f} s in total, by step:" in result.stdout
    for one in report["timings"]["steps"]:
        assert f"{one['seconds']:6.1f} s  {one['step']}" in result.stdout


def test_a_model_without_input_shapes_asks_for_input(tmp_path):
    result = run_edgekit("optimize", MODEL, "--arch", ARCH, "-o", tmp_path / "out")
    assert result.returncode == 2
    assert "--input" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args,words",
    [
        (("--input", "input:1x1x8x8:complex64"), "dtype"),
        (("--input", "input:1x8"), "input"),  # a shape the model cannot take
        (("--max-drift", "speed>=2"), "cosine>=0.99"),
        (("--data", "missing.npz"), "does not exist"),
    ],
)
def test_bad_options_are_clear_errors(tmp_path, args, words):
    result = run_edgekit("optimize", MODEL, "--arch", ARCH, "-o", tmp_path / "o", *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "edgekit: error:" in result.stderr and words in result.stderr


def test_onnx_with_a_fixed_batch_of_one(tmp_path):
    """ONNX files from elsewhere often have batch 1 baked in: drift, calibration and the
    benchmark must feed them one sample at a time."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(
        np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32), "w"
    )
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [weight],
    )
    path = tmp_path / "fixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    result = run_edgekit("optimize", path, "--json", *QUICK)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    failed = {v["name"]: v["error"] for v in report["variants"] if v["error"]}
    assert not failed


def test_variants_over_the_budget_stop_timing_early_and_the_pick_keeps_every_round(demo, tmp_path):
    out, _ = demo
    onnx_file = tmp_path / "digits.onnx"
    shutil.copy(out / "fp32.onnx", onnx_file)
    # a budget int8 cannot meet (the float variants do): its variants are timed briefly
    tight = ("--max-drift", "cosine>=0.9999999", "--int8", "dynamic", "--runtime", "ort")
    budget = parse_budget(tight[1])  # (the report writes it as cosine>=1: 6 digits)
    result = run_edgekit("optimize", onnx_file, "-o", tmp_path / "out", *tight, *QUICK)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    rows = {v["name"]: v for v in report["variants"] if not v["error"]}
    base = rows["fp32"]
    pick = rows[report["recommendation"]["variant"]]
    for row in (base, pick):
        assert row["latency_ms"]["stopped_early"] is None
        assert row["latency_ms"]["rounds"] == base["latency_ms"]["rounds"]
    over = [v for v in rows.values() if not budget.check(v["accuracy"], base["accuracy"])[0]]
    assert over
    for row in over:
        stopped = row["latency_ms"]["stopped_early"]
        assert "over the drift budget" in stopped and stopped in row["notes"]
        assert row["latency_ms"]["p50"] and row["relative"]["speedup"]  # still measured
