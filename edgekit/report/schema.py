"""The report contract (docs/report-schema.md): building a report and its JSON text.
Torch-free: the device side writes reports too."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

from edgekit import __version__

SCHEMA_VERSION = 1
REPORT_KIND = "edgekit-report"

# Every variant row has all of these keys, so scripts can index without guarding.
VARIANT_KEYS = (
    "name",
    "parent",
    "passes",
    "file",
    "size_bytes",
    "sha256",
    "latency_ms",
    "cold_start",
    "relative",
    "memory",
    "accuracy",
    "notes",
    "unmeasured",
    "error",
    # from the benchmark (docs/report-schema.md, "bench additions")
    "threads",
    "flops",
    "gflops_per_s",
    "profile",
    # from passes that make them
    "pruning",
    "sensitivity",
)

# What edgekit.benchmark.measure() reports per variant and a report row carries as is.
MEASURED_KEYS = (
    "latency_ms",
    "cold_start",
    "relative",
    "memory",
    "threads",
    "flops",
    "gflops_per_s",
    "profile",
)


def new_variant(name: str, **fields) -> dict:
    """A variant row with every contract key present; unknown keys are refused to catch typos."""
    unknown = set(fields) - set(VARIANT_KEYS)
    if unknown:
        raise ValueError(f"not report variant fields: {sorted(unknown)}")
    row = {key: None for key in VARIANT_KEYS}
    row.update(name=name, passes=[], notes=[], unmeasured={})
    row.update(fields)
    return row


def add_measurement(row: dict, measured: dict) -> dict:
    """Fill a variant row with one benchmark result; an error or a note is added, not replaced."""
    for key in MEASURED_KEYS:
        row[key] = measured.get(key)
    row["notes"] += measured.get("notes") or []
    row["unmeasured"].update(measured.get("unmeasured") or {})
    row["error"] = row["error"] or measured.get("error")
    return row


def new_report(command: str, **fields) -> dict:
    report = {
        "schema_version": SCHEMA_VERSION,
        "kind": REPORT_KIND,
        "edgekit_version": __version__,
        "command": command,
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": None,
        "inputs": [],
        "data": None,
        "device": {},
        "settings": {},
        "variants": [],
        "budget": None,
        "notes": [],
        "recommendation": None,
        "warnings": [],
    }
    report.update(fields)
    return report


def _clean(value):
    """JSON has no NaN or infinity: an unmeasurable float becomes null, never a made-up number."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _clean(value.item())
    return value


def to_json(report: dict) -> str:
    return json.dumps(_clean(report), indent=2, allow_nan=False) + "\n"
