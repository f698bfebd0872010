"""Langfuse: reading observations from its public API (the mapping onto flat spans is
`formats.langfuse`).

API, as documented in Langfuse's OpenAPI definition (langfuse/langfuse `fern/apis/server/definition/
observations.yml`, `legacy/observations-v1.yml`, `trace.yml`, `commons.yml`) and its docs page
"Observations API" (langfuse.com/docs/api-and-data-platform/features/observations-api):

* `GET /api/public/v2/observations` (Langfuse v4+): `limit` up to 1000, cursor paging through
  `meta.cursor` (absent on the last page), newest first; `fields` picks field groups (`core` always;
  `basic`, `io`, `metadata`, `model`, `usage`, `prompt`, `trace_context`, ...). Metadata values over
  200 characters come back cut to 200 plus "..." unless named in `expandMetadata`. Trace-level fields
  (user, session, tags, trace name, release) are on every observation. Filters: `environment`, `name`,
  `userId`, `fromStartTime`/`toStartTime` as parameters, and a JSON `filter` list (which then replaces
  the parameters) for `traceName`, `sessionId` and `tags`.
* Older servers answer 404 there; they have the deprecated page-numbered `GET /api/public/observations`
  and `GET /api/public/traces` (`page` from 1, `limit` up to 100, `meta.totalPages`). Those
  observations carry no trace-level fields, so the traces of the window are listed first for them.
* HTTP Basic auth (public key, secret key); 429 with `Retry-After` when over the rate limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from halo_rlm.defaults import LANGFUSE_LEGACY_PAGE, LANGFUSE_PAGE
from halo_rlm.formats.decode import DecodeError
from halo_rlm.formats.langfuse import observation_span
from halo_rlm.sources.http import Http, NotFound, SourceError
from halo_rlm.sources.imports import Page
from halo_rlm.utils import RetryPolicy

__all__ = ["LangfuseFilters", "LangfuseSource"]

# v2 field groups the mapping reads; `time` and `metrics` are left out (derivable from start and end).
FIELDS = "core,basic,io,metadata,model,usage,prompt,trace_context"
# Metadata keys fetched whole: Langfuse's OpenTelemetry ingestion keeps the span's resource attributes
# (service.name) there (`packages/shared/src/server/otel/OtelIngestionProcessor.ts`), and a cut JSON
# value cannot be read.
EXPAND_METADATA = ("resourceAttributes",)
# What legacy observations lack and their trace has.
TRACE_CONTEXT = ("name", "userId", "sessionId", "tags", "release", "version", "environment", "metadata")


@dataclass(frozen=True)
class LangfuseFilters:
    """Which observations to import; empty fields do not filter. Tags must all be present."""

    environments: tuple[str, ...] = ()
    trace_name: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    tags: tuple[str, ...] = ()

    @property
    def on_traces(self) -> bool:
        return bool(self.trace_name or self.session_id or self.tags)


class LangfuseSource:
    """Observations of one Langfuse project (the one the keys belong to) as pages of flat spans."""

    kind = "langfuse"

    def __init__(
        self,
        host: str,
        public_key: str,
        secret_key: str,
        filters: LangfuseFilters | None = None,
        *,
        expand_metadata: tuple[str, ...] = (),
        page_size: int = LANGFUSE_PAGE,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.url = host.rstrip("/").removesuffix("/api/public")
        self.v2_page, self.legacy_page = page_size, min(page_size, LANGFUSE_LEGACY_PAGE)
        self.public_key = public_key
        self.filters = filters or LangfuseFilters()
        self.expand_metadata = tuple(dict.fromkeys(EXPAND_METADATA + expand_metadata))
        self.api = ""
        self.http = Http(
            self.url,
            auth=(public_key, secret_key),
            secrets=(secret_key,),
            auth_hint="Langfuse refused the keys: check --public-key/--secret-key "
            "(LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY)",
            not_found_hint="is --host the Langfuse base URL (e.g. https://cloud.langfuse.com)?",
            retry=retry,
        )

    def close(self) -> None:
        self.http.close()

    def identity(self) -> dict[str, Any]:
        f = self.filters
        return {
            "project_key": self.public_key,
            "environments": list(f.environments),
            "tags": list(f.tags),
            "trace_name": f.trace_name,
            "user_id": f.user_id,
            "session_id": f.session_id,
        }

    def pages(self, since: str | None, until: str, resume: dict[str, Any] | None) -> Iterator[Page]:
        if resume and resume.get("api") == "legacy":
            yield from self._legacy(since, until, resume)
            return
        try:
            yield from self._v2(since, until, resume)
        except NotFound:
            if self.api:  # v2 answered before: a 404 now is a real error, not an old server
                raise
            yield from self._legacy(since, until, None)

    # --- v2 ---------------------------------------------------------------------------------------

    def _v2(self, since: str | None, until: str, resume: dict[str, Any] | None) -> Iterator[Page]:
        f = self.filters
        params: dict[str, Any] = {
            "fields": FIELDS,
            "limit": self.v2_page,
            "expandMetadata": ",".join(self.expand_metadata),
            "fromStartTime": since,
            "toStartTime": until,
            "environment": list(f.environments),
            "userId": f.user_id,
        }
        if f.on_traces:
            params["filter"] = orjson.dumps(self._v2_filter(since, until)).decode()
        cursor = resume.get("cursor") if resume else None
        while True:
            body = self.http.get("/api/public/v2/observations", {**params, "cursor": cursor})
            self.api = "v2"
            data, meta = _page_parts(body, self.http.base_url)
            cursor = meta.get("cursor") or None
            spans, skipped = _map(data, traces=None)
            yield Page(spans, {"api": "v2", "cursor": cursor} if cursor else None, skipped)
            if not cursor:
                return

    def _v2_filter(self, since: str | None, until: str) -> list[dict[str, Any]]:
        """The structured filter replaces the query parameters, so it carries every condition."""
        f = self.filters
        conditions: list[dict[str, Any]] = [
            {"type": "datetime", "column": "startTime", "operator": "<", "value": until}
        ]
        if since:
            conditions.append({"type": "datetime", "column": "startTime", "operator": ">=", "value": since})
        if f.environments:
            conditions.append(
                {
                    "type": "stringOptions",
                    "column": "environment",
                    "operator": "any of",
                    "value": list(f.environments),
                }
            )
        for column, value in (
            ("traceName", f.trace_name),
            ("userId", f.user_id),
            ("sessionId", f.session_id),
        ):
            if value:
                conditions.append({"type": "string", "column": column, "operator": "=", "value": value})
        if f.tags:
            conditions.append(
                {"type": "arrayOptions", "column": "tags", "operator": "all of", "value": list(f.tags)}
            )
        return conditions

    # --- legacy -----------------------------------------------------------------------------------

    def _legacy(self, since: str | None, until: str, resume: dict[str, Any] | None) -> Iterator[Page]:
        traces = self._legacy_traces(since, until)
        self.api = "legacy"
        f = self.filters
        params = {
            "limit": self.legacy_page,
            "fromStartTime": since,
            "toStartTime": until,
            "environment": list(f.environments),
            "userId": f.user_id,
        }
        page = resume.get("page", 1) if resume else 1
        while True:
            body = self.http.get("/api/public/observations", {**params, "page": page})
            data, meta = _page_parts(body, self.http.base_url)
            if f.on_traces:  # the trace list is the filter; observations of other traces are dropped
                data = [o for o in data if isinstance(o, dict) and o.get("traceId") in traces]
            spans, skipped = _map(data, traces=traces)
            more = isinstance(meta.get("totalPages"), int) and page < meta["totalPages"]
            total = meta.get("totalItems") if isinstance(meta.get("totalItems"), int) else None
            yield Page(spans, {"api": "legacy", "page": page + 1} if more else None, skipped, total)
            if not more:
                return
            page += 1

    def _legacy_traces(self, since: str | None, until: str) -> dict[str, dict[str, Any]]:
        """Trace-level context (user, session, tags, name, release, ...) of the window's traces."""
        f = self.filters
        params = {
            "limit": self.legacy_page,
            "fields": "core",
            "fromTimestamp": since,
            "toTimestamp": until,
            "environment": list(f.environments),
            "name": f.trace_name,
            "userId": f.user_id,
            "sessionId": f.session_id,
            "tags": list(f.tags),
        }
        traces: dict[str, dict[str, Any]] = {}
        page = 1
        while True:
            try:
                body = self.http.get("/api/public/traces", {**params, "page": page})
            except NotFound as exc:
                raise NotFound(f"no Langfuse API here ({exc})") from None
            data, meta = _page_parts(body, self.http.base_url)
            for trace in data:
                if isinstance(trace, dict) and isinstance(trace.get("id"), str):
                    traces[trace["id"]] = {k: trace.get(k) for k in TRACE_CONTEXT}
            if not (isinstance(meta.get("totalPages"), int) and page < meta["totalPages"]):
                return traces
            page += 1


def _page_parts(body: Any, url: str) -> tuple[list[Any], dict[str, Any]]:
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise SourceError(f"{url}: the answer is not a Langfuse page ({{data, meta}}); is --host right?")
    meta = body.get("meta")
    return body["data"], meta if isinstance(meta, dict) else {}


def _map(
    observations: list[Any], traces: dict[str, dict[str, Any]] | None
) -> tuple[list[dict[str, Any]], list[str]]:
    spans: list[dict[str, Any]] = []
    skipped: list[str] = []
    for obs in observations:
        try:
            trace = traces.get(str(obs.get("traceId"))) if traces and isinstance(obs, dict) else None
            spans.append(observation_span(obs, trace))
        except DecodeError as exc:
            skipped.append(str(exc))
    return spans, skipped
