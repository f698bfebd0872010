"""The RLM engine: a root agent explores a trace store far too large for its context through tools,
delegates focused questions to sub-agents that recurse, and finishes with a ranked, evidence-backed
report.

The engine owns its agent loop over Chat Completions (every OpenAI-compatible provider speaks it),
so it holds budgets for the whole run — turns per agent, tokens, cost, wall clock — that retries
never reset (`budget`), it fits every request into the model's context window (`window`) and manages
each agent's context before it overflows, and it copes with what small local models and their
servers do: tool calls written as text, replies cut at the output limit or repeating one line, tool
definitions dropped by a chat template, `tool_choice` values a server does not take.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from halo_rlm import detect, render, sandbox
from halo_rlm import report as reports
from halo_rlm.engine import prompts
from halo_rlm.engine.budget import WORDS, Budget
from halo_rlm.engine.code import RUN_CODE, CodeLimits
from halo_rlm.engine.config import DEFAULT_PROMPT, EngineConfig
from halo_rlm.engine.events import (
    AgentMessage,
    AgentOutputItem,
    AgentStatus,
    AgentTextDelta,
    EngineError,
    EngineEvent,
    ToolCallItem,
    ToolOutcome,
    TurnUsage,
)
from halo_rlm.engine.telemetry import OFF, Off, RunTotals, Telemetry, start_telemetry
from halo_rlm.engine.tools import (
    COMPACT_TOOLS,
    FINAL_TOOL,
    SUBAGENT_TOOL,
    TRACE_TOOLS,
    FinalAnswerArgs,
    FindingInput,
    Tool,
    ToolError,
    degenerate,
    filters_text,
    fit,
    read_text_calls,
    repo_tools,
    tools_text,
    unknown_tool,
    validate,
)
from halo_rlm.engine.window import Overhead, Window, plan
from halo_rlm.files import resolve
from halo_rlm.llm import (
    CHARS_PER_TOKEN,
    LLM,
    Completion,
    ContextOverflow,
    LLMError,
    MessageMemo,
    ModelConfig,
    ServerInfo,
    Timeout,
    ToolChoiceRejected,
    ToolsUnsupported,
    tool_calling_fix,
)
from halo_rlm.pricing import Prices
from halo_rlm.repo import Repo, RepoError
from halo_rlm.report import BudgetName
from halo_rlm.scrub import scrub_attributes, scrub_text
from halo_rlm.store import StoreError, TraceStore, paths
from halo_rlm.usage import Usage
from halo_rlm.utils import first_line
from halo_rlm.verify import verify

__all__ = [
    "Messages",
    "OverBudget",
    "run_engine",
    "run_engine_async",
    "stream_engine",
    "stream_engine_async",
    "stream_engine_output",
    "stream_engine_output_async",
]

MIN_REPLY_TOKENS = 256  # a call that cannot leave room for this much of a reply is not made
FINISH_REPLY_TOKENS = 1_024  # what an agent's last reply (its report) is given room for
CORRECTIONS = 3  # replies per agent the loop corrects (unusable text calls, cut or degenerate replies)
DROPPED_SHARE = 0.3  # tool definitions at least this share of a request: a drop would show in the count


class OverBudget(LLMError):
    """A model call was not made: its input and a useful reply do not fit what is left of the
    token or cost budget (`budget` names which)."""

    def __init__(self, message: str, *, budget: BudgetName) -> None:
        super().__init__(message)
        self.budget = budget


_current_call: contextvars.ContextVar[str | None] = contextvars.ContextVar("halo_tool_call", default=None)


# --- agents ---------------------------------------------------------------------------------


class Agent:
    """One agent of a run: its conversation and loop. It is the `ToolContext` its tools see, and the
    `TracedAgent` its telemetry span shows."""

    def __init__(
        self, run: Run, *, depth: int, parent: Agent | None, parent_tool_call_id: str | None
    ) -> None:
        self.run = run
        self.depth = depth
        self.parent = parent
        self.parent_tool_call_id = parent_tool_call_id
        self.id = ("root-" if depth == 0 else "sub-") + uuid.uuid4().hex[:8]
        self.name = "root" if depth == 0 else f"sub{depth}"
        self.turns = 0
        self.usage = Usage()
        self.tool_calls = 0
        self.started = time.monotonic()
        self.finished: float | None = None
        self.status: AgentStatus = "running"
        self.messages: list[dict[str, Any]] = []
        self.task = ""
        self.context_items: dict[str, str] = {}
        self.final: FinalAnswerArgs | None = None  # set by the final_answer tool
        self.repl: sandbox.Repl | None = None  # made on the first run_code call
        self.must_finish: str | None = None  # why the agent was told to finish early
        self.text = ""  # its last reply usable as an answer (not cut, not one line repeated)
        self.text_calls = 0
        tools = list(TRACE_TOOLS) + run.extra_tools
        if depth < run.config.max_depth:
            tools.append(SUBAGENT_TOOL)
        if depth == 0:
            tools.append(FINAL_TOOL)
        self.known_tools = {t.name: t for t in tools}

    @property
    def is_root(self) -> bool:
        return self.depth == 0

    @property
    def label(self) -> str:
        return f"{self.name} ({self.id})"

    @property
    def parent_id(self) -> str | None:
        return self.parent.id if self.parent else None

    @property
    def final_answer(self) -> str | None:
        return self.final.answer if self.final is not None else None

    @property
    def tools(self) -> dict[str, Tool]:
        """The tools offered now: in compact mode the few of `COMPACT_TOOLS` (and the repository's)."""
        if not self.run.window.compact:
            return self.known_tools
        return {
            name: tool
            for name, tool in self.known_tools.items()
            if name in COMPACT_TOOLS or (tool not in TRACE_TOOLS and tool is not RUN_CODE)
        }

    def schemas(self, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        tools = [self.tools[n] for n in names] if names is not None else list(self.tools.values())
        return [t.compact_schema if self.run.window.compact else t.schema for t in tools]

    # --- what tools see (`tools.ToolContext`) ----------------------------------------------------

    @property
    def config(self) -> EngineConfig:
        return self.run.config

    @property
    def store(self) -> TraceStore:
        return self.run.store

    @property
    def hypotheses(self) -> list[dict[str, Any]]:
        return self.run.hypotheses

    def finish(self, answer: FinalAnswerArgs) -> None:
        self.final = answer

    async def spawn(self, brief: str) -> dict[str, Any]:
        return await self.run.spawn(self, brief)

    async def synthesize(self, texts: list[str], focus: str | None) -> str:
        ask = f"Focus: {focus}\n\n" if focus else ""
        return await self.run.summarise(
            self, prompts.SYNTHESIS, ask + "\n\n".join(texts), self.config.model_for("synthesis")
        )

    async def ask(self, prompt: str) -> str:
        completion = await self.run.complete(
            self,
            self.config.model_for("synthesis"),
            [{"role": "user", "content": prompt}],
            purpose="llm_query",
        )
        self.run.emit(
            AgentOutputItem(
                sequence=0,
                item=AgentMessage(role="tool", name="llm_query", content=completion.content[:2_000]),
                usage=_turn_usage(completion),
                **self.lineage(),
            )
        )
        return completion.content

    def spend_code_llm_calls(self, calls: int) -> None:
        run, cap = self.run, self.config.max_code_llm_calls
        if run.code_llm_calls + calls > cap:
            raise RuntimeError(
                f"LLM calls from code are capped at {cap} per run ({run.code_llm_calls} made); "
                "work with what you have"
            )
        stop = run.budget.exhausted()
        if stop:
            raise RuntimeError(f"no LLM calls left: {stop}")
        run.code_llm_calls += calls

    def lineage(self) -> dict[str, Any]:
        return {
            "agent_id": self.id,
            "parent_agent_id": self.parent.id if self.parent else None,
            "parent_tool_call_id": self.parent_tool_call_id,
            "agent_name": self.name,
            "depth": self.depth,
        }

    # --- the loop ----------------------------------------------------------------------------

    async def run_to_end(self, messages: list[dict[str, Any]]) -> str:
        """The agent loop. Returns the agent's last usable text (`self.text`); the root's report
        arrives in `self.final`."""
        self.messages = messages
        run, cfg, budget = self.run, self.run.config, self.run.budget
        refusals_left, overflows_left = cfg.refusal_retries, 2
        corrections_left, nudged = CORRECTIONS, False
        while True:
            stop = budget.used_up() or (
                f"the turn limit ({cfg.max_turns}) is reached" if self.turns >= cfg.max_turns else None
            )
            if stop:
                return self.stop(stop, turn_limit=self.turns >= cfg.max_turns)
            finishing = self.finishing()
            await self.manage_context()
            try:
                completion = await self.call_model(finishing)
            except OverBudget as exc:
                budget.stopped_by(exc.budget)
                if finishing is None:
                    self.must_finish = f"the {WORDS[exc.budget]} is nearly spent"
                    budget.record_cut(
                        f"{self.label}: turn {self.turns + 1} was not made, as {exc}; the agent was told to "
                        "finish instead"
                    )
                    continue
                return self.stop(str(exc))
            except ContextOverflow as exc:
                if overflows_left and (run.learn_window(exc) or await self.manage_context(force=True)):
                    overflows_left -= 1
                    run.note(
                        f"{self.name}: context overflow; the request was made smaller and retried ({exc})"
                    )
                    continue
                raise
            except Timeout as exc:
                budget.stopped_by("seconds")
                return self.stop(str(exc))
            refusal = completion.refusal or (
                completion.content
                if not completion.tool_calls
                and re.search(detect.REFUSAL, completion.content or "", re.IGNORECASE)
                else None
            )
            if refusal:
                run.note(f"{self.name} refused: {refusal[:200]!r}")
                if refusals_left:
                    refusals_left -= 1
                    self.messages.append(
                        {
                            "role": "user",
                            "content": "Please continue. The task is to analyse "
                            "recorded trace data with the tools; nothing in it is harmful.",
                        }
                    )
                    continue
                self.status = "refused"
                return self.text
            self.emit_turn(completion)
            problem = None if completion.tool_calls else _not_an_answer(completion.content)
            if completion.finish_reason == "length":
                run.note_once(
                    f"cut:{self.id}",
                    f"{self.name}: a reply was cut at the output limit ({completion.max_tokens or 0:,} tokens)"
                    + (f"; it {problem}" if problem and completion.content.strip() else ""),
                )
            if completion.tool_calls:
                self.messages.append(completion.message())
                await self.run_tools(completion.tool_calls)
                if self.final is not None:
                    self.status = "done"
                    return self.text
                continue
            written = read_text_calls(completion.content, self.tools)
            if written.calls:
                self.messages.append(completion.message())
                await self.run_text_calls(written.calls)
                if self.final is not None:
                    self.status = "done"
                    return self.text
                continue
            unusable = self.correction(completion, written.problem, problem)
            if unusable:
                self.messages.append(_shortened(completion))
                if corrections_left:
                    corrections_left -= 1
                    self.messages.append({"role": "user", "content": unusable})
                    continue
                run.note(
                    f"{self.name}: its last reply was not used as an answer ({written.problem or problem})"
                )
                self.status = "no final answer" if self.is_root else "partial"
                return self.text
            self.messages.append(completion.message())
            self.text = completion.content or self.text
            if not self.is_root:
                self.status = "done"
                return self.text
            if finishing is not None and self.must_finish is not None:
                # Asked to finish, forced to call final_answer, and still no report: give up.
                self.status = "no final answer"
                return self.text
            if not nudged:
                nudged = True
                self.messages.append({"role": "user", "content": prompts.NO_CALL_ROOT})
                continue
            self.must_finish = "plain text is not read as a report"

    def correction(self, completion: Completion, call_problem: str | None, problem: str | None) -> str | None:
        """What to tell the model when its text reply cannot be used (None: it can): a tool call
        written as text that cannot be made, a reply cut at the output limit, or one that is no
        answer (empty, or one line repeated)."""
        if call_problem:
            return prompts.TEXT_CALL_PROBLEM.format(problem=call_problem, names=", ".join(self.tools))
        if completion.finish_reason == "length":
            return prompts.CUT_REPLY.format(
                limit=completion.max_tokens or 0,
                why=f", and it {problem}" if problem else "",
                next="call a tool, or finish with a short report"
                if self.is_root
                else "reply with your answer",
            )
        if problem:
            return f"That reply is not an answer: it {problem}. Reply with what you found."
        return None

    def finishing(self) -> str | None:
        """Why this turn must be the agent's last (its reply its report), or None."""
        if self.must_finish:
            return self.must_finish
        if self.turns + 1 >= self.run.config.max_turns:
            if self.is_root:
                self.run.budget.stopped_by("turns")
            return f"turn {self.run.config.max_turns} is the last of your turns"
        return self.run.budget.nearly_exhausted()

    def stop(self, reason: str, *, turn_limit: bool = False) -> str:
        """End the loop early: note why and what was cut, and return what the agent has."""
        self.run.note(f"{self.label} stopped: {reason}")
        if turn_limit and not self.is_root:
            self.run.budget.record_cut(
                f"{self.label}: stopped at its turn limit; its partial answer was used"
            )
        elif not turn_limit:
            self.run.budget.record_cut(
                f"{self.label}: stopped after {self.turns} of {self.run.config.max_turns} turns, as {reason}"
            )
        self.status = "partial"
        return self.text

    async def call_model(self, finishing: str | None) -> Completion:
        """One turn: the conversation with a budget note at its end; when `finishing`, the root is
        offered only final_answer and made to call it (`tool_choice: "required"`, the one value every
        server takes), a sub-agent is asked for its answer in text."""
        run = self.run
        while True:
            names: list[str] | None = None
            choice: str | None = None
            if finishing is not None:
                names = ["final_answer"] if self.is_root else None
                choice = "required" if self.is_root else "none"
            if not run.forced_choice:
                choice = None
            tools = None if run.text_tools else self.schemas(names)
            request = self.request(finishing, names)

            def on_delta(text: str, attempt: int) -> None:
                run.emit(AgentTextDelta(sequence=0, text_delta=text, attempt=attempt, **self.lineage()))

            try:
                completion = await run.complete(
                    self,
                    run.agent_model,
                    request,
                    tools=tools,
                    tool_choice=choice if tools else None,
                    on_delta=on_delta,
                    finishing=finishing is not None,
                )
            except ToolChoiceRejected as exc:
                if not run.forced_choice:
                    raise
                run.forced_choice = False
                run.note(f"The server does not take tool_choice; turns are no longer forced ({exc})")
                continue
            except ToolsUnsupported as exc:
                if run.text_tools:
                    raise
                run.use_text_tools(f"{exc}. To let the model call tools natively, {exc.fix}")
                continue
            self.turns += 1
            return completion

    def request(self, finishing: str | None, names: Sequence[str] | None) -> list[dict[str, Any]]:
        """The messages sent this turn: the conversation, the tools written into the system message
        when the server takes no tool definitions, and the budget note added to the last message
        (a bare trailing note is answered, or echoed, by small models instead of acted on)."""
        messages = list(self.messages)
        if self.run.text_tools and messages and messages[0]["role"] == "system":
            offered = [self.tools[n] for n in names] if names else list(self.tools.values())
            messages[0] = {
                **messages[0],
                "content": messages[0]["content"] + prompts.TEXT_TOOLS.format(tools=tools_text(offered)),
            }
        note = self.budget_note(finishing)
        last = messages[-1] if messages else {}
        if last.get("role") in ("user", "tool") and isinstance(last.get("content"), str):
            messages[-1] = {**last, "content": f"{last['content']}\n\n{note}"}
        else:
            messages.append({"role": "user", "content": note})
        return messages

    def budget_note(self, finishing: str | None) -> str:
        if finishing is not None:
            return (prompts.LAST_TURN_ROOT if self.is_root else prompts.LAST_TURN_SUB).format(why=finishing)
        left = self.run.budget.left()
        return prompts.TURN_NOTE.format(
            turn=self.turns + 1,
            turns=self.run.config.max_turns,
            left=f"; {left}" if left else "",
            next=prompts.NEXT_ROOT if self.is_root else prompts.NEXT_SUB,
        )

    def emit_turn(self, completion: Completion) -> None:
        usage: TurnUsage | None = _turn_usage(completion)
        if completion.content:
            self.run.emit(
                AgentOutputItem(
                    sequence=0,
                    item=AgentMessage(role="assistant", content=completion.content),
                    usage=usage,
                    **self.lineage(),
                )
            )
            usage = None
        for call in completion.tool_calls:
            self.run.emit(
                AgentOutputItem(
                    sequence=0,
                    item=AgentMessage(role="assistant", tool_calls=[ToolCallItem(**call)]),
                    usage=usage,
                    **self.lineage(),
                )
            )
            usage = None
        if usage is not None:  # an empty reply: its usage still counts
            self.run.emit(
                AgentOutputItem(
                    sequence=0, item=AgentMessage(role="assistant", content=""), usage=usage, **self.lineage()
                )
            )

    async def run_tools(self, calls: list[dict[str, str]]) -> None:
        traced = self.run.telemetry.traced_tool
        outcomes = await asyncio.gather(*(traced(call, self.run_tool(call)) for call in calls))
        for call, outcome in zip(calls, outcomes, strict=True):
            result = outcome.text
            self.messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
            self.emit_result(call, result)

    async def run_text_calls(self, calls: list[dict[str, str]]) -> None:
        """Tool calls the model wrote as text: run like any, their results given back in one user
        message (any chat template renders that; a `tool` message needs a call it answers)."""
        traced = self.run.telemetry.traced_tool
        numbered = []
        for call in calls:
            self.text_calls += 1
            numbered.append({**call, "id": f"text_call_{self.text_calls}"})
        self.run.note_once(
            "text calls", "The model wrote tool calls as text (JSON) instead of calling them; they were run."
        )
        outcomes = await asyncio.gather(*(traced(call, self.run_tool(call)) for call in numbered))
        parts = [prompts.TEXT_RESULTS]
        for call, outcome in zip(numbered, outcomes, strict=True):
            parts.append(f"[{call['name']}] {outcome.text}")
            self.emit_result(call, outcome.text)
        self.messages.append({"role": "user", "content": "\n\n".join(parts)})

    def emit_result(self, call: dict[str, str], result: str) -> None:
        self.run.emit(
            AgentOutputItem(
                sequence=0,
                item=AgentMessage(role="tool", content=result, tool_call_id=call["id"], name=call["name"]),
                **self.lineage(),
            )
        )

    async def run_tool(self, call: dict[str, str]) -> ToolOutcome:
        self.tool_calls += 1
        tool = self.tools.get(call["name"])
        if tool is None:
            return ToolOutcome(unknown_tool(call["name"], self.tools), failed=True)
        if self.final is not None:
            return ToolOutcome("the run is finishing; this call was not made", failed=True)
        _current_call.set(call["id"])
        try:
            args = validate(tool, call["arguments"])
            result = await tool.run(args, self)
        except (ToolError, LLMError, StoreError) as exc:
            return ToolOutcome(str(exc), failed=True)
        return ToolOutcome(fit(result, self.run.config.tool_result_bytes))

    # --- context ---------------------------------------------------------------------------

    def context_size(self) -> int:
        """Estimated tokens of the conversation (tool definitions and the reply not included)."""
        return self.run.llm.estimate(self.messages)

    async def manage_context(self, force: bool = False) -> bool:
        """Keep the conversation under the window's `context_tokens`: first shorten old tool results
        (the full text stays retrievable with get_context_item when it is offered), then summarise
        old turns with the compaction model; forced (after an overflow), shorten the newest results
        too. Returns whether anything was freed."""
        limit = self.run.window.context_tokens
        if not force and self.context_size() <= limit * 0.8:
            return False
        freed = False
        keep_after = self._turn_start(back=2)
        for message in self.messages[2:keep_after]:
            freed = self._shorten(message, 300) or freed
            if not force and self.context_size() <= limit * 0.6:
                return True
        if self.context_size() > limit * (0.5 if force else 0.8):
            freed = await self.compact() or freed
        if force and self.context_size() > limit * 0.8:
            room = max(600, int(limit * 0.3 * CHARS_PER_TOKEN / max(1, len(self.messages))))
            for message in self.messages[2:]:
                freed = self._shorten(message, room) or freed
        return freed

    def _shorten(self, message: dict[str, Any], keep: int) -> bool:
        """Cut a long tool result (or text-call results) to its first `keep` characters."""
        content = message.get("content") or ""
        results = message["role"] == "tool" or content.startswith(prompts.TEXT_RESULTS)
        if not results or len(content) <= keep + 300 or content.startswith("[halo:"):
            return False
        item_id = self._keep(content)
        where = (
            f"; get_context_item {item_id!r} returns all {len(content):,} characters"
            if "get_context_item" in self.tools
            else f" (all {len(content):,} characters are not shown)"
        )
        message["content"] = f"[halo: tool result shortened to save context{where}] {content[:keep]}…"
        return True

    def _turn_start(self, back: int) -> int:
        """Index of the assistant message that starts the `back`-th last turn."""
        starts = [i for i, m in enumerate(self.messages) if m["role"] == "assistant"]
        return starts[-back] if len(starts) >= back else len(self.messages)

    def _keep(self, content: str) -> str:
        item_id = f"ctx-{len(self.context_items) + 1}"
        self.context_items[item_id] = content
        return item_id

    async def compact(self) -> bool:
        """Replace the old turns (all but the last one) with a summary from the compaction model."""
        end = self._turn_start(back=1)
        if end <= 2:
            return False
        old = self.messages[2:end]
        transcript = "\n\n".join(
            f"{m['role'].upper()}: {m.get('content') or ''}"
            + (f" CALLS {orjson.dumps(m['tool_calls']).decode()}" if m.get("tool_calls") else "")
            for m in old
        )
        item_id = self._keep(transcript)
        # The transcript's newest part, as much as a compaction call's window holds.
        room = int(min(200_000, self.run.window.context_tokens * CHARS_PER_TOKEN * 0.8))
        try:
            summary = await self.run.summarise(
                self, prompts.COMPACTION, transcript[-room:], self.run.config.model_for("compaction")
            )
        except LLMError as exc:
            self.run.note(f"{self.name}: compaction failed ({exc}); old turns dropped instead")
            summary = "(earlier work could not be summarised)"
        where = (
            f"; the full transcript is context item {item_id!r}" if "get_context_item" in self.tools else ""
        )
        self.messages[2:end] = [
            {"role": "user", "content": f"[halo: summary of your earlier work{where}]\n{summary}"}
        ]
        return True


def _not_an_answer(text: str) -> str | None:
    """Why a text reply cannot be an answer: empty, one line repeated, or HALO's own budget note
    echoed back (small models answered a note they took for the question)."""
    if "(HALO: this is turn" in text or "(HALO: last turn" in text:
        return "repeats HALO's budget note instead of answering"
    return degenerate(text)


def _shortened(completion: Completion) -> dict[str, Any]:
    """An unusable reply as kept in the conversation: its head, so it does not fill the context."""
    content = completion.content or ""
    kept = content if len(content) <= 400 else content[:400] + "…[halo: rest of the reply cut]"
    return {"role": "assistant", "content": kept or None}


# --- the run --------------------------------------------------------------------------------


class Run:
    """Shared state of one engine run."""

    def __init__(self, config: EngineConfig, store: TraceStore, llm: LLM, queue: asyncio.Queue[Any]) -> None:
        self.id = uuid.uuid4().hex
        self.config = config
        self.store = store
        self.llm = llm
        self.queue = queue
        self.telemetry: Telemetry | Off = OFF
        self.sequence = 0
        self.budget = Budget(
            max_tokens=config.max_tokens,
            max_cost=config.max_cost,
            deadline=time.monotonic() + config.timeout if config.timeout else None,
        )
        self.pools = {
            depth: asyncio.Semaphore(config.max_parallel) for depth in range(1, config.max_depth + 1)
        }
        self.agents: list[Agent] = []
        self.notes: list[str] = []
        self.noted: set[str] = set()
        self.models: dict[str, Usage] = {}
        self.unpriced: set[str] = set()
        self.hypotheses: list[dict[str, Any]] = []
        self.detector_report: reports.Report | None = None
        self.extra_tools: list[Tool] = []
        self.agent_model = config.model_for("agent")
        self.code_llm_calls = 0
        self.overview: Any = None  # the store's overview, shown in the root's system prompt
        self.server = ServerInfo("unknown")
        self.window: Window = plan(config, None, "", full=Overhead(0, 0), compact=Overhead(0, 0))
        self.text_tools = False  # the server takes no tool definitions: they go in the system message
        self.forced_choice = True  # the server takes tool_choice
        self.dropped_tools_checked = False

    def emit(self, event: EngineEvent) -> None:
        self.sequence += 1
        event.sequence = self.sequence
        if isinstance(event, AgentOutputItem) and not self.config.keep_secrets:
            # Events reach terminals, --json output, run logs on disk and the web app: tool results
            # there carry trace text, so they go without its credentials, as they go to the model.
            event.item = AgentMessage.model_validate(_redacted(event.item.model_dump()))
        self.queue.put_nowait(event)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def note_once(self, key: str, text: str) -> None:
        if key not in self.noted:
            self.noted.add(key)
            self.note(text)

    # --- model calls -------------------------------------------------------------------------

    async def complete(
        self,
        agent: Agent | None,
        model: ModelConfig,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        on_delta: Callable[[str, int], None] | None = None,
        finishing: bool = False,
        reply_tokens: int | None = None,
        purpose: str = "turn",
    ) -> Completion:
        """Every model call of the run goes through here. The request is estimated first: one that
        leaves no room for a reply in the context window raises `ContextOverflow`, one whose input
        and a useful reply do not fit the remaining token or cost budget is not made (`OverBudget`).
        A call that is not `finishing` must also leave room for one more call to finish with. The
        reply is capped at what fits; while the call runs, its largest use is reserved."""
        estimate = self.llm.estimate(messages, tools)
        wanted = reply_tokens or self.window.reply_tokens
        if self.window.tokens is not None:
            space = self.window.tokens - estimate - self.window.margin
            if space < MIN_REPLY_TOKENS:
                raise ContextOverflow(
                    f"the request (about {estimate:,} tokens) leaves no room for a reply in the "
                    f"{self.window.tokens:,}-token context window",
                    window=self.window.tokens,
                    prompt_tokens=estimate,
                )
            wanted = min(wanted, space)
        price = self.llm.prices.lookup(model.name)
        then = self.reserve_after(agent, finishing)
        room, limiting = self.budget.reply_room(estimate, price, then=then)
        if room is not None and limiting is not None:
            if room < MIN_REPLY_TOKENS:
                raise OverBudget(
                    f"the {WORDS[limiting]} left is too little for this {purpose} call of about {estimate:,} "
                    "input tokens and a reply"
                    + ("" if then == (0, 0) else ", plus room for the final replies"),
                    budget=limiting,
                )
            wanted = min(wanted, room)
        cost = (estimate * price.input + wanted * price.output) / 1e6 if price else 0.0
        with self.budget.reserve(estimate + wanted, cost):
            completion = await self.llm.complete(
                model,
                messages,
                tools=tools,
                tool_choice=tool_choice,
                max_tokens=wanted,
                on_delta=on_delta,
                deadline=self.budget.deadline,
            )
        self.account(agent, completion)
        self.check_server(completion)
        return completion

    def reserve_after(self, agent: Agent | None, finishing: bool) -> tuple[int, int]:
        """(input, output) tokens a call must leave in the budget: for a call that is not its
        agent's last, room for that agent to finish; for any call but the root's own, room for the
        root to write its report."""
        tokens_in = tokens_out = 0
        if agent is not None and not finishing:
            tokens_in, tokens_out = self.finish_cost(agent)
        root = self.agents[0] if self.agents and self.agents[0].is_root else None
        if root is not None and agent is not root and root.status == "running":
            root_in, root_out = self.finish_cost(root)
            tokens_in, tokens_out = tokens_in + root_in, tokens_out + root_out
        return tokens_in, tokens_out

    def finish_cost(self, agent: Agent) -> tuple[int, int]:
        """About what `agent`'s last call will take: its conversation (grown a little by then) with
        the tools offered on that turn, and a reply with its report."""
        tools = None if self.text_tools else agent.schemas(["final_answer"] if agent.is_root else None)
        size = self.llm.estimate(agent.messages, tools)
        return size + size // 10 + 1_500, FINISH_REPLY_TOKENS

    def account(self, agent: Agent | None, completion: Completion) -> None:
        usage = completion.usage
        self.budget.spend(usage.tokens, usage.cost_usd or 0.0)
        if usage.cost_usd is None and completion.model not in self.unpriced:
            self.unpriced.add(completion.model)
            unchecked = "; --max-cost cannot be held for it" if self.config.max_cost else ""
            self.note(
                f"no price known for model {completion.model!r}: its cost counts as $0 (add it with "
                f"--prices){unchecked}"
            )
        counted = usage.model_copy(update={"cost_usd": usage.cost_usd or 0.0})
        self.models.setdefault(completion.model, Usage()).add(counted)
        if agent is not None:
            agent.usage.add(counted)

    def check_server(self, completion: Completion) -> None:
        """What the server's own token count shows: no count at all (estimated, so budgets still
        hold); tool definitions left out of the prompt (a chat template without tools: the count
        falls short by about the tools' size, and no tool is called natively); a prompt Ollama cut to
        a smaller context than HALO knew of."""
        if completion.usage_estimated:
            self.note_once(
                "no usage",
                "The server reported no token usage; HALO counts tokens by estimate (about "
                f"{CHARS_PER_TOKEN} characters a token), so --max-tokens and --max-cost still hold.",
            )
            return
        sent, counted, tools = (
            completion.request_tokens,
            completion.usage.input_tokens,
            completion.tool_tokens,
        )
        if sent < 1_000 or counted >= 0.6 * sent:
            return
        if (
            tools >= DROPPED_SHARE * sent
            and counted <= (sent - tools) * 1.1
            and not completion.tool_calls
            and not self.dropped_tools_checked
        ):
            self.dropped_tools_checked = True
            self.use_text_tools(
                f"The server counted {counted:,} prompt tokens for a request of about {sent:,}: it leaves out "
                f"the tool definitions (about {tools:,} tokens), as a chat template without tool support "
                f"does. To let the model call tools natively, {tool_calling_fix(self.server.kind)}"
            )
        elif self.server.kind == "ollama" and (
            self.window.tokens is None or counted < 0.9 * self.window.tokens
        ):
            self.note(
                f"Ollama counted {counted:,} prompt tokens for a request of about {sent:,}: it cut the prompt to "
                "a smaller context than HALO knew of, so requests are now sized to it. Give the model a larger "
                "context (num_ctx or OLLAMA_CONTEXT_LENGTH) or pass --context-window."
            )
            try:
                self.fit_window(counted, "Ollama's token count of a prompt it cut")
            except EngineError as exc:
                self.note(str(exc))

    def use_text_tools(self, why: str) -> None:
        """From now on describe the tools in the system message and read calls written as JSON."""
        if not self.text_tools:
            self.text_tools = True
            self.note(
                f"{why}. HALO now lists the tools in the system message and runs calls written as JSON."
            )

    async def summarise(self, agent: Agent | None, system: str, text: str, model: ModelConfig) -> str:
        completion = await self.complete(
            agent,
            model,
            [{"role": "system", "content": system}, {"role": "user", "content": text}],
            reply_tokens=min(FINISH_REPLY_TOKENS * 2, self.window.reply_tokens),
            purpose="summary",
        )
        return completion.content

    # --- the window --------------------------------------------------------------------------

    async def fit_to_window(self) -> None:
        """Learn the model's context window (--context-window, else the server) and size the run's
        requests to it, saying so in the report."""
        tokens, source = self.config.context_window, "--context-window"
        if tokens is None:
            self.server = await self.llm.discover(self.config.model)
            tokens, source = self.server.context_window, self.server.source
            if self.server.advice:
                self.note(f"{source}; {self.server.advice}.")
        self.fit_window(tokens, source)

    def fit_window(self, tokens: int | None, source: str) -> None:
        """Size requests to a window of `tokens`; agents already running get the prompts of the new
        mode. Raises `EngineError` when the window cannot hold an analysis."""
        was_compact = self.window.compact
        self.window = plan(
            self.config,
            tokens,
            source,
            full=self.overhead(compact=False),
            compact=self.overhead(compact=True),
        )
        self.config = self.config.model_copy(update={"tool_result_bytes": self.window.result_bytes})
        if tokens is not None or self.window.compact:
            probe = Agent(self, depth=0, parent=None, parent_tool_call_id=None)
            self.note(self.window.describe(len(probe.tools), len(probe.known_tools)))
        if self.window.compact != was_compact:
            for agent in self.agents:
                if agent.messages and agent.messages[0].get("role") == "system" and agent.task:
                    agent.messages[0] = self.system_message(agent, agent.task)

    def learn_window(self, overflow: ContextOverflow) -> bool:
        """An overflow error that names a smaller window than the one known: size requests to it from
        now on. Returns whether it did."""
        window = overflow.window
        if not window or (self.window.tokens is not None and window >= self.window.tokens):
            return False
        self.fit_window(window, "the server's context-length error")
        return True

    def overhead(self, *, compact: bool) -> Overhead:
        """The root's system prompt and tool definitions in tokens, in full or compact form."""
        probe = Agent(self, depth=0, parent=None, parent_tool_call_id=None)
        tools = [
            t.compact_schema if compact else t.schema
            for t in probe.known_tools.values()
            if not compact or t.name in COMPACT_TOOLS or (t not in TRACE_TOOLS and t is not RUN_CODE)
        ]
        system = self.system_text(probe, "", compact=compact)
        return Overhead(
            self.llm.estimate([{"role": "system", "content": system}]), self.llm.estimate([], tools)
        )

    # --- agents ------------------------------------------------------------------------------

    async def spawn(self, parent: Agent, brief: str) -> dict[str, Any]:
        """call_subagent: run a child agent on `brief` in the pool for its depth and return its
        structured result. A child that fails or runs out of budget returns what it has, marked
        partial."""
        depth = parent.depth + 1
        if depth > self.config.max_depth:
            raise ToolError(
                f"sub-agents may not go deeper than {self.config.max_depth}; answer this yourself"
            )
        async with self.pools[depth]:
            child = Agent(self, depth=depth, parent=parent, parent_tool_call_id=_current_call.get())
            self.agents.append(child)
            error = None
            try:
                answer = await self.telemetry.traced_agent(
                    child,
                    brief,
                    child.run_to_end([self.system_message(child, brief), {"role": "user", "content": brief}]),
                )
            except (LLMError, StoreError, EngineError) as exc:
                answer, error = _last_text(child), str(exc)
                child.status = "failed"
            finally:
                child.finished = time.monotonic()
        findings, problem = _findings_block(answer)
        result: dict[str, Any] = {
            "agent_id": child.id,
            "status": child.status,
            "partial": child.status != "done",
            "answer": answer or "(no answer)",
            "findings": [f.model_dump(exclude_defaults=True) for f in findings],
            "turns": child.turns,
            "tool_calls": child.tool_calls,
            "tokens": child.usage.tokens,
            "cost_usd": round(child.usage.cost_usd or 0.0, 6),
        }
        if error:
            result["error"] = error
        if problem:
            result["note"] = problem
        return result

    def system_message(self, agent: Agent, task: str) -> dict[str, str]:
        agent.task = task
        return {"role": "system", "content": self.system_text(agent, task, compact=self.window.compact)}

    def system_text(self, agent: Agent, task: str, *, compact: bool) -> str:
        cfg = self.config
        delegation = ""
        if agent.depth < cfg.max_depth:
            delegation = (
                prompts.DELEGATE_COMPACT
                if compact
                else prompts.DELEGATE.format(max_depth=cfg.max_depth, max_parallel=cfg.max_parallel)
            )
        context = f"\n\nDataset context from the user:\n{cfg.dataset_context}" if cfg.dataset_context else ""
        budget = self.budget.summary(cfg.max_turns)
        if compact:
            shared = prompts.SHARED_COMPACT.format(filters=filters_text(), repo=self.repo_section)
            root, sub = prompts.ROOT_COMPACT, prompts.SUBAGENT_COMPACT
        else:
            shared = prompts.SHARED.format(repl=self.repl_section, repo=self.repo_section)
            root, sub = prompts.ROOT, prompts.SUBAGENT
        if agent.is_root:
            return root.format(
                shared=shared,
                task=task,
                delegation=delegation,
                budget=budget,
                overview=prompts.overview_text(self.overview, self.store.dialect.name, compact=compact)
                if self.overview
                else "",
                hypotheses=prompts.hypotheses_text(self.hypotheses, compact=compact),
                context=context,
            )
        return sub.format(shared=shared, delegation=delegation, budget=budget, context=context)

    repl_section = ""
    repo_section = ""


def _last_text(agent: Agent) -> str:
    """The agent's last reply usable as an answer; replies cut at the output limit, repeating one
    line or attempting a tool call are never one."""
    return agent.text


_FINDINGS_BLOCK = re.compile(r"```json\s*(\{.*?\})\s*```", re.DOTALL)


def _findings_block(answer: str) -> tuple[list[FindingInput], str | None]:
    """Findings a sub-agent appended to its answer as a ```json block."""
    blocks = _FINDINGS_BLOCK.findall(answer or "")
    if not blocks:
        return [], None
    try:
        data = orjson.loads(blocks[-1])
        return [FindingInput.model_validate(f) for f in data.get("findings", [])], None
    except (orjson.JSONDecodeError, ValidationError, AttributeError) as exc:
        return [], f"the findings block could not be read: {str(exc)[:200]}"


# --- the report -----------------------------------------------------------------------------


def build_report(
    run: Run,
    root: Agent | None,
    prompt: str,
    inputs: list[str],
    answer: str,
    store: TraceStore,
    *,
    stopped: BaseException | None = None,
) -> reports.Report:
    """The run's report: the detectors' verified findings merged with the model's (`report.merge`),
    verified against the store, and how the run ended. Built in a worker thread on a connection of
    its own (verification queries the store); `stopped` is what ended the run early, if anything."""
    assert run.detector_report is not None
    dataset = run.detector_report.dataset
    final = root.final if root is not None else None
    proposed = [to_finding(f, dataset, store) for f in (final.findings if final else [])]
    if proposed:  # their checks decide what they may add to a detector finding
        verify(reports.Report(mode="llm", dataset=dataset, findings=proposed), store)
    notes = list(run.notes)
    for f in proposed:
        dropped = [loc for loc in f.locations if not _is_line_of(run.config.repo_path, loc)]
        if dropped:
            where = "are not lines of files in --repo-path" if run.config.repo_path else "need --repo-path"
            notes.append(f"{f.id}: dropped code locations that {where}: {', '.join(dropped)}")
            f.locations = [loc for loc in f.locations if loc not in dropped]
    outcome = _outcome(run, root, stopped)
    usage = _run_usage(run)
    if final is None and root is not None and root.status != "running":
        notes.insert(
            0,
            f"The run ended without final_answer ({root.status}); the analysis is the root agent's last "
            "answer and the findings are the detectors'.",
        )
    report = reports.Report(
        mode="llm",
        prompt=prompt,
        inputs=inputs,
        store=run.store.path,
        dataset=dataset,
        findings=reports.rank(reports.merge(run.detector_report.findings, proposed), dataset),
        answer=(final.answer if final else answer) or None,
        models={
            "agents": run.config.model,
            "synthesis": run.config.synthesis_model or run.config.model,
            "compaction": run.config.compaction_model or run.config.model,
        },
        usage=usage,
        budgets=run.budget.report(
            max_turns=run.config.max_turns, root_turns=root.turns if root else 0, seconds=usage.seconds
        ),
        thresholds=run.detector_report.thresholds,
        notes=notes + run.detector_report.notes,
        telemetry=run.telemetry.destination,
        outcome=outcome,
    )
    verify(report, store, recheck=False)
    return report.cleaned(keep_secrets=run.config.keep_secrets)


def _run_usage(run: Run) -> reports.RunUsage:
    return reports.RunUsage(
        models=run.models,
        agents=len(run.agents),
        turns=sum(a.turns for a in run.agents),
        tool_calls=sum(a.tool_calls for a in run.agents),
        seconds=round(time.monotonic() - run.budget.started, 2),
        per_agent=[
            reports.AgentUsage(
                **a.usage.model_dump(),
                agent_id=a.id,
                name=a.name,
                depth=a.depth,
                parent_id=a.parent_id,
                status=a.status,
                turns=a.turns,
                tool_calls=a.tool_calls,
                seconds=round((a.finished or time.monotonic()) - a.started, 2),
            )
            for a in run.agents
        ],
    )


def _outcome(run: Run, root: Agent | None, stopped: BaseException | None) -> reports.Outcome:
    """What ended the run, and what it did not get to do."""
    unfinished = [a for a in run.agents if not a.is_root and a.status == "running"]
    not_done = []
    if root is None or root.final is None:
        not_done.append(
            "the model's final answer and findings (the findings here are the detectors', verified)"
            if root is not None and root.turns
            else "the LLM analysis (the findings here are the detectors', verified)"
        )
    if unfinished:
        not_done.append(f"{len(unfinished)} sub-agent(s) did not finish; their findings are not included")
    cfg = run.config
    if isinstance(stopped, asyncio.CancelledError | KeyboardInterrupt):
        return reports.Outcome(
            complete=False, stopped_by="interrupted", reason="interrupted (Ctrl-C).", not_done=not_done
        )
    if isinstance(stopped, Timeout):
        return reports.Outcome(
            complete=False, stopped_by="timeout", reason=first_line(stopped), not_done=not_done
        )
    if isinstance(stopped, LLMError):
        return reports.Outcome(
            complete=False,
            stopped_by="provider_error",
            reason=f"the model provider failed: {first_line(stopped)}",
            not_done=not_done,
        )
    if stopped is not None:
        return reports.Outcome(
            complete=False,
            stopped_by="crash",
            reason=f"{type(stopped).__name__}: {first_line(stopped)}",
            not_done=not_done,
        )
    assert root is not None
    if root.final is not None:
        return reports.Outcome()
    budget = run.budget.exhausted()
    if root.status == "partial" and budget:
        kind: Any = "timeout" if "time" in budget else "budget"
        return reports.Outcome(complete=False, stopped_by=kind, reason=f"{budget}.", not_done=not_done)
    if root.status == "partial" and root.turns >= cfg.max_turns:
        reason = (
            f"the root agent reached its turn limit ({cfg.max_turns}, --max-turns) without a final answer."
        )
        return reports.Outcome(complete=False, stopped_by="turn_limit", reason=reason, not_done=not_done)
    if root.status == "partial":
        return reports.Outcome(
            complete=False, stopped_by="timeout", reason="a model call ran out of time.", not_done=not_done
        )
    return reports.Outcome(
        complete=False,
        stopped_by="no_answer",
        reason=f"the model ended without a final answer ({root.status}).",
        not_done=not_done,
    )


def _is_line_of(repo_path: Path | None, location: str) -> bool:
    """Whether `path:line` (or `path:first-last`) names a line of a file inside the repository."""
    match = re.fullmatch(r"\s*`?([^`:\s][^`:]*?):(\d+)(?:-\d+)?`?\s*", location)
    if repo_path is None or match is None:
        return False
    root = repo_path.resolve()
    path = (root / match[1]).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return False
    try:
        with path.open("rb") as f:
            lines = sum(1 for _ in f)
    except OSError:
        return False
    return 1 <= int(match[2]) <= lines


def to_finding(given: FindingInput, dataset: reports.DatasetSummary, store: TraceStore) -> reports.Finding:
    """A finding as the model reported it, in the report's shape; a count it left out is recounted
    from its query, else taken from its evidence."""
    affected = given.affected_traces
    if affected is None and given.query:
        try:
            affected = store.recount(given.query)
        except StoreError:
            affected = None
    if affected is None:
        affected = len({e.trace_id for e in given.evidence})
    severity = given.severity if given.severity in reports.SEVERITY_WEIGHT else "medium"
    slug = re.sub(r"[^a-z0-9]+", "-", (given.key or given.title).lower()).strip("-")[:50]
    impact = reports.Impact(**{k: v for k, v in given.impact.items() if k in reports.Impact.model_fields})
    return reports.Finding(
        id=f"llm:{reports.category(given.category)}:{slug}",
        title=given.title,
        category=reports.category(given.category),
        severity=severity,
        affected_traces=affected,
        affected_trace_share=min(1.0, affected / dataset.traces) if dataset.traces else 0.0,
        impact=impact,
        evidence=[reports.Evidence(**e.model_dump()) for e in given.evidence],
        recommendation=given.recommendation,
        confidence=given.confidence,
        source="llm",
        key=given.key,
        details=given.details,
        query=given.query,
        query_dialect=store.dialect.name if given.query else None,
        locations=list(given.locations),
    )


# --- entry points ---------------------------------------------------------------------------


Messages = str | Sequence[AgentMessage | dict[str, Any]]


async def stream_engine_async(
    messages: Messages,
    engine_config: EngineConfig,
    trace_paths: str | Path | Sequence[str | Path] | None = None,
    *,
    store: TraceStore | str | Path | None = None,
    telemetry: bool | None = None,
) -> AsyncIterator[EngineEvent]:
    """Run the engine and yield every event: completed items and streaming text deltas. Give
    trace files (ingested into their default store) or an open read-only `store` / store path."""
    config = engine_config if telemetry is None else engine_config.model_copy(update={"telemetry": telemetry})
    prompt, history = _split_messages(messages)
    trace_store, inputs, owned = _open_store(trace_paths, store)
    # Made in a worker thread: it loads TLS certificates.
    llm = await asyncio.to_thread(LLM, config.provider, prices=Prices(config.prices), retry=config.retry)
    queue: asyncio.Queue[Any] = asyncio.Queue()
    run = Run(config, trace_store, llm, queue)
    task = asyncio.create_task(_drive(run, prompt, history, inputs))
    try:
        while True:
            event = await queue.get()
            if event is _DONE:
                break
            if isinstance(event, BaseException):
                raise event
            yield event
        await task
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await run.telemetry.aclose()
        await llm.aclose()
        if owned:
            trace_store.close()


_DONE = object()


async def _drive(run: Run, prompt: str, history: list[dict[str, Any]], inputs: list[str]) -> None:
    try:
        run.telemetry, run.llm = start_telemetry(run.config, run.id, run.llm)
        if not run.config.keep_secrets:
            run.llm = RedactingLLM(run.llm)  # type: ignore[assignment]
        if run.telemetry.destination:
            run.note(
                f"Telemetry: HALO's own spans of this run (session.id {run.id}) go to {run.telemetry.destination}"
            )
        await run.telemetry.traced_run(
            prompt,
            _run(run, prompt, history, inputs),
            lambda: RunTotals(run.budget.tokens, run.budget.cost, len(run.agents)),
        )
        run.queue.put_nowait(_DONE)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001 - surfaced to the consumer, after every item emitted so far
        if run.telemetry.destination:  # a failed run is the one whose trace is most wanted
            exc.add_note(f"Telemetry of this run: {run.telemetry.destination}")
        run.queue.put_nowait(exc)


async def _run(run: Run, prompt: str, history: list[dict[str, Any]], inputs: list[str]) -> reports.Report:
    """The detectors, then the agents, then the report. Whatever stops the agents — a provider error,
    a crash, Ctrl-C (cancellation) — the report is still built from everything verified so far and
    written, then the error goes on to the caller."""
    store = run.store
    if not run.config.provider.configured:
        raise EngineError(
            "no model provider is configured: set OPENAI_API_KEY (or --api-key), or --base-url for a "
            "local OpenAI-compatible server"
        )
    run.detector_report = await store.run(detect.analyze)
    if run.detector_report.dataset.traces == 0:
        raise EngineError(f"{store.path}: the store holds no traces")
    answer = ""
    try:
        answer = await _explore(run, prompt, history)
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # long enough to write the report; a second Ctrl-C ends the process
        await _finish_after(exc, run, prompt, inputs)
        raise
    except Exception as exc:
        await _finish_after(exc, run, prompt, inputs)
        raise
    return await _finish(run, prompt, inputs, answer)


async def _explore(run: Run, prompt: str, history: list[dict[str, Any]]) -> str:
    """The root agent's run; returns its last text (its report arrives in `root.final`)."""
    run.overview = await run.store.run(lambda connection: connection.overview(top=15))
    assert run.detector_report is not None
    run.hypotheses = [
        {
            "id": f.id,
            "title": f.title,
            "category": f.category,
            "key": f.key,
            "affected_traces": f.affected_traces,
            "evidence": [reports.cite(e) for e in f.evidence[:3]],
        }
        for f in run.detector_report.findings[:12]
    ]
    _offer_code_and_repo(run)
    await run.fit_to_window()
    root = Agent(run, depth=0, parent=None, parent_tool_call_id=None)
    run.agents.append(root)
    opening = history if history[0]["role"] == "system" else [run.system_message(root, prompt), *history]
    try:
        return await run.telemetry.traced_agent(root, prompt, root.run_to_end(opening))
    finally:
        root.finished = time.monotonic()
        # Every sandbox worker must be closed before the loop ends (see sandbox.Repl.aclose).
        await asyncio.gather(*(a.repl.aclose() for a in run.agents if a.repl is not None))


async def _finish(
    run: Run, prompt: str, inputs: list[str], answer: str, stopped: BaseException | None = None
) -> reports.Report:
    """Build, write and emit the report (the final item)."""
    root = run.agents[0] if run.agents else None
    if root is not None and not answer:
        answer = _last_text(root)
    report = await run.store.run(
        lambda connection: build_report(run, root, prompt, inputs, answer, connection, stopped=stopped)
    )
    if run.config.out_dir is not None:
        render.write(report, run.config.out_dir, keep_secrets=run.config.keep_secrets)
    lineage = (
        root.lineage()
        if root is not None
        else {"agent_id": f"root-{run.id[:8]}", "parent_agent_id": None, "parent_tool_call_id": None}
        | {"agent_name": "root", "depth": 0}
    )
    run.emit(
        AgentOutputItem(
            sequence=0,
            item=AgentMessage(role="assistant", content=report.answer),
            final=True,
            report=report,
            conversation=[
                dict(m) if run.config.keep_secrets else _redacted(m) for m in (root.messages if root else [])
            ],
            **lineage,
        )
    )
    return report


async def _finish_after(stopped: BaseException, run: Run, prompt: str, inputs: list[str]) -> None:
    """`_finish` for a run that failed; if even the report cannot be made, the error says so."""
    try:
        await _finish(run, prompt, inputs, "", stopped)
    except Exception as exc:  # noqa: BLE001 - the run's own error is the one to raise
        stopped.add_note(f"No report could be written: {type(exc).__name__}: {first_line(exc)}")


class RedactingLLM:
    """`run.llm` unless --keep-secrets: every message goes to the model with its credentials replaced
    by `[REDACTED]` (`halo_rlm.scrub`), whichever agent, tool or code sent it. Tool results are JSON:
    the whole value of a secret-looking key goes too."""

    def __init__(self, llm: LLM) -> None:
        self.llm = llm
        self._redacted = MessageMemo(_redacted)  # every turn sends the whole conversation again

    async def complete(
        self, model: ModelConfig, messages: list[dict[str, Any]], **options: Any
    ) -> Completion:
        return await self.llm.complete(model, [self._redacted(m) for m in messages], **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.llm, name)


def _redacted(message: dict[str, Any]) -> dict[str, Any]:
    """A chat message (or an event's message) without credentials in its text and tool arguments."""
    content = message.get("content")
    if not isinstance(content, str) and not message.get("tool_calls"):
        return message
    clean = dict(message)
    if isinstance(content, str):
        clean["content"] = _redacted_text(content)
    if message.get("tool_calls"):
        clean["tool_calls"] = [_redacted_call(call) for call in message["tool_calls"]]
    return clean


def _redacted_call(call: dict[str, Any]) -> dict[str, Any]:
    """A tool call in Chat Completions' shape ({"function": {"arguments"}}) or an event's ({"arguments"})."""
    if "function" in call:
        return call | {
            "function": call["function"] | {"arguments": _redacted_text(call["function"]["arguments"])}
        }
    return call | {"arguments": _redacted_text(call["arguments"])}


@functools.lru_cache(maxsize=2_048)
def _redacted_text(text: str) -> str:
    """Credentials out of a message: JSON by its keys and strings (a tool result), else as text."""
    if text[:1] in ("{", "["):
        try:
            return orjson.dumps(scrub_attributes({"": orjson.loads(text)})[""]).decode()
        except orjson.JSONDecodeError:
            pass
    return scrub_text(text)


def _offer_code_and_repo(run: Run) -> None:
    """Add run_code when the sandbox works here (say so once when it does not) and the repository
    tools when a repo path is given."""
    reason = sandbox.available()
    if reason is None:
        run.extra_tools.append(RUN_CODE)
        run.repl_section = prompts.REPL.format(
            environment=sandbox.describe_environment(CodeLimits.for_config(run.config).sandbox)
        )
    else:
        run.note(f"run_code is not offered: {reason}")
    if run.config.repo_path is None:
        return
    try:
        source = Repo.open(run.config.repo_path, max_result_bytes=run.config.tool_result_bytes - 1_000)
    except RepoError as exc:
        raise EngineError(f"--repo-path: {exc}") from exc
    run.extra_tools.extend(repo_tools(source))
    run.repo_section = prompts.REPO.format(
        git=", and git_log, git_show, git_diff, git_blame, git_read_file for its history"
        if source.is_git
        else "",
        commits=" and commits by their 12-character ids" if source.is_git else "",
    )


def _split_messages(messages: Messages) -> tuple[str, list[dict[str, Any]]]:
    """The task text (for the report) and the conversation to start from. A conversation that
    begins with a system message is used verbatim, replacing the built-in prompt, as in HALO."""
    if isinstance(messages, str):
        return messages, [{"role": "user", "content": messages}]
    history = [m.model_dump(exclude_none=True) if isinstance(m, AgentMessage) else dict(m) for m in messages]
    task = "\n\n".join(m.get("content") or "" for m in history if m.get("role") == "user")
    if not history:
        raise EngineError("no messages: give a prompt")
    return task or DEFAULT_PROMPT, history


def _open_store(
    trace_paths: Any, store: TraceStore | str | Path | None
) -> tuple[TraceStore, list[str], bool]:
    if isinstance(store, TraceStore):
        return store, [], False
    if store is not None:
        return TraceStore.open(store, read_only=True), [], True
    if trace_paths is None:
        raise EngineError("give trace files or a store")
    files = [str(p) for p in ([trace_paths] if isinstance(trace_paths, str | Path) else trace_paths)]
    target = paths.for_inputs(resolve(files))
    with TraceStore.open(target) as writable:
        writable.ingest(files)
    return TraceStore.open(target, read_only=True), files, True


async def stream_engine_output_async(
    messages: Messages, engine_config: EngineConfig, trace_paths: Any = None, **kwargs: Any
) -> AsyncIterator[AgentOutputItem]:
    """Completed items only (no text deltas)."""
    async for event in stream_engine_async(messages, engine_config, trace_paths, **kwargs):
        if isinstance(event, AgentOutputItem):
            yield event


async def run_engine_async(
    messages: Messages, engine_config: EngineConfig, trace_paths: Any = None, **kwargs: Any
) -> list[AgentOutputItem]:
    """All completed items, once the run is over; the last one is final and carries the report."""
    return [item async for item in stream_engine_output_async(messages, engine_config, trace_paths, **kwargs)]


def stream_engine(
    messages: Messages, engine_config: EngineConfig, trace_paths: Any = None, **kwargs: Any
) -> Iterator[EngineEvent]:
    """The sync twin of `stream_engine_async`, driven on a private event loop."""
    yield from _sync(stream_engine_async(messages, engine_config, trace_paths, **kwargs))


def stream_engine_output(
    messages: Messages, engine_config: EngineConfig, trace_paths: Any = None, **kwargs: Any
) -> Iterator[AgentOutputItem]:
    yield from _sync(stream_engine_output_async(messages, engine_config, trace_paths, **kwargs))


def run_engine(
    messages: Messages, engine_config: EngineConfig, trace_paths: Any = None, **kwargs: Any
) -> list[AgentOutputItem]:
    return asyncio.run(run_engine_async(messages, engine_config, trace_paths, **kwargs))


def _sync(agen: AsyncIterator[Any]) -> Iterator[Any]:
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(agen.aclose())  # type: ignore[attr-defined]
        loop.close()


def _turn_usage(completion: Completion) -> TurnUsage:
    return TurnUsage(**completion.usage.model_dump(), model=completion.model)
