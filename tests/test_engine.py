"""The engine, end to end, against a scripted OpenAI-compatible server on loopback (real HTTP, the
real `openai` client): exploration, recursion, faults, budgets and the Python entry points."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from scripted_llm import (
    Call,
    ChatRequest,
    CutStream,
    HTTPError,
    RateLimited,
    RawChunks,
    Refusal,
    ScriptedLLM,
    ServerError,
    Text,
    ToolCalls,
    Usage,
)

from halo_rlm.engine import (
    AgentOutputItem,
    AgentTextDelta,
    EngineConfig,
    EngineError,
    run_engine,
    run_engine_async,
    stream_engine,
    stream_engine_async,
    stream_engine_output,
    stream_engine_output_async,
)
from halo_rlm.llm import LLM, LLMError, MessageMemo, request_chars
from halo_rlm.providers import Provider
from halo_rlm.report import Report
from halo_rlm.simulate import simulate
from halo_rlm.store import TraceFilters, TraceStore
from halo_rlm.utils import RetryPolicy

WAITS: list[float] = []  # what retries asked to wait, recorded instead of slept
RECORDED = RetryPolicy(sleep=WAITS.append)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("engine")
    truth = simulate(folder / "t.jsonl", traces=200, seed=3)
    with TraceStore.open(folder / "s.duckdb") as store:
        store.ingest([str(truth.traces_path)])
    return folder / "s.duckdb"


@pytest.fixture
def store(store_path: Path) -> Iterator[TraceStore]:
    with TraceStore.open(store_path, read_only=True) as read_only:
        yield read_only


@pytest.fixture(scope="module")
def any_store(
    backend: str, new_store: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TraceStore]:
    """The same simulated traces on each backend (DuckDB, chdb): the tool tests run on both."""
    truth = simulate(tmp_path_factory.mktemp("engine") / "t.jsonl", traces=200, seed=3)
    target = new_store(backend)
    with TraceStore.open(target) as writable:
        writable.ingest([str(truth.traces_path)])
    with TraceStore.open(target, read_only=True) as read_only:
        yield read_only


# A query the read-only store refuses because it reads a file, in each dialect.
FILE_READ = {
    "duckdb": ("SELECT * FROM read_text('/etc/passwd')", "disabled"),
    "clickhouse": ("SELECT * FROM file('/etc/passwd')", "table function file() is not allowed"),
}


@pytest.fixture(autouse=True)
def instant_retries(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Retries wait for nothing in tests (the configs here use RECORDED); the waits they asked for are
    recorded."""
    WAITS.clear()
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    return WAITS


def sample_trace(store: TraceStore, **filters: Any) -> str:
    return (
        store.query_traces(None).traces[0].trace_id
        if not filters
        else store.query("SELECT trace_id FROM traces WHERE has_errors ORDER BY trace_id LIMIT 1")[0][
            "trace_id"
        ]
    )


def role(request: ChatRequest) -> str:
    system = request.system_text
    return "sub" if "You are a sub-agent" in system else "root"


def config(llm: ScriptedLLM, **overrides: Any) -> EngineConfig:
    return EngineConfig(
        base_url=llm.base_url, api_key="test-key", model="scripted-model", retry=RECORDED, **overrides
    )


def run(llm: ScriptedLLM, store: TraceStore, **overrides: Any) -> list[Any]:
    async def collect() -> list[Any]:
        return [
            e
            async for e in stream_engine_async(
                "Find the systemic failures.", config(llm, **overrides), store=store
            )
        ]

    return asyncio.run(collect())


def final_report(events: list[Any]) -> Report:
    final = [e for e in events if isinstance(e, AgentOutputItem) and e.final]
    assert len(final) == 1 and final[0] is events[-1]
    assert final[0].report is not None
    return final[0].report


