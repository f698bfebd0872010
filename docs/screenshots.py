"""Screenshots of every `halo ui` page, for the docs: regenerate them after changing a page.

    python docs/screenshots.py            # writes docs/screenshots/*.png

It fills a temporary store with the simulated example agents, starts the app, runs one analysis
against the tests' scripted OpenAI-compatible server (no provider needed), and photographs each page
in Debian's Chromium (or $HALO_CHROMIUM) through Playwright. The compare pages compare a detectors-only
analysis of the store with simulated traces of the same agents without tool errors.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from playwright.sync_api import Error as PlaywrightError  # noqa: E402 - after the path set-up above
from playwright.sync_api import sync_playwright  # noqa: E402 - after the path set-up above
from scripted_llm import Call, ChatRequest, ScriptedLLM, Text, ToolCalls  # noqa: E402 - after the path set-up above

from halo_rlm.analyses import analyze_with_detectors  # noqa: E402 - after the path set-up above
from halo_rlm.runs import RunRegistry  # noqa: E402 - after the path set-up above
from halo_rlm.simulate import simulate  # noqa: E402 - after the path set-up above
from halo_rlm.store import TraceStore  # noqa: E402 - after the path set-up above
from halo_rlm.web import Server, Settings  # noqa: E402 - after the path set-up above

OUT = Path(__file__).parent / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def analyst(trace_id: str, span_id: str) -> Any:
    def respond(request: ChatRequest) -> Any:
        if "You are a sub-agent" in request.system_text:
            return Text("Nothing to add.")
        answer = (
            "# Why billing runs fail\n\n"
            f"Most failures start when `refund_invoice` gets an amount as a string [span:{trace_id}:{span_id}]; "
            "the agent then retries the same call instead of converting it.\n\n"
            "| failure | traces | fix |\n|---|---|---|\n| string amounts | 18% | type the schema |"
        )
        findings = [
            {
                "title": "refund_invoice receives amounts as strings",
                "category": "invalid_tool_arguments",
                "severity": "high",
                "recommendation": "Declare `amount` as a number in the tool schema.",
                "evidence": [{"trace_id": trace_id, "span_id": span_id, "note": "the failing call"}],
            }
        ]
        return ToolCalls([Call("final_answer", {"answer": answer, "findings": findings})])

    return respond


def finished(page: Any) -> bool:
    try:
        return page.query_selector("#run-status[data-status=completed]") is not None
    except PlaywrightError:  # the page is reloading to show the report
        return False


def shoot(page: Any, name: str) -> None:
    page.wait_for_timeout(400)
    page.screenshot(path=str(OUT / f"{name}.png"))
    print(f"docs/screenshots/{name}.png")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="halo-shots-"))
    simulate(work / "traces.jsonl", traces=400, seed=7)
    store = work / "store.duckdb"
    with TraceStore.open(store) as writable:
        writable.ingest([str(work / "traces.jsonl")])
        trace_id, span_id = writable.query(
            "SELECT trace_id, span_id FROM spans WHERE status = 'ERROR' AND kind = 'TOOL' "
            "AND trace_id IN (SELECT trace_id FROM traces WHERE span_count BETWEEN 6 AND 12) LIMIT 1"
        )[0].values()
    # a detectors-only analysis of the store (BEFORE), and the same agents after a fix (AFTER) to compare
    detectors_run = analyze_with_detectors(store, registry=RunRegistry.beside(store))[0].id
    after = simulate(work / "after.jsonl", traces=400, seed=8, rates={"tool_error": 0.0}).traces_path
    empty = work / "empty.duckdb"
    with ScriptedLLM(analyst(trace_id, span_id)) as llm, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        with Server(Settings(store=empty, port=0)) as server:
            page.goto(server.login_url)
            shoot(page, "welcome")
        with Server(Settings(store=store, port=0)) as server:
            page.goto(server.login_url)
            shoot(page, "traces")
            page.goto(f"{server.url}/traces?status=error&service=billing-agent&sort=cost")
            shoot(page, "traces-filtered")
            page.goto(f"{server.url}/traces?view=sessions")
            shoot(page, "sessions")
            page.goto(f"{server.url}/traces/{trace_id}?span={span_id}")
            page.wait_for_selector(".span-detail")
            shoot(page, "trace")
            page.click("[data-tab=conversation]")
            page.wait_for_selector(".convo")
            shoot(page, "conversation")
            page.goto(f"{server.url}/sources")
            shoot(page, "sources")
            page.goto(f"{server.url}/runs/new?status=error")
            page.fill("input[name=model]", "scripted-model")
            page.fill("input[name=base_url]", llm.base_url)
            page.fill("input[name=api_key]", "not-a-real-key")
            shoot(page, "analysis-new")
            page.click("button[type=submit]")
            deadline = time.monotonic() + 120
            while not finished(page):
                if time.monotonic() > deadline:
                    raise SystemExit("the analysis did not finish")
                page.wait_for_timeout(200)
            shoot(page, "analysis-report")
            page.goto(f"{server.url}/runs")
            shoot(page, "analyses")
            page.goto(f"{server.url}/compare")
            page.check(f"input[name=before][value='{detectors_run}']")
            page.fill("input[name=after_path]", str(after))
            shoot(page, "compare")
            page.click("#compare-form button[type=submit]")
            page.wait_for_selector("#start")
            page.click("#start button[type=submit]")
            page.wait_for_selector("#compare-status[data-status=completed]", timeout=120_000)
            shoot(page, "compare-result")
        browser.close()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
