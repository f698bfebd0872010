"""Decoding trace records of every supported format into flat spans (`formats.spans`).

Lines already in the flat shape never come here: the store reads them directly. Everything else
does: OTLP/JSON (`TracesData`, `ExportTraceServiceRequest`, camelCase or snake_case, hex or base64
ids), single OTLP span objects, OpenInference / Phoenix span JSON, TRAIL-style nested trees, Phoenix
REST pages, and Langfuse observations, API pages and traces (mapped in `formats.langfuse`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from halo_rlm.formats import langfuse
from halo_rlm.formats.spans import (
    MAX_DEPTH,
    DecodeError,
    as_list,
    attributes,
    first_key,
    flat_span,
    otlp_id,
)

__all__ = ["DecodeError", "Decoded", "decode_record", "describe_non_span"]


@dataclass
class Decoded:
    spans: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def decode_record(obj: Any) -> Decoded:
    """Decode one JSON value (a line, or a whole document) into flat spans.

    Bad spans inside a good container become `errors` while their siblings are kept; a value that
    holds no spans at all raises `DecodeError`."""
    out = Decoded()
    _decode_into(obj, out, where="", depth=0)
    if not out.spans and not out.errors:
        raise DecodeError(describe_non_span(obj))
    return out


def _decode_into(obj: Any, out: Decoded, where: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise DecodeError(f"not a span: JSON nested deeper than {MAX_DEPTH} levels")
    if isinstance(obj, list) and not any(isinstance(item, dict | list) for item in obj):
        raise DecodeError(describe_non_span(obj))
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            try:
                _decode_into(item, out, f"{where}[{i}]", depth + 1)
            except DecodeError as exc:
                if depth + 1 > MAX_DEPTH:
                    raise  # one reason for the whole record, not one per level
                out.errors.append(f"{where}[{i}]: {exc}")
        return
    if not isinstance(obj, dict):
        raise DecodeError(describe_non_span(obj))
    resource_spans = first_key(obj, "resourceSpans", "resource_spans")
    if resource_spans is not None:
        _otlp(resource_spans, out, where)
    elif isinstance(obj.get("data"), list) and "trace_id" not in obj:
        # a Phoenix REST page: {"data": [spans], ...}
        _decode_into(obj["data"], out, f"{where}.data", depth + 1)
    elif isinstance(obj.get("spans"), list) and first_key(obj, "trace_id", "traceId") is not None:
        _tree(obj["spans"], str(first_key(obj, "trace_id", "traceId")), "", out, f"{where}.spans", 0)
    elif _looks_like_span(obj):
        _collect(out, where, lambda: flat_span(obj))
    elif langfuse.looks_like_observation(obj):
        _collect(out, where, lambda: langfuse.observation_span(obj))
    elif isinstance(obj.get("trace"), dict) and isinstance(obj.get("observations"), list):
        # Langfuse's download of a trace (UI and its framework fixtures): {"trace": {...}, "observations": [...]}
        _langfuse_trace(obj["trace"], obj["observations"], out, f"{where}.observations")
    elif isinstance(obj.get("observations"), list) and "timestamp" in obj and "id" in obj:
        # a Langfuse trace with its observations (GET /api/public/traces/{id})
        _langfuse_trace(obj, obj["observations"], out, f"{where}.observations")
    else:
        raise DecodeError(describe_non_span(obj))


def _langfuse_trace(trace: dict[str, Any], observations: list[Any], out: Decoded, where: str) -> None:
    if not observations:
        out.errors.append(f"{where}: a Langfuse trace without observations (nothing to store)")
    for i, obs in enumerate(observations):
        if isinstance(obs, dict) and "id" in trace:
            obs = {"traceId": trace["id"], **obs}
        _collect(out, f"{where}[{i}]", lambda obs=obs: langfuse.observation_span(obs, trace))


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


def _otlp(resource_spans: Any, out: Decoded, where: str) -> None:
    for r, rs in enumerate(as_list(resource_spans)):
        if not isinstance(rs, dict):
            out.errors.append(f"{where}resourceSpans[{r}]: not an object")
            continue
        resource = rs.get("resource") or {}
        resource_attrs = attributes(resource.get("attributes") if isinstance(resource, dict) else None)
        scope_spans = first_key(
            rs, "scopeSpans", "scope_spans", "instrumentationLibrarySpans", "instrumentation_library_spans"
        )
        for s, ss in enumerate(as_list(scope_spans)):
            if not isinstance(ss, dict):
                out.errors.append(f"{where}resourceSpans[{r}].scopeSpans[{s}]: not an object")
                continue
            scope = first_key(ss, "scope", "instrumentationLibrary", "instrumentation_library") or {}
            for i, span in enumerate(as_list(ss.get("spans"))):
                path = f"{where}resourceSpans[{r}].scopeSpans[{s}].spans[{i}]"
                if not isinstance(span, dict):
                    out.errors.append(f"{path}: not an object")
                    continue
                _collect(
                    out,
                    path,
                    lambda span=span, resource_attrs=resource_attrs, scope=scope: flat_span(
                        span, resource_attrs, scope, read_id=otlp_id
                    ),
                )


def _tree(spans: list[Any], trace_id: str, parent: str, out: Decoded, where: str, depth: int) -> None:
    """TRAIL-style nested trees: each span may hold `child_spans`."""
    if depth > MAX_DEPTH:
        out.errors.append(f"{where}: spans nested deeper than {MAX_DEPTH} levels")
        return
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
            _tree(children, trace_id, built["span_id"], out, f"{path}.child_spans", depth + 1)
