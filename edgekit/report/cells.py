"""The words and numbers every output format shows, as plain strings: a report's variant table,
notes and device line, and a comparison's table and lines. The formats (terminal.py, markdown.py,
html.py) only decide how to show them, and escape them there: the strings come from reports,
which may come from other machines."""

from __future__ import annotations

import re

COLUMNS = (
    # header, function(variant) -> text, shown in the (narrow) terminal table too
    ("variant", lambda v: v["name"], True),
    ("runtime", lambda v: _runtime(v.get("runtime")), True),
    ("size", lambda v: size(v["size_bytes"]), True),
    ("p50 ms", lambda v: _latency(v, "p50"), True),
    ("p90 ms", lambda v: _latency(v, "p90"), False),
    ("speed", lambda v: _relative(v), True),
    ("peak RSS", lambda v: size((v["memory"] or {}).get("peak_rss_bytes")), True),
    ("cos min", lambda v: _num((v["accuracy"] or {}).get("cosine_min"), ".4f"), True),
    ("max |err|", lambda v: _num((v["accuracy"] or {}).get("max_abs_err"), ".2e"), False),
    ("top-1", lambda v: _top1(v["accuracy"] or {}), True),
    ("task acc", lambda v: _pct((v["accuracy"] or {}).get("task_accuracy")), True),
)

# A language model's report ("task": "causal-lm"): llama-bench's speeds and llama.cpp's drift
# figures. The speed columns between them are the ones the report measured (_lm_rate_columns).
LM_FIRST_COLUMNS = (
    ("variant", lambda v: v["name"], True),
    ("runtime", lambda v: _runtime(v.get("runtime")), False),
)
LM_COLUMNS = (
    ("TTFT ms", lambda v: _num((v.get("ttft_ms") or {}).get("median"), ".1f"), True),
    ("peak RSS", lambda v: size((v["memory"] or {}).get("peak_rss_bytes")), True),
    ("size", lambda v: size(v["size_bytes"]), True),
    ("perplexity", lambda v: _num((v["accuracy"] or {}).get("perplexity"), ".3f"), True),
    ("ppl Δ", lambda v: _signed_pct((v["accuracy"] or {}).get("ppl_increase_pct")), False),
    ("KLD", lambda v: _num((v["accuracy"] or {}).get("kld_mean"), ".4f"), True),
    ("same top-1", lambda v: _pct((v["accuracy"] or {}).get("same_top1")), True),
    ("greedy agree", lambda v: _pct((v["accuracy"] or {}).get("greedy_agreement")), False),
)

LM_DRIFT_HEADERS = ("perplexity", "ppl Δ", "KLD", "same top-1", "greedy agree")
NOT_MEASURED = "—"


def is_lm(report: dict | None) -> bool:
    return bool(report) and report.get("task") == "causal-lm"


def _rate(variant, key):
    block = (variant.get("tokens_per_s") or {}).get(key) or {}
    return _num(block.get("median"), ".1f")


def _signed_pct(x):
    return NOT_MEASURED if x is None else f"{x:+.2f}%"


def size(n):
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


# Short names keep the terminal table narrow; the report holds the full ones.
_RUNTIME_SHORT = {
    "onnxruntime": "ort",
    "openvino": "openvino",
    "litert": "litert",
    "executorch": "executorch",
}


def _runtime(name):
    return NOT_MEASURED if name is None else _RUNTIME_SHORT.get(name, name)


def _top1(accuracy):
    """Top-1 agreement, for a classifier's output only: an embedding's argmax means nothing."""
    if accuracy.get("output_kind", "classifier") != "classifier":
        return NOT_MEASURED
    return _pct(accuracy.get("top1_agreement"))


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


# llama-bench's default speeds: what optimize measures, and the columns when none was measured
LM_DEFAULT_RATES = ("pp512", "pp128", "tg128")
# a report read from a file could name any number of speeds: the table shows this many of each kind
MAX_RATE_COLUMNS = 4


