"""`halo loop` with real git, real subprocesses and the real OpenTelemetry SDK: a tiny agent whose flaky tool
needs a retry policy, exported over OTLP to the loop's embedded collector; coding agents that fix it, fail,
or break it; Ctrl-C in the middle of a round and resuming afterwards; the user's working tree untouched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from halo_rlm import loop, runs

AGENT = """\
import json, os
from pathlib import Path
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode

config = json.loads(Path("config.json").read_text())
provider = TracerProvider(resource=Resource({"service.name": "tiny-agent"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # OTEL_EXPORTER_OTLP_ENDPOINT
tracer = provider.get_tracer("tiny-agent")
resolved = 0
for task in range(40):
    with tracer.start_as_current_span("task", attributes={"task.id": task}) as root:
        with tracer.start_as_current_span("TinyAgent", attributes={"openinference.span.kind": "AGENT",
                                                                  "agent.name": "TinyAgent"}):
            ok = False
            for attempt in range(config["retries"] + 1):
                with tracer.start_as_current_span("fetch_data", attributes={
                        "openinference.span.kind": "TOOL", "tool.name": "fetch_data",
                        "input.value": json.dumps({"task": task})}) as tool:
                    if config.get("broken"):
                        tool.set_status(Status(StatusCode.ERROR, "KeyError: 'endpoint' missing from settings"))
                        break
                    if task % 2 == 0 and attempt == 0:
                        tool.set_status(Status(StatusCode.ERROR, "upstream busy (503), try again later"))
                        continue
                    tool.set_attribute("output.value", json.dumps({"task": task, "data": "ok"}))
                    ok = True
                    break
        root.set_attribute("task.resolved", ok)
        resolved += ok
provider.shutdown()
Path(os.environ.get("HALO_RUN_DIR", "."), "score.txt").write_text(f"{resolved}/40")
"""
SCORE = 'import os, pathlib; print("resolved:", pathlib.Path(os.environ["HALO_RUN_DIR"], "score.txt").read_text())\n'
FIX = """\
import json, os, sys, time
from pathlib import Path
prompt = sys.stdin.read()
mode = sys.argv[1] if len(sys.argv) > 1 else "fix"
if os.environ.get("TINY_SLOW_FIX"):
    Path(os.environ["TINY_SLOW_FIX"]).write_text("fixing")
    time.sleep(120)
if mode == "fail":
    sys.exit("fix.py: the coding agent could not log in")
config = json.loads(Path("config.json").read_text())
if mode == "break":
    config["broken"] = True
elif "fetch_data" in prompt and Path(os.environ["HALO_REPORT"]).exists():
    config["retries"] = 2
Path("config.json").write_text(json.dumps(config))
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "agent-repo"
    repo.mkdir()
    (repo / "agent.py").write_text(AGENT)
    (repo / "score.py").write_text(SCORE)
    (repo / "fix.py").write_text(FIX)
    (repo / "config.json").write_text(json.dumps({"retries": 0}))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=dev", "-c", "user.email=dev@example.com", "commit", "-qm", "tiny agent")
    (repo / "notes.txt").write_text("work in progress, not committed\n")  # the user's own uncommitted work
    return repo


def config(repo: Path, fix: str, **overrides) -> loop.LoopConfig:
    py = sys.executable
    return loop.LoopConfig(
        run=f"{py} agent.py",
        fix=f"{py} fix.py {fix}",
        score=f"{py} score.py",
        repo=repo,
        rounds=1,
        outcome="task.resolved",
        **overrides,
    )


def user_tree(repo: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in repo.iterdir() if p.is_file()} | {
        "status": git(repo, "status", "--porcelain")
    }


def test_a_fix_that_helps_is_kept_on_its_branch_and_the_user_tree_is_untouched(
    repo: Path, tmp_path: Path
) -> None:
    before = user_tree(repo)
    events: list[dict] = []
    run = loop.start(config(repo, "fix"), runs.RunRegistry(tmp_path / "runs"), progress=events.append)
    assert run.record.status == "completed"
    (r,) = run.record.summary["rounds"]
    assert r["decision"] == "kept", r["reason"]
    assert (r["score_before"], r["score_after"]) == ("20/40", "40/40")
    assert r["reason"] == "score 20/40 → 40/40" and r["files"] == ["config.json"]
    # the first call still fails (and is traced), the retry recovers: the failure rate is unchanged, the outcome not
    compared = json.loads((run.folder / "round-1" / "compare" / "compare.json").read_text())
    assert [f["verdict"] for f in compared["failures"]] == ["unchanged"]
    assert compared["failures"][0]["id"].startswith("tool_error:fetch_data-")
    assert {o["metric"]: o["change"] for o in compared["outcomes"]}["outcome"] == "better"
    assert json.loads(git(repo, "show", f"{r['branch']}:config.json")) == {"retries": 2}
    assert user_tree(repo) == before  # the user's files, and their uncommitted change, as they were
    assert git(repo, "worktree", "list").count("\n") == 1
    assert any(e["type"] == "warning" and "uncommitted" in e["message"] for e in events)
    round_dir = run.folder / "round-1"
    assert (round_dir / "change.diff").read_text().count('"retries": 2') == 1
    assert (round_dir / "compare" / "compare.md").exists() and (round_dir / "fix.out").exists()
    assert "HALO analysed traces" in (round_dir / "prompt.md").read_text()
    # traces came over OTLP to the embedded collector, not from a file
    assert (run.folder / "round-0" / "collected.jsonl").stat().st_size > 0
    assert not (run.folder / "round-0" / "traces.jsonl").exists()


def test_a_fix_command_that_fails_ends_the_round_with_its_message(repo: Path, tmp_path: Path) -> None:
    run = loop.start(config(repo, "fail"), runs.RunRegistry(tmp_path / "runs"))
    (r,) = run.record.summary["rounds"]
    assert r["decision"] == "failed"
    assert "the fix command exited 1" in r["reason"] and "could not log in" in r["reason"]
    assert git(repo, "branch", "--list", "halo/*") == ""  # its branch is gone
    assert git(repo, "worktree", "list").count("\n") == 1


def test_a_fix_that_breaks_the_agent_is_discarded(repo: Path, tmp_path: Path) -> None:
    run = loop.start(config(repo, "break"), runs.RunRegistry(tmp_path / "runs"))
    (r,) = run.record.summary["rounds"]
    assert r["decision"] == "discarded"
    assert r["score_after"] == "0/40" and "score 20/40 → 0/40" in r["reason"]
    assert (r["verdicts"]["new"], r["verdicts"]["fixed"]) == (1, 1)  # a new KeyError where the 503s were
    assert git(repo, "branch", "--list", "halo/*") == ""
    assert (run.folder / "round-1" / "change.diff").exists()  # the discarded change is kept for reading


def test_ctrl_c_mid_round_cleans_up_and_the_loop_resumes(repo: Path, tmp_path: Path) -> None:
    marker = tmp_path / "fixing"
    registry = tmp_path / "runs"
    script = (
        "import sys; from pathlib import Path; from halo_rlm import loop, runs\n"
        "config = loop.LoopConfig.model_validate_json(sys.argv[1])\n"
        "loop.start(config, runs.RunRegistry(sys.argv[2]))\n"
    )
    env = {**os.environ, "TINY_SLOW_FIX": str(marker)}
    # (a test run started in the background inherits SIGINT ignored; the loop must get it)
    child = subprocess.Popen(
        [sys.executable, "-c", script, config(repo, "fix").model_dump_json(), str(registry)],
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert child.poll() is None, child.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert "halo/loop-" in git(repo, "branch", "--list", "halo/*")  # the round's branch exists now
    child.send_signal(signal.SIGINT)
    assert child.wait(timeout=60) != 0
    assert git(repo, "branch", "--list", "halo/*") == ""
    assert git(repo, "worktree", "list").count("\n") == 1
    (run,) = runs.RunRegistry(registry).runs()
    assert run.record.status == "interrupted" and "halo loop --resume" in run.record.reason
    assert not (run.folder / "worktrees" / "round-1").exists()
    slow_fix_processes = subprocess.run(["pgrep", "-f", "fix.py fix"], capture_output=True, text=True).stdout
    assert slow_fix_processes == ""  # the coding agent was stopped with the loop

    resumed = loop.resume(run)  # without TINY_SLOW_FIX now
    assert resumed.record.status == "completed"
    (r,) = resumed.record.summary["rounds"]
    assert r["round"] == 1 and r["decision"] == "kept"


def test_score_parsing_and_score_changes() -> None:
    assert loop.parse_score("task success: 41/60 (68.3%)\n").successes == 41
    assert loop.parse_score("warming up\nscore = 0.75\n\n").value == 0.75
    assert loop.parse_score("nothing here") is None
    k = loop.Score
    assert (
        loop.score_change_of(
            k(value=0.3, successes=18, total=60), k(value=0.6, successes=36, total=60), 0.05
        )[0]
        == "better"
    )
    assert (
        loop.score_change_of(
            k(value=0.3, successes=18, total=60), k(value=0.35, successes=21, total=60), 0.05
        )[0]
        == "unchanged"
    )
    assert loop.score_change_of(k(value=0.5), k(value=0.4), 0.05) == ("worse", None)


def test_not_a_repository_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(loop.LoopError, match="not a git repository"):
        loop.start(config(tmp_path, "fix"), runs.RunRegistry(tmp_path / "runs"))


def test_with_a_model_the_engine_writes_the_report_the_coding_agent_gets(repo: Path, tmp_path: Path) -> None:
    from scripted_llm import Call, ChatRequest, ScriptedLLM, ToolCalls

    from halo_rlm.engine import EngineConfig
    from halo_rlm.utils import RetryPolicy

    def analyst(request: ChatRequest) -> object:
        if not request.tool_results:
            return ToolCalls([Call("count_traces", {})])
        finding = {
            "title": "fetch_data is not retried when upstream is busy",
            "category": "tool_error",
            "key": "fetch_data",
            "severity": "high",
            "affected_traces": 20,
            "recommendation": "Retry fetch_data twice on 503.",
            "confidence": 0.9,
        }
        return ToolCalls(
            [Call("final_answer", {"answer": "# Report\n\nRetries are missing.", "findings": [finding]})]
        )

    with ScriptedLLM(analyst) as llm:
        engine = EngineConfig(
            base_url=llm.base_url,
            api_key="k",
            model="scripted-model",
            retry=RetryPolicy(sleep=lambda seconds: None),
        )
        run = loop.start(config(repo, "fix"), runs.RunRegistry(tmp_path / "runs"), engine=engine)
    report = json.loads((run.folder / "round-0" / "report" / "report.json").read_text())
    assert report["mode"] == "llm" and report["findings"][0]["key"] == "fetch_data"
    prompt = (run.folder / "round-1" / "prompt.md").read_text()
    # The model's finding merged with the detector's on the same failure: the detector's words, the
    # model's fix.
    assert "fetch_data" in prompt and "Retry fetch_data twice on 503." in prompt
    assert run.record.models == {"analysis": "scripted-model"}
    (r,) = run.record.summary["rounds"]
    assert r["decision"] == "kept"  # the score rose; the model's finding had no query to compare by
