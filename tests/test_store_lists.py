"""The store's lists and views for people (what the web app pages through): keyset pages in every
sort order, facets that leave out their own selection, totals and quantiles over a whole filter,
sessions, text search over span content, one trace's spans, and an analysis's copy of some traces."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import orjson
import pytest

from halo_rlm.simulate import simulate
from halo_rlm.store import StoreError, TraceFilters, TraceStore
from halo_rlm.store.results import FACETS, SessionSortKey, SortKey


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    folder = tmp_path_factory.mktemp("lists")
    simulate(folder / "sim.jsonl", traces=220, seed=4)
    with TraceStore.open(folder / "store.duckdb") as writable:
        writable.ingest([str(folder / "sim.jsonl")])
        writable.con.execute("UPDATE traces SET cost = NULL WHERE trace_id < '3'")  # some traces without cost
    with TraceStore.open(folder / "store.duckdb", read_only=True) as read_only:
        yield read_only


def every_page(fetch: Any, limit: int) -> list[str]:
    keys, cursor = [], None
    while True:
        page = fetch(cursor=cursor, limit=limit)
        keys += [getattr(r, "trace_id", None) or r.session_id for r in page.rows]
        if page.next_cursor is None:
            return keys
        cursor = page.next_cursor


SQL_SORTS = {
    "start": "start_ns",
    "duration": "duration_ns",
    "cost": "cost",
    "spans": "span_count",
    "errors": "error_spans",
    "tokens": "coalesce(total_tokens, input_tokens + output_tokens)",
}


@pytest.mark.parametrize("sort", get_args(SortKey))
@pytest.mark.parametrize("descending", [True, False])
def test_keyset_pages_walk_the_whole_list_in_order(store: Any, sort: str, descending: bool) -> None:
    keys = every_page(lambda **page: store.trace_list(sort=sort, descending=descending, **page), limit=37)
    order = "DESC" if descending else "ASC"
    expected = [
        r["trace_id"]
        for r in store.query(
            f"SELECT trace_id FROM traces ORDER BY {SQL_SORTS[sort]} {order} NULLS LAST, trace_id"
        )
    ]
    assert keys == expected


@pytest.mark.parametrize("sort", get_args(SessionSortKey))
def test_session_pages_group_traces_by_session(store: Any, sort: str) -> None:
    keys = every_page(lambda **page: store.session_list(sort=sort, **page), limit=11)
    expected = {
        r["session_id"]
        for r in store.query("SELECT DISTINCT session_id FROM traces WHERE session_id IS NOT NULL")
    }
    assert len(keys) == len(set(keys)) and set(keys) == expected
    first = store.session_list(sort="traces", limit=1).rows[0]
    counted = store.query("SELECT count(*) AS n FROM traces WHERE session_id = ?", [first.session_id])[0]["n"]
    assert first.traces == counted


def test_rows_preview_the_root_input_and_output(store: Any) -> None:
    root = store.query(
        "SELECT trace_id, input_value, output_value FROM spans WHERE parent_id IS NULL "
        "AND input_value IS NOT NULL AND output_value IS NOT NULL ORDER BY trace_id LIMIT 1"
    )[0]
    row = store.trace_list(TraceFilters(trace_ids=[root["trace_id"]])).rows[0]
    assert row.input_preview == " ".join(root["input_value"].split())[:200]
    assert row.output_preview and row.output_preview[:40] == " ".join(root["output_value"].split())[:40]


def test_stats_cover_the_whole_filter(store: Any) -> None:
    filters = TraceFilters(has_errors=True)
    stats = store.trace_stats(filters)
    expected = store.query("""SELECT count(*) AS traces, count(DISTINCT session_id) AS sessions, sum(span_count) AS spans,
        quantile_cont(duration_ns, 0.5) / 1e6 AS p50, quantile_cont(duration_ns, 0.95) / 1e6 AS p95
        FROM traces WHERE has_errors""")[0]
    assert (stats.traces, stats.sessions, stats.spans) == (
        expected["traces"],
        expected["sessions"],
        expected["spans"],
    )
    assert stats.error_traces == stats.traces
    assert stats.p50_duration_ms == pytest.approx(expected["p50"]) and stats.p95_duration_ms == pytest.approx(
        expected["p95"]
    )


def test_a_facet_counts_without_its_own_selection(store: Any) -> None:
    services = store.facet(None, "services")
    first, second = services[0].value, services[1].value
    chosen = TraceFilters(services=[first], has_errors=True)
    again = {f.value: f.traces for f in store.facet(chosen, "services")}
    expected = store.query(
        "SELECT count(*) AS n FROM traces WHERE has_errors AND list_contains(services, ?)", [second]
    )
    assert again[second] == expected[0]["n"]  # what choosing it too would add, under the other filters
    statuses = {f.value: f.traces for f in store.facet(chosen, "status")}
    assert statuses["error"] + statuses.get("ok", 0) == store.count_traces(TraceFilters(services=[first]))
    for name in FACETS:
        assert isinstance(store.facet(chosen, name), list)
    with pytest.raises(StoreError, match="unknown facet"):
        store.facet(None, "colour")


def test_error_groups_filter_and_empty_trace_ids(store: Any) -> None:
    group = store.facet(None, "error_groups")[0]
    assert store.count_traces(TraceFilters(error_templates=[group.value])) == group.traces
    assert store.count_traces(TraceFilters(trace_ids=[])) == 0


def test_text_search_reads_span_records_in_any_case(store: Any) -> None:
    word = store.query("SELECT tool_name FROM spans WHERE tool_name IS NOT NULL LIMIT 1")[0]["tool_name"]
    found = store.traces_containing(word.upper())
    expected = store.query(
        "SELECT count(DISTINCT trace_id) AS n FROM spans WHERE contains(lower(raw), lower(?))", [word]
    )
    assert len(found) == expected[0]["n"] > 0


def test_one_trace_spans_records_and_conversation(store: Any) -> None:
    trace_id = store.query("SELECT trace_id FROM traces ORDER BY span_count DESC LIMIT 1")[0]["trace_id"]
    spans = store.trace_spans(trace_id)
    assert len(spans.spans) == store.trace_summary(trace_id).spans
    assert min(s["start_ms"] for s in spans.spans) == 0
    record = store.span_record(trace_id, spans.spans[-1]["span_id"])
    assert record["raw"] and record["trace_id"] == trace_id
    records = store.conversation_records(trace_id)
    assert records.llm and all(r["raw"] for r in records.llm)
    with pytest.raises(StoreError, match="no trace"):
        store.trace_spans("0" * 32)
    with pytest.raises(StoreError, match="cursor"):
        store.trace_list(cursor="not-a-cursor")


def test_an_analysis_copy_holds_exactly_the_matching_traces(tmp_path: Path) -> None:
    target = tmp_path / "copy.duckdb"
    filters = TraceFilters(has_errors=True)
    # A read-only store may not ATTACH files: copies come from the writable store, as in the app.
    folder = tmp_path / "w"
    folder.mkdir()
    source = folder / "w.duckdb"
    simulate(folder / "s.jsonl", traces=40, seed=9)
    with TraceStore.open(source) as writable:
        writable.ingest([str(folder / "s.jsonl")])
        copied = writable.copy_traces(filters, target, note="a test copy")
        expected = writable.count_traces(filters)
        spans = writable.query(
            "SELECT count(*) AS n FROM spans WHERE trace_id IN (SELECT trace_id FROM traces WHERE has_errors)"
        )
    assert copied == expected > 0
    with TraceStore.open(target, read_only=True) as copy, TraceStore.open(target, read_only=True) as again:
        assert copy.count_traces() == copied == again.count_traces()
        assert copy.query("SELECT count(*) AS n FROM spans")[0]["n"] == spans[0]["n"]
        assert copy.inputs()[0]["path"] == "a test copy"
    with TraceStore.open(source) as writable, pytest.raises(StoreError, match="already exists"):
        writable.copy_traces(filters, target, note="again")


def test_a_trace_of_ten_thousand_spans_comes_back_whole(tmp_path: Path) -> None:
    lines = [
        {
            "trace_id": "f" * 32,
            "span_id": f"{i + 1:016x}",
            "parent_span_id": "" if i == 0 else f"{1:016x}",
            "name": f"step {i}",
            "start_time": f"2026-05-01T00:00:{i % 60:02d}Z",
            "end_time": f"2026-05-01T00:01:{i % 60:02d}Z",
        }
        for i in range(10_000)
    ]
    (tmp_path / "big.jsonl").write_bytes(b"\n".join(orjson.dumps(line) for line in lines))
    with TraceStore.open(tmp_path / "s.duckdb") as store:
        store.ingest([str(tmp_path / "big.jsonl")])
        spans = store.trace_spans("f" * 32)
    assert len(spans.spans) == 10_000 and spans.spans[0]["span_id"] == f"{1:016x}"
    assert sum(s["parent_id"] is None for s in spans.spans) == 1
