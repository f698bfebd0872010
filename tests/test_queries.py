"""The store's query API: filters, sorting, overview, views with budgets, search, read-only SQL."""

from __future__ import annotations

import asyncio
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from halo_rlm.store import StoreError, TraceFilters, TraceStore
from halo_rlm.store.duckdb_store import required_literals


def span(
    trace: str,
    span_id: str,
    parent: str = "",
    *,
    kind: str = "CHAIN",
    start: float = 0.0,
    seconds: float = 1.0,
    error: str | None = None,
    **attrs: Any,
) -> dict[str, Any]:
    base = 1_776_924_720_000_000_000 + int(start * 1e9)
    return {
        "trace_id": trace,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": f"{kind.lower()}.{span_id}",
        "kind": "SPAN_KIND_INTERNAL",
        "start_time": base,
        "end_time": base + int(seconds * 1e9),
        "status": {"code": "STATUS_CODE_ERROR" if error else "STATUS_CODE_OK", "message": error or ""},
        "resource": {"attributes": {"service.name": attrs.pop("service", "shop")}},
        "scope": {"name": "test"},
        "attributes": {"openinference.span.kind": kind, **attrs},
    }


def corpus() -> list[dict[str, Any]]:
    records = []
    for i in range(30):
        trace = f"trace-{i:02d}"
        failing = i % 3 == 0
        records += [
            span(trace, "root", kind="AGENT", start=i * 10, seconds=2 + i, **{"agent.name": "support"}),
            span(
                trace,
                "llm",
                "root",
                kind="LLM",
                start=i * 10,
                seconds=1,
                **{
                    "llm.model_name": "gpt-5.4" if i % 2 else "claude-sonnet-4-5",
                    "llm.token_count.prompt": 100 + i,
                    "llm.token_count.completion": 10,
                    "llm.cost.total": 0.01 * (i + 1),
                },
            ),
            span(
                trace,
                "tool",
                "root",
                kind="TOOL",
                start=i * 10 + 1,
                seconds=0.2,
                error=f"Order {1000 + i} not found in region eu-west-{i % 4}" if failing else None,
                **{
                    "tool.name": "lookup_order",
                    "input.value": orjson.dumps({"order": 1000 + i}).decode(),
                    "output.value": "rate limit" if i == 7 else "ok " * (3000 if i == 5 else 1),
                },
            ),
        ]
    records.append(span("other", "only", kind="CHAIN", service="billing", start=500))
    return records


@pytest.fixture(scope="module")
def store(
    tmp_path_factory: pytest.TempPathFactory, backend: str, new_store: Callable[[str], str]
) -> Iterator[TraceStore]:
    path = tmp_path_factory.mktemp("q") / "t.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in corpus()))
    target = new_store(backend)
    with TraceStore.open(target) as writable:
        writable.ingest([str(path)])
    with TraceStore.open(target, read_only=True) as read_only:
        yield read_only


def test_counts_and_filters(store: TraceStore) -> None:
    assert store.count_traces() == 31
    assert store.count_traces(TraceFilters(has_errors=True)) == 10
    assert store.count_traces(TraceFilters(has_errors=False)) == 21
    assert store.count_traces(TraceFilters(services=["billing"])) == 1
    assert store.count_traces(TraceFilters(models=["gpt-5.4"])) == 15
    assert store.count_traces(TraceFilters(tools=["lookup_order"], has_errors=True)) == 10
    assert store.count_traces(TraceFilters(agents=["support", "nobody"])) == 30
    assert store.count_traces(TraceFilters(trace_ids=["trace-01", "trace-02", "nope"])) == 2
    assert store.count_traces(TraceFilters(min_duration_ms=25_000)) == 7  # traces 23..29
    assert (
        store.count_traces(TraceFilters(since="2026-04-23T06:15:00Z")) == 12 + 1
    )  # traces 18..29 and "other"
    assert store.count_traces(TraceFilters(since="2026-04-23T06:15:00Z", until="2026-04-23T06:16:00Z")) == 6
    assert store.count_traces(TraceFilters(regex=r"rate limit|eu-west-2")) == 1 + 2  # traces 7; 6 and 18
    assert store.count_traces(TraceFilters(text="RATE LIMIT")) == 1
    assert store.count_traces(TraceFilters(min_cost=0.25)) == 6


