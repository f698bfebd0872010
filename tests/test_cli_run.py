"""`halo run` from the command line against the scripted OpenAI-compatible server over loopback:
plain progress lines when stderr is not a terminal, typed JSON lines, and endpoint URLs checked
before the first request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from agent_traces import HOSTILE, UNSAFE, write_agent_traces
from click.testing import CliRunner
from scripted_llm import Call, ChatRequest, ScriptedLLM, ToolCalls

from halo_rlm.cli import cli


@pytest.fixture(autouse=True)
def no_provider_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def responder(request: ChatRequest) -> Any:
    """The root looks at the overview, then writes its report."""
    if not request.tool_results:
        return ToolCalls([Call("get_dataset_overview", {})])
    return ToolCalls(
        [Call("final_answer", {"answer": "# Report\n\nsearch_flights times out.", "findings": []})]
    )


def halo(*args: str | Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args], env=env)
    return result.exit_code, result.stdout, result.stderr


def test_a_piped_run_prints_plain_progress_lines(tmp_path: Path) -> None:
    traces = write_agent_traces(tmp_path / "t.jsonl", traces=4, text=HOSTILE)
    with ScriptedLLM(responder) as llm:
        code, out, err = halo(
            traces, "--base-url", llm.base_url, "--api-key", "k", "-m", "scripted-model", "-o", tmp_path / "r"
        )
    assert code == 0, err
    lines = err.splitlines()
    assert any("turn 1 calls get_dataset_overview" in line for line in lines), err
    assert any("wrote the report" in line for line in lines), err
    assert "search_flights times out." in out
    assert "␛" in out and not UNSAFE.search(out) and not UNSAFE.search(err)  # the report, shown safely


def test_json_lines_all_say_their_type(tmp_path: Path) -> None:
    traces = write_agent_traces(tmp_path / "t.jsonl", traces=4)
    with ScriptedLLM(responder) as llm:
        code, out, err = halo(
            traces,
            "--base-url",
            llm.base_url,
            "--api-key",
            "k",
            "-m",
            "scripted-model",
            "--json",
            "-o",
            tmp_path / "r",
        )
    assert code == 0, err
    events = [orjson.loads(line) for line in out.splitlines()]
    assert {e["type"] for e in events} <= {"run", "text_delta", "item", "report"}
    assert events[0]["type"] == "run" and events[0]["id"] and events[1]["type"] == "item"
    assert [e["type"] for e in events].count("report") == 1 and events[-1]["type"] == "report"
    assert events[-1]["final"] and events[-1]["report"]["dataset"]["traces"] == 4
    # Without a provider the report comes the same way: the last (and only) line, typed.
    code, out, err = halo(traces, "--json", "-o", tmp_path / "d")
    assert code == 0, err
    (line,) = out.splitlines()
    event = orjson.loads(line)
    assert event["type"] == "report" and event["report"]["dataset"]["traces"] == 4


def test_an_endpoint_without_a_scheme_fails_at_once(tmp_path: Path) -> None:
    traces = write_agent_traces(tmp_path / "t.jsonl", traces=2)
    code, out, err = halo(traces, "--base-url", "localhost:8080/v1", "-o", tmp_path / "r")
    assert code == 1 and err.count("\n") == 1
    assert "--base-url: 'localhost:8080/v1' is not an endpoint URL: it needs http:// or https://" in err
    code, out, err = halo(traces, "-o", tmp_path / "r", env={"OPENAI_BASE_URL": "127.0.0.1:9"})
    assert code == 1 and "$OPENAI_BASE_URL: '127.0.0.1:9' is not an endpoint URL" in err
    assert "Traceback" not in out + err
