"""examples/support-benchmark: the scripted model follows the harness it is given, and `halo loop` on the
benchmark raises its score round by round, keeping only the changes that help (a change that breaks the agent
is discarded). Real git, real subprocesses, the Agents SDK talking to the scripted model over HTTP."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from halo_rlm import loop, runs

pytest.importorskip("agents", reason="the agents extra is not installed")

BENCHMARK = Path(__file__).resolve().parents[1] / "examples" / "support-benchmark"
sys.path.insert(0, str(BENCHMARK))
import model_server  # noqa: E402


def request(
    system: str,
    user: str,
    amount_type: str = "string",
    tools=("lookup_order", "issue_refund"),
    results: tuple[str, ...] = (),
) -> dict:
    schemas = {
        "issue_refund": {
            "type": "object",
            "properties": {"order_id": {"type": "string"}, "amount": {"type": amount_type}},
        },
        "lookup_order": {"type": "object", "properties": {"order_id": {"type": "string"}}},
    }
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    messages += [{"role": "tool", "tool_call_id": f"c{i}", "content": r} for i, r in enumerate(results)]
    return {
        "model": "m",
        "messages": messages,
        "tools": [{"type": "function", "function": {"name": t, "parameters": schemas[t]}} for t in tools],
    }


def called(message: dict) -> tuple[str, dict]:
    call = message["tool_calls"][0]["function"]
    return call["name"], json.loads(call["arguments"])


def test_the_scripted_model_writes_amounts_as_the_schema_asks() -> None:
    ask = "Please refund $24.50 for order A-1007."
    assert called(model_server.decide(request("", ask, "string"))) == (
        "issue_refund",
        {"order_id": "A-1007", "amount": "$24.50"},
    )
    assert called(model_server.decide(request("", ask, "number"))) == (
        "issue_refund",
        {"order_id": "A-1007", "amount": 24.5},
    )


def test_the_scripted_model_calls_the_tools_the_prompt_names_and_gives_up_on_errors() -> None:
    ask = "Is my order A-1017 still under warranty?"
    mentions = "Today is 2026-06-01. Warranty questions: call `check_warranty` with the order id."
    assert called(model_server.decide(request(mentions, ask)))[0] == "check_warranty"  # offered or not
    assert called(model_server.decide(request("Today is 2026-06-01.", ask)))[0] == "lookup_order"
    order = json.dumps({"order_id": "A-1017", "delivered": "2025-05-10", "status": "delivered"})
    answer = model_server.decide(request("Today is 2026-06-01.", ask, results=(order,)))["content"]
    assert "expired on 2026-05-10" in answer
    failed = model_server.decide(request("", "Is SKU-02 in stock?", results=("InventoryBusy: busy (503)",)))
    assert "can't check" in failed["content"]


@pytest.mark.slow
def test_halo_loop_raises_the_benchmark_score_and_keeps_only_improving_changes(tmp_path: Path) -> None:
    repo = tmp_path / "support-benchmark"
    shutil.copytree(BENCHMARK, repo, ignore=shutil.ignore_patterns("__pycache__", "*.jsonl", "*.duckdb"))
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        ["-c", "user.name=dev", "-c", "user.email=dev@example.com", "commit", "-qm", "benchmark"],
    ):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    py = sys.executable
    config = loop.LoopConfig(
        run=f"{py} run.py",
        fix=f"{py} fix.py --break-in-round 2",
        score=f"{py} score.py",
        repo=repo,
        rounds=4,
        outcome="support.resolved",
    )
    run = loop.start(config, runs.RunRegistry(tmp_path / "runs"))

    rounds = run.record.summary["rounds"]
    table = [(r["decision"], r["score_before"], r["score_after"]) for r in rounds]
    assert table == [
        ("kept", "19/60", "33/60"),  # the prompt stops naming check_warranty
        ("discarded", "33/60", "5/60"),  # lookup_order removed: the agent breaks
        ("kept", "33/60", "49/60"),  # refund amounts become numbers
        ("kept", "49/60", "60/60"),
    ], [r["reason"] for r in rounds]  # busy services are retried
    assert "new" in rounds[1]["reason"] and "score 33/60 → 5/60" in rounds[1]["reason"]
    best = rounds[3]["branch"]

    def show(path):
        return subprocess.run(
            ["git", "-C", str(repo), "show", f"{best}:{path}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    assert "RETRIES = 2" in show("tools.py") and "amount: float" in show("tools.py")
    assert "check_warranty" not in show("prompt.md") and "lookup_order, issue_refund" in show("tools.py")
    assert (
        subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True, check=True
        ).stdout
        == ""
    )
