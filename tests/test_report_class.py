"""The report as a class: Report/Variant read from and written to the report.json dict, and the
one builder that fills rows with the bench's measurements. Fast: no process, no model."""

from __future__ import annotations

import copy
import json

import pytest
from fixtures.sample_reports import FIXTURES, make_report

from edgekit.errors import EdgekitError
from edgekit.report.read import read_report
from edgekit.report.schema import VARIANT_KEYS, Measurement, Report, Variant, build_report


def test_a_full_report_round_trips_exactly():
    full = make_report(n=50, profile=True)
    full["made_for"] = {"cpu_arch": "x86_64"}  # optimize's additions, in their place at the end
    full["timings"] = {"total_s": 1.0, "steps": [], "other_s": 0.0}
    report = Report.from_json(copy.deepcopy(full))
    assert isinstance(report.variants[0], Variant)
    assert report.to_json() == full
    assert list(report.to_json()) == list(full)  # the keys keep the contract's order
    assert json.loads(report.text()) == full


def test_the_old_fixture_report_reads_and_gains_only_the_later_keys_as_null():
    """good_small.json predates the bench and pass additions of the variant rows."""
    on_disk = json.loads((FIXTURES / "good_small.json").read_text())
    report = read_report(FIXTURES / "good_small.json")
    assert report.variants[0].name == "fp32" and report.command == "optimize"
    later = ("threads", "flops", "gflops_per_s", "pruning", "sensitivity")
    assert not any(key in row for row in on_disk["variants"] for key in later)
    for row in on_disk["variants"]:
        row.update({key: row.get(key) for key in VARIANT_KEYS})
    assert report.to_json() == on_disk


def test_an_old_report_without_the_later_keys_loads_with_their_empty_defaults():
    """A report from before the bench and pass additions (and before `budget`, `data`): readable,
    every contract key present afterwards, keys nobody knows kept as they were."""
    old = make_report(n=20)
    for key in ("budget", "data", "notes"):
        del old["data" if key == "data" else key]
    for row in old["variants"]:
        for key in ("threads", "flops", "gflops_per_s", "profile", "pruning", "sensitivity",
                    "passes", "notes", "unmeasured", "cold_start", "sha256"):  # fmt: skip
            row.pop(key, None)
    old["variants"][0]["from_a_later_edgekit"] = {"x": 1}
    old["later_top_level"] = [1, 2]
    written = Report.from_json(old).to_json()
    assert all(set(VARIANT_KEYS) <= set(row) for row in written["variants"])
    first = written["variants"][0]
    assert first["passes"] == [] and first["unmeasured"] == {} and first["threads"] is None
    assert first["from_a_later_edgekit"] == {"x": 1}
    assert written["later_top_level"] == [1, 2] and written["budget"] is None


def test_from_json_refuses_a_broken_report_with_one_paragraph():
    broken = make_report(n=5)
    broken["variants"][1]["latency_ms"]["p50"] = -3
    with pytest.raises(EdgekitError, match=r"^given\.json: not a usable edgekit report"):
        Report.from_json(broken, where="given.json")
    with pytest.raises(EdgekitError, match="not an edgekit report"):
        Report.from_json([1, 2])
    # a warning that is not text: the terminal would have failed on it with a traceback
    odd = make_report(n=5)
    odd["warnings"][0] = {"x": 1}
    with pytest.raises(EdgekitError, match=r"warnings\[0\] should be a string"):
        Report.from_json(odd)


def test_build_report_fills_each_row_with_its_measurement():
    class Bench:  # the shape of edgekit.benchmark.BenchResult
        device = {"cpu": "x"}
        settings = {"baseline": "a"}
        warnings = ["busy"]
        variants = {
            "a": Measurement(threads=2, size_bytes=10, latency_ms={"p50": 1.0}, notes=["n"]),
            "b": Measurement(threads=2, size_bytes=12, error="failed", unmeasured={"x": "y"}),
        }

    rows = [Variant("a", notes=["made"]), Variant("b", size_bytes=11), Variant("c", error="no")]
    report = build_report("bench", rows, Bench(), warnings=["mine"])
    a, b, c = report.variants
    assert a.size_bytes == 10 and a.latency_ms == {"p50": 1.0} and a.notes == ["made", "n"]
    assert b.size_bytes == 11 and b.error == "failed" and b.unmeasured == {"x": "y"}
    assert c.threads is None and c.error == "no"
    assert report.warnings == ["busy", "mine"] and report.device == {"cpu": "x"}
    assert Report.from_json(report.to_json()).to_json() == report.to_json()
