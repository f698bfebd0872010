"""Property-based tests: arbitrary and mutated input never breaks ingest, and nothing is lost."""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from halo_rlm.formats.conventions import normalize_messages
from halo_rlm.formats.decode import DecodeError, decode_record
from halo_rlm.store import TraceStore
from halo_rlm.store.duckdb_udfs import messages_udf

VALID_LINES = [
    orjson.dumps(
        {
            "trace_id": "t1",
            "span_id": "s1",
            "parent_span_id": "",
            "name": "agent",
            "kind": "SPAN_KIND_INTERNAL",
            "start_time": "2026-04-24T18:12:13.315189000Z",
            "end_time": "2026-04-24T18:12:14.315189000Z",
            "status": {"code": "STATUS_CODE_OK", "message": ""},
            "resource": {"attributes": {"service.name": "a"}},
            "scope": {"name": "s", "version": "1"},
            "attributes": {
                "openinference.span.kind": "LLM",
                "llm.model_name": "m",
                "llm.token_count.prompt": 5,
                "llm.input_messages.0.message.role": "user",
                "llm.input_messages.0.message.content": "hi",
            },
        }
    ),
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
                                    "name": "x",
                                    "kind": 3,
                                    "startTimeUnixNano": "1776924720000000000",
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
            "name": "p",
            "context": {"trace_id": "abc", "span_id": "def"},
            "span_kind": "TOOL",
            "start_time": "2026-04-24T18:12:13Z",
            "attributes": {"tool": {"name": "search"}},
        }
    ),
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "trace_id",
                    "span_id",
                    "traceId",
                    "spanId",
                    "context",
                    "resourceSpans",
                    "scopeSpans",
                    "spans",
                    "attributes",
                    "status",
                    "kind",
                    "name",
                    "start_time",
                    "data",
                    "events",
                    "x",
                ]
            )
            | st.text(max_size=8),
            children,
            max_size=6,
        )
    ),
    max_leaves=25,
)


@given(json_values)
@settings(max_examples=400, deadline=None)
def test_decoder_never_fails_with_anything_but_a_clear_decode_error(value: Any) -> None:
    try:
        decoded = decode_record(value)
    except DecodeError as exc:
        assert str(exc)
        return
    assert decoded.spans or decoded.errors
    for span in decoded.spans:
        assert span["trace_id"] and span["span_id"] and isinstance(span["attributes"], dict)
        orjson.dumps(span)  # always serialisable into the store's raw column


def parses(data: bytes) -> bool:
    try:
        orjson.loads(data)
        return True
    except orjson.JSONDecodeError:
        return False


