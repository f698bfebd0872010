"""The trace store interface every backend implements (DuckDB and ClickHouse).

A store holds canonical spans (each with its raw record), per-trace rollups, rejected records and
the inputs they came from (`store.schema`). It has four faces:

- the read API (`count_traces`, `query_traces`, `trace_summary`, `overview`, `durations`,
  `model_usage`, `error_groups`, `view_trace`, `view_spans`, `search`, `spans`, `sql`, `rejects`,
  `inputs`), returning the typed results of `store.results`, and the lists and views people page
  through (`trace_list`, `session_list`, `trace_stats`, `facet`, `traces_containing`,
  `latest_trace`, `trace_spans`, `span_record`, `conversation_records`, `copy_traces`), which the web
  app serves on every backend;
- the ingest API (`ingest` for files, `ingest_records` for records a collector or importer parsed,
  `ingest_lines` for JSON lines in memory);
- `run`, which does store work off the event loop on a connection of its own, for the engine and
  the web server;
- its SQL `dialect`, in which HALO's own queries (detectors, recounts) are written: a report records
  the dialect of each query it carries.

`TraceStore.open(target)` picks the backend from the target: a file path is a DuckDB store;
backends with a URL scheme (`chdb:`, `clickhouse://`) register themselves in `BACKENDS`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

import orjson

from halo_rlm.store.dialect import Dialect
from halo_rlm.store.results import (
    ConversationRecords,
    Durations,
    ErrorGroup,
    FacetName,
    FacetValue,
    IngestReport,
    KeysetPage,
    ModelUsage,
    Overview,
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

if TYPE_CHECKING:
    from halo_rlm.files import InputFile

__all__ = ["BACKENDS", "StoreError", "StrictError", "TraceStore", "backend_for", "store_scheme"]

T = TypeVar("T")

# URL scheme -> module that defines the backend (imported on first use: backends may need extras).
BACKENDS = {
    "chdb": "halo_rlm.store.clickhouse_store",
    "clickhouse": "halo_rlm.store.clickhouse_store",
    "clickhouses": "halo_rlm.store.clickhouse_store",
}


class StoreError(Exception):
    """A problem with the store or its inputs; the message says what and where."""


class StrictError(StoreError):
    """`--strict` met a bad record."""


class TraceStore(ABC):
    """A trace store. Open one with `TraceStore.open(path_or_url)`; use it as a context manager."""

    path: str
    read_only: bool
    dialect: ClassVar[Dialect]  # the SQL of `sql()` and of HALO's own queries (detectors, recounts)
    schemes: ClassVar[tuple[str, ...]] = ()
    _registry: ClassVar[dict[str, type[TraceStore]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for scheme in cls.schemes:
            TraceStore._registry[scheme] = cls

    @classmethod
    def open(
        cls, target: str | Path, *, read_only: bool = False, lock_timeout: float = 10.0, appends: bool = False
    ) -> TraceStore:
        """Open (or create) a store: a file path opens DuckDB; `chdb:PATH` or `clickhouse://…` a
        ClickHouse store. A read-only store is the one untrusted SQL may run on. `appends` says the
        store is opened for one of a stream of small ingests (a collector's writes), which a backend
        may lay out for that."""
        backend = cls if cls is not TraceStore else backend_for(str(target))
        return backend.connect(str(target), read_only=read_only, lock_timeout=lock_timeout, appends=appends)

    @classmethod
    @abstractmethod
    def connect(cls, target: str, *, read_only: bool, lock_timeout: float, appends: bool) -> Self:
        """Open this backend's store at `target`."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- working off the event loop ----------------------------------------------------------

    @abstractmethod
    def borrow(self) -> AbstractContextManager[Self]:
        """A connection of its own for one piece of work in another thread, pooled for reuse."""

    @abstractmethod
    def interrupt(self) -> None:
        """Stop the query running on this connection (from another thread)."""

    async def run(self, work: Callable[[Self], T], timeout: float | None = None) -> T:
        """Run store work in a worker thread on a pooled connection of its own, so the event loop
        never waits on a query; past `timeout` seconds its query is interrupted and TimeoutError
        raised."""
        import asyncio  # only async callers (the engine, the web app) pay for loading it

        connection: list[Self] = []

        def on_borrowed_connection() -> T:
            with self.borrow() as borrowed:
                connection.append(borrowed)
                return work(borrowed)

        try:
            return await asyncio.wait_for(asyncio.to_thread(on_borrowed_connection), timeout)
        except TimeoutError:
            if connection:
                connection[0].interrupt()
            raise

    # --- ingest --------------------------------------------------------------------------------

    @abstractmethod
    def ingest(
        self,
        paths: Sequence[str | Path],
        *,
        strict: bool = False,
        progress: Callable[[InputFile], Callable[[int, int], None] | None] | None = None,
    ) -> IngestReport:
        """Ingest files, directories, globs or "-" (stdin). Files already ingested whole are skipped,
        a file ingested part-way is finished, a file that grew is read from where it ended."""

    @abstractmethod
    def ingest_records(self, records: Iterable[Any], *, source: str) -> IngestReport:
        """Ingest already-parsed records (OTLP requests, span dicts, ...) from a collector or
        importer. `source` names them in the inputs table; each call is one input."""

    def ingest_lines(self, data: bytes, *, source: str) -> IngestReport:
        """Ingest JSON lines held in memory (each ending in a line break; the collector's log), as
        `ingest_records` would ingest each line's record. A backend may read them without parsing
        each line in Python first."""
        return self.ingest_records(
            (orjson.Fragment(line) for line in data.split(b"\n") if line), source=source
        )

    # --- reading -------------------------------------------------------------------------------

    @abstractmethod
    def count_traces(self, filters: TraceFilters | None = None) -> int: ...

    @abstractmethod
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

    @abstractmethod
    def trace_summary(self, trace_id: str) -> TraceSummary: ...

    @abstractmethod
    def overview(self, filters: TraceFilters | None = None, *, top: int = 20) -> Overview:
        """Totals, the distinct services/agents/models/tools (most traces first) and the top error
        groups, over the traces that match `filters`. Counts are exact, not sampled."""

    @abstractmethod
    def durations(self, filters: TraceFilters | None = None, *, top: int = 20) -> list[Durations]:
        """p50, p95 and longest durations per agent (its AGENT spans), model (LLM spans) and tool
        (TOOL spans) over the traces that match `filters`: for each, the `top` names with the most
        spans, most first."""

    @abstractmethod
    def model_usage(self, filters: TraceFilters | None = None) -> list[ModelUsage]:
        """Per model, its LLM calls' tokens and reported cost, and the tokens of calls that reported
        no cost, over the traces that match `filters`; most calls first."""

    @abstractmethod
    def error_groups(self, filters: TraceFilters | None = None, *, top: int = 20) -> list[ErrorGroup]:
        """Error spans grouped by where they happened and by message template, most traces first."""

    @abstractmethod
    def view_trace(
        self, trace_id: str, *, budget_bytes: int = 150_000, value_chars: int = 4_096
    ) -> TraceView:
        """All spans of a trace in tree order, each value cut to `value_chars` (head and tail kept).
        Over `budget_bytes`, a summary of the trace comes back instead of its spans."""

    @abstractmethod
    def view_spans(
        self,
        trace_id: str,
        span_ids: Sequence[str],
        *,
        budget_bytes: int = 150_000,
        value_chars: int = 16_384,
    ) -> TraceView:
        """Chosen spans of a trace, with a larger per-value allowance than `view_trace`."""

    @abstractmethod
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
        the whole dataset narrowed by `filters`."""

    @abstractmethod
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
        """Canonical span rows (no raw record) matching every given condition, oldest first."""

    @abstractmethod
    def sql(
        self, query: str, *, max_rows: int = 200, max_bytes: int = 50_000, timeout: float = 10.0
    ) -> SqlResult:
        """One read-only SELECT in `dialect`, capped in rows, bytes and time. Only a store opened
        read-only runs it."""

    @abstractmethod
    def query(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        """Rows of SQL written by HALO itself in `dialect` (detectors). Untrusted SQL goes through `sql()`."""

    @abstractmethod
    def known_traces(self, trace_ids: Iterable[str]) -> set[str]:
        """Which of these trace ids are in the store."""

    @abstractmethod
    def span_records(self, spans: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """The raw record of each (trace id, span id) that is in the store."""

    def recount(self, query: str) -> int:
        """How many distinct traces a query's `trace_id` column holds: the check of a finding's count.
        The query is untrusted (it may come from a report file), so it runs through `sql()`."""
        result = self.sql(f"SELECT count(DISTINCT trace_id) FROM ({query.rstrip().rstrip(';')})", max_rows=1)
        return int(result.rows[0][0])

    def matching_traces(self, query: str, *, timeout: float = 120.0) -> set[str]:
        """Every distinct trace id a query's `trace_id` column holds: which traces a finding's query
        affects, for comparing two stores. Untrusted like `recount`, so it runs through `sql()`."""
        result = self.sql(
            f"SELECT DISTINCT trace_id FROM ({query.rstrip().rstrip(';')})",
            max_rows=1 << 40,
            max_bytes=1 << 62,
            timeout=timeout,
        )
        return {str(row[0]) for row in result.rows}

    @abstractmethod
    def trace_values(self, attributes: Sequence[str] = ()) -> dict[str, Any]:
        """One value per trace, as aligned numpy arrays, for comparing trace sets: `trace_id`, `error`
        (1.0 when a span failed), `duration_ms`, `tokens` and `cost` (NaN when unknown), the labels
        `service`, `agent`, `root` and `model`, and for each name in `attributes` (one of those labels,
        or a span or resource attribute key, taken from the first span that has it, root first) its
        value as text (None when no span has it)."""

    @abstractmethod
    def rejects(self, *, limit: int = 100) -> list[dict[str, Any]]: ...

    @abstractmethod
    def inputs(self) -> list[dict[str, Any]]: ...

    # --- lists and views for people (the web app) ----------------------------------------------

    @abstractmethod
    def trace_list(
        self,
        filters: TraceFilters | None = None,
        *,
        sort: SortKey = "start",
        descending: bool = True,
        cursor: str | None = None,
        limit: int = 75,
    ) -> KeysetPage[TraceRow]:
        """One page of traces in `sort` order (ties by trace id), after `cursor`, with each trace's
        input and output previews. Pages never shift when traces arrive, and none is capped."""

    @abstractmethod
    def session_list(
        self,
        filters: TraceFilters | None = None,
        *,
        sort: SessionSortKey = "last",
        descending: bool = True,
        cursor: str | None = None,
        limit: int = 75,
    ) -> KeysetPage[SessionRow]:
        """One page of sessions: the matching traces grouped by session id."""

    @abstractmethod
    def trace_stats(self, filters: TraceFilters | None = None) -> TraceStats:
        """Totals over every matching trace: traces, sessions, spans, errors, tokens, cost, p50/p95."""

    @abstractmethod
    def facet(self, filters: TraceFilters | None, name: FacetName, *, top: int = 50) -> list[FacetValue]:
        """The most common values of one facet, counted over the traces the filters match *without*
        the facet's own selection, so a list can offer "this value too" with what it would add."""

    def facets(
        self, filters: TraceFilters | None, names: Sequence[FacetName], *, top: int = 50
    ) -> dict[FacetName, list[FacetValue]]:
        """Several facets at once, each as `facet` counts it; a backend may count those whose own
        selection is empty (so whose traces are the same) over one pass of the filters."""
        return {name: self.facet(filters, name, top=top) for name in names}

    @abstractmethod
    def traces_containing(self, text: str, among: Sequence[str] | None = None) -> list[str]:
        """The ids of traces with a span whose record contains `text`, in any case (messages,
        inputs, outputs, errors, attributes); only those of `among` when given."""

    @abstractmethod
    def latest_trace(self, filters: TraceFilters | None = None) -> str | None:
        """The matching trace that started last."""

    @abstractmethod
    def trace_spans(self, trace_id: str) -> TraceSpans:
        """Every span of a trace, without records, in start order: what a tree and a waterfall draw."""

    @abstractmethod
    def span_record(self, trace_id: str, span_id: str) -> dict[str, Any]:
        """One span's canonical columns and its raw record (`raw`)."""

    @abstractmethod
    def conversation_records(self, trace_id: str) -> ConversationRecords:
        """The spans a trace's conversation is rebuilt from."""

    @abstractmethod
    def copy_traces(self, filters: TraceFilters | None, target: Path, *, note: str) -> int:
        """Copy the matching traces into a new DuckDB store file at `target` (an analysis's own,
        unchanging copy); returns how many. `note` is recorded as the copy's input."""


def store_scheme(target: str) -> str:
    """The backend scheme a store target names (`chdb`, `clickhouse`, ...), or "" for a DuckDB file."""
    scheme = target.split(":", 1)[0].lower() if ":" in target and not Path(target).exists() else ""
    return scheme if scheme in BACKENDS else ""


def backend_for(target: str) -> type[TraceStore]:
    """The backend class for a store target: by URL scheme, else DuckDB (a file path)."""
    scheme = store_scheme(target)
    module = BACKENDS.get(scheme)
    if module is not None:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise StoreError(
                f"{scheme}: stores need HALO's clickhouse extra: pip install 'halo-rlm[clickhouse]' ({exc})"
            ) from exc
        return TraceStore._registry[scheme]
    return TraceStore._registry["duckdb"]
