"""Detectors on hand-made traces, for what they got wrong before: a tool slow every time is a
bottleneck; a retry after a failed call belongs to that failure, not to a loop; and a failure is
counted in every trace it happened in, so the count is a recount of the finding's own query. Each
test runs on every store backend (DuckDB and ClickHouse's chdb)."""

from __future__ import annotations

from test_detect import Run, StoreAt, build, healthy, stores  # noqa: F401 - stores: the fixture

from halo_rlm.detect import analyze
from halo_rlm.report import Report
from halo_rlm.verify import verify


def report_of(stores: StoreAt, special: list[Run], healthy_runs: int = 30) -> Report:
    with build(stores, special + [healthy(f"h{i:03d}") for i in range(healthy_runs)]) as store:
        return verify(analyze(store), store)


def keyed(report: Report) -> dict[tuple[str, str | None], int]:
    return {(f.category, f.key): f.affected_traces for f in report.findings}


def test_a_tool_slow_every_time_is_a_bottleneck_with_its_share_and_percentiles(stores: StoreAt) -> None:
    runs = []
    for i in range(10):  # every call takes 30-39 s of a 60 s run: consistent, so never an outlier
        run = Run(f"slow{i}", tools=("render_pdf",))
        run.llm(calls=[("render_pdf", {"doc": i})], text=None)
        run.tool("render_pdf", {"doc": i}, result="ok", seconds=30 + i)
        run.llm(text="Here is your PDF.")
        runs.append(run)
    report = report_of(stores, runs)
    assert keyed(report) == {("latency", "render_pdf"): 10}
    (finding,) = report.findings
    assert finding.source == "detector:bottleneck" and finding.check and finding.check.status == "verified"
    assert "every time" in finding.details and "of all run time" in finding.details
    assert "p50 34.5 s / p95 38.5 s" in finding.details  # its calls, against the other steps':
    assert "against p50 1.0 s" in finding.details
    assert finding.impact.latency_ms == sum(30_000 + 1_000 * i for i in range(10))
    assert len(finding.evidence) == 5 and "of a 60.0 s run" in finding.evidence[0].note


def test_a_tool_slow_now_and_then_is_still_an_outlier_not_a_bottleneck(stores: StoreAt) -> None:
    runs = []
    for i in range(40):
        run = Run(f"r{i}")
        run.llm(calls=[("search", {"q": i})], text=None)
        run.tool("search", {"q": i}, result="3 results", seconds=25 if i < 6 else 0.5)
        run.llm(text="Done.")
        runs.append(run)
    report = report_of(stores, runs, healthy_runs=0)
    assert keyed(report) == {("latency", "search"): 6}
    assert report.findings[0].source == "detector:latency"


def test_retries_after_a_rate_limit_belong_to_the_rate_limit_not_a_loop(stores: StoreAt) -> None:
    runs = []
    for i in range(6):  # the harness retries a 429 with identical arguments until it passes
        run = Run(f"retry{i}", tools=("get_weather",))
        run.llm(calls=[("get_weather", {"city": "Oslo"})], text=None)
        for _ in range(2):
            run.tool("get_weather", {"city": "Oslo"}, error="429 Too Many Requests: rate limit exceeded")
        run.tool("get_weather", {"city": "Oslo"}, result="sunny")
        run.llm(text="It is sunny.")
        runs.append(run)
    for i in range(4):  # a real loop: the same successful call over and over
        run = healthy(f"loop{i}")
        for _ in range(3):
            run.tool("search", {"q": "same"}, result="3 results")
        runs.append(run)
    report = report_of(stores, runs)
    assert keyed(report) == {("rate_limit", "get_weather"): 6, ("repetition_loop", "search"): 4}
    (rate,) = [f for f in report.findings if f.category == "rate_limit"]
    assert rate.impact.errors == 12 and rate.impact.extra_turns == 12  # the retries are its cost


def test_a_failure_counts_in_every_trace_even_when_a_child_failed_another_way(stores: StoreAt) -> None:
    runs = []
    for i in range(8):  # every run ends at its turn limit; in three a tool also failed on the way
        run = healthy(f"turns{i}")
        if i < 3:
            run.tool("lookup", {"order": i}, error=f"Order {i} not found")
        run.root["status"] = {"code": "STATUS_CODE_ERROR", "message": "Max turns (10) exceeded"}
        runs.append(run)
    for i in range(5):  # a rate limit that propagates to the agent span is counted once, where it happened
        run = healthy(f"rl{i}")
        run.llm(error="Error code: 429 - rate_limit_error", model="claude")
        run.root["status"] = {"code": "STATUS_CODE_ERROR", "message": "Error code: 429 - rate_limit_error"}
        runs.append(run)
    report = report_of(stores, runs)
    found = keyed(report)
    assert found[("max_turns", "Support")] == 8 and found[("rate_limit", "claude")] == 5
    (rate,) = [f for f in report.findings if f.category == "rate_limit"]
    assert rate.impact.errors == 5
    for f in report.findings:  # every count is a recount of the finding's own query
        assert f.check and f.check.status == "verified" and f.check.recount == f.affected_traces
