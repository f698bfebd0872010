"""Real producers' traces read exactly: Langfuse trace downloads, the answers of every framework in
every message shape, TRAIL trees, the Vercel AI SDK, ids as the source wrote them, usage and content
wherever producers put them. The data is made here in the shapes those producers write (learned from
their public fixtures and code), never copied from them."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from halo_rlm.cli import cli
from halo_rlm.detect import Thresholds, analyze
from halo_rlm.formats.conventions import chat_messages, normalize_messages
from halo_rlm.store import StoreError, TraceStore

T0 = "2026-05-15T10:00"


def at(second: float) -> str:
    return f"{T0}:{second:06.3f}Z"


def observation(
    trace_id: str, obs_id: str, kind: str, start: float, end: float, **fields: Any
) -> dict[str, Any]:
    """An observation as Langfuse's download writes it (its UI download and its framework fixtures)."""
    return {
        "id": obs_id,
        "traceId": trace_id,
        "startTime": at(start),
        "endTime": at(end),
        "projectId": "proj-1",
        "parentObservationId": None,
        "type": kind,
        "environment": "default",
        "name": obs_id,
        "level": "DEFAULT",
        "statusMessage": None,
        "version": None,
        "model": None,
        "modelParameters": None,
        "completionStartTime": None,
        "latency": (end - start) * 1000,
        "usageDetails": {},
        "costDetails": {},
        "totalCost": 0,
        "inputUsage": 0,
        "outputUsage": 0,
        "totalUsage": 0,
        "metadata": {},
        "input": None,
        "output": None,
        **fields,
    }


def otel_metadata(
    attributes: dict[str, Any], service: str = "unknown_service", scope: str = "x"
) -> dict[str, Any]:
    """Where Langfuse keeps what an OpenTelemetry span carried."""
    return {
        "attributes": attributes,
        "resourceAttributes": {"service.name": service, "telemetry.sdk.language": "python"},
        "scope": {"name": scope, "version": "1.0", "attributes": {}},
    }


TRACE_UUID = "0b9a0c3d-5664-4f42-9fab-31999da9e2f1"  # Langfuse UUIDs keep their dashes
TRACE_HEX = "7a38edd8123db47ad8dcb8aa4c5e3926"


def download(trace_id: str) -> dict[str, Any]:
    """A Langfuse trace download: `{trace, observations}`, with answers in four frameworks' shapes."""
    root = "00d3f40ee8e3b716"
    observations = [
        observation(
            trace_id, root, "SPAN", 0, 9, name="run_agent", metadata=otel_metadata({}, "joke-service")
        ),
        # pydantic-ai / Microsoft Agent Framework: OTel GenAI `parts`; usage only as inputUsage/outputUsage.
        observation(
            trace_id,
            "49ae06cbfa06611f",
            "GENERATION",
            1,
            2,
            parentObservationId=root,
            name="chat gpt-4o-mini",
            model="gpt-4o-mini",
            usageDetails=None,
            inputUsage=417,
            outputUsage=53,
            totalUsage=470,
            input=[{"role": "user", "parts": [{"type": "text", "content": "Tell a joke"}]}],
            output=[
                {
                    "role": "assistant",
                    "parts": [
                        {"type": "tool_call", "id": "call_1", "name": "get_pun", "arguments": {"topic": "x"}}
                    ],
                    "finish_reason": "tool_call",
                }
            ],
            metadata=otel_metadata({"gen_ai.operation.name": "chat", "gen_ai.system": "openai"}),
        ),
        # pydantic-ai's tool span: a plain SPAN whose tool is named only by `gen_ai.tool.name`.
        observation(
            trace_id,
            "8976b072313c51f2",
            "SPAN",
            2,
            3,
            parentObservationId=root,
            name="running tool",
            metadata=otel_metadata({"gen_ai.tool.name": "get_pun", "gen_ai.tool.call.id": "call_1"}),
        ),
        # LangChain through Langfuse's callback: the call sits in additional_kwargs.tool_calls; reasoning
        # tokens reported as output_reasoning.
        observation(
            trace_id,
            "eb0cc14cf7943ad5",
            "GENERATION",
            3,
            4,
            parentObservationId=root,
            name="ChatOpenAI",
            model="gpt-4o",
            usageDetails={"input": 60, "output": 15, "output_reasoning": 40, "total": 115},
            output={
                "role": "assistant",
                "content": "",
                "additional_kwargs": {
                    "tool_calls": [
                        {
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "web_search", "arguments": {"query": "pun"}},
                        }
                    ],
                    "refusal": None,
                },
            },
        ),
        # The OpenAI Agents SDK: a Responses API object whose content list holds a function call.
        observation(
            trace_id,
            "5b5c52d029f28206",
            "GENERATION",
            5,
            6,
            parentObservationId=root,
            name="response",
            model="gpt-4.1",
            usageDetails={"input": 85, "output": 29, "total": 114},
            output={
                "object": "response",
                "output": [
                    {
                        "type": "function_call",
                        "name": "get_weather",
                        "arguments": '{"city":"Tokyo"}',
                        "call_id": "fc_1",
                    }
                ],
            },
        ),
        # Google ADK: a Gemini candidate, answer text in parts.
        observation(
            trace_id,
            "1b7200380e3316e7",
            "GENERATION",
            7,
            8,
            parentObservationId=root,
            name="call_llm",
            model="gemini-2.0-flash",
            usageDetails={"input": 39, "output": 6, "total": 45},
            output={
                "content": {"parts": [{"text": "Hello there!"}], "role": "model"},
                "finish_reason": "STOP",
            },
        ),
    ]
    trace = {
        "id": trace_id,
        "name": "joke-generator",
        "timestamp": at(0),
        "userId": None,
        "sessionId": "s-1",
        "tags": ["example"],
        "metadata": orjson.dumps({"resourceAttributes": {"service.name": "joke-service"}}).decode(),
    }
    return {"trace": trace, "observations": observations}


