"""Between-run stability mechanisms: idle workers stop spinning, the report records the ORT settings
the workers really used and where their threads ran, and a whole-machine shift becomes a warning.
No timing assertions: CPU time of an idle process is counted, not compared between models."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import save_graph
from onnx import TensorProto, helper, numpy_helper

from edgekit import stats
from edgekit.benchmark import BenchOptions, measure, runner, shift_warning, what_to_do

pytestmark = pytest.mark.slow  # every test here starts a process or exports with torch


def matmul_model(path: Path) -> Path:
    """x[1,256] @ W[256,256] eight times: enough work for a 2-thread pool to wake up."""

    rng = np.random.default_rng(0)
    inits, nodes, prev = [], [], "x"
    for i in range(8):
        w = numpy_helper.from_array(
            0.05 * rng.standard_normal((256, 256)).astype(np.float32), f"w{i}"
        )
        inits.append(w)
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    graph = helper.make_graph(
        nodes, "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 256])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)], inits,
    )  # fmt: skip
    return save_graph(graph, path)


@pytest.fixture
def setup(tmp_path):
    feeds = {"x": np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32)}
    npz = tmp_path / "feeds.npz"
    np.savez(npz, **feeds)
    return matmul_model(tmp_path / "mm.onnx"), feeds, npz


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_idle_worker_stops_spinning_after_its_round(setup):
    """With ORT's default spinning an idle worker burns CPU after its round (its pool threads
    spin-wait for work that never comes); with force_spinning_stop it burns none."""
    model, _, npz = setup
    idle = {}
    for stop in (False, True):
        worker = runner.Worker()
        try:
            reply = worker.ask("load", model=str(model), feeds=str(npz), threads=2,
                               spinning=True, stop_spinning=stop, warmup_max_s=0.2)  # fmt: skip
            config = reply["session_config"]
            assert config["session.force_spinning_stop"] == ("1" if stop else "0")
            assert config["session.intra_op.allow_spinning"] == "1"
            spent = []
            for _ in range(3):
                worker.ask("round", seconds=0.05)
                before = _cpu_seconds(worker.proc.pid)
                time.sleep(0.3)
                spent.append(_cpu_seconds(worker.proc.pid) - before)
            # the quietest round for the asleep case, the busiest for the spinning one: another
            # process may keep a spinning thread off the CPU for one round, not for three
            idle[stop] = min(spent) if stop else max(spent)
        finally:
            worker.close()
    assert idle[True] <= 0.01  # asleep: at most a tick of the clock
    assert idle[False] > idle[True]  # spinning: the threads kept a core busy for a while


def test_settings_are_read_back_from_the_workers(setup):
    model, feeds, _ = setup
    tiny = dict(min_time=0.05, max_time=0.2, threads=[1])
    result = measure({"a": model}, feeds, BenchOptions(**tiny))
    s = result.settings
    assert s["allow_spinning"] is True and s["force_spinning_stop"] is True
    assert s["graph_optimization_level"] == "ORT_ENABLE_ALL"
    assert s["execution_mode"] == "ORT_SEQUENTIAL" and s["arena"] is True
    assert s["cpus_allowed"] == sorted(os.sched_getaffinity(0))
    assert s["threads_pinned"] is False  # edgekit does not pin, nor does ORT with explicit threads
    off = measure({"a": model}, feeds, BenchOptions(spinning=False, stop_spinning=False, **tiny))
    assert off.settings["allow_spinning"] is False and off.settings["force_spinning_stop"] is False
    stability = result.device["stability"]
    assert set(stability) >= {"assessed", "shifted", "shift", "at_cycle", "cycles", "p_value"}


def test_shift_warning_names_the_size_and_the_way_out():
    rng = np.random.default_rng(2)
    speed = np.where(np.arange(20) < 8, 1.0, 1.4)
    rounds = {
        n: [b * s * rng.lognormal(0, 0.03, 20) for s in speed] for n, b in (("a", 1), ("b", 3))
    }
    shift = stats.machine_shift(rounds)
    assert shift["shifted"]
    text = shift_warning(shift)
    assert (
        "latency rose by about 40%" in text
        and "cycle 9 of 20" in text
        and "2 of 2 models alike" in text
    )
    # what to do about it is said once, after all the warnings on the timings
    assert "--normalize" in what_to_do(True, False, BenchOptions())
