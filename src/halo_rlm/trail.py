"""The TRAIL benchmark (Patronus AI, "TRAIL: Trace Reasoning and Agentic Issue Localization", 2025), read
from a local folder: its traces as flat spans HALO ingests, its annotations as the truth `halo eval` scores a
report against.

TRAIL ships 148 OpenInference traces of GAIA and SWE-bench agents (spans nested under `child_spans`) and,
per trace, the errors annotators found: a category from its taxonomy and a location (the span id). A folder
may hold one JSON file per trace and per annotation (the layout of the TRAIL repository), or JSON lines of
`{"trace": "<json>", "labels": "<json>"}` rows (the Hugging Face dataset's layout, exported). Nothing is
ever downloaded here.

Scoring follows the paper: category F1 over the error categories (per-category F1 weighted by the number of
annotated errors of each), location accuracy (annotated errors whose span a prediction names) and joint
accuracy (annotated errors whose span *and* category a prediction names). HALO's categories are mapped to
TRAIL's nearest leaf category by `CATEGORY_MAP`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

# HALO category -> the TRAIL taxonomy's nearest leaf category (None: TRAIL has no such error)
CATEGORY_MAP: dict[str, str | None] = {
    "hallucinated_tool": "Tool-related",
    "invalid_tool_arguments": "Formatting Errors",
    "tool_error": "Service Errors",
    "repetition_loop": "Resource Abuse",
    "refusal": "Instruction Non-compliance",
    "max_turns": "Goal Deviation",
    "timeout": "Timeout Issues",
    "rate_limit": "Rate Limiting",
    "latency": None,
    "cost": "Resource Abuse",
    "context_overflow": "Context Handling Failures",
    "empty_or_truncated_output": "Formatting Errors",
    "guardrail": "Instruction Non-compliance",
    "handoff": "Task Orchestration",
    "other": None,
}
_KINDS = {
    "internal": "SPAN_KIND_INTERNAL",
    "server": "SPAN_KIND_SERVER",
    "client": "SPAN_KIND_CLIENT",
    "producer": "SPAN_KIND_PRODUCER",
    "consumer": "SPAN_KIND_CONSUMER",
}
_STATUS = {"ok": "STATUS_CODE_OK", "error": "STATUS_CODE_ERROR", "unset": "STATUS_CODE_UNSET"}
_DURATION = re.compile(
    r"^P(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$"
)


class TrailError(Exception):
    """A TRAIL folder or file that cannot be read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Annotation:
    """One annotated error: where (a span id) and what (a TRAIL category)."""

    trace_id: str
    location: str
    category: str


@dataclass
class TrailSet:
    """What was read from a TRAIL folder: flat span lines per trace, and the annotated errors."""

    spans: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # trace id -> flat spans
    annotations: list[Annotation] = field(default_factory=list)
    annotated_traces: set[str] = field(default_factory=set)

    def write_jsonl(self, path: Path) -> Path:
        """The traces as HALO's flat JSONL, one span per line."""
        with open(path, "wb") as out:
            for spans in self.spans.values():
                out.writelines(orjson.dumps(span) + b"\n" for span in spans)
        return path


def load(folder: str | Path) -> TrailSet:
    """Read every trace and annotation under `folder`."""
    root = Path(folder)
    if not root.is_dir():
        raise TrailError(f"{root}: not a folder; give the folder holding TRAIL's trace and annotation files")
    found = TrailSet()
    files = sorted(p for p in root.rglob("*") if p.suffix in (".json", ".jsonl") and p.is_file())
    for path in files:
        for number, document in _documents(path):
            where = f"{path}:{number}" if number else str(path)
            if "trace" in document and "labels" in document:  # a Hugging Face row
                _add_trace(found, _loads(document["trace"], where), where)
                _add_labels(found, _loads(document["labels"], where), where, _trace_id_of(document["trace"]))
            elif "errors" in document:
                _add_labels(found, document, where, document.get("trace_id") or path.stem)
            elif "spans" in document or "child_spans" in document or "span_id" in document:
                _add_trace(found, document, where)
    if not found.spans:
        raise TrailError(
            f"{root}: no TRAIL traces found (JSON files with `spans`, or rows with `trace` and `labels`)"
        )
    if not found.annotated_traces:
        raise TrailError(f"{root}: no TRAIL annotations found (JSON files with `errors`)")
    return found


