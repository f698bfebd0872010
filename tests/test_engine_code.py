"""run_code and the repository tools, through the engine against the scripted model server."""

from __future__ import annotations

import asyncio
import collections
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from scripted_llm import Call, ChatRequest, ScriptedLLM, ServerError, Text, ToolCalls

from halo_rlm import sandbox
from halo_rlm.engine import AgentOutputItem, EngineConfig, stream_engine_async
from halo_rlm.report import Report
from halo_rlm.simulate import simulate
from halo_rlm.store import TraceStore
from halo_rlm.utils import RetryPolicy

NO_WAIT = RetryPolicy(sleep=lambda seconds: None)  # retries in these tests do not wait

pytestmark = pytest.mark.skipif(sandbox.available() is not None, reason=f"no sandbox: {sandbox.available()}")


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("code")
    truth = simulate(folder / "t.jsonl", traces=150, seed=9)
    with TraceStore.open(folder / "s.duckdb") as store:
        store.ingest([str(truth.traces_path)])
    return folder / "s.duckdb"


@pytest.fixture
def store(store_path: Path) -> Iterator[TraceStore]:
    with TraceStore.open(store_path, read_only=True) as read_only:
        yield read_only


@pytest.fixture(scope="module")
def any_store(
    backend: str, new_store: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TraceStore]:
    """The same simulated traces on each backend (DuckDB, chdb): the host functions run on both."""
    truth = simulate(tmp_path_factory.mktemp("code") / "t.jsonl", traces=150, seed=9)
    target = new_store(backend)
    with TraceStore.open(target) as writable:
        writable.ingest([str(truth.traces_path)])
    with TraceStore.open(target, read_only=True) as read_only:
        yield read_only


# A query the read-only store refuses because it reads a file, in each dialect.
FILE_READ = {
    "duckdb": ("SELECT * FROM read_text('/etc/passwd')", "disabled"),
    "clickhouse": ("SELECT * FROM file('/etc/passwd')", "table function file() is not allowed"),
}


@pytest.fixture(autouse=True)
def quiet_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def run(responder: Any, store: TraceStore, **overrides: Any) -> tuple[list[Any], ScriptedLLM]:
    async def collect(llm: ScriptedLLM) -> list[Any]:
        cfg = EngineConfig(
            base_url=llm.base_url, api_key="k", model="scripted-model", retry=NO_WAIT, **overrides
        )
        return [e async for e in stream_engine_async("Find failures.", cfg, store=store)]

    with ScriptedLLM(responder, strict=False) as llm:
        return asyncio.run(collect(llm)), llm


def code_results(events: list[Any]) -> list[dict[str, Any]]:
    return [
        json.loads(e.item.content)
        for e in events
        if isinstance(e, AgentOutputItem) and e.item.name == "run_code"
    ]


def report_of(events: list[Any]) -> Report:
    assert events[-1].final and events[-1].report is not None
    return events[-1].report


def finish(answer: str = "# Report") -> ToolCalls:
    return ToolCalls([Call("final_answer", {"answer": answer, "findings": []})])


def scripted_code(*snippets: str) -> Any:
    def responder(request: ChatRequest) -> Any:
        if request.model == "cheap" or "compress" in request.system_text:
            prompt = request.last_user_text
            if "fail" in prompt:
                return ServerError(500)
            return Text(f"summary of {prompt[:20]}")
        done = len(request.tool_results)
        return ToolCalls([Call("run_code", {"code": snippets[done]})]) if done < len(snippets) else finish()

    return responder


def test_host_functions_reach_the_store_and_state_persists(any_store: TraceStore) -> None:
    store = any_store
    file_read, refused = FILE_READ[store.dialect.name]
    events, _ = run(
        scripted_code(
            "rows = traces(limit=500, has_errors=True)\nerrors = spans(status='ERROR', kind='tool', limit=5000)\n"
            "from collections import Counter\nby_tool = Counter(s['tool_name'] for s in errors)\nlen(rows)",
            "print(by_tool.most_common(1)[0][0])\n"
            "sql('SELECT count(*) AS n FROM traces WHERE has_errors')[0]['n']",
            "first = rows[0]['trace_id']\nt = trace(first)\nhits = search('(?i)error', trace_id=first)\n"
            "[len(t['spans']) > 0, t['trace_id'] == first, len(hits) > 0]",
            f"sql({file_read!r})",
        ),
        store,
    )
    results = code_results(events)
    error_traces = store.count_traces(__import__("halo_rlm").TraceFilters(has_errors=True))
    failed = store.spans(status="ERROR", kind="TOOL", limit=5000)
    top_tool = collections.Counter(s["tool_name"] for s in failed).most_common(1)[0][0]
    assert results[0] == {
        "ok": True,
        "value": str(error_traces),
        "duration_ms": results[0]["duration_ms"],
        "host_calls": results[0]["host_calls"],
    }
    assert results[1]["stdout"].strip() == top_tool and results[1]["value"] == str(error_traces)
    assert results[2]["value"] == "[True, True, True]"
    assert not results[3]["ok"] and refused in results[3]["error"]


