"""Building query results from rows, the same for every backend: trace summaries, spans in tree order
with values cut to head and tail (or a trace's summary when it is too large), and regex matches with
context."""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson

from halo_rlm.formats.conventions import TEXT_CAP, normalize_messages, orjson_text
from halo_rlm.store.base import StoreError
from halo_rlm.store.results import (
    Count,
    ErrorGroup,
    KeysetPage,
    Match,
    OversizedTrace,
    Overview,
    Row,
    SearchResult,
    SessionRow,
    SpanRow,
    SpanView,
    TraceRow,
    TraceSpans,
    TraceStats,
    TraceSummary,
    TraceView,
)
from halo_rlm.utils import clip, ns_to_iso, one_line

__all__ = [
    "CUT_MARK",
    "FACET_FILTERS",
    "LIST_COLUMNS",
    "LIST_PAGE_LIMIT",
    "LIST_SORTS",
    "SESSION_SORTS",
    "SORT_COLUMNS",
    "SPAN_ROW_COLUMNS",
    "SUMMARY_COLUMNS",
    "VIEW_COLUMNS",
    "Keyset",
    "cap",
    "clip_or_none",
    "decode_cursor",
    "encode_cursor",
    "keyset",
    "ms",
    "overview_of",
    "plain",
    "preview",
    "scan",
    "session_row",
    "span_view",
    "sql_note",
    "summary",
    "take_rows",
    "trace_row",
    "trace_spans",
    "trace_stats",
    "trace_view",
    "tree_order",
]

# The same columns on every backend: list sorts, and the columns a summary, a trace view and a span
# row read.
SORT_COLUMNS = {
    "start": "t.start_ns",
    "duration": "t.duration_ns",
    "cost": "t.cost",
    "spans": "t.span_count",
    "tokens": "t.total_tokens",
    "errors": "t.error_spans",
}
SUMMARY_COLUMNS = """t.trace_id, t.start_ns, t.duration_ns, t.span_count, t.error_spans, t.has_errors, t.root_name,
  t.root_status_message, t.services, t.agents, t.models, t.tools, t.input_tokens, t.output_tokens, t.cost,
  t.session_id, t.raw_bytes"""
VIEW_COLUMNS = """span_id, parent_id, name, kind, status, status_message, start_ns, duration_ns, service, agent_name,
  model, input_tokens, output_tokens, total_tokens, cache_read_tokens, reasoning_tokens, cost, tool_name, is_orphan,
  tool_calls, tools_offered, raw_bytes, raw"""
SPAN_ROW_COLUMNS = """trace_id, span_id, parent_id, name, kind, status, status_message, error_template, start_ns,
  duration_ns, service, agent_name, model, input_tokens, output_tokens, cost, tool_name, tool_args, tool_result,
  input_value, output_value, finish_reason, tool_calls, is_orphan"""

# The lists people page through (the web app): their sorts, the columns of a trace row, and each
# facet's own selection, which its counts leave out (list facets count the values of their column).
LIST_PAGE_LIMIT = 500  # rows per page of a list at most; lists are paged, never capped in total
LIST_SORTS = {
    "start": "t.start_ns",
    "duration": "t.duration_ns",
    "cost": "t.cost",
    "tokens": "coalesce(t.total_tokens, t.input_tokens + t.output_tokens)",
    "spans": "t.span_count",
    "errors": "t.error_spans",
}
LIST_COLUMNS = f"""t.trace_id, t.start_ns, t.duration_ns, t.root_name, t.has_errors, t.in_flight_spans,
  t.span_count, t.error_spans, t.llm_spans, {LIST_SORTS["tokens"]} AS tokens, t.cost, t.session_id,
  t.services, t.agents, t.models, t.input_preview, t.output_preview"""
SESSION_SORTS = {
    "last": "s.end_ns",
    "start": "s.start_ns",
    "duration": "s.duration_ns",
    "cost": "s.cost",
    "tokens": "s.tokens",
    "traces": "s.traces",
    "spans": "s.spans",
    "errors": "s.error_traces",
}
FACET_FILTERS: dict[str, str] = {
    "status": "has_errors",
    "services": "services",
    "agents": "agents",
    "models": "models",
    "tools": "tools",
    "sessions": "session_ids",
    "error_groups": "error_templates",
}

CUT_MARK = "…[cut]"  # ends a value a query result cut to size

MAX_VIEW_DEPTH = 32  # nesting shown as structure; deeper values are shown as JSON text

