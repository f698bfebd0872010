"""Where stores live when no `--store` is given, in one place: the user cache (`utils.cache_dir`),
one store per set of input files, per imported source and project, and per collector port; and the
memory of the store last written from a working directory, which query commands use when given
nothing.

The memory is kept per working directory, so an ingest in one project never changes what `halo stats`
shows in another; a directory without one uses the nearest parent directory's (as git finds its
repository). Only an ingest that stored something is remembered: a failed one leaves the memory as
it was.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import orjson

from halo_rlm import files
from halo_rlm.store.base import BACKENDS
from halo_rlm.store.results import IngestReport
from halo_rlm.store.schema import SCHEMA_VERSION
from halo_rlm.utils import cache_dir

__all__ = [
    "Remembered",
    "beside",
    "for_app",
    "for_collector",
    "for_inputs",
    "for_source",
    "is_url",
    "last",
    "remember",
    "remember_ingest",
    "runs_for",
]


def for_inputs(inputs: Sequence[files.InputFile]) -> Path:
    """The store of a set of trace files: keyed by their paths, sizes and mtimes, so a second run over
    the same files reuses it."""
    return _stores() / f"{files.inputs_key(inputs, SCHEMA_VERSION)}.duckdb"


def for_source(kind: str, *identity: str) -> Path:
    """The store an import writes to: one per source and project."""
    digest = hashlib.sha256("\0".join(identity).encode()).hexdigest()[:12]
    return _stores() / f"{kind}-{digest}.duckdb"


def for_collector(port: int) -> Path:
    """The store a collector on `port` writes to."""
    return _stores() / f"collect-{port}.duckdb"


def for_app() -> Path:
    """The store `halo ui` opens when given neither a store nor trace files, and none is remembered."""
    return _stores() / "app.duckdb"


def runs_for(store: str | Path | None) -> Path:
    """Where the runs on a store are recorded (`runs.RunRegistry`): beside a store the user placed
    (`traces.duckdb` -> `traces.runs/`); one shared folder in the cache for the stores HALO placed
    there itself, for stores named by a URL, and for runs on no one store (loops, evaluations)."""
    if store is None or is_url(str(store)) or Path(store).resolve().parent == _stores().resolve():
        return cache_dir() / "runs"
    path = Path(store)
    return path.with_name(path.stem + ".runs")


@dataclass(frozen=True)
class Remembered:
    """The store query commands read when given nothing, and the directory whose memory it is."""

    store: str
    directory: str


def remember(store: str | Path, *, cwd: str | Path | None = None) -> None:
    """Remember `store` for query commands run in `cwd` (default: the working directory) or below
    it. Remembering is a convenience: a failure to write it is ignored. A ClickHouse URL is kept
    without its password."""
    try:
        directory = _directory(cwd)
        memory = _memory_file(directory)
        memory.parent.mkdir(parents=True, exist_ok=True)
        record = {"directory": str(directory), "store": _absolute(str(store))}
        scratch = memory.with_name(f"{memory.name}.{os.getpid()}")
        scratch.write_bytes(orjson.dumps(record))
        scratch.replace(memory)  # atomic: a concurrent reader sees the old memory or the new one
    except OSError:
        pass


def remember_ingest(report: IngestReport, *, cwd: str | Path | None = None) -> bool:
    """Remember the store an ingest wrote, unless the ingest failed (every input refused, or none
    given): a failed ingest must not change what query commands read. True when remembered."""
    if not report.inputs or all(item.status == "failed" for item in report.inputs):
        return False
    remember(report.store, cwd=cwd)
    return True


def last(*, cwd: str | Path | None = None) -> Remembered | None:
    """The store remembered for `cwd` (default: the working directory), else for its nearest parent
    that has one; None when there is none or the remembered store is gone (a store named by a URL is
    checked when it is opened)."""
    try:
        directory = _directory(cwd)
    except OSError:  # the working directory was deleted
        return None
    for folder in (directory, *directory.parents):
        try:
            record = orjson.loads(_memory_file(folder).read_bytes())
            store, remembered_for = str(record["store"]), str(record["directory"])
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
            continue
        if remembered_for == str(folder) and (is_url(store) or Path(store).exists()):
            return Remembered(store=store, directory=remembered_for)
    return None


def beside(store: str | Path, suffix: str) -> Path:
    """A file or folder that belongs to `store` (`.imports.json`: where imports into it keep their
    place; `.jobs.json`, `.uploads`: the app's jobs and uploaded files): beside a DuckDB file; in the
    cache for a store named by a URL (keyed by the URL without its password)."""
    target = str(store)
    if not is_url(target):
        return Path(f"{target}{suffix}")
    digest = hashlib.sha256(_absolute(target).encode()).hexdigest()[:12]
    return _stores() / f"{digest}{suffix}"


def is_url(target: str) -> bool:
    """True for a store named by a URL (`chdb:…`, `clickhouse://…`), false for a DuckDB file path."""
    scheme = target.split(":", 1)[0].lower() if ":" in target else ""
    return scheme in BACKENDS and not Path(target).exists()


def _absolute(target: str) -> str:
    """A store as remembered: a file path made absolute; a URL without its password (a chdb folder
    made absolute)."""
    if not is_url(target):
        return str(Path(target).resolve())
    parts = urlsplit(target)
    if parts.scheme.lower() == "chdb":
        folder, _, options = target[len("chdb:") :].partition("?")
        return f"chdb:{Path(folder).expanduser().resolve()}" + (f"?{options}" if options else "")
    host = parts.netloc.rsplit("@", 1)[-1]
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=user + host))


def _directory(cwd: str | Path | None) -> Path:
    return Path(cwd if cwd is not None else Path.cwd()).resolve()


def _memory_file(directory: Path) -> Path:
    return cache_dir() / "last-stores" / hashlib.sha256(str(directory).encode()).hexdigest()[:32]


def _stores() -> Path:
    return cache_dir() / "stores"