def _lm_rate_columns(report: dict) -> tuple:
    """A column per speed the variants were measured at (`edgekit bench --prompt-tokens 16
    --gen-tokens 8` measures pp16 and tg8, not llama-bench's pp512 and tg128), longest first.
    The terminal shows the longest prompt and every generation length."""
    keys = {k for v in report["variants"] for k in (v.get("tokens_per_s") or {})} or set(
        LM_DEFAULT_RATES
    )
    columns = []
    for kind in ("pp", "tg"):
        lengths = sorted(
            (int(k[2:]) for k in keys if re.fullmatch(kind + r"[1-9]\d{0,6}", k)), reverse=True
        )
        for i, n in enumerate(lengths[:MAX_RATE_COLUMNS]):
            key = f"{kind}{n}"
            narrow = kind == "tg" or i == 0
            columns.append((f"{key} tok/s", lambda v, key=key: _rate(v, key), narrow))
    return tuple(columns)


def _columns(terminal: bool, report: dict | None) -> list[tuple]:
    columns = (
        (*LM_FIRST_COLUMNS, *_lm_rate_columns(report), *LM_COLUMNS) if is_lm(report) else COLUMNS
    )
    chosen = [(h, fn) for h, fn, narrow in columns if narrow or not terminal]
    if is_lm(report) and report.get("command") == "bench":  # a bench measures no drift
        chosen = [(h, fn) for h, fn in chosen if h not in LM_DRIFT_HEADERS]
    return chosen


def headers(terminal: bool = False, report: dict | None = None) -> list[str]:
    return [h for h, _ in _columns(terminal, report)]


def rows(report: dict, terminal: bool = False) -> list[list[str]]:
    return [[fn(v) for _, fn in _columns(terminal, report)] for v in report["variants"]]


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


def title(report: dict) -> str:
    source = report.get("source") or {}
    return source.get("path") or ", ".join(v["name"] for v in report["variants"])


def device_line(report: dict) -> str:
    d = report.get("device") or {}
    s = report.get("settings") or {}
    return (
        f"device: {d['board'] + ': ' if d.get('board') else ''}{d.get('cpu')} "
        f"({d.get('arch')}, {d.get('cores')} cores) · "
        f"onnxruntime {d.get('onnxruntime')}"
        + (f" · onnxruntime-genai {d['onnxruntime_genai']}" if d.get("onnxruntime_genai") else "")
        + f" · threads {s.get('intra_op_threads')}"
    )


def bench_lines(report: dict) -> list[str]:
    """hyperfine-style lines: mean ± σ, range, interval of the median, and the speedup."""
    lines = []
    for v in report["variants"]:
        lat = v["latency_ms"]
        if not lat:
            continue
        ci = lat.get("median_ci95") or [None, None]
        ci_text = f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci[0] is not None else "n/a"
        std = lat["std"] if lat["std"] is not None else float("nan")
        line = (
            f"{v['name']}: median {lat['p50']:.4f} ms (95% CI {ci_text}), "
            f"mean {lat['mean']:.4f} ± {std:.4f} ms, range {lat['min']:.4f} … {lat['max']:.4f} ms, "
            f"{lat['n']} runs"
        )
        if v.get("gflops_per_s"):
            line += f", {v['gflops_per_s']:.1f} GFLOP/s"
        lines.append(line)
        rel = v.get("relative")
        if rel and rel.get("speedup"):
            s, rci = rel["speedup"], rel.get("ci95")
            word, factor = ("faster", s) if s >= 1 else ("slower", 1 / s)
            spread = ""
            if rci:
                lo, hi = (rci[0], rci[1]) if s >= 1 else (1 / rci[1], 1 / rci[0])
                spread = f" ± {(hi - lo) / 2:.2f}"
            verdict = "" if rel.get("significant") else " (not significant)"
            lines.append(f"  {factor:.2f}{spread} times {word} than {rel['baseline']}{verdict}")
        if v.get("profile") and v["profile"].get("ops"):
            top = ", ".join(
                f"{op['op_type']} {100 * op['share']:.0f}%" for op in v["profile"]["ops"][:4]
            )
            lines.append(f"  time by operator: {top}")
    return lines


# ---- a comparison (edgekit.report.compare) --------------------------------------------------