# Attributes a view leaves out because canonical fields already show them, compactly.
_FLATTENED = re.compile(
    r"^(llm\.(input|output)_messages\.\d+\.|llm\.tools\.\d+\.|mcp\.tools\.\d+\.|gen_ai\.(prompt|completion)\.\d+\.)"
)


def summary(row: dict[str, Any]) -> TraceSummary:
    return TraceSummary(
        trace_id=row["trace_id"],
        start=ns_to_iso(row["start_ns"]),
        duration_ms=None if row["duration_ns"] is None else row["duration_ns"] / 1e6,
        spans=row["span_count"],
        error_spans=row["error_spans"],
        has_errors=row["has_errors"],
        root_name=row["root_name"],
        root_status_message=clip_or_none(row["root_status_message"], 300),
        services=row["services"] or [],
        agents=row["agents"] or [],
        models=row["models"] or [],
        tools=row["tools"] or [],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        cost=row["cost"],
        session_id=row["session_id"],
        raw_bytes=row["raw_bytes"] or 0,
    )


def overview_of(
    totals: dict[str, Any],
    lists: dict[str, list[Count]],
    kinds: dict[str, int],
    *,
    rejected: int,
    inputs: int,
    unfinished: list[str],
    error_groups: list[ErrorGroup],
    samples: list[str],
    top: int,
) -> Overview:
    """The overview from its totals over the selected traces (times in ns) and its lists."""
    return Overview(
        traces=totals["traces"],
        spans=totals["spans"],
        error_traces=totals["error_traces"],
        error_spans=totals["error_spans"],
        start=ns_to_iso(totals["start_ns"]),
        end=ns_to_iso(totals["end_ns"]),
        services=lists["services"],
        agents=lists["agents"],
        models=lists["models"],
        tools=lists["tools"],
        kinds=kinds,
        input_tokens=totals["input_tokens"],
        output_tokens=totals["output_tokens"],
        cost=round(totals["cost"], 6),
        orphan_spans=totals["orphan_spans"],
        in_flight_spans=totals["in_flight_spans"],
        rejected_records=rejected,
        inputs=inputs,
        unfinished_inputs=unfinished,
        raw_bytes=totals["raw_bytes"],
        error_groups=error_groups,
        sample_trace_ids=samples,
        lists_capped_at=top,
    )


