"""The DuckDB trace store: one DuckDB file holding canonical spans (plus each span's raw record),
per-trace rollups, rejected records and the inputs they came from.

This module opens the store (creating its schema, or locking a read-only one down for untrusted
SQL), hands out connections, and answers questions about it: queries, views, search and read-only
SQL. Filling it is `duckdb_ingest`'s job; the SQL both use is here and in `duckdb_sql`.
"""

from __future__ import annotations

import contextlib
import glob
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import duckdb
import orjson
import regex

from halo_rlm.defaults import BATCH_BYTES, COMMIT_BYTES, MAX_LINE_BYTES
from halo_rlm.formats.spans import normalize_id
from halo_rlm.store import duckdb_sql
from halo_rlm.store.base import StoreError, TraceStore
from halo_rlm.store.dialect import Dialect
from halo_rlm.store.duckdb_dialect import DuckDBDialect
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
from halo_rlm.store.schema import SCHEMA_VERSION, SPAN_COLUMNS, TABLES, TRACE_COLUMNS
from halo_rlm.utils import first_line, iso_to_ns

if TYPE_CHECKING:  # the file reader and the ingest functions load pyarrow: ingest imports them itself
    from halo_rlm import files
    from halo_rlm.store.duckdb_udfs import Tally

__all__ = ["DuckDBStore", "required_literals"]

INGEST_MEMORY = "512MB"
# Rows per row group in a store opened for appends (`appends=True`: the collector's writes; DuckDB's
# default is 122,880). A commit of fewer rows than a row group adds them to the table's last one,
# and the checkpoint that follows writes that whole row group again: with the default, a write of
# 50,000 spans cost twice the CPU of the same spans in row groups this size (commit and checkpoint
# 0.4-0.9 s against 0.2 s, on the 2-core benchmark machine).
APPEND_ROW_GROUP_ROWS = 32_768
APPEND_DATABASE = "halo_store"  # what the store is attached as when opened for appends
FLUSH_ALLOCATOR = "16MB"
CLOSE_WAIT = 10.0  # seconds `close` waits for an interrupted query to stop
QUERY_MEMORY = "2GB"  # what a read-only store (the one untrusted SQL runs on) may hold in memory...
QUERY_TEMP = "8GB"  # ...and spill to disk beyond that
# The one input of an analysis's copy of some traces: what it was copied from.
COPY_INPUT = (
    "INSERT INTO {prefix}inputs (input_id, path, status, spans, started_at, finished_at) "
    "SELECT 1, ?, 'complete', count(*), now(), now() FROM {prefix}spans"
)


