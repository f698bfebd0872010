"""`halo compare`, `halo runs`/`runs show`/`ask`, `halo eval` and `halo loop` through click's runner, on simulated
corpora with known changes, the scripted model over HTTP, and a tiny agent in a real git repository."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from scripted_llm import Call, ChatRequest, ScriptedLLM, ToolCalls
from test_loop import AGENT, FIX, SCORE

from halo_rlm.cli import cli
from halo_rlm.simulate import simulate


def invoke(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def drop_half_of(path: Path, service: str) -> None:
    """Remove about half of one service's traces from a HALO JSONL file: a shift in the traffic mix."""
    lines = path.read_bytes().splitlines()
    kept = []
    for line in lines:
        span = orjson.loads(line)
        dropped = (
            span["resource"]["attributes"].get("service.name") == service
            and hashlib.sha256(span["trace_id"].encode()).digest()[0] % 2 == 0
        )
        if not dropped:
            kept.append(line)
    path.write_bytes(b"\n".join(kept) + b"\n")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Before: the default rates without guardrail trips. After: `tool_error` removed, `rate_limit` halved,
    `guardrail` new, the rest unchanged, and half of support-bot's traffic gone (a mix shift)."""
    folder = tmp_path_factory.mktemp("corpora")
    before = simulate(folder / "before.jsonl", traces=3000, seed=1, rates={"guardrail": 0.0}).traces_path
    after = simulate(
        folder / "after.jsonl",
        traces=3000,
        seed=2,
        rates={"tool_error": 0.0, "rate_limit": 0.025, "guardrail": 0.04},
    ).traces_path
    drop_half_of(after, "support-bot")
    return before, after


def verdicts(comparison: dict[str, Any]) -> dict[str, str]:
    return {f["id"]: f["verdict"] for f in comparison["failures"] if f.get("stratum") is None}


def test_compare_calls_every_planted_change_right_within_strata(
    corpora: tuple[Path, Path], tmp_path: Path
) -> None:
    before, after = corpora
    code, out, err = invoke("compare", before, after, "--by", "service", "-o", tmp_path / "by", "--json")
    assert code == 0, err
    result = json.loads(out)
    found = verdicts(result)
    assert found.pop("tool_error:lookup_order-8aae5b") == "fixed"  # (the id carries its message template)
    assert found.pop("rate_limit:claude-sonnet-4-5") == "improved"
    assert found.pop("guardrail:pii_filter") == "new"
    assert set(found.values()) == {"unchanged"} and len(found) >= 10  # despite support-bot's traffic halving
    assert not result["warnings"]  # compared within the shifted dimension
    assert {"compare.json", "compare.md", "compare.html"} <= {p.name for p in (tmp_path / "by").iterdir()}
    html = (tmp_path / "by" / "compare.html").read_text()
    assert "support-bot" in html and "<script" not in html


def test_compare_warns_about_a_mix_shift_and_gates_ci(corpora: tuple[Path, Path], tmp_path: Path) -> None:
    before, after = corpora
    code, out, err = invoke("compare", before, after, "-o", tmp_path / "crude", "--fail-on", "new")
    assert code == 3, out + err
    assert "differ in mix" in out and "--by service" in out
    assert "--fail-on new" in err and "guardrail:pii_filter: new" in err
    assert "✖ new" in out and "✔ fixed" in out
    code, out, err = invoke(
        "compare", before, after, "-o", tmp_path / "crude", "--by", "service", "--fail-on", "worse"
    )
    assert code == 0, out + err  # nothing got worse within strata
    code, _, err = invoke("compare", before, tmp_path / "nothing-here.jsonl")
    assert code == 1 and "not a trace file, a store or a run id" in " ".join(err.split())


def analyst(request: ChatRequest) -> Any:
    # (HALO's budget note ends the last message, so the question is the start of it)
    if any((m.get("content") or "").startswith("Which agent?") for m in request.messages):
        return ToolCalls([Call("final_answer", {"answer": "The SupportAgent.", "findings": []})])
    if not request.tool_results:
        return ToolCalls([Call("count_traces", {})])
    return ToolCalls(
        [
            Call(
                "final_answer",
                {
                    "answer": "# Report\n\nRefunds fail.",
                    "findings": [
                        {
                            "title": "lookup_order fails",
                            "category": "tool_error",
                            "key": "lookup_order",
                            "severity": "high",
                            "affected_traces": 10,
                            "recommendation": "Retry lookups.",
                            "confidence": 0.8,
                        }
                    ],
                },
            )
        ]
    )