def tree_order(rows: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """Depth-first by start time; spans whose parent is missing start their own subtree."""
    ids = {r["span_id"] for r in rows}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for r in rows:
        parent = r["parent_id"] if r["parent_id"] in ids and r["parent_id"] != r["span_id"] else None
        children.setdefault(parent, []).append(r)
    out: list[tuple[int, dict[str, Any]]] = []
    seen: set[str] = set()
    stack = [(0, r) for r in reversed(children.get(None, []))]
    while stack:
        depth, r = stack.pop()
        if r["span_id"] in seen:
            continue
        seen.add(r["span_id"])
        out.append((depth, r))
        stack.extend((depth + 1, c) for c in reversed(children.get(r["span_id"], [])))
    out.extend((0, r) for r in rows if r["span_id"] not in seen)  # cycles
    return out


def span_view(
    row: dict[str, Any], depth: int, trace_start: int | None, value_chars: int
) -> tuple[SpanView, int]:
    raw = _record(row["raw"])
    cut = 0
    attributes: dict[str, Any] = {}
    dropped = 0
    for key, value in (raw.get("attributes") or {}).items():
        if value is None or value == "":
            continue
        if _FLATTENED.match(key):
            dropped += 1
            continue
        attributes[key], n = cap(value, value_chars)
        cut += n
    if dropped:
        attributes["halo.note"] = f"{dropped} flattened message/tool keys shown under `messages` instead"
    attrs = raw.get("attributes")
    messages = (
        {
            key: value
            for key, value in normalize_messages(attrs, events=raw.get("events")).items()
            if value and key != "finish_reason"
        }
        if isinstance(attrs, dict) and row["kind"] == "LLM"
        else {}
    )
    if row["tools_offered"]:
        messages["tools_offered"] = row["tools_offered"]
    if messages:
        capped, n = cap(messages, value_chars * 2)
        messages, cut = capped, cut + n
    events = None
    if raw.get("events"):
        events, n = cap(raw["events"], value_chars)
        cut += n
    tokens = {
        k.removesuffix("_tokens"): row[k]
        for k in ("input_tokens", "output_tokens", "cache_read_tokens", "reasoning_tokens")
        if row[k] is not None
    }
    return SpanView(
        span_id=row["span_id"],
        parent_id=row["parent_id"],
        depth=depth,
        name=row["name"],
        kind=row["kind"],
        status=row["status"],
        status_message=clip_or_none(row["status_message"], value_chars),
        start_offset_ms=None
        if row["start_ns"] is None or trace_start is None
        else (row["start_ns"] - trace_start) / 1e6,
        duration_ms=None if row["duration_ns"] is None else row["duration_ns"] / 1e6,
        service=row["service"],
        agent=row["agent_name"],
        model=row["model"],
        tokens=tokens or None,
        cost=row["cost"],
        tool=row["tool_name"],
        orphan=bool(row["is_orphan"]),
        attributes=attributes,
        messages=messages or None,
        events=events,
        raw_bytes=row["raw_bytes"] or 0,
    ), cut


def trace_view(
    trace_id: str, rows: list[dict[str, Any]], span_ids: list[str] | None, budget: int, value_chars: int
) -> TraceView:
    """A trace's spans (`rows`, in start order) in tree order, only `span_ids` when given; over `budget`
    bytes, a summary of the trace instead."""
    ordered = tree_order(rows)
    missing = None
    if span_ids is not None:
        wanted = set(span_ids)
        missing = sorted(wanted - {r["span_id"] for r in rows}) or None
        ordered = [(depth, r) for depth, r in ordered if r["span_id"] in wanted]
    trace_start = min((r["start_ns"] for r in rows if r["start_ns"] is not None), default=None)
    views, cut = [], 0
    for depth, row in ordered:
        shown_span, n = span_view(row, depth, trace_start, value_chars)
        views.append(shown_span)
        cut += n
    view = TraceView(
        trace_id=trace_id,
        spans=views,
        span_count=len(rows),
        shown=len(views),
        truncated_values=cut,
        missing_span_ids=missing,
    )
    if len(view.model_dump_json()) <= budget:
        if missing:
            view.note = f"{len(missing)} requested span ids are not in this trace"
        return view
    sizes = sorted(r["raw_bytes"] or 0 for _, r in ordered)
    names: dict[str, int] = {}
    for _, r in ordered:
        names[r["name"]] = names.get(r["name"], 0) + 1
    return TraceView(
        trace_id=trace_id,
        spans=[],
        span_count=len(rows),
        shown=0,
        truncated_values=cut,
        missing_span_ids=missing,
        oversized=OversizedTrace(
            spans=len(ordered),
            raw_bytes=sum(sizes),
            budget_bytes=budget,
            span_bytes_min=sizes[0],
            span_bytes_median=sizes[len(sizes) // 2],
            span_bytes_max=sizes[-1],
            top_span_names=[
                Count(name=k, traces=1, spans=v)
                for k, v in sorted(names.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
            ],
            error_spans=[r["span_id"] for _, r in ordered if r["status"] == "ERROR"][:20],
            recommendation="Too large to show whole. Use search_trace to find the spans that matter, "
            "then view_spans on a few span ids (or search_span inside one large span).",
        ),
    )


def _record(raw: str) -> dict[str, Any]:
    """A span's raw record, parsed; one the parser refuses (nested past its limit) is shown as text."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return {"attributes": {"halo.note": f"the raw record cannot be shown as JSON ({exc})", "raw": raw}}
    return record if isinstance(record, dict) else {"attributes": {"raw": raw}}


def cap(value: Any, limit: int, depth: int = 0) -> tuple[Any, int]:
    """Cut long strings (in nested values too) to head and tail; returns the value and how many were
    cut. Values nested deeper than `MAX_VIEW_DEPTH` are shown as (cut) JSON text."""
    if isinstance(value, str):
        clipped = clip_or_none(value, limit)
        return clipped, int(clipped is not value)
    if isinstance(value, list | dict) and depth >= MAX_VIEW_DEPTH:
        return clip(orjson_text(value), limit), 1
    if isinstance(value, list):
        out, cut = [], 0
        for item in value:
            item, n = cap(item, limit, depth + 1)
            out.append(item)
            cut += n
        return out, cut
    if isinstance(value, dict):
        result, cut = {}, 0
        for key, item in value.items():
            result[key], n = cap(item, limit, depth + 1)
            cut += n
        return result, cut
    return value, 0


def clip_or_none(text: str | None, limit: int) -> str | None:
    return None if text is None else clip(text, limit)


def scan(
    pattern: str,
    compiled: Any,
    rows: list[dict[str, Any]],
    context_chars: int,
    max_matches: int,
    timeout: float,
) -> SearchResult:
    deadline = time.monotonic() + timeout
    matches: list[Match] = []
    total = spans = 0
    timed_out = False
    for row in rows:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        try:
            found = list(compiled.finditer(row["raw"], timeout=remaining))
        except TimeoutError:
            timed_out = True
            break
        if not found:
            continue
        spans += 1
        total += len(found)
        for m in found[: max(0, max_matches - len(matches))]:
            start, end = m.span()
            matches.append(
                Match(
                    trace_id=row["trace_id"],
                    span_id=row["span_id"],
                    span_name=row["name"],
                    kind=row["kind"],
                    status=row["status"],
                    match=clip_or_none(m.group(0), 500) or "",
                    context=row["raw"][
                        max(0, start - context_chars) : min(len(row["raw"]), end + context_chars)
                    ],
                    offset=start,
                )
            )
    note = f"stopped after {timeout:g}s; results are partial" if timed_out else None
    return SearchResult(
        pattern=pattern,
        matches=matches,
        total_matches=total,
        spans_matched=spans,
        has_more=total > len(matches) or timed_out,
        timed_out=timed_out,
        note=note,
    )


def plain(value: Any, depth: int = 0) -> Any:
    """A database value as plain JSON-able data (values nested deeper than `MAX_VIEW_DEPTH` as text)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple, dict)) and depth >= MAX_VIEW_DEPTH:
        return str(value)[:TEXT_CAP]
    if isinstance(value, (list, tuple)):
        return [plain(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    return str(value)


def encode_cursor(value: Any, key: str) -> str:
    """A keyset cursor: the last row's sort value and key, opaque to the client."""
    return base64.urlsafe_b64encode(orjson.dumps([value, key])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[Any, str]:
    refused = StoreError(f"cursor {cursor[:40]!r} is not one this store gave out; start from the first page")
    try:
        value, key = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error, TypeError) as exc:
        raise refused from exc
    if not isinstance(key, str) or not (value is None or isinstance(value, int | float)):
        raise refused
    return value, key


@dataclass(frozen=True)
class Keyset:
    """One page of a list in keyset order, `ORDER BY sort DESC|ASC NULLS LAST, key`, as SQL for any
    backend: the sort's expression (select it `AS sort_value`), the condition for the rows after the
    cursor, and the ORDER BY and LIMIT (one row more than the page, to tell whether another follows)."""

    expr: str
    after: str
    order: str
    key: str
    limit: int
    sort: str
    descending: bool

    def page(self, rows: list[dict[str, Any]], build: Callable[[dict[str, Any]], Row]) -> KeysetPage[Row]:
        """The page from the fetched rows; its cursor is the last shown row's sort value and key."""
        more, rows = len(rows) > self.limit, rows[: self.limit]
        last = rows[-1] if rows and more else None
        column = self.key.rsplit(".", 1)[-1]  # the key as the row names it, without its table alias
        return KeysetPage[Row](
            rows=[build(r) for r in rows],
            sort=self.sort,
            descending=self.descending,
            next_cursor=encode_cursor(last["sort_value"], last[column]) if last else None,
        )


def keyset(
    sorts: dict[str, str],
    sort: str,
    key: str,
    *,
    cursor: str | None,
    descending: bool,
    limit: int,
    bind: Callable[[Any], str],
) -> Keyset:
    """The keyset SQL of a page sorted by `sorts[sort]` then `key`, after `cursor`; `bind` turns each
    value into the backend's SQL (a placeholder that remembers the value, or a literal)."""
    expr = sorts.get(sort)
    if expr is None:
        raise StoreError(f"unknown sort {sort!r}; use one of {', '.join(sorts)}")
    limit = max(1, min(limit, LIST_PAGE_LIMIT))
    if cursor is None:
        after = "true"
    else:
        value, last_key = decode_cursor(cursor)
        if value is None:
            after = f"({expr} IS NULL AND {key} > {bind(last_key)})"
        else:
            beyond = "<" if descending else ">"
            after = (
                f"({expr} {beyond} {bind(value)} OR ({expr} = {bind(value)} AND {key} > {bind(last_key)}) "
                f"OR {expr} IS NULL)"
            )
    order = f"ORDER BY {expr} {'DESC' if descending else 'ASC'} NULLS LAST, {key} LIMIT {limit + 1}"
    return Keyset(expr, after, order, key, limit, sort, descending)


def trace_row(r: dict[str, Any]) -> TraceRow:
    """A row of `LIST_COLUMNS` as the trace list shows it."""
    return TraceRow(
        trace_id=r["trace_id"],
        start=ns_to_iso(r["start_ns"]),
        duration_ms=ms(r["duration_ns"]),
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
        input_preview=preview(r["input_preview"]),
        output_preview=preview(r["output_preview"]),
    )


def session_row(r: dict[str, Any]) -> SessionRow:
    """A session's aggregates as the session list shows them."""
    return SessionRow(
        session_id=r["session_id"],
        start=ns_to_iso(r["start_ns"]),
        last_activity=ns_to_iso(r["end_ns"]),
        duration_ms=ms(r["duration_ns"]),
        traces=r["traces"],
        spans=int(r["spans"] or 0),
        error_traces=r["error_traces"],
        tokens=None if r["tokens"] is None else int(r["tokens"]),
        cost=r["cost"],
        first_trace_id=r["first_trace_id"],
        last_trace_id=r["last_trace_id"],
        name=r["name"],
        input_preview=preview(r["input_preview"]),
        output_preview=preview(r["output_preview"]),
    )


def trace_stats(row: dict[str, Any]) -> TraceStats:
    """The stat strip from its totals (durations in ns)."""
    return TraceStats(
        traces=row["traces"],
        sessions=row["sessions"],
        spans=int(row["spans"]),
        llm_spans=int(row["llm_spans"]),
        error_traces=row["error_traces"],
        running_traces=row["running_traces"],
        tokens=int(row["tokens"]),
        cost=round(float(row["cost"]), 6),
        # Interpolated quantiles, rounded as `durations` are: each backend's float steps differ in the
        # last bits (6.924304599994 ms against 6.92430459999 ms).
        p50_duration_ms=None if row["p50"] is None else round(row["p50"] / 1e6, 9),
        p95_duration_ms=None if row["p95"] is None else round(row["p95"] / 1e6, 9),
    )


def trace_spans(trace_id: str, rows: list[dict[str, Any]]) -> TraceSpans:
    """A trace's spans (rows in start order, `start_ms` still in ns) with times made relative to its
    first span."""
    start = rows[0]["start_ms"]  # start order puts the first first
    for row in rows:
        row["start_ms"] = (
            None if row["start_ms"] is None or start is None else (row["start_ms"] - start) / 1e6
        )
    now = None if start is None else (time.time_ns() - start) / 1e6
    # Built without validation: the rows come straight from typed columns.
    return TraceSpans.model_construct(
        trace_id=trace_id,
        start=ns_to_iso(start),
        start_ns=start,
        now_ms=now,
        spans=cast(list[SpanRow], rows),
    )


def ms(ns: float | None) -> float | None:
    return None if ns is None else ns / 1e6


def preview(text: str | None, limit: int = 200) -> str | None:
    """A value as one line for a list's preview column."""
    return one_line(text[: limit * 8], limit) if text else None


def take_rows(
    chunks: Iterable[Iterable[Sequence[Any]]],
    convert: Callable[[Sequence[Any]], list[Any]],
    *,
    max_rows: int,
    max_bytes: int,
) -> tuple[list[list[Any]], bool, int]:
    """A query result's rows, converted one by one and taken only until `max_rows` rows or `max_bytes`
    of their JSON are in (the first row always). Returns the rows, whether more were left, and how
    many values the database had cut (they end with `CUT_MARK`)."""
    rows: list[list[Any]] = []
    size, clipped = 2, 0
    for chunk in chunks:
        for row in chunk:
            if len(rows) == max_rows:
                return rows, True, clipped
            values = convert(row)
            clipped += sum(isinstance(v, str) and v.endswith(CUT_MARK) for v in values)
            row_bytes = len(orjson.dumps(values, default=str)) + 1
            if rows and size + row_bytes > max_bytes:
                return rows, True, clipped
            rows.append(values)
            size += row_bytes
    return rows, False, clipped


def sql_note(shown: int, truncated: bool, clipped: int, cut: int) -> str | None:
    """What a capped SQL result left out, in words for whoever reads it."""
    note = None
    if truncated:
        note = f"showing {shown} rows; add LIMIT/OFFSET, aggregate, or select fewer columns"
    if clipped:
        note = (note + "; " if note else "") + f"{clipped} long values were cut to {cut:,} characters"
    return note
