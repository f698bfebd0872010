"""The store's lists and views for people (what the web app pages through): keyset pages in every
sort order, facets that leave out their own selection, totals and quantiles over a whole filter,
sessions, text search over span content, one trace's spans, and an analysis's copy of some traces.

Every test runs on each backend (conftest `BACKENDS`; chdb with `-m slow`) and checks that the
backend's answers are the DuckDB store's, on the same corpus."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, get_args

import halo_runs
import orjson
import pytest

from halo_rlm.simulate import simulate
from halo_rlm.store import StoreError, TraceFilters, TraceStore
from halo_rlm.store.results import FACETS, SessionSortKey, SortKey
from halo_rlm.utils import ns_to_iso


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Simulated traces with sessions, plus HALO-shaped runs of which some report no cost and several
    share a duration (ties the keyset order breaks by trace id)."""
    folder = tmp_path_factory.mktemp("lists")
    simulate(folder / "sim.jsonl", traces=220, seed=4)
    lines = []
    for span in (span for run in halo_runs.runs(30) for span in run.spans):
        if span["trace_id"] < "t-0010":
            span["attributes"].pop("inference.llm.cost.total", None)
        lines.append(orjson.dumps(span))
    (folder / "runs.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return [str(folder / "sim.jsonl"), str(folder / "runs.jsonl")]


@pytest.fixture(scope="module")
def duck(corpus: list[str], new_store: Callable[[str], str]) -> Iterator[Any]:
    """The corpus in a DuckDB store: what every backend must answer the same as."""
    target = new_store("duckdb")
    with TraceStore.open(target) as writable:
        writable.ingest(corpus)
    with TraceStore.open(target, read_only=True) as read_only:
        yield read_only


@pytest.fixture(scope="module")
def store(backend: str, corpus: list[str], duck: Any, new_store: Callable[[str], str]) -> Iterator[Any]:
    """The same corpus on the backend under test (on DuckDB, the very store `duck` is)."""
    if backend == "duckdb":
        yield duck
        return
    target = new_store(backend)
    with TraceStore.open(target) as writable:
        writable.ingest(corpus)
    with TraceStore.open(target, read_only=True) as read_only:
        yield read_only


SQL_SORTS = {
    "start": "start_ns",
    "duration": "duration_ns",
    "cost": "cost",
    "spans": "span_count",
    "errors": "error_spans",
    "tokens": "coalesce(total_tokens, input_tokens + output_tokens)",
}


def pages(fetch: Any, limit: int) -> list[Any]:
    """Every page of a list, first to last."""
    found, cursor = [], None
    while True:
        page = fetch(cursor=cursor, limit=limit)
        found.append(page)
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor


def keys(found: list[Any]) -> list[str]:
    return [getattr(r, "trace_id", None) or r.session_id for page in found for r in page.rows]


@pytest.mark.parametrize("sort", get_args(SortKey))
@pytest.mark.parametrize("descending", [True, False])
def test_keyset_pages_walk_the_whole_list_in_order(
    store: Any, duck: Any, sort: str, descending: bool
) -> None:
    found = pages(lambda **page: store.trace_list(sort=sort, descending=descending, **page), limit=37)
    order = "DESC" if descending else "ASC"
    expected = [
        r["trace_id"]
        for r in duck.query(
            f"SELECT trace_id FROM traces ORDER BY {SQL_SORTS[sort]} {order} NULLS LAST, trace_id"
        )
    ]
    assert keys(found) == expected
    assert found == pages(lambda **page: duck.trace_list(sort=sort, descending=descending, **page), limit=37)


@pytest.mark.parametrize("sort", get_args(SessionSortKey))
@pytest.mark.parametrize("descending", [True, False])
def test_session_pages_group_traces_by_session(store: Any, duck: Any, sort: str, descending: bool) -> None:
    found = pages(lambda **page: store.session_list(sort=sort, descending=descending, **page), limit=11)
    expected = {
        r["session_id"]
        for r in duck.query("SELECT DISTINCT session_id FROM traces WHERE session_id IS NOT NULL")
    }
    assert len(keys(found)) == len(set(keys(found))) and set(keys(found)) == expected
    assert found == pages(
        lambda **page: duck.session_list(sort=sort, descending=descending, **page), limit=11
    )
    first = store.session_list(sort="traces", limit=1).rows[0]
    counted = duck.query("SELECT count(*) AS n FROM traces WHERE session_id = ?", [first.session_id])[0]["n"]
    assert first.traces == counted


def test_rows_preview_the_root_input_and_output(store: Any, duck: Any) -> None:
    root = duck.query(
        "SELECT trace_id, input_value, output_value FROM spans WHERE parent_id IS NULL "
        "AND input_value IS NOT NULL AND output_value IS NOT NULL ORDER BY trace_id LIMIT 1"
    )[0]
    row = store.trace_list(TraceFilters(trace_ids=[root["trace_id"]])).rows[0]
    assert row.input_preview == " ".join(root["input_value"].split())[:200]
    assert row.output_preview and row.output_preview[:40] == " ".join(root["output_value"].split())[:40]


def test_stats_cover_the_whole_filter(store: Any, duck: Any) -> None:
    filters = TraceFilters(has_errors=True)
    stats = store.trace_stats(filters)
    expected = duck.query("""SELECT count(*) AS traces, count(DISTINCT session_id) AS sessions, sum(span_count) AS spans,
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
    assert stats == duck.trace_stats(filters)
    assert store.trace_stats() == duck.trace_stats()
    assert store.trace_stats(TraceFilters(trace_ids=[])) == duck.trace_stats(TraceFilters(trace_ids=[]))


def filters_of(duck: Any, case: str) -> TraceFilters:
    """One filter of the list (multi-select where the list offers it), with values from the corpus."""

    def values(facet: str, n: int = 2) -> list[str]:
        return [f.value for f in duck.facet(None, facet)][:n]

    starts = sorted(r["start_ns"] for r in duck.query("SELECT start_ns FROM traces"))
    iso = [ns_to_iso(starts[len(starts) // 4]), ns_to_iso(starts[len(starts) * 3 // 4])]
    ids = [r["trace_id"] for r in duck.query("SELECT trace_id FROM traces ORDER BY trace_id LIMIT 7")]
    cases = {
        "errors": TraceFilters(has_errors=True),
        "ok": TraceFilters(has_errors=False),
        "services": TraceFilters(services=values("services")),
        "agents": TraceFilters(agents=values("agents")),
        "models": TraceFilters(models=values("models")),
        "tools": TraceFilters(tools=values("tools", 3)),
        "sessions": TraceFilters(session_ids=values("sessions", 4)),
        "error_groups": TraceFilters(error_templates=values("error_groups")),
        "trace_ids": TraceFilters(trace_ids=ids),
        "time": TraceFilters(since=iso[0], until=iso[1]),
        "duration": TraceFilters(min_duration_ms=1_500, max_duration_ms=30_000),
        "cost": TraceFilters(min_cost=0.0005),
        "text": TraceFilters(text="READ_FILE"),
        "regex": TraceFilters(regex=r"Errno \d+"),
        "project": TraceFilters(project_id="prj_test"),
        "combined": TraceFilters(services=values("services", 3), has_errors=True, since=iso[0]),
    }
    return cases[case]


FILTER_CASES = [
    "errors",
    "ok",
    "services",
    "agents",
    "models",
    "tools",
    "sessions",
    "error_groups",
    "trace_ids",
    "time",
    "duration",
    "cost",
    "text",
    "regex",
    "project",
    "combined",
]


@pytest.mark.parametrize("case", FILTER_CASES)
def test_every_filter_gives_duckdb_s_lists_stats_and_facets(store: Any, duck: Any, case: str) -> None:
    filters = filters_of(duck, case)
    stats = store.trace_stats(filters)
    assert 0 < stats.traces < duck.count_traces() or case == "project"  # the filter does narrow the list
    assert stats == duck.trace_stats(filters)
    assert store.count_traces(filters) == stats.traces
    assert store.latest_trace(filters) == duck.latest_trace(filters)

    def walk(on: Any) -> list[Any]:
        return pages(lambda **page: on.trace_list(filters, sort="cost", **page), limit=13)

    assert walk(store) == walk(duck) and len(keys(walk(store))) == stats.traces
    assert store.session_list(filters, sort="spans") == duck.session_list(filters, sort="spans")
    for name in FACETS:
        assert store.facet(filters, name) == duck.facet(filters, name), name
    assert store.facets(filters, FACETS) == {name: duck.facet(filters, name) for name in FACETS}


def test_facets_at_once_are_each_facet_s_own(store: Any, duck: Any) -> None:
    """`facets` counts the facets without a selection of their own over one pass of the filters (a text
    search's thousands of ids joined once): the same answers as one `facet` at a time."""
    every = [r["trace_id"] for r in duck.query("SELECT trace_id FROM traces ORDER BY trace_id")]
    absent = [f"{n:032x}" for n in range(2_000)]  # past the length a list is joined as a table
    service = duck.facet(None, "services")[0].value
    for filters in (
        None,
        TraceFilters(trace_ids=every[::2] + absent),
        TraceFilters(trace_ids=every[::3] + absent, services=[service], has_errors=True),
        TraceFilters(services=[]),
    ):
        expected = {name: duck.facet(filters, name, top=5) for name in FACETS}
        assert store.facets(filters, FACETS, top=5) == expected, filters
        assert list(store.facets(filters, ["tools", "status"])) == ["tools", "status"]


@pytest.mark.parametrize("case", ["errors", "services", "text", "combined"])
def test_summaries_count_only_the_filtered_traces(store: Any, duck: Any, case: str) -> None:
    filters = filters_of(duck, case)
    ids = keys(pages(lambda **page: duck.trace_list(filters, **page), limit=500))
    calls = duck.query(
        """SELECT model, count(*) AS calls, sum(input_tokens) AS input_tokens FROM spans
        WHERE kind = 'LLM' AND model IS NOT NULL AND list_contains(?, trace_id) GROUP BY model""",
        [ids],
    )
    usage = store.model_usage(filters)
    assert {(u.model, u.calls, u.input_tokens) for u in usage} == {tuple(r.values()) for r in calls}
    timed = duck.query(
        """SELECT model, count(*) AS spans, max(duration_ns) / 1e6 AS max_ms FROM spans
        WHERE kind = 'LLM' AND model IS NOT NULL AND duration_ns IS NOT NULL AND list_contains(?, trace_id)
        GROUP BY model""",
        [ids],
    )
    models = {(d.name, d.spans, d.max_ms) for d in store.durations(filters, top=1000) if d.of == "model"}
    assert models == {tuple(r.values()) for r in timed}
    assert usage == duck.model_usage(filters) and store.durations(filters) == duck.durations(filters)
    assert store.overview(filters) == duck.overview(filters)


def test_a_facet_counts_without_its_own_selection(store: Any, duck: Any) -> None:
    services = store.facet(None, "services")
    first, second = services[0].value, services[1].value
    chosen = TraceFilters(services=[first], has_errors=True)
    again = {f.value: f.traces for f in store.facet(chosen, "services")}
    expected = duck.query(
        "SELECT count(*) AS n FROM traces WHERE has_errors AND list_contains(services, ?)", [second]
    )
    assert again[second] == expected[0]["n"]  # what choosing it too would add, under the other filters
    statuses = {f.value: f.traces for f in store.facet(chosen, "status")}
    assert statuses["error"] + statuses.get("ok", 0) == store.count_traces(TraceFilters(services=[first]))
    for name in FACETS:
        assert store.facet(chosen, name) == duck.facet(chosen, name)
        assert store.facet(None, name, top=3) == duck.facet(None, name, top=3)
    with pytest.raises(StoreError, match="unknown facet"):
        store.facet(None, "colour")


def test_error_groups_filter_and_empty_trace_ids(store: Any) -> None:
    group = store.facet(None, "error_groups")[0]
    assert store.count_traces(TraceFilters(error_templates=[group.value])) == group.traces
    assert store.count_traces(TraceFilters(trace_ids=[])) == 0
    assert store.trace_list(TraceFilters(trace_ids=[])).rows == []


def test_thousands_of_trace_ids_fit_in_one_filter(store: Any, duck: Any) -> None:
    """A text search over a large store hands the list thousands of matching ids."""
    ids = [f"{n:032x}" for n in range(20_000)] + [duck.latest_trace()]
    assert store.count_traces(TraceFilters(trace_ids=ids)) == 1
    assert store.trace_list(TraceFilters(trace_ids=ids)).rows[0].trace_id == duck.latest_trace()


def test_text_search_reads_span_records_in_any_case(store: Any, duck: Any) -> None:
    word = duck.query("SELECT tool_name FROM spans WHERE tool_name IS NOT NULL ORDER BY tool_name LIMIT 1")[
        0
    ]["tool_name"]
    found = store.traces_containing(word.upper())
    expected = duck.query(
        "SELECT count(DISTINCT trace_id) AS n FROM spans WHERE contains(lower(raw), lower(?))", [word]
    )
    assert len(found) == expected[0]["n"] > 0
    assert sorted(found) == sorted(duck.traces_containing(word.upper()))
    for text in ("errno 2", "a.b*c", "(no such"):  # regex characters are plain text here
        assert sorted(store.traces_containing(text)) == sorted(duck.traces_containing(text))
    assert store.traces_containing("errno 2")


def test_one_trace_spans_records_and_conversation(store: Any, duck: Any) -> None:
    trace_id = duck.query("SELECT trace_id FROM traces ORDER BY span_count DESC, trace_id LIMIT 1")[0][
        "trace_id"
    ]
    spans = store.trace_spans(trace_id)
    assert len(spans.spans) == store.trace_summary(trace_id).spans
    assert min(s["start_ms"] for s in spans.spans) == 0
    assert spans.model_dump(exclude={"now_ms"}) == duck.trace_spans(trace_id).model_dump(exclude={"now_ms"})
    for span in spans.spans:
        record = store.span_record(trace_id, span["span_id"])
        assert record["raw"] and record["trace_id"] == trace_id
        assert record == duck.span_record(trace_id, span["span_id"])
    records = store.conversation_records(trace_id)
    assert records.llm and all(r["raw"] for r in records.llm)
    assert records == duck.conversation_records(trace_id)
    assert store.latest_trace() == duck.latest_trace()
    with pytest.raises(StoreError, match="no trace"):
        store.trace_spans("0" * 32)
    with pytest.raises(StoreError, match="no span"):
        store.span_record(trace_id, "no-such-span")
    with pytest.raises(StoreError, match="cursor"):
        store.trace_list(cursor="not-a-cursor")


def copied_rows(path: Path) -> dict[str, Any]:
    with TraceStore.open(path, read_only=True) as copy:
        return {
            "traces": copy.query("SELECT * FROM traces ORDER BY trace_id"),
            "spans": copy.query("SELECT * FROM spans ORDER BY trace_id, span_id"),
            "inputs": copy.query("SELECT path, status, spans FROM inputs"),
        }


def test_an_analysis_copy_holds_exactly_the_matching_traces(
    tmp_path: Path, backend: str, new_store: Callable[[str], str]
) -> None:
    """Copied from the store under test into a new DuckDB file, and the same rows as a copy made from
    DuckDB. (A read-only DuckDB store may not ATTACH files: copies come from the writable store, as
    in the app.)"""
    filters = TraceFilters(has_errors=True)
    simulate(tmp_path / "s.jsonl", traces=40, seed=9)
    copies = {}
    for kind in dict.fromkeys(["duckdb", backend]):
        target = copies[kind] = tmp_path / f"{kind}-copy.duckdb"
        with TraceStore.open(new_store(kind)) as writable:
            writable.ingest([str(tmp_path / "s.jsonl")])
            copied = writable.copy_traces(filters, target, note="a test copy")
            assert copied == writable.count_traces(filters) > 0
            with pytest.raises(StoreError, match="already exists"):
                writable.copy_traces(filters, target, note="again")
    with TraceStore.open(copies[backend], read_only=True) as copy:
        assert copy.count_traces() == copied
        assert copy.inputs()[0]["path"] == "a test copy"
    expected = copied_rows(copies["duckdb"])
    assert len(expected["spans"]) > copied
    assert copied_rows(copies[backend]) == expected


def test_a_trace_of_ten_thousand_spans_comes_back_whole(
    tmp_path: Path, backend: str, new_store: Callable[[str], str]
) -> None:
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
    with TraceStore.open(new_store(backend)) as store:
        store.ingest([str(tmp_path / "big.jsonl")])
        spans = store.trace_spans("f" * 32)
    assert len(spans.spans) == 10_000 and spans.spans[0]["span_id"] == f"{1:016x}"
    assert sum(s["parent_id"] is None for s in spans.spans) == 1
