"""Statistics for latency samples. Pure numpy and the standard library.

Two kinds of uncertainty matter on a real machine and both are covered:
- run-to-run noise: the distribution-free (order-statistic) interval of the median assumes
  independent samples;
- drift between rounds (another process wakes up, the CPU clocks down): samples within a round are
  not independent of each other, so we also bootstrap whole rounds. The reported interval of the
  median is the hull of both; a ratio between two variants is bootstrapped over *paired* rounds
  (rounds that ran in the same cycle share the drift, which then cancels in the ratio).
"""

from __future__ import annotations

import math

import numpy as np

SEED = 20240601  # fixed: the same samples always give the same intervals
N_BOOT = 1000


def summary(samples_ms) -> dict:
    """p50/p90/p99 (linear interpolation between order statistics), mean, std (n-1), min, max,
    MAD (raw median absolute deviation, not scaled to sigma), n."""
    x = np.asarray(samples_ms, dtype=float)
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if len(x) > 1 else None,
        "min": float(x.min()),
        "max": float(x.max()),
        "mad": mad(x),
        "n": int(len(x)),
    }


def mad(samples) -> float:
    x = np.asarray(samples, dtype=float)
    return float(np.median(np.abs(x - np.median(x))))


def _binom_cdf_half(k: int, n: int) -> float:
    """P(Binomial(n, 1/2) <= k), exact, in log space so large n does not overflow."""
    if k < 0:
        return 0.0
    log_half_n = -n * math.log(2)
    lg_n = math.lgamma(n + 1)
    return sum(
        math.exp(lg_n - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half_n)
        for i in range(k + 1)
    )


def median_ci_ranks(n: int, confidence: float = 0.95) -> tuple[int, int] | None:
    """1-based ranks (l, u) so that [x(l), x(u)] covers the median with at least `confidence`,
    for independent samples of any continuous distribution. None when n is too small (n < 6)."""
    alpha = 1 - confidence
    if n > 1000:  # normal approximation of the binomial; exact enough at this size
        low = math.floor(n / 2 - 1.959964 * math.sqrt(n) / 2)
    else:
        low = 0
        while _binom_cdf_half(low, n) <= alpha / 2:  # largest low with P(B <= low-1) <= alpha/2
            low += 1
    if low < 1:
        return None
    return low, n + 1 - low


def median_ci(samples, confidence: float = 0.95) -> tuple[float, float] | None:
    """Order-statistic interval of the median (distribution-free, assumes independent samples)."""
    x = np.sort(np.asarray(samples, dtype=float))
    ranks = median_ci_ranks(len(x), confidence)
    if ranks is None:
        return None
    return float(x[ranks[0] - 1]), float(x[ranks[1] - 1])


def _boot_indices(n_rounds: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_rounds, size=(n_boot, n_rounds))


