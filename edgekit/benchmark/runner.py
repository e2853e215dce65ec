"""Parent side of the benchmark: one long-lived worker process per (model, threads) job, rounds
interleaved A B C A B C ... so that machine drift hits every job alike, until the medians are
known well enough or the time budget is spent."""

from __future__ import annotations

import contextlib
import json
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgekit import stats

WORKER = Path(__file__).with_name("worker.py")


# Longer than any one step takes (a big model's session on a Pi, a capped warm-up, a round):
# a worker silent this long has hung, e.g. an SSH link that stalled without closing.
REPLY_TIMEOUT_S = 300.0


class WorkerError(Exception):
    pass


class Local:
    """Where the workers run: this machine. edgekit.benchmark.remote.Remote is the same for a device
    over SSH; the worker protocol is identical, only the command that starts it differs."""

    target = None

    def worker_command(self) -> list[str]:
        return [sys.executable, str(WORKER)]

    def path(self, local: Path) -> str:
        """The path under which the worker sees a local file."""
        return str(Path(local).resolve())

    def device(self) -> dict:
        from edgekit.benchmark import device

        return {**device.collect(), "target": None}

    def load_avg(self) -> list[float] | None:
        from edgekit.benchmark import device

        return device.load_avg()

    def after(self) -> dict:
        from edgekit.benchmark import device

        return device.conditions()


class Worker:
    """A worker process started from the worker's file path (not `-m edgekit...`), the way it
    runs on a device: nothing of edgekit gets imported into the timing process."""

    def __init__(self, command: list[str] | None = None, wait: bool = True):
        # stderr goes to a file: a chatty runtime can never fill a pipe and stall the worker
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            command or Local().worker_command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            bufsize=1,
        )
        self.hello = self._read() if wait else None

    def ready(self) -> dict:
        """The worker's greeting, once it has started (with `wait=False`, read it here)."""
        if self.hello is None:
            self.hello = self._read()
        return self.hello

    def _read(self) -> dict:
        # One reply per request, so nothing waits in the read buffer: select on the pipe is exact.
        ready, _, _ = select.select([self.proc.stdout], [], [], REPLY_TIMEOUT_S)
        if not ready:
            self.proc.kill()
            self.proc.wait()
            raise WorkerError(
                f"the worker sent nothing for {REPLY_TIMEOUT_S:.0f} s: it or its connection hung"
            )
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            self.stderr.seek(0)
            err = self.stderr.read().strip().splitlines()
            tail = err[-1] if err else "no message"
            raise WorkerError(f"the worker process died (exit code {self.proc.returncode}): {tail}")
        try:
            reply = json.loads(line)
        except ValueError:  # e.g. a device's shell start-up files printing to stdout
            raise WorkerError(f"the worker sent a line that is not JSON: {line[:200]!r}") from None
        if not reply.pop("ok", False):
            raise WorkerError(reply.get("error", "unknown worker error"))
        return reply

    def send(self, cmd: str, **fields) -> None:
        """A request whose reply is read later (`reply`). Never two requests in flight: `_read`
        selects on the pipe, and a reply read ahead into the buffer would not wake it."""
        try:
            self.proc.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # _read reports how the worker died

    def reply(self) -> dict:
        return self._read()

    def ask(self, cmd: str, **fields) -> dict:
        self.send(cmd, **fields)
        return self.reply()

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(WorkerError, ValueError, OSError):
                self.ask("quit")
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.stderr):
            stream.close()


@dataclass
class Job:
    name: str
    model: Path
    threads: int
    rounds: list[list[float]] = field(default_factory=list)  # ms, one list per round
    load: dict | None = None
    memory: dict | None = None
    profile: dict | None = None
    error: str | None = None
    time_s: float = 0.0  # wall time spent in this job's rounds
    stopped: str | None = None  # why its timing ended before the others' (see `candidates`)


# Whether the medians are known well enough is checked once min_time is spent, then each time
# another 10% has been: an interval narrows about as 1/sqrt(time), so checking every cycle gains
# nothing, and each check bootstraps every round so far (~1 s for 100 rounds of 1,000 runs on 2
# cores: it took half of a fast model's benchmark, the workers idle meanwhile).
CHECK_GROWTH = 1.1


