"""Small local models and their servers (llama.cpp's llama-server, llama-cpp-python, vLLM, Ollama),
as the scripted server plays them over real HTTP through the real `openai` client: the context window
learnt and every request fitted into it, overflow errors in each server's own words, tool definitions
dropped or refused, tool calls written as text, budget notes the model acts on, forced finishing,
replies cut at the output limit, and servers that report no usage."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from scripted_llm import (
    Call,
    ChatRequest,
    EmptyStream,
    HTTPError,
    ScriptedLLM,
    Server,
    StreamError,
    Text,
    ToolCalls,
    scripted_llm,  # noqa: F401  (a fixture)
    text_call,
)

from halo_rlm.engine import AgentOutputItem, EngineConfig, EngineError, stream_engine_async
from halo_rlm.engine.tools import COMPACT_TOOLS
from halo_rlm.llm import LLM, ContextOverflow, ToolsUnsupported
from halo_rlm.providers import ModelConfig, Provider
from halo_rlm.render import to_markdown
from halo_rlm.report import Report
from halo_rlm.simulate import simulate
from halo_rlm.store import TraceStore
from halo_rlm.utils import RetryPolicy

WAITS: list[float] = []
RECORDED = RetryPolicy(sleep=WAITS.append)
MODEL = ModelConfig(name="scripted-model")


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("local")
    truth = simulate(folder / "t.jsonl", traces=60, seed=11)
    with TraceStore.open(folder / "s.duckdb") as store:
        store.ingest([str(truth.traces_path)])
    return folder / "s.duckdb"


@pytest.fixture
def store(store_path: Path) -> Iterator[TraceStore]:
    with TraceStore.open(store_path, read_only=True) as read_only:
        yield read_only


@pytest.fixture(autouse=True)
def no_ambient_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    WAITS.clear()
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def run(llm: ScriptedLLM, store: TraceStore, **overrides: Any) -> Report:
    config = EngineConfig(base_url=llm.base_url, model="scripted-model", retry=RECORDED, **overrides)

    async def collect() -> list[Any]:
        return [e async for e in stream_engine_async("Find the systemic failures.", config, store=store)]

    events = asyncio.run(collect())
    final = [e for e in events if isinstance(e, AgentOutputItem) and e.final]
    assert len(final) == 1 and final[0].report is not None
    return final[0].report


def finish(answer: str = "# Report\n\nlookup_order fails in most traces.") -> ToolCalls:
    return ToolCalls([Call("final_answer", {"answer": answer, "findings": []})])


def complete(llm: ScriptedLLM, messages: list[dict[str, Any]], **options: Any) -> Any:
    async def call() -> Any:
        client = LLM(Provider(base_url=llm.base_url), retry=RECORDED)
        try:
            return await client.complete(MODEL, messages, **options)
        finally:
            await client.aclose()

    return asyncio.run(call())


def discover(llm: ScriptedLLM) -> Any:
    async def call() -> Any:
        client = LLM(Provider(base_url=llm.base_url), retry=RECORDED)
        try:
            return await client.discover("scripted-model")
        finally:
            await client.aclose()

    return asyncio.run(call())


def notes(report: Report) -> str:
    return "\n".join(report.notes)


# --- the window: learnt, and every request fitted into it ---------------------------------------


@pytest.mark.parametrize(
    ("server", "window", "source"),
    [
        (Server("llama-server", context_window=8_192), 8_192, "llama-server /props (n_ctx)"),
        (Server("vllm", context_window=32_768), 32_768, "/v1/models (max_model_len)"),
        (Server("ollama", context_window=16_384), 16_384, "Ollama /api/ps"),
        (Server("ollama", context_window=8_000, loaded=False, num_ctx_set=True), 8_000, "Ollama /api/show"),
        (Server("ollama", context_window=32_768, loaded=False), 4_096, "Ollama's default context"),
        (Server("llama-cpp-python", context_window=8_192), None, ""),
        (Server("openai"), None, ""),
    ],
)
def test_the_server_says_how_large_its_context_is(
    scripted_llm: Any, server: Server, window: int | None, source: str
) -> None:
    info = discover(scripted_llm(Text("unused"), server=server))
    assert (info.context_window, info.source.startswith(source)) == (window, True)
    # Ollama's default is a guess, and says what to set.
    assert (info.advice is not None) == (source == "Ollama's default context")


def test_a_small_window_gets_compact_tools_and_prompts_and_every_request_fits(store: TraceStore) -> None:
    server = Server("llama-server", context_window=8_192)

    def responder(request: ChatRequest) -> Any:
        if not request.tool_results:
            return ToolCalls([Call("count_traces", {"filters": {"has_errors": True}})])
        if len(request.tool_results) == 1:
            return ToolCalls([Call("query_traces", {"limit": 200})])
        return finish()

    with ScriptedLLM(responder, server=server) as llm:
        report = run(llm, store)
        requests = llm.chat_requests
        paths = [r.path for r in llm.requests]
    assert "/props" in paths
    for request in requests:
        assert set(request.tool_names) <= COMPACT_TOOLS
        assert "TraceFilters" not in orjson.dumps(request.tools).decode()  # the filter schema is not repeated
        assert request.max_tokens is not None and request.max_tokens <= 2_048
        assert server.prompt_tokens(request) + request.max_tokens <= 8_192
    first = requests[0]
    filters = next(t for t in first.tools if t["function"]["name"] == "count_traces")
    assert (
        filters["function"]["parameters"]["properties"]["filters"]["description"]
        == "trace filters (see FILTERS)"
    )
    assert first.system_text.count("FILTERS (the `filters` argument)") == 1
    assert len(orjson.dumps(first.body)) < 16_000  # the full first request is over 25 KB
    # A big tool result was cut to what the window leaves.
    assert len(requests[-1].tool_results[-1]["content"]) < 6_000
    assert "Context window: 8,192 tokens (llama-server /props (n_ctx)). Compact mode" in notes(report)
    assert report.answer == "# Report\n\nlookup_order fails in most traces."


def test_a_large_window_keeps_the_full_tools_and_a_given_window_asks_the_server_nothing(
    store: TraceStore,
) -> None:
    with ScriptedLLM(lambda r: finish(), server=Server("vllm", context_window=131_072)) as llm:
        report = run(llm, store)
        request = llm.chat_requests[0]
    assert "view_spans" in request.tool_names and "$defs" in orjson.dumps(request.tools).decode()
    assert request.max_tokens == 16_384
    assert "Context window: 131,072 tokens (/v1/models (max_model_len)). Full prompts" in notes(report)

    with ScriptedLLM(lambda r: finish(), server=Server("llama-server", context_window=8_192)) as llm:
        report = run(llm, store, context_window=12_000, max_output_tokens=1_000)
        asked = [r.path for r in llm.requests if r.path != "/v1/chat/completions"]
        request = llm.chat_requests[0]
    assert asked == [] and request.max_tokens == 1_000
    assert "Context window: 12,000 tokens (--context-window). Compact mode" in notes(report)

    with ScriptedLLM(lambda r: finish()) as llm:  # a server that does not say, and compact asked for
        report = run(llm, store, compact=True)
        request = llm.chat_requests[0]
    assert set(request.tool_names) <= COMPACT_TOOLS
    assert (
        "Context window: unknown (the server does not say; --context-window sets it). Compact mode"
        in notes(report)
    )


# --- overflow, in the words real servers use --------------------------------------------------------

BIG = [{"role": "user", "content": "word " * 8_000}]


@pytest.mark.parametrize(
    ("server", "reply", "window", "requests"),
    [
        (Server("llama-server", context_window=4_096), None, 4_096, 1),
        # An empty 200 stream, then the same request without streaming, which says what is wrong.
        (Server("llama-cpp-python", context_window=4_096), None, 4_096, 2),
        (Server("vllm", context_window=4_096), None, 4_096, 1),
        (Server(), HTTPError(500, None, "Context size has been exceeded.", type="server_error"), None, 1),
        (
            Server(),
            StreamError(HTTPError.llama_server_overflow(9_000, 8_192)),
            8_192,
            1,
        ),
    ],
)
def test_overflow_errors_are_recognised_in_each_servers_words(
    scripted_llm: Any, server: Server, reply: Any, window: int | None, requests: int
) -> None:
    llm = scripted_llm(reply or Text("unused"), server=server)
    with pytest.raises(ContextOverflow) as caught:
        complete(llm, BIG, max_tokens=500)
    assert caught.value.window == window
    sent = llm.chat_requests
    assert len(sent) == requests and WAITS == []  # not retried as a cut stream or a server error
    assert [r.stream for r in sent] == [True, False][:requests]


def test_an_empty_stream_that_was_not_an_overflow_is_answered_without_streaming(scripted_llm: Any) -> None:
    replies = iter([EmptyStream(), Text("Fine, without streaming.")])
    llm = scripted_llm(lambda request: next(replies))
    completion = complete(llm, [{"role": "user", "content": "hi"}])
    assert completion.content == "Fine, without streaming." and completion.retries == 0


def test_an_overflow_teaches_the_window_and_the_run_goes_on_compact(store: TraceStore) -> None:
    # llama-cpp-python does not say its window, so the first (full) request overflows.
    server = Server("llama-cpp-python", context_window=6_000)

    def responder(request: ChatRequest) -> Any:
        return finish() if request.tool_results else ToolCalls([Call("count_traces", {})])

    with ScriptedLLM(responder, server=server) as llm:
        report = run(llm, store)
        requests = llm.chat_requests
    assert [r.stream for r in requests[:2]] == [True, False]
    assert set(requests[-1].tool_names) <= COMPACT_TOOLS
    assert "Context window: 6,000 tokens (the server's context-length error). Compact mode" in notes(report)
    assert report.answer == "# Report\n\nlookup_order fails in most traces."


# --- tools dropped or refused by the server -----------------------------------------------------------


def test_a_server_that_drops_the_tools_silently_is_detected_and_told_how_to_fix(store: TraceStore) -> None:
    server = Server("llama-server", context_window=32_768, drops_tools=True)

    def responder(request: ChatRequest) -> Any:
        if "does not pass tool definitions" not in request.system_text:
            return Text("I will look at the traces and report back.")  # it never saw the tools
        assert not request.tools
        if "Results of the tool calls" not in request.last_user_text:
            return text_call("count_traces", {"filters": {"has_errors": True}}, prose="Counting first.")
        return text_call("final_answer", {"answer": "# Report\n\nErrors counted.", "findings": []})

    with ScriptedLLM(responder, server=server) as llm:
        report = run(llm, store)
    text = notes(report)
    assert "leaves out the tool definitions" in text and "--jinja" in text
    assert report.answer == "# Report\n\nErrors counted."


@pytest.mark.parametrize("kind", ["llama-server", "ollama", "vllm"])
def test_a_server_that_refuses_tools_is_answered_without_them(store: TraceStore, kind: str) -> None:
    def responder(request: ChatRequest) -> Any:
        return text_call(
            "final_answer", {"answer": "# Report\n\nDone in text.", "findings": []}, style="qwen"
        )

    server = Server(kind, context_window=65_536, refuses_tools=True)  # type: ignore[arg-type]
    with ScriptedLLM(responder, server=server) as llm:
        report = run(llm, store)
        requests = llm.chat_requests
    assert [bool(r.tools) for r in requests] == [True, False]  # refused once, not retried with tools
    assert WAITS == []
    fix = {"llama-server": "--jinja", "ollama": "supports tools", "vllm": "--enable-auto-tool-choice"}[kind]
    assert fix in notes(report) and report.answer == "# Report\n\nDone in text."


def test_the_refusal_of_tools_is_an_error_with_the_fix(scripted_llm: Any) -> None:
    llm = scripted_llm(Text("unused"), server=Server("llama-server", refuses_tools=True))
    tool = {"type": "function", "function": {"name": "t", "parameters": {"type": "object"}}}
    with pytest.raises(ToolsUnsupported) as caught:
        complete(llm, [{"role": "user", "content": "hi"}], tools=[tool])
    assert "--jinja" in caught.value.fix and len(llm.chat_requests) == 1


# --- tool calls written as text ---------------------------------------------------------------------


def test_tool_calls_written_as_text_are_run_and_bad_ones_corrected(store: TraceStore) -> None:
    script = iter(
        [
            text_call("count_traces", {"filters": {"has_errors": True}}, style="fenced"),
            text_call("delete_everything", {}, style="bare"),
            text_call("count_traces", '{"filters": {"has_errors": tru}', style="fenced"),
            text_call("count_traces", {"filters": "only the bad ones"}, style="qwen"),
            text_call(
                "final_answer", {"answer": "# Report\n\nFrom text calls.", "findings": []}, style="bare"
            ),
        ]
    )
    with ScriptedLLM(lambda request: next(script)) as llm:
        report = run(llm, store, max_turns=8)
        requests = llm.chat_requests
    answers = [r.messages[-1]["content"] for r in requests[1:]]
    assert answers[0].startswith('Results of the tool calls you wrote as text:\n\n[count_traces] {"total":')
    assert "there is no tool named 'delete_everything'" in answers[1]
    assert "its JSON could not be read" in answers[2]
    assert "[count_traces] ERROR: invalid arguments for count_traces: filters" in answers[3]
    assert report.answer == "# Report\n\nFrom text calls."
    assert "wrote tool calls as text" in notes(report)


# --- budget notes where models act on them ------------------------------------------------------------


def test_the_budget_note_ends_the_last_message_and_is_worded_right(store: TraceStore) -> None:
    def responder(request: ChatRequest) -> Any:
        return finish() if len(request.tool_results) == 2 else ToolCalls([Call("count_traces", {})])

    with ScriptedLLM(responder) as llm:
        run(llm, store, max_turns=6, timeout=600)
        requests = llm.chat_requests
    first, second, third = requests
    # Never a bare trailing user message of its own (small models answered it, or echoed it).
    assert [m["role"] for m in second.messages][-2:] == ["assistant", "tool"]
    assert first.messages[-1]["content"].startswith(
        "Find the systemic failures.\n\n(HALO: this is turn 1 of 6;"
    )
    note = second.messages[-1]["content"].split("\n\n")[-1]
    assert note.startswith("(HALO: this is turn 2 of 6; ") and " s left for the whole run." in note
    assert "call final_answer before the budget runs out" in note
    # The note is not kept in the conversation: the third turn sees only its own.
    assert "(HALO:" not in third.tool_results[0]["content"]
    assert "Budget: up to 6 turns; 600 s for the whole run." in first.system_text
    assert "left turns" not in first.system_text


def test_a_model_that_echoes_the_budget_note_is_told_so_and_the_echo_is_no_answer(store: TraceStore) -> None:
    def responder(request: ChatRequest) -> Any:
        if "budget note instead of answering" in request.last_user_text:
            return finish()
        return Text(request.last_user_text.split("\n\n")[-1])  # what small models did, every turn

    with ScriptedLLM(responder) as llm:
        report = run(llm, store)
        echoed = llm.chat_requests[0].last_user_text.split("\n\n")[-1]
    assert echoed.startswith("(HALO: this is turn 1 of 20")
    assert report.answer == "# Report\n\nlookup_order fails in most traces."

    with ScriptedLLM(lambda request: Text(request.last_user_text.split("\n\n")[-1])) as llm:
        report = run(llm, store, max_turns=6)
    assert report.answer is None or "(HALO:" not in report.answer


# --- finishing --------------------------------------------------------------------------------------


def test_plain_text_is_nudged_then_the_finish_is_forced_with_turns_left(store: TraceStore) -> None:
    def responder(request: ChatRequest) -> Any:
        if request.tool_choice == "required":
            assert request.tool_names == ["final_answer"]  # the only tool offered
            return finish("# Forced\n\nThe analysis, forced.")
        return Text("Here is what I think: lookup_order fails. " * 3)

    with ScriptedLLM(responder) as llm:
        report = run(llm, store, max_turns=10)
        requests = llm.chat_requests
    assert len(requests) == 3 and requests[-1].tool_choice == "required"
    assert all(isinstance(r.tool_choice, str | None) for r in requests)  # llama-server takes no objects
    assert "Plain text is not read as your report" in requests[1].last_user_text
    assert report.answer == "# Forced\n\nThe analysis, forced."


def test_a_reply_cut_at_the_output_limit_is_corrected_and_never_becomes_the_report(store: TraceStore) -> None:
    looping_line = "The tool lookup_order fails again and again.\n" * 80  # 3.6 KB of one line

    def responder(request: ChatRequest) -> Any:
        if any("cut off at the output limit" in (m.get("content") or "") for m in request.messages):
            return finish("# Report\n\nShort and whole.")
        return Text(looping_line)

    with ScriptedLLM(responder) as llm:
        report = run(llm, store, max_output_tokens=300)
        correction = llm.chat_requests[1].messages[-1]["content"]
    assert correction.startswith(
        "Your reply was cut off at the output limit (300 tokens), and it repeats one line"
    )
    assert report.answer == "# Report\n\nShort and whole."
    assert "a reply was cut at the output limit (300 tokens)" in notes(report)

    with ScriptedLLM(lambda request: Text(looping_line)) as llm:
        report = run(llm, store, max_output_tokens=300, max_turns=5)
    assert report.answer is None or "again and again" not in report.answer


def test_a_final_answer_that_repeats_one_line_is_sent_back(store: TraceStore) -> None:
    replies = iter([finish("Errors.\n" * 40), finish("# Report\n\nThe real one.")])
    with ScriptedLLM(lambda request: next(replies)) as llm:
        report = run(llm, store)
        refused = llm.chat_requests[1].tool_results[0]["content"]
    assert refused.startswith("ERROR: the answer was not accepted: it repeats one line 40 times")
    assert report.answer == "# Report\n\nThe real one."


# --- servers that report no usage ----------------------------------------------------------------------


def test_without_reported_usage_tokens_are_estimated_and_the_token_budget_holds(store: TraceStore) -> None:
    def responder(request: ChatRequest) -> Any:
        if request.tool_choice == "required":
            return finish()
        return ToolCalls([Call("query_traces", {"limit": 50})])

    with ScriptedLLM(responder, server=Server(reports_usage=False)) as llm:
        report = run(llm, store, max_tokens=60_000, max_depth=0)
        sent = llm.chat_requests
    assert report.usage is not None and report.usage.tokens > 10_000
    assert report.usage.tokens <= 60_000
    assert "reported no token usage" in notes(report)
    assert report.budgets is not None and report.budgets.ended_by == "tokens"
    assert (
        sent[-1].tool_choice == "required"
        and report.answer == "# Report\n\nlookup_order fails in most traces."
    )
    assert "Budgets:" in to_markdown(report)


def test_the_events_carry_the_report_as_json(store: TraceStore) -> None:
    with ScriptedLLM(lambda r: finish(), server=Server("llama-server", context_window=8_192)) as llm:
        report = run(llm, store)
    data = json.loads(report.model_dump_json())
    assert data["budgets"]["limits"][0] == {"budget": "turns", "limit": 20.0, "used": 1.0}


def test_the_cli_takes_the_window_and_the_report_states_the_budgets(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from halo_rlm.cli import cli

    truth = simulate(tmp_path / "t.jsonl", traces=40, seed=5)
    out = tmp_path / "report"
    with ScriptedLLM(lambda request: finish(), server=Server("llama-server", context_window=32_768)) as llm:
        result = CliRunner().invoke(
            cli,
            [
                "run",
                str(truth.traces_path),
                "--base-url",
                llm.base_url,
                "-m",
                "scripted-model",
                "--context-window",
                "9000",
                "--max-tokens",
                "50000",
                "-o",
                str(out),
                "--json",
            ],
        )
        request = llm.chat_requests[0]
    assert result.exit_code == 0, result.output
    assert set(request.tool_names) <= COMPACT_TOOLS and request.max_tokens is not None
    markdown = (out / "report.md").read_text()
    assert "Context window: 9,000 tokens (--context-window). Compact mode" in markdown
    assert "Budgets: root's turns 1 of 20 · tokens " in markdown and " of 50,000." in markdown


def test_ollamas_default_window_is_assumed_and_a_window_too_small_is_a_clear_error(store: TraceStore) -> None:
    # Not loaded, no num_ctx: Ollama's default of 4,096 tokens is assumed, and the report says what to set.
    server = Server("ollama", context_window=4_096, loaded=False)
    with ScriptedLLM(lambda request: finish(), server=server) as llm:
        report = run(llm, store)
        request = llm.chat_requests[0]
    assert "Ollama's default context (4,096 tokens)" in notes(report) and "OLLAMA_CONTEXT_LENGTH" in notes(
        report
    )
    assert server.prompt_tokens(request) + (request.max_tokens or 0) <= 4_096

    with ScriptedLLM(lambda request: finish(), server=Server("llama-server", context_window=2_048)) as llm:
        with pytest.raises(EngineError, match=r"context window \(2,048 tokens.*too small.*llama-server -c"):
            run(llm, store)
        assert llm.chat_requests == []
