"""Importing traces from the services teams keep them in (Langfuse, Phoenix) into a trace store.

A source (`sources.langfuse.LangfuseSource`, `sources.phoenix.PhoenixSource`) turns its API's pages
into flat spans (over `sources.http`); `run_import` writes page after page into the store (and
optionally a JSONL file) and keeps its place in a small JSON file beside the store, so an
interrupted import carries on where it stopped and a later one fetches only what is new.

Re-reading a page is harmless: the store merges spans with the same trace and span id.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import orjson

from halo_rlm.store import TraceStore, paths
from halo_rlm.utils import iso_ms, iso_to_ns

__all__ = ["ImportReport", "Page", "Source", "run_import"]

# A later import starts this far before the previous one ended: spans are written when they end, so a
# long-running one can appear after an import whose window already covered its start time.
LATE_ARRIVALS = timedelta(hours=1)


@dataclass
class Page:
    """One page of a source, mapped to flat spans."""

    spans: list[dict[str, Any]]
    # Where to continue after this page (JSON-able; the source's own cursor or page number), or None
    # when this was the last page.
    resume: dict[str, Any] | None
    skipped: list[str] = field(default_factory=list)  # records that are not spans, and why
    total: int | None = None  # the number of records in the whole window, when the source says


class Source(Protocol):
    kind: str  # "langfuse" or "phoenix"
    url: str  # where the traces come from, as shown to people (no credentials)
    api: str  # which API generation was used, once known

    def identity(self) -> dict[str, Any]:
        """What makes two imports 'the same query' for resuming (filters, project); no secrets."""
        ...

    def pages(self, since: str | None, until: str, resume: dict[str, Any] | None) -> Iterator[Page]:
        """Pages of spans that started in [since, until), from `resume` on (None: the beginning)."""
        ...

    def close(self) -> None: ...


@dataclass
class ImportReport:
    store: str
    source: str
    url: str
    api: str = ""
    since: str | None = None
    until: str | None = None
    spans: int = 0  # spans written in this run
    duplicates: int = 0  # of those, spans the store already had (merged)
    skipped: int = 0  # records that could not be read as spans
    skip_reasons: dict[str, int] = field(default_factory=dict)
    pages: int = 0
    resumed: bool = False  # continued an interrupted import
    complete: bool = False  # reached the end of the window
    limited: bool = False  # stopped at --limit; the next run continues
    out: str | None = None


def run_import(
    source: Source,
    store_path: str | Path,
    *,
    since: str | None = None,
    until: str | None = None,
    limit: int | None = None,
    out: str | Path | None = None,
    fresh: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
) -> ImportReport:
    """Import the spans that started in [since, until) into the store at `store_path`.

    Without `fresh`, an import of the same query into the same store resumes an interrupted run from
    its last page, or starts a little before where the last complete run ended (`LATE_ARRIVALS`).
    `until` defaults to now, fixed when the run starts, so pages do not shift while new spans arrive.
    `limit` caps the spans written in this run; the next run carries on from there. `progress` is
    called after every page with the spans written so far and the source's total, when known."""
    state = ResumeState(
        paths.beside(store_path, ".imports.json"),
        store_exists=paths.is_url(str(store_path)) or Path(store_path).exists(),
    )
    key = state.key(source, since, until)
    entry = {} if fresh else state.get(key)
    report = ImportReport(str(store_path), source.kind, source.url, out=str(out) if out else None)
    if entry.get("pending"):
        report.since, report.until, resume = (entry["pending"][k] for k in ("since", "until", "resume"))
        report.resumed = True
    else:
        report.since, report.until, resume = (
            _start(since, entry.get("watermark")),
            until or iso_ms(time.time_ns()),
            None,
        )

    def remember(position: dict[str, Any] | None) -> None:
        state.put(key, source, pending={"since": report.since, "until": report.until, "resume": position})

    with open(out, "ab") if out else nullcontext() as out_file:
        for page in source.pages(report.since, report.until, resume):
            report.api = source.api
            spans = page.spans
            cut = limit is not None and report.spans + len(spans) > limit
            if cut:
                spans = spans[: limit - report.spans]  # type: ignore[operator]
            _write(spans, store_path, source, report, out_file)
            report.pages += 1
            for reason in page.skipped:
                report.skipped += 1
                report.skip_reasons[reason] = report.skip_reasons.get(reason, 0) + 1
            if progress:
                progress(report.spans, page.total)
            if cut:  # the rest of this page is not written: the next run reads the page again
                remember(resume)
                report.limited = True
                return report
            if page.resume is None:
                break
            resume = page.resume
            remember(resume)
            if limit is not None and report.spans >= limit:
                report.limited = True
                return report
    report.api = source.api
    state.put(key, source, pending=None, watermark=report.until)
    report.complete = True
    return report


def _write(
    spans: list[dict[str, Any]], store_path: str | Path, source: Source, report: ImportReport, out_file: Any
) -> None:
    if not spans:
        return
    # The store is opened per page, not for the whole import, so other `halo` commands can read it
    # between pages of a long, rate-limited import.
    with TraceStore.open(store_path) as store:
        ingested = store.ingest_records(spans, source=f"{source.kind}:{source.url}")
    report.spans += len(spans)
    report.duplicates += ingested.duplicates
    if out_file:
        out_file.write(b"".join(orjson.dumps(span) + b"\n" for span in spans))
        out_file.flush()


def _start(since: str | None, watermark: str | None) -> str | None:
    """Where a new run starts: `since`, or shortly before the end of the last complete run if later."""
    if watermark is None:
        return since
    start = (iso_to_ns(watermark) or 0) - int(LATE_ARRIVALS.total_seconds()) * 10**9
    return iso_ms(max(start, iso_to_ns(since) or 0) if since else start)


# --- where an import stands ---------------------------------------------------------------------


class ResumeState:
    """Per-query progress of the imports into one store, in a JSON file beside it:
    `{key: {source, url, query, pending: {since, until, resume} | null, watermark, updated}}`.

    `pending` is the window and position of a run that has not finished; `watermark` is the end of the
    last complete run's window. The file holds no credentials. When the store file is missing (never
    created, or deleted) old progress is ignored, since the spans it describes are gone."""

    def __init__(self, path: Path, *, store_exists: bool) -> None:
        self.path = path
        self.entries: dict[str, Any] = {}
        if store_exists:
            try:
                loaded = orjson.loads(path.read_bytes())
                self.entries = loaded if isinstance(loaded, dict) else {}
            except (OSError, orjson.JSONDecodeError):
                self.entries = {}

    @staticmethod
    def key(source: Source, since: str | None, until: str | None) -> str:
        query = {
            "source": source.kind,
            "url": source.url,
            **source.identity(),
            "since": since,
            "until": until,
        }
        return hashlib.sha256(orjson.dumps(query, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]

    def get(self, key: str) -> dict[str, Any]:
        entry = self.entries.get(key)
        return entry if isinstance(entry, dict) else {}

    def put(
        self, key: str, source: Source, *, pending: dict[str, Any] | None, watermark: str | None = None
    ) -> None:
        entry = self.get(key)
        entry.update(
            {"source": source.kind, "url": source.url, "pending": pending, "updated": iso_ms(time.time_ns())}
        )
        if watermark is not None:
            entry["watermark"] = watermark
        self.entries[key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        scratch = self.path.with_name(self.path.name + ".tmp")
        scratch.write_bytes(orjson.dumps(self.entries, option=orjson.OPT_INDENT_2))
        os.replace(scratch, self.path)  # atomic: a crash leaves the old state or the new, never half
