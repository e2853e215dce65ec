"""int8 variants are made for the CPU that will run them: named profiles (--for-cpu rpi4/rpi5/...),
a device.json from the device, or the --target device itself (a Raspberry Pi 5's description served
by the real sshd of the device tests), while this x86 machine does the quantizing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx
import pytest
from helpers import run_edgekit

from edgekit import cpus
from edgekit.errors import EdgekitError
from models import tiny_model

pytestmark = pytest.mark.slow  # every test here starts a process or exports with torch

BOARDS = Path(__file__).parent / "fixtures" / "boards"
TINY = ["--min-time", "0.2", "--max-time", "0.5", "--int8", "static"]


def quantize_settings(report: dict, name: str = "int8-static") -> dict:
    (row,) = [v for v in report["variants"] if v["name"] == name]
    assert row["error"] is None, row["error"]
    (step,) = [p for p in row["passes"] if p["name"].startswith("quantize")]
    return step["settings"]


# ---------------------------------------------------------------- the profiles and their settings


def test_rpi4_and_rpi5_get_different_documented_settings():
    pi4, pi5 = (
        cpus.int8_settings(c["arch"], c["features"]) for c in map(cpus.resolve, ("rpi4", "rpi5"))
    )
    for s in (pi4, pi5):  # onnxruntime's default: s8s8 QDQ; no reduce_range on ARM
        assert (s["activation_type"], s["weight_type"], s["reduce_range"]) == (
            "QInt8",
            "QInt8",
            False,
        )
        assert s["guidance"] == cpus.ORT_QUANT_DOC
    assert (
        "without the int8 dot product" in pi4["cpu"]
        and "MlasGemmX8S8DispatchNeon" in pi4["int8_kernel"]
    )
    assert pi4["int8_speedup_expected"] is False
    assert "with the int8 dot product" in pi5["cpu"] and "SDOT" in pi5["int8_kernel"]
    assert pi5["int8_speedup_expected"] is True and "UDOT" in pi5["int8_kernel_dynamic"]
    assert pi4 != pi5
    avx2, vnni = (
        cpus.int8_settings(c["arch"], c["features"])
        for c in map(cpus.resolve, ("x86-avx2", "x86-vnni"))
    )
    assert avx2["reduce_range"] is True and vnni["reduce_range"] is False
    assert avx2["activation_type"] == vnni["activation_type"] == "QUInt8"
    i8mm = cpus.int8_settings("aarch64", ["asimd", "asimddp", "i8mm"])
    assert "SMMLA" in i8mm["int8_kernel"]


def test_for_cpu_reads_a_device_json_or_a_report_and_refuses_bad_ones(tmp_path):
    from edgekit.benchmark import device

    cpuinfo, model = (BOARDS.joinpath("rpi5", f).read_text() for f in ("cpuinfo", "model"))
    pi5 = device.describe_cpu(cpuinfo, "aarch64", model)
    record = {**pi5, "arch": "aarch64", "cores": 4, "onnxruntime": "1.32.0"}
    (tmp_path / "device.json").write_text(json.dumps(record))
    (tmp_path / "report.json").write_text(json.dumps({"command": "bench", "device": record}))
    for name in ("device.json", "report.json"):
        got = cpus.resolve(str(tmp_path / name))
        assert got["arch"] == "aarch64" and "asimddp" in got["features"]
        assert got["board"] == "Raspberry Pi 5 Model B Rev 1.0" and got["cpu"] == "4× Cortex-A76"
        assert got["source"] == f"--for-cpu {tmp_path / name}"
    (tmp_path / "armv7.json").write_text(json.dumps({**record, "arch": "armv7l"}))
    (tmp_path / "nofeatures.json").write_text(json.dumps({"arch": "aarch64"}))
    (tmp_path / "text.json").write_text("not json")
    for bad, says in [
        ("rpi6", "neither a named CPU"),
        (str(tmp_path / "armv7.json"), "64-bit OS"),
        (str(tmp_path / "nofeatures.json"), "`features`"),
        (str(tmp_path / "text.json"), "cannot read it as JSON"),
    ]:
        with pytest.raises(EdgekitError, match=says):
            cpus.resolve(bad)


# ---------------------------------------------------------------- optimize --for-cpu, for real


@pytest.fixture(scope="module")
def made_for_pis(tmp_path_factory):
    """`edgekit optimize --for-cpu rpi4` and `--for-cpu rpi5` of a small real model, on this x86."""
    base = tmp_path_factory.mktemp("for-cpu")
    model = tiny_model(base / "tiny.onnx")
    reports = {}
    for name in ("rpi4", "rpi5"):
        out = base / name
        done = run_edgekit("optimize", model, "--for-cpu", name, *TINY, "-o", out, cwd=base,
                           timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
        reports[name] = json.loads((out / "report.json").read_text())
        reports[name]["_folder"] = out
    return reports


def test_optimize_for_cpu_makes_arm_int8_here_and_says_timings_are_from_this_machine(made_for_pis):
    pi4, pi5 = made_for_pis["rpi4"], made_for_pis["rpi5"]
    for report, name in ((pi4, "rpi4"), (pi5, "rpi5")):
        made = report["made_for"]
        assert made["arch"] == "aarch64" and made["same_cpu"] is False
        assert made["source"] == f"--for-cpu {name} (named profile)"
        assert report["device"]["arch"] != "aarch64"  # timed here, on x86
        (warning,) = [w for w in report["warnings"] if "were made for" in w]
        assert "latencies in this report are from this machine" in warning
        assert "edgekit bench" in warning
        assert any(n.startswith("int8 variants made for Raspberry Pi") for n in report["notes"])
        s = quantize_settings(report)
        assert (s["activation_type"], s["weight_type"], s["reduce_range"]) == (
            "QInt8",
            "QInt8",
            False,
        )
        assert s["cpu_arch"] == "aarch64" and s["format"] == "QDQ"
    s4, s5 = quantize_settings(pi4), quantize_settings(pi5)
    assert s4["cpu_features"] == ["asimd"] and "asimddp" in s5["cpu_features"]
    assert "MlasGemmX8S8DispatchNeon" in s4["int8_kernel"] and "SDOT" in s5["int8_kernel"]
    assert s4["int8_speedup_expected"] is False and s5["int8_speedup_expected"] is True
    assert "without the int8 dot product" in s4["cpu"] and "with the int8 dot product" in s5["cpu"]
    # the files themselves: s8s8 QDQ (int8 zero points), where this x86 would have made u8 ones
    for report in (pi4, pi5):
        model = onnx.load(str(report["_folder"] / "int8-static.onnx"))
        zero_points = {i.name: i.data_type for i in model.graph.initializer}
        kinds = {
            zero_points[n.input[2]]
            for n in model.graph.node
            if n.op_type == "QuantizeLinear" and len(n.input) > 2
        }
        assert kinds == {onnx.TensorProto.INT8}


def test_a_bad_for_cpu_fails_before_anything_is_written(tmp_path):
    model = tiny_model(tmp_path / "tiny.onnx")
    done = run_edgekit("optimize", model, "--for-cpu", "rpi9", "-o", tmp_path / "out", cwd=tmp_path,
                       timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert "rpi4, rpi5, x86-avx2, x86-vnni" in done.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- optimize --target a "Pi 5"


def pi5_python(tmp_path: Path) -> Path:
    """The device's `python3`: this interpreter, seeing a Raspberry Pi 5's /proc/cpuinfo and
    /proc/device-tree/model and saying aarch64 (the files' text is the fixtures')."""
    fake = tmp_path / "pi5-site"
    fake.mkdir()
    files = {"/proc/cpuinfo": str(BOARDS / "rpi5" / "cpuinfo"),
             "/proc/device-tree/model": str(BOARDS / "rpi5" / "model")}  # fmt: skip
    (fake / "sitecustomize.py").write_text(
        "import builtins, platform\n"
        f"FILES = {files!r}\n"
        "_open = builtins.open\n"
        "def _board_open(file, *args, **kwargs):\n"
        "    return _open(FILES.get(file, file) if isinstance(file, str) else file, *args, **kwargs)\n"
        "builtins.open = _board_open\n"
        "platform.machine = lambda: 'aarch64'\n"
    )
    python = tmp_path / "python3-pi5"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={fake} exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    return python


def test_optimize_target_makes_int8_for_the_devices_cpu_while_running_on_x86(
    ssh_target,
    ssh_env,  # noqa: F811
    tmp_path,
):
    model = tiny_model(tmp_path / "tiny.onnx")
    out = tmp_path / "opt"
    done = run_edgekit("optimize", model, "--target", ssh_target, "--remote-python", pi5_python(tmp_path),
                       *TINY, "-o", out, env=ssh_env, cwd=tmp_path, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    # which CPU timed them: the device's description, as the device reported it
    d = report["device"]
    assert d["target"] == ssh_target and d["arch"] == "aarch64"
    assert d["board"] == "Raspberry Pi 5 Model B Rev 1.0" and d["cpu"] == "4× Cortex-A76"
    assert d["cpu_cores"] == [{"core": "Cortex-A76", "cpus": [0, 1, 2, 3], "count": 4}]
    # which CPU they were made for: the same, read from the device before quantizing
    made = report["made_for"]
    assert made["source"] == f"--target {ssh_target}" and made["same_cpu"] is True
    assert made["arch"] == "aarch64" and "asimddp" in made["features"]
    assert ssh_target in made["timed_on"] and "Raspberry Pi 5" in made["timed_on"]
    assert not [w for w in report["warnings"] if "were made for" in w]
    s = quantize_settings(report)
    assert (s["activation_type"], s["weight_type"], s["reduce_range"]) == ("QInt8", "QInt8", False)
    assert s["cpu_arch"] == "aarch64" and "SDOT" in s["int8_kernel"]
    assert any(
        n.startswith("int8 variants made for Raspberry Pi 5 Model B Rev 1.0: 4× Cortex-A76")
        for n in report["notes"]
    )
    assert all(v["latency_ms"]["n"] > 0 for v in report["variants"] if not v["error"])


def test_without_onnxsim_simplification_is_a_clear_note_and_int8_goes_on(tmp_path, block_imports):
    """As on a platform without an onnxsim wheel: the run finishes, int8 is made from the export."""
    env = block_imports("onnxsim")
    model = tiny_model(tmp_path / "tiny.onnx")
    out = tmp_path / "out"
    done = run_edgekit("optimize", model, "--for-cpu", "rpi5", *TINY, "-o", out, env=env,
                       cwd=tmp_path, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    rows = {v["name"]: v for v in report["variants"]}
    assert "onnxsim cannot be imported here" in rows["simplified"]["error"]
    assert "kept unsimplified" in rows["simplified"]["error"]
    assert rows["int8-static"]["error"] is None and rows["int8-static"]["parent"] == "fp32"
