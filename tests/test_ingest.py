"""Ingest: every supported format, compression, and bad input of every kind."""

from __future__ import annotations

import gzip
import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard
from halo_runs import jsonl, runs, write_runs

import halo_rlm
from halo_rlm import files
from halo_rlm.formats.conventions import TEXT_CAP
from halo_rlm.simulate import simulate
from halo_rlm.store import StrictError, TraceStore
from halo_rlm.store.schema import SPAN_COLUMNS


def ingest(store_path: Path, *paths: Path | str, **kwargs: Any) -> tuple[TraceStore, Any]:
    store = TraceStore.open(store_path)
    report = store.ingest([str(p) for p in paths], **kwargs)
    return store, report


def rows(store: TraceStore, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    return store.con.execute(sql, params).fetchall()


def write_lines(path: Path, records: list[Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def flat_span(trace: str, span: str, parent: str = "", **extra: Any) -> dict[str, Any]:
    span_record = {
        "trace_id": trace,
        "span_id": span,
        "parent_span_id": parent,
        "trace_state": "",
        "name": "step",
        "kind": "SPAN_KIND_INTERNAL",
        "start_time": "2026-04-24T18:12:13.315189000Z",
        "end_time": "2026-04-24T18:12:14.315189000Z",
        "status": {"code": "STATUS_CODE_OK", "message": ""},
        "resource": {"attributes": {"service.name": "svc"}},
        "scope": {"name": "s", "version": "1"},
        "attributes": {"openinference.span.kind": "CHAIN"},
    }
    span_record.update(extra)
    return span_record


# --- HALO's own span format ---------------------------------------------------------------


def test_fixture_counts_match_the_reference_inventory(fixtures: Path, store_path: Path) -> None:
    """The real trace files beside the repository give the reference numbers (skipped without them:
    the format's coverage is the generated corpora below)."""
    store, report = ingest(store_path, fixtures)
    per_file = {Path(i.path).name: (i.spans, i.rejected) for i in report.inputs}
    assert per_file == {
        "demo_sample_traces.jsonl": (7, 0),
        "realistic_traces.jsonl": (58, 0),
        "tiny_traces.jsonl": (6, 0),
        "tiny_traces_second_file.jsonl": (2, 0),
    }
    assert rows(store, "SELECT count(*), count(DISTINCT trace_id) FROM spans") == [(73, 9)]
    realistic = rows(
        store,
        """SELECT kind, count(*) FROM spans JOIN inputs USING (input_id)
        WHERE path LIKE '%realistic%' GROUP BY 1 ORDER BY 1""",
    )
    assert realistic == [("AGENT", 3), ("CHAIN", 21), ("LLM", 18), ("TOOL", 16)]
    # The reference says: 2 error traces, 3 error spans, all function.list_files.
    assert rows(
        store,
        """SELECT count(DISTINCT trace_id), count(*), list_distinct(list(name)) FROM spans
        JOIN inputs USING (input_id) WHERE path LIKE '%realistic%' AND spans.status = 'ERROR'""",
    ) == [(2, 3, ["function.list_files"])]
    # 24-hex span ids are kept as they are.
    assert rows(
        store,
        "SELECT DISTINCT length(span_id) FROM spans WHERE trace_id = '84559aaf5d124026b1da35a7a66d9e94'",
    ) == [(24,)]


def test_canonical_columns_of_halo_spans(store_path: Path, tmp_path: Path) -> None:
    generated = runs(4)  # three models, one and two LLM calls, a failing tool
    store, report = ingest(store_path, write_runs(tmp_path / "t.jsonl", generated))
    assert report.rejected == 0
    assert rows(
        store,
        """SELECT trace_id, span_id, parent_id, name, kind, otel_kind, service, scope, scope_version, status,
        status_message, start_ns, duration_ns, agent_name FROM spans ORDER BY trace_id, start_ns""",
    ) == [
        (
            r.trace_id,
            step.span_id,
            step.parent,
            step.name,
            step.kind,
            step.otel_kind,
            r.service,
            "@test/scope",
            "0.0.1",
            "ERROR" if step.error else "OK",
            step.error,  # an empty message is no message
            r.start_ns + step.start_ms * 10**6,
            step.duration_ns,
            r.agent,
        )
        for r in generated
        for step in r.steps
    ]
    # The cost comes from HALO's `inference.llm.cost.total`, a decimal string.
    assert rows(
        store,
        """SELECT trace_id, model, provider, input_tokens, output_tokens, total_tokens, cost FROM spans
        WHERE kind = 'LLM' ORDER BY trace_id, start_ns""",
    ) == [
        (
            r.trace_id,
            r.model,
            r.provider,
            r.input_tokens,
            r.output_tokens,
            r.input_tokens + r.output_tokens,
            float(r.cost),
        )
        for r in generated
        for _ in range(r.llm_calls)
    ]
    assert rows(
        store,
        "SELECT trace_id, tool_name, tool_args, tool_result, model FROM spans WHERE kind = 'TOOL' ORDER BY 1",
    ) == [(r.trace_id, r.tool, r.tool_args, r.tool_output, None) for r in generated]
    # Trace rollups count tokens from LLM spans only (the AGENT root carries none here, but must not add).
    traces = rows(
        store,
        """SELECT trace_id, span_count, llm_spans, tool_spans, error_spans, has_errors, start_ns, duration_ns,
        input_tokens, output_tokens, round(cost, 8), root_name, services, agents, models, tools
        FROM traces ORDER BY trace_id""",
    )
    assert traces == [
        (
            r.trace_id,
            len(r.steps),
            r.llm_calls,
            1,
            int(bool(r.tool_error)),
            bool(r.tool_error),
            r.start_ns,
            r.duration_ms * 10**6,
            r.llm_calls * r.input_tokens,
            r.llm_calls * r.output_tokens,
            round(r.llm_calls * float(r.cost), 8),
            r.steps[0].name,
            [r.service],
            [r.agent],
            [r.model],
            [r.tool],
        )
        for r in generated
    ]


def test_a_422_kb_tool_result_among_ordinary_spans(store_path: Path, tmp_path: Path) -> None:
    # As in HALO's demo sample: a list_files call whose result is 422 KB, in a file of ordinary spans.
    result = "[" + ", ".join(f"'./src/pkg_{i // 100:03d}/module_{i:05d}.py'" for i in range(12_800)) + "]"
    ordinary = runs(2)
    big = replace(runs(1, first=2)[0], tool_output=result)
    path = write_runs(tmp_path / "demo.jsonl", [*ordinary, big])
    line = next(line for line in path.read_bytes().splitlines() if result.encode() in line)
    assert len(line) > 422_000
    store, report = ingest(store_path, path)
    assert report.spans == sum(len(r.steps) for r in [*ordinary, big]) and report.rejected == 0
    raw_bytes, raw, tool_result = rows(
        store, "SELECT raw_bytes, raw, tool_result FROM spans WHERE span_id = ?", [f"{big.trace_id}.tool"]
    )[0]
    assert raw_bytes == len(line) and raw == line.decode()  # raw keeps everything
    head, tail = TEXT_CAP * 3 // 4, TEXT_CAP // 4  # the canonical column keeps head and tail only
    cut = len(result) - head - tail
    assert tool_result == f"{result[:head]}\n…[halo: {cut} characters cut]…\n{result[-tail:]}"
    assert rows(
        store,
        "SELECT trace_id, tool_result FROM spans WHERE kind = 'TOOL' AND trace_id <> ? ORDER BY 1",
        [big.trace_id],
    ) == [(r.trace_id, r.tool_output) for r in ordinary]


def test_tokens_are_not_double_counted_through_agent_parents(store_path: Path, tmp_path: Path) -> None:
    agent = flat_span(
        "t1",
        "a",
        attributes={
            "openinference.span.kind": "AGENT",
            "llm.token_count.prompt": 300,
            "llm.token_count.completion": 30,
            "llm.cost.total": 0.3,
        },
    )
    llm1 = flat_span(
        "t1",
        "b",
        "a",
        attributes={
            "openinference.span.kind": "LLM",
            "llm.model_name": "m",
            "llm.token_count.prompt": 100,
            "llm.token_count.completion": 10,
            "llm.cost.total": 0.1,
        },
    )
    llm2 = flat_span(
        "t1",
        "c",
        "a",
        attributes={
            "openinference.span.kind": "LLM",
            "llm.model_name": "m",
            "llm.token_count.prompt": 200,
            "llm.token_count.completion": 20,
            "llm.cost.total": 0.2,
        },
    )
    store, _ = ingest(store_path, write_lines(tmp_path / "t.jsonl", [agent, llm1, llm2]))
    assert rows(store, "SELECT input_tokens, output_tokens, round(cost, 6) FROM traces") == [(300, 30, 0.3)]


# --- other formats --------------------------------------------------------------------------


def otlp_request(spans: list[dict[str, Any]], service: str = "svc") -> dict[str, Any]:
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                "scopeSpans": [{"scope": {"name": "my.lib", "version": "1.0"}, "spans": spans}],
            }
        ]
    }


