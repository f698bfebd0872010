"""`halo collect`: the OTLP/HTTP receiver, driven by the real OpenTelemetry SDK exporter and by raw HTTP."""

from __future__ import annotations

import gzip
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import pytest
from google.protobuf.json_format import MessageToDict, MessageToJson
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult
from sdk_spans import agent_spans, assert_same_as_sent, stored

from halo_rlm.collect import CollectError, Collector, serve
from halo_rlm.formats import decode, otlp
from halo_rlm.scrub import scrub_span
from halo_rlm.store import TraceStore

ROOT = Path(__file__).resolve().parents[1]
PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    with serve(store=tmp_path / "c.duckdb", port=0) as running:
        yield running


def wait_until_written(collector: Collector, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while collector.stats.pending_spans and time.monotonic() < deadline:
        time.sleep(0.05)
    assert collector.stats.pending_spans == 0


def otlp_json(*spans: dict) -> bytes:
    return orjson.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {
                        "attributes": [{"key": "service.name", "value": {"stringValue": "json-agent"}}]
                    },
                    "scopeSpans": [{"scope": {"name": "raw"}, "spans": list(spans)}],
                }
            ]
        }
    )


def json_span(trace: str, span: str, parent: str = "", **extra) -> dict:
    return {
        "traceId": trace,
        "spanId": span,
        "parentSpanId": parent,
        "name": extra.pop("name", "step"),
        "kind": 1,
        "startTimeUnixNano": "1776924720000000000",
        "endTimeUnixNano": "1776924721250000000",
        **extra,
    }


# --- the real SDK exporter --------------------------------------------------------------------


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip, Compression.Deflate])
def test_sdk_exporter_protobuf_lands_in_the_store_intact(
    collector: Collector, compression: Compression
) -> None:
    spans = agent_spans()
    exporter = OTLPSpanExporter(endpoint=collector.traces_url, compression=compression)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    stats = collector.stop()
    assert (stats.spans, stats.traces, stats.rejected_spans, stats.requests) == (9, 3, 0, 1)
    rows = stored(collector.store_path)
    assert_same_as_sent(spans, rows)
    assert sorted(r["kind"] for r in rows.values()) == ["AGENT"] * 3 + ["LLM"] * 3 + ["TOOL"] * 3
    assert [r["status"] for r in rows.values() if r["status"] == "ERROR"] == ["ERROR"]


def test_sdk_tracer_provider_with_batch_processor_through_the_collector(collector: Collector) -> None:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=collector.traces_url)))
    tracer = provider.get_tracer("batch")
    for _ in range(50):
        with tracer.start_as_current_span("root"), tracer.start_as_current_span("child"):
            pass
    provider.shutdown()
    assert collector.stop().spans == 100
    rows = stored(collector.store_path)
    assert len(rows) == 100 and sum(r["parent_id"] is None for r in rows.values()) == 50


# --- JSON and compressed bodies ---------------------------------------------------------------


def test_json_bodies_plain_gzip_and_deflate_answer_in_json(collector: Collector) -> None:
    bodies = {
        "plain": (otlp_json(json_span("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174")), {}),
        "gzip": (
            gzip.compress(
                otlp_json(
                    json_span("5b8efff798038103d269b633813fc60c", "aaa19b7ec3c1b174", "eee19b7ec3c1b174")
                )
            ),
            {"Content-Encoding": "gzip"},
        ),
        "deflate": (
            zlib.compress(otlp_json(json_span("6b8efff798038103d269b633813fc60c", "bbb19b7ec3c1b174"))),
            {"Content-Encoding": "deflate"},
        ),
        # several gzip members in one body are one stream (RFC 1952)
        "members": (
            gzip.compress(b'{"resourceSpans":')
            + gzip.compress(
                otlp_json(json_span("7b8efff798038103d269b633813fc60c", "ccc19b7ec3c1b174"))[
                    len(b'{"resourceSpans":') :
                ]
            ),
            {"Content-Encoding": "gzip"},
        ),
    }
    for name, (body, headers) in bodies.items():
        response = httpx.post(collector.traces_url, content=body, headers={**JSON, **headers})
        assert (response.status_code, response.json()) == (200, {}), name
        assert response.headers["content-type"] == "application/json"
    collector.stop()
    rows = stored(collector.store_path)
    assert set(rows) == {"eee19b7ec3c1b174", "aaa19b7ec3c1b174", "bbb19b7ec3c1b174", "ccc19b7ec3c1b174"}
    assert rows["aaa19b7ec3c1b174"]["parent_id"] == "eee19b7ec3c1b174"
    assert rows["eee19b7ec3c1b174"]["raw"]["resource"]["attributes"] == {"service.name": "json-agent"}


def test_json_with_base64_ids_from_protobuf_tools(collector: Collector) -> None:
    spans = agent_spans(1)
    body = MessageToJson(encode_spans(spans)).encode()  # protobuf's JSON mapping writes ids as base64
    assert httpx.post(collector.traces_url, content=body, headers=JSON).status_code == 200
    collector.stop()
    assert_same_as_sent(spans, stored(collector.store_path))


