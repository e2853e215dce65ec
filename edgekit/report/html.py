"""report.html: one self-contained page (inline CSS, charts as base64 PNG) that needs no network.

Charts use matplotlib's Figure directly (no pyplot: no global state, no GUI backend). Without
matplotlib the page is still written, with a note where the charts would be. Every string from
the report is escaped: reports come from other machines.
"""

from __future__ import annotations

import base64
import inspect
import io
import math
import warnings
from html import escape

from edgekit import __version__, textsafe
from edgekit.report import cells

PARETO_COLOR = "#e6007e"  # distinctive magenta: the screenshot test counts these pixels
POINT_COLOR = "#4c72b0"
BOX_COLOR = "#55a868"
BAR_COLORS = ("#8172b3", "#c44e52")

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;
 background:#fff}
main{max-width:1100px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.15em;margin:1.6em 0 .5em;border-bottom:1px solid #ddd}
.sub{color:#666;margin:0}.note{color:#777;font-size:.9em}
.rec{background:#f3f7ff;border-left:5px solid #4c72b0;padding:10px 16px;margin-top:16px}
.rec b{font-size:1.1em}
table{border-collapse:collapse;font-size:.9em}td,th{padding:4px 10px;border-bottom:1px solid #eee}
th{text-align:left;background:#fafafa}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.best td{background:#fff6e0}tr.failed td{color:#b00}
img.chart{max-width:100%;display:block;margin:8px 0}
.ops{display:flex;flex-wrap:wrap;gap:24px}.bar{background:#c9d6ec;height:10px;display:inline-block}
ul.warn li{color:#8a5a00}
"""


def _e(x) -> str:
    """HTML text: markup escaped, control characters shown as escapes (\\x1b)."""
    return escape(textsafe.plain(x), quote=True)


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _t(name) -> str:
    """A label for matplotlib: a "$" in a variant name must not be read as TeX."""
    return textsafe.plain(name).replace("$", r"\$")


def _usable(v: dict) -> bool:
    return not v.get("error")


# ---- charts ------------------------------------------------------------------------------------


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(chart_id: str, fig, alt: str) -> str:
    return (
        f'<img class="chart" id="{chart_id}" alt="{_e(alt)}" '
        f'src="data:image/png;base64,{_png(fig)}">'
    )


def pareto(points: list[tuple[str, float, float]]) -> list[str]:
    """Names of the points no other point beats on both x and y (lower is better on both)."""
    best = []
    for name, x, y in points:
        dominated = any(
            (x2 <= x and y2 <= y) and (x2 < x or y2 < y) for n2, x2, y2 in points if n2 != name
        )
        if not dominated:
            best.append(name)
    return best


def _drift_metric(variants: list[dict]):
    """1 - cosine_min where every plotted variant has it, else max_abs_err: the one most have."""
    acc = [v.get("accuracy") or {} for v in variants]
    n_cos = sum(_num(a.get("cosine_min")) for a in acc)
    n_err = sum(_num(a.get("max_abs_err")) for a in acc)
    if n_cos >= n_err:
        return (
            "1 − cosine_min vs fp32 (log)",
            lambda a: max(0.0, 1 - a["cosine_min"]) if _num(a.get("cosine_min")) else None,
        )
    return (
        "max |error| vs fp32 (log)",
        lambda a: a["max_abs_err"] if _num(a.get("max_abs_err")) else None,
    )


def chart_speed_kld(report: dict, Figure, notes: list[str]) -> str:
    """A language model's trade-off: generation tokens/s (tg128) against KLD vs fp32."""
    points = []
    for v in report["variants"]:
        tg = ((v.get("tokens_per_s") or {}).get("tg128") or {}).get("median")
        kld = (v.get("accuracy") or {}).get("kld_mean")
        if not v.get("error") and _num(tg) and tg > 0 and _num(kld):
            points.append((v["name"], tg, max(0.0, kld)))
        else:
            notes.append(f"{v['name']}: not in the speed-vs-KLD chart (tg128 or KLD null)")
    if not points:
        return '<p class="note">No variant has both tg128 and KLD measured: no chart.</p>'
    best = set(pareto([(name, -tg, kld) for name, tg, kld in points]))  # faster and closer
    positive = [k for _, _, k in points if k > 0]
    floor = min(positive) / 10 if positive else None  # KLD 0 (fp32) a decade below the rest
    rec = (report.get("recommendation") or {}).get("variant")
    fig = Figure(figsize=(9, 4.6))
    ax = fig.subplots()
    for name, tg, kld in points:
        y = kld if kld > 0 or floor is None else floor
        on_front = name in best
        ax.scatter([tg], [y], s=220 if on_front else 70, marker="*" if on_front else "o",
                   color=PARETO_COLOR if on_front else POINT_COLOR,
                   edgecolor="black" if name == rec else "none", linewidth=1.5, zorder=3)  # fmt: skip
        text = _t(name) + (" (0)" if kld == 0 else "") + (" ← recommended" if name == rec else "")
        ax.annotate(text, (tg, y), xytext=(8, 6), textcoords="offset points", fontsize=9)
    if floor is not None:
        ax.set_yscale("log")
    ax.margins(x=0.12, y=0.15)
    ax.set_xlabel("tg128: generated tokens/s (median)")
    ax.set_ylabel("KLD vs fp32 (log)")
    ax.grid(True, alpha=0.3, which="both")
    ax.set_title("Generation speed vs drift: lower-right is better")
    return _img("chart-speed-kld", fig, "generation tokens per second versus KLD per variant")


def chart_latency_drift(report: dict, Figure, notes: list[str]) -> str:
    if cells.is_lm(report):
        return chart_speed_kld(report, Figure, notes)
    variants = [v for v in report["variants"] if _usable(v)]
    label, drift = _drift_metric(variants)
    points = []
    for v in variants:
        p50 = (v.get("latency_ms") or {}).get("p50")
        y = drift(v.get("accuracy") or {})
        if _num(p50) and y is not None:
            points.append((v["name"], p50, y))
        else:
            notes.append(f"{v['name']}: not in the latency-vs-drift chart (latency or drift null)")
    if not points:
        return '<p class="note">No variant has both latency and drift measured: no chart.</p>'
    best = set(pareto(points))
    fig = Figure(figsize=(9, 4.6))
    ax = fig.subplots()
    positive = [y for _, _, y in points if y > 0]
    # drift 0 (identical outputs) has no place on a log axis: draw it a decade below the rest
    floor = min(positive) / 10 if positive else None
    rec = (report.get("recommendation") or {}).get("variant")
    for name, x, y in points:
        yy = y if y > 0 or floor is None else floor
        on_front = name in best
        ax.scatter(
            [x],
            [yy],
            s=220 if on_front else 70,
            marker="*" if on_front else "o",
            color=PARETO_COLOR if on_front else POINT_COLOR,
            edgecolor="black" if name == rec else "none",
            linewidth=1.5,
            zorder=3,
        )
        text = _t(name) + (" (0)" if y == 0 else "") + (" ← recommended" if name == rec else "")
        ax.annotate(text, (x, yy), xytext=(8, 6), textcoords="offset points", fontsize=9)
    front = sorted((x, y if y > 0 or floor is None else floor) for n, x, y in points if n in best)
    ax.step(
        *zip(*front, strict=True), where="post", color=PARETO_COLOR, linestyle="--", linewidth=1.2
    )
    ax.scatter([], [], marker="*", s=120, color=PARETO_COLOR, label="best trade-off (Pareto)")
    ax.scatter([], [], marker="o", s=50, color=POINT_COLOR, label="dominated")
    ax.legend(loc="upper right", fontsize=9)
    xs = [x for _, x, _ in points]
    if max(xs) / min(xs) > 5:
        ax.set_xscale("log")
    if floor is not None:
        ax.set_yscale("log")
    ax.margins(x=0.08, y=0.15)  # room for the labels beside the points
    ax.set_xlabel("latency p50 (ms)")
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3, which="both")
    ax.set_title("Latency vs drift: lower-left is better")
    return _img("chart-latency-drift", fig, "latency versus drift per variant")


def chart_latency_distributions(report: dict, Figure, notes: list[str]) -> str:
    names, data = [], []
    for v in report["variants"]:
        samples = [x for x in ((v.get("latency_ms") or {}).get("samples") or []) if _num(x)]
        if _usable(v) and samples:
            names.append(v["name"])
            data.append(samples)
        else:
            notes.append(f"{v['name']}: no latency samples to draw")
    if not data:
        return '<p class="note">No variant has latency samples: no chart.</p>'
    fig = Figure(figsize=(9, 0.55 * len(data) + 1.4))
    ax = fig.subplots()
    # matplotlib >= 3.10 says orientation=; older ones only know vert=
    new = "orientation" in inspect.signature(ax.boxplot).parameters
    horizontal = {"orientation": "horizontal"} if new else {"vert": False}
    ax.boxplot(
        data[::-1],
        **horizontal,
        whis=(1, 99),
        showfliers=False,
        patch_artist=True,
        boxprops={"facecolor": BOX_COLOR, "alpha": 0.6},
        medianprops={"color": "black"},
    )
    ax.set_yticks(range(1, len(names) + 1), [_t(n) for n in names[::-1]])
    lo = min(min(d) for d in data)
    if lo > 0 and max(max(d) for d in data) / lo > 5:
        ax.set_xscale("log")
    ax.set_xlabel("latency per run (ms); box: quartiles, whiskers: 1st–99th percentile")
    ax.grid(True, axis="x", alpha=0.3)
    return _img("chart-latency-distributions", fig, "latency distribution per variant")


def chart_memory_size(report: dict, Figure, notes: list[str]) -> str:
    fig = Figure(figsize=(9, 0.45 * len(report["variants"]) + 1.6))
    axes = fig.subplots(1, 2)
    drew = False
    for ax, color, (title, get) in zip(
        axes,
        BAR_COLORS,
        (
            ("peak RSS (MB)", lambda v: (v.get("memory") or {}).get("peak_rss_bytes")),
            ("model size (MB)", lambda v: v.get("size_bytes")),
        ),
        strict=True,
    ):
        names, values = [], []
        for v in report["variants"]:
            value = get(v)
            if _usable(v) and _num(value):
                names.append(_t(v["name"]))
                values.append(value / 1e6)
            else:
                notes.append(f"{v['name']}: {title.split(' (')[0]} not measured")
        ax.set_title(title, fontsize=10)
        if not values:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        drew = True
        ax.barh(names[::-1], values[::-1], color=color)
        for y, value in enumerate(values[::-1]):
            ax.annotate(f"{value:.2f}", (value, y), xytext=(3, 0), textcoords="offset points",
                        va="center", fontsize=8)  # fmt: skip
        ax.margins(x=0.18)
    if not drew:
        return '<p class="note">Neither memory nor size was measured: no chart.</p>'
    with warnings.catch_warnings():  # long names: a tighter layout is not possible, and no matter
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    return _img("chart-memory-size", fig, "peak memory and model size per variant")


def _charts(report: dict) -> tuple[dict, list[str]]:
    try:
        from matplotlib import rc_context
        from matplotlib.figure import Figure
    except ImportError:
        note = (
            '<p class="note">Charts need matplotlib, which is not installed here: '
            "<code>pip install 'edgekit[html]'</code> and render again.</p>"
        )
        return dict.fromkeys(("drift", "dist", "mem"), note), []
    notes: list[str] = []
    charts = {}
    with rc_context({"font.size": 10}):
        for key, draw in (
            ("drift", chart_latency_drift),
            ("dist", chart_latency_distributions),
            ("mem", chart_memory_size),
        ):
            try:
                charts[key] = draw(report, Figure, notes)
            except Exception as exc:  # a chart must never cost the user the whole report
                charts[key] = f'<p class="note">This chart could not be drawn: {_e(exc)}</p>'
    return charts, sorted(set(notes), key=notes.index)


# ---- page sections ---------------------------------------------------------------------------


def _variants_table(report: dict) -> str:
    rec = (report.get("recommendation") or {}).get("variant")
    head = "".join(f"<th>{_e(h)}</th>" for h in cells.headers(report=report))
    body = []
    for v, row in zip(report["variants"], cells.rows(report), strict=True):
        cls = "failed" if v.get("error") else "best" if v["name"] == rec else ""
        tds = "".join(
            f'<td class="{"" if i == 0 else "n"}">{_e(c)}</td>' for i, c in enumerate(row)
        )
        body.append(f'<tr class="{cls}">{tds}</tr>')
        if v.get("error"):
            span = len(cells.headers(report=report))
            body.append(
                f'<tr class="failed"><td colspan="{span}">FAILED: {_e(v["error"])}</td></tr>'
            )
    return f'<table id="variants"><tr>{head}</tr>{"".join(body)}</table>'


def _profile_ops(prof) -> list[tuple[str, float, float | None]]:
    """(op, ms per run, share %) from either profile shape, skipping malformed entries: a list of
    {op, ms, pct}, or the bench's {"runs", "ops": [{op_type, per_run_us | total_us, share}]}."""
    if isinstance(prof, dict):
        runs = prof.get("runs") if _num(prof.get("runs")) and prof.get("runs") > 0 else 1
        entries = []
        for p in prof.get("ops") or []:
            if not isinstance(p, dict):
                continue
            us = p.get("per_run_us")
            us = us if _num(us) else (p["total_us"] / runs if _num(p.get("total_us")) else None)
            share = p.get("share")
            entries.append(
                {"op": p.get("op_type"), "ms": None if us is None else us / 1000,
                 "pct": 100 * share if _num(share) else None}
            )  # fmt: skip
        prof = entries
    if not isinstance(prof, list):
        return []
    ops = [p for p in prof if isinstance(p, dict) and _num(p.get("ms"))]
    return [(str(p.get("op", "?")), p["ms"], p["pct"] if _num(p.get("pct")) else None) for p in ops]


def _profile_tables(report: dict) -> str:
    blocks = []
    for v in report["variants"]:
        ops = _profile_ops(v.get("profile"))
        if not ops:
            continue
        total = sum(ms for _, ms, _ in ops) or 1.0
        rows = []
        for op, ms, pct in sorted(ops, key=lambda p: -p[1])[:10]:
            pct = min(max(100 * ms / total if pct is None else pct, 0.0), 100.0)
            rows.append(
                f"<tr><td>{_e(op)}</td><td class=n>{ms:.4f}</td>"
                f'<td class=n>{pct:.1f}%</td><td><span class="bar" style="width:{pct:.0f}px">'
                "</span></td></tr>"
            )
        blocks.append(
            f"<div><h3>{_e(v['name'])}</h3><table><tr><th>operator</th><th>ms/run</th>"
            f"<th>share</th><th></th></tr>{''.join(rows)}</table></div>"
        )
    if not blocks:
        return '<p class="note">No variant was profiled.</p>'
    return f'<div class="ops">{"".join(blocks)}</div>'


def _kv_table(d: dict) -> str:
    rows = []
    for key, value in d.items():
        if isinstance(value, list):
            value = ", ".join(map(str, value)) or "—"
        rows.append(f"<tr><th>{_e(key)}</th><td>{_e('—' if value is None else value)}</td></tr>")
    return f"<table>{''.join(rows)}</table>"


def _notes(report: dict, chart_notes: list[str]) -> str:
    items = []
    for name, note, failed in cells.note_items(report):
        who = "" if name is None else f"<b>{_e(name)}</b>{' failed' if failed else ''}: "
        items.append(f"<li>{who}{_e(note)}</li>")
    items += [f'<li class="note">{_e(n)}</li>' for n in chart_notes]
    return f"<ul>{''.join(items)}</ul>" if items else '<p class="note">None.</p>'


def render(report: dict) -> str:
    """The whole page as one string."""
    charts, chart_notes = _charts(report)
    source = report.get("source") or {}
    title = source.get("path") or ", ".join(v["name"] for v in report["variants"]) or "report"
    rec = report.get("recommendation")
    rec_html = (
        f'<section class="rec" id="recommendation">Recommended: <b>{_e(rec.get("variant"))}</b>'
        f"<p>{_e(rec.get('reason') or '')}</p></section>"
        if rec
        else '<section class="rec" id="recommendation">No recommendation in this report.</section>'
    )
    warnings = report.get("warnings") or []
    warn_html = (
        '<ul class="warn">' + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul>"
        if warnings
        else '<p class="note">None.</p>'
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edgekit report — {_e(title)}</title><style>{CSS}</style></head>
<body><main>
<h1>edgekit {_e(report.get("command") or "")} report: {_e(title)}</h1>
<p class="sub">{_e(cells.device_line(report))} · created {_e(report.get("created_utc") or "?")}
 · edgekit {_e(report.get("edgekit_version") or "?")}</p>
{rec_html}
<h2>Variants</h2>
{_variants_table(report)}
<p class="note">— = not measured (see Notes). Highlighted: the recommended variant.</p>
<h2>{"Generation speed vs drift" if cells.is_lm(report) else "Latency vs drift"}</h2>
{charts["drift"]}
<p class="note">Stars: the best trade-offs (no other variant is both faster and closer to fp32).
Drift is measured against the fp32 model's outputs; identical outputs are drawn at the bottom.</p>
<h2>Latency distributions</h2>
{charts["dist"]}
<h2>Memory and size</h2>
{charts["mem"]}
<h2>Top operators</h2>
{_profile_tables(report)}
<h2>Device and conditions</h2>
{_kv_table(report.get("device") or {})}
<h3>Run settings</h3>
{_kv_table(report.get("settings") or {})}
<h2>Warnings</h2>
{warn_html}
<h2>Notes</h2>
{_notes(report, chart_notes)}
<p class="note">Written by edgekit {_e(__version__)}. This page is self-contained and needs no
network.</p>
</main></body></html>
"""