def finish(answer: str = "# Report\n\nDone.", findings: list[dict[str, Any]] | None = None) -> ToolCalls:
    return ToolCalls([Call("final_answer", {"answer": answer, "findings": findings or []})])


# --- end to end -----------------------------------------------------------------------------


def test_recursive_run_with_parallel_subagents_at_depth_two(store: TraceStore, tmp_path: Path) -> None:
    error_trace = sample_trace(store, has_errors=True)
    error_span = store.query(
        "SELECT span_id FROM spans WHERE trace_id = ? AND status = 'ERROR' LIMIT 1", [error_trace]
    )[0]["span_id"]

    def responder(request: ChatRequest) -> Any:
        done = len(request.tool_results)
        brief = request.first_user_text
        if role(request) == "root":
            if done == 0:
                return ToolCalls([Call("get_dataset_overview", {})])
            if done == 1:
                return ToolCalls(
                    [
                        Call("call_subagent", {"input": f"Look into tool errors in {error_trace}"}),
                        Call("call_subagent", {"input": "Look into rate limits"}),
                    ]
                )
            return finish(
                f"# Report\n\nTool errors [trace:{error_trace}] [span:{error_trace}:{error_span}].",
                [
                    {
                        "title": "lookup_order fails",
                        "category": "tool_error",
                        "severity": "high",
                        "key": "lookup_order",
                        "query": "SELECT trace_id FROM spans WHERE tool_name = 'lookup_order' AND status = 'ERROR'",
                        "evidence": [{"trace_id": error_trace, "span_id": error_span}],
                        "recommendation": "Return found=false instead of raising.",
                    }
                ],
            )
        depth_two = "deeper" in brief
        if done == 0:
            if depth_two:
                return ToolCalls([Call("count_traces", {"filters": {"has_errors": True}})])
            return ToolCalls(
                [
                    Call("view_trace", {"trace_id": error_trace}),
                    Call("call_subagent", {"input": f"deeper: {brief}"}),
                ]
            )
        return Text(
            f'Found it in [trace:{error_trace}].\n```json\n{{"findings": [{{"title": "x", '
            f'"category": "tool_error", "affected_traces": 3}}]}}\n```'
        )

    with ScriptedLLM(responder) as llm:
        events = run(llm, store, out_dir=tmp_path / "report")
    report = final_report(events)
    items = [e for e in events if isinstance(e, AgentOutputItem)]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    agents = {e.agent_id: e for e in items}
    depths = sorted({(e.depth, e.agent_name) for e in items})
    assert depths == [(0, "root"), (1, "sub1"), (2, "sub2")]
    assert (
        len([a for a in agents.values() if a.depth == 1]) == 2
        and len([a for a in agents.values() if a.depth == 2]) == 2
    )
    subagent_calls = {c.id for e in items for c in (e.item.tool_calls or []) if c.name == "call_subagent"}
    for event in items:
        if event.depth:
            assert event.parent_agent_id in agents and agents[event.parent_agent_id].depth == event.depth - 1
            assert event.parent_tool_call_id in subagent_calls
    results = [
        json.loads(e.item.content) for e in items if e.item.role == "tool" and e.item.name == "call_subagent"
    ]
    assert len(results) == 4 and all(r["status"] == "done" and not r["partial"] for r in results)
    assert all(
        r["findings"] == [{"title": "x", "category": "tool_error", "affected_traces": 3}] for r in results
    )
    # The report: the model's finding enriches the detectors' about the same tool, all verified, and
    # written with the same renderers as `halo analyze`.
    assert report.mode == "llm" and all(f.source.startswith("detector:") for f in report.findings)
    (finding,) = [f for f in report.findings if f.enriched_by == ["llm:tool_error:lookup-order"]]
    assert (
        finding.key == "lookup_order" and finding.recommendation == "Return found=false instead of raising."
    )
    assert all(
        f.check and f.check.status == "verified" and f.affected_traces == f.check.recount > 0
        for f in report.findings
    )
    assert report.verification and report.verification.missing_citations == []
    assert report.usage and report.usage.agents == 5 and len(report.usage.per_agent) == 5
    assert {"report.json", "report.md", "report.html"} <= {p.name for p in (tmp_path / "report").iterdir()}
    assert [
        f.id for f in Report.model_validate_json((tmp_path / "report" / "report.json").read_text()).findings
    ] == [f.id for f in report.findings]


