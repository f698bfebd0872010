"""Self-telemetry: HALO's own runs traced as OpenInference spans, read back by HALO itself. Runs go
through the real engine against the scripted model server; spans go to a JSONL file or an
in-process `halo collect`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from scripted_llm import Call, ChatRequest, Hang, HTTPError, ScriptedLLM, Text, ToolCalls, Usage

from halo_rlm import collect, sandbox
from halo_rlm.cli import cli
from halo_rlm.engine import AgentOutputItem, EngineConfig, EngineError, stream_engine_async, telemetry
from halo_rlm.llm import LLMError
from halo_rlm.pricing import Price
from halo_rlm.report import Report
from halo_rlm.simulate import simulate
from halo_rlm.store import TraceStore
from halo_rlm.utils import RetryPolicy

NO_WAIT = RetryPolicy(sleep=lambda seconds: None)  # retries in these tests do not wait

USAGE = Usage(prompt=100, completion=20, cached=30, reasoning=5)
PRICE = Price(input=1.0, cached_input=0.5, output=2.0)
COST = ((100 - 30) * 1.0 + 30 * 0.5 + 20 * 2.0) / 1e6
HAS_SANDBOX = sandbox.available() is None


@pytest.fixture(scope="module")
def traces_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate(tmp_path_factory.mktemp("telemetry") / "t.jsonl", traces=30, seed=5).traces_path


@pytest.fixture(scope="module")
def store_path(traces_path: Path) -> Path:
    path = traces_path.parent / "s.duckdb"
    with TraceStore.open(path) as store:
        store.ingest([str(traces_path)])
    return path


@pytest.fixture
def store(store_path: Path) -> Iterator[TraceStore]:
    with TraceStore.open(store_path, read_only=True) as read_only:
        yield read_only


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No provider or OTLP settings from the machine, and a scratch working directory."""
    for name in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        telemetry.PATH_VARIABLE,
        *telemetry.OTLP_ENDPOINTS,
        *telemetry.OTLP_PROTOCOLS,
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def is_sub(request: ChatRequest) -> bool:
    return "You are a sub-agent" in request.system_text


def finish() -> ToolCalls:
    return ToolCalls([Call("final_answer", {"answer": "# Report\n\nDone.", "findings": []})], usage=USAGE)


def quick_finish(request: ChatRequest) -> Any:
    return (
        ToolCalls([Call("get_dataset_overview", {})], usage=USAGE) if not request.tool_results else finish()
    )


def first_calls() -> list[Call]:
    calls = [Call("get_dataset_overview", {}), Call("count_traces", "{not json")]
    if HAS_SANDBOX:
        calls.append(Call("run_code", {"code": "llm_query('Which tool fails most?')"}))
    return calls


def recursive(request: ChatRequest) -> Any:
    """Root: several tools at once (one with broken arguments, one running code that asks the cheap
    model), then a sub-agent, which delegates once more; every reply with the same usage."""
    first = first_calls()
    if request.model == "cheap":
        return Text("lookup_order fails most.", usage=USAGE)
    done = len(request.tool_results)
    if not is_sub(request):
        if done == 0:
            return ToolCalls(first, usage=USAGE)
        if done == len(first):
            return ToolCalls([Call("call_subagent", {"input": "Look into the tool errors"})], usage=USAGE)
        return finish()
    if done == 0:
        if "deeper" in request.first_user_text:
            return ToolCalls([Call("count_traces", {"filters": {"has_errors": True}})], usage=USAGE)
        return ToolCalls([Call("call_subagent", {"input": "deeper: which tool?"})], usage=USAGE)
    return Text("Found it.", usage=USAGE)


def run(responder: Any, store: TraceStore, traced: bool | None = None, **overrides: Any) -> list[Any]:
    """The engine's events; `traced` is stream_engine_async's `telemetry` keyword, `overrides` the config's."""

    async def collect_events(llm: ScriptedLLM) -> list[Any]:
        options = {
            "base_url": llm.base_url,
            "api_key": "test-key",
            "model": "scripted-model",
            "retry": NO_WAIT,
        } | overrides
        return [
            e
            async for e in stream_engine_async(
                "Find the failures.", EngineConfig(**options), store=store, telemetry=traced
            )
        ]

    with ScriptedLLM(responder) as llm:
        return asyncio.run(collect_events(llm))