def otlp_span(trace: str, span: str, parent: str = "", **extra: Any) -> dict[str, Any]:
    record = {
        "traceId": trace,
        "spanId": span,
        "parentSpanId": parent,
        "name": "chat gpt-4o",
        "kind": 3,
        "startTimeUnixNano": "1776924720000000000",
        "endTimeUnixNano": "1776924721250000000",
        "attributes": [
            {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
            {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}},
            {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "100"}},
            {"key": "gen_ai.usage.output_tokens", "value": {"intValue": 7}},
        ],
        "status": {"code": 2, "message": "rate limited"},
    }
    record.update(extra)
    return record


def test_otlp_json_lines(store_path: Path, tmp_path: Path) -> None:
    trace = "5B8EFFF798038103D269B633813FC60C"
    path = write_lines(
        tmp_path / "otlp.jsonl",
        [
            otlp_request([otlp_span(trace, "eee19b7ec3c1b174")]),
            otlp_request(
                [
                    otlp_span(
                        trace,
                        "aaaaaaaaaaaaaaaa",
                        "eee19b7ec3c1b174",
                        kind="SPAN_KIND_INTERNAL",
                        status={"code": "STATUS_CODE_OK"},
                    )
                ],
                service="other",
            ),
        ],
    )
    store, report = ingest(store_path, path)
    assert report.spans == 2 and report.rejected == 0
    got = rows(
        store,
        """SELECT trace_id, span_id, parent_id, kind, otel_kind, model, input_tokens, output_tokens,
        status, status_message, start_ns, duration_ns, service FROM spans ORDER BY span_id""",
    )
    assert got[0] == (
        trace.lower(),
        "aaaaaaaaaaaaaaaa",
        "eee19b7ec3c1b174",
        "LLM",
        "INTERNAL",
        "gpt-4o",
        100,
        7,
        "OK",
        None,
        1776924720000000000,
        1_250_000_000,
        "other",
    )
    assert got[1][:3] == (trace.lower(), "eee19b7ec3c1b174", None)
    assert got[1][8:10] == ("ERROR", "rate limited")