def _pooled_medians(rounds: list[np.ndarray], picks: np.ndarray) -> np.ndarray:
    """For each row of `picks` (round indices drawn with replacement), exactly
    np.median(np.concatenate([rounds[i] for i in row])), without building the concatenations
    (1,000 of them of 100,000 runs took seconds): each order statistic is found by bisection
    over the pooled sorted samples, counting a resample's samples below a value as the sum over
    rounds of (times drawn) x (the round's samples below it), for every resample at once."""
    rounds = [np.sort(r) for r in rounds]
    pooled = np.sort(np.concatenate(rounds))
    drawn = np.stack([np.bincount(row, minlength=len(rounds)) for row in picks])
    total = drawn @ np.array([len(r) for r in rounds])

    def order_statistic(k: np.ndarray) -> np.ndarray:  # the k-th smallest (1-based) of each
        low, high = np.zeros(len(picks), dtype=np.int64), np.full(len(picks), len(pooled) - 1)
        while np.any(low < high):
            mid = (low + high) // 2
            at_most = sum(
                drawn[:, i] * np.searchsorted(r, pooled[mid], side="right")
                for i, r in enumerate(rounds)
            )
            enough = at_most >= k
            low, high = np.where(enough, low, mid + 1), np.where(enough, mid, high)
        return pooled[low]

    return (order_statistic((total + 1) // 2) + order_statistic(total // 2 + 1)) / 2


def bootstrap_median_ci(rounds, n_boot: int = N_BOOT, seed: int = SEED, confidence=0.95):
    """Interval of the pooled median when whole rounds are resampled (captures drift between
    rounds). None with fewer than 3 rounds."""
    rounds = [np.asarray(r, dtype=float) for r in rounds if len(r)]
    if len(rounds) < 3:
        return None
    medians = _pooled_medians(rounds, _boot_indices(len(rounds), n_boot, seed))
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(medians, [tail, 100 - tail])
    return float(lo), float(hi)


def median_interval(rounds) -> tuple[float, float] | None:
    """The reported 95% interval of the median: the hull of the order-statistic interval and the
    round bootstrap, so it is honest about both noise and drift."""
    pooled = np.concatenate([np.asarray(r, dtype=float) for r in rounds]) if rounds else []
    candidates = [ci for ci in (median_ci(pooled), bootstrap_median_ci(rounds)) if ci]
    if not candidates:
        return None
    return min(c[0] for c in candidates), max(c[1] for c in candidates)


def paired_ratio(
    a_rounds, b_rounds, n_boot: int = N_BOOT, seed: int = SEED, level: float = 0.95
) -> dict:
    """median(B) / median(A) with a 95% (`level`) interval from a bootstrap over paired rounds
    (round i of both ran in the same cycle, so drift shared by the cycle cancels). `significant`
    is true when the interval excludes 1. Below 1, B is faster: its speedup over A is 1 / ratio.
    Only the rounds both have count, the ratio too: when B stopped early (optimize), A's later
    rounds ran on a machine that may have changed speed since."""
    n = min(len(a_rounds), len(b_rounds))
    a = [np.asarray(r, dtype=float) for r in a_rounds[:n]]
    b = [np.asarray(r, dtype=float) for r in b_rounds[:n]]
    ratio = float(np.median(np.concatenate(b)) / np.median(np.concatenate(a)))
    if n < 3:
        return {"ratio": ratio, "ci95": None, "significant": None}
    picks = _boot_indices(n, n_boot, seed)
    boot = _pooled_medians(b, picks) / _pooled_medians(a, picks)
    tail = (1 - level) / 2 * 100
    lo, hi = (float(v) for v in np.percentile(boot, [tail, 100 - tail]))
    return {"ratio": ratio, "ci95": [lo, hi], "significant": bool(lo > 1 or hi < 1)}


def speedup(ratio: dict) -> dict:
    """A paired_ratio(A, B) as B's speedup over A (A's median / B's), interval and all."""
    ci = ratio["ci95"]
    return {
        "speedup": 1 / ratio["ratio"],
        "ci95": [1 / ci[1], 1 / ci[0]] if ci else None,
        "significant": ratio["significant"],
    }


# Two reports' samples, unpaired (edgekit compare).
#
# Why a block bootstrap of the ratio of medians, not Mann-Whitney: the gate asks "is B slower than A
# by more than PCT percent", which needs an effect size with an interval in the unit people read
# (1.31x, 95% CI 1.27-1.35); Mann-Whitney only tests whether the distributions differ, and with
# thousands of samples it calls a 0.5% shift significant. The samples are consecutive timed runs on a
# possibly noisy machine, so neighbours are correlated; resampling blocks of ~sqrt(n) consecutive runs
# keeps that, where resampling single runs would give too narrow an interval. Fixed seed: the same
# reports always give the same verdict.
SAMPLE_N_BOOT = 2000
MIN_SAMPLES = 10  # fewer than this: no interval, significance unknown


def _block_medians(x: np.ndarray, rng: np.random.Generator, k: int) -> np.ndarray:
    """Medians of k moving-block bootstrap resamples of x."""
    n = len(x)
    block = max(1, round(math.sqrt(n)))
    n_blocks = -(-n // block)
    starts = rng.integers(0, n - block + 1, size=(k, n_blocks))
    idx = (starts[:, :, None] + np.arange(block)).reshape(k, -1)[:, :n]
    return np.median(x[idx], axis=1)


def sample_ratio(
    samples_a, samples_b, *, n_boot: int = SAMPLE_N_BOOT, seed: int = 0, level: float = 0.95
):
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


def outliers(samples, threshold: float = 14.0) -> np.ndarray:
    """Indices of outliers by the modified z-score (Iglewicz & Hoaglin),
    0.6745 * |x - median| / MAD > threshold. The threshold is hyperfine's: latency has a long
    right tail by nature, and the textbook 3.5 would flag a good part of any real run."""
    x = np.asarray(samples, dtype=float)
    spread = mad(x)
    if spread == 0:
        return np.flatnonzero(x != np.median(x))
    return np.flatnonzero(0.6745 * np.abs(x - np.median(x)) / spread > threshold)


def relative_half_width(ci, center) -> float | None:
    """Half the interval's width as a fraction of `center` (0.01 means ±1%)."""
    if not ci or not center:
        return None
    return (ci[1] - ci[0]) / 2 / center


SHIFT_THRESHOLD = 0.10  # a whole-machine change of speed this large (or more) is reported
SHIFT_ALPHA = 0.01  # ... when a change point this unlikely under steady noise explains it
SHIFT_MIN_CYCLES = 8
N_PERM = 500


def machine_shift(
    rounds_by_job: dict,
    threshold: float = SHIFT_THRESHOLD,
    alpha: float = SHIFT_ALPHA,
    n_perm: int = N_PERM,
    seed: int = SEED,
) -> dict:
    """Did the whole machine change speed during the run? `rounds_by_job`: job name → its rounds
    (lists of ms) in the order they ran; round i of every job ran in cycle i.

    Each job's round medians are taken in log space and centred on the job's own median, so jobs
    of any speed weigh alike; their mean per cycle is the log of the cycle's normalised geometric
    mean, the machine's speed as every job saw it. The best single change point of that series
    (largest mean difference, weighted by sqrt(k(C-k)/C)) is tested against the same statistic
    on shuffled cycles (a permutation test, fixed seed): a steady machine gives exchangeable
    cycles. A shift is reported when the change point is significant (p < alpha), at least
    `threshold` in size (ratio of the later cycles' median to the earlier ones'), and seen by
    the jobs alike (at least 3 in 4 jobs moved the same way by at least half the threshold).
    A slow drift counts too: its best change point is where it has moved the most.

    Returns {"assessed", "shifted", "shift", "at_cycle", "cycles", "p_value", "jobs" (each job's
    own shift at that change point), "jobs_alike" (how many moved with the machine), "threshold",
    "method"}; `shift` > 1 means the later cycles ran slower."""
    names = [n for n, rounds in rounds_by_job.items() if any(len(r) for r in rounds)]
    cycles = min((len(rounds_by_job[n]) for n in names), default=0)
    record = {
        "assessed": False,
        "shifted": False,
        "shift": None,
        "at_cycle": None,
        "cycles": cycles,
        "p_value": None,
        "jobs": {},
        "jobs_alike": None,
        "threshold": threshold,
        "method": "change point of the per-cycle geometric mean of round medians (normalised "
        "per job), permutation test",
    }
    if cycles < SHIFT_MIN_CYCLES:
        record["reason"] = f"{cycles} cycles of rounds; at least {SHIFT_MIN_CYCLES} are needed"
        return record
    logs = np.array(
        [[math.log(np.median(r)) for r in rounds_by_job[n][:cycles]] for n in names], dtype=float
    )
    logs -= np.median(logs, axis=1, keepdims=True)
    series = logs.mean(axis=0)
    edge = max(3, cycles // 10)  # no change point within `edge` cycles of either end
    k_best, t_obs = _change_point(series, edge)
    shuffled = np.random.default_rng(seed).permuted(np.tile(series, (n_perm, 1)), axis=1)
    exceed = int((_split_scores(shuffled, edge)[1].max(axis=1) >= t_obs - 1e-12).sum())
    p_value = (exceed + 1) / (n_perm + 1)
    shift = math.exp(np.median(series[k_best:]) - np.median(series[:k_best]))
    jobs = {
        n: math.exp(np.median(row[k_best:]) - np.median(row[:k_best]))
        for n, row in zip(names, logs, strict=True)
    }
    direction = 1 if shift >= 1 else -1
    alike = sum(direction * math.log(s) >= math.log(1 + threshold / 2) for s in jobs.values())
    big = abs(math.log(shift)) >= math.log(1 + threshold)
    record.update(
        assessed=True,
        shifted=bool(p_value < alpha and big and alike >= 0.75 * len(jobs)),
        shift=shift,
        at_cycle=int(k_best),
        p_value=p_value,
        jobs=jobs,
        jobs_alike=alike,
    )
    return record


def _change_point(series: np.ndarray, edge: int) -> tuple[int, float]:
    """(k, statistic) of the split series[:k] | series[k:] with the largest weighted difference
    of means, k in [edge, len - edge]."""
    k, score = _split_scores(series[None, :], edge)
    best = int(np.argmax(score[0]))
    return int(k[best]), float(score[0, best])


def _split_scores(rows: np.ndarray, edge: int) -> tuple[np.ndarray, np.ndarray]:
    """For each row (a series) and each split k in [edge, n - edge]: |mean(left) - mean(right)|
    * sqrt(k (n - k) / n)."""
    n = rows.shape[1]
    k = np.arange(edge, n - edge + 1)
    csum = np.cumsum(rows, axis=1)
    left = csum[:, k - 1] / k
    right = (csum[:, -1:] - csum[:, k - 1]) / (n - k)
    return k, np.abs(left - right) * np.sqrt(k * (n - k) / n)
