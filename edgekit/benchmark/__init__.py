"""Benchmarks you can trust: time ONNX models on this CPU, fairly and with honest intervals.

    from edgekit.benchmark import BenchOptions, measure
    result = measure({"fp32": Path("fp32.onnx"), "int8": Path("int8.onnx")}, feeds, BenchOptions())

Every (model, threads) pair runs in its own long-lived worker process (edgekit/benchmark/worker.py,
which imports only onnxruntime and numpy); rounds are interleaved so drift hits all alike. The
first model is the baseline of `relative`. Never imports torch.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit import stats
from edgekit.benchmark import device, flops, remote, runner
from edgekit.errors import EdgekitError
from edgekit.onnxfile import size_on_disk
from edgekit.report.schema import Measurement

OUTLIER_NOTE_FRACTION = 0.05
MAX_THREADS = 256
MAX_SECONDS = 3600.0
# report.json keeps at most this many timings per variant (docs/report-schema.md): enough for
# compare's block bootstrap, while a 5 µs model timed for 10 s would otherwise write ~10^6 of them
MAX_SAMPLES = 2000


@dataclass
class BenchOptions:
    threads: list[int] | None = None  # intra-op threads; None -> physical cores; several -> a sweep
    arena: bool = True  # ORT CPU memory arena
    min_time: float = 2.0  # seconds of timed rounds per model, at least
    max_time: float = 10.0  # seconds of timed rounds per model, at most
    profile: bool = False  # add the top operators by time (separate profiling session)
    # Stop early once every median's 95% interval is within ±target_ci of it (0.01 = ±1%).
    target_ci: float = 0.01
    # ORT's intra-op threads spin-wait for work inside run() (fast, as a model runs in a loop) ...
    spinning: bool = True
    # ... and stop spinning when run() returns (session.force_spinning_stop), so that an idle
    # worker's threads do not take the cores from the worker being timed.
    stop_spinning: bool = True

    def __post_init__(self) -> None:
        """Numbers that would hang the runner (NaN defeats every stop test) or stall the machine
        (thousands of threads) are refused here, for the CLI and Python callers alike."""
        for name in ("min_time", "max_time"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value <= MAX_SECONDS):
                raise EdgekitError(
                    f"{name} = {value!r}: give seconds of timed runs per model, above 0 and at "
                    f"most {MAX_SECONDS:g} (an hour); the benchmark stops by these times."
                )
        if self.max_time < self.min_time:
            raise EdgekitError(
                f"--max-time (max_time) {self.max_time:g} is less than --min-time (min_time) "
                f"{self.min_time:g}. Give --max-time at least as long as --min-time (seconds of "
                "timed runs per model)."
            )
        for threads in self.threads or []:
            if not (isinstance(threads, int) and 1 <= threads <= MAX_THREADS):
                raise EdgekitError(
                    f"{threads!r} threads: give 1 to {MAX_THREADS}. onnxruntime starts one thread "
                    "per count, and more threads than the CPU's cores only make it slower "
                    "(thousands stall the machine for minutes)."
                )


@dataclass
class BenchResult:
    device: dict
    settings: dict
    warnings: list[str]
    variants: dict[str, Measurement] = field(default_factory=dict)  # by name, or name@Nt
    round_log: list[str] = field(default_factory=list)  # the order in which rounds really ran


def variant_key(name: str, threads: int, sweep: bool) -> str:
    """`fp32` normally; `fp32@2t` (2 intra-op threads) when several thread counts are swept."""
    return f"{name}@{threads}t" if sweep else name


def measure(
    models: dict[str, Path],
    feeds: dict[str, np.ndarray],
    options: BenchOptions | None = None,
    progress: Callable[[str], None] | None = None,
    target: remote.Target | None = None,
    batch: int | None = None,
    candidates: set[str] | None = None,
) -> BenchResult:
    """Time every model on `feeds` (one batch, as the model takes it: edgekit.model.samples
    model_feeds) of `batch` samples (default: their first axis, as for an input without specs).
    A model that fails to load
    or run becomes an entry with `error` set and null numbers; the others still finish.
    With `target`, the models run on that device over SSH (edgekit.benchmark.remote); an unreachable
    or unusable device raises EdgekitError.
    `candidates` (optimize: the names within the drift budget; not in a thread sweep) lets the
    models that cannot be the recommendation stop timing early (edgekit.benchmark.runner.run):
    their rows say so in `latency_ms.stopped_early` and a note."""
    options = options or BenchOptions()
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        feeds_npz = Path(tmp) / "feeds.npz"
        np.savez(feeds_npz, **feeds)
        local = contextlib.nullcontext(runner.Local())
        with remote.session(target, models, feeds_npz, progress) if target else local as place:
            dev = place.device()
            threads = list(options.threads or [dev["cores"]])
            sweep = len(threads) > 1
            jobs = [
                runner.Job(variant_key(name, t, sweep), Path(path), t)
                for t in threads
                for name, path in models.items()
            ]
            log = runner.run(
                jobs,
                feeds_npz,
                arena=options.arena,
                min_time=options.min_time,
                max_time=options.max_time,
                target_ci=options.target_ci,
                profile=options.profile,
                spinning=options.spinning,
                stop_spinning=options.stop_spinning,
                progress=progress,
                place=place,
                candidates=None if sweep else candidates,
            )
            device.record_after(dev, place.after())  # temperature, throttling, clocks, load

    counts = {}
    for name, path in models.items():
        try:
            counts[name] = flops.count(path, feeds)
        except Exception as exc:  # FLOPs are extra information, never a reason to fail
            counts[name] = f"could not count FLOPs: {type(exc).__name__}: {exc}"
    names = {variant_key(n, t, sweep): n for t in threads for n in models}
    variants = {job.name: _variant(job, counts[names[job.name]], jobs[0]) for job in jobs}

    # stopped jobs lack the later cycles: the machine's speed is read from those timed to the end
    full = {j.name: j.rounds for j in jobs if j.error is None and j.stopped is None}
    shift = stats.machine_shift(full)
    dev["stability"] = shift
    warnings = device.condition_warnings(dev, threads)
    busy = bool(warnings) and warnings[0].startswith("Other work competed")
    if shift["shifted"]:
        warnings.append(shift_warning(shift))
    wide = {}
    for key, v in variants.items():
        latency = v.latency_ms
        if latency and latency["median_ci95"] and not latency["stopped_early"]:
            width = stats.relative_half_width(latency["median_ci95"], latency["p50"])
            if width > options.target_ci:
                wide[key] = width
    timed = [j.time_s for j in jobs if j.error is None and j.stopped is None]
    if wide:
        warnings.append(interval_warning(wide, options.target_ci, min(timed)))
    if wide or shift["shifted"] or busy:
        warnings.append(what_to_do(busy or shift["shifted"], bool(wide), options))
    settings = {
        "intra_op_threads": threads[0] if not sweep else threads,
        "inter_op_threads": 1,
        **_ort_settings(jobs, options),
        "execution_provider": "CPUExecutionProvider",
        "batch": batch if batch is not None else _batch(feeds),
        "interleaved": True,
        "min_time_s": options.min_time,
        "max_time_s": options.max_time,
        "target_ci": options.target_ci,
        "threads_sweep": threads if sweep else None,
        "baseline": jobs[0].name,
        "timer": "time.perf_counter_ns around session.run",
        # each variant's runtime and its settings as the runtime reported them (threads read back)
        "runtimes": {j.name: j.load["runtime_settings"] for j in jobs if j.load},
    }
    return BenchResult(dev, settings, warnings, variants, log)


def _ort_settings(jobs: list[runner.Job], options: BenchOptions) -> dict:
    """The ORT settings as the workers' session options held them (read back from the first
    worker that loaded), and where the threads were allowed to run."""
    applied = next(
        (j.load["session_config"] for j in jobs if j.load and "session_config" in j.load), None
    )
    placed = [j.load["affinity"] for j in jobs if j.load and j.load.get("affinity")]
    if applied is None:  # nothing loaded: what was asked for
        applied = {
            "session.intra_op.allow_spinning": "1" if options.spinning else "0",
            "session.force_spinning_stop": "1" if options.stop_spinning else "0",
            "graph_optimization_level": "ORT_ENABLE_ALL",
            "execution_mode": "ORT_SEQUENTIAL",
            "enable_cpu_mem_arena": options.arena,
        }
    return {
        "allow_spinning": applied["session.intra_op.allow_spinning"] == "1",
        "force_spinning_stop": applied["session.force_spinning_stop"] == "1",
        "arena": bool(applied["enable_cpu_mem_arena"]),
        "graph_optimization_level": applied["graph_optimization_level"],
        "execution_mode": applied["execution_mode"],
        "cpus_allowed": placed[0]["process_cpus"] if placed else None,
        "threads_pinned": any(a["pinned_threads"] for a in placed) if placed else None,
    }


def shift_warning(shift: dict) -> str:
    """The warning for a whole-machine change of speed during the run (what to do about it is
    said once, by what_to_do)."""
    pct = 100 * abs(shift["shift"] - 1)
    way = "rose" if shift["shift"] > 1 else "fell"
    return (
        f"The machine's speed shifted during the run: from cycle {shift['at_cycle'] + 1} of "
        f"{shift['cycles']} the models' latency {way} by about {pct:.0f}% "
        f"(x{shift['shift']:.2f}; {shift['jobs_alike']} of {len(shift['jobs'])} models alike; "
        f"permutation p = {shift['p_value']:.3f}). Each latency and its interval describe a "
        "moving target; the ratios between the models, measured side by side, are affected less."
    )


def interval_warning(wide: dict[str, float], target: float, seconds: float) -> str:
    """One line for every model whose median is known less well than the target."""
    each = ", ".join(f"{k} ±{100 * w:.1f}%" for k, w in wide.items())
    seconds = f"{seconds:.1f}" if seconds < 10 else f"{seconds:.0f}"
    if len(wide) == 1:
        ((name, width),) = wide.items()
        return (
            f"The median of {name} is known to ±{100 * width:.1f}% only (95% interval), not the "
            f"±{100 * target:g}% target, after {seconds} s of timing."
        )
    low, high = (f"{100 * w:.1f}" for w in (min(wide.values()), max(wide.values())))
    span = f"±{low}%" if low == high else f"±{low}–{high}%"
    return (
        f"The medians are known to {span} only, not the ±{100 * target:g}% target, after "
        f"{seconds} s of timing each (95% intervals: {each})."
    )


def what_to_do(busy: bool, wide: bool, options: BenchOptions) -> str:
    """The one thing to do about the warnings on the timings, said once."""
    if busy:
        return (
            "What to do: choose between the variants by the speed column (ratios timed side by "
            "side in this run, with their intervals), not by the milliseconds, which will not "
            "repeat on a machine this busy. For milliseconds that hold, re-run when nothing else "
            f"is running{', with a longer --max-time' if wide else ''}; `edgekit compare "
            "--normalize` sets two runs side by side."
        )
    return (
        f"What to do: for tighter intervals, raise --max-time (now {options.max_time:g} s per "
        "model); the speed column (ratios timed side by side, with their intervals) already "
        "holds what to choose by."
    )


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _batch(feeds: dict[str, np.ndarray]) -> int | None:
    """The samples in plain feeds: model_feeds' rule for an input without specs (axis 0)."""
    first = next(iter(feeds.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else None


def _variant(job: runner.Job, count, baseline: runner.Job) -> Measurement:
    v = Measurement(threads=job.threads, error=job.error)
    try:
        v.size_bytes = size_on_disk(job.model)
    except Exception as exc:
        v.unmeasured["size_bytes"] = f"could not read the model file: {exc}"
    if isinstance(count, dict):
        v.flops = count
    else:
        v.unmeasured["flops"] = count
    if job.error:
        for key in ("latency_ms", "cold_start", "relative", "memory", "gflops_per_s"):
            v.unmeasured[key] = "the model failed; see error"
        return v

    samples = [s for r in job.rounds for s in r]
    latency = stats.summary(samples)
    latency["median_ci95"] = _list(stats.median_interval(job.rounds))
    latency["outliers"] = int(len(stats.outliers(samples)))
    latency["rounds"] = len(job.rounds)
    latency["round_sizes"] = [len(r) for r in job.rounds]
    latency["round_medians"] = [round(float(np.median(r)), 6) for r in job.rounds]
    latency["samples"] = [round(s, 6) for s in kept_samples(samples)]
    latency["stopped_early"] = job.stopped
    v.latency_ms = latency
    if job.stopped:
        v.notes.append(job.stopped)
    if len(job.rounds) < 10:
        v.notes.append(
            f"only {len(job.rounds)} rounds: the interval of the median rests on little data"
        )
    if latency["outliers"] > OUTLIER_NOTE_FRACTION * latency["n"]:
        v.notes.append(
            f"{latency['outliers']} of {latency['n']} runs are outliers (modified z-score > 14): "
            "other work competed for the CPU, or run times vary with the input"
        )

    load = job.load
    v.notes += load.get("notes") or []  # from the runtime: e.g. that it imports torch
    v.cold_start = {
        "session_create_ms": load["session_create_ms"],
        "first_run_ms": load["first_run_ms"],
        "warmup_runs": load["warmup_runs"],
        "warmup_settled": load["warmup_settled"],
    }
    if not load["warmup_settled"]:
        v.notes.append("warm-up hit its time cap before the timings settled")
    peak, base = job.memory["peak_rss_bytes"], job.memory["baseline_rss_bytes"]
    v.memory = {
        "peak_rss_bytes": peak,
        "model_rss_bytes": peak - base,
        "baseline_rss_bytes": base,
    }
    if isinstance(count, dict) and latency["p50"] > 0:
        v.gflops_per_s = count["flops"] / (latency["p50"] / 1e3) / 1e9
    v.profile = job.profile

    if job is baseline:
        pass  # relative stays null: it is the reference
    elif baseline.error:
        v.unmeasured["relative"] = f"the baseline {baseline.name} failed"
    else:
        ratio = stats.paired_ratio(baseline.rounds, job.rounds)
        v.relative = {"baseline": baseline.name, **stats.speedup(ratio)}
    return v


def kept_samples(samples: list) -> list:
    """All samples, or MAX_SAMPLES of them evenly spaced (positions floor(i * n / MAX_SAMPLES)),
    in run order: deterministic, and neighbours stay neighbours for a block bootstrap."""
    n = len(samples)
    if n <= MAX_SAMPLES:
        return list(samples)
    return [samples[i * n // MAX_SAMPLES] for i in range(MAX_SAMPLES)]


def _list(ci):
    return list(ci) if ci else None


__all__ = [
    "BenchOptions",
    "BenchResult",
    "interval_warning",
    "measure",
    "shift_warning",
    "variant_key",
    "what_to_do",
]
