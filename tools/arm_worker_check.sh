#!/usr/bin/env bash
# Run edgekit's benchmark worker (edgekit/benchmark/worker.py) on aarch64 under QEMU user-mode emulation,
# to show that the device side runs on a Raspberry Pi's architecture (64-bit ARM).
#
# TIMINGS UNDER EMULATION MEAN NOTHING: every aarch64 instruction is translated by QEMU on this x86
# CPU. This checks that the worker, onnxruntime and numpy run on aarch64; it measures no device.
#
# Needs root (debootstrap, mount namespace), qemu-user-static, debootstrap, and a Python on the
# host with pip and onnx (PYTHON, default python3), and access to the Debian mirror and PyPI the first
# time. The arm64 root and the wheels are cached in $EDGEKIT_ARM_CACHE (default
# ${XDG_CACHE_HOME:-~/.cache}/edgekit/arm64): reruns take seconds plus the emulated run.
# Not part of CI (the first run downloads ~100 MB and takes minutes).
# `--root-only` builds (or finds) the arm64 root and stops: tools/arm_optimize_check.sh uses it.
set -euo pipefail
ROOT_ONLY=${1:-}

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
"$PYTHON" -c "import onnx" 2>/dev/null || {
  echo "$PYTHON cannot import onnx (it builds the test model): set PYTHON to the edgekit venv's python" >&2
  exit 2
}
CACHE=${EDGEKIT_ARM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgekit/arm64}
# The mirror this machine's apt already uses (deb822 or one-line sources), unless DEBIAN_MIRROR says.
MIRROR=${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)}
MIRROR=${MIRROR:-$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null)}
ROOT=$CACHE/root
SITE=$CACHE/site-packages
QEMU=$(command -v qemu-aarch64-static || true)

say() { printf '== %s\n' "$*"; }
[ "$(id -u)" = 0 ] || { echo "run as root (debootstrap and unshare -m need it)" >&2; exit 2; }
[ -n "$QEMU" ] || { echo "install qemu-user-static (apt-get install qemu-user-static)" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "install debootstrap" >&2; exit 2; }
mkdir -p "$CACHE"