def _median_settled(job: Job, target: float) -> bool:
    samples = [s for r in job.rounds for s in r]
    if not samples:
        return False
    ci = stats.median_interval(job.rounds)
    width = stats.relative_half_width(ci, stats.summary(samples)["p50"])
    return width is not None and width <= target


# A job stops early only when this confident (paired-round bootstrap) that it is slower: the test
# is repeated at every check, and a tighter level keeps a tie from being stopped by chance.
STOP_CONFIDENCE = 0.99
# A candidate may stop from this many paired rounds on, before min_time when it is clearly slower
# (a model 2x slower than the pick is decided in a few rounds; timing it on to min_time only adds
# its rounds to every cycle). Few rounds make a coarse bootstrap: at 8, a tie looks slower at the
# 99% level only when about every round of it was slower. Checked again each time the rounds have
# grown by STOP_GROWTH (each check bootstraps every round so far).
STOP_MIN_ROUNDS = 8
STOP_GROWTH = 1.25
# ... and only when slower by more than this factor: a job's place in the cycle alone can make it
# measurably slower (two copies of one model timed side by side: 1.01x, 99% CI 1.01-1.02), and a
# race that close must go on to the end, not be decided by the order of the jobs.
STOP_MARGIN = 1.03


def over_budget(jobs: list[Job], candidates: set[str], min_time: float) -> None:
    """Stop the jobs outside `candidates` (over the drift budget: never the recommendation) once
    they have had `min_time` of timing: their medians and ratios are reported, with the wider
    interval of a shorter run."""
    for job in jobs[1:]:
        if (
            job.name not in candidates
            and job.error is None
            and job.stopped is None
            and job.time_s >= min_time
        ):
            job.stopped = (
                f"stopped early, after {job.time_s:.1f} s of timing: over the drift budget, it "
                "cannot be recommended; its interval is wider by design"
            )


def stop_early(jobs: list[Job], candidates: set[str]) -> None:
    """Stop each candidate that cannot be the recommendation any more: measurably slower (by
    more than STOP_MARGIN) than the baseline (jobs[0]), or than the fastest candidate that is
    measurably faster than the baseline (the recommendation takes the fastest of those). The
    ratios are over paired rounds (rounds of one cycle share the machine's drift); the rounds
    kept give the reported numbers."""
    base = jobs[0]
    live = [
        j
        for j in jobs[1:]
        if j.name in candidates and j.error is None and j.stopped is None and len(j.rounds) >= 3
    ]
    if base.error or not live:
        return
    ratios = {
        j.name: stats.paired_ratio(base.rounds, j.rounds, level=STOP_CONFIDENCE) for j in live
    }
    faster = [j for j in live if ratios[j.name]["ci95"][1] < 1]
    best = min(faster, key=lambda j: ratios[j.name]["ratio"], default=None)
    for job in live:
        ratio = ratios[job.name]
        if ratio["ci95"][0] > STOP_MARGIN:
            job.stopped = f"stopped early: {_slower(ratio, base.name)}"
        elif best is not None and job is not best:
            against = stats.paired_ratio(best.rounds, job.rounds, level=STOP_CONFIDENCE)
            if against["ci95"][0] > STOP_MARGIN:
                job.stopped = (
                    f"stopped early: {_slower(against, best.name)}, which is measurably faster "
                    f"than {base.name} and within budget"
                )


def _slower(ratio: dict, than: str) -> str:
    lo, hi = ratio["ci95"]
    return (
        f"{ratio['ratio']:.2f}x the time of {than} "
        f"({100 * STOP_CONFIDENCE:g}% CI {lo:.2f}–{hi:.2f}, paired rounds)"
    )


def _load_failed(exc: WorkerError) -> str:
    return f"could not load and run the model: {exc}"


