"""An output folder is replaced only when edgekit knows every file in it (its manifest: sizes and
sha256); a user's file, a changed file or a link makes it refuse, naming them, before any work.
-o as a symlink is resolved first. An interrupted or failed run leaves every file byte-identical.
onnxruntime's quantization tools leave nothing in the working directory."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import run_edgekit, save_graph
from onnx import TensorProto, helper, numpy_helper

from edgekit.errors import EdgekitError
from edgekit.fsutil import MANIFEST, output_folder, sha256_file
from edgekit.report.schema import Report, Variant
from edgekit.report.write import write_outputs
from models import matmul_model

QUICK = ("--min-time", "0.2", "--max-time", "0.4", "--int8", "none")


def tree(root: Path) -> dict[str, str]:
    """Every entry under `root` (links not followed): a file's sha256, a link's target, "dir"."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = "-> " + os.readlink(path)
        elif path.is_dir():
            found[rel] = "dir"
        else:
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def publish(out: Path, files: dict[str, bytes]) -> None:
    """What an earlier edgekit run left: the files and their manifest."""
    with output_folder(out) as staging:
        for name, data in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(data)


def refused(out: Path, *names: str) -> str:
    with pytest.raises(EdgekitError) as caught, output_folder(out) as staging:
        (staging / "report.json").write_text("must never be published")
    message = str(caught.value)
    for name in names:
        assert name in message, message
    return message


# ---- what edgekit knows it wrote ---------------------------------------------------------------


def test_a_users_own_files_are_never_replaced(tmp_path):
    out = tmp_path / "out"
    publish(out, {"report.json": b"{}", "fp32.onnx": b"model", "pi4/report.json": b"{}"})
    (out / "resnet50.onnx").write_bytes(b"the user's model")
    (out / "big.onnx.data").write_bytes(b"its weights")
    (out / "pi4" / "notes.txt").write_text("mine")
    (out / "empty").mkdir()
    before = tree(tmp_path)
    message = refused(out, "resnet50.onnx", "big.onnx.data", "pi4/notes.txt", "empty/")
    assert "did not write" in message and "choose a new or empty folder with -o" in message
    assert "fp32.onnx" not in message  # edgekit's own files are not listed
    assert tree(tmp_path) == before


def test_a_file_changed_since_edgekit_wrote_it_is_not_edgekits_any_more(tmp_path):
    out = tmp_path / "out"
    publish(out, {"report.json": b'{"a": 1}', "fp32.onnx": b"model"})
    (out / "report.json").write_bytes(b'{"a": 2}')  # same size: only the hash tells
    (out / "fp32.onnx").write_bytes(b"model, retrained")
    before = tree(tmp_path)
    message = refused(out, "changed since edgekit wrote them: fp32.onnx, report.json")
    assert "did not write" not in message
    assert tree(tmp_path) == before


def test_a_link_in_the_folder_is_not_edgekits(tmp_path):
    out = tmp_path / "out"
    publish(out, {"report.json": b"{}"})
    (tmp_path / "elsewhere.onnx").write_bytes(b"x")
    (out / "fp32.onnx").symlink_to(tmp_path / "elsewhere.onnx")
    before = tree(tmp_path)
    refused(out, "did not write: fp32.onnx")
    assert tree(tmp_path) == before


def test_file_names_in_the_message_are_escaped(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "evil\x1b[2J\nname").write_text("x")
    message = refused(out, "evil\\x1b[2J\\nname")
    assert "\x1b" not in message and "\n" not in message