def test_detector_findings_are_offered_as_hypotheses(any_store: TraceStore) -> None:
    store = any_store
    seen: list[str] = []

    def responder(request: ChatRequest) -> Any:
        seen.append(request.system_text)
        return finish()

    with ScriptedLLM(responder) as llm:
        report = final_report(run(llm, store))
    assert "The deterministic detectors found these" in seen[0] and "lookup_order" in seen[0]
    assert report.findings and all(f.source.startswith("detector:") for f in report.findings)


def test_text_deltas_stream_and_items_are_not_duplicated(store: TraceStore) -> None:
    def responder(request: ChatRequest) -> Any:
        if not request.tool_results:
            return ToolCalls([Call("count_traces", {})], content="Let me count the traces first.")
        return finish()

    with ScriptedLLM(responder) as llm:
        events = run(llm, store)
    deltas = [e for e in events if isinstance(e, AgentTextDelta)]
    assert "".join(d.text_delta for d in deltas).startswith("Let me count the traces first.")
    texts = [
        e for e in events if isinstance(e, AgentOutputItem) and e.item.role == "assistant" and e.item.content
    ]
    assert [t.item.content for t in texts][0] == "Let me count the traces first."


# --- tools ----------------------------------------------------------------------------------


def test_every_trace_tool_answers_and_bad_calls_come_back_as_errors(any_store: TraceStore) -> None:
    store = any_store
    trace = (
        store.query_traces(TraceFilters(has_errors=True), sort="start", descending=False).traces[0].trace_id
    )
    span = store.spans(trace_ids=[trace], limit=1)[0]["span_id"]
    file_read, refused = FILE_READ[store.dialect.name]
    calls = [
        Call("query_traces", {"filters": {"has_errors": True, "model_names": ["gpt-5.4"]}, "limit": 3}),
        Call("count_traces", {"filters": {"regex_pattern": "not found"}}),
        Call("view_trace", {"trace_id": trace}),
        Call("view_spans", {"trace_id": trace, "span_ids": [span]}),
        Call("search_trace", {"trace_id": trace, "regex_pattern": "(?i)error", "max_matches": 2}),
        Call("search_span", {"trace_id": trace, "span_id": span, "regex_pattern": "."}),
        Call("query_sql", {"query": "SELECT count(*) AS n FROM spans"}),
        Call("query_sql", {"sql": file_read}),
        Call("view_trace", {"trace_id": "no-such-trace"}),
        Call("search_trace", {"trace_id": trace, "regex_pattern": "(unclosed"}),
        Call("count_traces", {"filters": {"colour": "red"}}),
        Call("view_trace", '{"trace_id": '),
        Call("hack_the_planet", {}),
        Call("get_context_item", {"item_id": "ctx-99"}),
    ]

    def responder(request: ChatRequest) -> Any:
        return finish() if request.tool_results else ToolCalls(calls)

    with ScriptedLLM(responder) as llm:
        events = run(llm, store)
    results = [e.item.content for e in events if isinstance(e, AgentOutputItem) and e.item.role == "tool"]
    ok, errors = results[:7], results[7:14]
    assert json.loads(ok[0])["total"] > 0 and json.loads(ok[1])["total"] > 0
    assert json.loads(ok[2])["trace_id"] == trace and json.loads(ok[3])["spans"][0]["span_id"] == span
    assert json.loads(ok[4])["total_matches"] >= 1 and json.loads(ok[5])["total_matches"] >= 1
    assert json.loads(ok[6])["rows"][0][0] == store.query("SELECT count(*) AS n FROM spans")[0]["n"]
    assert all(e.startswith("ERROR: ") for e in errors), errors
    assert refused in errors[0] and "no trace 'no-such-trace'" in errors[1] and "invalid regex" in errors[2]
    assert "colour" in errors[3] and "not valid JSON" in errors[4]
    assert "no tool named 'hack_the_planet'" in errors[5] and "view_trace" in errors[5]
    assert "no context item" in errors[6]
    assert all(len(r.encode()) <= 24_000 for r in results)


