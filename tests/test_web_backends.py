"""The web app over HTTP on every store backend (conftest `BACKENDS`; chdb with `-m slow`): the trace
list with its filters, sorts, pages, stat strip and facets, sessions, text search, one trace, one
span, a conversation and the latest trace come back from a ClickHouse store exactly as from a DuckDB
store holding the same traces."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import halo_runs
import httpx
import pytest
from web_data import big_trace

from halo_rlm.simulate import simulate
from halo_rlm.store import TraceStore
from halo_rlm.web.app import Server, Settings
from halo_rlm.web.traces import FACET_PARAMS


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("web-backends")
    simulate(folder / "sim.jsonl", traces=80, seed=12)
    halo_runs.write_runs(folder / "runs.jsonl", halo_runs.runs(16))
    big = big_trace(folder / "big.jsonl", spans=600)
    return {"files": [str(folder / n) for n in ("sim.jsonl", "runs.jsonl", "big.jsonl")], "big": big}


def serve(target: str, files: list[str]) -> Server:
    with TraceStore.open(target) as store:
        store.ingest(files)
    return Server(Settings(store=target, port=0)).start()


@pytest.fixture(scope="module")
def clients(
    backend: str, corpus: dict[str, Any], new_store: Callable[[str], str]
) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """A client of the app on the backend under test, and one of the app on a DuckDB store."""
    servers = [serve(new_store(kind), corpus["files"]) for kind in (backend, "duckdb")]
    made = [
        httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {s.settings.token}"}, timeout=60)
        for s in servers
    ]
    try:
        yield made[0], made[1]
    finally:
        for client in made:
            client.close()
        for server in servers:
            server.stop()
            server.ui.close()


def both(clients: tuple[httpx.Client, httpx.Client], path: str, **params: Any) -> Any:
    """The JSON of one request to both apps, after checking they are the same (but for how a text
    search was answered: DuckDB's app keeps a search index, ClickHouse's scans)."""
    found, expected = (client.get(path, params=params) for client in clients)
    assert found.status_code == expected.status_code == 200, (path, params, found.text[:300])
    answers = [
        {k: v for k, v in r.json().items() if k != "search"} if isinstance(r.json(), dict) else r.json()
        for r in (found, expected)
    ]
    assert answers[0] == answers[1], (path, params)
    return found.json()


LISTS: list[dict[str, Any]] = [
    {},
    {"status": "error"},
    {"status": ["ok", "error"], "sort": "tokens", "dir": "asc"},
    {"q": "read_file"},
    {"q": "NEEDLE-TOOL-ERROR"},
    {"sort": "cost"},
    {"sort": "duration", "limit": 9},
    {"since": "2026-01-01T00:00:00Z", "until": "2026-12-31T00:00:00Z", "dir": "asc"},
    {"view": "sessions"},
    {"view": "sessions", "sort": "tokens"},
]


@pytest.mark.parametrize("params", LISTS, ids=lambda p: "&".join(f"{k}={v}" for k, v in p.items()) or "all")
def test_lists_stats_and_facets_are_duckdb_s(clients: tuple[httpx.Client, httpx.Client], params: Any) -> None:
    data = both(clients, "/traces.json", **params)
    assert data["page"]["rows"] and data["stats"]["traces"] > 0
    facets = data["facets"]
    for name, param in FACET_PARAMS.items():  # each multi-select filter, with two values where offered
        chosen = [f["value"] for f in facets[name][:2]]
        if chosen and name != "status":
            both(clients, "/traces.json", **params, **{param: chosen})
    both(clients, "/traces/latest.json", **params)


def test_pages_follow_the_cursor_to_the_end(clients: tuple[httpx.Client, httpx.Client]) -> None:
    seen, cursor = [], None
    while True:
        query = {"sort": "duration", "limit": 17, "part": "rows", **({"cursor": cursor} if cursor else {})}
        page = both(clients, "/traces.json", **query)["page"]
        seen += [row["trace_id"] for row in page["rows"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == both(clients, "/traces.json")["store_traces"]


def test_a_trace_its_spans_and_conversation_are_duckdb_s(
    clients: tuple[httpx.Client, httpx.Client], corpus: dict[str, Any]
) -> None:
    big = corpus["big"]
    traces = [
        big["trace_id"],
        *(r["trace_id"] for r in both(clients, "/traces.json", limit=3)["page"]["rows"]),
    ]
    for trace_id in traces:
        found, expected = (client.get(f"/traces/{trace_id}.json").json() for client in clients)
        for data in (found, expected):
            data["spans"].pop("now_ms")  # the trace's age at the time of the request
        assert found == expected
        assert len(found["spans"]["spans"]) == found["trace"]["spans"]
        both(clients, f"/traces/{trace_id}/conversation.json")
        for span in found["spans"]["spans"][:3]:
            both(clients, f"/traces/{trace_id}/spans/{span['span_id']}.json")
    failing = both(clients, f"/traces/{big['trace_id']}/spans/{big['failing_tool_span']}.json")
    assert failing["status"] == "ERROR" and "needle-tool-error" in failing["status_message"]
    for client in clients:
        assert client.get(f"/traces/{'0' * 32}.json").status_code == 404
        assert client.get("/traces").headers["content-type"].startswith("text/html")