def store_rows(store_path: Path, sql: str, params: Any = None) -> list[dict[str, Any]]:
    with TraceStore.open(store_path, read_only=True) as store:
        return store.query(sql, params)


def test_langfuse_trace_downloads_one_per_file_or_per_line(tmp_path: Path) -> None:
    pretty = tmp_path / "trace.json"  # what Langfuse's UI downloads: one pretty-printed trace
    pretty.write_bytes(orjson.dumps(download(TRACE_UUID), option=orjson.OPT_INDENT_2))
    per_line = tmp_path / "traces.jsonl"
    per_line.write_bytes(orjson.dumps(download(TRACE_HEX)) + b"\n")
    store_path = tmp_path / "s.duckdb"
    with TraceStore.open(store_path) as store:
        report = store.ingest([pretty, per_line])
    assert [(i.status, i.spans, i.road) for i in report.inputs] == [
        ("ingested", 6, "document"),
        ("ingested", 6, "decoded"),
    ]
    assert report.rejected == 0

    llm = store_rows(
        store_path,
        "SELECT span_id, input_tokens, output_tokens, total_tokens, reasoning_tokens, tool_calls, output_messages "
        "FROM spans WHERE trace_id = ? AND kind = 'LLM' ORDER BY start_ns",
        [TRACE_UUID],
    )
    calls = [[c["name"] for c in row["tool_calls"] or []] for row in llm]
    assert calls == [["get_pun"], ["web_search"], ["get_weather"], []]
    assert [(r["input_tokens"], r["output_tokens"]) for r in llm] == [(417, 53), (60, 55), (85, 29), (39, 6)]
    assert llm[1]["reasoning_tokens"] == 40  # counted in the output, and kept apart
    assert llm[1]["tool_calls"][0]["arguments"] == '{"query":"pun"}'
    assert orjson.loads(llm[3]["output_messages"]) == [{"role": "assistant", "content": "Hello there!"}]

    tool = store_rows(
        store_path, "SELECT kind, tool_name, service FROM spans WHERE span_id = '8976b072313c51f2'"
    )
    assert tool == [{"kind": "TOOL", "tool_name": "get_pun", "service": "joke-service"}] * 2
    # No "empty answers" finding on spans that hold a full answer.
    with TraceStore.open(store_path, read_only=True) as store:
        findings = analyze(store, thresholds=Thresholds(min_traces=1, min_share=0)).findings
    assert not [f for f in findings if f.category == "empty_or_truncated_output"]


