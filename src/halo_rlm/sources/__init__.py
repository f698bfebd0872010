"""Where traces come from besides local files: Langfuse and Arize Phoenix over their APIs. Every
source writes through the store's public ingest API (`TraceStore.ingest_records`); the live OTLP
receiver is `halo_rlm.collect`."""

from halo_rlm.sources.http import NotFound, SourceError
from halo_rlm.sources.imports import ImportReport, Page, Source, run_import
from halo_rlm.sources.langfuse import LangfuseFilters, LangfuseSource
from halo_rlm.sources.phoenix import PhoenixSource

__all__ = [
    "ImportReport",
    "LangfuseFilters",
    "LangfuseSource",
    "NotFound",
    "Page",
    "PhoenixSource",
    "Source",
    "SourceError",
    "run_import",
]
