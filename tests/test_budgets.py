"""Budgets hold: before each model call the engine estimates it, and a call that would take the run
past --max-tokens or --max-cost is not made (the agent is told to finish instead). Driven through the
scripted server over real HTTP, with sub-agents spending the same budget in parallel; the report
states each budget, what was used, which one ended the run and what was cut."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scripted_llm import Call, ChatRequest, Delay, ScriptedLLM, Server, Text, ToolCalls, Usage

from halo_rlm.engine import AgentOutputItem, EngineConfig, stream_engine_async
from halo_rlm.render import to_markdown
from halo_rlm.report import Report
from halo_rlm.simulate import simulate
from halo_rlm.store import TraceStore
from halo_rlm.utils import RetryPolicy

RECORDED = RetryPolicy(sleep=lambda seconds: None)
PRICES = {"scripted-model": {"input": 10.0, "output": 40.0}}  # USD per million tokens


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("budgets")
    truth = simulate(folder / "t.jsonl", traces=60, seed=13)
    with TraceStore.open(folder / "s.duckdb") as store:
        store.ingest([str(truth.traces_path)])
    return folder / "s.duckdb"


@pytest.fixture
def store(store_path: Path) -> Iterator[TraceStore]:
    with TraceStore.open(store_path, read_only=True) as read_only:
        yield read_only


@pytest.fixture(autouse=True)
def no_ambient_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def run(llm: ScriptedLLM, store: TraceStore, **overrides: Any) -> Report:
    config = EngineConfig(
        base_url=llm.base_url, model="scripted-model", retry=RECORDED, prices=PRICES, **overrides
    )

    async def collect() -> list[Any]:
        return [e async for e in stream_engine_async("Find the systemic failures.", config, store=store)]

    events = asyncio.run(collect())
    final = [e for e in events if isinstance(e, AgentOutputItem) and e.final]
    assert len(final) == 1 and final[0].report is not None
    return final[0].report


def is_sub(request: ChatRequest) -> bool:
    return "You are a sub-agent" in request.system_text


def spender(request: ChatRequest) -> Any:
    """A model that never stops on its own: the root fans out to three sub-agents at once, then
    keeps reading; sub-agents keep reading. Told to finish, each does."""
    if request.tool_choice == "none":
        return Text("Partial: lookup_order fails in the traces I read.")
    if request.tool_choice == "required":
        return ToolCalls([Call("final_answer", {"answer": "# Report\n\nWithin budget.", "findings": []})])
    if not is_sub(request) and not request.tool_results:
        briefs = [f"Why does lookup_order fail? Part {i}." for i in range(3)]
        return ToolCalls([Call("call_subagent", {"input": brief}) for brief in briefs])
    return ToolCalls([Call("query_traces", {"limit": 30, "offset": 10 * len(request.tool_results)})])


@pytest.mark.parametrize(
    ("budget", "limit", "overshoot"),
    [({"max_cost": 0.2}, 0.2, 0.31), ({"max_tokens": 20_000}, 20_000, 30_425)],
)
def test_budgets_hold_with_sub_agents_spending_in_parallel(
    store: TraceStore, budget: dict[str, Any], limit: float, overshoot: float
) -> None:
    with ScriptedLLM(spender) as llm:
        # A window small enough for compact requests, so the budget covers several calls at once.
        report = run(llm, store, max_depth=1, max_parallel=3, context_window=16_384, **budget)
        requests = llm.chat_requests
    assert report.usage is not None and report.budgets is not None
    subs = [a for a in report.usage.per_agent if a.depth == 1]
    assert len(subs) == 3 and sum(a.turns for a in subs) >= 2  # the sub-agents spent the budget too
    spent = report.usage.cost_usd if "max_cost" in budget else report.usage.tokens
    assert spent <= limit < overshoot  # what the issue saw spent: 0.31 of 0.2, 30,425 of 20,000
    name = "cost_usd" if "max_cost" in budget else "tokens"
    used = next(b for b in report.budgets.limits if b.budget == name)
    assert (used.limit, used.used) == (pytest.approx(limit), pytest.approx(spent, rel=1e-3))
    assert report.budgets.ended_by == name
    assert any("was not made" in line and "told to finish instead" in line for line in report.budgets.cut)
    # The root was left room to write its report, forced, after the sub-agents were cut short.
    assert requests[-1].tool_choice == "required" and report.answer == "# Report\n\nWithin budget."
    words = "cost budget" if name == "cost_usd" else "token budget"
    markdown = to_markdown(report)
    assert f"**The {words} ended the run.**" in markdown and " Cut: " in markdown
    assert ("of $0.2000" if name == "cost_usd" else "of 20,000") in markdown


def test_a_provider_that_ignores_max_tokens_overshoots_by_at_most_one_reply(store: TraceStore) -> None:
    server = Server(honours_max_tokens=False)

    def responder(request: ChatRequest) -> Any:
        usage = Usage(prompt=server.prompt_tokens(request), completion=3_000)
        if request.tool_choice == "required":
            return ToolCalls(
                [Call("final_answer", {"answer": "# Report\n\nDone.", "findings": []})], usage=usage
            )
        return ToolCalls([Call("count_traces", {})], usage=usage)

    with ScriptedLLM(responder, server=server) as llm:
        report = run(llm, store, max_tokens=30_000, max_depth=0)
    assert report.usage is not None and report.usage.tokens <= 30_000 + 3_000
    assert report.budgets is not None and report.budgets.ended_by == "tokens"


def test_a_budget_too_small_for_any_call_makes_none_and_says_so(store: TraceStore) -> None:
    with ScriptedLLM(spender) as llm:
        report = run(llm, store, max_tokens=1_500)
        assert llm.chat_requests == []
    assert report.usage is not None and report.usage.tokens == 0
    assert report.budgets is not None and report.budgets.ended_by == "tokens"
    assert any(
        "root" in line and "stopped after 0 of 20 turns, as the token budget" in line
        for line in report.budgets.cut
    )


def test_an_unpriced_model_says_the_cost_budget_cannot_be_held(store: TraceStore) -> None:
    def responder(request: ChatRequest) -> Any:
        return ToolCalls([Call("final_answer", {"answer": "# Report\n\nDone.", "findings": []})])

    with ScriptedLLM(responder, models=["local-model"]) as llm:
        config = EngineConfig(base_url=llm.base_url, model="local-model", retry=RECORDED, max_cost=1.0)

        async def collect() -> list[Any]:
            return [e async for e in stream_engine_async("go", config, store=store)]

        report = asyncio.run(collect())[-1].report
    assert report is not None
    assert any(
        "no price known for model 'local-model'" in n and "--max-cost cannot be held" in n
        for n in report.notes
    )


def test_the_time_budget_stops_a_slow_call_and_the_report_says_so(store: TraceStore) -> None:
    def responder(request: ChatRequest) -> Any:
        return Delay(30, then=Text("too late"))

    with ScriptedLLM(responder, strict=False) as llm:
        report = run(llm, store, timeout=3)
    assert report.budgets is not None and report.budgets.ended_by == "seconds"
    seconds = next(b for b in report.budgets.limits if b.budget == "seconds")
    assert seconds.limit == 3 and seconds.used < 30
    assert any("time budget" in line for line in report.budgets.cut)
