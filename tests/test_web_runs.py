"""Analyses from the app, against the scripted OpenAI-compatible server over real HTTP: start a run from
the list's filters in Chromium and watch it finish, follow a report citation to the span, ask a
follow-up; the typed API key never reaches disk; the history survives a restart; cancel and retry."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser import chromium
from playwright.sync_api import Error as PlaywrightError
from scripted_llm import Call, ChatRequest, Delay, ScriptedLLM, Text, ToolCalls

from halo_rlm.simulate import simulate
from halo_rlm.store import TraceStore
from halo_rlm.web.app import Server, Settings

pytestmark = pytest.mark.slow
TYPED_KEY = "sk-typed-in-the-form-7f3a9c"


@pytest.fixture(autouse=True)
def no_provider_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("runs")
    simulate(folder / "sim.jsonl", traces=120, seed=21)
    with TraceStore.open(folder / "store.duckdb") as writable:
        writable.ingest([str(folder / "sim.jsonl")])
    return folder / "store.duckdb"


@pytest.fixture(scope="module")
def cited(store_path: Path) -> tuple[str, str]:
    with TraceStore.open(store_path, read_only=True) as store:
        row = store.query(
            "SELECT trace_id, span_id FROM spans WHERE status = 'ERROR' ORDER BY trace_id, span_id LIMIT 1"
        )[0]
    return row["trace_id"], row["span_id"]


def wait_for_address(page: Any, pattern: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, page.url):
        assert time.monotonic() < deadline, f"still at {page.url}, not {pattern}"
        page.wait_for_timeout(50)


def completed_turns(page: Any) -> int:
    try:
        return page.evaluate("document.querySelectorAll('.turn-block[data-turn-status=completed]').length")
    except PlaywrightError:  # the page is reloading
        return 0


def finish(answer: str, findings: list[dict[str, Any]] | None = None) -> ToolCalls:
    return ToolCalls([Call("final_answer", {"answer": answer, "findings": findings or []})])


def analyst(cited: tuple[str, str]) -> Any:
    trace_id, span_id = cited

    def respond(request: ChatRequest) -> Any:
        if "You are a sub-agent" in request.system_text:
            return Text("nothing to add")
        users = [m.get("content") or "" for m in request.messages if m.get("role") == "user"]
        if any("follow-up question" in u for u in users):
            return finish(f"# Follow-up\n\nThe same tool fails again in [trace:{trace_id}].")
        return finish(
            f"# Failures\n\nThe refund tool fails: see [span:{trace_id}:{span_id}]. It echoed "
            "<script>window.__pwned = 1</script> and [a link](javascript:window.__pwned=2) from a trace.",
            [
                {
                    "title": "Refund tool fails",
                    "category": "tool_error",
                    "severity": "high",
                    "evidence": [{"trace_id": trace_id, "span_id": span_id, "note": "the failing call"}],
                    "recommendation": "Validate the amount before calling the tool.",
                }
            ],
        )

    return respond


def test_start_a_run_from_filters_watch_it_cite_and_follow_up(
    store_path: Path, cited: tuple[str, str]
) -> None:
    trace_id, span_id = cited
    with (
        ScriptedLLM(analyst(cited)) as llm,
        Server(Settings(store=store_path, port=0)) as server,
        chromium() as browser,
    ):
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.login_url)
        page.goto(f"{server.url}/traces?status=error")
        page.click("text=Analyse these traces")
        wait_for_address(page, r"/runs/new\?.*status=error")
        page.fill("textarea[name=prompt]", "Why do these traces fail?")
        page.fill("input[name=model]", "scripted-model")
        page.fill("input[name=base_url]", llm.base_url)
        page.fill("input[name=api_key]", TYPED_KEY)
        page.click("button[type=submit]")
        wait_for_address(page, r"/runs/[0-9a-z]{8}$")
        run_id = page.url.rsplit("/", 1)[1]
        page.wait_for_selector("#run-status[data-status=completed]", timeout=60_000)
        assert "The refund tool fails" in page.inner_text(".report")
        assert "<script>window.__pwned = 1</script>" in page.inner_text(".report")  # shown, not run
        assert page.evaluate("window.__pwned") is None
        assert page.query_selector(".finding .evidence a.cite") is not None
        # the run saw only the filtered traces (a copy of them)
        error_traces = (
            server.ui.store.con.cursor().execute("SELECT count(*) FROM traces WHERE has_errors").fetchall()
        )
        assert page.inner_text(".kv").count(f"{error_traces[0][0]:,}") >= 1
        # a citation in the model's text opens the trace at that span
        page.click(f".answer a.cite[href*='{span_id}']")
        wait_for_address(page, rf"/traces/{trace_id}\?span={span_id}")
        page.wait_for_selector(f".span-detail[data-span-id='{span_id}']")
        assert page.get_attribute(".row.selected", "data-id") == span_id
        # a follow-up continues the conversation and appends to the report
        page.go_back()
        page.fill("#ask textarea[name=question]", "A follow-up question: does it happen again?")
        page.click("#ask button[type=submit]")
        deadline = time.monotonic() + 60
        while completed_turns(page) < 2:  # the page reloads when the turn ends
            assert time.monotonic() < deadline, "the follow-up did not finish"
            page.wait_for_timeout(200)
        assert "The same tool fails again" in page.inner_text(".turns")
        assert not errors, errors
    roots = [r for r in llm.chat_requests if "You are a sub-agent" not in r.system_text]
    follow_up = roots[-1].messages
    # the follow-up continued the root agent's conversation, which holds its first answer
    earlier = [m for m in follow_up if m["role"] != "user"]
    assert "The refund tool fails" in json.dumps(earlier)
    answered = [i for i, m in enumerate(follow_up) if "The refund tool fails" in json.dumps(m)]
    asked = [
        i
        for i, m in enumerate(follow_up)
        if m["role"] == "user" and "follow-up question" in json.dumps(m.get("content"))
    ]
    assert answered and asked and answered[0] < asked[-1]  # the question comes after the first answer
    assert all(r.headers.get("authorization") == f"Bearer {TYPED_KEY}" for r in llm.chat_requests)
    registry = store_path.with_name(store_path.stem + ".runs")  # beside the store, as `halo runs` reads it
    assert (registry / run_id / "report.md").read_text().count("## Follow-up:") == 1
    for path in registry.rglob("*"):
        if path.is_file():
            assert TYPED_KEY.encode() not in path.read_bytes(), f"the API key reached {path}"


def api(server: Server) -> httpx.Client:
    return httpx.Client(
        base_url=server.url,
        headers={"Authorization": f"Bearer {server.settings.token}"},
        follow_redirects=False,
        timeout=30,
    )


def wait_status(client: httpx.Client, run_id: str, wanted: set[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        data = client.get(f"/runs/{run_id}.json").json()
        run = {**data["run"], "status": data["status"]}
        if run["status"] in wanted:
            return run
        assert time.monotonic() < deadline, f"run stayed {run['status']}"
        time.sleep(0.1)


def test_history_survives_a_restart_and_a_cut_run_runs_again(
    store_path: Path, cited: tuple[str, str]
) -> None:
    slow = analyst(cited)
    release = {"slow": True}

    def respond(request: ChatRequest) -> Any:
        reply = slow(request)
        return Delay(30, reply) if release["slow"] else reply

    with ScriptedLLM(respond) as llm:
        with Server(Settings(store=store_path, port=0)) as server, api(server) as client:
            form = {
                "prompt": "Slow question",
                "model": "scripted-model",
                "base_url": llm.base_url,
                "filters": "service=support-bot",
            }
            started = client.post("/runs", data=form)
            assert started.status_code == 303
            run_id = started.headers["location"].rsplit("/", 1)[1]
            wait_status(client, run_id, {"running"})
            assert client.post(f"/runs/{run_id}/cancel").status_code == 303
            assert wait_status(client, run_id, {"cancelled"})["reason"] == "cancelled from the app"
            again = client.post(f"/runs/{run_id}/rerun")
            second = again.headers["location"].rsplit("/", 1)[1]
            assert second != run_id
            wait_status(client, second, {"running"})
        # the app stopped mid-run: the next one says so, and running it again finishes on the same traces
        release["slow"] = False
        with Server(Settings(store=store_path, port=0)) as server, api(server) as client:
            cut = client.get(f"/runs/{second}.json").json()["run"]
            assert cut["status"] == "interrupted", (cut["status"], cut["reason"])
            listed = {r["id"]: r["status"] for r in client.get("/runs.json").json()["runs"]}
            assert listed[run_id] == "cancelled" and listed[second] == "interrupted"
            third = client.post(f"/runs/{second}/rerun").headers["location"].rsplit("/", 1)[1]
            done = wait_status(client, third, {"completed", "failed", "incomplete"})
            assert done["status"] == "completed", done
            services = (
                server.ui.store.con.cursor()
                .execute("SELECT count(*) FROM traces WHERE list_contains(services, 'support-bot')")
                .fetchall()[0][0]
            )
            assert done["summary"]["traces"] == services
            bad = client.post("/runs", data={**form, "max_depth": "99"})
            assert bad.status_code == 400 and "max_depth" in bad.text
    listed = subprocess.run(
        [sys.executable, "-m", "halo_rlm", "runs", "--store", str(store_path), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert third in listed.stdout  # the CLI sees the app's runs
