"""Statistics on sample sets whose answers are known by hand."""

import math

import numpy as np
import pytest

from edgekit import stats


def test_summary_of_one_to_ten():
    s = stats.summary(np.arange(1, 11, dtype=float))
    # linear interpolation: rank = q * (n - 1) on 0-based sorted data
    assert s["p50"] == pytest.approx(5.5)  # between 5 and 6
    assert s["p90"] == pytest.approx(9.1)  # 0.9 * 9 = 8.1 -> 9 + 0.1 * (10 - 9)
    assert s["p99"] == pytest.approx(9.91)  # 0.99 * 9 = 8.91 -> 9 + 0.91
    assert s["mean"] == pytest.approx(5.5)
    assert s["std"] == pytest.approx(math.sqrt(82.5 / 9))  # sum of squares 82.5, n - 1 = 9
    assert s["min"] == 1 and s["max"] == 10 and s["n"] == 10
    # |x - 5.5| = 4.5 3.5 2.5 1.5 .5 .5 1.5 2.5 3.5 4.5 -> median 2.5
    assert s["mad"] == pytest.approx(2.5)


def test_median_ci_ranks_match_binomial_tables():
    # n = 10: P(B <= 1) = 11/1024 = 0.0107 <= 0.025 < P(B <= 2) = 56/1024 -> ranks 2 and 9
    assert stats.median_ci_ranks(10) == (2, 9)
    # n = 6: P(B <= 0) = 1/64 = 0.0156 <= 0.025 < P(B <= 1) = 7/64 -> ranks 1 and 6
    assert stats.median_ci_ranks(6) == (1, 6)
    # n = 5: even the extremes cover only 1 - 2/32 = 93.75% -> no 95% interval
    assert stats.median_ci_ranks(5) is None
    # n = 100: the textbook ranks 40 and 61
    assert stats.median_ci_ranks(100) == (40, 61)
    # large n, normal approximation: floor(5000 - 1.96 * 50) = 4902
    assert stats.median_ci_ranks(10_000) == (4902, 5099)


def test_median_ci_bounds_are_order_statistics():
    x = np.array([7.0, 1, 9, 3, 5, 2, 10, 4, 8, 6])
    assert stats.median_ci(x) == (2.0, 9.0)
    assert stats.median_ci([1.0, 2, 3]) is None


def test_ratio_ci_contains_true_ratio_and_is_significant():
    rng = np.random.default_rng(1)
    base = [2.0 * rng.lognormal(0, 0.1, 200) for _ in range(20)]
    fast = [1.0 * rng.lognormal(0, 0.1, 200) for _ in range(20)]
    r = stats.paired_ratio(base, fast)
    lo, hi = r["ci95"]
    assert lo < 0.5 < hi
    assert r["ratio"] == pytest.approx(0.5, rel=0.02)
    assert r["significant"] is True
    s = stats.speedup(r)  # the same, as the report says it
    assert s["speedup"] == pytest.approx(1 / r["ratio"])
    assert s["ci95"] == pytest.approx([1 / hi, 1 / lo]) and s["significant"] is True


def test_ratio_of_identical_distributions_is_rarely_significant():
    # A 95% interval excludes the true ratio 1 in about 5% of experiments: 2 of 40 expected;
    # 7 or more would have probability 0.003 (binomial 40, 0.05) and mean the interval is too narrow.
    false_positives = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        a = [rng.lognormal(0, 0.1, 200) for _ in range(20)]
        b = [rng.lognormal(0, 0.1, 200) for _ in range(20)]
        false_positives += stats.paired_ratio(a, b, n_boot=200)["significant"]
    assert false_positives <= 6


def test_paired_rounds_cancel_shared_drift():
    # The machine slows down by up to 2x between rounds; B is always exactly 1.5x faster.
    rng = np.random.default_rng(3)
    drift = np.linspace(1.0, 2.0, 12)
    base = [d * 1.5 * rng.lognormal(0, 0.01, 100) for d in drift]
    other = [d * 1.0 * rng.lognormal(0, 0.01, 100) for d in drift]
    r = stats.paired_ratio(base, other)
    assert r["ci95"][0] < 1 / 1.5 < r["ci95"][1]
    # ... while the interval of one median widens to show the drift
    naive = stats.median_ci(np.concatenate(other))
    honest = stats.median_interval(other)
    assert honest[1] - honest[0] > naive[1] - naive[0]


