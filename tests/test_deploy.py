"""`edgekit deploy` against a real sshd on 127.0.0.1: deploy, infer through the printed URL and
through the SSH tunnel, --status, --stop, the systemd unit, and a device without the serve
extra. The "device" Python is this venv's, with this checkout on its path."""

from __future__ import annotations

import getpass
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, SSHD, free_port, import_blocker, run_edgekit, start_sshd
from serve_helpers import Server, http, output_folder

tritonclient_http = pytest.importorskip("tritonclient.http")
pytestmark = [
    pytest.mark.slow,  # every test here talks to a real sshd
    pytest.mark.skipif(
        not Path(SSHD).exists() and not os.environ.get("CI"),
        reason="needs the OpenSSH server (sshd): apt-get install openssh-server (.ci/prepare.sh does)",
    ),
]


@pytest.fixture(scope="module")
def device(keys, tmp_path_factory):
    proc, port = start_sshd(keys, tmp_path_factory.mktemp("sshd") / "run")
    yield f"ssh://{getpass.getuser()}@127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def device_python(folder: Path, block: tuple[str, ...] = ()) -> Path:
    """A python3 for the device: this venv with this checkout importable; `block` modules fail
    to import, as if not installed."""
    folder.mkdir(parents=True, exist_ok=True)
    pythonpath = import_blocker(folder, block) if block else str(REPO)
    script = folder / "python3"
    script.write_text(f'#!/bin/sh\nPYTHONPATH={pythonpath} exec {sys.executable} "$@"\n')
    script.chmod(0o755)
    return script


def gone(pid: int) -> bool:
    """Not running: no such process, or a zombie (the launcher that started it has exited, and
    a container's init may not reap orphans)."""
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def infer(hostport: str, model: str, x: np.ndarray) -> np.ndarray:
    client = tritonclient_http.InferenceServerClient(hostport)
    tensor = tritonclient_http.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor]).as_numpy("y")


def test_deploy_infer_status_stop(device, ssh_env, tmp_path):
    folder = output_folder(tmp_path / "digits.edgekit")
    python = device_python(tmp_path / "py")
    remote_dir = tmp_path / "device home"  # a space on purpose: paths travel quoted
    port = free_port()
    common = ["--target", device, "--remote-python", python, "--remote-dir", remote_dir]
    unit = tmp_path / "digits.service"
    done = run_edgekit("deploy", folder, *common, "--port", port, "--systemd-unit", unit,
                       env=ssh_env, timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stderr
    try:
        check_deployment(done, folder, common, unit, remote_dir, port, ssh_env)
    finally:  # never leave a server behind, also when a check failed
        pidfile = remote_dir / "digits" / "serve.pid"
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGTERM)


def check_deployment(done, folder, common, unit, remote_dir, port, ssh_env):
    url = re.search(r"URL on the device: (http://\S+)", done.stdout)[1]
    assert url == f"http://127.0.0.1:{port}"
    on_device = remote_dir / "digits"
    assert (on_device / "model" / "int8-static.onnx").is_file()
    assert (on_device / "serve.pid").is_file() and (on_device / "serve.log").is_file()

    # the printed URL answers (the device is this machine), with the deployment's name
    x = np.random.default_rng(0).uniform(-1, 1, (2, 16)).astype(np.float32)
    import onnxruntime as ort

    expected = ort.InferenceSession(str(folder / "int8-static.onnx")).run(None, {"x": x})[0]
    np.testing.assert_array_equal(infer(url.removeprefix("http://"), "digits", x), expected)

    # through the SSH tunnel that --forward keeps open
    local = free_port()
    tunnel = subprocess.Popen(
        [sys.executable, "-m", "edgekit.cli", "deploy", "--forward", str(local), *map(str, common),
         "--name", "digits"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **ssh_env},
    )  # fmt: skip
    try:
        line = tunnel.stdout.readline()
        assert line.startswith(f"URL: http://127.0.0.1:{local}"), line + tunnel.stderr.read()
        np.testing.assert_array_equal(infer(f"127.0.0.1:{local}", "digits", x), expected)
    finally:
        tunnel.send_signal(signal.SIGTERM)
        assert tunnel.wait(timeout=30) == 0
    with pytest.raises(urllib.error.URLError):  # the tunnel is gone with it
        http(f"http://127.0.0.1:{local}/v2/health/live")

    status = run_edgekit("deploy", *common, "--name", "digits", "--status", env=ssh_env)
    assert status.returncode == 0, status.stderr
    assert "running, pid" in status.stdout
    success = re.search(
        r'edgekit_requests_total\{model="digits",outcome="success"\} (\d+)', status.stdout
    )
    assert success and int(success[1]) == 2, status.stdout
    assert "process_resident_memory_bytes" in status.stdout

    text = unit.read_text()
    assert "ExecStart=" in text and "-m edgekit.cli serve model --variant int8-static" in text
    assert f'WorkingDirectory="{on_device}"' in text
    assert (on_device / "edgekit-digits.service").read_text() == text
    assert "systemctl enable --now edgekit-digits.service" in done.stdout

    pid = int((on_device / "serve.pid").read_text())
    stop = run_edgekit("deploy", *common, "--name", "digits", "--stop", env=ssh_env, timeout=120)
    assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stderr
    assert gone(pid)
    again = run_edgekit("deploy", *common, "--name", "digits", "--status", env=ssh_env)
    assert again.returncode == 1 and "not running" in again.stdout


