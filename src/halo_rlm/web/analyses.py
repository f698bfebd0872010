"""Analyses launched from the app: a run over the traces a list's filters match, watched live, kept
with its report beside the store, continued with follow-up questions.

Each run first copies the matching traces into a store of its own (`<store>.runs/<id>/traces.duckdb`):
the engine then sees exactly those traces however the main store changes meanwhile, opens them
read-only with file access switched off (the model writes SQL), and a follow-up weeks later asks
about the same data. The run record (`run.json`), the engine's events (`events.jsonl`, without the
streamed text) and each turn's report sit in the same folder; API keys typed into the form are kept
in memory for the life of the app and written nowhere.

TO REPLACE: the run registry of the runs module (issue 12), once it lands; this module then only
drives it. The live agent tree is the engine's `RunView`, the same model the terminal renders.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio
import duckdb
import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from halo_rlm import render
from halo_rlm.defaults import DEFAULT_MODEL, DEFAULT_PROMPT, ReasoningEffort
from halo_rlm.engine import AgentOutputItem, EngineConfig, EngineError, RunView, stream_engine_async
from halo_rlm.llm import LLMError
from halo_rlm.report import Report
from halo_rlm.store import StoreError, TraceFilters, TraceStore
from halo_rlm.web.live import Hub

RunStatus = Literal["queued", "exporting", "running", "completed", "failed", "cancelled", "interrupted"]
ACTIVE: set[str] = {"queued", "exporting", "running"}
LIVE_SECONDS = 0.2  # streamed text reaches the page at most this often
STREAM_TAIL = 4_000  # characters of each agent's streaming text kept for the live view
CLOSE_PATIENCE = 2.0  # seconds to wait for a cancelled turn's last query before keeping its store open


class RunSettings(BaseModel):
    """The engine's settings for a run, without secrets (what the record keeps)."""

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

    def engine_config(self, api_key: SecretStr | None, out_dir: Path) -> EngineConfig:
        values = self.model_dump(exclude={"repo_path"})
        return EngineConfig(
            **values,
            api_key=api_key,
            out_dir=out_dir,
            repo_path=Path(self.repo_path) if self.repo_path else None,
        )


class Turn(BaseModel):
    question: str
    status: RunStatus = "queued"
    started_at: str | None = None
    finished_at: str | None = None
    answer: str | None = None
    error: str | None = None
    findings: int = 0
    tokens: int = 0
    cost: float = 0.0


class Run(BaseModel):
    id: str
    created_at: str
    prompt: str
    query: list[tuple[str, str]] = Field(default_factory=list, description="The trace list's URL parameters")
    filters: TraceFilters
    settings: RunSettings
    status: RunStatus = "queued"
    error: str | None = None
    traces: int | None = None
    turns: list[Turn] = Field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def cost(self) -> float:
        return sum(t.cost for t in self.turns)

    @property
    def tokens(self) -> int:
        return sum(t.tokens for t in self.turns)


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


