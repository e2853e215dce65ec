"""The CPU int8 variants are made for, and the int8 settings onnxruntime's guidance gives it.

The CPU comes from, in this order: `--for-cpu` (a named profile below, or a device.json / report.json
that `edgekit bench` wrote on the device), the device behind `--target` (its /proc/cpuinfo, read over
SSH before quantizing), or this machine. A CPU description is a dict with at least `arch` and
`features` (the int8 features as /proc/cpuinfo spells them), like the report's `device` section.

Torch-free: `edgekit bench` users and the device side may import it.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

from edgekit.errors import EdgekitError

# onnxruntime's quantization guide: "Data type selection" and the FAQ on reduce_range/per-channel.
ORT_QUANT_DOC = "https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html"
# Which int8 GEMM kernels MLAS (onnxruntime's CPU math library) picks per CPU: see the
# MLAS_TARGET_ARM64 part of MLAS_PLATFORM::MLAS_PLATFORM().
MLAS_PLATFORM = (
    "https://github.com/microsoft/onnxruntime/blob/main/onnxruntime/core/mlas/lib/platform.cpp"
)

ARM64 = ("aarch64", "arm64")
# A report.json with the timing samples of a dozen variants is a few MB; parsing JSON costs
# about ten times its size in memory.
MAX_CPU_FILE_BYTES = 16 * 2**20
VNNI = ("avx512_vnni", "avx_vnni", "amx_int8")

# Named CPUs for `--for-cpu`: what /proc/cpuinfo says on these boards (features: the int8 ones).
PROFILES: dict[str, dict] = {
    "rpi4": {
        "cpu": "4× Cortex-A72",
        "board": "Raspberry Pi 4 Model B",
        "arch": "aarch64",
        "cpu_cores": [{"core": "Cortex-A72", "count": 4, "cpus": [0, 1, 2, 3]}],
        "features": ["asimd"],  # ARMv8.0-A: no int8 dot product (asimddp)
    },
    "rpi5": {
        "cpu": "4× Cortex-A76",
        "board": "Raspberry Pi 5 Model B",
        "arch": "aarch64",
        "cpu_cores": [{"core": "Cortex-A76", "count": 4, "cpus": [0, 1, 2, 3]}],
        "features": ["asimd", "asimddp", "asimdhp"],  # ARMv8.2-A: SDOT/UDOT; no i8mm
    },
    "x86-avx2": {
        "cpu": "x86-64 with AVX2 and FMA, without VNNI (e.g. Intel Skylake, AMD Zen 2)",
        "board": None,
        "arch": "x86_64",
        "features": ["avx2", "fma"],
    },
    "x86-vnni": {
        "cpu": "x86-64 with AVX-512 VNNI (e.g. Intel Ice Lake, AMD Zen 4)",
        "board": None,
        "arch": "x86_64",
        "features": ["avx2", "fma", "avx512f", "avx512_vnni"],
    },
}


def int8_settings(arch: str, features) -> dict:
    """Activation/weight types and reduce_range for a CPU, and the int8 kernel onnxruntime runs
    there, following onnxruntime's guidance (ORT_QUANT_DOC, MLAS_PLATFORM)."""
    features = set(features)
    if arch.lower() in ARM64:
        # ORT_QUANT_DOC, "Data type selection": "S8S8 with QDQ is the default setting and balances
        # performance and accuracy. It should be the first choice"; the u8s8 saturation that
        # reduce_range works around is an x86 AVX2/AVX512 issue: "There is no such issue on other
        # CPU architectures (x64 with VNNI and ARM)". So s8s8, full 8-bit weights, on every ARM.
        # What differs per core is the kernel (MLAS_PLATFORM, MLAS_TARGET_ARM64): without the dot
        # product (Cortex-A53/A72: Pi 3/4) s8s8 and u8s8 both run the NEON widening multiply-add
        # kernel (MlasGemmX8S8DispatchNeon); with `asimddp` (A55/A76: Pi 5) s8s8 runs SDOT
        # (MlasGemmS8S8DispatchSdot); with `i8mm` SMMLA (MlasGemmS8S8DispatchSmmla).
        # ORT_QUANT_DOC, FAQ "Why am I not seeing performance improvements?": CPUs without int8
        # instructions may run int8 slower than fp32; "ARM with dot-product instructions can get
        # better performance in general".
        # Dynamic int8 quantizes activations to uint8 at run time: u8s8, with its own kernels.
        neon = "NEON widening multiply-add, no dot product: MlasGemmX8S8DispatchNeon"
        if "i8mm" in features:
            kernel, fast = "SMMLA (i8mm matrix multiply): MlasGemmS8S8DispatchSmmla", True
            dynamic = "UMMLA (i8mm matrix multiply): MlasGemmU8X8DispatchUmmla"
        elif "asimddp" in features:
            kernel, fast = "SDOT (asimddp dot product): MlasGemmS8S8DispatchSdot", True
            dynamic = "UDOT (asimddp dot product): MlasGemmU8X8DispatchUdot"
        else:
            kernel, fast, dynamic = neon, False, neon
        return {
            "activation_type": "QInt8",
            "weight_type": "QInt8",
            "reduce_range": False,
            "int8_kernel": kernel,
            "int8_kernel_dynamic": dynamic,
            "int8_speedup_expected": fast,
            "cpu": (
                "ARM with the int8 dot product (asimddp): full 8-bit int8 weights; static int8 "
                "is s8s8 QDQ"
                if fast
                else "ARM without the int8 dot product (asimddp): full 8-bit int8 weights; static "
                "int8 is s8s8 QDQ; int8 may not beat fp32 on this core: measure it on the device"
            ),
            "guidance": ORT_QUANT_DOC,
        }
    vnni = sorted(features.intersection(VNNI))
    if vnni:
        # ORT_QUANT_DOC, FAQ on reduce_range: "This is not needed on machines supporting VNNI".
        return {
            "activation_type": "QUInt8",
            "weight_type": "QInt8",
            "reduce_range": False,
            "int8_kernel": f"u8s8 with VNNI ({', '.join(vnni)})",
            "int8_speedup_expected": True,
            "cpu": f"x86 with VNNI ({', '.join(vnni)}): u8s8, full 8-bit weights",
            "guidance": ORT_QUANT_DOC,
        }
    # ORT_QUANT_DOC: on AVX2/AVX512 without VNNI, u8s8 uses VPMADDUBSW, which can saturate;
    # reduce_range (7-bit weights) "is designed for the U8S8 format on AVX2 and AVX512 (non-VNNI)
    # machines", and "S8S8 with QOperator will be slow on x86-64".
    return {
        "activation_type": "QUInt8",
        "weight_type": "QInt8",
        "reduce_range": True,
        "int8_kernel": "u8s8 with AVX2 VPMADDUBSW (no VNNI)",
        "int8_speedup_expected": True,
        "cpu": "x86 without VNNI: u8s8 with 7-bit weights (reduce_range) so the AVX2 kernels "
        "cannot saturate",
        "guidance": ORT_QUANT_DOC,
    }


