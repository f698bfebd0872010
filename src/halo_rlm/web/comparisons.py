"""Comparisons started from the app (`halo compare` from the compare page).

Each is recorded in this store's run registry as a run of kind `compare` (so `halo runs` lists it and it
outlives the app), with its compare.json, compare.md and compare.html in the run folder. They run one at
a time in a worker thread, never on the event loop: ingesting trace files into their own store, running
the detectors on a side without a report, recounting every finding on both sides, and the statistics.

Every side is read through a read-only connection (the recount queries of a model's report are untrusted
SQL). A side that is the app's own store, which the app holds open for writing, is compared through a
copy of its traces taken first, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from halo_rlm.compare import Comparison, Side, SideError, compare_stores, resolve_side, write
from halo_rlm.runs import Run, RunError, RunRegistry
from halo_rlm.store import StoreError, TraceStore
from halo_rlm.store import paths as store_paths
from halo_rlm.web.live import Hub

STALE = "the app stopped while it ran; start it again"


class CompareOptions(BaseModel):
    """What the form offers of `halo compare`'s options."""

    by: str | None = Field(None, max_length=200, description="Compare within strata of this (--by)")
    outcome: str | None = Field(None, max_length=200, description="A per-trace outcome attribute (--outcome)")
    lower_is_better: bool = False


