"""The compare page over real HTTP: BEFORE a recorded analysis of the app's store (its report and its
traces), AFTER a store typed in, where a planted failure (tool errors) is gone. The verdicts and numbers the
page shows are those `compare_stores` computes on the same inputs; the JSON twin is the `Comparison`;
hostile finding text is escaped; and one flow in real Chromium."""

from __future__ import annotations

import html
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import pytest
from browser import chromium
from markupsafe import escape

from halo_rlm.analyses import analyze_with_detectors
from halo_rlm.compare import (
    CHANGE_MARKS,
    VERDICT_MARKS,
    Comparison,
    compare_stores,
    load_report,
    outcome_change_text,
    pct,
    rate_change_text,
    relative_text,
    value_text,
)
from halo_rlm.runs import RunRegistry
from halo_rlm.simulate import simulate
from halo_rlm.store import TraceStore
from halo_rlm.web import Server, Settings

HOSTILE_TITLE = "<script>window.__pwned = 1</script> refunds fail"
HOSTILE_KEY = '<img src=x onerror="window.__pwned = 2">'


def ingest(jsonl: Path, store: Path) -> Path:
    with TraceStore.open(store) as writable:
        writable.ingest([str(jsonl)])
    return store


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The app's store with one recorded analysis (its report from the detectors, its traces the `before`
    store, where 30% of traces hit tool errors), a second analysis whose report carries a hostile finding,
    and the `after` store: the same agents without tool errors."""
    folder = tmp_path_factory.mktemp("compare")
    before = ingest(
        simulate(folder / "before.jsonl", traces=200, seed=1, rates={"tool_error": 0.3}).traces_path,
        folder / "before.duckdb",
    )
    after = ingest(
        simulate(folder / "after.jsonl", traces=200, seed=2, rates={"tool_error": 0.0}).traces_path,
        folder / "after.duckdb",
    )
    app_store = ingest(simulate(folder / "app.jsonl", traces=20, seed=3).traces_path, folder / "app.duckdb")
    registry = RunRegistry.beside(app_store)
    run, _ = analyze_with_detectors(before, registry=registry, prompt="Why do refunds fail?")
    hostile, report = analyze_with_detectors(before, registry=registry, prompt="<b>bold</b> question")
    data = orjson.loads(report.model_dump_json())
    data["findings"].append(
        {
            "id": "llm-1",
            "title": HOSTILE_TITLE,
            "category": "tool_error",
            "severity": "high",
            "affected_traces": 1,
            "affected_trace_share": 0.01,
            "recommendation": "none",
            "confidence": 0.5,
            "source": "llm",
            "key": HOSTILE_KEY,
            "query": "SELECT trace_id FROM traces WHERE has_errors",
        }
    )
    path = hostile.file("report.json")
    assert path is not None
    path.write_bytes(orjson.dumps(data))
    return {"before": before, "after": after, "app": app_store, "run": run.id, "hostile": hostile.id}


@pytest.fixture(scope="module")
def server(stores: dict[str, Any]) -> Iterator[Server]:
    with Server(Settings(store=stores["app"], port=0)) as running:
        yield running


def api(server: Server) -> httpx.Client:
    return httpx.Client(
        base_url=server.url,
        headers={"Authorization": f"Bearer {server.settings.token}"},
        follow_redirects=False,
        timeout=60,
    )


def wait_done(client: httpx.Client, run_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        data = client.get(f"/compare.json?run={run_id}").json()
        if data["status"] != "running":
            return data
        assert time.monotonic() < deadline, f"comparison still {data['stage']}"
        time.sleep(0.1)


def expected(stores: dict[str, Any], run_id: str, after_label: str) -> Comparison:
    registry = RunRegistry.beside(stores["app"])
    report = registry.get(run_id).file("report.json")
    assert report is not None
    with (
        TraceStore.open(stores["before"], read_only=True) as b,
        TraceStore.open(stores["after"], read_only=True) as a,
    ):
        return compare_stores(
            b, a, load_report(report), None, before_label=f"run {run_id}", after_label=after_label
        )


def row_html(page: str, attribute: str, value: str) -> str:
    """The table row (non-stratum) whose `attribute` is `value`."""
    match = re.search(
        rf'<tr [^>]*{attribute}="{re.escape(html.escape(value))}" data-stratum=""[^>]*>(.*?)</tr>', page, re.S
    )
    assert match, f"no row {attribute}={value}"
    return match.group(1)


def cells(row: str) -> list[str]:
    """A row's cells as text."""
    return [
        " ".join(html.unescape(re.sub(r"<[^>]+>", " ", cell)).split())
        for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
    ]


