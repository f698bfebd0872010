"""LLM runs and their reports, through the real HTTP path against the scripted model: the report
merges the detectors' findings with the model's and scores at least as well; whatever stops a run
(provider errors of every kind, timeouts, budgets, a crashing tool, Ctrl-C) a report is written
with everything verified so far and says what stopped it; `halo demo` never starts a paid run unasked."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from scripted_analyst import analyst
from scripted_llm import (
    Call,
    ChatRequest,
    Delay,
    Hang,
    HTTPError,
    ScriptedLLM,
    ServerError,
    Text,
    ToolCalls,
    Usage,
)

from halo_rlm.cli import cli
from halo_rlm.detect import analyze
from halo_rlm.engine import AgentOutputItem, EngineConfig, stream_engine_async
from halo_rlm.evaluate import score_planted
from halo_rlm.llm import LLMError
from halo_rlm.report import Report
from halo_rlm.simulate import GroundTruth, simulate
from halo_rlm.store import TraceStore
from halo_rlm.store.duckdb_store import DuckDBStore
from halo_rlm.utils import RetryPolicy
from halo_rlm.verify import verify

SRC = Path(__file__).resolve().parents[1] / "src"
NO_WAITS = RetryPolicy(sleep=lambda seconds: None)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[GroundTruth, Path]:
    folder = tmp_path_factory.mktemp("runs")
    truth = simulate(folder / "t.jsonl", traces=400, seed=21)
    with TraceStore.open(folder / "s.duckdb") as store:
        store.ingest([str(truth.traces_path)])
    return truth, folder / "s.duckdb"


@pytest.fixture(scope="module")
def detector_report(corpus: tuple[GroundTruth, Path]) -> Report:
    with TraceStore.open(corpus[1], read_only=True) as store:
        return verify(analyze(store), store)


@pytest.fixture(autouse=True)
def no_provider_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def engine(
    base_url: str, store: TraceStore, out: Path | None = None, **options: Any
) -> tuple[Report | None, BaseException | None, list[Any]]:
    """Run the engine; return the final report, the error the run raised (if any) and the events."""
    config = EngineConfig(
        base_url=base_url, api_key="test-key", model="scripted-model", retry=NO_WAITS, out_dir=out, **options
    )
    events: list[Any] = []

    async def collect() -> None:
        async for event in stream_engine_async("Find the systemic failures.", config, store=store):
            events.append(event)

    error = None
    try:
        asyncio.run(collect())
    except Exception as exc:
        error = exc
    finals = [e for e in events if isinstance(e, AgentOutputItem) and e.final]
    return (finals[-1].report if finals else None), error, events


def asserted(report: Report) -> list[Any]:
    return [f for f in report.findings if f.check is not None and f.check.status == "verified"]


# --- merged, never worse ------------------------------------------------------------------------


def test_llm_mode_keeps_every_detector_finding_and_scores_at_least_as_well(
    corpus: tuple[GroundTruth, Path], detector_report: Report, tmp_path: Path
) -> None:
    truth, path = corpus
    with TraceStore.open(path, read_only=True) as store, ScriptedLLM(analyst) as llm:
        report, error, _ = engine(llm.base_url, store, tmp_path / "r")
    assert error is None and report is not None and report.outcome.complete
    detected = {f.id: f for f in detector_report.findings}
    merged = {f.id: f for f in report.findings}
    assert set(detected) <= set(merged)
    for fid, f in detected.items():  # the detectors' counts and queries stand
        assert (merged[fid].affected_traces, merged[fid].query) == (f.affected_traces, f.query)
    enriched = [f for f in report.findings if f.enriched_by]
    assert len(enriched) >= 6 and any(f.root_cause.startswith("Root cause") for f in enriched)
    assert any(f.recommendation.startswith("Fix ") for f in enriched)
    claims = {f.key: f for f in report.findings if f.source == "llm"}
    assert set(claims) == {"made_up_tool", "gpt-imaginary"}  # kept, and marked
    assert claims["made_up_tool"].check and claims["made_up_tool"].check.status == "flagged"
    assert claims["gpt-imaginary"].check and claims["gpt-imaginary"].check.status == "unverifiable"
    before, after = score_planted(truth, detector_report.findings), score_planted(truth, asserted(report))
    assert after.recall >= before.recall and after.precision >= before.precision
    assert after.recall >= 0.95 and after.precision >= 0.95
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert "## Model claims HALO could not verify" in markdown and "**Root cause (model):**" in markdown


def test_fixes_cite_code_locations_that_exist_in_the_repository(
    corpus: tuple[GroundTruth, Path], detector_report: Report, tmp_path: Path
) -> None:
    repo = tmp_path / "agent"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "tools.py").write_text("def lookup(order):\n    raise KeyError(order)\n")
    top = detector_report.findings[0]

    def responder(request: ChatRequest) -> Any:
        return ToolCalls(
            [
                Call(
                    "final_answer",
                    {
                        "answer": "# Report",
                        "findings": [
                            {
                                "title": "x",
                                "category": top.category,
                                "key": top.key,
                                "recommendation": "Catch the KeyError and return found=false.",
                                "locations": ["src/tools.py:2", "src/tools.py:99", "src/missing.py:1"],
                            }
                        ],
                    },
                )
            ]
        )

    with TraceStore.open(corpus[1], read_only=True) as store, ScriptedLLM(responder) as llm:
        report, error, _ = engine(llm.base_url, store, tmp_path / "r", repo_path=repo)
    assert error is None and report is not None
    (merged,) = [f for f in report.findings if f.id == top.id]
    assert merged.locations == ["src/tools.py:2"]
    assert any("src/tools.py:99" in note and "src/missing.py:1" in note for note in report.notes)
    fixes = (tmp_path / "r" / "report.md").read_text().split("## Prioritised fix list")[1]
    assert "Catch the KeyError and return found=false. (at `src/tools.py:2`)" in fixes


# --- always a report ----------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def provider(reply: Any) -> Iterator[str]:
    if reply == "refused":
        yield f"http://127.0.0.1:{closed_port()}/v1"
        return
    with ScriptedLLM(lambda request: reply, strict=False) as llm:
        yield llm.base_url


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ("refused", "the connection failed 6 times"),
        (HTTPError.invalid_api_key(), "the API key was refused (401"),
        (HTTPError.model_not_found("scripted-model"), "model 'scripted-model' was not found"),
        (HTTPError(400, "invalid_request_error", "bad things"), "was rejected (400: bad things)"),
        (ServerError(502), "failing after 6 attempts (502"),
    ],
    ids=["refused", "401", "404", "400", "502"],
)
def test_provider_errors_still_write_the_detectors_report(
    corpus: tuple[GroundTruth, Path], detector_report: Report, tmp_path: Path, reply: Any, message: str
) -> None:
    with TraceStore.open(corpus[1], read_only=True) as store, provider(reply) as url:
        report, error, _ = engine(url, store, tmp_path / "r")
    assert isinstance(error, LLMError) and message in str(error)
    assert report is not None and not report.outcome.complete
    assert report.outcome.stopped_by == "provider_error" and message in report.outcome.reason
    assert any("LLM analysis" in item for item in report.outcome.not_done)
    assert [f.id for f in report.findings] == [f.id for f in detector_report.findings]
    assert all(f.check and f.check.status == "verified" for f in report.findings)
    written = Report.model_validate_json((tmp_path / "r" / "report.json").read_bytes())
    assert written.outcome.stopped_by == "provider_error"
    assert "Incomplete: the run stopped (provider_error)" in (tmp_path / "r" / "report.md").read_text()
    assert "Incomplete: the run stopped" in (tmp_path / "r" / "report.html").read_text()


def test_a_timeout_and_a_budget_end_the_run_with_a_report_that_says_so(
    corpus: tuple[GroundTruth, Path], detector_report: Report, tmp_path: Path
) -> None:
    def slow(request: ChatRequest) -> Any:
        return Delay(30, then=Text("late")) if request.tool_results else ToolCalls([Call("count_traces", {})])

    def looping(request: ChatRequest) -> Any:
        return ToolCalls([Call("count_traces", {})], usage=Usage(prompt=2_000, completion=100))

    with TraceStore.open(corpus[1], read_only=True) as store:
        with ScriptedLLM(slow, strict=False) as llm:
            timed, error, _ = engine(llm.base_url, store, tmp_path / "t", timeout=8)
        assert error is None and timed is not None and timed.outcome.stopped_by == "timeout"
        with ScriptedLLM(looping) as llm:
            budget, error, _ = engine(llm.base_url, store, tmp_path / "b", max_tokens=5_000)
        assert error is None and budget is not None and budget.outcome.stopped_by == "budget"
    for report in (timed, budget):
        assert not report.outcome.complete and report.outcome.not_done
        assert {f.id for f in detector_report.findings} <= {f.id for f in report.findings}
    assert "token budget" in budget.outcome.reason


class CrashingStore(DuckDBStore):
    """A store whose `count_traces` crashes in every connection the engine borrows: a tool bug."""

    schemes = ()

    @contextmanager
    def borrow(self) -> Iterator[Any]:  # type: ignore[override]
        with super().borrow() as connection:
            yield Crashing(connection)


class Crashing:
    def __init__(self, store: DuckDBStore) -> None:
        self.store = store

    def count_traces(self, *args: Any, **kwargs: Any) -> int:
        raise RuntimeError("a bug in count_traces")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_a_crash_in_a_tool_still_writes_the_report(
    corpus: tuple[GroundTruth, Path], detector_report: Report, tmp_path: Path
) -> None:
    def counting(request: ChatRequest) -> Any:
        return ToolCalls([Call("count_traces", {})])

    with CrashingStore.connect(str(corpus[1]), read_only=True) as store, ScriptedLLM(counting) as llm:
        report, error, _ = engine(llm.base_url, store, tmp_path / "r")
    assert isinstance(error, RuntimeError) and "a bug in count_traces" in str(error)
    assert report is not None and report.outcome.stopped_by == "crash"
    assert "RuntimeError: a bug in count_traces" in report.outcome.reason
    assert [f.id for f in report.findings] == [f.id for f in detector_report.findings]
    assert (tmp_path / "r" / "report.html").exists()


# --- the command line ---------------------------------------------------------------------------


def test_the_run_command_exits_non_zero_with_a_report_when_the_provider_fails(
    corpus: tuple[GroundTruth, Path], tmp_path: Path
) -> None:
    with ScriptedLLM(HTTPError.invalid_api_key(), strict=False) as llm:
        result = CliRunner().invoke(
            cli,
            [
                str(corpus[0].traces_path),
                "--store",
                str(corpus[1]),
                "--base-url",
                llm.base_url,
                "--api-key",
                "k",
                "-o",
                str(tmp_path / "r"),
            ],
        )
    assert result.exit_code == 1, result.output
    assert "the API key was refused (401" in result.stderr and "The run did not complete" in result.stderr
    assert "systemic findings" in result.stdout
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"report.json", "report.md", "report.html"}


def halo(*args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", "from halo_rlm.cli import main; main()", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC), "OPENAI_API_KEY": ""},
    )


def wait_for_request(llm: ScriptedLLM, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while not llm.chat_requests:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)


@pytest.mark.slow
def test_ctrl_c_writes_the_report_and_exits_130(corpus: tuple[GroundTruth, Path], tmp_path: Path) -> None:
    with ScriptedLLM(Hang(), strict=False) as llm:
        proc = halo(
            corpus[0].traces_path, "--store", corpus[1], "--base-url", llm.base_url, "-o", tmp_path / "r"
        )
        wait_for_request(llm, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Stopping: writing the report" in err and "Traceback" not in err
    report = Report.model_validate_json((tmp_path / "r" / "report.json").read_bytes())
    assert report.outcome.stopped_by == "interrupted" and report.findings
    assert "(interrupted)" in err


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once(corpus: tuple[GroundTruth, Path], tmp_path: Path) -> None:
    out = tmp_path / "r"
    out.mkdir()
    os.mkfifo(out / "report.json")  # writing the report blocks until someone reads it: nobody will
    with ScriptedLLM(Hang(), strict=False) as llm:
        proc = halo(corpus[0].traces_path, "--store", corpus[1], "--base-url", llm.base_url, "-o", out)
        wait_for_request(llm, proc)
        proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 120
        while "Stopping" not in (line := proc.stderr.readline() if proc.stderr else ""):
            assert line and time.monotonic() < deadline
        time.sleep(1)  # the process is now stuck writing the report
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert proc.returncode == 130


def test_demo_never_starts_a_paid_run_unasked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with ScriptedLLM(analyst) as llm:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-a-real-looking-key")
        monkeypatch.setenv("OPENAI_BASE_URL", llm.base_url)
        result = CliRunner().invoke(cli, ["demo", "-o", str(tmp_path / "d")])
        assert result.exit_code == 0, result.output
        assert llm.requests == []  # no model was called
        assert "halo demo --llm" in result.stderr and "$0.50" in result.stderr
        help_text = CliRunner().invoke(cli, ["demo", "--help"]).stdout
        assert "--llm" in help_text and "0.5" in help_text
        result = CliRunner().invoke(cli, ["demo", "--llm", "-m", "scripted-model", "-o", str(tmp_path / "m")])
        assert result.exit_code == 0, result.output
        assert llm.chat_requests
    report = Report.model_validate_json((tmp_path / "m" / "report.json").read_bytes())
    assert report.mode == "llm" and report.outcome.complete


# --- credentials never reach the model ----------------------------------------------------------


def test_credentials_in_traces_never_reach_the_model_unless_kept(tmp_path: Path) -> None:
    from test_detect import build
    from test_report import OPENAI_KEY, PASSWORD, hostile_runs

    build(lambda: str(tmp_path / "s.duckdb"), hostile_runs()).close()

    def explorer(request: ChatRequest) -> Any:
        if not request.tool_results:
            return ToolCalls(
                [
                    Call("view_trace", {"trace_id": "err0"}),
                    Call("query_sql", {"query": "SELECT raw FROM spans WHERE trace_id = 'err1'"}),
                    Call("search_trace", {"trace_id": "err2", "regex_pattern": "api_key|password"}),
                ]
            )
        return ToolCalls([Call("final_answer", {"answer": "# Done"})])

    with TraceStore.open(tmp_path / "s.duckdb", read_only=True) as store:
        for keep in (False, True):
            with ScriptedLLM(explorer) as llm:
                report, error, events = engine(llm.base_url, store, tmp_path / f"r{keep}", keep_secrets=keep)
                sent = b"".join(orjson.dumps(r.body) for r in llm.requests)
            assert error is None and report is not None
            leaked = OPENAI_KEY.encode() in sent or PASSWORD.encode() in sent
            assert leaked == keep, keep
            shown = "".join(e.model_dump_json() for e in events)  # terminals, --json, run logs, the web app
            assert (OPENAI_KEY in shown or PASSWORD in shown) == keep
            assert (b"[REDACTED]" in sent) != keep
            written = b"".join(p.read_bytes() for p in (tmp_path / f"r{keep}").iterdir())
            assert (OPENAI_KEY.encode() in written) == keep