def test_otlp_whole_document_snake_case_and_base64_ids(store_path: Path, tmp_path: Path) -> None:
    document = {
        "resource_spans": [
            {
                "resource": {"attributes": {"service.name": "snake"}},  # plain-dict attributes
                "scope_spans": [
                    {
                        "scope": {"name": "x"},
                        "spans": [
                            {
                                "trace_id": "W47/95gDgQPSabYzgT/GDA==",
                                "span_id": "7uGbfsPBsXQ=",
                                "parent_span_id": "",
                                "name": "tool call",
                                "kind": "SPAN_KIND_CLIENT",
                                "start_time_unix_nano": 1776924720000000000,
                                "end_time_unix_nano": "1776924720500000000",
                                "attributes": [
                                    {"key": "tool.name", "value": {"stringValue": "search"}},
                                    {
                                        "key": "meta",
                                        "value": {
                                            "kvlistValue": {
                                                "values": [
                                                    {
                                                        "key": "a",
                                                        "value": {
                                                            "arrayValue": {"values": [{"intValue": "1"}]}
                                                        },
                                                    }
                                                ]
                                            }
                                        },
                                    },
                                ],
                                "status": {"code": "STATUS_CODE_ERROR", "message": "boom"},
                            }
                        ],
                    }
                ],
            }
        ]
    }
    path = tmp_path / "request.json"
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    store, report = ingest(store_path, path)
    assert report.spans == 1, report
    got = rows(store, "SELECT trace_id, span_id, kind, tool_name, service, status, raw FROM spans")[0]
    assert got[:6] == (
        "5b8efff798038103d269b633813fc60c",
        "eee19b7ec3c1b174",
        "TOOL",
        "search",
        "snake",
        "ERROR",
    )
    assert orjson.loads(got[6])["attributes"]["meta.a"] == [1]


