"""Where `edgekit optimize` spends its wall time on a MiniLM-shaped sentence encoder, step by step.

    python tools/optimize_timing.py make DIR               # the model and its data, once
    python tools/optimize_timing.py run CODE DIR OUT.json [KEEP] [--runtime R]  # one timed optimize(), edgekit from CODE
    python tools/optimize_timing.py table BEFORE.json... -- AFTER.json...  # the per-step table

`make` writes DIR/sentenceencoder.pt (tools/reference_models.py SentenceEncoder(), 6 layers, hidden
384, outlier channels, torch.manual_seed(0), a state_dict) and DIR/sentences.npz (sentence_batch(32)).
`run` imports edgekit from CODE (a checkout: compare two side by side, back to back) and calls
edgekit.api.optimize with the drift budget cosine>=0.99 and the default benchmark settings, timing each
step (wall clock, the `step` callback: works on checkouts older than the report's `timings`); it prints
the load average before and after, the steps, and each variant's median with the half width of its 95%
interval, and writes all of it to OUT.json (optimize's output folder goes to KEEP if given, else is
deleted). `table` prints the median of each step over the runs given.
The machine is shared: run before and after back to back, several times, and compare medians.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent


def make(folder: Path) -> None:
    import numpy as np
    import torch

    sys.path.insert(0, str(TOOLS))
    from reference_models import SentenceEncoder, sentence_batch

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(SentenceEncoder().eval().state_dict(), folder / "sentenceencoder.pt")
    np.savez(folder / "sentences.npz", **sentence_batch(32))


def run(
    code: Path, folder: Path, out_json: Path, keep: Path | None = None, runtime: str | None = None
) -> None:
    sys.path.insert(0, str(code.resolve()))
    import edgekit
    from edgekit.api import OptimizeOptions, optimize
    from edgekit.recommend import parse_budget

    assert edgekit.__file__.startswith(str(code.resolve())), edgekit.__file__
    steps: list[tuple[str, float]] = []
    updates: list[tuple[float, str]] = []  # the steps' progress lines, seconds into their step

    @contextlib.contextmanager
    def step(message):
        t0 = time.perf_counter()
        last = [None]

        def update(text):  # a progress line when its kind changes ("loading x", "timing ...")
            kind = " ".join(str(text).split()[:2])
            if kind != last[0]:
                updates.append((round(time.perf_counter() - t0, 2), str(text)))
                last[0] = kind

        try:
            yield update
        finally:
            steps.append((message, time.perf_counter() - t0))

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="optimize-timing-") as tmp:
        t0 = time.perf_counter()
        report = optimize(
            folder / "sentenceencoder.pt",
            OptimizeOptions(
                arch=f"{TOOLS / 'reference_models.py'}:SentenceEncoder",
                data=folder / "sentences.npz",
                budget=parse_budget("cosine>=0.99"),
                out_dir=keep or Path(tmp) / "out",
                # checkouts from before the runtime layer have no such option
                **({"runtimes": runtime} if runtime else {}),
            ),
            step,
        )
        total = time.perf_counter() - t0
    report = report.to_json() if hasattr(report, "to_json") else report
    rows = []
    for v in report["variants"]:
        latency = v.get("latency_ms") or {}
        ci = latency.get("median_ci95")
        rows.append(
            {
                "name": v["name"],
                "p50": latency.get("p50"),
                "half_width": (ci[1] - ci[0]) / 2 / latency["p50"] if ci else None,
                "rounds": latency.get("rounds"),
                "speedup": (v.get("relative") or {}).get("speedup"),
                "cosine": (v.get("accuracy") or {}).get("cosine_min"),
                "notes": [n for n in v.get("notes", []) if "timing" in n],
            }
        )
    result = {
        "code": str(code),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "steps": steps,
        "updates": updates,
        "total_s": total,
        "recommendation": report["recommendation"],
        "variants": rows,
    }
    Path(out_json).write_text(json.dumps(result, indent=1))
    print(f"load {_load(load_before)} → {_load(result['load_after'])}")
    for message, seconds in steps:
        print(f"{seconds:7.1f} s  {_short(message)}")
    print(f"{total:7.1f} s  TOTAL (wall, optimize() call)")
    for seconds, text in updates:
        print(f"    at {seconds:6.1f} s of its step: {text}")
    _print_variants(result)


def _load(values) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def _short(message: str) -> str:
    """'benchmarking fp32, simplified, ...' → 'benchmarking (every variant)'."""
    return "benchmarking (every variant)" if message.startswith("benchmarking") else message


def _print_variants(result: dict) -> None:
    rec = result["recommendation"]
    print(f"  recommended: {rec['variant']} - {rec['reason']}")
    for v in result["variants"]:
        width = f"±{100 * v['half_width']:.1f}%" if v["half_width"] is not None else "n/a"
        p50 = f"{v['p50']:8.3f}" if v["p50"] is not None else "     n/a"
        speedup = f"{v['speedup']:.3f}" if v["speedup"] else "None"
        cosine = f"{v['cosine']:.4f}" if v["cosine"] is not None else "n/a"
        print(
            f"    {v['name']:24} p50 {p50} ms {width:>7}  rounds {v['rounds']}  "
            f"speedup {speedup}  cos {cosine}"
        )


def table(before: list[Path], after: list[Path]) -> None:
    runs = {"before": [json.loads(p.read_text()) for p in before]}
    runs["after"] = [json.loads(p.read_text()) for p in after]
    names: list[str] = []
    for result in runs["before"] + runs["after"]:
        for message, _ in result["steps"]:
            if _short(message) not in names:
                names.append(_short(message))

    def median(side: str, name: str) -> str:
        values = [
            sum(s for m, s in r["steps"] if _short(m) == name)
            for r in runs[side]
            if any(_short(m) == name for m, _ in r["steps"])
        ]
        return f"{statistics.median(values):7.1f}s" if values else "       —"

    n = {side: len(rs) for side, rs in runs.items()}
    print(f"median of {n['before']} run(s) before, {n['after']} after")
    print(f"{'step':54} {'before':>8} {'after':>8}")
    for name in names:
        print(f"{name:54} {median('before', name)} {median('after', name)}")
    totals = {s: statistics.median(r["total_s"] for r in rs) for s, rs in runs.items()}
    print(f"{'TOTAL (wall, optimize() call)':54} {totals['before']:7.1f}s {totals['after']:7.1f}s")
    for side, results in runs.items():
        for i, result in enumerate(results, 1):
            print(
                f"{side} {i}: total {result['total_s']:.1f} s, load "
                f"{_load(result['load_before'])} → {_load(result['load_after'])}"
            )
            _print_variants(result)


def main(argv: list[str]) -> None:
    runtime = None
    if "--runtime" in argv[:-1]:  # --runtime onnxruntime: a core install's default set
        at = argv.index("--runtime")
        runtime, argv = argv[at + 1], argv[:at] + argv[at + 2 :]
    if argv[:1] == ["make"] and len(argv) == 2:
        make(Path(argv[1]))
    elif argv[:1] == ["run"] and len(argv) in (4, 5):
        run(*(Path(a) for a in argv[1:]), runtime=runtime)
    elif argv[:1] == ["table"] and "--" in argv:
        split = argv.index("--")
        table([Path(p) for p in argv[1:split]], [Path(p) for p in argv[split + 1 :]])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
