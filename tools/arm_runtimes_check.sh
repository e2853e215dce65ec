#!/usr/bin/env bash
# Run the device side of edgekit (`edgekit bench`, torch-free) on aarch64 under QEMU user-mode
# emulation with every torch-free runtime: onnxruntime (.onnx), OpenVINO (.xml) and LiteRT
# (.tflite), on the variants `edgekit optimize --runtime onnxruntime,openvino,litert` makes of the
# shipped demo model on this (x86) host, as a user benchmarking on a Raspberry Pi what their laptop
# made does. Prints each variant's row: its runtime, the threads the runtime reports back (and the
# precision OpenVINO ran, whether LiteRT delegated to XNNPACK), and whether it ran.
#
# TIMINGS UNDER EMULATION MEAN NOTHING: QEMU translates every aarch64 instruction on this x86 CPU.
# This checks that each runtime loads and runs the host's artifacts on aarch64; it measures no
# device.
#
# ExecuTorch is left out: its Python runtime (the only one pip installs) imports torch and links
# libtorch, so it is not part of the torch-free device side, and on aarch64 it would need a torch
# matching its build (executorch 1.5.1 was checked with torch 2.13), whose PyPI aarch64 wheel is a
# CUDA 13 build of several GB (see tools/arm_optimize_check.sh). On a device a .pte runs with
# ExecuTorch's C++ runner.
#
# The CPU: BOARD=rpi5 (default) or rpi4. QEMU emulates the board's core (cortex-a76 or cortex-a72:
# the instructions it accepts). In a private mount namespace, /proc/cpuinfo is the board's
# (tests/fixtures/boards/BOARD/cpuinfo, cut to 2 CPUs): onnxruntime's CPU-info code crashes on the
# host's x86 one; /sys/devices/system/cpu lists those 2 CPUs with the core's ID register (MIDR_EL1,
# which OpenVINO's ARM code generator reads), and HWLOC_SYNTHETIC gives OpenVINO's hwloc the 2-core
# topology it cannot find under QEMU. A variant a runtime cannot run there is a failed row with its
# reason; the other rows go on.
#
# Needs root (unshare -m), qemu-user-static, debootstrap, network access to the Debian mirror and
# PyPI the first time (~100 MB of wheels), and PYTHON (default python3): a Python with edgekit's
# host side and its openvino and litert extras (pip install -e '.[torch,openvino,litert]'), which
# makes the variants. Cached in $EDGEKIT_ARM_CACHE (default ${XDG_CACHE_HOME:-~/.cache}/edgekit/arm64).
# Takes 5-15 minutes. Not part of CI. Run it niced on a shared machine:
#   nice -n 19 tools/arm_runtimes_check.sh
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
CACHE=${EDGEKIT_ARM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgekit/arm64}
BOARD=${BOARD:-rpi5}
case $BOARD in
  rpi5) QEMU_CPU=cortex-a76 ;;
  rpi4) QEMU_CPU=cortex-a72 ;;
  *) echo "BOARD is rpi5 or rpi4" >&2; exit 2 ;;
esac
ROOT=$CACHE/root
WHEELS=$CACHE/runtimes-wheels
SITE=$CACHE/runtimes-site
QEMU=$(command -v qemu-aarch64-static || true)
# onnxruntime's aarch64 wheel is manylinux_2_28, ai-edge-litert's 2_27, openvino's newest 2_35
# (Debian bookworm's glibc is 2.36): pip needs each tag it may take named.
PLATFORMS=(manylinux_2_35_aarch64 manylinux_2_28_aarch64 manylinux_2_27_aarch64 manylinux2014_aarch64)

say() { printf '== %s\n' "$*"; }
[ -n "$QEMU" ] || { echo "install qemu-user-static (apt-get install qemu-user-static)" >&2; exit 2; }
"$PYTHON" -c "import edgekit, openvino, litert_torch" 2>/dev/null || {
  echo "$PYTHON cannot import edgekit, openvino and litert_torch (they make the variants): set" \
    "PYTHON to the python of a venv with pip install -e '.[torch,openvino,litert]'" >&2
  exit 2
}

