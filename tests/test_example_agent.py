"""examples/openai-agents/agent.py against the scripted model server: the traces it writes (or sends to
`halo collect`) load into a store with the agent, its model calls and its tool calls intact."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from scripted_llm import Call, Script, Text, ToolCalls, Usage, scripted_llm  # noqa: F401  (a fixture)

from halo_rlm.collect import serve
from halo_rlm.store import TraceStore

pytest.importorskip("agents", reason="the agents extra is not installed")
pytest.importorskip("openinference.instrumentation.openai_agents", reason="the agents extra is not installed")

ROOT = Path(__file__).resolve().parents[1]
AGENT = ROOT / "examples" / "openai-agents" / "agent.py"
API_KEY = "sk-test-" + "k3y" * 10
WHERE = "Where is my order ORD-1001?"
REFUND = "My monitor (order ORD-1002) arrived cracked. I want my money back."
# Per question: the model's replies (tool calls, then the answer) and the tool calls' outcomes. The
# refund of $329 makes `issue_refund` fail.
REPLIES = {
    WHERE: [
        ToolCalls([Call("lookup_order", {"order_id": "ORD-1001"})], usage=Usage(210, 18)),
        Text("Your USB-C dock has shipped.", usage=Usage(260, 9)),
    ],
    REFUND: [
        ToolCalls([Call("lookup_order", {"order_id": "ORD-1002"})], usage=Usage(220, 18)),
        ToolCalls([Call("issue_refund", {"order_id": "ORD-1002", "amount": 329.0})], usage=Usage(300, 22)),
        Text("Sorry, the refund did not go through; please try again later.", usage=Usage(350, 14)),
    ],
}
TOOL_OUTCOMES = {WHERE: [("lookup_order", "OK")], REFUND: [("lookup_order", "OK"), ("issue_refund", "ERROR")]}


def run_agent(base_url: str, traces: str, *questions: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(AGENT),
            "--base-url",
            base_url,
            "--model",
            "scripted-model",
            "--api-key",
            API_KEY,
            "--traces",
            traces,
            *questions,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        # (a shell that turned the SDK's tracing off, as some guides advise, would leave nothing to record)
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "OPENAI_AGENTS_DISABLE_TRACING": "0"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "has shipped" in result.stdout or "refund did not go through" in result.stdout


def check_store(path: Path, *questions: str) -> None:
    with TraceStore.open(path, read_only=True) as store:
        rows = store.con.execute(
            "SELECT trace_id, span_id, parent_id, name, kind, status, status_message, model, input_tokens, "
            "output_tokens, tool_name, tool_args, tool_result, scope, service, is_orphan FROM spans"
        ).fetchall()
        overview = store.overview()
    spans = [
        dict(
            zip(
                [
                    "trace",
                    "span",
                    "parent",
                    "name",
                    "kind",
                    "status",
                    "message",
                    "model",
                    "input",
                    "output",
                    "tool",
                    "args",
                    "result",
                    "scope",
                    "service",
                    "orphan",
                ],
                row,
                strict=True,
            )
        )
        for row in rows
    ]
    traces = len(questions)
    assert len({s["trace"] for s in spans}) == traces
    assert {"AGENT", "LLM", "TOOL"} <= {s["kind"] for s in spans}
    # parent links: one root per trace, every other span's parent in the same trace
    assert not any(s["orphan"] for s in spans)
    assert sum(s["parent"] is None for s in spans) == traces
    by_id = {(s["trace"], s["span"]): s for s in spans}
    for tool in (s for s in spans if s["kind"] == "TOOL"):
        ancestor, kinds = tool, []
        while ancestor["parent"] is not None:
            ancestor = by_id[(ancestor["trace"], ancestor["parent"])]
            kinds.append(ancestor["kind"])
        assert "AGENT" in kinds
    llm = [s for s in spans if s["kind"] == "LLM"]
    # each model call once: the OpenAI client's own span for it is skipped
    assert {s["scope"] for s in spans} == {"openinference.instrumentation.openai_agents"}
    assert {s["model"] for s in llm} == {"scripted-model"}
    assert {s["service"] for s in spans} == {"support-agent"}
    usage = [(reply.usage.prompt, reply.usage.completion) for q in questions for reply in REPLIES[q]]
    assert sorted((s["input"], s["output"]) for s in llm) == sorted(usage)
    tools = sorted((s["tool"], s["status"]) for s in spans if s["kind"] == "TOOL")
    assert tools == sorted(outcome for q in questions for outcome in TOOL_OUTCOMES[q])
    refund = [s for s in spans if s["tool"] == "issue_refund"]
    assert "payments service timed out after 10s" in refund[0]["message"]
    assert refund[0]["args"] == '{"order_id":"ORD-1002","amount":329.0}'
    assert overview.error_groups[0].source == "issue_refund"


def test_example_agent_writes_traces_halo_ingests(scripted_llm, tmp_path: Path) -> None:
    llm = scripted_llm(Script(REPLIES))
    traces = tmp_path / "traces.jsonl"
    run_agent(llm.base_url, str(traces), WHERE, REFUND)

    requests = llm.chat_requests  # Chat Completions, with the three tools offered every time
    assert len(requests) == 5
    assert all(r.tool_names == ["lookup_order", "check_stock", "issue_refund"] for r in requests)
    assert API_KEY not in traces.read_text()
    with TraceStore.open(tmp_path / "s.duckdb") as store:
        report = store.ingest([str(traces)])
        assert report.rejected == 0 and report.spans == len(traces.read_text().splitlines())
    check_store(tmp_path / "s.duckdb", WHERE, REFUND)


def test_example_agent_sends_traces_to_halo_collect(scripted_llm, tmp_path: Path) -> None:
    llm = scripted_llm(Script(REPLIES))
    with serve(store=tmp_path / "live.duckdb", port=0) as collector:
        run_agent(llm.base_url, collector.url, REFUND)
    assert collector.stats.rejected_spans == 0 and collector.stats.failed_requests == 0
    check_store(tmp_path / "live.duckdb", REFUND)