def varied_request(seed: int) -> ExportTraceServiceRequest:
    """A protobuf request using what OTLP spans can carry: every kind and status (and unknown ones),
    each attribute value type (nested lists and key-value lists, bytes, NaN, unset), events and links,
    dropped counts and flags, a span without a time, spans missing an id, and credentials to scrub."""
    rng = random.Random(seed)

    def value(v: object) -> AnyValue:
        if isinstance(v, bool):
            return AnyValue(bool_value=v)
        if isinstance(v, int):
            return AnyValue(int_value=v)
        if isinstance(v, float):
            return AnyValue(double_value=v)
        if isinstance(v, bytes):
            return AnyValue(bytes_value=v)
        if isinstance(v, list):
            return AnyValue(array_value=ArrayValue(values=[value(x) for x in v]))
        if isinstance(v, dict):
            return AnyValue(kvlist_value=KeyValueList(values=attrs(v)))
        return AnyValue() if v is None else AnyValue(string_value=str(v))

    def attrs(values: dict) -> list[KeyValue]:
        return [KeyValue(key=k, value=value(v)) for k, v in values.items()]

    request = ExportTraceServiceRequest()
    for r in range(2):
        resource = request.resource_spans.add()
        resource.resource.attributes.extend(attrs({"service.name": f"svc-{r}", "host.cores": 8}))
        for sc in range(2):
            scope = resource.scope_spans.add()
            scope.scope.name, scope.scope.version = f"scope-{sc}", "1.0" if sc else ""
            trace_id = rng.randbytes(16)
            root = rng.randbytes(8)
            for i in range(12):
                span = scope.spans.add()
                span.trace_id = trace_id if i != 10 else b""
                span.span_id = (root if i == 0 else rng.randbytes(8)) if i != 11 else bytes(8)
                span.parent_span_id = b"" if i == 0 else root
                span.trace_state = "vendor=1" if i == 3 else ""
                span.name = ["invoke_agent planner", "chat gpt-4o", "execute_tool search", "step"][i % 4]
                # (not 0, UNSPECIFIED: protobuf's JSON mapping leaves it out, and then it reads as INTERNAL)
                span.kind = [1, 2, 3, 4, 5, 9][i % 6]
                span.start_time_unix_nano = 0 if i == 5 else 1_776_924_720_000_000_000 + i * 1_000_123
                span.end_time_unix_nano = 0 if i in (5, 6) else span.start_time_unix_nano + 999_999_999
                span.status.code = [0, 1, 2, 7][i % 4]
                span.status.message = "rate limited (429)" if span.status.code == 2 else ""
                span.attributes.extend(
                    attrs(
                        {
                            "openinference.span.kind": ["AGENT", "LLM", "TOOL", "CHAIN"][i % 4],
                            "llm.model_name": "gpt-4o",
                            "llm.token_count.prompt": 1200 + i,
                            "llm.token_count.completion": -1 if i == 7 else 80,
                            "llm.cost": 0.0125 * i,
                            "odd.nan": float("nan") if i == 2 else 1.5,
                            "tool.name": "search",
                            "input.value": '{"order_id": "ORD-1001"}' if i != 4 else "key " + OPENAI_KEY,
                            "output.value": "shipped \u00e9\u2028 \U0001f680",
                            "tags": ["a", "b"],
                            "matrix": [[1, 2], [3]],
                            "blob": b"\x00\xffbytes",
                            "unset": None,
                            "flag": i % 2 == 0,
                            "llm.input_messages": [
                                {"message": {"role": "user", "content": "where is my order?"}},
                                {"message": {"role": "assistant", "content": "checking"}},
                            ],
                            "nested": {"a": {"b": 1, "c": [1, 2]}, "empty": {}},
                            "session.id": f"session-{seed}",
                        }
                    )
                )
                if i == 4:
                    span.attributes.extend(attrs({"openai.api_key": "not-for-the-store"}))
                if i % 3 == 0:
                    event = span.events.add(name="exception", time_unix_nano=span.start_time_unix_nano + 5)
                    event.attributes.extend(
                        attrs({"exception.type": "TimeoutError", "exception.message": "timed out after 30s"})
                    )
                    span.events.add(name="no time")
                if i % 5 == 1:
                    link = span.links.add(trace_id=rng.randbytes(16), span_id=rng.randbytes(8))
                    link.attributes.extend(attrs({"why": "retry of", "n": 2}))
                span.dropped_attributes_count = 3 if i == 8 else 0
                span.dropped_events_count = 1 if i == 9 else 0
                span.flags = 257 if i % 2 else 0
    return request


def lines_of(request: dict) -> tuple[list[bytes], int]:
    """The reference: a JSON request's spans through the generic OTLP/JSON decoder, scrubbed, as
    HALO's lines; and how many spans it refused."""
    decoded = decode.decode_record(request)
    return [otlp.span_line(scrub_span(span)) for span in decoded.spans], len(decoded.errors)


def test_protobuf_requests_become_the_lines_their_json_mapping_decodes_to() -> None:
    for seed in range(3):
        request = varied_request(seed)
        expected, refused = lines_of(MessageToDict(request))
        assert refused == 8 and len(expected) == 40
        body, as_json = request.SerializeToString(), MessageToJson(request).encode()
        for media_type, data in ((otlp.PROTOBUF, body), (otlp.JSON, as_json)):
            got = otlp.request_lines(data, media_type)
            assert len(got.errors) == refused
            assert [orjson.dumps(scrub_span(orjson.loads(line))) for line in got.lines] == expected
            assert got.trace_ids == [orjson.loads(line)["trace_id"] for line in expected]
        flat = otlp.decode_request(body, otlp.PROTOBUF)  # the flat spans `tracing` writes
        assert [otlp.span_line(span) for span in flat.spans] == otlp.request_lines(body, otlp.PROTOBUF).lines


def test_the_collector_stores_the_rows_a_direct_ingest_of_the_same_spans_stores(tmp_path: Path) -> None:
    """Protobuf and JSON requests through HTTP, the credential check, the log and the collector's
    store writes give every span and trace the columns the store gives the same spans decoded by the
    generic decoder, scrubbed and ingested as records (which line of which write a span came in
    aside)."""
    requests = [varied_request(seed) for seed in range(4)]
    with serve(store=tmp_path / "collected.duckdb", spool=tmp_path / "spool", port=0) as collector:
        for n, request in enumerate(requests):
            headers = PROTOBUF if n % 2 else JSON
            body = request.SerializeToString() if n % 2 else MessageToJson(request).encode()
            reply = httpx.post(collector.traces_url, content=body, headers=headers)
            assert reply.status_code == 200
            if n == 1:
                wait_until_written(collector)  # two writes to the store
    assert collector.stats.spans == 4 * 40 and collector.stats.rejected_spans == 4 * 8
    with TraceStore.open(tmp_path / "direct.duckdb") as direct:
        lines = [line for request in requests for line in lines_of(MessageToDict(request))[0]]
        direct.ingest_records(map(orjson.Fragment, lines), source="direct")

    def rows(path: Path) -> tuple[list, list]:
        with TraceStore.open(path, read_only=True) as store:
            spans = store.con.execute(
                "SELECT * EXCLUDE (input_id, line_no) FROM spans ORDER BY trace_id, span_id"
            ).fetchall()
            traces = store.con.execute("SELECT * FROM traces ORDER BY trace_id").fetchall()
        return spans, traces

    collected, direct_rows = rows(tmp_path / "collected.duckdb"), rows(tmp_path / "direct.duckdb")
    assert len(collected[0]) == 4 * 40 and len(collected[1]) == 16
    assert collected == direct_rows
    assert b"not-for-the-store" not in orjson.dumps(collected, default=str)
    assert OPENAI_KEY.encode() not in orjson.dumps(collected, default=str)


def test_empty_requests_are_fine(collector: Collector) -> None:
    for body, headers in ((b"{}", JSON), (b'{"resourceSpans": []}', JSON), (b"", PROTOBUF)):
        response = httpx.post(collector.traces_url, content=body, headers=headers)
        assert response.status_code == 200
    assert collector.stop().spans == 0


# --- partial success --------------------------------------------------------------------------


