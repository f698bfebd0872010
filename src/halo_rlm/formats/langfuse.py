"""Langfuse observations as flat spans: the mapping both `halo ingest` (JSONL exports of
observations, traces with their observations) and `halo import langfuse` use.

An observation's type becomes the OpenInference span kind, its usage and cost details the token and
cost attributes, its input and output the messages, and its trace-level fields (user, session, tags,
release) attributes of every span. Pure: no HTTP, no store.
"""

from __future__ import annotations

from typing import Any

import orjson

from halo_rlm.formats.conventions import chat_messages
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
    message attributes only, since a warning is not a failure. Observations that came to Langfuse
    over OpenTelemetry keep their original span attributes, resource and scope in `metadata`: those
    become the span's own again."""
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
    metadata = _parse(obs.get("metadata"))
    # The v2 API returns each metadata value as a JSON string.
    otel = (
        {k: _parse(metadata[k]) for k in _OTEL_METADATA if k in metadata}
        if isinstance(metadata, dict)
        else {}
    )
    attrs: dict[str, Any] = (
        attributes(otel.get("attributes")) if isinstance(otel.get("attributes"), dict) else {}
    )
    attrs["langfuse.observation.type"] = kind
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
    rest = (
        {k: v for k, v in metadata.items() if k not in _OTEL_METADATA}
        if isinstance(metadata, dict)
        else metadata
    )
    if isinstance(rest, dict) and rest:
        attrs["metadata"] = _json_text(rest)
        attrs.update(attributes({"langfuse.observation.metadata": rest}))
        cut = [
            k
            for k, v in rest.items()
            if isinstance(v, str) and len(v) == METADATA_CUT + 3 and v.endswith("...")
        ]
        if cut:
            attrs["langfuse.observation.metadata_truncated"] = cut
    elif rest not in (None, "", {}):
        attrs["metadata"] = _json_text(rest)
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
    resource = _resource(otel.get("resourceAttributes"))
    service = _service_name(resource) or _service_name(_trace_resource(trace)) or trace_name
    resource["service.name"] = str(service or resource.get("service.name") or "langfuse")
    scope: dict[str, Any] = otel["scope"] if isinstance(otel.get("scope"), dict) else {}
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
        "resource": {"attributes": resource},
        "scope": {"name": str(scope.get("name") or "langfuse"), "version": str(scope.get("version") or "")},
        "attributes": attrs,
    }
    return span


# Metadata keys where Langfuse keeps what an OpenTelemetry span carried.
_OTEL_METADATA = frozenset({"attributes", "resourceAttributes", "scope"})
_INPUT_KEYS = frozenset({"prompt", "prompt_tokens", "promptTokens"})
_OUTPUT_KEYS = frozenset({"completion", "completion_tokens", "completionTokens"})
_TOTAL_KEYS = ("total", "total_tokens", "totalTokens")


def _tokens(obs: dict[str, Any]) -> dict[str, Any]:
    """Token counts the way Langfuse counts them: input is the sum of the usage details whose key
    names input (`input`, `input_cached_tokens`, `input_audio`, ...), output of those naming output
    (`output`, `output_reasoning`, ...); dotted breakdowns (`completion_details.reasoning`) are parts of
    those, not additions. Without usage details, `inputUsage` / `outputUsage` / `totalUsage` (or the
    deprecated `usage` and prompt/completion counts). Every detail is kept under
    `langfuse.observation.usage_details.*`."""
    details = obs.get("usageDetails")
    if not isinstance(details, dict) or not any(v > 0 for v in _counts(details).values()):
        usage: dict[str, Any] = obs["usage"] if isinstance(obs.get("usage"), dict) else {}
        details = {k: usage.get(k) for k in ("input", "output", "total")}
        for keys, name in (
            (("inputUsage", "promptTokens"), "input"),
            (("outputUsage", "completionTokens"), "output"),
            (("totalUsage", "totalTokens"), "total"),
        ):
            for key in keys:
                if details.get(name) is None and _count(obs.get(key)) is not None:
                    details[name] = obs[key]
        if not any(v > 0 for v in _counts(details).values()):
            return {}  # old APIs put zeros on every observation; zeros there mean "not an LLM call"
    counts = _counts(details)
    out: dict[str, Any] = {f"langfuse.observation.usage_details.{k}": v for k, v in counts.items()}
    sides: dict[str, list[float]] = {"prompt": [], "completion": []}
    for key, value in counts.items():
        lowered = key.lower()
        if "." in key and not lowered.startswith(("input", "output")):
            detail = _usage_detail(lowered)  # an OpenInference-style breakdown
            if detail:
                out.setdefault(f"llm.token_count.{detail}", value)
            continue
        if "input" in key or key in _INPUT_KEYS:
            sides["prompt"].append(value)
        elif "output" in key or key in _OUTPUT_KEYS:
            sides["completion"].append(value)
        if key not in ("input", "output") and (detail := _usage_detail(lowered)):
            out.setdefault(f"llm.token_count.{detail}", value)
    for name, values in sides.items():
        if values:
            out[f"llm.token_count.{name}"] = _whole(sum(values))
    total = next((counts[k] for k in _TOTAL_KEYS if k in counts), None)
    if total is not None:
        out["llm.token_count.total"] = total
    return out


def _counts(details: dict[str, Any]) -> dict[str, float]:
    return {str(k): n for k, v in details.items() if (n := _count(v)) is not None}


def _count(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _whole(value: float) -> float:
    return int(value) if float(value).is_integer() else value


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
    """Input and output as text, and as chat messages for generations that hold them (in any of the
    shapes SDKs log, read by the one message normaliser, `conventions.chat_messages`)."""
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
            messages = chat_messages(parsed, "user" if side == "input" else "assistant")
            if messages:
                out[f"llm.{side}_messages"] = _json_text(
                    [{k: v for k, v in m.items() if v not in (None, "", [])} for m in messages]
                )
    return out


def _trace_resource(trace: dict[str, Any]) -> dict[str, Any]:
    metadata = _parse(trace.get("metadata"))
    return _resource(_parse(metadata.get("resourceAttributes"))) if isinstance(metadata, dict) else {}


def _resource(value: Any) -> dict[str, Any]:
    return attributes(value) if isinstance(value, dict) else {}


def _service_name(resource: dict[str, Any]) -> str | None:
    """The service name an OpenTelemetry resource gave, unless it is the SDK's 'not set' default."""
    name = resource.get("service.name")
    return name if isinstance(name, str) and name and not name.startswith("unknown_service") else None


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
