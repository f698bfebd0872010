"""report.html in real Chromium: charts fit their columns from 800 to 1920 px, a 1 MB unbroken value
wraps instead of widening the page, evidence ids and the analysis's citations expand inline to their
span excerpts, and the page works dark and printed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from browser import chromium

from halo_rlm.render import write
from halo_rlm.report import Bucket, DatasetSummary, Evidence, Finding, Report

pytestmark = pytest.mark.slow

HUGE = "x" * 1_000_000  # one unbroken value


def report() -> Report:
    findings = [
        Finding(
            id=f"tool_error:tool_{i}",
            title=f"`a_rather_long_tool_name_number_{i}_{'y' * 40}` fails: `{'Order <n> not found ' * 6}`",
            category="tool_error",
            severity=("critical", "high", "medium", "low")[i % 4],
            affected_traces=900 - 40 * i,
            affected_trace_share=(900 - 40 * i) / 1000,
            evidence=[
                Evidence(
                    trace_id=f"t{i}{j}", span_id=f"s{i}{j}", excerpt=f"error {j} " * 20, note="the error"
                )
                for j in range(3)
            ],
            recommendation="Return `found: false` instead of raising; see https://example.com/docs.",
            confidence=0.8,
            source="detector:tool_error",
            key=f"tool_{i}",
            details=HUGE if i == 0 else "details",
            query="SELECT trace_id FROM spans",
        )
        for i in range(15)
    ]
    return Report(
        mode="llm",
        prompt="Why do runs fail?",
        store="/tmp/s.duckdb",
        dataset=DatasetSummary(
            traces=1000,
            spans=9000,
            error_traces=400,
            duration_histogram=[
                Bucket(label=f"{i}–{i + 1} min of waiting", count=10 * i + 3) for i in range(8)
            ],
            cost_histogram=[Bucket(label=f"${i}–${i + 1}", count=100 - i) for i in range(8)],
        ),
        findings=findings,
        answer=f"## Why\n\nSee [span:t00:s00], [span:t31:s31] and [span:t99:s99].\n\n{HUGE[:200_000]}\n\n"
        "<img src=http://evil.example/beacon.png>",
        cited=[Evidence(trace_id="t99", span_id="s99", excerpt="the cited span's own text")],
        notes=[HUGE],
    )


@pytest.fixture(scope="module")
def page_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write(report(), tmp_path_factory.mktemp("html"))["html"]


def boxes(page: Any, selector: str) -> list[dict[str, float]]:
    return page.eval_on_selector_all(
        selector,
        "els => els.map(e => { const r = e.getBoundingClientRect(); "
        "return {left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width}; })",
    )


def overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        a["left"] < b["right"] - 0.5
        and b["left"] < a["right"] - 0.5
        and a["top"] < b["bottom"] - 0.5
        and (b["top"] < a["bottom"] - 0.5)
    )


def test_charts_fit_their_columns_and_long_values_wrap(page_path: Path) -> None:
    with chromium() as browser:
        for width in (800, 1024, 1280, 1600, 1920):
            page = browser.new_page(viewport={"width": width, "height": 900})  # type: ignore[attr-defined]
            page.goto(page_path.as_uri())
            figures, charts = boxes(page, ".charts figure"), boxes(page, ".charts figure svg")
            assert len(figures) == len(charts) == 3
            for figure, chart in zip(figures, charts, strict=True):
                assert chart["width"] > 100, (width, chart)
                assert figure["left"] - 0.5 <= chart["left"] and chart["right"] <= figure["right"] + 0.5, (
                    width
                )
            assert not any(overlap(a, b) for i, a in enumerate(figures) for b in figures[i + 1 :]), width
            scroll = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert scroll[0] <= scroll[1], (width, scroll)
            page.close()


def test_evidence_and_citations_expand_inline_to_their_excerpts(page_path: Path) -> None:
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
        page.goto(page_path.as_uri())
        targets = page.eval_on_selector_all(".answer a.cite", "els => els.map(e => e.getAttribute('href'))")
        assert len(targets) == 3  # [span:t00:s00] in a finding, [span:t99:s99] cited only in the analysis...
        assert page.locator(".answer code.cite").count() == 0
        for href in targets:
            target = page.locator(href)
            assert target.count() == 1 and target.evaluate("e => e.tagName") == "DETAILS"
        ids = page.eval_on_selector_all("details.ev", "els => els.map(e => e.id)")
        assert all(ids) and len(ids) == len(set(ids)) == 15 * 3 + 1
        page.click(f"{targets[1]} > summary")
        excerpt = page.locator(f"{targets[1]} pre.excerpt")
        assert excerpt.is_visible() and "error 1" in excerpt.inner_text()
        assert "halo show t31 --span s31" in page.locator(targets[1]).inner_text()
        # a value too long to show is clipped, with the rest behind a <details> to open
        long = page.locator("details.long").first
        assert not long.locator(".full").is_visible()
        long.locator("summary").click()
        assert long.locator(".full").is_visible()
        assert page.locator("img").count() == 0


def test_dark_mode_and_print(page_path: Path) -> None:
    with chromium() as browser:
        page = browser.new_page(color_scheme="dark")  # type: ignore[attr-defined]
        page.goto(page_path.as_uri())
        background, text = page.evaluate(
            "[getComputedStyle(document.documentElement).backgroundColor, getComputedStyle(document.body).color]"
        )
        assert luminance(background) < 0.2 < 0.6 < luminance(text), (background, text)
        chart_text = page.eval_on_selector(".charts svg text", "e => getComputedStyle(e).fill")
        assert luminance(chart_text) > 0.6
        page.emulate_media(media="print", color_scheme="light")
        assert page.locator("details.ev pre.excerpt").first.is_visible()  # printed open
        assert len(page.pdf()) > 10_000


def luminance(css: str) -> float:
    r, g, b = (int(v) / 255 for v in css[css.index("(") + 1 : css.index(")")].split(",")[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b