class Comparisons:
    """This store's comparisons: the registry's `compare` runs, and the ones the app is running now."""

    def __init__(self, store: TraceStore, registry: RunRegistry, hub: Hub) -> None:
        self.store, self.registry, self.hub = store, registry, hub
        self.stages: dict[str, str] = {}  # run id -> what it is doing now
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._open: dict[str, list[TraceStore]] = {}
        self._lock = threading.Lock()
        self._one_at_a_time: asyncio.Lock | None = None
        self._closing = False
        for run in self.registry.runs(kind="compare"):
            if run.record.source == "web" and run.record.status == "running":
                run.finish("interrupted", STALE)

    # --- reading --------------------------------------------------------------------------------

    def runs(self) -> list[Run]:
        return self.registry.runs(kind="compare")

    def candidates(self) -> list[Run]:
        """The recorded runs a side can be: this store's analyses that name a store."""
        return [r for r in self.registry.runs(kind="analysis") if r.record.store]

    def get(self, ref: str) -> Run | None:
        try:
            run = self.registry.get(ref)
        except RunError:
            return None
        return run if run.record.kind == "compare" else None

    def active(self, run: Run) -> bool:
        return run.id in self._tasks

    def resolve(self, ref: str) -> Side:
        """A side as typed or picked: a run of this store's registry, a store or trace files."""
        ref = ref.strip()
        if not ref:
            raise SideError("choose a run, or type a trace file or store path")
        if ref == "-":
            raise SideError("-: standard input is not available here; give a file path")
        return resolve_side(ref, registries=[self.registry])

    def comparison(self, run: Run) -> Comparison | None:
        path = run.file("compare.json")
        if path is None or not path.exists():
            return None
        try:
            return Comparison.model_validate_json(path.read_bytes())
        except (OSError, ValidationError):
            return None

    @staticmethod
    def sides(run: Run) -> tuple[Side | None, Side | None]:
        saved = run.record.summary.get("sides") or {}
        out: list[Side | None] = []
        for name in ("before", "after"):
            try:
                out.append(Side.model_validate(saved[name]))
            except (KeyError, ValidationError):
                out.append(None)
        return out[0], out[1]

    @staticmethod
    def options(run: Run) -> CompareOptions:
        try:
            return CompareOptions.model_validate(run.record.filters)
        except ValidationError:
            return CompareOptions()

    # --- starting -------------------------------------------------------------------------------

    def start(self, before: Side, after: Side, options: CompareOptions) -> Run:
        run = self.registry.create(
            "compare",
            source="web",
            prompt=f"{before.label} → {after.label}",
            inputs=[before.ref, after.ref],
            filters=options.model_dump(exclude_defaults=True),
            summary={"sides": {"before": before.model_dump(), "after": after.model_dump()}},
        )
        self.stages[run.id] = "waiting for the comparison before it"
        task = asyncio.create_task(self._compare(run, before, after, options), name=f"halo-compare-{run.id}")
        self._tasks[run.id] = task
        task.add_done_callback(lambda _: self._finished(run))
        self._publish(run, "running")
        return run

    async def close(self) -> None:
        """At shutdown: stop the running comparison's queries; the record says the app stopped it."""
        self._closing = True
        with self._lock:
            for stores in self._open.values():
                for store in stores:
                    with contextlib.suppress(Exception):
                        store.interrupt()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- the work -------------------------------------------------------------------------------

    async def _compare(self, run: Run, before: Side, after: Side, options: CompareOptions) -> None:
        if self._one_at_a_time is None:
            self._one_at_a_time = asyncio.Lock()
        try:
            async with self._one_at_a_time:
                comparison = await asyncio.to_thread(self._work, run, before, after, options)
            paths = write(comparison, run.folder)
            for path in paths.values():
                run.add_file(path.name, path)
            counts = ", ".join(f"{n} {v}" for v, n in comparison.verdicts.items() if n)
            run.finish(
                "completed",
                counts or "no failures to compare",
                summary={
                    **run.record.summary,
                    "verdicts": comparison.verdicts,
                    "traces": {"before": comparison.traces_before, "after": comparison.traces_after},
                },
            )
        except asyncio.CancelledError:
            run.finish(
                "interrupted" if self._closing else "cancelled", STALE if self._closing else "cancelled"
            )
        except (SideError, StoreError, OSError, ValueError) as exc:
            run.finish("interrupted" if self._closing else "failed", str(exc))
        except Exception as exc:  # noqa: BLE001 - a comparison's failure is shown on its page, never crashes the app
            run.finish("failed", f"{type(exc).__name__}: {exc}")

    def _stage(self, run: Run, text: str) -> None:
        self.stages[run.id] = text
        self.hub.publish_threadsafe("compare", {"run_id": run.id, "status": "running", "stage": text})

    def _work(self, run: Run, before: Side, after: Side, options: CompareOptions) -> Comparison:
        """In the worker thread: each side's store made ready and opened read-only, then compared."""
        scratch = self.registry.root / "compare-snapshots" / f"{run.id}-{secrets.token_hex(4)}"
        try:
            targets = [
                self._ready(run, side, name, scratch) for name, side in (("before", before), ("after", after))
            ]
            self._stage(run, "comparing (the detectors run on a side without a report)")
            with (
                TraceStore.open(targets[0], read_only=True) as b,
                TraceStore.open(targets[1], read_only=True) as a,
            ):
                with self._lock:
                    self._open[run.id] = [b, a]
                try:
                    return compare_stores(
                        b,
                        a,
                        before.read_report(),
                        after.read_report(),
                        before_label=before.label,
                        after_label=after.label,
                        by=options.by,
                        outcome=options.outcome,
                        outcome_better="lower" if options.lower_is_better else "higher",
                    )
                finally:
                    with self._lock:
                        self._open.pop(run.id, None)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _ready(self, run: Run, side: Side, name: str, scratch: Path) -> str:
        """The store to open read-only for one side: trace files ingested first; the app's own store copied."""
        if side.kind == "files":
            self._stage(run, f"{name}: reading {len(side.files)} trace file{'s' * (len(side.files) != 1)}")
            with TraceStore.open(side.store) as writable:
                report = writable.ingest(side.files)
            if report.inputs and all(i.status == "failed" for i in report.inputs):
                first = report.inputs[0]
                raise SideError(f"{name}: none of the files holds traces ({first.path}: {first.message})")
        if not store_paths.is_url(side.store) and _same_file(side.store, self.store.path):
            self._stage(run, f"{name}: copying the app's own store to read it")
            scratch.mkdir(parents=True, exist_ok=True)
            target = scratch / f"{name}.duckdb"
            with self.store.borrow() as connection:
                connection.copy_traces(None, target, note=f"halo ui compare {run.id}: {self.store.path}")
            return str(target)
        return side.store

    def _finished(self, run: Run) -> None:
        self._tasks.pop(run.id, None)
        self.stages.pop(run.id, None)
        fresh = self.get(run.id) or run
        self._publish(fresh, fresh.record.status)

    def _publish(self, run: Run, status: str) -> None:
        self.hub.publish("compare", {"run_id": run.id, "status": status, "stage": self.stages.get(run.id)})


def _same_file(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def describe(run: Run, comparisons: Comparisons) -> dict[str, Any]:
    """A comparison's record as the JSON twins show it."""
    return {
        **run.record.model_dump(mode="json"),
        "status": "running" if comparisons.active(run) else run.record.status,
        "stage": comparisons.stages.get(run.id),
    }


__all__ = ["CompareOptions", "Comparisons", "describe"]
