"""Importing traces from the services teams keep them in (Langfuse, Phoenix) into a trace store.

A source (`langfuse.LangfuseSource`, `phoenix.PhoenixSource`) turns its API's pages into flat spans;
this module does what every source shares: HTTP with bounded retries that honour `429 Retry-After`
and back off on 5xx, one-line errors for bad keys, wrong URLs and servers that are not there, and
`run_import`, which writes page after page into the store (and optionally a JSONL file) and keeps
its place in a small JSON file beside the store, so an interrupted import carries on where it
stopped and a later one fetches only what is new.

Re-reading a page is harmless: the store merges spans with the same trace and span id.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson

from halo_rlm.decode import iso_to_ns
from halo_rlm.store import TraceStore, cache_dir

ATTEMPTS = 6  # requests per page before giving up (the first try plus five retries)
MAX_WAIT = 120.0  # longest pause between attempts, even when Retry-After asks for more
# A later import starts this far before the previous one ended: spans are written when they end, so a
# long-running one can appear after an import whose window already covered its start time.
LATE_ARRIVALS = timedelta(hours=1)
_RELATIVE = re.compile(r"(\d+)\s*([mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class SourceError(Exception):
    """The source cannot be read; the message is one line that says why and what to check."""


class NotFound(SourceError):
    """HTTP 404 (or 405): the endpoint or the project is not there."""


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
    state = ResumeState(Path(f"{store_path}.imports.json"), store_exists=Path(store_path).exists())
    key = state.key(source, since, until)
    entry = {} if fresh else state.get(key)
    report = ImportReport(str(store_path), source.kind, source.url, out=str(out) if out else None)
    if entry.get("pending"):
        report.since, report.until, resume = (entry["pending"][k] for k in ("since", "until", "resume"))
        report.resumed = True
    else:
        report.since, report.until, resume = _start(since, entry.get("watermark")), until or _now(), None

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
        entry.update({"source": source.kind, "url": source.url, "pending": pending, "updated": _now()})
        if watermark is not None:
            entry["watermark"] = watermark
        self.entries[key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        scratch = self.path.with_name(self.path.name + ".tmp")
        scratch.write_bytes(orjson.dumps(self.entries, option=orjson.OPT_INDENT_2))
        os.replace(scratch, self.path)  # atomic: a crash leaves the old state or the new, never half


def default_store_path(kind: str, *identity: str) -> Path:
    """The store an import writes to without `--store`: one per source and project, in the cache."""
    digest = hashlib.sha256("\0".join(identity).encode()).hexdigest()[:12]
    return cache_dir() / "stores" / f"{kind}-{digest}.duckdb"


# --- times --------------------------------------------------------------------------------------


def parse_time(value: str | None, *, now: datetime | None = None) -> str | None:
    """An ISO-8601 time, or a time relative to now (`30m`, `24h`, `7d`, `2w`), as ISO-8601 UTC."""
    if value is None:
        return None
    relative = _RELATIVE.fullmatch(value.strip().lower())
    if relative:
        delta = timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
        moment = (now or datetime.now(UTC)) - delta
        return iso_ms(int(moment.timestamp() * 10**9))
    ns = iso_to_ns(value)
    if ns is None:
        raise ValueError(f"not a time: {value!r} (use ISO-8601 like 2026-04-24T18:00:00Z, or 30m, 24h, 7d)")
    return iso_ms(ns)


def iso_ms(ns: int) -> str:
    """ISO-8601 UTC with milliseconds: the precision every API here accepts."""
    stamp = datetime.fromtimestamp(ns // 10**9, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ns % 10**9 // 10**6:03d}Z"


def _now() -> str:
    return iso_ms(time.time_ns())


# --- HTTP ---------------------------------------------------------------------------------------


class Http:
    """GET JSON from one service, with the retries and error messages every import needs.

    `auth_hint` and `not_found_hint` finish the one-line errors for 401/403 and 404 (e.g. which option
    holds the key). `secrets` are blanked out of any server text quoted in an error."""

    def __init__(
        self,
        base_url: str,
        *,
        auth_hint: str,
        not_found_hint: str,
        auth: httpx.Auth | tuple[str, str] | None = None,
        headers: dict[str, str] | None = None,
        secrets: tuple[str, ...] = (),
        timeout: float = 60.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.auth_hint = auth_hint
        self.not_found_hint = not_found_hint
        self.secrets = tuple(s for s in secrets if s)
        self.client = httpx.Client(
            base_url=self.base_url, auth=auth, headers=headers, timeout=timeout, follow_redirects=True
        )

    def close(self) -> None:
        self.client.close()

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        url = f"{self.base_url}{path}"
        problem = ""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                response = self.client.get(path, params=_query(params))
            except httpx.ConnectError as exc:
                raise SourceError(f"cannot connect to {self.base_url}: {self._clean(_reason(exc))}") from exc
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                problem, wait = f"{type(exc).__name__}: {self._clean(_reason(exc))}", _backoff(attempt)
            else:
                status = response.status_code
                if status < 400:
                    return self._json(response, url)
                if status in (401, 403):
                    raise SourceError(f"{url}: HTTP {status} {self._detail(response)}— {self.auth_hint}")
                if status in (404, 405):
                    raise NotFound(f"{url}: HTTP {status} {self._detail(response)}— {self.not_found_hint}")
                if status != 429 and status < 500:
                    raise SourceError(f"{url}: HTTP {status} {self._detail(response)}".rstrip())
                problem = f"HTTP {status}" + (" (rate limited)" if status == 429 else "")
                wait = retry_after(response.headers.get("retry-after"))
                if wait is None:
                    wait = _backoff(attempt)
            if attempt < ATTEMPTS:
                pause(min(wait, MAX_WAIT))
        raise SourceError(f"{url}: still failing after {ATTEMPTS} attempts ({problem})")

    def _json(self, response: httpx.Response, url: str) -> Any:
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            kind = response.headers.get("content-type", "no content type").split(";")[0]
            raise SourceError(f"{url}: the answer is not JSON ({kind}); is this the right URL?") from None

    def _detail(self, response: httpx.Response) -> str:
        """The server's own one-line explanation, if it gave one (with a trailing space)."""
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = response.text if response.headers.get("content-type", "").startswith("text/plain") else ""
        if isinstance(body, dict):
            body = next((body[k] for k in ("message", "detail", "error") if isinstance(body.get(k), str)), "")
        text = self._clean(" ".join(body.split())) if isinstance(body, str) else ""
        text = text if len(text) <= 120 else text[:119] + "…"
        return f"({text}) " if text else ""

    def _clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdecimal():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def pause(seconds: float) -> None:
    """Wait between attempts (a seam for tests, which record the waits instead of sleeping)."""
    time.sleep(seconds)


def _backoff(attempt: int) -> float:
    return min(2.0 ** (attempt - 1), 30.0) * random.uniform(0.5, 1.0)


def _query(params: dict[str, Any] | None) -> list[tuple[str, str]] | None:
    """Query parameters without empty values; lists repeat their key (`environment=a&environment=b`)."""
    if not params:
        return None
    pairs = []
    for key, value in params.items():
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is not None and item != "":
                pairs.append((key, "true" if item is True else "false" if item is False else str(item)))
    return pairs


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]
