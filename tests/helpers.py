"""Shared test helpers, plain functions: tests import them (`from helpers import run_edgekit`);
the fixtures are in conftest.py. Tests run the real thing: real torch export, real onnxruntime,
real files."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def save_graph(graph, path: Path, **save_options) -> Path:
    """A test model as the exporters write them (opset 17, IR 8); save_options go to onnx.save."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path), **save_options)
    return Path(path)


def float_model(path: Path, name: str, nodes: list, inputs: dict, outputs: dict, weights: dict):
    """The float32 graph of `nodes` saved with save_graph: inputs and outputs {name: shape},
    weights {name: array} (cast to float32)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
        [numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in weights.items()],
    )
    return save_graph(graph, path)


def int8_context(staging: Path, model: Path, feeds: dict, budget: str, cpu=None):
    """The PassContext the int8 pass gets for `model` (the reference is its own outputs on
    `feeds`), made for `cpu` (default: this machine's), on generated samples without labels."""
    from edgekit.accuracy import run_onnx
    from edgekit.api import no_progress
    from edgekit.passes import PassContext
    from edgekit.recommend import parse_budget

    return PassContext(
        **({} if cpu is None else {"cpu": cpu}),
        staging=staging,
        feeds=feeds,
        labels=None,
        reference=run_onnx(model, feeds),
        data_is_real=False,
        budget=parse_budget(budget),
        step=no_progress,
    )


def run_edgekit(*args, env: dict | None = None, cwd=None, timeout=600):
    """Run the real `edgekit` CLI in a fresh process; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "edgekit.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )


TORCH = ("torch", "onnxsim", "torch_pruning", "onnxscript")  # what the core install lacks


def import_blocker(folder: Path, modules: tuple[str, ...]) -> str:
    """A PYTHONPATH (this checkout first importable) under which importing any of `modules`
    fails, as where they are not installed: a sitecustomize.py in `folder` does it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {tuple(modules)!r}:\n"
        "            raise ImportError(f'{name} is blocked in this test')\n"
        "        return None\n"
        "sys.meta_path.insert(0, _Block())\n"
    )
    return os.pathsep.join([str(folder), str(REPO)])


def torch_blocked_env(tmp_path: Path) -> dict:
    """For module-scoped fixtures, which cannot use the `block_imports` fixture."""
    return {"PYTHONPATH": import_blocker(tmp_path / "blocked", TORCH)}


# ---- real OpenSSH servers on 127.0.0.1 for the device tests (test_remote, test_deploy) --------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sshd(keys: Path, run_dir: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    run_dir.mkdir()
    config = run_dir / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host_key'}\n"
        f"PidFile {run_dir / 'sshd.pid'}\nAuthorizedKeysFile {keys / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    log = open(run_dir / "sshd.log", "w")  # noqa: SIM115 (the server writes to it until stopped)
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=log)
    deadline = time.monotonic() + 15
    while True:  # ready once it greets: "SSH-2.0-OpenSSH_..."
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(64).startswith(b"SSH-"):
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"sshd did not start: {(run_dir / 'sshd.log').read_text()}")
        time.sleep(0.1)
    host_pub = (keys / "host_key.pub").read_text().split()[:2]
    with open(keys / "known_hosts", "a") as handle:
        handle.write(f"[127.0.0.1]:{port} {' '.join(host_pub)}\n")
    return proc, port