def test_openinference_phoenix_span_json(store_path: Path, tmp_path: Path) -> None:
    span = {
        "name": "ChatCompletion",
        "context": {"trace_id": "0x4BF92F3577B34DA6A3CE929D0E0E4736", "span_id": "00f067aa0ba902b7"},
        "parent_id": None,
        "span_kind": "LLM",
        "start_time": "2026-04-24T18:12:13.315189+02:00",
        "end_time": "2026-04-24T18:12:14.315189+02:00",
        "status_code": "ERROR",
        "status_message": "429",
        "attributes": {
            "llm": {"model_name": "gpt-4o", "token_count": {"prompt": 12}},
            "input": {"value": "hi"},
        },
        "events": [
            {
                "name": "exception",
                "timestamp": "2026-04-24T16:12:14Z",
                "attributes": {"exception.type": "RateLimitError", "exception.message": "slow down"},
            }
        ],
    }
    page = {
        "data": [
            span,
            {
                **span,
                "context": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "1"},
                "parent_id": "00f067aa0ba902b7",
                "span_kind": "TOOL",
                "status_code": "OK",
            },
        ],
        "next_cursor": None,
    }
    store, report = ingest(store_path, write_lines(tmp_path / "phoenix.jsonl", [span, page]))
    assert report.spans == 3 and report.rejected == 0
    got = rows(
        store,
        """SELECT trace_id, span_id, kind, model, input_tokens, status, status_message, error_type,
        start_ns, input_value, exceptions FROM spans WHERE span_id = '00f067aa0ba902b7' LIMIT 1""",
    )[0]
    assert got[:8] == (
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "00f067aa0ba902b7",
        "LLM",
        "gpt-4o",
        12,
        "ERROR",
        "429",
        "RateLimitError",
    )
    assert got[8] == 1777047133315189000  # the +02:00 offset is honoured
    assert got[9] == "hi" and orjson.loads(got[10])[0]["message"] == "slow down"
    # The same span twice (line 1 and inside the page) is stored once.
    assert rows(store, "SELECT count(*) FROM spans") == [(2,)]


def test_trail_nested_trees(store_path: Path, tmp_path: Path) -> None:
    tree = {
        "trace_id": "trail-1",
        "spans": [
            {
                "span_id": "root",
                "span_name": "main",
                "span_attributes": {"openinference.span.kind": "AGENT"},
                "status_code": "Unset",
                "timestamp": "2026-01-01T00:00:00Z",
                "child_spans": [
                    {
                        "span_id": "c1",
                        "span_name": "llm",
                        "status_code": "Error",
                        "status_message": "bad",
                        "span_attributes": {"openinference.span.kind": "LLM"},
                        "child_spans": [{"span_id": "c2", "span_name": "tool"}],
                    }
                ],
            }
        ],
    }
    store, _ = ingest(store_path, write_lines(tmp_path / "trail.jsonl", [tree]))
    assert rows(store, "SELECT span_id, parent_id, kind, status FROM spans ORDER BY span_id") == [
        ("c1", "root", "LLM", "ERROR"),
        ("c2", "c1", "SPAN", "UNSET"),
        ("root", None, "AGENT", "UNSET"),
    ]


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_compressed_inputs(store_path: Path, tmp_path: Path, compress: str) -> None:
    truth = simulate(tmp_path / "simulated.jsonl", traces=6, seed=3)
    data = truth.traces_path.read_bytes()
    path = tmp_path / f"t.jsonl.{compress[:2]}"
    path.write_bytes(gzip.compress(data) if compress == "gzip" else zstandard.ZstdCompressor().compress(data))
    store, report = ingest(store_path, path)
    assert report.spans == truth.corpus.spans and report.rejected == 0
    assert rows(store, "SELECT count(DISTINCT trace_id) FROM spans") == [(truth.corpus.traces,)]
    written = sorted((s["trace_id"], s["span_id"]) for s in map(orjson.loads, data.splitlines()))
    assert rows(store, "SELECT trace_id, span_id FROM spans ORDER BY ALL") == written
    assert rows(store, "SELECT compression FROM inputs") == [(compress,)]


