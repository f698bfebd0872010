"""Langfuse observations as flat spans: the mapping both `halo ingest` (JSONL exports of
observations, traces with their observations) and `halo import langfuse` use.

An observation's type becomes the OpenInference span kind, its usage and cost details the token and
cost attributes, its input and output the messages, and its trace-level fields (user, session, tags,
release) attributes of every span. Pure: no HTTP, no store.
"""

from __future__ import annotations

from typing import Any

import orjson

from halo_rlm.formats.spans import DecodeError, attributes, normalize_id
from halo_rlm.utils import to_ns

__all__ = ["METADATA_CUT", "OBSERVATION_TYPES", "looks_like_observation", "observation_span"]

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
METADATA_CUT = 200  # Langfuse's v2 API cuts longer metadata values to this many characters and appends "..."

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
    start, end = to_ns(obs.get("startTime")), to_ns(obs.get("endTime"))
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
        usage: dict[str, Any] = obs["usage"] if isinstance(obs.get("usage"), dict) else {}
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
    details: dict[str, Any] = obs["costDetails"] if isinstance(obs.get("costDetails"), dict) else {}
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
