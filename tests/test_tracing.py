"""halo_rlm.tracing: HALO JSONL from the OpenTelemetry SDK, OTLP to `halo collect`, credentials scrubbed.

`setup()` sets process-wide state (the global tracer provider, instrumented libraries), so tests that
call it run their agent code in a child process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode
from sdk_spans import agent_spans, assert_same_as_sent, stored

from halo_rlm import tracing
from halo_rlm.collect import serve
from halo_rlm.scrub import scrub_attributes, scrub_text
from halo_rlm.store import TraceStore
from halo_rlm.tracing import JsonlSpanExporter

ROOT = Path(__file__).resolve().parents[1]
ISO_NS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z")
HALO_KEYS = [
    "trace_id",
    "span_id",
    "parent_span_id",
    "trace_state",
    "name",
    "kind",
    "start_time",
    "end_time",
    "status",
    "resource",
    "scope",
    "attributes",
]


def run_agent(tmp_path: Path, code: str, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `code` as the script `my_agent.py` in a child process; it must succeed."""
    script = tmp_path / "my_agent.py"
    script.write_text(textwrap.dedent(code))
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_jsonl_exporter_writes_halo_flat_spans(tmp_path: Path) -> None:
    spans = agent_spans()
    path = tmp_path / "out" / "traces.jsonl"
    exporter = JsonlSpanExporter(path)
    exporter.export(spans[:4])
    exporter.export(spans[4:])
    exporter.shutdown()
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert len(lines) == 9
    for line in lines:
        assert list(line)[:12] == HALO_KEYS
        assert ISO_NS.fullmatch(line["start_time"]) and ISO_NS.fullmatch(line["end_time"])
        assert line["kind"].startswith("SPAN_KIND_") and line["status"]["code"].startswith("STATUS_CODE_")
        assert set(line["resource"]) == {"attributes"} and set(line["scope"]) == {"name", "version"}
    failed = next(line for line in lines if line["status"]["code"] == "STATUS_CODE_ERROR")
    assert failed["events"][0]["name"] == "exception" and ISO_NS.fullmatch(failed["events"][0]["time"])
    with TraceStore.open(tmp_path / "s.duckdb") as store:
        assert store.ingest([str(path)]).spans == 9
    assert_same_as_sent(spans, stored(tmp_path / "s.duckdb"))


def test_jsonl_exporter_and_collector_out_write_the_same_lines(tmp_path: Path) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    spans = agent_spans()
    exporter = JsonlSpanExporter(tmp_path / "direct.jsonl")
    exporter.export(spans)
    exporter.shutdown()
    with serve(out=tmp_path / "collected.jsonl", port=0) as collector:
        OTLPSpanExporter(endpoint=collector.traces_url).export(spans)
    direct = (tmp_path / "direct.jsonl").read_bytes().splitlines()
    assert sorted(direct) == sorted((tmp_path / "collected.jsonl").read_bytes().splitlines())


def test_scrub_text_and_attributes() -> None:
    openai_key = "sk-proj-" + "a1B2c3D4" * 6
    text = (
        f'{{"api_key": "{openai_key}", "password": "hunter22", "model": "gpt-4o"}} '
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl "
        "https://user:pa55word@db.example.com/x?access_token=abcdef123456&page=2 "
        "AKIAIOSFODNN7EXAMPLE ghp_" + "x" * 36
    )
    scrubbed = scrub_text(text)
    for secret in (
        openai_key,
        "hunter22",
        "eyJhbGci",
        "pa55word",
        "abcdef123456",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_x",
    ):
        assert secret not in scrubbed
    assert '"model": "gpt-4o"' in scrubbed and "page=2" in scrubbed and "db.example.com" in scrubbed
    assert "Authorization: Basic [REDACTED]" in scrub_text('curl -H "Authorization: Basic dXNlcjpwYXNz" ...')
    harmless = "count the tokens: 1200 prompt tokens, max_tokens=50; the bearer responsibility is ours"
    assert scrub_text(harmless) == harmless

    attributes = scrub_attributes(
        {
            "http.request.header.authorization": "Basic dXNlcjpwYXNz",
            "openai.api_key": "anything",
            "llm.token_count.prompt": 1200,
            "gen_ai.usage.input_tokens": 7,
            "session.id": "s-1",
            "input.value": f"my key is {openai_key}",
            "tags": ["ok", f"key={openai_key}"],
            "ratio": 0.5,
        }
    )
    assert attributes == {
        "http.request.header.authorization": "[REDACTED]",
        "openai.api_key": "[REDACTED]",
        "llm.token_count.prompt": 1200,
        "gen_ai.usage.input_tokens": 7,
        "session.id": "s-1",
        "input.value": "my key is [REDACTED]",
        "tags": ["ok", "key=[REDACTED]"],
        "ratio": 0.5,
    }


