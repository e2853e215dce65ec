"""Writing outputs: the one place that turns a report (or a fleet summary) into files, each
written atomically. Publishing a whole folder at once is edgekit.fsutil.output_folder's job."""

from __future__ import annotations

from pathlib import Path

from edgekit.fsutil import atomic_write_text
from edgekit.report import html, markdown
from edgekit.report.schema import Report, json_text


def write_outputs(report: Report, out_dir: Path) -> list[Path]:
    """report.json, report.md and report.html in `out_dir` (the renderers read the report's
    JSON dict, as a reader of report.json would)."""
    data = report.to_json()
    return _write(
        Path(out_dir),
        {
            "report.json": json_text(data),
            "report.md": markdown.report_page(data),
            "report.html": html.render(data),
        },
    )


def write_fleet_summary(result: dict, out_dir: Path) -> list[Path]:
    """summary.json and summary.md of a benchmark on several devices."""
    return _write(
        Path(out_dir),
        {
            "summary.json": json_text(result),
            "summary.md": markdown.fleet(result),
        },
    )


def _write(out_dir: Path, outputs: dict[str, str]) -> list[Path]:
    for name, text in outputs.items():
        atomic_write_text(out_dir / name, text)
    return [out_dir / name for name in outputs]
