"""`run_code`: the RLM idea proper. Each agent gets a persistent sandboxed Python REPL whose host
functions reach the whole trace store and the LLM: the model slices, counts and groups the corpus in
code, and calls the synthesis model (or a sub-agent) from that code on the slices it picked.

Host functions run in the host against the store (nothing is copied into the sandbox) and take and
return plain data. LLM calls made from code count against the run's budgets, are capped per call and
per run, and appear in the event stream under the agent that ran the code.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from pydantic import AliasChoices, Field, ValidationError

from halo_rlm import sandbox
from halo_rlm.engine.config import EngineConfig
from halo_rlm.engine.tools import Args, Tool, ToolContext
from halo_rlm.llm import LLMError
from halo_rlm.store import StoreError, TraceFilters

__all__ = ["RUN_CODE", "CodeLimits", "HostFunctions"]


@dataclass
class CodeLimits:
    """How much code may do: per `run_code` call (the sandbox's limits) and LLM use from code."""

    sandbox: sandbox.Limits = field(
        default_factory=lambda: sandbox.Limits(wall_seconds=60, max_host_calls=2_000)
    )
    batch_max: int = 50  # prompts in one llm_query_batched call
    batch_parallel: int = 8  # of them running at once
    llm_calls_per_run: int = 300  # llm_query + rlm_query calls from code, whole run
    rows_max: int = 5_000  # rows one query function returns

    @classmethod
    def for_config(cls, config: EngineConfig) -> CodeLimits:
        return cls(
            sandbox=sandbox.Limits(wall_seconds=config.code_timeout, max_host_calls=2_000),
            llm_calls_per_run=config.max_code_llm_calls,
        )


class RunCodeArgs(Args):
    code: str = Field(validation_alias=AliasChoices("code", "source", "python"), min_length=1)


async def run_code(args: RunCodeArgs, ctx: ToolContext) -> Any:
    repl = ctx.repl
    if repl is None:
        limits = CodeLimits.for_config(ctx.config)
        repl = ctx.repl = sandbox.Repl(HostFunctions(ctx, limits).as_dict(), limits=limits.sandbox)
    result = await repl.run(args.code)
    return result.model_dump(exclude_defaults=True) | {"ok": result.ok}


RUN_CODE = Tool(
    "run_code",
    "Run Python in your persistent sandbox (state survives between calls). Host functions: "
    "traces(limit=100, sort='start', **filters) -> trace summaries; trace(trace_id) -> all spans of one trace; "
    "spans(trace_ids=None, kind=None, name=None, tool=None, model=None, agent=None, service=None, status=None, "
    "text=None, limit=1000) -> span rows; search(regex, trace_id=None, span_id=None, max_matches=50) -> matches; "
    "sql(query) -> rows as dicts; llm_query(prompt) -> str; llm_query_batched(prompts) -> list of str (errors come "
    "back as 'ERROR: ...' items); rlm_query(question) -> a sub-agent's answer. Print what you want to see.",
    RunCodeArgs,
    run_code,
)


class HostFunctions:
    """The functions sandbox code may call, bound to one agent."""

    def __init__(self, ctx: ToolContext, limits: CodeLimits) -> None:
        self.ctx = ctx
        self.limits = limits

    def as_dict(self) -> dict[str, Any]:
        return {
            "traces": self.traces,
            "trace": self.trace,
            "spans": self.spans,
            "search": self.search,
            "sql": self.sql,
            "llm_query": self.llm_query,
            "llm_query_batched": self.llm_query_batched,
            "rlm_query": self.rlm_query,
        }

    # Store functions are synchronous: the sandbox runs them in worker threads, each on its own
    # connection to the store.

    def _with_store(self, work: Any) -> Any:
        try:
            with self.ctx.store.borrow() as store:
                return work(store)
        except StoreError as exc:
            raise ValueError(str(exc)) from None

    def traces(
        self, limit: int = 100, sort: str = "start", descending: bool = True, **filters: Any
    ) -> list[dict]:
        try:
            parsed = TraceFilters.model_validate(filters) if filters else None
        except ValidationError as exc:
            raise ValueError(f"bad filters: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
        page = self._with_store(
            lambda s: s.query_traces(
                parsed,
                sort=sort,
                descending=descending,
                limit=min(int(limit), self.limits.rows_max),
            )
        )
        return [t.model_dump(mode="json") for t in page.traces]

    def trace(self, trace_id: str) -> dict:
        view = self._with_store(lambda s: s.view_trace(str(trace_id), budget_bytes=10**8, value_chars=4_000))
        return view.model_dump(mode="json", exclude_none=True)

    def spans(self, limit: int = 1_000, **conditions: Any) -> list[dict]:
        allowed = {"trace_ids", "kind", "name", "tool", "model", "agent", "service", "status", "text"}
        unknown = set(conditions) - allowed
        if unknown:
            raise ValueError(f"spans() takes {', '.join(sorted(allowed))}, not {', '.join(sorted(unknown))}")
        return self._with_store(lambda s: s.spans(limit=min(int(limit), self.limits.rows_max), **conditions))

    def search(
        self, regex: str, trace_id: str | None = None, span_id: str | None = None, max_matches: int = 50
    ) -> list[dict]:
        result = self._with_store(
            lambda s: s.search(
                str(regex),
                trace_id=trace_id,
                span_id=span_id,
                max_matches=min(int(max_matches), 500),
                timeout=10,
            )
        )
        return [m.model_dump(mode="json") for m in result.matches]

    def sql(self, query: str) -> list[dict]:
        result = self._with_store(
            lambda s: s.sql(str(query), max_rows=self.limits.rows_max, max_bytes=5_000_000)
        )
        return [dict(zip(result.columns, row, strict=True)) for row in result.rows]

    # LLM functions are coroutines: they run on the engine's event loop, in the run_code call's task.

    async def llm_query(self, prompt: str) -> str:
        self.ctx.spend_code_llm_calls(1)
        return await self.ctx.ask(str(prompt))

    async def llm_query_batched(self, prompts: list[str]) -> list[str]:
        if not isinstance(prompts, list | tuple):
            raise TypeError("llm_query_batched takes a list of prompts")
        if len(prompts) > self.limits.batch_max:
            raise ValueError(
                f"at most {self.limits.batch_max} prompts per llm_query_batched call "
                f"(got {len(prompts)}); merge related items into fewer, fuller prompts"
            )
        self.ctx.spend_code_llm_calls(len(prompts))
        gate = asyncio.Semaphore(self.limits.batch_parallel)

        async def one(prompt: Any) -> str:
            async with gate:
                try:
                    return await self.ctx.ask(str(prompt))
                except LLMError as exc:
                    return f"ERROR: {exc}"

        return list(await asyncio.gather(*(one(p) for p in prompts)))

    async def rlm_query(self, question: str) -> str:
        """A sub-agent on `question` when depth allows, else a plain llm_query."""
        self.ctx.spend_code_llm_calls(1)
        if self.ctx.depth < self.ctx.config.max_depth:
            result = await self.ctx.spawn(str(question))
            return str(result["answer"])
        return await self.ctx.ask(str(question))