def test_setup_writes_a_file_that_halo_reads_with_credentials_scrubbed(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    run_agent(
        tmp_path,
        f"""
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode
        import halo_rlm.tracing

        halo_rlm.tracing.setup({str(path)!r}, instrument=False)
        tracer = trace.get_tracer("my.agent")
        with tracer.start_as_current_span("invoke_agent helper") as agent:
            agent.set_attribute("gen_ai.operation.name", "invoke_agent")
            agent.set_attribute("http.request.header.authorization", "Bearer sk-live-0123456789abcdefghij")
            with tracer.start_as_current_span("execute_tool fetch") as tool:
                tool.set_attribute("gen_ai.tool.name", "fetch")
                tool.set_attribute("input.value", '{{"url": "https://api.example.com/?api_key=k3y-s3cret-v4lue"}}')
                tool.add_event("retry", {{"note": "OPENAI_API_KEY=sk-abcdefghijklmnopqrstuv was rejected"}})
                tool.set_status(Status(StatusCode.ERROR, "401 for key sk-abcdefghijklmnopqrstuv"))
        # no shutdown: spans still buffered are written at exit
    """,
        env={"OTEL_RESOURCE_ATTRIBUTES": "vendor.api_key=abc123xyz"},
    )
    text = path.read_text()
    for secret in (
        "sk-live-0123456789abcdefghij",
        "k3y-s3cret-v4lue",
        "sk-abcdefghijklmnopqrstuv",
        "abc123xyz",
    ):
        assert secret not in text
    lines = [orjson.loads(line) for line in text.splitlines()]
    assert [line["name"] for line in lines] == ["execute_tool fetch", "invoke_agent helper"]
    assert lines[1]["resource"]["attributes"]["service.name"] == "my_agent"
    assert lines[0]["status"] == {"code": "STATUS_CODE_ERROR", "message": "401 for key [REDACTED]"}
    with TraceStore.open(tmp_path / "s.duckdb") as store:
        store.ingest([str(path)])
        assert sorted(store.con.execute("SELECT kind, tool_name FROM spans").fetchall()) == [
            ("AGENT", None),
            ("TOOL", "fetch"),
        ]


def test_setup_sends_otlp_to_halo_collect_with_a_token(tmp_path: Path) -> None:
    with serve(store=tmp_path / "c.duckdb", port=0, token="t0k3n") as collector:
        for headers_code, env in (
            ('headers={"Authorization": "Bearer t0k3n"}', {}),
            ("", {"OTEL_EXPORTER_OTLP_TRACES_HEADERS": "Authorization=Bearer%20t0k3n"}),
        ):
            run_agent(
                tmp_path,
                f"""
                from opentelemetry import trace
                import halo_rlm.tracing

                provider = halo_rlm.tracing.setup({collector.url!r}, service_name="remote-agent", instrument=False,
                                                  {headers_code})
                with trace.get_tracer("x").start_as_current_span("root"):
                    with trace.get_tracer("x").start_as_current_span("child"):
                        pass
                provider.shutdown()
            """,
                env=env,
            )
    stats = collector.stats
    assert (stats.spans, stats.traces, stats.failed_requests) == (4, 2, 0)
    rows = stored(tmp_path / "c.duckdb")
    assert {r["raw"]["resource"]["attributes"]["service.name"] for r in rows.values()} == {"remote-agent"}


def test_missing_instrumentation_is_a_single_warning_not_an_error(tmp_path: Path) -> None:
    result = run_agent(
        tmp_path,
        f"""
        import sys
        sys.modules["openinference.instrumentation.openai_agents"] = None  # as if not installed
        sys.modules["openinference.instrumentation.openai"] = None
        import halo_rlm.tracing

        halo_rlm.tracing.setup({str(tmp_path / "t.jsonl")!r})
        halo_rlm.tracing.setup({str(tmp_path / "t.jsonl")!r})
    """,
    )
    warnings = [line for line in result.stderr.splitlines() if "will not be traced" in line]
    assert len(warnings) == 1
    assert "openai-agents and openai" in warnings[0] and "pip install 'halo-rlm[agents]'" in warnings[0]


def test_agents_sdk_tracing_switched_off_by_environment_is_pointed_out(tmp_path: Path) -> None:
    pytest.importorskip(
        "openinference.instrumentation.openai_agents", reason="the agents extra is not installed"
    )
    result = run_agent(
        tmp_path,
        f"""
        import halo_rlm.tracing
        halo_rlm.tracing.setup({str(tmp_path / "t.jsonl")!r})
    """,
        env={"OPENAI_AGENTS_DISABLE_TRACING": "true"},
    )
    assert "OPENAI_AGENTS_DISABLE_TRACING is set" in result.stderr


def test_setup_refuses_other_url_schemes_before_touching_anything() -> None:
    with pytest.raises(ValueError, match="http"):
        tracing.setup("grpc://127.0.0.1:4317")


def test_repeated_llm_spans_are_skipped_and_others_kept() -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(tracing._SkipRepeatedLLMSpans(SimpleSpanProcessor(exported)))
    agents = provider.get_tracer(tracing.AGENTS_SCOPE)
    client = provider.get_tracer(tracing.OPENAI_SCOPE)
    with (
        agents.start_as_current_span("generation", attributes={"openinference.span.kind": "LLM"}),
        client.start_as_current_span("ChatCompletion", attributes={"openinference.span.kind": "LLM"}),
    ):
        pass  # the Agents SDK's LLM span and the client's span for the same call
    with agents.start_as_current_span("lookup_order", attributes={"openinference.span.kind": "TOOL"}) as tool:
        with client.start_as_current_span("ChatCompletion", attributes={"openinference.span.kind": "LLM"}):
            pass  # a model call made inside a tool is its own call
        tool.set_status(Status(StatusCode.OK))
    assert sorted(span.name for span in exported.get_finished_spans()) == [
        "ChatCompletion",
        "generation",
        "lookup_order",
    ]
