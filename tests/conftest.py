"""Shared test helpers. Tests run the real thing: real torch export, real onnxruntime, real files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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


@pytest.fixture
def edgekit_cli():
    return run_edgekit


def torch_blocked_env(tmp_path: Path) -> dict:
    """An environment in which `import torch` (and onnxsim, torch_pruning) fails, as on a Pi
    with only the core install."""
    blocker = tmp_path / "block_torch"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'onnxsim', 'torch_pruning', 'onnxscript'):\n"
        "            raise ImportError(f'{name} is blocked in this test')\n"
        "        return None\n"
        "sys.meta_path.insert(0, _Block())\n"
    )
    return {"PYTHONPATH": os.pathsep.join([str(blocker), str(REPO)])}
