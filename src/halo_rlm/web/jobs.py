"""Background jobs that fill the store from the app: trace files (by path or uploaded), the example
traces, and Langfuse and Phoenix imports.

Jobs run one at a time in a worker thread (one writer: ingests never contend), report progress to the
pages, can be cancelled, and are listed in `<store>.jobs.json`, so a job the app did not finish shows
as interrupted after a restart and resumes where it stopped: a file ingest finishes a part-read file,
and an import carries on from its last page (its own resume state is beside the store). Keys for
Langfuse and Phoenix come from the environment or the form, and are kept in memory only.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field, ValidationError

from halo_rlm import files
from halo_rlm.sources import LangfuseFilters, LangfuseSource, PhoenixSource, SourceError, run_import
from halo_rlm.store import IngestReport, StoreError, TraceStore, paths
from halo_rlm.utils import now_iso, parse_time
from halo_rlm.web.live import Hub

JobKind = Literal["files", "langfuse", "phoenix"]
JobStatus = Literal["queued", "running", "completed", "failed", "cancelled", "interrupted"]
ACTIVE: set[str] = {"queued", "running"}
PROGRESS_SECONDS = 0.25  # progress reaches the pages at most this often
REJECT_SAMPLES = 20


class Cancelled(Exception):
    """Raised inside a job's progress callback to stop it where it is."""


class InputSummary(BaseModel):
    path: str
    status: str
    spans: int
    rejected: int
    duplicates: int = 0
    message: str | None = None


class Progress(BaseModel):
    bytes_done: int = 0
    bytes_total: int | None = None
    spans: int = 0
    total: int | None = Field(default=None, description="Records the source says it will send, when it says")
    current: str | None = None


class Job(BaseModel):
    id: str
    kind: JobKind
    label: str
    created_at: str
    status: JobStatus = "queued"
    paths: list[str] = Field(default_factory=list, description="Files, resolved, for file jobs")
    uploaded: bool = False
    source: dict[str, Any] = Field(default_factory=dict, description="An import's settings, without keys")
    progress: Progress = Field(default_factory=Progress)
    spans: int = 0
    rejected: int = 0
    duplicates: int = 0
    reject_reasons: dict[str, int] = Field(default_factory=dict)
    reject_samples: list[dict[str, Any]] = Field(default_factory=list)
    inputs: list[InputSummary] = Field(default_factory=list)
    error: str | None = None
    started_at: str | None = None
    finished_at: str | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def share(self) -> float | None:
        """How far along, 0–1, when it can be told."""
        p = self.progress
        if p.bytes_total:
            return min(1.0, p.bytes_done / p.bytes_total)
        if p.total:
            return min(1.0, p.spans / p.total)
        return None


@dataclass
class Secrets:
    """What an import needs besides its settings: kept for the job's life in memory, never saved."""

    public_key: str | None = None
    secret_key: str | None = None
    api_key: str | None = None


