#!/usr/bin/env bash
# Run `edgekit optimize` itself (torch export, onnxsim, int8 quantization, structured pruning, the
# benchmark workers, the report) on aarch64 under QEMU user-mode emulation, as a user running it on
# a Raspberry Pi does, and print the report's device section and int8 settings. Then run
# `edgekit bench` on the shipped tiny language model's int4 variant (made on this host) there,
# torch-free: the core install and onnxruntime-genai's aarch64 wheel only, as on a device.
# `--lm-only` runs only that second part (no torch wheels, minutes rather than half an hour).
#
# TIMINGS UNDER EMULATION MEAN NOTHING: QEMU translates every aarch64 instruction on this x86 CPU.
# This checks that the pipeline runs on aarch64 and which int8 settings it picks there.
#
# The CPU it describes: /proc/cpuinfo is a Raspberry Pi 5's (tests/fixtures/boards/rpi5/cpuinfo, cut to
# the 2 CPUs listed in /sys), bound over the host's in a private mount namespace: onnxruntime's and
# torch's CPU-info code crash on the host's x86 cpuinfo. QEMU itself emulates its own CPU model.
#
# torch: PyPI's aarch64 wheels of torch 2.11 and later (2.13.0 included) are CUDA 13 builds that
# require several GB of nvidia-* wheels; 2.10.0 is the newest CPU-only aarch64 wheel on PyPI. On a
# Pi, install the CPU build instead: pip install torch --index-url https://download.pytorch.org/whl/cpu
# Here (no access to download.pytorch.org) TORCH_VERSION defaults to 2.10.0.
#
# Needs root (unshare -m), qemu-user-static, debootstrap, network access to the Debian mirror and
# PyPI the first time (~700 MB of wheels), and PYTHON (default python3) with pip. Cached in
# $EDGEKIT_ARM_CACHE (default ${XDG_CACHE_HOME:-~/.cache}/edgekit/arm64). Takes 20-40 minutes (--lm-only: a few).
# Not part of CI. Run it niced on a shared machine: nice -n 19 tools/arm_optimize_check.sh
set -euo pipefail
LM_ONLY=${1:-}

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.10.0}
CACHE=${EDGEKIT_ARM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgekit/arm64}
ROOT=$CACHE/root
WHEELS=$CACHE/optimize-wheels
SITE=$CACHE/optimize-site
LM_SITE=$CACHE/lm-site  # the core install and onnxruntime-genai: no torch
QEMU=$(command -v qemu-aarch64-static || true)

say() { printf '== %s\n' "$*"; }
[ -n "$QEMU" ] || { echo "install qemu-user-static (apt-get install qemu-user-static)" >&2; exit 2; }

# 1. The arm64 root with python3.11 (built by the worker check's first step).
EDGEKIT_ARM_CACHE=$CACHE PYTHON=$PYTHON bash "$REPO/tools/arm_worker_check.sh" --root-only

# 2. aarch64 wheels of everything `edgekit optimize` imports. pip evaluates dependency markers for
#    the machine it runs on (x86_64), so torch would pull CUDA wheels: torch and torch-pruning come
#    without their dependencies, and torch's own pure-Python dependencies are listed.
if [ "$LM_ONLY" != --lm-only ] && [ ! -f "$SITE/.complete-$TORCH_VERSION" ]; then
  say "downloading aarch64 wheels (first run only)"
  rm -rf "$WHEELS" "$SITE"
  get() { "$PYTHON" -m pip download -q --only-binary=:all: --platform manylinux_2_28_aarch64 \
            --python-version 3.11 -d "$WHEELS" "$@"; }
  get --no-deps "torch==$TORCH_VERSION" torch-pruning
  get onnxruntime onnx onnxsim onnxscript numpy psutil rich sympy \
      filelock typing-extensions networkx jinja2 fsspec
  mkdir -p "$SITE"
  for whl in "$WHEELS"/*.whl; do
    "$PYTHON" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
      "$whl" "$SITE"
  done
  touch "$SITE/.complete-$TORCH_VERSION"
fi
[ "$LM_ONLY" = --lm-only ] || say "aarch64 wheels: $(cd "$WHEELS" && ls | sed -n 's/^\(torch\|onnxruntime\|onnxsim\|onnx\|onnxscript\|torch_pruning\|numpy\)-\([^-]*\)-.*/\1 \2/p' | tr '\n' ',' | sed 's/,$//; s/,/, /g')"