def test_bad_spans_are_rejected_as_partial_success_and_the_good_ones_kept(collector: Collector) -> None:
    body = otlp_json(
        json_span("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"),
        json_span("", "aaa19b7ec3c1b174"),
        "not a span",
        json_span(
            "5b8efff798038103d269b633813fc60c",
            "bbb19b7ec3c1b174",
            attributes=[{"key": "big", "value": {"intValue": str(2**70)}}],
        ),
    )
    response = httpx.post(collector.traces_url, content=body, headers=JSON)
    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "2"  # an integer past int64 does not cost its span: it is kept as text
    assert "missing trace id" in partial["errorMessage"] and "not an object" in partial["errorMessage"]

    request = encode_spans(agent_spans(1))
    request.resource_spans[0].scope_spans[0].spans[0].span_id = b""
    response = httpx.post(collector.traces_url, content=request.SerializeToString(), headers=PROTOBUF)
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-protobuf"
    answer = ExportTraceServiceResponse.FromString(response.content)
    assert (
        answer.partial_success.rejected_spans == 1
        and "missing span id" in answer.partial_success.error_message
    )

    stats = collector.stop()
    assert (stats.spans, stats.rejected_spans) == (4, 3)
    assert len(stored(collector.store_path)) == 4


def test_full_success_answers_an_empty_protobuf_response(collector: Collector) -> None:
    response = httpx.post(
        collector.traces_url, content=encode_spans(agent_spans(1)).SerializeToString(), headers=PROTOBUF
    )
    assert response.status_code == 200
    assert not ExportTraceServiceResponse.FromString(response.content).HasField("partial_success")


# --- refusals ---------------------------------------------------------------------------------


def test_errors_get_the_right_status_and_the_collector_keeps_serving(tmp_path: Path) -> None:
    good = encode_spans(agent_spans(1)).SerializeToString()
    bomb = gzip.compress(b"\0" * (2 << 20))  # 2 MiB of zeros in about 2 KiB
    with (
        serve(store=tmp_path / "c.duckdb", port=0, max_body_bytes=1 << 20) as collector,
        httpx.Client(base_url=collector.url) as client,
    ):
        cases = [
            (client.post("/v1/logs", content=good, headers=PROTOBUF), 404, "no endpoint at /v1/logs"),
            (client.get("/v1/traces"), 405, "takes POST only"),
            (client.request("OPTIONS", "/v1/traces"), 405, "takes POST only"),
            (
                client.post("/v1/traces", content=good, headers={"Content-Type": "text/plain"}),
                415,
                "Content-Type",
            ),
            (
                client.post("/v1/traces", content=good, headers={**PROTOBUF, "Content-Encoding": "br"}),
                415,
                "br",
            ),
            (
                client.post("/v1/traces", content=b"\xff\x00garbage", headers=PROTOBUF),
                400,
                "not an OTLP protobuf",
            ),
            (client.post("/v1/traces", content=b"{not json", headers=JSON), 400, "invalid JSON"),
            (client.post("/v1/traces", content=b'{"hello": 1}', headers=JSON), 400, "not an OTLP"),
            (client.post("/v1/traces", content=b"[" * 5000 + b"]" * 5000, headers=JSON), 400, ""),
            (
                client.post(
                    "/v1/traces", content=b"\x1f\x8b garbage", headers={**JSON, "Content-Encoding": "gzip"}
                ),
                400,
                "not valid gzip",
            ),
            (client.post("/v1/traces", content=bytes(2 << 20), headers=PROTOBUF), 413, "limit"),
            (
                client.post("/v1/traces", content=bomb, headers={**PROTOBUF, "Content-Encoding": "gzip"}),
                413,
                "decompresses to over",
            ),
            (
                client.post("/v1/traces", content=good, headers={**PROTOBUF, "Host": "evil.example:4318"}),
                403,
                "localhost",
            ),
        ]
        for response, status, message in cases:
            assert response.status_code == status, (status, response.text)
            assert message in response.text
        assert client.post("/v1/traces", content=good, headers=PROTOBUF).status_code == 200
    stats = collector.stats
    assert (stats.requests, stats.failed_requests, stats.spans) == (1, len(cases), 3)


def test_errors_on_protobuf_requests_carry_a_protobuf_status(collector: Collector) -> None:
    from google.rpc.status_pb2 import Status as RpcStatus

    response = httpx.post(collector.traces_url, content=b"\xff\x00garbage", headers=PROTOBUF)
    assert response.status_code == 400 and response.headers["content-type"] == "application/x-protobuf"
    assert "not an OTLP protobuf" in RpcStatus.FromString(response.content).message


def test_token_is_required_when_set(tmp_path: Path) -> None:
    good = encode_spans(agent_spans(1)).SerializeToString()
    with serve(store=tmp_path / "c.duckdb", port=0, token="s3cret") as collector:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "s3cret"},
            {"Authorization": "Basic s3cret"},
            {"Authorization": "Bearer s3cret2"},
        ):
            response = httpx.post(collector.traces_url, content=good, headers={**PROTOBUF, **headers})
            assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
        exporter = OTLPSpanExporter(endpoint=collector.traces_url, headers={"Authorization": "Bearer s3cret"})
        assert exporter.export(agent_spans(1)) is SpanExportResult.SUCCESS
        lowercase = httpx.post(
            collector.traces_url, content=b"{}", headers={**JSON, "Authorization": "bearer s3cret"}
        )
        assert lowercase.status_code == 200
    assert collector.stats.spans == 3


