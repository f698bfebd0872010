"""OTLP trace requests in and out: request bodies to flat spans, flat spans to HALO JSONL lines, and
the responses an OTLP/HTTP receiver sends back.

`halo collect` decodes what exporters send with these functions, and `halo_rlm.tracing` writes its
file through the same ones, so a span looks the same whichever way it reached HALO. Protobuf spans
become flat spans directly (ids via `bytes.hex()`); going through protobuf's JSON mapping instead
would turn ids into base64 and cost several times as much. `request_lines` goes straight on to the
JSONL lines, with the times as text from the start, rather than making each flat span and then a
copy of it for its line.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from halo_rlm.formats.decode import Decoded, decode_record, describe_non_span
from halo_rlm.formats.spans import OTEL_KINDS, STATUS_CODES, DecodeError, attributes
from halo_rlm.utils import ns_to_iso

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_LAST_ISO_NS = 253402300799 * 10**9  # 9999-12-31T23:59:59Z: later times stay numbers
_SCALARS = frozenset({"string_value", "int_value", "double_value", "bool_value"})


@dataclass
class Lines:
    """A request's spans as lines of HALO's JSONL (`span_line`), each line's trace id, and why the
    spans left out were left out. `verbatim`: every text in the lines is one the request body holds
    byte for byte (HALO's own keys, hex ids, times and enum names aside), as in a protobuf request
    without array, key-value-list or bytes values (their lines join keys, or write base64): a
    search of the body then finds whatever a search of the lines would."""

    lines: list[bytes] = field(default_factory=list)
    trace_ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    verbatim: bool = False


def decode_request(body: bytes, media_type: str) -> Decoded:
    """Flat spans from an `ExportTraceServiceRequest` body (`PROTOBUF` or `JSON`). Bad spans in a good
    request become `errors`; a body that is not such a request raises `DecodeError`."""
    return request_spans(_parse(body)) if media_type == PROTOBUF else _json(body)


def request_lines(body: bytes, media_type: str) -> Lines:
    """`span_line` of each span `decode_request` finds in a request body, and its errors, then those of
    spans that cannot be written as JSON (a value nested too deeply, an integer past 64 bits)."""
    out = Lines()
    unwritable: list[str] = []
    if media_type == PROTOBUF:
        composite: list[str] = []
        for span, trace_id, span_id, resource, scope in _request_spans(_parse(body), out.errors, composite):
            try:
                out.lines.append(
                    orjson.dumps(_flat_span(span, trace_id, span_id, resource, scope, _line_time, composite))
                )
            except orjson.JSONEncodeError as exc:
                unwritable.append(f"span {span_id}: {exc}")
                continue
            out.trace_ids.append(trace_id)
        out.verbatim = not composite
    else:
        decoded = _json(body)
        out.errors = decoded.errors
        for flat in decoded.spans:
            try:
                out.lines.append(span_line(flat))
            except orjson.JSONEncodeError as exc:
                unwritable.append(f"span {flat['span_id']}: {exc}")
                continue
            out.trace_ids.append(flat["trace_id"])
    out.errors += unwritable
    return out


def request_spans(request: ExportTraceServiceRequest) -> Decoded:
    """Flat spans from a parsed protobuf request."""
    out = Decoded()
    composite: list[str] = []
    for span, trace_id, span_id, resource, scope in _request_spans(request, out.errors, composite):
        out.spans.append(_flat_span(span, trace_id, span_id, resource, scope, _flat_time, composite))
    return out


def span_line(span: dict[str, Any]) -> bytes:
    """One line of HALO's JSONL (trace-formats.md §1): the flat span with its times as ISO-8601 UTC
    with nine fractional digits and `Z`, which keeps every nanosecond."""
    line = {**span, "start_time": _iso(span["start_time"]), "end_time": _iso(span["end_time"])}
    if "events" in span:
        line["events"] = [{**event, "time": _iso(event["time"])} for event in span["events"]]
    return orjson.dumps(line)


def encode_response(rejected: int, message: str, media_type: str) -> bytes:
    """An `ExportTraceServiceResponse`: empty on full success, else a partial success with how many
    spans were rejected and why."""
    response = ExportTraceServiceResponse()
    if rejected:
        response.partial_success.CopyFrom(
            ExportTracePartialSuccess(rejected_spans=rejected, error_message=message)
        )
    if media_type == PROTOBUF:
        return response.SerializeToString()
    if not rejected:
        return b"{}"
    # proto3's JSON mapping writes 64-bit integers as strings
    return orjson.dumps({"partialSuccess": {"rejectedSpans": str(rejected), "errorMessage": message}})


def encode_status(message: str, media_type: str) -> bytes:
    """The body of a failed request: a `google.rpc.Status` (OTLP/HTTP's error body), protobuf or JSON."""
    if media_type == PROTOBUF:
        return Status(message=message).SerializeToString()
    return orjson.dumps({"message": message})


def _parse(body: bytes) -> ExportTraceServiceRequest:
    try:
        return ExportTraceServiceRequest.FromString(body)
    except ProtobufDecodeError as exc:
        raise DecodeError(f"not an OTLP protobuf ExportTraceServiceRequest ({exc})") from exc


def _request_spans(
    request: ExportTraceServiceRequest, errors: list[str], composite: list[str]
) -> Iterator[tuple[Any, str, str, dict[str, Any], dict[str, str]]]:
    """Each span of a parsed request with its hex ids and its resource and scope (made once for all
    their spans); a span without an id goes to `errors` instead (`composite`: as `_attributes`)."""
    for r, resource_spans in enumerate(request.resource_spans):
        resource = {"attributes": _attributes(resource_spans.resource.attributes, composite)}
        for s, scope_spans in enumerate(resource_spans.scope_spans):
            scope = {"name": scope_spans.scope.name, "version": scope_spans.scope.version}
            for i, span in enumerate(scope_spans.spans):
                trace_id, span_id = _id(span.trace_id), _id(span.span_id)
                missing = "trace" if not trace_id else "span" if not span_id else None
                if missing:
                    errors.append(f"resourceSpans[{r}].scopeSpans[{s}].spans[{i}]: missing {missing} id")
                    continue
                yield span, trace_id, span_id, resource, scope


def _json(body: bytes) -> Decoded:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"invalid JSON: {exc}") from exc
    resource_spans = (
        (obj.get("resourceSpans") if "resourceSpans" in obj else obj.get("resource_spans"))
        if isinstance(obj, dict)
        else None
    )
    if obj == {} or resource_spans == []:
        return Decoded()  # proto3 JSON of an empty request
    if not isinstance(resource_spans, list):
        raise DecodeError(f"not an OTLP ExportTraceServiceRequest: {describe_non_span(obj)}")
    try:
        return decode_record({"resourceSpans": resource_spans})
    except DecodeError:
        return Decoded()  # resource spans without any span in them


def _flat_span(
    span: Any,
    trace_id: str,
    span_id: str,
    resource: dict[str, Any],
    scope: dict[str, str],
    time: Callable[[int], Any],
    composite: list[str],
) -> dict[str, Any]:
    """The flat span, its times as `time` gives them (numbers for a flat span, text for a line);
    `composite` as `_attributes`."""
    # The same keys, in the same order, as `spans.flat_span` gives OTLP/JSON spans.
    status = span.status
    out: dict[str, Any] = {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": _id(span.parent_span_id),
        "trace_state": span.trace_state,
        "name": span.name,
        "kind": _name(_KIND_NAMES, span.kind, "SPAN_KIND_INTERNAL"),
        "start_time": time(span.start_time_unix_nano),
        "end_time": time(span.end_time_unix_nano),
        "status": {"code": _name(_STATUS_NAMES, status.code, "STATUS_CODE_UNSET"), "message": status.message},
        "resource": resource,
        "scope": scope,
        "attributes": _attributes(span.attributes, composite),
    }
    if span.events:
        out["events"] = [
            {
                "name": e.name,
                "time": time(e.time_unix_nano),
                "attributes": _attributes(e.attributes, composite),
            }
            for e in span.events
        ]
    if span.links:
        out["links"] = [
            {
                "trace_id": _id(link.trace_id),
                "span_id": _id(link.span_id),
                "attributes": _attributes(link.attributes, composite),
            }
            for link in span.links
        ]
    for key, value in (
        ("droppedAttributesCount", span.dropped_attributes_count),
        ("droppedEventsCount", span.dropped_events_count),
        ("flags", span.flags),
    ):
        if value:
            out[key] = value
    return out


def _attributes(key_values: Any, composite: list[str]) -> dict[str, Any]:
    """Flat attributes; nested values get dotted keys exactly as in OTLP/JSON (`spans.attributes`).
    The kind of each value that is not a string, number or boolean is added to `composite`."""
    out: dict[str, Any] = {}
    for kv in key_values:
        typed = kv.value
        kind = typed.WhichOneof("value")
        if kind in _SCALARS:  # most attributes: read here, without the calls below
            out[kv.key] = getattr(typed, kind)
            continue
        composite.append(kind or "unset")
        value = _value(typed)
        if isinstance(value, dict) or (
            isinstance(value, list) and any(isinstance(item, dict) for item in value)
        ):
            out.update(attributes({kv.key: value}))
        else:
            out[kv.key] = value
    return out


def _value(value: AnyValue) -> Any:
    field = value.WhichOneof("value")
    if field in _SCALARS:
        return getattr(value, field)
    if field == "array_value":
        return [_value(item) for item in value.array_value.values]
    if field == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    if field == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()  # as OTLP/JSON carries bytes
    return None  # unset, or a profiles-dictionary index (`string_value_strindex`) that spans never use


def _id(raw: bytes) -> str:
    """Lowercase hex; empty or all-zero means none (as `spans.normalize_id`)."""
    text = raw.hex()
    return text if text.strip("0") else ""


def _name(names: tuple[str, ...], value: int, unknown: str) -> str:
    return names[value] if 0 <= value < len(names) else unknown


_KIND_NAMES = tuple(f"SPAN_KIND_{name}" for name in OTEL_KINDS)
_STATUS_NAMES = tuple(f"STATUS_CODE_{name}" for name in STATUS_CODES)


def _iso(ns: Any) -> Any:
    return ns_to_iso(ns) if isinstance(ns, int) and 0 < ns < _LAST_ISO_NS else ns


def _flat_time(ns: int) -> int | None:
    return ns or None  # proto3 has no "unset": 0 means no time


def _line_time(ns: int) -> Any:
    return ns_to_iso(ns) if 0 < ns < _LAST_ISO_NS else ns or None  # as `span_line` writes `_flat_time`


__all__ = [
    "JSON",
    "PROTOBUF",
    "Lines",
    "decode_request",
    "encode_response",
    "encode_status",
    "request_lines",
    "request_spans",
    "span_line",
]