def test_analyses_are_recorded_listed_shown_and_followed_up(tmp_path: Path) -> None:
    traces = simulate(tmp_path / "t.jsonl", traces=200, seed=4).traces_path
    code, _, err = invoke("analyze", traces, "-o", tmp_path / "report")
    assert code == 0 and "Recorded as run" in err
    with ScriptedLLM(analyst) as llm:
        engine = ["--base-url", llm.base_url, "--api-key", "k", "--model", "scripted-model"]
        code, out, err = invoke(traces, "-p", "Why do refunds fail?", "-o", tmp_path / "llm", *engine)
        assert code == 0, err
        code, out, _ = invoke("runs", "--json")
        listed = json.loads(out)
        assert [(r["kind"], r["status"]) for r in listed] == [("analysis", "completed")] * 2
        llm_run = listed[0]["id"]
        assert (
            listed[0]["prompt"] == "Why do refunds fail?" and listed[0]["models"]["root"] == "scripted-model"
        )
        code, out, err = invoke("ask", llm_run[:5], "Which agent?", *engine)
        assert code == 0, err
        assert "The SupportAgent." in out
    code, out, _ = invoke("runs")
    assert llm_run[:4] in out and "1 follow-ups" in out
    code, out, _ = invoke("runs", "show", llm_run[:5])
    assert "Follow-up 1" in out and "Which agent?" in out and "report.md" in out
    code, _, err = invoke("ask", "zzzz", "and?")
    assert code == 1 and "no run 'zzzz'" in err


def test_eval_scores_the_detectors_and_a_model_on_planted_failures(tmp_path: Path) -> None:
    code, out, err = invoke("eval", "--simulate", "400", "--seed", "3", "--work", tmp_path / "d", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["mode"] == "detectors" and result["planted"]["recall"] == 1.0
    assert result["evidence_validity"] == 1.0 and result["tokens"] == 0
    with ScriptedLLM(analyst) as llm:
        code, out, err = invoke(
            "eval",
            "--simulate",
            "400",
            "--seed",
            "3",
            "--work",
            tmp_path / "m",
            "--base-url",
            llm.base_url,
            "--api-key",
            "k",
            "--model",
            "scripted-model",
        )
    assert code == 0, err
    assert "recall" in out and "precision" in out and "count error" in out and "tokens" in out
    code, out, _ = invoke("runs", "--kind", "eval", "--json")
    assert len(json.loads(out)) == 2
    code, out, err = invoke(
        "eval",
        "--truth",
        tmp_path / "d" / "simulated-400-s3.truth.json",
        tmp_path / "m" / "report" / "report.json",
        "--json",
        "--work",
        tmp_path / "t",
    )
    assert code == 0, err
    scored = json.loads(out)["planted"]
    # the model's one finding, about a planted pattern, is merged into the detectors' findings
    assert scored["found"] > 1 and scored["precision"] == 1.0 and scored["recall"] == 1.0
    code, _, err = invoke("eval")
    assert code == 1 and "give one of" in err


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "agent-repo"
    repo.mkdir()
    for name, text in (
        ("agent.py", AGENT),
        ("score.py", SCORE),
        ("fix.py", FIX),
        ("config.json", '{"retries": 0}'),
    ):
        (repo / name).write_text(text)
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        ["-c", "user.name=dev", "-c", "user.email=dev@example.com", "commit", "-qm", "agent"],
    ):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    return repo


def test_loop_from_the_command_line_keeps_the_fix_and_shows_the_rounds(repo: Path) -> None:
    py = sys.executable
    code, out, err = invoke(
        "loop",
        "--run",
        f"{py} agent.py",
        "--fix",
        f"{py} fix.py",
        "--score",
        f"{py} score.py",
        "--repo",
        repo,
        "--rounds",
        "1",
        "--outcome",
        "task.resolved",
    )
    assert code == 0, err
    assert "kept" in out and "20/40 → 40/40" in out and "halo/loop-" in out
    assert "Round 1" in err and "score 20/40" in err
    code, out, _ = invoke("runs", "--kind", "loop")
    assert "1 rounds, 1 kept, score 40/40" in out


def test_a_preset_is_only_a_command_line(repo: Path) -> None:
    py = sys.executable
    code, out, err = invoke(
        "loop", "--run", f"{py} agent.py", "--fix", "claude", "--repo", repo, "--rounds", "1", "--json"
    )
    assert code == 0, err
    (round_,) = json.loads(out.splitlines()[-1])["summary"]["rounds"]
    assert round_["decision"] == "failed" and "the fix command exited" in round_["reason"]