def test_raw_garbage_slow_clients_and_missing_length_do_not_stop_the_server(collector: Collector) -> None:
    host, port = collector.url.removeprefix("http://").split(":")
    good = encode_spans(agent_spans(1)).SerializeToString()
    with socket.create_connection((host, int(port))) as garbage:
        garbage.sendall(
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(200) + b"\r\n\r\n"
        )  # a TLS hello
        assert garbage.recv(1000).startswith(b"HTTP/1.1 400")
    with socket.create_connection((host, int(port))) as no_length:
        no_length.sendall(
            b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        )
        assert no_length.recv(1000).startswith(b"HTTP/1.1 411")
    stalled = [socket.create_connection((host, int(port))) for _ in range(3)]
    stalled[0].sendall(b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never finish
    stalled[1].sendall(
        b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
        b"Content-Length: 100000\r\n\r\n" + good[:10]
    )  # body never finishes
    # stalled[2] says nothing at all
    try:
        for _ in range(3):
            assert httpx.post(collector.traces_url, content=good, headers=PROTOBUF).status_code == 200
        stats = collector.stop()  # does not wait for the stalled clients' timeouts
        assert stats.spans == 9
    finally:
        for connection in stalled:
            connection.close()


def test_keep_alive_connection_serves_many_requests(collector: Collector) -> None:
    with httpx.Client() as client:
        for _ in range(20):
            assert (
                client.post(
                    collector.traces_url,
                    content=encode_spans(agent_spans(1)).SerializeToString(),
                    headers=PROTOBUF,
                ).status_code
                == 200
            )
    assert collector.stop().spans == 60


def raw_exchange(collector: Collector, request: bytes) -> bytes:
    """Send bytes as they are and read the reply until the collector closes or goes quiet."""
    host, port = collector.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(request)
        reply = b""
        try:
            while chunk := connection.recv(65536):
                reply += chunk
                if b"\r\n\r\n" in reply and reply.startswith(b"HTTP/1.1 200"):
                    break
        except TimeoutError:
            pass
    return reply


def test_ambiguous_body_lengths_are_refused(collector: Collector) -> None:
    body = b"{}" + b" " * 8  # ten bytes of a valid (empty) OTLP/JSON request
    head = b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    for lengths in (
        b"Content-Length: 10\r\nContent-Length: 12\r\n",
        b"Content-Length: 10, 2\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 10\r\n",
        b"Content-Length: 10\r\nTransfer-Encoding: identity\r\n",
        b"Content-Length: +10\r\n",
    ):
        reply = raw_exchange(collector, head + lengths + b"\r\n" + body)
        assert reply.startswith(b"HTTP/1.1 400"), (lengths, reply[:200])
    same_twice = raw_exchange(collector, head + b"Content-Length: 10\r\nContent-Length: 10\r\n\r\n" + body)
    assert same_twice.startswith(b"HTTP/1.1 200")
    assert (collector.stats.failed_requests, collector.stats.requests) == (5, 1)


def trickle(connection: socket.socket, data: bytes, every: float = 0.1, seconds: float = 20) -> bytes:
    """Send `data` a byte at a time (for at most `seconds`); what the server said when it cut us off."""
    connection.settimeout(every)
    deadline = time.monotonic() + seconds
    for byte in data:
        try:
            connection.sendall(bytes([byte]))
            reply = connection.recv(65536)
        except TimeoutError:
            assert time.monotonic() < deadline
            continue
        except OSError:
            return b"closed"
        connection.settimeout(10)
        while chunk := connection.recv(65536):  # the rest of the reply, up to the close
            reply += chunk
        return reply or b"closed"
    raise AssertionError("the slow client was never cut off")


def test_slow_headers_and_slow_bodies_are_cut_at_the_time_limit(tmp_path: Path) -> None:
    good = encode_spans(agent_spans(1)).SerializeToString()
    with serve(store=tmp_path / "c.duckdb", port=0, header_seconds=1, body_seconds=1) as collector:
        host, port = collector.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as slow_headers:
            slow_headers.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            reply = trickle(slow_headers, b"X-Slow: " + b"a" * 1000)  # a byte every 0.1 s: 100 s in all
            assert reply.startswith(b"HTTP/1.1 408") and b"headers did not arrive within 1s" in reply
        with socket.create_connection((host, int(port))) as slow_body:
            slow_body.sendall(
                b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
                b"Content-Length: %d\r\n\r\n" % len(good)
            )
            reply = trickle(slow_body, good)
            assert reply.startswith(b"HTTP/1.1 408") and b"body did not arrive within 1s" in reply
        assert httpx.post(collector.traces_url, content=good, headers=PROTOBUF).status_code == 200
    assert collector.stats.spans == 3


def test_receive_is_the_same_rules_without_http(tmp_path: Path) -> None:
    """What another transport (the web app's route) calls: body and headers in, a reply out."""
    good = encode_spans(agent_spans(1)).SerializeToString()
    collector = Collector(store=tmp_path / "c.duckdb", token="s3cret")
    try:
        answer = collector.receive(good, content_type="application/x-protobuf", authorization="Bearer s3cret")
        assert answer.status == 200 and answer.headers == {"Content-Type": "application/x-protobuf"}
        assert not ExportTraceServiceResponse.FromString(answer.body).HasField("partial_success")
        unauthorised = collector.receive(good, content_type="application/x-protobuf")
        assert unauthorised.status == 401 and "WWW-Authenticate" in unauthorised.headers
        json_body = gzip.compress(
            otlp_json(json_span("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"))
        )
        answer = collector.receive(
            json_body,
            content_type="application/json; charset=utf-8",
            content_encoding="gzip",
            authorization="Bearer s3cret",
        )
        assert (answer.status, answer.body, answer.headers["Content-Type"]) == (
            200,
            b"{}",
            "application/json",
        )
        assert (
            collector.receive(b"{}", content_type="text/plain", authorization="Bearer s3cret").status == 415
        )
        too_long = collector.refuse(
            content_type="application/json",
            authorization="Bearer s3cret",
            length=collector.max_body_bytes + 1,
        )
        assert too_long is not None and too_long.status == 413  # refused before the body is read
        assert collector.url == ""  # no HTTP server was started
    finally:
        stats = collector.stop()
    assert (stats.requests, stats.failed_requests, stats.spans) == (2, 2, 4)
    assert len(stored(tmp_path / "c.duckdb")) == 4


# --- credentials --------------------------------------------------------------------------------

OPENAI_KEY = "sk-proj-" + "Zx9" * 16


def spans_with_credentials() -> list:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import Status, StatusCode

    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "agent", "openai.api_key": OPENAI_KEY})
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span(f"call {OPENAI_KEY}") as span:
        span.set_attribute("http.request.header.authorization", "Bearer abc123def456ghi789")
        span.set_attribute("input.value", '{"password": "hunter22", "question": "where is my order?"}')
        span.set_attribute("llm.token_count.prompt", 1200)
        span.add_event("retry", {"url": "https://bob:pa55word@db.example.com/orders"})
        span.set_status(Status(StatusCode.ERROR, f"401: invalid key {OPENAI_KEY}"))
    provider.shutdown()
    return list(exporter.get_finished_spans())


CREDENTIALS = (OPENAI_KEY, "abc123def456", "hunter22", "pa55word")


@pytest.mark.parametrize("keep_secrets", [False, True], ids=["scrubbed", "kept"])
def test_credentials_in_received_spans_are_scrubbed_before_anything_is_written(
    tmp_path: Path, keep_secrets: bool
) -> None:
    store, out, spool = tmp_path / "c.duckdb", tmp_path / "c.jsonl", tmp_path / "spool"
    with serve(
        store=store, out=out, spool=spool, port=0, flush_seconds=3600, keep_secrets=keep_secrets
    ) as collector:
        exporter = OTLPSpanExporter(endpoint=collector.traces_url)
        assert exporter.export(spans_with_credentials()) is SpanExportResult.SUCCESS
        logged = b"".join(log.read_bytes() for log in spool.glob("wal-*.jsonl"))
        assert logged
    written = {"spool": logged, "out": out.read_bytes()}
    with TraceStore.open(store, read_only=True) as opened:
        written["store"] = orjson.dumps(opened.con.execute("SELECT * FROM spans").fetchall(), default=str)
    for where, data in written.items():
        for secret in CREDENTIALS:
            assert (secret.encode() in data) is keep_secrets, (where, secret)
    if not keep_secrets:
        (row,) = stored(store).values()
        assert row["raw"]["attributes"]["llm.token_count.prompt"] == 1200
        assert "where is my order?" in row["raw"]["attributes"]["input.value"]
        assert row["raw"]["attributes"]["http.request.header.authorization"] == "[REDACTED]"


# --- the spool ----------------------------------------------------------------------------------


