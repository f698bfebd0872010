"""The README's Python examples run as written (against the scripted model server and simulated
traces), so the docs cannot drift from the code."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from scripted_llm import Call, ChatRequest, ScriptedLLM, Text, ToolCalls

from halo_rlm.simulate import simulate

README = Path(__file__).resolve().parents[1] / "README.md"


def python_block(after_heading: str) -> str:
    text = README.read_text()
    section = text[text.index(after_heading) :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


@pytest.fixture
def traces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    simulate(tmp_path / "traces.jsonl", traces=60, seed=4)
    return tmp_path


def test_the_engine_example(traces: Path) -> None:
    def responder(request: ChatRequest) -> Any:
        if "You are a sub-agent" in request.system_text:
            return Text("Nothing more.")
        if not request.tool_results:
            return ToolCalls([Call("count_traces", {"filters": {"has_errors": True}})])
        return ToolCalls(
            [
                Call(
                    "final_answer",
                    {
                        "answer": "# Report\n\nRefunds fail.",
                        "findings": [
                            {
                                "title": "Refunds fail",
                                "category": "tool_error",
                                "recommendation": "Validate the order id.",
                            }
                        ],
                    },
                )
            ]
        )

    with ScriptedLLM(responder) as llm:
        code = python_block("### From Python").replace("http://localhost:8000/v1", llm.base_url)
        namespace: dict[str, Any] = {}
        exec(compile(code, "README.md", "exec"), namespace)
        findings = namespace["report"].findings  # the detectors' findings, and the model's
        assert findings[0].source.startswith("detector:") and "Refunds fail" in [f.title for f in findings]
        asyncio.run(namespace["watch"]())
    assert (traces / "halo-report" / "report.md").exists()


def test_the_store_example(traces: Path) -> None:
    exec(compile(python_block("## The store from Python"), "README.md", "exec"), {})


def test_the_store_table_matches_the_schema() -> None:
    """The README's table of store columns is the one `store.schema` generates."""
    from halo_rlm.store.schema import markdown_table

    assert markdown_table() in README.read_text()


def test_the_sql_tool_describes_the_schema() -> None:
    from halo_rlm.engine.tools import TRACE_TOOLS
    from halo_rlm.store.schema import SPAN_COLUMNS, sql_tool_description

    [tool] = [t for t in TRACE_TOOLS if t.name == "query_sql"]
    assert tool.description == sql_tool_description()
    assert all(c.name in tool.description for c in SPAN_COLUMNS if c.notable)


def test_the_compare_example(traces: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from halo_rlm.store import TraceStore

    for name, seed, rates in (("before", 4, {}), ("after", 5, {"tool_error": 0.0})):
        made = simulate(traces / f"{name}.jsonl", traces=600, seed=seed, rates=rates)
        with TraceStore.open(traces / f"{name}.duckdb") as store:
            store.ingest([str(made.traces_path)])
    exec(compile(python_block("### Did the fix work?"), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "fixed tool_error:lookup_order" in printed and "→ 0.0%" in printed