def test_synthesize_traces_uses_the_synthesis_model_with_payloads(store: TraceStore) -> None:
    trace = sample_trace(store, has_errors=True)
    asked: list[ChatRequest] = []

    def responder(request: ChatRequest) -> Any:
        if request.model == "cheap-model":
            asked.append(request)
            return Text("Both traces fail at lookup_order.")
        if request.tool_results:
            return finish()
        return ToolCalls([Call("synthesize_traces", {"trace_ids": [trace, "missing"], "focus": "errors"})])

    with ScriptedLLM(responder) as llm:
        events = run(llm, store, synthesis_model="cheap-model")
    result = json.loads(
        [e.item.content for e in events if isinstance(e, AgentOutputItem) and e.item.role == "tool"][0]
    )
    assert result == {
        "summary": "Both traces fail at lookup_order.",
        "traces": 1,
        "missing_trace_ids": ["missing"],
    }
    prompt = asked[0].last_user_text
    assert trace in prompt and "Focus: errors" in prompt and "error:" in prompt
    report = final_report(events)
    assert set(report.usage.models) == {"scripted-model", "cheap-model"}  # type: ignore[union-attr]


# --- provider faults ------------------------------------------------------------------------


def test_rate_limits_honour_retry_after_and_server_errors_are_retried(
    store: TraceStore, instant_retries: list[float]
) -> None:
    replies = iter([RateLimited(retry_after=7), ServerError(500), ServerError(503), finish()])
    with ScriptedLLM(lambda r: next(replies)) as llm:
        report = final_report(run(llm, store))
        assert len(llm.chat_requests) == 4
    assert 7 <= instant_retries[0] <= 8 and len(instant_retries) == 3
    assert report.answer == "# Report\n\nDone."


def test_a_cut_stream_is_retried_without_duplicating_items(store: TraceStore) -> None:
    replies = iter(
        [
            ToolCalls([Call("count_traces", {})]),
            CutStream(
                after_chunks=2, reply=ToolCalls([Call("count_traces", {"filters": {"has_errors": True}})])
            ),
            ToolCalls([Call("count_traces", {"filters": {"has_errors": True}})]),
            finish(),
        ]
    )
    with ScriptedLLM(lambda r: next(replies)) as llm:
        events = run(llm, store)
    calls = [e for e in events if isinstance(e, AgentOutputItem) and e.item.tool_calls]
    assert [c.item.tool_calls[0].arguments for c in calls] == [  # type: ignore[index]
        "{}",
        '{"filters":{"has_errors":true}}',
        '{"answer":"# Report\\n\\nDone.","findings":[]}',
    ]


