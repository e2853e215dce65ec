"""The terminal: rich tables and lines for a report, a comparison and a fleet. Every string from
a report is shown as text: control characters escaped, no markup."""

from __future__ import annotations

import os
import sys

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgekit import textsafe
from edgekit.report import cells

ADVICE = "What to do: "  # edgekit.benchmark.what_to_do: the advice among the warnings


def stdout_console() -> Console:
    """Piped output has no width: 120 columns (unless COLUMNS says) keeps tables whole in logs."""
    return Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120)


def show_report(report: dict, console: Console | None = None) -> None:
    console = console or stdout_console()
    table = Table(
        title=textsafe.rich(f"edgekit {report['command']} — {cells.title(report)}"),
        title_justify="left",
        padding=(0, 1),
        box=box.SIMPLE_HEAD,
    )
    for header in cells.headers(terminal=True, report=report):
        if header == "variant":
            table.add_column(header, no_wrap=True)
        else:
            table.add_column(header, justify="right", no_wrap=True)
    for row in cells.rows(report, terminal=True):
        table.add_row(*(Text(textsafe.plain(cell)) for cell in row))
    console.print(table)
    safe = textsafe.rich
    console.print(f"[dim]{safe(cells.device_line(report))}[/dim]")
    # The terminal keeps to what needs attention; notes are in report.md and report.html.
    for v in report["variants"]:
        if v.get("error"):
            console.print(
                f"[red]{safe(v['name'])}: FAILED:[/red] {safe(v['error'])}", highlight=False
            )
    for warning in report.get("warnings") or []:
        advice = warning.removeprefix(ADVICE)
        if advice != warning:  # the one line that says what to do about the warnings
            console.print(f"[bold]what to do:[/bold] {safe(advice)}", highlight=False)
        else:
            console.print(f"[yellow]warning:[/yellow] {safe(warning)}", highlight=False)
    rec = report.get("recommendation")
    if rec:
        console.print(
            f"[bold]recommended:[/bold] {safe(rec.get('variant'))} — {safe(rec.get('reason'))}",
            highlight=False,
        )


def show_timings(report: dict, console: Console | None = None) -> None:
    """Where the run's time went (`optimize -v`): the longest steps first."""
    console = console or stdout_console()
    timings = report.get("timings")
    if not timings:
        return
    console.print(f"time: {timings['total_s']:.1f} s in total, by step:", highlight=False)
    for s in sorted(timings["steps"], key=lambda s: -s["seconds"]):
        line = f"  {s['seconds']:6.1f} s  {s['step']}"
        console.print(textsafe.plain(line), highlight=False, markup=False)
    console.print(f"  {timings['other_s']:6.1f} s  between steps", highlight=False)


def show_bench(report: dict, console: Console | None = None) -> None:
    """The report's table, then hyperfine-style lines for each model."""
    console = console or stdout_console()
    show_report(report, console)
    for line in cells.bench_lines(report):
        console.print(textsafe.plain(line), highlight=False, markup=False)


def show_comparison(result: dict, console: Console | None = None) -> None:
    console = console or stdout_console()
    # names and messages come from other machines: no markup, control characters shown as text
    plain = textsafe.plain
    for line in cells.compare_header_lines(result):
        console.print(plain(line), highlight=False, markup=False)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, caption="X → Y: A's value → B's value")
    for header in cells.compare_headers(result, terminal=True):
        table.add_column(header, justify="left" if header in ("variant", "verdict") else "right")
    for row, texts in zip(result["rows"], cells.compare_rows(result), strict=True):
        style = "red" if row["failed"] else None
        table.add_row(*(Text(plain(c)) for c in texts), style=style)
    console.print(table)
    for line in cells.compare_footer_lines(result):
        style = "bold red" if line.startswith("GATE TRIPPED") else "dim"
        console.print(plain(line), style=style, highlight=False, markup=False)


def show_fleet(result: dict, console: Console) -> None:
    for d in result["devices"]:
        status = f"FAILED: {d['error']}" if d["error"] else d["device"]
        line = textsafe.plain(f"{d['name']} ({d['target']}): {status}")
        console.print(line, highlight=False, markup=False)
    for comparison in result["comparisons"]:
        console.print()
        show_comparison(comparison, console)
