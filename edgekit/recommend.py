"""The drift budget and the recommendation: the fastest measured variant within budget that is
not slower than the float baseline. Torch-free."""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgekit.accuracy import nonfinite_text
from edgekit.errors import EdgekitError

# A variant that is not measurably faster is worth shipping only as a file at most this fraction of
# the baseline's size: onnxsim's few bytes less are not a reason, int8's three quarters are.
SMALLER = 0.9

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
        """(within budget, the measured value as text). Unmeasured drift is never within budget,
        nor is a variant that gave NaN or infinity on any sample (or whose reference did)."""
        failed = nonfinite_text(accuracy or {})
        if failed:
            return False, failed
        field = METRICS[self.metric][0]
        value = (accuracy or {}).get(field)
        if self.metric == "accuracy-drop":
            base = (baseline_accuracy or {}).get(field)
            if value is None or base is None:
                return False, "task accuracy not measured"
            if nonfinite_text(baseline_accuracy or {}):
                return False, f"the baseline: {nonfinite_text(baseline_accuracy)}"
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


NO_INTERVAL = (
    "its 95% interval could not be computed from fewer than 3 timed rounds "
    "(the model takes long per call: raise --max-time)"
)


def recommend(variants: list[dict], baseline: str, budget: Budget) -> dict:
    """Pick from report variant rows. Returns the report's {variant, reason}.
    A speedup without a 95% interval (too few rounds) is never "measurably faster"."""
    by_name = {v["name"]: v for v in variants}
    base = by_name.get(baseline)
    if base is None or base.get("error") or not base.get("latency_ms"):
        return {"variant": None, "reason": f"the baseline {baseline!r} could not be measured"}
    candidates, rejected = [], []
    for v in variants:
        if v["name"] == baseline:
            continue
        rel = v.get("relative") or {}
        speedup, ci = rel.get("speedup"), rel.get("ci95")
        if v.get("error") or not v.get("latency_ms") or not speedup:
            rejected.append(f"{v['name']}: not measured")
            continue
        ok, measured = budget.check(v.get("accuracy"), base.get("accuracy"))
        if not ok:
            rejected.append(f"{v['name']}: over budget ({measured})")
            continue
        stopped = v["latency_ms"].get("stopped_early")
        if stopped:  # its timing ended when it could no longer be the pick: not a pick by chance
            rejected.append(f"{v['name']}: {stopped}")
            continue
        if ci is not None and ci[1] < 1.0:
            rejected.append(f"{v['name']}: {1 / speedup:.2f}x slower than {baseline}")
            continue
        if ci is None and speedup < 1.0:
            rejected.append(
                f"{v['name']}: {1 / speedup:.2f}x slower than {baseline} by the medians; "
                f"{NO_INTERVAL}"
            )
            continue
        faster = ci is not None and ci[0] > 1.0
        candidates.append((faster, speedup, v, measured))
    if not candidates:
        why = "; ".join(rejected) or "no other variant"
        return {
            "variant": baseline,
            "reason": f"no variant is both within the budget {budget} and not slower ({why})",
        }
    measurably_faster = [c for c in candidates if c[0]]
    if measurably_faster:
        _, speedup, best, measured = max(measurably_faster, key=lambda c: c[1])
        ci = best["relative"]["ci95"]
        speed = f"{speedup:.2f}x faster than {baseline} (95% CI {ci[0]:.2f}–{ci[1]:.2f})"
        return _pick(best, base, speed, budget, measured)
    # None is measurably faster: the simpler thing wins. That is the export as it is, unless a
    # variant is a meaningfully smaller file (int8: a quarter of the size), the smallest of them.
    base_size = base.get("size_bytes") or 0
    smaller = [
        c for c in candidates if (c[2].get("size_bytes") or base_size) <= SMALLER * base_size
    ]
    if not smaller:
        tried = "; ".join(
            [f"{c[2]['name']}: {_speed(c[2], baseline)}" for c in candidates] + rejected
        )
        return {
            "variant": baseline,
            "reason": f"no variant within the budget {budget} is measurably faster or a "
            f"meaningfully smaller file ({tried}): {baseline} as exported is the simpler thing "
            "to ship",
        }
    _, speedup, best, measured = min(smaller, key=lambda c: c[2]["size_bytes"])
    return _pick(best, base, _speed(best, baseline), budget, measured)


def _speed(v: dict, baseline: str) -> str:
    """How a variant that is not measurably faster compares, in words."""
    rel = v["relative"]
    if rel.get("ci95") is None:
        return f"not measurably faster than {baseline} ({rel['speedup']:.2f}x by the medians; {NO_INTERVAL})"
    lo, hi = rel["ci95"]
    return f"as fast as {baseline} within noise ({rel['speedup']:.2f}x, 95% CI {lo:.2f}–{hi:.2f})"


