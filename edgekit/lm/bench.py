"""Language-model speed the way llama.cpp's llama-bench reports it: prompt processing tokens/s at
128 and 512 prompt tokens (pp128, pp512), token generation tokens/s over 128 tokens (tg128), time to
first token and peak RSS, for LM variant folders (genai_config.json + model.onnx + tokenizer).

Each variant runs in its own long-lived worker process (edgekit/lm/bench_worker.py, which imports
only numpy and onnxruntime-genai: never torch), started the way edgekit/benchmark/runner.py starts
the tensor bench's workers; rounds are interleaved across variants (A B C A B C ...) so that machine
drift hits all alike, and medians get the same 95% intervals as `edgekit bench` (edgekit.stats).
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgekit import stats
from edgekit.benchmark.runner import Worker, WorkerError
from edgekit.errors import EdgekitError
from edgekit.textsafe import plain

WORKER = Path(__file__).with_name("bench_worker.py")
# tg runs after a prompt this long (llama-bench's tg128 starts from an empty context; a few tokens
# keep the first step an ordinary prefill)
TG_PROMPT = 16
RUNTIME = "onnxruntime-genai"
# at least this many rounds per variant, however long one takes: fewer give no interval
MIN_ROUNDS = 3
# stop once every median's 95% interval is within this share of it (LM runs are long: ±2%)
TARGET_CI = 0.02


@dataclass
class LMMeasurement:
    # prompt length -> {"tokens_per_s": median, "low":, "high": (95% interval), "rounds": n}
    pp: dict[int, dict]
    tg: dict[int, dict]  # generated tokens -> the same shape
    ttft_ms: dict | None  # {"median":, "low":, "high":} at the shortest prompt length
    peak_rss_bytes: int | None  # VmHWM of the worker, KV cache at the context used
    threads: int | None
    context_length: int | None
    error: str | None = None
    notes: list[str] = field(default_factory=list)


def genai_config(folder: Path) -> dict:
    """The folder's genai_config.json; EdgekitError when it is not an LM variant folder."""
    path = Path(folder) / "genai_config.json"
    if not path.is_file():
        raise EdgekitError(
            f"{plain(folder)} is not a language-model variant folder: it has no genai_config.json. "
            "Give a folder made by `edgekit optimize` on a causal LM (or onnxruntime-genai's model "
            "builder): genai_config.json, model.onnx and the tokenizer files."
        )
    try:
        config = json.loads(path.read_text())
        context = int(config["model"]["context_length"])
        int(config["model"]["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EdgekitError(
            f"{plain(path)} cannot be read as onnxruntime-genai's configuration ({plain(exc)}). "
            "Re-create the variant folder with `edgekit optimize` or the model builder."
        ) from None
    if context < 1:
        raise EdgekitError(f"{plain(path)} gives a context length of {context}: re-create it.")
    return config


def _check_fits(name: str, folder: Path, lengths, gen_tokens: int) -> None:
    context = genai_config(folder)["model"]["context_length"]
    need = {f"a prompt of {n} tokens": n + 1 for n in lengths}
    need[f"{gen_tokens} generated tokens after a {TG_PROMPT}-token prompt"] = (
        TG_PROMPT + gen_tokens + 1
    )
    for what, tokens in need.items():
        if tokens > context:
            raise EdgekitError(
                f"{what} ({tokens} tokens with the first generated one) is longer than the "
                f"context of {plain(name)} ({context} tokens, genai_config.json's "
                "model.context_length). Give shorter prompt lengths or fewer generated tokens, "
                "or a model with a longer context."
            )


def _rate(rounds: list[list[float]], tokens: int) -> dict:
    """Tokens/s from per-round times in ms: the median and interval of the time, turned over."""
    pooled = [ms for r in rounds for ms in r]
    ci = stats.median_interval(rounds)
    median = stats.summary(pooled)["p50"]
    return {
        "tokens_per_s": tokens * 1000 / median,
        "low": tokens * 1000 / ci[1] if ci else None,
        "high": tokens * 1000 / ci[0] if ci else None,
        "rounds": len(rounds),
    }


def _settled(series: list[list[list[float]]]) -> bool:
    for rounds in series:
        ci = stats.median_interval(rounds)
        median = stats.summary([ms for r in rounds for ms in r])["p50"]
        width = stats.relative_half_width(ci, median)
        if width is None or width > TARGET_CI:
            return False
    return True


@dataclass
class _Job:
    name: str
    folder: Path
    worker: Worker | None = None
    load: dict | None = None
    pp: dict[int, list[list[float]]] = field(default_factory=dict)
    ttft: list[list[float]] = field(default_factory=list)
    tg: list[list[float]] = field(default_factory=list)
    memory: dict | None = None
    error: str | None = None
    time_s: float = 0.0

    def series(self) -> list[list[list[float]]]:
        return [*self.pp.values(), self.ttft, self.tg]


def measure_lm(
    variants: dict[str, Path],
    *,
    threads: int,
    prompt_lengths=(128, 512),
    gen_tokens=128,
    min_time: float = 2,
    max_time: float = 10,
    on_progress: Callable[[str], None] | None = None,
    workers: dict[str, list[str]] | None = None,
    place=None,
) -> dict[str, LMMeasurement]:
    """Time each LM variant folder in its own worker, rounds interleaved; a variant that fails
    gets its error in its measurement. A prompt (or generation) longer than a variant's context, or
    a folder that is not an LM variant, raises EdgekitError before anything starts.

    `place` is where the workers run: None for this machine, or a device's folder over SSH
    (`device_session`: edgekit.benchmark.remote.Remote, which starts the worker there and gives
    each folder's path on the device).

    `workers` gives, by variant name, another command that starts a worker speaking the same
    protocol (edgekit/lm/bench_worker.py's) for a variant that is not an onnxruntime-genai folder:
    tools/lm_showdown.py times llama.cpp's GGUF files that way, interleaved with these. Such a
    worker checks its own context at load (a variant that does not fit gets an error)."""
    workers = workers or {}
    say = on_progress or (lambda _msg: None)
    lengths = sorted({int(n) for n in prompt_lengths})
    if not lengths or lengths[0] < 1 or gen_tokens < 1:
        raise EdgekitError(
            f"prompt lengths {list(prompt_lengths)} and {gen_tokens} generated tokens: give "
            "whole numbers of tokens above 0 (llama-bench's defaults are pp 512 and tg 128)."
        )
    if not (0 < min_time <= max_time):
        raise EdgekitError(
            f"min_time {min_time!r} and max_time {max_time!r}: give seconds above 0, "
            "max_time at least min_time."
        )
    for name, folder in variants.items():
        if name not in workers:
            _check_fits(name, Path(folder), lengths, gen_tokens)
    jobs = [_Job(name, Path(folder)) for name, folder in variants.items()]
    round_s = min(0.5, max(min_time / 10, 0.05))
    try:
        command = place.worker_command() if place else [sys.executable, str(WORKER)]
        if place is None:  # here, the processes start (import onnxruntime-genai) side by side
            for job in jobs:
                job.worker = Worker(workers.get(job.name) or command, wait=False)
        for job in jobs:
            say(f"loading {job.name}")
            try:
                if job.worker is None:  # on a device, one SSH session at a time
                    job.worker = Worker(workers.get(job.name) or command)
                job.worker.ready()
                job.load = job.worker.ask(
                    "load",
                    model=place.path(job.folder) if place else str(job.folder.resolve()),
                    threads=threads,
                    prompt_lengths=lengths,
                    gen_tokens=gen_tokens,
                    tg_prompt=TG_PROMPT,
                    warmup_max_s=max(0.5, 0.25 * max_time),
                )
            except WorkerError as exc:
                job.error = f"could not load and run the model: {exc}"
        _interleave(jobs, round_s, min_time, max_time, say)
        for job in jobs:
            if job.error is None:
                try:
                    job.memory = job.worker.ask("memory")
                except WorkerError as exc:
                    job.error = f"the worker failed: {exc}"
    finally:
        for job in jobs:
            if job.worker is not None:
                job.worker.close()
    return {job.name: _measurement(job, lengths, gen_tokens) for job in jobs}


def _interleave(jobs: list[_Job], round_s, min_time, max_time, say) -> None:
    started = time.perf_counter()
    next_check = min_time
    while True:
        live = [j for j in jobs if j.error is None]
        for job in live:  # one cycle: a round of every variant, always in the same order
            t0 = time.perf_counter()
            try:
                reply = job.worker.ask("round", seconds=round_s)
            except WorkerError as exc:
                job.error = f"the model failed while timing: {exc}"
                continue
            job.time_s += time.perf_counter() - t0
            for n, ms in reply["pp_ms"].items():
                job.pp.setdefault(int(n), []).append(ms)
            job.ttft.append(reply["ttft_ms"])
            job.tg.append(reply["tg_ms"])
        live = [j for j in jobs if j.error is None]
        if not live:
            return
        spent = min(j.time_s for j in live)
        rounds = min(len(j.tg) for j in live)
        say(f"timing {len(live)} model(s): {spent:.1f}s of {min_time:g}-{max_time:g}s each")
        if rounds >= MIN_ROUNDS:
            if spent >= max_time:
                return
            if spent >= next_check:
                if all(_settled(j.series()) for j in live):
                    return
                next_check = spent * 1.1  # an interval narrows as 1/sqrt(time): check now and then
        if time.perf_counter() - started > 3 * max_time * len(jobs) + 600:
            return  # a safety net against a stuck clock, never the normal way out


def _measurement(job: _Job, lengths, gen_tokens: int) -> LMMeasurement:
    load = job.load or {}
    notes = list(load.get("notes", []))
    if job.error is None:
        notes.append(
            "prompts are random token ids from the vocabulary (speed does not depend on the text); "
            f"tg{gen_tokens} follows a {TG_PROMPT}-token prompt; greedy search"
        )
        if not load.get("warmup_settled", True):
            notes.append(f"warm-up not settled after {load.get('warmup_sets')} set(s)")
    if job.error is not None or not job.tg:
        return LMMeasurement(
            pp={},
            tg={},
            ttft_ms=None,
            peak_rss_bytes=None,
            threads=load.get("threads"),
            context_length=load.get("context_length"),
            error=job.error or "no round was timed",
            notes=notes,
        )
    ttft_ci = stats.median_interval(job.ttft)
    return LMMeasurement(
        pp={n: _rate(job.pp[n], n) for n in lengths},
        tg={gen_tokens: _rate(job.tg, gen_tokens)},
        ttft_ms={
            "median": stats.summary([ms for r in job.ttft for ms in r])["p50"],
            "low": ttft_ci[0] if ttft_ci else None,
            "high": ttft_ci[1] if ttft_ci else None,
        },
        peak_rss_bytes=(job.memory or {}).get("peak_rss_bytes"),
        threads=load.get("threads"),
        context_length=load.get("context_length"),
        notes=notes,
    )


def device_info() -> dict:
    """The device section of an LM report: the machine, and the runtime's version."""
    import onnxruntime_genai

    from edgekit.benchmark.device import collect

    return {**collect(), "onnxruntime_genai": onnxruntime_genai.__version__}


def _pack(folders: list[Path], tar) -> dict[str, str]:
    """bench_worker.py and the variant folders' files (m0/, m1/, ...) into the tar stream that
    edgekit.benchmark.remote copies to a device; returns local folder -> name there."""
    tar.add(WORKER, "bench_worker.py")
    names = {}
    for i, folder in enumerate(folders):
        names[str(Path(folder).resolve())] = f"m{i}"
        for file in sorted(Path(folder).iterdir()):
            if file.is_file():  # a symbolic link goes as the file it points to
                tar.add(file.resolve(), f"m{i}/{file.name}")
    return names


@contextlib.contextmanager
def device_session(target, folders: list[Path], progress=None):
    """A temporary folder on the device over SSH with bench_worker.py and the variant folders,
    its Python checked for numpy and onnxruntime-genai: edgekit.benchmark.remote's, as for the
    tensor bench."""
    from edgekit.benchmark import remote

    pack = functools.partial(_pack, folders)
    fix = "python3 -m pip install onnxruntime-genai numpy"
    needs = ("numpy", "onnxruntime_genai")
    with remote.device_folder(target, pack, needs, fix, "bench_worker.py", progress) as place:
        yield place


def folder_size(folder: Path) -> int:
    """Bytes of the variant's model files (model.onnx and its external data)."""
    return sum(f.stat().st_size for f in Path(folder).glob("*.onnx*") if f.is_file())


def fill_row(row, m: LMMeasurement, too_long: dict[str, str] | None = None) -> None:
    """A report's variant row (edgekit.report.schema.Variant) given what measure_lm measured:
    tokens_per_s {ppN, tgN: {median, low, high, rounds}}, ttft_ms, memory, threads, notes."""

    def rate(block: dict) -> dict:
        return {k: block.get(src) for k, src in
                (("median", "tokens_per_s"), ("low", "low"), ("high", "high"), ("rounds", "rounds"))}  # fmt: skip

    if m.error:
        row.error = row.error or m.error
    speeds = {f"pp{n}": rate(block) for n, block in (m.pp or {}).items()}
    speeds.update({f"tg{n}": rate(block) for n, block in (m.tg or {}).items()})
    row.tokens_per_s = speeds or None
    row.ttft_ms = m.ttft_ms
    row.memory = {"peak_rss_bytes": m.peak_rss_bytes}
    if m.peak_rss_bytes is not None and m.context_length:
        row.memory["kv_cache_context"] = m.context_length
    row.threads = m.threads
    row.notes += list(m.notes)
    row.unmeasured.update(too_long or {})


def bench_lm(
    folders: list[Path],
    *,
    threads: int | None = None,
    prompt_lengths=(128, 512),
    gen_tokens: int = 128,
    min_time: float = 2,
    max_time: float = 10,
    out_dir: Path | None = None,
    on_progress: Callable[[str], None] | None = None,
    target=None,
):
    """`edgekit bench` on LM variant folders: measure_lm, as a Report of a language model (the
    rows `edgekit optimize` writes for one, so compare reads both); also written to out_dir
    (report.json, .md, .html; the folder published whole) when given. With `target`
    (edgekit.ssh.Target), the folders are copied to that device and timed there over SSH; the
    device section is read there. threads None: the device's physical cores."""
    from edgekit.benchmark import device
    from edgekit.fsutil import output_folder, sha256_folder
    from edgekit.report.schema import Report, Variant
    from edgekit.report.write import write_outputs

    names = [Path(f).resolve().name or str(f) for f in folders]
    if len(set(names)) < len(names):
        names = [str(f) for f in folders]
    variants = dict(zip(names, map(Path, folders), strict=True))
    with contextlib.ExitStack() as stack:
        staging = None
        if out_dir is not None:
            staging = stack.enter_context(output_folder(Path(out_dir), inputs=list(folders)))
        if target is None:
            place, info = None, device_info()
        else:
            place = stack.enter_context(
                device_session(target, list(variants.values()), on_progress)
            )
            info = {**place.device(), "onnxruntime_genai": place.versions["onnxruntime_genai"]}
        threads = threads or info["cores"]
        measured = measure_lm(
            variants,
            threads=threads,
            prompt_lengths=prompt_lengths,
            gen_tokens=gen_tokens,
            min_time=min_time,
            max_time=max_time,
            on_progress=on_progress,
            place=place,
        )
        after = place.after() if place else device.conditions()
        info.update({k + "_after": v for k, v in (after or {}).items() if k != "clocks"})
        rows = []
        for name, m in measured.items():
            row = Variant(name, runtime=RUNTIME, file=str(variants[name]))
            row.size_bytes = folder_size(variants[name])
            row.sha256 = sha256_folder(variants[name])
            fill_row(row, m)
            rows.append(row)
        report = Report(
            "bench",
            rows,
            settings={
                "intra_op_threads": threads,
                "baseline": names[0],
                "runtime": RUNTIME,
                "prompt_lengths": sorted(set(prompt_lengths)),
                "gen_tokens": gen_tokens,
                "tg_prompt_tokens": TG_PROMPT,
                "min_time_s": min_time,
                "max_time_s": max_time,
            },
            extra={"task": "causal-lm"},
        )
        report.device = info
        if staging is not None:
            write_outputs(report, staging)
    return report
