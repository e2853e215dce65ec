"""Reading report.json safely: a file from another machine or another tool gets one clear error
paragraph (EdgekitError, exit code 2), never a traceback. This module reads the JSON text (what
can break a parser); `Report.from_json` checks what it holds. Torch-free.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.report.schema import Report

MAX_DEPTH = 64  # a report nests about 8 deep; far deeper JSON would exhaust the stack later
MAX_INT_DIGITS = 300  # larger integers do not fit a float (and Python refuses > 4300 digits)


class _Unreadable(Exception):
    """JSON that parses only in principle: numbers beyond a float, nesting beyond the stack."""


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Unreadable(f"holds an integer of {len(text.lstrip('-'))} digits")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Unreadable(f"holds the number {text[:40]}, beyond what a float can hold")
    return value


def _too_deep(value) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(item, (dict, list)):
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def read_report(path) -> Report:
    """Load and check a report.json (or a folder holding one); `.to_json()` gives the report dict,
    with every variant key of the contract present."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise EdgekitError(f"{path}: no such report file. Pass the report.json that edgekit wrote.")
    data = path.read_bytes()
    deep = (
        f"{path}: JSON nested more than {MAX_DEPTH} levels deep (lists or objects inside each "
        "other); an edgekit report nests far less, so this is not one. Use the report.json that "
        "edgekit wrote."
    )
    try:
        # NaN/Infinity are not JSON; a writer that let one through meant "not measured".
        report = json.loads(
            data.decode("utf-8"),
            parse_constant=lambda _: None,
            parse_int=_parse_int,
            parse_float=_parse_float,
        )
    except _Unreadable as exc:
        raise EdgekitError(
            f"{path}: not a usable edgekit report: it {exc}; no measurement edgekit writes is like "
            "that. The file may have been edited by hand or corrupted; re-run the benchmark."
        ) from None
    except RecursionError:
        raise EdgekitError(deep) from None
    except UnicodeDecodeError:
        raise EdgekitError(
            f"{path}: not a JSON text file (it is not UTF-8); not an edgekit report."
        ) from None
    except json.JSONDecodeError as exc:
        if exc.pos >= len(exc.doc.rstrip()):
            raise EdgekitError(
                f"{path}: the JSON ends early ({len(data)} bytes, cut off at line {exc.lineno}): the "
                "file looks truncated, e.g. by a copy or a run that was stopped while writing. "
                "Copy it again or re-run the benchmark."
            ) from None
        raise EdgekitError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "not an edgekit report."
        ) from None
    if _too_deep(report):
        raise EdgekitError(deep)
    return Report.from_json(report, where=str(path))


def files_listed(folder: Path) -> dict[str, tuple[int | None, str | None]]:
    """The files edgekit wrote into `folder`, as far as a report written before output manifests
    (edgekit.fsutil.MANIFEST) says: {name: (size or None, sha256 or None)}, None where it does not
    say. report.json, .md and .html; each variant's .onnx (its sha256) and the external-data files
    that .onnx names (whether it is edgekit's is its hash's to say). Empty when `folder` holds no
    readable report."""
    try:
        report = read_report(folder / "report.json")
    except EdgekitError:
        return {}
    known: dict[str, tuple[int | None, str | None]] = dict.fromkeys(
        ("report.json", "report.md", "report.html"), (None, None)
    )
    for variant in report.variants:
        name, sha256 = variant.file, variant.sha256
        if not (isinstance(name, str) and isinstance(sha256, str)) or Path(name).name != name:
            continue  # bench reports name models outside the folder
        known[name] = (None, sha256)
        try:
            from edgekit.onnxfile import files_on_disk

            data = files_on_disk(folder / name)[1:]
        except Exception:  # not an ONNX file (then its hash will not match either)
            continue
        known.update((p.name, (None, None)) for p in data if p.parent == folder)
    return known
