"""Two monitors no general server has: live drift against a shadow (float) variant, and inputs
outside the range static int8 was calibrated on. Both export metrics and a JSON summary
(GET /edgekit/monitor).

Live drift: a sample of requests (--shadow-rate) is run through the shadow variant too, on its own
thread after the response is sent; when it is busy, sampled requests are skipped (and counted), so
the served path never waits for it. The budget (the report's, or --max-drift) is judged over the
last WINDOW comparisons as the report judges it: cosine>=B on the lowest cosine, top1>=B on the
share of rows whose top-1 class agrees. accuracy-drop needs labels, which live traffic lacks.
"""

from __future__ import annotations

import math
import random
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edgekit.accuracy import drift
from edgekit.recommend import Budget
from edgekit.serve.metrics import Metrics

WINDOW = 100  # comparisons the budget is judged over
MAX_PENDING = 4  # sampled requests waiting for the shadow before new samples are skipped
NO_RANGE = (
    "unavailable: the report gives no calibration range for this input (no static int8 "
    "variant, or a report written before edgekit recorded ranges)"
)


class InputRange:
    """Counts requests whose inputs fall outside the calibration range in report['inputs']."""

    def __init__(self, model: str, report_inputs: list[dict] | None, metrics: Metrics):
        self.model, self.metrics, self.lock = model, metrics, threading.Lock()
        self.ranges: dict[str, dict | None] = {}
        for entry in report_inputs or []:
            cal = entry.get("calibration") if isinstance(entry, dict) else None
            ok = isinstance(cal, dict) and all(
                isinstance(cal.get(k), (int, float)) and math.isfinite(cal[k])
                for k in ("min", "max")
            )
            self.ranges[str(entry.get("name"))] = cal if ok else None
        self.counts = {name: [0, 0] for name in self.ranges}  # checked, outside
        for name, cal in self.ranges.items():
            metrics.range_available.labels(model, name).set(1 if cal else 0)

    def observe(self, feeds: dict[str, np.ndarray]) -> None:
        for name, array in feeds.items():
            cal = self.ranges.get(name)
            if cal is None or array.size == 0 or not np.issubdtype(array.dtype, np.number):
                continue
            # NaN compares false with everything: not (min >= lo) catches it, and infinity
            outside = not (array.min() >= cal["min"] and array.max() <= cal["max"])
            with self.lock:
                self.counts[name][0] += 1
                self.counts[name][1] += outside
            self.metrics.range_checked.labels(self.model, name).inc()
            if outside:
                self.metrics.range_outside.labels(self.model, name).inc()

    def summary(self) -> dict:
        out = {}
        with self.lock:
            for name, cal in self.ranges.items():
                if cal is None:
                    out[name] = {"calibration": None, "note": NO_RANGE}
                else:
                    checked, outside = self.counts[name]
                    out[name] = {"calibration": cal, "checked": checked, "outside": outside}
        return out


class Shadow:
    def __init__(
        self,
        model: str,
        shadow: str,
        path: Path,
        rate: float,
        budget: Budget | None,
        metrics: Metrics,
    ):
        from edgekit.serve.model import load_session

        self.model, self.shadow, self.rate, self.budget = model, shadow, rate, budget
        self.metrics, self.lock = metrics, threading.Lock()
        self.session = load_session(path, 1)
        self.names = [o.name for o in self.session.get_outputs()]
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=f"shadow-{model}")
        self.pending = 0
        self.recent: deque[tuple[float, int, int | None]] = deque(maxlen=WINDOW)
        self.totals = {
            "comparisons": 0, "nonfinite": 0, "skipped": 0, "rows": 0, "top1_agree": 0,
            "errors": 0,
        }  # fmt: skip
        self.last_error: str | None = None
        self.labels = (model, shadow)
        if budget is not None and budget.metric != "accuracy-drop":
            metrics.shadow_breach.labels(model, shadow, str(budget)).set(0)

    def maybe(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        """Called after a successful request: compare a sample of them, never blocking."""
        if random.random() >= self.rate:
            return
        with self.lock:
            if self.pending >= MAX_PENDING:
                self.totals["skipped"] += 1
                self.metrics.shadow_dropped.labels(*self.labels).inc()
                return
            self.pending += 1
        self.pool.submit(self._compare, feeds, outputs)

    def _compare(self, feeds, outputs) -> None:
        try:
            self._compare_one(feeds, outputs)
        finally:  # whatever happens, the slot is free again: the shadow keeps sampling
            with self.lock:
                self.pending -= 1

    def _compare_one(self, feeds, outputs) -> None:
        try:
            reference = self.session.run(self.names, feeds)
            served = [outputs[n] for n in self.names if n in outputs]
            if len(served) != len(reference):  # differently named outputs: by position
                served = list(outputs.values())
            acc, _ = drift(reference, served)
        except Exception as exc:  # a shadow failure must not touch serving; it is reported
            with self.lock:
                self.totals["errors"] += 1
                self.last_error = str(exc)[:500]
            return
        rows = int(acc["samples"])
        agree = None if acc["top1_agreement"] is None else round(acc["top1_agreement"] * rows)
        # None when an output held NaN or infinity: a failed comparison, counted, never agreement
        cosine = acc["cosine_min"]
        m = self.metrics
        m.shadow_samples.labels(*self.labels).inc()
        if cosine is None:
            m.shadow_nonfinite.labels(*self.labels).inc()
        else:
            m.shadow_cosine.labels(*self.labels).observe(cosine)
        m.shadow_rows.labels(*self.labels).inc(rows)
        if agree is not None:
            m.shadow_top1.labels(*self.labels).inc(agree)
        with self.lock:
            self.recent.append((cosine, rows, agree))
            t = self.totals
            t["comparisons"] += 1
            t["nonfinite"] += cosine is None
            t["rows"] += rows
            t["top1_agree"] += agree or 0
            breached = self._breached()
        if breached is not None:
            m.shadow_breach.labels(*self.labels, str(self.budget)).set(int(breached))

    def _window(self) -> dict:
        cosines = [c for c, _, _ in self.recent if c is not None]
        rows = sum(r for _, r, a in self.recent if a is not None)
        agree = sum(a for _, _, a in self.recent if a is not None)
        return {
            "comparisons": len(self.recent),
            "nonfinite": len(self.recent) - len(cosines),
            "cosine_min": min(cosines) if cosines else None,
            "cosine_mean": float(np.mean(cosines)) if cosines else None,
            "top1_agreement": agree / rows if rows else None,
        }

    def _breached(self) -> bool | None:
        if self.budget is None or self.budget.metric == "accuracy-drop" or not self.recent:
            return None
        window = self._window()
        if window["nonfinite"]:  # NaN or infinity is never within a budget
            return True
        value = window["cosine_min" if self.budget.metric == "cosine" else "top1_agreement"]
        return None if value is None else value < self.budget.bound

    def summary(self) -> dict:
        with self.lock:
            out = {
                "shadow": self.shadow,
                "rate": self.rate,
                "budget": str(self.budget) if self.budget else None,
                "breached": self._breached(),
                "window": self._window(),
                "totals": dict(self.totals),
                "last_error": self.last_error,
            }
        if self.budget is None:
            out["note"] = "no drift budget: the report has none and --max-drift was not given"
        elif self.budget.metric == "accuracy-drop":
            out["note"] = (
                "the budget is an accuracy drop, which needs labels; live traffic has none. "
                "Give --max-drift cosine>=B or top1>=B to judge live drift."
            )
        return out

    def stop(self) -> None:
        self.pool.shutdown(wait=True)
