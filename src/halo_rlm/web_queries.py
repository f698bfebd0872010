"""Queries the web app asks of a DuckDB trace store: keyset pages of traces and sessions, the stat
strip and facets over a whole filter, text search over span content, one trace's spans for the tree
and waterfall, and a filtered copy of the store for an analysis run.

TO MOVE: these become `TraceStore` methods in the store package once the layout lands (SQL text lives
only there); until then they take a DuckDB connection of the store.

Every list is paged by key, not offset: a cursor holds the last row's sort value and trace id, so a
page costs the same at row 300,000 as at row 0 and rows arriving meanwhile never shift a page.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import duckdb
import orjson
import regex
from pydantic import BaseModel, Field, field_validator

from halo_rlm.decode import iso_to_ns
from halo_rlm.models import ns_to_iso
from halo_rlm.store import StoreError, TraceStore

TraceSort = Literal["start", "duration", "cost", "tokens", "spans", "errors"]
SessionSort = Literal["last", "start", "duration", "cost", "tokens", "traces", "spans", "errors"]
FacetName = Literal["status", "services", "agents", "models", "tools", "sessions", "error_groups"]
FACETS: tuple[FacetName, ...] = (
    "status",
    "services",
    "agents",
    "models",
    "tools",
    "sessions",
    "error_groups",
)
PAGE_LIMIT = 500  # rows per page at most; pages are asked for one after another, never capped in total
PREVIEW_CHARS = 200

TRACE_SORTS: dict[str, str] = {
    "start": "t.start_ns",
    "duration": "t.duration_ns",
    "cost": "t.cost",
    "tokens": "coalesce(t.total_tokens, t.input_tokens + t.output_tokens)",
    "spans": "t.span_count",
    "errors": "t.error_spans",
}
SESSION_SORTS: dict[str, str] = {
    "last": "s.end_ns",
    "start": "s.start_ns",
    "duration": "s.duration_ns",
    "cost": "s.cost",
    "tokens": "s.tokens",
    "traces": "s.traces",
    "spans": "s.spans",
    "errors": "s.error_traces",
}


class ListFilters(BaseModel):
    """Which traces a list shows; every field is multi-select (any of the values) and fields combine
    with AND. TO MOVE: merges into the store's `TraceFilters`."""

    statuses: list[Literal["ok", "error"]] = Field(default_factory=list)
    services: list[str] = Field(default_factory=list)
    agents: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)
    tools: list[str] = Field(default_factory=list)
    sessions: list[str] = Field(default_factory=list)
    error_groups: list[str] = Field(
        default_factory=list, description="Error message templates (see the facet)"
    )
    since: str | None = Field(default=None, description="Traces starting at or after this ISO-8601 time")
    until: str | None = Field(default=None, description="Traces starting before this ISO-8601 time")
    text: str | None = Field(
        default=None,
        description="Case-insensitive text in any span's content (messages, "
        "inputs, outputs, errors, attributes)",
    )
    trace_ids: list[str] | None = Field(
        default=None, description="Only these traces (an empty list matches none)"
    )

    @field_validator("since", "until")
    @classmethod
    def _iso(cls, value: str | None) -> str | None:
        if value is not None and iso_to_ns(value) is None:
            raise ValueError(f"not an ISO-8601 time: {value!r} (e.g. 2026-04-24T18:00:00Z)")
        return value

    def without(self, facet: FacetName) -> ListFilters:
        """These filters minus one facet's own selection: a facet counts what choosing more of its
        values would add."""
        field = {"status": "statuses"}.get(facet, facet)
        return self.model_copy(update={field: []})


class TraceRow(BaseModel):
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


class SessionRow(BaseModel):
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
    name: str | None
    input_preview: str | None = None
    output_preview: str | None = None


Row = TypeVar("Row", bound=BaseModel)


class Page(BaseModel, Generic[Row]):
    rows: list[Row]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page; null at the end")
    sort: str
    descending: bool


class StatStrip(BaseModel):
    """Totals over every trace the filter matches (not only the rows loaded)."""

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


class FacetValue(BaseModel):
    value: str
    traces: int