def test_edgekits_own_folder_is_replaced_whole(tmp_path):
    out = tmp_path / "out"
    publish(
        out, {"report.json": b"old", "int8-old.onnx": b"gone next run", "pi4/report.json": b"x"}
    )
    out.chmod(0o750)
    with output_folder(out) as staging:
        (staging / "report.json").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "report.json"]
    assert (out.stat().st_mode & 0o777) == 0o750  # the folder keeps its permissions
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["files"] == [
        {"path": "report.json", "size_bytes": 3, "sha256": sha256_file(out / "report.json")}
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging, no lock left


@pytest.mark.parametrize("exists", [False, True])
def test_a_missing_or_empty_folder_is_fine(tmp_path, exists):
    out = tmp_path / "a" / "b"
    if exists:
        out.mkdir(parents=True)
    with output_folder(out) as staging:
        (staging / "report.json").write_text("new")
    assert (out / "report.json").read_text() == "new"


def _old_report_folder(out: Path) -> None:
    """A folder as edgekit wrote it before manifests: the report names its variants' files."""
    out.mkdir()
    matmul_model(out / "fp32.onnx")
    row = Variant("fp32", file="fp32.onnx", sha256=sha256_file(out / "fp32.onnx"))
    row.size_bytes = (out / "fp32.onnx").stat().st_size
    write_outputs(Report("optimize", [row]), out)


def test_a_folder_from_before_manifests_is_judged_by_its_report(tmp_path):
    out = tmp_path / "out"
    _old_report_folder(out)
    with output_folder(out) as staging:
        (staging / "report.json").write_text("new")
    assert (out / "report.json").read_text() == "new"

    old = tmp_path / "old"
    _old_report_folder(old)
    (old / "resnet50.onnx").write_bytes(b"the user's")
    before = tree(tmp_path)
    refused(old, "did not write: resnet50.onnx")
    (old / "resnet50.onnx").unlink()
    (old / "fp32.onnx").write_bytes((old / "fp32.onnx").read_bytes() + b"\0")
    refused(old, "changed since edgekit wrote them: fp32.onnx")
    assert set(tree(tmp_path)) == set(before) - {"old/resnet50.onnx"}


def test_files_added_during_the_run_stop_the_publishing(tmp_path):
    out = tmp_path / "out"
    publish(out, {"report.json": b"old"})
    changed = pytest.raises(EdgekitError, match="changed while edgekit ran")
    with changed, output_folder(out) as staging:
        (staging / "report.json").write_text("new")
        (out / "thesis.tex").write_text("saved here meanwhile")
    assert (out / "thesis.tex").read_text() == "saved here meanwhile"
    assert (out / "report.json").read_text() == "old"


# ---- -o as a link, long names --------------------------------------------------------------------


def test_a_link_to_a_folder_stays_a_link_to_the_new_folder(tmp_path):
    real = tmp_path / "disk" / "results"
    publish(real, {"report.json": b"old"})
    link = tmp_path / "results"
    link.symlink_to(real)
    with output_folder(link) as staging:
        (staging / "report.json").write_text("new")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert (real / "report.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "results"]  # nothing hidden
    assert sorted(p.name for p in real.parent.iterdir()) == ["results"]


def test_a_dangling_link_gets_its_target_made(tmp_path):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "not-yet" / "results")
    with output_folder(link) as staging:
        (staging / "report.json").write_text("new")
    assert link.is_symlink()
    assert (tmp_path / "not-yet" / "results" / "report.json").read_text() == "new"


def test_a_link_loop_is_refused(tmp_path):
    (tmp_path / "out").symlink_to(tmp_path / "out")
    with pytest.raises(EdgekitError, match="leads back to itself"), output_folder(tmp_path / "out"):
        pass


def test_a_long_folder_name(tmp_path):
    out = tmp_path / ("r" * 250)
    for text in ("first", "second"):
        with output_folder(out) as staging:
            (staging / "report.json").write_text(text)
    assert (out / "report.json").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


@pytest.mark.slow
def test_two_spellings_of_one_folder_take_one_lock(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "link").symlink_to(out)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom edgekit.fsutil import output_folder\n"
         f"with output_folder({str(out)!r}):\n    print('locked', flush=True)\n    time.sleep(30)\n"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        for spelling in (tmp_path / "link", tmp_path / "link" / ".." / "out"):
            with pytest.raises(EdgekitError, match=f"pid {holder.pid}"), output_folder(spelling):
                pass
    finally:
        holder.kill()
        holder.wait()


# ---- the real CLI ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """A model and a finished optimize run of it, copied afresh by each test."""
    root = tmp_path_factory.mktemp("earlier")
    model = matmul_model(root / "tiny.onnx")
    result = run_edgekit("optimize", model, "-o", root / "out", "-q", *QUICK)
    assert result.returncode == 0, result.stderr
    return root


def _copy(earlier: Path, tmp_path: Path) -> tuple[Path, Path]:
    shutil.copy(earlier / "tiny.onnx", tmp_path / "tiny.onnx")
    shutil.copytree(earlier / "out", tmp_path / "out")
    return tmp_path / "tiny.onnx", tmp_path / "out"


@pytest.mark.slow
@pytest.mark.parametrize("command", ["optimize", "bench"])
def test_the_cli_refuses_a_folder_with_the_users_models_before_the_work(earlier, tmp_path, command):
    model, out = _copy(earlier, tmp_path)
    (out / "resnet50.onnx").write_bytes(b"the user's own model")
    (out / "big.onnx.data").write_bytes(b"\0" * 4096)
    before = tree(tmp_path)
    started = time.perf_counter()
    result = run_edgekit(
        command, model, "-o", out, *(QUICK if command == "optimize" else QUICK[:4])
    )
    assert result.returncode == 2, result.stderr
    assert "resnet50.onnx" in result.stderr and "big.onnx.data" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.perf_counter() - started < 20  # refused up front
    assert tree(tmp_path) == before


@pytest.mark.slow
def test_the_cli_writes_through_a_dangling_link(earlier, tmp_path):
    model = earlier / "tiny.onnx"
    (tmp_path / "out").symlink_to(tmp_path / "results")
    result = run_edgekit("bench", model, "-o", tmp_path / "out", "-q", *QUICK[:4])
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out").is_symlink()
    assert json.loads((tmp_path / "results" / "report.json").read_text())["variants"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "results"]


def _start(model: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "edgekit.cli", "optimize", str(model), "-o", str(out), *QUICK,
         *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _wait_for_work(parent: Path, proc: subprocess.Popen) -> None:
    """Until the run has written into its staging folder (the export is done)."""
    deadline = time.time() + 60
    while not list(parent.glob(".edgekit-staging-*/fp32.onnx")):
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGKILL", "failure"])
def test_an_interrupted_or_failed_run_changes_no_file(earlier, tmp_path, how):
    model, out = _copy(earlier, tmp_path)
    (tmp_path / "notes.txt").write_text("the user's, beside the folder")
    before = tree(tmp_path)
    if how == "failure":  # fails after the export, inside the staging folder
        proc = _start(model, out, "--primary-output", "no-such-output")
    else:
        proc = _start(model, out)
        _wait_for_work(tmp_path, proc)
        proc.send_signal(getattr(signal, how))
    proc.wait(timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr.read()
    after = tree(tmp_path)
    if how == "SIGKILL":  # cannot be caught: its staging folder is left, and swept next run
        staging = {k for k in after if k.startswith(".edgekit-staging-")}
        assert staging
        after = {k: v for k, v in after.items() if k not in staging}
        after.pop(next(k for k in after if k.startswith(".edgekit-lock-")), None)
    assert after == before


# ---- onnxruntime's temporary files --------------------------------------------------------------


def incomplete_shapes_model(path: Path) -> Path:
    """MatMul-heavy, and onnxruntime's symbolic shape inference gives up on it (two batch axes
    named differently meet in an Add): that is when it saves sym_shape_infer_temp.onnx and a
    uuid-named .data file into the current directory."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(size=(32, 32)).astype(np.float32) / 6, f"w{i}")
               for i in range(4)]  # fmt: skip
    nodes = [helper.make_node("Add", ["x", "pos"], ["h0"])]
    for i in range(4):
        nodes += [helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"m{i}"]),
                  helper.make_node("Relu", [f"m{i}"], [f"h{i + 1}"])]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "incomplete",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 32]),
         helper.make_tensor_value_info("pos", TensorProto.FLOAT, ["n", 8, 32])],
        [helper.make_tensor_value_info("h4", TensorProto.FLOAT, [None, 8, 32])],
        weights,
    )  # fmt: skip
    return save_graph(graph, path)


@pytest.mark.slow
def test_static_int8_leaves_nothing_in_a_read_only_working_directory(tmp_path):
    """From a read-only CWD (a read-only bind mount: root ignores permissions) nothing can be
    written there; the note shows onnxruntime's symbolic shape inference got as far as saving its
    temporary model (elsewhere), and the temporary folder is empty afterwards."""
    model = incomplete_shapes_model(tmp_path / "enc.onnx")
    cwd, temp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    temp.mkdir()
    (cwd / "mine.txt").write_text("x")
    command = [sys.executable, "-m", "edgekit.cli", "optimize", str(model), "-o",
               str(tmp_path / "out"), "--json", "--min-time", "0.2", "--max-time", "0.4"]  # fmt: skip
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && cd "$0" && exec "$@"'
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, str(cwd), *command],
        capture_output=True,
        text=True,
        env={**os.environ, "TMPDIR": str(temp)},
        timeout=300,
    )
    if "mount" in done.stderr and done.returncode != 0 and not done.stdout:
        pytest.skip(f"a read-only bind mount needs root: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    rows = {v["name"]: v for v in json.loads(done.stdout)["variants"]}
    assert rows["int8-static"]["error"] is None
    notes = " ".join(rows["int8-static"]["notes"])
    assert "Incomplete symbolic shape inference" in notes  # not "Read-only file system"
    assert sorted(p.name for p in cwd.iterdir()) == ["mine.txt"]
    # onnxruntime itself keeps a `.ses` marker in TMPDIR from `import onnxruntime` on
    assert [p.name for p in temp.iterdir() if p.name != ".ses"] == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_folder_named_like_the_manifest_is_not_edgekits(tmp_path):
    out = tmp_path / "out"
    publish(out, {"report.json": b"{}"})
    (out / MANIFEST).unlink()
    (out / MANIFEST).mkdir()
    (out / MANIFEST / "thesis.tex").write_text("mine")
    before = tree(tmp_path)
    refused(out, f"did not write: {MANIFEST}/")
    assert tree(tmp_path) == before
