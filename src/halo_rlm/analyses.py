"""Analyses that are recorded: the entry points the CLI, the web app and Python callers share, so every
analysis lands in the run registry (`runs.py`) with its question, inputs, models, budgets, event log,
report and how it ended, and can be followed up.

    run, report = analyze_with_detectors("traces.duckdb", inputs=["traces.jsonl"])
    async for event in stream_recorded("Why do refunds fail?", config, "traces.duckdb"):
        ...
    async for event in ask(run, "Which of these started after Tuesday?", config):
        ...

A follow-up (`ask`) continues the root agent's conversation, saved when the run ended, over the same
store; the engine compacts it when it no longer fits the context. The answer is added to the run as a
turn and appended to its report.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from halo_rlm import render
from halo_rlm.detect import Thresholds, analyze
from halo_rlm.report import Report
from halo_rlm.runs import Run, RunRegistry, Turn, now
from halo_rlm.store import StoreError, TraceStore, paths
from halo_rlm.utils import first_line
from halo_rlm.verify import verify

if TYPE_CHECKING:  # the engine (and the openai client) load only for analyses with a model
    from halo_rlm.engine import AgentOutputItem, EngineConfig

__all__ = ["analyze_with_detectors", "ask", "budgets_of", "models_of", "stream_recorded"]

CONVERSATION = "conversation.json"


def models_of(config: EngineConfig) -> dict[str, str]:
    return {
        "root": config.model_for("agent").name,
        "synthesis": config.model_for("synthesis").name,
        "compaction": config.model_for("compaction").name,
    }


def budgets_of(config: EngineConfig) -> dict[str, Any]:
    wanted = ("max_turns", "max_depth", "max_parallel", "max_cost", "max_tokens", "timeout")
    return {name: getattr(config, name) for name in wanted if getattr(config, name, None) is not None}


def analyze_with_detectors(
    store_path: str | Path,
    *,
    inputs: Sequence[str] = (),
    thresholds: Thresholds | None = None,
    registry: RunRegistry | None = None,
    source: str = "python",
    prompt: str | None = None,
) -> tuple[Run, Report]:
    """Run the detectors over a store, verify and record the report; returns the run and the report."""
    registry = registry or RunRegistry.beside(store_path)
    thresholds = thresholds or Thresholds()
    run = registry.create(
        "analysis",
        source=source,
        prompt=prompt,
        inputs=list(inputs),
        store=str(store_path),
        budgets={"min_traces": thresholds.min_traces, "min_share": thresholds.min_share},
    )
    try:
        with TraceStore.open(store_path, read_only=True) as store:
            report = analyze(store, thresholds=thresholds, inputs=list(inputs))
            verify(report, store)
    except StoreError as exc:
        run.finish("failed", str(exc))
        raise
    _keep_report(run, report)
    run.finish("completed", f"detectors: {len(report.findings)} findings")
    return run, report


async def stream_recorded(
    prompt: str,
    config: EngineConfig,
    store_path: str | Path,
    *,
    inputs: Sequence[str] = (),
    registry: RunRegistry | None = None,
    source: str = "python",
    run: Run | None = None,
) -> AsyncIterator[Any]:
    """`stream_engine_async` over a store, recorded: every completed step goes to the run's event log
    (streamed text is not logged, the messages it makes are), the report to the run folder, and the run
    ends completed, incomplete (no final answer), failed or interrupted, with the reason. `run`: one
    created beforehand (the web app shows it while it prepares the traces), else a new one."""
    fields = {
        "prompt": prompt,
        "inputs": list(inputs),
        "store": str(store_path),
        "models": models_of(config),
        "budgets": budgets_of(config),
    }
    if run is None:
        run = (registry or RunRegistry.beside(store_path)).create("analysis", source=source, **fields)
    else:
        run.update(**fields)
    yield run
    async for event in _recorded(run, prompt, config, store_path):
        yield event


async def ask(run: Run, question: str, config: EngineConfig) -> AsyncIterator[Any]:
    """Continue `run`'s root agent with a follow-up question over the same store; yields the engine's
    events. The answer becomes a turn of the run and a section of its report.md."""
    from halo_rlm.engine import EngineError

    path = run.file(CONVERSATION)
    if path is None or not path.exists():
        raise EngineError(
            f"run {run.id} has no saved conversation to continue (only LLM analyses that "
            f"finished have one); start a new analysis instead"
        )
    if run.record.store is None or not (paths.is_url(run.record.store) or Path(run.record.store).exists()):
        raise EngineError(f"run {run.id}: its store {run.record.store or '(none)'} is not here any more")
    conversation = orjson.loads(path.read_bytes())
    turn = Turn(question=question, at=now())
    run.record.turns.append(turn)
    run.update(turns=run.record.turns)
    messages = [*conversation, {"role": "user", "content": question}]
    # the follow-up's report is the run's report.md with a section added, not a new report folder
    async for event in _recorded(
        run, messages, config.model_copy(update={"out_dir": None}), run.record.store, turn=turn
    ):
        yield event


async def _recorded(
    run: Run, messages: Any, config: EngineConfig, store_path: str | Path, turn: Turn | None = None
) -> AsyncIterator[Any]:
    from halo_rlm.engine import AgentOutputItem, AgentTextDelta, EngineError, stream_engine_async
    from halo_rlm.llm import LLMError

    final: AgentOutputItem | None = None
    status, reason = "interrupted", "stopped before it finished"
    try:
        with TraceStore.open(store_path, read_only=True) as store:
            async for event in stream_engine_async(messages, config, store=store):
                if not isinstance(event, AgentTextDelta):
                    run.log(
                        event.model_dump(mode="json", exclude_none=True, exclude={"report", "conversation"})
                    )
                if isinstance(event, AgentOutputItem) and event.final:
                    final = event
                yield event
        if final is None or final.report is None:
            status, reason = "incomplete", "the engine ended without a report"
        else:
            status, reason = _keep_final(run, final, turn)
    except Exception as exc:
        if _being_cancelled():
            # Stopping the run (a cancel, the app shutting down) failed to clean something up, such as
            # closing the store: the run was stopped, not failed, and its caller hears the cancel.
            logging.getLogger(__name__).warning("run %s: while stopping: %s", run.id, first_line(exc))
            raise asyncio.CancelledError from exc
        if isinstance(exc, (EngineError, LLMError, StoreError)):
            status, reason = "failed", "\n".join([str(exc), *getattr(exc, "__notes__", ())])
        else:  # a crash
            status, reason = "failed", f"{type(exc).__name__}: {exc}"
        _keep_partial(run, final, turn)  # the engine still made its report of what was verified
        raise
    finally:
        if turn is None:
            run.finish(status, reason, usage=_usage(final))  # type: ignore[arg-type]
        else:
            turn.status, turn.reason = status, reason  # type: ignore[assignment]
            run.update(turns=run.record.turns)


def _being_cancelled() -> bool:
    """Whether the running task has been asked to stop (a cancel, the app shutting down) and is
    unwinding: an error then comes from the cleanup, not from the run. Timeouts inside the run cancel
    tasks of their own, not this one."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _keep_partial(run: Run, final: AgentOutputItem | None, turn: Turn | None) -> None:
    """The report of a run that failed (the engine makes one with what it verified before it stopped)."""
    if turn is None and final is not None and final.report is not None:
        _keep_report(run, final.report)


def _keep_final(run: Run, final: AgentOutputItem, turn: Turn | None) -> tuple[str, str]:
    report = final.report
    assert report is not None
    if final.conversation:
        (run.folder / CONVERSATION).write_bytes(orjson.dumps(final.conversation))
        run.add_file(CONVERSATION, run.folder / CONVERSATION)
    outcome = report.outcome
    status, reason = ("completed", "final answer") if outcome.complete else ("incomplete", outcome.reason)
    if turn is None:
        _keep_report(run, report)
        return status, reason
    turn.answer = report.answer or ""
    markdown = run.file("report.md")
    if markdown is not None and markdown.exists():
        with open(markdown, "a", encoding="utf-8") as out:
            out.write(render.follow_up_markdown(turn.question, turn.answer))
    return status, reason


def _keep_report(run: Run, report: Report) -> None:
    for name, path in render.write(report, run.folder).items():
        run.add_file(f"report.{'md' if name == 'markdown' else name}", path)


def _usage(final: AgentOutputItem | None) -> dict[str, Any]:
    if final is None or final.report is None or final.report.usage is None:
        return {}
    usage = final.report.usage
    return {"tokens": usage.tokens, "cost_usd": round(usage.cost_usd or 0.0, 6), "seconds": usage.seconds}