# 3. The shipped model in a scratch folder (the report is written beside it), the CPU description,
#    and a `python3` the benchmark's worker processes can be started with: without binfmt_misc the
#    kernel cannot exec an aarch64 binary, so sys.executable points at a script that runs QEMU.
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/models" "$WORK/bin" "$WORK/py"
cp "$REPO"/models/digits_cnn.pt "$REPO"/models/digits_cnn.py "$REPO"/models/digits_test.npz "$WORK/models/"
awk -v RS= -v ORS='\n\n' '/^processor\t: [01]\n/ || !/^processor/' \
  "$REPO/tests/fixtures/boards/rpi5/cpuinfo" >"$WORK/cpuinfo"
cat >"$WORK/bin/python3" <<EOF
#!/bin/sh
exec "$QEMU" -L "$ROOT" "$ROOT/usr/bin/python3.11" "\$@"
EOF
chmod +x "$WORK/bin/python3"
cat >"$WORK/py/sitecustomize.py" <<EOF
import sys
sys.executable = "$WORK/bin/python3"  # worker processes start through QEMU
EOF
# The emulated interpreter's versions: NAME prints module NAME's __version__ (`_` shown as `-`),
# importable:NAME only whether it can be imported.
cat >"$WORK/versions.py" <<'EOF'
import importlib, importlib.util, platform, sys

words = ["-- the emulated interpreter:", platform.machine(), "python", sys.version.split()[0]]
for name in sys.argv[1:]:
    if name.startswith("importable:"):
        name = name.removeprefix("importable:")
        words += [name, "importable:", str(importlib.util.find_spec(name) is not None)]
    else:
        words += [name.replace("_", "-"), importlib.import_module(name).__version__]
print(*words)
EOF

# Run `edgekit ARGS...` through QEMU in a private mount namespace where /proc/cpuinfo and
# /sys/devices/system/cpu describe the board (2 CPUs), with SITE's packages on the path. Prints the
# emulated interpreter's versions of MODULES (see versions.py above), the command, its output (kept
# in $WORK/<command>.log) and its exit status: a failing edgekit does not stop the script.
emulated() {  # SITE MODULES... -- ARGS...
  local site=$1 modules=()
  shift
  while [ "$1" != -- ]; do modules+=("$1"); shift; done
  shift
  unshare -m --propagation private env WORK="$WORK" PYTHONPATH="$WORK/py:$REPO:$site" \
      HOME="$WORK" PYTHONDONTWRITEBYTECODE=1 MODULES="${modules[*]}" sh -ec '
    mount --bind "$WORK/cpuinfo" /proc/cpuinfo
    mount -t tmpfs tmpfs /sys/devices/system/cpu
    for f in possible present online; do echo 0-1 >/sys/devices/system/cpu/$f; done
    cd "$WORK"
    "$WORK/bin/python3" "$WORK/versions.py" $MODULES
    echo "-- edgekit $*"
    start=$(date +%s)
    rc=0
    "$WORK/bin/python3" -m edgekit.cli "$@" >"$WORK/$1.log" 2>&1 || rc=$?
    grep -v "^[[:space:]]*$" "$WORK/$1.log" || true
    echo "-- edgekit $1 exited with $rc after $(( $(date +%s) - start )) s under emulation"
  ' sh "$@"
}

# Print a report.json's device KEYS and its variants: for edgekit optimize's report (the one with
# `made_for`) also the CPU the int8 variants were made for, their passes' settings, notes and
# warnings; for an LM folder's bench report each variant's tokens/s, TTFT, peak RSS and size.
print_report() {  # FILE KEYS...
  [ -f "$1" ] || { echo "no report was written: $1" >&2; exit 1; }
  "$PYTHON" - "$@" <<'EOF'
import json, sys

report = json.load(open(sys.argv[1]))
model = "made_for" in report  # edgekit optimize's report, not an LM folder's bench report
print("device:")
for key in sys.argv[2:]:
    print(f"  {key}: {json.dumps(report['device'].get(key))}")
if model:
    print("made_for:", json.dumps(report["made_for"]))
print("variants:")
for v in report["variants"]:
    if v["error"]:
        print(f"  {v['name']}: FAILED: {v['error']}")
    elif model:
        print(f"  {v['name']}: {(v['latency_ms'] or {}).get('p50')} ms p50")
    else:
        speeds = ", ".join(f"{k} {s['median']:.1f} tok/s" for k, s in v["tokens_per_s"].items())
        rss = v["memory"]["peak_rss_bytes"]
        print(f"  {v['name']}: {speeds}, TTFT {v['ttft_ms']['median']:.1f} ms, peak RSS "
              f"{rss / 1e6:.1f} MB, size {v['size_bytes'] / 1e6:.2f} MB, threads {v['threads']}")
    for p in v["passes"] if model else ():
        s = p["settings"]
        if p["name"].startswith("quantize"):
            keep = ("method", "format", "activation_type", "weight_type", "reduce_range",
                    "per_channel", "int8_kernel", "cpu_arch", "cpu_features", "cpu")
            print(f"    {p['name']}: " + json.dumps({k: s[k] for k in keep if k in s}))
        elif p["name"] in ("simplify", "prune-structured"):
            print(f"    {p['name']}: {json.dumps(s)}")
if model:
    print("notes:")
    for n in report["notes"]:
        if n.startswith(("int8 variants made for", "simplif", "onnxsim")) or "onnxsim" in n:
            print("  " + n)
    for v in report["variants"]:
        for n in v["notes"]:
            if "onnxsim" in n:
                print(f"  {v['name']}: {n}")
    print("warnings:")
    for w in report["warnings"]:
        print("  " + w)
EOF
}

