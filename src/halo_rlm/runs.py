"""The run registry: every analysis, comparison, loop and evaluation, recorded beside its store.

A registry is a folder (`<store>.runs/` next to `<store>.duckdb`, or one shared folder in HALO's cache for
the stores it placed there) with one folder per run:

    <id>/run.json       the record: what was asked, over what, with which models and budgets, how it ended
    <id>/events.jsonl   the event log, one JSON object per line
    <id>/...            the run's files (report.md/json/html, the root agent's conversation, a loop's rounds)

Records are written whole to a temporary file and renamed into place, so a reader (the CLI, the web
app) never sees half a record, and runs can be recorded by several processes at once. Ids are short
(eight characters) and any unambiguous prefix names a run, as with git. Secrets never get here:
`create` refuses values under secret-looking keys and scrubs key-shaped text.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field

from halo_rlm.scrub import SECRET_KEY, scrub_text
from halo_rlm.store import paths

Kind = Literal["analysis", "compare", "loop", "eval"]
Status = Literal["running", "completed", "incomplete", "failed", "cancelled", "interrupted"]
FINISHED: frozenset[str] = frozenset({"completed", "incomplete", "failed", "cancelled", "interrupted"})
ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford's base 32: no i, l, o, u to misread
ID_LENGTH = 8


class RunError(Exception):
    """A run that cannot be found, named ambiguously, or recorded."""


class Turn(BaseModel):
    """One follow-up question and its answer (`halo ask`)."""

    question: str
    answer: str = ""
    at: str
    status: Status = "running"
    reason: str = ""


class RunRecord(BaseModel):
    id: str
    kind: Kind
    created_at: str
    finished_at: str | None = None
    status: Status = "running"
    reason: str = Field("", description="Why it ended: a final answer, a budget, an error, Ctrl-C")
    prompt: str | None = None
    inputs: list[str] = Field(default_factory=list)
    filters: dict[str, Any] = Field(default_factory=dict)
    store: str | None = None
    models: dict[str, str] = Field(default_factory=dict, description="Model per role (root, synthesis, ...)")
    budgets: dict[str, Any] = Field(default_factory=dict)
    usage: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict, description="Name -> path relative to the run folder")
    turns: list[Turn] = Field(default_factory=list)
    summary: dict[str, Any] = Field(
        default_factory=dict, description="Kind-specific results (a loop's rounds, ...)"
    )
    source: str = Field("", description="What recorded it: cli, python, web")


class Run:
    """A recorded run: its record, its folder, and the methods that keep both up to date."""

    def __init__(self, registry: RunRegistry, record: RunRecord) -> None:
        self.registry = registry
        self.record = record
        self.folder = registry.root / record.id
        self._lock = threading.Lock()

    @property
    def id(self) -> str:
        return self.record.id

    def path(self, name: str) -> Path:
        """Where the run's file `name` lives (or will)."""
        return self.folder / name

    def save(self) -> None:
        with self._lock:
            _write_atomic(self.folder / "run.json", self.record.model_dump_json(indent=2).encode() + b"\n")

    def update(self, **fields: Any) -> None:
        for name, value in fields.items():
            setattr(self.record, name, _scrubbed(value))
        self.save()

    def log(self, event: Mapping[str, Any] | BaseModel) -> None:
        """Append one event to the run's event log."""
        data = (
            event.model_dump(mode="json", exclude_none=True) if isinstance(event, BaseModel) else dict(event)
        )
        line = orjson.dumps(_scrubbed(data), default=str) + b"\n"
        with self._lock, open(self.folder / "events.jsonl", "ab") as log:
            log.write(line)

    def events(self) -> Iterator[dict[str, Any]]:
        path = self.folder / "events.jsonl"
        if not path.exists():
            return
        with open(path, "rb") as log:
            for line in log:
                if line.strip():
                    yield orjson.loads(line)

    def add_file(self, name: str, path: Path) -> None:
        """Record one of the run's files (a path inside the run folder, or anywhere else)."""
        try:
            shown = str(path.resolve().relative_to(self.folder.resolve()))
        except ValueError:
            shown = str(path.resolve())
        self.record.files[name] = shown
        self.save()

    def file(self, name: str) -> Path | None:
        shown = self.record.files.get(name)
        return None if shown is None else self.folder / shown

    def finish(self, status: Status, reason: str = "", **fields: Any) -> None:
        if status not in FINISHED:
            raise ValueError(f"{status!r} is not a finished status")
        self.update(status=status, reason=reason, finished_at=now(), **fields)


