"""Live drift of a served language model: a sample of answered requests re-scored by the float
variant. For the prompt and the tokens the served model generated, both models' next-token
distributions at each generated position are compared as `edgekit optimize` compares them on
held-out text (mean KL divergence float -> served, the share of positions with the same top-1
token). Runs on its own thread, one comparison at a time: a sampled request that finds it busy is
skipped (counted), so the shadow never slows serving down by more than one core's share.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import numpy as np

from edgekit.lm.drift import next_token_divergence

KLD_BUCKETS = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.05, 0.1, 0.3, 1.0)


class LMShadow:
    def __init__(self, name: str, served: Path, shadow_name: str, shadow: Path, rate: float,
                 max_kld: float | None, metrics):  # fmt: skip
        from prometheus_client import Counter, Gauge, Histogram

        from edgekit.lm.logits import LogitsModel

        self.served, self.shadow = LogitsModel(served, threads=1), LogitsModel(shadow, threads=1)
        self.shadow_name, self.rate, self.max_kld = shadow_name, rate, max_kld
        self.lock = threading.Lock()
        self.busy = False
        self.compared = self.positions = self.same = 0
        self.kld_sum = 0.0
        self.recent: list[float] = []  # the last comparisons' mean KLDs, for the budget check
        r, labels = metrics.registry, (name, shadow_name)
        self.m_compared = Counter(
            "edgekit_lm_shadow_comparisons", "answered requests re-scored by the float variant",
            ["model", "shadow"], registry=r,
        ).labels(*labels)  # fmt: skip
        self.m_skipped = Counter(
            "edgekit_lm_shadow_skipped", "sampled requests not re-scored: the shadow was busy",
            ["model", "shadow"], registry=r,
        ).labels(*labels)  # fmt: skip
        self.m_kld = Histogram(
            "edgekit_lm_shadow_kld", "mean KL divergence float -> served over a request's tokens",
            ["model", "shadow"], buckets=KLD_BUCKETS, registry=r,
        ).labels(*labels)  # fmt: skip
        self.m_positions = Counter(
            "edgekit_lm_shadow_positions", "generated tokens re-scored", ["model", "shadow"],
            registry=r,
        ).labels(*labels)  # fmt: skip
        self.m_same = Counter(
            "edgekit_lm_shadow_same_top1", "re-scored tokens where both models' top-1 agree",
            ["model", "shadow"], registry=r,
        ).labels(*labels)  # fmt: skip
        self.m_breach = Gauge(
            "edgekit_lm_shadow_budget_breached",
            "1 when the recent comparisons' mean KLD is over the budget, 0 within it",
            ["model", "shadow"], registry=r,
        ).labels(*labels)  # fmt: skip

    def offer(self, prompt: list[int], generated: list[int]) -> None:
        """Called when a request is answered: maybe compare it, on the shadow's thread."""
        if not generated or random.random() >= self.rate:
            return
        with self.lock:
            if self.busy:
                self.m_skipped.inc()
                return
            self.busy = True
        ids = np.asarray(prompt + generated, dtype=np.int64)
        threading.Thread(
            target=self._compare, args=(ids, len(prompt)), name="lm-shadow", daemon=True
        ).start()

    def _compare(self, ids: np.ndarray, prompt_length: int) -> None:
        try:
            # logits at position i predict token i+1: the generated tokens' predictions
            rows = slice(prompt_length - 1, len(ids) - 1)
            kld, same = next_token_divergence(
                self.shadow.sequence_logits(ids)[rows], self.served.sequence_logits(ids)[rows]
            )
            with self.lock:
                self.compared += 1
                self.positions += len(kld)
                self.same += int(same.sum())
                self.kld_sum += float(kld.sum())
                self.recent = (self.recent + [float(kld.mean())])[-20:]
                breached = self.max_kld is not None and np.mean(self.recent) > self.max_kld
            self.m_compared.inc()
            self.m_kld.observe(float(kld.mean()))
            self.m_positions.inc(len(kld))
            self.m_same.inc(int(same.sum()))
            self.m_breach.set(1 if breached else 0)
        finally:
            with self.lock:
                self.busy = False

    def summary(self) -> dict:
        with self.lock:
            if not self.compared:
                return {"shadow": self.shadow_name, "compared": 0,
                        "note": "no request compared yet"}  # fmt: skip
            recent = float(np.mean(self.recent))
            return {
                "shadow": self.shadow_name,
                "compared": self.compared,
                "tokens": self.positions,
                "kld_mean": self.kld_sum / self.positions,
                "same_top1": self.same / self.positions,
                "recent_kld_mean": recent,
                "budget": None if self.max_kld is None else f"kld<={self.max_kld:g}",
                "within_budget": None if self.max_kld is None else recent <= self.max_kld,
            }
