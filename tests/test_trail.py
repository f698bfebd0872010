"""The TRAIL adapter: nested OpenInference traces and annotations read from a local folder (both layouts),
flattened into spans, and scored the way the TRAIL paper scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from halo_rlm.trail import Annotation, Prediction, TrailError, TrailSet, load, score


def span(span_id: str, name: str, children: list | None = None, **extra) -> dict:
    return {
        "trace_id": "t1",
        "span_id": span_id,
        "parent_span_id": None,
        "span_name": name,
        "span_kind": "Internal",
        "timestamp": "2025-03-19T16:44:14.491355Z",
        "duration": "PT1.5S",
        "status_code": "Unset",
        "status_message": "",
        "service_name": "smolagents",
        "resource_attributes": {"service.version": "1"},
        "span_attributes": {"openinference.span.kind": "CHAIN", "input.value": name},
        "child_spans": children or [],
        **extra,
    }


TRACE = {
    "trace_id": "t1",
    "spans": [
        span(
            "a1",
            "CodeAgent.run",
            [
                span("b1", "LiteLLMModel.__call__", [], span_attributes={"openinference.span.kind": "LLM"}),
                span(
                    "b2",
                    "SearchTool",
                    [
                        span(
                            "c1",
                            "visit_page",
                            [],
                            status_code="Error",
                            status_message="404 Not Found",
                            events=[
                                {
                                    "Timestamp": "2025-03-19T16:44:15Z",
                                    "Name": "exception",
                                    "Attributes": {"exception.message": "404"},
                                }
                            ],
                        )
                    ],
                ),
            ],
        )
    ],
}
LABELS = {
    "trace_id": "t1",
    "errors": [
        {
            "category": "Resource Not Found",
            "location": "c1",
            "evidence": "404",
            "description": "",
            "impact": "HIGH",
        },
        {
            "category": "Formatting Errors",
            "location": "b1",
            "evidence": "",
            "description": "",
            "impact": "LOW",
        },
    ],
    "scores": [{"overall": 3.0}],
}


def test_repository_layout_is_flattened_with_parents_times_and_status(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "annotations").mkdir()
    (tmp_path / "data" / "t1.json").write_text(json.dumps(TRACE))
    (tmp_path / "annotations" / "t1.json").write_text(json.dumps(LABELS))
    found = load(tmp_path)
    spans = {s["span_id"]: s for s in found.spans["t1"]}
    assert list(spans) == ["a1", "b1", "b2", "c1"]
    assert spans["c1"]["parent_span_id"] == "b2" and spans["a1"]["parent_span_id"] == ""
    assert spans["c1"]["status"] == {"code": "STATUS_CODE_ERROR", "message": "404 Not Found"}
    assert spans["a1"]["start_time"] == "2025-03-19T16:44:14.491355000Z"
    assert spans["a1"]["end_time"] == "2025-03-19T16:44:15.991355000Z"
    assert spans["a1"]["resource"]["attributes"] == {"service.version": "1", "service.name": "smolagents"}
    assert spans["c1"]["events"][0]["name"] == "exception"
    assert found.annotations == [
        Annotation("t1", "c1", "Resource Not Found"),
        Annotation("t1", "b1", "Formatting Errors"),
    ]
    lines = found.write_jsonl(tmp_path / "out.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["kind"] == "SPAN_KIND_INTERNAL"


def test_hugging_face_rows_hold_trace_and_labels_as_json_strings(tmp_path: Path) -> None:
    row = {"trace": json.dumps(TRACE), "labels": json.dumps({"errors": LABELS["errors"]})}
    (tmp_path / "gaia.jsonl").write_text(json.dumps(row) + "\n")
    found = load(tmp_path)
    assert found.annotated_traces == {"t1"} and len(found.annotations) == 2 and len(found.spans["t1"]) == 4


@pytest.mark.parametrize(
    "files, message",
    [
        ({}, "no TRAIL traces"),
        ({"t.json": json.dumps(TRACE)}, "no TRAIL annotations"),
        ({"t.json": "{oops"}, r"t\.json: not JSON"),
        (
            {"t.json": json.dumps(TRACE), "a.json": json.dumps({"errors": [{"category": "X"}]})},
            "error 0 needs `location`",
        ),
        ({"t.json": json.dumps({"spans": [{"span_name": "x"}]})}, "without `span_id`"),
        ({"t.json": json.dumps({"spans": [span("a", "x", duration="soon")]})}, "not an ISO 8601 duration"),
    ],
)
def test_bad_folders_get_one_line_errors_naming_the_file(tmp_path: Path, files: dict, message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(TrailError, match=message):
        load(tmp_path)


def test_scores_follow_the_paper_definitions() -> None:
    truth = TrailSet(
        annotations=[
            Annotation("t1", "c1", "Resource Not Found"),
            Annotation("t1", "b1", "Formatting Errors"),
            Annotation("t2", "x9", "Formatting Errors"),
        ],
        annotated_traces={"t1", "t2", "t3"},
    )
    predictions = [
        Prediction("t1", "c1", "Resource Not Found"),  # right span, right category
        Prediction("t1", "b1", "Service Errors"),  # right span, wrong category
        Prediction("t3", None, "Formatting Errors"),  # a category on a trace without it
        Prediction("elsewhere", "z", "Formatting Errors"),
    ]  # not an annotated trace: ignored
    result = score(truth, predictions)
    assert result.location_accuracy == pytest.approx(2 / 3)
    assert result.joint_accuracy == pytest.approx(1 / 3)
    # Resource Not Found: tp 1 -> F1 1 (1 error); Formatting Errors: tp 0 fp 1 fn 2 -> F1 0 (2 errors)
    assert result.category_f1 == pytest.approx(1 / 3)
    assert result.predicted_errors == 3 and result.annotated_errors == 3 and result.traces == 3
