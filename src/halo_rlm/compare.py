"""Did the fix work? Before/after comparison of two trace sets, with statistics that say how sure we are.

For every failure found on either side, the share of traces it affects before and after, the
absolute and relative change with 95% confidence intervals, a p-value and a verdict (fixed,
improved, unchanged, worse, new); for per-trace outcomes (error-trace rate, a user-named outcome,
p50/p95 duration, tokens and cost per trace) the same with bootstrap intervals.

The methods, and why:

- **Rates.** Intervals for one rate are Wilson score intervals; for the difference of two rates,
  Newcombe's hybrid score interval (his method 10), which keeps its coverage at small counts and at
  0% where the Wald interval collapses; for the ratio, the Katz log interval, with 0.5 added to
  each cell when a count is zero. The test is Fisher's exact test when any expected cell of the
  2x2 table is under 5 (Cochran's rule), else the pooled two-proportion z-test.
- **Many findings at once.** Every row with a verdict (each failure, each outcome metric, and each
  stratum's rows under `--by`) is one family, corrected with Holm's step-down method. Holm, not
  Benjamini-Hochberg: verdicts drive actions (a CI gate fails a build, `halo loop` keeps or drops a
  change), so we bound the chance of *any* false verdict (the family-wise error rate), not the
  expected share of false ones; Holm does that under any dependence between rows (findings share
  traces, so they are dependent, where BH's guarantee needs positive dependence), and with the
  tens of rows a comparison has its loss of power against BH is small. Two samples of one
  distribution therefore get a significant verdict in at most `alpha` of comparisons.
- **Outcome metrics.** Point estimates and 95% percentile intervals of the change come from a
  seeded Poisson bootstrap (each trace drawn Poisson(1) times per resample, as in Chamandy et al.
  2012: the same statistic as the classical bootstrap at large n, computed with one weight matrix
  for all metrics). When n x resamples would exceed `BOOTSTRAP_WORK`, fewer resamples are drawn
  and the interval is the normal one from their standard error (which needs far fewer resamples
  than percentiles do). Tests are chosen per statistic: proportions as above, quantiles by
  Mood's test generalised to any quantile (traces above the pooled quantile, a 2x2 test), means by
  Welch's t-test.
- **Mix shift.** When the two sets differ in their mix of services, agents or root span names
  (chi-square test of homogeneity p < 0.001 and a total-variation distance of at least 5 points), a
  failure rate can move because the traffic moved. `by=` compares within strata: overall numbers
  are directly standardised to the pooled mix (each side's traces reweighted so every stratum has
  its pooled share), tests are stratified (Cochran-Mantel-Haenszel for rates and quantiles, a
  stratified z-test for means), and every stratum gets its own rows.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jinja2
import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, Field

from halo_rlm import detect, files
from halo_rlm.report import Finding, Report
from halo_rlm.runs import ID_ALPHABET, ID_LENGTH, RunError, RunRegistry
from halo_rlm.store import TraceStore
from halo_rlm.store import paths as store_paths

ALPHA = 0.05
CONFIDENCE = 0.95
RESAMPLES = 1000
BOOTSTRAP_WORK = 20_000_000  # trace x resample draws per side before switching to fewer resamples
MIN_RESAMPLES = 200
MIX_P = 0.001
MIX_DISTANCE = 0.05

Verdict = Literal["fixed", "improved", "unchanged", "worse", "new"]
Change = Literal["better", "unchanged", "worse"]
Better = Literal["lower", "higher"]
FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

# Poisson(1) cumulative probabilities (P(k) = e^-1 / k!), for drawing bootstrap weights by thresholds on
# uniforms (four times faster than numpy's Poisson sampler); the tail past 8 (1e-6) is cut.
_POISSON_CDF = np.cumsum([math.exp(-1) / math.factorial(k) for k in range(9)]).astype(np.float32)


def _stats() -> Any:
    """scipy.stats, loaded on first use: it holds about 60 MB, which `halo ui` need not carry until a
    comparison is made."""
    from scipy import stats  # type: ignore[import-untyped]

    return stats


# --- rates ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    """Affected traces out of traces, on one side."""

    affected: int
    traces: int

    @property
    def rate(self) -> float:
        return self.affected / self.traces if self.traces else 0.0


@functools.cache
def _z(confidence: float) -> float:
    return float(_stats().norm.ppf(0.5 + confidence / 2))


def _two_sided(z: float) -> float:
    """Two-sided p-value of a standard normal statistic."""
    return math.erfc(abs(z) / math.sqrt(2))


def wilson_interval(counts: Counts, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of one rate."""
    k, n = counts.affected, counts.traces
    if n == 0:
        return 0.0, 1.0
    z = _z(confidence)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(before: Counts, after: Counts, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Newcombe's hybrid score interval of `after.rate - before.rate`."""
    p1, p2 = before.rate, after.rate
    l1, u1 = wilson_interval(before, confidence)
    l2, u2 = wilson_interval(after, confidence)
    d = p2 - p1
    lower = d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2)
    upper = d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)
    return max(-1.0, lower), min(1.0, upper)


def ratio_interval(
    before: Counts, after: Counts, confidence: float = CONFIDENCE
) -> tuple[float, float] | None:
    """Katz log interval of `after.rate / before.rate`; None when the ratio is undefined (nothing
    before). A zero count gets 0.5 added to each cell."""
    if before.affected == 0 or not before.traces or not after.traces:
        return None
    a1, n1, a2, n2 = float(before.affected), float(before.traces), float(after.affected), float(after.traces)
    if a2 == 0 or a1 == n1 or a2 == n2:
        a1, n1, a2, n2 = a1 + 0.5, n1 + 1, a2 + 0.5, n2 + 1
    log_ratio = math.log((a2 / n2) / (a1 / n1))
    se = math.sqrt(1 / a2 - 1 / n2 + 1 / a1 - 1 / n1)
    z = _z(confidence)
    return math.exp(log_ratio - z * se), math.exp(log_ratio + z * se)


def proportion_test(before: Counts, after: Counts) -> tuple[float, str]:
    """Two-sided p-value that the two rates are equal, and the test used."""
    a1, n1, a2, n2 = before.affected, before.traces, after.affected, after.traces
    if not n1 or not n2:
        return 1.0, "none"
    total = n1 + n2
    hits = a1 + a2
    expected = min(n1 * hits, n1 * (total - hits), n2 * hits, n2 * (total - hits)) / total
    if expected < 5:
        _, p = _stats().fisher_exact([[a1, n1 - a1], [a2, n2 - a2]])
        return float(min(1.0, p)), "Fisher's exact test"
    pooled = hits / total
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z = (a2 / n2 - a1 / n1) / se
    return _two_sided(z), "two-proportion z-test"


