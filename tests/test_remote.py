"""Benchmarking over SSH against real OpenSSH servers on 127.0.0.1: one device, a fleet of two,
an unreachable device, a device without onnxruntime, and a hostile model file name."""

from __future__ import annotations

import getpass
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import SSHD, free_port, run_edgekit, start_sshd

from edgekit import ssh
from edgekit.benchmark import BenchOptions, measure, remote
from edgekit.errors import EdgekitError
from models import tiny_model

pytestmark = [
    pytest.mark.slow,  # every test here talks to a real sshd
    pytest.mark.skipif(
        not Path(SSHD).exists() and not os.environ.get("CI"),
        reason="needs the OpenSSH server (sshd): apt-get install openssh-server (.ci/prepare.sh does)",
    ),
]
TINY = ["--min-time", "0.2", "--max-time", "0.5"]
HOSTILE = 'it\'s a "model" $(touch pwned) `touch pwned`; touch pwned.onnx'


@pytest.fixture(scope="module")
def servers(keys, tmp_path_factory):
    """Two sshd on two ports; stopped at teardown."""
    base = tmp_path_factory.mktemp("sshd")
    started = [start_sshd(keys, base / name) for name in ("a", "b")]
    yield [f"ssh://{getpass.getuser()}@127.0.0.1:{port}" for _, port in started]
    for proc, _ in started:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def remote_folders() -> set[str]:
    return {p.name for p in Path("/tmp").glob("edgekit.*")}


def bench(*args, env, cwd):
    return run_edgekit(
        "bench", *args, *TINY, "--remote-python", sys.executable, env=env, cwd=cwd, timeout=120
    )


# ---------------------------------------------------------------- targets and quoting


def test_parse_target_forms_and_refusals(tmp_path):
    t = ssh.parse_target("ssh://pi@raspberrypi.local:2222")
    assert (t.user, t.host, t.port, t.name) == (
        "pi",
        "raspberrypi.local",
        2222,
        "raspberrypi.local-2222",
    )
    assert ssh.parse_target("lab-pi5").host == "lab-pi5"  # an alias from ~/.ssh/config
    for bad in ("-oProxyCommand=touch x", "ssh://-oProxyCommand=x", "host name", "ssh://h/path"):
        with pytest.raises(EdgekitError):
            ssh.parse_target(bad)
    argv = ssh.parse_target("ssh://u@h:22").ssh("python3", "/tmp/e/worker.py", HOSTILE)
    # the destination follows `--`; the remote command is one string of quoted words
    assert argv[-3:-1] == ["--", "h"] and shlex.split(argv[-1])[-1] == HOSTILE

    lines = tmp_path / "fleet.txt"
    lines.write_text("# lab\nssh://127.0.0.1:1\n\nssh://127.0.0.1:1\npi\n")
    names = [t.name for t in ssh.unique_names(ssh.read_targets(lines))]
    assert names == ["127.0.0.1-1", "127.0.0.1-1-2", "pi"]
    toml = tmp_path / "fleet.toml"
    toml.write_text(
        '[pi4]\ntarget = "ssh://pi@pi4"\n[pi5]\ntarget = "pi5"\npython = "/v/bin/python3"\n'
    )
    fleet = ssh.read_targets(toml)
    assert [(t.name, t.python) for t in fleet] == [("pi4", "python3"), ("pi5", "/v/bin/python3")]


# ---------------------------------------------------------------- real sshd


