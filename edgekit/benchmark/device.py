"""The device and the conditions a benchmark ran under, and warnings when they make numbers unreliable."""

from __future__ import annotations

import glob
import os
import platform
import shutil
import subprocess

# The instruction-set features that decide int8 (and fp32) speed, as /proc/cpuinfo spells them.
INT8_FEATURES = (
    # x86
    "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
    "amx_bf16",
    # ARM (aarch64)
    "asimd", "asimddp", "i8mm", "sve", "sve2", "bf16", "asimdhp",
)  # fmt: skip

# `vcgencmd get_throttled` bits (Raspberry Pi firmware documentation).
THROTTLE_BITS = {
    0: "under_voltage_now",
    1: "freq_capped_now",
    2: "throttled_now",
    3: "soft_temp_limit_now",
    16: "under_voltage_occurred",
    17: "freq_capped_occurred",
    18: "throttled_occurred",
    19: "soft_temp_limit_occurred",
}


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def _cpuinfo() -> dict[str, str]:
    """First value of each key in /proc/cpuinfo (empty elsewhere)."""
    info: dict[str, str] = {}
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info.setdefault(key.strip(), value.strip())
    return info


def physical_cores() -> int:
    try:
        import psutil

        cores = psutil.cpu_count(logical=False)
        if cores:
            return cores
    except ImportError:
        pass
    return os.cpu_count() or 1


def _cpu_name(info: dict[str, str]) -> str:
    # x86: "model name"; Raspberry Pi: "Model"; other ARM boards: "Hardware" or the CPU part id.
    for key in ("model name", "Model", "Hardware"):
        if info.get(key):
            return info[key]
    if info.get("CPU part"):
        return f"ARM CPU part {info['CPU part']} (implementer {info.get('CPU implementer', '?')})"
    return platform.processor() or platform.machine()


def _temperature_c() -> float | None:
    temps = []
    for path in glob.glob("/sys/class/thermal/thermal_zone*/temp"):
        text = _read(path)
        if text and text.lstrip("-").isdigit():
            temps.append(int(text) / 1000)
    return max(temps) if temps else None


def throttled() -> dict | None:
    """Raspberry Pi throttling flags from `vcgencmd get_throttled`; None where it is absent."""
    exe = shutil.which("vcgencmd")
    if not exe:
        return None
    try:
        out = subprocess.run(
            [exe, "get_throttled"], capture_output=True, text=True, timeout=5, check=True
        ).stdout
        value = int(out.strip().split("=")[1], 16)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    flags = {name: bool(value >> bit & 1) for bit, name in THROTTLE_BITS.items()}
    return {"raw": hex(value), **flags}


def load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def int8_features(info: dict | None = None) -> list[str]:
    """The instruction-set features that decide int8 speed, from /proc/cpuinfo."""
    info = _cpuinfo() if info is None else info
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return [f for f in INT8_FEATURES if f in flags]


def collect() -> dict:
    """The report's `device` object (load_avg_after is filled in when the benchmark ends)."""
    import numpy
    import onnxruntime

    info = _cpuinfo()
    return {
        "cpu": _cpu_name(info),
        "arch": platform.machine(),
        "cores": physical_cores(),
        "logical_cpus": os.cpu_count(),
        "features": int8_features(info),
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "temperature_c": _temperature_c(),
        "throttled": throttled(),
        "load_avg_before": load_avg(),
        "load_avg_after": None,
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
        "os": platform.platform(),
    }


def condition_warnings(device: dict, threads: list[int]) -> list[str]:
    """Warnings about the machine itself; the runner adds the ones about the measurements."""
    warnings = []
    cores, logical = device.get("cores") or 1, device.get("logical_cpus") or 1
    for when in ("before", "after"):
        load = device.get(f"load_avg_{when}")
        # "after" includes the benchmark's own threads, so only a load beyond the CPUs counts.
        limit = 0.5 * logical if when == "before" else logical + 0.5
        if load and load[0] > limit:
            warnings.append(
                f"The 1-minute load average was {load[0]} {when} the benchmark on {logical} logical "
                "CPUs: other work competed for the CPU, so timings are noisier and slower than usual."
            )
    too_many = [t for t in threads if t and t > cores]
    if too_many:
        warnings.append(
            f"{too_many} intra-op threads is more than the {cores} physical cores: ORT threads then "
            "fight over cores and can run several times slower; use at most the physical cores."
        )
    throttle = device.get("throttled") or {}
    hit = [k for k, v in throttle.items() if k != "raw" and v]
    if hit:
        warnings.append(
            f"The Raspberry Pi reports throttling ({throttle['raw']}: {', '.join(hit)}): the CPU "
            "ran slower than its rated clock; check the power supply and cooling."
        )
    temp = device.get("temperature_c")
    if temp is not None and temp >= 80:
        warnings.append(f"The CPU was at {temp:.0f} °C: it may have clocked down during the runs.")
    return warnings