def cmh_test(strata: Sequence[tuple[Counts, Counts]]) -> float:
    """Cochran-Mantel-Haenszel test (with continuity correction) that the rate is the same before and
    after within every stratum. Strata with no traces on a side carry no information and are skipped."""
    deviation = variance = 0.0
    for before, after in strata:
        n1, n2 = before.traces, after.traces
        total = n1 + n2
        hits = before.affected + after.affected
        if not n1 or not n2 or total < 2:
            continue
        deviation += after.affected - n2 * hits / total
        variance += n1 * n2 * hits * (total - hits) / (total * total * (total - 1))
    if variance <= 0:
        return 1.0
    statistic = max(0.0, abs(deviation) - 0.5) ** 2 / variance
    return _two_sided(math.sqrt(statistic))  # chi-square with one degree of freedom


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class RateEstimate:
    """A rate before and after, its change with intervals, and the test of no change."""

    before: float
    after: float
    difference: float
    difference_ci: tuple[float, float]
    relative: float | None  # after / before - 1
    relative_ci: tuple[float, float] | None
    p_value: float
    test: str


def estimate_rates(strata: Sequence[tuple[Counts, Counts]], confidence: float = CONFIDENCE) -> RateEstimate:
    """One stratum: the plain estimators. Several: rates directly standardised to the pooled mix of the
    strata present on both sides, an Agresti-Caffo interval of their difference, a delta-method
    interval of their ratio, and the CMH test."""
    shared = [(b, a) for b, a in strata if b.traces and a.traces]
    if len(strata) == 1 or len(shared) <= 1:
        before, after = shared[0] if shared else strata[0]
        p, test = proportion_test(before, after)
        ratio = ratio_interval(before, after, confidence)
        return RateEstimate(
            before=before.rate,
            after=after.rate,
            difference=after.rate - before.rate,
            difference_ci=difference_interval(before, after, confidence),
            relative=after.rate / before.rate - 1 if before.affected else None,
            relative_ci=(ratio[0] - 1, ratio[1] - 1) if ratio else None,
            p_value=p,
            test=test,
        )
    total = sum(b.traces + a.traces for b, a in shared)
    weights = [(b.traces + a.traces) / total for b, a in shared]
    before_rate = sum(w * b.rate for w, (b, _) in zip(weights, shared, strict=True))
    after_rate = sum(w * a.rate for w, (_, a) in zip(weights, shared, strict=True))
    # Agresti-Caffo: one success and one failure added per group keeps the variance off zero
    variance = sum(
        w * w * (_adjusted_variance(b) + _adjusted_variance(a))
        for w, (b, a) in zip(weights, shared, strict=True)
    )
    z = _z(confidence)
    difference = after_rate - before_rate
    half = z * math.sqrt(variance)
    relative = relative_ci = None
    if any(b.affected for b, _ in shared):
        adjusted_before = sum(
            w * (b.affected + 0.5) / (b.traces + 1) for w, (b, _) in zip(weights, shared, strict=True)
        )
        adjusted_after = sum(
            w * (a.affected + 0.5) / (a.traces + 1) for w, (_, a) in zip(weights, shared, strict=True)
        )
        log_se = math.sqrt(
            sum(w * w * _adjusted_variance(b) for w, (b, _) in zip(weights, shared, strict=True))
            / adjusted_before**2
            + sum(w * w * _adjusted_variance(a) for w, (_, a) in zip(weights, shared, strict=True))
            / adjusted_after**2
        )
        log_ratio = math.log(adjusted_after / adjusted_before)
        relative = after_rate / before_rate - 1 if before_rate else None
        relative_ci = (math.exp(log_ratio - z * log_se) - 1, math.exp(log_ratio + z * log_se) - 1)
    return RateEstimate(
        before=before_rate,
        after=after_rate,
        difference=difference,
        difference_ci=(max(-1.0, difference - half), min(1.0, difference + half)),
        relative=relative,
        relative_ci=relative_ci,
        p_value=cmh_test(shared),
        test="Cochran-Mantel-Haenszel test (stratified)",
    )


def _adjusted_variance(counts: Counts) -> float:
    p = (counts.affected + 1) / (counts.traces + 2)
    return p * (1 - p) / (counts.traces + 2)


def failure_verdict(
    before: Counts, after: Counts, difference: float, p_adjusted: float, alpha: float = ALPHA
) -> Verdict:
    """fixed: significantly down, to no trace at all; improved: significantly down; worse:
    significantly up; new: significantly up from no trace at all; otherwise unchanged."""
    if p_adjusted >= alpha or difference == 0:
        return "unchanged"
    if difference < 0:
        return "fixed" if after.affected == 0 else "improved"
    return "new" if before.affected == 0 else "worse"


# --- per-trace outcomes -----------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """A per-trace outcome summarised over a trace set."""

    name: str
    label: str
    column: str  # the TraceSample column it reads
    statistic: Literal["mean", "rate"] | float  # a float is a quantile
    better: Better
    unit: str = ""


METRICS: tuple[Metric, ...] = (
    Metric("error_rate", "error-trace rate", "error", "rate", "lower", "%"),
    Metric("duration_p50", "p50 duration", "duration_ms", 0.5, "lower", "ms"),
    Metric("duration_p95", "p95 duration", "duration_ms", 0.95, "lower", "ms"),
    Metric("tokens", "tokens per trace", "tokens", "mean", "lower"),
    Metric("cost", "cost per trace", "cost", "mean", "lower", "USD"),
)
DURATION = "duration_ms"


def outcome_metric(name: str, *, boolean: bool, better: Better = "higher") -> Metric:
    """The metric for a user-named outcome attribute: a success rate when it is true/false, else its mean."""
    return Metric("outcome", name, "outcome", "rate" if boolean else "mean", better, "%" if boolean else "")


@dataclass
class TraceSample:
    """One side's traces as aligned per-trace arrays: `columns` holds "error" (0/1), "duration_ms",
    "tokens", "cost" and optionally "outcome" (NaN where a trace has no value); `strata` the
    `by` attribute's value per trace; `mix` the label per trace of each mix dimension."""

    trace_ids: NDArray[np.str_]
    columns: dict[str, FloatArray]
    strata: NDArray[np.str_] | None = None
    mix: dict[str, NDArray[np.str_]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.trace_ids)