def test_malformed_stream_chunks_are_skipped_not_fatal(store: TraceStore) -> None:
    """Provider output is untrusted: chunks of the wrong shape are passed over, the rest is read."""

    def chunk(delta: Any, finish: Any = None, **extra: Any) -> dict[str, Any]:
        return {
            "model": "scripted-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }

    hostile = RawChunks(
        [
            "not an object",
            [1, 2],
            {"choices": "many"},
            {"choices": [7]},
            chunk(["a", "list"]),
            chunk({"content": 42}),
            chunk(
                {"tool_calls": [{"index": "0", "function": {"name": "count_traces"}}]}
            ),  # index of the wrong type
            chunk({"tool_calls": [None, {"index": 0, "id": 5, "function": "x"}]}),
            chunk(
                {
                    "tool_calls": [
                        {"index": 0, "id": "call_1", "function": {"name": "count_traces", "arguments": "{}"}}
                    ]
                }
            ),
            chunk({}, "tool_calls", usage={"prompt_tokens": "many", "completion_tokens": -3, "cost": True}),
        ]
    )
    replies = iter([hostile, finish()])
    with ScriptedLLM(lambda r: next(replies)) as llm:
        events = run(llm, store)
    calls = [c for e in events if isinstance(e, AgentOutputItem) for c in e.item.tool_calls or ()]
    assert [(c.id, c.name, c.arguments) for c in calls][0] == ("call_1", "count_traces", "{}")
    results = [e.item.content for e in events if isinstance(e, AgentOutputItem) and e.item.role == "tool"]
    assert results[0].isdigit() or results[0].startswith("{")  # the call ran
    usage = final_report(events).usage.models["scripted-model"]  # type: ignore[union-attr]
    assert (
        usage.calls == 2 and usage.cost_usd >= 0
    )  # "many" and -3 tokens, and a cost of true, were not counted


def test_refusals_are_retried_and_reported(store: TraceStore) -> None:
    replies = iter(
        [
            Refusal("I can't help with that."),
            Text("I'm sorry, but I can't assist with that request."),
            finish(),
        ]
    )
    with ScriptedLLM(lambda r: next(replies)) as llm:
        report = final_report(run(llm, store, refusal_retries=2))
        continued = llm.chat_requests[1].messages
    assert report.answer == "# Report\n\nDone."
    assert sum("refused" in note for note in report.notes) == 2
    assert any("Please continue" in (m.get("content") or "") for m in continued)


def big_views(store: TraceStore, n: int) -> list[Call]:
    """Calls whose results fill most of a tool result's budget."""
    return [
        Call("query_sql", {"query": f"SELECT raw FROM spans ORDER BY span_id LIMIT 40 OFFSET {40 * i}"})
        for i in range(n)
    ]


def test_context_overflow_shortens_old_results_and_retries(store: TraceStore) -> None:
    def responder(request: ChatRequest) -> Any:
        if not request.tool_results:
            return ToolCalls(big_views(store, 4))
        if any(len(r["content"]) > 2_000 for r in request.tool_results):
            return HTTPError.context_length_exceeded()
        return finish()

    with ScriptedLLM(responder) as llm:
        events = run(llm, store)
        last = llm.chat_requests[-1].tool_results
    report = final_report(events)
    assert report.answer == "# Report\n\nDone." and any("context overflow" in note for note in report.notes)
    assert all("get_context_item" in r["content"] for r in last)


def test_long_runs_are_compacted_and_originals_stay_retrievable(store: TraceStore) -> None:
    views = big_views(store, 6)
    summaries: list[ChatRequest] = []

    def responder(request: ChatRequest) -> Any:
        if "compress an agent's working notes" in request.system_text:
            summaries.append(request)
            return Text("Viewed the largest traces; lookup_order fails in several.")
        done = len(request.tool_results)
        if any("summary of your earlier work" in (m.get("content") or "") for m in request.messages):
            item = next(
                m["content"]
                for m in request.messages
                if "summary of your earlier work" in (m.get("content") or "")
            )
            item_id = item.split("context item '")[1].split("'")[0]
            if not any(
                "ctx-" in (r.get("content") or "")[:40] or '"item_id"' in r["content"]
                for r in request.tool_results
            ):
                return ToolCalls([Call("get_context_item", {"item_id": item_id})])
            return finish()
        return ToolCalls([views[done % len(views)]])

    with ScriptedLLM(responder) as llm:
        events = run(llm, store, context_tokens=6_000, max_turns=20)
    assert summaries and final_report(events).answer == "# Report\n\nDone."
    retrieved = [
        json.loads(e.item.content)
        for e in events
        if isinstance(e, AgentOutputItem) and e.item.name == "get_context_item"
    ]
    # The transcript of the compacted turns; results shortened earlier keep their own ids in it.
    transcript = retrieved[0]["content"]
    assert (
        transcript.startswith("ASSISTANT:")
        and "query_sql" in transcript
        and "get_context_item 'ctx-1'" in transcript
    )


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (HTTPError.invalid_api_key(), "the API key was refused (401"),
        (HTTPError.model_not_found("scripted-model"), "model 'scripted-model' was not found"),
        (
            HTTPError(400, "invalid_request_error", "bad things", type="invalid_request_error"),
            "was rejected (400: bad things)",
        ),
    ],
)
def test_terminal_provider_errors_name_the_url_and_model(store: TraceStore, reply: Any, message: str) -> None:
    with (
        ScriptedLLM(lambda r: reply, strict=False) as llm,
        pytest.raises(LLMError, match=re.escape(message)) as caught,
    ):
        run(llm, store)
    assert llm.base_url in str(caught.value)


