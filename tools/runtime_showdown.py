"""Runtime showdown: the same model on onnxruntime, OpenVINO, LiteRT and ExecuTorch (issue 22).

For ResNet-18, MobileNetV2 and a MiniLM-shaped sentence encoder (random weights, built in
tools/reference_models.py): `edgekit optimize` makes the ONNX fp32 and its int8 variants (static
and dynamic, as edgekit makes them); then OpenVINO fp32 / int8 (NNCF) / the CPU's default low
precision (where it has one) from edgekit's fp32.onnx, and LiteRT and ExecuTorch fp32 / int8
(PT2E) from the PyTorch model, all int8 calibrated on the same samples. Every variant is timed
interleaved in one `edgekit.benchmark.measure` run (each in its own worker process, 2 threads,
batch 1) and printed as its time relative to ORT fp32 (lower is faster) with the 95% interval,
and its cosine against PyTorch eager fp32. A runtime that is not installed, or that cannot convert
or run the model, is a failed row with the reason.

"edgekit's pick" is what `edgekit optimize` (every installed runtime, budget cosine>=0.99)
recommends, timed in the same run; the last line of each table is its time over the fastest
other variant within that budget (done when ≤ 1.05 on every model).

    python tools/runtime_showdown.py [--min-time 1] [--max-time 3] [--only resnet] [--out FILE]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from reference_models import MobileNetV2, ResNet18, SentenceEncoder, sentence_batch
from showdown_common import arguments, selected

from edgekit import runtimes, stats
from edgekit.benchmark import BenchOptions, measure

HERE = Path(__file__).resolve()
CALIBRATION = 32
DRIFT_SAMPLES = 8
THREADS = 2
BOUND = 0.99  # the rows' cosine_min within budget, and edgekit's budget:
BUDGET = f"cosine>={BOUND}"


def images(count: int, seed: int) -> dict[str, np.ndarray]:
    """Normalised images: normal(0, 1), as a model trained on standardised inputs sees them."""
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((count, 3, 224, 224)).astype(np.float32)}


def sentences(count: int, seed: int) -> dict[str, np.ndarray]:
    return sentence_batch(count, seed=seed)


MODELS = {  # title: (factory, samples, NNCF transformer scheme)
    "ResNet-18": (ResNet18, images, False),
    "MobileNetV2": (MobileNetV2, images, False),
    "MiniLM-shaped encoder (6 layers, seq 128)": (SentenceEncoder, sentences, True),
}


def main() -> int:
    args, work = arguments(__doc__, "runtime-showdown-", min_time=1.0, max_time=3.0, extra=out_file)
    torch.set_num_threads(THREADS)
    lines = ["runtimes here:"]
    for name, (ok, why) in runtimes.availability().items():
        lines.append(f"  {name:12} {'yes' if ok else 'NO'}: {why}")
    blocks = []
    for title, (factory, samples, transformer) in MODELS.items():
        if not selected(title, args):
            continue
        started = time.perf_counter()
        rows, verdict, notes = showdown(title, factory, samples, transformer, work, args)
        blocks.append((title, rows, verdict, notes, time.perf_counter() - started))
    for title, rows, verdict, notes, seconds in blocks:
        lines.append(
            f"\n== {title}: batch 1, {THREADS} threads, interleaved in one run ({seconds:.0f} s)"
        )
        lines.append(
            f"{'variant':44}{'time vs ORT fp32':>17}  {'95% interval':>12}  {'cosine_min':>10}  threads"
        )
        for label, ratio, ci, cos, threads, error in rows:
            if error:
                lines.append(f"{label:44}{'failed':>17}  {error}")
                continue
            span = f"{ci[0]:.2f}–{ci[1]:.2f}" if ci else "(baseline)"
            lines.append(f"{label:44}{ratio:>17.2f}  {span:>12}  {cos:>10.5f}  {threads}")
        lines.append(verdict)
        lines += [f"  note: {note}" for note in notes]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.out:
        args.out.write_text(text)
    return 0


def out_file(parser) -> None:
    parser.add_argument("--out", type=Path, help="also write the summary to this file")


def showdown(title, factory, samples, transformer, work: Path, args):
    torch.manual_seed(0)
    model = factory().eval()
    stem = factory.__name__.lower()
    folder = work / stem
    folder.mkdir(exist_ok=True)
    calib = samples(CALIBRATION, seed=1)
    np.savez(folder / "calibration.npz", **calib)
    torch.save(model.state_dict(), folder / "model.pt")
    print(f"\n== {title}: edgekit optimize (every installed runtime)", flush=True)
    ort_variants, pick = edgekit_variants(factory, folder, args)
    example = tuple(torch.from_numpy(v[:1]) for v in samples(1, seed=2).values())
    calibration = [
        tuple(torch.from_numpy(v[i : i + 1]) for v in calib.values()) for i in range(CALIBRATION)
    ]
    ov_calibration = [{k: v[i : i + 1] for k, v in calib.items()} for i in range(CALIBRATION)]
    fp32_onnx = ort_variants["ORT fp32"]

    files: dict[str, Path] = dict(ort_variants)
    failed: dict[str, str] = {}
    notes: list[str] = []
    made = [
        ("OpenVINO fp32", "openvino", lambda out: runtimes.module("openvino").convert(fp32_onnx, out, "fp32")),
        ("OpenVINO int8 (NNCF)", "openvino", lambda out: runtimes.module("openvino").convert(fp32_onnx, out, "int8", ov_calibration, transformer)),
        ("OpenVINO low precision", "openvino", lambda out: runtimes.module("openvino").convert(fp32_onnx, out, "low")),
        ("LiteRT fp32", "litert", lambda out: runtimes.module("litert").convert(model, example, out, "fp32")),
        ("LiteRT int8 (PT2E)", "litert", lambda out: runtimes.module("litert").convert(model, example, out, "int8", calibration)),
        ("ExecuTorch fp32", "executorch", lambda out: runtimes.module("executorch").convert(model, example, out, "fp32")),
        ("ExecuTorch int8 (PT2E)", "executorch", lambda out: runtimes.module("executorch").convert(model, example, out, "int8", calibration)),
    ]  # fmt: skip
    for label, runtime, convert in made:
        ok, why = runtimes.module(runtime).available()
        if not ok:
            failed[label] = f"not installed: {why}"
            continue
        if label == "OpenVINO low precision":
            low = runtimes.module("openvino").default_low_precision()
            if low is None:
                notes.append("this CPU runs OpenVINO in f32 by default: no low-precision variant")
                continue
            label = f"OpenVINO {low} (CPU default)"
        out = folder / (
            label.split()[0].lower()
            + "_"
            + label.split()[1].lower()
            + runtimes.module(runtime).SUFFIX
        )
        started = time.perf_counter()
        print(f"converting: {label}", flush=True)
        try:
            files[label] = convert(out)
            notes.append(f"{label}: converted in {time.perf_counter() - started:.0f} s")
        except runtimes.ConversionError as exc:
            failed[label] = str(exc)

    drift_feeds = samples(DRIFT_SAMPLES, seed=3)
    with torch.no_grad():
        reference = [
            model(*(torch.from_numpy(v[i : i + 1]) for v in drift_feeds.values())).numpy()
            for i in range(DRIFT_SAMPLES)
        ]
    cosines = {}
    for label, path in list(files.items()):
        try:
            cosines[label] = drift(path, drift_feeds, reference)
        except Exception as exc:  # a runtime that cannot run the model: a failed row
            failed[label] = f"does not run: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            del files[label]

    print(f"timing {len(files)} variants interleaved", flush=True)
    batch = {k: v[:1] for k, v in samples(1, seed=4).items()}
    bench = measure(
        files,
        batch,
        BenchOptions(threads=[THREADS], min_time=args.min_time, max_time=args.max_time),
    )
    rows = []
    for label in list(files) + list(failed):
        if label in failed:
            rows.append((label, None, None, None, None, failed[label]))
            continue
        v = bench.variants[label]
        if v.error:
            rows.append((label, None, None, None, None, v.error))
            continue
        relative = v.relative
        if relative is None:  # the baseline
            ratio, ci = 1.0, None
        else:
            ratio = 1 / relative["speedup"]
            ci = [1 / relative["ci95"][1], 1 / relative["ci95"][0]] if relative["ci95"] else None
        threads = bench.settings["runtimes"][label].get("threads")
        rows.append((label, ratio, ci, cosines[label], threads, None))
        notes += [f"{label}: {n}" for n in v.notes if "runtime imports torch" in n]
    notes += bench.warnings[:3]
    return rows, verdict(pick, bench, cosines), notes


def verdict(pick: str, bench, cosines: dict[str, float]) -> str:
    """edgekit's pick against the fastest other variant within the budget, as a ratio of medians
    with its 95% interval over the rounds both ran in (below 1: the pick is the faster)."""
    within = [
        label
        for label, cos in cosines.items()
        if label != pick and cos >= BOUND and not bench.variants[label].error
    ]
    if pick not in cosines or bench.variants[pick].error or not within:
        return (
            f"edgekit's pick {pick!r}: no ratio (it, or every other variant within budget, failed)"
        )
    fastest = min(within, key=lambda label: bench.variants[label].latency_ms["p50"])
    ratio = stats.paired_ratio(rounds(bench.variants[fastest]), rounds(bench.variants[pick]))
    ci = ratio["ci95"]
    span = f" (95% interval {ci[0]:.2f}–{ci[1]:.2f})" if ci else ""
    within_5 = "within 5%" if ratio["ratio"] <= 1.05 else "NOT within 5%"
    return (
        f"edgekit's pick / the fastest other variant within {BUDGET} ({fastest}): "
        f"{ratio['ratio']:.2f}{span}: {within_5}"
    )


def rounds(v) -> list[list[float]]:
    """A measurement's timed rounds, from its samples (kept whole up to 2000) and round sizes;
    one median per round when the samples were thinned."""
    latency = v.latency_ms
    samples, sizes = latency["samples"], latency["round_sizes"]
    if len(samples) != sum(sizes):
        return [[m] for m in latency["round_medians"]]
    edges = np.cumsum([0, *sizes])
    return [samples[a:b] for a, b in zip(edges[:-1], edges[1:], strict=True)]


def edgekit_variants(factory, folder: Path, args) -> tuple[dict[str, Path], str]:
    """ORT fp32, edgekit's ONNX int8 variants (static and dynamic) and its pick, from `edgekit
    optimize` with every installed runtime and the budget the rows here are judged by. Returns
    (label → file, the pick's label)."""
    out = folder / "edgekit"
    subprocess.run(
        [sys.executable, "-m", "edgekit.cli", "optimize", folder / "model.pt",
         "--arch", f"{HERE.with_name('reference_models.py')}:{factory.__name__}",
         "--data", folder / "calibration.npz", "--int8", "all", "--max-drift", BUDGET,
         "-o", out, "-q", "--threads", str(THREADS),
         "--min-time", str(args.min_time / 2), "--max-time", str(args.max_time / 2)],
        check=True, cwd=HERE.parents[1],
    )  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    recommended = report["recommendation"]["variant"]
    files = {"ORT fp32": out / "fp32.onnx"}
    pick = None
    for v in report["variants"]:
        int8 = v["name"].startswith(("int8-static", "int8-dynamic"))
        if v["name"] == recommended and recommended != "fp32":
            runtime = "ORT " if v["runtime"] == "onnxruntime" else ""
            pick = f"{runtime}{v['name']} (edgekit's pick)"
            files[pick] = out / v["file"]
        elif int8 and not v.get("error"):
            files[f"ORT {v['name']}"] = out / v["file"]
    if recommended == "fp32":  # the baseline row is the pick
        pick = "ORT fp32"
    print(f"edgekit recommends {recommended}: {report['recommendation']['reason']}", flush=True)
    return files, pick


def drift(path: Path, feeds: dict[str, np.ndarray], reference: list[np.ndarray]) -> float:
    """The lowest cosine over the samples, run one by one on the artifact's runtime."""
    session = runtimes.load(path, THREADS)
    worst = 1.0
    for i, ref in enumerate(reference):
        fed, _ = runtimes.fit_feeds(session, {k: v[i : i + 1] for k, v in feeds.items()})
        out = session.run(fed)[0].ravel().astype(np.float64)
        ref = ref.ravel().astype(np.float64)
        worst = min(worst, float(out @ ref / (np.linalg.norm(out) * np.linalg.norm(ref))))
    return worst


if __name__ == "__main__":
    raise SystemExit(main())