def test_llm_calls_from_code_are_batched_capped_accounted_and_streamed(store: TraceStore) -> None:
    events, _ = run(
        scripted_code(
            "answers = llm_query_batched([f'trace {i}' for i in range(12)] + ['this one will fail'])\n"
            "[a.startswith('ERROR') for a in answers].count(True), answers[3]",
            "llm_query_batched(['x'] * 51)",
            "llm_query('one more')",
        ),
        store,
        synthesis_model="cheap",
    )
    results = code_results(events)
    assert results[0]["value"] == "(1, 'summary of trace 3')"  # order kept, one failure returned as a value
    assert not results[1]["ok"] and "at most 50 prompts" in results[1]["error"]
    assert results[2]["value"] == "'summary of one more'"
    code_calls = [e for e in events if isinstance(e, AgentOutputItem) and e.item.name == "llm_query"]
    assert len(code_calls) == 13 and all(e.agent_name == "root" and e.usage is not None for e in code_calls)
    usage = report_of(events).usage
    assert usage is not None and usage.models["cheap"].calls == 13


def test_llm_calls_from_code_stop_at_the_run_cap(store: TraceStore) -> None:
    events, _ = run(
        scripted_code("for i in range(10):\n    llm_query(str(i))"),
        store,
        synthesis_model="cheap",
        max_code_llm_calls=3,
    )
    result = code_results(events)[0]
    assert not result["ok"] and "capped at 3 per run" in result["error"]


def test_rlm_query_spawns_a_subagent_when_depth_allows(store: TraceStore) -> None:
    def responder(request: ChatRequest) -> Any:
        if "You are a sub-agent" in request.system_text:
            return Text("Sub-agent says: lookup_order.")
        if not request.tool_results:
            return ToolCalls([Call("run_code", {"code": "rlm_query('Which tool fails most?')"})])
        return finish()

    events, _ = run(responder, store)
    assert code_results(events)[0]["value"] == "'Sub-agent says: lookup_order.'"
    root = next(e for e in events if isinstance(e, AgentOutputItem) and e.agent_name == "root")
    assert any(
        e.depth == 1 and e.parent_agent_id == root.agent_id for e in events if isinstance(e, AgentOutputItem)
    )


def test_escapes_through_run_code_are_contained(store: TraceStore) -> None:
    events, _ = run(
        scripted_code(
            "import os\nos.environ['OPENAI_API_KEY']",
            "open('/etc/passwd').read()",
            "traces.__globals__",
            "while True:\n    pass",
        ),
        store,
        code_timeout=2,
    )
    results = code_results(events)
    assert [r["ok"] for r in results] == [False, False, False, False]
    assert "timed out" in results[3]["error"]


def test_without_a_sandbox_run_code_is_not_offered(
    store: TraceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox, "available", lambda: "pydantic-monty is not installed")
    offered: list[list[str]] = []

    def responder(request: ChatRequest) -> Any:
        offered.append(request.tool_names)
        return finish()

    events, _ = run(responder, store)
    assert "run_code" not in offered[0]
    assert report_of(events).notes.count("run_code is not offered: pydantic-monty is not installed") == 1


# --- repository tools -----------------------------------------------------------------------


@pytest.fixture
def agent_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "agent"
    (repo / "tools").mkdir(parents=True)
    (repo / "tools" / "orders.py").write_text(
        "def lookup_order(order_id, region):\n"
        "    order = db.get(order_id, region)\n"
        "    if order is None:\n"
        "        raise LookupError(f'Order {order_id} not found in region {region}')\n"
        "    return order\n"
    )
    (repo / ".env").write_text("OPENAI_API_KEY=sk-secret\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@e", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "tools"], check=True)
    subprocess.run([*git, "commit", "-qm", "orders tool"], check=True)
    return repo


def test_repo_tools_let_the_report_cite_path_and_line(
    store: TraceStore, agent_repo: Path, tmp_path: Path
) -> None:
    def responder(request: ChatRequest) -> Any:
        results = request.tool_results
        if not results:
            return ToolCalls(
                [
                    Call("grep_files", {"regex_pattern": "not found in region", "fixed_string": True}),
                    Call("read_file", {"path": ".env"}),
                    Call("git_log", {"max_commits": 5}),
                    Call("read_file", {"path": "../../etc/passwd"}),
                ]
            )
        grep = json.loads(results[0]["content"])
        hit = grep["matches"][0]
        cite = f"{hit['path']}:{hit['line']}"
        return finish(
            f"# Report\n\n`lookup_order` raises on missing orders at {cite}; return found=false instead."
        )

    _, llm = run(responder, store, repo_path=agent_repo, out_dir=tmp_path / "out")
    tools_offered = llm.chat_requests[0].tool_names
    assert {"view_repo_tree", "glob_files", "grep_files", "read_file", "git_log", "git_blame"} <= set(
        tools_offered
    )
    second = llm.chat_requests[1].tool_results
    assert second[1]["content"].startswith("ERROR:") and "sk-secret" not in second[1]["content"]
    assert json.loads(second[2]["content"])["commits"][0]["subject"] == "orders tool"
    assert second[3]["content"].startswith("ERROR:")
    assert "tools/orders.py:4" in (tmp_path / "out" / "report.md").read_text()
    assert "path:line" in llm.chat_requests[0].system_text
