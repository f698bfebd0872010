"""`halo import phoenix` against a real `phoenix serve`, fed by the real OpenTelemetry SDK.

One server serves every test here (module scope: all Phoenix tests live in this module, and a server
outliving it would show up in other modules' checks for stray child processes): loopback only, random
ports, a temporary working dir, telemetry and external resources off, and authentication on (an admin
secret as the bearer token), so the API-key path is exercised too. Spans reach it through the
OTLP/HTTP protobuf exporter (Phoenix rejects OTLP/JSON); each test writes to its own project
(resource `openinference.project.name`).
"""

from __future__ import annotations

import importlib.metadata
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner

from halo_rlm.cli import cli
from halo_rlm.sources.http import Http
from halo_rlm.store import TraceStore
from halo_rlm.utils import iso_to_ns


def _installed(distribution: str) -> bool:
    # Asked of the package metadata: importing `phoenix` to find out would load half of it.
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not _installed("arize-phoenix"), reason="arize-phoenix is not installed (pip install -e '.[test]')"
    ),
]

SECRET = "halo-test-jwt-secret-0123456789abcdefgh"
ADMIN_KEY = "halo-test-admin-key-0123456789abcdefgh"
START = iso_to_ns("2026-05-15T10:00:00Z")
assert START is not None


