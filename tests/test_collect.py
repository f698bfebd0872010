"""`halo collect`: the OTLP/HTTP receiver, driven by the real OpenTelemetry SDK exporter and by raw HTTP."""

from __future__ import annotations

import gzip
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult
from sdk_spans import agent_spans, assert_same_as_sent, stored

from halo_rlm.collect import CollectError, Collector, serve
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
    from google.protobuf.json_format import MessageToJson

    spans = agent_spans(1)
    body = MessageToJson(encode_spans(spans)).encode()  # protobuf's JSON mapping writes ids as base64
    assert httpx.post(collector.traces_url, content=body, headers=JSON).status_code == 200
    collector.stop()
    assert_same_as_sent(spans, stored(collector.store_path))


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
    with pytest.raises(CollectError, match="notes.txt"):
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


def test_a_busy_store_holds_spans_in_memory_then_refuses_with_retry_after(tmp_path: Path) -> None:
    path = tmp_path / "c.duckdb"
    body, later = (encode_spans(agent_spans(1)).SerializeToString() for _ in range(2))
    with serve(store=path, port=0, buffer_bytes=1) as collector:
        # Another process holds the store (as a long `halo sql` would), so no flush can happen.
        hold = (
            "import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=True); print('open', flush=True); "
            "sys.stdin.read()"
        )
        holder = subprocess.Popen(
            [sys.executable, "-c", hold, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert holder.stdout.readline().strip() == "open"
            assert httpx.post(collector.traces_url, content=body, headers=PROTOBUF).status_code == 200
            refused = httpx.post(collector.traces_url, content=body, headers=PROTOBUF)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert collector.stats.pending_spans == 3
        finally:
            holder.communicate("")
        wait_until_written(collector)  # the lock is gone: the next flush writes the buffer
        assert httpx.post(collector.traces_url, content=later, headers=PROTOBUF).status_code == 200
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


def test_a_store_busy_past_shutdown_leaves_a_rescue_file(tmp_path: Path) -> None:
    path = tmp_path / "c.duckdb"
    collector = serve(store=path, port=0, flush_seconds=3600)
    assert OTLPSpanExporter(endpoint=collector.traces_url).export(agent_spans()) is SpanExportResult.SUCCESS

    def busy(lines: list[bytes]) -> None:
        raise OSError("store is locked")  # what waiting out TraceStore.open's lock timeout ends in

    (store_output,) = collector._outputs  # white box: waiting for a real lock to time out takes 10 s
    store_output.write = busy
    stats = collector.stop(timeout=0)
    assert stats.pending_spans == 0 and "unflushed" in stats.last_error
    rescue = next(tmp_path.glob("c.duckdb.unflushed-*.jsonl"))
    with TraceStore.open(path) as store:
        assert store.ingest([str(rescue)]).spans == 9


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


def halo(*args: str, **options) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
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
        banner = [collector.stdout.readline() for _ in range(8)]
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


def test_halo_collect_refuses_a_public_address_without_allow_remote() -> None:
    collector = halo("collect", "--host", "0.0.0.0", "--port", "0")
    assert collector.wait(timeout=60) == 1
    assert "--allow-remote" in collector.stderr.read()
