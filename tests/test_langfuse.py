"""`halo import langfuse` against a local server that answers like Langfuse's public API.

The server follows Langfuse's OpenAPI definition (langfuse/langfuse `fern/apis/server/definition/
observations.yml`, `legacy/observations-v1.yml`, `trace.yml`, `commons.yml`) and its v2 route: Basic
auth; `/api/public/v2/observations` with field groups, `expandMetadata`, metadata values cut to 200
characters plus "...", the query-parameter filters and the JSON `filter` list, newest-first keyset
paging with a base64 cursor in `meta.cursor` (absent on the last page); the deprecated page-numbered
`/api/public/traces` and `/api/public/observations` (`meta.page/limit/totalItems/totalPages`) whose
observations lack trace-level fields; 404 for v2 on old servers; 429 with `Retry-After`.
"""

from __future__ import annotations

import base64
import dataclasses
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from click.testing import CliRunner

from halo_rlm import sources
from halo_rlm.cli import cli
from halo_rlm.formats.decode import decode_record
from halo_rlm.sources import langfuse
from halo_rlm.store import TraceStore
from halo_rlm.utils import RetryPolicy, iso_ms, iso_to_ns, retry_after

PUBLIC, SECRET = "pk-lf-1234", "sk-lf-very-secret-5678"
PROJECT = "cmkme4iwh00qnad079j0kakep"
LONG = "x" * 500

GROUPS = {
    "core": ("id", "traceId", "startTime", "endTime", "projectId", "parentObservationId", "type"),
    "basic": (
        "name",
        "level",
        "statusMessage",
        "version",
        "environment",
        "bookmarked",
        "public",
        "userId",
        "sessionId",
        "isRootObservation",
    ),
    "time": ("completionStartTime", "createdAt", "updatedAt"),
    "io": ("input", "output"),
    "metadata": ("metadata",),
    "model": ("providedModelName", "internalModelId", "modelParameters"),
    "usage": ("usageDetails", "costDetails", "totalCost", "usagePricingTierName"),
    "prompt": ("promptId", "promptName", "promptVersion"),
    "metrics": ("latency", "timeToFirstToken"),
    "trace_context": ("tags", "release", "traceName"),
}
TRACE_FIELDS = ("userId", "sessionId", "tags", "release", "traceName", "environment")


def at(seconds: float) -> str:
    return iso_ms(iso_to_ns("2026-05-15T10:00:00Z") + int(seconds * 1e9))  # type: ignore[operator]


def trace(trace_id: str, start: float, **fields: Any) -> dict[str, Any]:
    return {"id": trace_id, "timestamp": at(start), "name": fields.pop("traceName", None), **fields}


def obs(
    trace: dict[str, Any], obs_id: str, kind: str, start: float, end: float | None, **fields: Any
) -> dict[str, Any]:
    """An observation as Langfuse v4 stores it: trace-level fields copied onto it."""
    base = {
        "id": obs_id,
        "traceId": trace["id"],
        "type": kind,
        "name": obs_id,
        "startTime": at(start),
        "endTime": None if end is None else at(end),
        "projectId": PROJECT,
        "parentObservationId": None,
        "level": "DEFAULT",
        "statusMessage": None,
        "version": None,
        "bookmarked": False,
        "public": False,
        "isRootObservation": False,
        "usageDetails": {},
        "costDetails": {},
        "totalCost": 0,
        "metadata": {},
        "input": None,
        "output": None,
        "providedModelName": None,
        "environment": trace.get("environment", "default"),
        "traceName": trace.get("name"),
        **{k: trace.get(k) for k in ("userId", "sessionId", "tags", "release")},
    }
    base["isRootObservation"] = fields.get("parentObservationId") is None
    return {**base, **fields}


