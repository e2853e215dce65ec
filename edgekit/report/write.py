"""Writing outputs: the one place that turns a report (or a fleet summary) into files, each
written atomically. Publishing a whole folder at once is edgekit.fsutil.output_folder's job."""

from __future__ import annotations

import json
from pathlib import Path

from edgekit.fsutil import atomic_write_text
from edgekit.report import html, markdown
from edgekit.report.schema import to_json


def write_outputs(report: dict, out_dir: Path) -> list[Path]:
    """report.json, report.md and report.html in `out_dir`."""
    return _write(
        Path(out_dir),
        {
            "report.json": to_json(report),
            "report.md": markdown.report_page(report),
            "report.html": html.render(report),
        },
    )


def write_fleet_summary(result: dict, out_dir: Path) -> list[Path]:
    """summary.json and summary.md of a benchmark on several devices."""
    return _write(
        Path(out_dir),
        {
            "summary.json": json.dumps(result, indent=2) + "\n",
            "summary.md": markdown.fleet(result),
        },
    )


def _write(out_dir: Path, outputs: dict[str, str]) -> list[Path]:
    for name, text in outputs.items():
        atomic_write_text(out_dir / name, text)
    return [out_dir / name for name in outputs]
