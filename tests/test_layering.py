"""Code in its room: what the core install's `edgekit compare` loads, no upward import from report/
to the benchmark, and no import cycle between edgekit's modules."""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.sample_reports import FIXTURES
from helpers import REPO

PACKAGE = REPO / "edgekit"


@pytest.mark.slow
def test_compare_loads_neither_ssh_code_nor_onnxruntime(tmp_path):
    loaded = tmp_path / "modules.json"
    code = (
        "import argparse, json, sys\n"
        "from edgekit.commands import compare\n"
        "parser = argparse.ArgumentParser()\n"
        "compare.add_arguments(parser)\n"
        "code = compare.run(parser.parse_args(sys.argv[1:3]))\n"
        "open(sys.argv[3], 'w').write(json.dumps(sorted(sys.modules)))\n"
        "sys.exit(code)\n"
    )
    report = str(FIXTURES / "good_small.json")
    done = subprocess.run(
        [sys.executable, "-c", code, report, report, str(loaded)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert "fp32" in done.stdout  # it compared
    modules = set(json.loads(loaded.read_text()))
    assert "edgekit.report.compare" in modules
    unwanted = {"edgekit.ssh", "edgekit.benchmark", "edgekit.benchmark.remote", "onnxruntime"}
    assert not modules & unwanted, sorted(modules & unwanted)


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.Module, name: str, is_package: bool) -> set[str]:
    """The edgekit modules `name` imports, those inside functions too (a cycle that closes only
    when a function runs is a cycle all the same). Imports under `if TYPE_CHECKING:` only name
    types for the reader and load nothing: not an edge."""
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for inner in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = name if is_package else name.rpartition(".")[0]
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = (
                f"{base}.{node.module}"
                if node.level and node.module
                else (base if node.level else node.module)
            )
            found |= {f"{module}.{a.name}" for a in node.names} | {module}
    return {m for m in found if m.startswith("edgekit.")}


@functools.cache
def _trees() -> dict[str, tuple[Path, ast.Module]]:
    """Every edgekit module's file and syntax tree, parsed once for all the tests here."""
    return {_module(p): (p, ast.parse(p.read_text())) for p in PACKAGE.rglob("*.py")}


def _pipeline_entries(tree: ast.Module) -> tuple[str, ...]:
    """The "module.Class" names in PIPELINE: pipeline.py imports those modules by name."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["PIPELINE"]:
            return ast.literal_eval(node.value)
    raise AssertionError("edgekit/passes/pipeline.py has no PIPELINE")


@functools.cache
def _graph() -> dict[str, frozenset[str]]:
    files = _trees()
    graph = {}
    for name, (path, tree) in files.items():
        wanted = _imports(tree, name, path.name == "__init__.py")
        if name == "edgekit.passes.pipeline":  # it imports the passes PIPELINE names by name
            wanted |= {f"edgekit.passes.{entry}" for entry in _pipeline_entries(tree)}
        edges = set()
        for module in wanted:
            while module not in files and "." in module:  # `from pkg import name`: the package
                module = module.rpartition(".")[0]
            if module in files and not (name + ".").startswith(module + "."):
                edges.add(module)  # (a module's own packages are loading already: not an edge)
                # importing a module of another package runs that package's __init__ first
                package = module.rpartition(".")[0]
                if package in files and not name.startswith(package + ".") and package != name:
                    edges.add(package)
        graph[name] = frozenset(edges)
    return graph


def test_report_imports_nothing_from_the_benchmark_package():
    upward = {
        name: sorted(m for m in edges if m.startswith("edgekit.benchmark"))
        for name, edges in _graph().items()
        if name.startswith("edgekit.report")
    }
    assert not any(upward.values()), upward


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1 on the path, 2 done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles, cycles


# Modules that run on the device: neither they nor any edgekit module they import (at any depth,
# inside functions too) may import torch or transformers.
TORCH_FREE = ["edgekit.lm.folder", "edgekit.lm.tokenizer", "edgekit.lm.logits", "edgekit.lm.drift"]
HOST_ONLY = {"torch", "transformers", "onnxscript", "onnxsim", "torch_pruning"}


def _third_party_imports(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_device_modules_import_no_torch():
    graph = _graph()
    reached, todo = set(), list(TORCH_FREE)
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo += graph[name]
    trees = _trees()
    found = {n: sorted(_third_party_imports(trees[n][1]) & HOST_ONLY) for n in reached}
    assert set(TORCH_FREE) <= reached
    assert not any(found.values()), {n: names for n, names in found.items() if names}
