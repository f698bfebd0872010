"""Decoding trace records of every supported format into flat spans.

A *flat span* is HALO's one-span-per-line shape (trace-formats.md §1): `trace_id`, `span_id`,
`parent_span_id`, `trace_state`, `name`, `kind` (`SPAN_KIND_*`), `start_time` / `end_time`,
`status {code, message}`, `resource {attributes}`, `scope {name, version}`, a flat `attributes` map
of dotted keys, plus `events` and `links` when there are any. It is what the store keeps as each
span's raw record, so every field of the source survives.

Lines already in that shape never come here: DuckDB reads them directly (see `normalize.py`).
Everything else does: OTLP/JSON (`TracesData`, `ExportTraceServiceRequest`, camelCase or snake_case,
hex or base64 ids), single OTLP span objects, OpenInference / Phoenix span JSON, TRAIL-style nested
trees, Phoenix REST pages, and Langfuse observations, API pages and traces (mapped in `langfuse.py`).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

INT64_LIMIT = 2**63  # OTLP integers are int64; beyond, a value is kept as text

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
_ISO = re.compile(
    r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2})?)(?:[.,](\d+))?\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?"
)


class DecodeError(ValueError):
    """A record that is not a span; the message says what was found instead."""


@dataclass
class Decoded:
    spans: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def decode_record(obj: Any) -> Decoded:
    """Decode one JSON value (a line, or a whole document) into flat spans.

    Bad spans inside a good container become `errors` while their siblings are kept; a value that
    holds no spans at all raises `DecodeError`."""
    out = Decoded()
    _decode_into(obj, out, where="")
    if not out.spans and not out.errors:
        raise DecodeError(describe_non_span(obj))
    return out


def _decode_into(obj: Any, out: Decoded, where: str) -> None:
    if isinstance(obj, list) and not any(isinstance(item, dict | list) for item in obj):
        raise DecodeError(describe_non_span(obj))
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            try:
                _decode_into(item, out, f"{where}[{i}]")
            except DecodeError as exc:
                out.errors.append(f"{where}[{i}]: {exc}")
        return
    if not isinstance(obj, dict):
        raise DecodeError(describe_non_span(obj))
    resource_spans = _first(obj, "resourceSpans", "resource_spans")
    if resource_spans is not None:
        _otlp(resource_spans, out, where)
    elif isinstance(obj.get("data"), list) and "trace_id" not in obj:
        _decode_into(obj["data"], out, f"{where}.data")  # a Phoenix REST page: {"data": [spans], ...}
    elif isinstance(obj.get("spans"), list) and _first(obj, "trace_id", "traceId") is not None:
        _tree(obj["spans"], str(_first(obj, "trace_id", "traceId")), "", out, f"{where}.spans")
    elif _looks_like_span(obj):
        _collect(out, where, lambda: flat_span(obj))
    elif _langfuse().looks_like_observation(obj):
        _collect(out, where, lambda: _langfuse().observation_span(obj))
    elif isinstance(obj.get("observations"), list) and "timestamp" in obj and "id" in obj:
        _langfuse_trace(obj, out, where)  # a Langfuse trace with its observations (GET /traces/{id})
    else:
        raise DecodeError(describe_non_span(obj))


def _langfuse() -> Any:
    # Imported on first use: the Langfuse mapping is built on this module's helpers.
    from halo_rlm import langfuse

    return langfuse


def _langfuse_trace(trace: dict[str, Any], out: Decoded, where: str) -> None:
    for i, obs in enumerate(trace["observations"]):
        if isinstance(obs, dict):
            obs = {"traceId": trace["id"], **obs}
        _collect(out, f"{where}.observations[{i}]", lambda obs=obs: _langfuse().observation_span(obs, trace))


def _collect(out: Decoded, where: str, build: Any) -> None:
    try:
        out.spans.append(build())
    except DecodeError as exc:
        out.errors.append(f"{where}: {exc}" if where else str(exc))


def _looks_like_span(obj: dict[str, Any]) -> bool:
    context = obj.get("context")
    if isinstance(context, dict) and ("span_id" in context or "spanId" in context):
        return True
    return any(k in obj for k in ("span_id", "spanId")) and any(k in obj for k in ("trace_id", "traceId"))


def describe_non_span(obj: Any) -> str:
    if isinstance(obj, dict):
        keys = ", ".join(list(obj)[:8]) + (", ..." if len(obj) > 8 else "")
        return (
            f"not a span: a JSON object with keys {{{keys}}} (expected a span with trace and span ids, "
            "or OTLP resourceSpans)"
        )
    if isinstance(obj, list):
        return "not a span: an empty JSON array" if not obj else "not a span: a JSON array of plain values"
    return f"not a span: a JSON {type(obj).__name__.replace('NoneType', 'null')}"


# --- OTLP -------------------------------------------------------------------------------------


def _otlp(resource_spans: Any, out: Decoded, where: str) -> None:
    for r, rs in enumerate(_as_list(resource_spans)):
        if not isinstance(rs, dict):
            out.errors.append(f"{where}resourceSpans[{r}]: not an object")
            continue
        resource = rs.get("resource") or {}
        resource_attrs = attributes(resource.get("attributes") if isinstance(resource, dict) else None)
        scope_spans = _first(
            rs, "scopeSpans", "scope_spans", "instrumentationLibrarySpans", "instrumentation_library_spans"
        )
        for s, ss in enumerate(_as_list(scope_spans)):
            if not isinstance(ss, dict):
                out.errors.append(f"{where}resourceSpans[{r}].scopeSpans[{s}]: not an object")
                continue
            scope = _first(ss, "scope", "instrumentationLibrary", "instrumentation_library") or {}
            for i, span in enumerate(_as_list(ss.get("spans"))):
                path = f"{where}resourceSpans[{r}].scopeSpans[{s}].spans[{i}]"
                if not isinstance(span, dict):
                    out.errors.append(f"{path}: not an object")
                    continue
                _collect(out, path, lambda span=span: flat_span(span, resource_attrs, scope))


def _tree(spans: list[Any], trace_id: str, parent: str, out: Decoded, where: str) -> None:
    """TRAIL-style nested trees: each span may hold `child_spans`."""
    for i, span in enumerate(spans):
        path = f"{where}[{i}]"
        if not isinstance(span, dict):
            out.errors.append(f"{path}: not an object")
            continue
        try:
            built = flat_span({"trace_id": trace_id, "parent_span_id": parent, **span})
        except DecodeError as exc:
            out.errors.append(f"{path}: {exc}")
            continue
        out.spans.append(built)
        children = span.get("child_spans") or span.get("children")
        if isinstance(children, list):
            _tree(children, trace_id, built["span_id"], out, f"{path}.child_spans")


# --- one span ---------------------------------------------------------------------------------


def flat_span(
    span: dict[str, Any], resource_attrs: dict[str, Any] | None = None, scope: Any = None
) -> dict[str, Any]:
    """Build a flat span from any single-span shape (OTLP, HALO flat, OpenInference, TRAIL)."""
    context = span.get("context") if isinstance(span.get("context"), dict) else {}
    trace_id = _required_id(
        _first(span, "trace_id", "traceId") or _first(context, "trace_id", "traceId"), "trace"
    )
    span_id = _required_id(_first(span, "span_id", "spanId") or _first(context, "span_id", "spanId"), "span")
    attrs = attributes(_first(span, "attributes", "span_attributes"))
    otel_kind, oi_kind = _kinds(_first(span, "kind", "span_kind"))
    if oi_kind and "openinference.span.kind" not in attrs:
        attrs["openinference.span.kind"] = oi_kind
    resource = span.get("resource")
    if resource_attrs is None:
        resource_attrs = attributes(resource.get("attributes") if isinstance(resource, dict) else None)
    scope = scope if scope is not None else _first(span, "scope", "instrumentationScope") or {}
    out: dict[str, Any] = {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": normalize_id(
            _first(span, "parent_span_id", "parentSpanId", "parent_id", "parentId")
        ),
        "trace_state": _str(_first(span, "trace_state", "traceState")) or "",
        "name": _str(_first(span, "name", "span_name")) or "",
        "kind": f"SPAN_KIND_{otel_kind}",
        "start_time": time_ns(
            _first(span, "start_time", "startTimeUnixNano", "start_time_unix_nano", "startTime", "timestamp")
        ),
        "end_time": time_ns(_first(span, "end_time", "endTimeUnixNano", "end_time_unix_nano", "endTime")),
        "status": _status(span),
        "resource": {"attributes": resource_attrs},
        "scope": {"name": _str(scope.get("name")) or "", "version": _str(scope.get("version")) or ""}
        if isinstance(scope, dict)
        else {"name": "", "version": ""},
        "attributes": attrs,
    }
    if out["end_time"] is None and out["start_time"] is not None:
        duration = _first(span, "duration", "duration_ns")
        if isinstance(duration, int | float) and not isinstance(duration, bool) and math.isfinite(duration):
            end = out["start_time"] + int(duration)
            out["end_time"] = end if 0 < end < INT64_LIMIT else None
    events = _events(_first(span, "events", "logs"))
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
            _first(span, "status_code", "statusCode") or status,
            _first(span, "status_message", "statusMessage"),
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
    for event in _as_list(value):
        if not isinstance(event, dict):
            continue
        events.append(
            {
                "name": _str(event.get("name")) or "",
                "time": time_ns(_first(event, "timeUnixNano", "time_unix_nano", "timestamp", "time")),
                "attributes": attributes(event.get("attributes")),
            }
        )
    return events


def _link(link: dict[str, Any]) -> dict[str, Any]:
    return {
        "trace_id": normalize_id(_first(link, "traceId", "trace_id")),
        "span_id": normalize_id(_first(link, "spanId", "span_id")),
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
                return [
                    any_value(v) for v in _as_list(item.get("values") if isinstance(item, dict) else item)
                ]
            case "kvlistValue" | "kvlist_value":
                values = item.get("values") if isinstance(item, dict) else item
                return {
                    kv.get("key"): any_value(kv.get("value"))
                    for kv in _as_list(values)
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


def time_ns(value: Any) -> int | None:
    """Nanoseconds since the epoch from integers/decimal strings (ns, or s/ms/us by magnitude) or
    ISO-8601 strings; None when absent or unreadable."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return _scale(value)
    if isinstance(value, float):
        return _scale_float(value)
    text = str(value).strip()
    if not text:
        return None
    if text.isdecimal():
        return _scale(int(text))
    try:
        return _scale_float(float(text))
    except ValueError:
        return iso_to_ns(text)