def test_bench_on_a_device_with_a_hostile_file_name(servers, ssh_env, tmp_path):
    models = tmp_path / "my models"
    models.mkdir()
    model = tiny_model(models / f"{HOSTILE}.onnx")
    before = remote_folders()
    out = tmp_path / "out"
    done = bench(model, "--target", servers[0], "-o", out, env=ssh_env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    (variant,) = report["variants"]
    assert variant["error"] is None and variant["latency_ms"]["n"] > 0
    assert variant["memory"]["peak_rss_bytes"] > 0
    device = report["device"]
    assert device["target"] == servers[0] and device["onnxruntime"] and device["load_avg_after"]
    # nothing ran the `touch`es in the name: not here, not in the remote home, not in /tmp
    made = [*tmp_path.rglob("pwned*"), *Path.home().glob("pwned*"), *Path("/tmp").glob("pwned*")]
    assert made == []
    assert remote_folders() <= before  # the device's temporary folder is gone


def test_fleet_file_runs_devices_concurrently(servers, ssh_env, tmp_path, monkeypatch):
    model = tiny_model(tmp_path / "tiny.onnx")
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f'[left]\ntarget = "{servers[0]}"\n[right]\ntarget = "{servers[1]}"\n')
    out = tmp_path / "fleet"
    done = bench(model, "--targets", fleet, "-o", out, env=ssh_env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for name in ("left", "right"):
        report = json.loads((out / name / "report.json").read_text())
        assert report["variants"][0]["latency_ms"]["n"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert [d["name"] for d in summary["devices"]] == ["left", "right"]
    assert summary["failed"] == 0 and summary["baseline"] == "left"
    (comparison,) = summary["comparisons"]
    assert comparison["rows"][0]["latency"]["ratio"] > 0
    assert "## edgekit fleet" in (out / "summary.md").read_text()

    # concurrently: the two devices' benchmarks overlap in time
    spans = {}

    def timed(target):
        start = time.monotonic()
        result = measure({"tiny": model}, {"x": np.ones((1, 16), np.float32)},
                         BenchOptions(min_time=0.2, max_time=0.5), target=target)  # fmt: skip
        spans[target.name] = (start, time.monotonic())
        return result

    for key, value in ssh_env.items():  # measure() runs in this process here
        monkeypatch.setenv(key, value)
    targets = [
        ssh.parse_target(s, sys.executable, name=n) for s, n in zip(servers, "ab", strict=True)
    ]
    outcomes = remote.run_fleet(targets, timed, lambda t, msg: pytest.fail(msg))
    assert all(o.error is None for o in outcomes)
    assert max(start for start, _ in spans.values()) < min(end for _, end in spans.values())


def test_unreachable_and_silent_devices_are_error_rows_and_the_other_finishes(
    servers, ssh_env, tmp_path
):
    model = tiny_model(tmp_path / "tiny.onnx")
    closed = f"ssh://127.0.0.1:{free_port()}"  # nothing listens there
    with socket.socket() as silent:  # accepts connections, never says a word: a hung device
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        mute = f"ssh://127.0.0.1:{silent.getsockname()[1]}"
        out = tmp_path / "fleet"
        done = bench(model, "--target", servers[1], "--target", closed, "--target", mute,
                     "--ssh-option", "ConnectTimeout=2", "-o", out, env=ssh_env,
                     cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1
    assert "Connection refused" in done.stderr and "timed out" in done.stderr
    port = {t: t.rsplit(":", 1)[1] for t in (servers[1], closed, mute)}
    ok = json.loads((out / f"127.0.0.1-{port[servers[1]]}" / "report.json").read_text())
    assert ok["variants"][0]["error"] is None and ok["variants"][0]["latency_ms"]["n"] > 0
    for target in (closed, mute):
        failed = json.loads((out / f"127.0.0.1-{port[target]}" / "report.json").read_text())
        assert "ssh failed" in failed["variants"][0]["error"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == 2 and [bool(d["error"]) for d in summary["devices"]] == [
        False, True, True,
    ]  # fmt: skip
    assert all(c["rows"][0]["failed"] for c in summary["comparisons"])  # the error rows


def test_device_without_onnxruntime_or_python_says_how_to_fix(servers, ssh_env, tmp_path):
    model = tiny_model(tmp_path / "tiny.onnx")
    bare = tmp_path / "bare-python"
    # the same interpreter, told to ignore site-packages: no numpy, no onnxruntime
    bare.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -I -S "$@"\n')
    bare.chmod(0o755)
    common = ["bench", model, "--target", servers[0], *TINY, "-o", tmp_path / "out"]
    done = run_edgekit(*common, "--remote-python", bare, env=ssh_env, cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert "python3 -m pip install onnxruntime numpy" in done.stderr
    assert "numpy and onnxruntime" in done.stderr
    done = run_edgekit(*common, "--remote-python", "/no/such/python3", env=ssh_env, cwd=tmp_path,
                       timeout=60)  # fmt: skip
    assert done.returncode == 2 and "was not found on the device" in done.stderr
    # optimize checks the device first, before any exporting
    done = run_edgekit("optimize", model, "--target", servers[0], "--remote-python", bare,
                       "-o", tmp_path / "opt", env=ssh_env, cwd=tmp_path, timeout=60)  # fmt: skip
    assert done.returncode == 2 and "python3 -m pip install onnxruntime numpy" in done.stderr
    assert not (tmp_path / "opt").exists()


def test_optimize_makes_variants_here_and_times_them_on_the_device(servers, ssh_env, tmp_path):
    model = tiny_model(tmp_path / "tiny.onnx")
    out = tmp_path / "opt"
    done = run_edgekit(
        "optimize", model, "--target", servers[1], "--remote-python", sys.executable,
        "--int8", "none", *TINY, "-o", out, env=ssh_env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["device"]["target"] == servers[1]
    assert {v["name"] for v in report["variants"]} >= {"fp32", "simplified"}
    assert all(v["latency_ms"]["n"] > 0 for v in report["variants"] if not v["error"])