def run(
    jobs: list[Job],
    feeds_npz: Path,
    *,
    arena: bool,
    min_time: float,
    max_time: float,
    target_ci: float,
    profile: bool,
    spinning: bool = True,
    stop_spinning: bool = True,
    opt_level: str = "ORT_ENABLE_ALL",
    progress: Callable[[str], None] | None = None,
    place: Local | None = None,
    candidates: set[str] | None = None,
) -> list[str]:
    """Fill in each job's rounds, load, memory and profile (or error). Returns the round log: job
    names in the order their rounds actually ran. `place` says where the workers run (default:
    here); the models and feeds must already be there.

    `candidates` (optimize: the variants within the drift budget) lets jobs that cannot be the
    recommendation stop before the others: those over budget after `min_time`, the measurably
    slower candidates (stop_early) from STOP_MIN_ROUNDS paired rounds on, even before `min_time`.
    The others are then timed alone, to the same stop rule as without it; the first job, the
    baseline, never stops early. None (edgekit bench): every job is timed alike."""
    place = place or Local()
    say = progress or (lambda _msg: None)
    round_s = min(0.1, max(min_time / 10, 0.01))
    workers: dict[str, Worker] = {}
    log: list[str] = []
    try:
        if place.target is None:  # here, the processes start and import their runtime (OpenVINO:
            # seconds each) side by side ...
            for job in jobs:
                workers[job.name] = Worker(place.worker_command(), wait=False)
            for job in jobs:  # one request in flight per worker: its reply is read after select
                try:
                    workers[job.name].ready()
                    workers[job.name].send("import", model=place.path(job.model))
                except WorkerError as exc:
                    job.error = _load_failed(exc)
            for job in jobs:  # ... and all have started before the first one is timed
                try:
                    if job.error is None:
                        workers[job.name].reply()
                except WorkerError as exc:
                    job.error = _load_failed(exc)
        for job in jobs:  # cold start of each job while the others sit idle
            if job.error:
                continue
            say(f"loading {job.name}")
            try:
                if job.name not in workers:  # on a device, one SSH session at a time
                    workers[job.name] = Worker(place.worker_command())
                worker = workers[job.name]
                job.load = worker.ask(
                    "load",
                    model=place.path(job.model),
                    feeds=place.path(feeds_npz),
                    threads=job.threads,
                    spinning=spinning,
                    stop_spinning=stop_spinning,
                    arena=arena,
                    opt_level=opt_level,
                    warmup_max_s=max(0.5, 0.25 * max_time),
                )
            except WorkerError as exc:
                job.error = _load_failed(exc)

        start = time.perf_counter()
        next_check = min_time
        next_stop_check = STOP_MIN_ROUNDS
        while True:
            live = [j for j in jobs if j.error is None and j.stopped is None]
            if not live:
                break
            for job in live:  # one cycle: a round of every job, always in the same order
                t0 = time.perf_counter()
                try:
                    reply = workers[job.name].ask("round", seconds=round_s)
                except WorkerError as exc:
                    job.error = f"the model failed while timing: {exc}"
                    job.rounds = []
                    continue
                job.time_s += time.perf_counter() - t0
                job.rounds.append([ns / 1e6 for ns in reply["samples_ns"]])
                log.append(job.name)
            if candidates is not None:
                over_budget(jobs, candidates, min_time)
                if len(jobs[0].rounds) >= next_stop_check:
                    stop_early(jobs, candidates)
                    next_stop_check = len(jobs[0].rounds) * STOP_GROWTH
            live = [j for j in jobs if j.error is None and j.stopped is None]
            if not live:
                break
            spent = min(j.time_s for j in live)
            say(f"timing {len(live)} model(s): {spent:.1f}s of {min_time:g}-{max_time:g}s each")
            if spent >= max_time:
                break
            if spent >= next_check:
                if all(_median_settled(j, target_ci) for j in live):
                    break
                next_check = spent * CHECK_GROWTH
            if time.perf_counter() - start > 2 * max_time * len(jobs) + 30:
                break  # a safety net against a stuck clock, never the normal way out

        for job in jobs:
            if job.error is None:
                job.memory = workers[job.name].ask("memory")
        if profile:
            for job in jobs:
                if job.error is None:
                    say(f"profiling {job.name}")
                    try:
                        job.profile = workers[job.name].ask("profile", seconds=1.0)
                    except WorkerError as exc:
                        job.profile = {"error": str(exc)}
    finally:
        for worker in workers.values():
            worker.close()
    return log
