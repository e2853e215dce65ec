"""What the showdown scripts in tools/ share: their command line and the folder they work in."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def arguments(doc: str, prefix: str, min_time: float, max_time: float, extra=None):
    """Parse --min-time/--max-time (seconds per variant), --keep, --only and what `extra(parser)`
    adds. Returns (args, the work folder): --keep's, or a new temporary one named by `prefix`."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument(
        "--min-time", type=float, default=min_time, help="seconds per variant, at least"
    )
    parser.add_argument(
        "--max-time", type=float, default=max_time, help="seconds per variant, at most"
    )
    parser.add_argument("--keep", type=Path, help="keep the models and reports in this folder")
    parser.add_argument("--only", help="run only the models whose title contains this")
    if extra:
        extra(parser)
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    return args, work


def selected(title: str, args) -> bool:
    """Whether --only lets this model run."""
    return not args.only or args.only.lower() in title.lower()
