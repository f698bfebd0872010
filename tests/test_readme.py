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
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
        assert namespace["report"].findings[0].title == "Refunds fail"
        asyncio.run(namespace["watch"]())
    assert (traces / "halo-report" / "report.md").exists()


def test_the_store_example(traces: Path) -> None:
    exec(compile(python_block("## The store from Python"), "README.md", "exec"), {})  # noqa: S102
