"""Strings from files and reports are data: no renderer lets them drive the terminal (escape
sequences), rich (markup), Markdown (code spans, links, images) or HTML."""

from __future__ import annotations

import io
import re

import pytest
from fixtures.sample_reports import make_report, write
from helpers import run_edgekit
from rich.console import Console

from edgekit import ssh
from edgekit.benchmark import remote
from edgekit.report import compare, html, markdown, terminal
from edgekit.report.fleet import fleet_summary
from edgekit.report.read import read_report
from edgekit.report.schema import Report
from models import relu_model

# clear the screen, set the window title (OSC 0 … BEL), and a bidi override
ESC = "\x1b[2J\x1b]0;pwned\x07\u202e"
MARKUP = "[blink red]x[bold]"
MD = "a`b`` | <img src=x onerror=alert(1)> [a](javascript:alert(1))"
EVIL = ESC + MARKUP + MD


def _hostile(seed: int, *, fail: str | None = None) -> dict:
    """A report in which every string a renderer shows comes from an attacker."""
    report = make_report(seed=seed, n=200, failed={"int8-dynamic": EVIL} if fail else None)
    names = {v["name"]: f"{v['name']}{EVIL}" for v in report["variants"]}
    for v in report["variants"]:
        v["name"] = names[v["name"]]
        v["parent"] = names.get(v["parent"], v["parent"])
        v["notes"] = [f"note {EVIL}"]
        v["unmeasured"] = {f"field{EVIL}": f"why {EVIL}"}
    report["source"]["path"] = f"models/{EVIL}.pt"
    report["device"]["cpu"] = f"cpu {EVIL}"
    report["device"]["arch"] = f"arch {EVIL}"
    report["notes"] = [f"report note {EVIL}"]
    report["warnings"] = [f"warning {EVIL}"]
    report["recommendation"] = {"variant": names["int8-static"], "reason": f"reason {EVIL}"}
    return report


def _outside_code_spans(line: str) -> str:
    """The line without its code spans, found as CommonMark does: a run of n backticks (not
    backslash-escaped) opens a span that the next run of exactly n backticks closes."""
    runs = [(m.start(), m.end()) for m in re.finditer(r"`+", line)]
    out, pos, i = [], 0, 0
    while i < len(runs):
        start, end = runs[i]
        if start > 0 and line[start - 1] == "\\" and start >= pos:
            i += 1
            continue
        close = next(
            (j for j in range(i + 1, len(runs)) if runs[j][1] - runs[j][0] == end - start), None
        )
        if close is None:
            i += 1
            continue
        out.append(line[pos:start])
        pos, i = runs[close][1], close + 1
    return "".join(out) + line[pos:]


def _assert_inert_markdown(md: str) -> None:
    assert "\x1b" not in md and "\x07" not in md and "\u202e" not in md
    assert "\\x1b" in md  # the escape is shown, not dropped
    for line in md.splitlines():
        text = _outside_code_spans(line)
        assert not re.search(r"(?<!\\)<img", text), line
        assert "](javascript:" not in text, line
        assert not re.search(r"(?<!\\)\[", text), line  # no link or image can open
    # a table row keeps its cells: every row of a table has as many unescaped pipes as its header
    for table in re.findall(r"(?m)(?:^\|.*\n?)+", md):
        rows = table.splitlines()
        assert len({len(re.findall(r"(?<!\\)\|", row)) for row in rows}) == 1, rows


def _assert_inert_terminal(raw: str, text: str) -> None:
    """`raw`: bytes sent to the terminal (with rich's own styling); `text`: what it shows."""
    for sequence in ("\x1b[2J", "\x1b]0;", "\x07", "\u202e"):
        assert sequence not in raw
    assert "\x1b" not in text
    assert MARKUP in text  # rich markup shown literally, not applied
    assert "\\x1b[2J" in text