def test_bulk_load_matches_reading_line_by_line(store_path: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "examples.jsonl"
    corpus.write_bytes(
        gzip.decompress((Path(halo_rlm.__file__).parent / "examples" / "traces.jsonl.gz").read_bytes())
    )
    columns = [c.name for c in SPAN_COLUMNS if c.name not in ("line_no", "input_id")]
    query = f"SELECT {', '.join(columns)} FROM spans ORDER BY trace_id, span_id"
    bulk, _ = ingest(store_path, corpus)
    assert rows(bulk, "SELECT count(*), count(line_no) FROM spans")[0][1] == 0  # loaded in one statement
    streamed, _ = ingest(tmp_path / "streamed.duckdb", corpus, bulk=False)
    assert rows(streamed, "SELECT count(line_no) = count(*) FROM spans") == [(True,)]
    assert rows(bulk, query) == rows(streamed, query)
    assert rows(bulk, "SELECT * FROM traces ORDER BY trace_id") == rows(
        streamed, "SELECT * FROM traces ORDER BY trace_id"
    )


def test_rollups_made_in_buckets_are_the_rollups_made_at_once(
    store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from halo_rlm.store import duckdb_ingest

    truth = simulate(tmp_path / "sim.jsonl", traces=60, seed=5)
    whole, _ = ingest(store_path, truth.traces_path)
    monkeypatch.setattr(duckdb_ingest, "ROLLUP_SPANS", 50)  # a few traces per statement
    bucketed, _ = ingest(tmp_path / "bucketed.duckdb", truth.traces_path)
    everything = "SELECT * FROM traces ORDER BY trace_id"
    assert len(rows(whole, everything)) == 60
    assert rows(bucketed, everything) == rows(whole, everything)


def test_a_bad_line_deep_in_a_flat_file_keeps_every_good_line_numbered(
    store_path: Path, tmp_path: Path
) -> None:
    records = [orjson.dumps(flat_span(f"{t:x}", f"{s:x}")) for t in range(1, 400) for s in range(1, 4)]
    records[1000] = b'{"trace_id": "77", "span_id": '  # cut short
    path = tmp_path / "late.jsonl"
    path.write_bytes(b"\n".join(records) + b"\n")
    store, report = ingest(store_path, path)
    assert report.spans == len(records) - 1 and report.rejected == 1
    assert rows(store, "SELECT line_no FROM rejects") == [(1001,)]
    assert rows(store, "SELECT count(line_no), max(line_no) FROM spans") == [(len(records) - 1, len(records))]


def test_a_file_name_that_looks_like_a_glob_is_read_as_itself(store_path: Path, tmp_path: Path) -> None:
    # DuckDB's readers would take `a[b].jsonl` as a pattern matching `ab.jsonl`.
    write_lines(tmp_path / "ab.jsonl", [flat_span("other", "x", name="wrong file")])
    flat = write_lines(tmp_path / "a[b].jsonl", [flat_span("t1", "a", name="right file")])
    otlp = write_lines(
        tmp_path / "c[d].jsonl",
        [
            {
                "resourceSpans": [
                    {
                        "scopeSpans": [
                            {
                                "spans": [
                                    {
                                        "traceId": "5b8efff798038103d269b633813fc60c",
                                        "spanId": "eee19b7ec3c1b174",
                                        "name": "right otlp",
                                    }
                                ]
                            }
                        ]
                    }
                ]
            }
        ],
    )
    write_lines(tmp_path / "cd.jsonl", [flat_span("other", "y", name="wrong otlp")])
    store, report = ingest(store_path, flat, otlp)
    assert report.spans == 2
    assert rows(store, "SELECT name FROM spans ORDER BY name") == [("right file",), ("right otlp",)]


def test_stdin(store_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    generated = runs(3)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(jsonl(generated))))
    store, report = ingest(store_path, "-")
    assert report.spans == sum(len(r.steps) for r in generated) and report.rejected == 0
    assert rows(store, "SELECT trace_id, span_id FROM spans ORDER BY ALL") == sorted(
        (r.trace_id, span_id) for r in generated for span_id in r.span_ids
    )
    assert rows(store, "SELECT path FROM inputs") == [("-",)]


def test_directories_and_globs(tmp_path: Path) -> None:
    folder = tmp_path / "traces"
    (folder / "deeper").mkdir(parents=True)
    (folder / ".cache").mkdir()
    write_runs(folder / "tiny.jsonl", runs(1))
    write_runs(folder / "tiny_second.jsonl", runs(1, first=1))
    (folder / "big.jsonl.gz").write_bytes(gzip.compress(jsonl(runs(2, first=2))))
    write_runs(folder / "deeper" / "more.ndjson", runs(1, first=4))
    write_runs(folder / ".cache" / "hidden.jsonl", runs(1, first=5))  # hidden: not read
    (folder / "notes.txt").write_text("not a trace file\n")
    (folder / "deeper" / "table.csv").write_text("a,b\n1,2\n")
    assert [Path(i.path).name for i in files.resolve([str(folder / "tiny*.jsonl")])] == [
        "tiny.jsonl",
        "tiny_second.jsonl",
    ]
    found = files.resolve([folder])
    assert [Path(i.path).relative_to(folder.resolve()).as_posix() for i in found] == [
        "big.jsonl.gz",
        "deeper/more.ndjson",
        "tiny.jsonl",
        "tiny_second.jsonl",
    ]
    assert [i.size for i in found] == [Path(i.path).stat().st_size for i in found]
    with pytest.raises(files.InputError, match="matches no files"):
        files.resolve([str(tmp_path / "*.jsonl")])
    with pytest.raises(files.InputError, match="no such file"):
        files.resolve([tmp_path / "missing.jsonl"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(files.InputError, match="holds no trace files"):
        files.resolve([tmp_path / "empty"])


# --- store semantics ------------------------------------------------------------------------


def test_duplicates_orphans_in_flight_and_traces_split_across_files(store_path: Path, tmp_path: Path) -> None:
    in_flight = flat_span("t1", "b", "a", end_time=None)
    first = write_lines(
        tmp_path / "1.jsonl",
        [in_flight, flat_span("t1", "c", "missing-parent"), flat_span("t1", "c", "missing-parent")],
    )
    store, _ = ingest(store_path, first)
    assert rows(store, "SELECT span_id, is_orphan, end_ns IS NULL FROM spans ORDER BY span_id") == [
        ("b", True, True),
        ("c", True, False),
    ]
    assert rows(store, "SELECT span_count, orphan_spans, in_flight_spans FROM traces") == [(2, 2, 1)]
    # The rest of the trace arrives in another file: the root, and the finished copy of span b.
    second = write_lines(tmp_path / "2.jsonl", [flat_span("t1", "a"), flat_span("t1", "b", "a")])
    store.ingest([str(second)])
    assert rows(store, "SELECT span_id, is_orphan, end_ns IS NULL FROM spans ORDER BY span_id") == [
        ("a", False, False),
        ("b", False, False),
        ("c", True, False),
    ]
    assert rows(store, "SELECT span_count, orphan_spans, in_flight_spans, root_span_id FROM traces") == [
        (3, 1, 0, "a")
    ]


def test_second_run_reuses_and_new_files_are_added_alone(store_path: Path, tmp_path: Path) -> None:
    first_runs, second_runs = runs(3), runs(2, first=3)
    first = write_runs(tmp_path / "first.jsonl", first_runs)
    second = write_runs(tmp_path / "second.jsonl", second_runs)
    store, _ = ingest(store_path, first)
    again = store.ingest([str(first), str(second)])
    assert [i.status for i in again.inputs] == ["unchanged", "ingested"]
    assert again.spans == sum(len(r.steps) for r in second_runs)
    assert rows(store, "SELECT count(*), count(DISTINCT trace_id) FROM spans") == [
        (sum(len(r.steps) for r in first_runs + second_runs), len(first_runs + second_runs))
    ]


def test_appended_file_ingests_only_the_new_tail(store_path: Path, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "grow.jsonl", [flat_span("t1", "a"), flat_span("t1", "b", "a")])
    store, _ = ingest(store_path, path)
    with path.open("ab") as f:
        f.write(orjson.dumps(flat_span("t2", "x")) + b"\n")
    report = store.ingest([str(path)])
    assert report.inputs[0].status == "resumed" and report.inputs[0].spans == 1
    assert rows(store, "SELECT trace_id, count(*) FROM spans GROUP BY 1 ORDER BY 1") == [("t1", 2), ("t2", 1)]
    # The first two were bulk-loaded (no line numbers); the appended one is numbered after them.
    assert rows(store, "SELECT span_id, line_no FROM spans ORDER BY span_id") == [
        ("a", None),
        ("b", None),
        ("x", 3),
    ]


def test_a_file_changed_before_its_old_end_is_read_again(store_path: Path, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "edit.jsonl", [flat_span("t1", "a"), flat_span("t1", "b", "a")])
    store, _ = ingest(store_path, path)
    write_lines(
        path, [flat_span("t1", "a"), flat_span("t1", "c", "a"), flat_span("t2", "x")]
    )  # longer, not appended
    report = store.ingest([str(path)])
    assert report.inputs[0].status == "ingested"
    assert rows(store, "SELECT span_id FROM spans ORDER BY 1") == [("a",), ("c",), ("x",)]


def test_rewritten_file_replaces_its_spans(store_path: Path, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "f.jsonl", [flat_span("t1", "a"), flat_span("t1", "b", "a")])
    store, _ = ingest(store_path, path)
    write_lines(path, [flat_span("t9", "z")])
    store.ingest([str(path)])
    assert rows(store, "SELECT trace_id FROM spans") == [("t9",)]
    assert rows(store, "SELECT count(*) FROM traces") == [(1,)]


# --- bad input ------------------------------------------------------------------------------


def test_bad_lines_are_rejected_with_reasons_and_good_lines_kept(store_path: Path, tmp_path: Path) -> None:
    good = orjson.dumps(flat_span("t1", "a")).decode()
    lines = [
        good,
        '{"trace_id": "t1", "span_id": "b", "name": "trunc',  # truncated
        "not json at all",
        "[1, 2, 3]",
        '{"hello": "world"}',
        '{"trace_id": {"nested": 1}, "span_id": "x"}',
        '{"trace_id": "t1", "span_id": "c", "start_time": {"bad": 1}, "attributes": "oops", '
        '"status": 7, "kind": [], "name": 5}',  # wrong types in known fields: kept
        "   ",
        "",
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines))  # no final newline: the last record is still read
    store, report = ingest(store_path, path)
    assert report.spans == 2
    rejected = rows(store, "SELECT line_no, reason, excerpt FROM rejects ORDER BY line_no")
    assert [r[0] for r in rejected] == [2, 3, 4, 5, 6]
    assert "truncated" in rejected[0][1]
    assert rejected[1][1].startswith("invalid JSON")
    assert "not a span" in rejected[2][1] and "not a span" in rejected[3][1] and "hello" in rejected[3][1]
    assert rejected[4][1] == "trace id is a JSON object, not a string"
    assert rejected[2][2] == "[1, 2, 3]"
    kept = rows(store, "SELECT name, start_ns, kind, status FROM spans WHERE span_id = 'c'")
    assert kept == [("5", None, "SPAN", "UNSET")]


def test_strict_stops_at_the_first_bad_record(store_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(orjson.dumps(flat_span("t1", "a")).decode() + "\n{broken\n")
    with pytest.raises(StrictError, match=r"bad.jsonl:2: invalid JSON"):
        ingest(store_path, path, strict=True)


@pytest.mark.parametrize(
    ("content", "found"),
    [
        (b"", "an empty file"),
        (b"\n\n   \n", "an empty file"),
        (b"name,age,city\nann,3,paris\n", "found CSV/TSV text (line 1: invalid JSON"),
        (b"\x00\x01\x02binary\xff\xfe" * 50, "found binary data"),
        (b'{"rows": [1, 2], "total": 2}', "not a span: a JSON object with keys {rows, total}"),
    ],
)
def test_files_that_are_not_trace_data(store_path: Path, tmp_path: Path, content: bytes, found: str) -> None:
    path = tmp_path / "input.jsonl"
    path.write_bytes(content)
    store, report = ingest(store_path, path)
    assert report.inputs[0].status == "failed"
    assert found in (report.inputs[0].message or "")
    assert rows(store, "SELECT count(*) FROM spans") == [(0,)]


@pytest.mark.parametrize("compress", [gzip.compress, zstandard.ZstdCompressor().compress])
def test_compressed_data_cut_short_keeps_the_spans_before_the_damage(
    store_path: Path, tmp_path: Path, compress: Any
) -> None:
    # Spans with random-ish bodies so the compressed stream is long enough to cut in the middle.
    records = [flat_span(f"t{i}", "a", name=f"step {i * 7919 % 104729:x}" * 40) for i in range(3000)]
    whole = compress(b"".join(orjson.dumps(r) + b"\n" for r in records))
    path = tmp_path / "cut.jsonl.z"
    path.write_bytes(whole[: len(whole) * 3 // 4])
    store, report = ingest(store_path, path)
    result = report.inputs[0]
    assert result.status == "ingested"
    assert "damaged or cut short" in (result.message or "")
    kept = rows(store, "SELECT count(*) FROM spans")[0][0]
    assert 1000 < kept < 3000 and kept == result.spans
    assert rows(store, "SELECT count(*) FROM rejects") == [(0,)]  # the cut line is not a record


@pytest.mark.parametrize("content", [b"\x1f\x8bnot gzip at all", b"\x28\xb5\x2f\xfd\x00\x00", b"\x1f\x8b"])
def test_compression_magic_without_compressed_data(store_path: Path, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fake.jsonl"
    path.write_bytes(content)
    store, report = ingest(store_path, path)
    assert report.inputs[0].status == "failed"
    assert "damaged or cut short after 0 decompressed bytes" in (report.inputs[0].message or "")
    assert rows(store, "SELECT count(*) FROM spans") == [(0,)]


def test_a_large_non_trace_file_stops_early_with_one_message(store_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_text("a,b,c\n" * 50_000)
    _, report = ingest(store_path, path)
    assert report.inputs[0].status == "failed"
    assert "not trace data" in (report.inputs[0].message or "")


def test_hostile_numbers_never_abort_an_ingest(store_path: Path, tmp_path: Path) -> None:
    # "²" passes str.isdigit() but not int(); times past 2262 and integers past 64 bits fit no column.
    flat = write_lines(
        tmp_path / "flat.jsonl",
        [
            flat_span(
                "t1",
                "a",
                start_time="inf",
                attributes={
                    "openinference.span.kind": "LLM",
                    "llm.output_messages.0.message.content": "ok",
                    "llm.output_messages.\u00b2.message.content": "odd index",
                },
            )
        ],
    )
    request = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "5b8efff798038103d269b633813fc60c",
                                "spanId": "eee19b7ec3c1b174",
                                "name": "x",
                                "startTimeUnixNano": "99999999999999999999999",
                                "attributes": [
                                    {"key": "big", "value": {"intValue": "123456789012345678901234567890"}}
                                ],
                            }
                        ]
                    }
                ]
            }
        ]
    }
    otlp = write_lines(tmp_path / "otlp.jsonl", [request])
    store, report = ingest(store_path, flat, otlp)
    assert [i.status for i in report.inputs] == ["ingested", "ingested"] and report.spans == 2
    assert rows(store, "SELECT output_messages FROM spans WHERE trace_id = 't1'") == [('[{"content":"ok"}]',)]
    assert rows(
        store, "SELECT start_ns, raw->>'$.attributes.big' FROM spans WHERE span_id = 'eee19b7ec3c1b174'"
    ) == [(None, "123456789012345678901234567890")]


