"""Set two reports side by side (or every variant of one report against its float root), with the
latency ratio's confidence interval from the raw samples, and regression gates. Torch-free.

Why a block bootstrap of the ratio of medians, not Mann-Whitney: the gate asks "is B slower than A
by more than PCT percent", which needs an effect size with an interval in the unit people read
(1.31x, 95% CI 1.27-1.35); Mann-Whitney only tests whether the distributions differ, and with
thousands of samples it calls a 0.5% shift significant. The samples are consecutive timed runs on a
possibly noisy machine, so neighbours are correlated; resampling blocks of ~sqrt(n) consecutive runs
keeps that, where resampling single runs would give too narrow an interval. Fixed seed: the same
reports always give the same verdict.
"""

from __future__ import annotations

import math

import numpy as np

from edgekit.report.render import NOT_MEASURED, _size

N_BOOT = 2000
MIN_SAMPLES = 10  # fewer than this: no interval, significance unknown


def _block_medians(x: np.ndarray, rng: np.random.Generator, k: int) -> np.ndarray:
    """Medians of k moving-block bootstrap resamples of x."""
    n = len(x)
    block = max(1, round(math.sqrt(n)))
    n_blocks = -(-n // block)
    starts = rng.integers(0, n - block + 1, size=(k, n_blocks))
    idx = (starts[:, :, None] + np.arange(block)).reshape(k, -1)[:, :n]
    return np.median(x[idx], axis=1)


def ratio_ci(samples_a, samples_b, *, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95):
    """(median(B)/median(A), (lo, hi)) with a block-bootstrap CI; (ratio, None) if too few samples."""
    a = np.asarray(samples_a, dtype=float)
    b = np.asarray(samples_b, dtype=float)
    ratio = float(np.median(b) / np.median(a))
    if min(len(a), len(b)) < MIN_SAMPLES:
        return ratio, None
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // max(len(a), len(b)))  # bound memory: chunk x n indices at a time
    boots = []
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        boots.append(_block_medians(b, rng, k) / _block_medians(a, rng, k))
    lo, hi = np.quantile(np.concatenate(boots), [(1 - level) / 2, (1 + level) / 2])
    return ratio, (float(lo), float(hi))


# ---- extracting what is compared -------------------------------------------------------------


def device_name(report: dict) -> str:
    d = report.get("device") or {}
    parts = [str(d[k]) for k in ("arch",) if d.get(k)]
    if d.get("cores"):
        parts.append(f"{d['cores']} cores")
    name = str(d.get("cpu") or "unknown CPU")
    if d.get("board"):  # ARM boards: "Raspberry Pi 5 Model B Rev 1.0: 4× Cortex-A76"
        name = f"{d['board']}: {name}"
    return f"{name} ({', '.join(parts)})" if parts else name


def _metrics(v: dict) -> dict:
    lat = v.get("latency_ms") or {}
    samples = [x for x in (lat.get("samples") or []) if x is not None]
    p50 = lat.get("p50")
    if p50 is None and samples:
        p50 = float(np.median(samples))
    acc = v.get("accuracy") or {}
    return {
        "variant": v["name"],
        "error": v.get("error"),
        "p50_ms": p50,
        "n_samples": len(samples),
        "peak_rss_bytes": (v.get("memory") or {}).get("peak_rss_bytes"),
        "size_bytes": v.get("size_bytes"),
        "cosine_min": acc.get("cosine_min"),
        "max_abs_err": acc.get("max_abs_err"),
        "task_accuracy": acc.get("task_accuracy"),
    }


def _samples(v: dict) -> list:
    return [x for x in ((v.get("latency_ms") or {}).get("samples") or []) if x is not None]


def _root(report: dict, variant: dict) -> dict:
    """Follow `parent` up to the root; the report's first variant if the chain is broken."""
    by_name = {v["name"]: v for v in report["variants"]}
    seen = set()
    while variant.get("parent") is not None:
        if variant["name"] in seen or variant["parent"] not in by_name:
            return report["variants"][0]
        seen.add(variant["name"])
        variant = by_name[variant["parent"]]
    return variant


def _pairs(report_a: dict, report_b: dict | None):
    if report_b is None:
        pairs = [(_root(report_a, v), v) for v in report_a["variants"]]
        return [(a, b) for a, b in pairs if a is not b], [], []
    names_b = {v["name"]: v for v in report_b["variants"]}
    names_a = {v["name"] for v in report_a["variants"]}
    pairs = [(v, names_b[v["name"]]) for v in report_a["variants"] if v["name"] in names_b]
    only_a = [v["name"] for v in report_a["variants"] if v["name"] not in names_b]
    only_b = [v["name"] for v in report_b["variants"] if v["name"] not in names_a]
    return pairs, only_a, only_b


_NO_LATENCY = {"ratio": None, "ci95": None, "significant": None, "method": None}


def _baseline_median(report: dict) -> float | None:
    """Median latency of the report's baseline: the model every variant was interleaved with
    (`settings.baseline` of a bench report; fp32, the first variant, of an optimize report)."""
    by_name = {v["name"]: v for v in report["variants"]}
    name = (report.get("settings") or {}).get("baseline")
    samples = _samples(by_name.get(name) or report["variants"][0])
    return float(np.median(samples)) if samples and min(samples) > 0 else None


def _latency(va: dict, vb: dict, ma: dict, mb: dict, scales=(1.0, 1.0)) -> dict:
    out = dict(_NO_LATENCY)
    sa = [x / scales[0] for x in _samples(va)]
    sb = [x / scales[1] for x in _samples(vb)]
    if sa and sb and min(sa) > 0:
        out["ratio"], out["ci95"] = ratio_ci(sa, sb)
        out["method"] = "block bootstrap of the ratio of medians" if out["ci95"] else None
    elif ma["p50_ms"] and mb["p50_ms"] is not None:
        out["ratio"] = mb["p50_ms"] / ma["p50_ms"]  # no raw samples: a point ratio only
    if out["ci95"]:
        lo, hi = out["ci95"]
        out["significant"] = lo > 1 or hi < 1
    return out


def compare(
    report_a: dict,
    report_b: dict | None = None,
    *,
    labels=("A", "B"),
    fail_if_slower: float | None = None,
    fail_if_drift: float | None = None,
    fail_if_larger: float | None = None,
    normalize: bool = False,
) -> dict:
    """The comparison as a JSON-able dict; `exit_code` is 1 when a gate tripped, else 0.
    `normalize` divides each report's latencies by the median of its own baseline, measured in
    the same interleaved run: drift of the whole machine between the runs then cancels, and what
    is compared is each variant's speed relative to the baseline (whose own spread is left out)."""
    pairs, only_a, only_b = _pairs(report_a, report_b)
    rows = []
    for va, vb in pairs:
        ma, mb = _metrics(va), _metrics(vb)
        scales = (1.0, 1.0)
        if normalize and report_b is not None:
            scales = (_baseline_median(report_a), _baseline_median(report_b))
        failed = bool(ma["error"] or mb["error"]) or None in scales
        size_a, size_b = ma["size_bytes"], mb["size_bytes"]
        rows.append(
            {
                "variant": vb["name"],
                "baseline": va["name"],
                "a": ma,
                "b": mb,
                "failed": failed,
                "latency": _latency(va, vb, ma, mb, scales) if not failed else dict(_NO_LATENCY),
                "size_ratio": size_b / size_a if size_a and size_b is not None else None,
            }
        )
    sides = [{"label": labels[0], "device": device_name(report_a), **_about(report_a)}]
    if report_b is not None:
        sides.append({"label": labels[1], "device": device_name(report_b), **_about(report_b)})
    result = {
        "mode": "one-report" if report_b is None else "two-reports",
        "normalized": normalize and report_b is not None,
        "reports": sides,
        "same_device": len({s["device"] for s in sides}) == 1,
        "rows": rows,
        "only_in_a": only_a,
        "only_in_b": only_b,
        "gates": [],
        "gate_notes": [],
    }
    _apply_gates(result, fail_if_slower, fail_if_drift, fail_if_larger)
    result["exit_code"] = 1 if any(g["tripped"] for g in result["gates"]) else 0
    return result


def _about(report: dict) -> dict:
    return {
        "command": report.get("command"),
        "created_utc": report.get("created_utc"),
        "source": (report.get("source") or {}).get("path"),
        "intra_op_threads": (report.get("settings") or {}).get("intra_op_threads"),
    }


# ---- gates --------------------------------------------------------------------------------------


def _apply_gates(result: dict, slower, drift, larger) -> None:
    gates, notes = result["gates"], result["gate_notes"]
    for row in result["rows"]:
        name, base = row["variant"], row["baseline"]
        who = name if name == base else f"{name} (vs {base})"
        if row["failed"]:
            if any(g is not None for g in (slower, drift, larger)):
                notes.append(f"{who}: failed, so no gate was evaluated for it")
            continue
        a, b, lat = row["a"], row["b"], row["latency"]
        if slower is not None:
            if lat["ratio"] is None:
                notes.append(f"{who}: --fail-if-slower not evaluated: latency not measured")
            else:
                limit = 1 + slower / 100
                sig = lat["significant"]
                tripped = lat["ratio"] > limit and sig is not False
                ci = lat["ci95"]
                detail = (
                    f"95% CI of the ratio {ci[0]:.3f}-{ci[1]:.3f}"
                    if ci
                    else "no raw samples: significance not tested"
                )
                gates.append(
                    {
                        "gate": "--fail-if-slower",
                        "variant": name,
                        "tripped": tripped,
                        "message": f"--fail-if-slower {slower:g}%: {who} p50 {_ms(b['p50_ms'])} "
                        f"vs {_ms(a['p50_ms'])}, {lat['ratio']:.2f}x ({detail}); "
                        f"allowed up to {limit:.2f}x",
                    }
                )
        if drift is not None:
            cos = b["cosine_min"]
            if cos is None:
                notes.append(f"{who}: --fail-if-drift not evaluated: cosine_min not measured")
            else:
                gates.append(
                    {
                        "gate": "--fail-if-drift",
                        "variant": name,
                        "tripped": cos < drift,
                        "message": f"--fail-if-drift {drift:g}: {who} cosine_min {cos:.6f} "
                        f"(worst cosine similarity to the fp32 outputs), bound {drift:g}",
                    }
                )
        if larger is not None:
            if row["size_ratio"] is None:
                notes.append(f"{who}: --fail-if-larger not evaluated: size not known")
            else:
                grow = 100 * (row["size_ratio"] - 1)
                gates.append(
                    {
                        "gate": "--fail-if-larger",
                        "variant": name,
                        "tripped": grow > larger,
                        "message": f"--fail-if-larger {larger:g}%: {who} size "
                        f"{_size(a['size_bytes'])} -> {_size(b['size_bytes'])} ({grow:+.1f}%)",
                    }
                )


# ---- rendering ----------------------------------------------------------------------------------

HEADERS = (
    "variant",
    "p50 A ms",
    "p50 B ms",
    "B/A p50 [95% CI]",
    "verdict",
    "peak RSS A → B",
    "size A → B",
    "cos min A → B",
    "max |err| A → B",
    "task acc A → B",
)

TERMINAL_HEADERS = (
    "variant", "p50 A", "p50 B", "B/A [95% CI]", "verdict", "peak RSS", "size", "cos min",
    "max |err|", "task acc",
)  # fmt: skip


def _ms(x):
    return NOT_MEASURED if x is None else f"{x:.3f} ms"


def _num(x, fmt):
    return NOT_MEASURED if x is None else format(x, fmt)


def _pair(a, b, fmt) -> str:
    fa, fb = fmt(a), fmt(b)
    return fa if fa == fb else f"{fa} → {fb}"


def _verdict(row) -> str:
    if row["failed"]:
        side = "B" if row["b"]["error"] else "A"
        return f"FAILED in {side}: {(row['b']['error'] or row['a']['error'])[:80]}"
    lat = row["latency"]
    r = lat["ratio"]
    if r is None:
        return "not measured"
    if lat["significant"] is None:
        return "no samples: untested"
    if not lat["significant"]:
        return "no significant difference"
    return f"{r:.2f}x slower" if r > 1 else f"{1 / r:.2f}x faster"


def table_rows(result: dict) -> list[list[str]]:
    out = []
    for row in result["rows"]:
        a, b, lat = row["a"], row["b"], row["latency"]
        ratio = NOT_MEASURED if lat["ratio"] is None else f"{lat['ratio']:.3f}"
        if lat["ci95"]:
            ratio += f" [{lat['ci95'][0]:.3f}, {lat['ci95'][1]:.3f}]"
        one = result["mode"] == "one-report"
        name = f"{row['variant']} vs {row['baseline']}" if one else row["variant"]
        out.append(
            [
                name,
                _num(a["p50_ms"], ".3f"),
                _num(b["p50_ms"], ".3f"),
                ratio,
                _verdict(row),
                _pair(a["peak_rss_bytes"], b["peak_rss_bytes"], _size),
                _pair(a["size_bytes"], b["size_bytes"], _size),
                _pair(a["cosine_min"], b["cosine_min"], lambda x: _num(x, ".5f")),
                _pair(a["max_abs_err"], b["max_abs_err"], lambda x: _num(x, ".2e")),
                _pair(
                    a["task_accuracy"],
                    b["task_accuracy"],
                    lambda x: NOT_MEASURED if x is None else f"{100 * x:.1f}%",
                ),
            ]
        )
    return out


def header_lines(result: dict) -> list[str]:
    sides = result["reports"]
    if result["mode"] == "one-report":
        s = sides[0]
        return [
            f"{s['label']}: each variant (B) against its float root (A)",
            f"device: {s['device']}",
        ]
    lines = []
    for s in sides:
        when = f", {s['created_utc']}" if s.get("created_utc") else ""
        lines.append(f"{'A' if s is sides[0] else 'B'}: {s['label']} (on {s['device']}{when})")
    if result["same_device"]:
        lines.append(f"both on {sides[0]['device']}")
    else:
        lines.append(f"two devices: A {sides[0]['device']} vs B {sides[1]['device']}")
    return lines


def footer_lines(result: dict) -> list[str]:
    lines = []
    if result["only_in_a"]:
        lines.append("only in A: " + ", ".join(result["only_in_a"]))
    if result["only_in_b"]:
        lines.append("only in B: " + ", ".join(result["only_in_b"]))
    lines.append(
        "B/A p50: ratio of median latencies with a 95% block-bootstrap CI from the raw samples; "
        "significant when the CI excludes 1."
    )
    if result.get("normalized"):
        lines.append(
            "--normalize: each report's latencies were divided by the median of its own baseline "
            "(fp32, or bench's first model), so machine-wide drift cancels; the baseline itself is "
            "1.00 by construction."
        )
    lines += [f"note: {n}" for n in result["gate_notes"]]
    gates = result["gates"]
    tripped = [g for g in gates if g["tripped"]]
    lines += [f"GATE TRIPPED: {g['message']}" for g in tripped]
    if gates and not tripped:
        lines.append(f"gates passed ({len(gates)} checks)")
    return lines


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(result: dict) -> str:
    lines = ["### edgekit compare", ""]
    lines += [f"- {_md_cell(x)}" for x in header_lines(result)] + [""]
    lines += ["| " + " | ".join(_md_cell(h) for h in HEADERS) + " |", "|---" * len(HEADERS) + "|"]
    for row in table_rows(result):
        cells = [_md_cell(c) for c in row]
        cells[0] = f"`{cells[0]}`"
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for line in footer_lines(result):
        bold = line.startswith("GATE TRIPPED")
        lines.append(f"- {'**' if bold else ''}{_md_cell(line)}{'**' if bold else ''}")
    return "\n".join(lines) + "\n"


def terminal(result: dict, console=None) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from edgekit.report.render import stdout_console

    console = console or stdout_console()
    # markup=False: names and messages come from other machines and may hold "[...]"
    for line in header_lines(result):
        console.print(line, highlight=False, markup=False)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, caption="X → Y: A's value → B's value")
    for header in TERMINAL_HEADERS:
        table.add_column(header, justify="left" if header in ("variant", "verdict") else "right")
    for row, cells in zip(result["rows"], table_rows(result), strict=True):
        style = "red" if row["failed"] else None
        table.add_row(*(Text(c) for c in cells), style=style)
    console.print(table)
    for line in footer_lines(result):
        style = "bold red" if line.startswith("GATE TRIPPED") else "dim"
        console.print(line, style=style, highlight=False, markup=False)