class Analyses:
    """Every run of this store: those on disk, and the ones running now."""

    def __init__(
        self, store: TraceStore, hub: Hub, resolve_text: Callable[[TraceFilters], Awaitable[TraceFilters]]
    ) -> None:
        self.store, self.hub, self.resolve_text = store, hub, resolve_text
        self.folder = Path(f"{store.path}.runs")
        self.runs: dict[str, Run] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._keys: dict[str, SecretStr] = {}  # typed into the form; memory only
        self.views: dict[str, RunView] = {}
        # A run's copy of the traces while a turn uses it. A cancelled engine can leave a query finishing
        # on it in a worker thread, so a store that would not close yet stays here for the next turn.
        self._stores: dict[str, TraceStore] = {}
        self._closing = False
        self._load()

    def _load(self) -> None:
        """Runs on disk; those a previous app left running are marked interrupted (retry resumes them
        on the same traces)."""
        for path in sorted(self.folder.glob("*/run.json")):
            try:
                run = Run.model_validate_json(path.read_bytes())
            except (OSError, ValidationError):
                continue  # a half-written or foreign file is not a run; leave it alone
            if run.active:
                run.status = "interrupted"
                for turn in run.turns:
                    if turn.status in ACTIVE:
                        turn.status, turn.error = "interrupted", "the app stopped while this turn ran"
                self.save(run)
            self.runs[run.id] = run

    def ordered(self) -> list[Run]:
        return sorted(self.runs.values(), key=lambda r: r.created_at, reverse=True)

    def get(self, run_id: str) -> Run | None:
        return self.runs.get(run_id)

    def folder_of(self, run: Run) -> Path:
        return self.folder / run.id

    def report_path(self, run: Run) -> Path:
        return (self.folder_of(run) / "report.md").resolve()

    def save(self, run: Run) -> None:
        folder = self.folder_of(run)
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / "run.json.tmp"
        temporary.write_bytes(orjson.dumps(run.model_dump(mode="json"), option=orjson.OPT_INDENT_2))
        os.replace(temporary, folder / "run.json")

    def turn_report(self, run: Run, index: int) -> Report | None:
        path = self.folder_of(run) / f"turn-{index + 1}" / "report.json"
        try:
            return Report.model_validate_json(path.read_bytes())
        except (OSError, ValidationError):
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
        run = Run(
            id=secrets.token_hex(6),
            created_at=_now(),
            prompt=prompt.strip() or DEFAULT_PROMPT,
            query=list(query),
            filters=filters,
            settings=settings,
        )
        run.turns.append(Turn(question=run.prompt))
        if api_key:
            self._keys[run.id] = SecretStr(api_key)
        self.runs[run.id] = run
        self.save(run)
        self._launch(run, 0)
        return run

    def ask(self, run: Run, question: str, api_key: str | None) -> None:
        if run.active:
            raise EngineError("the run is still working; ask once it has finished")
        if not question.strip():
            raise EngineError("write a question first")
        if api_key:
            self._keys[run.id] = SecretStr(api_key)
        run.turns.append(Turn(question=question.strip()))
        self._launch(run, len(run.turns) - 1)

    def retry(self, run: Run, api_key: str | None) -> None:
        if run.active or not run.turns or run.turns[-1].status == "completed":
            raise EngineError(
                "only a run whose last turn failed, was cancelled or interrupted can be retried"
            )
        if api_key:
            self._keys[run.id] = SecretStr(api_key)
        run.turns[-1] = Turn(question=run.turns[-1].question)
        self._launch(run, len(run.turns) - 1)

    def cancel(self, run: Run) -> None:
        task = self._tasks.get(run.id)
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        """Cancel what is running (at shutdown); the records say so."""
        self._closing = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for store in self._stores.values():
            await anyio.to_thread.run_sync(_close, store, CLOSE_PATIENCE * 5)
        self._stores.clear()

    def _launch(self, run: Run, index: int) -> None:
        run.status, run.error = "queued", None
        self.save(run)
        self._publish(run)
        self._tasks[run.id] = asyncio.create_task(self._turn(run, index), name=f"halo-run-{run.id}")

    # --- one turn -------------------------------------------------------------------------------

    async def _turn(self, run: Run, index: int) -> None:
        turn = run.turns[index]
        turn.started_at = _now()
        view = self.views[run.id] = RunView()
        try:
            snapshot = self.folder_of(run) / "traces.duckdb"
            if not snapshot.exists():
                self._set(run, turn, "exporting")
                filters = await self.resolve_text(run.filters)
                partial = snapshot.with_name("traces.partial.duckdb")
                partial.unlink(missing_ok=True)
                note = f"halo ui run {run.id} over {self.store.path}"
                run.traces = await self.store.run(
                    lambda store: store.copy_traces(filters, partial, note=note)
                )
                os.replace(partial, snapshot)
            if not run.traces:
                raise EngineError("no traces match this run's filters; widen them and start again")
            self._set(run, turn, "running")
            await self._analyse(run, index, snapshot, view)
            turn.status = "completed"
        except asyncio.CancelledError:
            if self._closing:
                turn.status, turn.error = "interrupted", "the app stopped while this turn ran"
            else:
                turn.status, turn.error = "cancelled", "cancelled from the app"
        except (EngineError, LLMError, StoreError, ValidationError, OSError) as exc:
            turn.status, turn.error = "failed", "\n".join([str(exc), *getattr(exc, "__notes__", ())])
        except Exception as exc:  # noqa: BLE001 - a run's failure is shown on its page, never crashes the app
            turn.status, turn.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            turn.finished_at = _now()
            run.status, run.error = turn.status, turn.error
            self._write_report(run)
            self.save(run)
            self._publish(run)
            self._tasks.pop(run.id, None)

    async def _analyse(self, run: Run, index: int, snapshot: Path, view: RunView) -> None:
        turn = run.turns[index]
        config = run.settings.engine_config(self._keys.get(run.id), self.folder_of(run) / f"turn-{index + 1}")
        store = self._stores.pop(run.id, None)
        if store is None:
            store = await anyio.to_thread.run_sync(lambda: TraceStore.open(snapshot, read_only=True))
        try:
            await self._stream(run, index, config, store, view)
        finally:
            if not await anyio.to_thread.run_sync(_close, store, CLOSE_PATIENCE):
                self._stores[run.id] = store
        if turn.answer is None:
            raise EngineError("the run ended without a report")

    async def _stream(
        self, run: Run, index: int, config: EngineConfig, store: TraceStore, view: RunView
    ) -> None:
        turn = run.turns[index]
        last_publish = 0.0
        with (self.folder_of(run) / "events.jsonl").open("ab") as log:
            async for event in stream_engine_async(_history(run, index), config, store=store):
                view.update(event)
                if isinstance(event, AgentOutputItem):
                    log.write(
                        orjson.dumps(
                            {
                                "turn": index + 1,
                                **event.model_dump(mode="json", exclude={"report"}, exclude_none=True),
                            }
                        )
                        + b"\n"
                    )
                    if event.usage:
                        turn.tokens += event.usage.input_tokens + event.usage.output_tokens
                        turn.cost += event.usage.cost_usd or 0.0
                    if event.final and event.report is not None:
                        turn.answer = event.report.answer
                        turn.findings = len(event.report.findings)
                        if event.report.usage:
                            turn.tokens, turn.cost = event.report.usage.tokens, event.report.usage.cost_usd
                if isinstance(event, AgentOutputItem) or time.monotonic() - last_publish > LIVE_SECONDS:
                    last_publish = time.monotonic()
                    self._publish(run)

    def _set(self, run: Run, turn: Turn, status: RunStatus) -> None:
        turn.status = run.status = status
        self.save(run)
        self._publish(run)

    def _publish(self, run: Run) -> None:
        view = self.views.get(run.id)
        self.hub.publish(
            "run",
            {
                "run_id": run.id,
                "status": run.status,
                "traces": run.traces,
                "turns": len(run.turns),
                "agents": agents_of(view, run.active) if view else [],
            },
        )

    def _write_report(self, run: Run) -> None:
        """`report.md`: every answered turn's report, for people and for coding agents."""
        parts = [
            f"# HALO analysis {run.id}",
            "",
            f"Run {run.id} over {run.traces or 0:,} traces of {self.store.path}, started "
            f"{run.created_at}, model {run.settings.model}.",
            "",
        ]
        for i, turn in enumerate(run.turns):
            report = self.turn_report(run, i)
            if report is None:
                continue
            heading = "Analysis" if i == 0 else f"Follow-up {i}"
            parts += [
                f"## {heading}: {turn.question}",
                "",
                render.to_markdown(report).replace("\n#", "\n##"),
                "",
            ]
        with contextlib.suppress(OSError):
            self.report_path(run).write_text("\n".join(parts), encoding="utf-8")


def _close(store: TraceStore, patience: float) -> bool:
    """Close a run's store; False if it would not close within `patience` seconds. A cancelled engine
    may still have a query running on it in a worker thread: stop that query and try again."""
    deadline = time.monotonic() + patience
    while True:
        try:
            store.close()
            return True
        except duckdb.Error:
            if time.monotonic() > deadline:
                return False
            store.interrupt()
            time.sleep(0.05)


def _history(run: Run, index: int) -> list[dict[str, str]]:
    """The conversation a turn continues: earlier questions and the answers they got, then its question."""
    messages: list[dict[str, str]] = []
    for turn in run.turns[:index]:
        if turn.answer:
            messages += [
                {"role": "user", "content": turn.question},
                {"role": "assistant", "content": turn.answer},
            ]
    messages.append({"role": "user", "content": run.turns[index].question})
    return messages


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


__all__ = ["ACTIVE", "Analyses", "Run", "RunSettings", "RunStatus", "Turn", "agents_of"]
