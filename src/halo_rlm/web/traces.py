"""The trace pages: the list (traces or sessions) with its filters, stat strip and facets; one trace
with its span tree, waterfall and conversation; one span's panel. Each has a JSON twin at the same
path plus `.json`, built from the same data."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast, get_args
from urllib.parse import urlencode

import anyio
import orjson
from pydantic import ValidationError
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

from halo_rlm.formats.conventions import normalize_messages
from halo_rlm.store import StoreError, TraceFilters, TraceStore
from halo_rlm.store.results import (
    FACETS,
    FacetName,
    FacetValue,
    KeysetPage,
    SessionSortKey,
    SortKey,
    TraceStats,
)
from halo_rlm.utils import ns_to_iso
from halo_rlm.web import conversation
from halo_rlm.web.format import json_response
from halo_rlm.web.state import Ui

WINDOWS = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
# URL parameter -> TraceFilters field; every one may repeat (multi-select). `status` (ok, error) is
# read on its own: both, or neither, is no filter.
LIST_PARAMS = {
    "service": "services",
    "agent": "agents",
    "model": "models",
    "tool": "tools",
    "session": "session_ids",
    "error_group": "error_templates",
}
TRACE_SORTS: tuple[SortKey, ...] = get_args(SortKey)
SESSION_SORTS: tuple[SessionSortKey, ...] = get_args(SessionSortKey)
FACET_PARAMS = {
    "status": "status",
    "services": "service",
    "agents": "agent",
    "models": "model",
    "tools": "tool",
    "sessions": "session",
    "error_groups": "error_group",
}
PAGE_ROWS = 75
PAGE_LIMIT = 500


class BadRequest(Exception):
    """A query parameter the page cannot use; the message names it."""


@dataclass
class ListView:
    filters: TraceFilters
    mode: Literal["traces", "sessions"]
    sort: str
    descending: bool
    cursor: str | None
    limit: int
    window: str | None
    params: QueryParams
    part: str | None  # "rows" (a page of rows only) or "strip" (the stat strip only), for live updates

    def url(self, path: str = "/traces", /, **changes: Any) -> str:
        """This view's address with some parameters replaced (None removes one)."""
        items = [
            (k, v)
            for k, v in self.params.multi_items()
            if k not in changes and k not in ("cursor", "part", "limit")
        ]
        for key, value in changes.items():
            if value is None:
                continue
            items.extend((key, v) for v in (value if isinstance(value, list) else [value]))
        return path + ("?" + urlencode(items) if items else "")

    def toggle(self, param: str, value: str) -> str:
        """The address with one multi-select value switched on or off."""
        chosen = self.params.getlist(param)
        values = [v for v in chosen if v != value] if value in chosen else [*chosen, value]
        return self.url(**{param: values or None})

    @property
    def active(self) -> list[tuple[str, str]]:
        return [
            (k, v)
            for k, v in self.params.multi_items()
            if k in LIST_PARAMS or k in ("status", "q", "since", "until")
        ]


