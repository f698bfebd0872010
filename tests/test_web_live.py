"""Live data in `halo ui`: spans from the real OpenTelemetry SDK exporter appear in an open list without
a reload, "follow latest" moves to each new trace, running spans are drawn to now; the exporter token;
nothing acknowledged is lost at shutdown; and the `halo ui` command itself."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from browser import chromium
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from halo_rlm.simulate import simulate
from halo_rlm.store import TraceStore
from halo_rlm.web import Server, Settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("live")
    simulate(folder / "sim.jsonl", traces=8, seed=2)
    with TraceStore.open(folder / "store.duckdb") as writable:
        writable.ingest([str(folder / "sim.jsonl")])
    return folder / "store.duckdb"


def send_trace(endpoint: str, root: str, *, headers: dict[str, str] | None = None, children: int = 2) -> str:
    """One trace through the SDK's OTLP/HTTP (protobuf) exporter; returns its id."""
    exporter = OTLPSpanExporter(endpoint=endpoint, headers=headers, timeout=10)
    provider = TracerProvider(resource=Resource.create({"service.name": "live-agent"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("live.test")
    with tracer.start_as_current_span(root) as span:
        span.set_attribute("openinference.span.kind", "AGENT")
        trace_id = f"{span.get_span_context().trace_id:032x}"
        for i in range(children):
            with tracer.start_as_current_span(f"step {i}") as child:
                child.set_attribute("input.value", f"live input {i}")
    provider.shutdown()
    return trace_id


def wait_until(page: Any, script: str, arg: Any = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not page.evaluate(script, arg):
        assert time.monotonic() < deadline, f"timed out waiting for: {script}"
        page.wait_for_timeout(50)


def test_exported_spans_appear_in_the_open_list_and_follow_latest_moves_to_them(store_path: Path) -> None:
    with Server(Settings(store=store_path, port=0)) as server, chromium() as browser:
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.login_url)
        before = page.evaluate("document.querySelectorAll('#rows tbody tr').length")
        trace_id = send_trace(f"{server.url}/v1/traces", "live-root-one")
        wait_until(page, "id => !!document.querySelector(`#rows tr[data-key='${id}']`)", trace_id)
        assert (
            page.evaluate("document.querySelector('#rows tbody tr').dataset.key") == trace_id
        )  # newest first
        assert page.evaluate("document.querySelectorAll('#rows tbody tr').length") == before + 1
        assert "fresh" in page.get_attribute(f"#rows tr[data-key='{trace_id}']", "class")
        wait_until(page, "n => document.querySelector('[data-stat=traces]').innerText === String(n)", 9)
        # follow latest: opens the newest trace, then each new one as it arrives
        # A click, not page.check: ticking the box leaves the page, so there is no box left to see ticked.
        page.click("#follow-latest")
        page.wait_for_url(re.compile(rf"/traces/{trace_id}\?follow=1"))
        page.wait_for_selector("body[data-ready='1']")
        second = send_trace(f"{server.url}/v1/traces", "live-root-two", children=3)
        deadline = time.monotonic() + 20
        while second not in page.url:
            assert time.monotonic() < deadline, "follow latest did not move to the new trace"
            page.wait_for_timeout(100)
        page.wait_for_selector("body[data-ready='1']")
        # spans are exported as they end (children first): the open trace takes in the rest as they come
        wait_until(page, "() => document.getElementById('span-count').innerText === '(4)'")
        assert not errors, errors


def test_a_span_still_running_is_drawn_to_now(store_path: Path) -> None:
    start = time.time_ns() - 2_000_000_000
    request = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "live-agent"}}]},
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "ab" * 16,
                                "spanId": "01" * 8,
                                "name": "still working",
                                "kind": 1,
                                "startTimeUnixNano": str(start),
                            },
                            {
                                "traceId": "ab" * 16,
                                "spanId": "02" * 8,
                                "parentSpanId": "01" * 8,
                                "name": "done step",
                                "kind": 1,
                                "startTimeUnixNano": str(start + 1000),
                                "endTimeUnixNano": str(start + 500_000_000),
                            },
                        ]
                    }
                ],
            }
        ]
    }
    with Server(Settings(store=store_path, port=0)) as server, chromium() as browser:
        sent = httpx.post(
            f"{server.url}/v1/traces",
            content=orjson.dumps(request),
            headers={"Content-Type": "application/json"},
        )
        assert sent.status_code == 200
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(server.login_url)
        deadline = time.monotonic() + 20
        while not page.query_selector(f"#rows tr[data-key='{'ab' * 16}']"):
            assert time.monotonic() < deadline
            page.wait_for_timeout(100)
        assert page.inner_text(f"#rows tr[data-key='{'ab' * 16}'] .badge") == "running"
        page.goto(f"{server.url}/traces/{'ab' * 16}")
        page.wait_for_selector("body[data-ready='1']")
        assert page.inner_text(f".row[data-id='{'01' * 8}'] .dur") == "running"
        bar = page.query_selector(f".row[data-id='{'01' * 8}'] .bar.running")
        done = page.query_selector(f".row[data-id='{'02' * 8}'] .bar")
        assert bar is not None and bar.bounding_box()["width"] > 2 * done.bounding_box()["width"]


def test_the_exporter_token_and_nothing_acknowledged_is_lost(tmp_path: Path) -> None:
    store = tmp_path / "store.duckdb"
    with Server(Settings(store=store, port=0, exporter_token="exporter-secret")) as server:
        endpoint = f"{server.url}/v1/traces"
        no_token = httpx.post(endpoint, content=b"{}", headers={"Content-Type": "application/json"})
        assert no_token.status_code == 401
        ids = [
            send_trace(endpoint, f"kept-{i}", headers={"Authorization": "Bearer exporter-secret"})
            for i in range(5)
        ]
    # the app stopped right after the exports were acknowledged: all of them were written
    with TraceStore.open(store, read_only=True) as written:
        assert written.known_traces(ids) == set(ids)
        assert written.count_traces() == 5


def test_the_halo_ui_command_prints_its_address_serves_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    store = tmp_path / "cmd.duckdb"
    env = {**os.environ, "HALO_CACHE_DIR": str(tmp_path / "cache"), "BROWSER": "true"}
    command = [sys.executable, "-m", "halo_rlm", "ui", "--no-browser", "--port", "0", "--store", str(store)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = child.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)/traces\?token=([\w-]+)", line)
        assert match, line
        base, token = match.groups()
        deadline = time.monotonic() + 20
        while True:
            try:
                listed = httpx.get(f"{base}/traces.json", headers={"Authorization": f"Bearer {token}"})
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert listed.status_code == 200 and listed.json()["store_traces"] == 0
        trace_id = send_trace(f"{base}/v1/traces", "from-the-command")
        child.send_signal(signal.SIGINT)
        assert child.wait(30) == 0, child.stderr.read()
    finally:
        if child.poll() is None:
            child.kill()
    with TraceStore.open(store, read_only=True) as written:
        assert written.known_traces([trace_id]) == {trace_id}