def test_bad_filter_values_are_clear() -> None:
    with pytest.raises(ValueError, match="not a time: 'last tuesday'.*or 30m, 24h, 7d"):
        TraceFilters(since="last tuesday")
    with pytest.raises(ValueError, match="Extra inputs"):
        TraceFilters(colour="red")  # type: ignore[call-arg]


def test_dataset_regex_errors_name_the_syntax(store: TraceStore) -> None:
    with pytest.raises(StoreError, match="RE2"):
        store.count_traces(TraceFilters(regex="(?<=a)b"))


@pytest.mark.parametrize(
    "pattern",
    [
        r"rate limit|eu-west-2",
        r"Order \d+ not found",
        r"eu-west-[13]",
        r"(lookup|search)_order",
        r"(?i)ORDER 10\d\d",
        r"gpt-5\.4|claude",
        r"x?y?z?",
        r"[[:digit:]]{4} not",
        r"not (found|there)+ in",
        r"region eu-west-\d$",
    ],
)
def test_dataset_regex_counts_match_a_full_scan(store: TraceStore, pattern: str) -> None:
    # Literal pre-filters (contains() before the regex) must never drop a span the regex matches.
    compiled = re.compile(pattern.replace("[[:digit:]]", "[0-9]"))
    expected = {
        row["trace_id"]
        for row in store.query("SELECT trace_id, raw FROM spans")
        if compiled.search(row["raw"])
    }
    assert store.count_traces(TraceFilters(regex=pattern)) == len(expected)
    assert store.search(pattern).traces_matched == len(expected)