class SpanRow(BaseModel):
    """One span as the tree and waterfall draw it; times are ms after the trace's first span."""

    span_id: str
    parent_id: str | None
    name: str | None
    kind: str | None
    status: str | None
    status_message: str | None
    start_ms: float | None
    duration_ms: float | None = Field(None, description="null while the span is still running")
    model: str | None
    agent: str | None
    tool: str | None
    tokens: int | None
    cost: float | None


class TraceSpans(BaseModel):
    trace_id: str
    start: str | None
    start_ns: int | None
    now_ms: float | None = Field(
        None, description="Now, in ms after the trace's start: where running spans end"
    )
    spans: list[SpanRow]


# --- filters --------------------------------------------------------------------------------


def where(filters: ListFilters | None) -> tuple[str, list[Any]]:
    """SQL over `traces t` for the filters, and its parameters."""
    if filters is None:
        return "true", []
    clauses: list[str] = []
    params: list[Any] = []
    if len(set(filters.statuses)) == 1:
        clauses.append("t.has_errors = ?")
        params.append(filters.statuses[0] == "error")
    for field in ("services", "agents", "models", "tools"):
        values = getattr(filters, field)
        if values:
            clauses.append(f"list_has_any(t.{field}, ?::VARCHAR[])")
            params.append(values)
    if filters.sessions:
        clauses.append("t.session_id IN (SELECT unnest(?::VARCHAR[]))")
        params.append(filters.sessions)
    if filters.trace_ids is not None:
        clauses.append("t.trace_id IN (SELECT unnest(?::VARCHAR[]))")
        params.append(filters.trace_ids)
    if filters.since:
        clauses.append("t.start_ns >= ?")
        params.append(iso_to_ns(filters.since))
    if filters.until:
        clauses.append("t.start_ns < ?")
        params.append(iso_to_ns(filters.until))
    if filters.error_groups:
        clauses.append(
            "t.trace_id IN (SELECT trace_id FROM spans WHERE status = 'ERROR' "
            "AND list_contains(?::VARCHAR[], error_template))"
        )
        params.append(filters.error_groups)
    if filters.text:
        clauses.append(f"t.trace_id IN (SELECT trace_id FROM spans WHERE {TEXT_MATCH})")
        params.append(text_pattern(filters.text))
    return " AND ".join(clauses) or "true", params


TEXT_MATCH = "regexp_matches(raw, ?, 'i')"


def text_pattern(text: str) -> str:
    return regex.escape(text)


def text_matches(con: duckdb.DuckDBPyConnection, text: str) -> list[str]:
    """Ids of the traces with a span whose record contains `text` (any case): a scan of every
    record, so callers keep the answer while the store is unchanged."""
    return [
        row[0]
        for row in con.execute(
            f"SELECT DISTINCT trace_id FROM spans WHERE {TEXT_MATCH}", [text_pattern(text)]
        ).fetchall()
    ]


# --- cursors --------------------------------------------------------------------------------


def encode_cursor(value: Any, key: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([value, key])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[Any, str]:
    try:
        value, key = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error, orjson.JSONDecodeError, TypeError) as exc:
        raise StoreError(
            f"cursor {cursor[:40]!r} is not one this server gave out; start from the first page"
        ) from exc
    if not isinstance(key, str) or not (value is None or isinstance(value, int | float)):
        raise StoreError(f"cursor {cursor[:40]!r} is not one this server gave out; start from the first page")
    return value, key


def _after(expr: str, key: str, cursor: str | None, descending: bool) -> tuple[str, list[Any]]:
    """Rows after the cursor in `ORDER BY expr (desc|asc) NULLS LAST, key`."""
    if cursor is None:
        return "true", []
    value, last_key = decode_cursor(cursor)
    if value is None:
        return f"({expr} IS NULL AND {key} > ?)", [last_key]
    beyond = "<" if descending else ">"
    return (f"({expr} {beyond} ? OR ({expr} = ? AND {key} > ?) OR {expr} IS NULL)", [value, value, last_key])


# --- lists ----------------------------------------------------------------------------------


