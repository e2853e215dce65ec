"""The device and the conditions a benchmark ran under, and warnings when they make numbers unreliable.

Copied to devices alone (edgekit/benchmark/remote.py): only the standard library at module level.
The decoders take the files' text (so fixtures of real boards test them); `collect()` and
`conditions()` read the real files."""

from __future__ import annotations

import glob
import os
import platform
import re
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

# "CPU implementer" and "CPU part" of /proc/cpuinfo on ARM, decoded as util-linux's lscpu does
# (https://github.com/util-linux/util-linux/blob/master/sys-utils/lscpu-arm.c).
ARM_IMPLEMENTERS = {
    0x41: "ARM", 0x42: "Broadcom", 0x43: "Cavium", 0x46: "Fujitsu", 0x48: "HiSilicon",
    0x4E: "NVIDIA", 0x51: "Qualcomm", 0x61: "Apple", 0x6D: "Microsoft", 0xC0: "Ampere",
}  # fmt: skip
ARM_PARTS = {  # implementer 0x41 (Arm Ltd)
    0xD01: "Cortex-A32", 0xD02: "Cortex-A34", 0xD03: "Cortex-A53", 0xD04: "Cortex-A35",
    0xD05: "Cortex-A55", 0xD06: "Cortex-A65", 0xD07: "Cortex-A57", 0xD08: "Cortex-A72",
    0xD09: "Cortex-A73", 0xD0A: "Cortex-A75", 0xD0B: "Cortex-A76", 0xD0C: "Neoverse-N1",
    0xD0D: "Cortex-A77", 0xD0E: "Cortex-A76AE", 0xD40: "Neoverse-V1", 0xD41: "Cortex-A78",
    0xD42: "Cortex-A78AE", 0xD44: "Cortex-X1", 0xD46: "Cortex-A510", 0xD47: "Cortex-A710",
    0xD48: "Cortex-X2", 0xD49: "Neoverse-N2", 0xD4B: "Cortex-A78C", 0xD4C: "Cortex-X1C",
    0xD4D: "Cortex-A715", 0xD4E: "Cortex-X3", 0xD4F: "Neoverse-V2", 0xD80: "Cortex-A520",
    0xD81: "Cortex-A720", 0xD82: "Cortex-X4", 0xD84: "Neoverse-V3", 0xD85: "Cortex-X925",
    0xD87: "Cortex-A725",
}  # fmt: skip

# 32-bit ARM userlands (uname -m). armv8l is a 32-bit OS on a 64-bit CPU.
ARM32 = ("armv6l", "armv7l", "armv8l", "arm")
ARM32_MESSAGE = (
    "This is a 32-bit ARM OS ({machine}): onnxruntime publishes no 32-bit ARM wheels, so neither "
    "onnxruntime nor edgekit's benchmark can run here. Install a 64-bit OS (on a Raspberry Pi 3, 4 "
    "or 5: Raspberry Pi OS (64-bit); `uname -m` then says aarch64) and install onnxruntime there."
)


def unsupported_arch(machine: str | None) -> str | None:
    """Why edgekit cannot run on this architecture (a 32-bit ARM OS), or None."""
    return ARM32_MESSAGE.format(machine=machine) if machine in ARM32 else None


def read_text(path: str) -> str | None:
    """A system file's text, stripped; None when it cannot be read."""
    try:
        with open(path) as handle:
            return handle.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def parse_cpuinfo(text: str) -> tuple[list[dict[str, str]], dict[str, str]]:
    """/proc/cpuinfo as (one dict per `processor` block, the other lines: Raspberry Pi kernels end
    with Hardware, Revision, Serial and Model; x86 repeats everything per processor)."""
    processors: list[dict[str, str]] = []
    extra: dict[str, str] = {}
    for block in re.split(r"\n\s*\n", text or ""):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip(), value.strip())
        if "processor" in fields and fields["processor"].isdigit():
            processors.append(fields)
        else:
            for key, value in fields.items():
                extra.setdefault(key, value)
    return processors, extra


def _cpuinfo(text: str | None = None) -> dict[str, str]:
    """First value of each key in /proc/cpuinfo (empty elsewhere)."""
    processors, extra = parse_cpuinfo(read_text("/proc/cpuinfo") if text is None else text)
    info: dict[str, str] = {}
    for fields in [*processors, extra]:
        for key, value in fields.items():
            info.setdefault(key, value)
    return info


def _hex(text: str | None) -> int | None:
    try:
        return int(text or "", 16)
    except ValueError:
        return None


def core_name(implementer: str | None, part: str | None) -> str | None:
    """'Cortex-A76' for implementer 0x41 part 0xd0b; 'Qualcomm part 0x804' where the part is not
    in the table; None without the fields (x86)."""
    imp, num = _hex(implementer), _hex(part)
    if imp is None or num is None:
        return None
    if imp == 0x41 and num in ARM_PARTS:
        return ARM_PARTS[num]
    return f"{ARM_IMPLEMENTERS.get(imp, f'implementer {imp:#x}')} part {num:#x}"