def project() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Three agent runs: one with a warning, one that fails, one with text ids and long metadata."""
    a = trace(
        "8f3c2a1b4d5e6f708192a3b4c5d6e7f8",
        0,
        traceName="support-agent",
        userId="u-1",
        sessionId="s-1",
        tags=["prod", "checkout"],
        release="2026.05",
        environment="production",
    )
    b = trace(
        "1a2b3c4d5e6f708192a3b4c5d6e7f809",
        100,
        traceName="support-agent",
        userId="u-2",
        sessionId="s-2",
        tags=["prod"],
        environment="production",
    )
    c = trace("trace-c-7", 200, traceName="nightly-eval", environment="staging")
    messages = [
        {"role": "system", "content": "You are a support agent."},
        {"role": "user", "content": "Where is my refund?"},
    ]
    observations = [
        obs(
            a,
            "a1a1a1a1a1a1a1a1",
            "AGENT",
            0,
            9,
            name="support-agent",
            input="Where is my refund?",
            output="It was sent on May 2.",
        ),
        obs(
            a,
            "a2a2a2a2a2a2a2a2",
            "GENERATION",
            1,
            3,
            name="plan",
            parentObservationId="a1a1a1a1a1a1a1a1",
            providedModelName="gpt-4o-2024-08-06",
            modelParameters={"temperature": 0.2},
            input=messages,
            output={
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "search_orders", "arguments": "{}"},
                    }
                ],
            },
            # Langfuse's contract: input and output are the sums of the keys naming them, so the
            # cached and reasoning tokens are not in `input` / `output` (120 in, 30 out).
            usageDetails={
                "input": 20,
                "output": 18,
                "total": 150,
                "input_cached_tokens": 100,
                "output_reasoning_tokens": 12,
            },
            costDetails={"input": 0.0012, "output": 0.0009, "total": 0.0021},
            totalCost=0.0021,
            promptName="support",
            promptVersion=3,
        ),
        obs(
            a,
            "a3a3a3a3a3a3a3a3",
            "TOOL",
            3,
            4,
            name="search_orders",
            parentObservationId="a1a1a1a1a1a1a1a1",
            input={"customer": "u-1"},
            output={"orders": [{"id": 7, "refund": "2026-05-02"}]},
        ),
        obs(
            a,
            "a4a4a4a4a4a4a4a4",
            "GENERATION",
            5,
            8,
            name="answer",
            parentObservationId="a1a1a1a1a1a1a1a1",
            level="WARNING",
            statusMessage="retried after a timeout",
            providedModelName="claude-sonnet-4",
            usageDetails={
                "input": 300,
                "output": 40,
                "cache_read_input_tokens": 256,
                "cache_creation_input_tokens": 20,
            },
            costDetails={"total": 0.004},
            totalCost=0.004,
            input="Summarise the refund status.",
            output="It was sent on May 2.",
        ),
        obs(b, "b1b1b1b1b1b1b1b1", "AGENT", 100, 104, name="support-agent", input="Refund order 9"),
        obs(
            b,
            "b2b2b2b2b2b2b2b2",
            "TOOL",
            101,
            102,
            name="issue_refund",
            parentObservationId="b1b1b1b1b1b1b1b1",
            level="ERROR",
            statusMessage="Refund API returned 500 for order 9",
            input={"order": 9},
        ),
        obs(
            b,
            "b3b3b3b3b3b3b3b3",
            "EVENT",
            103,
            None,
            name="guardrail-hit",
            parentObservationId="b1b1b1b1b1b1b1b1",
        ),
        obs(
            c,
            "obs-c-1",
            "CHAIN",
            200,
            210,
            name="eval-run",
            metadata={
                "notes": LONG,
                "resourceAttributes": {"service.name": "eval-worker", "host.name": LONG},
                "scope": {"name": "langfuse-sdk"},
            },
        ),
        obs(c, "obs-c-2", "SPAN", 201, 202, name="load-dataset", parentObservationId="obs-c-1"),
        obs(c, "obs-c-3", "RETRIEVER", 203, 204, name="fetch-docs", parentObservationId="obs-c-1"),
    ]
    return [a, b, c], observations


@dataclass
class Fault:
    """Answer `times` matching requests with this status instead of data."""

    path: str
    status: int
    times: int
    when: Any = None  # (params) -> bool
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=lambda: {"message": "Internal Server Error"})


class LangfuseServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, *, v2: bool = True) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.v2 = v2
        self.traces, self.observations = project()
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def requested(self, path: str) -> list[dict[str, list[str]]]:
        return [params for p, params in self.requests if p == path]


class Handler(BaseHTTPRequestHandler):
    server: LangfuseServer

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        params = parse_qs(parts.query)
        with self.server.lock:
            self.server.requests.append((parts.path, params))
            fault = next(
                (
                    f
                    for f in self.server.faults
                    if f.path == parts.path and f.times > 0 and (f.when is None or f.when(params))
                ),
                None,
            )
            if fault:
                fault.times -= 1
        expected = "Basic " + base64.b64encode(f"{PUBLIC}:{SECRET}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            message = "Invalid credentials. Confirm that you've configured the correct host."
            return self.reply(401, {"message": message})
        if fault:
            return self.reply(fault.status, fault.body, fault.headers)
        if parts.path == "/api/public/v2/observations" and self.server.v2:
            return self.v2_observations(params)
        if parts.path == "/api/public/observations":
            return self.legacy_observations(params)
        if parts.path == "/api/public/traces":
            return self.legacy_traces(params)
        if parts.path == "/api/public/v2/observations":
            return self.reply(
                404,
                {
                    "message": "The observations v2 API is only available in a Langfuse v4 "
                    "write mode. Learn more at: https://langfuse.com/docs/v4"
                },
            )
        return self.reply(404, {"message": "Not found"})

    def reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = orjson.dumps(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    # --- v2 -------------------------------------------------------------------------------------

    def v2_observations(self, params: dict[str, list[str]]) -> None:
        limit = int(one(params, "limit") or 50)
        if limit > 1000:
            return self.reply(400, {"message": "limit must be at most 1000"})
        groups = set((one(params, "fields") or "core,basic").split(",")) | {"core"}
        if not groups <= set(GROUPS):
            return self.reply(400, {"message": f"unknown field groups {sorted(groups - set(GROUPS))}"})
        rows = [o for o in self.server.observations if self.v2_matches(o, params)]
        rows.sort(key=lambda o: (o["startTime"], o["id"]), reverse=True)
        cursor = one(params, "cursor")
        if cursor:
            last = orjson.loads(base64.b64decode(cursor))
            rows = [o for o in rows if (o["startTime"], o["id"]) < (last["lastStartTimeTo"], last["lastId"])]
        page, more = rows[:limit], len(rows) > limit
        expand = set((one(params, "expandMetadata") or "").split(","))
        meta: dict[str, Any] = {}
        if more:
            last_row = page[-1]
            meta["cursor"] = base64.b64encode(
                orjson.dumps(
                    {
                        "lastStartTimeTo": last_row["startTime"],
                        "lastTraceId": last_row["traceId"],
                        "lastId": last_row["id"],
                    }
                )
            ).decode()
        self.reply(200, {"data": [v2_shape(o, groups, expand) for o in page], "meta": meta})

    def v2_matches(self, o: dict[str, Any], params: dict[str, list[str]]) -> bool:
        raw = one(params, "filter")
        if raw:  # the JSON filter replaces the query-parameter filters
            return all(condition_holds(o, c) for c in orjson.loads(raw))
        since, until = one(params, "fromStartTime"), one(params, "toStartTime")
        return (
            (not since or o["startTime"] >= since)
            and (not until or o["startTime"] < until)
            and (not params.get("environment") or o["environment"] in params["environment"])
            and (not one(params, "userId") or o["userId"] == one(params, "userId"))
        )

    # --- legacy ---------------------------------------------------------------------------------

    def legacy_observations(self, params: dict[str, list[str]]) -> None:
        since, until = one(params, "fromStartTime"), one(params, "toStartTime")
        rows = [
            o
            for o in self.server.observations
            if (not since or o["startTime"] >= since)
            and (not until or o["startTime"] < until)
            and (not one(params, "userId") or o["userId"] == one(params, "userId"))
        ]
        rows.sort(key=lambda o: o["startTime"], reverse=True)
        self.paged([legacy_shape(o) for o in rows], params)

    def legacy_traces(self, params: dict[str, list[str]]) -> None:
        since, until = one(params, "fromTimestamp"), one(params, "toTimestamp")
        rows = [
            t
            for t in self.server.traces
            if (not since or t["timestamp"] >= since)
            and (not until or t["timestamp"] < until)
            and all(
                not one(params, p) or t.get(k) == one(params, p)
                for p, k in (("name", "name"), ("userId", "userId"), ("sessionId", "sessionId"))
            )
            and set(params.get("tags", [])) <= set(t.get("tags") or [])
            and (not params.get("environment") or t.get("environment", "default") in params["environment"])
        ]
        rows.sort(key=lambda t: t["timestamp"], reverse=True)
        defaults = {
            "tags": [],
            "environment": "default",
            "metadata": None,
            "input": None,
            "output": None,
            "public": False,
            "bookmarked": False,
            "projectId": PROJECT,
            "latency": 1.0,
            "totalCost": 0.0,
            "observations": [],
            "scores": [],
            "release": None,
            "version": None,
            "userId": None,
            "sessionId": None,
        }
        shaped = [{**defaults, "htmlPath": f"/project/{PROJECT}/traces/{t['id']}", **t} for t in rows]
        self.paged(shaped, params)

    def paged(self, rows: list[dict[str, Any]], params: dict[str, list[str]]) -> None:
        page, limit = int(one(params, "page") or 1), int(one(params, "limit") or 50)
        if limit > 100:
            return self.reply(400, {"message": "limit must be at most 100"})
        total_pages = -(-len(rows) // limit)
        meta = {"page": page, "limit": limit, "totalItems": len(rows), "totalPages": total_pages}
        self.reply(200, {"data": rows[(page - 1) * limit : page * limit], "meta": meta})


def one(params: dict[str, list[str]], key: str) -> str | None:
    values = params.get(key)
    return values[0] if values else None


def condition_holds(o: dict[str, Any], c: dict[str, Any]) -> bool:
    value = o.get(c["column"])
    match c["type"], c["operator"]:
        case "datetime", ">=":
            return value >= c["value"]
        case "datetime", "<":
            return value < c["value"]
        case "string", "=":
            return value == c["value"]
        case "stringOptions", "any of":
            return value in c["value"]
        case "arrayOptions", "all of":
            return set(c["value"]) <= set(value or [])
    raise AssertionError(f"the test server does not know the filter {c}")


def v2_shape(o: dict[str, Any], groups: set[str], expand: set[str]) -> dict[str, Any]:
    """v2 returns only the requested groups, input/output as raw strings, metadata values as strings
    cut to 200 characters (plus "...") unless expanded, and price fields always."""
    out: dict[str, Any] = {"modelId": None, "inputPrice": None, "outputPrice": None, "totalPrice": None}
    for group in sorted(groups):
        for key in GROUPS[group]:
            out[key] = o.get(key)
    for key in ("input", "output"):
        if key in out and out[key] is not None and not isinstance(out[key], str):
            out[key] = orjson.dumps(out[key]).decode()
    if "metadata" in out:
        metadata = {
            k: v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in o["metadata"].items()
        }
        out["metadata"] = {
            k: v[:200] + "..." if len(v) > 200 and k not in expand else v for k, v in metadata.items()
        }
    if "model" in groups:
        out["modelId"] = "model-1" if o.get("providedModelName") else None
    return out


def legacy_shape(o: dict[str, Any]) -> dict[str, Any]:
    """A deprecated-API observation: no trace-level fields, structured input/output, `model`, `usage`."""
    usage = o["usageDetails"]
    return {
        **{
            k: v
            for k, v in o.items()
            if k
            not in (
                *TRACE_FIELDS,
                "providedModelName",
                "totalCost",
                "isRootObservation",
                "bookmarked",
                "public",
            )
        },
        "environment": o["environment"],
        "model": o["providedModelName"],
        "usage": {
            "input": usage.get("input", 0),
            "output": usage.get("output", 0),
            "total": usage.get("total", 0),
            "unit": "TOKENS",
        },
        "promptTokens": usage.get("input", 0),
        "completionTokens": usage.get("output", 0),
        "totalTokens": usage.get("total", 0),
        "unit": "TOKENS",
        "calculatedTotalCost": o["totalCost"],
        "calculatedInputCost": None,
        "calculatedOutputCost": None,
        "latency": 1.0,
        "timeToFirstToken": None,
    }


@pytest.fixture
def server() -> Iterator[LangfuseServer]:
    srv = LangfuseServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def legacy_server() -> Iterator[LangfuseServer]:
    srv = LangfuseServer(v2=False)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def waits() -> list[float]:
    """Pauses between attempts, recorded by `import_pages` instead of slept."""
    return []


def import_pages(
    server: LangfuseServer,
    store: Path,
    waits: list[float],
    *,
    filters: sources.LangfuseFilters | None = None,
    out: Path | None = None,
    page_size: int = 3,
) -> tuple[int, Any, str]:
    """An import through the Python API in small pages, so ten observations take several, with the
    pauses between attempts recorded in `waits`. Returns what `run_import` returns."""
    source = sources.LangfuseSource(
        server.url, PUBLIC, SECRET, filters, page_size=page_size, retry=RetryPolicy(sleep=waits.append)
    )
    try:
        report = sources.run_import(source, store, out=out)
    except sources.SourceError as exc:
        return 1, None, str(exc)
    finally:
        source.close()
    return 0, dataclasses.asdict(report), ""


def run_import(
    server: LangfuseServer, store: Path, *args: str | Path, secret: str = SECRET
) -> tuple[int, Any, str]:
    result = CliRunner().invoke(
        cli,
        [
            "import",
            "langfuse",
            "--host",
            server.url,
            "--public-key",
            PUBLIC,
            "--secret-key",
            secret,
            "--store",
            str(store),
            "--json",
            *[str(a) for a in args],
        ],
    )
    report = orjson.loads(result.stdout) if result.exit_code == 0 else None
    return result.exit_code, report, result.stderr


def input_messages(store: Path, span: dict[str, Any]) -> list[dict[str, Any]]:
    """Input messages are reassembled from the raw record when a span is viewed."""
    with TraceStore.open(store, read_only=True) as read_only:
        view = read_only.view_spans(span["trace_id"], [span["span_id"]])
    return view.spans[0].messages["input_messages"]  # type: ignore[index]


def spans(store: Path) -> dict[str, dict[str, Any]]:
    with TraceStore.open(store, read_only=True) as s:
        rows = s.sql("SELECT * FROM spans", max_rows=10_000, max_bytes=10**8)
    return {row[1]: dict(zip(rows.columns, row, strict=True)) for row in rows.rows}


# --- the v2 API ---------------------------------------------------------------------------------


def test_imports_every_observation_as_a_canonical_span(
    server: LangfuseServer, tmp_path: Path, waits: list[float]
) -> None:
    store = tmp_path / "lf.duckdb"
    code, report, err = import_pages(server, store, waits)
    assert code == 0, err
    assert report["spans"] == 10 and report["complete"] and report["api"] == "v2" and report["pages"] == 4
    requests = server.requested("/api/public/v2/observations")
    assert len(requests) == 4 and "cursor" not in requests[0] and all("cursor" in r for r in requests[1:])
    assert requests[0]["fields"] == [langfuse.FIELDS] and requests[0]["limit"] == ["3"]
    assert requests[0]["expandMetadata"] == ["resourceAttributes"] and "fromStartTime" not in requests[0]

    rows = spans(store)
    plan, answer = rows["a2a2a2a2a2a2a2a2"], rows["a4a4a4a4a4a4a4a4"]
    assert plan["trace_id"] == "8f3c2a1b4d5e6f708192a3b4c5d6e7f8" and plan["parent_id"] == "a1a1a1a1a1a1a1a1"
    assert (plan["kind"], plan["model"], plan["status"]) == ("LLM", "gpt-4o-2024-08-06", "UNSET")
    assert (plan["input_tokens"], plan["output_tokens"], plan["total_tokens"]) == (120, 30, 150)
    assert (plan["cache_read_tokens"], plan["reasoning_tokens"], plan["cost"]) == (100, 12, 0.0021)
    assert (plan["session_id"], plan["user_id"], plan["service"]) == ("s-1", "u-1", "support-agent")
    assert [m["role"] for m in input_messages(store, plan)] == ["system", "user"]
    assert plan["tool_calls"] == [{"id": "call_1", "name": "search_orders", "arguments": "{}"}]
    # A warning is not a failure: the level and its message stay as attributes.
    assert answer["status"] == "UNSET" and answer["status_message"] is None
    assert (answer["cache_read_tokens"], answer["cache_write_tokens"]) == (256, 20)
    answer_attrs = orjson.loads(answer["raw"])["attributes"]
    assert answer_attrs["langfuse.observation.level"] == "WARNING"
    assert answer_attrs["langfuse.observation.status_message"] == "retried after a timeout"
    assert orjson.loads(answer["output_messages"]) == [
        {"role": "assistant", "content": "It was sent on May 2."}
    ]
    refund = rows["b2b2b2b2b2b2b2b2"]
    assert (refund["kind"], refund["tool_name"], refund["status"]) == ("TOOL", "issue_refund", "ERROR")
    assert refund["status_message"] == "Refund API returned 500 for order 9"
    assert refund["tool_args"] == '{"order":9}'
    event = rows["b3b3b3b3b3b3b3b3"]
    assert event["kind"] == "SPAN" and event["end_ns"] == event["start_ns"]
    # Ids that are not hex are kept as text, and their parent links still hold.
    chain, load = rows["obs-c-1"], rows["obs-c-2"]
    assert chain["trace_id"] == "trace-c-7" and load["parent_id"] == "obs-c-1" and not load["is_orphan"]
    assert (chain["kind"], rows["obs-c-3"]["kind"], load["kind"]) == ("CHAIN", "RETRIEVER", "SPAN")
    assert chain["service"] == "eval-worker"  # from the resource attributes Langfuse keeps in metadata
    chain_attrs = orjson.loads(chain["raw"])["attributes"]
    assert chain_attrs["langfuse.observation.metadata.notes"] == LONG[:200] + "..."
    assert chain_attrs["langfuse.observation.metadata_truncated"] == ["notes"]
    assert chain_attrs["langfuse.environment"] == "staging"
    assert chain_attrs["langfuse.trace.name"] == "nightly-eval"
    tags = orjson.loads(plan["raw"])["attributes"]["tag.tags"]
    assert tags == ["prod", "checkout"]
    with TraceStore.open(store, read_only=True) as s:
        summary = s.trace_summary("8f3c2a1b4d5e6f708192a3b4c5d6e7f8")
    assert summary.spans == 4 and summary.session_id == "s-1"
    assert not waits


def test_expand_metadata_fetches_whole_values(server: LangfuseServer, tmp_path: Path) -> None:
    code, _, err = run_import(server, tmp_path / "lf.duckdb", "--expand-metadata", "notes")
    assert code == 0, err
    request = server.requested("/api/public/v2/observations")[0]
    assert request["expandMetadata"] == ["resourceAttributes,notes"]
    attrs = orjson.loads(spans(tmp_path / "lf.duckdb")["obs-c-1"]["raw"])["attributes"]
    assert attrs["langfuse.observation.metadata.notes"] == LONG
    assert "langfuse.observation.metadata_truncated" not in attrs


def test_filters_reach_the_api(server: LangfuseServer, tmp_path: Path) -> None:
    code, report, err = run_import(server, tmp_path / "a.duckdb", "--environment", "staging")
    assert code == 0 and report["spans"] == 3, err
    assert server.requested("/api/public/v2/observations")[-1]["environment"] == ["staging"]
    # Session, tags and trace name need the JSON filter, which then carries the time window too.
    code, report, err = run_import(
        server,
        tmp_path / "b.duckdb",
        "--session",
        "s-1",
        "--tag",
        "prod",
        "--trace-name",
        "support-agent",
        "--since",
        "2026-05-15T09:00:00Z",
    )
    assert code == 0 and report["spans"] == 4, err
    conditions = orjson.loads(server.requested("/api/public/v2/observations")[-1]["filter"][0])
    columns = {(c["column"], c["operator"]) for c in conditions}
    assert {
        ("sessionId", "="),
        ("tags", "all of"),
        ("traceName", "="),
        ("startTime", ">="),
        ("startTime", "<"),
    } <= columns
    assert set(spans(tmp_path / "b.duckdb")) == {
        "a1a1a1a1a1a1a1a1",
        "a2a2a2a2a2a2a2a2",
        "a3a3a3a3a3a3a3a3",
        "a4a4a4a4a4a4a4a4",
    }


def test_time_window(server: LangfuseServer, tmp_path: Path) -> None:
    code, report, err = run_import(server, tmp_path / "w.duckdb", "--since", at(100), "--until", at(200))
    assert code == 0 and report["spans"] == 3, err
    assert (report["since"], report["until"]) == (at(100), at(200))
    request = server.requested("/api/public/v2/observations")[-1]
    assert (request["fromStartTime"], request["toStartTime"]) == ([at(100)], [at(200)])


def test_honours_retry_after_and_backs_off_on_server_errors(
    server: LangfuseServer, tmp_path: Path, waits: list[float]
) -> None:
    v2 = "/api/public/v2/observations"
    server.faults = [
        Fault(v2, 429, 1, lambda p: "cursor" in p, {"Retry-After": "7"}, {"message": "Rate limit exceeded"}),
        Fault(v2, 503, 2, lambda p: "cursor" not in p),
    ]
    code, report, err = import_pages(server, tmp_path / "lf.duckdb", waits)
    assert code == 0 and report["spans"] == 10, err
    assert len(waits) == 3 and 7.0 <= waits[2] <= 7.0 * 1.1 + 0.05 and all(0 <= w <= 2 for w in waits[:2])


def test_gives_up_after_bounded_retries(server: LangfuseServer, tmp_path: Path, waits: list[float]) -> None:
    server.faults = [Fault("/api/public/v2/observations", 502, 100)]
    code, _, err = import_pages(server, tmp_path / "lf.duckdb", waits)
    policy = RetryPolicy()
    assert code == 1 and f"still failing after {policy.attempts} attempts (HTTP 502)" in err
    assert len(waits) == policy.attempts - 1 and max(waits) <= policy.cap_seconds


def test_retry_after_header_forms() -> None:
    now = iso_to_ns("2026-05-15T10:00:00Z") / 1e9  # type: ignore[operator]
    assert retry_after({"retry-after": "12"}) == 12.0
    assert retry_after({"retry-after": "Fri, 15 May 2026 10:00:30 GMT"}, now=now) == 30.0
    assert retry_after({"retry-after": "Fri, 15 May 2026 09:00:00 GMT"}, now=now) == 0.0
    assert retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after({"retry-after": "soon"}) is None and retry_after({}) is None


# --- resuming -----------------------------------------------------------------------------------


def test_an_interrupted_import_resumes_without_duplicates(
    server: LangfuseServer, tmp_path: Path, waits: list[float]
) -> None:
    store, out = tmp_path / "lf.duckdb", tmp_path / "lf.jsonl"
    newest_first = sorted(server.observations, key=lambda o: (o["startTime"], o["id"]), reverse=True)
    end_of_second_page = newest_first[5]["id"]

    def third_page(params: dict[str, list[str]]) -> bool:
        return (
            "cursor" in params
            and orjson.loads(base64.b64decode(params["cursor"][0]))["lastId"] == end_of_second_page
        )

    server.faults = [Fault("/api/public/v2/observations", 500, 100, third_page)]  # fails again and again
    code, _, err = import_pages(server, store, waits, out=out)
    assert code == 1 and "still failing" in err
    assert len(spans(store)) == 6 and len(out.read_bytes().splitlines()) == 6
    first_run = len(server.requests)

    server.faults = []
    code, report, err = import_pages(server, store, waits, out=out)
    assert code == 0, err
    assert report["resumed"] and report["complete"] and report["spans"] == 4 and report["duplicates"] == 0
    assert "cursor" in server.requests[first_run][1]  # picked up at the failed page, not from the start
    assert len(spans(store)) == 10 and len(out.read_bytes().splitlines()) == 10


def test_limit_stops_and_the_next_run_continues(server: LangfuseServer, tmp_path: Path) -> None:
    store = tmp_path / "lf.duckdb"
    code, report, _ = run_import(server, store, "--limit", "4", "--page-size", "3")
    assert code == 0 and report["spans"] == 4 and report["limited"] and not report["complete"]
    code, report, _ = run_import(server, store, "--limit", "4", "--page-size", "3")
    assert code == 0 and report["resumed"] and report["spans"] == 4 and report["limited"]
    code, report, _ = run_import(server, store, "--page-size", "3")
    assert code == 0 and report["complete"] and len(spans(store)) == 10


def test_a_later_import_fetches_what_is_new(server: LangfuseServer, tmp_path: Path) -> None:
    store = tmp_path / "lf.duckdb"
    code, first, _ = run_import(server, store, "--until", at(300))
    assert code == 0 and first["complete"] and first["spans"] == 10
    later = trace("feedfacefeedfacefeedfacefeedface", 4000)
    server.observations.append(obs(later, "f1f1f1f1f1f1f1f1", "AGENT", 4000, 4001))
    code, second, _ = run_import(server, store, "--until", at(300))
    assert code == 0 and second["since"] == at(300 - 3600)
    assert second["spans"] == 10 and second["duplicates"] == 10
    code, third, _ = run_import(server, store)  # a new query (no --until): its own progress, all of it
    assert code == 0 and third["spans"] == 11 and len(spans(store)) == 11
    code, fourth, _ = run_import(server, store)
    assert code == 0 and fourth["since"] == iso_ms(iso_to_ns(third["until"]) - 3600 * 10**9)  # type: ignore[operator]
    code, fresh, _ = run_import(server, store, "--fresh")
    assert code == 0 and fresh["since"] is None and fresh["spans"] == 11


def test_progress_is_kept_beside_the_store_without_secrets(server: LangfuseServer, tmp_path: Path) -> None:
    store = tmp_path / "lf.duckdb"
    assert run_import(server, store)[0] == 0
    state = (tmp_path / "lf.duckdb.imports.json").read_text()
    assert SECRET not in state and PUBLIC not in state and '"watermark"' in state
    store.unlink()  # the spans are gone, so the progress no longer counts
    code, report, _ = run_import(server, store)
    assert code == 0 and report["since"] is None and report["spans"] == 10


# --- the legacy API -----------------------------------------------------------------------------


def test_falls_back_to_the_legacy_endpoints(legacy_server: LangfuseServer, tmp_path: Path) -> None:
    store = tmp_path / "lf.duckdb"
    code, report, err = run_import(legacy_server, store, "--page-size", "2")
    assert code == 0 and report["api"] == "legacy" and report["spans"] == 10 and report["complete"], err
    assert len(legacy_server.requested("/api/public/v2/observations")) == 1
    assert len(legacy_server.requested("/api/public/observations")) == 5
    rows = spans(store)
    plan = rows["a2a2a2a2a2a2a2a2"]
    assert (plan["model"], plan["input_tokens"], plan["cost"]) == ("gpt-4o-2024-08-06", 120, 0.0021)
    assert (plan["session_id"], plan["user_id"]) == ("s-1", "u-1")  # from the trace list
    assert orjson.loads(plan["raw"])["attributes"]["tag.tags"] == ["prod", "checkout"]
    assert rows["b2b2b2b2b2b2b2b2"]["status"] == "ERROR" and rows["a4a4a4a4a4a4a4a4"]["status"] == "UNSET"
    assert rows["obs-c-1"]["service"] == "eval-worker" and rows["a3a3a3a3a3a3a3a3"]["input_tokens"] is None


def test_legacy_trace_filters_and_resume(
    legacy_server: LangfuseServer, tmp_path: Path, waits: list[float]
) -> None:
    store = tmp_path / "lf.duckdb"
    code, report, err = import_pages(
        legacy_server, store, waits, filters=sources.LangfuseFilters(session_id="s-2"), page_size=2
    )
    assert code == 0 and report["spans"] == 3, err
    assert legacy_server.requested("/api/public/traces")[-1]["sessionId"] == ["s-2"]
    legacy_server.faults = [Fault("/api/public/observations", 500, 100, lambda p: p.get("page") == ["3"])]
    code, _, err = import_pages(legacy_server, tmp_path / "all.duckdb", waits, page_size=2)
    assert code == 1 and "still failing" in err
    legacy_server.faults = []
    before = len(legacy_server.requested("/api/public/observations"))
    code, report, err = import_pages(legacy_server, tmp_path / "all.duckdb", waits, page_size=2)
    assert code == 0 and report["resumed"] and report["spans"] == 6, err
    assert legacy_server.requested("/api/public/observations")[before]["page"] == ["3"]
    assert len(spans(tmp_path / "all.duckdb")) == 10


# --- errors -------------------------------------------------------------------------------------


def test_bad_keys_are_one_line_without_the_secret(server: LangfuseServer, tmp_path: Path) -> None:
    code, _, err = run_import(server, tmp_path / "lf.duckdb", secret="sk-lf-wrong-secret-9999")
    assert code == 1 and "HTTP 401" in err and "--secret-key" in err and "Invalid credentials" in err
    assert "sk-lf-wrong-secret-9999" not in err and err.count("Error:") == 1


def test_missing_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LANGFUSE_PUBLIC_KEY", raising=False)
    monkeypatch.delenv("LANGFUSE_SECRET_KEY", raising=False)
    result = CliRunner().invoke(cli, ["import", "langfuse", "--store", str(tmp_path / "s.duckdb")])
    assert result.exit_code == 1 and "LANGFUSE_PUBLIC_KEY" in result.stderr


def test_keys_and_host_from_the_environment(
    server: LangfuseServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LANGFUSE_HOST", server.url)
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", PUBLIC)
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", SECRET)
    result = CliRunner().invoke(cli, ["import", "langfuse"])
    assert result.exit_code == 0, result.stderr
    assert "Imported 10 spans from langfuse" in result.stdout and "langfuse-" in result.stdout
    stats = CliRunner().invoke(cli, ["stats", "--json"])  # the import's store is remembered
    assert stats.exit_code == 0 and orjson.loads(stats.stdout)["traces"] == 3


def test_wrong_url_and_no_server(server: LangfuseServer, tmp_path: Path) -> None:
    keys = ["--public-key", PUBLIC, "--secret-key", SECRET, "--store", str(tmp_path / "s.duckdb")]
    result = CliRunner().invoke(cli, ["import", "langfuse", "--host", f"{server.url}/nothing/here", *keys])
    assert result.exit_code == 1 and "HTTP 404" in result.stderr and "--host" in result.stderr
    closed = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = closed.server_address[1]
    closed.server_close()
    result = CliRunner().invoke(cli, ["import", "langfuse", "--host", f"http://127.0.0.1:{port}", *keys])
    assert result.exit_code == 1 and f"cannot connect to http://127.0.0.1:{port}" in result.stderr


# --- `halo ingest` reads Langfuse exports ---------------------------------------------------------


def test_ingest_reads_langfuse_observation_exports(tmp_path: Path) -> None:
    traces, observations = project()
    export = tmp_path / "observations.jsonl"
    export.write_bytes(b"".join(orjson.dumps(v2_shape(o, set(GROUPS), set())) + b"\n" for o in observations))
    detail = tmp_path / "trace.json"  # GET /api/public/traces/{id}: a trace with its observations
    detail.write_bytes(
        orjson.dumps(
            {
                **traces[1],
                "id": "0" * 31 + "9",
                "observations": [
                    {**legacy_shape(o), "traceId": "0" * 31 + "9"}
                    for o in observations
                    if o["traceId"] == traces[1]["id"]
                ],
            }
        )
    )
    store = tmp_path / "s.duckdb"
    with TraceStore.open(store) as s:
        report = s.ingest([export, detail])
    assert report.spans == 13 and report.rejected == 0
    rows = spans(store)
    plan = rows["a2a2a2a2a2a2a2a2"]
    assert (plan["model"], plan["kind"]) == ("gpt-4o-2024-08-06", "LLM")
    legacy = [r for r in rows.values() if r["trace_id"] == "0" * 31 + "9"]
    assert {r["session_id"] for r in legacy} == {"s-2"} and sum(r["status"] == "ERROR" for r in legacy) == 1


def test_not_an_observation_is_still_rejected() -> None:
    with pytest.raises(Exception, match="not a span"):
        decode_record({"id": "x", "traceId": "t", "type": "SCORE", "startTime": "2026-01-01T00:00:00Z"})