def report_of(events: list[Any]) -> Report:
    assert isinstance(events[-1], AgentOutputItem) and events[-1].report is not None
    return events[-1].report


def read_back(path: Path, tmp_path: Path) -> list[dict[str, Any]]:
    """The spans of a telemetry file as HALO's store sees them."""
    with TraceStore.open(tmp_path / "telemetry.duckdb") as telemetry_store:
        ingested = telemetry_store.ingest([str(path)])
        assert ingested.rejected == 0 and ingested.spans > 0
        return telemetry_store.query("SELECT * FROM spans ORDER BY start_ns")


def children(
    spans: list[dict[str, Any]], parent: dict[str, Any], kind: str | None = None
) -> list[dict[str, Any]]:
    return [s for s in spans if s["parent_id"] == parent["span_id"] and kind in (None, s["kind"])]


# --- the span tree ------------------------------------------------------------------------------


def test_a_recursive_run_is_one_trace_of_openinference_spans(store: TraceStore, tmp_path: Path) -> None:
    events = run(
        recursive,
        store,
        traced=True,
        max_depth=2,
        synthesis_model="cheap",
        out_dir=tmp_path / "out",
        prices={"scripted-model": PRICE},
    )
    report = report_of(events)
    path = Path(report.telemetry or "")
    assert path.parent == tmp_path / "out" and path.name.startswith("halo-telemetry-") and path.is_file()
    assert any(str(path) in note for note in report.notes)
    spans = read_back(path, tmp_path)

    assert len({s["trace_id"] for s in spans}) == 1
    ids = {s["span_id"] for s in spans}
    assert all(s["parent_id"] in ids for s in spans if s["parent_id"]) and not any(
        s["is_orphan"] for s in spans
    )
    assert {s["kind"] for s in spans} == {"CHAIN", "AGENT", "LLM", "TOOL"}
    assert {s["service"] for s in spans} == {"halo"}

    [top] = [s for s in spans if s["parent_id"] is None]
    assert (top["name"], top["kind"], top["status"]) == ("halo.run", "CHAIN", "OK")
    assert top["input_value"] == "Find the failures." and top["output_value"] == "# Report\n\nDone."
    assert len(top["session_id"]) == 32 and {s["session_id"] for s in spans} == {top["session_id"], None}
    [root] = children(spans, top)
    assert (root["name"], root["kind"], root["agent_name"], root["status"]) == (
        "halo.agent root",
        "AGENT",
        "root",
        "OK",
    )

    # Tools under the agent that called them; a sub-agent under the call_subagent call that spawned it.
    tools = {s["tool_name"]: s for s in children(spans, root, "TOOL")}
    assert set(tools) >= {"get_dataset_overview", "count_traces", "call_subagent", "final_answer"}
    assert (
        tools["count_traces"]["status"] == "ERROR"
        and "not valid JSON" in tools["count_traces"]["status_message"]
    )
    assert tools["count_traces"]["tool_args"] == "{not json" and tools["count_traces"][
        "tool_result"
    ].startswith("ERROR:")
    assert (
        tools["get_dataset_overview"]["status"] == "OK"
        and '"traces":30' in tools["get_dataset_overview"]["tool_result"]
    )
    [sub1] = children(spans, tools["call_subagent"], "AGENT")
    assert (sub1["agent_name"], sub1["input_value"], sub1["output_value"]) == (
        "sub1",
        "Look into the tool errors",
        "Found it.",
    )
    [deeper_call] = [s for s in children(spans, sub1, "TOOL") if s["tool_name"] == "call_subagent"]
    [sub2] = children(spans, deeper_call, "AGENT")
    assert sub2["agent_name"] == "sub2" and [s["tool_name"] for s in children(spans, sub2, "TOOL")] == [
        "count_traces"
    ]

    # One LLM span per model call, under the agent that made it, with the provider's usage and its cost.
    llm_spans = [s for s in spans if s["kind"] == "LLM"]
    agent_calls = [s for s in llm_spans if s["model"] == "scripted-model"]
    assert len(children(spans, root, "LLM")) == 3 and len(children(spans, sub1, "LLM")) == 2
    assert len(children(spans, sub2, "LLM")) == 2 and len(agent_calls) == 7
    for span in llm_spans:
        assert (span["input_tokens"], span["output_tokens"], span["total_tokens"]) == (100, 20, 120)
        assert (span["cache_read_tokens"], span["reasoning_tokens"]) == (30, 5)
        assert span["provider"] == "127.0.0.1" and span["status"] == "OK"
    assert all(s["cost"] == pytest.approx(COST) for s in agent_calls)
    first_call = children(spans, root, "LLM")[0]
    assert [c["name"] for c in first_call["tool_calls"]] == [c.name for c in first_calls()]
    assert {"call_subagent", "final_answer", "get_dataset_overview"} <= set(first_call["tools_offered"])
    usage = report.usage
    assert usage is not None and sum(s["input_tokens"] for s in llm_spans) == sum(
        m.input_tokens for m in usage.models.values()
    )

    if HAS_SANDBOX:  # code's own model calls sit under the run_code call
        [code_call] = children(spans, tools["run_code"], "LLM")
        assert code_call["model"] == "cheap" and code_call["cost"] is None  # no price for "cheap"
        assert "Which tool fails most?" in (code_call["raw"] or "")
        assert len(llm_spans) == 8