def test_the_collector_refuses_to_start_without_a_writable_spool(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("x")
    with pytest.raises(CollectError, match=r"cannot use the spool .*--spool"):
        serve(store=tmp_path / "c.duckdb", spool=not_a_folder / "spool", port=0)
    read_only = tmp_path / "read-only"
    with read_only_folder(read_only), pytest.raises(CollectError, match="spool"):
        serve(store=tmp_path / "c.duckdb", spool=read_only, port=0)


def test_one_collector_per_spool_and_a_spool_keeps_to_its_outputs(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    first = serve(store=tmp_path / "a.duckdb", spool=spool, port=0, flush_seconds=3600, lock_timeout=0.2)
    with pytest.raises(CollectError, match="another collector is using the spool"):
        serve(store=tmp_path / "a.duckdb", spool=spool, port=0)
    assert OTLPSpanExporter(endpoint=first.traces_url).export(agent_spans()) is SpanExportResult.SUCCESS
    with store_held_by_another_process(tmp_path / "a.duckdb"):
        first.stop(timeout=0)
    with pytest.raises(CollectError, match=r"holds spans for the store .*a\.duckdb"):
        serve(store=tmp_path / "b.duckdb", spool=spool, port=0)
    serve(store=tmp_path / "a.duckdb", spool=spool, port=0).stop()
    assert len(stored(tmp_path / "a.duckdb")) == 9
    serve(store=tmp_path / "b.duckdb", spool=spool, port=0).stop()  # nothing left in it: any outputs


# --- binding ----------------------------------------------------------------------------------


def test_binding_other_machines_needs_allow_remote(tmp_path: Path) -> None:
    with pytest.raises(CollectError, match="--allow-remote"):
        serve(store=tmp_path / "c.duckdb", host="0.0.0.0", port=0)
    with serve(store=tmp_path / "c.duckdb", host="0.0.0.0", port=0, allow_remote=True) as remote:
        assert remote.remote and remote.url.startswith("http://127.0.0.1:")
        # a remote-facing collector is reached under any host name
        response = httpx.post(
            remote.traces_url, content=b"{}", headers={**JSON, "Host": "collector.lan:4318"}
        )
        assert response.status_code == 200
    with serve(store=tmp_path / "c.duckdb", host="localhost", port=0) as local:
        assert not local.remote


def test_a_port_in_use_or_a_file_that_is_not_a_store_is_a_clear_error(
    tmp_path: Path, collector: Collector
) -> None:
    port = int(collector.url.rsplit(":", 1)[1])
    with pytest.raises(CollectError, match="cannot listen"):
        serve(store=tmp_path / "other.duckdb", port=port)
    not_a_store = tmp_path / "notes.txt"
    not_a_store.write_text("hello")
    with pytest.raises(CollectError, match=r"notes\.txt"):
        serve(store=not_a_store, port=0)


def test_default_store_is_in_the_cache_named_for_the_port(isolated_cache: Path) -> None:
    with serve(port=0) as running:
        assert running.store_path == isolated_cache / "stores" / "collect-0.duckdb"
        assert running.out_path is None


# --- outputs ----------------------------------------------------------------------------------


def test_out_file_ingests_back_losslessly(tmp_path: Path) -> None:
    spans = agent_spans()
    out = tmp_path / "spans.jsonl"
    with serve(out=out, port=0) as collector:
        assert collector.store_path is None
        assert OTLPSpanExporter(endpoint=collector.traces_url).export(spans) is SpanExportResult.SUCCESS
    lines = out.read_bytes().splitlines()
    assert len(lines) == 9
    first = orjson.loads(lines[0])
    assert list(first)[:12] == [
        "trace_id",
        "span_id",
        "parent_span_id",
        "trace_state",
        "name",
        "kind",
        "start_time",
        "end_time",
        "status",
        "resource",
        "scope",
        "attributes",
    ]
    assert first["start_time"].endswith("Z") and len(first["start_time"].split(".")[1]) == 10  # 9 digits + Z
    with TraceStore.open(tmp_path / "s.duckdb") as store:
        report = store.ingest([str(out)])
        assert (report.spans, report.rejected) == (9, 0)
    assert_same_as_sent(spans, stored(tmp_path / "s.duckdb"))


def test_store_and_out_file_together_get_the_same_spans(tmp_path: Path) -> None:
    with serve(store=tmp_path / "c.duckdb", out=tmp_path / "c.jsonl", port=0) as collector:
        assert (
            OTLPSpanExporter(endpoint=collector.traces_url).export(agent_spans()) is SpanExportResult.SUCCESS
        )
    file_spans = {orjson.loads(line)["span_id"] for line in (tmp_path / "c.jsonl").read_bytes().splitlines()}
    assert file_spans == set(stored(tmp_path / "c.duckdb")) and len(file_spans) == 9


def test_the_store_is_readable_while_the_collector_runs(collector: Collector) -> None:
    exporter = OTLPSpanExporter(endpoint=collector.traces_url)
    for expected in (9, 18, 27):
        assert exporter.export(agent_spans()) is SpanExportResult.SUCCESS
        wait_until_written(collector)
        with TraceStore.open(collector.store_path, read_only=True) as store:
            assert store.overview().spans == expected
            assert store.count_traces() == expected // 3


@contextmanager
def store_held_by_another_process(path: Path) -> Iterator[None]:
    """Another process holds the store open (as a long `halo sql` would), so no write can happen."""
    hold = (
        "import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=True); print('open', flush=True); "
        "sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        yield
    finally:
        holder.communicate("")


def wait_for(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_store_another_process_holds_too_long_gets_503_with_retry_after_then_all_is_written(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.duckdb"
    body, later = (encode_spans(agent_spans(1)).SerializeToString() for _ in range(2))
    with serve(store=path, port=0, lock_timeout=0.2) as collector:
        with store_held_by_another_process(path):
            # durable in the spool, so acknowledged; the store gets it when it is free
            assert httpx.post(collector.traces_url, content=body, headers=PROTOBUF).status_code == 200
            wait_for(lambda: collector.stats.last_error)  # the store is failing: nothing more is taken
            refused = httpx.post(collector.traces_url, content=later, headers=PROTOBUF)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "store is failing" in refused.text and "lock" in collector.stats.last_error
            assert (collector.stats.pending_spans, collector.stats.busy_requests) == (3, 1)
        wait_until_written(collector)  # the lock is gone: the next cycle writes what was accepted
        assert httpx.post(collector.traces_url, content=later, headers=PROTOBUF).status_code == 200
        assert collector.stats.last_error is None
    assert len(stored(path)) == 6


def test_stop_writes_everything_received(tmp_path: Path) -> None:
    flushed = []
    collector = serve(
        store=tmp_path / "c.duckdb",
        out=tmp_path / "c.jsonl",
        port=0,
        flush_seconds=3600,
        on_flush=flushed.append,
    )
    exporter = OTLPSpanExporter(endpoint=collector.traces_url)
    for _ in range(5):
        assert exporter.export(agent_spans()) is SpanExportResult.SUCCESS
    assert collector.stats.pending_spans == 45 and not flushed
    stats = collector.stop()
    assert (stats.spans, stats.pending_spans, stats.last_error) == (45, 0, None)
    assert flushed and flushed[-1].pending_spans == 0
    assert len(stored(tmp_path / "c.duckdb")) == 45
    assert len((tmp_path / "c.jsonl").read_bytes().splitlines()) == 45
    with pytest.raises(httpx.ConnectError):
        httpx.post(collector.traces_url, content=b"{}", headers=JSON)


def test_after_a_write_the_store_rests_in_proportion_to_what_it_cost(tmp_path: Path) -> None:
    """A write to the store takes a good part of a second however few spans it carries, so the next
    waits `rest_per_write` times as long (here far longer than the test); stop writes what waits."""
    collector = serve(
        store=tmp_path / "c.duckdb", spool=tmp_path / "spool", port=0, flush_seconds=0.05, rest_per_write=1e6
    )
    exporter = OTLPSpanExporter(endpoint=collector.traces_url)
    assert exporter.export(agent_spans(1)) is SpanExportResult.SUCCESS
    wait_until_written(collector)
    assert exporter.export(agent_spans(2)) is SpanExportResult.SUCCESS
    time.sleep(1.0)  # twenty times flush_seconds: without the rest, written by now
    assert collector.stats.pending_spans == 6 and collector.stats.flushes == 1
    stats = collector.stop()
    assert (stats.pending_spans, stats.flushes) == (0, 2)
    assert len(stored(tmp_path / "c.duckdb")) == 9


def test_spans_a_store_will_not_take_by_shutdown_stay_spooled_for_the_next_start(tmp_path: Path) -> None:
    path, spool = tmp_path / "c.duckdb", tmp_path / "spool"
    collector = serve(store=path, spool=spool, port=0, flush_seconds=3600, lock_timeout=0.2)
    assert OTLPSpanExporter(endpoint=collector.traces_url).export(agent_spans()) is SpanExportResult.SUCCESS
    with store_held_by_another_process(path):
        stats = collector.stop(timeout=0.5)
    assert stats.pending_spans == 9 and f"kept in the spool {spool}" in stats.last_error
    assert sum(len(log.read_bytes().splitlines()) for log in spool.glob("wal-*.jsonl")) == 9
    assert not path.exists() or not stored(path)
    with serve(store=path, spool=spool, port=0) as again:
        assert again.stats.replayed_spans == 9
    assert again.stats.last_error is None and len(stored(path)) == 9
    assert not list(spool.glob("wal-*.jsonl"))  # written everywhere: the log is gone


def test_the_log_keeps_only_what_an_output_has_not_confirmed(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with serve(
        store=tmp_path / "c.duckdb", out=tmp_path / "c.jsonl", spool=spool, port=0, segment_bytes=4096
    ) as collector:
        exporter = OTLPSpanExporter(endpoint=collector.traces_url)
        for _ in range(6):
            assert exporter.export(agent_spans()) is SpanExportResult.SUCCESS
            wait_until_written(collector)
            logs = sorted(spool.glob("wal-*.jsonl"))
            assert len(logs) <= 2  # files both outputs passed are deleted as they go
            cursors = {p.name: orjson.loads(p.read_bytes()) for p in spool.glob("cursor-*.json")}
            assert set(cursors) == {"cursor-store.json", "cursor-file.json"}
    assert not list(spool.glob("wal-*.jsonl"))
    assert len(stored(tmp_path / "c.duckdb")) == 54


# --- crashes and failing disks -------------------------------------------------------------------

COLLECTOR_CHILD = """
import json, resource, signal, sys
from halo_rlm.collect import serve
settings = json.loads(sys.argv[1])
limit = settings.pop("file_size_limit", None)
if limit:  # a disk that is full past this size, for every file the collector writes
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
stop_timeout = settings.pop("stop_timeout", 30)
collector = serve(port=0, **settings)
print(json.dumps({"url": collector.traces_url, **vars(collector.stats)}), flush=True)
sys.stdin.read()
print(json.dumps(vars(collector.stop(timeout=stop_timeout))), flush=True)
"""


class CollectorProcess:
    """A collector in a process of its own (`serve()` with `settings`), to kill or starve."""

    def __init__(self, **settings: object) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", COLLECTOR_CHILD, orjson.dumps(settings).decode()],
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.started = orjson.loads(self.process.stdout.readline())
        self.url = self.started["url"]

    def stop(self) -> dict:
        final, _ = self.process.communicate("", timeout=120)
        assert self.process.returncode == 0
        return orjson.loads(final)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def exporters(url: str, acked: Path, count: int = 8, spans: int = 2048, timeout: float = 3) -> list:
    """`count` processes each sending `spans` spans through the SDK exporter (batches of 512), writing
    the ids of every span acknowledged with 200 to files `acked`-<n>."""
    return [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "collect_load.py"),
                "--export-to",
                url,
                "--spans",
                str(spans),
                "--acked",
                f"{acked}-{n}",
                "--timeout",
                str(timeout),
            ],
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
            stderr=subprocess.DEVNULL,  # the SDK logs each failed export
        )
        for n in range(count)
    ]


def acknowledged(acked: Path) -> set[str]:
    return {line for path in acked.parent.glob(acked.name + "-*") for line in path.read_text().split()}


def span_ids_in(out: Path) -> list[str]:
    return [orjson.loads(line)["span_id"] for line in out.read_bytes().splitlines()]


def assert_nothing_acknowledged_lost(acked: set[str], store: Path, out: Path) -> None:
    assert acked, "no span was acknowledged: the test proves nothing"
    in_store = set(stored(store))
    assert acked <= in_store, f"{len(acked - in_store)} of {len(acked)} acknowledged spans not in the store"
    in_file = span_ids_in(out)  # every line parses: no torn line was left
    assert acked <= set(in_file), f"{len(acked - set(in_file))} acknowledged spans not in --out"
    assert len(in_file) == len(set(in_file)), "lines written twice to --out"


@pytest.mark.slow
def test_sigkill_mid_flood_from_8_exporters_loses_no_acknowledged_span(tmp_path: Path) -> None:
    store, out, spool, acked = (
        tmp_path / "c.duckdb",
        tmp_path / "c.jsonl",
        tmp_path / "spool",
        tmp_path / "acked",
    )
    args = (
        "collect",
        "--port",
        "0",
        "--store",
        str(store),
        "--out",
        str(out),
        "--spool",
        str(spool),
        "--json",
    )
    collector = halo(*args)
    url = orjson.loads(collector.stdout.readline())["traces_url"]
    flood = exporters(url, acked, spans=4096)
    try:
        wait_for(lambda: len(acknowledged(acked)) >= 4 * 512)
        collector.send_signal(signal.SIGKILL)
        collector.wait()
        assert all(exporter.wait(timeout=120) == 0 for exporter in flood)
    finally:
        for process in (collector, *flood):
            process.kill()
            process.wait()
    sent = acknowledged(acked)
    assert len(sent) < 8 * 4096  # the kill came mid-flood: some batches were never acknowledged
    restarted = halo(*args)
    try:
        listening = orjson.loads(restarted.stdout.readline())
        assert listening["replayed_spans"] > 0
        restarted.send_signal(signal.SIGINT)
        assert restarted.wait(timeout=120) == 0, restarted.stderr.read()
    finally:
        restarted.kill()
        restarted.wait()
    assert_nothing_acknowledged_lost(sent, store, out)


def test_a_torn_write_to_the_out_file_is_finished_without_duplicates_after_a_kill(tmp_path: Path) -> None:
    out, spool = tmp_path / "c.jsonl", tmp_path / "spool"
    with serve(out=out, spool=spool, port=0) as first:
        assert OTLPSpanExporter(endpoint=first.traces_url).export(agent_spans()) is SpanExportResult.SUCCESS
    killed = CollectorProcess(out=str(out), spool=str(spool), flush_seconds=3600)
    assert OTLPSpanExporter(endpoint=killed.url).export(agent_spans()) is SpanExportResult.SUCCESS
    killed.kill()
    (log,) = spool.glob("wal-*.jsonl")
    logged = log.read_bytes().splitlines(keepends=True)
    assert len(logged) == 9
    # Killed while writing --out: four lines made it, the fifth only half.
    with open(out, "ab") as file:
        file.write(b"".join(logged[:4]) + logged[4][:100])
    with serve(out=out, spool=spool, port=0) as again:
        assert again.stats.replayed_spans == 5  # the four whole lines are recognised as written
    ids = span_ids_in(out)
    assert len(ids) == len(set(ids)) == 18
    assert set(ids[9:]) == {orjson.loads(line)["span_id"] for line in logged}


def test_a_first_write_to_the_out_file_a_kill_left_unrecorded_is_not_written_again(tmp_path: Path) -> None:
    """Killed after its first write to --out but before recording it: the next start recognises those
    lines (the file's end was recorded at start), and leaves what was in the file before alone."""
    out, spool = tmp_path / "c.jsonl", tmp_path / "spool"
    out.write_bytes(b'{"someone": "else"}\n')
    killed = CollectorProcess(out=str(out), spool=str(spool), flush_seconds=3600)
    assert OTLPSpanExporter(endpoint=killed.url).export(agent_spans()) is SpanExportResult.SUCCESS
    killed.kill()
    (log,) = spool.glob("wal-*.jsonl")
    with open(out, "ab") as file:  # what its first write put there before the kill
        file.write(log.read_bytes())
    with serve(out=out, spool=spool, port=0) as again:
        assert again.stats.replayed_spans == 0  # all nine recognised as written
    lines = out.read_bytes().splitlines()
    assert lines[0] == b'{"someone": "else"}'
    ids = [orjson.loads(line)["span_id"] for line in lines[1:]]
    assert len(ids) == len(set(ids)) == 9


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["full", "read-only"])
def test_a_failing_disk_gets_503s_and_loses_no_acknowledged_span(tmp_path: Path, failure: str) -> None:
    disk, spool, acked = tmp_path / "disk", tmp_path / "spool", tmp_path / "acked"
    store, out = disk / "c.duckdb", disk / "c.jsonl"
    with small_disk(disk, "3m") as mounted:
        if failure == "read-only" and not mounted and os.geteuid() == 0:
            pytest.skip("root without mount: no folder is read-only to this process")
        settings: dict = {"store": str(store), "out": str(out), "spool": str(spool), "lock_timeout": 1}
        if failure == "full" and not mounted:
            settings["file_size_limit"] = 3 << 20
        collector = CollectorProcess(**settings, stop_timeout=3)
        # Floods until one is refused in part: on a quiet machine a flood can end before the first
        # write to the failing disk does, and then only the next one can be answered 503.
        for floods in range(1, 6):
            flood = exporters(collector.url, acked, spans=2048)
            try:
                if failure == "read-only" and floods == 1:
                    wait_for(lambda: len(acknowledged(acked)) >= 4 * 512)
                    make_read_only(disk, mounted)
                assert all(exporter.wait(timeout=300) == 0 for exporter in flood)
            finally:
                for exporter in flood:
                    exporter.kill()
                    exporter.wait()
            if len(acknowledged(acked)) < floods * 8 * 2048:
                break
        first = collector.stop()
        assert first["busy_requests"] > 0 and "kept in the spool" in first["last_error"]
        sent = acknowledged(acked)
        assert len(sent) < floods * 8 * 2048
        repair(disk, mounted, failure)
        second = CollectorProcess(store=str(store), out=str(out), spool=str(spool)).stop()
        assert second["last_error"] is None
        assert_nothing_acknowledged_lost(sent, store, out)


def test_a_full_spool_gets_503s_and_what_it_took_is_written(tmp_path: Path) -> None:
    if not can_mount():
        pytest.skip("needs a small tmpfs (root)")
    spool, store = tmp_path / "spool", tmp_path / "c.duckdb"
    with small_disk(spool, "1m"):
        collector = serve(store=store, spool=spool, port=0, flush_seconds=3600)
        exporter = OTLPSpanExporter(endpoint=collector.traces_url, timeout=2)
        accepted: set[str] = set()
        for _ in range(40):  # about 80 KB a request: the spool fills after a dozen
            spans = agent_spans(30)
            if exporter.export(spans) is SpanExportResult.SUCCESS:
                accepted |= {f"{span.context.span_id:016x}" for span in spans}
        busy = collector.stats
        final = collector.stop()
    assert accepted and busy.busy_requests > 0 and "cannot write" in (busy.last_error or "")
    assert final.last_error is None  # once stopped, everything it took is in the store
    assert set(stored(store)) == accepted


_mountable: list[bool] = []


def can_mount() -> bool:
    """Whether this process can mount a small tmpfs (root, and a system that allows it)."""
    if not _mountable:
        ok = False
        if os.geteuid() == 0:
            with tempfile.TemporaryDirectory() as probe:
                ok = (
                    subprocess.run(
                        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", probe], capture_output=True
                    ).returncode
                    == 0
                )
                if ok:
                    subprocess.run(["umount", probe], check=True)
        _mountable.append(ok)
    return _mountable[0]


@contextmanager
def small_disk(path: Path, size: str) -> Iterator[bool]:
    """A folder on a tmpfs of `size` when this process may mount one (yields True), else a plain
    folder (False: the test then starves the collector with a file size limit or permissions)."""
    path.mkdir(parents=True, exist_ok=True)
    if not can_mount():
        try:
            yield False
        finally:
            path.chmod(0o755)
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def remount(path: Path, options: str) -> None:
    """`mount -o remount,<options>`, retried while a file there is open for writing (EBUSY)."""
    deadline = time.monotonic() + 60
    while subprocess.run(["mount", "-o", f"remount,{options}", str(path)], capture_output=True).returncode:
        assert time.monotonic() < deadline, f"could not remount {path} {options}"
        time.sleep(0.02)


def make_read_only(disk: Path, mounted: bool) -> None:
    if mounted:
        remount(disk, "ro")
    else:
        disk.chmod(0o555)
        for path in disk.iterdir():
            path.chmod(0o444)


def repair(disk: Path, mounted: bool, failure: str) -> None:
    if mounted:
        remount(disk, "rw,size=256m")
    elif failure == "read-only":
        disk.chmod(0o755)
        for path in disk.iterdir():
            path.chmod(0o644)


@contextmanager
def read_only_folder(path: Path) -> Iterator[None]:
    path.mkdir()
    if can_mount():
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], check=True)
        try:
            yield
        finally:
            subprocess.run(["umount", "-l", str(path)], check=True)
    elif os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(0o755)
    else:
        pytest.skip("root without mount: no folder is read-only to this process")