def test_deploy_on_every_address_with_an_api_key(device, ssh_env, tmp_path):
    folder = output_folder(tmp_path / "digits.edgekit")
    python = device_python(tmp_path / "py")
    remote_dir, port = tmp_path / "dev", free_port()
    key = tmp_path / "key"
    key.write_text("k3y-for-the-pi\n")
    key.chmod(0o644)  # as users leave it: the copy on the device must still be private
    common = ["--target", device, "--remote-python", python, "--remote-dir", remote_dir]
    done = run_edgekit("deploy", folder, *common, "--host", "0.0.0.0", "--port", port,
                       "--api-key-file", key, env=ssh_env, timeout=180)  # fmt: skip
    pidfile = remote_dir / "digits" / "serve.pid"
    try:
        assert done.returncode == 0, done.stderr
        assert f"URL: http://127.0.0.1:{port}" in done.stdout  # the device's address
        assert (remote_dir / "digits" / "api-key").stat().st_mode & 0o077 == 0
        url = f"http://127.0.0.1:{port}/v2/models/digits/infer"
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0] * 16}]}
        assert http(url, body)[0] == 401
        assert http(url, body, {"Authorization": "Bearer k3y-for-the-pi"})[0] == 200
        status = run_edgekit("deploy", *common, "--name", "digits", "--status", env=ssh_env)
        assert status.returncode == 0 and "running, pid" in status.stdout, status.stderr
        assert re.search(r'outcome="success"\} 1\b', status.stdout), status.stdout  # via the key
        stop = run_edgekit("deploy", *common, "--name", "digits", "--stop", env=ssh_env)
        assert stop.returncode == 0, stop.stderr
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGTERM)