class DuckDBStore(TraceStore):
    """A DuckDB trace store. Open one with `TraceStore.open(path)`."""

    dialect: ClassVar[Dialect] = DuckDBDialect()
    schemes: ClassVar[tuple[str, ...]] = ("duckdb",)

    def __init__(
        self, con: duckdb.DuckDBPyConnection, path: str, read_only: bool, *, attached: bool = False
    ) -> None:
        self.con = con
        self.path = path
        self.read_only = read_only
        self.attached = attached  # the store is `APPEND_DATABASE` in an in-memory database (appends)
        self._udfs = False
        self._idle: list[DuckDBStore] = []  # connections for `borrow`...
        self._lent: set[DuckDBStore] = set()  # ...and those at work in another thread
        self._registered = ""  # the Arrow table of trace ids registered on this connection

    @classmethod
    def connect(
        cls,
        path: str,
        *,
        read_only: bool = False,
        lock_timeout: float = 10.0,
        appends: bool = False,
        in_memory: bool = False,
    ) -> DuckDBStore:
        """Open (or create) a store. DuckDB lets one process write a file at a time; while another
        holds it (e.g. `halo collect` flushing), wait up to `lock_timeout` seconds for it.
        `appends`: for a stream of small ingests (a collector's writes), whose rows go into row groups
        of `APPEND_ROW_GROUP_ROWS`; when this process already has the store open, that connection's
        database is shared as it is. `in_memory` makes a new scratch store that is never saved (another
        backend's ingest normalises through one): held in memory, spilling to the folder `path` past
        the memory limit."""
        if in_memory:
            Path(path).mkdir(parents=True, exist_ok=True)
            con = duckdb.connect(":memory:", config={"temp_directory": str(path)})
            con.execute("SET enable_progress_bar = false")
            store = cls(con, str(Path(path) / "scratch"), read_only=False)
            store._setup()
            return store
        if read_only and not Path(path).exists():
            raise StoreError(f"{path}: no such store")
        if not read_only:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # A read-only store is the one handed to untrusted SQL (the `sql` tool, `halo sql`): DuckDB's
        # file functions (read_text, read_csv, glob, COPY, ATTACH, INSTALL) are switched off and the
        # configuration is locked so a query cannot switch them back on.
        config = (
            {
                "enable_external_access": False,
                "memory_limit": QUERY_MEMORY,
                "max_temp_directory_size": QUERY_TEMP,
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
            }
            if read_only
            else {}
        )
        deadline = time.monotonic() + lock_timeout
        while True:
            try:
                attached_con = _attached_for_appends(path) if appends and not read_only else None
                attached = attached_con is not None
                con = attached_con or duckdb.connect(path, read_only=read_only, config=config)  # type: ignore[arg-type]
                break
            except (duckdb.IOException, duckdb.ResourceInUseException) as exc:
                # Another process holds the file's lock, or this one has it attached for appends.
                busy = isinstance(exc, duckdb.ResourceInUseException) or "lock" in str(exc).lower()
                if busy and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise StoreError(f"{path}: cannot open the store ({first_line(exc)})") from exc
            except duckdb.Error as exc:
                raise StoreError(f"{path}: not a HALO store ({first_line(exc)})") from exc
        # DuckDB's progress bar writes to stdout, which belongs to --json output; cursors inherit the
        # setting. Then a read-only store's configuration is locked. A store this process already has
        # open read-only shares that database, already set up and locked.
        locked = con.execute("SELECT current_setting('lock_configuration')").fetchall()[0][0]
        if not locked:
            con.execute("SET enable_progress_bar = false")
            if read_only:
                con.execute("SET lock_configuration = true")
        store = cls(con, path, read_only, attached=attached)
        store._setup()
        if not read_only:
            _remove_staging_files(path)
        return store

    @property
    def tally(self) -> Tally:
        """Spans a one-statement load has normalised so far (ingest only)."""
        from halo_rlm.store.duckdb_udfs import tally_for  # pyarrow: only an ingest loads it

        return tally_for(self.path)

    def close(self) -> None:
        """Close the store. Work still running on a borrowed connection (a cancelled analysis leaves
        its query running in a worker thread: no cancel stops a thread) is interrupted and waited for
        up to `CLOSE_WAIT` seconds, as DuckDB refuses to close a connection while a cursor is busy."""
        deadline = time.monotonic() + CLOSE_WAIT
        while self._lent and time.monotonic() < deadline:
            for cursor in list(self._lent):
                cursor.interrupt()  # again each time: a query may start after the last interrupt
            time.sleep(0.01)
        while self._idle:
            self._idle.pop().close()
        try:
            self.con.close()
        except duckdb.ResourceInUseException as exc:
            raise StoreError(f"{self.path}: cannot close the store, a query on it did not stop") from exc

    def cursor(self) -> DuckDBStore:
        """Another connection to the same database, for use from another thread (a DuckDB
        connection must not be shared across threads). Same read-only lock-down."""
        cursor = DuckDBStore(self.con.cursor(), self.path, self.read_only, attached=self.attached)
        if self.attached:
            cursor.con.execute(f"USE {APPEND_DATABASE}")  # a new connection starts in the in-memory one
        duckdb_sql.register_macros(cursor.con)
        return cursor

    @contextmanager
    def borrow(self) -> Iterator[DuckDBStore]:
        """A connection for one piece of work in another thread, kept for the next one afterwards:
        opening a connection costs a few milliseconds, as much as a small query."""
        try:
            cursor = self._idle.pop()
        except IndexError:
            cursor = self.cursor()
        self._lent.add(cursor)
        try:
            yield cursor
        finally:
            self._lent.discard(cursor)
            self._idle.append(cursor)

    def interrupt(self) -> None:
        """Stop the query running on this connection (from another thread)."""
        self.con.interrupt()

    def first_row(self, sql: str, params: Any = None) -> tuple[Any, ...] | None:
        """The first row of a query. DuckDB refuses new work while a result is unfinished, so the
        result is always read to the end."""
        rows = self.con.execute(sql, params).fetchall()
        return rows[0] if rows else None

    def _setup(self) -> None:
        if not self.read_only:
            self.con.execute("SET preserve_insertion_order = false")
            # Ingest streams: DuckDB need not cache what it wrote (the default allows 80% of RAM).
            self.con.execute(f"SET memory_limit = '{INGEST_MEMORY}'")
            # A long-running writer (the web app) answers many queries: DuckDB's allocator returns
            # what a query used once it passes this, not only past its 128 MB default.
            self.con.execute(f"SET allocator_flush_threshold = '{FLUSH_ALLOCATOR}'")
        duckdb_sql.register_macros(self.con)
        tables = {
            row[0]
            for row in self.con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()"
            ).fetchall()
        }
        if "meta" not in tables:
            if tables or self.read_only:
                raise StoreError(f"{self.path}: not a HALO store (a DuckDB file without HALO's tables)")
            self._create_schema()
            return
        found = self.first_row("SELECT value FROM meta WHERE key = 'schema_version'")
        if found is None or found[0] != str(SCHEMA_VERSION):
            raise StoreError(
                f"{self.path}: store schema version {found and found[0]} is not {SCHEMA_VERSION}; "
                "delete the file or ingest into a new --store"
            )

    def _create_schema(self) -> None:
        with self.transaction():
            for table in TABLES:
                self.con.execute(duckdb_sql.create_table(table))
            self.con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
            self.con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction on this connection: committed at the end, rolled back on any exception."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            try:
                self.con.execute("ROLLBACK")
            except duckdb.Error:
                pass  # DuckDB already rolled back the transaction of a failed or interrupted statement
            raise
        self.con.execute("COMMIT")

    # --- ingest -------------------------------------------------------------------------------

    def ingest(
        self,
        paths: Sequence[str | Path],
        *,
        strict: bool = False,
        progress: Callable[[files.InputFile], Progress | None] | None = None,
        batch_bytes: int = BATCH_BYTES,
        max_line_bytes: int = MAX_LINE_BYTES,
        bulk: bool = True,
        progress_every: float = 0.2,
        commit_bytes: int = COMMIT_BYTES,
    ) -> IngestReport:
        """Ingest files, directories, globs or "-" (stdin). Files already ingested whole are skipped,
        a file ingested part-way is finished, a file that grew is read from where it ended.
        `batch_bytes` sizes the batches a file is read in when it cannot load in one statement (a
        longer line than `max_line_bytes` is rejected), committed every `commit_bytes` of input;
        `bulk=False` reads every file that way. A load in one statement reports its progress every
        `progress_every` seconds."""
        self._writable()
        from halo_rlm.store.duckdb_ingest import Ingest  # pyarrow and the decoders: ingest only

        ingest = Ingest(
            self,
            strict=strict,
            batch_bytes=batch_bytes,
            max_line_bytes=max_line_bytes,
            bulk=bulk,
            progress_every=progress_every,
            commit_bytes=commit_bytes,
        )
        return ingest.load_files(paths, progress)

    def ingest_records(self, records: Iterable[Any], *, source: str) -> IngestReport:
        """Ingest already-parsed records (OTLP requests, span dicts, ...) from a collector or importer.
        `source` names them in the inputs table; each call is one input."""
        self._writable()
        from halo_rlm.store.duckdb_ingest import Ingest  # pyarrow and the decoders: ingest only

        return Ingest(self).load_records(records, source)

    def ingest_lines(self, data: bytes, *, source: str) -> IngestReport:
        """Ingest JSON lines held in memory (each ending in a line break) as one input named `source`:
        the same rows as `ingest_records` of their records, read as a file's lines are. On one of
        DuckDB's threads: these are a collector's writes, which come again and again while its HTTP
        threads (and the exporters, often on the same machine) compete for the cores, and one thread
        normalises them with a quarter less CPU than several (measured on 50,000 agent spans). The
        setting is the database's: other connections to it in this process (the web app's, when it
        runs the collector) have one thread meanwhile, and DuckDB's default again afterwards."""
        self._writable()
        from halo_rlm.store.duckdb_ingest import Ingest  # pyarrow and the decoders: ingest only

        self.con.execute("SET threads = 1")
        try:
            return Ingest(self).load_lines(data, source)
        finally:
            self.con.execute("RESET threads")

    def _writable(self) -> None:
        """Ingest needs a writable store, and on its connection the message normaliser its SQL calls
        (registered once: DuckDB refuses a second function of the same name)."""
        if self.read_only:
            raise StoreError(f"{self.path}: the store is open read-only")
        if not self._udfs:
            from halo_rlm.store.duckdb_udfs import register_udfs  # pyarrow: only an ingest loads it

            register_udfs(self.con, self.tally)
            self._udfs = True

    # --- queries ------------------------------------------------------------------------------

    def count_traces(self, filters: TraceFilters | None = None) -> int:
        where, params = self._where(filters)
        return int(self.first_row(f"SELECT count(*) FROM traces t WHERE {where}", params)[0])  # type: ignore[index]

    def query_traces(
        self,
        filters: TraceFilters | None = None,
        *,
        sort: SortKey = "start",
        descending: bool = True,
        limit: int = 50,
        offset: int = 0,
    ) -> TracePage:
        """A page of trace summaries, with the total number of matching traces."""
        if sort not in SORT_COLUMNS:
            raise StoreError(f"unknown sort {sort!r}; use one of {', '.join(SORT_COLUMNS)}")
        limit, offset = max(1, min(limit, 1000)), max(0, offset)
        where, params = self._where(filters)
        order = f"{SORT_COLUMNS[sort]} {'DESC' if descending else 'ASC'} NULLS LAST, t.trace_id"
        rows = self._rows(
            f"SELECT {SUMMARY_COLUMNS}, count(*) OVER () AS total FROM traces t WHERE {where} "
            f"ORDER BY {order} LIMIT ? OFFSET ?",
            [*params, limit, offset],
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
        trace_id = self.resolve_trace_id(trace_id)
        rows = self._rows(f"SELECT {SUMMARY_COLUMNS} FROM traces t WHERE trace_id = ?", [trace_id])
        if not rows:
            raise StoreError(self._unknown_trace(trace_id))
        return summary(rows[0])

    def overview(self, filters: TraceFilters | None = None, *, top: int = 20) -> Overview:
        """Totals, the distinct services/agents/models/tools (most traces first) and the top error
        groups, over the traces that match `filters`. Counts are exact, not sampled."""
        selected, of_selected = self._select(filters)
        totals = self._rows(f"""
            SELECT count(*) AS traces, coalesce(sum(span_count), 0) AS spans,
                   count(*) FILTER (has_errors) AS error_traces, coalesce(sum(error_spans), 0) AS error_spans,
                   min(start_ns) AS start_ns, max(end_ns) AS end_ns,
                   coalesce(sum(input_tokens), 0) AS input_tokens, coalesce(sum(output_tokens), 0) AS output_tokens,
                   coalesce(sum(cost), 0) AS cost, coalesce(sum(orphan_spans), 0) AS orphan_spans,
                   coalesce(sum(in_flight_spans), 0) AS in_flight_spans, coalesce(sum(raw_bytes), 0) AS raw_bytes
            FROM {selected}""")[0]
        lists = {
            column: [
                Count(**r)
                for r in self._rows(
                    f"""
                SELECT name, count(*) AS traces, count(*) FILTER (has_errors) AS errors
                FROM (SELECT unnest({column}) AS name, has_errors FROM {selected})
                GROUP BY name ORDER BY traces DESC, name LIMIT ?""",
                    [top],
                )
            ]
            for column in ("services", "agents")
        }
        # Models and tools count calls (spans) and failed calls, besides traces.
        for column, name in (("models", "model"), ("tools", "tool_name")):
            lists[column] = [
                Count(**r)
                for r in self._rows(
                    f"""
                SELECT {name} AS name, count(DISTINCT trace_id) AS traces, count(*) AS spans,
                       count(*) FILTER (status = 'ERROR') AS errors
                FROM spans {of_selected}
                WHERE {name} IS NOT NULL GROUP BY 1 ORDER BY traces DESC, spans DESC, name LIMIT ?""",
                    [top],
                )
            ]
        kinds = {
            r["kind"]: r["spans"]
            for r in self._rows(
                f"SELECT kind, count(*) AS spans FROM spans {of_selected} GROUP BY kind ORDER BY spans DESC"
            )
        }
        samples = [
            r["trace_id"]
            for r in self._rows(
                f"SELECT trace_id FROM {selected} ORDER BY has_errors DESC, start_ns DESC, trace_id LIMIT 10"
            )
        ]
        return overview_of(
            totals,
            lists,
            kinds,
            rejected=int(self.first_row("SELECT count(*) FROM rejects")[0]),  # type: ignore[index]
            inputs=int(self.first_row("SELECT count(*) FROM inputs")[0]),  # type: ignore[index]
            unfinished=[
                r["path"]
                for r in self._rows("SELECT path FROM inputs WHERE status = 'partial' ORDER BY input_id")
            ],
            error_groups=self._error_groups(of_selected, top),
            samples=samples,
            top=top,
        )

    def durations(self, filters: TraceFilters | None = None, *, top: int = 20) -> list[Durations]:
        """p50, p95 and longest durations per agent (its AGENT spans), model (LLM spans) and tool
        (TOOL spans) over the traces that match `filters`: the `top` names with the most spans each.
        Interpolated quantiles and summed costs are rounded to 9 decimals, so every backend gives the
        same numbers whatever order its arithmetic took."""
        of_selected = self._select(filters)[1]
        rows = self._rows(
            f"""
            SELECT of, name, count(*) AS spans, round(quantile_cont(duration_ns, 0.5) / 1e6, 9) AS p50_ms,
                   round(quantile_cont(duration_ns, 0.95) / 1e6, 9) AS p95_ms, max(duration_ns) / 1e6 AS max_ms
            FROM (
              SELECT CASE kind WHEN 'AGENT' THEN 'agent' WHEN 'LLM' THEN 'model' ELSE 'tool' END AS of,
                     CASE kind WHEN 'AGENT' THEN agent_name WHEN 'LLM' THEN model ELSE tool_name END AS name,
                     duration_ns
              FROM spans {of_selected}
              WHERE kind IN ('AGENT', 'LLM', 'TOOL') AND duration_ns IS NOT NULL)
            WHERE name IS NOT NULL
            GROUP BY of, name
            QUALIFY row_number() OVER (PARTITION BY of ORDER BY count(*) DESC, name) <= ?
            ORDER BY of, spans DESC, name""",
            [top],
        )
        return [Durations(**row) for row in rows]

    def model_usage(self, filters: TraceFilters | None = None) -> list[ModelUsage]:
        """Per model, its LLM calls' tokens and reported cost, and the tokens of calls that reported
        no cost, over the traces that match `filters`; most calls first."""
        of_selected = self._select(filters)[1]
        unpriced = "cost IS NULL AND (input_tokens > 0 OR output_tokens > 0)"
        rows = self._rows(
            f"""
            SELECT model, count(*) AS calls, coalesce(sum(input_tokens), 0) AS input_tokens,
                   coalesce(sum(output_tokens), 0) AS output_tokens,
                   coalesce(sum(cache_read_tokens), 0) AS cache_read_tokens, round(coalesce(sum(cost), 0), 9) AS cost,
                   count(*) FILTER ({unpriced}) AS calls_without_cost,
                   coalesce(sum(input_tokens) FILTER ({unpriced}), 0) AS input_tokens_without_cost,
                   coalesce(sum(output_tokens) FILTER ({unpriced}), 0) AS output_tokens_without_cost,
                   coalesce(sum(cache_read_tokens) FILTER ({unpriced}), 0) AS cache_read_tokens_without_cost
            FROM spans {of_selected}
            WHERE kind = 'LLM' AND model IS NOT NULL
            GROUP BY model ORDER BY calls DESC, model"""
        )
        return [ModelUsage(**row) for row in rows]

    def error_groups(self, filters: TraceFilters | None = None, *, top: int = 20) -> list[ErrorGroup]:
        """Error spans grouped by where they happened and by message template (ids, numbers, paths,
        URLs and quoted values masked), most traces first."""
        return self._error_groups(self._select(filters)[1], top)

    def _error_groups(self, of_selected: str, top: int) -> list[ErrorGroup]:
        # The example message is made for each group's first span only, after grouping: making it
        # for every error span first took most of `halo stats`' time on a large store.
        rows = self._rows(
            f"""
            WITH grouped AS (
              SELECT coalesce(tool_name, name) AS source, kind, error_template AS template,
                     count(*) AS error_spans, count(DISTINCT trace_id) AS traces,
                     min(DISTINCT trace_id, 3) AS example_trace_ids,
                     -- the first by start time; a span without one (still a valid span) comes last, not never
                     arg_min((trace_id, span_id), (start_ns IS NULL, start_ns, trace_id, span_id)) AS first_span
              FROM spans {of_selected}
              WHERE status = 'ERROR'
              GROUP BY ALL ORDER BY traces DESC, error_spans DESC, source, template LIMIT ?)
            SELECT g.source, g.kind, g.template, g.error_spans, g.traces, g.example_trace_ids,
                   g.first_span[1] || ':' || g.first_span[2] AS example_span,
                   halo_join_distinct([s.status_message,
                     CASE WHEN s.kind = 'TOOL' THEN left(s.tool_result, 300) END]) AS example_message
            FROM grouped g JOIN spans s ON s.trace_id = g.first_span[1] AND s.span_id = g.first_span[2]
            ORDER BY g.traces DESC, g.error_spans DESC, g.source, g.template""",
            [top],
        )
        return [ErrorGroup(**{**r, "example_message": clip_or_none(r["example_message"], 400)}) for r in rows]

    def view_trace(
        self, trace_id: str, *, budget_bytes: int = 150_000, value_chars: int = 4_096
    ) -> TraceView:
        """All spans of a trace in tree order, each attribute value cut to `value_chars` (head and
        tail kept). Over `budget_bytes`, a summary of the trace comes back instead of its spans."""
        return self._view(trace_id, None, budget_bytes, value_chars)

    def view_spans(
        self,
        trace_id: str,
        span_ids: Sequence[str],
        *,
        budget_bytes: int = 150_000,
        value_chars: int = 16_384,
    ) -> TraceView:
        """Chosen spans of a trace, with a larger per-value allowance than `view_trace`."""
        return self._view(trace_id, list(span_ids), budget_bytes, value_chars)

    def _view(self, trace_id: str, span_ids: list[str] | None, budget: int, value_chars: int) -> TraceView:
        trace_id = self.resolve_trace_id(trace_id)
        if span_ids is not None:
            span_ids = [normalize_id(span_id) or span_id for span_id in span_ids]
        rows = self._rows(
            f"SELECT {VIEW_COLUMNS} FROM spans WHERE trace_id = ? ORDER BY start_ns NULLS LAST, span_id",
            [trace_id],
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
        """Regex matches, with context, in the raw JSON of one span, one trace, or (with neither id)
        the whole dataset narrowed by `filters`. Counts are exact unless the time limit is hit."""
        compiled = _compile(pattern)
        context_chars = max(0, min(context_chars, 2_000))
        max_matches = max(1, min(max_matches, 500))
        if trace_id is None:
            return self._search_dataset(pattern, compiled, filters, context_chars, max_matches, timeout)
        trace_id = self.resolve_trace_id(trace_id)
        if span_id is not None:
            span_id = normalize_id(span_id) or span_id
        clauses, params = ["trace_id = ?"], [trace_id]
        if span_id is not None:
            clauses.append("span_id = ?")
            params.append(span_id)
        rows = self._rows(
            f"SELECT trace_id, span_id, name, kind, status, raw FROM spans WHERE {' AND '.join(clauses)} "
            "ORDER BY start_ns NULLS LAST, span_id",
            params,
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
        where, params = self._where(filters)
        matches, match_params = _raw_matches(pattern)
        try:
            counts = self._rows(
                f"SELECT count(*) AS spans, count(DISTINCT trace_id) AS traces FROM spans "
                f"WHERE trace_id IN (SELECT trace_id FROM traces t WHERE {where}) AND {matches}",
                [*params, *match_params],
                timeout=timeout,
            )[0]
        except _Timeout:
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
            f"SELECT trace_id, span_id, name, kind, status, raw FROM spans "
            f"WHERE trace_id IN (SELECT trace_id FROM traces t WHERE {where}) AND {matches} "
            f"ORDER BY start_ns NULLS LAST, trace_id, span_id LIMIT ?",
            [*params, *match_params, max_matches],
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
        """One read-only SELECT over the canonical tables (spans, traces, rejects, inputs), bounded
        while it runs: at most `max_rows` rows are made, values are cut to `max_bytes` inside the
        database, rows are fetched only until `max_bytes` of them are in, and the query is stopped at
        `timeout` seconds wherever it is (running or being fetched). The store's own memory limit
        (`QUERY_MEMORY`, then `QUERY_TEMP` on disk) bounds what it may hold. Only read-only stores run
        it: their file access and settings are locked. Every error is one line."""
        if not self.read_only:
            raise StoreError("SQL runs only on a store opened read-only (its file access is locked off)")
        query = query.strip().rstrip(";").strip()
        self._check_select(query)
        # On this connection itself: the query may read temporary tables HALO made on it (detectors').
        cursor = self.con
        timer = threading.Timer(timeout, cursor.interrupt)
        timer.start()
        try:
            columns, kinds = self._describe(cursor, query)
            cut = max(64, max_bytes)
            wrapped = (
                "SELECT "
                + ", ".join(_capped_column(i + 1, kind, cut) for i, kind in enumerate(kinds))
                + f" FROM ({query}) LIMIT {max(0, max_rows) + 1}"
            )
            result = cursor.execute(wrapped)
            rows, truncated, clipped = take_rows(
                iter(lambda: result.fetchmany(64), []),
                lambda row: [_value(value, kind) for value, kind in zip(row, kinds, strict=True)],
                max_rows=max_rows,
                max_bytes=max_bytes,
            )
        except duckdb.InterruptException:
            raise StoreError(
                f"the query took over {timeout:g}s and was stopped; add filters or a LIMIT"
            ) from None
        except duckdb.OutOfMemoryException:
            raise StoreError(
                f"the query needs more memory than the {QUERY_MEMORY} (and {QUERY_TEMP} on disk) a query "
                "may use; filter, aggregate or add a LIMIT"
            ) from None
        except duckdb.Error as exc:
            raise StoreError(f"SQL error: {first_line(exc)}") from exc
        finally:
            timer.cancel()
            with contextlib.suppress(duckdb.Error):
                cursor.execute("SELECT NULL").fetchall()  # drops whatever of the result was not fetched
        note = sql_note(len(rows), truncated, clipped, cut)
        return SqlResult(columns=columns, rows=rows, row_count=len(rows), truncated=truncated, note=note)

    def _check_select(self, query: str) -> None:
        """Exactly one SELECT, calling none of the functions that show the store's files or settings."""
        try:
            statements = self.con.extract_statements(query)
        except duckdb.Error as exc:
            raise StoreError(f"SQL error: {first_line(exc)}") from exc
        if len(statements) != 1:
            raise StoreError(f"send exactly one statement (got {len(statements)})")
        if statements[0].type != duckdb.StatementType.SELECT:
            raise StoreError(f"only SELECT queries are allowed (got {statements[0].type.name})")
        tree = orjson.loads(
            self.con.execute("SELECT json_serialize_sql(?::VARCHAR)", [query]).fetchall()[0][0]
        )
        refused = sorted(name for name in _function_names(tree) if not _allowed_function(name))
        if refused:
            raise StoreError(
                f"{', '.join(refused)}: not available here (it shows the store's files or settings, or runs "
                "other SQL); query the tables spans, traces, rejects and inputs"
            )

    @staticmethod
    def _describe(cursor: duckdb.DuckDBPyConnection, query: str) -> tuple[list[str], list[str]]:
        """The query's column names and types, from binding it (nothing runs)."""
        described = cursor.execute(f"DESCRIBE {query}").fetchall()
        return [str(row[0]) for row in described], [str(row[1]) for row in described]

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
        """Canonical span rows (no raw record) matching every given condition, oldest first; long
        text values keep head and tail."""
        clauses: list[str] = []
        params: list[Any] = []
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
                clauses.append(f"{column} = ?")
                params.append(value.upper() if column in ("kind", "status") else value)
        if trace_ids:
            clauses.append("list_contains(?::VARCHAR[], trace_id)")
            params.append(list(trace_ids))
        if text:
            clauses.append("regexp_matches(raw, ?, 'i')")
            params.append(regex.escape(text))
        rows = self._rows(
            f"SELECT {SPAN_ROW_COLUMNS} FROM spans WHERE {' AND '.join(clauses) or 'true'} "
            f"ORDER BY start_ns NULLS LAST, trace_id, span_id LIMIT ?",
            [*params, max(1, min(limit, 10_000))],
        )
        for row in rows:
            for key, value in row.items():
                if isinstance(value, str):
                    row[key] = clip_or_none(value, value_chars)
        return rows

    def query(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        """Rows of SQL written by HALO itself (the detectors). Untrusted SQL goes through `sql()`."""
        return self._rows(sql, params)

    def trace_values(self, attributes: Sequence[str] = ()) -> dict[str, Any]:
        named = [a for a in dict.fromkeys(attributes) if a not in TRACE_LABELS]
        for name in named:
            if not ATTRIBUTE_NAME.fullmatch(name):
                raise StoreError(
                    f"{name!r}: an attribute name is letters, digits and . _ - : / (e.g. support.resolved)"
                )
        columns = [
            "t.trace_id",
            "CASE WHEN t.has_errors THEN 1.0 ELSE 0.0 END AS error",
            "t.duration_ns / 1e6 AS duration_ms",
            "t.total_tokens::DOUBLE AS tokens",
            "t.cost AS cost",
            *(f"{expression} AS {label}" for label, expression in TRACE_LABELS.items()),
        ]
        joins = []
        for i, name in enumerate(named):
            # the first span carrying the attribute (root first, then by start); the substring test
            # skips the JSON parse for spans that cannot have it
            value = (
                f"coalesce(json_extract_string(raw, '$.attributes.\"{name}\"'), "
                f"json_extract_string(raw, '$.resource.attributes.\"{name}\"'))"
            )
            joins.append(
                f"LEFT JOIN (SELECT trace_id, arg_min(v, (parent_id IS NOT NULL, start_ns)) AS v FROM "
                f"(SELECT trace_id, parent_id, start_ns, {value} AS v FROM spans WHERE contains(raw, '{name}')) "
                f"WHERE v IS NOT NULL GROUP BY trace_id) a{i} USING (trace_id)"
            )
            columns.append(f"a{i}.v AS a{i}")
        import numpy as np  # only comparisons want columns as arrays

        data = self.con.execute(
            f"SELECT {', '.join(columns)} FROM traces t {' '.join(joins)} ORDER BY t.trace_id"
        ).fetchnumpy()
        values: dict[str, Any] = {
            "trace_id": _strings(data["trace_id"]),
            **{c: _floats(data[c]) for c in ("error", "duration_ms", "tokens", "cost")},
            **{label: _strings(data[label]) for label in TRACE_LABELS},
        }
        for i, name in enumerate(named):
            # NULL as None (np.ma.filled(…, None) would fill in the array's default, "?")
            column = data[f"a{i}"]
            missing = np.ma.getmaskarray(column)
            values[name] = np.asarray(
                [None if gone else value for value, gone in zip(np.ma.getdata(column), missing, strict=True)],
                dtype=object,
            )
        return values

    def known_traces(self, trace_ids: Iterable[str]) -> set[str]:
        ids = sorted(set(trace_ids))
        rows = self.con.execute(
            "SELECT trace_id FROM traces SEMI JOIN (SELECT unnest(?::VARCHAR[]) AS trace_id) USING (trace_id)",
            [ids],
        ).fetchall()
        return {row[0] for row in rows}

    def span_records(self, spans: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        pairs = sorted(set(spans))
        rows = self.con.execute(
            "SELECT trace_id, span_id, raw FROM spans SEMI JOIN (SELECT unnest(?::VARCHAR[]) AS trace_id, "
            "unnest(?::VARCHAR[]) AS span_id) USING (trace_id, span_id)",
            [[t for t, _ in pairs], [s for _, s in pairs]],
        ).fetchall()
        return {(t, s): raw for t, s, raw in rows}

    def rejects(self, *, limit: int = 100) -> list[dict[str, Any]]:
        return self._rows(
            "SELECT path, line_no, reason, excerpt FROM rejects ORDER BY input_id, line_no LIMIT ?", [limit]
        )

    def inputs(self) -> list[dict[str, Any]]:
        return self._rows(
            "SELECT path, status, spans, rejected, repaired, size FROM inputs ORDER BY input_id"
        )

    # --- lists and views for people (the web app) ----------------------------------------------

    def trace_list(
        self,
        filters: TraceFilters | None = None,
        *,
        sort: SortKey = "start",
        descending: bool = True,
        cursor: str | None = None,
        limit: int = 75,
    ) -> KeysetPage[TraceRow]:
        where, params = self._where(filters)
        page = keyset(
            LIST_SORTS,
            sort,
            "t.trace_id",
            cursor=cursor,
            descending=descending,
            limit=limit,
            bind=_binder(params),
        )
        rows = self._rows(
            f"SELECT {LIST_COLUMNS}, {page.expr} AS sort_value FROM traces t WHERE {where} AND {page.after} "
            f"{page.order}",
            params,
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
        where, params = self._where(filters)
        page = keyset(
            SESSION_SORTS,
            sort,
            "s.session_id",
            cursor=cursor,
            descending=descending,
            limit=limit,
            bind=_binder(params),
        )
        # A session's first and last traces are by start time, ties by trace id; its cost is rounded
        # as each trace's is, so that sums in any order give the same number.
        by = "(t.start_ns, t.trace_id)"
        rows = self._rows(
            f"""WITH s AS (
              SELECT t.session_id, min(t.start_ns) AS start_ns, max(t.end_ns) AS end_ns,
                     max(t.end_ns) - min(t.start_ns) AS duration_ns, count(*) AS traces,
                     sum(t.span_count) AS spans, count(*) FILTER (t.has_errors) AS error_traces,
                     sum({LIST_SORTS["tokens"]}) AS tokens, round(sum(t.cost), 9) AS cost,
                     arg_min(t.trace_id, {by}) FILTER (t.start_ns IS NOT NULL) AS first_trace_id,
                     arg_max(t.trace_id, {by}) FILTER (t.start_ns IS NOT NULL) AS last_trace_id,
                     arg_max(t.root_name, {by}) FILTER (t.start_ns IS NOT NULL) AS name,
                     arg_min(t.input_preview, {by}) FILTER (t.start_ns IS NOT NULL) AS input_preview,
                     arg_max(t.output_preview, {by}) FILTER (t.start_ns IS NOT NULL) AS output_preview
              FROM traces t WHERE {where} AND t.session_id IS NOT NULL GROUP BY t.session_id)
            SELECT s.*, {page.expr} AS sort_value FROM s WHERE {page.after} {page.order}""",
            params,
        )
        return page.page(rows, session_row)

    def trace_stats(self, filters: TraceFilters | None = None) -> TraceStats:
        where, params = self._where(filters)
        row = self._rows(
            f"""SELECT count(*) AS traces, count(DISTINCT t.session_id) AS sessions,
                   coalesce(sum(t.span_count), 0) AS spans, coalesce(sum(t.llm_spans), 0) AS llm_spans,
                   count(*) FILTER (t.has_errors) AS error_traces,
                   count(*) FILTER (t.in_flight_spans > 0) AS running_traces,
                   coalesce(sum({LIST_SORTS["tokens"]}), 0) AS tokens, coalesce(sum(t.cost), 0) AS cost,
                   quantile_cont(t.duration_ns, 0.5) AS p50, quantile_cont(t.duration_ns, 0.95) AS p95
            FROM traces t WHERE {where}""",
            params,
        )[0]
        return trace_stats(row)

    def facet(self, filters: TraceFilters | None, name: FacetName, *, top: int = 50) -> list[FacetValue]:
        own = FACET_FILTERS.get(name)
        if own is None:
            raise StoreError(f"unknown facet {name!r}; use one of {', '.join(FACET_FILTERS)}")
        where, params = self._where(filters.model_copy(update={own: None}) if filters else None)
        if name == "status":
            sql = (
                f"SELECT CASE WHEN t.has_errors THEN 'error' ELSE 'ok' END AS value, count(*) AS traces "
                f"FROM traces t WHERE {where} GROUP BY 1"
            )
        elif name == "sessions":
            sql = (
                f"SELECT t.session_id AS value, count(*) AS traces FROM traces t "
                f"WHERE {where} AND t.session_id IS NOT NULL GROUP BY 1"
            )
        else:
            sql = (
                f"SELECT value, count(*) AS traces FROM (SELECT unnest(t.{own}) AS value FROM traces t "
                f"WHERE {where}) WHERE value IS NOT NULL GROUP BY 1"
            )
        rows = self._rows(f"{sql} ORDER BY traces DESC, value LIMIT ?", [*params, max(1, top)])
        return [FacetValue(value=str(r["value"]), traces=r["traces"]) for r in rows]

    def facets(
        self, filters: TraceFilters | None, names: Sequence[FacetName], *, top: int = 50
    ) -> dict[FacetName, list[FacetValue]]:
        """The facets with no selection of their own count the same traces: one query finds those
        traces once (a text search hands over tens of thousands of ids, and each join costs more
        than the counting) and counts each facet over them."""
        for name in names:
            if name not in FACET_FILTERS:
                raise StoreError(f"unknown facet {name!r}; use one of {', '.join(FACET_FILTERS)}")
        shared = [n for n in names if filters is None or _unset(getattr(filters, FACET_FILTERS[n]))]
        found = {n: self.facet(filters, n, top=top) for n in names if n not in shared or len(shared) < 2}
        if len(shared) < 2:
            return {n: found[n] for n in names}
        where, params = self._where(filters)
        limit = max(1, int(top))
        branches = []
        for name in shared:
            if name == "status":
                counted = "SELECT CASE WHEN has_errors THEN 'error' ELSE 'ok' END AS value FROM hit"
            elif name == "sessions":
                counted = "SELECT session_id AS value FROM hit"
            else:
                counted = f"SELECT unnest({FACET_FILTERS[name]}) AS value FROM hit"
            branches.append(
                f"(SELECT '{name}' AS facet, value, count(*) AS traces FROM ({counted}) "
                f"WHERE value IS NOT NULL GROUP BY value ORDER BY traces DESC, value LIMIT {limit})"
            )
        rows = self._rows(
            "WITH hit AS MATERIALIZED (SELECT t.has_errors, t.session_id, t.services, t.agents, t.models, "
            f"t.tools, t.error_templates FROM traces t WHERE {where}) {' UNION ALL '.join(branches)}",
            params,
        )
        for name in shared:
            values = [(r["traces"], str(r["value"])) for r in rows if r["facet"] == name]
            values.sort(key=lambda v: (-v[0], v[1]))
            found[name] = [FacetValue(value=value, traces=traces) for traces, value in values]
        return {n: found[n] for n in names}

    def traces_containing(self, text: str, among: Sequence[str] | None = None) -> list[str]:
        where = "regexp_matches(raw, ?, 'i')"
        if among is not None:
            where += f" AND trace_id IN (SELECT trace_id FROM {self._id_table(among)})"
        rows = self.con.execute(f"SELECT DISTINCT trace_id FROM spans WHERE {where}", [regex.escape(text)])
        return [row[0] for row in rows.fetchall()]

    def _id_table(self, ids: Sequence[str]) -> str:
        """The name of a table of `ids` on this connection: a list this long is faster joined as an
        Arrow table than bound as a parameter (a text search can hand over tens of thousands), and
        the table of a list is made once while the list lives (the app hands the same list to each
        query of a page)."""
        table = _ID_TABLES.get(ids)
        name = f"halo_ids_{id(table):x}"
        if self._registered != name:  # one at a time: a connection runs one query at a time
            if self._registered:
                self.con.unregister(self._registered)
            self.con.register(name, table)
            self._registered = name
        return name

    def latest_trace(self, filters: TraceFilters | None = None) -> str | None:
        where, params = self._where(filters)
        found = self.first_row(
            f"SELECT t.trace_id FROM traces t WHERE {where} ORDER BY t.start_ns DESC NULLS LAST, t.trace_id LIMIT 1",
            params,
        )
        return found[0] if found else None

    def trace_spans(self, trace_id: str) -> TraceSpans:
        rows = self._rows(
            """SELECT span_id, parent_id, name, kind, status, left(status_message, 300) AS status_message,
                   start_ns AS start_ms, duration_ns / 1e6 AS duration_ms, model, agent_name AS agent,
                   tool_name AS tool, coalesce(total_tokens, input_tokens + output_tokens) AS tokens, cost
            FROM spans WHERE trace_id = ? ORDER BY start_ns NULLS LAST, span_id""",
            [trace_id],
        )
        if not rows:
            raise StoreError(self._unknown_trace(trace_id))
        return trace_spans(trace_id, rows)

    def span_record(self, trace_id: str, span_id: str) -> dict[str, Any]:
        rows = self._rows(
            "SELECT * EXCLUDE (input_id, line_no) FROM spans WHERE trace_id = ? AND span_id = ? LIMIT 1",
            [trace_id, span_id],
        )
        if not rows:
            raise StoreError(f"no span {span_id!r} in trace {trace_id!r}")
        return rows[0]

    def conversation_records(self, trace_id: str) -> ConversationRecords:
        llm = self._rows(
            """SELECT span_id, parent_id, name, status, status_message, start_ns, model, finish_reason, cost, raw
            FROM spans WHERE trace_id = ? AND kind = 'LLM' ORDER BY start_ns NULLS LAST, span_id""",
            [trace_id],
        )
        tools = self._rows(
            """SELECT span_id, tool_name, tool_call_id, status, status_message, tool_result
            FROM spans WHERE trace_id = ? AND kind = 'TOOL' ORDER BY start_ns NULLS LAST, span_id""",
            [trace_id],
        )
        roots = self._rows(
            """SELECT span_id, name, kind, status, status_message, input_value, output_value
            FROM spans WHERE trace_id = ? AND (parent_id IS NULL OR is_orphan) ORDER BY start_ns NULLS LAST, span_id""",
            [trace_id],
        )
        if not (llm or tools or roots):
            raise StoreError(self._unknown_trace(trace_id))
        return ConversationRecords(llm=llm, tools=tools, roots=roots)

    def copy_traces(self, filters: TraceFilters | None, target: Path, *, note: str) -> int:
        if target.exists():
            raise StoreError(f"{target}: already exists")
        DuckDBStore.connect(str(target)).close()  # creates the schema
        where, params = self._where(filters)
        con = self.con.cursor()
        try:
            con.execute("ATTACH ? AS halo_copy", [str(target)])
            try:
                con.execute("BEGIN TRANSACTION")
                con.execute(
                    f"CREATE TEMP TABLE halo_selected AS SELECT t.trace_id FROM traces t WHERE {where}",
                    params,
                )
                for table in ("traces", "spans"):
                    con.execute(
                        f"INSERT INTO halo_copy.{table} SELECT * FROM {table} SEMI JOIN halo_selected USING (trace_id)"
                    )
                con.execute(COPY_INPUT.format(prefix="halo_copy."), [note])
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

    def fill_copy(self, batches: Iterable[tuple[str, Any]], *, note: str) -> None:
        """Fill this new store with another backend's copy of some traces: `batches` of (table, Arrow
        table of its rows) for `traces` and `spans`, then `note` as its one input, in one transaction.
        Lists the other backend holds empty where DuckDB has NULL come in as NULL."""
        with self.transaction():
            for table, data in batches:
                columns = {"traces": TRACE_COLUMNS, "spans": SPAN_COLUMNS}[table]
                names = ", ".join(c.name for c in columns)
                values = ", ".join(
                    f"CASE WHEN len({c.name}) = 0 THEN NULL ELSE {c.name} END"
                    if c.type in ("text[]", "tool_calls")
                    else c.name
                    for c in columns
                )
                self.con.register("halo_copied", data)
                try:
                    self.con.execute(f"INSERT INTO {table} ({names}) SELECT {values} FROM halo_copied")
                finally:
                    self.con.unregister("halo_copied")
            self.con.execute(COPY_INPUT.format(prefix=""), [note])

    def _where(self, filters: TraceFilters | None) -> tuple[str, list[Any]]:
        if filters is None:
            return "true", []
        clauses: list[str] = []
        params: list[Any] = []

        def add(clause: str, *values: Any) -> None:
            clauses.append(clause)
            params.extend(values)

        if filters.has_errors is not None:
            add("t.has_errors = ?", filters.has_errors)
        for field in ("services", "agents", "models", "tools"):
            values = getattr(filters, field)
            if values:
                add(f"list_has_any(t.{field}, ?::VARCHAR[])", values)
        for field, column in (("session_ids", "session_id"), ("user_ids", "user_id")):
            values = getattr(filters, field)
            if values:
                add(f"t.{column} IN (SELECT unnest(?::VARCHAR[]))", values)
        if filters.trace_ids is not None:  # as a join: a text search can hand over thousands of ids
            if len(filters.trace_ids) > _ID_TABLES.threshold:
                add(f"t.trace_id IN (SELECT trace_id FROM {self._id_table(filters.trace_ids)})")
            else:
                add("t.trace_id IN (SELECT unnest(?::VARCHAR[]))", filters.trace_ids)
        if filters.error_templates:
            add("list_has_any(t.error_templates, ?::VARCHAR[])", filters.error_templates)
        if filters.since:
            add("t.start_ns >= ?", iso_to_ns(filters.since))
        if filters.until:
            add("t.start_ns < ?", iso_to_ns(filters.until))
        if filters.min_duration_ms is not None:
            add("t.duration_ns >= ?", int(filters.min_duration_ms * 1e6))
        if filters.max_duration_ms is not None:
            add("t.duration_ns <= ?", int(filters.max_duration_ms * 1e6))
        if filters.min_cost is not None:
            add("t.cost >= ?", filters.min_cost)
        if filters.regex:
            _compile_re2(self.con, filters.regex)
            matches, match_params = _raw_matches(filters.regex)
            add(f"t.trace_id IN (SELECT trace_id FROM spans WHERE {matches})", *match_params)
        for text in (filters.text, filters.project_id):
            if text:
                add(
                    "t.trace_id IN (SELECT trace_id FROM spans WHERE regexp_matches(raw, ?, 'i'))",
                    regex.escape(text),
                )
        return " AND ".join(clauses) or "true", params

    def resolve_trace_id(self, text: str) -> str:
        """The trace a user means: its id as stored, as the source wrote it (hex in any case, `0x`), or
        any prefix that only one trace id starts with. Unknown and ambiguous ids are a `StoreError`."""
        candidates = list(dict.fromkeys(c for c in (text, normalize_id(text)) if c))
        for candidate in candidates:
            if self.first_row("SELECT 1 FROM traces WHERE trace_id = ?", [candidate]):
                return candidate
        for candidate in candidates:
            rows = self._rows(
                "SELECT trace_id FROM traces WHERE starts_with(trace_id, ?) ORDER BY trace_id LIMIT 6",
                [candidate],
            )
            if len(rows) == 1:
                return str(rows[0]["trace_id"])
            if rows:
                shown = ", ".join(r["trace_id"] for r in rows[:5])
                more = " and more" if len(rows) > 5 else ""
                raise StoreError(f"trace id {text!r} is ambiguous: it starts {shown}{more}; give more of it")
        raise StoreError(self._unknown_trace(text))

    def _select(self, filters: TraceFilters | None) -> tuple[str, str]:
        """The traces that match `filters` as a table name for queries over traces, and a clause after
        `FROM spans` that keeps a query to them. Unfiltered, that is `traces` itself and no clause; else
        a temporary table of the few columns the overview reads (copying every rollup column of
        every trace cost more than the queries that read it)."""
        where, params = self._where(filters)
        if where == "true":
            return "traces", ""
        self.con.execute(
            f"""CREATE OR REPLACE TEMP TABLE selected AS
            SELECT trace_id, span_count, has_errors, error_spans, start_ns, end_ns, input_tokens, output_tokens,
                   cost, orphan_spans, in_flight_spans, raw_bytes, services, agents
            FROM traces t WHERE {where}""",
            params,
        )
        return "selected", "SEMI JOIN selected USING (trace_id)"

    def _unknown_trace(self, trace_id: str) -> str:
        similar = self._rows(
            "SELECT trace_id FROM traces WHERE starts_with(trace_id, ?) LIMIT 3", [trace_id[:6]]
        )
        hint = f"; similar ids: {', '.join(r['trace_id'] for r in similar)}" if similar else ""
        return f"no trace {trace_id!r} in the store{hint}"

    def _rows(self, sql: str, params: Any = None, *, timeout: float | None = None) -> list[dict[str, Any]]:
        cursor = self._execute(sql, params, timeout)
        columns = [d[0] for d in cursor.description or ()]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]

    def _execute(self, sql: str, params: Any, timeout: float | None) -> duckdb.DuckDBPyConnection:
        if timeout is None:
            return self.con.execute(sql, params)
        timer = threading.Timer(timeout, self.con.interrupt)
        timer.start()
        try:
            return self.con.execute(sql, params)
        except duckdb.InterruptException as exc:
            raise _Timeout() from exc
        finally:
            timer.cancel()


class _Timeout(Exception):
    pass


def _binder(params: list[Any]) -> Callable[[Any], str]:
    """Binds a value as a `?` placeholder, appending it to `params`."""

    def bind(value: Any) -> str:
        params.append(value)
        return "?"

    return bind


# Functions untrusted SQL may not call: they show the store's path, files or settings, or run SQL
# given as text (which would get past this check).
_REFUSED_FUNCTIONS = frozenset(
    {
        "current_setting",
        "getenv",
        "query",
        "query_table",
        "json_execute_serialized_sql",
        "which_secret",
        "checkpoint",
        "force_checkpoint",
    }
)
# System table functions that only describe the tables and SQL, not the store's files.
_ALLOWED_SYSTEM = frozenset(
    {
        "duckdb_tables",
        "duckdb_columns",
        "duckdb_views",
        "duckdb_functions",
        "duckdb_types",
        "duckdb_keywords",
        "duckdb_schemas",
        "duckdb_constraints",
        "duckdb_indexes",
        "pragma_table_info",
        "pragma_show",
    }
)


def _allowed_function(name: str) -> bool:
    lowered = name.lower()
    if lowered in _REFUSED_FUNCTIONS:
        return False
    return not lowered.startswith(("duckdb_", "pragma_")) or lowered in _ALLOWED_SYSTEM


def _function_names(tree: Any) -> set[str]:
    """Every function a serialised parse tree calls (walked without recursion: trees can be deep)."""
    names: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            name = node.get("function_name")
            if isinstance(name, str):
                names.add(name)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return names


def _capped_column(position: int, kind: str, cut: int) -> str:
    """Column `position` of the query with long values cut inside the database, so a huge value is
    never fetched: text and blobs to `cut` characters, nested values as JSON text."""
    column = f"#{position}"
    upper = kind.upper()
    if upper in ("VARCHAR", "JSON"):
        text = f"{column}::VARCHAR"
    elif upper == "BLOB":
        return f"CASE WHEN octet_length({column}) > {cut} THEN {column}[1:{cut}] ELSE {column} END"
    elif upper.endswith("]") or upper.startswith(("STRUCT", "MAP", "UNION")):
        text = f"to_json({column})::VARCHAR"
    else:
        return column
    return f"CASE WHEN strlen({text}) > {cut} THEN left({text}, {cut}) || '{CUT_MARK}' ELSE {text} END"


def _value(value: Any, kind: str) -> Any:
    """A fetched value as plain JSON-able data; nested values come back from their JSON text."""
    upper = kind.upper()
    if isinstance(value, str) and (upper.endswith("]") or upper.startswith(("STRUCT", "MAP", "UNION"))):
        if value.endswith(CUT_MARK):
            return value
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return plain(value)


def _attached_for_appends(path: str) -> duckdb.DuckDBPyConnection | None:
    """The store attached with row groups of `APPEND_ROW_GROUP_ROWS` (a setting of an attached
    database only), or None when this process already has it open: then the caller connects as any
    opener does, which shares that database (the web app's store), or waits while another append
    connection holds it."""
    con = duckdb.connect(":memory:", config={"temp_directory": f"{path}.tmp"})
    try:
        con.execute(f"ATTACH ? AS {APPEND_DATABASE} (ROW_GROUP_SIZE {APPEND_ROW_GROUP_ROWS})", [path])
        con.execute(f"USE {APPEND_DATABASE}")
    except duckdb.ResourceInUseException:
        con.close()
        return None
    except BaseException:
        con.close()
        raise
    return con


def _remove_staging_files(path: str) -> None:
    """Staging files an ingest killed half-way left beside the store (older versions staged decoded
    spans in `<store>.<input>.staging.jsonl`). Only the process holding the store open for writing
    could be using one, and that is this one."""
    store = Path(path)
    for leftover in store.parent.glob(f"{glob.escape(store.name)}.*.staging.jsonl"):
        leftover.unlink(missing_ok=True)


# Labels of a trace a comparison can group or stratify by (`trace_values`).
TRACE_LABELS = {
    "service": "array_to_string(list_sort(t.services), ',')",
    "agent": "array_to_string(list_sort(t.agents), ',')",
    "root": "coalesce(t.root_name, '')",
    "model": "array_to_string(list_sort(t.models), ',')",
}
ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,200}")


def _floats(column: Any) -> Any:
    """A fetched numeric column as float64, NULL as NaN (DuckDB hands nullable columns over masked)."""
    import numpy as np

    return np.ma.filled(np.ma.asarray(column).astype(np.float64), np.nan)


def _strings(column: Any) -> Any:
    """A fetched text column as a numpy array of str (None as the empty string)."""
    import numpy as np

    return np.array(["" if v is None else str(v) for v in np.asarray(column, dtype=object)], dtype=str)


def _compile(pattern: str) -> Any:
    try:
        return regex.compile(pattern)
    except regex.error as exc:
        raise StoreError(f"invalid regex {pattern!r}: {exc}") from exc


def _raw_matches(pattern: str) -> tuple[str, list[str]]:
    """SQL (and its parameters) for "the raw span matches `pattern`". When every match must contain
    one of a few literal strings, DuckDB first checks for those with its fast substring search, so
    the regex runs only on the few spans that could match."""
    literals = required_literals(pattern)
    if not literals:
        return "regexp_matches(raw, ?)", [pattern]
    return f"({' OR '.join('contains(raw, ?)' for _ in literals)}) AND regexp_matches(raw, ?)", [
        *literals,
        pattern,
    ]


def required_literals(pattern: str) -> list[str] | None:
    """Strings of which every match of `pattern` contains at least one; None when there is no short
    such list (case-insensitive patterns, or a part made only of classes and wildcards)."""
    if "[:" in pattern:  # an RE2 character class like [[:digit:]], which Python reads as literals
        return None
    try:
        with warnings.catch_warnings():  # Python's parser warns about syntax RE2 reads differently
            warnings.simplefilter("ignore")
            parsed = re._parser.parse(pattern)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - RE2-only syntax, or anything else: no pre-filter, same results
        return None
    if parsed.state.flags & re.IGNORECASE:
        return None
    found = _literals_in(parsed)
    return sorted(found) if found and len(found) <= 16 and min(map(len, found)) >= 3 else None


def _literals_in(sequence: Any) -> set[str] | None:
    """The best set of alternatives one of which a match of `sequence` must contain, if any."""
    constants = re._constants  # type: ignore[attr-defined]
    candidates: list[set[str]] = []
    run: list[str] = []
    for op, value in list(sequence) + [(None, None)]:
        if op is constants.LITERAL:
            run.append(chr(value))
            continue
        if run:
            candidates.append({"".join(run)})
            run = []
        inner: set[str] | None = None
        if op is constants.SUBPATTERN and not value[1] & re.IGNORECASE:
            inner = _literals_in(value[3])
        elif (
            op in (constants.MAX_REPEAT, constants.MIN_REPEAT, getattr(constants, "POSSESSIVE_REPEAT", None))
            and value[0] >= 1
        ):
            inner = _literals_in(value[2])
        elif op is getattr(constants, "ATOMIC_GROUP", None):
            inner = _literals_in(value)
        elif op is constants.BRANCH:
            branches = [_literals_in(branch) for branch in value[1]]
            inner = set().union(*branches) if all(branches) else None  # type: ignore[arg-type]
        if inner:
            candidates.append(inner)
    # The set whose shortest member is longest is the most selective.
    return max(candidates, key=lambda c: min(map(len, c)), default=None)


def _compile_re2(con: duckdb.DuckDBPyConnection, pattern: str) -> None:
    try:
        con.execute("SELECT regexp_matches('', ?)", [pattern]).fetchall()
    except duckdb.Error as exc:
        raise StoreError(
            f"invalid regex {pattern!r} (dataset-wide filters use RE2 syntax: no lookarounds "
            f"or backreferences): {first_line(exc)}"
        ) from exc


def _unset(value: Any) -> bool:
    """A filter field that selects nothing (None, or an empty list, which `_where` skips)."""
    return value is None or (isinstance(value, list) and not value)


class _IdTables:
    """Arrow tables of the long trace-id lists queries filter by, one per list while it is among the
    last few used (keyed by the list itself: the app hands one list to every query of a page)."""

    threshold = 1_000  # shorter lists are bound as a parameter
    size = 4

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tables: list[tuple[Sequence[str], Any]] = []

    def get(self, ids: Sequence[str]) -> Any:
        import pyarrow as pa  # only long id lists (the app's text searches) need it

        with self._lock:
            for i, (known, table) in enumerate(self._tables):
                if known is ids:
                    self._tables.append(self._tables.pop(i))
                    return table
        table = pa.table({"trace_id": pa.array(ids, type=pa.string())})
        with self._lock:
            self._tables.append((ids, table))
            del self._tables[: -self.size]
        return table


_ID_TABLES = _IdTables()
