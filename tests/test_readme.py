"""The README's set-up commands are the ones CI runs, and its Python example runs as written."""

import json
import os
import re
import subprocess
import sys

import pytest
from helpers import REPO

pytestmark = pytest.mark.slow  # every test here starts a process or exports with torch


def _code_lines(text: str) -> list[str]:
    return [
        ln.strip()
        for block in re.findall(r"```\n(.*?)```", text, re.S)
        for ln in block.splitlines()
    ]


def test_ci_runs_the_readme_test_command():
    readme = _code_lines((REPO / "README.md").read_text())
    test_command = next(ln for ln in readme if ln.endswith("pytest"))
    ci_lines = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_readme_demo_uses_shipped_files():
    readme = _code_lines((REPO / "README.md").read_text())
    demo = next(ln for ln in readme if "edgekit optimize models/" in ln)
    for path in re.findall(r"models/\S+?\.(?:pt|py|npz)", demo):
        assert (REPO / path).is_file(), path


def test_readme_python_example_runs(tmp_path):
    """The Python API section's example, verbatim, in a folder with the shipped models."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Python API") :]
    example = re.search(r"```python\n(.*?)```", section, re.S)[1]
    os.symlink(REPO / "models", tmp_path / "models")
    done = subprocess.run(
        [sys.executable, "-c", example],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    names = {
        v["name"]
        for v in json.loads((tmp_path / "digits.edgekit/report.json").read_text())["variants"]
    }
    assert lines[0].split(" - ")[0] in names  # any runtime's variant may be chosen
    assert len([ln for ln in lines if ln.endswith(" ms")]) == 2
    assert lines[-1] in ("drift gate passed", "drift gate tripped")
    assert (tmp_path / "digits.edgekit" / "report.json").is_file()
