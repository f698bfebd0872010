"""`halo collect`: a local OTLP/HTTP receiver that puts what agents export into a store and/or a JSONL file.

DuckDB lets one process write a store at a time and no other process open it meanwhile, so the
collector never holds the store open: requests are decoded into HALO JSONL lines, queued in memory,
and a flusher thread writes them in short open → ingest → close cycles with a rest between cycles in
which `halo stats` and friends can open the store. The queue is bounded: when it is full, requests
get 503 with `Retry-After` (OTLP exporters retry those) rather than being dropped. Each output (store,
file) has its own queue, so a store that is busy for a while does not hold up the file or lose spans.

    with serve(store="traces.duckdb", port=0) as collector:
        ...  # export to collector.traces_url
    collector.stats.spans
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import orjson

from halo_rlm.defaults import COLLECT_PORT
from halo_rlm.formats import otlp
from halo_rlm.formats.spans import DecodeError
from halo_rlm.store import StoreError, TraceStore, paths

TRACES_PATH = "/v1/traces"
MAX_BODY_BYTES = 32 << 20  # per request, both as sent and decompressed
BUFFER_BYTES = 256 << 20  # JSONL waiting for an output; beyond this, requests get 503
FLUSH_SECONDS = 1.0  # how long spans wait in memory when few arrive
FLUSH_BYTES = 16 << 20  # flush sooner than FLUSH_SECONDS once this much is waiting...
REST_SECONDS = 0.25  # ...but always leave the store closed this long between flushes, for readers
BODY_SECONDS = 30.0  # a request body must arrive within this
IDLE_SECONDS = 60.0  # a connection silent this long is closed
LINGER_SECONDS = 1.0  # after refusing a body, how long to drain it so the client reads the reply
RETRY_AFTER_SECONDS = 1
FINAL_FLUSH_SECONDS = 30.0  # at shutdown, keep retrying a busy store this long, then write a rescue file
MEDIA_TYPES = {
    "application/x-protobuf": otlp.PROTOBUF,
    "application/protobuf": otlp.PROTOBUF,
    "application/json": otlp.JSON,
}


class CollectError(Exception):
    """The collector cannot start as asked; the message says why."""


@dataclass(frozen=True)
class CollectorStats:
    """Counters since the collector started."""

    requests: int = 0  # export requests accepted (200)
    failed_requests: int = 0  # answered with an error status
    spans: int = 0  # spans accepted
    traces: int = 0  # distinct trace ids among them
    rejected_spans: int = 0  # bad spans inside accepted requests (reported back as partial success)
    pending_spans: int = 0  # accepted but not yet in every output
    flushes: int = 0
    last_error: str | None = None  # why an output is failing (or, after stop, what could not be written)


class _Output:
    """One destination (the store or the JSONL file) and the lines queued for it."""

    def __init__(self, name: str, write: Callable[[list[bytes]], None]) -> None:
        self.name, self.write = name, write
        self.queue: list[bytes] = []
        self.queued_bytes = 0
        self.writing: list[bytes] = []  # taken from the queue, being written
        self.writing_bytes = 0
        self.error: str | None = None  # why the last write failed

    @property
    def held_bytes(self) -> int:
        return self.queued_bytes + self.writing_bytes

    @property
    def pending(self) -> int:
        return len(self.queue) + len(self.writing)


class Collector:
    """A running collector. Start one with `serve()`; `stop()` (or leaving the `with` block) stops
    accepting, waits for requests under way, and writes everything received."""

    def __init__(
        self,
        *,
        store: Path | None,
        out: Path | None,
        host: str,
        port: int,
        token: str | None,
        allow_remote: bool,
        max_body_bytes: int,
        buffer_bytes: int,
        flush_seconds: float,
        on_flush: Callable[[CollectorStats], None] | None,
    ) -> None:
        if store is None and out is None:
            raise CollectError("give a store, an output file, or both")
        family, address = _bind_address(host)
        self.remote = not _is_loopback(address)
        if self.remote and not allow_remote:
            raise CollectError(
                f"{host} accepts connections from other machines; pass --allow-remote to "
                "bind it (and --token, so only your agents can send spans)"
            )
        self.store_path, self.out_path = store, out
        self._token = token.encode() if token else None
        self._max_body, self._buffer_bytes, self._flush_seconds = max_body_bytes, buffer_bytes, flush_seconds
        self._on_flush = on_flush
        self._lock = threading.Condition()
        self._counts = dict.fromkeys(("requests", "failed_requests", "spans", "rejected_spans", "flushes"), 0)
        self._trace_ids: set[str] = set()
        self._in_flight = 0
        self._stopping = self._closing = False
        self._outputs: list[_Output] = []
        if store is not None:
            try:
                TraceStore.open(store).close()  # fail now, not at the first flush, if it is not a store
            except StoreError as exc:
                raise CollectError(str(exc)) from exc
            self._outputs.append(_Output("store", self._write_store))
        try:
            self._server = _Server((address, port), family, self)
        except OSError as exc:
            raise CollectError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        self._out_file = None
        if out is not None:
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                self._out_file = open(out, "ab")  # noqa: SIM115  (closed by stop())
            except OSError as exc:
                self._server.server_close()
                raise CollectError(f"cannot write {out}: {exc.strerror or exc}") from exc
            self._outputs.insert(0, _Output("file", self._write_file))
        bound_port = self._server.server_address[1]
        shown = "127.0.0.1" if address == "0.0.0.0" else "::1" if address == "::" else address
        self.url = f"http://{f'[{shown}]' if ':' in shown else shown}:{bound_port}"
        self.traces_url = self.url + TRACES_PATH
        self._source = f"otlp:{self.traces_url}"
        self._serving = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="halo-collect", daemon=True
        )
        self._flusher = threading.Thread(target=self._flush_loop, name="halo-collect-flush", daemon=True)
        self._serving.start()
        self._flusher.start()

    # --- public ---------------------------------------------------------------------------------

    @property
    def stats(self) -> CollectorStats:
        with self._lock:
            return self._stats()

    def stop(self, timeout: float = FINAL_FLUSH_SECONDS) -> CollectorStats:
        """Stop accepting, finish the requests whose body has arrived (others are cut off, never
        acknowledged), write everything received, and return the final counts. Lines the store could
        not take within `timeout` seconds go to a rescue file beside it (named in `stats.last_error`)."""
        with self._lock:
            if self._closing:
                return self._stats()
            self._stopping = True
            self._lock.wait_for(lambda: self._in_flight == 0)
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        with self._lock:
            self._closing = True
            self._final_deadline = time.monotonic() + timeout
            self._lock.notify_all()
        self._flusher.join()
        if self._out_file is not None:
            self._out_file.close()
        return self.stats

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- requests -------------------------------------------------------------------------------

    def handle(self, request: _Handler) -> None:
        """Answer one HTTP request (any method), from its connection's thread."""
        reply = self._reply_to(request)
        self._count(**{"requests" if reply.status == 200 else "failed_requests": 1})
        request.send(reply)

    def _reply_to(self, request: _Handler) -> _Reply:
        refused = self._refusal(request)
        if refused:
            return refused
        media_type = MEDIA_TYPES.get(request.headers.get_content_type())
        if media_type is None:
            return _Reply(
                415,
                f"Content-Type must be application/x-protobuf or application/json, not "
                f"{request.headers.get('Content-Type', 'missing')!r}",
                close=True,
            )
        encoding = (request.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding not in ("identity", "gzip", "deflate"):
            return _Reply(
                415,
                f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none",
                media_type,
                close=True,
            )
        length = request.headers.get("Content-Length")
        if length is None or not (length.strip().isascii() and length.strip().isdecimal()):
            return _Reply(411, "a Content-Length header is required", media_type, close=True)
        if int(length) > self._max_body:
            return _Reply(
                413,
                f"the body is {int(length):,} bytes; the limit is {self._max_body:,}",
                media_type,
                close=True,
            )
        try:
            body = request.read_body(int(length), BODY_SECONDS)
        except TimeoutError:
            return _Reply(408, f"the body did not arrive within {BODY_SECONDS:g}s", media_type, close=True)
        except OSError:
            return _Reply(400, "the connection closed before the whole body arrived", media_type, close=True)
        with self._lock:
            if self._stopping:
                return _Reply(503, "the collector is shutting down", media_type, close=True)
            self._in_flight += 1  # stop() waits for these; requests still uploading are cut off instead
        try:
            return self._accept(body, encoding, media_type)
        finally:
            with self._lock:
                self._in_flight -= 1
                self._lock.notify_all()

    def _refusal(self, request: _Handler) -> _Reply | None:
        """The reply for a request that is not for us: wrong path, method, host or token."""
        path = urlsplit(request.path).path
        if path != TRACES_PATH:
            return _Reply(404, f"no endpoint at {path}; send OTLP traces to POST {TRACES_PATH}", close=True)
        if request.command != "POST":
            return _Reply(405, f"{TRACES_PATH} takes POST only", close=True, headers={"Allow": "POST"})
        if not self.remote and not _is_local_name(_host_name(request.headers.get("Host", ""))):
            # A web page can reach a loopback port through a DNS name it controls ("DNS rebinding");
            # its requests carry that name.
            return _Reply(403, "this collector only answers requests addressed to localhost", close=True)
        scheme, _, given = (request.headers.get("Authorization") or "").strip().partition(" ")
        if self._token is not None and not (
            scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token)
        ):
            return _Reply(
                401,
                "missing or wrong bearer token",
                close=True,
                headers={"WWW-Authenticate": 'Bearer realm="halo-collect"'},
            )
        return None

    def _accept(self, body: bytes, encoding: str, media_type: str) -> _Reply:
        try:
            body = _decompress(body, encoding, self._max_body)
        except _TooLarge:
            return _Reply(413, f"the body decompresses to over {self._max_body:,} bytes", media_type)
        except zlib.error as exc:
            return _Reply(400, f"the body is not valid {encoding} data ({exc})", media_type)
        try:
            decoded = otlp.decode_request(body, media_type)
        except DecodeError as exc:
            return _Reply(400, str(exc), media_type)
        except RecursionError:
            return _Reply(400, "the request nests values too deeply", media_type)
        lines, trace_ids, errors = [], set(), decoded.errors
        for span in decoded.spans:
            try:
                lines.append(otlp.span_line(span))
            except orjson.JSONEncodeError as exc:
                errors.append(f"span {span['span_id']}: {exc}")
                continue
            trace_ids.add(span["trace_id"])
        if not self._enqueue(lines, trace_ids, len(errors)):
            return _Reply(
                503,
                "the collector's buffer is full; retry shortly",
                media_type,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        message = ""
        if errors:
            shown = "; ".join(errors[:3])
            message = f"{len(errors)} spans rejected: {shown[:1000]}" + (" ..." if len(errors) > 3 else "")
        return _Reply(200, body=otlp.encode_response(len(errors), message, media_type), media_type=media_type)

    def _enqueue(self, lines: list[bytes], trace_ids: set[str], rejected: int) -> bool:
        size = sum(len(line) + 1 for line in lines)
        with self._lock:
            if self._closing or any(
                o.held_bytes and o.held_bytes + size > self._buffer_bytes for o in self._outputs
            ):
                return False
            for output in self._outputs:
                output.queue.extend(lines)
                output.queued_bytes += size
            self._counts["spans"] += len(lines)
            self._counts["rejected_spans"] += rejected
            self._trace_ids |= trace_ids
            self._lock.notify_all()
        return True

    # --- flushing -------------------------------------------------------------------------------

    def _flush_loop(self) -> None:
        last_cycle = time.monotonic()
        while True:
            with self._lock:
                if not self._wait_for_flush(last_cycle):
                    return
                taken = [output for output in self._outputs if output.queue]
                for output in taken:
                    output.writing, output.writing_bytes = output.queue, output.queued_bytes
                    output.queue, output.queued_bytes = [], 0
            written = [self._write(output) for output in taken]
            last_cycle = time.monotonic()
            if any(written) and self._on_flush is not None:
                try:
                    self._on_flush(self.stats)
                except Exception:  # noqa: BLE001  (a failing observer must not stop the writing)
                    pass

    def _wait_for_flush(self, last_cycle: float) -> bool:
        """Wait until some output is due for a write; False when closing and all is written. Lock held."""
        while True:
            queued = max((o.queued_bytes for o in self._outputs if o.queue), default=None)
            if queued is None:
                if self._closing:
                    return False
                self._lock.wait()
                continue
            since = time.monotonic() - last_cycle
            due_after = REST_SECONDS if queued >= FLUSH_BYTES or self._closing else self._flush_seconds
            if since >= due_after:
                return True
            self._lock.wait(due_after - since)

    def _write(self, output: _Output) -> bool:
        try:
            output.write(output.writing)
        except Exception as exc:  # noqa: BLE001  (whatever went wrong, keep the lines and try again)
            with self._lock:
                output.queue[:0] = output.writing
                output.queued_bytes += output.writing_bytes
                output.writing, output.writing_bytes = [], 0
                output.error = f"{output.name}: {exc}"
                if self._closing and time.monotonic() >= self._final_deadline:
                    self._give_up(output)
            return False
        with self._lock:
            output.writing, output.writing_bytes, output.error = [], 0, None
            self._counts["flushes"] += 1
        return True

    def _write_file(self, lines: list[bytes]) -> None:
        assert self._out_file is not None
        self._out_file.write(b"\n".join(lines) + b"\n")
        self._out_file.flush()

    def _write_store(self, lines: list[bytes]) -> None:
        assert self.store_path is not None
        with TraceStore.open(self.store_path) as store:
            store.ingest_records(map(orjson.Fragment, lines), source=self._source)

    def _give_up(self, output: _Output) -> None:
        """At shutdown, past the deadline: lines the store would not take go to a JSONL file beside
        it; lines nothing would take are reported lost. Lock held."""
        lost, why = len(output.queue), output.error
        output.error = f"{output.name}: {lost:,} spans could not be written ({why})"
        if output.name == "store" and self.store_path is not None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            rescue = self.store_path.with_name(f"{self.store_path.name}.unflushed-{stamp}.jsonl")
            try:
                rescue.write_bytes(b"\n".join(output.queue) + b"\n")
                output.error = (
                    f"store: still busy at shutdown ({why}); {lost:,} spans are in {rescue}; load "
                    f"them with: halo ingest {rescue} --store {self.store_path}"
                )
            except OSError as exc:
                output.error += f"; nor to {rescue}: {exc}"
        output.queue, output.queued_bytes = [], 0

    # --- counters -------------------------------------------------------------------------------

    def _count(self, **increments: int) -> None:
        with self._lock:
            for key, n in increments.items():
                self._counts[key] += n

    def _stats(self) -> CollectorStats:
        pending = max((o.pending for o in self._outputs), default=0)
        errors = "; ".join(o.error for o in self._outputs if o.error)
        return CollectorStats(
            **self._counts, traces=len(self._trace_ids), pending_spans=pending, last_error=errors or None
        )


def serve(
    *,
    store: str | Path | None = None,
    out: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = COLLECT_PORT,
    token: str | None = None,
    allow_remote: bool = False,
    max_body_bytes: int = MAX_BODY_BYTES,
    buffer_bytes: int = BUFFER_BYTES,
    flush_seconds: float = FLUSH_SECONDS,
    on_flush: Callable[[CollectorStats], None] | None = None,
) -> Collector:
    """Start a collector in background threads and return it. Spans go to `store`, to `out` (HALO
    JSONL, appended), or both; with neither, to `store.paths.for_collector(port)`. `port=0` picks a free port
    (see `.url`). Binding a non-loopback `host` needs `allow_remote=True`. With `token`, requests must
    carry `Authorization: Bearer <token>`. `on_flush` gets the counts after each write, from the
    flusher thread."""
    if store is None and out is None:
        store = paths.for_collector(port)
    return Collector(
        store=Path(store) if store is not None else None,
        out=Path(out) if out is not None else None,
        host=host,
        port=port,
        token=token,
        allow_remote=allow_remote,
        max_body_bytes=max_body_bytes,
        buffer_bytes=buffer_bytes,
        flush_seconds=flush_seconds,
        on_flush=on_flush,
    )


# --- HTTP ---------------------------------------------------------------------------------------


@dataclass
class _Reply:
    status: int
    message: str = ""
    media_type: str = otlp.JSON
    close: bool = False  # the body was not read, so the connection cannot carry another request
    headers: dict[str, str] | None = None
    body: bytes | None = None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: exporters reuse one connection for many requests
    server_version = "halo-collect"
    sys_version = ""
    timeout = IDLE_SECONDS
    server: _Server

    def answer(self) -> None:
        self.server.collector.handle(self)

    do_POST = do_GET = do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = answer

    def read_body(self, length: int, seconds: float) -> bytes:
        """Read `length` bytes, within `seconds` in all (a client trickling bytes is cut off too)."""
        deadline = time.monotonic() + seconds
        chunks, remaining = [], length
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError
            chunk = self.rfile.read1(min(remaining, 1 << 20))
            if not chunk:
                raise ConnectionError
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def send(self, reply: _Reply) -> None:
        body = (
            reply.body
            if reply.body is not None
            else (otlp.encode_status(reply.message, reply.media_type) if self.command != "HEAD" else b"")
        )
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.media_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (reply.headers or {}).items():
                self.send_header(name, value)
            if reply.close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)
            if reply.close:
                self._linger()
        except OSError:
            self.close_connection = True  # the client went away; nothing to tell it

    def _linger(self) -> None:
        """Read and drop what the client still sends (a body we refused) before closing, for a
        moment: closing with unread data resets the connection, and the client may then never see
        the reply."""
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_WR)
        self.connection.settimeout(LINGER_SECONDS)
        deadline = time.monotonic() + LINGER_SECONDS
        while time.monotonic() < deadline and self.rfile.read1(1 << 16):
            pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Requests the stdlib cannot parse (a TLS hello, random bytes, a huge header) get the same
        # kind of reply as ours, not an HTML page without a status line (its HTTP/0.9 fallback).
        self.request_version = self.protocol_version
        self.server.collector._count(failed_requests=1)
        self.send(_Reply(code, message or HTTPStatus(code).phrase, close=True))

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the collector reports counts, not a line per request


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # many exporters may connect at once
    daemon_threads = True

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, collector: Collector) -> None:
        self.address_family = family
        self.collector = collector
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer would look up the host's DNS name here, which can stall for seconds offline.
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """End idle keep-alive connections, whose threads would otherwise wait out IDLE_SECONDS."""
        with self._connections_lock:
            for connection in self._connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class _TooLarge(Exception):
    pass


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Inflate a gzip (all members) or zlib body, refusing to produce more than `limit` bytes, so a
    small "zip bomb" cannot take the memory."""
    if encoding == "identity":
        return body
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    out = bytearray()
    data = body
    while data:
        inflater = zlib.decompressobj(wbits)
        out += inflater.decompress(data, limit + 1 - len(out))
        if len(out) > limit:
            raise _TooLarge
        if not inflater.eof:
            raise zlib.error("the compressed data is truncated")
        data = inflater.unused_data if encoding == "gzip" else b""
    return bytes(out)


def _bind_address(host: str) -> tuple[socket.AddressFamily, str]:
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise CollectError(f"cannot resolve host {host!r}: {exc}") from exc
    return family, str(sockaddr[0])


def _is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address.split("%")[0]).is_loopback


def _host_name(header: str) -> str:
    """The host part of a Host header (`localhost:4318`, `[::1]:4318`)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]")[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _is_local_name(name: str) -> bool:
    if name.rstrip(".") == "localhost" or name.rstrip(".").endswith(".localhost"):
        return True
    try:
        return _is_loopback(name)
    except ValueError:
        return False


__all__ = [
    "COLLECT_PORT",
    "TRACES_PATH",
    "CollectError",
    "Collector",
    "CollectorStats",
    "serve",
]