def test_llm_spans_carry_the_conversation_cut_to_size(store: TraceStore, tmp_path: Path) -> None:
    long_answer = "start " + "x" * 10_000 + " end"

    def responder(request: ChatRequest) -> Any:
        if not request.tool_results:
            return ToolCalls([Call("get_dataset_overview", {})], content=long_answer, usage=USAGE)
        return finish()

    events = run(responder, store, traced=True)
    lines = [orjson.loads(line) for line in Path(report_of(events).telemetry or "").read_bytes().splitlines()]
    second = [s for s in lines if s["name"] == "halo.llm scripted-model"][1]["attributes"]
    roles = [second[f"llm.input_messages.{i}.message.role"] for i in range(4)]
    assert roles == ["system", "user", "assistant", "tool"]  # the budget note ends the tool result
    kept = second["llm.input_messages.2.message.content"]
    assert kept.startswith("start x") and kept.endswith("x end") and "characters cut" in kept
    assert len(kept) < telemetry.MESSAGE_CHARS + 100
    assert (
        second["llm.input_messages.2.message.tool_calls.0.tool_call.function.name"] == "get_dataset_overview"
    )
    assert (
        second["llm.input_messages.3.message.tool_call_id"]
        == second["llm.input_messages.2.message.tool_calls.0.tool_call.id"]
    )
    assert second["llm.output_messages.0.message.tool_calls.0.tool_call.function.name"] == "final_answer"
    assert orjson.loads(second["llm.invocation_parameters"]) == {"parallel_tool_calls": True}
    tool = next(s for s in lines if s["name"] == "halo.tool get_dataset_overview")["attributes"]
    assert len(tool["output.value"]) <= telemetry.VALUE_CHARS + 100
    assert tool["halo.tool.result_chars"] >= len(tool["output.value"])


# --- failures -------------------------------------------------------------------------------------


