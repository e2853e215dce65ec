"""The summary of a benchmark on several devices (summary.json): each device against the first
that worked. Torch-free."""

from __future__ import annotations

from edgekit.report import compare as cmp


def fleet_summary(outcomes: list) -> dict:
    """Each device against the first that worked (variants matched by name); a failed device's
    rows show as FAILED. `outcomes`: each device's edgekit.benchmark.remote.Outcome."""

    base = next((o for o in outcomes if o.error is None), None)
    devices = [
        {
            "name": o.target.name,
            "target": o.target.spec,
            "device": None if o.error else cmp.device_name(o.report.to_json()),
            "report": f"{o.target.name}/report.json",
            "error": o.error,
        }
        for o in outcomes
    ]
    comparisons = []
    if base is not None:
        for o in outcomes:
            if o is not base:
                labels = (base.target.name, o.target.name)
                comparisons.append(
                    cmp.compare(base.report.to_json(), o.report.to_json(), labels=labels)
                )
    failed = sum(1 for o in outcomes if o.error)
    return {"devices": devices, "baseline": base and base.target.name,
            "comparisons": comparisons, "failed": failed}  # fmt: skip
