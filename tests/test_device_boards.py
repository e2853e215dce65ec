"""ARM boards described the way their owners do: core names from CPU part numbers, the board model,
cores per cluster on big.LITTLE boards, 32-bit OSes refused with the fix, and the thermal state
before and after a benchmark. Fixtures are the real files' text (tests/fixtures/boards/)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import run_edgekit

from edgekit.benchmark import device
from models import tiny_model

BOARDS = Path(__file__).parent / "fixtures" / "boards"


def board(name: str) -> tuple[str, str]:
    return (BOARDS / name / "cpuinfo").read_text(), (BOARDS / name / "model").read_text()


@pytest.mark.parametrize(
    ("name", "model", "cpu", "clusters", "dot"),
    [
        ("rpi4", "Raspberry Pi 4 Model B Rev 1.4", "4× Cortex-A72", [("Cortex-A72", [0, 1, 2, 3])],
         False),
        ("rpi5", "Raspberry Pi 5 Model B Rev 1.0", "4× Cortex-A76", [("Cortex-A76", [0, 1, 2, 3])],
         True),
        ("rock5b", "Radxa ROCK 5B", "4× Cortex-A55 + 4× Cortex-A76",
         [("Cortex-A55", [0, 1, 2, 3]), ("Cortex-A76", [4, 5, 6, 7])], True),
    ],
)  # fmt: skip
def test_boards_decode_to_core_names_clusters_and_model(name, model, cpu, clusters, dot):
    cpuinfo, dt_model = board(name)
    described = device.describe_cpu(cpuinfo, "aarch64", dt_model)
    assert described["board"] == model  # the device tree's NUL terminator is gone
    assert described["cpu"] == cpu
    got = [(c["core"], c["cpus"]) for c in described["cpu_cores"]]
    assert got == clusters
    assert [c["count"] for c in described["cpu_cores"]] == [len(cpus) for _, cpus in clusters]
    assert ("asimddp" in described["features"]) is dot
    assert "asimd" in described["features"]


def test_the_board_model_falls_back_to_the_pi_kernels_cpuinfo_line():
    cpuinfo, _ = board("rpi4")
    assert device.board_model(None, cpuinfo) == "Raspberry Pi 4 Model B Rev 1.4"
    assert device.board_model("", board("rock5b")[0]) is None  # mainline kernels print no Model


def test_unknown_parts_and_other_vendors_say_what_they_are():
    assert device.core_name("0x41", "0xd0b") == "Cortex-A76"
    assert device.core_name("0x41", "0xd03") == "Cortex-A53"
    assert device.core_name("0x41", "0xfff") == "ARM part 0xfff"
    assert device.core_name("0x51", "0x804") == "Qualcomm part 0x804"
    assert device.core_name("0x99", "0x001") == "implementer 0x99 part 0x1"
    assert device.core_name(None, None) is None


def test_x86_cpuinfo_keeps_its_model_name():
    text = "".join(
        f"processor\t: {i}\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n"
        "flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni\n\n"
        for i in range(2)
    )
    described = device.describe_cpu(text, "x86_64")
    assert described["cpu"] == "AMD EPYC 7B13" and described["cpu_cores"] is None
    assert described["board"] is None
    assert described["features"] == ["avx2", "fma", "avx512f", "avx512_vnni"]


def test_32_bit_arm_gets_the_fix():
    for machine in ("armv7l", "armv6l", "armv8l"):
        message = device.unsupported_arch(machine)
        assert "no 32-bit ARM wheels" in message and "64-bit OS" in message and machine in message
    assert device.unsupported_arch("aarch64") is None
    assert device.unsupported_arch("x86_64") is None


def test_collect_on_this_machine_has_the_board_fields():
    d = device.collect()
    for key in ("board", "cpu_cores", "clocks", "temperature_c_after", "throttled_after",
                "clocks_after", "load_avg_after"):  # fmt: skip
        assert key in d
    device.record_after(d, device.conditions())
    assert d["load_avg_after"] is not None


# ---------------------------------------------------------------- thermal state


def test_throttle_flags_that_appear_during_the_run_warn():
    assert device.parse_throttled("throttled=0x50005")["under_voltage_now"] is True
    assert device.parse_throttled("throttled=0x50005")["throttled_occurred"] is True
    assert device.parse_throttled("nonsense") is None
    # flags from before the run (set since boot) alone: the general warning, not "during"
    old = {"throttled": device.parse_throttled("throttled=0x50000")}
    old["throttled_after"] = old["throttled"]
    assert not any("during" in w for w in device.thermal_warnings(old))
    # the Pi throttled while the benchmark ran
    hot = {
        "throttled": device.parse_throttled("throttled=0x0"),
        "throttled_after": device.parse_throttled("throttled=0x60004"),
    }
    (warning,) = device.thermal_warnings(hot)
    assert "throttled during the benchmark" in warning
    assert "throttled_now" in warning and "throttled_occurred" in warning


def fake_cpufreq(root: Path, policies: dict[int, tuple[str, int, int, int]]) -> Path:
    """A real sysfs-shaped tree: policyN/{related_cpus, scaling_cur_freq, scaling_max_freq,
    cpuinfo_max_freq} in kHz."""
    for n, (cpus, cur, allowed, top) in policies.items():
        folder = root / "cpufreq" / f"policy{n}"
        folder.mkdir(parents=True)
        for name, value in (("related_cpus", cpus), ("scaling_cur_freq", cur),
                            ("scaling_max_freq", allowed), ("cpuinfo_max_freq", top)):  # fmt: skip
            (folder / name).write_text(f"{value}\n")
    return root


def test_clocks_per_cluster_and_a_frequency_drop_during_the_run(tmp_path):
    # RK3588: policy0 = the A55s, policy4 = the A76s
    before = device.clocks(
        str(fake_cpufreq(tmp_path / "a", {0: ("0 1 2 3", 1800000, 1800000, 1800000),
                                          4: ("4 5 6 7", 2400000, 2400000, 2400000)}))
    )  # fmt: skip
    after = device.clocks(
        str(fake_cpufreq(tmp_path / "b", {0: ("0 1 2 3", 1800000, 1800000, 1800000),
                                          4: ("4 5 6 7", 1600000, 1608000, 2400000)}))
    )  # fmt: skip
    assert before == [
        {"cpus": "0 1 2 3", "cur_mhz": 1800, "allowed_mhz": 1800, "max_mhz": 1800},
        {"cpus": "4 5 6 7", "cur_mhz": 2400, "allowed_mhz": 2400, "max_mhz": 2400},
    ]
    state = {"governor": "performance", "clocks": before, "clocks_after": after}
    warnings = device.thermal_warnings(state)
    assert len(warnings) == 2
    assert "CPUs 4 5 6 7" in warnings[0] and "from 2400 to 1608 MHz" in warnings[0]
    assert "dropped from 2400 to 1600 MHz" in warnings[1]
    assert device.thermal_warnings({"clocks": before, "clocks_after": before}) == []
    assert device.clocks(str(tmp_path / "none")) is None


def test_temperature_after_the_run_warns_with_the_rise():
    (warning,) = device.thermal_warnings({"temperature_c": 55.0, "temperature_c_after": 83.2})
    assert "83 °C (from 55 °C)" in warning


# ---------------------------------------------------------------- a 32-bit OS over real SSH


@pytest.mark.slow
def test_a_32_bit_arm_device_is_refused_with_the_fix(ssh_target, ssh_env, tmp_path):
    """A device whose Python says armv7l: the probe stops before anything is copied."""
    fake = tmp_path / "armv7"
    fake.mkdir()
    (fake / "sitecustomize.py").write_text("import platform\nplatform.machine = lambda: 'armv7l'\n")
    python = tmp_path / "python-armv7"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={fake} exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    model = tiny_model(tmp_path / "tiny.onnx")
    done = run_edgekit("bench", model, "--target", ssh_target, "--remote-python", python,
                       "-o", tmp_path / "out", env=ssh_env, cwd=tmp_path, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "32-bit ARM OS (armv7l)" in done.stderr and "64-bit OS" in done.stderr
    assert not (tmp_path / "out").exists()
