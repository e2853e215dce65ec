"""Do runs of the same multi-variant benchmark agree? (issue 15)

Builds a small transformer encoder (nn.TransformerEncoder: 4 layers, d_model 256, 4 heads, FFN 1024;
input 1x64x256, random weights) and six ONNX variants of it the way `edgekit optimize` makes them:
fp32 (the export), simplified (onnxsim), int8-dynamic and int8-dynamic-pc (per-tensor and
per-channel weights, of the simplified model), int8-static (QDQ, calibrated, after
quant_pre_process) and ort-extended (an offline ORT_ENABLE_EXTENDED copy). Then it runs
edgekit.benchmark.measure on all six, three times in a row, and prints every variant's speed relative
to fp32 from each run. It checks:

- every ratio lies within ±5% of its median across the runs;
- each run's fp32 p50 lies within every other run's reported 95% interval of the median, or one of
  the two runs said that the machine's speed shifted during it (its stability record).

    python tools/bench_agreement.py [--runs 3] [--min-time 4 --max-time 8] [--threads N]
                                    [--ort-spinning in-run|always|off]
    python tools/bench_agreement.py --spinning [--repeats 3]

`--spinning` measures instead how onnxruntime's thread spinning changes the numbers of six
long-lived workers: the same six variants in interleaved runs with spinning always on (ORT's
default), spinning only inside run() (`session.force_spinning_stop`) and no spinning at all, each
against a model timed alone with ORT's defaults (the truth: one session in a tight loop).
Exit code 1 on FAIL. Needs torch, onnxsim (the `dev` extra). At the defaults it takes ~3 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgekit import stats
from edgekit.benchmark import BenchOptions, device, measure, runner

SHAPE = (1, 64, 256)  # batch, sequence, d_model
RATIO_TOL = 0.05


def build_variants(work: Path) -> tuple[dict[str, Path], dict[str, np.ndarray]]:
    """The six variants, fp32 first (the baseline), and the feeds they are timed on."""
    import torch
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from torch import nn

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False).eval()
    with torch.no_grad():  # the layers are deep copies of one: give each its own weights, or
        for p in model.parameters():  # onnxsim folds the four copies into one
            p.add_(0.02 * torch.randn_like(p))
    x = torch.randn(*SHAPE)
    paths = {name: work / f"{name}.onnx" for name in VARIANTS}
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(
            model, (x,), str(paths["fp32"]), input_names=["x"], output_names=["y"],
            dynamo=True, external_data=False,
        )  # fmt: skip
    import onnxsim

    with contextlib.redirect_stdout(io.StringIO()):
        simplified, ok = onnxsim.simplify(onnx.load(str(paths["fp32"])))
    assert ok, "onnxsim could not check the simplified model"
    onnx.save(simplified, str(paths["simplified"]))

    logging.disable(logging.WARNING)  # quantization's advice to pre-process, printed per call
    for name, per_channel in (("int8-dynamic", False), ("int8-dynamic-pc", True)):
        quantize_dynamic(
            paths["simplified"], paths[name], weight_type=QuantType.QInt8, per_channel=per_channel
        )
    pre = work / "pre.onnx"
    quant_pre_process(str(paths["simplified"]), str(pre))
    rng = np.random.default_rng(1)

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": rng.standard_normal(SHAPE, np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(
        pre, paths["int8-static"], Calibration(), quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
    )  # fmt: skip
    logging.disable(logging.NOTSET)

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(paths["ort-extended"])
    ort.InferenceSession(str(paths["simplified"]), opts, providers=["CPUExecutionProvider"])
    feeds = {"x": x.numpy()}
    for path in paths.values():  # every variant must run on the feeds before timing
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    return paths, feeds


VARIANTS = ("fp32", "simplified", "int8-dynamic", "int8-dynamic-pc", "int8-static", "ort-extended")


def agreement(args, models, feeds) -> int:
    spin, stop = SPIN_MODES[SPIN_CHOICES[args.ort_spinning]]
    options = BenchOptions(
        threads=[int(args.threads)] if args.threads else None,
        min_time=args.min_time,
        max_time=args.max_time,
        spinning=spin,
        stop_spinning=stop,
    )
    print(f"ORT spinning: {SPIN_CHOICES[args.ort_spinning]}", flush=True)
    results = []
    for i in range(args.runs):
        started = time.perf_counter()
        results.append(measure(models, feeds, options))
        shift = results[-1].device.get("stability") or {}
        print(
            f"run {i + 1}: {time.perf_counter() - started:.0f} s; "
            f"machine shift: {_shift_text(shift)}",
            flush=True,
        )
        for w in results[-1].warnings:
            print(f"  warning: {w}")

    names = list(models)
    print()
    print(f"{'speed vs fp32':18}" + "".join(f"{'run ' + str(i + 1):>16}" for i in range(args.runs))
          + f"{'median':>9}  within ±{100 * RATIO_TOL:.0f}%")  # fmt: skip
    ok = True
    for name in names[1:]:
        rel = [r.variants[name].relative for r in results]
        if None in rel:  # the variant (or fp32) failed in some run: no ratio to check
            errors = {r.variants[name].error or r.variants[names[0]].error for r in results}
            print(f"{name:18}failed: {'; '.join(e for e in errors if e)}")
            ok = False
            continue
        ratios = [x["speedup"] for x in rel]
        mid = float(np.median(ratios))
        inside = all(abs(r / mid - 1) <= RATIO_TOL for r in ratios)
        ok &= inside
        cells = "".join(
            f"{x['speedup']:>7.3f} [{x['ci95'][0]:.2f},{x['ci95'][1]:.2f}]" if x["ci95"] else
            f"{x['speedup']:>16.3f}" for x in rel
        )  # fmt: skip
        worst = max(abs(r / mid - 1) for r in ratios)
        print(f"{name:18}{cells}{mid:>9.3f}  {'yes' if inside else 'NO'} (max {100 * worst:.1f}%)")
    print()
    lat = [r.variants[names[0]].latency_ms for r in results]
    if any(x is None or x["median_ci95"] is None for x in lat):
        print("FAIL: fp32 has no median or no interval in some run")
        return 1
    shifted = [bool((r.device.get("stability") or {}).get("shifted")) for r in results]
    for i, latency in enumerate(lat):
        lo, hi = latency["median_ci95"]
        print(
            f"run {i + 1}: fp32 p50 {latency['p50']:.3f} ms, 95% CI [{lo:.3f}, {hi:.3f}] "
            f"(±{100 * stats.relative_half_width((lo, hi), latency['p50']):.1f}%)"
            f"{'; the run reported a machine shift' if shifted[i] else ''}"
        )
    p50_ok = True
    for i, a in enumerate(lat):
        for j, b in enumerate(lat):
            if i == j:
                continue
            lo, hi = b["median_ci95"]
            if lo <= a["p50"] <= hi:
                continue
            excused = shifted[i] or shifted[j]
            p50_ok &= excused
            print(
                f"  run {i + 1}'s fp32 p50 is {a['p50'] / b['p50']:.3f}x run {j + 1}'s, outside "
                f"its interval: {'explained, a machine shift was reported' if excused else 'NOT explained'}"
            )  # fmt: skip
    loaded = sum(any("load average" in w for w in r.warnings) for r in results)
    if loaded:
        print(f"\nnote: {loaded} of {args.runs} runs warned that other work competed for the CPU "
              "(load average above the CPUs): agreement can only be expected on a quiet machine")  # fmt: skip
    print()
    print(f"{'PASS' if ok else 'FAIL'}: every ratio to fp32 within ±{100 * RATIO_TOL:.0f}% of its "
          f"median over {args.runs} runs")  # fmt: skip
    print(f"{'PASS' if p50_ok else 'FAIL'}: each run's fp32 p50 inside the others' 95% intervals, "
          "or a machine shift was reported")  # fmt: skip
    return 0 if ok and p50_ok else 1


def _shift_text(shift: dict) -> str:
    if not shift or not shift.get("assessed"):
        return "not assessed" + (f" ({shift['reason']})" if shift.get("reason") else "")
    alike = f"{shift['jobs_alike']} of {len(shift['jobs'])} models alike"
    step = f"{shift['shift']:.2f}x from cycle {shift['at_cycle'] + 1} of {shift['cycles']}"
    if shift["shifted"]:
        return f"YES, {step} ({alike}, p={shift['p_value']:.3f})"
    return f"none (largest step {step}, {alike}, p={shift['p_value']:.3f})"


SPIN_MODES = {  # label → (allow_spinning, force_spinning_stop)
    "spin always (ORT default)": (True, False),
    "spin in run() only": (True, True),
    "no spinning": (False, False),
}
DEFAULT_MODE = "spin always (ORT default)"
SPIN_CHOICES = {"in-run": "spin in run() only", "always": DEFAULT_MODE, "off": "no spinning"}


def spinning(args, models, feeds) -> int:
    """For each spinning mode, interleaved mode by mode and repeated: fp32 timed alone (one
    worker) and the six variants timed together (six workers taking turns). ORT's default alone is
    the truth for a model in a tight loop; six workers should measure what one alone does."""
    threads = int(args.threads or device.physical_cores())
    alone = {label: [] for label in SPIN_MODES}
    six = {label: {name: [] for name in models} for label in SPIN_MODES}

    def p50_of(jobs, spin, stop, npz):
        runner.run(jobs, npz, arena=True, min_time=args.min_time, max_time=args.min_time,
                   target_ci=0.01, profile=False, spinning=spin, stop_spinning=stop)  # fmt: skip
        return {j.name: stats.summary([s for r in j.rounds for s in r])["p50"] for j in jobs}

    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "feeds.npz"
        np.savez(npz, **feeds)
        for rep in range(args.repeats):
            for label, (spin, stop) in SPIN_MODES.items():
                solo = [runner.Job("fp32", models["fp32"], threads)]
                alone[label].append(p50_of(solo, spin, stop, npz)["fp32"])
                jobs = [runner.Job(n, p, threads) for n, p in models.items()]
                for name, value in p50_of(jobs, spin, stop, npz).items():
                    six[label][name].append(value)
            print(f"repeat {rep + 1} of {args.repeats} done", flush=True)

    truth = float(np.median(alone[DEFAULT_MODE]))
    width = 17
    print(f"\np50 ms, median of {args.repeats} repeats (each value: {args.min_time:g} s of rounds)")
    print(f"{'':28}{'fp32 alone':>{width}}" + "".join(f"{n:>{width}}" for n in models))
    for label in SPIN_MODES:
        print(f"{label:28}{np.median(alone[label]):>{width}.3f}"
              + "".join(f"{np.median(six[label][n]):>{width}.3f}" for n in models))  # fmt: skip
    print(f"\nsix workers' fp32 p50 / fp32 alone with ORT's default ({truth:.3f} ms):")
    for label in SPIN_MODES:
        ratio = np.median(six[label]["fp32"]) / truth
        own = np.median(six[label]["fp32"]) / np.median(alone[label])
        print(f"  {label:28}{ratio:>7.3f}   (/ fp32 alone in the same mode: {own:.3f})")
    print("\nspeed vs fp32 within the six workers (fp32 p50 / variant p50):")
    for label in SPIN_MODES:
        cells = "".join(
            f"{np.median(six[label]['fp32']) / np.median(six[label][n]):>{width}.3f}"
            for n in list(models)[1:]
        )
        print(f"  {label:26}{cells}")
    print(" " * 28 + "".join(f"{n:>{width}}" for n in list(models)[1:]))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="benchmark runs in a row")
    parser.add_argument("--min-time", type=float, default=4.0, help="seconds per variant, at least")
    parser.add_argument("--max-time", type=float, default=8.0, help="seconds per variant, at most")
    parser.add_argument("--spinning", action="store_true", help="compare ORT spinning modes")
    parser.add_argument(
        "--ort-spinning",
        choices=list(SPIN_CHOICES),
        default="in-run",
        help="threads spin inside run() only (edgekit's default), always, or never",
    )
    parser.add_argument("--repeats", type=int, default=3, help="with --spinning: repeats")
    parser.add_argument("--threads", help="intra-op threads (default: the physical cores)")
    parser.add_argument("--keep", type=Path, help="keep the models in this folder")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-agreement-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    models, feeds = build_variants(work)
    sizes = ", ".join(f"{n} {p.stat().st_size / 1e6:.1f} MB" for n, p in models.items())
    print(f"built 6 variants in {time.perf_counter() - started:.0f} s: {sizes}", flush=True)
    code = spinning(args, models, feeds) if args.spinning else agreement(args, models, feeds)
    print(f"total {time.perf_counter() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