def trace_page(
    con: duckdb.DuckDBPyConnection,
    filters: ListFilters | None,
    *,
    sort: TraceSort = "start",
    descending: bool = True,
    cursor: str | None = None,
    limit: int = 75,
) -> Page[TraceRow]:
    """One page of traces in `sort` order (ties by trace id), with input and output previews."""
    expr = TRACE_SORTS.get(sort)
    if expr is None:
        raise StoreError(f"unknown sort {sort!r}; use one of {', '.join(TRACE_SORTS)}")
    limit = max(1, min(limit, PAGE_LIMIT))
    clause, params = where(filters)
    after, after_params = _after(expr, "t.trace_id", cursor, descending)
    rows = _rows(
        con,
        f"""
        SELECT t.trace_id, t.start_ns, t.duration_ns, t.root_name, t.has_errors, t.in_flight_spans, t.span_count,
               t.error_spans, t.llm_spans, coalesce(t.total_tokens, t.input_tokens + t.output_tokens) AS tokens,
               t.cost, t.session_id, t.services, t.agents, t.models, t.root_span_id, {expr} AS sort_value
        FROM traces t WHERE {clause} AND {after}
        ORDER BY {expr} {"DESC" if descending else "ASC"} NULLS LAST, t.trace_id LIMIT ?""",
        [*params, *after_params, limit + 1],
    )
    more = len(rows) > limit
    rows = rows[:limit]
    previews = _previews(con, [(r["trace_id"], r["root_span_id"]) for r in rows])
    page = [
        TraceRow(
            trace_id=r["trace_id"],
            start=ns_to_iso(r["start_ns"]),
            duration_ms=_ms(r["duration_ns"]),
            root_name=r["root_name"],
            status="error" if r["has_errors"] else "running" if r["in_flight_spans"] else "ok",
            spans=r["span_count"],
            error_spans=r["error_spans"],
            llm_spans=r["llm_spans"] or 0,
            tokens=r["tokens"],
            cost=r["cost"],
            session_id=r["session_id"],
            services=r["services"] or [],
            agents=r["agents"] or [],
            models=r["models"] or [],
            input_preview=previews.get(r["trace_id"], (None, None))[0],
            output_preview=previews.get(r["trace_id"], (None, None))[1],
        )
        for r in rows
    ]
    last = rows[-1] if rows and more else None
    return Page[TraceRow](
        rows=page,
        sort=sort,
        descending=descending,
        next_cursor=encode_cursor(last["sort_value"], last["trace_id"]) if last else None,
    )


def _previews(
    con: duckdb.DuckDBPyConnection, traces: list[tuple[str, str | None]]
) -> dict[str, tuple[Any, Any]]:
    """Input and output of each trace, whitespace collapsed: the root span's, else the first input and
    the last output any span recorded (a tool's, or a model's answer)."""
    if not traces:
        return {}
    rows = _rows(
        con,
        """
        WITH wanted AS (SELECT unnest(?::VARCHAR[]) AS trace_id, unnest(?::VARCHAR[]) AS root)
        SELECT s.trace_id,
               coalesce(max(s.input_value) FILTER (s.span_id = w.root),
                        arg_min(s.input_value, s.start_ns) FILTER (s.input_value IS NOT NULL)) AS input,
               coalesce(max(s.output_value) FILTER (s.span_id = w.root),
                        arg_max(coalesce(s.output_value, s.output_messages ->> '$[#-1].content'),
                                coalesce(s.end_ns, s.start_ns))
                        FILTER (coalesce(s.output_value, s.output_messages ->> '$[#-1].content') IS NOT NULL))
                 AS output
        FROM spans s JOIN wanted w USING (trace_id)
        GROUP BY s.trace_id""",
        [[t for t, _ in traces], [r or "" for _, r in traces]],
    )
    return {r["trace_id"]: (_preview(r["input"]), _preview(r["output"])) for r in rows}


