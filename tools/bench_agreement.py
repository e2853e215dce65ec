"""Do two `edgekit bench` runs of the same model agree? Runs `edgekit bench` twice on one model and
checks that each median lies inside the other's 95% interval, or that a report warned.

    python tools/bench_agreement.py [MODEL.onnx] [--min-time 2 --max-time 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_fidelity import build_cnn  # noqa: E402


def bench(model: Path, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "edgekit.cli", "bench", str(model), "-o", str(out), "-q", *extra]
    subprocess.run(cmd, check=True)
    return json.loads((out / "report.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path)
    parser.add_argument("--min-time", default="2")
    parser.add_argument("--max-time", default="10")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or Path(tmp) / "cnn.onnx"
        if args.model is None:
            build_cnn(model)
        extra = ["--min-time", args.min_time, "--max-time", args.max_time]
        runs = [bench(model, Path(tmp) / f"run{i}", extra) for i in (1, 2)]
    lat = [r["variants"][0]["latency_ms"] for r in runs]
    for i, (r, latency) in enumerate(zip(runs, lat, strict=True), 1):
        lo, hi = latency["median_ci95"]
        print(f"run {i}: median {latency['p50']:.4f} ms, 95% CI [{lo:.4f}, {hi:.4f}], "
              f"{len(r['warnings'])} warning(s)")  # fmt: skip
        for w in r["warnings"]:
            print(f"  warning: {w}")
    inside = all(
        lat[1 - i]["median_ci95"][0] <= lat[i]["p50"] <= lat[1 - i]["median_ci95"][1]
        for i in (0, 1)
    )
    warned = any(r["warnings"] for r in runs)
    print("agree: each median inside the other's interval" if inside else "medians disagree")
    ok = inside or warned
    print("PASS" if ok else "FAIL: medians disagree and no report warned")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