class RunRegistry:
    """The runs recorded in one folder."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @classmethod
    def beside(cls, store: str | Path | None) -> RunRegistry:
        """The registry of the runs on `store`: `x.duckdb` -> `x.runs/`; for stores in HALO's cache, and
        for runs on no one store (None), the shared registry in the cache (`store.paths.runs_for`)."""
        return cls(paths.runs_for(store))

    def create(self, kind: Kind, *, source: str = "python", **fields: Any) -> Run:
        self.root.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            run_id = "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))
            try:
                (self.root / run_id).mkdir()
            except FileExistsError:
                continue
            break
        else:  # pragma: no cover - 32**8 ids
            raise RunError(f"{self.root}: could not find a free run id")
        record = RunRecord(
            id=run_id,
            kind=kind,
            created_at=now(),
            source=source,
            **{k: _scrubbed(v) for k, v in fields.items()},
        )
        run = Run(self, record)
        run.save()
        return run

    def get(self, ref: str) -> Run:
        """The run named by `ref`: its id or an unambiguous prefix of it."""
        ref = ref.strip().lower()
        if not ref or not set(ref) <= set(ID_ALPHABET):
            raise RunError(f"{ref!r} is not a run id (ids are {ID_LENGTH} characters of {ID_ALPHABET})")
        matches = sorted(p.name for p in self._folders() if p.name.startswith(ref))
        if not matches:
            raise RunError(f"no run {ref!r} in {self.root}; `halo runs` lists them")
        if len(matches) > 1:
            raise RunError(
                f"run id {ref!r} is ambiguous: it starts {', '.join(matches[:5])}"
                f"{' and more' if len(matches) > 5 else ''}; give more characters"
            )
        return self._load(self.root / matches[0])

    def runs(self, *, kind: Kind | None = None, limit: int | None = None) -> list[Run]:
        """Runs, newest first."""
        runs = []
        for folder in self._folders():
            try:
                run = self._load(folder)
            except RunError:
                continue  # a run being created, or a damaged record: listing the rest matters more
            if kind is None or run.record.kind == kind:
                runs.append(run)
        runs.sort(key=lambda r: (r.record.created_at, r.id), reverse=True)
        return runs[:limit] if limit is not None else runs

    def shortest_prefixes(self, runs: list[Run], minimum: int = 4) -> dict[str, str]:
        """For display: each run's shortest unambiguous id prefix (at least `minimum` characters)."""
        ids = sorted(p.name for p in self._folders())
        shortest = {}
        for run in runs:
            length = minimum
            while length < ID_LENGTH and sum(i.startswith(run.id[:length]) for i in ids) > 1:
                length += 1
            shortest[run.id] = run.id[:length]
        return shortest

    def _folders(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [p for p in self.root.iterdir() if p.is_dir() and len(p.name) == ID_LENGTH]

    def _load(self, folder: Path) -> Run:
        try:
            record = RunRecord.model_validate_json((folder / "run.json").read_bytes())
        except (OSError, ValueError) as exc:
            raise RunError(f"{folder / 'run.json'}: unreadable run record ({exc})") from exc
        return Run(self, record)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _scrubbed(value: Any, key: str = "") -> Any:
    """`value` with secret-keyed entries dropped and key-shaped text redacted."""
    if key and SECRET_KEY.search(key) and value not in (None, "", {}, []):
        return "[REDACTED]"
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        return {k: _scrubbed(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrubbed(v) for v in value]
    return value


__all__ = ["FINISHED", "Kind", "Run", "RunError", "RunRecord", "RunRegistry", "Status", "Turn", "now"]
