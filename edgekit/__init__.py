"""edgekit: get trained PyTorch models onto edge devices and measure what they cost there.

    import edgekit
    report = edgekit.optimize("model.pt", edgekit.OptimizeOptions(arch="net.py:Net"))
    result = edgekit.bench(["fp32.onnx", "int8.onnx"])      # torch-free
    diff = edgekit.compare("laptop/report.json", "pi/report.json")

Each returns the dict that its report.json (or `edgekit compare --json`) holds. The names load on
first use, so `import edgekit` stays light and torch-free on a device.
"""

import importlib

__version__ = "0.1.0"

_HOMES = {
    "optimize": "edgekit.api",
    "OptimizeOptions": "edgekit.api",
    "bench": "edgekit.api",
    "BenchOptions": "edgekit.benchmark",
    "compare": "edgekit.api",
    "read_report": "edgekit.report.read",
    "EdgekitError": "edgekit.errors",
}
__all__ = [*_HOMES, "__version__"]


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
