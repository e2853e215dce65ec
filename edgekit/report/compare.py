"""Set two reports side by side (or every variant of one report against its float root), with the
latency ratio's confidence interval from the timing samples (edgekit.stats.sample_ratio),
and regression gates. Torch-free."""

from __future__ import annotations

import numpy as np

from edgekit.report.cells import size
from edgekit.stats import sample_ratio

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


def _lm_metrics(v: dict) -> dict:
    """A language model's row (llama-bench speeds, llama.cpp's drift figures)."""
    speeds, acc = v.get("tokens_per_s") or {}, v.get("accuracy") or {}
    return {
        "variant": v["name"],
        "error": v.get("error"),
        "tg128": speeds.get("tg128"),
        "pp512": speeds.get("pp512"),
        "ttft_ms": (v.get("ttft_ms") or {}).get("median"),
        "peak_rss_bytes": (v.get("memory") or {}).get("peak_rss_bytes"),
        "size_bytes": v.get("size_bytes"),
        "perplexity": acc.get("perplexity"),
        "kld_mean": acc.get("kld_mean"),
        "cosine_min": None,  # the drift gate's figure; an LM's drift is KLD
    }


def _per_token(ma: dict, mb: dict) -> dict:
    """B/A time per generated token (tg128), with the interval the two rates' 95% intervals
    allow at most (an LM report keeps medians and intervals, not samples)."""
    out = dict(_NO_LATENCY)
    a, b = ma["tg128"] or {}, mb["tg128"] or {}
    if a.get("median") and b.get("median"):
        out["ratio"] = a["median"] / b["median"]
        if all(x for x in (a.get("low"), a.get("high"), b.get("low"), b.get("high"))):
            out["ci95"] = [a["low"] / b["high"], a["high"] / b["low"]]
            out["method"] = "bounds of the two tg128 rates' 95% intervals"
            out["significant"] = out["ci95"][0] > 1 or out["ci95"][1] < 1
    return out


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
        out["ratio"], out["ci95"] = sample_ratio(sa, sb)
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
    from edgekit.errors import EdgekitError
    from edgekit.report.cells import is_lm

    lm = is_lm(report_a)
    if report_b is not None and is_lm(report_b) != lm:
        raise EdgekitError(
            "One report is of a language model and the other is not: compare reports of the "
            "same kind of model."
        )
    pairs, only_a, only_b = _pairs(report_a, report_b)
    rows = []
    for va, vb in pairs:
        ma, mb = (_lm_metrics(va), _lm_metrics(vb)) if lm else (_metrics(va), _metrics(vb))
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
                "latency": dict(_NO_LATENCY)
                if failed
                else _per_token(ma, mb)
                if lm
                else _latency(va, vb, ma, mb, scales),
                "size_ratio": size_b / size_a if size_a and size_b is not None else None,
            }
        )
    sides = [{"label": labels[0], "device": device_name(report_a), **_about(report_a)}]
    if report_b is not None:
        sides.append({"label": labels[1], "device": device_name(report_b), **_about(report_b)})
    if lm and normalize:
        raise EdgekitError("--normalize divides latencies by fp32's; an LM report has tokens/s.")
    result = {
        "task": "causal-lm" if lm else None,
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
                what = (
                    f"tg128 {_rate(b['tg128'])} vs {_rate(a['tg128'])}, time per token"
                    if result["task"] == "causal-lm"
                    else f"p50 {_ms(b['p50_ms'])} vs {_ms(a['p50_ms'])}"
                )
                gates.append(
                    {
                        "gate": "--fail-if-slower",
                        "variant": name,
                        "tripped": tripped,
                        "message": f"--fail-if-slower {slower:g}%: {who} {what}, "
                        f"{lat['ratio']:.2f}x ({detail}); allowed up to {limit:.2f}x",
                    }
                )
        if drift is not None:
            cos = b["cosine_min"]
            if result["task"] == "causal-lm":
                notes.append(
                    f"{who}: --fail-if-drift not evaluated: a language model's drift is KLD"
                )
            elif cos is None:
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
                        f"{size(a['size_bytes'])} -> {size(b['size_bytes'])} ({grow:+.1f}%)",
                    }
                )


def _ms(x):
    return "—" if x is None else f"{x:.3f} ms"


def _rate(block):
    return "—" if not block or block.get("median") is None else f"{block['median']:.1f} tok/s"


def compare_reports(
    a,
    b=None,
    *,
    normalize: bool = False,
    fail_if_slower: float | None = None,
    fail_if_drift: float | None = None,
    fail_if_larger: float | None = None,
) -> dict:
    """`edgekit.compare`: two reports side by side (paths, folders, Reports or report dicts), or
    with one report each variant against its float root. `result["exit_code"]` is 1 when a gate
    tripped. Loads neither the benchmark nor torch."""
    from edgekit.report.read import read_report
    from edgekit.report.schema import Report

    def read(r) -> dict:
        if isinstance(r, Report):
            return r.to_json()
        return Report.from_json(r).to_json() if isinstance(r, dict) else read_report(r).to_json()

    given = [r for r in (a, b) if r is not None]
    labels = tuple("report" if isinstance(r, (Report, dict)) else str(r) for r in given) + ("",)
    reports = [read(r) for r in given]
    return compare(
        reports[0],
        reports[1] if len(reports) == 2 else None,
        labels=labels,
        fail_if_slower=fail_if_slower,
        fail_if_drift=fail_if_drift,
        fail_if_larger=fail_if_larger,
        normalize=normalize,
    )