def test_every_refusal_of_a_whole_file_is_a_recorded_reject(tmp_path: Path) -> None:
    files = {
        "empty.jsonl": b"",
        "table.csv.jsonl": b"name,age\nann,3\n",
        "config.json": orjson.dumps({"rows": [1, 2], "total": 2}, option=orjson.OPT_INDENT_2),
        "blob.jsonl": b"\x00\x01\x02binary\xff" * 40,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    store_path = tmp_path / "s.duckdb"
    result = CliRunner().invoke(cli, ["ingest", str(tmp_path), "--store", str(store_path), "--json"])
    assert result.exit_code == 1
    report = orjson.loads(result.stdout)
    assert {Path(i["path"]).name: i["status"] for i in report["inputs"]} == dict.fromkeys(files, "failed")
    rejects = store_rows(store_path, "SELECT path, line_no, reason FROM rejects ORDER BY path, line_no")
    assert {Path(r["path"]).name for r in rejects} == set(files)
    assert report["rejected"] == len(rejects)
    by_file = {Path(r["path"]).name: r for r in rejects}
    assert by_file["empty.jsonl"]["line_no"] == 0 and "an empty file" in by_file["empty.jsonl"]["reason"]
    assert "not a span: a JSON object with keys {rows, total}" in by_file["config.json"]["reason"]
    inputs = store_rows(store_path, "SELECT status, rejected FROM inputs")
    assert {r["status"] for r in inputs} == {"failed"} and all(r["rejected"] >= 1 for r in inputs)


def trail_tree() -> dict[str, Any]:
    """A TRAIL (Patronus) trace: nested spans, a start `timestamp` and an ISO-8601 `duration`."""
    return {
        "trace_id": "5a0b6f3c1e2d4a5b8c9d0e1f2a3b4c5d",
        "spans": [
            {
                "timestamp": "2025-03-19T16:44:37.236627Z",
                "trace_id": "5a0b6f3c1e2d4a5b8c9d0e1f2a3b4c5d",
                "span_id": "a1b2c3d4e5f60718",
                "parent_span_id": None,
                "trace_state": "",
                "span_name": "CodeAgent.run",
                "span_kind": "Internal",
                "service_name": "smolagents-gaia",
                "resource_attributes": {
                    "service.name": "smolagents-gaia",
                    "telemetry.sdk.language": "python",
                },
                "scope_name": "openinference.instrumentation.smolagents",
                "scope_version": "0.1.6",
                "span_attributes": {"openinference.span.kind": "AGENT", "input.value": "task"},
                "duration": "PT1M48.75533S",
                "status_code": "Unset",
                "status_message": "",
                "events": [],
                "links": [],
                "logs": [],
                "child_spans": [
                    {
                        "timestamp": "2025-03-19T16:44:38.000000Z",
                        "span_id": "b1b2c3d4e5f60718",
                        "parent_span_id": "a1b2c3d4e5f60718",
                        "span_name": "LiteLLMModel.__call__",
                        "span_kind": "Internal",
                        "service_name": "smolagents-gaia",
                        "span_attributes": {"openinference.span.kind": "LLM", "llm.model_name": "o3-mini"},
                        "duration": "PT12.5S",
                        "status_code": "Error",
                        "status_message": "RateLimitError",
                        "logs": [
                            {"timestamp": "2025-03-19T16:44:40Z", "body": {"function.output": "retrying"}}
                        ],
                        "child_spans": [],
                    }
                ],
            }
        ],
    }


def test_trail_trees_with_iso_durations_and_service_names(tmp_path: Path) -> None:
    path = tmp_path / "trail.json"
    path.write_bytes(orjson.dumps(trail_tree(), option=orjson.OPT_INDENT_2))
    store_path = tmp_path / "s.duckdb"
    with TraceStore.open(store_path) as store:
        assert store.ingest([path]).spans == 2
        overview = store.overview()
    assert overview.in_flight_spans == 0 and [s.name for s in overview.services] == ["smolagents-gaia"]
    rows = store_rows(
        store_path, "SELECT span_id, duration_ns, service, scope, status, raw FROM spans ORDER BY start_ns"
    )
    assert [(r["duration_ns"], r["service"], r["status"]) for r in rows] == [
        (108_755_330_000, "smolagents-gaia", "UNSET"),
        (12_500_000_000, "smolagents-gaia", "ERROR"),
    ]
    assert rows[0]["scope"] == "openinference.instrumentation.smolagents"
    assert orjson.loads(rows[1]["raw"])["events"][0]["attributes"] == {"function.output": "retrying"}

    # A flat span with an ISO-8601 duration gets the same end on the one-statement road.
    flat = tmp_path / "flat.jsonl"
    flat.write_bytes(
        orjson.dumps(
            {
                "trace_id": "f1",
                "span_id": "s1",
                "name": "x",
                "start_time": "2025-03-19T16:44:37Z",
                "duration": "PT1M48.75533S",
            }
        )
        + b"\n"
    )
    with TraceStore.open(store_path) as store:
        assert store.ingest([flat]).inputs[0].road == "bulk"
    assert store_rows(store_path, "SELECT duration_ns FROM spans WHERE trace_id = 'f1'") == [
        {"duration_ns": 108_755_330_000}
    ]


def vercel_span(
    span_id: str, name: str, parent: str, start: int, attributes: dict[str, Any]
) -> dict[str, Any]:
    return {
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "span_id": span_id,
        "parent_span_id": parent,
        "name": name,
        "kind": "SPAN_KIND_INTERNAL",
        "start_time": 1776924720_000000000 + start * 10**9,
        "end_time": 1776924720_000000000 + (start + 1) * 10**9,
        "status": {"code": "STATUS_CODE_UNSET"},
        "resource": {"attributes": {"service.name": "next-app"}},
        "scope": {"name": "ai", "version": "5.0.0"},
        "attributes": {"ai.operationId": name, "operation.name": f"{name} weather", **attributes},
    }


def test_vercel_ai_sdk_wrappers_do_not_double_llm_calls_or_tokens(tmp_path: Path) -> None:
    usage = {"ai.model.id": "gpt-4o", "ai.model.provider": "openai.chat"}
    spans = [
        vercel_span(
            "w1",
            "ai.generateText",
            "",
            0,
            {
                **usage,
                "ai.telemetry.functionId": "weather",
                "ai.usage.inputTokens": 300,
                "ai.usage.outputTokens": 30,
            },
        ),
        vercel_span(
            "d1",
            "ai.generateText.doGenerate",
            "w1",
            1,
            {
                **usage,
                "gen_ai.system": "openai.chat",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.usage.input_tokens": 100,
                "gen_ai.usage.output_tokens": 10,
                "ai.response.toolCalls": orjson.dumps(
                    [{"toolCallId": "c1", "toolName": "weather", "input": {"city": "Paris"}}]
                ).decode(),
            },
        ),
        vercel_span("t1", "ai.toolCall", "w1", 2, {"ai.toolCall.name": "weather", "ai.toolCall.id": "c1"}),
        vercel_span(
            "d2",
            "ai.generateText.doGenerate",
            "w1",
            3,
            {
                **usage,
                "gen_ai.usage.input_tokens": 200,
                "gen_ai.usage.output_tokens": 20,
                "ai.response.text": "Sunny.",
            },
        ),
        vercel_span(
            "w2",
            "ai.generateObject",
            "",
            4,
            {
                **usage,
                "ai.usage.promptTokens": 50,
                "ai.usage.completionTokens": 5,
                "ai.response.object": '{"temp":21}',
            },
        ),
        vercel_span(
            "d3",
            "ai.generateObject.doGenerate",
            "w2",
            5,
            {
                **usage,
                "ai.usage.promptTokens": 50,
                "ai.usage.completionTokens": 5,
                "ai.response.text": '{"temp":21}',
            },
        ),
    ]
    path = tmp_path / "vercel.jsonl"
    path.write_bytes(b"".join(orjson.dumps(s) + b"\n" for s in spans))
    store_path = tmp_path / "s.duckdb"
    with TraceStore.open(store_path) as store:
        store.ingest([path])
    kinds = store_rows(
        store_path, "SELECT span_id, kind, agent_name, output_value FROM spans ORDER BY start_ns"
    )
    assert [(r["span_id"], r["kind"]) for r in kinds] == [
        ("w1", "AGENT"),
        ("d1", "LLM"),
        ("t1", "TOOL"),
        ("d2", "LLM"),
        ("w2", "CHAIN"),
        ("d3", "LLM"),
    ]
    assert kinds[4]["output_value"] == '{"temp":21}'  # generateObject's answer
    trace = store_rows(store_path, "SELECT llm_spans, input_tokens, output_tokens FROM traces")
    assert trace == [{"llm_spans": 3, "input_tokens": 350, "output_tokens": 35}]


def test_ids_are_kept_as_the_source_wrote_them_and_found_by_prefix(tmp_path: Path) -> None:
    def flat(trace_id: str, span_id: str, parent: str = "") -> dict[str, Any]:
        return {
            "trace_id": trace_id,
            "span_id": span_id,
            "parent_span_id": parent,
            "name": "x",
            "start_time": 1776924720,
        }

    otlp = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                # protobuf's JSON mapping writes ids in base64: decoded there, and only there
                                "traceId": base64.b64encode(
                                    bytes.fromhex("5b8efff798038103d269b633813fc60c")
                                ).decode(),
                                "spanId": base64.b64encode(bytes.fromhex("eee19b7ec3c1b174")).decode(),
                                "name": "otlp",
                                "startTimeUnixNano": "1776924720000000000",
                            }
                        ]
                    }
                ]
            }
        ]
    }
    lines = [
        flat("fixture-subagent-trace", "fixture-sub"),  # 22 and 11 base64url characters: still text
        flat("fixture-subagent-trace", "root-span-1", "fixture-sub"),
        flat(TRACE_UUID.upper(), "0A1B2C3D4E5F6071"),
        flat("trace-two", "s1"),
        flat("trace-three", "s1"),
        flat("0x4BF92F3577B34DA6A3CE929D0E0E4736", "00F067AA0BA902B7"),
        flat("a" * 32, "0" * 16),  # an all-zero span id is no id
    ]
    path = tmp_path / "ids.jsonl"
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines) + orjson.dumps(otlp) + b"\n")
    store_path = tmp_path / "s.duckdb"
    with TraceStore.open(store_path) as store:
        report = store.ingest([path])
    assert report.spans == 7
    assert store_rows(store_path, "SELECT reason FROM rejects") == [{"reason": "invalid (all-zero) span id"}]
    ids = {
        (r["trace_id"], r["span_id"], r["parent_id"]) for r in store_rows(store_path, "SELECT * FROM spans")
    }
    assert ids == {
        ("fixture-subagent-trace", "fixture-sub", None),
        ("fixture-subagent-trace", "root-span-1", "fixture-sub"),
        (TRACE_UUID, "0a1b2c3d4e5f6071", None),
        ("trace-two", "s1", None),
        ("trace-three", "s1", None),
        ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", None),
        ("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", None),
    }
    with TraceStore.open(store_path, read_only=True) as store:
        for spelling, trace_id in (
            ("fixture-subagent-trace", "fixture-subagent-trace"),
            ("fixture-sub", "fixture-subagent-trace"),  # a prefix only one trace has
            (TRACE_UUID.upper(), TRACE_UUID),  # the source's own spelling
            (TRACE_UUID[:8], TRACE_UUID),
            ("0x4BF92F35", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ):
            assert store.view_trace(spelling).trace_id == trace_id, spelling
            assert store.trace_summary(spelling).trace_id == trace_id
        with pytest.raises(StoreError, match="ambiguous: it starts trace-three, trace-two"):
            store.view_trace("trace-t")
    with TraceStore.open(store_path, read_only=True) as store, pytest.raises(StoreError, match="no trace"):
        store.view_trace("nothing-like-it")
    result = CliRunner().invoke(cli, ["show", "fixture-sub", "--store", str(store_path), "--json"])
    assert result.exit_code == 0 and orjson.loads(result.stdout)["trace_id"] == "fixture-subagent-trace"


def genai_events_span() -> dict[str, Any]:
    """An OTLP span whose GenAI content rides in span events, the older (prompt/completion) and the
    per-message forms."""
    events = [
        {
            "name": "gen_ai.content.prompt",
            "timeUnixNano": "1776924720100000000",
            "attributes": [
                {"key": "gen_ai.prompt", "value": {"stringValue": '[{"role":"user","content":"Weather?"}]'}}
            ],
        },
        {
            "name": "gen_ai.choice",
            "timeUnixNano": "1776924720900000000",
            "attributes": [
                {"key": "finish_reason", "value": {"stringValue": "tool_calls"}},
                {
                    "key": "message",
                    "value": {
                        "stringValue": orjson.dumps(
                            {
                                "role": "assistant",
                                "tool_calls": [
                                    {
                                        "id": "c9",
                                        "type": "function",
                                        "function": {"name": "weather", "arguments": "{}"},
                                    }
                                ],
                            }
                        ).decode()
                    },
                },
            ],
        },
    ]
    return {
        "traceId": "6e0c63257de34c92bf9efcd03927272e",
        "spanId": "d1d1d1d1d1d1d1d1",
        "name": "chat gpt-4o",
        "kind": 3,
        "startTimeUnixNano": "1776924720000000000",
        "endTimeUnixNano": "1776924721000000000",
        "attributes": [
            {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
            {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}},
            {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "12"}},
        ],
        "events": events,
    }


