"""Typed, self-describing results of trace store queries and ingests.

Every result that can be cut says so (`truncated`, `has_more`, totals next to counts) and, where
it helps, how to narrow the question; the engine hands these to the model as JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from halo_rlm.defaults import SortKey
from halo_rlm.utils import iso_to_ns, parse_time

__all__ = [
    "Count",
    "Durations",
    "ErrorGroup",
    "IngestReport",
    "InputReport",
    "Match",
    "ModelUsage",
    "OversizedTrace",
    "Overview",
    "Progress",
    "SearchResult",
    "SortKey",
    "SpanView",
    "SqlResult",
    "TraceFilters",
    "TracePage",
    "TraceSummary",
    "TraceView",
]


def _also(name: str, *aliases: str) -> AliasChoices:
    return AliasChoices(name, *aliases)


class TraceFilters(BaseModel):
    """Which traces to look at. All fields are optional and combined with AND; lists match any.
    HALO's original names (`model_names`, `service_names`, `agent_names`, `start_time_gte`,
    `end_time_lte`, `regex_pattern`, `project_id`) are accepted too."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    has_errors: bool | None = Field(
        None, description="Only traces with (true) or without (false) an ERROR span"
    )
    services: list[str] | None = Field(
        None, description="Any of these service names", validation_alias=_also("services", "service_names")
    )
    agents: list[str] | None = Field(
        None, description="Any of these agent names", validation_alias=_also("agents", "agent_names")
    )
    models: list[str] | None = Field(
        None, description="Any of these model names", validation_alias=_also("models", "model_names")
    )
    tools: list[str] | None = Field(
        None, description="Any of these tool names", validation_alias=_also("tools", "tool_names")
    )
    session_ids: list[str] | None = None
    user_ids: list[str] | None = None
    trace_ids: list[str] | None = Field(None, description="Only these trace ids")
    since: str | None = Field(
        None,
        description="Traces starting at or after this time: ISO-8601, or 30m, 24h, 7d, 2w ago",
        validation_alias=_also("since", "start_time_gte"),
    )
    until: str | None = Field(
        None,
        description="Traces starting before this time: ISO-8601, or 30m, 24h, 7d, 2w ago",
        validation_alias=_also("until", "end_time_lte"),
    )
    min_duration_ms: float | None = None
    max_duration_ms: float | None = None
    min_cost: float | None = Field(None, description="Traces whose LLM cost (USD) is at least this")
    regex: str | None = Field(
        None,
        description="RE2 regular expression matched against each span's raw JSON (quotes appear as \\\")",
        validation_alias=_also("regex", "regex_pattern"),
    )
    text: str | None = Field(None, description="Case-insensitive text found in any span's raw JSON")
    project_id: str | None = Field(None, description="Case-insensitive project id found in any span")

    @field_validator("since", "until")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        """An ISO-8601 time as given; a relative one (30m, 24h, 7d, 2w ago) as the ISO time it means
        now, the same times `halo import --since` takes."""
        if value is None or iso_to_ns(value) is not None:
            return value
        return parse_time(value)


class TraceSummary(BaseModel):
    trace_id: str
    start: str | None
    duration_ms: float | None
    spans: int
    error_spans: int
    has_errors: bool
    root_name: str | None
    root_status_message: str | None = None
    services: list[str]
    agents: list[str]
    models: list[str]
    tools: list[str]
    input_tokens: int | None
    output_tokens: int | None
    cost: float | None
    session_id: str | None
    raw_bytes: int = Field(
        description="Size of the trace's raw span records; views over ~150 KB are summarised"
    )


class TracePage(BaseModel):
    traces: list[TraceSummary]
    total: int
    offset: int
    limit: int
    has_more: bool
    sort: str
    note: str | None = None


class Count(BaseModel):
    """How often a name occurs: in how many traces and, where it applies, how many spans (calls), and
    how many of those failed (error traces for services and agents, error spans for models and tools)."""

    name: str
    traces: int
    spans: int | None = None
    errors: int | None = None


class Durations(BaseModel):
    """How long an agent's runs (its AGENT spans), a model's calls (LLM spans) or a tool's calls
    (TOOL spans) took, over the spans that have a duration."""

    of: Literal["agent", "model", "tool"]
    name: str
    spans: int
    p50_ms: float
    p95_ms: float
    max_ms: float


