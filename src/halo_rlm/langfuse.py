"""Langfuse: reading observations from its public API, and mapping observations onto flat spans.

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

The mapping (`observation_span`) is also what `halo ingest` uses for JSONL exports of observations.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from halo_rlm.decode import DecodeError, attributes, normalize_id, time_ns
from halo_rlm.importers import Http, NotFound, Page, SourceError

OBSERVATION_TYPES = frozenset(
    {
        "SPAN",
        "GENERATION",
        "EVENT",
        "AGENT",
        "TOOL",
        "CHAIN",
        "RETRIEVER",
        "EVALUATOR",
        "EMBEDDING",
        "GUARDRAIL",
    }
)
# Langfuse observation type -> OpenInference span kind. SPAN and EVENT are generic and get none.
KINDS = {
    "GENERATION": "LLM",
    "EMBEDDING": "EMBEDDING",
    "AGENT": "AGENT",
    "TOOL": "TOOL",
    "CHAIN": "CHAIN",
    "RETRIEVER": "RETRIEVER",
    "EVALUATOR": "EVALUATOR",
    "GUARDRAIL": "GUARDRAIL",
}
# v2 field groups the mapping reads; `time` and `metrics` are left out (derivable from start and end).
FIELDS = "core,basic,io,metadata,model,usage,prompt,trace_context"
# Metadata keys fetched whole: Langfuse's OpenTelemetry ingestion keeps the span's resource attributes
# (service.name) there (`packages/shared/src/server/otel/OtelIngestionProcessor.ts`), and a cut JSON
# value cannot be read.
EXPAND_METADATA = ("resourceAttributes",)
METADATA_CUT = 200  # v2 cuts longer metadata values to this many characters and appends "..."
V2_PAGE, LEGACY_PAGE = 1000, 100  # the largest pages each API generation serves
# What legacy observations lack and their trace has.
TRACE_CONTEXT = ("name", "userId", "sessionId", "tags", "release", "version", "environment", "metadata")

# usageDetails keys seen across SDKs and integrations -> OpenInference token count names.
_USAGE = {
    "input": "prompt",
    "prompt": "prompt",
    "input_tokens": "prompt",
    "prompt_tokens": "prompt",
    "inputTokens": "prompt",
    "promptTokens": "prompt",
    "output": "completion",
    "completion": "completion",
    "output_tokens": "completion",
    "completion_tokens": "completion",
    "outputTokens": "completion",
    "completionTokens": "completion",
    "total": "total",
    "total_tokens": "total",
    "totalTokens": "total",
}
_COST = {
    "input": "prompt",
    "output": "completion",
    "total": "total",
    "inputCost": "prompt",
    "outputCost": "completion",
    "totalCost": "total",
}


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
    ) -> None:
        self.url = host.rstrip("/").removesuffix("/api/public")
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
            "limit": V2_PAGE,
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
            "limit": LEGACY_PAGE,
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
            "limit": LEGACY_PAGE,
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
    spans, skipped = [], []
    for obs in observations:
        try:
            trace = traces.get(obs.get("traceId")) if traces and isinstance(obs, dict) else None
            spans.append(observation_span(obs, trace))
        except DecodeError as exc:
            skipped.append(str(exc))
    return spans, skipped


# --- mapping ------------------------------------------------------------------------------------


def looks_like_observation(obj: dict[str, Any]) -> bool:
    """A Langfuse observation (API or export): id, traceId, a known type and a startTime."""
    kind = obj.get("type")
    return (
        "id" in obj
        and "traceId" in obj
        and "startTime" in obj
        and isinstance(kind, str)
        and kind.upper() in OBSERVATION_TYPES
    )


def observation_span(obs: Any, trace: dict[str, Any] | None = None) -> dict[str, Any]:
    """One Langfuse observation (v2 or legacy shape) as a flat span.

    `trace` adds trace-level fields that legacy observations lack (user, session, tags, name, ...).
    Level ERROR makes the span an error with the status message; WARNING is kept as the level and
    message attributes only, since a warning is not a failure."""
    if not isinstance(obs, dict):
        raise DecodeError(f"not a Langfuse observation: a JSON {type(obs).__name__}")
    trace = trace or {}
    trace_id, span_id = normalize_id(obs.get("traceId")), normalize_id(obs.get("id"))
    if not trace_id or not span_id:
        raise DecodeError(f"Langfuse observation without {'a trace id' if not trace_id else 'an id'}")
    kind = str(obs.get("type") or "SPAN").upper()
    level = str(obs.get("level") or "").upper()
    start, end = time_ns(obs.get("startTime")), time_ns(obs.get("endTime"))
    if end is None and kind == "EVENT":
        end = start  # events are points in time, not spans still running
    metadata = obs.get("metadata")
    attrs: dict[str, Any] = {"langfuse.observation.type": kind}
    if kind in KINDS:
        attrs["openinference.span.kind"] = KINDS[kind]
    _put(attrs, "langfuse.observation.level", level or None)
    _put(attrs, "langfuse.observation.status_message", obs.get("statusMessage"))
    _put(attrs, "llm.model_name", obs.get("providedModelName") or obs.get("model"))
    _put(attrs, "llm.invocation_parameters", _json_text(obs.get("modelParameters")))
    attrs.update(_tokens(obs))
    attrs.update(_costs(obs))
    attrs.update(_io(obs, kind))
    _put(attrs, "session.id", obs.get("sessionId") or trace.get("sessionId"))
    _put(attrs, "user.id", obs.get("userId") or trace.get("userId"))
    tags = obs.get("tags") or trace.get("tags")
    if isinstance(tags, list) and tags:
        attrs["tag.tags"] = [str(t) for t in tags]
    if isinstance(metadata, dict) and metadata:
        attrs["metadata"] = _json_text(metadata)
        attrs.update(attributes({"langfuse.observation.metadata": metadata}))
        cut = [
            k
            for k, v in metadata.items()
            if isinstance(v, str) and len(v) == METADATA_CUT + 3 and v.endswith("...")
        ]
        if cut:
            attrs["langfuse.observation.metadata_truncated"] = cut
    elif metadata not in (None, "", {}):
        attrs["metadata"] = _json_text(metadata)
    trace_name = obs.get("traceName") or trace.get("name")
    for key, value in (
        ("langfuse.environment", obs.get("environment") or trace.get("environment")),
        ("langfuse.release", obs.get("release") or trace.get("release")),
        ("langfuse.version", obs.get("version") or trace.get("version")),
        ("langfuse.trace.name", trace_name),
        ("langfuse.project.id", obs.get("projectId")),
        ("langfuse.observation.prompt.name", obs.get("promptName")),
        ("langfuse.observation.prompt.version", obs.get("promptVersion")),
        ("langfuse.observation.completion_start_time", obs.get("completionStartTime")),
    ):
        _put(attrs, key, value)
    service = _service_name(metadata) or _service_name(trace.get("metadata")) or trace_name or "langfuse"
    span: dict[str, Any] = {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": normalize_id(obs.get("parentObservationId")),
        "trace_state": "",
        "name": str(obs.get("name") or kind.lower()),
        "kind": "SPAN_KIND_INTERNAL",
        "start_time": start,
        "end_time": end,
        "status": {"code": "STATUS_CODE_ERROR", "message": str(obs.get("statusMessage") or "")}
        if level == "ERROR"
        else {"code": "STATUS_CODE_UNSET", "message": ""},
        "resource": {"attributes": {"service.name": str(service)}},
        "scope": {"name": "langfuse", "version": ""},
        "attributes": attrs,
    }
    return span


def _tokens(obs: dict[str, Any]) -> dict[str, Any]:
    """usageDetails (or the deprecated `usage` / prompt-completion counts) as OpenInference token counts,
    plus every usage key as it came under `langfuse.observation.usage_details.*`."""
    details = obs.get("usageDetails")
    if not isinstance(details, dict) or not details:
        usage = obs.get("usage") if isinstance(obs.get("usage"), dict) else {}
        details = {k: usage.get(k) for k in ("input", "output", "total")}
        details.update({k: obs[k] for k in ("promptTokens", "completionTokens", "totalTokens") if k in obs})
        if not any(isinstance(v, int | float) and v > 0 for v in details.values()):
            return {}  # old APIs put zeros on every observation; zeros there mean "not an LLM call"
    out: dict[str, Any] = {}
    for key, value in details.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        out[f"langfuse.observation.usage_details.{key}"] = value
        name = _USAGE.get(key) or _usage_detail(key.lower())
        if name:
            out.setdefault(f"llm.token_count.{name}", value)
    return out


def _usage_detail(key: str) -> str | None:
    """Breakdown keys vary by provider (`input_cached_tokens`, `cache_read_input_tokens`,
    `input_cache_creation`, `output_reasoning_tokens`, ...); classify them by their words."""
    if "reasoning" in key:
        return "completion_details.reasoning"
    if "cache" in key and ("creation" in key or "write" in key):
        return "prompt_details.cache_write"
    if "cache" in key and ("read" in key or "cached" in key or key.startswith("input")):
        return "prompt_details.cache_read"
    return None


def _costs(obs: dict[str, Any]) -> dict[str, Any]:
    details = obs.get("costDetails") if isinstance(obs.get("costDetails"), dict) else {}
    out: dict[str, Any] = {}
    for key, value in details.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[f"langfuse.observation.cost_details.{key}"] = value
            if key in _COST:
                out[f"llm.cost.{_COST[key]}"] = value
    total = next(
        (
            obs[k]
            for k in ("totalCost", "calculatedTotalCost")
            if isinstance(obs.get(k), int | float) and not isinstance(obs.get(k), bool)
        ),
        None,
    )
    if total is not None and "llm.cost.total" not in out and (total or out):
        out["llm.cost.total"] = total
    return out


def _io(obs: dict[str, Any], kind: str) -> dict[str, Any]:
    """Input and output as text, and as chat messages for generations that hold them."""
    out: dict[str, Any] = {}
    for side in ("input", "output"):
        value = obs.get(side)
        if value is None or value == "":
            continue
        text = value if isinstance(value, str) else _json_text(value)
        out[f"{side}.value"] = text
        parsed = _parse(value)
        if not isinstance(parsed, str):
            out[f"{side}.mime_type"] = "application/json"
        if kind == "GENERATION":
            messages = _messages(parsed, "user" if side == "input" else "assistant")
            if messages:
                out[f"llm.{side}_messages"] = _json_text(messages)
    return out


def _messages(value: Any, role: str) -> list[dict[str, Any]] | None:
    """Chat messages from the shapes SDKs log: a message list, `{messages: [...]}`, one message, an
    OpenAI completion (`choices[].message`), or plain text (one message in the given role)."""
    if isinstance(value, str):
        return [{"role": role, "content": value}] if value else None
    if isinstance(value, dict):
        if isinstance(value.get("messages"), list):
            value = value["messages"]
        elif isinstance(value.get("choices"), list):
            value = [
                c["message"]
                for c in value["choices"]
                if isinstance(c, dict) and isinstance(c.get("message"), dict)
            ]
        elif "role" in value:
            value = [value]
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
        return value
    return None


def _service_name(metadata: Any) -> str | None:
    if not isinstance(metadata, dict):
        return None
    resource = _parse(metadata.get("resourceAttributes"))
    name = resource.get("service.name") if isinstance(resource, dict) else None
    return name if isinstance(name, str) and name else None


def _parse(value: Any) -> Any:
    """v2 returns input, output and metadata values as raw strings; read the JSON ones."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def _json_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value, default=str).decode()


def _put(attrs: dict[str, Any], key: str, value: Any) -> None:
    if value is not None and value != "":
        attrs[key] = value