def test_device_without_the_serve_extra_gets_the_pip_line(device, ssh_env, tmp_path):
    folder = output_folder(tmp_path / "digits.edgekit")
    python = device_python(tmp_path / "py", block=("uvicorn", "starlette"))
    done = run_edgekit("deploy", folder, "--target", device, "--remote-python", python,
                       "--remote-dir", tmp_path / "dev", env=ssh_env, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "lacks uvicorn, starlette" in done.stderr
    assert "-m pip install 'edgekit[serve]'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "dev").exists()  # nothing was copied


def test_bad_deployment_name_and_nothing_deployed(device, ssh_env, tmp_path):
    folder = output_folder(tmp_path / "m.edgekit")
    done = run_edgekit("deploy", folder, "--target", device, "--name", "../x; rm -rf ~",
                       env=ssh_env)  # fmt: skip
    assert done.returncode == 2 and "deployment name" in done.stderr
    python = device_python(tmp_path / "py")
    done = run_edgekit("deploy", "--status", "--target", device, "--name", "never",
                       "--remote-python", python, "--remote-dir", tmp_path / "d", env=ssh_env)  # fmt: skip
    assert done.returncode == 2 and "nothing is deployed" in done.stderr, done.stderr


def test_deploy_on_a_port_another_server_holds_exits_2_naming_it(device, ssh_env, tmp_path):
    """Server A answers on the port: B's server cannot listen, and deploy must not take A's
    answer for B's."""
    folder = output_folder(tmp_path / "b.edgekit")
    other = Server(folder, "--variant", "fp32", "--name", "a")
    try:
        port = other.hostport.rsplit(":", 1)[1]
        done = run_edgekit("deploy", folder, "--target", device, "--port", port,
                           "--remote-python", device_python(tmp_path / "py"),
                           "--remote-dir", tmp_path / "dev", env=ssh_env, timeout=180)  # fmt: skip
        assert done.returncode == 2, done.stdout + done.stderr
        assert "serving" not in done.stdout
        assert "address already in use" in done.stderr.lower()
        assert f"it is used by pid {other.proc.pid} (" in done.stderr, done.stderr
        assert http(f"{other.url}/v2/models/a")[0] == 200  # A is untouched
    finally:
        assert other.stop() == 0


def test_the_systemd_unit_quotes_every_field():
    from edgekit.deploy.systemd import systemd_unit

    nasty = "x\nExecStartPre=/bin/touch /tmp/pwned"
    unit = systemd_unit(
        "digits", "/usr/bin/python3", "/home/pi/my dir", ["--variant", nasty, "--shadow", "a%n$HOME"], "pi"
    )  # fmt: skip
    lines = unit.splitlines()
    assert [line.split("=")[0] for line in lines if "=" in line] == [
        "Description", "After", "Wants", "User", "WorkingDirectory", "ExecStart", "Restart",
        "KillSignal", "TimeoutStopSec", "WantedBy",
    ]  # fmt: skip
    exec_start = next(line for line in lines if line.startswith("ExecStart="))
    assert '"x\\x0aExecStartPre=/bin/touch /tmp/pwned"' in exec_start
    assert '"a%%n$$HOME"' in exec_start or "a%%n$$HOME" in exec_start


def test_a_report_with_a_crafted_variant_name_is_refused(tmp_path):
    folder = output_folder(tmp_path / "m.edgekit")
    report = json.loads((folder / "report.json").read_text())
    nasty = "int8\nExecStartPre=/bin/touch /tmp/pwned"
    for row in report["variants"]:
        if row["name"] == "int8-static":
            row["name"] = nasty
    report["recommendation"]["variant"] = nasty
    (folder / "report.json").write_text(json.dumps(report))
    done = run_edgekit("deploy", folder, "--target", "ssh://pi@127.0.0.1:9", timeout=60)
    assert done.returncode == 2 and "The report's variant name" in done.stderr, done.stderr


def test_the_launcher_goes_to_the_device_alone_and_needs_only_the_standard_library(tmp_path):
    """launcher.py runs there as a script, before (and without) edgekit's package on its path."""
    import ast
    import tarfile

    from edgekit.deploy import remote

    tree = ast.parse(remote.LAUNCHER.read_text())
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}  # fmt: skip
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert modules and {m.split(".")[0] for m in modules} <= sys.stdlib_module_names, modules
    bundle = tmp_path / "bundle.tar"
    remote.pack([], {"serve.json": "{}"}, bundle)
    with tarfile.open(bundle) as tar:
        assert sorted(tar.getnames()) == ["launcher.py", "serve.json"]
        shipped = tar.extractfile("launcher.py").read()
    assert shipped == remote.LAUNCHER.read_bytes()


def test_deploy_a_language_model_and_chat_with_it(device, ssh_env, tmp_path, tiny_llama_optimized):
    openai = pytest.importorskip("openai")
    folder, _ = tiny_llama_optimized
    pick = json.loads((folder / "report.json").read_text())["recommendation"]["variant"]
    remote_dir, port = tmp_path / "device", free_port()
    common = ["--target", device, "--remote-python", device_python(tmp_path / "py"),
              "--remote-dir", remote_dir]  # fmt: skip
    done = run_edgekit("deploy", folder, *common, "--name", "chat", "--port", port,
                       env=ssh_env, timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr
    try:
        assert (remote_dir / "chat" / "model" / pick / "genai_config.json").is_file()
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
        answer = client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
        assert answer.usage.completion_tokens <= 5 and answer.choices[0].finish_reason
        stopped = run_edgekit("deploy", "--stop", *common, "--name", "chat", env=ssh_env)
        assert stopped.returncode == 0, stopped.stderr
    finally:
        pidfile = remote_dir / "chat" / "serve.pid"
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGTERM)


def test_a_device_without_onnxruntime_genai_gets_its_pip_line(
    device, ssh_env, tmp_path, tiny_llama_optimized
):
    folder, _ = tiny_llama_optimized
    python = device_python(tmp_path / "py", block=("onnxruntime_genai",))
    done = run_edgekit("deploy", folder, "--target", device, "--remote-python", python,
                       "--remote-dir", tmp_path / "dev", env=ssh_env, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert "onnxruntime_genai" in done.stderr
    assert "pip install onnxruntime-genai" in done.stderr
