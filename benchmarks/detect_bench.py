"""Detector quality and speed on simulated corpora with planted failures.

For each size (in traces) and format, `simulate` writes a corpus with planted systemic patterns,
one-off distractor errors and its ground truth. The corpus is ingested, `detect.analyze` (what
`halo analyze` runs) reads the store, and the findings are scored against the truth with
`evaluate.score_planted`, the scoring tests/test_detect.py and `halo eval` use:

  recall             planted patterns in >= 2% of the traces that a finding matches   >= 0.95
  precision          findings (distinct category + key) that match a planted pattern  >= 0.95
  worst_count_error  |affected_traces - truth| / truth, worst matched finding          0 (exact)
  not_recounted      findings whose count is not a recount of their own query          0
  missing_ids        cited trace or span ids that are not in the store                 0

With --llm, the same store is then analysed in LLM mode, driven over HTTP by the scripted analyst of
the tests (tests/scripted_analyst.py: it confirms some hypotheses, words others its own way, and adds
a claim with fake evidence and one with none), and the report's verified findings are scored the
same way: llm_recall and llm_precision must be at least the detectors'.

Then a corpus of about --gb GB (in --gb-format) is made and scored the same way, and its analysis
must take at most 30 s. Ingest and analysis each run in a fresh Python process, so their times
and peak RSS are theirs alone. analysis_s is opening the store plus the detectors; verify_s is the
re-check `halo analyze` runs after them, reported apart. Corpora are kept in --work and reused
(1 GB is about 58,000 traces; 100,000 traces take about 1.7 GB as halo and 1.9 GB as otlp).

Exits 1 when any target is missed, so it can serve as a check.

    python benchmarks/detect_bench.py --sizes 1000 10000 100000 --gb 1 --llm \
        --out benchmarks/results/detect.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from store_bench import ingest, measure

from halo_rlm.evaluate import score_planted
from halo_rlm.report import Finding, Report
from halo_rlm.simulate import GroundTruth, simulate
from halo_rlm.store import TraceStore

MIN_RECALL = 0.95
MIN_PRECISION = 0.95
MAX_COUNT_ERROR = 0.0
MAX_ANALYSIS_S = 30.0


def corpus(work: Path, traces: int, fmt: str, seed: int) -> GroundTruth:
    """The simulated corpus of `traces` traces, made once per work folder."""
    name = f"sim-{traces}-s{seed}.{fmt}"
    truth = work / f"{name}.truth.json"
    if truth.exists():  # simulate writes the truth last, so a corpus cut short is made again
        return GroundTruth.load(truth)
    started = time.perf_counter()
    made = simulate(work / f"{name}.jsonl", traces=traces, seed=seed, format=fmt)  # type: ignore[arg-type]
    print(
        f"simulated {name}: {made.corpus.spans:,} spans in {time.perf_counter() - started:.1f}s",
        file=sys.stderr,
    )
    return made


def traces_for(work: Path, gb: float, fmt: str, seed: int) -> int:
    """How many traces make about `gb` GB in `fmt`, from the size of a 1,000-trace sample."""
    sample = corpus(work, 1_000, fmt, seed)
    return math.ceil(gb * 1e9 / (sample.traces_path.stat().st_size / 1_000))


def analysis(store: Path, report: Path) -> dict[str, Any]:
    """Run the detectors and the report's verification; write the report to `report`."""
    return measure(f"""
        from halo_rlm.detect import analyze
        from halo_rlm.verify import verify
        from halo_rlm.store import TraceStore
        t = time.perf_counter()
        with TraceStore.open({str(store)!r}, read_only=True) as s:
            report = analyze(s)
            result["analysis_s"] = time.perf_counter() - t
            t = time.perf_counter()
            verify(report, s)
            result["verify_s"] = time.perf_counter() - t
        with open({str(report)!r}, "w") as f:
            f.write(report.model_dump_json())
    """)


def missing_citations(store: Path, findings: list[Finding]) -> list[str]:
    """Cited traces and spans the store does not hold, as `trace` or `trace:span`. Checked here
    rather than read from the report's verification, so a fault there cannot hide one."""
    cited = {(ev.trace_id, ev.span_id) for f in findings for ev in f.evidence}
    with TraceStore.open(store, read_only=True) as s:
        rows = s.query(
            "SELECT trace_id, span_id FROM spans WHERE trace_id IN (SELECT unnest(?::VARCHAR[]))",
            [sorted({trace for trace, _ in cited})],
        )
    spans = {(r["trace_id"], r["span_id"]) for r in rows}
    traces = {trace for trace, _ in spans}
    return sorted(
        f"{trace}:{span}" if span else trace
        for trace, span in cited
        if trace not in traces or (span and (trace, span) not in spans)
    )


def llm_mode(store: Path) -> list[Finding]:
    """The verified findings of an LLM-mode report on `store`, the model being the scripted analyst."""
    sys.path.insert(0, str(ROOT / "tests"))
    from scripted_analyst import analyst
    from scripted_llm import ScriptedLLM

    from halo_rlm.engine import EngineConfig, run_engine

    with ScriptedLLM(analyst) as llm, TraceStore.open(store, read_only=True) as s:
        config = EngineConfig(base_url=llm.base_url, api_key="bench", model="scripted-model")
        report = run_engine("Find the systemic failures.", config, store=s)[-1].report
    assert report is not None and report.outcome.complete, report and report.outcome
    return [f for f in report.findings if f.check is not None and f.check.status == "verified"]