def core_clusters(cpuinfo_text: str) -> list[dict]:
    """The ARM core types in CPU order with their counts: a Pi 5 gives one cluster of 4 Cortex-A76,
    an RK3588 4 Cortex-A55 then 4 Cortex-A76 (big.LITTLE). Empty where cpuinfo has no CPU part."""
    clusters: list[dict] = []
    processors, _ = parse_cpuinfo(cpuinfo_text)
    for fields in processors:
        name = core_name(fields.get("CPU implementer"), fields.get("CPU part"))
        if name is None:
            continue
        cpu = int(fields["processor"])
        if clusters and clusters[-1]["core"] == name:
            clusters[-1]["cpus"].append(cpu)
        else:
            clusters.append({"core": name, "cpus": [cpu]})
    for cluster in clusters:
        cluster["count"] = len(cluster["cpus"])
    return clusters


def board_model(device_tree_model: str | None, cpuinfo_text: str = "") -> str | None:
    """The board as its maker names it: /proc/device-tree/model ('Raspberry Pi 5 Model B Rev 1.0',
    NUL-terminated), else the `Model` line of Raspberry Pi kernels' /proc/cpuinfo."""
    model = (device_tree_model or "").replace("\x00", " ").strip()
    if model:
        return model
    return parse_cpuinfo(cpuinfo_text)[1].get("Model") or None


def describe_cpu(cpuinfo_text: str, machine: str, device_tree_model: str | None = None) -> dict:
    """cpu (a name), board, cpu_cores (clusters) and the int8 features, from the files' text."""
    info = _cpuinfo(cpuinfo_text)
    clusters = core_clusters(cpuinfo_text)
    board = board_model(device_tree_model, cpuinfo_text)
    if clusters:
        name = " + ".join(f"{c['count']}× {c['core']}" for c in clusters)
    else:
        name = info.get("model name") or info.get("Hardware") or platform.processor() or machine
    return {
        "cpu": name,
        "board": board,
        "cpu_cores": clusters or None,
        "features": int8_features(info),
    }


def physical_cores() -> int:
    try:
        import psutil

        cores = psutil.cpu_count(logical=False)
        if cores:
            return cores
    except ImportError:
        pass
    return os.cpu_count() or 1


def temperature_c() -> float | None:
    """The hottest thermal zone, in °C; None when the device reports none."""
    temps = []
    for path in glob.glob("/sys/class/thermal/thermal_zone*/temp"):
        text = read_text(path)
        if text and text.lstrip("-").isdigit():
            temps.append(int(text) / 1000)
    return max(temps) if temps else None


def parse_throttled(text: str | None) -> dict | None:
    """`vcgencmd get_throttled` output ('throttled=0x50005') as named flags; None if unreadable."""
    try:
        value = int((text or "").strip().split("=")[1], 16)
    except (ValueError, IndexError):
        return None
    flags = {name: bool(value >> bit & 1) for bit, name in THROTTLE_BITS.items()}
    return {"raw": hex(value), **flags}


