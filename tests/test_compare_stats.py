"""The statistics behind `halo compare`: intervals and tests against published values, Holm's correction,
calibration (two samples of one distribution get a significant verdict in at most the nominal share of
comparisons, with and without strata), and known changes called right."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from halo_rlm.compare import (
    METRICS,
    Counts,
    FailureMasks,
    TraceSample,
    cmh_test,
    compare_samples,
    difference_interval,
    estimate_metric,
    estimate_rates,
    holm,
    mix_shift,
    outcome_metric,
    proportion_test,
    ratio_interval,
    wilson_interval,
)

STRATA = np.array(["billing", "research", "support"])
STRATUM_RISK = {"billing": 1.0, "research": 2.0, "support": 0.3}
BASE_RATES = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12)


def test_wilson_interval_matches_the_published_values() -> None:
    # Newcombe (1998), table I: 81/263 -> 0.2553 to 0.3662; 0/10 -> 0 to 0.2775
    low, high = wilson_interval(Counts(81, 263))
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    low, high = wilson_interval(Counts(0, 10))
    assert low == 0.0 and round(high, 4) == 0.2775


def test_newcombe_difference_interval_matches_the_paper() -> None:
    # Newcombe (1998) method 10, example (a): 56/70 - 48/80 = 0.2, 95% CI 0.0524 to 0.3339
    low, high = difference_interval(Counts(48, 80), Counts(56, 70))
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    # example (h): 0/10 vs 0/20, where Wald gives no interval at all: -0.1611 to 0.2775
    low, high = difference_interval(Counts(0, 20), Counts(0, 10))
    assert (round(low, 4), round(high, 4)) == (-0.1611, 0.2775)


def test_ratio_interval_is_katz_log_and_handles_zeros() -> None:
    low, high = ratio_interval(Counts(20, 100), Counts(10, 100))
    se = math.sqrt(1 / 10 - 1 / 100 + 1 / 20 - 1 / 100)
    assert low == pytest.approx(0.5 * math.exp(-1.959964 * se), rel=1e-5)
    assert high == pytest.approx(0.5 * math.exp(1.959964 * se), rel=1e-5)
    low, high = ratio_interval(Counts(20, 100), Counts(0, 100))  # fixed: 0.5 added to every cell
    assert 0 < low < high < 1
    assert ratio_interval(Counts(0, 100), Counts(5, 100)) is None  # new: no ratio to speak of


def test_proportion_test_uses_fisher_for_small_counts_and_z_otherwise() -> None:
    p, test = proportion_test(Counts(1, 50), Counts(6, 50))
    assert test == "Fisher's exact test"
    assert p == pytest.approx(stats.fisher_exact([[1, 49], [6, 44]])[1])
    p, test = proportion_test(Counts(60, 1000), Counts(30, 1000))
    assert test == "two-proportion z-test"
    pooled = 90 / 2000
    z = (0.03 - 0.06) / math.sqrt(pooled * (1 - pooled) * (2 / 1000))
    assert p == pytest.approx(2 * stats.norm.sf(abs(z)))


def test_cmh_with_one_stratum_is_the_corrected_chi_square() -> None:
    before, after = Counts(30, 200), Counts(50, 210)
    table = [[30, 170], [50, 160]]
    chi2 = stats.chi2_contingency(table, correction=True)[0]
    n = 410
    assert cmh_test([(before, after)]) == pytest.approx(stats.chi2.sf(chi2 * (n - 1) / n, 1))


def test_holm_adjusts_step_down_and_keeps_order() -> None:
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])
    assert holm([]) == []


def test_standardised_rates_remove_a_mix_shift() -> None:
    # same within-stratum rates (10% and 1%), traffic moves from the risky stratum to the safe one
    strata = [(Counts(80, 800), Counts(20, 200)), (Counts(2, 200), Counts(8, 800))]
    crude_before, crude_after = 82 / 1000, 28 / 1000
    estimate = estimate_rates(strata)
    assert estimate.before == pytest.approx(estimate.after)
    assert estimate.p_value > 0.5
    assert proportion_test(Counts(82, 1000), Counts(28, 1000))[0] < 1e-6  # what the crude rates suggest
    assert crude_before > crude_after


def sample(
    rng: np.random.Generator, n: int, shares: tuple[float, float, float], multipliers: dict[int, float]
) -> tuple[TraceSample, dict[int, np.ndarray]]:
    """n traces over three strata; failure i hits a trace with BASE_RATES[i] x its stratum's risk x
    multipliers.get(i, 1)."""
    strata = rng.choice(STRATA, size=n, p=shares)
    risk = np.array([STRATUM_RISK[s] for s in strata.tolist()])
    failures = {
        i: rng.random(n) < np.minimum(0.9, rate * risk * multipliers.get(i, 1.0))
        for i, rate in enumerate(BASE_RATES)
    }
    tokens = rng.lognormal(8, 1.5, n)
    columns = {
        "error": (rng.random(n) < 0.1 * risk).astype(float),
        "duration_ms": rng.lognormal(7 + 0.5 * risk, 1.0, n),
        "tokens": tokens,
        "cost": tokens * 2e-6,
        "outcome": (rng.random(n) < 0.7).astype(float),
    }
    ids = np.array([f"{rng.integers(1 << 62):016x}" for _ in range(n)])
    return TraceSample(ids, columns, strata, {"service": strata}), failures


def compare_pair(
    seed: int,
    n: int,
    *,
    shares_after: tuple[float, float, float] = (0.5, 0.3, 0.2),
    multipliers: dict[int, float] | None = None,
    by: str | None = None,
    resamples: int = 100,
):
    rng = np.random.default_rng(seed)
    before, fails_b = sample(rng, n, (0.5, 0.3, 0.2), {})
    after, fails_a = sample(rng, n, shares_after, multipliers or {})
    failures = [
        FailureMasks(f"tool_error:f{i}", "tool_error", f"f{i}", f"f{i} fails", fails_b[i], fails_a[i], "both")
        for i in fails_b
        if fails_b[i].any() or fails_a[i].any()
    ]
    return compare_samples(
        before,
        after,
        failures,
        by=by,
        outcome=outcome_metric("resolved", boolean=True),
        resamples=resamples,
        seed=seed,
    )


def significant(comparison) -> bool:
    return any(r.verdict != "unchanged" for r in comparison.failures) or any(
        r.change != "unchanged" for r in comparison.outcomes
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "by, shares_after",
    [(None, (0.5, 0.3, 0.2)), ("service", (0.2, 0.45, 0.35))],
    ids=["same mix", "mix shift, by service"],
)
def test_same_distribution_is_significant_at_most_at_the_nominal_rate(by, shares_after) -> None:
    """Over many seeds, two samples with the same failure rates (within strata) get any significant verdict
    (a failure or an outcome metric) in at most alpha = 5% of comparisons, allowing three standard errors of
    sampling noise in the estimate of that share."""
    seeds = 300
    hits = sum(
        significant(compare_pair(seed, 300, shares_after=shares_after, by=by, resamples=50))
        for seed in range(seeds)
    )
    assert hits / seeds <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / seeds), f"{hits} of {seeds} comparisons"


def test_without_strata_a_mix_shift_moves_the_rates_and_is_flagged() -> None:
    comparison = compare_pair(3, 3000, shares_after=(0.2, 0.2, 0.6))
    assert any(m.shifted and m.dimension == "service" for m in comparison.mix)
    assert comparison.warnings and "--by service" in comparison.warnings[0]
    assert significant(
        comparison
    )  # what the warning is for: the support share tripled, its low rates with it


def test_known_changes_get_the_right_verdicts_within_strata() -> None:
    """Failure 7 removed, 6 halved, 5 doubled, the others unchanged, one new failure, and a mix shift."""
    rng = np.random.default_rng(42)
    n = 4000
    before, fails_b = sample(rng, n, (0.5, 0.3, 0.2), {})
    after, fails_a = sample(rng, n, (0.25, 0.35, 0.4), {7: 0.0, 6: 0.5, 5: 2.0})
    new_after = rng.random(n) < 0.04
    failures = [
        FailureMasks(f"f{i}", "tool_error", f"f{i}", f"f{i}", fails_b[i], fails_a[i], "both") for i in fails_b
    ]
    failures.append(FailureMasks("fnew", "timeout", "fnew", "fnew", np.zeros(n, bool), new_after, "after"))
    comparison = compare_samples(before, after, failures, by="service", resamples=200, seed=1)
    verdicts = {r.id: r.verdict for r in comparison.failures if r.stratum is None}
    assert verdicts == {
        "f0": "unchanged",
        "f1": "unchanged",
        "f2": "unchanged",
        "f3": "unchanged",
        "f4": "unchanged",
        "f5": "worse",
        "f6": "improved",
        "f7": "fixed",
        "fnew": "new",
    }
    shift = next(m for m in comparison.mix if m.dimension == "service")
    assert (
        shift.shifted and not comparison.warnings
    )  # compared by the shifted dimension: nothing to warn about
    halved = next(r for r in comparison.failures if r.id == "f6" and r.stratum is None)
    assert halved.relative_ci.low < -0.5 < halved.relative_ci.high  # the interval covers the true change
    assert {r.stratum for r in comparison.failures if r.id == "f6"} == {None, *STRATA.tolist()}
    assert comparison.regressions("new") == ["fnew: new"]
    assert set(comparison.regressions("any-regression")) == {"fnew: new", "f5: worse"}


def test_outcome_metrics_detect_real_changes_and_keep_intervals_seeded() -> None:
    rng = np.random.default_rng(5)
    n = 2000
    before, _ = sample(rng, n, (0.5, 0.3, 0.2), {})
    after, _ = sample(rng, n, (0.5, 0.3, 0.2), {})
    after.columns["duration_ms"] = after.columns["duration_ms"] * 1.5
    after.columns["outcome"] = (rng.random(n) < 0.8).astype(float)
    comparison = compare_samples(before, after, [], outcome=outcome_metric("resolved", boolean=True), seed=3)
    change = {r.metric: r.change for r in comparison.outcomes}
    assert change == {
        "error_rate": "unchanged",
        "duration_p50": "worse",
        "duration_p95": "worse",
        "tokens": "unchanged",
        "cost": "unchanged",
        "outcome": "better",
    }
    p50 = next(r for r in comparison.outcomes if r.metric == "duration_p50")
    assert p50.difference_ci.low < p50.difference < p50.difference_ci.high
    assert p50.relative_ci.low < p50.relative < p50.relative_ci.high
    again = compare_samples(before, after, [], outcome=outcome_metric("resolved", boolean=True), seed=3)
    assert again.outcomes == comparison.outcomes
    assert comparison.regressions("worse") == ["duration_p50: worse", "duration_p95: worse"]


def test_bootstrap_interval_covers_a_known_mean() -> None:
    """Coverage of the bootstrap interval of a mean difference over many seeds is near 95%."""
    covered = 0
    metric = next(m for m in METRICS if m.name == "tokens")
    for seed in range(100):
        rng = np.random.default_rng(seed)
        b = TraceSample(np.arange(400).astype(str), {"tokens": rng.exponential(100.0, 400)})
        a = TraceSample(np.arange(400).astype(str), {"tokens": rng.exponential(120.0, 400)})
        e = estimate_metric(metric, b, a, resamples=400, seed=seed)
        covered += e.difference_ci[0] <= 20.0 <= e.difference_ci[1]
    assert covered >= 88


def test_large_samples_use_fewer_resamples_and_a_normal_interval() -> None:
    rng = np.random.default_rng(0)
    n = 60_000
    metric = next(m for m in METRICS if m.name == "cost")
    b = TraceSample(np.arange(n).astype(str), {"cost": rng.exponential(1.0, n)})
    a = TraceSample(np.arange(n).astype(str), {"cost": rng.exponential(1.0, n)})
    e = estimate_metric(metric, b, a, resamples=1000, seed=0)
    assert e.interval == "333 bootstrap resamples, normal (standard error)"
    se = math.sqrt(2 / n)
    assert e.difference_ci[1] - e.difference_ci[0] == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_mix_shift_needs_significance_and_size() -> None:
    rng = np.random.default_rng(1)
    same = mix_shift("agent", rng.choice(STRATA, 5000), rng.choice(STRATA, 5000))
    assert not same.shifted
    tiny = mix_shift(
        "agent",
        rng.choice(STRATA, 200_000, p=[0.34, 0.33, 0.33]),
        rng.choice(STRATA, 200_000, p=[0.31, 0.35, 0.34]),
    )
    assert tiny.p_value < 0.001 and not tiny.shifted  # significant, but a 3-point move is not a mix shift
    moved = mix_shift(
        "agent", rng.choice(STRATA, 500, p=[0.6, 0.2, 0.2]), rng.choice(STRATA, 500, p=[0.3, 0.4, 0.3])
    )
    assert moved.shifted and moved.shares[0][0] == "billing"
