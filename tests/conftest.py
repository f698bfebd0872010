from __future__ import annotations

import os
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