@given(st.text(alphabet="ab(|)?*+.[]{}1,\\:", max_size=12), st.text(alphabet="ab.:[]", max_size=20))
def test_required_literals_are_in_every_match(pattern: str, text: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "[[" may change meaning in a future Python
            compiled = re.compile(pattern)
    except re.error:
        return
    literals = required_literals(pattern)
    for candidate in (text, text * 3, "abab" + text):
        if literals and compiled.search(candidate):
            assert any(literal in candidate for literal in literals), (pattern, candidate, literals)


def test_query_sorting_paging_and_totals(store: TraceStore) -> None:
    page = store.query_traces(TraceFilters(has_errors=True), sort="duration", limit=4)
    assert page.total == 10 and page.has_more and len(page.traces) == 4
    assert [t.trace_id for t in page.traces] == ["trace-27", "trace-24", "trace-21", "trace-18"]
    last = store.query_traces(TraceFilters(has_errors=True), sort="duration", limit=4, offset=8)
    assert [t.trace_id for t in last.traces] == ["trace-03", "trace-00"] and not last.has_more
    cheapest = store.query_traces(sort="cost", descending=False, limit=1).traces[0]
    assert cheapest.trace_id == "trace-00" and cheapest.cost == pytest.approx(0.01)
    assert cheapest.input_tokens == 100 and cheapest.models == ["claude-sonnet-4-5"]
    with pytest.raises(StoreError, match="unknown sort"):
        store.query_traces(sort="colour")  # type: ignore[arg-type]
    empty = store.query_traces(TraceFilters(services=["nope"]))
    assert empty.total == 0 and empty.traces == [] and not empty.has_more


def test_overview_is_exact_and_groups_errors_by_template(store: TraceStore) -> None:
    o = store.overview()
    assert (o.traces, o.spans, o.error_traces, o.error_spans) == (31, 91, 10, 10)
    assert o.kinds == {"AGENT": 30, "LLM": 30, "TOOL": 30, "CHAIN": 1}
    assert o.input_tokens == sum(100 + i for i in range(30)) and o.output_tokens == 300
    assert o.cost == pytest.approx(sum(0.01 * (i + 1) for i in range(30)))
    assert [t.model_dump(exclude_none=True) for t in o.tools] == [
        {"name": "lookup_order", "traces": 30, "spans": 30, "errors": 10}
    ]
    assert len(o.error_groups) == 1  # ten different orders and regions, one failure
    group = o.error_groups[0]
    assert (group.source, group.traces, group.error_spans) == ("lookup_order", 10, 10)
    assert group.template.startswith("Order <n> not found in region <n>")
    filtered = store.overview(TraceFilters(services=["billing"]))
    assert (filtered.traces, filtered.spans, filtered.error_groups) == (1, 1, [])


def test_view_trace_tree_order_and_truncation(store: TraceStore) -> None:
    view = store.view_trace("trace-05", value_chars=200)
    assert [(s.span_id, s.depth) for s in view.spans] == [("root", 0), ("llm", 1), ("tool", 1)]
    tool = view.spans[2]
    assert tool.tool == "lookup_order" and tool.start_offset_ms == pytest.approx(1000)
    output = tool.attributes["output.value"]
    assert len(output) < 300 and "characters cut" in output and output.endswith("ok ")
    assert view.truncated_values >= 1
    assert view.spans[1].tokens == {"input": 105, "output": 10} and view.spans[1].model == "gpt-5.4"


def test_view_over_budget_returns_a_summary(store: TraceStore) -> None:
    view = store.view_trace("trace-05", budget_bytes=2_000, value_chars=100_000)
    assert view.spans == [] and view.oversized is not None
    assert view.oversized.spans == 3 and "search_trace" in view.oversized.recommendation
    assert view.oversized.span_bytes_max > 9_000


def test_view_spans_and_unknown_ids(store: TraceStore) -> None:
    view = store.view_spans("trace-03", ["tool", "ghost"])
    assert [s.span_id for s in view.spans] == ["tool"] and view.missing_span_ids == ["ghost"]
    assert view.spans[0].status == "ERROR" and "Order 1003" in (view.spans[0].status_message or "")
    with pytest.raises(StoreError, match="no trace 'trace-99'.*similar ids: trace-"):
        store.view_trace("trace-99")


def test_search_in_trace_span_and_dataset(store: TraceStore) -> None:
    hit = store.search(r"Order \d+", trace_id="trace-03", context_chars=10)
    assert (
        hit.total_matches == 1 and hit.matches[0].span_id == "tool" and hit.matches[0].match == "Order 1003"
    )
    assert all(len(m.context) <= len(m.match) + 20 for m in hit.matches)
    one = store.search("o", trace_id="trace-03", span_id="tool", max_matches=1)
    assert len(one.matches) == 1 and one.total_matches > 1 and one.has_more
    everywhere = store.search(r"eu-west-[12]", max_matches=3)
    assert everywhere.traces_matched == 4 and everywhere.spans_matched == 4 and len(everywhere.matches) == 3
    assert everywhere.has_more
    with pytest.raises(StoreError, match="invalid regex"):
        store.search("(unclosed", trace_id="trace-03")
    with pytest.raises(StoreError, match="no span 'nope'"):
        store.search("x", trace_id="trace-03", span_id="nope")


def test_search_gives_up_on_catastrophic_patterns(
    backend: str, new_store: Callable[[str], str], tmp_path: Path
) -> None:
    path = tmp_path / "evil.jsonl"
    path.write_bytes(orjson.dumps(span("evil", "s", **{"output.value": "a" * 40_000 + "!"})))
    with TraceStore.open(new_store(backend)) as writable:
        writable.ingest([str(path)])
        result = writable.search(r"(a+)+$", trace_id="evil", timeout=0.5)
    assert result.timed_out and result.has_more and "partial" in (result.note or "")


REFUSED_EVERYWHERE = [
    ("DELETE FROM spans", "only SELECT"),
    ("DROP TABLE spans", "only SELECT"),
    ("SELECT 1; SELECT 2", "exactly one"),
    ("SELECT nonsense FROM", "SQL error"),
]
REFUSED = {
    "duckdb": [
        ("COPY spans TO '/tmp/x.csv'", "only SELECT"),
        ("ATTACH '/tmp/x.db'", "only SELECT"),
        ("INSTALL httpfs", "only SELECT"),
        ("LOAD httpfs", "only SELECT"),
        ("SET enable_external_access = true", "only SELECT"),
        ("PRAGMA version", "only SELECT"),
        ("SELECT * FROM read_text('/etc/passwd')", "disabled"),
        ("SELECT * FROM read_csv('/etc/hosts')", "disabled"),
        ("SELECT * FROM glob('/etc/*')", "disabled"),
        ("SELECT * FROM read_json('/etc/hosts')", "disabled"),
        ("SELECT * FROM 'https://example.com/x.parquet'", "disabled"),
    ],
    "clickhouse": [
        ("INSERT INTO spans SELECT * FROM spans", "only SELECT"),
        ("ALTER TABLE spans_data DELETE WHERE 1", "only SELECT"),
        ("-- a comment\nOPTIMIZE TABLE spans_data FINAL", "only SELECT"),
        ("SET readonly = 0", "only SELECT"),
        ("SELECT 1 SETTINGS readonly = 0", "SETTINGS"),
        ("SELECT count() FROM spans SETTINGS max_execution_time = 1000", "SETTINGS"),
        ("SELECT 1 INTO OUTFILE '/tmp/halo-test-outfile'", "INTO OUTFILE"),
        ("SELECT 1 FORMAT CSV", "FORMAT"),
        ("SELECT * FROM file('/etc/passwd')", "table function file"),
        ("SELECT file('/etc/hostname')", "function file"),
        ("SELECT * FROM url('http://127.0.0.1:9/x.csv', 'CSV', 'a String')", "table function url"),
        ("SELECT * FROM s3('http://127.0.0.1:9/x.csv')", "table function s3"),
        ("SELECT * FROM remote('127.0.0.1:9', system.one)", "table function remote"),
        ("SELECT * FROM mysql('127.0.0.1:9', 'd', 't', 'u', 'p')", "table function mysql"),
        ("SELECT * FROM executable('cat /etc/passwd', 'TSV', 'x String')", "table function executable"),
        (
            "SELECT * FROM spans WHERE trace_id IN (SELECT a FROM url('http://127.0.0.1:9/', 'CSV', 'a String'))",
            "table function url",
        ),
        ("SELECT dictGet('d', 'x', 1)", "function dictGet"),
        ("SELECT * FROM system.tables", "reads system.tables"),
        ("SELECT (SELECT count() FROM system.users)", "reads system.users"),
        ("SELECT * FROM spans_data", "spans_data"),
        ("SELECT count() FROM spans WHERE trace_id IN system.tables", "reads system.tables"),
        ("SELECT * FROM default.spans", "reads default.spans"),
    ],
}


def test_sql_is_read_only_single_statement_and_capped(store: TraceStore) -> None:
    result = store.sql("SELECT trace_id, cost FROM traces ORDER BY cost DESC NULLS LAST", max_rows=3)
    assert result.columns == ["trace_id", "cost"] and result.row_count == 3 and result.truncated
    assert "LIMIT" in (result.note or "")
    small = store.sql("SELECT raw FROM spans", max_bytes=5_000)
    assert small.truncated and len(orjson.dumps(small.rows)) <= 5_000
    for query, message in [*REFUSED_EVERYWHERE, *REFUSED[store.dialect.name]]:
        with pytest.raises(StoreError, match=message):
            store.sql(query)
    assert store.sql("SELECT count(*) FROM spans").rows == [[91]]  # still healthy


# The same bounds in each dialect's words: endless rows, a huge value, a nested value, a slow scan.
BOUNDED = {
    "duckdb": {
        "endless": "SELECT * FROM range(1000000000000)",
        "all_raw": "SELECT list(raw) AS all_raw FROM spans",
        "slow": "SELECT range FROM range(100000000000) WHERE hash(range) % 10000000000 = 0",
    },
    "clickhouse": {
        "endless": "SELECT * FROM numbers(1000000000000)",
        "all_raw": "SELECT groupArray(raw) AS all_raw FROM spans",
        "slow": "SELECT number FROM numbers(100000000000) WHERE cityHash64(number) % 10000000000 = 0",
    },
}


def test_sql_is_bounded_while_it_runs_and_is_fetched(store: TraceStore) -> None:
    import time

    queries = BOUNDED[store.dialect.name]
    started = time.monotonic()
    huge = store.sql(queries["endless"])  # rows are made only as far as the cap
    assert huge.row_count == 200 and huge.truncated
    cross = store.sql("SELECT * FROM spans a, spans b, spans c, spans d", max_rows=3_000_000)
    assert cross.truncated and len(orjson.dumps(cross.rows)) <= 50_000  # the byte cap, applied while fetching
    big = store.sql("SELECT repeat(repeat('x', 1000), 20000) AS big, 1 AS n", max_bytes=1_000)
    assert len(big.rows[0][0]) < 1_100 and big.rows[0][1] == 1 and "cut" in (big.note or "")
    nested = store.sql(queries["all_raw"], max_bytes=2_000)
    assert isinstance(nested.rows[0][0], str) and nested.rows[0][0].endswith("…[cut]")
    nested_small = store.sql("SELECT [1, 2] AS l, services FROM traces LIMIT 1")
    assert nested_small.rows[0][0] == [1, 2]  # nested values that fit stay nested
    assert isinstance(nested_small.rows[0][1], list)
    assert time.monotonic() - started < 60
    # The time limit holds while rows are fetched, not only while the query starts.
    with pytest.raises(StoreError, match="stopped"):
        store.sql(queries["slow"], timeout=1)
    # Errors are one line.
    with pytest.raises(StoreError) as error:
        store.sql("SELECT trace_idd FROM spans")
    assert "\n" not in str(error.value)
    assert store.count_traces() == 31


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM duckdb_settings()",
        "SELECT current_setting('temp_directory')",
        "SELECT path FROM duckdb_databases()",
        "SELECT * FROM duckdb_temporary_files()",
        "SELECT * FROM pragma_database_list()",
        "SELECT * FROM duckdb_extensions()",
        "FROM query('SELECT * FROM duckdb_settings()')",
        "SELECT * FROM query_table('spans')",
    ],
)
def test_sql_cannot_read_the_store_paths_or_settings(store: TraceStore, query: str) -> None:
    if store.dialect.name != "duckdb":
        pytest.skip("DuckDB's own catalogue functions; ClickHouse's system tables are in REFUSED")
    with pytest.raises(StoreError, match="not available here"):
        store.sql(query)
    assert store.sql("SELECT count(*) FROM duckdb_columns() WHERE table_name = 'spans'").rows[0][0] > 10


