"""Finished OpenTelemetry SDK spans of a small agent, and checks that a store holds them intact."""

from __future__ import annotations

from pathlib import Path

import orjson
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from halo_rlm.store import TraceStore


def agent_spans(traces: int = 3) -> list[ReadableSpan]:
    """Finished SDK spans of a small tool-using agent: per trace an agent, an LLM call and a tool call
    (the last trace's tool fails), with list, float and bool attributes and an exception event."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "sdk-agent", "deployment.environment": "test"})
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("my.agent", "2.0")
    for run in range(traces):
        with tracer.start_as_current_span("invoke_agent planner", kind=SpanKind.SERVER) as agent:
            agent.set_attribute("gen_ai.operation.name", "invoke_agent")
            agent.set_attribute("gen_ai.agent.name", "planner")
            agent.set_attribute("session.id", f"session-{run}")
            with tracer.start_as_current_span("chat gpt-4o", kind=SpanKind.CLIENT) as llm:
                llm.set_attribute("gen_ai.operation.name", "chat")
                llm.set_attribute("gen_ai.request.model", "gpt-4o")
                llm.set_attribute("gen_ai.usage.input_tokens", 100 + run)
                llm.set_attribute("gen_ai.response.finish_reasons", ["tool_calls"])
                llm.set_attribute("llm.temperature", 0.5)
            with tracer.start_as_current_span("execute_tool search") as tool:
                tool.set_attribute("gen_ai.operation.name", "execute_tool")
                tool.set_attribute("gen_ai.tool.name", "search")
                tool.set_attribute("tool.cached", False)
                if run == traces - 1:
                    tool.record_exception(TimeoutError("search timed out after 30s"))
                    tool.set_status(Status(StatusCode.ERROR, "search timed out after 30s"))
    provider.shutdown()
    return list(exporter.get_finished_spans())


def hex_ids(span: ReadableSpan) -> tuple[str, str, str | None]:
    ctx = span.get_span_context()
    return (
        f"{ctx.trace_id:032x}",
        f"{ctx.span_id:016x}",
        f"{span.parent.span_id:016x}" if span.parent else None,
    )


def stored(path: Path) -> dict[str, dict]:
    """The store's spans by span id: trace, parent, raw record and a few canonical columns."""
    with TraceStore.open(path, read_only=True) as store:
        rows = store.con.execute(
            "SELECT span_id, trace_id, parent_id, raw, kind, status, start_ns, end_ns FROM spans"
        ).fetchall()
    return {
        row[0]: {
            "trace_id": row[1],
            "parent_id": row[2],
            "raw": orjson.loads(row[3]),
            "kind": row[4],
            "status": row[5],
            "start_ns": row[6],
            "end_ns": row[7],
        }
        for row in rows
    }


def assert_same_as_sent(spans: list[ReadableSpan], rows: dict[str, dict]) -> None:
    assert len(rows) == len(spans)
    for span in spans:
        trace_id, span_id, parent_id = hex_ids(span)
        row = rows[span_id]
        assert (row["trace_id"], row["parent_id"]) == (trace_id, parent_id)
        assert (row["start_ns"], row["end_ns"]) == (span.start_time, span.end_time)
        raw = row["raw"]
        assert raw["name"] == span.name and raw["kind"] == f"SPAN_KIND_{span.kind.name}"
        assert raw["attributes"] == {
            k: list(v) if isinstance(v, tuple) else v for k, v in span.attributes.items()
        }
        assert raw["resource"]["attributes"]["service.name"] == "sdk-agent"
        assert raw["scope"] == {"name": "my.agent", "version": "2.0"}
        assert [e["name"] for e in raw.get("events", [])] == [e.name for e in span.events]