# ---- where the CPU description comes from -------------------------------------------------------


def this_machine() -> dict:
    """The CPU that runs this process."""
    from edgekit.benchmark import device

    machine = platform.machine()
    cpu = device.describe_cpu(
        device.read_text("/proc/cpuinfo") or "",
        machine,
        device.read_text("/proc/device-tree/model"),
    )
    return {**cpu, "arch": machine, "source": "this machine"}


def from_target(target) -> dict:
    """The CPU of the device behind `--target` (edgekit.ssh.Target), read over SSH."""
    from edgekit.benchmark import remote

    info = remote.describe(target)
    return {**_checked(info, target.spec), "source": f"--target {target.spec}"}


def resolve(text: str) -> dict:
    """`--for-cpu`: a profile name (rpi4, rpi5, x86-avx2, x86-vnni) or a device.json/report.json."""
    name = str(text).strip()
    if name.lower() in PROFILES:
        return {**PROFILES[name.lower()], "source": f"--for-cpu {name.lower()} (named profile)"}
    path = Path(name)
    if not path.is_file():
        raise EdgekitError(
            f"--for-cpu {name!r} is neither a named CPU ({', '.join(PROFILES)}) nor a file. Give one "
            "of those names, or the report.json (or its `device` object saved as device.json) that "
            "`edgekit bench` wrote on the device."
        )
    size = path.stat().st_size
    if size > MAX_CPU_FILE_BYTES:
        raise EdgekitError(
            f"--for-cpu {path} is {size / 2**20:,.0f} MB; a device.json or report.json that "
            f"`edgekit bench` writes is far smaller (edgekit reads at most "
            f"{MAX_CPU_FILE_BYTES // 2**20} MB). Give that file, or only its `device` object "
            "saved as device.json."
        )
    try:
        data = json.loads(path.read_text())
    except RecursionError:
        raise EdgekitError(
            f"--for-cpu {path}: its JSON is nested too deep to read. Give the report.json or "
            "device.json that `edgekit bench` wrote on the device."
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise EdgekitError(
            f"--for-cpu {path}: cannot read it as JSON ({exc}). Give the report.json or device.json "
            "that `edgekit bench` wrote on the device."
        ) from None
    info = data.get("device") if isinstance(data, dict) and "device" in data else data
    return {**_checked(info, str(path)), "source": f"--for-cpu {path}"}


def _checked(info, where: str) -> dict:
    """A CPU description with a usable arch and feature list, else EdgekitError."""
    from edgekit.benchmark import device

    if not isinstance(info, dict) or not isinstance(info.get("arch"), str):
        raise EdgekitError(
            f"{where} does not describe a CPU: it needs a `device` object (or is one) with `arch` "
            "and `features`, as `edgekit bench` writes in report.json."
        )
    problem = device.unsupported_arch(info["arch"])
    if problem:
        raise EdgekitError(f"{where}: {problem}")
    features = info.get("features")
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise EdgekitError(
            f"{where}: `features` must be the list of CPU features (as in /proc/cpuinfo) that "
            "`edgekit bench` records; it is missing or not a list of names."
        )
    keep = ("cpu", "board", "arch", "cpu_cores", "features")
    return {k: info.get(k) for k in keep}


def made_for(options) -> dict:
    """The CPU an optimize run makes its int8 variants for (OptimizeOptions: for_cpu, target)."""
    chosen = getattr(options, "for_cpu", None)
    if isinstance(chosen, dict):
        return chosen
    if chosen:
        return resolve(chosen)
    if getattr(options, "target", None) is not None:
        return from_target(options.target)
    return this_machine()


# ---- what the report says ----------------------------------------------------------------------


def describe(cpu: dict) -> str:
    """'Raspberry Pi 5 Model B: 4× Cortex-A76 (aarch64; asimd asimddp asimdhp)'."""
    name = str(cpu.get("cpu") or "unknown CPU")
    if cpu.get("board"):
        name = f"{cpu['board']}: {name}"
    features = " ".join(cpu.get("features") or []) or "no int8 features"
    return f"{name} ({cpu.get('arch')}; {features})"


def _same_cpu(a: dict, b: dict) -> bool:
    return (a.get("arch"), sorted(a.get("features") or [])) == (
        b.get("arch"),
        sorted(b.get("features") or []),
    )


def report_section(made: dict | None, device: dict) -> tuple[dict | None, list[str]]:
    """The report's `made_for` object (the CPU the int8 variants were made for, where that came
    from, and whether the CPU that timed them is the same) and the warnings that go with it."""
    if not made:
        return None, []
    timed_on = describe(device) + (f" via {device['target']}" if device.get("target") else "")
    same = _same_cpu(made, device)
    section = {
        **{k: made.get(k) for k in ("cpu", "board", "arch", "features", "source")},
        "timed_on": timed_on,
        "same_cpu": same,
    }
    if same:
        return section, []
    where = "this machine" if not device.get("target") else f"the device {device['target']}"
    return section, [
        f"The int8 variants were made for {describe(made)} ({made.get('source')}), but the "
        f"latencies in this report are from {where}: {timed_on}. They say nothing about speed "
        "on the CPU the variants were made for. Time them there: `edgekit bench "
        "*.onnx --target ssh://USER@DEVICE` with the variant files of this report."
    ]