def mutate(line: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    data = bytearray(line)
    for op, position, byte in edits:
        if not data:
            break
        i = position % len(data)
        if op == 0:
            data[i] = byte
        elif op == 1:
            del data[i]
        elif op == 2:
            data.insert(i, byte)
        else:
            del data[i:]
    return bytes(data)


lines = st.one_of(
    st.binary(max_size=300),
    st.builds(
        mutate,
        st.sampled_from(VALID_LINES),
        st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    ),
    st.sampled_from(VALID_LINES),
)


@given(st.lists(lines, min_size=1, max_size=12), st.sampled_from([b"\n", b"\r\n"]))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_line_is_ingested_or_rejected(records: list[bytes], newline: bytes) -> None:
    # A record containing a line break is several lines; split first so the expectation is per line.
    data = newline.join(records)
    expected = {
        number
        for number, line in enumerate(data.split(b"\n"), start=1)
        if line.rstrip(b"\r").decode("utf-8", "replace").strip()
    }
    # An unterminated last line that is not yet a whole value may still be being written: left unread.
    pending = data.split(b"\n")[-1] if b"\n" in data else b""
    if pending.strip() and not parses(pending):
        expected.discard(data.count(b"\n") + 1)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.jsonl"
        path.write_bytes(data)
        with TraceStore.open(Path(folder) / "s.duckdb") as store:
            report = store.ingest([str(path)])
            result = report.inputs[0]
            if result.status == "failed":
                assert result.message  # one clear message for a file that holds no spans at all
                assert store.con.execute("SELECT count(*) FROM spans").fetchall() == [(0,)]
                return
            bulk = store.con.execute("SELECT count(*) FROM spans WHERE line_no IS NULL").fetchall()[0][0]
            if bulk:  # loaded in one statement, which only succeeds when every line is a span
                assert store.con.execute(
                    "SELECT count(*) FROM spans WHERE line_no IS NOT NULL"
                ).fetchall() == [(0,)]
                assert store.con.execute("SELECT count(*) FROM rejects").fetchall() == [(0,)]
                assert bulk + result.duplicates == len(expected)
                return
            seen = {
                n
                for (n,) in itertools.chain(
                    store.con.execute("SELECT DISTINCT line_no FROM spans").fetchall(),
                    store.con.execute("SELECT DISTINCT line_no FROM rejects").fetchall(),
                )
            }
            if data.lstrip().startswith((b"[", b"{")) and seen == {1} and len(expected) > 1:
                return  # read as one JSON document spread over several lines
            # Lines missing from both tables held a span already stored (same ids): merged, and counted.
            assert seen <= expected and len(expected - seen) <= result.duplicates
            spans = store.con.execute("SELECT count(*) FROM spans").fetchall()[0][0]
            traces = store.con.execute("SELECT coalesce(sum(span_count), 0) FROM traces").fetchall()[0][0]
            assert spans == traces  # rollups agree with the spans


index_text = st.sampled_from(["0", "1", "12", "\u00b2", "\u0663", "-1", "", "x", "0.5"]) | st.text(max_size=3)
message_keys = st.builds(
    lambda prefix, index, rest: f"{prefix}.{index}.{rest}",
    st.sampled_from(
        [
            "llm.input_messages",
            "llm.output_messages",
            "llm.tools",
            "gen_ai.prompt",
            "gen_ai.completion",
            "llm.request.functions",
        ]
    ),
    index_text,
    st.sampled_from(
        [
            "message.role",
            "message.content",
            "message.tool_calls.0.tool_call.function.name",
            "message.tool_calls.\u00b2.tool_call.function.arguments",
            "message.contents.0.message_content.text",
            "message.contents.\u00b2.message_content.text",
            "tool.json_schema",
            "role",
            "content",
            "name",
        ]
    ),
)
attribute_dicts = st.dictionaries(
    message_keys
    | st.sampled_from(
        [
            "llm.output_messages",
            "llm.tools",
            "gen_ai.output.messages",
            "agent.tools",
            "agent.handoffs",
            "ai.response.toolCalls",
            "gen_ai.response.finish_reasons",
            "gen_ai.tool.definitions",
            "llm.input_messages",
        ]
    ),
    json_values
    | st.sampled_from(
        [
            '[{"role": "assistant", "content": [{"type": "tool_use", "name": 3}]}]',
            '{"messages": "x"}',
            '[{"function": {"name": ["a"]}}]',
            "[1, [2, {}]]",
        ]
    ),
    max_size=8,
)


@given(attribute_dicts)
@settings(max_examples=400, deadline=None)
def test_the_message_normaliser_never_raises(attributes: dict[str, Any]) -> None:
    """It runs inside DuckDB's INSERT: one exception would abort a whole file's load."""
    line = json.dumps({"trace_id": "t", "span_id": "s", "attributes": attributes})
    assume("Infinity" not in line)  # not JSON
    orjson.dumps(normalize_messages(orjson.loads(line)["attributes"]))  # as the store reads it
    assert len(messages_udf(pa.array([line]))) == 1


hostile_scalars = st.sampled_from(
    [
        "\u00b2",
        "\u0663",
        "inf",
        "-inf",
        "NaN",
        "1e400",
        "99999999999999999999999",
        "-1",
        "",
        " 7 ",
        "0x1f",
        "true",
        str(2**64),
        2**64,
        -(2**63) - 1,
        1e308,
        -1e308,
        -0.0,
        True,
        None,
        [],
        {},
        "SPAN_KIND_\u00b2",
        "STATUS_CODE_\u00b2",
    ],
) | st.text(max_size=6)
otlp_fields = [
    "traceId",
    "spanId",
    "parentSpanId",
    "name",
    "kind",
    "startTimeUnixNano",
    "endTimeUnixNano",
    "status",
    "attributes",
    "events",
    "links",
    "droppedAttributesCount",
    "duration",
]


@given(
    st.dictionaries(
        st.sampled_from(otlp_fields),
        hostile_scalars
        | st.dictionaries(
            st.sampled_from(["code", "message", "key", "value", "intValue", "doubleValue", "stringValue"]),
            hostile_scalars,
            max_size=3,
        ),
        max_size=8,
    ),
    hostile_scalars,
)
@settings(max_examples=400, deadline=None)
def test_otlp_spans_with_hostile_values_decode_or_fail_clearly(span: dict[str, Any], value: Any) -> None:
    span.setdefault("traceId", "5b8efff798038103d269b633813fc60c")
    span.setdefault("spanId", "eee19b7ec3c1b174")
    span["attributes"] = [
        {"key": "a", "value": {"intValue": value}},
        {"key": "b", "value": {"doubleValue": value}},
    ]
    line = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]})
    assume("Infinity" not in line and "NaN" not in line)  # not JSON
    try:
        decoded = decode_record(
            orjson.loads(line)
        )  # as the store reads a line (large integers become floats)
    except DecodeError as exc:
        assert str(exc)
        return
    for flat in decoded.spans:
        orjson.dumps(flat)  # storable


id_text = st.text(alphabet="0123456789abcdefABCDEFxX- \t\u00a0zé_/", max_size=14) | st.sampled_from(
    ["0x", "0X1", "00000000-0000-0000-0000-000000000000", "0B9A0C3D-5664-4F42-9FAB-31999DA9E2F1"]
)
duration_text = st.from_regex(
    r"\s*(P(\d{1,3}([.,]\d{1,12})?W)?(\d{1,3}D)?(T(\d{1,2}H)?(\d{1,3}M)?(\d{1,4}([.,]\d{1,12})?S)?)?"
    r"|\d{1,12}|\d{0,6}\.\d{1,6}|-\d{1,3}|[a-z]{0,3})\s*",
    fullmatch=True,
)


@given(st.lists(id_text, min_size=1, max_size=20), st.lists(duration_text, min_size=1, max_size=20))
@settings(max_examples=60, deadline=None)
def test_the_sql_and_python_readings_of_ids_and_durations_agree(ids: list[str], durations: list[str]) -> None:
    """A flat span's ids and duration are read by DuckDB on the one-statement roads and by the Python
    decoders elsewhere: both must read every value the same way."""
    import duckdb

    from halo_rlm.formats.spans import duration_ns, normalize_id
    from halo_rlm.store import duckdb_sql

    con = duckdb.connect()
    duckdb_sql.register_macros(con)
    sql_ids = [
        row[0] for row in con.execute("SELECT halo_id(halo_trimmed(unnest(?::VARCHAR[])))", [ids]).fetchall()
    ]
    assert sql_ids == [normalize_id(i) for i in ids]
    stripped = [d.strip() for d in durations]
    sql_durations = [
        row[0] for row in con.execute("SELECT halo_duration(unnest(?::VARCHAR[]))", [stripped]).fetchall()
    ]
    assert sql_durations == [duration_ns(d) for d in stripped]