def test_the_page_shows_what_compare_stores_computes(server: Server, stores: dict[str, Any]) -> None:
    after = str(stores["after"])
    with api(server) as client:
        # the form lists the recorded analyses of this store
        form = client.get("/compare").text
        assert f'value="{stores["run"]}"' in form and "Why do refunds fail?" in form
        # a side typed in is resolved and shown before anything is read
        preview = client.get("/compare", params={"before": stores["run"], "after_path": after})
        assert preview.status_code == 200
        assert html.escape(str(stores["before"])) in preview.text and html.escape(after) in preview.text
        assert 'action="/compare"' in preview.text
        started = client.post(
            "/compare",
            data={"before": stores["run"], "after": after, "after_store": str(Path(after).resolve())},
        )
        assert started.status_code == 303, started.text
        run_id = started.headers["location"].split("run=")[1]
        done = wait_done(client, run_id)
        assert done["status"] == "completed", done
        page = client.get(f"/compare?run={run_id}").text
    want = expected(stores, stores["run"], after)
    assert Comparison.model_validate(done["comparison"]) == want
    rows = [r for r in want.failures if r.stratum is None]
    verdicts = {r.id: r.verdict for r in rows}
    # the planted drop: every tool-error finding of the before side is fixed, and nothing got worse
    assert any(v == "fixed" for k, v in verdicts.items() if k.startswith("tool_error")), verdicts
    assert not any(v in ("worse", "new") for k, v in verdicts.items() if k.startswith("tool_error"))
    for r in rows:
        shown = row_html(page, "data-id", r.id)
        assert cells(shown)[:1] + cells(shown)[2:] == [
            VERDICT_MARKS[r.verdict],
            f"{r.affected_before:,}/{r.traces_before:,} ({pct(r.rate_before)})",
            f"{r.affected_after:,}/{r.traces_after:,} ({pct(r.rate_after)})",
            rate_change_text(r),
            relative_text(r.relative, r.relative_ci),
            f"{r.p_adjusted:.2g}",
        ], r.id
        assert r.title in cells(shown)[1]
        if r.key:  # the run's traces are this store's: the finding opens the trace list searched for it
            assert f'href="{html.escape("/traces?" + urlencode({"q": r.key}))}"' in shown
    for o in (o for o in want.outcomes if o.stratum is None):
        assert cells(row_html(page, "data-metric", o.metric)) == [
            CHANGE_MARKS[o.change],
            o.label,
            value_text(o, o.before),
            value_text(o, o.after),
            outcome_change_text(o),
            relative_text(o.relative, o.relative_ci),
            f"{o.p_adjusted:.2g}",
        ], o.metric
    for warning in want.warnings:
        assert html.escape(warning) in page
    counts = ", ".join(f"{n} {v}" for v, n in want.verdicts.items() if n)
    assert re.sub(r"<[^>]+>", "", page.split('id="verdicts"')[1].split("</p>")[0]).endswith(counts)
    # the registry records it; `halo runs` lists comparisons too
    record = RunRegistry.beside(stores["app"]).get(run_id).record
    assert record.kind == "compare" and record.status == "completed"
    assert set(record.files) == {"compare.json", "compare.md", "compare.html"}


