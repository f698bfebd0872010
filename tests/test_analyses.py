"""Recorded analyses and follow-ups: the detectors and the engine record their runs (question, store, models,
budgets, event log, report, how they ended); `ask` continues the root agent's conversation over HTTP through
the real `openai` client against the scripted server, and appends the answer to the run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from scripted_llm import Call, ChatRequest, Hang, HTTPError, ScriptedLLM, Text, ToolCalls

from halo_rlm.analyses import analyze_with_detectors, ask, stream_recorded
from halo_rlm.engine import AgentOutputItem, EngineConfig, EngineError
from halo_rlm.llm import LLMError
from halo_rlm.runs import Run, RunRegistry
from halo_rlm.simulate import simulate
from halo_rlm.store import StoreError, TraceStore
from halo_rlm.store.duckdb_store import DuckDBStore
from halo_rlm.utils import RetryPolicy

QUESTION = "Which of these failures hit the SupportAgent?"


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("analyses")
    truth = simulate(folder / "t.jsonl", traces=150, seed=5)
    with TraceStore.open(folder / "s.duckdb") as store:
        store.ingest([str(truth.traces_path)])
    return folder / "s.duckdb"


def analyst(request: ChatRequest) -> Any:
    """The root agent: counts traces, then answers; asked a follow-up, answers that."""
    # (HALO's budget note ends the last message, so the question is the start of it)
    if any((m.get("content") or "").startswith(QUESTION) for m in request.messages):
        return ToolCalls(
            [Call("final_answer", {"answer": "Only the refusals did: 7 traces.", "findings": []})]
        )
    if not request.tool_results:
        return ToolCalls([Call("count_traces", {})], content="Counting first.")
    return ToolCalls([Call("final_answer", {"answer": "# Report\n\nRefunds fail.", "findings": []})])


def config(llm: ScriptedLLM, **overrides: Any) -> EngineConfig:
    return EngineConfig(
        base_url=llm.base_url,
        api_key="sk-test-" + "k3y" * 10,
        model="scripted-model",
        retry=RetryPolicy(sleep=lambda seconds: None),
        **overrides,
    )


def recorded(
    prompt: str, cfg: EngineConfig, store_path: Path, registry: RunRegistry
) -> tuple[Run, list[Any]]:
    async def go() -> tuple[Run, list[Any]]:
        stream = stream_recorded(prompt, cfg, store_path, inputs=["t.jsonl"], registry=registry, source="cli")
        run = await anext(stream)
        return run, [event async for event in stream]

    return asyncio.run(go())


def test_a_detector_analysis_is_recorded(store_path: Path, tmp_path: Path) -> None:
    run, report = analyze_with_detectors(
        store_path, inputs=["t.jsonl"], registry=RunRegistry(tmp_path / "runs")
    )
    assert run.record.status == "completed" and run.record.kind == "analysis"
    assert run.record.reason == f"detectors: {len(report.findings)} findings"
    assert json.loads(run.file("report.json").read_text())["findings"]
    assert run.record.store == str(store_path) and run.record.budgets["min_traces"] == 2


def test_an_llm_analysis_is_recorded_and_followed_up(store_path: Path, tmp_path: Path) -> None:
    registry = RunRegistry(tmp_path / "runs")
    with ScriptedLLM(analyst) as llm:
        cfg = config(llm, max_turns=5)
        run, events = recorded("Why do refunds fail?", cfg, store_path, registry)
        assert run.record.status == "completed" and run.record.reason == "final answer"
        assert run.record.models == {
            "root": "scripted-model",
            "synthesis": "scripted-model",
            "compaction": "scripted-model",
        }
        assert run.record.budgets["max_turns"] == 5 and run.record.usage["tokens"] > 0
        logged = list(run.events())
        assert [e["item"]["name"] for e in logged if e["item"].get("name")] == [
            "count_traces",
            "final_answer",
        ]
        assert "Refunds fail." in run.file("report.md").read_text()
        assert "k3y" not in "".join(p.read_text() for p in run.folder.iterdir() if p.is_file())

        async def follow_up() -> list[Any]:
            return [event async for event in ask(registry.get(run.id[:4]), QUESTION, cfg)]

        events = asyncio.run(follow_up())
        followed = llm.chat_requests[-1]
    final = [e for e in events if isinstance(e, AgentOutputItem) and e.final]
    assert final and final[0].report.answer == "Only the refusals did: 7 traces."
    # the root agent saw its whole earlier conversation: the system prompt, its tool call and result, its answer
    roles = [m["role"] for m in followed.messages]
    assert roles[0] == "system" and roles.count("tool") == 2
    assert followed.messages[-1]["content"].startswith(QUESTION + "\n\n(HALO: this is turn 1 of 5")
    again = registry.get(run.id)
    (turn,) = again.record.turns
    assert (turn.question, turn.answer, turn.status) == (
        QUESTION,
        "Only the refusals did: 7 traces.",
        "completed",
    )
    report = again.file("report.md").read_text()
    assert (
        report.index("Refunds fail.")
        < report.index(f"## Follow-up: {QUESTION}")
        < report.index("> Only the refusals did: 7 traces.")
    )


def test_failed_and_unfinished_runs_say_why(store_path: Path, tmp_path: Path) -> None:
    registry = RunRegistry(tmp_path / "runs")
    with ScriptedLLM(HTTPError.invalid_api_key()) as llm, pytest.raises(LLMError):
        recorded("Why?", config(llm), store_path, registry)
    (failed,) = registry.runs()
    assert failed.record.status == "failed" and "401" in failed.record.reason
    with ScriptedLLM(Text("I think it is the refunds.")) as llm:  # never calls final_answer
        run, _ = recorded("Why?", config(llm, max_turns=2), store_path, registry)
    assert run.record.status == "incomplete" and "turn limit" in run.record.reason
    with pytest.raises(EngineError, match="no saved conversation"):
        asyncio.run(anext(ask(failed, "and?", EngineConfig(model="m"))))


def test_a_run_stopped_while_its_store_fails_to_close_is_interrupted_not_failed(
    store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The web app stops its runs by cancelling them; an error while they unwind (here the store's
    # close, as when a cancelled query had not yet stopped) is not the run's failure.
    def failing_close(self: DuckDBStore) -> None:
        real_close(self)
        raise StoreError(f"{self.path}: cannot close the store, a query on it did not stop")

    real_close = DuckDBStore.close
    monkeypatch.setattr(DuckDBStore, "close", failing_close)
    registry = RunRegistry(tmp_path / "runs")
    with ScriptedLLM(Hang(), strict=False) as llm:

        async def go() -> Run:
            stream = stream_recorded("Why?", config(llm), store_path, registry=registry, source="web")
            run = await anext(stream)

            async def consume() -> None:
                async for _ in stream:
                    pass

            task = asyncio.ensure_future(consume())
            while not llm.chat_requests:
                await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return run

        run = asyncio.run(go())
    recorded_run = registry.get(run.id)
    assert recorded_run.record.status == "interrupted", recorded_run.record.reason
