"""Markdown: report.md, a comparison for a pull-request comment, a fleet's summary.md. Every
string from a report is escaped (textsafe.markdown) or put in a safe code span."""

from __future__ import annotations

from edgekit import textsafe
from edgekit.report import cells


def report_page(report: dict) -> str:
    md, code = textsafe.markdown, textsafe.markdown_code
    names = cells.headers(report=report)
    lines = [
        f"# edgekit {md(report['command'])} report",
        "",
        f"Model: {code(cells.title(report))}",
        "",
    ]
    rec = report.get("recommendation")
    if rec:
        lines += [f"**Recommended: {code(rec.get('variant'))}** — {md(rec.get('reason'))}", ""]
    lines += ["| " + " | ".join(md(h) for h in names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(md(cell) for cell in row) + " |" for row in cells.rows(report)]
    lines += ["", f"_{md(cells.device_line(report))}_", ""]
    notes = [
        md(text) if name is None else f"{code(name)}: {'FAILED: ' if failed else ''}{md(text)}"
        for name, text, failed in cells.note_items(report)
    ]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    warnings = report.get("warnings") or []
    if warnings:
        lines += ["## Warnings", ""] + [f"- {md(w)}" for w in warnings] + [""]
    lines += [
        f"{cells.NOT_MEASURED} = not measured; `report.json` says why under each variant's `unmeasured`.",
        "",
    ]
    return "\n".join(lines)


def comparison(result: dict) -> str:
    """Every line and cell holds names and messages from the reports: all of it is escaped."""
    md = textsafe.markdown
    lines = ["### edgekit compare", ""]
    lines += [f"- {md(x)}" for x in cells.compare_header_lines(result)] + [""]
    headers = cells.compare_headers(result, terminal=False)
    lines += ["| " + " | ".join(md(h) for h in headers) + " |", "|---" * len(headers) + "|"]
    for row in cells.compare_rows(result):
        row_cells = [textsafe.markdown_code(row[0])] + [md(c) for c in row[1:]]
        lines.append("| " + " | ".join(row_cells) + " |")
    lines.append("")
    for line in cells.compare_footer_lines(result):
        bold = line.startswith("GATE TRIPPED")
        lines.append(f"- {'**' if bold else ''}{md(line)}{'**' if bold else ''}")
    return "\n".join(lines) + "\n"


def fleet(result: dict) -> str:
    """summary.md of `edgekit bench` on several devices (edgekit.benchmark.remote.summary)."""
    md, code = textsafe.markdown, textsafe.markdown_code
    lines = ["## edgekit fleet", "", "| device | target | status | report |", "|---|---|---|---|"]
    for d in result["devices"]:
        status = f"FAILED: {d['error']}" if d["error"] else f"ok: {d['device']}"
        lines.append(
            f"| {md(d['name'])} | {code(d['target'])} | {md(status)} | {md(d['report'])} |"
        )
    lines.append("")
    if result["baseline"]:
        lines.append(f"Each device (B) against {md(result['baseline'])} (A):")
        lines.append("")
    return "\n".join(lines) + "\n" + "\n".join(comparison(c) for c in result["comparisons"])