def test_sql_needs_a_read_only_store(backend: str, new_store: Callable[[str], str]) -> None:
    with TraceStore.open(new_store(backend)) as writable, pytest.raises(StoreError, match="read-only"):
        writable.sql("SELECT 1")


def test_sql_allows_computing_table_functions_and_ctes(store: TraceStore) -> None:
    numbers = "range(3)" if store.dialect.name == "duckdb" else "numbers(3)"
    assert store.sql(f"SELECT count(*) FROM {numbers}").rows == [[3]]
    with_cte = store.sql("WITH e AS (SELECT trace_id FROM traces WHERE has_errors) SELECT count(*) FROM e")
    assert with_cte.rows == [[10]]


def test_sql_time_limit(store: TraceStore) -> None:
    numbers = "range(100000000000) a" if store.dialect.name == "duckdb" else "numbers(100000000000)"
    with pytest.raises(StoreError, match="stopped"):
        store.sql(f"SELECT count(*) FROM {numbers}", timeout=0.2)
    assert store.count_traces() == 31


def test_a_store_closes_while_a_cancelled_query_still_runs(tmp_path: Path) -> None:
    # a cancelled analysis closes its store while a tool's query still runs in a worker thread
    with TraceStore.open(str(tmp_path / "s.duckdb")):
        pass
    store = TraceStore.open(str(tmp_path / "s.duckdb"), read_only=True)
    ran: list[BaseException] = []

    def endless(connection: TraceStore) -> Any:
        try:
            return connection.sql("SELECT count(*) FROM range(100000000000) a, range(1000) b", timeout=20)
        except BaseException as exc:
            ran.append(exc)
            raise

    async def cancelled() -> None:
        work = asyncio.ensure_future(store.run(endless))
        await asyncio.sleep(0.5)
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        store.close()  # interrupts the worker thread's query and waits for it

    asyncio.run(cancelled())
    assert ran and isinstance(ran[0], StoreError) and "stopped" in str(ran[0]), ran


def test_opening_things_that_are_not_stores(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(StoreError, match="cannot open the store|not a HALO store"):
        TraceStore.open(text)
    with pytest.raises(StoreError, match="no such store"):
        TraceStore.open(tmp_path / "missing.duckdb", read_only=True)
    import duckdb

    foreign = tmp_path / "foreign.duckdb"
    duckdb.connect(str(foreign)).execute("CREATE TABLE t (x INT)").close()
    with pytest.raises(StoreError, match="not a HALO store"):
        TraceStore.open(foreign)