def bench(work: Path, truth: GroundTruth, *, llm: bool = False) -> dict[str, Any]:
    fmt, traces = truth.corpus.format, truth.corpus.traces
    store = work / f"sim-{traces}-s{truth.corpus.seed}.{fmt}.duckdb"
    report_path = store.with_suffix(".report.json")
    loaded = ingest(truth.traces_path, store)
    analysed = analysis(store, report_path)
    findings = Report.model_validate_json(report_path.read_bytes()).findings
    score = score_planted(truth, findings)
    llm_score = score_planted(truth, llm_mode(store)) if llm else None
    not_recounted = [
        f.id
        for f in findings
        if f.check is None or f.check.status != "verified" or f.check.recount != f.affected_traces
    ]
    return {
        "traces": traces,
        "format": fmt,
        "bytes": truth.traces_path.stat().st_size,
        "spans": loaded["spans"],
        "rejected": loaded["rejected"],
        "planted": len(truth.patterns),
        "systemic": len(score.systemic),
        "findings": len(findings),
        "recall": score.recall,
        "precision": score.precision,
        "worst_count_error": score.worst_count_error,
        "missing_ids": len(missing_citations(store, findings)),
        "not_recounted": not_recounted,
        "llm_recall": llm_score.recall if llm_score else None,
        "llm_precision": llm_score.precision if llm_score else None,
        "llm_false_positives": llm_score.false_positives if llm_score else None,
        "missed": score.missed,
        "false_positives": score.false_positives,
        "count_errors": score.count_errors,
        "ingest_s": loaded["ingest_s"],
        "ingest_rss_mb": loaded["peak_rss_mb"],
        "analysis_s": analysed["analysis_s"],
        "verify_s": analysed["verify_s"],
        "analysis_rss_mb": analysed["peak_rss_mb"],
    }


def misses(row: dict[str, Any], *, timed: bool) -> list[str]:
    """The targets a row misses, in words. Only the GB row is held to the time target."""
    found = []
    if row["recall"] < MIN_RECALL:
        found.append(f"recall {row['recall']:.3f} < {MIN_RECALL} (missed {', '.join(row['missed'])})")
    if row["precision"] < MIN_PRECISION:
        found.append(
            f"precision {row['precision']:.3f} < {MIN_PRECISION} "
            f"(false positives {', '.join(row['false_positives'])})"
        )
    if row["worst_count_error"] > MAX_COUNT_ERROR:
        off = {pid: round(e, 3) for pid, e in row["count_errors"].items() if e > MAX_COUNT_ERROR}
        found.append(f"affected-trace counts off by more than {MAX_COUNT_ERROR:.0%}: {off}")
    if row["missing_ids"]:
        found.append(f"{row['missing_ids']} cited ids are not in the store")
    if row["not_recounted"]:
        found.append(f"counts that are not a recount of their query: {row['not_recounted']}")
    if row["llm_recall"] is not None and (
        row["llm_recall"] < row["recall"] or row["llm_precision"] < row["precision"]
    ):
        found.append(
            f"LLM mode scores below the detectors: recall {row['llm_recall']:.3f}, precision "
            f"{row['llm_precision']:.3f} (false positives {row['llm_false_positives']})"
        )
    if timed and row["analysis_s"] > MAX_ANALYSIS_S:
        found.append(f"analysis took {row['analysis_s']:.1f}s > {MAX_ANALYSIS_S:.0f}s")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[100, 1_000, 10_000, 100_000], help="corpus sizes in traces"
    )
    parser.add_argument("--formats", nargs="+", choices=["halo", "otlp"], default=["halo", "otlp"])
    parser.add_argument(
        "--gb", type=float, default=1.0, help="size of the timed analysis corpus in GB; 0 skips it"
    )
    parser.add_argument("--gb-format", choices=["halo", "otlp"], default="halo")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--llm",
        action="store_true",
        help="also score LLM mode with the scripted analyst (needs the test extra)",
    )
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "halo-bench")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    runs = [(size, fmt, False) for size in args.sizes for fmt in args.formats]
    if args.gb > 0:
        runs.append((traces_for(args.work, args.gb, args.gb_format, args.seed), args.gb_format, True))
    results = []
    for traces, fmt, timed in runs:
        row = bench(args.work, corpus(args.work, traces, fmt, args.seed), llm=args.llm and not timed)
        if timed:
            row["gb"] = args.gb
        row["misses"] = misses(row, timed=timed)
        results.append(row)
        print(json.dumps(row), flush=True)
    machine = {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }
    targets = {
        "min_recall": MIN_RECALL,
        "min_precision": MIN_PRECISION,
        "max_count_error": MAX_COUNT_ERROR,
        "missing_ids": 0,
        "not_recounted": 0,
        "max_analysis_s": MAX_ANALYSIS_S,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {"machine": machine, "targets": targets, "results": results}
        args.out.write_text(json.dumps(report, indent=2))
    failed = [(row, miss) for row in results for miss in row["misses"]]
    for row, miss in failed:
        print(f"MISSED {row['traces']:,} traces {row['format']}: {miss}", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