class ModelUsage(BaseModel):
    """One model's LLM calls: their tokens and the cost the spans reported, and the tokens of the
    calls that reported none (which a price table can put a cost on)."""

    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cost: float = Field(description="USD the spans reported")
    calls_without_cost: int = Field(description="Calls with tokens but no reported cost")
    input_tokens_without_cost: int
    output_tokens_without_cost: int
    cache_read_tokens_without_cost: int


class ErrorGroup(BaseModel):
    """Errors that are the same failure with different ids/numbers/paths/quoted values."""

    source: str = Field(description="Tool name, or span name for non-tool spans")
    kind: str
    template: str
    error_spans: int
    traces: int
    example_trace_ids: list[str]
    example_span: str = Field(description="trace_id:span_id of one example")
    example_message: str


class Overview(BaseModel):
    traces: int
    spans: int
    error_traces: int
    error_spans: int
    start: str | None
    end: str | None
    services: list[Count]
    agents: list[Count]
    models: list[Count]
    tools: list[Count]
    kinds: dict[str, int]
    input_tokens: int
    output_tokens: int
    cost: float
    orphan_spans: int
    in_flight_spans: int
    rejected_records: int
    inputs: int
    raw_bytes: int
    error_groups: list[ErrorGroup]
    sample_trace_ids: list[str]
    lists_capped_at: int = Field(
        description="Each list above shows at most this many entries, most traces first"
    )


class SpanView(BaseModel):
    span_id: str
    parent_id: str | None
    depth: int
    name: str
    kind: str
    status: str
    status_message: str | None = None
    start_offset_ms: float | None = Field(
        None, description="Milliseconds after the trace's first span started"
    )
    duration_ms: float | None = None
    service: str | None = None
    agent: str | None = None
    model: str | None = None
    tokens: dict[str, int] | None = None
    cost: float | None = None
    tool: str | None = None
    orphan: bool = False
    attributes: dict[str, Any] = Field(default_factory=dict)
    messages: dict[str, Any] | None = None
    events: list[dict[str, Any]] | None = None
    raw_bytes: int


class OversizedTrace(BaseModel):
    """Returned instead of spans when a trace does not fit the byte budget."""

    spans: int
    raw_bytes: int
    budget_bytes: int
    span_bytes_min: int
    span_bytes_median: int
    span_bytes_max: int
    top_span_names: list[Count]
    error_spans: list[str] = Field(description="span ids of ERROR spans (first 20)")
    recommendation: str


class TraceView(BaseModel):
    trace_id: str
    spans: list[SpanView]
    span_count: int
    shown: int
    truncated_values: int = Field(description="Attribute values cut to head+tail to fit")
    oversized: OversizedTrace | None = None
    missing_span_ids: list[str] | None = None
    note: str | None = None


class Match(BaseModel):
    trace_id: str
    span_id: str
    span_name: str
    kind: str
    status: str
    match: str
    context: str
    offset: int = Field(description="Character offset of the match in the span's raw JSON")


class SearchResult(BaseModel):
    pattern: str
    matches: list[Match]
    total_matches: int
    spans_matched: int
    traces_matched: int | None = None
    has_more: bool
    timed_out: bool = False
    note: str | None = None


class SqlResult(BaseModel):
    columns: list[str]
    rows: list[list[Any]]
    row_count: int
    truncated: bool
    note: str | None = None


# --- ingest -------------------------------------------------------------------------------------

Progress = Callable[[int, int], None]  # (bytes read in this input, spans added in this input)


@dataclass
class InputReport:
    path: str
    status: str  # ingested | resumed | unchanged | failed
    spans: int = 0
    rejected: int = 0
    repaired: int = 0
    duplicates: int = 0  # spans already in the store (same trace and span id), merged into one
    bytes: int = 0
    seconds: float = 0.0
    message: str | None = None


@dataclass
class IngestReport:
    store: str
    inputs: list[InputReport] = field(default_factory=list)
    reject_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def spans(self) -> int:
        return sum(i.spans for i in self.inputs)

    @property
    def rejected(self) -> int:
        return sum(i.rejected for i in self.inputs)

    @property
    def duplicates(self) -> int:
        return sum(i.duplicates for i in self.inputs)
