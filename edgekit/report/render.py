"""Renderers: they only read a report dict. Terminal table (rich), Markdown, and HTML."""

from __future__ import annotations

import os
import sys

from rich import box
from rich.console import Console
from rich.table import Table

COLUMNS = (
    # header, function(variant) -> text, shown in the (narrow) terminal table too
    ("variant", lambda v: v["name"], True),
    ("size", lambda v: _size(v["size_bytes"]), True),
    ("p50 ms", lambda v: _latency(v, "p50"), True),
    ("p90 ms", lambda v: _latency(v, "p90"), False),
    ("speed", lambda v: _relative(v), True),
    ("peak RSS", lambda v: _size((v["memory"] or {}).get("peak_rss_bytes")), True),
    ("cos min", lambda v: _num((v["accuracy"] or {}).get("cosine_min"), ".4f"), True),
    ("max |err|", lambda v: _num((v["accuracy"] or {}).get("max_abs_err"), ".2e"), False),
    ("top-1", lambda v: _pct((v["accuracy"] or {}).get("top1_agreement")), True),
    ("task acc", lambda v: _pct((v["accuracy"] or {}).get("task_accuracy")), True),
)

NOT_MEASURED = "—"


def _size(n):
    if n is None:
        return NOT_MEASURED
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _num(x, fmt):
    return NOT_MEASURED if x is None else format(x, fmt)


def _pct(x):
    return NOT_MEASURED if x is None else f"{100 * x:.1f}%"


def _latency(variant, key):
    latency = variant["latency_ms"] or {}
    value = latency.get(key)
    return NOT_MEASURED if value is None else f"{value:.3f}"


def _relative(variant):
    rel = variant.get("relative")
    if not rel or rel.get("speedup") is None:
        return "base" if variant.get("latency_ms") and rel is None else NOT_MEASURED
    lo, hi = rel.get("ci95") or (None, None)
    text = f"{rel['speedup']:.2f}x"
    if lo is not None and hi is not None:
        text += f"±{(hi - lo) / 2:.2f}"
    return text


def _columns(terminal: bool) -> list[tuple]:
    return [(h, fn) for h, fn, narrow in COLUMNS if narrow or not terminal]


def headers(terminal: bool = False) -> list[str]:
    return [h for h, _ in _columns(terminal)]


def rows(report: dict, terminal: bool = False) -> list[list[str]]:
    return [[fn(v) for _, fn in _columns(terminal)] for v in report["variants"]]


def note_items(report: dict) -> list[tuple[str | None, str, bool]]:
    """(variant or None, text, is_failure): the report's own notes (what was tried or skipped),
    then each variant's failure, notes and the fields it could not measure, with why."""
    items = [(None, note, False) for note in report.get("notes") or []]
    for v in report["variants"]:
        if v.get("error"):
            items.append((v["name"], v["error"], True))
        items += [(v["name"], note, False) for note in v.get("notes") or []]
        unmeasured = v.get("unmeasured") if isinstance(v.get("unmeasured"), dict) else {}
        items += [(v["name"], f"{f} not measured: {why}", False) for f, why in unmeasured.items()]
    return items


def stdout_console() -> Console:
    """Piped output has no width: 120 columns (unless COLUMNS says) keeps tables whole in logs."""
    return Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120)


def terminal(report: dict, console: Console | None = None) -> None:
    console = console or stdout_console()
    table = Table(
        title=f"edgekit {report['command']} — {_title(report)}",
        title_justify="left",
        padding=(0, 1),
        box=box.SIMPLE_HEAD,
    )
    for header in headers(terminal=True):
        if header == "variant":
            table.add_column(header, no_wrap=True)
        else:
            table.add_column(header, justify="right", no_wrap=True)
    for row in rows(report, terminal=True):
        table.add_row(*row)
    console.print(table)
    console.print(f"[dim]{device_line(report)}[/dim]")
    # The terminal keeps to what needs attention; notes are in report.md and report.html.
    for v in report["variants"]:
        if v.get("error"):
            console.print(f"[red]{v['name']}: FAILED:[/red] {v['error']}", highlight=False)
    for warning in report.get("warnings") or []:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    rec = report.get("recommendation")
    if rec:
        console.print(
            f"[bold]recommended:[/bold] {rec['variant']} — {rec['reason']}", highlight=False
        )


def _title(report: dict) -> str:
    source = report.get("source") or {}
    return source.get("path") or ", ".join(v["name"] for v in report["variants"])


def device_line(report: dict) -> str:
    d = report.get("device") or {}
    s = report.get("settings") or {}
    return (
        f"device: {d['board'] + ': ' if d.get('board') else ''}{d.get('cpu')} "
        f"({d.get('arch')}, {d.get('cores')} cores) · "
        f"onnxruntime {d.get('onnxruntime')} · threads {s.get('intra_op_threads')}"
    )


def markdown(report: dict) -> str:
    names = headers()
    lines = [f"# edgekit {report['command']} report", "", f"Model: `{_title(report)}`", ""]
    rec = report.get("recommendation")
    if rec:
        lines += [f"**Recommended: `{rec['variant']}`** — {rec['reason']}", ""]
    lines += ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(report)]
    lines += ["", f"_{device_line(report)}_", ""]
    notes = [
        text if name is None else f"{name}: {'FAILED: ' if failed else ''}{text}"
        for name, text, failed in note_items(report)
    ]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    warnings = report.get("warnings") or []
    if warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in warnings] + [""]
    lines += [
        f"{NOT_MEASURED} = not measured; `report.json` says why under each variant's `unmeasured`.",
        "",
    ]
    return "\n".join(lines)


def html(report: dict) -> str | None:
    """The self-contained HTML page (edgekit.report.html), or None where it is not available."""
    try:
        from edgekit.report import html as html_page
    except ImportError:
        return None
    return html_page.render(report)