def session_page(
    con: duckdb.DuckDBPyConnection,
    filters: ListFilters | None,
    *,
    sort: SessionSort = "last",
    descending: bool = True,
    cursor: str | None = None,
    limit: int = 75,
) -> Page[SessionRow]:
    """One page of sessions (traces grouped by session id) among the traces the filter matches."""
    expr = SESSION_SORTS.get(sort)
    if expr is None:
        raise StoreError(f"unknown sort {sort!r}; use one of {', '.join(SESSION_SORTS)}")
    limit = max(1, min(limit, PAGE_LIMIT))
    clause, params = where(filters)
    after, after_params = _after(expr, "s.session_id", cursor, descending)
    rows = _rows(
        con,
        f"""
        WITH s AS (
          SELECT t.session_id, min(t.start_ns) AS start_ns, max(t.end_ns) AS end_ns,
                 max(t.end_ns) - min(t.start_ns) AS duration_ns, count(*) AS traces,
                 sum(t.span_count) AS spans, count(*) FILTER (t.has_errors) AS error_traces,
                 sum(coalesce(t.total_tokens, t.input_tokens + t.output_tokens)) AS tokens, sum(t.cost) AS cost,
                 arg_min(t.trace_id, t.start_ns) AS first_trace_id, arg_max(t.trace_id, t.start_ns) AS last_trace_id,
                 arg_max(t.root_name, t.start_ns) AS name,
                 arg_min(t.root_span_id, t.start_ns) AS first_root, arg_max(t.root_span_id, t.start_ns) AS last_root
          FROM traces t WHERE {clause} AND t.session_id IS NOT NULL GROUP BY t.session_id)
        SELECT s.*, {expr} AS sort_value FROM s WHERE {after}
        ORDER BY {expr} {"DESC" if descending else "ASC"} NULLS LAST, s.session_id LIMIT ?""",
        [*params, *after_params, limit + 1],
    )
    more = len(rows) > limit
    rows = rows[:limit]
    previews = _previews(
        con,
        [(r["first_trace_id"], r["first_root"]) for r in rows]
        + [(r["last_trace_id"], r["last_root"]) for r in rows],
    )
    page = [
        SessionRow(
            session_id=r["session_id"],
            start=ns_to_iso(r["start_ns"]),
            last_activity=ns_to_iso(r["end_ns"]),
            duration_ms=_ms(r["duration_ns"]),
            traces=r["traces"],
            spans=int(r["spans"] or 0),
            error_traces=r["error_traces"],
            tokens=None if r["tokens"] is None else int(r["tokens"]),
            cost=r["cost"],
            first_trace_id=r["first_trace_id"],
            last_trace_id=r["last_trace_id"],
            name=r["name"],
            input_preview=previews.get(r["first_trace_id"], (None, None))[0],
            output_preview=previews.get(r["last_trace_id"], (None, None))[1],
        )
        for r in rows
    ]
    last = rows[-1] if rows and more else None
    return Page[SessionRow](
        rows=page,
        sort=sort,
        descending=descending,
        next_cursor=encode_cursor(last["sort_value"], last["session_id"]) if last else None,
    )


def stat_strip(con: duckdb.DuckDBPyConnection, filters: ListFilters | None) -> StatStrip:
    clause, params = where(filters)
    row = _rows(
        con,
        f"""
        SELECT count(*) AS traces, count(DISTINCT t.session_id) AS sessions,
               coalesce(sum(t.span_count), 0) AS spans, coalesce(sum(t.llm_spans), 0) AS llm_spans,
               count(*) FILTER (t.has_errors) AS error_traces,
               count(*) FILTER (t.in_flight_spans > 0) AS running_traces,
               coalesce(sum(coalesce(t.total_tokens, t.input_tokens + t.output_tokens)), 0) AS tokens,
               coalesce(sum(t.cost), 0) AS cost,
               quantile_cont(t.duration_ns, 0.5) AS p50, quantile_cont(t.duration_ns, 0.95) AS p95
        FROM traces t WHERE {clause}""",
        params,
    )[0]
    return StatStrip(
        traces=row["traces"],
        sessions=row["sessions"],
        spans=int(row["spans"]),
        llm_spans=int(row["llm_spans"]),
        error_traces=row["error_traces"],
        running_traces=row["running_traces"],
        tokens=int(row["tokens"]),
        cost=round(float(row["cost"]), 6),
        p50_duration_ms=_ms(row["p50"]),
        p95_duration_ms=_ms(row["p95"]),
    )


