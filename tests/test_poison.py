"""No input can poison a store: whatever ingest accepts, every command reads. Stores built from
mutated files are read by `halo stats`, `traces`, `show`, `analyze` and `verify`; and the inputs the
attack campaign used (a span without a start time, deeply nested arrays, a broken first line, a file
still being written, other encodings, duplicate keys) are each read the one right way."""

from __future__ import annotations

import codecs
import gzip
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from halo_rlm.cli import cli
from halo_rlm.store import TraceStore


def span(trace: str, span_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "trace_id": trace,
        "span_id": span_id,
        "parent_span_id": "",
        "name": "step",
        "kind": "SPAN_KIND_INTERNAL",
        "start_time": "2026-04-24T18:12:13.315189000Z",
        "end_time": "2026-04-24T18:12:14.315189000Z",
        "status": {"code": "STATUS_CODE_OK", "message": ""},
        "resource": {"attributes": {"service.name": "svc"}},
        "scope": {"name": "s", "version": "1"},
        "attributes": {"openinference.span.kind": "TOOL", "tool.name": "search"},
        **fields,
    }


ERROR = {"code": "STATUS_CODE_ERROR", "message": "tool failed: timeout after 30s"}
SEEDS = [
    orjson.dumps(span("t1", "s1")),
    orjson.dumps(span("t1", "s2", parent_span_id="s1", status=ERROR)),
    orjson.dumps(span("t2", "s3", status=ERROR, start_time=None)),
    orjson.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "b"}}]},
                    "scopeSpans": [
                        {
                            "spans": [
                                {
                                    "traceId": "5b8efff798038103d269b633813fc60c",
                                    "spanId": "eee19b7ec3c1b174",
                                    "name": "chat",
                                    "kind": 3,
                                    "startTimeUnixNano": "1776924720000000000",
                                    "status": {"code": 2, "message": "rate limited"},
                                    "attributes": [
                                        {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                                        {
                                            "key": "gen_ai.output.messages",
                                            "value": {"stringValue": '[{"role":"assistant","parts":[]}]'},
                                        },
                                    ],
                                }
                            ]
                        }
                    ],
                }
            ]
        }
    ),
    orjson.dumps(
        {
            "id": "o1",
            "traceId": "lf-1",
            "type": "GENERATION",
            "startTime": "2026-05-15T10:00:00Z",
            "level": "ERROR",
            "statusMessage": "boom",
            "output": [{"role": "assistant", "parts": [{"type": "text", "content": "hi"}]}],
        }
    ),
]


def mutate(line: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    data = bytearray(line)
    for op, position, value in edits:
        if not data:
            break
        i = position % len(data)
        if op == 0:
            data[i] = value
        elif op == 1:
            del data[i]
        elif op == 2:
            data.insert(i, value)
        elif op == 3:
            del data[i:]
        else:  # rename a key by flipping a letter inside it, the one-bit change that drops a start time
            key = data.find(b'_time"', i) if data.find(b'_time"', i) >= 0 else data.find(b"Time", i)
            if key >= 0:
                data[key + 1] ^= 1
    return bytes(data)


mutated_lines = st.one_of(
    st.sampled_from(SEEDS),
    st.builds(
        mutate,
        st.sampled_from(SEEDS),
        st.lists(st.tuples(st.integers(0, 4), st.integers(0, 100_000), st.integers(0, 255)), max_size=3),
    ),
)


def run(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args))
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    assert not crashed and result.exit_code in (0, 1), (args, result.output, result.exception)
    return result


def every_command_reads(store: Path, folder: Path) -> None:
    run("stats", "--store", str(store), "--json")
    listing = run("traces", "--store", str(store), "--json", "--limit", "5")
    if listing.exit_code == 0:
        for trace in orjson.loads(listing.stdout)["traces"]:
            run("show", trace["trace_id"], "--store", str(store), "--json")
    report_dir = folder / "report"
    analysis = run(
        "analyze",
        "--store",
        str(store),
        "-o",
        str(report_dir),
        "--json",
        "--min-traces",
        "1",
        "--min-share",
        "0",
    )
    if analysis.exit_code == 0:
        run("verify", str(report_dir / "report.json"), "--store", str(store), "--json")