def test_keyless_providers_and_custom_headers(store: TraceStore) -> None:
    with ScriptedLLM(lambda r: finish()) as llm:
        cfg = EngineConfig(base_url=llm.base_url, model="local", headers={"X-Team": "evals"}, retry=RECORDED)
        items = run_engine("go", cfg, store=store)
        headers = llm.requests[-1].headers
    assert items[-1].final and "authorization" not in headers and headers["x-team"] == "evals"


def test_no_provider_is_a_clear_error(store: TraceStore) -> None:
    with pytest.raises(EngineError, match="no model provider is configured"):
        run_engine("go", EngineConfig(), store=store)


def test_malformed_arguments_and_unknown_tools_do_not_end_the_run(store: TraceStore) -> None:
    replies = iter([ToolCalls([Call("count_traces", "{not json"), Call("delete_everything", {})]), finish()])
    with ScriptedLLM(lambda r: next(replies)) as llm:
        events = run(llm, store)
        second = llm.chat_requests[1].tool_results
    assert final_report(events).answer == "# Report\n\nDone."
    assert "not valid JSON" in second[0]["content"] and "no tool named" in second[1]["content"]


# --- budgets --------------------------------------------------------------------------------


def looping(request: ChatRequest) -> Any:
    """A model that never finishes on its own: it keeps counting, or answers in text when told to stop."""
    if request.tool_choice == "none":
        return Text("Partial: counted traces.")
    return ToolCalls([Call("count_traces", {})], usage=Usage(prompt=1000, completion=100))


def test_turn_limit_forces_a_final_answer(store: TraceStore) -> None:
    def responder(request: ChatRequest) -> Any:
        # Forced the way every server takes: only final_answer offered, tool_choice "required".
        if request.tool_choice == "required" and request.tool_names == ["final_answer"]:
            return finish("# Forced report")
        return looping(request)

    with ScriptedLLM(responder) as llm:
        report = final_report(run(llm, store, max_turns=3))
        assert len(llm.chat_requests) == 3
        last_turn = llm.chat_requests[-1].tool_results[-1]["content"]
    assert report.answer == "# Forced report"
    assert "last turn" in last_turn and "call final_answer now" in last_turn.lower()
    assert report.budgets is not None and report.budgets.ended_by == "turns"


def test_turn_limit_without_a_final_answer_still_yields_a_flagged_report(store: TraceStore) -> None:
    def responder(request: ChatRequest) -> Any:
        return Text("I think lookup_order is the main problem.") if request.turn >= 1 else looping(request)

    with ScriptedLLM(responder) as llm:
        report = final_report(run(llm, store, max_turns=4))
    assert report.answer == "I think lookup_order is the main problem."
    assert "ended without final_answer" in report.notes[0]
    assert report.findings  # the detectors' findings stand in


