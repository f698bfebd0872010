"""`halo eval`'s scoring: planted corpora score as the detector benchmark scores them, any report can be scored
against a truth file, and TRAIL folders are ingested, analysed and scored per span."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from halo_rlm.detect import analyze
from halo_rlm.evaluate import evaluate_simulated, evaluate_trail, evaluate_truth, score_planted
from halo_rlm.report import Evidence, Finding
from halo_rlm.simulate import GroundTruth
from halo_rlm.store import TraceStore


def test_a_simulated_corpus_scores_as_the_detector_benchmark_scores_it(tmp_path: Path) -> None:
    result = evaluate_simulated(1000, 11, tmp_path)
    truth = GroundTruth.load(tmp_path / "simulated-1000-s11.truth.json")
    with TraceStore.open(tmp_path / "simulated-1000-s11.duckdb", read_only=True) as store:
        benchmark = score_planted(truth, analyze(store).findings)  # what benchmarks/detect_bench.py computes
    assert result.planted is not None
    assert result.planted.recall == benchmark.recall == 1.0
    assert result.planted.precision == benchmark.precision
    assert result.planted.worst_count_error == benchmark.worst_count_error
    assert sorted(result.planted.systemic) == sorted(benchmark.systemic)
    assert result.mode == "detectors" and result.traces == 1000 and result.findings >= len(benchmark.systemic)
    assert result.evidence > 0 and result.evidence_validity == 1.0 and result.tokens == 0


def test_any_report_is_scored_against_a_truth_file(tmp_path: Path) -> None:
    evaluate_simulated(300, 5, tmp_path)
    truth = GroundTruth.load(tmp_path / "simulated-300-s5.truth.json")
    pattern = max(truth.patterns, key=lambda p: p.affected_traces)
    right = Finding(
        id="a",
        title="t",
        category=pattern.category,
        severity="high",
        key=pattern.key,
        affected_traces=pattern.affected_traces * 2,
        affected_trace_share=0.1,
        recommendation="r",
        confidence=0.5,
        source="llm",
        evidence=[Evidence(trace_id=pattern.affected_trace_ids[0]), Evidence(trace_id="f" * 32)],
    )
    wrong = right.model_copy(update={"id": "b", "category": "refusal", "key": "nobody", "evidence": []})
    with TraceStore.open(tmp_path / "simulated-300-s5.duckdb", read_only=True) as store:
        made = analyze(store)
    made.findings = [right, wrong]
    path = tmp_path / "llm-report.json"
    path.write_text(made.model_dump_json())
    with TraceStore.open(tmp_path / "simulated-300-s5.duckdb", read_only=True) as store:
        result = evaluate_truth(truth.truth_path, path, store)
    assert result.planted is not None
    assert result.planted.precision == 0.5 and result.planted.false_positives == ["refusal:nobody"]
    assert result.planted.count_errors == {pattern.id: 1.0}
    assert (result.evidence, result.evidence_validity) == (2, 0.5)  # one cited trace does not exist


def test_score_planted_matches_by_category_and_key() -> None:
    truth = GroundTruth.load(Path(__file__).resolve().parents[1] / "src/halo_rlm/examples/traces.truth.json")
    assert score_planted(truth, []).recall == 0.0
    assert score_planted(truth, []).precision == 1.0


def span(trace: str, span_id: str, name: str, status: str = "Unset", message: str = "", children=()) -> dict:
    return {
        "trace_id": trace,
        "span_id": span_id,
        "span_name": name,
        "span_kind": "Internal",
        "timestamp": "2025-03-19T16:44:14Z",
        "duration": "PT0.5S",
        "status_code": status,
        "status_message": message,
        "service_name": "gaia-agent",
        "span_attributes": {
            "openinference.span.kind": "TOOL" if name == "visit_page" else "AGENT",
            "tool.name": name if name == "visit_page" else None,
        },
        "child_spans": list(children),
    }


def test_trail_folders_are_ingested_analysed_and_scored(tmp_path: Path) -> None:
    folder = tmp_path / "trail"
    folder.mkdir()
    for i in range(4):
        trace = f"{i + 1:032x}"
        broken = i < 3  # three traces fail the same way: a systemic tool error the detectors find
        tool = span(
            trace,
            f"{i}b",
            "visit_page",
            "Error" if broken else "Ok",
            f"HTTPError: 404 Client Error for url https://example.org/{i}" if broken else "",
        )
        (folder / f"{trace}.json").write_text(
            json.dumps({"trace_id": trace, "spans": [span(trace, f"{i}a", "CodeAgent", children=[tool])]})
        )
        errors = (
            [{"category": "Service Errors", "location": f"{i}b"}]
            if broken
            else [{"category": "Formatting Errors", "location": f"{i}a"}]
        )
        (folder / f"{trace}.labels.json").write_text(json.dumps({"trace_id": trace, "errors": errors}))
    result = evaluate_trail(folder, tmp_path / "work")
    assert result.traces == 4 and result.findings == 1
    assert result.trail is not None
    # 3 of 4 annotated errors are found at their span with the right category; the formatting error is not
    assert result.trail["location_accuracy"] == pytest.approx(0.75)
    assert result.trail["joint_accuracy"] == pytest.approx(0.75)
    assert result.trail["category_f1"] == pytest.approx(
        0.75
    )  # Service Errors F1 1.0 (3 errors), Formatting 0 (1)
