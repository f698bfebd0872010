"""The run registry: records beside the store, short ids found by prefix, event logs, no secrets on disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from halo_rlm.runs import ID_LENGTH, RunError, RunRegistry
from halo_rlm.utils import cache_dir

KEY = "sk-proj-" + "a1B2c3D4" * 4


def test_a_run_is_recorded_beside_its_store_and_found_by_prefix(tmp_path: Path) -> None:
    registry = RunRegistry.beside(tmp_path / "traces.duckdb")
    assert registry.root == tmp_path / "traces.runs"
    assert RunRegistry.beside(None).root == cache_dir() / "runs"  # loops, evals, stores HALO placed
    assert RunRegistry.beside(cache_dir() / "stores" / "abc.duckdb").root == cache_dir() / "runs"
    run = registry.create(
        "analysis",
        prompt="Why do refunds fail?",
        inputs=["traces.jsonl"],
        store=str(tmp_path / "traces.duckdb"),
        models={"root": "gpt-5.4-mini"},
        budgets={"max_turns": 20, "max_cost": 1.5},
        source="cli",
    )
    assert len(run.id) == ID_LENGTH and (registry.root / run.id / "run.json").exists()
    run.log({"type": "started"})
    run.log({"type": "tool", "name": "count_traces"})
    (run.folder / "report.md").write_text("# Report\n")
    run.add_file("report.md", run.folder / "report.md")
    run.finish("completed", "final answer", usage={"tokens": 1200, "cost_usd": 0.01})

    again = registry.get(run.id[:3])
    assert again.record.status == "completed" and again.record.reason == "final answer"
    assert again.record.prompt == "Why do refunds fail?" and again.record.budgets["max_cost"] == 1.5
    assert again.file("report.md").read_text() == "# Report\n"
    assert [e["type"] for e in again.events()] == ["started", "tool"]
    assert again.record.finished_at is not None and again.record.source == "cli"


def test_ambiguous_and_unknown_prefixes_say_what_to_do(tmp_path: Path) -> None:
    registry = RunRegistry(tmp_path / "runs")
    runs = [registry.create("analysis") for _ in range(40)]  # 40 ids over 32 first letters: some share one
    first = {}
    for run in runs:
        first.setdefault(run.id[0], []).append(run.id)
    shared = next(ids for ids in first.values() if len(ids) > 1)
    with pytest.raises(RunError, match=r"ambiguous.*give more characters"):
        registry.get(shared[0][0])
    assert registry.get(shared[0]).id == shared[0]
    with pytest.raises(RunError, match=r"no run 'zzzzzzzz'.*halo runs"):
        registry.get("zzzzzzzz")
    with pytest.raises(RunError, match="not a run id"):
        registry.get("../etc")
    prefixes = registry.shortest_prefixes(runs)
    assert all(registry.get(prefixes[r.id]).id == r.id for r in runs)


def test_runs_are_listed_newest_first_and_filtered_by_kind(tmp_path: Path) -> None:
    registry = RunRegistry(tmp_path / "runs")
    made = []
    for i, kind in enumerate(["analysis", "loop", "analysis"]):
        run = registry.create(kind)
        run.update(created_at=f"2026-05-0{i + 1}T00:00:00Z")
        made.append(run.id)
    (registry.root / "broken00").mkdir()  # a damaged record does not hide the others
    (registry.root / "broken00" / "run.json").write_text("{not json")
    assert [r.id for r in registry.runs()] == made[::-1]
    assert [r.id for r in registry.runs(kind="analysis", limit=1)] == [made[2]]
    assert RunRegistry(tmp_path / "missing").runs() == []


def test_secrets_never_reach_the_registry(tmp_path: Path) -> None:
    registry = RunRegistry(tmp_path / "runs")
    run = registry.create(
        "analysis",
        prompt=f"use key {KEY} please",
        budgets={"api_key": KEY, "headers": {"Authorization": "Bearer abcdefgh12345"}},
    )
    run.log({"type": "request", "note": f"Authorization: Bearer {KEY}"})
    text = "".join(p.read_text() for p in run.folder.iterdir())
    assert KEY not in text and "abcdefgh12345" not in text
    assert registry.get(run.id).record.budgets["api_key"] == "[REDACTED]"


def test_processes_record_runs_at_once_without_clashing(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    code = (
        "import sys; from halo_rlm.runs import RunRegistry\n"
        "r = RunRegistry(sys.argv[1])\n"
        "for i in range(25):\n"
        "    run = r.create('analysis', prompt=str(i)); run.log({'i': i}); run.finish('completed')\n"
    )
    workers = [subprocess.Popen([sys.executable, "-c", code, str(root)]) for _ in range(4)]
    assert all(w.wait(timeout=120) == 0 for w in workers)
    runs = RunRegistry(root).runs()
    assert len(runs) == 100 and len({r.id for r in runs}) == 100
    assert all(r.record.status == "completed" for r in runs)
    assert not list(root.glob("*/.*tmp"))
    assert json.loads((runs[0].folder / "run.json").read_text())["kind"] == "analysis"
