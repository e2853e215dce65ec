"""Output folders: published whole or not at all, never over an input, locked, and cleaned up
after runs that were stopped. Real CLI runs on real files; the mount tests need root."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import run_edgekit

from edgekit.errors import EdgekitError
from edgekit.fsutil import MANIFEST, output_folder
from models import matmul_model

QUICK = ("--min-time", "0.2", "--max-time", "0.4", "--int8", "none")


def _snapshot(folder: Path) -> dict[str, bytes]:
    """The files edgekit wrote, without its manifest of them."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != MANIFEST}


def _publish(out: Path, files: dict[str, str]) -> None:
    """An earlier run's output folder (with its manifest)."""
    with output_folder(out) as staging:
        for name, text in files.items():
            (staging / name).write_text(text)


def _leftovers(*folders: Path) -> list[str]:
    return [p.name for f in folders for p in f.iterdir() if p.name.startswith(".edgekit-")]


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """A model and a finished optimize run of it."""
    root = tmp_path_factory.mktemp("earlier")
    model = matmul_model(root / "tiny.onnx")
    out = root / "out"
    result = run_edgekit("optimize", model, "-o", out, "-q", *QUICK)
    assert result.returncode == 0, result.stderr
    return model, out


# ---- the publishing mechanism, in process ------------------------------------------------------


def test_a_failure_inside_leaves_the_old_folder_and_no_staging(tmp_path):
    out = tmp_path / "out"
    _publish(out, {"report.json": "old"})
    with pytest.raises(RuntimeError), output_folder(out) as staging:
        (staging / "report.json").write_text("new")
        (staging / "fp32.onnx").write_text("new")
        raise RuntimeError("a pass blew up")
    assert _snapshot(out) == {"report.json": b"old"}
    assert _leftovers(tmp_path) == []


def test_success_replaces_the_whole_set(tmp_path):
    out = tmp_path / "out"
    _publish(out, {"report.json": "old", "int8-old.onnx": "old variant, gone from the new run"})
    with output_folder(out) as staging:
        (staging / "report.json").write_text("new")
    assert _snapshot(out) == {"report.json": b"new"}
    assert _leftovers(tmp_path) == []


def test_refuses_a_folder_with_the_users_own_files(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    with pytest.raises(EdgekitError, match="did not write"), output_folder(out):
        pass
    assert (out / "thesis.tex").read_text() == "mine"


@pytest.mark.slow
def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom edgekit.fsutil import MANIFEST, output_folder\n"
            f"with output_folder({str(out)!r}):\n    print('locked', flush=True)\n    time.sleep(30)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(EdgekitError, match=f"pid {holder.pid}"), output_folder(out):
            pass
    finally:
        holder.kill()
        holder.wait()
    with output_folder(out) as staging:  # the kernel dropped the dead holder's lock
        (staging / "report.json").write_text("after")
    assert _snapshot(out) == {"report.json": b"after"}
    assert _leftovers(tmp_path) == []  # the killed run's staging folder was swept


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)])
    if done.returncode != 0:
        pytest.skip("mounting a tmpfs needs root")


@pytest.mark.slow
def test_an_output_folder_that_is_a_mount_point(tmp_path):
    """A container volume: nothing can be renamed over it, so files move in; no EXDEV."""
    out = tmp_path / "volume"
    _mount_tmpfs(out, "4m")
    try:
        _publish(out, {"report.json": "old"})
        with pytest.raises(RuntimeError), output_folder(out) as staging:
            (staging / "report.json").write_text("new")
            raise RuntimeError("stopped")
        assert _snapshot(out) == {"report.json": b"old"}
        with output_folder(out) as staging:
            (staging / "report.json").write_text("new")
            (staging / "fp32.onnx").write_text("model")
        assert _snapshot(out) == {"fp32.onnx": b"model", "report.json": b"new"}
    finally:
        subprocess.run(["umount", str(out)], check=True)


# ---- the real CLI --------------------------------------------------------------------------------


