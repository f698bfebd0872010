"""Tracing an agent for HALO in one call.

    import halo_rlm.tracing
    halo_rlm.tracing.setup("traces.jsonl")            # a file `halo` reads
    halo_rlm.tracing.setup("http://127.0.0.1:4318")   # or a running `halo collect`

`setup` makes an OpenTelemetry `TracerProvider` the global one and turns on OpenInference
instrumentation for the OpenAI Agents SDK and the OpenAI client when they are installed. Spans
are written in HALO's flat JSONL format through the same code `halo collect` uses, so both paths give
the same lines. Credentials are scrubbed from every span before it leaves the process (`halo_rlm.scrub`).
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Status

from halo_rlm.formats import otlp
from halo_rlm.scrub import scrub_attributes, scrub_text

AGENTS_SCOPE, OPENAI_SCOPE = (
    "openinference.instrumentation.openai_agents",
    "openinference.instrumentation.openai",
)
# (distribution whose code is traced, instrumentor module, instrumentor class)
INSTRUMENTATIONS = (
    ("openai-agents", AGENTS_SCOPE, "OpenAIAgentsInstrumentor"),
    ("openai", OPENAI_SCOPE, "OpenAIInstrumentor"),
)
_warned: set[str] = set()  # each warning is given once per process


def setup(
    target: str | os.PathLike[str] = "traces.jsonl",
    *,
    service_name: str | None = None,
    headers: Mapping[str, str] | None = None,
    instrument: bool = True,
) -> TracerProvider:
    """Send this process's spans to `target`: a JSONL file path (appended to), or the `http(s)://` URL
    of an OTLP/HTTP receiver such as `halo collect` (a URL without a path gets `/v1/traces`).

    `service_name` defaults to `$OTEL_SERVICE_NAME`, else the script's name. `headers` go with every
    OTLP request (e.g. `{"Authorization": "Bearer ..."}` for `halo collect --token`); without them the
    standard `OTEL_EXPORTER_OTLP_TRACES_HEADERS` applies. With `instrument`, the OpenAI Agents SDK
    and the OpenAI client are traced through OpenInference when installed. Returns the provider, now
    the global one; spans still buffered are written when the process exits."""
    exporter = ScrubbingExporter(_exporter(os.fspath(target), headers))
    resource = Resource.create({"service.name": service_name} if service_name else {})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": Path(sys.argv[0]).stem or "agent"}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(_SkipRepeatedLLMSpans(BatchSpanProcessor(exporter)))
    trace.set_tracer_provider(provider)
    if instrument:
        _instrument(provider)
    return provider


class JsonlSpanExporter(SpanExporter):
    """Appends finished spans to a file in HALO's flat JSONL format, one span per line."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")  # noqa: SIM115  (closed by shutdown())
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = [otlp.span_line(span) for span in otlp.request_spans(encode_spans(spans)).spans]
        with self._lock:
            if self._file.closed:
                return SpanExportResult.FAILURE
            self._file.write(b"".join(line + b"\n" for line in lines))
            self._file.flush()  # so `halo` can read the spans while the agent still runs
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        with self._lock:
            if not self._file.closed:
                self._file.flush()
        return True

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()


class _SkipRepeatedLLMSpans(SpanProcessor):
    """Passes spans on to `inner`, except the OpenAI client's span for a model call the Agents SDK
    already traces as an LLM span: the two describe one call, and HALO would count its tokens twice
    (Arize-ai/openinference#2101). Client calls made elsewhere, e.g. inside a tool, are kept."""

    def __init__(self, inner: SpanProcessor) -> None:
        self.inner = inner
        self._repeats: set[int] = set()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        parent = trace.get_current_span(parent_context)
        parent_scope = getattr(parent, "instrumentation_scope", None)
        if (
            span.instrumentation_scope is not None
            and span.instrumentation_scope.name == OPENAI_SCOPE
            and parent_scope is not None
            and parent_scope.name == AGENTS_SCOPE
            and (getattr(parent, "attributes", None) or {}).get("openinference.span.kind") == "LLM"
        ):
            self._repeats.add(span.context.span_id)
            return
        self.inner.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if span.context.span_id in self._repeats:
            self._repeats.discard(span.context.span_id)
            return
        self.inner.on_end(span)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


class ScrubbingExporter(SpanExporter):
    """Hands spans on with credentials replaced by `[REDACTED]`: values of secret-looking attribute
    keys, and what `scrub` finds in any string attribute, status message or span name (by default,
    key-shaped text)."""

    def __init__(self, inner: SpanExporter, scrub: Callable[[str], str] | None = None) -> None:
        self.inner = inner
        self.scrub = scrub or scrub_text

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.inner.export([_scrubbed(span, self.scrub) for span in spans])

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.inner.shutdown()


def _scrubbed(span: ReadableSpan, scrub: Callable[[str], str]) -> ReadableSpan:
    status = span.status
    return ReadableSpan(
        name=scrub(span.name),
        context=span.context,
        parent=span.parent,
        kind=span.kind,
        resource=Resource(scrub_attributes(span.resource.attributes, scrub), span.resource.schema_url),
        attributes=scrub_attributes(span.attributes, scrub),
        events=[Event(e.name, scrub_attributes(e.attributes, scrub), e.timestamp) for e in span.events],
        links=span.links,
        status=Status(status.status_code, scrub(status.description)) if status.description else status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def _exporter(target: str, headers: Mapping[str, str] | None) -> SpanExporter:
    if "://" not in target:
        return JsonlSpanExporter(target)
    url = urlsplit(target)
    if url.scheme not in ("http", "https"):
        raise ValueError(f"{target}: give a JSONL file path or an http(s):// OTLP/HTTP endpoint")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    endpoint = target if url.path.strip("/") else target.rstrip("/") + "/v1/traces"
    return OTLPSpanExporter(endpoint=endpoint, headers=dict(headers) if headers else None)


def _instrument(provider: TracerProvider) -> None:
    missing = []
    for library, module, name in INSTRUMENTATIONS:
        if not _installed(library):
            continue
        try:
            instrumentor = getattr(importlib.import_module(module), name)()
        except ImportError:
            missing.append(library)
            continue
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()  # a second setup() call: trace to its provider instead
        # Exclusive: the Agents SDK's own processor, which uploads traces to OpenAI, is replaced.
        options = {"exclusive_processor": True} if library == "openai-agents" else {}
        instrumentor.instrument(tracer_provider=provider, **options)
        if library == "openai-agents" and os.environ.get("OPENAI_AGENTS_DISABLE_TRACING", "").lower() in (
            "true",
            "1",
        ):
            _warn_once(
                "OPENAI_AGENTS_DISABLE_TRACING is set, so the Agents SDK records no spans; unset it "
                "(setup() already keeps traces away from OpenAI's dashboard)"
            )
    if missing:
        _warn_once(
            f"{' and '.join(missing)} will not be traced: the OpenInference instrumentation is not "
            "installed; pip install 'halo-rlm[agents]'"
        )


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(f"halo_rlm.tracing: {message}", stacklevel=4)


def _installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


__all__ = ["JsonlSpanExporter", "ScrubbingExporter", "setup"]