def _documents(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    data = path.read_bytes()
    if path.suffix == ".jsonl":
        for number, line in enumerate(data.splitlines(), 1):
            if line.strip():
                value = _loads(line, f"{path}:{number}")
                if isinstance(value, dict):
                    yield number, value
        return
    value = _loads(data, str(path))
    if isinstance(value, dict):
        yield 0, value
    elif isinstance(value, list):
        yield 0, {"spans": value}


def _loads(data: str | bytes, where: str) -> Any:
    if not isinstance(data, str | bytes):
        return data
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise TrailError(f"{where}: not JSON ({exc})") from None


def _trace_id_of(trace: Any) -> str | None:
    value = _loads(trace, "trace") if isinstance(trace, str | bytes) else trace
    if isinstance(value, dict):
        if value.get("trace_id"):
            return str(value["trace_id"])
        spans = value.get("spans") or []
        if spans and isinstance(spans[0], dict):
            return spans[0].get("trace_id")
    return None


def _add_labels(found: TrailSet, labels: Any, where: str, trace_id: str | None) -> None:
    if not isinstance(labels, dict) or not isinstance(labels.get("errors"), list):
        raise TrailError(f"{where}: annotations need an `errors` list")
    trace_id = str(labels.get("trace_id") or trace_id or "")
    if not trace_id:
        raise TrailError(f"{where}: annotations name no trace (`trace_id`)")
    found.annotated_traces.add(trace_id)
    for i, error in enumerate(labels["errors"]):
        if not isinstance(error, dict) or not error.get("location") or not error.get("category"):
            raise TrailError(f"{where}: error {i} needs `location` (a span id) and `category`")
        found.annotations.append(Annotation(trace_id, str(error["location"]), str(error["category"])))


def _add_trace(found: TrailSet, trace: Any, where: str) -> None:
    if not isinstance(trace, dict):
        raise TrailError(f"{where}: a trace must be a JSON object with `spans`")
    roots = trace.get("spans") if "spans" in trace else [trace]
    if not isinstance(roots, list):
        raise TrailError(f"{where}: `spans` must be a list")
    flat: list[dict[str, Any]] = []
    stack = [(span, None) for span in reversed(roots)]
    while stack:
        span, parent = stack.pop()
        if not isinstance(span, dict):
            raise TrailError(f"{where}: a span must be a JSON object")
        line = flat_span(span, parent, trace.get("trace_id"), where)
        flat.append(line)
        stack.extend((child, line["span_id"]) for child in reversed(span.get("child_spans") or []))
    for line in flat:
        found.spans.setdefault(line["trace_id"], []).append(line)


def flat_span(
    span: Mapping[str, Any], parent: str | None, trace_id: str | None, where: str
) -> dict[str, Any]:
    """One TRAIL (OpenInference export) span as HALO's flat span record."""
    span_id = span.get("span_id")
    trace = span.get("trace_id") or trace_id
    if not span_id or not trace:
        raise TrailError(f"{where}: a span without `span_id` or `trace_id`")
    start = _time(span.get("timestamp") or span.get("start_time"), where)
    end = _time(span.get("end_time"), where) if span.get("end_time") else None
    if end is None and start is not None and span.get("duration") is not None:
        end = start + _duration_ns(span["duration"], where)
    kind = str(span.get("span_kind") or span.get("kind") or "internal")
    status = str(span.get("status_code") or (span.get("status") or {}).get("code") or "unset")
    attributes = span.get("span_attributes") or span.get("attributes") or {}
    resource = dict(span.get("resource_attributes") or (span.get("resource") or {}).get("attributes") or {})
    if span.get("service_name"):
        resource.setdefault("service.name", span["service_name"])
    line: dict[str, Any] = {
        "trace_id": str(trace),
        "span_id": str(span_id),
        "parent_span_id": str(span.get("parent_span_id") or parent or ""),
        "trace_state": "",
        "name": str(span.get("span_name") or span.get("name") or ""),
        "kind": _KINDS.get(kind.lower().removeprefix("span_kind_"), "SPAN_KIND_INTERNAL"),
        "start_time": _iso(start),
        "end_time": _iso(end if end is not None else start),
        "status": {
            "code": _STATUS.get(status.lower().removeprefix("status_code_"), "STATUS_CODE_UNSET"),
            "message": str(span.get("status_message") or ""),
        },
        "resource": {"attributes": resource},
        "scope": {"name": str(span.get("scope_name") or ""), "version": str(span.get("scope_version") or "")},
        "attributes": attributes if isinstance(attributes, dict) else {},
    }
    events = [_event(e, where) for e in span.get("events") or [] if isinstance(e, dict)]
    if events:
        line["events"] = events
    return line


def _event(event: Mapping[str, Any], where: str) -> dict[str, Any]:
    lowered = {k.lower(): v for k, v in event.items()}
    at = _time(lowered.get("timestamp") or lowered.get("time"), where)
    return {
        "name": str(lowered.get("name") or ""),
        "timestamp": _iso(at),
        "attributes": lowered.get("attributes") or {},
    }


def _time(value: Any, where: str) -> int | None:
    if value in (None, ""):
        return None
    if isinstance(value, int | float):
        return int(value) if value > 1e17 else int(value * 1e9)
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise TrailError(f"{where}: {value!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def _duration_ns(value: Any, where: str) -> int:
    if isinstance(value, int | float):
        return int(value * 1e9) if value < 1e9 else int(value)
    match = _DURATION.match(str(value))
    if not match:
        raise TrailError(f"{where}: {value!r} is not an ISO 8601 duration (like PT1.5S)")
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return int((((days * 24 + hours) * 60 + minutes) * 60 + seconds) * 1e9)


def _iso(ns: int | None) -> str:
    if ns is None:
        return ""
    seconds, fraction = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{fraction:09d}Z"


@dataclass(frozen=True)
class Prediction:
    """An error a report names: a trace, maybe a span, and a TRAIL category (None when it has none)."""

    trace_id: str
    location: str | None
    category: str | None


@dataclass(frozen=True)
class TrailScore:
    category_f1: float  # per-category F1 over traces, weighted by annotated errors per category
    location_accuracy: float  # annotated errors whose span is predicted
    joint_accuracy: float  # annotated errors whose span and category are predicted
    annotated_errors: int
    predicted_errors: int
    traces: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "category_f1": self.category_f1,
            "location_accuracy": self.location_accuracy,
            "joint_accuracy": self.joint_accuracy,
            "annotated_errors": self.annotated_errors,
            "predicted_errors": self.predicted_errors,
            "traces": self.traces,
        }


def score(truth: TrailSet, predictions: Sequence[Prediction]) -> TrailScore:
    """Score predicted errors against TRAIL's annotations, over the annotated traces."""
    traces = truth.annotated_traces
    predicted = [p for p in predictions if p.trace_id in traces]
    gold_categories: dict[str, set[str]] = {t: set() for t in traces}
    for a in truth.annotations:
        gold_categories[a.trace_id].add(a.category)
    predicted_categories: dict[str, set[str]] = {t: set() for t in traces}
    for p in predicted:
        if p.category:
            predicted_categories[p.trace_id].add(p.category)
    support: dict[str, int] = {}
    for a in truth.annotations:
        support[a.category] = support.get(a.category, 0) + 1
    weighted = 0.0
    for category, errors in support.items():
        tp = sum(category in gold_categories[t] and category in predicted_categories[t] for t in traces)
        fp = sum(category not in gold_categories[t] and category in predicted_categories[t] for t in traces)
        fn = sum(category in gold_categories[t] and category not in predicted_categories[t] for t in traces)
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        weighted += f1 * errors
    total = len(truth.annotations)
    locations = {(p.trace_id, p.location) for p in predicted if p.location}
    pairs = {(p.trace_id, p.location, p.category) for p in predicted if p.location and p.category}
    located = sum((a.trace_id, a.location) in locations for a in truth.annotations)
    joint = sum((a.trace_id, a.location, a.category) in pairs for a in truth.annotations)
    return TrailScore(
        category_f1=weighted / total if total else 0.0,
        location_accuracy=located / total if total else 0.0,
        joint_accuracy=joint / total if total else 0.0,
        annotated_errors=total,
        predicted_errors=len(predicted),
        traces=len(traces),
    )


__all__ = [
    "CATEGORY_MAP",
    "Annotation",
    "Prediction",
    "TrailError",
    "TrailScore",
    "TrailSet",
    "flat_span",
    "load",
    "score",
]
