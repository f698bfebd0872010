"""The trace store: one interface (`TraceStore`, in `store.base`), its typed results, and its
backends. DuckDB (`store.duckdb_store`) is the default; other backends load on first use of their
URL scheme. Only this package speaks SQL to a database."""

from halo_rlm.store.base import StoreError, StrictError, TraceStore
from halo_rlm.store.duckdb_store import DuckDBStore
from halo_rlm.store.results import (
    Count,
    Durations,
    ErrorGroup,
    IngestReport,
    InputReport,
    Match,
    ModelUsage,
    OversizedTrace,
    Overview,
    SearchResult,
    SortKey,
    SpanView,
    SqlResult,
    TraceFilters,
    TracePage,
    TraceSummary,
    TraceView,
)

__all__ = [
    "Count",
    "DuckDBStore",
    "Durations",
    "ErrorGroup",
    "IngestReport",
    "InputReport",
    "Match",
    "ModelUsage",
    "OversizedTrace",
    "Overview",
    "SearchResult",
    "SortKey",
    "SpanView",
    "SqlResult",
    "StoreError",
    "StrictError",
    "TraceFilters",
    "TracePage",
    "TraceStore",
    "TraceSummary",
    "TraceView",
]
