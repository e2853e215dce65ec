"""edgekit timing worker: one long-lived process that times one model on one runtime.

Self-contained on purpose: the standard library, numpy and edgekit.runtimes (which imports a
runtime only when asked for), so this file and the runtimes folder can be copied to a device (a
Raspberry Pi) and run there as `python3 worker.py`. The runtime is picked by the artifact's suffix
(.onnx onnxruntime, .xml OpenVINO, .tflite LiteRT, .pte ExecuTorch) or the request's "runtime".

Protocol: one JSON object per line. The worker first writes {"ok": true, "ready": true, ...}; then it
answers every request line on stdin with exactly one line on stdout:

  {"cmd": "import", "model": PATH, "runtime": null} -> runtime: its runtime imported, nothing loaded
      (so that workers started side by side import their runtimes side by side too)
  {"cmd": "load", "model": PATH, "feeds": NPZ, "threads": 2, "runtime": null, "spinning": true,
   "stop_spinning": true, "arena": true, "opt_level": "ORT_ENABLE_ALL", "warmup_max_s": 2.0}
      -> baseline_rss_bytes, session_create_ms, first_run_ms, warmup_runs, warmup_settled,
         runtime, runtime_settings (as the runtime reports them: threads, precision, ...),
         notes, affinity; for onnxruntime also session_config (the session options' settings)
  {"cmd": "round", "seconds": 0.1}   -> samples_ns: timed runs for about that long
  {"cmd": "memory"}                  -> peak_rss_bytes, baseline_rss_bytes
  {"cmd": "profile", "seconds": 1.0} -> ops: top operators by time (onnxruntime only: a separate
                                        profiling session)
  {"cmd": "quit"}
A failed request answers {"ok": false, "error": "..."}. A worker that loads nothing still answers
"memory": that is the baseline memory of Python and numpy (a runtime is imported by "load").
"""

import contextlib
import gc
import json
import math
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.isdir(os.path.join(HERE, "runtimes")):  # on a device: copied beside this file
    sys.path.insert(0, HERE)
    import runtimes
else:
    from edgekit import runtimes

# Warm-up: timings are grouped in blocks of about this long; warm-up ends when a block's median is
# no longer faster than the previous one by more than SETTLE_TOL (the caches, allocator and thread
# pool have stopped improving). Slower blocks are noise, not warm-up, so they do not extend it.
WARMUP_BLOCK_S = 0.05
SETTLE_TOL = 0.02
MIN_BLOCKS = 3