# 1. The arm64 root with python3.11 (built by the worker check's first step).
EDGEKIT_ARM_CACHE=$CACHE PYTHON=$PYTHON bash "$REPO/tools/arm_worker_check.sh" --root-only

# 2. aarch64 wheels of edgekit's core (what `edgekit bench` imports) and of the two runtimes.
if [ ! -f "$SITE/.complete" ]; then
  say "downloading aarch64 wheels (first run only)"
  rm -rf "$WHEELS" "$SITE"
  "$PYTHON" -m pip download -q --only-binary=:all: "${PLATFORMS[@]/#/--platform=}" \
    --python-version 3.11 -d "$WHEELS" onnxruntime onnx numpy psutil rich openvino ai-edge-litert
  mkdir -p "$SITE"
  for whl in "$WHEELS"/*.whl; do
    "$PYTHON" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
      "$whl" "$SITE"
  done
  touch "$SITE/.complete"
fi

# 3. The variants, made here on x86 from the shipped model (its report lists them with their runtime).
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/models" "$WORK/bin" "$WORK/py"
cp "$REPO"/models/digits_cnn.pt "$REPO"/models/digits_cnn.py "$REPO"/models/digits_test.npz "$WORK/models/"
say "making the variants on this host: edgekit optimize --runtime onnxruntime,openvino,litert"
(cd "$WORK" && "$PYTHON" -m edgekit.cli optimize models/digits_cnn.pt \
    --arch models/digits_cnn.py:DigitsCNN --data models/digits_test.npz \
    --runtime onnxruntime,openvino,litert --min-time 0.2 --max-time 0.5 -q -o host) \
    >"$WORK/optimize.log" 2>&1 \
  || { cat "$WORK/optimize.log" >&2; echo "edgekit optimize failed on the host" >&2; exit 1; }
# The ONNX baseline and every OpenVINO and LiteRT variant the host could make, in the report's order.
mapfile -t MODELS < <("$PYTHON" - "$WORK/host/report.json" <<'EOF'
import json, sys
from pathlib import Path

report = json.load(open(sys.argv[1]))
folder = Path(sys.argv[1]).parent
for v in report["variants"]:
    if v["error"] is None and (v["name"] == "fp32" or v["runtime"] in ("openvino", "litert")):
        print(folder / v["file"])
EOF
)
say "the host made: $(for m in "${MODELS[@]}"; do basename "$m"; done | tr '\n' ' ')"

# 4. The CPU description, and a `python3` the benchmark's worker processes can be started with:
#    without binfmt_misc the kernel cannot exec an aarch64 binary, so sys.executable points at a
#    script that runs QEMU.
awk -v RS= -v ORS='\n\n' '/^processor\t: [01]\n/ || !/^processor/' \
  "$REPO/tests/fixtures/boards/$BOARD/cpuinfo" >"$WORK/cpuinfo"
# MIDR_EL1 from the cpuinfo fields: implementer, variant, architecture 0xf, part, revision.
read -r IMPL VARIANT PART REV < <(awk -F': *' '/^CPU implementer/ {i = $2} /^CPU variant/ {v = $2}
  /^CPU part/ {p = $2} /^CPU revision/ {print i, v, p, $2; exit}' "$WORK/cpuinfo")
MIDR=$(printf '0x%016x' $(( IMPL << 24 | VARIANT << 20 | 0xf << 16 | PART << 4 | REV )))
cat >"$WORK/bin/python3" <<EOF
#!/bin/sh
exec "$QEMU" -cpu "$QEMU_CPU" -L "$ROOT" "$ROOT/usr/bin/python3.11" "\$@"
EOF
chmod +x "$WORK/bin/python3"
cat >"$WORK/py/sitecustomize.py" <<EOF
import sys
sys.executable = "$WORK/bin/python3"  # worker processes start through QEMU
EOF

say "running edgekit bench on aarch64 under $QEMU -cpu $QEMU_CPU ($BOARD cpuinfo, MIDR_EL1 $MIDR; python3.11 from Debian bookworm arm64)"
unshare -m --propagation private env WORK="$WORK" MIDR="$MIDR" PYTHONPATH="$WORK/py:$REPO:$SITE" \
    HOME="$WORK" PYTHONDONTWRITEBYTECODE=1 HWLOC_SYNTHETIC="pack:1 core:2 pu:1" sh -ec '
  mount --bind "$WORK/cpuinfo" /proc/cpuinfo
  mount -t tmpfs tmpfs /sys/devices/system/cpu
  for f in possible present online; do echo 0-1 >/sys/devices/system/cpu/$f; done
  for cpu in 0 1; do
    mkdir -p /sys/devices/system/cpu/cpu$cpu/regs/identification
    echo 1 >/sys/devices/system/cpu/cpu$cpu/online
    echo "$MIDR" >/sys/devices/system/cpu/cpu$cpu/regs/identification/midr_el1
  done
  cd "$WORK"
  "$WORK/bin/python3" -c "import platform, sys, numpy, onnxruntime, openvino, ai_edge_litert
from importlib.metadata import version
print(\"-- the emulated interpreter:\", platform.machine(), \"python\", sys.version.split()[0],
      \"numpy\", numpy.__version__, \"onnxruntime\", onnxruntime.__version__,
      \"openvino\", openvino.__version__, \"ai-edge-litert\", version(\"ai-edge-litert\"),
      \"torch importable:\", __import__(\"importlib.util\").util.find_spec(\"torch\") is not None)"
  echo "-- edgekit bench $*" | sed "s|$WORK/||g"
  start=$(date +%s)
  rc=0
  "$WORK/bin/python3" -m edgekit.cli bench "$@" >"$WORK/bench.log" 2>&1 || rc=$?
  grep -v "^[[:space:]]*$" "$WORK/bench.log" || true
  echo "-- edgekit bench exited with $rc after $(( $(date +%s) - start )) s under emulation"
' sh "${MODELS[@]}" --data models/digits_test.npz --threads 2 --min-time 0.2 --max-time 1 -o bench

REPORT=$WORK/bench/report.json
[ -f "$REPORT" ] || { echo "no report was written" >&2; exit 1; }
say "each variant's row in the aarch64 report: runtime, threads read back from the runtime, ran or not"
"$PYTHON" - "$REPORT" <<'EOF'
import json, sys

report = json.load(open(sys.argv[1]))
d = report["device"]
print(f"device: {d.get('cpu')} ({d.get('arch')}), {d.get('cores')} cores, features {d.get('features')}")
settings = report["settings"].get("runtimes") or {}
print(f"{'variant':<16} {'runtime':<12} {'version':<9} {'threads':>7}  result")
for v in report["variants"]:
    s = settings.get(v["name"]) or {}
    if v["error"]:
        result = f"FAILED: {v['error']}"
    else:
        result = f"ran {v['latency_ms']['n']} timed runs (p50 {v['latency_ms']['p50']:.3g} ms, emulated)"
    keep = ("INFERENCE_PRECISION_HINT", "runtime_precisions", "delegated", "quantized_io")
    extra = {k: s[k] for k in keep if k in s}
    version = str(s.get("version")).split()[-1].split("-")[0]  # "2026.4.1-22982-…" -> "2026.4.1"
    print(f"{v['name']:<16} {v['runtime']:<12} {version:<9} {str(s.get('threads')):>7}  {result}"
          + (f" {json.dumps(extra)}" if extra else ""))
ran = [v["name"] for v in report["variants"] if not v["error"]]
print(f"{len(ran)} of {len(report['variants'])} variants ran: {', '.join(ran)}")
EOF
say "TIMINGS UNDER EMULATION MEAN NOTHING: every latency above was measured under QEMU on an x86 host and says nothing about any ARM device."
