"""The README's set-up commands are the ones CI runs: they must not drift apart."""

import re

from conftest import REPO


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