def peak_rss_bytes():
    """Peak resident memory of this process, from the kernel (VmHWM), else getrusage. getrusage's
    ru_maxrss survives fork+exec: a worker started by a parent holding torch would report the
    parent's peak."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS gives bytes, Linux KiB


def affinity():
    """Which CPUs this process and each of its threads (ORT's pool included) may run on. A thread
    allowed fewer CPUs than the process is pinned. None where the OS does not say (macOS)."""
    try:
        process = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    threads, pinned = 0, 0
    try:
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):
                cpus = os.sched_getaffinity(int(tid))
                threads += 1
                pinned += len(cpus) < len(process)
    except OSError:
        return {"process_cpus": process, "threads": None, "pinned_threads": None}
    return {"process_cpus": process, "threads": threads, "pinned_threads": pinned}


class Worker:
    def __init__(self):
        self.session = None
        self.feeds = None
        self.request = None
        self.baseline = peak_rss_bytes()

    def timed_run(self, session):
        feeds = self.feeds
        start = time.perf_counter_ns()
        session.run(feeds)
        return time.perf_counter_ns() - start

    def cmd_import(self, req):
        runtime = runtimes.runtime_for(req["model"], req.get("runtime"))
        ok, why = runtimes.module(runtime).available()
        if not ok:
            raise RuntimeError(why)
        return {"runtime": runtime}

    def cmd_load(self, req):
        self.request = req
        with np.load(req["feeds"], allow_pickle=False) as archive:
            arrays = {k: np.ascontiguousarray(archive[k]) for k in archive.files}
        runtime = runtimes.runtime_for(req["model"], req.get("runtime"))
        options = {}
        if runtime == "onnxruntime":
            options = {
                "spinning": req.get("spinning", True),
                "stop_spinning": req.get("stop_spinning", True),
                "arena": req.get("arena", True),
                "opt_level": req.get("opt_level", "ORT_ENABLE_ALL"),
            }
        ok, why = runtimes.module(runtime).available()  # imports the runtime, before the baseline
        if not ok:
            raise RuntimeError(why)
        # The model's share of memory is measured against this point: runtime and feeds loaded.
        self.baseline = peak_rss_bytes()
        start = time.perf_counter_ns()
        self.session = runtimes.load(req["model"], req.get("threads") or 0, runtime, **options)
        create_ns = time.perf_counter_ns() - start
        self.feeds, notes = runtimes.fit_feeds(self.session, arrays)
        first_ns = self.timed_run(self.session)
        runs, settled = self.warm_up(first_ns, float(req.get("warmup_max_s", 2.0)))
        reply = {
            "runtime": runtime,
            "runtime_settings": self.session.settings(),
            "notes": self.session.notes + notes,
            "affinity": affinity(),
            "baseline_rss_bytes": self.baseline,
            "session_create_ms": create_ns / 1e6,
            "first_run_ms": first_ns / 1e6,
            "warmup_runs": runs,
            "warmup_settled": settled,
        }
        if runtime == "onnxruntime":
            reply["session_config"] = runtimes.module(runtime).applied(self.session.opts)
        return reply

    def warm_up(self, first_ns, max_s):
        deadline = time.perf_counter() + max_s
        per_block = max(3, min(1000, math.ceil(WARMUP_BLOCK_S * 1e9 / max(first_ns, 1))))
        medians, runs = [], 0
        while time.perf_counter() < deadline:
            block = [self.timed_run(self.session) for _ in range(per_block)]
            runs += per_block
            medians.append(float(np.median(block)))
            if len(medians) >= MIN_BLOCKS and medians[-1] >= medians[-2] * (1 - SETTLE_TOL):
                return runs, True
            # first blocks include the cold ones: re-size from what a warm run costs now
            per_block = max(3, min(1000, math.ceil(WARMUP_BLOCK_S * 1e9 / max(medians[-1], 1))))
        return runs, False

    def cmd_round(self, req):
        session = self.session
        if session is None:
            raise RuntimeError("no model loaded")
        # One untimed run: waking this worker's threads (asleep since its last round, with
        # force_spinning_stop) and the process switch cost land here, not in the samples.
        session.run(self.feeds)
        budget_ns = int(float(req.get("seconds", 0.1)) * 1e9)
        samples = []
        gc.disable()  # a collection inside a timed run is Python's cost, not the model's
        try:
            begin = time.perf_counter_ns()
            while True:
                samples.append(self.timed_run(session))
                if time.perf_counter_ns() - begin >= budget_ns:
                    break
        finally:
            gc.enable()
        return {"samples_ns": samples}

    def cmd_memory(self, req):
        return {"peak_rss_bytes": peak_rss_bytes(), "baseline_rss_bytes": self.baseline}

    def cmd_profile(self, req):
        """Top operators by time, from a separate profiling session (profiling slows runs down,
        so it never touches the timed session). onnxruntime only."""
        if not hasattr(self.session, "profiling_session"):
            raise RuntimeError(f"no operator profile on {self.session.runtime}")
        session = self.session.profiling_session()
        deadline = time.perf_counter() + float(req.get("seconds", 1.0))
        runs = 0
        while runs < 3 or (time.perf_counter() < deadline and runs < 1000):
            session.run(None, self.feeds)
            runs += 1
        path = session.end_profiling()
        try:
            with open(path) as handle:
                events = json.load(handle)
        finally:
            os.remove(path)
            os.rmdir(os.path.dirname(path))
        by_op = {}
        for event in events:
            args = event.get("args") or {}
            if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
                op = args.get("op_name", "?")
                total, calls = by_op.get(op, (0, 0))
                by_op[op] = (total + int(event.get("dur", 0)), calls + 1)
        all_us = sum(t for t, _ in by_op.values()) or 1
        ops = [
            {"op_type": op, "total_us": t, "calls": c, "share": t / all_us, "per_run_us": t / runs}
            for op, (t, c) in sorted(by_op.items(), key=lambda kv: -kv[1][0])
        ]
        return {"runs": runs, "ops": ops[:10]}


def main():
    # Keep the protocol channel private: stray prints from native code go to stderr instead.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    worker = Worker()

    def send(message):
        proto.write(json.dumps(message) + "\n")
        proto.flush()

    send({"ok": True, "ready": True, "pid": os.getpid(), "baseline_rss_bytes": worker.baseline})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            if req.get("cmd") == "quit":
                send({"ok": True})
                break
            handler = getattr(worker, "cmd_" + str(req.get("cmd")), None)
            if handler is None:
                raise ValueError(f"unknown command {req.get('cmd')!r}")
            reply = handler(req)
            reply["ok"] = True
            send(reply)
        except Exception as exc:  # the parent turns this into the variant's error row
            send({"ok": False, "error": f"{type(exc).__name__}: {exc}".strip()})


if __name__ == "__main__":
    main()
