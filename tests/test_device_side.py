"""The files copied to a device import nothing but what a device with the worker has."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "edgekit" / "benchmark"


def _imports(nodes) -> set[str]:
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names)


@pytest.mark.parametrize(
    "file, at_import, inside_functions",
    [
        # worker.py: edgekit.runtimes, or on a device the runtimes/ folder copied beside it
        ("worker.py", {"numpy"}, {"edgekit", "runtimes"}),
        # device.py: the standard library when imported; the versions of what the worker needs
        # when collecting, and psutil where installed (guarded by ImportError)
        ("device.py", set(), {"numpy", "onnxruntime", "psutil"}),
    ],
)
def test_device_files_import_only_what_a_device_has(file, at_import, inside_functions):
    """worker.py and device.py are copied to the device alone, without the edgekit package."""
    tree = ast.parse((BENCH / file).read_text())
    assert _imports(tree.body) == at_import
    assert _imports(ast.walk(tree)) - at_import == inside_functions


@pytest.mark.slow
def test_device_py_runs_alone_with_the_standard_library(tmp_path):
    """Copied on its own and imported with only the standard library on the path."""
    (tmp_path / "device.py").write_bytes((BENCH / "device.py").read_bytes())
    code = "import sys; sys.path[:] = ['.'] + [p for p in sys.path if 'site-packages' not in p]\n"
    code += "import device; print(device.load_avg() is not None, device.physical_cores() > 0)"
    done = subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]
