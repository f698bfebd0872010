"""Spans made by the real OpenTelemetry SDK, encoded by its own OTLP encoder, ingest intact."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from halo_rlm.store import TraceStore


@pytest.fixture
def sdk_spans() -> list:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "sdk-agent"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("my.agent", "2.0")
    for run in range(3):
        with tracer.start_as_current_span("invoke_agent planner") as agent:
            agent.set_attribute("gen_ai.operation.name", "invoke_agent")
            agent.set_attribute("gen_ai.agent.name", "planner")
            agent.set_attribute("session.id", f"session-{run % 2}")
            with tracer.start_as_current_span("chat gpt-4o") as llm:
                llm.set_attribute("gen_ai.operation.name", "chat")
                llm.set_attribute("gen_ai.request.model", "gpt-4o")
                llm.set_attribute("gen_ai.usage.input_tokens", 120 + run)
                llm.set_attribute("gen_ai.usage.output_tokens", 30)
                llm.set_attribute("gen_ai.response.finish_reasons", ["tool_calls"])
            with tracer.start_as_current_span("execute_tool search") as tool:
                tool.set_attribute("gen_ai.operation.name", "execute_tool")
                tool.set_attribute("gen_ai.tool.name", "search")
                tool.set_attribute("gen_ai.tool.call.arguments", '{"q": "refund policy"}')
                if run == 2:
                    try:
                        raise TimeoutError("search timed out after 30s")
                    except TimeoutError as exc:
                        tool.record_exception(exc)
                        tool.set_status(Status(StatusCode.ERROR, "search timed out after 30s"))
    provider.shutdown()
    return list(exporter.get_finished_spans())


def test_sdk_spans_round_trip_through_otlp_json(sdk_spans: list, tmp_path: Path) -> None:
    # The SDK's protobuf, turned into JSON the way protobuf tools do it: ids come out base64.
    request = MessageToDict(encode_spans(sdk_spans))
    path = tmp_path / "sdk.jsonl"
    path.write_bytes(orjson.dumps(request) + b"\n")
    with TraceStore.open(tmp_path / "s.duckdb") as store:
        report = store.ingest([str(path)])
        assert report.spans == 9 and report.rejected == 0
        got = {
            row[0]: row[1:]
            for row in store.con.execute(
                "SELECT span_id, trace_id, parent_id, name, kind, model, input_tokens, tool_name, status, "
                "error_type, session_id, service, scope, start_ns, end_ns FROM spans"
            ).fetchall()
        }
        for span in sdk_spans:
            ctx = span.get_span_context()
            row = got[f"{ctx.span_id:016x}"]
            assert row[0] == f"{ctx.trace_id:032x}"
            assert row[1] == (f"{span.parent.span_id:016x}" if span.parent else None)
            assert row[2] == span.name
            assert row[10:14] == ("sdk-agent", "my.agent", span.start_time, span.end_time)
        by_name = {}
        for row in got.values():
            by_name.setdefault(row[2], []).append(row)
        assert {r[3] for r in by_name["invoke_agent planner"]} == {"AGENT"}
        assert sorted(r[5] for r in by_name["chat gpt-4o"]) == [120, 121, 122]
        assert {r[4] for r in by_name["chat gpt-4o"]} == {"gpt-4o"}
        tools = by_name["execute_tool search"]
        assert {r[3] for r in tools} == {"TOOL"} and {r[6] for r in tools} == {"search"}
        assert sorted(r[7] for r in tools) == ["ERROR", "UNSET", "UNSET"]
        assert [r[8] for r in tools if r[7] == "ERROR"] == ["TimeoutError"]
        assert store.con.execute(
            "SELECT count(*), count(DISTINCT session_id), sum(input_tokens) FROM traces"
        ).fetchall() == [(3, 2, 363)]