@dataclass(frozen=True)
class MetricEstimate:
    before: float | None
    after: float | None
    difference: float | None
    difference_ci: tuple[float, float] | None
    relative: float | None
    relative_ci: tuple[float, float] | None
    p_value: float
    test: str
    traces_before: int
    traces_after: int
    interval: str  # how the intervals were made


def _standardising_weights(before: TraceSample, after: TraceSample) -> tuple[FloatArray, FloatArray]:
    """Per-trace weights giving every stratum present on both sides its pooled share (0 elsewhere)."""
    assert before.strata is not None and after.strata is not None
    labels_b, counts_b = np.unique(before.strata, return_counts=True)
    labels_a, counts_a = np.unique(after.strata, return_counts=True)
    nb, na = (
        dict(zip(labels_b.tolist(), counts_b.tolist(), strict=True)),
        dict(zip(labels_a.tolist(), counts_a.tolist(), strict=True)),
    )
    shared = sorted(set(nb) & set(na))
    total = sum(nb[s] + na[s] for s in shared)

    def weights(sample: TraceSample, counts: dict[str, int]) -> FloatArray:
        per_label = {s: (nb[s] + na[s]) / total / counts[s] for s in shared}
        assert sample.strata is not None
        return np.array([per_label.get(s, 0.0) for s in sample.strata.tolist()], dtype=np.float64)

    return weights(before, nb), weights(after, na)


@dataclass(frozen=True)
class _Replicates:
    estimate: float | None  # the statistic under the standardising weights alone
    replicates: FloatArray  # ...and under each bootstrap resample
    traces: int  # traces with a value (and weight)