class Jobs:
    """Every job of this store, and the worker that runs them."""

    def __init__(self, store: TraceStore, hub: Hub, on_write: Callable[[], None]) -> None:
        self.store, self.hub, self.on_write = store, hub, on_write
        self.path = paths.beside(store.path, ".jobs.json")
        self.uploads = paths.beside(store.path, ".uploads")
        self.jobs: dict[str, Job] = {}
        self._secrets: dict[str, Secrets] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._closing = False
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._load()
        self._worker = threading.Thread(target=self._work, name="halo-ui-jobs", daemon=True)
        self._worker.start()

    # --- records --------------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            saved = orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return
        for item in saved if isinstance(saved, list) else []:
            try:
                job = Job.model_validate(item)
            except ValidationError:
                continue
            if job.active:
                job.status, job.error = "interrupted", "the app stopped before this job finished; resume it"
            self.jobs[job.id] = job
        self._save()

    def _save(self) -> None:
        with self._lock:
            data = [job.model_dump(mode="json") for job in self.jobs.values()]
        temporary = self.path.with_name(self.path.name + ".tmp")
        with contextlib.suppress(OSError):
            temporary.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
            os.replace(temporary, self.path)

    def ordered(self) -> list[Job]:
        return sorted(self.jobs.values(), key=lambda j: j.created_at, reverse=True)

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def _publish(self, job: Job) -> None:
        self.hub.publish_threadsafe("job", {**job.model_dump(mode="json"), "share": job.share})

    # --- adding ---------------------------------------------------------------------------------

    def add_files(self, paths: list[str], *, label: str | None = None, uploaded: bool = False) -> Job:
        """Ingest files already resolved (absolute paths, as the preview showed them)."""
        job = Job(
            id=_new_id(),
            kind="files",
            label=label or _files_label(paths),
            created_at=now_iso(),
            paths=paths,
            uploaded=uploaded,
        )
        return self._add(job, Secrets())

    def add_langfuse(
        self,
        *,
        host: str,
        public_key: str,
        secret_key: str,
        since: str | None,
        until: str | None,
        filters: LangfuseFilters,
    ) -> Job:
        source = {
            "host": host,
            "since": since,
            "until": until,
            "environments": list(filters.environments),
            "trace_name": filters.trace_name,
            "user_id": filters.user_id,
            "session_id": filters.session_id,
            "tags": list(filters.tags),
        }
        job = Job(
            id=_new_id(), kind="langfuse", label=f"Langfuse {host}", created_at=now_iso(), source=source
        )
        return self._add(job, Secrets(public_key=public_key, secret_key=secret_key))

    def add_phoenix(
        self, *, endpoint: str, project: str, api_key: str | None, since: str | None, until: str | None
    ) -> Job:
        source = {"endpoint": endpoint, "project": project, "since": since, "until": until}
        job = Job(
            id=_new_id(),
            kind="phoenix",
            label=f"Phoenix {endpoint} · {project}",
            created_at=now_iso(),
            source=source,
        )
        return self._add(job, Secrets(api_key=api_key))

    def upload_folder(self) -> Path:
        """A fresh folder for one upload (kept until its job has ingested it)."""
        folder = self.uploads / secrets.token_hex(6)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _add(self, job: Job, keys: Secrets) -> Job:
        with self._lock:
            self.jobs[job.id] = job
        self._secrets[job.id] = keys
        self._save()
        self._publish(job)
        self._queue.put(job.id)
        return job

    # --- control --------------------------------------------------------------------------------

    def cancel(self, job: Job) -> None:
        if job.status == "queued":
            job.status, job.finished_at = "cancelled", now_iso()
            self._save()
            self._publish(job)
        event = self._cancel.get(job.id)
        if event is not None:
            event.set()

    def resume(self, job: Job, keys: Secrets | None = None) -> None:
        """Run a job that failed, was cancelled or interrupted again: it carries on where it stopped."""
        if job.active:
            raise StoreError("the job is still running")
        if keys is not None:
            self._secrets[job.id] = keys
        job.status, job.error, job.finished_at = "queued", None, None
        self._save()
        self._publish(job)
        self._queue.put(job.id)

    def close(self) -> None:
        """Stop the running job (it stays resumable: it shows as interrupted) and the worker."""
        self._closing = True
        for event in list(self._cancel.values()):
            event.set()
        self._queue.put(None)
        self._worker.join(60)

    # --- running --------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            job = self.jobs.get(job_id)
            if job is None or job.status != "queued":
                continue
            cancel = self._cancel[job.id] = threading.Event()
            job.status, job.started_at, job.error = "running", now_iso(), None
            job.progress = Progress()
            self._save()
            self._publish(job)
            try:
                if job.kind == "files":
                    self._ingest(job, cancel)
                else:
                    self._import(job, cancel)
                job.status = "completed"
            except Cancelled:
                if self._closing:
                    job.status, job.error = (
                        "interrupted",
                        "the app stopped before this job finished; resume it",
                    )
                else:
                    job.status, job.error = "cancelled", "cancelled from the app"
            except (StoreError, SourceError, files.InputError, OSError, ValueError) as exc:
                job.status, job.error = "failed", str(exc)
            except Exception as exc:  # noqa: BLE001 - a job's failure is shown on the page, never kills the worker
                job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
            finally:
                self._cancel.pop(job.id, None)
                job.finished_at = now_iso()
                if job.status == "completed" and job.uploaded:
                    for path in job.paths:
                        shutil.rmtree(Path(path).parent, ignore_errors=True)
                self._save()
                self._publish(job)
                self.on_write()

    def _ticker(self, job: Job, cancel: threading.Event) -> Callable[[], None]:
        last = [0.0]

        def tick() -> None:
            if cancel.is_set():
                raise Cancelled
            if time.monotonic() - last[0] >= PROGRESS_SECONDS:
                last[0] = time.monotonic()
                self._publish(job)
                self.on_write()

        return tick

    def _ingest(self, job: Job, cancel: threading.Event) -> None:
        inputs = files.resolve(job.paths)
        job.progress.bytes_total = sum(i.size or 0 for i in inputs)
        tick = self._ticker(job, cancel)
        done_before = [0]

        def for_input(inp: files.InputFile) -> Callable[[int, int], None]:
            job.progress.current = inp.path
            base_bytes, base_spans = done_before[0], job.progress.spans

            def update(done: int, spans: int) -> None:
                job.progress.bytes_done, job.progress.spans = base_bytes + done, base_spans + spans
                tick()

            done_before[0] += inp.size or 0
            return update

        with self.store.borrow() as writer:
            report = writer.ingest(job.paths, progress=for_input)
            samples = writer.rejects(limit=REJECT_SAMPLES * 20)
        self._record(job, report, samples)

    def _record(self, job: Job, report: IngestReport, samples: list[dict[str, Any]]) -> None:
        job.spans, job.rejected, job.duplicates = report.spans, report.rejected, report.duplicates
        job.reject_reasons = dict(sorted(report.reject_reasons.items(), key=lambda kv: -kv[1]))
        job.inputs = [
            InputSummary(
                path=i.path,
                status=i.status,
                spans=i.spans,
                rejected=i.rejected,
                duplicates=i.duplicates,
                message=i.message,
            )
            for i in report.inputs
        ]
        mine = {i.path for i in report.inputs}
        job.reject_samples = [r for r in samples if r.get("path") in mine][:REJECT_SAMPLES]
        job.progress.bytes_done = job.progress.bytes_total or job.progress.bytes_done
        failed = [i for i in report.inputs if i.status == "failed"]
        if failed and len(failed) == len(report.inputs):
            raise StoreError("; ".join(f"{Path(i.path).name}: {i.message}" for i in failed))

    def _import(self, job: Job, cancel: threading.Event) -> None:
        keys = self._secrets.get(job.id) or Secrets()
        settings = job.source
        since, until = parse_time(settings.get("since")), parse_time(settings.get("until"))
        source: LangfuseSource | PhoenixSource
        if job.kind == "langfuse":
            public = keys.public_key or os.environ.get("LANGFUSE_PUBLIC_KEY")
            secret = keys.secret_key or os.environ.get("LANGFUSE_SECRET_KEY")
            if not public or not secret:
                raise SourceError(
                    "Langfuse keys missing: type them in, or set LANGFUSE_PUBLIC_KEY and "
                    "LANGFUSE_SECRET_KEY where the app runs"
                )
            filters = LangfuseFilters(
                environments=tuple(settings.get("environments") or ()),
                trace_name=settings.get("trace_name"),
                user_id=settings.get("user_id"),
                session_id=settings.get("session_id"),
                tags=tuple(settings.get("tags") or ()),
            )
            source = LangfuseSource(settings["host"], public, secret, filters)
        else:
            api_key = keys.api_key or os.environ.get("PHOENIX_API_KEY")
            source = PhoenixSource(settings["endpoint"], settings.get("project") or "default", api_key)
        tick = self._ticker(job, cancel)

        def progress(spans: int, total: int | None) -> None:
            job.progress.spans, job.progress.total = spans, total
            tick()

        try:
            report = run_import(source, self.store.path, since=since, until=until, progress=progress)
        finally:
            source.close()
        job.spans, job.duplicates = report.spans, report.duplicates
        job.rejected, job.reject_reasons = report.skipped, dict(report.skip_reasons)
        job.source = {**settings, "api": report.api, "resumed": report.resumed}


def resolve_paths(text: str) -> tuple[list[files.InputFile], list[str]]:
    """The files a path field names (one path, directory or glob per line), resolved, and a message
    for each line that names none. Nothing is read: only names and sizes."""
    found: dict[str, files.InputFile] = {}
    problems: list[str] = []
    for line in (part.strip() for part in text.splitlines()):
        if not line:
            continue
        if line == "-":
            problems.append("-: standard input is not available here; give a file path")
            continue
        try:
            for inp in files.resolve([os.path.expanduser(line)]):
                found[inp.path] = inp
        except files.InputError as exc:
            problems.append(str(exc))
    return list(found.values()), problems


def _files_label(paths: list[str]) -> str:
    names = [Path(p).name for p in paths]
    return names[0] if len(names) == 1 else f"{names[0]} and {len(names) - 1} more"


def _new_id() -> str:
    return secrets.token_hex(5)


__all__ = ["ACTIVE", "Cancelled", "Job", "JobKind", "JobStatus", "Jobs", "Secrets", "resolve_paths"]
