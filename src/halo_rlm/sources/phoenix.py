"""Arize Phoenix: reading a project's spans from its REST API.

`GET /v1/projects/{project}/spans` (Phoenix's OpenAPI description at `/openapi.json`, operation
`getSpans`): `limit` up to 1000, `start_time` inclusive and `end_time` exclusive on span start times,
newest first, paged by `cursor` from the previous page's `next_cursor` (null on the last page). Each
span is Phoenix span JSON: `context.trace_id` / `context.span_id`, `parent_id`, `span_kind` (the
OpenInference kind), ISO `start_time` / `end_time`, `status_code`, `status_message`, flat OpenInference
`attributes` and `events` (`name`, ISO `timestamp`, `attributes`) — the shape `formats.decode.flat_span` reads.
The API does not return resource attributes, so the project name stands in for `service.name`.
With authentication on, an API key goes in `Authorization: Bearer`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from halo_rlm.defaults import PHOENIX_PAGE
from halo_rlm.formats.decode import DecodeError
from halo_rlm.formats.spans import flat_span
from halo_rlm.sources.http import Http, NotFound, SourceError
from halo_rlm.sources.imports import Page
from halo_rlm.utils import RetryPolicy

__all__ = ["PhoenixSource"]


class PhoenixSource:
    """The spans of one Phoenix project as pages of flat spans."""

    kind = "phoenix"

    def __init__(
        self,
        endpoint: str,
        project: str = "default",
        api_key: str | None = None,
        *,
        page_size: int = PHOENIX_PAGE,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.page_size = page_size
        self.project = project
        self.url = f"{self.endpoint}/projects/{project}"
        self.api = ""
        self.http = Http(
            self.endpoint,
            headers={"Authorization": f"Bearer {api_key}"} if api_key else None,
            secrets=(api_key or "",),
            auth_hint="Phoenix wants an API key; pass --api-key (or set PHOENIX_API_KEY)"
            if not api_key
            else "Phoenix refused the API key; check --api-key (or PHOENIX_API_KEY)",
            not_found_hint="is --endpoint Phoenix's base URL (e.g. http://localhost:6006)?",
            retry=retry,
        )

    def close(self) -> None:
        self.http.close()

    def identity(self) -> dict[str, Any]:
        return {"project": self.project}

    def pages(self, since: str | None, until: str, resume: dict[str, Any] | None) -> Iterator[Page]:
        resource = {"service.name": self.project, "openinference.project.name": self.project}
        params = {"limit": self.page_size, "start_time": since, "end_time": until}
        cursor = resume.get("cursor") if resume else None
        while True:
            body = self._spans({**params, "cursor": cursor})
            self.api = "v1"
            data, cursor = body.get("data"), body.get("next_cursor") or None
            if not isinstance(data, list):
                raise SourceError(f"{self.url}: the answer is not a page of spans ({{data, next_cursor}})")
            spans, skipped = [], []
            for item in data:
                try:
                    if not isinstance(item, dict):
                        raise DecodeError(f"not a span: a JSON {type(item).__name__}")
                    spans.append(flat_span(item, resource, {"name": "phoenix", "version": ""}))
                except DecodeError as exc:
                    skipped.append(str(exc))
            yield Page(spans, {"cursor": cursor} if cursor else None, skipped)
            if not cursor:
                return

    def _spans(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            body = self.http.get(f"/v1/projects/{quote(self.project, safe='')}/spans", params)
        except NotFound as exc:
            raise NotFound(self._missing_project() or str(exc)) from None
        if not isinstance(body, dict):
            raise SourceError(f"{self.url}: the answer is not a page of spans ({{data, next_cursor}})")
        return body

    def _missing_project(self) -> str | None:
        """When the spans are not found, say whether the server is Phoenix and which projects it has."""
        try:
            body = self.http.get("/v1/projects", {"limit": 100})
        except SourceError:
            return None
        projects = body.get("data") if isinstance(body, dict) else None
        names = [p.get("name") for p in projects if isinstance(p, dict)] if isinstance(projects, list) else []
        if not names:
            return None
        listed = ", ".join(str(n) for n in names[:20]) + (", ..." if len(names) > 20 else "")
        return f"{self.endpoint}: no Phoenix project {self.project!r}; it has {listed} (pick one: --project)"
