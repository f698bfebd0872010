from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own cache folder, so default stores and the remembered store never leak."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("HALO_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def fixtures() -> Path:
    """HALO's real trace files, shared beside the repository (never copied into it)."""
    if not FIXTURES.is_dir():
        pytest.skip("../shared/fixtures is not present")
    return FIXTURES


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store.duckdb"


@pytest.fixture
def child_processes():
    """A function listing the pids of this process's children (sandbox workers still alive)."""

    def list_children() -> list[int]:
        children = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as stat:
                        parent = int(stat.read().rsplit(")", 1)[1].split()[1])
                except OSError:
                    continue  # exited while we looked
                if parent == os.getpid():
                    children.append(int(entry))
        return children

    return list_children


# --- store backends -----------------------------------------------------------------------------
# Store tests run on every backend: DuckDB, and ClickHouse embedded in this process (chdb). chdb
# serves one folder per process, so the test session shares one folder and each store is a database
# of its own in it.

# chdb's runs are slow (seconds per store), so the quick suite runs DuckDB and `-m slow` adds chdb
# (CI runs both).
BACKENDS = ["duckdb", pytest.param("chdb", marks=pytest.mark.slow)]


@pytest.fixture(scope="session")
def chdb_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("chdb", reason="the clickhouse extra is not installed")
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture(scope="session")
def new_store(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Callable[[str], str]:
    """Makes the target of a fresh, empty store on a backend: a DuckDB file, or a chdb database."""
    databases = itertools.count()

    def make(backend: str) -> str:
        if backend == "duckdb":
            return str(tmp_path_factory.mktemp("store") / "store.duckdb")
        folder = request.getfixturevalue("chdb_folder")
        return f"chdb:{folder}?database=test_{next(databases)}"

    return make


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The store backend a test runs on (each test that asks for it runs on every backend)."""
    return request.param
