"""A flat span and its building blocks: one span of any single-span shape (OTLP, HALO flat,
OpenInference / Phoenix span JSON, TRAIL) as HALO's flat span, OTLP attribute values as plain
values, ids and status codes.

A *flat span* is HALO's one-span-per-line shape (trace-formats.md §1): `trace_id`, `span_id`,
`parent_span_id`, `trace_state`, `name`, `kind` (`SPAN_KIND_*`), `start_time` / `end_time`,
`status {code, message}`, `resource {attributes}`, `scope {name, version}`, a flat `attributes` map
of dotted keys, plus `events` and `links` when there are any. It is what the store keeps as each
span's raw record, so every field of the source survives.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Iterable
from typing import Any

from halo_rlm.utils import INT64_LIMIT, to_ns

__all__ = [
    "OTEL_KINDS",
    "STATUS_CODES",
    "DecodeError",
    "any_value",
    "as_list",
    "attributes",
    "first_key",
    "flat_span",
    "normalize_id",
    "status_code",
]

OTEL_KINDS = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
STATUS_CODES = ("UNSET", "OK", "ERROR")
OPENINFERENCE_KINDS = frozenset(
    {
        "LLM",
        "EMBEDDING",
        "CHAIN",
        "RETRIEVER",
        "RERANKER",
        "TOOL",
        "AGENT",
        "GUARDRAIL",
        "EVALUATOR",
        "PROMPT",
        "UNKNOWN",
    }
)
ANY_VALUE_KEYS = frozenset(
    {
        "stringValue",
        "string_value",
        "intValue",
        "int_value",
        "doubleValue",
        "double_value",
        "boolValue",
        "bool_value",
        "bytesValue",
        "bytes_value",
        "arrayValue",
        "array_value",
        "kvlistValue",
        "kvlist_value",
    }
)
_HEX = re.compile(r"[0-9a-fA-F]+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class DecodeError(ValueError):
    """A record that is not a span; the message says what was found instead."""


def flat_span(
    span: dict[str, Any], resource_attrs: dict[str, Any] | None = None, scope: Any = None
) -> dict[str, Any]:
    """Build a flat span from any single-span shape (OTLP, HALO flat, OpenInference, TRAIL)."""
    context: dict[str, Any] = span["context"] if isinstance(span.get("context"), dict) else {}
    trace_id = _required_id(
        first_key(span, "trace_id", "traceId") or first_key(context, "trace_id", "traceId"), "trace"
    )
    span_id = _required_id(
        first_key(span, "span_id", "spanId") or first_key(context, "span_id", "spanId"), "span"
    )
    attrs = attributes(first_key(span, "attributes", "span_attributes"))
    otel_kind, oi_kind = _kinds(first_key(span, "kind", "span_kind"))
    if oi_kind and "openinference.span.kind" not in attrs:
        attrs["openinference.span.kind"] = oi_kind
    resource = span.get("resource")
    if resource_attrs is None:
        resource_attrs = attributes(resource.get("attributes") if isinstance(resource, dict) else None)
    scope = scope if scope is not None else first_key(span, "scope", "instrumentationScope") or {}
    out: dict[str, Any] = {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": normalize_id(
            first_key(span, "parent_span_id", "parentSpanId", "parent_id", "parentId")
        ),
        "trace_state": _str(first_key(span, "trace_state", "traceState")) or "",
        "name": _str(first_key(span, "name", "span_name")) or "",
        "kind": f"SPAN_KIND_{otel_kind}",
        "start_time": to_ns(
            first_key(
                span, "start_time", "startTimeUnixNano", "start_time_unix_nano", "startTime", "timestamp"
            )
        ),
        "end_time": to_ns(first_key(span, "end_time", "endTimeUnixNano", "end_time_unix_nano", "endTime")),
        "status": _status(span),
        "resource": {"attributes": resource_attrs},
        "scope": {"name": _str(scope.get("name")) or "", "version": _str(scope.get("version")) or ""}
        if isinstance(scope, dict)
        else {"name": "", "version": ""},
        "attributes": attrs,
    }
    if out["end_time"] is None and out["start_time"] is not None:
        duration = first_key(span, "duration", "duration_ns")
        if isinstance(duration, int | float) and not isinstance(duration, bool) and math.isfinite(duration):
            end = out["start_time"] + int(duration)
            out["end_time"] = end if 0 < end < INT64_LIMIT else None
    events = _events(first_key(span, "events", "logs"))
    if events:
        out["events"] = events
    links = span.get("links")
    if isinstance(links, list) and links:
        out["links"] = [_link(link) for link in links if isinstance(link, dict)]
    for key in ("droppedAttributesCount", "dropped_attributes_count", "droppedEventsCount", "flags"):
        if span.get(key):
            out[key] = span[key]
    return out


def _required_id(value: Any, what: str) -> str:
    if isinstance(value, dict | list):
        raise DecodeError(
            f"{what} id is a JSON {'object' if isinstance(value, dict) else 'array'}, not a string"
        )
    normalized = normalize_id(value)
    if not normalized:
        raise DecodeError(f"missing {what} id")
    return normalized


def _kinds(value: Any) -> tuple[str, str | None]:
    """Split a `kind` value into an OTel span kind and, when it is one, an OpenInference kind."""
    if isinstance(value, bool) or value is None:
        return "INTERNAL", None
    if isinstance(value, int):
        return (OTEL_KINDS[value] if 0 <= value < len(OTEL_KINDS) else "INTERNAL"), None
    text = str(value).strip().upper().removeprefix("SPAN_KIND_")
    if text.isdecimal():
        return _kinds(int(text))
    if text in OTEL_KINDS:
        return text, None
    if text in OPENINFERENCE_KINDS:
        return "INTERNAL", text
    return "INTERNAL", None


def _status(span: dict[str, Any]) -> dict[str, str]:
    status = span.get("status")
    if isinstance(status, dict):
        code, message = status.get("code"), status.get("message")
    else:
        code, message = (
            first_key(span, "status_code", "statusCode") or status,
            first_key(span, "status_message", "statusMessage"),
        )
    return {"code": f"STATUS_CODE_{status_code(code)}", "message": _str(message) or ""}


def status_code(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "UNSET"
    if isinstance(value, int):
        return STATUS_CODES[value] if 0 <= value < len(STATUS_CODES) else "UNSET"
    text = str(value).strip().upper().removeprefix("STATUS_CODE_")
    if text.isdecimal():
        return status_code(int(text))
    return text if text in STATUS_CODES else "UNSET"


def _events(value: Any) -> list[dict[str, Any]]:
    events = []
    for event in as_list(value):
        if not isinstance(event, dict):
            continue
        events.append(
            {
                "name": _str(event.get("name")) or "",
                "time": to_ns(first_key(event, "timeUnixNano", "time_unix_nano", "timestamp", "time")),
                "attributes": attributes(event.get("attributes")),
            }
        )
    return events


def _link(link: dict[str, Any]) -> dict[str, Any]:
    return {
        "trace_id": normalize_id(first_key(link, "traceId", "trace_id")),
        "span_id": normalize_id(first_key(link, "spanId", "span_id")),
        "attributes": attributes(link.get("attributes")),
    }


# --- attributes -------------------------------------------------------------------------------


def attributes(value: Any) -> dict[str, Any]:
    """Flatten OTLP KeyValue lists or plain (possibly nested) dicts into dotted keys.

    Nested objects and lists of objects become dotted keys with list indices
    (`llm.input_messages.0.message.role`); lists of plain values stay lists."""
    out: dict[str, Any] = {}
    if isinstance(value, list):
        for kv in value:
            if isinstance(kv, dict) and isinstance(kv.get("key"), str):
                _flatten_into(out, kv["key"], any_value(kv.get("value")))
    elif isinstance(value, dict):
        for key, item in value.items():
            _flatten_into(out, str(key), _unwrap(item))
    return out


def _flatten_into(out: dict[str, Any], prefix: str, value: Any) -> None:
    if isinstance(value, dict):
        if not value:
            out[prefix] = {}
        for key, item in value.items():
            _flatten_into(out, f"{prefix}.{key}", _unwrap(item))
    elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
        for i, item in enumerate(value):
            _flatten_into(out, f"{prefix}.{i}", _unwrap(item))
    else:
        out[prefix] = value


def _unwrap(value: Any) -> Any:
    """Plain-dict attributes sometimes carry typed OTLP values; unwrap those."""
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ANY_VALUE_KEYS:
        return any_value(value)
    return value


def any_value(value: Any) -> Any:
    """Convert an OTLP AnyValue to a plain value (kvlists to dicts, arrays to lists)."""
    if not isinstance(value, dict):
        return value
    for key, item in value.items():
        match key:
            case "stringValue" | "string_value":
                return item
            case "intValue" | "int_value":
                try:
                    number = int(item)
                except (TypeError, ValueError):
                    return item
                return number if -INT64_LIMIT <= number < INT64_LIMIT else str(item)  # kept as written
            case "doubleValue" | "double_value":
                try:
                    return float(item)
                except (TypeError, ValueError):
                    return item
            case "boolValue" | "bool_value":
                return item if isinstance(item, bool) else str(item).lower() == "true"
            case "bytesValue" | "bytes_value":
                return item
            case "arrayValue" | "array_value":
                return [any_value(v) for v in as_list(item.get("values") if isinstance(item, dict) else item)]
            case "kvlistValue" | "kvlist_value":
                values = item.get("values") if isinstance(item, dict) else item
                return {
                    kv.get("key"): any_value(kv.get("value"))
                    for kv in as_list(values)
                    if isinstance(kv, dict)
                }
    return None


# --- scalars ----------------------------------------------------------------------------------


def normalize_id(value: Any) -> str:
    """Ids as lowercase hex when they are hex (any case, `0x`, UUID dashes) or base64 of 8/16 bytes;
    anything else is kept as text. Empty and all-zero ids mean 'none'."""
    if value is None or isinstance(value, bool | dict | list):
        return ""
    if isinstance(value, bytes):
        text = value.hex()
    elif isinstance(value, int):
        text = str(value)
    else:
        text = str(value).strip()
    if text.startswith(("0x", "0X")) and _HEX.fullmatch(text[2:]):
        text = text[2:]
    if _UUID.fullmatch(text):
        text = text.replace("-", "")
    if _HEX.fullmatch(text):
        text = text.lower()
    elif len(text) in (11, 12, 22, 24) and re.fullmatch(r"[A-Za-z0-9+/_-]+={0,2}", text):
        try:
            raw = base64.b64decode(
                text + "=" * (-len(text) % 4), altchars=b"-_" if "-" in text or "_" in text else None
            )
            if len(raw) in (8, 16):
                text = raw.hex()
        except (binascii.Error, ValueError):
            pass
    return "" if not text.strip("0") else text


def _str(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def first_key(obj: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        value = obj.get(key)
        if value is not None:
            return value
    return None


def as_list(value: Any) -> Iterable[Any]:
    return value if isinstance(value, list) else ()