def facet(
    con: duckdb.DuckDBPyConnection, filters: ListFilters | None, name: FacetName, *, top: int = 50
) -> list[FacetValue]:
    """The most common values of one facet among the traces the other filters match, with how many
    traces have each (so choosing a second value shows what it adds)."""
    clause, params = where(filters.without(name) if filters else None)
    if name == "status":
        sql = (
            f"SELECT CASE WHEN t.has_errors THEN 'error' ELSE 'ok' END AS value, count(*) AS traces "
            f"FROM traces t WHERE {clause} GROUP BY 1"
        )
    elif name == "sessions":
        sql = (
            f"SELECT t.session_id AS value, count(*) AS traces FROM traces t "
            f"WHERE {clause} AND t.session_id IS NOT NULL GROUP BY 1"
        )
    elif name == "error_groups":
        sql = (
            f"SELECT error_template AS value, count(DISTINCT trace_id) AS traces FROM spans "
            f"WHERE status = 'ERROR' AND error_template IS NOT NULL "
            f"AND trace_id IN (SELECT t.trace_id FROM traces t WHERE {clause}) GROUP BY 1"
        )
    else:
        sql = (
            f"SELECT value, count(*) AS traces FROM (SELECT unnest(t.{name}) AS value FROM traces t "
            f"WHERE {clause}) WHERE value IS NOT NULL GROUP BY 1"
        )
    rows = _rows(con, f"{sql} ORDER BY traces DESC, value LIMIT ?", [*params, top])
    return [FacetValue(value=str(r["value"]), traces=r["traces"]) for r in rows]


def latest_trace(con: duckdb.DuckDBPyConnection, filters: ListFilters | None = None) -> str | None:
    """The trace that started last among those the filter matches."""
    clause, params = where(filters)
    rows = _rows(
        con,
        f"SELECT t.trace_id FROM traces t WHERE {clause} "
        f"ORDER BY t.start_ns DESC NULLS LAST, t.trace_id LIMIT 1",
        params,
    )
    return rows[0]["trace_id"] if rows else None


def trace_count(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute("SELECT count(*) FROM traces").fetchall()[0][0])


# --- one trace ------------------------------------------------------------------------------


def trace_spans(con: duckdb.DuckDBPyConnection, trace_id: str) -> TraceSpans:
    """Every span of a trace (no cap), in start order, without their records: what the tree and
    the waterfall need. `StoreError` when the trace is not in the store."""
    rows = _rows(
        con,
        """
        SELECT span_id, parent_id, name, kind, status, left(status_message, 300) AS status_message, start_ns,
               duration_ns, model, agent_name, tool_name,
               coalesce(total_tokens, input_tokens + output_tokens) AS tokens, cost
        FROM spans WHERE trace_id = ? ORDER BY start_ns NULLS LAST, span_id""",
        [trace_id],
    )
    if not rows:
        raise StoreError(f"no trace {trace_id!r} in the store")
    start = min((r["start_ns"] for r in rows if r["start_ns"] is not None), default=None)
    spans = [
        SpanRow(
            span_id=r["span_id"],
            parent_id=r["parent_id"],
            name=r["name"],
            kind=r["kind"],
            status=r["status"],
            status_message=r["status_message"],
            start_ms=None if start is None or r["start_ns"] is None else (r["start_ns"] - start) / 1e6,
            duration_ms=_ms(r["duration_ns"]),
            model=r["model"],
            agent=r["agent_name"],
            tool=r["tool_name"],
            tokens=r["tokens"],
            cost=r["cost"],
        )
        for r in rows
    ]
    now = None if start is None else (time.time_ns() - start) / 1e6
    return TraceSpans(trace_id=trace_id, start=ns_to_iso(start), start_ns=start, now_ms=now, spans=spans)


def span_record(con: duckdb.DuckDBPyConnection, trace_id: str, span_id: str) -> dict[str, Any]:
    """One span's canonical columns and its raw record. `StoreError` when it is not in the store."""
    rows = _rows(
        con,
        "SELECT * EXCLUDE (input_id, line_no) FROM spans WHERE trace_id = ? AND span_id = ? LIMIT 1",
        [trace_id, span_id],
    )
    if not rows:
        raise StoreError(f"no span {span_id!r} in trace {trace_id!r}")
    return rows[0]