def _bootstrap(
    sample: TraceSample,
    weights: FloatArray,
    metrics: Sequence[Metric],
    resamples: int,
    rng: np.random.Generator,
) -> dict[str, _Replicates]:
    """Every metric of one side, and its Poisson-bootstrap replicates. One weight matrix serves all the
    metrics (a joint resample of traces), drawn in chunks of bounded memory; the traces are put in duration
    order first, so a duration quantile is a cumulative sum away."""
    present = [m for m in metrics if m.column in sample.columns]
    n = len(sample)
    order = (
        np.argsort(sample.columns[DURATION], kind="stable") if DURATION in sample.columns else np.arange(n)
    )
    w = weights[order].astype(np.float32)
    columns = {m.column: sample.columns[m.column][order] for m in present}
    has_value = {c: (~np.isnan(v)) & (w > 0) for c, v in columns.items()}
    values = {c: np.where(has_value[c], v, 0.0).astype(np.float32) for c, v in columns.items()}
    counts = {c: has_value[c].astype(np.float32) for c in columns}

    def statistics(draws: NDArray[np.float32]) -> dict[str, FloatArray]:
        out: dict[str, FloatArray] = {}
        cumulative: FloatArray | None = None
        for m in present:
            c = m.column
            with np.errstate(invalid="ignore", divide="ignore"):
                totals = draws @ counts[c]
                if isinstance(m.statistic, float):
                    # duration order puts traces without a duration last: the quantile is over a prefix
                    valid = int(has_value[c].sum()) if c == DURATION else None
                    if valid is None:
                        raise ValueError(f"quantiles are computed for {DURATION} only, not {c}")
                    if cumulative is None:
                        cumulative = np.cumsum(draws[:, :valid], axis=1, dtype=np.float64)
                    index = (cumulative < m.statistic * totals[:, None]).sum(axis=1)
                    sorted_values = columns[c][:valid]
                    picked = (
                        sorted_values[np.minimum(index, max(valid - 1, 0))]
                        if valid
                        else np.full(len(index), np.nan)
                    )
                    out[m.name] = np.where(totals > 0, picked, np.nan)
                else:
                    out[m.name] = (draws @ values[c]).astype(np.float64) / totals
        return out

    point = statistics(w[None, :])
    collected: dict[str, list[FloatArray]] = {m.name: [] for m in present}
    chunk = max(1, min(resamples, 4_000_000 // max(n, 1)))
    for start in range(0, resamples, chunk):
        uniform = rng.random((min(chunk, resamples - start), n), dtype=np.float32)
        draws = np.zeros(uniform.shape, dtype=np.uint8)
        for threshold in _POISSON_CDF:
            draws += uniform > threshold
        for name, replicate in statistics(draws.astype(np.float32) * w).items():
            collected[name].append(replicate)
    return {
        m.name: _Replicates(
            estimate=float(point[m.name][0]) if np.isfinite(point[m.name][0]) else None,
            replicates=np.concatenate(collected[m.name]) if collected[m.name] else np.array([]),
            traces=int(has_value[m.column].sum()),
        )
        for m in present
    }


def estimate_metrics(
    metrics: Sequence[Metric],
    before: TraceSample,
    after: TraceSample,
    *,
    stratified: bool = False,
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, MetricEstimate]:
    """Compare metrics between two samples: each side's estimate, the change with a bootstrap interval, and
    a test of no change (stratified by `TraceSample.strata` when `stratified`)."""
    rng = np.random.default_rng(seed)
    if stratified:
        weights_b, weights_a = _standardising_weights(before, after)
    else:
        weights_b, weights_a = np.ones(len(before)), np.ones(len(after))
    n_max = max(len(before), len(after), 1)
    draws = resamples if n_max * resamples <= BOOTSTRAP_WORK else max(MIN_RESAMPLES, BOOTSTRAP_WORK // n_max)
    percentile = draws == resamples
    interval = f"{draws} bootstrap resamples, " + ("percentile" if percentile else "normal (standard error)")
    sides = (
        _bootstrap(before, weights_b, metrics, draws, rng),
        _bootstrap(after, weights_a, metrics, draws, rng),
    )
    estimates = {}
    for metric in metrics:
        b, a = sides[0].get(metric.name), sides[1].get(metric.name)
        if b is None and a is None:
            continue
        p_value, test = _metric_test(metric, before, after, stratified)
        est_b, est_a = (b.estimate if b else None), (a.estimate if a else None)
        n_b, n_a = (b.traces if b else 0), (a.traces if a else 0)
        if b is None or a is None or est_b is None or est_a is None:
            estimates[metric.name] = MetricEstimate(
                est_b, est_a, None, None, None, None, p_value, test, n_b, n_a, interval
            )
            continue
        difference = est_a - est_b
        with np.errstate(invalid="ignore", divide="ignore"):
            ratios = a.replicates / b.replicates - 1
        relative = est_a / est_b - 1 if est_b else None
        relative_ci = None
        if relative is not None and np.isfinite(ratios).all():
            relative_ci = _interval(ratios, relative, confidence, percentile)
        estimates[metric.name] = MetricEstimate(
            est_b,
            est_a,
            difference,
            _interval(a.replicates - b.replicates, difference, confidence, percentile),
            relative,
            relative_ci,
            p_value,
            test,
            n_b,
            n_a,
            interval,
        )
    return estimates


def estimate_metric(
    metric: Metric,
    before: TraceSample,
    after: TraceSample,
    *,
    stratified: bool = False,
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> MetricEstimate:
    """`estimate_metrics` for one metric."""
    return estimate_metrics(
        [metric], before, after, stratified=stratified, resamples=resamples, seed=seed, confidence=confidence
    )[metric.name]


def _interval(
    replicates: FloatArray, estimate: float, confidence: float, percentile: bool
) -> tuple[float, float]:
    replicates = replicates[np.isfinite(replicates)]
    if not len(replicates):
        return estimate, estimate
    if percentile:
        tail = (1 - confidence) / 2 * 100
        low, high = np.percentile(replicates, [tail, 100 - tail])
        return float(low), float(high)
    half = _z(confidence) * float(np.std(replicates, ddof=1)) if len(replicates) > 1 else 0.0
    return estimate - half, estimate + half


def _metric_test(
    metric: Metric, before: TraceSample, after: TraceSample, stratified: bool
) -> tuple[float, str]:
    vb, va = before.columns.get(metric.column), after.columns.get(metric.column)
    if vb is None or va is None:
        return 1.0, "none"
    groups: list[tuple[FloatArray, FloatArray]]
    if stratified:
        assert before.strata is not None and after.strata is not None
        labels = sorted(set(before.strata.tolist()) & set(after.strata.tolist()))
        groups = [(vb[before.strata == s], va[after.strata == s]) for s in labels]
    else:
        groups = [(vb, va)]
    groups = [(b[~np.isnan(b)], a[~np.isnan(a)]) for b, a in groups]
    groups = [(b, a) for b, a in groups if len(b) and len(a)]
    if not groups:
        return 1.0, "none"
    if metric.statistic == "rate" or isinstance(metric.statistic, float):
        tables = [_split(b, a, metric.statistic) for b, a in groups]
        if len(tables) == 1:
            p, test = proportion_test(*tables[0])
        else:
            p, test = cmh_test(tables), "Cochran-Mantel-Haenszel test (stratified)"
        return p, test if metric.statistic == "rate" else f"quantile test (Mood) by {test}"
    if len(groups) == 1:
        b, a = groups[0]
        return _welch(b, a), "Welch's t-test"
    return _stratified_means(groups), "stratified z-test of means"


def _split(b: FloatArray, a: FloatArray, statistic: Literal["mean", "rate"] | float) -> tuple[Counts, Counts]:
    """A 2x2 table: for a rate the traces with a true value; for a quantile the traces above the
    pooled quantile."""
    if statistic == "rate":
        return Counts(int((b > 0).sum()), len(b)), Counts(int((a > 0).sum()), len(a))
    assert isinstance(statistic, float)
    threshold = np.quantile(np.concatenate([b, a]), statistic, method="inverted_cdf")
    return Counts(int((b > threshold).sum()), len(b)), Counts(int((a > threshold).sum()), len(a))


def _welch(b: FloatArray, a: FloatArray) -> float:
    if len(b) < 2 or len(a) < 2:
        return 1.0
    if np.var(b) == 0 and np.var(a) == 0:
        return 1.0 if np.mean(a) == np.mean(b) else 0.0
    return float(_stats().ttest_ind(a, b, equal_var=False).pvalue)


def _stratified_means(groups: Sequence[tuple[FloatArray, FloatArray]]) -> float:
    usable = [(b, a) for b, a in groups if len(b) >= 2 and len(a) >= 2]
    if not usable:
        return 1.0
    total = sum(len(b) + len(a) for b, a in usable)
    difference = variance = 0.0
    for b, a in usable:
        w = (len(b) + len(a)) / total
        difference += w * (a.mean() - b.mean())
        variance += w * w * (a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    if variance == 0:
        return 1.0 if difference == 0 else 0.0
    return _two_sided(difference / math.sqrt(variance))


def metric_change(
    metric: Metric, difference: float | None, p_adjusted: float, alpha: float = ALPHA
) -> Change:
    if difference is None or p_adjusted >= alpha or difference == 0:
        return "unchanged"
    return "better" if (difference < 0) == (metric.better == "lower") else "worse"


# --- mix --------------------------------------------------------------------------------------


class MixShift(BaseModel):
    """How the share of traces per label of one dimension differs between the sides."""

    dimension: str
    distance: float = Field(description="Total-variation distance of the two label distributions (0-1)")
    p_value: float = Field(description="Chi-square test of homogeneity")
    shifted: bool
    shares: list[tuple[str, float, float]] = Field(
        default_factory=list, description="(label, share before, share after), biggest moves first"
    )


def mix_shift(dimension: str, before: NDArray[np.str_], after: NDArray[np.str_], *, top: int = 5) -> MixShift:
    """Whether the mix of `dimension` shifted: significant (p < MIX_P) and large (distance >= MIX_DISTANCE)."""
    labels = sorted(set(before.tolist()) | set(after.tolist()))
    if not len(before) or not len(after) or len(labels) < 2:
        return MixShift(dimension=dimension, distance=0.0, p_value=1.0, shifted=False)
    index = {label: i for i, label in enumerate(labels)}
    table = np.zeros((2, len(labels)))
    for row, side in enumerate((before, after)):
        np.add.at(table[row], [index[s] for s in side.tolist()], 1)
    shares = table / table.sum(axis=1, keepdims=True)
    distance = float(0.5 * np.abs(shares[0] - shares[1]).sum())
    # labels with few traces are lumped so every expected count can reach 5
    expected = table.sum(axis=0) * min(len(before), len(after)) / table.sum()
    common = expected >= 5
    lumped = np.column_stack([table[:, common], table[:, ~common].sum(axis=1)]) if (~common).any() else table
    lumped = lumped[:, lumped.sum(axis=0) > 0]
    p = float(_stats().chi2_contingency(lumped)[1]) if lumped.shape[1] >= 2 else 1.0
    moves = sorted(range(len(labels)), key=lambda i: -abs(shares[1, i] - shares[0, i]))[:top]
    return MixShift(
        dimension=dimension,
        distance=round(distance, 6),
        p_value=p,
        shifted=p < MIX_P and distance >= MIX_DISTANCE,
        shares=[(labels[i], round(float(shares[0, i]), 6), round(float(shares[1, i]), 6)) for i in moves],
    )


# --- the comparison ---------------------------------------------------------------------------


@dataclass
class FailureMasks:
    """One failure, matched across the sides: which traces it affects on each side."""

    id: str
    category: str
    key: str | None
    title: str
    before: BoolArray
    after: BoolArray
    found_in: Literal["before", "after", "both"]


class Interval(BaseModel):
    low: float
    high: float


class FailureRow(BaseModel):
    id: str
    category: str
    key: str | None
    title: str
    stratum: str | None = Field(
        None, description="The `by` value these counts are within; None for all traces"
    )
    found_in: Literal["before", "after", "both"]
    affected_before: int
    traces_before: int
    affected_after: int
    traces_after: int
    rate_before: float
    rate_after: float
    difference: float = Field(description="rate after - rate before")
    difference_ci: Interval
    relative: float | None = Field(description="rate after / rate before - 1; None when nothing before")
    relative_ci: Interval | None
    p_value: float
    test: str
    p_adjusted: float = Field(default=1.0, description="Holm-adjusted over every row with a verdict")
    verdict: Verdict = "unchanged"


class OutcomeRow(BaseModel):
    metric: str
    label: str
    unit: str
    better: Better
    stratum: str | None = None
    traces_before: int
    traces_after: int
    before: float | None
    after: float | None
    difference: float | None
    difference_ci: Interval | None
    relative: float | None
    relative_ci: Interval | None
    p_value: float
    test: str
    interval: str
    p_adjusted: float = Field(default=1.0, description="Holm-adjusted over every row with a verdict")
    change: Change = "unchanged"


class Comparison(BaseModel):
    """What changed between two trace sets. `verdicts` counts failure rows over all traces."""

    before: str
    after: str
    traces_before: int
    traces_after: int
    alpha: float
    confidence: float
    correction: str = "Holm (family-wise error rate, every row with a verdict)"
    by: str | None = None
    outcome: str | None = None
    seed: int
    failures: list[FailureRow] = Field(default_factory=list)
    outcomes: list[OutcomeRow] = Field(default_factory=list)
    mix: list[MixShift] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    @property
    def verdicts(self) -> dict[str, int]:
        counts = dict.fromkeys(("fixed", "improved", "unchanged", "worse", "new"), 0)
        for row in self.failures:
            if row.stratum is None:
                counts[row.verdict] += 1
        return counts

    def regressions(self, kind: Literal["worse", "new", "any-regression"]) -> list[str]:
        """Rows over all traces that trip `--fail-on kind`: `worse` (a failure or an outcome got
        significantly worse), `new` (a failure appeared), or either."""
        tripping = {"worse": ("worse",), "new": ("new",), "any-regression": ("worse", "new")}[kind]
        found = [f"{r.id}: {r.verdict}" for r in self.failures if r.stratum is None and r.verdict in tripping]
        if kind in ("worse", "any-regression"):
            found += [
                f"{row.metric}: worse"
                for row in self.outcomes
                if row.stratum is None and row.change == "worse"
            ]
        return found


def _interval_model(pair: tuple[float, float] | None) -> Interval | None:
    return Interval(low=pair[0], high=pair[1]) if pair is not None else None


def compare_samples(
    before: TraceSample,
    after: TraceSample,
    failures: Sequence[FailureMasks],
    *,
    before_label: str = "before",
    after_label: str = "after",
    by: str | None = None,
    outcome: Metric | None = None,
    alpha: float = ALPHA,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Comparison:
    """Compare two trace samples: failure rates, outcome metrics, and mix. With `by`, both samples
    must carry `strata`; rows are added per stratum and the overall rows are stratified."""
    stratified = by is not None
    if stratified and (before.strata is None or after.strata is None):
        raise ValueError("comparing by strata needs the stratum of every trace on both sides")
    strata_labels: list[str] = []
    if stratified:
        assert before.strata is not None and after.strata is not None
        strata_labels = sorted(set(before.strata.tolist()) | set(after.strata.tolist()))

    failure_rows: list[FailureRow] = []
    for f in failures:
        per_stratum: list[tuple[str, Counts, Counts]] = []
        if stratified:
            assert before.strata is not None and after.strata is not None
            for label in strata_labels:
                in_b, in_a = before.strata == label, after.strata == label
                per_stratum.append(
                    (
                        label,
                        Counts(int(f.before[in_b].sum()), int(in_b.sum())),
                        Counts(int(f.after[in_a].sum()), int(in_a.sum())),
                    )
                )
        overall_b, overall_a = (
            Counts(int(f.before.sum()), len(before)),
            Counts(int(f.after.sum()), len(after)),
        )
        estimate = estimate_rates(
            [(b, a) for _, b, a in per_stratum] if stratified else [(overall_b, overall_a)], confidence
        )
        failure_rows.append(_failure_row(f, None, overall_b, overall_a, estimate))
        for label, b, a in per_stratum:
            if b.affected or a.affected:
                failure_rows.append(_failure_row(f, label, b, a, estimate_rates([(b, a)], confidence)))

    metrics = list(METRICS) + ([outcome] if outcome else [])
    outcome_rows: list[OutcomeRow] = []
    overall = estimate_metrics(
        metrics, before, after, stratified=stratified, resamples=resamples, seed=seed, confidence=confidence
    )
    by_stratum: dict[str, dict[str, MetricEstimate]] = {}
    if stratified:
        assert before.strata is not None and after.strata is not None
        for k, label in enumerate(strata_labels):
            sub_b, sub_a = _subset(before, before.strata == label), _subset(after, after.strata == label)
            if len(sub_b) and len(sub_a):
                by_stratum[label] = estimate_metrics(
                    metrics, sub_b, sub_a, resamples=resamples, seed=seed + 1 + k, confidence=confidence
                )
    for metric in metrics:
        if metric.name in overall:
            outcome_rows.append(_outcome_row(metric, None, overall[metric.name]))
        for label, estimates in by_stratum.items():
            if metric.name in estimates:
                outcome_rows.append(_outcome_row(metric, label, estimates[metric.name]))

    adjusted = iter(holm([r.p_value for r in failure_rows] + [r.p_value for r in outcome_rows]))
    for row in failure_rows:
        row.p_adjusted = next(adjusted)
        row.verdict = failure_verdict(
            Counts(row.affected_before, row.traces_before),
            Counts(row.affected_after, row.traces_after),
            row.difference,
            row.p_adjusted,
            alpha,
        )
    for outcome_row in outcome_rows:
        outcome_row.p_adjusted = next(adjusted)
        metric = next(m for m in metrics if m.name == outcome_row.metric)
        outcome_row.change = metric_change(metric, outcome_row.difference, outcome_row.p_adjusted, alpha)

    mix = [
        mix_shift(dimension, before.mix[dimension], after.mix[dimension])
        for dimension in before.mix
        if dimension in after.mix
    ]
    warnings = []
    shifted = [m for m in mix if m.shifted]
    if shifted and not stratified:
        moves = "; ".join(
            f"{m.dimension}: " + ", ".join(f"{label} {b:.0%} → {a:.0%}" for label, b, a in m.shares[:2])
            for m in shifted
        )
        warnings.append(
            f"The two sets differ in mix ({moves}), so rates may move because traffic moved. Compare "
            f"within strata with --by {shifted[0].dimension}."
        )
    return Comparison(
        before=before_label,
        after=after_label,
        traces_before=len(before),
        traces_after=len(after),
        alpha=alpha,
        confidence=confidence,
        by=by,
        outcome=outcome.label if outcome else None,
        seed=seed,
        failures=_ordered(failure_rows),
        outcomes=outcome_rows,
        mix=mix,
        warnings=warnings,
    )


def _subset(sample: TraceSample, mask: BoolArray) -> TraceSample:
    return TraceSample(
        trace_ids=sample.trace_ids[mask], columns={k: v[mask] for k, v in sample.columns.items()}
    )


def _failure_row(
    f: FailureMasks, stratum: str | None, before: Counts, after: Counts, estimate: RateEstimate
) -> FailureRow:
    difference_ci = _interval_model(estimate.difference_ci)
    assert difference_ci is not None
    return FailureRow(
        id=f.id,
        category=f.category,
        key=f.key,
        title=f.title,
        stratum=stratum,
        found_in=f.found_in,
        affected_before=before.affected,
        traces_before=before.traces,
        affected_after=after.affected,
        traces_after=after.traces,
        rate_before=estimate.before,
        rate_after=estimate.after,
        difference=estimate.difference,
        difference_ci=difference_ci,
        relative=estimate.relative,
        relative_ci=_interval_model(estimate.relative_ci),
        p_value=estimate.p_value,
        test=estimate.test,
    )


def _outcome_row(metric: Metric, stratum: str | None, e: MetricEstimate) -> OutcomeRow:
    return OutcomeRow(
        metric=metric.name,
        label=metric.label,
        unit=metric.unit,
        better=metric.better,
        stratum=stratum,
        traces_before=e.traces_before,
        traces_after=e.traces_after,
        before=e.before,
        after=e.after,
        difference=e.difference,
        difference_ci=_interval_model(e.difference_ci),
        relative=e.relative,
        relative_ci=_interval_model(e.relative_ci),
        p_value=e.p_value,
        test=e.test,
        interval=e.interval,
    )


_ORDER = {"worse": 0, "new": 1, "fixed": 2, "improved": 3, "unchanged": 4}


def _ordered(rows: list[FailureRow]) -> list[FailureRow]:
    """Regressions first, then fixes, then the rest; by size of the change within each; strata after
    their overall row."""
    overall = sorted(
        (r for r in rows if r.stratum is None), key=lambda r: (_ORDER[r.verdict], -abs(r.difference), r.id)
    )
    out = []
    for row in overall:
        out.append(row)
        out += sorted(
            (r for r in rows if r.stratum is not None and r.id == row.id), key=lambda r: r.stratum or ""
        )
    return out


def masks_from_ids(trace_ids: NDArray[np.str_], affected: Sequence[str] | set[str]) -> BoolArray:
    """Which of `trace_ids` are in `affected`."""
    return np.isin(trace_ids, np.array(sorted(affected), dtype=trace_ids.dtype if len(trace_ids) else str))


def as_float(values: Sequence[float | int | bool | None] | NDArray[np.generic]) -> FloatArray:
    """Per-trace values as floats, None as NaN."""
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


# --- trace sets from stores -------------------------------------------------------------------

MIX_DIMENSIONS = ("service", "agent", "root")


def load_report(path: Path) -> Report:
    """A report from its report.json, or from the folder holding it."""
    path = path / "report.json" if path.is_dir() else path
    return Report.model_validate_json(path.read_text("utf-8"))


def trace_sample(
    store: TraceStore, *, by: str | None = None, outcome: str | None = None
) -> tuple[TraceSample, bool]:
    """One store's traces as a `TraceSample`, and whether the outcome is true/false (else a number)."""
    values = store.trace_values([a for a in (by, outcome) if a])
    columns = {name: values[name] for name in ("error", "duration_ms", "tokens", "cost")}
    boolean = False
    if outcome:
        raw = [None if v is None or v == "" else str(v).strip().lower() for v in values[outcome].tolist()]
        present = {v for v in raw if v is not None}
        boolean = bool(present) and present <= {"true", "false", "1", "0"}
        columns["outcome"] = as_float(
            [None if v is None else (v in ("true", "1")) if boolean else _number(v) for v in raw]
        )
    strata = None
    if by:
        strata = np.array(
            [str(v) if v is not None and v != "" else "(none)" for v in values[by].tolist()], dtype=str
        )
    mix = {d: values[d] for d in MIX_DIMENSIONS}
    return TraceSample(values["trace_id"], columns, strata, mix), boolean


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def match_key(finding: Finding) -> str:
    """What a finding is matched by across reports: a detector's finding by its id (category, key, and the
    message template when one tool fails in several ways, all deterministic), any other by category and key."""
    if finding.source.startswith("detector") or not finding.key:
        return finding.id
    return f"{finding.category}:{finding.key}"


@dataclass
class MatchedFinding:
    """One failure as both reports name it: the recount queries of either side, and where it was found."""

    key: str
    category: str
    subject: str | None
    title: str
    queries: list[str]
    found_in: set[str]


def match_findings(before: Report, after: Report) -> tuple[list[MatchedFinding], list[str]]:
    """Findings of both reports matched by `match_key`; those without a recount query, or whose query is in
    another SQL dialect than the stores', are listed apart."""
    matched: dict[str, MatchedFinding] = {}
    skipped = []
    for side, report in (("before", before), ("after", after)):
        for f in report.findings:
            if not f.query:
                skipped.append(f"{f.id} ({side}: no recount query)")
                continue
            key = match_key(f)
            found = matched.setdefault(key, MatchedFinding(key, f.category, f.key, f.title, [], set()))
            if f.query not in found.queries:
                found.queries.append(f.query)
            found.found_in.add(side)
    return list(matched.values()), skipped


def _affected(store: TraceStore, matched: list[MatchedFinding]) -> list[set[str]]:
    """The traces each matched finding affects in `store`: those any of its queries (from either report)
    returns."""
    queries = sorted({q for m in matched for q in m.queries})
    prepared = dict(zip(queries, detect.prepared_queries(store, queries), strict=True))
    hits = {q: store.matching_traces(prepared[q]) for q in queries}
    return [set().union(*(hits[q] for q in m.queries)) for m in matched]


def compare_stores(
    before: TraceStore,
    after: TraceStore,
    before_report: Report | None = None,
    after_report: Report | None = None,
    *,
    before_label: str = "before",
    after_label: str = "after",
    by: str | None = None,
    outcome: str | None = None,
    outcome_better: Better = "higher",
    alpha: float = ALPHA,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Comparison:
    """Compare the traces of two (read-only) stores. A side without a report is analysed by the detectors
    first. Every matched finding's recount queries run on both stores, each on its own; then
    `compare_samples` does the statistics."""

    def analysed(store: TraceStore, report: Report | None) -> Report:
        return report if report is not None else detect.analyze(store)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        sides = list(pool.map(analysed, (before, after), (before_report, after_report)))
        b_report, a_report = sides
        matched, skipped = match_findings(b_report, a_report)
        b_future = pool.submit(
            lambda: (trace_sample(before, by=by, outcome=outcome), _affected(before, matched))
        )
        a_future = pool.submit(
            lambda: (trace_sample(after, by=by, outcome=outcome), _affected(after, matched))
        )
        ((b_sample, b_boolean), b_hits), ((a_sample, a_boolean), a_hits) = (
            b_future.result(),
            a_future.result(),
        )
    failures = [
        FailureMasks(
            m.key,
            m.category,
            m.subject,
            m.title,
            masks_from_ids(b_sample.trace_ids, b_hit),
            masks_from_ids(a_sample.trace_ids, a_hit),
            "both" if len(m.found_in) == 2 else ("before" if "before" in m.found_in else "after"),
        )
        for m, b_hit, a_hit in zip(matched, b_hits, a_hits, strict=True)
    ]
    metric = (
        outcome_metric(outcome, boolean=b_boolean or a_boolean, better=outcome_better) if outcome else None
    )
    comparison = compare_samples(
        b_sample,
        a_sample,
        failures,
        before_label=before_label,
        after_label=after_label,
        by=by,
        outcome=metric,
        alpha=alpha,
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )
    if skipped:
        comparison.warnings.append("Not compared: " + ", ".join(skipped))
    if outcome and all(np.isnan(s.columns["outcome"]).all() for s in (b_sample, a_sample)):
        comparison.warnings.append(f"No trace on either side has the outcome attribute {outcome!r}.")
    return comparison


# --- the two sides ----------------------------------------------------------------------------


class SideError(Exception):
    """A side of a comparison that names no trace file, store or run here; the message says why."""


class Side(BaseModel):
    """One side of a comparison, resolved: what `ref` names and what comparing it will read. A run's side is
    its report and its store (for a run of the web app, its own copy of the traces it analysed)."""

    ref: str = Field(description="As given: a trace file, a store, or a run id (or a prefix of one)")
    kind: Literal["run", "store", "files"]
    label: str
    store: str = Field(description="The store compared; for trace files, the store they are ingested into")
    files: list[str] = Field(default_factory=list, description="The trace files, resolved")
    bytes: int = Field(0, description="Their total size")
    run_id: str | None = None
    report: str | None = Field(None, description="The run's report.json, when it has one")

    def read_report(self) -> Report | None:
        """The run's report; None for a side the detectors must analyse first."""
        return load_report(Path(self.report)) if self.report else None


def looks_like_run_id(ref: str) -> bool:
    return 1 <= len(ref) <= ID_LENGTH and set(ref.lower()) <= set(ID_ALPHABET)


def is_store_file(path: Path) -> bool:
    """A DuckDB store (by its file header), not a trace file."""
    with open(path, "rb") as f:
        return f.read(16)[8:12] == b"DUCK"


def resolve_side(ref: str, registries: Sequence[RunRegistry] | None = None) -> Side:
    """What `ref` names: an existing path is a store file or trace files (a directory of them), else a run
    id looked up in `registries` (by default the one beside the store remembered for the working
    directory, then HALO's shared one). Only names, sizes and a file's first bytes are read: nothing is
    ingested or analysed. Raises SideError."""
    path = Path(os.path.expanduser(ref))
    if ref.strip() and path.exists():
        if path.is_file() and is_store_file(path):
            return Side(ref=ref, kind="store", label=ref, store=str(path.resolve()))
        try:
            inputs = files.resolve([str(path)])
        except files.InputError as exc:
            raise SideError(str(exc)) from exc
        return Side(
            ref=ref,
            kind="files",
            label=ref,
            store=str(store_paths.for_inputs(inputs)),
            files=[i.path for i in inputs],
            bytes=sum(i.size or 0 for i in inputs),
        )
    if looks_like_run_id(ref):
        if registries is None:
            remembered = store_paths.last()
            registries = [
                RunRegistry.beside(remembered.store if remembered else None),
                RunRegistry.beside(None),
            ]
        for registry in registries:
            try:
                run = registry.get(ref)
            except RunError:
                continue
            store = run.record.store
            if not store or not (store_paths.is_url(store) or Path(store).exists()):
                raise SideError(f"run {run.id}: its store {store or '(none)'} is not here any more")
            report = run.file("report.json")
            return Side(
                ref=ref,
                kind="run",
                label=f"run {run.id}",
                store=store,
                run_id=run.id,
                report=str(report) if report is not None and report.exists() else None,
            )
    raise SideError(f"{ref}: not a trace file, a store or a run id (halo runs lists the runs)")


# --- rendering --------------------------------------------------------------------------------

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("halo_rlm", "templates"), autoescape=True, undefined=jinja2.StrictUndefined
)
VERDICT_MARKS = {
    "fixed": "✔ fixed",
    "improved": "↓ improved",
    "unchanged": "· unchanged",
    "worse": "↑ worse",
    "new": "✖ new",
}
CHANGE_MARKS = {"better": "✔ better", "unchanged": "· unchanged", "worse": "↑ worse"}


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def value_text(row: OutcomeRow, value: float | None, *, signed: bool = False) -> str:
    """A metric's value (or, `signed`, a change of it) in its unit."""
    if value is None:
        return "–"
    sign = "+" if signed else ""
    if row.unit == "%":
        return f"{value * 100:{sign}.1f}" + (" pts" if signed else "%")
    if row.unit == "USD":
        return f"{'-' if value < 0 else '+' if signed else ''}${abs(value):,.4f}"
    if row.unit == "ms":
        return f"{value:{sign},.0f} ms" if abs(value) >= 10 else f"{value:{sign},.2f} ms"
    return f"{value:{sign},.4g}"


def rate_change_text(row: FailureRow) -> str:
    ci = row.difference_ci
    return f"{row.difference * 100:+.1f} pts [{ci.low * 100:+.1f}, {ci.high * 100:+.1f}]"


def outcome_change_text(row: OutcomeRow) -> str:
    if row.difference is None:
        return "–"
    ci = row.difference_ci
    interval = (
        f" [{value_text(row, ci.low, signed=True)}, {value_text(row, ci.high, signed=True)}]" if ci else ""
    )
    return value_text(row, row.difference, signed=True) + interval


def relative_text(relative: float | None, ci: Interval | None) -> str:
    if relative is None:
        return "–"
    return f"{relative * 100:+.0f}%" + (f" [{ci.low * 100:+.0f}%, {ci.high * 100:+.0f}%]" if ci else "")


def _cell(text: str) -> str:
    """Untrusted text (titles and ids from reports, labels from traces) as inert markdown: one line, in a
    code span, its table separators escaped."""
    return "`" + " ".join(text.split()).replace("`", "'").replace("|", "\\|")[:160] + "`"


def to_markdown(c: Comparison) -> str:
    stratified = f" within strata of {_cell(c.by)}" if c.by else ""
    lines = [
        f"# HALO comparison: {_cell(c.before)} → {_cell(c.after)}",
        "",
        f"{c.traces_before:,} traces before, {c.traces_after:,} after, compared{stratified}. A change is "
        f"significant at {c.alpha:g} after {c.correction}; intervals are {c.confidence:.0%}.",
        "",
        "**Verdicts:** "
        + (", ".join(f"{n} {v}" for v, n in c.verdicts.items() if n) or "no failures to compare"),
        "",
        *(f"> ⚠ {' '.join(w.split())}\n" for w in c.warnings),
        "## Failures",
        "",
        "| verdict | failure | before | after | change (95% CI) | relative | p (Holm) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in c.failures:
        name = f"{_cell(r.title)} {_cell(r.id)}" if r.stratum is None else f"↳ {_cell(r.stratum)}"
        lines.append(
            f"| {VERDICT_MARKS[r.verdict]} | {name} | {r.affected_before:,}/{r.traces_before:,} ({pct(r.rate_before)}) "
            f"| {r.affected_after:,}/{r.traces_after:,} ({pct(r.rate_after)}) | {rate_change_text(r)} | "
            f"{relative_text(r.relative, r.relative_ci)} | {r.p_adjusted:.2g} |"
        )
    lines += [
        "",
        "## Outcomes per trace",
        "",
        "| change | metric | before | after | change (95% CI) | p (Holm) |",
        "|---|---|---|---|---|---|",
    ]
    for o in c.outcomes:
        name = _cell(o.label) if o.stratum is None else f"↳ {_cell(o.stratum)}"
        lines.append(
            f"| {CHANGE_MARKS[o.change]} | {name} | {value_text(o, o.before)} | {value_text(o, o.after)} | "
            f"{outcome_change_text(o)} | {o.p_adjusted:.2g} |"
        )
    if c.mix:
        lines += [
            "",
            "## Mix",
            "",
            "| dimension | distance | p | shifted | biggest moves |",
            "|---|---|---|---|---|",
        ]
        for m in c.mix:
            moves = ", ".join(f"{_cell(label)} {b:.0%} → {a:.0%}" for label, b, a in m.shares[:3])
            lines.append(
                f"| {m.dimension} | {m.distance:.3f} | {m.p_value:.2g} | {'yes' if m.shifted else 'no'} | "
                f"{moves} |"
            )
    lines += ["", f"Methods: {METHODS}", ""]
    return "\n".join(lines)


METHODS = (
    "failure rates by Fisher's exact test when an expected count is under 5, else the two-proportion z-test "
    "(Cochran-Mantel-Haenszel within strata); Newcombe intervals for rate differences, Katz for ratios; "
    "quantiles by Mood's test, means by Welch's t-test, rates of outcomes as failure rates; Poisson "
    "bootstrap intervals for outcomes; Holm's correction over every row with a verdict."
)


def to_html(c: Comparison) -> str:
    return _TEMPLATES.get_template("compare.html").render(
        c=c,
        pct=pct,
        value_text=value_text,
        rate_change_text=rate_change_text,
        outcome_change_text=outcome_change_text,
        relative_text=relative_text,
        verdict_marks=VERDICT_MARKS,
        change_marks=CHANGE_MARKS,
        methods=METHODS,
    )


def write(c: Comparison, out_dir: Path) -> dict[str, Path]:
    """Write compare.json, compare.md and compare.html into `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "compare.json",
        "markdown": out_dir / "compare.md",
        "html": out_dir / "compare.html",
    }
    paths["json"].write_text(c.model_dump_json(indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(to_markdown(c), encoding="utf-8")
    paths["html"].write_text(to_html(c), encoding="utf-8")
    return paths


__all__ = [
    "ALPHA",
    "CONFIDENCE",
    "METRICS",
    "Comparison",
    "Counts",
    "FailureMasks",
    "FailureRow",
    "Metric",
    "MetricEstimate",
    "MixShift",
    "OutcomeRow",
    "RateEstimate",
    "Side",
    "SideError",
    "TraceSample",
    "Verdict",
    "as_float",
    "cmh_test",
    "compare_samples",
    "difference_interval",
    "estimate_metric",
    "estimate_metrics",
    "estimate_rates",
    "failure_verdict",
    "holm",
    "masks_from_ids",
    "metric_change",
    "mix_shift",
    "outcome_metric",
    "proportion_test",
    "ratio_interval",
    "resolve_side",
    "wilson_interval",
]
