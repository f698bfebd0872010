"""Where stores live when no `--store` is given, in one place: the user cache (`utils.cache_dir`),
one store per set of input files, per imported source and project, and per collector port; and the
memory of the store the last ingest wrote, which query commands use when given nothing."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from halo_rlm import files
from halo_rlm.store.schema import SCHEMA_VERSION
from halo_rlm.utils import cache_dir

__all__ = ["for_collector", "for_inputs", "for_source", "last", "remember", "runs_for"]


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


def runs_for(store: str | Path | None) -> Path:
    """Where the runs on a store are recorded (`runs.RunRegistry`): beside a store the user placed
    (`traces.duckdb` -> `traces.runs/`); one shared folder in the cache for the stores HALO placed
    there itself, and for runs on no one store (loops, evaluations)."""
    if store is None or Path(store).resolve().parent == _stores().resolve():
        return cache_dir() / "runs"
    path = Path(store)
    return path.with_name(path.stem + ".runs")


def remember(path: str | Path) -> None:
    """Remember the store an ingest or import wrote, for query commands given no store. Remembering is
    a convenience: a failure to write it is ignored."""
    try:
        _last_file().parent.mkdir(parents=True, exist_ok=True)
        _last_file().write_text(str(Path(path).resolve()))
    except OSError:
        pass


def last() -> str | None:
    """The remembered store, if it still exists."""
    try:
        remembered = _last_file().read_text().strip()
    except OSError:
        return None
    return remembered if remembered and Path(remembered).exists() else None


def _stores() -> Path:
    return cache_dir() / "stores"


def _last_file() -> Path:
    return cache_dir() / "last-store"
