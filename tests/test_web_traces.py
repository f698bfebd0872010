"""The trace pages in real Chromium: the list (filters in the URL, multi-select, text search over span
content, the stat strip over the whole filter, keyset "load more", sessions), a trace of 5,000 spans
(virtualised tree and waterfall, span panel, conversation from flattened and JSON-blob messages), and
hostile trace content that must execute nothing."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from browser import chromium
from web_data import HOSTILE, big_trace, hostile_trace

from halo_rlm.simulate import simulate
from halo_rlm.store import TraceStore
from halo_rlm.web.app import Server, Settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("web")
    simulate(folder / "sim.jsonl", traces=240, seed=11)
    big = big_trace(folder / "big.jsonl", spans=5_000)
    hostile = hostile_trace(folder / "hostile.jsonl")
    store = folder / "store.duckdb"
    with TraceStore.open(store) as writable:
        writable.ingest([str(folder / name) for name in ("sim.jsonl", "big.jsonl", "hostile.jsonl")])
    return {"store": store, "big": big, "hostile": hostile}


@pytest.fixture(scope="module")
def server(corpus: dict[str, Any]) -> Iterator[Server]:
    with Server(Settings(store=corpus["store"], port=0)) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.login_url)
    yield page
    context.close()
    assert not errors, f"script errors on the page: {errors}"


def sql(server: Server, query: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """Expected values, counted straight from the store the app holds open."""
    cursor = server.ui.store.con.cursor()
    try:
        return cursor.execute(query, params).fetchall()
    finally:
        cursor.close()


def wait_until(page: Any, script: str, arg: Any = None, timeout: float = 10.0) -> None:
    """Poll a JavaScript predicate from Python. (Playwright's wait_for_function evaluates its text with
    `eval`, which the app's Content-Security-Policy rightly forbids.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(script, arg):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {script}")
        page.wait_for_timeout(50)


def strip(page: Any) -> dict[str, str]:
    return page.evaluate(
        "Object.fromEntries(Array.from(document.querySelectorAll('[data-stat]'), "
        "e => [e.dataset.stat, e.innerText.trim()]))"
    )


def shown_keys(page: Any) -> list[str]:
    return page.evaluate("Array.from(document.querySelectorAll('#rows tbody tr'), r => r.dataset.key)")


def query_of(page: Any) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


def test_list_pages_through_every_trace_and_counts_the_whole_filter(page: Any, server: Server) -> None:
    total = sql(server, "SELECT count(*) FROM traces")[0][0]
    assert strip(page)["traces"] == f"{total:,}"
    assert len(shown_keys(page)) == 75
    while page.is_visible("#more"):  # infinite scroll, by key: no row twice, none missing
        before = len(shown_keys(page))
        # Not page.click: scrolling the button into view starts the infinite scroll, which may load the
        # last page and hide the button before the click lands. Either way one load adds rows.
        page.dispatch_event("#load-more", "click")
        wait_until(page, f"document.querySelectorAll('#rows tbody tr').length > {before}")
    keys = shown_keys(page)
    assert len(keys) == total == len(set(keys))
    expected = [r[0] for r in sql(server, "SELECT trace_id FROM traces ORDER BY start_ns DESC, trace_id")]
    assert keys == expected


def test_filters_are_multi_select_combinable_and_shared_by_url(page: Any, server: Server) -> None:
    page.click("fieldset[data-facet=status] input[value=error]")
    page.wait_for_url(re.compile(r"status=error"))
    errors = sql(server, "SELECT count(*) FROM traces WHERE has_errors")[0][0]
    assert strip(page)["traces"] == f"{errors:,}" == strip(page)["error_traces"]
    assert {b.inner_text() for b in page.query_selector_all("#rows tbody .badge")} == {"error"}
    services = [
        el.get_attribute("value") for el in page.query_selector_all("fieldset[data-facet=services] input")
    ][:2]
    for service in services:
        page.click(f"fieldset[data-facet=services] input[value='{service}']")
        page.wait_for_url(re.compile(re.escape(service)))
    assert query_of(page)["service"] == services and query_of(page)["status"] == ["error"]
    expected = sql(
        server, "SELECT count(*) FROM traces WHERE has_errors AND list_has_any(services, ?)", [services]
    )
    assert strip(page)["traces"] == f"{expected[0][0]:,}"
    # The same address in a new page shows the same view; its JSON twin returns what the page shows.
    shared = page.url
    twin = page.context.request.get(shared.replace("/traces?", "/traces.json?")).json()
    assert [r["trace_id"] for r in twin["page"]["rows"]] == shown_keys(page)
    assert twin["stats"]["traces"] == expected[0][0]
    page.goto(shared)
    assert strip(page)["traces"] == f"{expected[0][0]:,}"


def test_text_search_reads_span_content_not_only_names(
    page: Any, server: Server, corpus: dict[str, Any]
) -> None:
    big = corpus["big"]["trace_id"]
    for text in ("needle-tool-error", "NEEDLE-USER-question", "the big test agent"):
        # an error message, an input (any case), and a system prompt found only in LLM input messages
        page.fill("input[name=q]", text)
        page.press("input[name=q]", "Enter")
        page.wait_for_url(re.compile(r"q="))
        assert shown_keys(page) == [big], text
        assert strip(page)["traces"] == "1"
    page.fill("input[name=q]", "no such text anywhere 8c1f")
    page.press("input[name=q]", "Enter")
    page.wait_for_selector("p.empty")
    assert strip(page)["traces"] == "0"


def test_text_search_is_answered_by_the_index_once_it_is_built(page: Any, server: Server) -> None:
    """The app builds its search index beside the store; then a search is answered from it, with the
    scan's answer; a search without a letter or digit still scans, and the page says so."""
    index = server.ui.search
    assert index is not None
    deadline = time.monotonic() + 60
    while not index.ready:
        assert time.monotonic() < deadline, index.status()
        time.sleep(0.1)
    assert Path(f"{server.ui.store.path}.search", "manifest.json").exists()
    for text, by in (("Needle-Tool", "index"), ("exploded: needle", "index"), ('":"', "scan")):
        expected = sql(
            server,
            "SELECT count(DISTINCT trace_id) FROM spans WHERE contains(lower(raw), lower(?))",
            [text],
        )[0][0]
        twin = page.context.request.get(f"{server.url}/traces.json?{urlencode({'q': text})}").json()
        assert twin["search"]["by"] == by and twin["stats"]["traces"] == expected > 0, text
        page.fill("input[name=q]", text)
        page.press("input[name=q]", "Enter")
        page.wait_for_url(re.compile(r"q="))
        assert strip(page)["traces"] == f"{expected:,}", text
        note = page.query_selector(".search-note")
        if by == "index":
            assert note is None, text
        else:
            assert note is not None and "without a letter or digit" in note.inner_text()


def test_a_search_index_that_cannot_be_built_is_reported(browser: Any, tmp_path: Path) -> None:
    simulate(tmp_path / "sim.jsonl", traces=20, seed=3)
    store = tmp_path / "store.duckdb"
    with TraceStore.open(store) as writable:
        writable.ingest([str(tmp_path / "sim.jsonl")])
    Path(f"{store}.search").write_text("in the way")  # a file where the index's folder belongs
    with Server(Settings(store=store, port=0)) as running:
        index = running.ui.search
        assert index is not None
        deadline = time.monotonic() + 30
        while index.status().state != "failed":
            assert time.monotonic() < deadline, index.status()
            time.sleep(0.05)
        context = browser.new_context()
        try:
            page = context.new_page()
            page.goto(running.login_url)
            page.goto(f"{running.url}/traces?q=e")
            note = page.wait_for_selector(".search-note")
            assert "search index could not be built" in note.inner_text()
            assert strip(page)["traces"] == "20"  # the scan answers meanwhile
        finally:
            context.close()


def test_sessions_mode_groups_traces_by_session(page: Any, server: Server) -> None:
    page.click("input[name=view][value=sessions]")
    page.wait_for_url(re.compile(r"view=sessions"))
    sessions = sql(server, "SELECT count(DISTINCT session_id) FROM traces")[0][0]
    assert strip(page)["sessions"] == f"{sessions:,}"
    first = page.query_selector("#rows tbody tr")
    session_id = first.get_attribute("data-key")
    turns = sql(server, "SELECT count(*) FROM traces WHERE session_id = ?", [session_id])[0][0]
    assert first.query_selector_all("td.num")[0].inner_text().split()[0] == f"{turns:,}"
    first.query_selector("td.name a").click()
    page.wait_for_url(re.compile(r"session="))
    assert len(shown_keys(page)) == turns


def test_a_trace_of_5000_spans_opens_whole_and_draws_only_what_is_visible(
    page: Any, server: Server, corpus: dict[str, Any]
) -> None:
    big = corpus["big"]
    page.goto(f"{server.url}/traces/{big['trace_id']}")
    page.wait_for_selector("body[data-ready='1']")
    assert page.inner_text("#span-count") == "(5,000)"
    assert 0 < len(page.query_selector_all("#canvas .row")) < 200
    # the failing tool call is marked in the tree and on the waterfall
    failing = big["failing_tool_span"]
    page.evaluate(f"document.getElementById('scroller').scrollTop = {int(failing, 16)} * 24 - 100")
    page.wait_for_selector(f".row.error[data-id='{failing}'] .bar.error")
    # the last span is reachable: nothing is capped
    page.evaluate("document.getElementById('scroller').scrollTop = 1e9")
    page.wait_for_selector(f".row[data-id='{big['last_span']}']")
    # zoom changes the time axis, fit restores it
    before = page.inner_text("#axis")
    page.click("[data-zoom=in]")
    page.click("[data-zoom=in]")
    wait_until(page, "t => document.getElementById('axis').innerText !== t", before)
    page.click("[data-zoom=fit]")
    wait_until(page, "t => document.getElementById('axis').innerText === t", before)


def test_a_span_link_opens_the_panel_and_the_conversation_reads_both_message_shapes(
    page: Any, server: Server, corpus: dict[str, Any]
) -> None:
    big = corpus["big"]
    page.goto(f"{server.url}/traces/{big['trace_id']}?span={big['deep_span']}")
    page.wait_for_selector(f".span-detail[data-span-id='{big['deep_span']}']")
    assert page.get_attribute(".row.selected", "data-id") == big["deep_span"]
    assert "gpt-test" in page.inner_text(".span-detail")
    page.click("[data-tab=conversation]")
    page.wait_for_selector(".convo")
    text = page.inner_text(".convo")
    assert text.count("needle-user-question") == 1  # repeated in every call's input, shown once
    assert "Step 0: looking it up." in text and "Step 1: looking it up." in text  # flattened, then blob
    assert "Found the needle-final-answer." in text
    assert page.query_selector(".chip-call.failed") is not None
    page.click(".chip-call.failed summary")
    assert "needle-tool-error" in page.inner_text(".chip-call.failed")


def test_hostile_trace_content_executes_nothing(page: Any, server: Server, corpus: dict[str, Any]) -> None:
    hostile = corpus["hostile"]
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(f"{server.url}/traces?q=__pwned")
    assert shown_keys(page) == [hostile["trace_id"]]
    page.goto(f"{server.url}/traces?service={HOSTILE[3]}")
    page.goto(f"{server.url}/traces/{hostile['trace_id']}")
    page.wait_for_selector("body[data-ready='1']")
    for span_id in hostile["spans"]:
        page.click(f".row[data-id='{span_id}']")
        page.wait_for_selector(f".span-detail[data-span-id='{span_id}']")
        for details in page.query_selector_all(".span-detail details"):
            details.evaluate("d => d.open = true")
    page.click("[data-tab=conversation]")
    page.wait_for_selector(".convo")
    for details in page.query_selector_all(".convo details"):
        details.evaluate("d => d.open = true")
    page.wait_for_timeout(300)
    assert page.evaluate("window.__pwned") is None
    assert not dialogs
    scripts = page.evaluate("Array.from(document.scripts, s => s.src || ('inline:' + s.type))")
    assert all(s.startswith(f"{server.url}/static/") or s == "inline:application/json" for s in scripts), (
        scripts
    )
    assert page.query_selector("iframe, svg[onload], img[onerror], a[href^='javascript:']") is None
    assert HOSTILE[0] in page.inner_text("body")  # shown as text


def test_unknown_trace_and_bad_parameters_get_clear_errors(server: Server) -> None:
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.settings.token}"}
    ) as client:
        missing = client.get("/traces/0123456789abcdef.json")
        assert missing.status_code == 404 and "no trace" in missing.json()["error"]
        bad = client.get("/traces.json", params={"sort": "bogus"})
        assert bad.status_code == 400 and "sort" in bad.json()["error"]
        cursor = client.get("/traces.json", params={"cursor": "not-a-cursor"})
        assert cursor.status_code == 400 and "cursor" in cursor.json()["error"]
        since = client.get("/traces", params={"since": "yesterday"})
        assert since.status_code == 400 and "ISO-8601" in since.text


def test_pages_and_json_twins_exist_side_by_side(server: Server, corpus: dict[str, Any]) -> None:
    big = corpus["big"]
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.settings.token}"}
    ) as client:
        trace = client.get(f"/traces/{big['trace_id']}.json").json()
        assert len(trace["spans"]["spans"]) == big["spans"]
        assert trace["trace"]["spans"] == big["spans"]
        span = client.get(f"/traces/{big['trace_id']}/spans/{big['failing_tool_span']}.json").json()
        assert span["status"] == "ERROR" and "needle-tool-error" in span["status_message"]
        convo = client.get(f"/traces/{big['trace_id']}/conversation.json").json()
        assert convo["source"] == "llm spans" and convo["turns"][0]["role"] == "system"
        for path in ("/traces", f"/traces/{big['trace_id']}", f"/traces/{big['trace_id']}/conversation"):
            assert client.get(path).headers["content-type"].startswith("text/html")
