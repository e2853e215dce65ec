"""edgekit: get trained PyTorch models onto edge devices and measure what they cost there.

    import edgekit
    report = edgekit.optimize("model.pt", edgekit.OptimizeOptions(arch="net.py:Net"))
    result = edgekit.bench(["fp32.onnx", "int8.onnx"])      # torch-free
    diff = edgekit.compare("laptop/report.json", "pi/report.json")

optimize, bench and read_report return a `Report` (`.to_json()`: the dict report.json holds);
compare the dict `edgekit compare --json` prints. The names load on first use, so
`import edgekit` stays light and torch-free on a device.
"""

import importlib

__version__ = "0.1.0"

_HOMES = {
    "optimize": "edgekit.api",
    "OptimizeOptions": "edgekit.api",
    "bench": "edgekit.api",
    "BenchOptions": "edgekit.benchmark",
    "compare": "edgekit.report.compare:compare_reports",
    "read_report": "edgekit.report.read",
    "Report": "edgekit.report.schema",
    "EdgekitError": "edgekit.errors",
}
__all__ = [*_HOMES, "__version__"]


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
    module, _, attribute = _HOMES[name].partition(":")
    value = getattr(importlib.import_module(module), attribute or name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
