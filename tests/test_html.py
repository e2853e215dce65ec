"""report.html: self-contained, escaped, robust to null numbers, and really drawn (headless
Chromium screenshot checked pixel by pixel)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from fixtures.sample_reports import FIXTURES, make_report

from edgekit.report import html
from edgekit.report.read import read_report
from edgekit.report.write import write_outputs

CHART_IMG = re.compile(r'<img class="chart" id="chart-latency-drift"[^>]*>')


def test_page_is_self_contained_with_all_sections():
    page = html.render(make_report(seed=1))
    assert page.startswith("<!doctype html>")
    for needle in (
        'id="chart-latency-drift"',
        'id="chart-latency-distributions"',
        'id="chart-memory-size"',
        "Recommended: <b>int8-static</b>",
        "QLinearConv",  # top operators from `profile`
        "AMD EPYC 7B13",  # the device
        "load average rose",  # warnings
    ):
        assert needle in page
    # nothing fetched from anywhere: no external src/href, no scripts, no stylesheets by link
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "<script" not in page and "<link" not in page
    assert "could not be drawn" not in page


def test_strings_from_the_report_are_escaped():
    report = make_report(seed=1, n=200)
    evil = '<img src=x onerror="alert(1)">$\\frac{a}{b}$'
    report["variants"][2]["name"] = evil
    report["recommendation"]["variant"] = evil
    report["warnings"].append("<script>alert('x')</script>")
    report["device"]["cpu"] = "<b>cpu</b>"
    page = html.render(report)
    assert "<script>alert" not in page and 'onerror="alert' not in page and "<b>cpu</b>" not in page
    assert "&lt;script&gt;" in page and "&lt;img src=x onerror=" in page
    assert "could not be drawn" not in page  # the "$" did not break matplotlib either


def test_null_numbers_and_failed_variants_do_not_break_charts():
    report = make_report(seed=1, n=200, failed={"int8-dynamic": "session failed"})
    v = report["variants"][4]
    v["latency_ms"], v["accuracy"], v["memory"], v["size_bytes"] = None, None, None, None
    report["variants"][0]["profile"] = [{"op": "Conv"}, "junk", {"op": 3, "ms": "x"}, None]
    # the bench's shape of `profile` (docs/report-schema.md, bench additions)
    report["variants"][2]["profile"] = {
        "runs": 10,
        "ops": [{"op_type": "QLinearConv", "total_us": 170.0, "calls": 20, "share": 0.55}, "junk"],
    }
    page = html.render(report)
    assert 'id="chart-latency-drift"' in page and "could not be drawn" not in page
    assert "pruned-30: not in the latency-vs-drift chart" in page
    assert "int8-dynamic</b> failed: session failed" in page
    assert "<td>QLinearConv</td><td class=n>0.0170</td><td class=n>55.0%</td>" in page
    # nothing measured at all: notes instead of charts, still a page
    for v in report["variants"]:
        v["latency_ms"] = v["accuracy"] = v["memory"] = v["size_bytes"] = None
    page = html.render(report)
    assert "no chart" in page and "could not be drawn" not in page


@pytest.mark.slow
def test_page_without_matplotlib(block_imports):
    code = (
        "from edgekit.report.html import render\nfrom edgekit.report.read import read_report\n"
        f"print(render(read_report({str(FIXTURES / 'good_small.json')!r}).to_json()))\n"
    )
    env = {**os.environ, **block_imports("matplotlib")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "Charts need matplotlib" in result.stdout and "<table" in result.stdout


def test_write_outputs_writes_the_html(tmp_path):
    written = write_outputs(read_report(FIXTURES / "good_small.json"), tmp_path)
    assert tmp_path / "report.html" in written
    assert 'id="chart-latency-drift"' in (tmp_path / "report.html").read_text()


# ---- the page in a real browser ------------------------------------------------------------------

PARETO_RGB = tuple(int(html.PARETO_COLOR[i : i + 2], 16) for i in (1, 3, 5))


def _chromium():
    path = shutil.which("chromium") or (
        "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
    )
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing on CI: .ci/prepare.sh should have installed it")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); CI runs this")
    return path


def screenshot(chromium: str, page: str, tmp_path, name: str):
    """Screenshot `page` in headless Chromium; returns the pixels as an (h, w, 3) uint8 array."""
    from matplotlib.image import imread

    src, png = tmp_path / f"{name}.html", tmp_path / f"{name}.png"
    src.write_text(page)
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--screenshot={png}", "--window-size=1200,2000", src.as_uri(),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert png.exists(), f"chromium wrote no screenshot: {result.stderr[-2000:]}"
    pixels = imread(png)  # floats in 0..1 for PNG
    return (pixels[:, :, :3] * 255).round().astype("uint8")


def not_blank(pixels) -> bool:
    non_white = (pixels < 235).any(axis=2).mean()
    return non_white > 0.03


def chart_pixels(pixels) -> int:
    """Pixels in the Pareto magenta: only the latency-vs-drift chart draws with it."""
    import numpy as np

    diff = np.abs(pixels.astype(int) - np.array(PARETO_RGB)).max(axis=2)
    return int((diff < 40).sum())


@pytest.mark.slow
def test_chromium_screenshot_shows_page_and_chart(tmp_path):
    chromium = _chromium()
    page = html.render(read_report(FIXTURES / "good_small.json").to_json())
    assert CHART_IMG.search(page)
    full = screenshot(chromium, page, tmp_path, "full")
    no_chart = screenshot(chromium, CHART_IMG.sub("", page), tmp_path, "no-chart")
    blank = screenshot(chromium, "<!doctype html><html><body></body></html>", tmp_path, "blank")

    assert not_blank(full) and not_blank(no_chart) and not not_blank(blank)
    # the chart's stars and front line: a few hundred magenta pixels with it, none without it
    assert chart_pixels(full) > 150, chart_pixels(full)
    assert chart_pixels(no_chart) < 20, chart_pixels(no_chart)