def test_outliers_by_modified_z_score():
    x = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.02, 10.0]
    assert list(stats.outliers(x)) == [7]
    assert list(stats.outliers([1.0] * 5)) == []


def test_relative_half_width():
    assert stats.relative_half_width((0.99, 1.01), 1.0) == pytest.approx(0.01)
    assert stats.relative_half_width(None, 1.0) is None


def _rounds(levels, rng, sigma=0.05, per_round=50):
    """One job's rounds: round i's runs scattered (lognormal sigma) around levels[i]."""
    return [level * rng.lognormal(0, sigma, per_round) for level in levels]


def test_machine_shift_is_found_with_its_size_and_place():
    # Six jobs of different speeds; from cycle 20 of 40 the whole machine runs 25% slower.
    rng = np.random.default_rng(7)
    speed = np.where(np.arange(40) < 20, 1.0, 1.25)
    jobs = {f"m{i}": _rounds(base * speed, rng) for i, base in enumerate([1, 2, 5, 0.3, 8, 3])}
    shift = stats.machine_shift(jobs)
    assert shift["assessed"] and shift["shifted"]
    assert shift["shift"] == pytest.approx(1.25, rel=0.03)
    assert shift["at_cycle"] == 20 and shift["cycles"] == 40
    assert shift["p_value"] < 0.01
    assert all(s == pytest.approx(1.25, rel=0.05) for s in shift["jobs"].values())


def test_machine_speeding_up_gradually_is_a_shift_too():
    rng = np.random.default_rng(8)
    speed = np.linspace(1.3, 1.0, 30)  # a drift, not a step: 30% faster by the end
    jobs = {name: _rounds(base * speed, rng) for name, base in (("a", 1.0), ("b", 4.0))}
    shift = stats.machine_shift(jobs)
    assert shift["shifted"] and shift["shift"] < 0.9


def test_steady_noise_is_not_a_shift():
    # Round medians that wander by ~10% at random (a noisy shared machine, no trend): never a shift.
    found = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        jobs = {
            f"m{i}": _rounds(base * rng.lognormal(0, 0.10, 30), rng, sigma=0.2)
            for i, base in enumerate([1, 2, 5, 0.3, 8, 3])
        }
        shift = stats.machine_shift(jobs, n_perm=200)
        assert shift["assessed"]
        found += shift["shifted"]
    assert found == 0


def test_one_job_changing_alone_is_not_a_machine_shift():
    # Only one of four jobs slows down (its own warm-up or cache): not the whole machine.
    rng = np.random.default_rng(9)
    jobs = {f"m{i}": _rounds(np.ones(30), rng) for i in range(3)}
    jobs["odd"] = _rounds(np.where(np.arange(30) < 15, 1.0, 1.5), rng)
    shift = stats.machine_shift(jobs)
    assert shift["assessed"] and not shift["shifted"]


def test_too_few_cycles_are_not_assessed():
    rng = np.random.default_rng(10)
    shift = stats.machine_shift({"a": _rounds([1, 1, 2, 2], rng)})
    assert not shift["assessed"] and not shift["shifted"] and "cycles" in shift["reason"]
    assert stats.machine_shift({})["assessed"] is False


def test_bootstrap_medians_are_exactly_those_of_the_pooled_resampled_rounds():
    rng = np.random.default_rng(3)
    rounds = [np.round(rng.lognormal(0, 0.2, rng.integers(1, 40)), 2) for _ in range(30)]  # ties
    picks = stats._boot_indices(len(rounds), 200, stats.SEED)
    by_definition = [np.median(np.concatenate([rounds[i] for i in row])) for row in picks]
    assert np.array_equal(stats._pooled_medians(rounds, picks), by_definition)


def test_a_ratio_counts_only_the_rounds_both_ran():
    """B stopped early (optimize); then the machine got 3x faster and A went on: B is 1.5x
    faster than A in every cycle both ran, and that is the ratio, not A's later speed."""
    rng = np.random.default_rng(4)
    base = [1.5 * rng.lognormal(0, 0.01, 50) for _ in range(10)]
    base += [0.5 * rng.lognormal(0, 0.01, 50) for _ in range(30)]  # after B stopped
    other = [1.0 * rng.lognormal(0, 0.01, 50) for _ in range(10)]
    r = stats.paired_ratio(base, other)
    assert r["ratio"] == pytest.approx(1 / 1.5, rel=0.02)
    assert r["ci95"][0] < 1 / 1.5 < r["ci95"][1]