def llm_records(con: duckdb.DuckDBPyConnection, trace_id: str) -> list[dict[str, Any]]:
    """The LLM spans of a trace with their raw records, in start order, for the conversation view."""
    return _rows(
        con,
        """
        SELECT span_id, parent_id, name, status, status_message, start_ns, model, finish_reason, cost, raw
        FROM spans WHERE trace_id = ? AND kind = 'LLM' ORDER BY start_ns NULLS LAST, span_id""",
        [trace_id],
    )


def tool_records(con: duckdb.DuckDBPyConnection, trace_id: str) -> list[dict[str, Any]]:
    """The tool spans of a trace (their call id, outcome and result), to join to the model's tool calls."""
    return _rows(
        con,
        """
        SELECT span_id, tool_name, tool_call_id, status, status_message, tool_result
        FROM spans WHERE trace_id = ? AND kind = 'TOOL' ORDER BY start_ns NULLS LAST, span_id""",
        [trace_id],
    )


def trace_roots(con: duckdb.DuckDBPyConnection, trace_id: str) -> list[dict[str, Any]]:
    """The spans of a trace with no parent in it: where a conversation falls back to their input and output."""
    return _rows(
        con,
        """
        SELECT span_id, name, kind, status, status_message, input_value, output_value, start_ns, duration_ns, cost
        FROM spans WHERE trace_id = ? AND (parent_id IS NULL OR is_orphan) ORDER BY start_ns NULLS LAST""",
        [trace_id],
    )


# --- analysis runs --------------------------------------------------------------------------


def copy_traces(store: TraceStore, filters: ListFilters | None, target: Path, *, note: str) -> int:
    """Copy the traces the filter matches (spans, rollups) into a new store at `target`, for an
    analysis that must see exactly them, however the store changes meanwhile. Returns the traces copied."""
    if target.exists():
        raise StoreError(f"{target}: already exists")
    TraceStore.open(target).close()  # creates the schema
    clause, params = where(filters)
    con = store.con.cursor()
    try:
        con.execute("ATTACH ? AS halo_copy", [str(target)])
        try:
            con.execute("BEGIN TRANSACTION")
            con.execute(
                f"CREATE TEMP TABLE halo_selected AS SELECT t.trace_id FROM traces t WHERE {clause}", params
            )
            con.execute(
                "INSERT INTO halo_copy.traces SELECT * FROM traces SEMI JOIN halo_selected USING (trace_id)"
            )
            con.execute(
                "INSERT INTO halo_copy.spans SELECT * FROM spans SEMI JOIN halo_selected USING (trace_id)"
            )
            con.execute(
                "INSERT INTO halo_copy.inputs (input_id, path, status, spans, started_at, finished_at) "
                "SELECT 1, ?, 'complete', count(*), now(), now() FROM halo_copy.spans",
                [note],
            )
            copied = int(con.execute("SELECT count(*) FROM halo_selected").fetchall()[0][0])
            con.execute("DROP TABLE halo_selected")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            con.execute("DETACH halo_copy")
    finally:
        con.close()
    return copied


# --- helpers --------------------------------------------------------------------------------


def _rows(
    con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None
) -> list[dict[str, Any]]:
    cursor = con.execute(sql, params)
    columns = [d[0] for d in cursor.description or ()]
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def _ms(ns: float | int | None) -> float | None:
    return None if ns is None else ns / 1e6


def _preview(text: str | None) -> str | None:
    if not text:
        return None
    flat = " ".join(text[: PREVIEW_CHARS * 4].split())
    return flat if len(flat) <= PREVIEW_CHARS else flat[: PREVIEW_CHARS - 1] + "…"


__all__ = [
    "FACETS",
    "PAGE_LIMIT",
    "FacetName",
    "FacetValue",
    "ListFilters",
    "Page",
    "SessionRow",
    "SessionSort",
    "SpanRow",
    "StatStrip",
    "TraceRow",
    "TraceSort",
    "TraceSpans",
    "copy_traces",
    "decode_cursor",
    "encode_cursor",
    "facet",
    "latest_trace",
    "llm_records",
    "session_page",
    "span_record",
    "stat_strip",
    "text_matches",
    "tool_records",
    "trace_count",
    "trace_page",
    "trace_roots",
    "trace_spans",
    "where",
]