# 1. An arm64 root with python3.11. binfmt_misc is not available here, so debootstrap cannot run its
#    second stage (it would execute arm64 binaries); --foreign only downloads and unpacks the base,
#    and dpkg -x unpacks the python debs it downloaded through --include.
if [ ! -x "$ROOT/usr/bin/python3.11" ]; then
  say "building the arm64 root in $ROOT (first run only)"
  rm -rf "$ROOT"
  debootstrap --foreign --arch=arm64 --variant=minbase \
    --include=python3.11-minimal,libpython3.11-minimal,libpython3.11-stdlib \
    bookworm "$ROOT" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
  for deb in "$ROOT"/var/cache/apt/archives/*.deb; do dpkg -x "$deb" "$ROOT"; done
fi
# qemu -L looks up the program interpreter /lib/ld-linux-aarch64.so.1 under ROOT.
if [ ! -e "$ROOT/lib/ld-linux-aarch64.so.1" ]; then
  ln -sf ../usr/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1 "$ROOT/lib/ld-linux-aarch64.so.1"
fi

[ "$ROOT_ONLY" = --root-only ] && { say "arm64 root ready: $ROOT"; exit 0; }

# 2. pip's aarch64 wheels of onnxruntime and numpy (and their dependencies), unzipped onto a path.
if [ ! -d "$SITE/onnxruntime" ]; then
  say "downloading aarch64 wheels (first run only)"
  rm -rf "$CACHE/wheels" "$SITE"
  "$PYTHON" -m pip download -q --only-binary=:all: --platform manylinux_2_28_aarch64 \
    --python-version 3.11 onnxruntime numpy -d "$CACHE/wheels"
  mkdir -p "$SITE"
  for whl in "$CACHE"/wheels/*.whl; do
    "$PYTHON" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
      "$whl" "$SITE"
  done
fi

# 3. A tiny model, its feeds, and the worker's requests (made on the host, x86).
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cp "$REPO/edgekit/benchmark/worker.py" "$REPO/edgekit/benchmark/device.py" "$WORK/"
"$PYTHON" - "$WORK" <<'EOF'
import sys
import numpy as np
from onnx import TensorProto, helper, numpy_helper, save

work = sys.argv[1]
w = numpy_helper.from_array(np.full((8, 3, 3, 3), 0.1, np.float32), "w")
g = numpy_helper.from_array(np.full((8 * 16 * 16, 10), 0.01, np.float32), "g")
nodes = [
    helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
    helper.make_node("Relu", ["c"], ["r"]),
    helper.make_node("Flatten", ["r"], ["f"]),
    helper.make_node("Gemm", ["f", "g"], ["y"]),
]
graph = helper.make_graph(
    nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, g],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
save(model, f"{work}/tiny.onnx")
np.savez(f"{work}/feeds.npz", x=np.ones((1, 3, 16, 16), np.float32))
EOF
cat >"$WORK/requests.jsonl" <<EOF
{"cmd": "load", "model": "$WORK/tiny.onnx", "feeds": "$WORK/feeds.npz", "threads": 1, "warmup_max_s": 2}
{"cmd": "round", "seconds": 0.5}
{"cmd": "memory"}
{"cmd": "quit"}
EOF

# 4. Run it. onnxruntime's CPU-info library crashes reading the host's x86 /proc/cpuinfo, so in a
#    private mount namespace an aarch64-format cpuinfo (two Cortex-A72 cores, as on a Pi 4) is bound
#    over /proc/cpuinfo and /sys/devices/system/cpu gets a tmpfs that lists CPUs 0-1.
for cpu in 0 1; do
  printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$cpu"
  printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n'
  printf 'CPU revision\t: 3\n\n'
done >"$WORK/cpuinfo"

say "running the worker on aarch64 under $QEMU (python3.11 from Debian bookworm arm64)"
unshare -m --propagation private env ROOT="$ROOT" SITE="$SITE" WORK="$WORK" QEMU="$QEMU" sh -ec '
  mount --bind "$WORK/cpuinfo" /proc/cpuinfo
  mount -t tmpfs tmpfs /sys/devices/system/cpu
  echo 0-1 >/sys/devices/system/cpu/possible
  echo 0-1 >/sys/devices/system/cpu/present
  py() { PYTHONPATH="$SITE" "$QEMU" -L "$ROOT" "$ROOT/usr/bin/python3.11" "$@"; }
  echo "-- the emulated interpreter:"
  py -c "import platform, sys, numpy, onnxruntime as ort
print(platform.machine(), \"python\", sys.version.split()[0], \"numpy\", numpy.__version__,
      \"onnxruntime\", ort.__version__, ort.get_available_providers())"
  echo "-- device.collect() as a report would record it (cpu and features come from the cpuinfo bound above):"
  py -c "import json, sys; sys.path.insert(0, sys.argv[1]); import device
d = device.collect(); print(json.dumps({k: d[k] for k in (\"cpu\", \"arch\", \"cores\", \"features\", \"os\")}))" "$WORK"
  echo "-- worker.py, JSON lines in and out (load, one 0.5 s round, memory, quit):"
  py "$WORK/worker.py" <"$WORK/requests.jsonl" | py -c "import json, sys
for line in sys.stdin:
    r = json.loads(line)
    if \"samples_ns\" in r:
        s = sorted(r.pop(\"samples_ns\"))
        r[\"runs\"], r[\"median_ms\"] = len(s), round(s[len(s) // 2] / 1e6, 3)
    print(json.dumps(r))"
'
say "the worker ran on aarch64. Timings above are under QEMU emulation and mean NOTHING about any device."