def test_genai_content_in_span_events_and_tools_named_by_genai(tmp_path: Path) -> None:
    tool = {
        "traceId": "6e0c63257de34c92bf9efcd03927272e",
        "spanId": "e2e2e2e2e2e2e2e2",
        "parentSpanId": "d1d1d1d1d1d1d1d1",
        "name": "running tool",
        "startTimeUnixNano": "1776924721000000000",
        "endTimeUnixNano": "1776924721500000000",
        "attributes": [{"key": "gen_ai.tool.name", "value": {"stringValue": "weather"}}],
    }
    request = {"resourceSpans": [{"scopeSpans": [{"spans": [genai_events_span(), tool]}]}]}
    path = tmp_path / "otlp.jsonl"
    path.write_bytes(orjson.dumps(request) + b"\n")
    store_path = tmp_path / "s.duckdb"
    with TraceStore.open(store_path) as store:
        store.ingest([path])
        view = store.view_trace("6e0c63257de34c92bf9efcd03927272e")
    llm = store_rows(
        store_path, "SELECT kind, tool_calls, finish_reason FROM spans WHERE span_id = 'd1d1d1d1d1d1d1d1'"
    )
    assert llm == [
        {
            "kind": "LLM",
            "tool_calls": [{"id": "c9", "name": "weather", "arguments": "{}"}],
            "finish_reason": "tool_calls",
        }
    ]
    assert view.spans[0].messages["input_messages"] == [{"role": "user", "content": "Weather?"}]
    assert store_rows(store_path, "SELECT kind, tool_name FROM spans WHERE span_id = 'e2e2e2e2e2e2e2e2'") == [
        {"kind": "TOOL", "tool_name": "weather"}
    ]


