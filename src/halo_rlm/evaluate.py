"""`halo eval`: how good is an analysis? Score a report against labelled truth, so models, prompts and
budgets can be compared on the same corpus.

Three kinds of truth:

- a simulated corpus (`simulate`): patterns planted at known rates in known traces. A finding matches a
  pattern by category and key; recall is over the patterns in at least 2% of the traces, precision over the
  distinct (category, key) of the findings, and the count error is |found - planted| / planted for each
  matched finding, worst and mean. These are the scores the detector benchmark reports;
- a truth file written by `simulate` (`<corpus>.truth.json`) and any report (`halo eval --truth`);
- TRAIL (`trail.py`): per-trace error locations and categories, scored as the TRAIL paper does.

Every result also says how much of the report's evidence holds up (cited traces and spans exist, excerpts
are in the spans they cite: `report.verify`), and what the analysis cost in tokens, money and time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from halo_rlm import trail
from halo_rlm.detect import Thresholds, analyze
from halo_rlm.report import Finding, Report
from halo_rlm.simulate import GroundTruth, simulate
from halo_rlm.store import TraceStore
from halo_rlm.verify import verify

SYSTEMIC_SHARE = 0.02
EVIDENCE_PROBLEMS = ("cited trace", "cited span", "excerpt not found")


class PlantedScore(BaseModel):
    """Findings against planted patterns."""

    systemic: list[str] = Field(description="Planted patterns recall is measured on (>= 2% of traces)")
    missed: list[str]
    found: int = Field(description="Distinct category + key among the findings")
    false_positives: list[str] = Field(description="category:key of findings that match no planted pattern")
    count_errors: dict[str, float] = Field(description="Pattern id -> worst |found - planted| / planted")
    recall: float
    precision: float
    worst_count_error: float
    mean_count_error: float


class EvalResult(BaseModel):
    mode: Literal["detectors", "llm"]
    truth: str = Field(description="What the report was scored against")
    traces: int
    findings: int
    planted: PlantedScore | None = None
    trail: dict[str, float | int] | None = None
    evidence: int = Field(0, description="Evidence items cited by the findings")
    evidence_validity: float = Field(1.0, description="Share of them that verify against the store")
    tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    report: str | None = None


def score_planted(
    truth: GroundTruth, findings: Sequence[Finding], systemic_share: float = SYSTEMIC_SHARE
) -> PlantedScore:
    """Findings against the patterns `simulate` planted (see the module docstring)."""
    planted: dict[tuple[str, str | None], Any] = {(p.category, p.key): p for p in truth.patterns}
    found = {(f.category, f.key) for f in findings}
    systemic = [p for p in truth.patterns if p.affected_traces >= systemic_share * truth.corpus.traces]
    count_errors: dict[str, float] = {}
    for f in findings:  # every finding, so two findings splitting one pattern's count both answer for it
        p = planted.get((f.category, f.key))
        if p is not None:
            error = abs(f.affected_traces - p.affected_traces) / p.affected_traces
            count_errors[p.id] = max(error, count_errors.get(p.id, 0.0))
    missed = [p.id for p in systemic if (p.category, p.key) not in found]
    false_positives = sorted(f"{c}:{k}" for c, k in found - planted.keys())
    return PlantedScore(
        systemic=[p.id for p in systemic],
        missed=missed,
        found=len(found),
        false_positives=false_positives,
        count_errors=count_errors,
        recall=(len(systemic) - len(missed)) / len(systemic) if systemic else 1.0,
        precision=(len(found) - len(false_positives)) / len(found) if found else 1.0,
        worst_count_error=max(count_errors.values(), default=0.0),
        mean_count_error=sum(count_errors.values()) / len(count_errors) if count_errors else 0.0,
    )


def evidence_validity(report: Report) -> tuple[int, float]:
    """How many evidence items a verified report cites, and the share whose trace, span and excerpt check out."""
    cited = sum(len(f.evidence) for f in report.findings)
    bad = sum(
        1
        for f in report.findings
        if f.check
        for problem in f.check.problems
        if problem.startswith(EVIDENCE_PROBLEMS)
    )
    return cited, (cited - bad) / cited if cited else 1.0


def result_of(
    report: Report,
    *,
    truth: str,
    seconds: float,
    planted: PlantedScore | None = None,
    trail_score: trail.TrailScore | None = None,
    report_path: Path | None = None,
) -> EvalResult:
    cited, validity = evidence_validity(report)
    usage = report.usage
    return EvalResult(
        mode=report.mode,
        truth=truth,
        traces=report.dataset.traces,
        findings=len(report.findings),
        planted=planted,
        trail=trail_score.as_dict() if trail_score else None,
        evidence=cited,
        evidence_validity=validity,
        tokens=usage.tokens if usage else 0,
        cost_usd=round(usage.cost_usd, 6) if usage else 0.0,
        seconds=round(seconds, 3),
        report=str(report_path) if report_path else None,
    )


Analyst = Any  # (store, out_dir) -> Report: the detectors, or the engine with a model


def detectors(store: TraceStore, out_dir: Path) -> Report:
    """The default analyst: the deterministic detectors, verified."""
    report = analyze(store, thresholds=Thresholds())
    verify(report, store)
    return report


def evaluate_simulated(
    traces: int,
    seed: int,
    workdir: Path,
    *,
    analyst: Analyst = detectors,
    rates: dict[str, float] | None = None,
) -> EvalResult:
    """Simulate a corpus, analyse it with `analyst`, and score the report against what was planted."""
    workdir.mkdir(parents=True, exist_ok=True)
    truth = simulate(workdir / f"simulated-{traces}-s{seed}.jsonl", traces=traces, seed=seed, rates=rates)
    store_path = workdir / f"simulated-{traces}-s{seed}.duckdb"
    store_path.unlink(missing_ok=True)
    with TraceStore.open(store_path) as store:
        store.ingest([str(truth.traces_path)])
    started = time.monotonic()
    with TraceStore.open(store_path, read_only=True) as store:
        report = analyst(store, workdir / "report")
    seconds = time.monotonic() - started
    return result_of(
        report,
        truth=f"simulated: {traces} traces, seed {seed}",
        seconds=seconds,
        planted=score_planted(truth, report.findings),
    )


def evaluate_truth(truth_path: Path, report_path: Path, store: TraceStore | None = None) -> EvalResult:
    """Score an existing report against a `simulate` truth file; re-verify it when a store is given."""
    truth = GroundTruth.load(truth_path)
    report = Report.model_validate_json(report_path.read_text("utf-8"))
    if store is not None:
        verify(report, store)
    seconds = report.usage.seconds if report.usage else 0.0
    return result_of(
        report,
        truth=str(truth_path),
        seconds=seconds,
        planted=score_planted(truth, report.findings),
        report_path=report_path,
    )


def predictions(report: Report, store: TraceStore) -> list[trail.Prediction]:
    """What a report says went wrong where, per trace: each evidence span with its finding's category (mapped
    to TRAIL's), and each other affected trace (by the finding's recount query) with the category alone."""
    found: list[trail.Prediction] = []
    for f in report.findings:
        category = trail.CATEGORY_MAP.get(f.category)
        located = set()
        for ev in f.evidence:
            found.append(trail.Prediction(ev.trace_id, ev.span_id, category))
            located.add(ev.trace_id)
        if f.query:
            found += [
                trail.Prediction(trace_id, None, category)
                for trace_id in sorted(store.matching_traces(f.query))
                if trace_id not in located
            ]
    return found


def evaluate_trail(folder: Path, workdir: Path, *, analyst: Analyst = detectors) -> EvalResult:
    """Ingest TRAIL's traces from a local folder, analyse them, and score the report the way TRAIL does."""
    data = trail.load(folder)
    workdir.mkdir(parents=True, exist_ok=True)
    spans = data.write_jsonl(workdir / "trail.jsonl")
    store_path = workdir / "trail.duckdb"
    store_path.unlink(missing_ok=True)
    with TraceStore.open(store_path) as store:
        store.ingest([str(spans)])
    started = time.monotonic()
    with TraceStore.open(store_path, read_only=True) as store:
        report = analyst(store, workdir / "report")
        seconds = time.monotonic() - started
        scored = trail.score(data, predictions(report, store))
    return result_of(report, truth=f"TRAIL: {folder}", seconds=seconds, trail_score=scored)


__all__ = [
    "EvalResult",
    "PlantedScore",
    "detectors",
    "evaluate_simulated",
    "evaluate_trail",
    "evaluate_truth",
    "evidence_validity",
    "predictions",
    "result_of",
    "score_planted",
]