def _console():
    return Console(file=io.StringIO(), force_terminal=True, width=400, record=True)


@pytest.mark.slow
def test_compare_cli_shows_hostile_strings_as_text(tmp_path):
    a = write(_hostile(1), tmp_path / "a.json")
    b = write(_hostile(2, fail="yes"), tmp_path / "b.json")
    env = {"COLUMNS": "400"}
    term = run_edgekit("compare", a, b, "--fail-if-slower", "0", env=env)
    assert term.returncode in (0, 1), term.stderr
    assert "\x1b" not in term.stdout + term.stderr and "\x07" not in term.stdout + term.stderr
    assert MARKUP in term.stdout and "\\x1b[2J" in term.stdout
    one = run_edgekit("compare", a, env=env)
    assert one.returncode == 0, one.stderr
    assert "\x1b" not in one.stdout and MARKUP in one.stdout
    md = run_edgekit("compare", a, b, "--format", "md", "--fail-if-slower", "0")
    assert md.returncode in (0, 1), md.stderr
    _assert_inert_markdown(md.stdout)
    assert "\x1b" not in md.stderr  # the gate messages on stderr


def test_compare_renderers_in_process(tmp_path):
    a = read_report(write(_hostile(1), tmp_path / "a.json")).to_json()
    b = read_report(write(_hostile(2, fail="yes"), tmp_path / "b.json")).to_json()
    result = compare.compare(a, b, labels=(f"A{EVIL}", f"B{EVIL}"), fail_if_drift=0.999)
    console = _console()
    terminal.show_comparison(result, console)
    _assert_inert_terminal(console.file.getvalue(), console.export_text())
    _assert_inert_markdown(markdown.comparison(result))


def test_report_renderers_show_hostile_strings_as_text(tmp_path):
    report = read_report(write(_hostile(1, fail="yes"), tmp_path / "r.json")).to_json()
    console = _console()
    terminal.show_report(report, console)
    text = console.export_text()
    _assert_inert_terminal(console.file.getvalue(), text)
    assert "reason" in text and "warning" in text and "cpu" in text
    md = markdown.report_page(report)
    _assert_inert_markdown(md)
    for word in ("report note", "why", "reason", "warning", "cpu", "arch"):
        assert word in md
    page = html.render(report)
    assert "\x1b" not in page and "<img src=x" not in page and "[a](javascript:" in page
    assert "\\x1b[2J" in page and "&lt;img src=x" in page


def test_fleet_summary_shows_hostile_device_strings_as_text(tmp_path):
    good = remote.Outcome(ssh.parse_target("pi4"), Report.from_json(_hostile(1)), None)
    bad = remote.Outcome(
        ssh.parse_target("pi5"), Report.from_json(_hostile(2)), f"unreachable {EVIL}"
    )
    third = remote.Outcome(ssh.parse_target("x"), Report.from_json(_hostile(3)), None)
    result = fleet_summary([good, bad, third])
    _assert_inert_markdown(markdown.fleet(result))
    console = _console()
    terminal.show_fleet(result, console)
    _assert_inert_terminal(console.file.getvalue(), console.export_text())


@pytest.mark.slow
def test_bench_of_hostile_file_names(tmp_path):
    """A model file named `[blink red]x[bold].onnx` (or with an ESC in it) is a name, not markup."""
    a = relu_model(tmp_path / f"{MARKUP}.onnx")
    b = relu_model(tmp_path / "\x1b[2J<img src=x onerror=alert(1)>`.onnx")
    out = tmp_path / "out"
    result = run_edgekit(
        "bench", a, b, "-o", out, "--min-time", "0.05", "--max-time", "0.2", env={"COLUMNS": "300"}
    )
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout + result.stderr
    assert MARKUP in result.stdout and "\\x1b[2J" in result.stdout
    _assert_inert_markdown((out / "report.md").read_text())
    assert "<img src=x" not in (out / "report.html").read_text()