# --- load -------------------------------------------------------------------------------------


def test_load_100k_spans_from_four_concurrent_exporters_none_lost(tmp_path: Path) -> None:
    store = tmp_path / "load.duckdb"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "collect_load.py"),
            "--spans",
            "100000",
            "--exporters",
            "4",
            "--store",
            str(store),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = orjson.loads(result.stdout)
    assert (report["spans_accepted"], report["spans_stored"], report["lost"]) == (100_000, 100_000, 0)
    with TraceStore.open(store, read_only=True) as opened:
        assert opened.con.execute(
            "SELECT count(*), count(DISTINCT trace_id), count(*) FILTER (is_orphan) FROM spans"
        ).fetchall() == [(100_000, 10_000, 0)]


# --- the command line -------------------------------------------------------------------------


def halo(*args: str, env: dict[str, str] | None = None, **options) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    # A test run started in the background inherits SIGINT ignored, and so would the child; Ctrl-C
    # is what these tests send, so the child gets the default disposition back.
    return subprocess.Popen(
        [sys.executable, "-m", "halo_rlm", *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **options,
    )


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_halo_collect_json_lines_while_halo_stats_reads_the_store(tmp_path: Path, stop_signal: int) -> None:
    store, out = tmp_path / "live.duckdb", tmp_path / "live.jsonl"
    collector = halo("collect", "--port", "0", "--store", str(store), "--out", str(out), "--json")
    try:
        listening = orjson.loads(collector.stdout.readline())
        assert listening["type"] == "listening" and listening["store"] == str(store)
        exporter = OTLPSpanExporter(endpoint=listening["traces_url"])
        for batch in range(1, 4):
            assert exporter.export(agent_spans()) is SpanExportResult.SUCCESS
            flush = orjson.loads(collector.stdout.readline())
            while flush["pending_spans"]:
                flush = orjson.loads(collector.stdout.readline())
            assert (flush["type"], flush["spans"], flush["traces"]) == ("flush", 9 * batch, 3 * batch)
            # another process reads the store between flushes, as a user would while collecting
            stats = halo("stats", "--store", str(store), "--json")
            assert stats.wait(timeout=60) == 0, stats.stderr.read()
            assert orjson.loads(stats.stdout.read())["spans"] == 9 * batch
        assert exporter.export(agent_spans()) is SpanExportResult.SUCCESS  # still in memory when stopped
        collector.send_signal(stop_signal)
        assert collector.wait(timeout=60) == 0, collector.stderr.read()
        *_, stopped = [orjson.loads(line) for line in collector.stdout.read().splitlines()]
        assert (stopped["type"], stopped["spans"], stopped["pending_spans"]) == ("stopped", 36, 0)
    finally:
        collector.kill()
        collector.wait()
    assert len(stored(store)) == 36
    assert len(out.read_bytes().splitlines()) == 36


def test_halo_collect_prints_the_settings_to_paste_and_remembers_its_store(tmp_path: Path) -> None:
    collector = halo("collect", "--port", "0", "--token", "s3cret")
    try:
        banner = []
        while not banner or "halo_rlm.tracing.setup" not in banner[-1]:
            banner.append(collector.stdout.readline())
        url = banner[0].split("listening on ")[1].split()[0]
        text = "".join(banner)
        assert f"export OTEL_EXPORTER_OTLP_TRACES_ENDPOINT={url}/v1/traces" in text
        assert f"export OTEL_EXPORTER_OTLP_ENDPOINT={url}" in text
        assert "export OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf" in text
        assert "export OTEL_EXPORTER_OTLP_HEADERS=Authorization=Bearer%20s3cret" in text
        assert httpx.post(url + "/v1/traces", content=b"{}", headers=JSON).status_code == 401
        exporter = OTLPSpanExporter(endpoint=url + "/v1/traces", headers={"Authorization": "Bearer s3cret"})
        assert exporter.export(agent_spans()) is SpanExportResult.SUCCESS
        collector.send_signal(signal.SIGINT)
        assert collector.wait(timeout=60) == 0
        assert "Received 9 spans in 3 traces" in collector.stderr.read()
    finally:
        collector.kill()
        collector.wait()
    stats = halo("stats", "--json")  # no --store: the collector's store is the one remembered
    assert stats.wait(timeout=60) == 0 and orjson.loads(stats.stdout.read())["spans"] == 9


def test_halo_collect_does_not_print_a_token_that_came_from_the_environment(tmp_path: Path) -> None:
    token = "env-token-7f3a9c"
    collector = halo(
        "collect", "--port", "0", "--store", str(tmp_path / "c.duckdb"), env={"HALO_COLLECT_TOKEN": token}
    )
    try:
        banner = []
        while not banner or "halo_rlm.tracing.setup" not in banner[-1]:
            banner.append(collector.stdout.readline())
        text = "".join(banner)
        assert token not in text
        assert 'export OTEL_EXPORTER_OTLP_HEADERS="Authorization=Bearer%20$HALO_COLLECT_TOKEN"' in text
        url = text.split("listening on ")[1].split()[0]
        assert httpx.post(url + "/v1/traces", content=b"{}", headers=JSON).status_code == 401
        authorised = {**JSON, "Authorization": f"Bearer {token}"}
        assert httpx.post(url + "/v1/traces", content=b"{}", headers=authorised).status_code == 200
        collector.send_signal(signal.SIGINT)
        assert collector.wait(timeout=60) == 0
        assert token not in collector.stdout.read() + collector.stderr.read()
    finally:
        collector.kill()
        collector.wait()


def test_halo_collect_refuses_a_public_address_without_allow_remote() -> None:
    collector = halo("collect", "--host", "0.0.0.0", "--port", "0")
    assert collector.wait(timeout=60) == 1
    assert "--allow-remote" in collector.stderr.read()
