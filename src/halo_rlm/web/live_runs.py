"""Analyses launched from the app, recorded like every other analysis (`halo_rlm.analyses`, in the run
registry beside the store, so `halo runs` lists them too) and watched live.

A run starts from a trace list's filters: the matching traces are first copied into a store of the
run's own (in the registry's `traces/` folder). The engine then sees exactly those traces however the
main store changes meanwhile, opens them read-only with file access off (the model writes SQL), and a
follow-up weeks later asks about the same data. API keys typed into the form are kept in memory for
the life of the app and written nowhere.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from halo_rlm.analyses import ask, stream_recorded
from halo_rlm.defaults import DEFAULT_MODEL, DEFAULT_PROMPT, ReasoningEffort
from halo_rlm.engine import EngineConfig, EngineError, RunView
from halo_rlm.runs import Run, RunError, RunRegistry, now
from halo_rlm.store import StoreError, TraceFilters, TraceStore
from halo_rlm.web.live import Hub

LIVE_SECONDS = 0.2  # streamed text reaches the page at most this often
STREAM_TAIL = 4_000  # characters of each agent's streaming text kept for the live view


class RunSettings(BaseModel):
    """The engine's settings for a run, without secrets (kept in the run's record)."""

    model_config = ConfigDict(extra="forbid")

    model: str = DEFAULT_MODEL
    synthesis_model: str | None = None
    compaction_model: str | None = None
    max_depth: int = Field(default=2, ge=0, le=8)
    max_parallel: int = Field(default=4, ge=1, le=16)
    max_turns: int = Field(default=20, ge=1, le=200)
    max_cost: float | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(default=None, gt=0)
    timeout: float | None = Field(default=None, gt=0, description="Seconds for each turn of the run")
    reasoning_effort: ReasoningEffort | None = None
    base_url: str | None = None
    repo_path: str | None = None

    def engine_config(self, api_key: SecretStr | None, out_dir: Path | None = None) -> EngineConfig:
        values = self.model_dump(exclude={"repo_path"})
        return EngineConfig(
            **values,
            api_key=api_key,
            out_dir=out_dir,
            repo_path=Path(self.repo_path) if self.repo_path else None,
        )


def agents_of(view: RunView, active: bool) -> list[dict[str, Any]]:
    """The agent tree as the page draws it; when the run is over, agents still marked busy stopped."""
    return [
        {
            "agent_id": a.agent_id,
            "name": a.name,
            "parent": a.parent_id,
            "depth": a.depth,
            "status": a.activity if active or a.activity == "done" else "stopped",
            "tool": a.tool,
            "turns": a.turns,
            "tool_calls": a.tool_calls,
            "tokens": a.usage.tokens,
            "cost": a.usage.cost_usd or 0.0,
            "text": a.text[-STREAM_TAIL:],
        }
        for a in view.agents.values()
    ]


class LiveRuns:
    """This store's analyses: the registry beside it, and the runs the app is driving now."""

    def __init__(
        self, store: TraceStore, hub: Hub, resolve_text: Callable[[TraceFilters], Awaitable[TraceFilters]]
    ) -> None:
        self.store, self.hub, self.resolve_text = store, hub, resolve_text
        self.registry = RunRegistry.beside(store.path)
        self.views: dict[str, RunView] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._keys: dict[str, SecretStr] = {}  # typed into the form; memory only
        self._closing = False
        self._mark_stale()

    def _mark_stale(self) -> None:
        """Web runs a previous app left running stopped with it (the app holds the store, so no other
        process can be running them)."""
        for run in self.registry.runs(kind="analysis"):
            if run.record.source == "web" and run.record.status == "running":
                run.finish("interrupted", "the app stopped while it ran; start it again")
            for turn in run.record.turns:
                if run.record.source == "web" and turn.status == "running":
                    turn.status, turn.reason = "interrupted", "the app stopped while it ran"
                    run.update(turns=run.record.turns)

    def runs(self) -> list[Run]:
        return self.registry.runs(kind="analysis")

    def get(self, ref: str) -> Run | None:
        try:
            return self.registry.get(ref)
        except RunError:
            return None

    def active(self, run: Run) -> bool:
        return run.id in self._tasks

    def settings_of(self, run: Run) -> RunSettings:
        try:
            return RunSettings.model_validate(run.record.summary.get("settings") or {})
        except ValidationError:
            return RunSettings()

    def report_path(self, run: Run) -> Path:
        return (run.file("report.md") or run.path("report.md")).resolve()

    def can_follow_up(self, run: Run) -> str | None:
        """Why a follow-up cannot be asked here, or None when it can."""
        if self.active(run):
            return "the run is still working"
        if run.file("conversation.json") is None:
            return "only analyses that finished with a model answer can be followed up"
        if run.record.store and Path(run.record.store).resolve() == Path(self.store.path).resolve():
            return (
                "it analysed the app's own store, which the app holds open: ask with `halo ask` once it stops"
            )
        return None

    # --- starting and stopping ------------------------------------------------------------------

    def start(
        self,
        *,
        prompt: str,
        query: Sequence[tuple[str, str]],
        filters: TraceFilters,
        settings: RunSettings,
        api_key: str | None,
    ) -> Run:
        """Record a new analysis and start it: copy the matching traces, then run the engine over them."""
        prompt = prompt.strip() or DEFAULT_PROMPT
        run = self.registry.create(
            "analysis",
            source="web",
            prompt=prompt,
            inputs=[self.store.path],
            filters={"query": [list(item) for item in query], **filters.model_dump(exclude_none=True)},
            summary={"settings": settings.model_dump(exclude_none=True)},
        )
        if api_key:
            self._keys[run.id] = SecretStr(api_key)
        self._launch(run, self._analyse(run, prompt, filters, settings))
        return run

    def rerun(self, run: Run, api_key: str | None) -> Run:
        """The same question over the same traces (its copy), as a new run."""
        if self.active(run):
            raise EngineError("the run is still working")
        query = [(str(k), str(v)) for k, v in run.record.filters.get("query", [])]
        filters = TraceFilters.model_validate({k: v for k, v in run.record.filters.items() if k != "query"})
        fresh = self.start(
            prompt=run.record.prompt or DEFAULT_PROMPT,
            query=query,
            filters=filters,
            settings=self.settings_of(run),
            api_key=api_key or self._secret(run),
        )
        copy = run.record.summary.get("traces_copy")
        if copy and Path(copy).exists():  # same traces, no new copy
            fresh.update(
                summary={
                    **fresh.record.summary,
                    "traces_copy": copy,
                    "traces": run.record.summary.get("traces"),
                }
            )
        return fresh

    def follow_up(self, run: Run, question: str, api_key: str | None) -> None:
        problem = self.can_follow_up(run)
        if problem:
            raise EngineError(f"no follow-up here: {problem}")
        if not question.strip():
            raise EngineError("write a question first")
        if api_key:
            self._keys[run.id] = SecretStr(api_key)
        self._launch(run, self._follow_up(run, question.strip()))

    def cancel(self, run: Run) -> None:
        task = self._tasks.get(run.id)
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        """Stop what is running (at shutdown); the records say the app stopped them."""
        self._closing = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _secret(self, run: Run) -> str | None:
        key = self._keys.get(run.id)
        return key.get_secret_value() if key else None

    def _launch(self, run: Run, work: Any) -> None:
        self.views[run.id] = RunView()
        task = asyncio.create_task(work, name=f"halo-run-{run.id}")
        self._tasks[run.id] = task
        task.add_done_callback(lambda _: self._finished(run))
        self._publish(run, "running")

    def _finished(self, run: Run) -> None:
        self._tasks.pop(run.id, None)
        self._publish(self.get(run.id) or run)

    # --- the work -------------------------------------------------------------------------------

    async def _analyse(self, run: Run, prompt: str, filters: TraceFilters, settings: RunSettings) -> None:
        from halo_rlm.llm import LLMError  # with the `openai` client: loaded by the first run, not the app

        try:
            snapshot = await self._copy(run, filters)
            config = settings.engine_config(self._keys.get(run.id))
            async for _ in self._stream(
                run, stream_recorded(prompt, config, snapshot, run=run, source="web")
            ):
                pass
        except asyncio.CancelledError:
            self._stopped(run)
        except (EngineError, LLMError, StoreError, ValidationError, OSError) as exc:
            self._failed(run, "\n".join([str(exc), *getattr(exc, "__notes__", ())]))
        except Exception as exc:  # noqa: BLE001 - a run's failure is shown on its page, never crashes the app
            self._failed(run, f"{type(exc).__name__}: {exc}")

    async def _follow_up(self, run: Run, question: str) -> None:
        from halo_rlm.llm import LLMError

        try:
            config = self.settings_of(run).engine_config(self._keys.get(run.id))
            async for _ in self._stream(run, ask(run, question, config)):
                pass
        except asyncio.CancelledError:
            for turn in run.record.turns:
                if turn.status == "running":
                    turn.status, turn.reason = "cancelled", self._stop_reason()
            run.update(turns=run.record.turns)
        except (EngineError, LLMError, StoreError, ValidationError, OSError) as exc:
            for turn in run.record.turns:
                if turn.status == "running":
                    turn.status, turn.reason = "failed", str(exc)
            run.update(turns=run.record.turns)
        except Exception as exc:  # noqa: BLE001 - see _analyse
            for turn in run.record.turns:
                if turn.status == "running":
                    turn.status, turn.reason = "failed", f"{type(exc).__name__}: {exc}"
            run.update(turns=run.record.turns)

    async def _copy(self, run: Run, filters: TraceFilters) -> Path:
        """The run's own copy of the traces the filters match (made once; a rerun shares it)."""
        existing = run.record.summary.get("traces_copy")
        if existing and Path(existing).exists():
            return Path(existing)
        folder = self.registry.root / "traces"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{run.id}.duckdb"
        partial = folder / f".{run.id}.{secrets.token_hex(4)}.partial.duckdb"
        resolved = await self.resolve_text(filters)
        note = f"halo ui run {run.id} over {self.store.path}"
        try:
            copied = await self.store.run(lambda store: store.copy_traces(resolved, partial, note=note))
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, target)
        run.update(summary={**run.record.summary, "traces_copy": str(target), "traces": copied})
        if not copied:
            raise EngineError("no traces match this run's filters; widen them and start again")
        return target

    async def _stream(self, run: Run, events: Any) -> Any:
        view = self.views[run.id]
        last_publish = 0.0
        async for event in events:
            if isinstance(event, Run):
                continue
            view.update(event)
            finished_step = not hasattr(event, "text_delta")
            if finished_step or time.monotonic() - last_publish > LIVE_SECONDS:
                last_publish = time.monotonic()
                self._publish(run, "running")
            yield event

    def _stop_reason(self) -> str:
        return "the app stopped while it ran" if self._closing else "cancelled from the app"

    def _stopped(self, run: Run) -> None:
        run.finish("interrupted" if self._closing else "cancelled", self._stop_reason())

    def _failed(self, run: Run, reason: str) -> None:
        if run.record.status == "running":
            run.finish("failed", reason)

    def _publish(self, run: Run, status: str | None = None) -> None:
        view = self.views.get(run.id)
        active = run.id in self._tasks
        self.hub.publish(
            "run",
            {
                "run_id": run.id,
                "status": status or ("running" if active else run.record.status),
                "turns": len(run.record.turns),
                "agents": agents_of(view, active) if view else [],
                "at": now(),
            },
        )


__all__ = ["LiveRuns", "RunSettings", "agents_of"]
