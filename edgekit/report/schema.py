"""The report contract (docs/report-schema.md) as classes: `Report`, its `Variant` rows and the
bench's `Measurement` of one variant. `Report.from_json` checks a report read from anywhere (one
clear EdgekitError paragraph, never a traceback); `to_json` gives the dict report.json holds and
`json_text` the one JSON text edgekit writes. Torch-free: the device side writes reports too.

The checks are hand-written and cover what readers (compare, the renderers) rely on; fields the
contract may add later within schema version 1 pass through untouched (`extra`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from numbers import Real

from edgekit import __version__, textsafe
from edgekit.errors import EdgekitError

SCHEMA_VERSION = 1
REPORT_KIND = "edgekit-report"

# What edgekit.benchmark.measure() reports per variant and a report row carries as is.
MEASURED_KEYS = (
    "latency_ms",
    "cold_start",
    "relative",
    "memory",
    "threads",
    "flops",
    "gflops_per_s",
    "profile",
)


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
    "rate": (0, 1e9, "a number of tokens per second, from 0 to 1e9"),
}
_NUMBER_FIELDS = {
    "latency_ms": {"p50": "time", "p90": "time", "p99": "time", "mean": "time", "min": "time",
                   "max": "time", "std": "spread", "mad": "spread"},
    "memory": {"peak_rss_bytes": "bytes", "model_rss_bytes": "number"},
    "accuracy": dict.fromkeys(
        ("max_abs_err", "mean_abs_err", "cosine_min", "top1_agreement", "task_accuracy",
         "perplexity", "reference_perplexity", "ppl_increase_pct", "kld_mean", "same_top1",
         "greedy_agreement"), "number"
    ),
    "ttft_ms": {"median": "time", "low": "time", "high": "time"},
    "relative": {"speedup": "number"},
}  # fmt: skip


class _Invalid(Exception):
    pass


@dataclass
class Measurement:
    """What the bench measured for one variant (`name`, or `name@Nt` in a thread sweep)."""

    threads: int | None = None
    size_bytes: int | None = None
    latency_ms: dict | None = None
    cold_start: dict | None = None
    relative: dict | None = None
    memory: dict | None = None
    flops: dict | None = None
    gflops_per_s: float | None = None
    profile: list | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    unmeasured: dict[str, str] = field(default_factory=dict)


@dataclass
class Variant:
    """One row of `variants`: every contract key is a field, in the contract's order (scripts
    index the JSON without guarding); keys a later schema-1 writer adds are kept in `extra`."""

    name: str
    parent: str | None = None
    passes: list[dict] = field(default_factory=list)
    runtime: str | None = None  # what runs `file` (onnxruntime, openvino, litert, executorch)
    file: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    latency_ms: dict | None = None
    cold_start: dict | None = None
    relative: dict | None = None
    memory: dict | None = None
    accuracy: dict | None = None
    notes: list[str] = field(default_factory=list)
    unmeasured: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    # from the benchmark (docs/report-schema.md, "bench additions")
    threads: int | list | None = None
    flops: dict | None = None
    gflops_per_s: float | None = None
    profile: list | None = None
    # from the language-model bench (a report with "task": "causal-lm"): tokens_per_s is
    # {"pp128"|"pp512"|"tg128": {"median", "low", "high", "rounds"}}, ttft_ms {"median", "low", "high"}
    tokens_per_s: dict | None = None
    ttft_ms: dict | None = None
    # from passes that make them
    pruning: dict | None = None
    sensitivity: dict | None = None
    extra: dict = field(default_factory=dict)

    def measured(self, m: Measurement) -> Variant:
        """This row with one benchmark result filled in; an error or a note is added, not
        replaced."""
        for key in MEASURED_KEYS:
            setattr(self, key, getattr(m, key))
        if self.size_bytes is None:
            self.size_bytes = m.size_bytes
        self.notes += m.notes
        self.unmeasured.update(m.unmeasured)
        self.error = self.error or m.error
        return self

    def to_json(self) -> dict:
        return {**{key: getattr(self, key) for key in VARIANT_KEYS}, **self.extra}

    @classmethod
    def from_json(cls, data: dict) -> Variant:
        """A row `Report.from_json` has checked; absent contract keys get their empty default."""
        known = {k: v for k, v in data.items() if k in VARIANT_KEYS and v is not None}
        return cls(**known, extra={k: v for k, v in data.items() if k not in VARIANT_KEYS})


# Every variant row has all of these keys, so scripts can index without guarding.
VARIANT_KEYS = tuple(f.name for f in dataclasses.fields(Variant) if f.name != "extra")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Report:
    """A report.json. `extra` holds the top-level keys only some commands write (`made_for`,
    `timings`) and any a later schema-1 writer adds, in their order after the fixed keys."""

    command: str | None
    variants: list[Variant] = field(default_factory=list)
    source: dict | None = None
    inputs: list[dict] = field(default_factory=list)
    data: dict | None = None
    device: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    budget: str | None = None
    notes: list[str] = field(default_factory=list)
    recommendation: dict | None = None
    warnings: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    kind: str = REPORT_KIND
    edgekit_version: str | None = __version__  # None: a report that did not say
    created_utc: str | None = field(default_factory=_now)

    def to_json(self) -> dict:
        """The dict report.json holds (docs/report-schema.md), keys in the contract's order."""
        order = ("schema_version", "kind", "edgekit_version", "command", "created_utc", "source",
                 "inputs", "data", "device", "settings", "variants", "budget", "notes",
                 "recommendation", "warnings")  # fmt: skip
        fields = {key: getattr(self, key) for key in order}
        fields["variants"] = [v.to_json() for v in self.variants]
        return {**fields, **self.extra}

    def text(self) -> str:
        return json_text(self.to_json())

    @classmethod
    def from_json(cls, data, where: str = "report") -> Report:
        """A report dict read from anywhere, checked: one EdgekitError paragraph naming `where`
        (the file) when it is not a usable report, never a traceback."""
        _check_kind(where, data)
        data = dict(data)
        try:
            _check(data)
        except _Invalid as exc:
            raise EdgekitError(
                f"{where}: not a usable edgekit report (schema version {SCHEMA_VERSION}): {exc}. "
                "The file may have been edited by hand or written by a broken edgekit build; "
                "re-run the benchmark to get a fresh report."
            ) from None
        data.setdefault("edgekit_version", None)  # not said: not made up either
        data.setdefault("created_utc", None)
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "variants"}
        return cls(
            **{k: v for k, v in data.items() if k in names},
            variants=[Variant.from_json(v) for v in data["variants"]],
            extra={k: v for k, v in data.items() if k not in names and k != "variants"},
        )