def test_a_failed_run_still_writes_its_spans_with_the_error(
    store: TraceStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "failed.jsonl"
    monkeypatch.setenv(telemetry.PATH_VARIABLE, str(path))

    async def failing(llm: ScriptedLLM) -> None:
        config = EngineConfig(
            base_url=llm.base_url, api_key="test-key", model="scripted-model", telemetry=True, retry=NO_WAIT
        )
        async for _ in stream_engine_async("Find the failures.", config, store=store):
            pass

    with ScriptedLLM(HTTPError.invalid_api_key()) as llm, pytest.raises(LLMError) as failed:
        asyncio.run(failing(llm))
    assert failed.value.__notes__ == [f"Telemetry of this run: {path}"]  # the CLI prints it with the error
    spans = read_back(path, tmp_path)
    by_name = {s["name"]: s for s in spans}
    assert by_name["halo.llm scripted-model"]["status"] == "ERROR"
    assert "API key was refused" in by_name["halo.llm scripted-model"]["status_message"]
    assert by_name["halo.llm scripted-model"]["error_type"] == "halo_rlm.llm.LLMError"  # the exception event
    assert by_name["halo.agent root"]["status"] == by_name["halo.run"]["status"] == "ERROR"


def test_a_cancelled_run_flushes_its_spans_marked_cancelled(
    store: TraceStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cancelled.jsonl"
    monkeypatch.setenv(telemetry.PATH_VARIABLE, str(path))

    def responder(request: ChatRequest) -> Any:
        return (
            ToolCalls([Call("get_dataset_overview", {})], usage=USAGE) if not request.tool_results else Hang()
        )

    async def stop_early(llm: ScriptedLLM) -> None:
        config = EngineConfig(
            base_url=llm.base_url, api_key="test-key", model="scripted-model", telemetry=True, retry=NO_WAIT
        )
        events = stream_engine_async("Find the failures.", config, store=store)
        async for event in events:
            if isinstance(event, AgentOutputItem) and event.item.role == "tool":
                break  # the model is now hanging on the second call
        await events.aclose()  # type: ignore[attr-defined]

    with ScriptedLLM(responder, strict=False) as llm:
        asyncio.run(stop_early(llm))
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in read_back(path, tmp_path):
        by_name.setdefault(span["name"], []).append(span)
    assert [s["status_message"] for s in by_name["halo.run"]] == ["cancelled"]
    assert [s["status"] for s in by_name["halo.llm scripted-model"]] == ["OK", "ERROR"]
    assert by_name["halo.agent root"][0]["status"] == "ERROR"


def test_a_grpc_protocol_is_refused_before_the_run(
    store: TraceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with ScriptedLLM(quick_finish) as llm:
        with pytest.raises(EngineError, match="OTLP over HTTP"):
            asyncio.run(_consume(llm, store))
        assert llm.chat_requests == []


async def _consume(llm: ScriptedLLM, store: TraceStore) -> None:
    config = EngineConfig(
        base_url=llm.base_url, api_key="test-key", model="scripted-model", telemetry=True, retry=NO_WAIT
    )
    async for _ in stream_engine_async("Find the failures.", config, store=store):
        pass


# --- routing --------------------------------------------------------------------------------------


def test_off_creates_nothing(store: TraceStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_telemetry(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("telemetry was set up")

    monkeypatch.setattr(telemetry.Telemetry, "__init__", no_telemetry)
    report = report_of(run(quick_finish, store, out_dir=tmp_path / "out"))
    assert report.telemetry is None and not any("Telemetry" in note for note in report.notes)
    # stream_engine_async's keyword overrides the config.
    assert (
        report_of(run(quick_finish, store, traced=False, telemetry=True, out_dir=tmp_path / "out")).telemetry
        is None
    )
    assert list(tmp_path.rglob("halo-telemetry-*")) == []


def test_files_go_to_the_variable_then_the_report_folder_then_here(
    store: TraceStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = report_of(run(quick_finish, store, traced=True)).telemetry
    assert here is not None and Path(here).parent.resolve() == tmp_path.resolve() and Path(here).is_file()
    beside = report_of(run(quick_finish, store, traced=True, out_dir=Path("out"))).telemetry
    assert beside is not None and Path(beside).parent.resolve() == (tmp_path / "out").resolve()
    gathered = tmp_path / "all" / "halo.jsonl"
    monkeypatch.setenv(telemetry.PATH_VARIABLE, str(gathered))
    for _ in range(2):  # appended to: one file, one trace per run
        assert report_of(run(quick_finish, store, traced=True, out_dir=tmp_path / "out")).telemetry == str(
            gathered
        )
    assert len({s["trace_id"] for s in read_back(gathered, tmp_path)}) == 2


def test_spans_go_over_otlp_when_the_standard_variables_say_so(
    store: TraceStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with collect.serve(store=tmp_path / "collected.duckdb", port=0, token="collector-token") as collector:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", collector.traces_url)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "authorization=Bearer collector-token")
        report = report_of(run(quick_finish, store, traced=True, out_dir=tmp_path / "out"))
    assert report.telemetry == f"OTLP endpoint {collector.traces_url}"
    assert collector.stats.failed_requests == 0 and collector.stats.spans == 6
    with TraceStore.open(tmp_path / "collected.duckdb", read_only=True) as collected:
        rows = collected.query("SELECT name, kind, service FROM spans ORDER BY start_ns")
    assert [(r["name"], r["kind"]) for r in rows] == [
        ("halo.run", "CHAIN"),
        ("halo.agent root", "AGENT"),
        ("halo.llm scripted-model", "LLM"),
        ("halo.tool get_dataset_overview", "TOOL"),
        ("halo.llm scripted-model", "LLM"),
        ("halo.tool final_answer", "TOOL"),
    ]
    assert {r["service"] for r in rows} == {"halo"}
    assert list(tmp_path.rglob("halo-telemetry-*")) == []


# --- secrets --------------------------------------------------------------------------------------


def test_keys_and_headers_never_reach_the_spans(store: TraceStore, tmp_path: Path) -> None:
    key, header = "halo-fake-key-4f9a1c", "hdr-fake-secret-77b3e0"

    def echoing(request: ChatRequest) -> Any:
        # A provider (or a model) repeating credentials back: they must still not be written.
        if not request.tool_results:
            return ToolCalls(
                [Call("get_dataset_overview", {"note": f"{key} {header}"})],
                content=f"I was called with {key} and {header}.",
                usage=USAGE,
            )
        return finish()

    events = run(
        echoing,
        store,
        traced=True,
        out_dir=tmp_path / "out",
        api_key=key,
        headers={"X-Gateway-Auth": header, "Authorization": f"Bearer {header}"},
    )
    text = Path(report_of(events).telemetry or "").read_text()
    assert key not in text and header not in text and "Authorization" not in text
    assert "X-Gateway-Auth" not in text and "[REDACTED]" in text
    assert "get_dataset_overview" in text  # the spans themselves are all there


# --- the CLI --------------------------------------------------------------------------------------


def test_the_cli_flag_writes_the_file_and_says_where(traces_path: Path, tmp_path: Path) -> None:
    with ScriptedLLM(quick_finish) as llm:
        result = CliRunner().invoke(
            cli,
            [
                str(traces_path),
                "--base-url",
                llm.base_url,
                "--api-key",
                "test-key",
                "-m",
                "scripted-model",
                "--telemetry",
                "-o",
                str(tmp_path / "report"),
            ],
        )
    assert result.exit_code == 0, result.output
    [written] = list((tmp_path / "report").glob("halo-telemetry-*.jsonl"))
    assert f"Telemetry: {written}" in result.stdout.replace("\n", "")
    assert [orjson.loads(line)["name"] for line in written.read_bytes().splitlines()][-1] == "halo.run"


def test_the_cli_says_when_there_is_nothing_to_trace(traces_path: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, [str(traces_path), "--telemetry", "-o", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    notes = orjson.loads((tmp_path / "report" / "report.json").read_bytes())["notes"]
    assert any("nothing was traced" in note for note in notes)
    assert list(tmp_path.rglob("halo-telemetry-*")) == []


def test_the_callers_own_tracing_is_left_alone(store: TraceStore, tmp_path: Path) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    global_provider = trace.get_tracer_provider()
    theirs = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(theirs))
    with provider.get_tracer("their-app").start_as_current_span("their request"):
        path = Path(report_of(run(quick_finish, store, traced=True)).telemetry or "")
    assert trace.get_tracer_provider() is global_provider
    assert [s.name for s in theirs.get_finished_spans()] == ["their request"]
    [top] = [s for s in read_back(path, tmp_path) if s["name"] == "halo.run"]
    assert top["parent_id"] is None  # its own trace, not a child of a span this file never holds