def test_the_json_twins_and_sides_that_name_nothing(server: Server, stores: dict[str, Any]) -> None:
    with api(server) as client:
        listed = client.get("/compare.json").json()
        assert {r["id"] for r in listed["runs"]} >= {stores["run"], stores["hostile"]}
        resolved = client.get(
            "/compare.json", params={"before": str(stores["before"]), "after": stores["run"]}
        ).json()
        assert resolved["ready"] and resolved["before"]["kind"] == "store"
        assert resolved["after"] == {
            **resolved["after"],
            "kind": "run",
            "run_id": stores["run"],
            "store": str(stores["before"]),
        }
        missing = client.get(
            "/compare.json", params={"before": "/no/such/file.jsonl", "after": stores["run"]}
        )
        assert missing.status_code == 400 and "not a trace file" in missing.json()["before"]["error"]
        refused = client.post("/compare", data={"before": "/no/such/file.jsonl", "after": stores["run"]})
        assert refused.status_code == 400
        assert client.get("/compare.json?run=zzzzzzzz").status_code == 404
        # a store path that now names another store than the preview showed is refused
        moved = client.post(
            "/compare",
            data={"before": stores["run"], "after": str(stores["after"]), "after_store": "/elsewhere"},
        )
        assert moved.status_code == 409
        # the app's own store (held open for writing) is compared through a copy, removed afterwards
        own = client.post("/compare", data={"before": str(stores["app"]), "after": str(stores["after"])})
        assert own.status_code == 303
        done = wait_done(client, own.headers["location"].split("run=")[1])
        assert done["status"] == "completed", done
        assert done["comparison"]["traces_before"] == 20 and done["before"]["kind"] == "store"
        assert not list((server.ui.comparisons.registry.root / "compare-snapshots").glob("*"))


def test_hostile_finding_text_is_escaped(server: Server, stores: dict[str, Any]) -> None:
    with api(server) as client:
        preview = client.get("/compare", params={"before": "<b>no</b>", "after": stores["hostile"]}).text
        assert "<b>no</b>" not in preview and "&lt;b&gt;no&lt;/b&gt;" in preview
        started = client.post("/compare", data={"before": stores["hostile"], "after": str(stores["after"])})
        run_id = started.headers["location"].split("run=")[1]
        assert wait_done(client, run_id)["status"] == "completed"
        page = client.get(f"/compare?run={run_id}").text
        form = client.get("/compare").text
    assert "<script>window.__pwned" not in page and "<img src=x" not in page
    assert str(escape(HOSTILE_TITLE)) in page and str(escape(HOSTILE_KEY)) in page
    assert "<b>bold</b>" not in form and "&lt;b&gt;bold&lt;/b&gt;" in form


@pytest.mark.slow
def test_pick_before_and_after_in_chromium(server: Server, stores: dict[str, Any]) -> None:
    with chromium() as browser:
        page: Any = browser.new_page(viewport={"width": 1400, "height": 900})  # type: ignore[attr-defined]
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.login_url)
        page.click("header.top nav >> text=Compare")
        page.check(f"input[name=before][value='{stores['hostile']}']")
        page.fill("input[name=after_path]", str(stores["after"]))
        page.click("#compare-form button[type=submit]")
        page.wait_for_selector("#side-after")
        assert str(stores["after"]) in page.inner_text("#side-after")
        page.click("#start button[type=submit]")
        page.wait_for_selector("#compare-status[data-status=completed]", timeout=60_000)
        table = page.inner_text("#failures")
        assert "fixed" in table and HOSTILE_TITLE in table  # shown as text, not run
        assert page.evaluate("window.__pwned") is None
        assert page.query_selector("#outcomes tr[data-metric=error_rate]") is not None
        assert not errors, errors


def test_the_app_loads_scipy_and_openai_only_when_it_compares_or_analyses() -> None:
    # scipy.stats holds about 60 MB and the openai client about 25 MB: a server that only shows traces
    # carries neither
    script = (
        "import sys\n"
        "import halo_rlm.web\n"
        "print('app', 'scipy' in sys.modules, 'openai' in sys.modules)\n"
        "from halo_rlm.compare import Counts, wilson_interval\n"
        "wilson_interval(Counts(3, 10))\n"
        "from halo_rlm.engine import stream_engine_async\n"
        "print('used', 'scipy' in sys.modules, 'openai' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["app", "False", "False", "used", "True", "True"], (
        result.stdout + result.stderr
    )