def test_a_failing_subagent_returns_a_partial_result(store: TraceStore) -> None:
    def responder(request: ChatRequest) -> Any:
        if role(request) == "sub":
            return ServerError(500)
        if request.tool_results:
            return finish()
        return ToolCalls([Call("call_subagent", {"input": "doomed"})])

    with ScriptedLLM(responder, strict=False) as llm:
        events = run(llm, store)
    result = json.loads(
        next(
            e.item.content
            for e in events
            if isinstance(e, AgentOutputItem) and e.item.name == "call_subagent"
        )
    )
    assert result["partial"] and result["status"] == "failed" and "500" in result["error"]
    assert final_report(events).answer == "# Report\n\nDone."


# --- entry points ---------------------------------------------------------------------------


def test_the_six_entry_points(store: TraceStore) -> None:
    def responder(request: ChatRequest) -> Any:
        return (
            finish() if request.tool_results else ToolCalls([Call("count_traces", {})], content="Counting.")
        )

    with ScriptedLLM(responder) as llm:
        cfg = config(llm)
        every = list(stream_engine("go", cfg, store=store))
        assert any(isinstance(e, AgentTextDelta) for e in every) and every[-1].final
        assert all(isinstance(e, AgentOutputItem) for e in stream_engine_output("go", cfg, store=store))
        assert run_engine("go", cfg, store=store)[-1].final

        async def async_ones() -> None:
            assert [e async for e in stream_engine_output_async("go", cfg, store=store)][-1].final
            assert (await run_engine_async("go", cfg, store=store))[-1].report is not None

        asyncio.run(async_ones())


def test_trace_files_are_ingested_for_the_run(tmp_path: Path) -> None:
    truth = simulate(tmp_path / "small.jsonl", traces=60, seed=5)
    with ScriptedLLM(lambda r: finish()) as llm:
        items = run_engine("go", config(llm), [truth.traces_path])
    assert items[-1].report is not None and items[-1].report.dataset.traces == 60


def test_a_message_memo_recomputes_whatever_changed_in_a_message() -> None:
    """The scrubbed copy of each message is kept between turns: a message shortened in place (its
    content replaced) or given other tool calls must be scrubbed again, never sent as it was."""
    seen: list[Any] = []

    def compute(message: dict[str, Any]) -> str:
        seen.append(message.get("content"))
        return f"scrubbed {message.get('content')}"

    memo = MessageMemo(compute, size=2)
    message: dict[str, Any] = {"role": "tool", "content": "key sk-1"}
    assert memo(message) == memo(message) == "scrubbed key sk-1"
    assert seen == ["key sk-1"]
    message["content"] = "[shortened] key sk-1"
    assert memo(message) == "scrubbed [shortened] key sk-1"
    message["tool_calls"] = [{"id": "c1"}]
    memo(message)
    assert memo({"role": "tool", "content": "[shortened] key sk-1"}) == "scrubbed [shortened] key sk-1"
    assert len(seen) == 4  # an equal message in another dict is a message of its own
    for other in ({"content": "a"}, {"content": "b"}):
        memo(other)
    memo(message)  # forgotten past `size`, so computed again
    assert len(seen) == 7


def test_an_estimate_counts_a_request_as_serialising_it_would() -> None:
    """Tool definitions are sized once each, not serialised every turn; the sum must stay exact."""
    llm = LLM(Provider(base_url="http://127.0.0.1:9/v1"))
    tools = [
        {"type": "function", "function": {"name": f"tool_{i}", "parameters": {"n": i}}} for i in range(5)
    ]
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "find the failures"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "function": {"name": "x"}}]},
    ]
    for offered in (tools, tools[:1], None):
        for _ in range(2):  # sized, then remembered
            assert llm.estimate(messages, offered) == math.ceil(
                request_chars(messages, offered) * llm.tokens_per_char
            )
