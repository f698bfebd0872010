"""Detectors: each on hand-made traces, then all of them scored against simulated ground truth."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from halo_rlm.detect import Thresholds, analyze
from halo_rlm.evaluate import score_planted
from halo_rlm.report import Report
from halo_rlm.simulate import simulate
from halo_rlm.store import TraceStore
from halo_rlm.verify import verify

T0 = 1_777_852_800 * 10**9
_ids = itertools.count()


def span(
    trace: str,
    kind: str,
    name: str,
    *,
    parent: str = "",
    start: float = 0,
    seconds: float = 0.5,
    error: str | None = None,
    **attrs: Any,
) -> dict[str, Any]:
    sid = f"s{next(_ids):06d}"
    return {
        "trace_id": trace,
        "span_id": sid,
        "parent_span_id": parent,
        "name": name,
        "kind": "SPAN_KIND_INTERNAL",
        "start_time": T0 + int(start * 1e9),
        "end_time": T0 + int((start + seconds) * 1e9),
        "status": {"code": "STATUS_CODE_ERROR" if error else "STATUS_CODE_OK", "message": error or ""},
        "resource": {"attributes": {"service.name": attrs.pop("service", "shop")}},
        "scope": {"name": "t"},
        "attributes": {"openinference.span.kind": kind, **attrs},
    }


class Run:
    """One agent run: an AGENT root with LLM and TOOL children, built step by step."""

    def __init__(
        self, trace: str, agent: str = "Support", tools: tuple[str, ...] = ("search", "lookup")
    ) -> None:
        self.trace, self.tools, self.clock = trace, tools, 0.0
        self.root = span(trace, "AGENT", f"agent.{agent}", seconds=60, **{"agent.name": agent})
        self.spans = [self.root]

    def llm(
        self,
        *,
        calls: list[tuple[str, dict[str, Any]]] = (),
        text: str | None = "ok",
        error: str | None = None,
        prompt_tokens: int = 1000,
        finish: str | None = None,
        model: str = "gpt-5.4",
        seconds: float = 1.0,
    ) -> None:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = [
                {
                    "id": f"c{i}",
                    "type": "function",
                    "function": {"name": n, "arguments": orjson.dumps(a).decode()},
                }
                for i, (n, a) in enumerate(calls)
            ]
        attrs: dict[str, Any] = {
            "llm.model_name": model,
            "llm.token_count.prompt": prompt_tokens,
            "llm.token_count.completion": 20,
            "llm.output_messages": orjson.dumps([message]).decode(),
            "llm.tools": orjson.dumps(
                [{"type": "function", "function": {"name": t}} for t in self.tools]
            ).decode(),
        }
        if finish:
            attrs["llm.finish_reason"] = finish
        self.spans.append(
            span(
                self.trace,
                "LLM",
                "chat",
                parent=self.root["span_id"],
                start=self.clock,
                seconds=seconds,
                error=error,
                **attrs,
            )
        )
        self.clock += seconds

    def tool(
        self,
        name: str,
        args: dict[str, Any],
        *,
        result: str = "fine",
        error: str | None = None,
        seconds: float = 0.2,
    ) -> None:
        self.spans.append(
            span(
                self.trace,
                "TOOL",
                f"function.{name}",
                parent=self.root["span_id"],
                start=self.clock,
                seconds=seconds,
                error=error,
                **{"tool.name": name, "input.value": orjson.dumps(args).decode(), "output.value": result},
            )
        )
        self.clock += seconds


def healthy(trace: str) -> Run:
    run = Run(trace)
    run.llm(calls=[("search", {"q": trace})], text=None)
    run.tool("search", {"q": trace}, result="3 results")
    run.llm(text="Here is what I found.")
    return run


StoreAt = Callable[[], str]


@pytest.fixture
def stores(backend: str, new_store: Callable[[str], str]) -> StoreAt:
    """Makes fresh stores on the backend under test (each test runs on DuckDB and on chdb)."""
    return lambda: new_store(backend)


def build(stores: StoreAt, runs: list[Run]) -> TraceStore:
    target = stores()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "runs.jsonl"
        path.write_bytes(b"\n".join(orjson.dumps(s) for run in runs for s in run.spans))
        with TraceStore.open(target) as store:
            store.ingest([str(path)])
    return TraceStore.open(target, read_only=True)


def findings_of(stores: StoreAt, special: list[Run], *, healthy_runs: int = 40, **thresholds: Any) -> Report:
    runs = special + [healthy(f"h{i:03d}") for i in range(healthy_runs)]
    with build(stores, runs) as store:
        return analyze(store, thresholds=Thresholds(**thresholds))


def keyed(report: Report) -> dict[tuple[str, str | None], int]:
    return {(f.category, f.key): f.affected_traces for f in report.findings}


def test_healthy_traces_give_no_findings(stores: StoreAt) -> None:
    assert findings_of(stores, []).findings == []


def test_one_off_errors_are_not_systemic(stores: StoreAt) -> None:
    runs = []
    for i, (tool, message) in enumerate(
        [
            ("export_pdf", "disk full while writing /tmp/a.pdf"),
            ("sync_crm", "KeyError: 'account'"),
            ("resize", "PIL cannot identify image"),
        ]
    ):
        run = healthy(f"odd{i}")
        run.tool(tool, {"x": i}, error=message)
        runs.append(run)
    assert findings_of(stores, runs).findings == []


def test_tool_error_grouped_by_template_across_ids(stores: StoreAt) -> None:
    runs = []
    for i in range(6):
        run = healthy(f"t{i}")
        run.tool("lookup", {"order": 1000 + i}, error=f"Order {1000 + i} not found in region eu-west-{i % 3}")
        runs.append(run)
    report = findings_of(stores, runs)
    assert keyed(report) == {("tool_error", "lookup"): 6}
    finding = report.findings[0]
    assert "Order <n> not found in region <n>" in finding.details
    assert len(finding.evidence) == 5 and all(ev.span_id for ev in finding.evidence)
    assert "Order 100" in finding.evidence[0].excerpt


def test_thresholds_are_configurable(stores: StoreAt) -> None:
    runs = []
    for i in range(3):
        run = healthy(f"t{i}")
        run.tool("lookup", {"order": i}, error=f"Order {i} not found")
        runs.append(run)
    assert keyed(findings_of(stores, runs)) == {("tool_error", "lookup"): 3}
    assert findings_of(stores, runs, min_traces=4).findings == []
    assert findings_of(stores, runs, min_share=0.1).findings == []  # 3 of 43 traces is 7%


def test_hallucinated_tools_from_offered_lists_and_errors(stores: StoreAt) -> None:
    runs = []
    for i in range(4):
        run = healthy(f"h{i}x")
        run.llm(calls=[("refund_order", {"id": i})], text=None)  # offered: search, lookup
        runs.append(run)
    for i in range(3):
        run = healthy(f"u{i}x")
        run.tool("delete_user", {"id": i}, error=f"Unknown tool: delete_user (call {i})")
        runs.append(run)
    report = findings_of(stores, runs)
    assert keyed(report) == {
        ("hallucinated_tool", "refund_order"): 4,
        ("hallucinated_tool", "delete_user"): 3,
    }


def test_openai_agents_sdk_unknown_tools_and_stack_traces(stores: StoreAt) -> None:
    """The Agents SDK's ways of saying a tool does not exist (its span error with the name as data, and
    ModelBehaviorError), and a recorded exception whose stack trace quotes the caller's code: the error is
    about the tool, not about `max_turns` in that code."""
    runs = []
    for i in range(4):
        run = healthy(f"sdk{i}")
        run.spans.append(
            span(
                f"sdk{i}",
                "CHAIN",
                "turn",
                parent=run.root["span_id"],
                error="Tool not found: {'tool_name': 'check_warranty'}",
            )
        )
        runs.append(run)
    for i in range(3):
        run = healthy(f"mbe{i}")
        task = span(
            f"mbe{i}",
            "CHAIN",
            "support.task",
            parent=run.root["span_id"],
            error="ModelBehaviorError: Tool check_stock_level not found in agent SupportAgent",
        )
        task["events"] = [
            {
                "name": "exception",
                "timestamp": T0,
                "attributes": {
                    "exception.type": "agents.exceptions.ModelBehaviorError",
                    "exception.message": "Tool check_stock_level not found in agent SupportAgent",
                    "exception.stacktrace": 'File "run.py", line 50\n    await Runner.run(agent, task, max_turns=6)',
                },
            }
        ]
        run.spans.append(task)
        runs.append(run)
    assert keyed(findings_of(stores, runs)) == {
        ("hallucinated_tool", "check_warranty"): 4,
        ("hallucinated_tool", "check_stock_level"): 3,
    }


def test_invalid_arguments_timeouts_rate_limits_context_and_max_turns(stores: StoreAt) -> None:
    runs = []
    for i in range(3):
        run = healthy(f"a{i}")
        run.tool(
            "book",
            {"date": "tomorrow"},
            error="1 validation error for BookArgs\ndate\n  Input should be a valid date",
        )
        runs.append(run)
        run = healthy(f"b{i}")
        run.tool(
            "fetch",
            {"url": f"https://x/{i}"},
            error=f"httpx.ReadTimeout: timed out after 30s ({i})",
            seconds=30,
        )
        runs.append(run)
        run = healthy(f"c{i}")
        for _ in range(2):
            run.llm(error="Error code: 429 - rate_limit_error: slow down", model="claude-x")
        runs.append(run)
        run = healthy(f"d{i}")
        run.llm(
            error="This model's maximum context length is 128000 tokens (context_length_exceeded)",
            model="mini",
        )
        runs.append(run)
        run = healthy(f"e{i}")
        run.root["status"] = {"code": "STATUS_CODE_ERROR", "message": f"Max turns ({10 + i}) exceeded"}
        runs.append(run)
    report = findings_of(stores, runs)
    assert keyed(report) == {
        ("invalid_tool_arguments", "book"): 3,
        ("timeout", "fetch"): 3,
        ("rate_limit", "claude-x"): 3,
        ("context_overflow", "mini"): 3,
        ("max_turns", "Support"): 3,
    }
    rate_limit = next(f for f in report.findings if f.category == "rate_limit")
    assert rate_limit.impact.errors == 6 and rate_limit.impact.extra_turns == 6


def test_errors_propagated_to_parents_count_once_where_they_happened(stores: StoreAt) -> None:
    runs = []
    for i in range(3):
        run = healthy(f"p{i}")
        run.tool("lookup", {"order": i}, error=f"Order {i} not found")
        run.root["status"] = {"code": "STATUS_CODE_ERROR", "message": f"Order {i} not found"}
        runs.append(run)
    report = findings_of(stores, runs)
    assert keyed(report) == {("tool_error", "lookup"): 3}


def test_repetition_loops(stores: StoreAt) -> None:
    runs = []
    for i in range(3):
        run = healthy(f"r{i}")
        for _ in range(4):
            run.tool("search", {"q": "same thing"})
        runs.append(run)
    slightly_different = healthy("ok1")
    for q in ("a", "b", "c", "d"):
        slightly_different.tool("search", {"q": q})
    report = findings_of(stores, runs + [slightly_different])
    assert keyed(report) == {("repetition_loop", "search"): 3}
    assert report.findings[0].impact.extra_turns == 9


@pytest.mark.parametrize(
    "refusal",
    [
        "I'm sorry, but I can't help with that.",
        "Lo siento, no puedo ayudar con eso.",
        "Je suis désolé, mais je ne peux pas vous aider.",
        "Es tut mir leid, aber dabei kann ich nicht helfen.",
        "Desculpe, mas não posso ajudar com isso.",
        "申し訳ありませんが、お手伝いできません。",
    ],
)
def test_refusals_in_several_languages(stores: StoreAt, refusal: str) -> None:
    runs = []
    for i in range(3):
        run = Run(f"x{i}")
        run.llm(text=refusal)
        runs.append(run)
    not_a_refusal = Run("y")
    not_a_refusal.llm(text="I'm sorry, but I can't find order 123; could you check the number?")
    assert keyed(findings_of(stores, runs + [not_a_refusal])) == {("refusal", "Support"): 3}


def test_truncated_and_empty_outputs(stores: StoreAt) -> None:
    runs = []
    for i in range(4):
        run = healthy(f"t{i}")
        run.llm(
            text="The answer is that the" if i % 2 else "", finish="length" if i % 2 else None, model="flash"
        )
        runs.append(run)
    assert keyed(findings_of(stores, runs)) == {("empty_or_truncated_output", "flash"): 4}


def test_slow_tools_that_dominate_their_runs(stores: StoreAt) -> None:
    runs = []
    for i in range(4):
        run = healthy(f"s{i}")
        run.tool("search", {"q": f"slow {i}"}, seconds=20 + i)
        runs.append(run)
    report = findings_of(stores, runs)
    assert keyed(report) == {("latency", "search"): 4}
    assert report.findings[0].impact.latency_ms > 70_000


def test_oversized_prompts(stores: StoreAt) -> None:
    runs = []
    for i in range(3):
        run = Run(f"c{i}", agent="Billing")
        run.llm(prompt_tokens=120_000 + i)
        runs.append(run)
    report = findings_of(stores, runs)
    assert keyed(report) == {("cost", "Billing"): 3}
    assert report.findings[0].impact.tokens > 300_000


def test_guardrails_and_handoffs(stores: StoreAt) -> None:
    runs = []
    for i in range(3):
        run = healthy(f"g{i}")
        run.spans.append(
            span(
                run.trace,
                "GUARDRAIL",
                "guardrail.pii",
                parent=run.root["span_id"],
                **{"guardrail.triggered": True},
            )
        )
        runs.append(run)
        run = healthy(f"f{i}")
        run.spans.append(
            span(
                run.trace,
                "CHAIN",
                "handoff",
                parent=run.root["span_id"],
                error=f"Handoff to Refunds failed: missing field 'reason' (order {i})",
            )
        )
        runs.append(run)
    assert keyed(findings_of(stores, runs)) == {("guardrail", "pii"): 3, ("handoff", "Refunds"): 3}


def test_every_finding_is_ranked_verified_and_carries_a_recountable_query(stores: StoreAt) -> None:
    runs = []
    for i in range(8):
        run = healthy(f"t{i}")
        run.tool("lookup", {"order": i}, error=f"Order {i} not found")
        runs.append(run)
    for i in range(3):
        run = healthy(f"d{i}")
        run.tool("fetch", {"u": i}, error=f"timed out ({i})")
        runs.append(run)
    with build(stores, runs + [healthy(f"h{i}") for i in range(30)]) as store:
        report = analyze(store)
        verify(report, store)
    assert [f.key for f in report.findings] == ["lookup", "fetch"]  # more traces, same severity: first
    assert all(
        f.check and f.check.status == "verified" and f.check.recount == f.affected_traces
        for f in report.findings
    )
    assert report.findings[0].affected_trace_share == pytest.approx(8 / 41)


_SIMULATED: dict[tuple[str, str], tuple[Any, Report]] = {}


def simulated_report(
    backend: str, fmt: str, new_store: Callable[[str], str], folder: Path
) -> tuple[Any, Report]:
    """The simulated corpus of `fmt` analysed on `backend`, made once per test session."""
    if (backend, fmt) not in _SIMULATED:
        truth = simulate(folder / f"sim.{fmt}.jsonl", traces=1200, seed=11, format=fmt)  # type: ignore[arg-type]
        target = new_store(backend)
        with TraceStore.open(target) as store:
            store.ingest([str(truth.traces_path)])
        with TraceStore.open(target, read_only=True) as store:
            report = analyze(store)
            verify(report, store)
        _SIMULATED[backend, fmt] = truth, report
    return _SIMULATED[backend, fmt]


@pytest.mark.parametrize("fmt", ["halo", "otlp"])
def test_simulated_corpus_recall_precision_and_counts(
    backend: str, new_store: Callable[[str], str], tmp_path: Path, fmt: str
) -> None:
    truth, report = simulated_report(backend, fmt, new_store, tmp_path)
    score = score_planted(truth, report.findings)  # patterns in 2% or more of the traces count towards recall
    assert score.systemic, truth.patterns
    assert score.recall >= 0.9, score
    assert score.precision >= 0.9, score  # no finding made of distractors
    assert score.worst_count_error <= 0.1, score
    assert all(f.check and f.check.status == "verified" for f in report.findings)
    assert {f.query_dialect for f in report.findings} == {_dialect(backend)}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["halo", "otlp"])
def test_every_backend_finds_the_same(new_store: Callable[[str], str], tmp_path: Path, fmt: str) -> None:
    """DuckDB and ClickHouse (chdb) give the same report on the same traces: every finding with the
    same counts, impact, evidence and wording, and the same dataset summary; only the queries'
    dialect differs."""
    pytest.importorskip("chdb")
    reports = [simulated_report(backend, fmt, new_store, tmp_path)[1] for backend in ("duckdb", "chdb")]
    ignored = {"query", "query_dialect"}
    found = [[f.model_dump(mode="json", exclude=ignored) for f in report.findings] for report in reports]
    assert found[0] == found[1]
    assert reports[0].dataset == reports[1].dataset


def _dialect(backend: str) -> str:
    return "duckdb" if backend == "duckdb" else "clickhouse"
