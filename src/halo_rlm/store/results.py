"""Typed, self-describing results of trace store queries and ingests.

Every result that can be cut says so (`truncated`, `has_more`, totals next to counts) and, where
it helps, how to narrow the question; the engine hands these to the model as JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, get_args

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from halo_rlm.defaults import SortKey
from halo_rlm.utils import iso_to_ns, parse_time

__all__ = [
    "FACETS",
    "ConversationRecords",
    "Count",
    "Durations",
    "ErrorGroup",
    "FacetName",
    "FacetValue",
    "IngestReport",
    "InputReport",
    "KeysetPage",
    "Match",
    "ModelUsage",
    "OversizedTrace",
    "Overview",
    "Progress",
    "SearchResult",
    "SessionRow",
    "SessionSortKey",
    "SortKey",
    "SpanRow",
    "SpanView",
    "SqlResult",
    "TraceFilters",
    "TracePage",
    "TraceRow",
    "TraceSpans",
    "TraceStats",
    "TraceSummary",
    "TraceView",
]


class Result(BaseModel):
    """The base of the store's result models. Their validators are built when a model is first used,
    not when this module loads: a command uses a handful of the models, and building all of them
    is a tenth of a second of every command's start."""

    model_config = ConfigDict(defer_build=True)


def _also(name: str, *aliases: str) -> AliasChoices:
    return AliasChoices(name, *aliases)


class TraceFilters(Result):
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
    trace_ids: list[str] | None = Field(None, description="Only these trace ids (an empty list matches none)")
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
    error_templates: list[str] | None = Field(
        None,
        description="Traces with an error span of any of these message templates (as error groups list them)",
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


class TraceSummary(Result):
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


class TracePage(Result):
    traces: list[TraceSummary]
    total: int
    offset: int
    limit: int
    has_more: bool
    sort: str
    note: str | None = None


class Count(Result):
    """How often a name occurs: in how many traces and, where it applies, how many spans (calls), and
    how many of those failed (error traces for services and agents, error spans for models and tools)."""

    name: str
    traces: int
    spans: int | None = None
    errors: int | None = None


class Durations(Result):
    """How long an agent's runs (its AGENT spans), a model's calls (LLM spans) or a tool's calls
    (TOOL spans) took, over the spans that have a duration."""

    of: Literal["agent", "model", "tool"]
    name: str
    spans: int
    p50_ms: float
    p95_ms: float
    max_ms: float


class ModelUsage(Result):
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


class ErrorGroup(Result):
    """Errors that are the same failure with different ids/numbers/paths/quoted values."""

    source: str = Field(description="Tool name, or span name for non-tool spans")
    kind: str
    template: str
    error_spans: int
    traces: int
    example_trace_ids: list[str]
    example_span: str = Field(description="trace_id:span_id of one example")
    example_message: str


class Overview(Result):
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
    unfinished_inputs: list[str] = Field(
        default_factory=list,
        description="Inputs whose ingest was interrupted: none of their spans are in; ingest them again",
    )
    raw_bytes: int
    error_groups: list[ErrorGroup]
    sample_trace_ids: list[str]
    lists_capped_at: int = Field(
        description="Each list above shows at most this many entries, most traces first"
    )


class SpanView(Result):
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


class OversizedTrace(Result):
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


class TraceView(Result):
    trace_id: str
    spans: list[SpanView]
    span_count: int
    shown: int
    truncated_values: int = Field(description="Attribute values cut to head+tail to fit")
    oversized: OversizedTrace | None = None
    missing_span_ids: list[str] | None = None
    note: str | None = None


class Match(Result):
    trace_id: str
    span_id: str
    span_name: str
    kind: str
    status: str
    match: str
    context: str
    offset: int = Field(description="Character offset of the match in the span's raw JSON")


class SearchResult(Result):
    pattern: str
    matches: list[Match]
    total_matches: int
    spans_matched: int
    traces_matched: int | None = None
    has_more: bool
    timed_out: bool = False
    note: str | None = None


class SqlResult(Result):
    columns: list[str]
    rows: list[list[Any]]
    row_count: int
    truncated: bool
    note: str | None = None


# --- ingest -------------------------------------------------------------------------------------

Progress = Callable[[int, int], None]  # (bytes read in this input, spans added in this input)


# --- the trace list, page by page (the web app) ------------------------------------------------

SessionSortKey = Literal["last", "start", "duration", "cost", "tokens", "traces", "spans", "errors"]
FacetName = Literal["status", "services", "agents", "models", "tools", "sessions", "error_groups"]
FACETS: tuple[FacetName, ...] = get_args(FacetName)
Row = TypeVar("Row", bound=BaseModel)


class TraceRow(Result):
    """A trace as a list shows it: a summary plus what its root span (or, failing that, its first and
    last spans with text) received and answered, in one line each."""

    trace_id: str
    start: str | None
    duration_ms: float | None
    root_name: str | None
    status: Literal["ok", "error", "running"]
    spans: int
    error_spans: int
    llm_spans: int
    tokens: int | None
    cost: float | None
    session_id: str | None
    services: list[str]
    agents: list[str]
    models: list[str]
    input_preview: str | None = None
    output_preview: str | None = None


class SessionRow(Result):
    """The traces of one session (one per turn of a conversation), taken together."""

    session_id: str
    start: str | None
    last_activity: str | None
    duration_ms: float | None
    traces: int
    spans: int
    error_traces: int
    tokens: int | None
    cost: float | None
    first_trace_id: str
    last_trace_id: str
    name: str | None = Field(description="The root name of its latest trace")
    input_preview: str | None = Field(None, description="What its first trace received")
    output_preview: str | None = Field(None, description="What its last trace answered")


class KeysetPage(Result, Generic[Row]):
    """One page of a list in a stable order. The cursor holds the last row's sort value and key, so a
    page costs the same deep in a list as at its start, and rows arriving meanwhile shift nothing."""

    rows: list[Row]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page; null at the end")
    sort: str
    descending: bool


class TraceStats(Result):
    """Totals over every trace a filter matches (not only the rows loaded)."""

    traces: int
    sessions: int
    spans: int
    llm_spans: int
    error_traces: int
    running_traces: int
    tokens: int
    cost: float
    p50_duration_ms: float | None
    p95_duration_ms: float | None


class FacetValue(Result):
    value: str
    traces: int


class SpanRow(TypedDict):
    """One span as a span tree and a waterfall draw it; times are ms after the trace's first span.
    (A plain dict: a trace of 10,000 spans is served as fast as its query runs.)"""

    span_id: str
    parent_id: str | None
    name: str | None
    kind: str | None
    status: str | None
    status_message: str | None
    start_ms: float | None
    duration_ms: float | None  # None while the span is still running
    model: str | None
    agent: str | None
    tool: str | None
    tokens: int | None
    cost: float | None


class TraceSpans(Result):
    """Every span of one trace, without their records (no cap: 10,000 spans is a few hundred KB)."""

    trace_id: str
    start: str | None
    start_ns: int | None
    now_ms: float | None = Field(
        None, description="Now, in ms after the trace's start: where running spans end"
    )
    spans: list[SpanRow]


@dataclass
class ConversationRecords:
    """What a trace's conversation is rebuilt from: its LLM spans with their raw records (start order),
    its tool spans (call id, outcome, result) and its root spans (the fallback input and output)."""

    llm: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    roots: list[dict[str, Any]]


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
    # How it was read: bulk (one statement) | lines (batches of flat spans) | decoded (batches the
    # Python decoders read) | document (one JSON document); `road_reason` says why, when it is not bulk.
    road: str | None = None
    road_reason: str | None = None


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