def _pick(best: dict, base: dict, speed: str, budget: Budget, measured: str) -> dict:
    size = ""
    if best.get("size_bytes") and base.get("size_bytes"):
        size = f", {best['size_bytes'] / base['size_bytes']:.0%} of its size"
    runtime = f"; runs on {best['runtime']}" if best.get("runtime") else ""
    return {
        "variant": best["name"],
        "reason": f"{speed}{size}; within the drift budget {budget} ({measured}){runtime}",
    }


# ---- language models ---------------------------------------------------------------------------

# --max-drift for a causal LM: metric name → (accuracy field, unit shown after the bound)
LM_METRICS = {"kld": ("kld_mean", ""), "ppl-increase": ("ppl_increase_pct", "%")}
# The default budget (stated in every report): next-token distributions close to fp32's and
# perplexity within 5%: a careful 4-bit mix passes it, a careless one does not.
DEFAULT_LM_BUDGET = {"kld": 0.05, "ppl-increase": 5.0}


@dataclass(frozen=True)
class LMBudget:
    bounds: tuple[tuple[str, float], ...]  # (metric of LM_METRICS, upper bound), all must hold

    def __str__(self) -> str:
        return ",".join(f"{m}<={b:g}{LM_METRICS[m][1]}" for m, b in self.bounds)

    def check(self, accuracy: dict | None) -> tuple[bool, str]:
        """(within budget, the measured values as text); unmeasured drift is never within."""
        texts, ok = [], True
        for metric, bound in self.bounds:
            field, unit = LM_METRICS[metric]
            value = (accuracy or {}).get(field)
            if value is None:
                return False, f"{field} not measured"
            ok = ok and value <= bound
            texts.append(f"{metric} {value:.4g}{unit}")
        return ok, ", ".join(texts)


def default_lm_budget() -> LMBudget:
    return LMBudget(tuple(DEFAULT_LM_BUDGET.items()))


def parse_lm_budget(text: str) -> LMBudget:
    """`kld<=0.05,ppl-increase<=5%` (either or both)."""
    bounds = []
    for part in (text or "").split(","):
        match = re.fullmatch(r"\s*([a-z-]+)\s*<=\s*([0-9]*\.?[0-9]+)\s*(%?)\s*", part)
        if not match or match[1] not in LM_METRICS or bool(match[3]) != (match[1] != "kld"):
            raise EdgekitError(
                f"Cannot read the drift budget {text!r} for a language model. Use `kld<=0.05` "
                "(mean KL divergence of the next-token distributions against fp32), "
                "`ppl-increase<=5%` (perplexity increase on the held-out text), or both "
                "separated by a comma."
            )
        bounds.append((match[1], float(match[2])))
    if len({m for m, _ in bounds}) != len(bounds):
        raise EdgekitError(f"The drift budget {text!r} names a metric twice; name each once.")
    return LMBudget(tuple(bounds))


def recommend_lm(variants: list[dict], baseline: str, budget: LMBudget) -> dict:
    """A language model's pick: the fastest generation (tg128 median) among the variants within
    the drift budget; the baseline (fp32) is within it by definition. pp512 is said beside it."""
    by_name = {v["name"]: v for v in variants}

    def tg(v):
        return ((v.get("tokens_per_s") or {}).get("tg128") or {}).get("median")

    base = by_name.get(baseline)
    if base is None or base.get("error") or tg(base) is None:
        return {"variant": None, "reason": f"the baseline {baseline!r} could not be measured"}
    candidates, rejected = [(base, f"none ({baseline} is the reference)")], []
    for v in variants:
        if v is base:
            continue
        if v.get("error") or tg(v) is None:
            rejected.append(f"{v['name']}: not measured")
            continue
        ok, measured = budget.check(v.get("accuracy"))
        if ok:
            candidates.append((v, measured))
        elif measured.endswith("not measured"):
            rejected.append(f"{v['name']}: {measured}")
        else:
            rejected.append(f"{v['name']}: over budget ({measured})")
    best, measured = max(candidates, key=lambda c: tg(c[0]))
    block = best["tokens_per_s"]["tg128"]
    speed = f"tg128 {block['median']:.1f} tokens/s"
    if block.get("low") is not None and block.get("high") is not None:
        speed += f" (95% interval {block['low']:.1f}–{block['high']:.1f})"
    if best is not base:
        speed += f", {block['median'] / tg(base):.2f}x {baseline}'s"
    pp = ((best.get("tokens_per_s") or {}).get("pp512") or {}).get("median")
    if pp is not None:
        speed += f"; pp512 {pp:.1f} tokens/s"
    size = ""
    if best is not base and best.get("size_bytes") and base.get("size_bytes"):
        size = f", {best['size_bytes'] / base['size_bytes']:.0%} of {baseline}'s size"
    others = f" (not eligible: {'; '.join(rejected)})" if rejected else ""
    runtime = f"; runs on {best['runtime']}" if best.get("runtime") else ""
    return {
        "variant": best["name"],
        "reason": f"the fastest generation within the drift budget {budget}: {speed}{size}; "
        f"drift: {measured}{runtime}{others}",
    }