def parse_list(params: QueryParams, *, now: datetime | None = None) -> ListView:
    mode = params.get("view", "traces")
    if mode not in ("traces", "sessions"):
        raise BadRequest(f"view={mode!r}: use traces or sessions")
    sorts: tuple[str, ...] = SESSION_SORTS if mode == "sessions" else TRACE_SORTS
    sort = params.get("sort") or ("last" if mode == "sessions" else "start")
    if sort not in sorts:
        raise BadRequest(f"sort={sort!r}: use one of {', '.join(sorts)}")
    direction = params.get("dir", "desc")
    if direction not in ("asc", "desc"):
        raise BadRequest(f"dir={direction!r}: use asc or desc")
    values: dict[str, Any] = {field: params.getlist(name) or None for name, field in LIST_PARAMS.items()}
    statuses = set(params.getlist("status"))
    if statuses - {"ok", "error"}:
        raise BadRequest(f"status={sorted(statuses - {'ok', 'error'})[0]!r}: use ok or error")
    values["has_errors"] = statuses == {"error"} if len(statuses) == 1 else None
    window = params.get("window") or None
    if window is not None:
        if window not in WINDOWS:
            raise BadRequest(f"window={window!r}: use one of {', '.join(WINDOWS)}")
        values["since"] = ((now or datetime.now(UTC)) - WINDOWS[window]).isoformat().replace("+00:00", "Z")
    else:
        values["since"] = params.get("since") or None
    values["until"] = params.get("until") or None
    values["text"] = params.get("q", "").strip() or None
    try:
        filters = TraceFilters(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise BadRequest(f"{first['loc'][0] if first['loc'] else 'filter'}: {first['msg']}") from exc
    try:
        limit = max(1, min(int(params.get("limit", PAGE_ROWS)), PAGE_LIMIT))
    except ValueError as exc:
        raise BadRequest("limit: give a whole number") from exc
    return ListView(
        filters=filters,
        mode=cast(Literal["traces", "sessions"], mode),
        sort=sort,
        descending=direction == "desc",
        cursor=params.get("cursor") or None,
        limit=limit,
        window=window,
        params=params,
        part=params.get("part"),
    )


async def list_page(request: Request, as_json: bool) -> Response:
    ui: Ui = request.app.state.ui
    try:
        view = parse_list(request.query_params)
        filters = await ui.resolve_text(view.filters)
    except (BadRequest, StoreError) as exc:
        return ui.error(request, as_json, 400, str(exc))

    def page(store: TraceStore) -> KeysetPage[Any]:
        if view.mode == "sessions":
            return store.session_list(
                filters,
                sort=cast(SessionSortKey, view.sort),
                descending=view.descending,
                cursor=view.cursor,
                limit=view.limit,
            )
        return store.trace_list(
            filters,
            sort=cast(SortKey, view.sort),
            descending=view.descending,
            cursor=view.cursor,
            limit=view.limit,
        )

    def stats(store: TraceStore) -> TraceStats:
        return store.trace_stats(filters)

    def facet(name: FacetName) -> Callable[[TraceStore], list[FacetValue]]:
        return lambda store: store.facet(filters, name)

    async def all_facets() -> list[list[FacetValue]]:
        if view.filters.text:  # a search's matches (thousands of ids, maybe) joined once for all facets
            found = await ui.read(lambda store: store.facets(filters, FACETS))
            return [found[name] for name in FACETS]
        return list(await asyncio.gather(*(ui.read(facet(name)) for name in FACETS)))  # side by side

    try:
        if view.part == "rows":
            rows = await ui.read(page)
            return (
                json_response({"page": rows})
                if as_json
                else ui.render(request, "rows_fragment.html", view=view, page=rows)
            )
        if view.part == "strip":
            strip = await ui.read(stats)
            search = ui.search_info(view.filters)
            return (
                json_response({"stats": strip, "search": search})
                if as_json
                else ui.render(request, "strip.html", stats=strip, search=search)
            )
        facet_task = asyncio.ensure_future(all_facets())
        try:
            rows, strip, total = await asyncio.gather(
                ui.read(page), ui.read(stats), ui.read(lambda store: store.count_traces())
            )
            facets = await facet_task
        finally:
            facet_task.cancel()
    except StoreError as exc:
        return ui.error(request, as_json, 400, str(exc))
    data: dict[str, Any] = {
        "mode": view.mode,
        "query": dict(view.params.multi_items()),
        "page": rows,
        "stats": strip,
        "facets": dict(zip(FACETS, facets, strict=True)),
        "store_traces": total,
        "search": ui.search_info(view.filters),
    }
    if as_json:
        return json_response(data)
    return ui.render(
        request,
        "traces.html",
        view=view,
        **data,
        facet_params=FACET_PARAMS,
        windows=list(WINDOWS),
        sorts=list(SESSION_SORTS if view.mode == "sessions" else TRACE_SORTS),
        onboarding=ui.onboarding() if total == 0 else None,
    )


async def trace_page(request: Request, as_json: bool) -> Response:
    ui: Ui = request.app.state.ui
    trace_id = request.path_params["trace_id"]
    try:
        spans, summary = await asyncio.gather(
            ui.read(lambda store: store.trace_spans(trace_id)),
            ui.read(
                lambda store: store.trace_list(
                    TraceFilters.model_validate({"trace_ids": [trace_id]}), limit=1
                )
            ),
        )
    except StoreError as exc:
        return ui.error(request, as_json, 404, str(exc))
    data: dict[str, Any] = {"trace": summary.rows[0] if summary.rows else None, "spans": spans}
    if as_json:
        return json_response(data)
    return ui.render(
        request,
        "trace.html",
        **data,
        selected=request.query_params.get("span"),
        follow=request.query_params.get("follow") == "1",
    )


async def span_panel(request: Request, as_json: bool) -> Response:
    ui: Ui = request.app.state.ui
    trace_id, span_id = request.path_params["trace_id"], request.path_params["span_id"]
    try:
        record = await ui.read(lambda store: store.span_record(trace_id, span_id))
    except StoreError as exc:
        return ui.error(request, as_json, 404, str(exc))
    detail = span_detail(record)
    if as_json:
        return json_response(detail)
    return ui.render(request, "span.html", span=detail)


async def conversation_view(request: Request, as_json: bool) -> Response:
    ui: Ui = request.app.state.ui
    trace_id = request.path_params["trace_id"]
    try:
        records = await ui.read(lambda store: store.conversation_records(trace_id))
    except StoreError as exc:
        return ui.error(request, as_json, 404, str(exc))
    built = await anyio.to_thread.run_sync(conversation.build, trace_id, records)
    if as_json:
        return json_response(built)
    return ui.render(request, "conversation.html", conversation=built)


async def latest(request: Request) -> Response:
    """The newest trace matching the list's filters (for "follow latest"), as JSON."""
    ui: Ui = request.app.state.ui
    try:
        view = parse_list(request.query_params)
        filters = await ui.resolve_text(view.filters)
    except (BadRequest, StoreError) as exc:
        return ui.error(request, True, 400, str(exc))
    trace_id = await ui.read(lambda store: store.latest_trace(filters))
    return json_response({"trace_id": trace_id})


def span_detail(record: dict[str, Any]) -> dict[str, Any]:
    """What the span panel shows: canonical fields, messages (LLM spans), input and output, events,
    attributes and the raw record."""
    try:
        raw = orjson.loads(record["raw"])
    except (orjson.JSONDecodeError, TypeError):
        raw = {"raw": record.get("raw")}
    if not isinstance(raw, dict):
        raw = {"raw": raw}
    attributes: dict[str, Any] = raw["attributes"] if isinstance(raw.get("attributes"), dict) else {}
    messages = normalize_messages(attributes) if record.get("kind") == "LLM" else {}
    tokens = {
        name: record.get(f"{name}_tokens")
        for name in ("input", "output", "total", "cache_read", "cache_write", "reasoning")
    }
    start, end = record.get("start_ns"), record.get("end_ns")
    return {
        "trace_id": record["trace_id"],
        "span_id": record["span_id"],
        "parent_id": record.get("parent_id"),
        "name": record.get("name"),
        "kind": record.get("kind"),
        "status": record.get("status"),
        "status_message": record.get("status_message"),
        "start": ns_to_iso(start),
        "start_ns": start,
        "end_ns": end,
        "duration_ms": None if record.get("duration_ns") is None else record["duration_ns"] / 1e6,
        "running": end is None,
        "model": record.get("model"),
        "provider": record.get("provider"),
        "service": record.get("service"),
        "agent": record.get("agent_name"),
        "tool": record.get("tool_name"),
        "session_id": record.get("session_id"),
        "user_id": record.get("user_id"),
        "tokens": {k: v for k, v in tokens.items() if v is not None},
        "cost": record.get("cost"),
        "finish_reason": record.get("finish_reason"),
        "error_type": record.get("error_type"),
        "input_messages": [_message(m) for m in messages.get("input_messages") or []],
        "output_messages": [_message(m) for m in messages.get("output_messages") or []],
        "input": record.get("tool_args") if record.get("kind") == "TOOL" else record.get("input_value"),
        "output": record.get("tool_result") if record.get("kind") == "TOOL" else record.get("output_value"),
        "events": [_event(e) for e in raw.get("events") or [] if isinstance(e, dict)]
        if isinstance(raw.get("events"), list)
        else [],
        "attributes": dict(sorted(attributes.items())),
        "resource": (raw.get("resource") or {}).get("attributes")
        if isinstance(raw.get("resource"), dict)
        else None,
        "raw": raw,
    }


def _message(message: dict[str, Any]) -> dict[str, Any]:
    calls = [
        {"id": c.get("id"), "name": c.get("name"), "arguments": c.get("arguments")}
        for c in message.get("tool_calls") or []
        if isinstance(c, dict)
    ]
    return {
        "role": message.get("role"),
        "content": message.get("content"),
        "tool_calls": calls,
        "tool_call_id": message.get("tool_call_id"),
        "name": message.get("name"),
    }


def _event(event: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": str(event.get("name") or "event"),
        "time": event.get("time") or event.get("timestamp"),
        "attributes": event.get("attributes") or None,
    }


__all__ = [
    "BadRequest",
    "ListView",
    "conversation_view",
    "latest",
    "list_page",
    "parse_list",
    "span_detail",
    "span_panel",
    "trace_page",
]
