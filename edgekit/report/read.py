"""Reading report.json safely: a file from another machine or another tool gets one clear error
paragraph (EdgekitError, exit code 2), never a traceback. Torch-free.

The checks are hand-written and cover what readers (compare, the renderers) rely on; fields the
contract may add later within schema version 1 pass through untouched.
"""

from __future__ import annotations

import json
import math
from numbers import Real
from pathlib import Path

from edgekit import __version__, textsafe
from edgekit.errors import EdgekitError
from edgekit.report.schema import REPORT_KIND, SCHEMA_VERSION, VARIANT_KEYS

# Variant keys readers index directly; the other contract keys get their empty default if absent.
REQUIRED_VARIANT_KEYS = (
    "name",
    "parent",
    "size_bytes",
    "latency_ms",
    "memory",
    "accuracy",
    "error",
)
# The numbers readers compute with, and the ranges that keep every ratio and format finite: a time
# is at least 1 ns (the bench rounds to it) and at most 1e9 ms (11.6 days) per run; bytes are whole.
MIN_MS, MAX_MS, MAX_BYTES = 1e-6, 1e9, 1e18
_KINDS = {
    "number": (-math.inf, math.inf, "a number"),
    "time": (MIN_MS, MAX_MS, f"a number of ms, positive, from {MIN_MS:g} to {MAX_MS:g}"),
    "spread": (0, MAX_MS, f"a number of ms from 0 to {MAX_MS:g}"),
    "bytes": (0, MAX_BYTES, f"a whole number of bytes from 0 to {MAX_BYTES:g}"),
}
_NUMBER_FIELDS = {
    "latency_ms": {"p50": "time", "p90": "time", "p99": "time", "mean": "time", "min": "time",
                   "max": "time", "std": "spread", "mad": "spread"},
    "memory": {"peak_rss_bytes": "bytes", "model_rss_bytes": "number"},
    "accuracy": dict.fromkeys(
        ("max_abs_err", "mean_abs_err", "cosine_min", "top1_agreement", "task_accuracy"), "number"
    ),
    "relative": {"speedup": "number"},
}  # fmt: skip
MAX_DEPTH = 64  # a report nests about 8 deep; far deeper JSON would exhaust the stack later
MAX_INT_DIGITS = 300  # larger integers do not fit a float (and Python refuses > 4300 digits)
_DEFAULTS = {"passes": list, "notes": list, "unmeasured": dict}


class _Invalid(Exception):
    pass


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


def read_report(path) -> dict:
    """Load and check a report.json (or a folder holding one). Returns the report dict, with every
    variant key of the contract present."""
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
    _check_kind(path, report)
    try:
        _check(report)
    except _Invalid as exc:
        raise EdgekitError(
            f"{path}: not a usable edgekit report (schema version {SCHEMA_VERSION}): {exc}. "
            "The file may have been edited by hand or written by a broken edgekit build; "
            "re-run the benchmark to get a fresh report."
        ) from None
    return report


def _check_kind(path: Path, report) -> None:
    if not isinstance(report, dict) or report.get("kind") != REPORT_KIND:
        found = (
            f'"kind" is {json.dumps(report.get("kind"))[:60]}'
            if isinstance(report, dict) and "kind" in report
            else f'a JSON {type(report).__name__} without "kind": "{REPORT_KIND}"'
        )
        raise EdgekitError(
            f"{path}: not an edgekit report ({found}). edgekit reads the report.json that "
            "`edgekit optimize` or `edgekit bench` writes."
        )
    version = report.get("schema_version")
    if not _is_int(version) or version < 1:
        raise EdgekitError(
            f"{path}: an edgekit report without a valid schema_version "
            f"(found {json.dumps(version)[:40]}); re-run the benchmark to get a fresh report."
        )
    if version > SCHEMA_VERSION:
        raise EdgekitError(
            f"{path}: this report has schema_version {version} (written by edgekit "
            f"{report.get('edgekit_version', '?')}), newer than this edgekit {__version__} can read "
            f"(up to {SCHEMA_VERSION}). Upgrade edgekit where you read it: pip install -U edgekit."
        )