COMPARE_HEADERS = (
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

COMPARE_TERMINAL_HEADERS = (
    "variant", "p50 A", "p50 B", "B/A [95% CI]", "verdict", "peak RSS", "size", "cos min",
    "max |err|", "task acc",
)  # fmt: skip


COMPARE_LM_HEADERS = (
    "variant", "tg128 tok/s A → B", "B/A time per token [95% CI]", "verdict", "pp512 tok/s A → B",
    "TTFT ms A → B", "peak RSS A → B", "size A → B", "perplexity A → B", "KLD A → B",
)  # fmt: skip
COMPARE_LM_TERMINAL_HEADERS = (
    "variant", "tg128 tok/s", "B/A [95% CI]", "verdict", "pp512 tok/s", "TTFT ms", "peak RSS",
    "size", "perplexity", "KLD",
)  # fmt: skip


def compare_headers(result: dict, terminal: bool) -> tuple[str, ...]:
    if result.get("task") == "causal-lm":
        return COMPARE_LM_TERMINAL_HEADERS if terminal else COMPARE_LM_HEADERS
    return COMPARE_TERMINAL_HEADERS if terminal else COMPARE_HEADERS


def _pair(a, b, fmt) -> str:
    fa, fb = fmt(a), fmt(b)
    return fa if fa == fb else f"{fa} → {fb}"


def _verdict(row) -> str:
    if row["failed"]:
        error = row["b"]["error"] or row["a"]["error"]
        if error is None:  # --normalize, and a report's baseline has no timings to divide by
            return "not measured: a report's baseline has no timings"
        return f"FAILED in {'B' if row['b']['error'] else 'A'}: {error[:80]}"
    lat = row["latency"]
    r = lat["ratio"]
    if r is None:
        return "not measured"
    if lat["significant"] is None:
        return "no samples: untested"
    if not lat["significant"]:
        return "no significant difference"
    return f"{r:.2f}x slower" if r > 1 else f"{1 / r:.2f}x faster"


def compare_rows(result: dict) -> list[list[str]]:
    out = []
    for row in result["rows"]:
        a, b, lat = row["a"], row["b"], row["latency"]
        ratio = NOT_MEASURED if lat["ratio"] is None else f"{lat['ratio']:.3f}"
        if lat["ci95"]:
            ratio += f" [{lat['ci95'][0]:.3f}, {lat['ci95'][1]:.3f}]"
        one = result["mode"] == "one-report"
        name = f"{row['variant']} vs {row['baseline']}" if one else row["variant"]
        if result.get("task") == "causal-lm":
            out.append(_lm_compare_row(name, a, b, ratio, row))
            continue
        out.append(
            [
                name,
                _num(a["p50_ms"], ".3f"),
                _num(b["p50_ms"], ".3f"),
                ratio,
                _verdict(row),
                _pair(a["peak_rss_bytes"], b["peak_rss_bytes"], size),
                _pair(a["size_bytes"], b["size_bytes"], size),
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


def _lm_compare_row(name: str, a: dict, b: dict, ratio: str, row: dict) -> list[str]:
    def rate(block):
        return _num((block or {}).get("median"), ".1f")

    return [
        name,
        _pair(a["tg128"], b["tg128"], rate),
        ratio,
        _verdict(row),
        _pair(a["pp512"], b["pp512"], rate),
        _pair(a["ttft_ms"], b["ttft_ms"], lambda x: _num(x, ".1f")),
        _pair(a["peak_rss_bytes"], b["peak_rss_bytes"], size),
        _pair(a["size_bytes"], b["size_bytes"], size),
        _pair(a["perplexity"], b["perplexity"], lambda x: _num(x, ".3f")),
        _pair(a["kld_mean"], b["kld_mean"], lambda x: _num(x, ".4f")),
    ]


def compare_header_lines(result: dict) -> list[str]:
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


def compare_footer_lines(result: dict) -> list[str]:
    lines = []
    if result["only_in_a"]:
        lines.append("only in A: " + ", ".join(result["only_in_a"]))
    if result["only_in_b"]:
        lines.append("only in B: " + ", ".join(result["only_in_b"]))
    if result.get("task") == "causal-lm":
        lines.append(
            "B/A time per token: A's tg128 tokens/s over B's; its interval is what the two rates' "
            "95% intervals allow at most; significant when it excludes 1."
        )
    else:
        lines.append(
            "B/A p50: ratio of median latencies with a 95% block-bootstrap CI from the raw "
            "samples; significant when the CI excludes 1."
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