@pytest.mark.slow
def test_refuses_to_write_over_its_own_input(earlier):
    _, out = earlier
    before = _snapshot(out)
    result = run_edgekit("optimize", out / "fp32.onnx", "-o", out, *QUICK)
    assert result.returncode == 2, result.stderr
    assert "holds an input of this run" in result.stderr
    assert _snapshot(out) == before


@pytest.mark.slow
@pytest.mark.parametrize("target", ["/dev/null", "a-file", "/proc/edgekit-out"])
def test_an_unusable_output_folder_fails_before_the_work(earlier, tmp_path, target):
    model, _ = earlier
    if target == "a-file":
        target = tmp_path / "a-file"
        target.write_text("x")
    started = time.perf_counter()
    result = run_edgekit("optimize", model, "-o", target, *QUICK)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "-o" in result.stderr
    assert time.perf_counter() - started < 30  # refused up front, not after benchmarking


@pytest.mark.slow
def test_onnx_with_external_data_is_optimized(tmp_path):
    weights = {"save_as_external_data": True, "location": "ext.onnx.weights", "size_threshold": 0}
    model = matmul_model(tmp_path / "ext.onnx", **weights)
    assert (tmp_path / "ext.onnx.weights").is_file()
    out = tmp_path / "out"
    result = run_edgekit("optimize", model, "-o", out, "--json", *QUICK)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [v["name"] for v in report["variants"] if v["error"]] == []
    assert report["variants"][0]["latency_ms"]["p50"] > 0
    assert (out / "fp32.onnx").is_file()


def _optimize_until_staging(model: Path, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """`edgekit optimize` into tmp_path/out: (the process, out), returned running once its
    staging folder exists (killed when it never does)."""
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit.cli", "optimize", str(model), "-o", str(out), *QUICK],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    try:
        while not [p for p in out.parent.iterdir() if p.name.startswith(".edgekit-staging-")]:
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline
            time.sleep(0.05)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, out


@pytest.mark.slow
def test_sigterm_keeps_the_earlier_report_and_leaves_nothing(earlier, tmp_path):
    model, first = earlier
    shutil.copytree(first, tmp_path / "out")
    before = _snapshot(tmp_path / "out")
    proc, out = _optimize_until_staging(model, tmp_path)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr.read()
    assert _snapshot(out) == before
    assert _leftovers(tmp_path) == []


@pytest.mark.slow
def test_sigkill_leftovers_are_swept_by_the_next_run(earlier, tmp_path):
    proc, out = _optimize_until_staging(earlier[0], tmp_path)
    proc.kill()
    proc.wait()
    assert _leftovers(tmp_path)  # SIGKILL cannot be caught
    result = run_edgekit("optimize", earlier[0], "-o", out, "-q", *QUICK)
    assert result.returncode == 0, result.stderr
    assert _leftovers(tmp_path) == []


@pytest.mark.slow
def test_a_concurrent_run_into_the_same_folder_exits_2(earlier, tmp_path):
    model, _ = earlier
    first, out = _optimize_until_staging(model, tmp_path)
    try:
        second = run_edgekit("optimize", model, "-o", out, *QUICK)
        assert second.returncode == 2
        assert f"pid {first.pid}" in second.stderr
    finally:
        first.wait(timeout=120)
    assert first.returncode == 0
    assert json.loads((out / "report.json").read_text())["variants"]


@pytest.mark.slow
def test_a_full_disk_changes_nothing(earlier, tmp_path):
    model, _ = earlier
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "1m")
    try:
        out = disk / "out"
        result = run_edgekit("optimize", model, "-o", out, "-q", *QUICK)
        assert result.returncode == 0, result.stderr
        before = _snapshot(out)
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * (free - 4096))
        result = run_edgekit("optimize", model, "-o", out, *QUICK)
        assert result.returncode == 2, result.stderr
        assert "full" in result.stderr and "Traceback" not in result.stderr
        assert _snapshot(out) == before
        assert _leftovers(disk) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)