def _scale(n: int) -> int | None:
    if n <= 0:
        return None
    if n < 10**11:  # seconds
        n *= 10**9
    elif n < 10**14:  # milliseconds
        n *= 10**6
    elif n < 10**17:  # microseconds
        n *= 10**3
    return n if n < INT64_LIMIT else None  # past 2262: not a time a span carries (nor a store column holds)


def _scale_float(x: float) -> int | None:
    if not math.isfinite(x) or x <= 0:
        return None
    if x < 1e11:
        return int(round(x * 1e9))
    return _scale(int(x))


def iso_to_ns(text: str) -> int | None:
    match = _ISO.fullmatch(text.strip())
    if not match:
        return None
    date, clock, fraction, zone = match.groups()
    if clock.count(":") == 1:
        clock += ":00"
    zone = zone or "Z"
    zone = (
        "+00:00"
        if zone in ("Z", "z")
        else (zone if ":" in zone or len(zone) == 3 else f"{zone[:3]}:{zone[3:]}")
    )
    try:
        stamp = datetime.fromisoformat(f"{date}T{clock}{zone}")
    except ValueError:
        return None
    nanos = int((fraction or "0")[:9].ljust(9, "0"))
    return int(stamp.timestamp()) * 10**9 + nanos


def _str(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _first(obj: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        value = obj.get(key)
        if value is not None:
            return value
    return None


def _as_list(value: Any) -> Iterable[Any]:
    return value if isinstance(value, list) else ()