def test_invalid_utf8_is_repaired_not_lost(store_path: Path, tmp_path: Path) -> None:
    span = orjson.dumps(flat_span("t1", "a", name="caf\u00e9")).replace("caf\u00e9".encode(), b"caf\xe9")
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(span + b"\n")
    store, report = ingest(store_path, path)
    assert report.spans == 1 and report.inputs[0].repaired == 1
    assert rows(store, "SELECT name FROM spans") == [("caf\ufffd",)]


def test_huge_lines(store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    huge = flat_span(
        "t1",
        "big",
        attributes={"openinference.span.kind": "TOOL", "tool.name": "dump", "output.value": "x" * (60 << 20)},
    )
    too_huge = flat_span("t1", "bigger", attributes={"output.value": "y" * (3 << 20)})
    path = write_lines(tmp_path / "huge.jsonl", [huge, flat_span("t1", "small")])
    store, report = ingest(store_path, path)
    assert report.spans == 2
    assert rows(
        store,
        "SELECT raw_bytes > 60 * 1024 * 1024, length(tool_result) < 40000 FROM spans WHERE span_id = 'big'",
    ) == [(True, True)]
    path2 = write_lines(tmp_path / "huge2.jsonl", [too_huge, flat_span("t2", "after")])
    report = store.ingest([str(path2)], max_line_bytes=1 << 20)
    assert report.inputs[0].spans == 1 and report.inputs[0].rejected == 1
    assert "exceeds" in rows(store, "SELECT reason FROM rejects")[0][0]


def _span_lines(first: int, count: int) -> bytes:
    return b"".join(
        orjson.dumps({"trace_id": f"{n // 10 + 1:032x}", "span_id": f"{n + 1:016x}", "name": f"s{n}"}) + b"\n"
        for n in range(first, first + count)
    )


def test_a_store_opened_for_appends_keeps_its_writes_in_small_row_groups(tmp_path: Path) -> None:
    """A collector's write adds its rows in row groups of their own size instead of rewriting the
    table's last (default, 122,880-row) row group at every checkpoint; readers see the same rows."""
    from halo_rlm.store.duckdb_store import APPEND_ROW_GROUP_ROWS

    path = tmp_path / "appends.duckdb"
    rows = APPEND_ROW_GROUP_ROWS + 100
    for first in (0, rows):
        with TraceStore.open(path, appends=True) as store:
            store.ingest_lines(_span_lines(first, rows), source="otlp:test")
    with TraceStore.open(path, read_only=True) as store:
        spans, largest = store.first_row(  # type: ignore[misc]
            "SELECT (SELECT count(*) FROM spans), max(rows) FROM (SELECT row_group_id, sum(count) AS rows "
            "FROM pragma_storage_info('spans') WHERE column_path = '[0, 0]' GROUP BY row_group_id)"
        )
        assert spans == 2 * rows
        assert largest == APPEND_ROW_GROUP_ROWS  # by default, one row group holds them all
        assert store.first_row("SELECT count(*) FROM traces")[0] == -(-2 * rows // 10)  # type: ignore[index]


def test_opening_for_appends_shares_a_store_this_process_has_open(tmp_path: Path) -> None:
    """The web app holds its store open and runs the collector in the same process: the collector's
    writes go through that database rather than attaching the file a second time."""
    path = tmp_path / "shared.duckdb"
    with TraceStore.open(path) as held:
        with TraceStore.open(path, appends=True, lock_timeout=0.5) as store:
            store.ingest_lines(_span_lines(0, 20), source="otlp:test")
        assert held.first_row("SELECT count(*) FROM spans")[0] == 20  # type: ignore[index]
    # and an append connection holding it makes another opener in this process wait, not fail
    with TraceStore.open(path, appends=True) as store:
        with pytest.raises(halo_rlm.store.StoreError, match="cannot open the store"):
            TraceStore.open(path, lock_timeout=0.2)
        store.ingest_lines(_span_lines(20, 20), source="otlp:test")
    with TraceStore.open(path, read_only=True) as store:
        assert store.first_row("SELECT count(*) FROM spans")[0] == 40  # type: ignore[index]