def _check(report: dict) -> None:
    for key, kind in (("device", dict), ("settings", dict)):
        if report.get(key) is None:
            report[key] = {}
        _expect(report[key], kind, key)
    for key in ("warnings", "inputs", "notes"):
        report.setdefault(key, [])
        _expect(report[key], list, key)
    _expect(report.setdefault("command", None), (str, type(None)), "command")
    _expect(report["settings"].get("baseline"), (str, type(None)), "settings.baseline")
    source = report.setdefault("source", None)
    if source is not None:
        _expect(source, dict, "source")
        _expect(source.get("path"), (str, type(None)), "source.path")
    rec = report.setdefault("recommendation", None)
    if rec is not None:
        _expect(rec, dict, "recommendation")
        _expect(rec.get("variant"), (str, type(None)), "recommendation.variant")
        _expect(rec.get("reason"), (str, type(None)), "recommendation.reason")
    if "variants" not in report:
        raise _Invalid('the "variants" list is missing')
    _expect(report["variants"], list, "variants")
    seen = set()
    for i, variant in enumerate(report["variants"]):
        where = f"variants[{i}]"
        _expect(variant, dict, where)
        missing = [k for k in REQUIRED_VARIANT_KEYS if k not in variant]
        if missing:
            raise _Invalid(f"{where} lacks {', '.join(missing)}")
        _check_variant(variant, where)
        if variant["name"] in seen:
            name = textsafe.plain(variant["name"][:40])
            raise _Invalid(f'{where}: the variant name "{name}" appears twice')
        seen.add(variant["name"])
        for key in VARIANT_KEYS:
            if key not in variant:
                variant[key] = _DEFAULTS[key]() if key in _DEFAULTS else None


def _check_variant(v: dict, where: str) -> None:
    _expect(v["name"], str, f"{where}.name")
    if not v["name"]:
        raise _Invalid(f"{where}.name is empty")
    where = f'{where} ("{textsafe.plain(v["name"][:40])}")'
    _expect(v["parent"], (str, type(None)), f"{where}.parent")
    _expect(v["error"], (str, type(None)), f"{where}.error")
    _expect_number(v["size_bytes"], f"{where}.size_bytes", "bytes")
    for key, fields in _NUMBER_FIELDS.items():
        block = v.get(key)
        if block is None:
            continue
        _expect(block, dict, f"{where}.{key}")
        for field, kind in fields.items():
            _expect_number(block.get(field), f"{where}.{key}.{field}", kind)
        for field in ("ci95", "median_ci95"):
            ci = block.get(field)
            if ci is not None and not (isinstance(ci, list) and len(ci) == 2):
                raise _Invalid(f"{where}.{key}.{field} should be [low, high] or null")
            for x in ci or ():
                _expect_number(x, f"{where}.{key}.{field}")
    samples = (v["latency_ms"] or {}).get("samples")
    if samples is not None:
        _expect(samples, list, f"{where}.latency_ms.samples")
        low, high, _ = _KINDS["time"]
        bad = next((x for x in samples if not (_is_number(x) and low <= x <= high)), False)
        if bad is not False:
            raise _Invalid(
                f"{where}.latency_ms.samples holds {json.dumps(bad)[:40]}; each sample is a time "
                f"in ms, positive, from {low:g} to {high:g}"
            )
    for key in ("notes", "passes"):
        if v.get(key) is not None:
            _expect(v[key], list, f"{where}.{key}")
    if v.get("unmeasured") is not None:
        _expect(v["unmeasured"], dict, f"{where}.unmeasured")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(x)


def _expect_number(x, where: str, kind: str = "number") -> None:
    if x is None:
        return
    low, high, wanted = _KINDS[kind]
    whole = kind != "bytes" or (_is_number(x) and float(x).is_integer())
    if not (_is_number(x) and low <= x <= high and whole):
        raise _Invalid(f"{where} should be {wanted} (or null), not {json.dumps(x)[:40]}")


_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", type(None): "null"}


def _expect(x, kind, where: str) -> None:
    if not isinstance(x, kind):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        wanted = " or ".join(_TYPE_NAMES[k] for k in kinds)
        raise _Invalid(f"{where} should be {wanted}, not {json.dumps(x)[:40]}")


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
    for variant in report["variants"]:
        name, sha256 = variant.get("file"), variant.get("sha256")
        if not (isinstance(name, str) and isinstance(sha256, str)) or Path(name).name != name:
            continue  # bench reports name models outside the folder
        known[name] = (None, sha256)
        try:
            from edgekit.benchmark.flops import files_on_disk

            data = files_on_disk(folder / name)[1:]
        except Exception:  # not an ONNX file (then its hash will not match either)
            continue
        known.update((p.name, (None, None)) for p in data if p.parent == folder)
    return known
