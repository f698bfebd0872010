"""The ClickHouse trace store: HALO's tables in a ClickHouse database — embedded in this process
(`chdb:PATH`) or on a server over HTTP (`clickhouse://USER:PASSWORD@HOST:8123/DATABASE`) — or views
that map an OpenTelemetry Collector exporter table (`?otel_table=otel_traces`) onto HALO's columns
without copying it.

It answers the same questions as the DuckDB store with the same results: the queries below are the
DuckDB store's, said in ClickHouse (exact distinct counts, DuckDB's regex semantics, NULLs from outer
joins). Filling it is `clickhouse_ingest`'s job; a model's SQL runs only after `_checked` has made
sure it is one SELECT over HALO's tables, and then with `readonly=1` and limits.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import orjson
import regex

from halo_rlm import files
from halo_rlm.store import clickhouse_sql as sql
from halo_rlm.store.base import StoreError, TraceStore
from halo_rlm.store.clickhouse_client import Connection, Target, literal, open_connection, parse_target
from halo_rlm.store.clickhouse_dialect import ClickHouseDialect
from halo_rlm.store.clickhouse_ingest import Ingest
from halo_rlm.store.clickhouse_lease import WriterLease
from halo_rlm.store.clickhouse_otel import map_otel_table
from halo_rlm.store.dialect import Dialect
from halo_rlm.store.duckdb_store import ATTRIBUTE_NAME, DuckDBStore, required_literals
from halo_rlm.store.results import (
    ConversationRecords,
    Count,
    Durations,
    ErrorGroup,
    FacetName,
    FacetValue,
    IngestReport,
    KeysetPage,
    ModelUsage,
    Overview,
    Progress,
    SearchResult,
    SessionRow,
    SessionSortKey,
    SortKey,
    SqlResult,
    TraceFilters,
    TracePage,
    TraceRow,
    TraceSpans,
    TraceStats,
    TraceSummary,
    TraceView,
)
from halo_rlm.store.rows import (
    CUT_MARK,
    FACET_FILTERS,
    LIST_COLUMNS,
    LIST_SORTS,
    SESSION_SORTS,
    SORT_COLUMNS,
    SPAN_ROW_COLUMNS,
    SUMMARY_COLUMNS,
    VIEW_COLUMNS,
    clip_or_none,
    keyset,
    overview_of,
    plain,
    scan,
    session_row,
    sql_note,
    summary,
    take_rows,
    trace_row,
    trace_spans,
    trace_stats,
    trace_view,
)
from halo_rlm.store.schema import SCHEMA_VERSION, SPAN_COLUMNS, TRACE_COLUMNS
from halo_rlm.utils import iso_to_ns

__all__ = ["ClickHouseStore"]

READABLE = ("spans", "traces", "rejects", "inputs")
SPAN_RECORD_COLUMNS = ", ".join(c.name for c in SPAN_COLUMNS if c.name not in ("input_id", "line_no"))
COPY_TRACES = 2_000  # traces an analysis copy moves to its DuckDB file at a time
MODEL_SQL_MEMORY = 2_000_000_000  # bytes one model query may use
# Labels of a trace a comparison can group or stratify by (`trace_values`), as the DuckDB store has them.
TRACE_LABELS = {
    "service": "arrayStringConcat(arraySort(t.services), ',')",
    "agent": "arrayStringConcat(arraySort(t.agents), ',')",
    "root": "coalesce(t.root_name, '')",
    "model": "arrayStringConcat(arraySort(t.models), ',')",
}


class ClickHouseStore(TraceStore):
    """A trace store in ClickHouse. Open one with `TraceStore.open("chdb:PATH")` or
    `TraceStore.open("clickhouse://…")`."""

    dialect: ClassVar[Dialect] = ClickHouseDialect()
    schemes: ClassVar[tuple[str, ...]] = ("chdb", "clickhouse", "clickhouses")

    def __init__(self, conn: Connection, target: Target, read_only: bool, lock_timeout: float = 10.0) -> None:
        self.conn = conn
        self.lock_timeout = lock_timeout  # how long an ingest waits for another writer's lease
        self.target = target
        self.path = target.label
        self.read_only = read_only
        self.db = target.database
        self._idle: list[ClickHouseStore] = []
        self._known_databases: set[str] | None = None
        # HALO's own queries read the tables behind the `spans` and `traces` views themselves, with
        # FINAL as the views do: ClickHouse plans a query over a view at several times the cost (a
        # trace's view: 25 ms through the view, 16 ms without), which is most of a small query's time.
        if target.otel_table:
            self._spans, self._traces, self._traces_t = (
                f"{self.db}.spans",
                f"{self.db}.traces",
                f"{self.db}.traces t",
            )
        else:
            self._spans = f"{self.db}.spans_data FINAL"
            self._traces, self._traces_t = f"{self.db}.traces_data FINAL", f"{self.db}.traces_data t FINAL"

    @classmethod
    def connect(
        cls, target: str, *, read_only: bool = False, lock_timeout: float = 10.0, appends: bool = False
    ) -> ClickHouseStore:
        parsed = parse_target(target)
        conn = open_connection(parsed)
        store = cls(conn, parsed, read_only, lock_timeout)
        try:
            store._setup()
        except BaseException:
            conn.close()
            raise
        return store

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
        self.conn.close()

    @contextmanager
    def borrow(self) -> Iterator[ClickHouseStore]:
        try:
            borrowed = self._idle.pop()
        except IndexError:
            borrowed = ClickHouseStore(self.conn.another(), self.target, self.read_only, self.lock_timeout)
        try:
            yield borrowed
        finally:
            self._idle.append(borrowed)

    def interrupt(self) -> None:
        """Queries carry their own time limit (`max_execution_time`): ClickHouse stops them there."""

    # --- schema -------------------------------------------------------------------------------

    def _tables(self) -> dict[str, str]:
        rows = self.conn.rows(f"SELECT name, engine FROM system.tables WHERE database = {literal(self.db)}")
        return {r["name"]: r["engine"] for r in rows}

    def _setup(self) -> None:
        if self.target.otel_table:
            map_otel_table(self.conn, self.target)
            return
        if self.target.kind == "chdb" and not self.read_only:
            self.conn.command(f"CREATE DATABASE IF NOT EXISTS {self.db}")
            self.conn.command(f"USE {self.db}")
        tables = self._tables()
        if "meta" not in tables:
            halo_names = sorted(set(tables) & {*READABLE, *sql.DATA_TABLES})
            if halo_names:
                raise StoreError(
                    f"{self.path}: the database has a table {halo_names[0]!r} that is not HALO's "
                    "(no HALO meta table); use another database for HALO"
                )
            if self.read_only:
                raise StoreError(f"{self.path}: no HALO store in database {self.db!r}; ingest into it first")
            for statement in sql.create_statements(self.db):
                self.conn.command(statement)
            self.conn.command(
                f"INSERT INTO {self.db}.meta VALUES ('schema_version', {literal(str(SCHEMA_VERSION))})"
            )
            return
        found = self.conn.value(f"SELECT value FROM {self.db}.meta FINAL WHERE key = 'schema_version'")
        if found != str(SCHEMA_VERSION):
            raise StoreError(
                f"{self.path}: store schema version {found} is not {SCHEMA_VERSION}; "
                "ingest into a new database"
            )

    # --- ingest -------------------------------------------------------------------------------

    def ingest(
        self,
        paths: Sequence[str | Path],
        *,
        strict: bool = False,
        progress: Callable[[files.InputFile], Progress | None] | None = None,
        **options: Any,
    ) -> IngestReport:
        with self._writer():
            return Ingest(self).load_files(paths, strict=strict, progress=progress, **options)

    def ingest_records(self, records: Iterable[Any], *, source: str) -> IngestReport:
        with self._writer():
            return Ingest(self).load_records(records, source)

    @contextmanager
    def _writer(self) -> Iterator[None]:
        """The database's one-writer lease (`clickhouse_lease`) for one ingest, on a writable store."""
        self._writable()
        with WriterLease(self.conn, self.db, self.path).held(self.lock_timeout):
            yield

    def _writable(self) -> None:
        if self.read_only:
            raise StoreError(f"{self.path}: the store is open read-only")
        if self.target.otel_table:
            raise StoreError(
                f"{self.path}: an OpenTelemetry exporter table is read through views; the "
                "collector writes it, HALO does not"
            )

    # --- queries ------------------------------------------------------------------------------

    def _rows(self, query: str, settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        rows = self.conn.rows(query, settings)
        for row in rows:
            for column in sql.EMPTY_IS_NULL:
                if column in row and not row[column]:
                    row[column] = None
        return rows

    def count_traces(self, filters: TraceFilters | None = None) -> int:
        return int(self.conn.value(f"SELECT count() FROM {self._traces_t} WHERE {self._where(filters)}"))

    def query_traces(
        self,
        filters: TraceFilters | None = None,
        *,
        sort: SortKey = "start",
        descending: bool = True,
        limit: int = 50,
        offset: int = 0,
    ) -> TracePage:
        if sort not in SORT_COLUMNS:
            raise StoreError(f"unknown sort {sort!r}; use one of {', '.join(SORT_COLUMNS)}")
        limit, offset = max(1, min(limit, 1000)), max(0, offset)
        order = f"{SORT_COLUMNS[sort]} {'DESC' if descending else 'ASC'} NULLS LAST, t.trace_id"
        rows = self._rows(
            f"SELECT {SUMMARY_COLUMNS}, count() OVER () AS total FROM {self._traces_t} "
            f"WHERE {self._where(filters)} ORDER BY {order} LIMIT {limit} OFFSET {offset}"
        )
        total = rows[0]["total"] if rows else self.count_traces(filters)
        return TracePage(
            traces=[summary(row) for row in rows],
            total=total,
            offset=offset,
            limit=limit,
            has_more=offset + len(rows) < total,
            sort=f"{sort} {'desc' if descending else 'asc'}",
        )

    def trace_summary(self, trace_id: str) -> TraceSummary:
        rows = self._rows(
            f"SELECT {SUMMARY_COLUMNS} FROM {self._traces_t} WHERE trace_id = {literal(trace_id)}"
        )
        if not rows:
            raise StoreError(self._unknown_trace(trace_id))
        return summary(rows[0])

    def _selected(self, filters: TraceFilters | None) -> tuple[str, str]:
        """The traces that match `filters` as a subquery, and the matching condition on spans."""
        where = self._where(filters)
        selected = f"(SELECT * FROM {self._traces_t} WHERE {where})"
        spans_in = "true" if where == "true" else f"trace_id IN (SELECT trace_id FROM {selected})"
        return selected, spans_in

    def overview(self, filters: TraceFilters | None = None, *, top: int = 20) -> Overview:
        selected, spans_in = self._selected(filters)
        totals = self._rows(f"""
            SELECT count() AS traces, coalesce(sum(span_count), 0) AS spans,
                   countIf(has_errors) AS error_traces, coalesce(sum(error_spans), 0) AS error_spans,
                   min(start_ns) AS start_ns, max(end_ns) AS end_ns,
                   coalesce(sum(input_tokens), 0) AS input_tokens, coalesce(sum(output_tokens), 0) AS output_tokens,
                   coalesce(sum(cost), 0) AS cost, coalesce(sum(orphan_spans), 0) AS orphan_spans,
                   coalesce(sum(in_flight_spans), 0) AS in_flight_spans, coalesce(sum(raw_bytes), 0) AS raw_bytes
            FROM {selected}""")[0]
        lists = {
            column: [
                Count(**r)
                for r in self._rows(f"""
                    SELECT name, count() AS traces, countIf(has_errors) AS errors
                    FROM (SELECT arrayJoin({column}) AS name, has_errors FROM {selected})
                    GROUP BY name ORDER BY traces DESC, name LIMIT {int(top)}""")
            ]
            for column in ("services", "agents")
        }
        for column, name in (("models", "model"), ("tools", "tool_name")):
            lists[column] = [
                Count(**r)
                for r in self._rows(f"""
                    SELECT {name} AS name, uniqExact(trace_id) AS traces, count() AS spans,
                           countIf(status = 'ERROR') AS errors
                    FROM {self._spans} WHERE {spans_in} AND {name} IS NOT NULL
                    GROUP BY name ORDER BY traces DESC, spans DESC, name LIMIT {int(top)}""")
            ]
        kinds = {
            r["kind"]: r["spans"]
            for r in self._rows(
                f"SELECT kind, count() AS spans FROM {self._spans} WHERE {spans_in} GROUP BY kind "
                "ORDER BY spans DESC, kind"
            )
        }
        samples = [
            r["trace_id"]
            for r in self._rows(
                f"SELECT trace_id FROM {selected} ORDER BY has_errors DESC, start_ns DESC NULLS LAST, trace_id LIMIT 10"
            )
        ]
        return overview_of(
            totals,
            lists,
            kinds,
            rejected=int(self.conn.value(f"SELECT count() FROM {self.db}.rejects")),
            inputs=int(self.conn.value(f"SELECT count() FROM {self.db}.inputs")),
            unfinished=[],
            error_groups=self._error_groups(spans_in, top),
            samples=samples,
            top=top,
        )

    def durations(self, filters: TraceFilters | None = None, *, top: int = 20) -> list[Durations]:
        """p50, p95 and longest durations per agent (its AGENT spans), model (LLM spans) and tool
        (TOOL spans) over the traces that match `filters`: the `top` names with the most spans each."""
        _, spans_in = self._selected(filters)
        rows = self._rows(f"""
            SELECT of, name, count() AS spans, round(quantileExactInclusive(0.5)(duration_ns) / 1e6, 9) AS p50_ms,
                   round(quantileExactInclusive(0.95)(duration_ns) / 1e6, 9) AS p95_ms, max(duration_ns) / 1e6 AS max_ms
            FROM (
              SELECT multiIf(kind = 'AGENT', 'agent', kind = 'LLM', 'model', 'tool') AS of,
                     multiIf(kind = 'AGENT', agent_name, kind = 'LLM', model, tool_name) AS name, duration_ns
              FROM {self._spans}
              WHERE kind IN ('AGENT', 'LLM', 'TOOL') AND duration_ns IS NOT NULL AND {spans_in}) AS timed
            WHERE name IS NOT NULL
            GROUP BY of, name
            ORDER BY of, spans DESC, name
            LIMIT {int(top)} BY of""")
        return [Durations(**row) for row in rows]

    def model_usage(self, filters: TraceFilters | None = None) -> list[ModelUsage]:
        """Per model, its LLM calls' tokens and reported cost, and the tokens of calls that reported
        no cost, over the traces that match `filters`; most calls first."""
        _, spans_in = self._selected(filters)
        # Column names differ from the result's, which ClickHouse would read as the aggregates.
        rows = self._rows(f"""
            SELECT model, count() AS calls, coalesce(sum(i), 0) AS input_tokens, coalesce(sum(o), 0) AS output_tokens,
                   coalesce(sum(c), 0) AS cache_read_tokens, round(coalesce(sum(usd), 0), 9) AS cost,
                   countIf(unpriced) AS calls_without_cost,
                   coalesce(sumIf(i, unpriced), 0) AS input_tokens_without_cost,
                   coalesce(sumIf(o, unpriced), 0) AS output_tokens_without_cost,
                   coalesce(sumIf(c, unpriced), 0) AS cache_read_tokens_without_cost
            FROM (SELECT model, input_tokens AS i, output_tokens AS o, cache_read_tokens AS c, cost AS usd,
                         coalesce(cost IS NULL AND (input_tokens > 0 OR output_tokens > 0), false) AS unpriced
                  FROM {self._spans}
                  WHERE kind = 'LLM' AND model IS NOT NULL AND {spans_in}) AS calls
            GROUP BY model ORDER BY calls DESC, model""")
        return [ModelUsage(**row) for row in rows]

    def error_groups(self, filters: TraceFilters | None = None, *, top: int = 20) -> list[ErrorGroup]:
        return self._error_groups(self._selected(filters)[1], top)

    def _error_groups(self, spans_in: str, top: int) -> list[ErrorGroup]:
        rows = self._rows(f"""
            SELECT coalesce(tool_name, name) AS source, kind, error_template AS template,
                   count() AS error_spans, uniqExact(trace_id) AS traces,
                   arraySlice(arraySort(groupUniqArray(trace_id)), 1, 3) AS example_trace_ids,
                   argMin(trace_id || ':' || span_id, start_ns) AS example_span,
                   argMin({sql.join_distinct("[status_message, if(kind = 'TOOL', leftUTF8(tool_result, 300), NULL)]")},
                          start_ns) AS example_message
            FROM {self._spans}
            WHERE {spans_in} AND status = 'ERROR'
            GROUP BY source, kind, template
            ORDER BY traces DESC, error_spans DESC, source, template LIMIT {int(top)}""")
        return [ErrorGroup(**{**r, "example_message": clip_or_none(r["example_message"], 400)}) for r in rows]

    def view_trace(
        self, trace_id: str, *, budget_bytes: int = 150_000, value_chars: int = 4_096
    ) -> TraceView:
        return self._view(trace_id, None, budget_bytes, value_chars)

    def view_spans(
        self,
        trace_id: str,
        span_ids: Sequence[str],
        *,
        budget_bytes: int = 150_000,
        value_chars: int = 16_384,
    ) -> TraceView:
        return self._view(trace_id, list(span_ids), budget_bytes, value_chars)

    def _view(self, trace_id: str, span_ids: list[str] | None, budget: int, value_chars: int) -> TraceView:
        rows = self._rows(
            f"SELECT {VIEW_COLUMNS} FROM {self._spans} WHERE trace_id = {literal(trace_id)} "
            "ORDER BY start_ns NULLS LAST, span_id"
        )
        if not rows:
            raise StoreError(self._unknown_trace(trace_id))
        return trace_view(trace_id, rows, span_ids, budget, value_chars)

    def search(
        self,
        pattern: str,
        *,
        trace_id: str | None = None,
        span_id: str | None = None,
        filters: TraceFilters | None = None,
        context_chars: int = 100,
        max_matches: int = 50,
        timeout: float = 5.0,
    ) -> SearchResult:
        compiled = _compile(pattern)
        context_chars = max(0, min(context_chars, 2_000))
        max_matches = max(1, min(max_matches, 500))
        if trace_id is None:
            return self._search_dataset(pattern, compiled, filters, context_chars, max_matches, timeout)
        clauses = [f"trace_id = {literal(trace_id)}"]
        if span_id is not None:
            clauses.append(f"span_id = {literal(span_id)}")
        rows = self._rows(
            f"SELECT trace_id, span_id, name, kind, status, raw FROM {self._spans} WHERE {' AND '.join(clauses)} "
            "ORDER BY start_ns NULLS LAST, span_id"
        )
        if not rows:
            raise StoreError(
                self._unknown_trace(trace_id)
                if span_id is None
                else f"no span {span_id!r} in trace {trace_id!r}"
            )
        return scan(pattern, compiled, rows, context_chars, max_matches, timeout)

    def _search_dataset(
        self,
        pattern: str,
        compiled: Any,
        filters: TraceFilters | None,
        context_chars: int,
        max_matches: int,
        timeout: float,
    ) -> SearchResult:
        _, spans_in = self._selected(filters)
        self._check_re2(pattern)
        matches = _raw_matches(pattern)
        try:
            counts = self._rows(
                f"SELECT count() AS spans, uniqExact(trace_id) AS traces FROM {self._spans} "
                f"WHERE {spans_in} AND {matches}",
                {"max_execution_time": max(1, int(timeout + 0.999))},
            )[0]
        except StoreError as exc:
            if "took too long" not in str(exc):
                raise
            return SearchResult(
                pattern=pattern,
                matches=[],
                total_matches=0,
                spans_matched=0,
                has_more=True,
                timed_out=True,
                note=f"the scan took over {timeout:g}s; narrow it with filters",
            )
        rows = self._rows(
            f"SELECT trace_id, span_id, name, kind, status, raw FROM {self._spans} WHERE {spans_in} AND {matches} "
            f"ORDER BY start_ns NULLS LAST, trace_id, span_id LIMIT {int(max_matches)}"
        )
        result = scan(pattern, compiled, rows, context_chars, max_matches, timeout)
        result.spans_matched, result.traces_matched = counts["spans"], counts["traces"]
        result.has_more = counts["spans"] > len(rows) or result.has_more
        result.note = (
            "total_matches counts matches in the spans shown; spans_matched and traces_matched are exact"
        )
        return result

    def sql(
        self, query: str, *, max_rows: int = 200, max_bytes: int = 50_000, timeout: float = 10.0
    ) -> SqlResult:
        """One read-only SELECT over HALO's tables (spans, traces, rejects, inputs) in ClickHouse SQL,
        capped in rows, bytes, time and memory. Checked first (one statement, a SELECT, no SETTINGS,
        FORMAT or INTO OUTFILE, only HALO's tables, no table functions that reach files, URLs or other
        servers), then run with `readonly=1`."""
        if not self.read_only:
            raise StoreError("SQL runs only on a store opened read-only")
        limits = {
            "max_execution_time": max(0.1, timeout),
            "max_result_rows": max_rows + 1,
            "result_overflow_mode": "break",
            "max_result_bytes": max(max_bytes * 20, 10_000_000),
            "max_memory_usage": MODEL_SQL_MEMORY,
            "readonly": 1,
        }
        checked = self._checked(query)
        try:
            described = self.conn.rows(f"DESCRIBE TABLE ({checked})", {"readonly": 1})
            columns = [str(r["name"]) for r in described]
            kinds = [str(r["type"]) for r in described]
            cut = max(64, max_bytes)
            # Long values are cut inside ClickHouse and only max_rows + 1 rows are made, so neither a
            # huge value nor a huge result is ever fetched whole.
            wrapped = (
                "SELECT "
                + ", ".join(
                    _capped_column(name, kind, cut) for name, kind in zip(columns, kinds, strict=True)
                )
                + f" FROM ({checked}) LIMIT {max(0, max_rows) + 1}"
            )
            table = self.conn.arrow(wrapped, limits)
        except StoreError as exc:
            raise StoreError(f"SQL error: {str(exc).split(': ', 1)[-1]}") from None
        rows, truncated, clipped = take_rows(
            # converted batch by batch, only as far as the caps
            (
                zip(*(column.to_pylist() for column in batch.columns), strict=True)
                for batch in table.to_batches(64)
            ),
            lambda row: [_value(value, kind) for value, kind in zip(row, kinds, strict=True)],
            max_rows=max_rows,
            max_bytes=max_bytes,
        )
        note = sql_note(len(rows), truncated, clipped, cut)
        return SqlResult(columns=columns, rows=rows, row_count=len(rows), truncated=truncated, note=note)

    def _checked(self, query: str) -> str:
        """The query normalised to one line, once it is known to be a single SELECT that reads only
        HALO's tables. ClickHouse's own parser decides: `formatQuerySingleLine` (which parses a string
        literal, so nothing in it runs) refuses more than one statement, and `EXPLAIN AST` of the
        normalised text shows every table, table function and function it names."""
        try:
            text = str(self.conn.value(f"SELECT formatQuerySingleLine({literal(query.strip().rstrip(';'))})"))
        except StoreError as exc:
            if "Multi-statements" in str(exc):
                raise StoreError("send exactly one statement (found more than one)") from None
            raise StoreError(f"SQL error: {str(exc).split(': ', 1)[-1]}") from None
        # ClickHouse reads a bare expression as a SELECT ("DELETE FROM spans" selects a column
        # DELETE), so the statement's own first word must say SELECT too.
        for first in (_first_word(query), _first_word(text)):
            if first not in ("SELECT", "WITH", "("):
                raise StoreError(f"only SELECT queries are allowed (got {first or 'nothing'})")
        try:
            ast = "\n".join(str(v) for v in self.conn.arrow(f"EXPLAIN AST {text}").column(0).to_pylist())
        except StoreError as exc:
            raise StoreError(f"SQL error: {str(exc).split(': ', 1)[-1]}") from None
        problem = sql.ast_problems(ast, self.db, self._databases())
        if problem:
            raise StoreError(problem)
        return text

    def _databases(self) -> set[str]:
        """The server's databases (a name qualified with one of them is a table reference)."""
        if self._known_databases is None:
            self._known_databases = {r["name"] for r in self.conn.rows("SELECT name FROM system.databases")}
        return self._known_databases

    def spans(
        self,
        *,
        trace_ids: Sequence[str] | None = None,
        kind: str | None = None,
        name: str | None = None,
        tool: str | None = None,
        model: str | None = None,
        agent: str | None = None,
        service: str | None = None,
        status: str | None = None,
        text: str | None = None,
        limit: int = 1_000,
        value_chars: int = 2_000,
    ) -> list[dict[str, Any]]:
        clauses = []
        for column, value in (
            ("kind", kind),
            ("name", name),
            ("tool_name", tool),
            ("model", model),
            ("agent_name", agent),
            ("service", service),
            ("status", status),
        ):
            if value is not None:
                clauses.append(
                    f"{column} = {literal(value.upper() if column in ('kind', 'status') else value)}"
                )
        if trace_ids:
            clauses.append(f"trace_id IN {_tuple(trace_ids)}")
        if text:
            clauses.append(sql.regex_match("raw", literal("(?i)" + regex.escape(text))))
        rows = self._rows(
            f"SELECT {SPAN_ROW_COLUMNS} FROM {self._spans} WHERE {' AND '.join(clauses) or 'true'} "
            f"ORDER BY start_ns NULLS LAST, trace_id, span_id LIMIT {max(1, min(limit, 10_000))}"
        )
        for row in rows:
            for key, value in row.items():
                if isinstance(value, str):
                    row[key] = clip_or_none(value, value_chars)
        return rows

    def query(self, sql_text: str, params: Any = None) -> list[dict[str, Any]]:
        """Rows of SQL written by HALO itself (the detectors, with values inlined); a statement that
        returns no rows (the detectors' setup) runs as a command. Untrusted SQL goes through `sql()`."""
        if params:
            raise StoreError("ClickHouse queries take their values inlined (clickhouse_client.literal)")
        if _first_word(sql_text) not in ("SELECT", "WITH", "("):
            self.conn.command(sql_text)
            return []
        return self._rows(sql_text)

    def trace_values(self, attributes: Sequence[str] = ()) -> dict[str, Any]:
        named = [a for a in dict.fromkeys(attributes) if a not in TRACE_LABELS]
        for name in named:
            if not ATTRIBUTE_NAME.fullmatch(name):
                raise StoreError(
                    f"{name!r}: an attribute name is letters, digits and . _ - : / (e.g. support.resolved)"
                )
        columns = [
            "t.trace_id AS trace_id",
            "if(t.has_errors, 1.0, 0.0) AS error",
            "t.duration_ns / 1e6 AS duration_ms",
            "toFloat64(t.total_tokens) AS tokens",
            "t.cost AS cost",
            *(f"{expression} AS {label}" for label, expression in TRACE_LABELS.items()),
        ]
        joins = []
        for i, name in enumerate(named):
            # the first span carrying the attribute (root first, then by start), as the DuckDB store does
            value = f"coalesce({sql.json_text('raw', 'attributes', name)}, {sql.json_text('raw', 'resource', 'attributes', name)})"
            joins.append(
                f"LEFT JOIN (SELECT trace_id, argMin(v, (parent_id IS NOT NULL, start_ns)) AS first_value FROM "
                f"(SELECT trace_id, parent_id, start_ns, {value} AS v FROM {self._spans} "
                f"WHERE position(raw, {literal(name)}) > 0) AS found WHERE v IS NOT NULL GROUP BY trace_id) a{i} "
                f"ON a{i}.trace_id = t.trace_id"
            )
            columns.append(f"a{i}.first_value AS a{i}")
        data = self.conn.arrow(
            f"SELECT {', '.join(columns)} FROM {self._traces_t} {' '.join(joins)} ORDER BY t.trace_id"
        )

        def floats(column: str) -> Any:
            return np.asarray(data.column(column).to_numpy(zero_copy_only=False), dtype=np.float64)

        def strings(column: str) -> Any:
            return np.array(["" if v is None else str(v) for v in data.column(column).to_pylist()], dtype=str)

        values: dict[str, Any] = {
            "trace_id": strings("trace_id"),
            **{c: floats(c) for c in ("error", "duration_ms", "tokens", "cost")},
            **{label: strings(label) for label in TRACE_LABELS},
        }
        for i, name in enumerate(named):
            values[name] = np.asarray(data.column(f"a{i}").to_pylist(), dtype=object)
        return values

    def known_traces(self, trace_ids: Iterable[str]) -> set[str]:
        ids = sorted(set(trace_ids))
        if not ids:
            return set()
        rows = self.conn.rows(f"SELECT trace_id FROM {self._traces} WHERE trace_id IN {_tuple(ids)}")
        return {r["trace_id"] for r in rows}

    def span_records(self, spans: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        pairs = sorted(set(spans))
        if not pairs:
            return {}
        listed = ", ".join(f"({literal(t)}, {literal(s)})" for t, s in pairs)
        rows = self.conn.rows(
            f"SELECT trace_id, span_id, raw FROM {self._spans} WHERE (trace_id, span_id) IN ({listed})"
        )
        return {(r["trace_id"], r["span_id"]): r["raw"] for r in rows}

    def rejects(self, *, limit: int = 100) -> list[dict[str, Any]]:
        return self._rows(
            f"SELECT path, line_no, reason, excerpt FROM {self.db}.rejects ORDER BY input_id, line_no LIMIT {int(limit)}"
        )

    def inputs(self) -> list[dict[str, Any]]:
        return self._rows(
            f"SELECT path, status, spans, rejected, repaired, size FROM {self.db}.inputs ORDER BY input_id"
        )

    # --- lists and views for people (the web app) ----------------------------------------------
    # The DuckDB store's queries said in ClickHouse, built into results by the same `store.rows`.

    def trace_list(
        self,
        filters: TraceFilters | None = None,
        *,
        sort: SortKey = "start",
        descending: bool = True,
        cursor: str | None = None,
        limit: int = 75,
    ) -> KeysetPage[TraceRow]:
        page = keyset(
            LIST_SORTS, sort, "t.trace_id", cursor=cursor, descending=descending, limit=limit, bind=literal
        )
        rows = self._rows(
            f"SELECT {LIST_COLUMNS}, {page.expr} AS sort_value FROM {self._traces_t} "
            f"WHERE {self._where(filters)} AND {page.after} {page.order}"
        )
        return page.page(rows, trace_row)

    def session_list(
        self,
        filters: TraceFilters | None = None,
        *,
        sort: SessionSortKey = "last",
        descending: bool = True,
        cursor: str | None = None,
        limit: int = 75,
    ) -> KeysetPage[SessionRow]:
        page = keyset(
            SESSION_SORTS,
            sort,
            "s.session_id",
            cursor=cursor,
            descending=descending,
            limit=limit,
            bind=literal,
        )
        # First and last by start time, ties by trace id, over traces that have a start (as DuckDB's
        # arg_min/arg_max, argMin/argMax skip a NULL value).
        by, started = "(assumeNotNull(t.start_ns), t.trace_id)", "t.start_ns IS NOT NULL"
        rows = self._rows(
            f"""WITH s AS (
              SELECT t.session_id AS session_id, min(t.start_ns) AS start_ns, max(t.end_ns) AS end_ns,
                     max(t.end_ns) - min(t.start_ns) AS duration_ns, count() AS traces,
                     sum(t.span_count) AS spans, countIf(t.has_errors) AS error_traces,
                     sum({LIST_SORTS["tokens"]}) AS tokens, round(sum(t.cost), 9) AS cost,
                     argMinIf(t.trace_id, {by}, {started}) AS first_trace_id,
                     argMaxIf(t.trace_id, {by}, {started}) AS last_trace_id,
                     argMaxIf(t.root_name, {by}, {started}) AS name,
                     argMinIf(t.input_preview, {by}, {started}) AS input_preview,
                     argMaxIf(t.output_preview, {by}, {started}) AS output_preview
              FROM {self._traces_t} WHERE {self._where(filters)} AND t.session_id IS NOT NULL
              GROUP BY t.session_id)
            SELECT s.*, {page.expr} AS sort_value FROM s WHERE {page.after} {page.order}"""
        )
        return page.page(rows, session_row)

    def trace_stats(self, filters: TraceFilters | None = None) -> TraceStats:
        row = self._rows(
            f"""SELECT count() AS traces, uniqExact(t.session_id) AS sessions,
                   coalesce(sum(t.span_count), 0) AS spans, coalesce(sum(t.llm_spans), 0) AS llm_spans,
                   countIf(t.has_errors) AS error_traces, countIf(t.in_flight_spans > 0) AS running_traces,
                   coalesce(sum({LIST_SORTS["tokens"]}), 0) AS tokens, coalesce(sum(t.cost), 0) AS cost,
                   quantileExactInclusive(0.5)(t.duration_ns) AS p50,
                   quantileExactInclusive(0.95)(t.duration_ns) AS p95
            FROM {self._traces_t} WHERE {self._where(filters)}"""
        )[0]
        return trace_stats(row)

    def facet(self, filters: TraceFilters | None, name: FacetName, *, top: int = 50) -> list[FacetValue]:
        own = FACET_FILTERS.get(name)
        if own is None:
            raise StoreError(f"unknown facet {name!r}; use one of {', '.join(FACET_FILTERS)}")
        where = self._where(filters.model_copy(update={own: None}) if filters else None)
        if name == "status":
            query = (
                f"SELECT if(t.has_errors, 'error', 'ok') AS value, count() AS traces "
                f"FROM {self._traces_t} WHERE {where} GROUP BY value"
            )
        elif name == "sessions":
            query = (
                f"SELECT t.session_id AS value, count() AS traces FROM {self._traces_t} "
                f"WHERE {where} AND t.session_id IS NOT NULL GROUP BY value"
            )
        else:
            query = (
                f"SELECT value, count() AS traces FROM (SELECT arrayJoin(t.{own}) AS value "
                f"FROM {self._traces_t} WHERE {where}) GROUP BY value"
            )
        rows = self._rows(f"{query} ORDER BY traces DESC, value LIMIT {max(1, int(top))}")
        return [FacetValue(value=str(r["value"]), traces=r["traces"]) for r in rows]

    def traces_containing(self, text: str, among: Sequence[str] | None = None) -> list[str]:
        rows = self._rows(
            f"SELECT DISTINCT trace_id FROM {self._spans} "
            f"WHERE {sql.regex_match('raw', literal('(?i)' + regex.escape(text)))}"
        )
        wanted = None if among is None else set(among)
        return [r["trace_id"] for r in rows if wanted is None or r["trace_id"] in wanted]

    def latest_trace(self, filters: TraceFilters | None = None) -> str | None:
        rows = self._rows(
            f"SELECT t.trace_id FROM {self._traces_t} WHERE {self._where(filters)} "
            "ORDER BY t.start_ns DESC NULLS LAST, t.trace_id LIMIT 1"
        )
        return rows[0]["trace_id"] if rows else None

    def trace_spans(self, trace_id: str) -> TraceSpans:
        rows = self._rows(
            f"""SELECT span_id, parent_id, name, kind, status, leftUTF8(status_message, 300) AS status_message,
                   start_ns AS start_ms, duration_ns / 1e6 AS duration_ms, model, agent_name AS agent,
                   tool_name AS tool, coalesce(total_tokens, input_tokens + output_tokens) AS tokens, cost
            FROM {self._spans} WHERE trace_id = {literal(trace_id)} ORDER BY start_ns NULLS LAST, span_id"""
        )
        if not rows:
            raise StoreError(self._unknown_trace(trace_id))
        return trace_spans(trace_id, rows)

    def span_record(self, trace_id: str, span_id: str) -> dict[str, Any]:
        rows = self._rows(
            f"SELECT {SPAN_RECORD_COLUMNS} FROM {self._spans} "
            f"WHERE trace_id = {literal(trace_id)} AND span_id = {literal(span_id)} LIMIT 1"
        )
        if not rows:
            raise StoreError(f"no span {span_id!r} in trace {trace_id!r}")
        return rows[0]

    def conversation_records(self, trace_id: str) -> ConversationRecords:
        in_trace = f"FROM {self._spans} WHERE trace_id = {literal(trace_id)}"
        llm = self._rows(
            "SELECT span_id, parent_id, name, status, status_message, start_ns, model, finish_reason, cost, "
            f"raw {in_trace} AND kind = 'LLM' ORDER BY start_ns NULLS LAST, span_id"
        )
        tools = self._rows(
            "SELECT span_id, tool_name, tool_call_id, status, status_message, tool_result "
            f"{in_trace} AND kind = 'TOOL' ORDER BY start_ns NULLS LAST, span_id"
        )
        roots = self._rows(
            "SELECT span_id, name, kind, status, status_message, input_value, output_value "
            f"{in_trace} AND (parent_id IS NULL OR is_orphan) ORDER BY start_ns NULLS LAST, span_id"
        )
        if not (llm or tools or roots):
            raise StoreError(self._unknown_trace(trace_id))
        return ConversationRecords(llm=llm, tools=tools, roots=roots)

    def copy_traces(self, filters: TraceFilters | None, target: Path, *, note: str) -> int:
        """Copy the matching traces into a new DuckDB store at `target`, a few thousand at a time."""
        if target.exists():
            raise StoreError(f"{target}: already exists")
        ids = [
            r["trace_id"]
            for r in self.conn.rows(
                f"SELECT t.trace_id FROM {self._traces_t} WHERE {self._where(filters)} ORDER BY t.trace_id"
            )
        ]

        def batches() -> Iterator[tuple[str, Any]]:
            for start in range(0, len(ids), COPY_TRACES):
                chosen = _tuple(ids[start : start + COPY_TRACES])
                for table, columns in (("traces", TRACE_COLUMNS), ("spans", SPAN_COLUMNS)):
                    names = ", ".join(c.name for c in columns)
                    yield (
                        table,
                        self.conn.arrow(f"SELECT {names} FROM {self.db}.{table} WHERE trace_id IN {chosen}"),
                    )

        with DuckDBStore.connect(str(target)) as copy:
            copy.fill_copy(batches(), note=note)
        return len(ids)

    def _where(self, filters: TraceFilters | None) -> str:
        if filters is None:
            return "true"
        clauses: list[str] = []
        if filters.has_errors is not None:
            clauses.append(f"t.has_errors = {literal(filters.has_errors)}")
        for field in ("services", "agents", "models", "tools"):
            values = getattr(filters, field)
            if values:
                clauses.append(f"hasAny(t.{field}, {literal(list(values))}::Array(String))")
        for field, column in (("session_ids", "session_id"), ("user_ids", "user_id")):
            values = getattr(filters, field)
            if values:
                clauses.append(f"t.{column} IN {_tuple(values)}")
        if filters.trace_ids is not None:  # an empty list matches none (a text search that found nothing)
            clauses.append(f"t.trace_id IN {_tuple(filters.trace_ids)}")
        if filters.error_templates:
            clauses.append(
                f"hasAny(t.error_templates, {literal(list(filters.error_templates))}::Array(String))"
            )
        if filters.since:
            clauses.append(f"t.start_ns >= {iso_to_ns(filters.since)}")
        if filters.until:
            clauses.append(f"t.start_ns < {iso_to_ns(filters.until)}")
        if filters.min_duration_ms is not None:
            clauses.append(f"t.duration_ns >= {int(filters.min_duration_ms * 1e6)}")
        if filters.max_duration_ms is not None:
            clauses.append(f"t.duration_ns <= {int(filters.max_duration_ms * 1e6)}")
        if filters.min_cost is not None:
            clauses.append(f"t.cost >= {literal(float(filters.min_cost))}")
        if filters.regex:
            self._check_re2(filters.regex)
            clauses.append(
                f"t.trace_id IN (SELECT trace_id FROM {self._spans} WHERE {_raw_matches(filters.regex)})"
            )
        clauses.extend(
            f"t.trace_id IN (SELECT trace_id FROM {self._spans} WHERE "
            f"{sql.regex_match('raw', literal('(?i)' + regex.escape(text)))})"
            for text in (filters.text, filters.project_id)
            if text
        )
        return " AND ".join(clauses) or "true"

    def _check_re2(self, pattern: str) -> None:
        try:
            self.conn.value(f"SELECT {sql.regex_match(literal(''), literal(pattern))}")
        except StoreError as exc:
            raise StoreError(
                f"invalid regex {pattern!r} (dataset-wide filters use RE2 syntax: no lookarounds "
                f"or backreferences): {str(exc).split(': ', 1)[-1]}"
            ) from None

    def _unknown_trace(self, trace_id: str) -> str:
        similar = self.conn.rows(
            f"SELECT trace_id FROM {self._traces} WHERE startsWith(trace_id, {literal(trace_id[:6])}) "
            "ORDER BY trace_id LIMIT 3"
        )
        hint = f"; similar ids: {', '.join(r['trace_id'] for r in similar)}" if similar else ""
        return f"no trace {trace_id!r} in the store{hint}"


_LEADING_COMMENTS = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.S)


def _first_word(query: str) -> str:
    """The first keyword of a statement (or its opening parenthesis), after comments."""
    rest = query[_LEADING_COMMENTS.match(query).end() :]  # type: ignore[union-attr]
    return "(" if rest.startswith("(") else rest.split(None, 1)[0].upper() if rest.strip() else ""


def _raw_matches(pattern: str) -> str:
    """SQL for "the raw span matches `pattern`": when every match must contain one of a few literal
    strings, ClickHouse first looks for those (`multiSearchAny`, a vectorised substring search), so
    the regex runs only on the spans that could match — as the DuckDB store does."""
    matches = sql.regex_match("raw", literal(pattern))
    literals = required_literals(pattern)
    return f"multiSearchAny(raw, {literal(literals)}) AND {matches}" if literals else matches


def _tuple(values: Iterable[str]) -> str:
    items = [literal(str(v)) for v in values]
    return f"({', '.join(items)})" if items else "(NULL)"


def _compile(pattern: str) -> Any:
    try:
        return regex.compile(pattern)
    except regex.error as exc:
        raise StoreError(f"invalid regex {pattern!r}: {exc}") from exc


_NESTED = ("Array(", "Map(", "Tuple(", "Nested(", "Object(", "JSON")


def _unwrapped(kind: str) -> str:
    """A column type without its Nullable(...)/LowCardinality(...) wrappers."""
    while kind.startswith(("Nullable(", "LowCardinality(")):
        kind = kind[kind.index("(") + 1 : -1]
    return kind


def _capped_column(name: str, kind: str, cut: int) -> str:
    """A result column with long values cut inside ClickHouse: text to `cut` characters, nested values
    as (cut) JSON text; other types as they are."""
    column = "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"
    base = _unwrapped(kind)
    if base.startswith(_NESTED):
        text = f"toJSONString({column})"
    elif base.startswith(("String", "FixedString")):
        text = column
    else:
        return column
    return (
        f"if(lengthUTF8({text}) > {cut}, concat(substringUTF8({text}, 1, {cut}), '{CUT_MARK}'), {text}) "
        f"AS {column}"
    )


def _value(value: Any, kind: str) -> Any:
    """A fetched value as plain JSON-able data; nested values come back from their JSON text."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str) and _unwrapped(kind).startswith(_NESTED) and not value.endswith(CUT_MARK):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return plain(value)