def _check_kind(path: str, report) -> None:
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
    for key in ("warnings", "notes"):  # the renderers show each as a line of text
        for i, line in enumerate(report[key]):
            _expect(line, str, f"{key}[{i}]")
    _expect(report.setdefault("command", None), (str, type(None)), "command")
    _expect(report["settings"].get("baseline"), (str, type(None)), "settings.baseline")
    _expect(report.get("task"), (str, type(None)), "task")
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


def _check_variant(v: dict, where: str) -> None:
    _expect(v["name"], str, f"{where}.name")
    if not v["name"]:
        raise _Invalid(f"{where}.name is empty")
    where = f'{where} ("{textsafe.plain(v["name"][:40])}")'
    _expect(v["parent"], (str, type(None)), f"{where}.parent")
    _expect(v["error"], (str, type(None)), f"{where}.error")
    _expect(v.get("runtime"), (str, type(None)), f"{where}.runtime")
    _expect_number(v["size_bytes"], f"{where}.size_bytes", "bytes")
    for key, fields in _NUMBER_FIELDS.items():
        block = v.get(key)
        if block is None:
            continue
        _expect(block, dict, f"{where}.{key}")
        for name, kind in fields.items():
            _expect_number(block.get(name), f"{where}.{key}.{name}", kind)
        for name in ("ci95", "median_ci95"):
            ci = block.get(name)
            if ci is not None and not (isinstance(ci, list) and len(ci) == 2):
                raise _Invalid(f"{where}.{key}.{name} should be [low, high] or null")
            for x in ci or ():
                _expect_number(x, f"{where}.{key}.{name}")
    speeds = v.get("tokens_per_s")
    if speeds is not None:
        _expect(speeds, dict, f"{where}.tokens_per_s")
        for name, block in speeds.items():
            _expect(block, dict, f"{where}.tokens_per_s.{name}")
            for key in ("median", "low", "high"):
                _expect_number(block.get(key), f"{where}.tokens_per_s.{name}.{key}", "rate")
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


def _clean(value):
    """JSON has no NaN or infinity: an unmeasurable float becomes null, never a made-up number."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _clean(value.item())
    return value


def json_text(value) -> str:
    """The JSON text of a report, a comparison or a fleet summary: the one place edgekit writes
    JSON."""
    return json.dumps(_clean(value), indent=2, allow_nan=False) + "\n"


def build_report(command: str, variants: list[Variant], bench=None, **fields) -> Report:
    """The one place a report is put together: each row gets the bench's `Measurement` of its
    name, the report the bench's device, settings and warnings (before any `warnings` given).
    `bench` is an `edgekit.benchmark.BenchResult`, or None when nothing was timed."""
    if bench is not None:
        for row in variants:
            if row.name in bench.variants:
                row.measured(bench.variants[row.name])
        fields.update(
            device=bench.device,
            settings=bench.settings,
            warnings=[*bench.warnings, *fields.get("warnings", [])],
        )
    return Report(command, variants, **fields)