@given(st.lists(mutated_lines, min_size=1, max_size=6))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_command_reads_a_store_built_from_mutated_files(lines: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mutated.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        store = Path(folder) / "s.duckdb"
        run("ingest", str(path), "--store", str(store), "--json")
        every_command_reads(store, Path(folder))


@pytest.mark.parametrize("start", [None, 0, -5, "", "not a time", "2026-13-45T99:99:99Z", {"x": 1}])
def test_an_error_span_without_a_start_time_is_readable_everywhere(tmp_path: Path, start: Any) -> None:
    lines = [
        span("t1", "s1", status=ERROR, start_time=start),
        span("t1", "s2", parent_span_id="s1", status=ERROR),
    ]
    if start is None:
        del lines[0]["start_time"]
    path = tmp_path / "poison.jsonl"
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    store = tmp_path / "s.duckdb"
    run("ingest", str(path), "--store", str(store), "--json")
    with TraceStore.open(store, read_only=True) as s:
        groups = s.overview().error_groups
    assert groups and all(g.example_span.startswith("t1:") for g in groups)
    every_command_reads(store, tmp_path)


def test_deeply_nested_arrays_are_a_reject_not_a_crash(tmp_path: Path) -> None:
    deep = b"[" * 1000 + b"]" * 1000  # orjson reads it; the decoders refuse it without recursing
    deep_object = b'{"trace_id":"t","span_id":"d","attributes":{"x":' + b"[" * 900 + b"]" * 900 + b"}}"
    path = tmp_path / "deep.jsonl"
    path.write_bytes(orjson.dumps(span("t1", "s1")) + b"\n" + deep + b"\n" + deep_object + b"\n")
    later = tmp_path / "later.jsonl"
    later.write_bytes(orjson.dumps(span("t2", "s9")) + b"\n")
    store = tmp_path / "s.duckdb"
    with TraceStore.open(store) as s:
        report = s.ingest([path, later])  # the file after it is read too
    assert report.spans >= 2 and report.rejected >= 1
    with TraceStore.open(store, read_only=True) as s:
        reasons = [r["reason"] for r in s.rejects()]
    assert any("nested deeper than" in reason for reason in reasons), reasons
    every_command_reads(store, tmp_path)


@pytest.mark.parametrize(
    "first",
    [
        b'{"trace_id": "t0", "span_id": "s0", "name": "cut sh',  # a truncated first line
        b'[{"trace_id": "t0", "span_id": "s0", "name": "in an array"}]',  # a first line that is an array
        b"{",
    ],
)
def test_a_bad_or_array_first_line_does_not_turn_the_file_into_one_document(
    tmp_path: Path, first: bytes
) -> None:
    good = [orjson.dumps(span("t1", f"s{i}")) for i in range(5)]
    path = tmp_path / "f.jsonl"
    path.write_bytes(first + b"\n" + b"\n".join(good) + b"\n")
    store = tmp_path / "s.duckdb"
    with TraceStore.open(store) as s:
        report = s.ingest([path])
    result = report.inputs[0]
    assert result.road in ("lines", "decoded") and result.status == "ingested"
    with TraceStore.open(store, read_only=True) as s:
        lines = sorted(
            r[0] for r in s.con.execute("SELECT line_no FROM spans WHERE trace_id = 't1'").fetchall()
        )
        rejected = [r["line_no"] for r in s.rejects()]
    assert lines == [2, 3, 4, 5, 6]
    assert rejected == ([] if first.startswith(b"[") else [1])


def test_a_line_still_being_written_is_read_once_it_is_whole(tmp_path: Path) -> None:
    whole = [orjson.dumps(span("t1", f"s{i}")) for i in range(3)]
    growing = orjson.dumps(span("t1", "s3"))
    path = tmp_path / "live.jsonl"
    path.write_bytes(b"\n".join(whole) + b"\n" + growing[:40])  # the writer is mid-line
    store = tmp_path / "s.duckdb"
    with TraceStore.open(store) as s:
        first = s.ingest([path]).inputs[0]
    assert first.spans == 3 and first.rejected == 0 and "not terminated yet" in (first.message or "")
    with path.open("ab") as f:
        f.write(growing[40:] + b"\n" + orjson.dumps(span("t1", "s4")) + b"\n")
    with TraceStore.open(store) as s:
        second = s.ingest([path]).inputs[0]
    assert second.status == "resumed" and second.spans == 2 and second.rejected == 0
    # A whole last line without its line break is read now, and not again when the break comes.
    with path.open("ab") as f:
        f.write(orjson.dumps(span("t1", "s5")))
    with TraceStore.open(store) as s:
        assert s.ingest([path]).inputs[0].spans == 1
    with path.open("ab") as f:
        f.write(b"\n" + orjson.dumps(span("t1", "s6")) + b"\n")
    with TraceStore.open(store) as s:
        report = s.ingest([path])
        assert report.inputs[0].spans == 1 and report.duplicates == 0
        rows = s.con.execute("SELECT span_id, line_no FROM spans ORDER BY line_no").fetchall()
    assert rows == [(f"s{i}", i + 1) for i in range(7)]


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda text: codecs.BOM_UTF8 + text.encode(), id="utf-8 bom"),
        pytest.param(lambda text: text.encode("utf-16"), id="utf-16 bom"),
        pytest.param(lambda text: text.encode("utf-16-le"), id="utf-16-le"),
        pytest.param(lambda text: text.encode("utf-16-be"), id="utf-16-be"),
        pytest.param(lambda text: text.encode("utf-32"), id="utf-32 bom"),
        pytest.param(lambda text: text.replace("\n", "\r").encode(), id="cr line breaks"),
        pytest.param(lambda text: gzip.compress(text.encode()) + b"\0" * 1024, id="gzip and padding"),
    ],
)
def test_encodings_and_line_breaks(tmp_path: Path, encode: Any) -> None:
    text = "".join(orjson.dumps(span("t1", f"s{i}", name="café ☕")).decode() + "\n" for i in range(4))
    path = tmp_path / "encoded.jsonl"
    path.write_bytes(encode(text))
    store = tmp_path / "s.duckdb"
    with TraceStore.open(store) as s:
        report = s.ingest([path])
        names = {r[0] for r in s.con.execute("SELECT name FROM spans").fetchall()}
    assert (report.spans, report.rejected, report.inputs[0].message) == (4, 0, None)
    assert names == {"café ☕"}


def test_duplicate_keys_are_read_one_way_on_every_road(tmp_path: Path) -> None:
    """The first occurrence of a key wins, the way DuckDB reads a flat span, whether the line is
    loaded in one statement, in batches, or by the Python decoders."""
    line = b'{"trace_id":"t1","span_id":"first","span_id":"second","name":"a","name":"b","start_time":1776924720}'
    # Read the first way, this one has no trace id (read the last way, it would have one).
    bad = b'{"trace_id":"","trace_id":"t2","span_id":"x","start_time":1776924720}'
    stores = []
    for road, content, bulk in (
        ("bulk", line + b"\n" + bad + b"\n", True),
        ("lines", line + b"\n" + bad + b"\n", False),
        ("python", b'{"resourceSpans":[]}\n' + line + b"\n" + bad + b"\n", False),
    ):
        path = tmp_path / f"{road}.jsonl"
        path.write_bytes(content)
        store = tmp_path / f"{road}.duckdb"
        with TraceStore.open(store) as s:
            s.ingest([path], bulk=bulk)
            stores.append(s.con.execute("SELECT trace_id, span_id, name FROM spans").fetchall())
    assert stores == [[("t1", "first", "a")]] * 3