@dataclass
class Phoenix:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def phoenix_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phoenix]:
    workdir = tmp_path_factory.mktemp("phoenix")
    port = free_port("127.0.0.1")
    env = {
        **os.environ,
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(free_port("0.0.0.0")),  # gRPC binds every interface whatever the host
        "PHOENIX_WORKING_DIR": str(workdir),
        "PHOENIX_TELEMETRY_ENABLED": "false",
        "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
        "PHOENIX_ENABLE_AUTH": "true",
        "PHOENIX_SECRET": SECRET,
        "PHOENIX_ADMIN_SECRET": ADMIN_KEY,
    }
    env.pop("PHOENIX_SQL_DATABASE_URL", None)
    log = workdir / "phoenix.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "phoenix.server.main", "serve"],
            env=env,
            cwd=workdir,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = Phoenix(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 240  # about 20 s on two cores; generous for a busy machine
        while True:
            if process.poll() is not None:
                pytest.fail(f"phoenix serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"phoenix serve did not become healthy:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def send_agent_runs(server: Phoenix, project: str, runs: int = 2) -> list[str]:
    """Agent runs through the SDK's protobuf exporter: AGENT → LLM (with an event) → TOOL that fails."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import Status, StatusCode

    provider = TracerProvider(
        resource=Resource.create({"service.name": "refund-agent", "openinference.project.name": project})
    )
    exporter = OTLPSpanExporter(
        endpoint=f"{server.url}/v1/traces", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("refund-agent", "1.0")
    trace_ids = []
    for run in range(runs):
        t0 = START + run * 60 * 10**9
        agent = tracer.start_span(
            "refund-agent",
            start_time=t0,
            attributes={
                "openinference.span.kind": "AGENT",
                "session.id": f"session-{run}",
                "user.id": "user-7",
                "input.value": "Refund order 9",
                "agent.name": "refund-agent",
            },
        )
        trace_ids.append(format(agent.get_span_context().trace_id, "032x"))
        with_agent = _context(agent)
        llm = tracer.start_span(
            "ChatCompletion",
            context=with_agent,
            start_time=t0 + 10**8,
            attributes={
                "openinference.span.kind": "LLM",
                "llm.model_name": "gpt-4o-mini",
                "llm.provider": "openai",
                "llm.token_count.prompt": 120 + run,
                "llm.token_count.completion": 30,
                "llm.token_count.total": 150 + run,
                "llm.input_messages.0.message.role": "user",
                "llm.input_messages.0.message.content": "Refund order 9",
                "llm.output_messages.0.message.role": "assistant",
                "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "issue_refund",
                "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments": '{"order": 9}',
            },
        )
        llm.add_event("first_token", {"ttft_ms": 180}, timestamp=t0 + 3 * 10**8)
        llm.end(end_time=t0 + 9 * 10**8)
        tool = tracer.start_span(
            "issue_refund",
            context=with_agent,
            start_time=t0 + 10**9,
            attributes={
                "openinference.span.kind": "TOOL",
                "tool.name": "issue_refund",
                "input.value": '{"order": 9}',
            },
        )
        tool.record_exception(RuntimeError("Refund API returned 500"), timestamp=t0 + 2 * 10**9)
        tool.set_status(Status(StatusCode.ERROR, "Refund API returned 500"))
        tool.end(end_time=t0 + 2 * 10**9)
        agent.end(end_time=t0 + 3 * 10**9)
    provider.shutdown()
    _wait_for_spans(server, project, runs * 3)
    return trace_ids


def _context(span: Any) -> Any:
    from opentelemetry import trace

    return trace.set_span_in_context(span)


def _wait_for_spans(server: Phoenix, project: str, count: int) -> None:
    """Phoenix writes received spans in the background; wait until all are readable."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = httpx.get(
            f"{server.url}/v1/projects/{project}/spans",
            params={"limit": 1000},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        if response.status_code == 200 and len(response.json()["data"]) >= count:
            return
        time.sleep(0.2)
    pytest.fail(f"Phoenix did not show {count} spans in project {project}")


def run_import(
    server: Phoenix, project: str, store: Path, *args: str | Path, key: str | None = ADMIN_KEY
) -> tuple[int, Any, str]:
    result = CliRunner().invoke(
        cli,
        [
            "import",
            "phoenix",
            "--endpoint",
            server.url,
            "--project",
            project,
            "--store",
            str(store),
            "--json",
            *(["--api-key", key] if key else []),
            *[str(a) for a in args],
        ],
    )
    return result.exit_code, orjson.loads(result.stdout) if result.exit_code == 0 else None, result.stderr


def spans(store: Path) -> dict[str, dict[str, Any]]:
    with TraceStore.open(store, read_only=True) as s:
        rows = s.sql("SELECT * FROM spans", max_rows=10_000, max_bytes=10**8)
    return {row[1]: dict(zip(rows.columns, row, strict=True)) for row in rows.rows}


def test_imports_a_project_as_canonical_spans(phoenix_server: Phoenix, tmp_path: Path) -> None:
    trace_ids = send_agent_runs(phoenix_server, "canonical")
    store, out = tmp_path / "px.duckdb", tmp_path / "px.jsonl"
    # Pages of two: several pages through Phoenix's own cursors.
    code, report, err = run_import(phoenix_server, "canonical", store, "--out", out, "--page-size", "2")
    assert code == 0, err
    assert report["spans"] == 6 and report["pages"] == 3 and report["complete"] and report["skipped"] == 0

    rows = spans(store)
    assert {r["trace_id"] for r in rows.values()} == set(trace_ids)
    by_name = {(r["trace_id"], r["name"]): r for r in rows.values()}
    agent, llm, tool = (
        by_name[(trace_ids[1], name)] for name in ("refund-agent", "ChatCompletion", "issue_refund")
    )
    assert agent["parent_id"] is None and llm["parent_id"] == agent["span_id"] == tool["parent_id"]
    assert not any(r["is_orphan"] for r in rows.values())
    assert (agent["kind"], llm["kind"], tool["kind"]) == ("AGENT", "LLM", "TOOL")
    assert (agent["session_id"], agent["user_id"], agent["service"]) == ("session-1", "user-7", "canonical")
    assert (llm["model"], llm["provider"]) == ("gpt-4o-mini", "openai")
    assert (llm["input_tokens"], llm["output_tokens"], llm["total_tokens"]) == (121, 30, 151)
    assert llm["tool_calls"] == [{"id": None, "name": "issue_refund", "arguments": '{"order": 9}'}]
    with TraceStore.open(store, read_only=True) as read_only:
        view = read_only.view_spans(llm["trace_id"], [llm["span_id"]])
    assert view.spans[0].messages["input_messages"] == [{"role": "user", "content": "Refund order 9"}]  # type: ignore[index]
    assert (llm["start_ns"], llm["end_ns"]) == (START + 60 * 10**9 + 10**8, START + 60 * 10**9 + 9 * 10**8)
    llm_events = orjson.loads(llm["raw"])["events"]
    assert llm_events == [
        {"name": "first_token", "time": START + 60 * 10**9 + 3 * 10**8, "attributes": {"ttft_ms": 180}}
    ]
    assert (tool["status"], tool["status_message"], tool["tool_name"]) == (
        "ERROR",
        "Refund API returned 500",
        "issue_refund",
    )
    exception = orjson.loads(tool["exceptions"])[0]
    assert exception["type"] == "RuntimeError" and exception["message"] == "Refund API returned 500"
    assert agent["status"] == "UNSET" and llm["status"] == "UNSET"
    # The JSONL copy holds the same flat spans, so `halo ingest` rebuilds the same store.
    again = tmp_path / "again.duckdb"
    with TraceStore.open(again) as s:
        assert s.ingest([out]).spans == 6
    assert {k: (r["kind"], r["model"], r["status"]) for k, r in spans(again).items()} == {
        k: (r["kind"], r["model"], r["status"]) for k, r in rows.items()
    }


def test_time_window_limit_and_resume(
    phoenix_server: Phoenix, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace_ids = send_agent_runs(phoenix_server, "windowed", runs=3)
    store = tmp_path / "px.duckdb"
    code, report, err = run_import(
        phoenix_server,
        "windowed",
        store,
        "--since",
        "2026-05-15T10:01:00Z",
        "--until",
        "2026-05-15T10:02:00Z",
    )
    assert code == 0 and report["spans"] == 3, err
    assert {r["trace_id"] for r in spans(store).values()} == {trace_ids[1]}

    store = tmp_path / "all.duckdb"
    code, report, _ = run_import(phoenix_server, "windowed", store, "--limit", "3", "--page-size", "2")
    assert code == 0 and report["limited"] and report["spans"] == 3
    # An interrupted run (Ctrl-C during the next page) keeps its place too.
    real_get = Http.get
    calls = {"n": 0}

    def interrupted(self: Http, path: str, params: dict[str, Any] | None = None) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_get(self, path, params)

    monkeypatch.setattr(Http, "get", interrupted)
    result = CliRunner().invoke(
        cli,
        [
            "import",
            "phoenix",
            "--endpoint",
            phoenix_server.url,
            "--project",
            "windowed",
            "--store",
            str(store),
            "--api-key",
            ADMIN_KEY,
            "--page-size",
            "2",
        ],
    )
    assert result.exit_code == 130 and "Run the same command again" in result.stderr
    monkeypatch.setattr(Http, "get", real_get)
    code, report, err = run_import(phoenix_server, "windowed", store, "--page-size", "2")
    assert code == 0 and report["resumed"] and report["complete"], err
    assert len(spans(store)) == 9 and report["duplicates"] == 0


def test_auth_and_project_errors(phoenix_server: Phoenix, tmp_path: Path) -> None:
    send_agent_runs(phoenix_server, "guarded", runs=1)
    store = tmp_path / "px.duckdb"
    code, _, err = run_import(phoenix_server, "guarded", store, key=None)
    assert code == 1 and "HTTP 401" in err and "--api-key" in err
    code, _, err = run_import(phoenix_server, "guarded", store, key="wrong-key-123")
    assert code == 1 and "HTTP 401" in err and "refused the API key" in err and "wrong-key-123" not in err
    code, _, err = run_import(phoenix_server, "no-such-project", store)
    assert code == 1 and "no Phoenix project 'no-such-project'" in err and "guarded" in err