ANSWER_SHAPES = {
    "openai": [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        }
    ],
    "genai parts": [
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "c1", "name": "f", "arguments": {}}]}
    ],
    "langchain": {
        "role": "assistant",
        "content": "",
        "additional_kwargs": {"tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{}"}}]},
    },
    "langchain ai message": {
        "type": "ai",
        "content": "",
        "tool_calls": [{"name": "f", "args": {}, "id": "c1", "type": "tool_call"}],
    },
    "responses api": {
        "object": "response",
        "output": [{"type": "function_call", "name": "f", "arguments": "{}", "call_id": "c1"}],
    },
    "anthropic": [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "f", "input": {}}]}
    ],
    "content list": [
        {
            "role": "assistant",
            "content": [{"type": "function", "id": "c1", "function": {"name": "f", "arguments": "{}"}}],
        }
    ],
}


@pytest.mark.parametrize("shape", sorted(ANSWER_SHAPES))
def test_one_message_normaliser_for_every_path(shape: str, tmp_path: Path) -> None:
    value = ANSWER_SHAPES[shape]
    expected = [{"id": "c1", "name": "f", "arguments": "{}"}]
    assert [c for m in chat_messages(value, "assistant") for c in m["tool_calls"]] == expected
    # The same answer through three paths: a Langfuse generation, an OTLP GenAI attribute, a flat span.
    langfuse = observation("lf-trace", "lf-gen", "GENERATION", 0, 1, model="m", output=value)
    otlp = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "ab" * 16,
                                "spanId": "cd" * 8,
                                "name": "chat",
                                "startTimeUnixNano": "1776924720000000000",
                                "attributes": [
                                    {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                                    {
                                        "key": "gen_ai.output.messages",
                                        "value": {"stringValue": orjson.dumps(value).decode()},
                                    },
                                ],
                            }
                        ]
                    }
                ]
            }
        ]
    }
    flat = {
        "trace_id": "flat-trace",
        "span_id": "flat-span",
        "name": "llm",
        "start_time": 1776924720,
        "attributes": {"openinference.span.kind": "LLM", "llm.output_messages": orjson.dumps(value).decode()},
    }
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in (langfuse, otlp, flat)))
    store_path = tmp_path / "s.duckdb"
    with TraceStore.open(store_path) as store:
        assert store.ingest([path]).spans == 3
    rows = store_rows(store_path, "SELECT trace_id, tool_calls FROM spans ORDER BY trace_id")
    assert [r["tool_calls"] for r in rows] == [expected] * 3, rows
    assert normalize_messages({"llm.output_messages": orjson.dumps(value).decode()})["tool_calls"] == expected
