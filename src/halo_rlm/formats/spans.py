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
import functools
import math
import re
from collections.abc import Callable, Iterable
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from halo_rlm.utils import INT64_LIMIT, to_ns

__all__ = [
    "MAX_DEPTH",
    "OTEL_KINDS",
    "STATUS_CODES",
    "DecodeError",
    "any_value",
    "as_list",
    "attributes",
    "duration_ns",
    "first_key",
    "flat_span",
    "is_zero_id",
    "normalize_id",
    "otlp_id",
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
MAX_DEPTH = 64  # levels of nesting a record may have: deeper ones are refused, never walked
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
_ASCII_SPACE = " \t\n\v\f\r"  # what the store's SQL trims from ids too
_HEX_OR_DASH = re.compile(r"[0-9a-fA-F-]+")  # hex ids and UUIDs, lower-cased with their dashes kept
_PADDED_BASE64 = re.compile(r"[A-Za-z0-9+/_-]+={1,2}")


class DecodeError(ValueError):
    """A record that is not a span; the message says what was found instead."""


def flat_span(
    span: dict[str, Any],
    resource_attrs: dict[str, Any] | None = None,
    scope: Any = None,
    *,
    read_id: Callable[[Any], str] | None = None,
) -> dict[str, Any]:
    """Build a flat span from any single-span shape (OTLP, HALO flat, OpenInference, TRAIL).
    `read_id` reads its ids (`otlp_id` inside OTLP requests, where ids may be base64)."""
    read_id = read_id or normalize_id
    context: dict[str, Any] = span["context"] if isinstance(span.get("context"), dict) else {}
    trace_id = _required_id(
        first_key(span, "trace_id", "traceId") or first_key(context, "trace_id", "traceId"), "trace", read_id
    )
    span_id = _required_id(
        first_key(span, "span_id", "spanId") or first_key(context, "span_id", "spanId"), "span", read_id
    )
    attrs = attributes(first_key(span, "attributes", "span_attributes"))
    otel_kind, oi_kind = _kinds(first_key(span, "kind", "span_kind"))
    if oi_kind and "openinference.span.kind" not in attrs:
        attrs["openinference.span.kind"] = oi_kind
    if resource_attrs is None:
        resource_attrs = _resource_attributes(span)
    if scope is None:
        scope = first_key(span, "scope", "instrumentationScope") or {
            "name": span.get("scope_name"),
            "version": span.get("scope_version"),
        }
    start = to_ns(
        first_key(span, "start_time", "startTimeUnixNano", "start_time_unix_nano", "startTime", "timestamp")
    )
    end = to_ns(first_key(span, "end_time", "endTimeUnixNano", "end_time_unix_nano", "endTime"))
    if end is None and start is not None:
        duration = duration_ns(first_key(span, "duration", "duration_ns"))
        if duration is not None and 0 < start + duration < INT64_LIMIT:
            end = start + duration
    out: dict[str, Any] = {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": read_id(first_key(span, "parent_span_id", "parentSpanId", "parent_id", "parentId")),
        "trace_state": _str(first_key(span, "trace_state", "traceState")) or "",
        "name": _str(first_key(span, "name", "span_name")) or "",
        "kind": f"SPAN_KIND_{otel_kind}",
        "start_time": start,
        "end_time": end,
        "status": _status(span),
        "resource": {"attributes": resource_attrs},
        "scope": {"name": _str(scope.get("name")) or "", "version": _str(scope.get("version")) or ""}
        if isinstance(scope, dict)
        else {"name": "", "version": ""},
        "attributes": attrs,
    }
    events = _events(first_key(span, "events", "logs"))
    if events:
        out["events"] = events
    links = span.get("links")
    if isinstance(links, list) and links:
        out["links"] = [_link(link, read_id) for link in links if isinstance(link, dict)]
    for key in ("droppedAttributesCount", "dropped_attributes_count", "droppedEventsCount", "flags"):
        if span.get(key):
            out[key] = span[key]
    return out


def _resource_attributes(span: dict[str, Any]) -> dict[str, Any]:
    """A span's resource attributes: OTLP's `resource`, or TRAIL's `resource_attributes` and
    `service_name`."""
    resource = span.get("resource")
    found = attributes(
        resource.get("attributes") if isinstance(resource, dict) else span.get("resource_attributes")
    )
    service = span.get("service_name")
    if isinstance(service, str) and service and "service.name" not in found:
        found["service.name"] = service
    return found


def _required_id(value: Any, what: str, read_id: Callable[[Any], str]) -> str:
    if isinstance(value, dict | list):
        raise DecodeError(
            f"{what} id is a JSON {'object' if isinstance(value, dict) else 'array'}, not a string"
        )
    normalized = read_id(value)
    if not normalized:
        written = "" if value is None or isinstance(value, bool) else str(value).strip()
        raise DecodeError(f"invalid (all-zero) {what} id" if written else f"missing {what} id")
    return normalized


_ISO_DURATION = re.compile(
    r"P(?:([0-9]+(?:[.,][0-9]+)?)W)?(?:([0-9]+(?:[.,][0-9]+)?)D)?"
    r"(?:T(?:([0-9]+(?:[.,][0-9]+)?)H)?(?:([0-9]+(?:[.,][0-9]+)?)M)?(?:([0-9]+(?:[.,][0-9]+)?)S)?)?",
    re.IGNORECASE,
)
_DURATION_UNITS = (7 * 86_400, 86_400, 3_600, 60, 1)
_DECIMAL_NUMBER = re.compile(r"[0-9]*\.[0-9]+(?:[eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+")


def duration_ns(value: Any) -> int | None:
    """A duration in nanoseconds: a number (nanoseconds) or an ISO-8601 duration (`PT1M48.75533S`,
    `P1DT2H`; years and months have no fixed length and are not read). None when it is neither."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return round(value) if math.isfinite(value) and 0 <= value < INT64_LIMIT else None
    text = str(value).strip()
    if text.isascii() and text.isdecimal():  # ASCII digits only, as the SQL reads them
        return duration_ns(int(text))
    if _DECIMAL_NUMBER.fullmatch(text):
        return duration_ns(float(text))
    match = _ISO_DURATION.fullmatch(text)
    if not match or not any(match.groups()) or text.upper().endswith("T"):
        return None
    seconds = sum(
        (
            Decimal(part.replace(",", ".")) * unit
            for part, unit in zip(match.groups(), _DURATION_UNITS, strict=True)
            if part
        ),
        Decimal(0),
    )
    ns = int((seconds * 1_000_000_000).to_integral_value(rounding=ROUND_HALF_UP))
    return ns if ns < INT64_LIMIT else None


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
                # TRAIL's logs carry a `body` where OTLP events carry attributes.
                "attributes": attributes(
                    event.get("attributes") if event.get("attributes") is not None else event.get("body")
                ),
            }
        )
    return events


def _link(link: dict[str, Any], read_id: Callable[[Any], str]) -> dict[str, Any]:
    return {
        "trace_id": read_id(first_key(link, "traceId", "trace_id")),
        "span_id": read_id(first_key(link, "spanId", "span_id")),
        "attributes": attributes(link.get("attributes")),
    }


# --- attributes -------------------------------------------------------------------------------


def attributes(value: Any) -> dict[str, Any]:
    """Flatten OTLP KeyValue lists or plain (possibly nested) dicts into dotted keys.

    Nested objects and lists of objects become dotted keys with list indices
    (`llm.input_messages.0.message.role`); lists of plain values stay lists. A value nested deeper
    than `MAX_DEPTH` levels is a `DecodeError`: no reader has to walk it."""
    out: dict[str, Any] = {}
    if isinstance(value, list):
        for kv in value:
            if not isinstance(kv, dict) or not isinstance(key := kv.get("key"), str):
                continue
            typed = kv.get("value")
            # The usual attribute is one string, number or bool: read it directly (a third of OTLP decoding).
            if type(typed) is dict and len(typed) == 1:
                kind, item = next(iter(typed.items()))
                if kind == "stringValue" and type(item) is str:
                    out[key] = item
                    continue
                if kind == "boolValue" and type(item) is bool:
                    out[key] = item
                    continue
            _flatten_into(out, key, any_value(typed), 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _flatten_into(out, str(key), _unwrap(item), 1)
    return out


def _flatten_into(out: dict[str, Any], prefix: str, value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise DecodeError(f"attribute {prefix[:80]!r} is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        if not value:
            out[prefix] = {}
        for key, item in value.items():
            _flatten_into(out, f"{prefix}.{key}", _unwrap(item, depth), depth + 1)
    elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
        for i, item in enumerate(value):
            _flatten_into(out, f"{prefix}.{i}", _unwrap(item, depth), depth + 1)
    else:
        if isinstance(value, list):
            _check_depth(value, prefix, depth)
        out[prefix] = value


def _check_depth(value: list[Any], prefix: str, depth: int) -> None:
    """Lists of plain values are kept whole; refuse one nested too deep (lists of lists of ...)."""
    level = [value]
    while level:
        if depth > MAX_DEPTH:
            raise DecodeError(f"attribute {prefix[:80]!r} is nested deeper than {MAX_DEPTH} levels")
        level = [item for items in level for item in items if isinstance(item, list)]
        depth += 1


def _unwrap(value: Any, depth: int = 0) -> Any:
    """Plain-dict attributes sometimes carry typed OTLP values; unwrap those."""
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ANY_VALUE_KEYS:
        return any_value(value, depth)
    return value


def any_value(value: Any, depth: int = 0) -> Any:
    """Convert an OTLP AnyValue to a plain value (kvlists to dicts, arrays to lists)."""
    if not isinstance(value, dict):
        return value
    if depth > MAX_DEPTH:
        raise DecodeError(f"an attribute value is nested deeper than {MAX_DEPTH} levels")
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
                values = item.get("values") if isinstance(item, dict) else item
                return [any_value(v, depth + 1) for v in as_list(values)]
            case "kvlistValue" | "kvlist_value":
                values = item.get("values") if isinstance(item, dict) else item
                return {
                    kv.get("key"): any_value(kv.get("value"), depth + 1)
                    for kv in as_list(values)
                    if isinstance(kv, dict)
                }
    return None


# --- scalars ----------------------------------------------------------------------------------


def normalize_id(value: Any) -> str:
    """An id as the source wrote it, with hex (any case, `0x`, UUID dashes kept) in lower case: ids are
    opaque strings outside OTLP's protobuf-JSON mapping (`otlp_id`). Empty and all-zero ids mean 'none'."""
    if type(value) is str:
        return _text_id(value)
    if value is None or isinstance(value, bool | dict | list):
        return ""
    if isinstance(value, bytes):
        return _text_id(value.hex())
    return _text_id(str(value))


@functools.lru_cache(maxsize=65536)  # the spans of a trace repeat its ids
def _text_id(value: str) -> str:
    text = value.strip(_ASCII_SPACE)
    if text.startswith(("0x", "0X")) and _HEX.fullmatch(text[2:]):
        text = text[2:]
    if _HEX_OR_DASH.fullmatch(text):
        text = text.lower()
    return "" if is_zero_id(text) else text


def otlp_id(value: Any) -> str:
    """An id in an OTLP/JSON request: hex, or the base64 that protobuf's JSON mapping writes (padded, of
    8 or 16 bytes) turned into hex; anything else as `normalize_id`."""
    if isinstance(value, str) and len(value) in (12, 24) and _PADDED_BASE64.fullmatch(value):
        try:
            raw = base64.b64decode(value, altchars=b"-_" if "-" in value or "_" in value else None)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) in (8, 16):
            return normalize_id(raw)
    return normalize_id(value)


def is_zero_id(text: str) -> bool:
    """An id made only of zeros (and dashes), or empty: OTLP's 'no id'."""
    return not text.strip("0-")


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