if [ "$LM_ONLY" != --lm-only ]; then
say "running edgekit optimize on aarch64 under $QEMU (python3.11 from Debian bookworm arm64)"
emulated "$SITE" torch onnxruntime onnx onnxsim -- optimize models/digits_cnn.pt \
  --arch models/digits_cnn.py:DigitsCNN --data models/digits_test.npz --prune structured:0.5 \
  --min-time 0.2 --max-time 0.5
say "the report's device section, the CPU the int8 variants were made for, and the int8 settings"
print_report "$WORK/models/digits_cnn.edgekit/report.json" cpu arch board cpu_cores cores features \
  governor temperature_c throttled clocks onnxruntime python os
say "edgekit optimize ran end to end on aarch64. TIMINGS UNDER EMULATION MEAN NOTHING: every latency above was measured under QEMU on an x86 host and says nothing about any ARM device."
fi
# 4. The tiny LM's int4 variant, made on this host by edgekit's recipe (the ONNX files are the same
#    on any CPU), and aarch64 wheels of the core install plus onnxruntime-genai, the version this
#    host's builder made the folder with (its aarch64 wheel is on PyPI), without torch.
GENAI_VERSION=$("$PYTHON" -c 'import onnxruntime_genai; print(onnxruntime_genai.__version__)')
if [ ! -f "$LM_SITE/.complete-$GENAI_VERSION" ]; then
  say "downloading aarch64 wheels for the language-model bench (first run only)"
  rm -rf "$CACHE/lm-wheels" "$LM_SITE"
  "$PYTHON" -m pip download -q --only-binary=:all: --platform manylinux_2_28_aarch64 \
    --python-version 3.11 -d "$CACHE/lm-wheels" "onnxruntime-genai==$GENAI_VERSION" \
    onnxruntime onnx numpy psutil rich
  mkdir -p "$LM_SITE"
  for whl in "$CACHE"/lm-wheels/*.whl; do
    "$PYTHON" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
      "$whl" "$LM_SITE"
  done
  touch "$LM_SITE/.complete-$GENAI_VERSION"
fi
say "making the tiny LM's int4 variant on this host (edgekit.lm.variants, onnxruntime-genai $GENAI_VERSION's builder)"
"$PYTHON" - "$REPO/models/tiny-lm" "$WORK/tiny-lm-int4" >"$WORK/build.log" 2>&1 <<'EOF' \
  || { tail -20 "$WORK/build.log" >&2; echo "building the int4 variant failed" >&2; exit 1; }
import sys
from edgekit.lm.folder import read_lm_folder
from edgekit.lm.variants import build_variant

build_variant(read_lm_folder(sys.argv[1]), sys.argv[2], "int4", threads=2)
EOF

say "running edgekit bench on the tiny LM's int4 folder on aarch64 under $QEMU, torch-free"
emulated "$LM_SITE" onnxruntime onnxruntime_genai importable:torch -- \
  bench tiny-lm-int4 --threads 2 --min-time 0.2 --max-time 0.5 -o lm-bench
say "the language-model report's device section and rows"
print_report "$WORK/lm-bench/report.json" cpu arch board cores features onnxruntime \
  onnxruntime_genai python
say "edgekit bench ran on an LM folder on aarch64, torch-free. TIMINGS UNDER EMULATION MEAN NOTHING."