def throttled() -> dict | None:
    """Raspberry Pi throttling flags from `vcgencmd get_throttled`; None where it is absent."""
    exe = shutil.which("vcgencmd")
    if not exe:
        return None
    try:
        out = subprocess.run(
            [exe, "get_throttled"], capture_output=True, text=True, timeout=5, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_throttled(out)


def _mhz(path: str) -> int | None:
    text = read_text(path)
    return int(text) // 1000 if text and text.isdigit() else None  # sysfs gives kHz


def clocks(root: str = "/sys/devices/system/cpu") -> list[dict] | None:
    """Per cpufreq policy (a cluster on big.LITTLE boards): its CPUs, current clock, the highest
    clock allowed now (thermal limits lower it) and the hardware maximum, in MHz. None where
    cpufreq is not readable (most VMs)."""
    out = []
    policies = glob.glob(f"{root}/cpufreq/policy[0-9]*")
    for policy in sorted(policies, key=lambda path: int(re.sub(r"\D", "", path[-4:]) or 0)):
        out.append(
            {
                "cpus": read_text(f"{policy}/related_cpus") or read_text(f"{policy}/affected_cpus"),
                "cur_mhz": _mhz(f"{policy}/scaling_cur_freq"),
                "allowed_mhz": _mhz(f"{policy}/scaling_max_freq"),
                "max_mhz": _mhz(f"{policy}/cpuinfo_max_freq"),
            }
        )
    return out or None


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


def conditions() -> dict:
    """What can change during a benchmark: temperature, throttling flags, clocks, load. Read
    before (in collect()) and after the runs; `condition_warnings` compares the two."""
    return {
        "temperature_c": temperature_c(),
        "throttled": throttled(),
        "clocks": clocks(),
        "load_avg": load_avg(),
    }


def collect() -> dict:
    """The report's `device` object. The `*_after` fields are filled in when the benchmark ends."""
    import numpy
    import onnxruntime

    machine = platform.machine()
    cpu = describe_cpu(
        read_text("/proc/cpuinfo") or "", machine, read_text("/proc/device-tree/model")
    )
    now = conditions()
    return {
        "cpu": cpu["cpu"],
        "arch": machine,
        "board": cpu["board"],
        "cpu_cores": cpu["cpu_cores"],
        "cores": physical_cores(),
        "logical_cpus": os.cpu_count(),
        "features": cpu["features"],
        "governor": read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "temperature_c": now["temperature_c"],
        "throttled": now["throttled"],
        "clocks": now["clocks"],
        "load_avg_before": now["load_avg"],
        "load_avg_after": None,
        "temperature_c_after": None,
        "throttled_after": None,
        "clocks_after": None,
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
        "os": platform.platform(),
    }


def record_after(device: dict, after: dict | None) -> dict:
    """Put `conditions()` read after the benchmark into the device record (None: unreadable)."""
    after = after or {}
    device["load_avg_after"] = after.get("load_avg")
    device["temperature_c_after"] = after.get("temperature_c")
    device["throttled_after"] = after.get("throttled")
    device["clocks_after"] = after.get("clocks")
    return device


def thermal_warnings(device: dict) -> list[str]:
    """Throttling or a lower clock limit during the run, from the state before and after it."""
    warnings = []
    before, after = (
        flags if isinstance(flags, dict) else {}
        for flags in (device.get("throttled"), device.get("throttled_after"))
    )
    # The *_occurred bits stay set from boot: only bits that appeared during the run, or a "now"
    # bit at the end, say that this benchmark ran on a slowed CPU.
    new = [k for k, v in after.items() if k != "raw" and v and not before.get(k)]
    now = [k for k, v in after.items() if k.endswith("_now") and v]
    hit = sorted(set(new) | set(now))
    if hit:
        warnings.append(
            f"The Raspberry Pi throttled during the benchmark (get_throttled {before.get('raw')} "
            f"before, {after.get('raw')} after: {', '.join(hit)}): later rounds ran on a slower "
            "CPU. Improve cooling (a heatsink or fan) and the power supply, then measure again."
        )
    for old, end in zip(device.get("clocks") or [], device.get("clocks_after") or [], strict=False):
        cap_before, cap_after = old.get("allowed_mhz"), end.get("allowed_mhz")
        top = end.get("max_mhz")
        if cap_before and cap_after and cap_after < cap_before:
            warnings.append(
                f"CPUs {end.get('cpus')}: the highest allowed clock fell from {cap_before} to "
                f"{cap_after} MHz during the benchmark (a thermal limit): later rounds ran slower."
            )
        elif top and cap_after and cap_after < 0.95 * top:
            warnings.append(
                f"CPUs {end.get('cpus')}: the clock was limited to {cap_after} of {top} MHz "
                "(a thermal or power limit, or a capped scaling_max_freq): timings are slower than "
                "the board can run."
            )
        cur_before, cur_after = old.get("cur_mhz"), end.get("cur_mhz")
        if (
            device.get("governor") == "performance"
            and cur_before
            and cur_after
            and cur_after < 0.95 * cur_before
        ):
            warnings.append(
                f"CPUs {end.get('cpus')}: the clock dropped from {cur_before} to {cur_after} MHz "
                "during the benchmark under the performance governor: the CPU throttled."
            )
    temp, temp_after = device.get("temperature_c"), device.get("temperature_c_after")
    hottest = max((t for t in (temp, temp_after) if t is not None), default=None)
    if hottest is not None and hottest >= 80:
        rise = f" (from {temp:.0f} °C)" if temp is not None and temp_after is not None else ""
        warnings.append(
            f"The CPU reached {hottest:.0f} °C{rise}: it may have clocked down during the runs."
        )
    return warnings


def condition_warnings(device: dict, threads: list[int]) -> list[str]:
    """Warnings about the machine itself; the runner adds the ones about the measurements."""
    warnings = []
    cores, logical = device.get("cores") or 1, device.get("logical_cpus") or 1
    busy = []
    for when in ("before", "after"):
        load = device.get(f"load_avg_{when}")
        # "after" includes the benchmark's own threads, so only a load beyond the CPUs counts.
        limit = 0.5 * logical if when == "before" else logical + 0.5
        if load and load[0] > limit:
            busy.append(f"{load[0]} {when}")
    if busy:
        warnings.append(
            f"Other work competed for the CPU: the 1-minute load average was {' and '.join(busy)} "
            f"the benchmark, on {logical} logical CPUs. Timings are noisier and slower than usual."
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
    return warnings + thermal_warnings(device)
