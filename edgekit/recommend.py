"""The drift budget and the recommendation: the fastest measured variant within budget that is
not slower than the float baseline. Torch-free."""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgekit.errors import EdgekitError

# metric name in --max-drift → (accuracy field, direction the bound applies in)
METRICS = {
    "cosine": ("cosine_min", ">="),
    "top1": ("top1_agreement", ">="),
    "accuracy-drop": ("task_accuracy", "<="),
}


@dataclass(frozen=True)
class Budget:
    metric: str  # a key of METRICS
    bound: float

    def __str__(self) -> str:
        return f"{self.metric}{METRICS[self.metric][1]}{self.bound:g}"

    def check(self, accuracy: dict | None, baseline_accuracy: dict | None) -> tuple[bool, str]:
        """(within budget, the measured value as text). Unmeasured drift is never within budget."""
        field = METRICS[self.metric][0]
        value = (accuracy or {}).get(field)
        if self.metric == "accuracy-drop":
            base = (baseline_accuracy or {}).get(field)
            if value is None or base is None:
                return False, "task accuracy not measured"
            drop = base - value
            return drop <= self.bound, f"accuracy drop {drop:+.4f}"
        if value is None:
            return False, f"{field} not measured"
        return value >= self.bound, f"{field} {value:.4f}"


def parse_budget(text: str) -> Budget:
    match = re.fullmatch(r"\s*([a-z0-9-]+)\s*(>=|<=)\s*([0-9.]+)\s*", text or "")
    if not match or match[1] not in METRICS or METRICS[match[1]][1] != match[2]:
        raise EdgekitError(
            f"Cannot read the drift budget {text!r}. Use one of `cosine>=0.99`, `top1>=0.99`, "
            "or `accuracy-drop<=0.01` (the last needs labelled --data)."
        )
    return Budget(match[1], float(match[3]))


def default_budget(classifier: bool, labelled: bool) -> Budget:
    """A classifier is judged by what users see (its decisions); anything else by its vectors."""
    if classifier and labelled:
        return Budget("accuracy-drop", 0.01)
    if classifier:
        return Budget("top1", 0.99)
    return Budget("cosine", 0.99)


def recommend(variants: list[dict], baseline: str, budget: Budget) -> dict:
    """Pick from report variant rows. Returns the report's {variant, reason}."""
    by_name = {v["name"]: v for v in variants}
    base = by_name.get(baseline)
    if base is None or base.get("error") or not base.get("latency_ms"):
        return {"variant": None, "reason": f"the baseline {baseline!r} could not be measured"}
    candidates, rejected = [], []
    for v in variants:
        if v["name"] == baseline:
            continue
        if v.get("error") or not v.get("latency_ms") or not v.get("relative"):
            rejected.append(f"{v['name']}: not measured")
            continue
        ok, measured = budget.check(v.get("accuracy"), base.get("accuracy"))
        if not ok:
            rejected.append(f"{v['name']}: over budget ({measured})")
            continue
        rel = v["relative"]
        lo, hi = rel.get("ci95") or (rel["speedup"], rel["speedup"])
        if hi < 1.0:
            rejected.append(f"{v['name']}: {1 / rel['speedup']:.2f}x slower than {baseline}")
            continue
        candidates.append((rel["speedup"], lo, v, measured))
    if not candidates:
        why = "; ".join(rejected) or "no other variant"
        return {
            "variant": baseline,
            "reason": f"no variant is both within the budget {budget} and not slower ({why})",
        }
    speedup, lo, best, measured = max(candidates, key=lambda c: c[0])
    if lo <= 1.0:
        # Not measurably faster: still worth shipping only if it is smaller.
        if (best.get("size_bytes") or 0) >= (base.get("size_bytes") or 0):
            return {
                "variant": baseline,
                "reason": f"no variant within the budget {budget} is measurably faster",
            }
        speed = f"as fast as {baseline} within noise ({speedup:.2f}x)"
    else:
        speed = f"{speedup:.2f}x faster than {baseline} (95% CI {lo:.2f}–{best['relative']['ci95'][1]:.2f})"
    size = ""
    if best.get("size_bytes") and base.get("size_bytes"):
        size = f", {best['size_bytes'] / base['size_bytes']:.0%} of its size"
    return {
        "variant": best["name"],
        "reason": f"{speed}{size}; within the drift budget {budget} ({measured})",
    }
