"""`halo collect`: a local OTLP/HTTP receiver that puts what agents export into a store and/or a JSONL
file, and never loses a span it has acknowledged.

Durable before acknowledged. OTLP exporters never send a batch again once it got 200, so a request is
answered 200 only when its spans are in the spool's write-ahead log and fsynced. Requests arriving
together share one write and one fsync (group commit), so the log costs little throughput. Each
output (the store, the `--out` file) has a thread that copies the log to it in cycles and then
records, in the spool, how far it got; log files every output has passed are deleted. A collector
that was killed replays, when it starts again with the same outputs, what they had not confirmed:
the store merges a span it gets twice, and lines already in the `--out` file (and a torn last line)
are recognised, so neither gets duplicates.

Refusing rather than dropping. While an output is failing (its last write failed: the store locked
by another process past `lock_timeout`, a full or read-only disk) or is more than `backlog_bytes`
behind, and while the spool cannot be written, requests get 503 with `Retry-After`, which exporters
retry. The spool is a folder of its own (default: per store/out pair in the user cache; `spool=`,
`--spool`), so spans accepted before an output failed wait where they can be written, and the
collector refuses to start when it cannot write there.

DuckDB lets one process write a store at a time and no other process open it meanwhile, so the
collector never holds the store open: each cycle opens it, ingests and closes it, and then rests, so
that `halo stats` and friends can open it between cycles.

Credentials in received spans (API keys, tokens, passwords; `halo_rlm.scrub`) are replaced by
`[REDACTED]` before anything is written, the log included; `keep_secrets=True` keeps them.

The receiving rules do not depend on HTTP. `Collector.receive` takes a request body and its headers
and returns a `Reply(status, headers, body)`; `Collector.refuse` answers from the headers alone, before
a body is read. `serve()` puts the standard library's HTTP server in front of a collector (adding what
is HTTP's: path, method, Host, Content-Length, time limits); another transport can call the same
methods, e.g. a Starlette route (`receive` waits for the fsync: call it from a worker thread):

    collector = Collector(store="traces.duckdb")
    reply = collector.receive(body, content_type=..., content_encoding=..., authorization=...)
    collector.stop()

    with serve(store="traces.duckdb", port=0) as collector:
        ...  # export to collector.traces_url
    collector.stats.spans
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import io
import ipaddress
import os
import socket
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
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
from halo_rlm.scrub import lines_to_scrub, may_hold_secrets, scrub_span
from halo_rlm.store import StoreError, TraceStore, paths
from halo_rlm.utils import cache_dir, first_line

TRACES_PATH = "/v1/traces"
MAX_BODY_BYTES = 32 << 20  # per request, both as sent and decompressed
BACKLOG_BYTES = 256 << 20  # accepted spans an output has not taken yet (they wait in the log); beyond, 503
FLUSH_SECONDS = 1.0  # how long accepted spans wait for an output when few arrive
# A write to the store costs 0.3-0.4 CPU-seconds however few spans it carries (10 spans, on a busy
# 2-core machine: opening the store, planning the normalising statement, the rollups, the checkpoint),
# which a store written every second pays every second. The log already holds the spans durably, so
# an output rests at least this many times as long as its last write took, and its writes grow with
# the load: it is at work a quarter of the time at most, unless it falls FLUSH_BYTES behind.
# (`rest_per_write=0` writes every `flush_seconds` whatever a write costs: spans show sooner.)
REST_PER_WRITE = 3.0
# Write sooner once an output is this far behind (about 130,000 agent spans: the 0.3-0.4 CPU-seconds a
# write costs whatever it carries, most of it DuckDB planning the normalising statement, are then
# 3 us a span or less)...
FLUSH_BYTES = 96 << 20
REST_SECONDS = 0.25  # ...but always leave the store closed this long between cycles, for readers
CYCLE_BYTES = 128 << 20  # the most one cycle copies from the log to an output
SEGMENT_BYTES = 64 << 20  # the log starts a new file past this size, so passed files can be deleted
LOCK_SECONDS = 5.0  # how long a cycle waits for a store another process holds; then the store is failing
HEADER_SECONDS = 30.0  # a request's headers must arrive within this of its first byte
BODY_SECONDS = 30.0  # a request body must arrive within this of its headers
IDLE_SECONDS = 60.0  # a connection silent this long between requests is closed
LINGER_SECONDS = 1.0  # after refusing a body, how long to drain it so the client reads the reply
RETRY_AFTER_SECONDS = 1
FINAL_FLUSH_SECONDS = 30.0  # at shutdown, keep trying failing outputs this long; the rest stays spooled
MEDIA_TYPES = {
    "application/x-protobuf": otlp.PROTOBUF,
    "application/protobuf": otlp.PROTOBUF,
    "application/json": otlp.JSON,
}

Position = tuple[int, int]  # (log file number, byte offset in it)


class CollectError(Exception):
    """The collector cannot start as asked; the message says why."""


@dataclass(frozen=True)
class CollectorStats:
    """Counters since the collector started."""

    requests: int = 0  # export requests accepted (200)
    failed_requests: int = 0  # answered with an error status (busy ones included)
    busy_requests: int = 0  # answered 503: an output was failing or behind, or the spool unwritable
    spans: int = 0  # spans accepted (durable in the spool)
    traces: int = 0  # distinct trace ids among them
    rejected_spans: int = 0  # bad spans inside accepted requests (reported back as partial success)
    replayed_spans: int = 0  # spans found in the spool at start, accepted by an earlier run
    pending_spans: int = 0  # accepted (or replayed) but not yet in every output
    flushes: int = 0  # writes to an output
    last_error: str | None = None  # why an output or the spool is failing (after stop: what is still spooled)


@dataclass(frozen=True)
class Reply:
    """An answer to an export request, for any transport to send: an HTTP status, headers (the
    Content-Type among them) and the body (an OTLP response or a `google.rpc.Status`)."""

    status: int
    headers: dict[str, str]
    body: bytes


def _failure(
    status: int, message: str, media_type: str = otlp.JSON, headers: dict[str, str] | None = None
) -> Reply:
    """A failed request's reply: `message` as a `google.rpc.Status` in the request's media type."""
    return Reply(
        status, {"Content-Type": media_type, **(headers or {})}, otlp.encode_status(message, media_type)
    )


class Collector:
    """Receives OTLP trace requests (`receive`) and writes their spans to a store and/or a JSONL file
    through a write-ahead log in `spool`. `listen()` (or `serve()`) adds an HTTP server; `stop()` (or
    leaving a `with` block) stops accepting, finishes the requests under way and writes everything
    accepted that the outputs will take within its timeout; the rest stays in the spool for the next
    start. An output is written `flush_seconds` after its last write, or, when that write took long,
    `rest_per_write` times as long after it."""

    def __init__(
        self,
        *,
        store: str | Path | None = None,
        out: str | Path | None = None,
        spool: str | Path | None = None,
        token: str | None = None,
        keep_secrets: bool = False,
        max_body_bytes: int = MAX_BODY_BYTES,
        backlog_bytes: int = BACKLOG_BYTES,
        flush_seconds: float = FLUSH_SECONDS,
        rest_per_write: float = REST_PER_WRITE,
        lock_timeout: float = LOCK_SECONDS,
        segment_bytes: int = SEGMENT_BYTES,
        on_flush: Callable[[CollectorStats], None] | None = None,
    ) -> None:
        if store is None and out is None:
            raise CollectError("give a store, an output file, or both")
        # a DuckDB file, or a ClickHouse store's URL (`chdb:…`, `clickhouse://…`)
        self.store_path: Path | str | None = (
            None if store is None else str(store) if paths.is_url(str(store)) else Path(store).absolute()
        )
        self.out_path = Path(out).absolute() if out is not None else None
        self.spool = (
            Path(spool).absolute() if spool is not None else default_spool(self.store_path, self.out_path)
        )
        self.max_body_bytes, self.keep_secrets = max_body_bytes, keep_secrets
        self.url = self.traces_url = ""  # set by listen()
        self.remote = False
        self._token = token.encode() if token else None
        self._backlog_bytes = backlog_bytes
        self._flush_seconds, self._rest_per_write = flush_seconds, rest_per_write
        self._lock_timeout = lock_timeout
        self._on_flush = on_flush
        self._lock = threading.Condition()
        self._report_lock = threading.Lock()  # one on_flush call at a time
        self._counts = dict.fromkeys(
            ("requests", "failed_requests", "busy_requests", "spans", "rejected_spans", "flushes"), 0
        )
        self._trace_ids: set[str] = set()
        self._in_flight = 0
        self._stopping = self._closing = self._closed = False
        self._final_deadline = 0.0
        self._spool_error: str | None = None
        self._server: _Server | None = None
        self._serving: threading.Thread | None = None
        outputs: list[_Output] = []
        if self.out_path is not None:
            outputs.append(_FileOutput(self.out_path))
        if self.store_path is not None:
            try:  # fail now, not at the first write, if it is not a store
                TraceStore.open(self.store_path).close()
            except StoreError as exc:
                raise CollectError(str(exc)) from exc
            outputs.append(_StoreOutput(self.store_path))
        self._spool_lock = _lock_spool(self.spool)
        try:
            self._log, self._outputs = self._open_spool(outputs, segment_bytes)
        except BaseException:
            self._spool_lock.close()
            raise
        self._log.on_commit = self._committed
        if not keep_secrets:
            lines_to_scrub([b""])  # loads its regex engine now rather than during the first request
        self._replayed = max((o.behind_spans for o in self._outputs), default=0)
        self._threads = [
            threading.Thread(target=self._deliver_loop, args=(o,), name=f"halo-collect-{o.name}", daemon=True)
            for o in self._outputs
        ]
        for thread in self._threads:
            thread.start()

    # --- public ---------------------------------------------------------------------------------

    @property
    def stats(self) -> CollectorStats:
        with self._lock:
            return self._stats()

    def refuse(
        self,
        *,
        content_type: str | None,
        content_encoding: str | None = None,
        authorization: str | None = None,
        length: int | None = None,
    ) -> Reply | None:
        """The reply for a request refused on its headers alone (token, media type, encoding, a
        declared length over `max_body_bytes`), so a transport need not read its body; else None."""
        media_type = MEDIA_TYPES.get((content_type or "").split(";")[0].strip().lower())
        scheme, _, given = (authorization or "").strip().partition(" ")
        if self._token is not None and not (
            scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token)
        ):
            return _failure(
                401,
                "missing or wrong bearer token",
                media_type or otlp.JSON,
                {"WWW-Authenticate": 'Bearer realm="halo-collect"'},
            )
        if media_type is None:
            return _failure(
                415,
                f"Content-Type must be application/x-protobuf or application/json, not "
                f"{content_type if content_type is not None else 'missing'!r}",
            )
        encoding = (content_encoding or "identity").strip().lower()
        if encoding not in ("identity", "gzip", "deflate"):
            return _failure(
                415, f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none", media_type
            )
        if length is not None and length > self.max_body_bytes:
            return _failure(
                413, f"the body is {length:,} bytes; the limit is {self.max_body_bytes:,}", media_type
            )
        return None

    def receive(
        self,
        body: bytes,
        *,
        content_type: str | None,
        content_encoding: str | None = None,
        authorization: str | None = None,
    ) -> Reply:
        """Answer one OTLP/HTTP export request (`POST /v1/traces`) from its body and headers: 200 once
        its spans are durable in the spool (with partial success for bad spans), 503 with Retry-After
        while they cannot be taken, or the error for a bad request. Thread-safe; blocks for the fsync."""
        answer = self.refuse(
            content_type=content_type,
            content_encoding=content_encoding,
            authorization=authorization,
            length=len(body),
        )
        if answer is None:
            media_type = MEDIA_TYPES[(content_type or "").split(";")[0].strip().lower()]
            encoding = (content_encoding or "identity").strip().lower()
            with self._lock:
                stopping = self._stopping
                if not stopping:
                    self._in_flight += 1  # stop() waits for these
            if stopping:
                answer = _busy("the collector is shutting down", media_type)
            else:
                try:
                    answer = self._accept(body, encoding, media_type)
                finally:
                    with self._lock:
                        self._in_flight -= 1
                        self._lock.notify_all()
        self._count__failure(answer.status)
        return answer

    def listen(
        self,
        host: str = "127.0.0.1",
        port: int = COLLECT_PORT,
        *,
        allow_remote: bool = False,
        header_seconds: float = HEADER_SECONDS,
        body_seconds: float = BODY_SECONDS,
        idle_seconds: float = IDLE_SECONDS,
    ) -> Self:
        """Serve `POST /v1/traces` over HTTP on `host:port` (`port=0`: any free port; see `.url`).
        Binding a non-loopback `host` needs `allow_remote`. A request's headers must arrive within
        `header_seconds` of its first byte and its body within `body_seconds` of its headers;
        a connection idle `idle_seconds` between requests is closed."""
        family, address = _bind_address(host)
        remote = not _is_loopback(address)
        if remote and not allow_remote:
            raise CollectError(
                f"{host} accepts connections from other machines; pass --allow-remote to "
                "bind it (and --token, so only your agents can send spans)"
            )
        limits = _Limits(header_seconds, body_seconds, idle_seconds)
        try:
            self._server = _Server((address, port), family, self, limits)
        except OSError as exc:
            raise CollectError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        self.remote = remote
        bound_port = self._server.server_address[1]
        shown = "127.0.0.1" if address == "0.0.0.0" else "::1" if address == "::" else address
        self.url = f"http://{f'[{shown}]' if ':' in shown else shown}:{bound_port}"
        self.traces_url = self.url + TRACES_PATH
        for output in self._outputs:
            if isinstance(output, _StoreOutput):
                output.source = f"otlp:{self.traces_url}"
        self._serving = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="halo-collect", daemon=True
        )
        self._serving.start()
        return self

    def stop(self, timeout: float = FINAL_FLUSH_SECONDS) -> CollectorStats:
        """Stop accepting, finish the requests whose body has arrived (others are cut off, never
        acknowledged), write what the outputs take within `timeout` seconds, and return the final
        counts. What an output did not take stays in the spool (`stats.last_error` says so) and is
        written when a collector next starts with the same outputs and spool."""
        with self._lock:
            if self._closed:
                return self._stats()
            self._closed = self._stopping = True
            self._lock.wait_for(lambda: self._in_flight == 0)
        if self._server is not None:
            self._server.shutdown()
            self._server.close_connections()
            self._server.server_close()
        with self._lock:
            self._closing = True
            self._final_deadline = time.monotonic() + timeout
            self._lock.notify_all()
        for thread in self._threads:
            thread.join()
        with self._lock:
            self._spool_error = None  # from here on, last_error says what is still spooled
            behind = [o for o in self._outputs if o.behind_bytes > 0]
            if behind:
                names = " and the ".join(o.name for o in behind)
                why = "; ".join(o.error for o in behind if o.error) or "not written in time"
                self._spool_error = (
                    f"{max(o.behind_spans for o in behind):,} spans are not yet in the {names} ({why}); "
                    f"they are kept in the spool {self.spool} and written when the collector next "
                    "starts with the same outputs"
                )
        if not behind:
            self._log.clear()  # the cursors stay: the --out file's size in them guards the next start
        self._log.close()
        self._spool_lock.close()
        return self.stats

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- accepting --------------------------------------------------------------------------------

    def _accept(self, body: bytes, encoding: str, media_type: str) -> Reply:
        try:
            body = _decompress(body, encoding, self.max_body_bytes)
        except _TooLarge:
            return _failure(413, f"the body decompresses to over {self.max_body_bytes:,} bytes", media_type)
        except zlib.error as exc:
            return _failure(400, f"the body is not valid {encoding} data ({exc})", media_type)
        try:
            decoded = otlp.request_lines(body, media_type)
        except DecodeError as exc:
            return _failure(400, str(exc), media_type)
        except RecursionError:
            return _failure(400, "the request nests values too deeply", media_type)
        lines, errors = decoded.lines, decoded.errors
        # A protobuf body holds the lines' texts as they are (`verbatim`) in a third of their bytes:
        # searched first, most requests need no search of their lines.
        if not self.keep_secrets and (not decoded.verbatim or may_hold_secrets(body)):
            # Rarely any: the line is read back rather than every span kept as a dict for this. Times
            # are text in it, which the scrubber leaves alone as it does the numbers they were.
            for i in lines_to_scrub(lines):
                lines[i] = orjson.dumps(scrub_span(orjson.loads(lines[i])))
        data = b"\n".join(lines) + b"\n" if lines else b""
        busy = self._busy(len(data))
        if busy:
            return _busy(busy, media_type)
        if data:
            try:
                self._log.append(data, len(lines))
            except OSError as exc:
                with self._lock:
                    self._spool_error = f"spool: cannot write {self.spool}: {exc.strerror or exc}"
                return _busy(f"the collector cannot write its spool ({exc.strerror or exc})", media_type)
        with self._lock:
            self._spool_error = None
            self._counts["spans"] += len(lines)
            self._counts["rejected_spans"] += len(errors)
            self._trace_ids.update(decoded.trace_ids)
        message = ""
        if errors:
            shown = "; ".join(errors[:3])
            message = f"{len(errors)} spans rejected: {shown[:1000]}" + (" ..." if len(errors) > 3 else "")
        body = otlp.encode_response(len(errors), message, media_type)
        return Reply(200, {"Content-Type": media_type}, body)

    def _busy(self, size: int) -> str | None:
        """Why spans cannot be taken now (an output failing, or too far behind), or None."""
        with self._lock:
            for output in self._outputs:
                if output.error:
                    return f"the {output.name} is failing ({output.error}); retry later"
            for output in self._outputs:
                if output.behind_bytes > 0 and output.behind_bytes + size > self._backlog_bytes:
                    return f"the {output.name} is {output.behind_bytes:,} bytes behind; retry shortly"
        return None

    def _committed(self, size: int, spans: int) -> None:
        """The log took `size` bytes holding `spans` spans: every output now has them to write."""
        with self._lock:
            for output in self._outputs:
                output.behind_bytes += size
                output.behind_spans += spans
            self._lock.notify_all()

    # --- writing the outputs ----------------------------------------------------------------------

    def _deliver_loop(self, output: _Output) -> None:
        last_cycle = time.monotonic()
        while True:
            with self._lock:
                if not self._wait_for_cycle(output, last_cycle):
                    return
            written = self._deliver(output)
            last_cycle = time.monotonic()
            if written and self._on_flush is not None:
                # a failing observer must not stop the writing
                with self._report_lock, contextlib.suppress(Exception):
                    self._on_flush(self.stats)

    def _wait_for_cycle(self, output: _Output, last_cycle: float) -> bool:
        """Wait until `output` is due for a write; False when closing and it has all (or the time
        is up). Lock held."""
        while True:
            if self._closing and (output.behind_bytes <= 0 or time.monotonic() >= self._final_deadline):
                return False
            if output.behind_bytes <= 0:
                self._lock.wait()
                continue
            since = time.monotonic() - last_cycle
            if self._closing or output.behind_bytes >= FLUSH_BYTES:
                due_after = REST_SECONDS
            else:
                due_after = max(self._flush_seconds, self._rest_per_write * output.write_seconds)
            if since >= due_after:
                return True
            self._lock.wait(due_after - since)

    def _deliver(self, output: _Output) -> bool:
        """One cycle: copy what `output` has not got from the log to it, then record how far it got."""
        position, pieces, size = output.position, [], 0
        while size < CYCLE_BYTES:
            data, position = self._log.read(position, CYCLE_BYTES - size)
            if not data:
                break
            pieces.append(data)
            size += len(data)
        if not pieces:
            return False
        data = b"".join(pieces)
        with self._lock:
            lock_timeout = self._lock_timeout
            if self._closing:
                lock_timeout = max(0.0, min(lock_timeout, self._final_deadline - time.monotonic()))
        started = time.monotonic()
        try:
            output.write(data, lock_timeout)
        except Exception as exc:  # noqa: BLE001  (whatever went wrong, the log keeps the spans: try again)
            with self._lock:
                output.error = f"{output.name}: {first_line(exc)}"
            return False
        output.write_seconds = time.monotonic() - started
        output.position = position
        saved = output.save(self.spool)  # if it cannot be saved, a restart writes these again
        with self._lock:
            output.behind_bytes -= size
            output.behind_spans -= data.count(b"\n")
            output.error = None
            if not saved:
                self._spool_error = f"spool: cannot record the {output.name}'s progress in {self.spool}"
            self._counts["flushes"] += 1
            oldest = min(o.position[0] for o in self._outputs)
        self._log.trim(oldest)
        return True

    # --- the spool ------------------------------------------------------------------------------

    def _open_spool(self, outputs: list[_Output], segment_bytes: int) -> tuple[_Log, list[_Output]]:
        """Read the spool an earlier run left (its log and each output's position in it), check it
        belongs to these outputs, and start a new log file; a spool that cannot be written is an error."""
        targets = {"store": _text(self.store_path), "out": _text(self.out_path)}
        recorded_path = self.spool / "outputs.json"
        try:
            recorded = orjson.loads(recorded_path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            recorded = None
        for output in outputs:
            output.load(self.spool)
        log = _Log(self.spool, segment_bytes, floor=max((o.position[0] for o in outputs), default=0))
        if recorded is not None and recorded != targets:
            if log.count_after((0, 0))[1]:
                owner = " and ".join(f"{key} {value}" for key, value in recorded.items() if value)
                raise CollectError(
                    f"the spool {self.spool} holds spans for the {owner} that may not be written yet; "
                    "start the collector with those outputs to write them, or give another --spool"
                )
            log.clear()  # another pair of outputs' spool, with nothing left in it: start afresh
            for output in outputs:
                output.position = (log.active, 0)
        try:
            _write_atomically(recorded_path, orjson.dumps(targets))
            log.start()
        except OSError as exc:
            log.close()
            raise CollectError(
                f"cannot write the spool {self.spool}: {exc.strerror or exc}; give a writable folder "
                "with --spool (on another disk than the store, ideally)"
            ) from exc
        for output in outputs:
            output.resume(log)
            output.save(self.spool)  # where it starts, before it writes (`_FileOutput.resume`)
            output.behind_bytes, output.behind_spans = log.count_after(output.position)
        return log, outputs

    # --- counters -------------------------------------------------------------------------------

    def _count__failure(self, status: int) -> None:
        with self._lock:
            self._counts["requests" if status == 200 else "failed_requests"] += 1
            self._counts["busy_requests"] += status == 503

    def _stats(self) -> CollectorStats:
        errors = [o.error for o in self._outputs if o.error]
        if self._spool_error:
            errors.append(self._spool_error)
        return CollectorStats(
            **self._counts,
            traces=len(self._trace_ids),
            replayed_spans=self._replayed,
            pending_spans=max((max(o.behind_spans, 0) for o in self._outputs), default=0),
            last_error="; ".join(errors) or None,
        )


def serve(
    *,
    store: str | Path | None = None,
    out: str | Path | None = None,
    spool: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = COLLECT_PORT,
    token: str | None = None,
    allow_remote: bool = False,
    keep_secrets: bool = False,
    max_body_bytes: int = MAX_BODY_BYTES,
    backlog_bytes: int = BACKLOG_BYTES,
    flush_seconds: float = FLUSH_SECONDS,
    rest_per_write: float = REST_PER_WRITE,
    lock_timeout: float = LOCK_SECONDS,
    segment_bytes: int = SEGMENT_BYTES,
    header_seconds: float = HEADER_SECONDS,
    body_seconds: float = BODY_SECONDS,
    idle_seconds: float = IDLE_SECONDS,
    on_flush: Callable[[CollectorStats], None] | None = None,
) -> Collector:
    """Start a collector with an HTTP server in background threads and return it. Spans go to
    `store`, to `out` (HALO JSONL, appended), or both; with neither, to `store.paths.for_collector(port)`.
    `spool` holds the write-ahead log (default: `default_spool`). `port=0` picks a free port (see
    `.url`). Binding a non-loopback `host` needs `allow_remote=True`. With `token`, requests must
    carry `Authorization: Bearer <token>`. `on_flush` gets the counts after each write to an output,
    from that output's thread. The other settings are `Collector`'s and `Collector.listen`'s."""
    if store is None and out is None:
        store = paths.for_collector(port)
    collector = Collector(
        store=store,
        out=out,
        spool=spool,
        token=token,
        keep_secrets=keep_secrets,
        max_body_bytes=max_body_bytes,
        backlog_bytes=backlog_bytes,
        flush_seconds=flush_seconds,
        rest_per_write=rest_per_write,
        lock_timeout=lock_timeout,
        segment_bytes=segment_bytes,
        on_flush=on_flush,
    )
    try:
        return collector.listen(
            host,
            port,
            allow_remote=allow_remote,
            header_seconds=header_seconds,
            body_seconds=body_seconds,
            idle_seconds=idle_seconds,
        )
    except BaseException:
        collector.stop(timeout=0)
        raise


def default_spool(store: Path | str | None, out: Path | None) -> Path:
    """The spool a collector writing `store` and/or `out` uses unless told: one per pair of
    outputs in the user cache, so a restarted collector finds what the last one left."""
    key = hashlib.sha256(f"{_text(store)}\n{_text(out)}".encode()).hexdigest()[:16]
    return cache_dir() / "collect-spool" / key


# --- the write-ahead log --------------------------------------------------------------------------


@dataclass
class _Append:
    data: bytes
    spans: int
    done: bool = False
    error: OSError | None = None


class _Log:
    """The spool's write-ahead log: JSONL files `wal-<n>.jsonl` (HALO's span lines), appended to
    with group commit: a thread that finds others' data waiting writes and fsyncs it with its own."""

    def __init__(self, directory: Path, segment_bytes: int, *, floor: int = 0) -> None:
        self.directory, self.segment_bytes = directory, segment_bytes
        self._state = threading.Lock()  # guards sizes and the waiting list
        self._write_lock = threading.Lock()  # held by the thread writing (the others' data too)
        self._waiting: list[_Append] = []
        self.sizes: dict[int, int] = {}  # file number → bytes written and synced (whole lines), oldest first
        for path in sorted(directory.glob("wal-*.jsonl")):
            number = path.name.removeprefix("wal-").removesuffix(".jsonl")
            if number.isascii() and number.isdecimal():
                # An earlier run may have died in a write: a torn last line was never acknowledged.
                self.sizes[int(number)] = _whole_lines(path)
        self.sizes = dict(sorted(self.sizes.items()))
        self.active = max([*self.sizes, floor])
        self._fd: int | None = None
        self.on_commit: Callable[[int, int], None] = lambda size, spans: None

    def start(self) -> None:
        """Open a new file for this run's spans (proving the spool is writable)."""
        with self._write_lock:
            self._next_file()

    def append(self, data: bytes, spans: int) -> None:
        """Write `data` (whole lines) and fsync it, together with what other threads append meanwhile;
        raise OSError if it did not reach the disk."""
        entry = _Append(data, spans)
        with self._state:
            self._waiting.append(entry)
        with self._write_lock:
            if not entry.done:
                with self._state:
                    batch, self._waiting = self._waiting, []
                self._commit(batch)
        if entry.error is not None:
            raise entry.error

    def _commit(self, batch: list[_Append]) -> None:
        data = b"".join(entry.data for entry in batch)
        start = 0
        try:
            if self._fd is None:
                self._next_file()
            assert self._fd is not None
            start = self.sizes[self.active]
            _write_all(self._fd, data)
            os.fsync(self._fd)
        except OSError as exc:
            self._abandon(start)
            for entry in batch:
                entry.error, entry.done = exc, True
            return
        with self._state:
            self.sizes[self.active] = start + len(data)
        for entry in batch:
            entry.done = True
        self.on_commit(len(data), sum(entry.spans for entry in batch))
        if start + len(data) >= self.segment_bytes:
            try:
                self._next_file()
            except OSError:
                self._close_file()  # the next append tries again

    def _abandon(self, start: int) -> None:
        """After a failed write or fsync: cut what it may have left and never append to that file
        again (after a failed fsync the kernel's copy cannot be trusted). If the cut fails too, a
        restart may replay those unacknowledged lines: a duplicate at worst, merged by the store."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            if start == 0:  # it holds nothing acknowledged: do not leave an empty file per failure
                with contextlib.suppress(OSError):
                    (self.directory / f"wal-{self.active:012d}.jsonl").unlink()
                with self._state:
                    self.sizes.pop(self.active, None)
        self._close_file()

    def _next_file(self) -> None:
        number = self.active + 1
        path = self.directory / f"wal-{number:012d}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            _fsync_directory(self.directory)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._close_file()
        self._fd = fd
        with self._state:
            self.active, self.sizes[number] = number, 0

    def _close_file(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def read(self, position: Position, limit: int) -> tuple[bytes, Position]:
        """Whole lines after `position` from one file, about `limit` bytes at most (a longer line
        whole), and the position after them; nothing when there is nothing more."""
        number, offset = position
        with self._state:
            for current, size in self.sizes.items():
                if current < number:
                    continue
                if current > number:
                    number, offset = current, 0
                if offset < size:
                    break
            else:
                return b"", position
        with open(self.directory / f"wal-{number:012d}.jsonl", "rb") as file:
            file.seek(offset)
            data = file.read(min(limit, size - offset))
            if not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1
                data = data[:cut] if cut else data + file.readline()
        return data, (number, offset + len(data))

    def lines_after(self, position: Position, limit: int) -> Iterator[tuple[bytes, Position]]:
        """Each line after `position` (without its newline) and the position after it, up to
        about `limit` bytes."""
        read = 0
        while read < limit:
            data, after = self.read(position, limit - read)
            if not data:
                return
            number, offset = after[0], after[1] - len(data)
            for line in data[:-1].split(b"\n"):
                offset += len(line) + 1
                yield line, (number, offset)
            position, read = after, read + len(data)

    def count_after(self, position: Position) -> tuple[int, int]:
        """Bytes and lines in the log after `position`."""
        size = lines = 0
        while True:
            data, position = self.read(position, 16 << 20)
            if not data:
                return size, lines
            size, lines = size + len(data), lines + data.count(b"\n")

    def trim(self, before: int) -> None:
        """Delete the files numbered below `before`: every output has passed them."""
        with self._state:
            passed = [n for n in self.sizes if n < before and n != self.active]
            for number in passed:
                del self.sizes[number]
        for number in passed:
            (self.directory / f"wal-{number:012d}.jsonl").unlink(missing_ok=True)

    def clear(self) -> None:
        """Delete every file (numbering carries on): every output has everything."""
        with self._write_lock:
            self._close_file()
            with self._state:
                numbers, self.sizes = list(self.sizes), {}
            for number in numbers:
                # if it cannot go, a restart reads it again; the outputs merge or skip what they have
                with contextlib.suppress(OSError):
                    (self.directory / f"wal-{number:012d}.jsonl").unlink(missing_ok=True)

    def close(self) -> None:
        with self._write_lock:
            self._close_file()


# --- outputs --------------------------------------------------------------------------------------


class _Output:
    """One destination of the log, with its position in the log (kept in the spool as
    `cursor-<name>.json`) and how far it is behind."""

    name: str

    def __init__(self) -> None:
        self.position: Position = (0, 0)
        self.behind_bytes = self.behind_spans = 0
        self.error: str | None = None  # why the last write failed
        self.write_seconds = 0.0  # how long the last successful write took

    def write(self, data: bytes, lock_timeout: float) -> None:
        """Write these whole lines durably, or raise."""
        raise NotImplementedError

    def cursor(self) -> dict[str, Any]:
        return {"file": self.position[0], "offset": self.position[1]}

    def load(self, spool: Path) -> None:
        try:
            saved = orjson.loads((spool / f"cursor-{self.name}.json").read_bytes())
            self.position = (int(saved["file"]), int(saved["offset"]))
            self.restore(saved)
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            self.position = (0, 0)  # never written: all of the log is for it

    def restore(self, saved: dict[str, Any]) -> None:
        """Read what `cursor()` added to the saved position."""

    def resume(self, log: _Log) -> None:
        """At start, before the first write: make up for a write an earlier run may have left half done."""

    def save(self, spool: Path) -> bool:
        try:
            _write_atomically(spool / f"cursor-{self.name}.json", orjson.dumps(self.cursor()))
        except OSError:
            return False
        return True


class _StoreOutput(_Output):
    name = "store"

    def __init__(self, path: Path | str) -> None:
        super().__init__()
        self.path = path
        self.source = "otlp:halo-collect"  # names the spans' input in the store; listen() adds the URL

    def write(self, data: bytes, lock_timeout: float) -> None:
        # A span the store gets twice (a replay after a crash) is merged with the first copy.
        with TraceStore.open(self.path, lock_timeout=lock_timeout, appends=True) as store:
            store.ingest_lines(data, source=self.source)


class _FileOutput(_Output):
    name = "file"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.size: int | None = None  # the file's size after our last confirmed write
        self.torn: int | None = None  # a failed write may have left bytes past this size

    def write(self, data: bytes, lock_timeout: float) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            start = os.fstat(fd).st_size
            if self.torn is not None and start > self.torn:
                os.ftruncate(fd, self.torn)
                start = self.torn
            self.torn = start  # until this write is synced, the next one first cuts what it left
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.torn, self.size = None, start + len(data)

    def cursor(self) -> dict[str, Any]:
        return {**super().cursor(), "size": self.size}

    def restore(self, saved: dict[str, Any]) -> None:
        self.size = saved.get("size") if isinstance(saved.get("size"), int) else None

    def resume(self, log: _Log) -> None:
        """An earlier run may have written lines and died before recording it: lines past the
        recorded size that are the log's next lines are skipped, and a torn one is cut. Anything
        else there was written by someone else and is left alone."""
        if self.size is None:
            # Nothing recorded yet: the file's end now is where this spool's lines start. The caller
            # records it before the first write, so a run killed after that write but before recording
            # it is recognised too (without it, the next start wrote those lines a second time).
            try:
                self.size = self.path.stat().st_size
            except FileNotFoundError:
                self.size = 0
            except OSError:
                pass  # the first write will tell
            return
        try:
            with open(self.path, "rb") as file:
                file.seek(self.size)
                extra = file.read(CYCLE_BYTES + 1)
        except OSError:
            return
        if not extra:
            return
        *whole, torn = extra.split(b"\n")
        matched, position = 0, self.position
        expected = log.lines_after(self.position, len(extra) + (1 << 20))
        for line in whole:
            logged = next(expected, None)
            if logged is None or logged[0] != line:
                return
            matched, position = matched + len(line) + 1, logged[1]
        if torn:
            logged = next(expected, None)
            if logged is None or not logged[0].startswith(torn):
                return
            try:
                os.truncate(self.path, self.size + matched)
            except OSError:
                self.torn = self.size + matched
        self.position, self.size = position, self.size + matched


# --- HTTP -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Limits:
    header_seconds: float
    body_seconds: float
    idle_seconds: float


class _DeadlineSocket(io.RawIOBase):
    """A connection's reading end with a deadline for the whole of a request's headers (or body),
    not just for each read, so a client trickling a byte at a time is cut off too."""

    def __init__(self, connection: socket.socket, limits: _Limits) -> None:
        self.connection, self.limits = connection, limits
        self.deadline: float | None = None
        self.header_deadline_on_data = True  # the next data starts a request: its headers get a deadline

    def expect_request(self) -> None:
        self.deadline, self.header_deadline_on_data = None, True

    def expect_body(self) -> None:
        self.deadline, self.header_deadline_on_data = time.monotonic() + self.limits.body_seconds, False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.deadline is None:
            self.connection.settimeout(self.limits.idle_seconds)
        else:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request took too long to arrive")
            self.connection.settimeout(min(left, self.limits.idle_seconds))
        received = self.connection.recv_into(buffer)
        if received and self.header_deadline_on_data:
            self.deadline = time.monotonic() + self.limits.header_seconds
            self.header_deadline_on_data = False
        return received


@dataclass
class _HttpReply:
    reply: Reply
    close: bool = False  # the body was not read (or the collector is stopping): end the connection


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: exporters reuse one connection for many requests
    server_version = "halo-collect"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.reader = _DeadlineSocket(self.connection, self.server.limits)
        self.rfile = io.BufferedReader(self.reader)

    def handle_one_request(self) -> None:
        self.reader.expect_request()
        super().handle_one_request()

    def parse_request(self) -> bool:
        try:
            return super().parse_request()
        except TimeoutError:
            seconds = self.server.limits.header_seconds
            self.send_error(408, f"the request headers did not arrive within {seconds:g}s")
            return False

    def answer(self) -> None:
        self.reader.expect_body()
        self.send(self._answer())

    do_POST = do_GET = do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = answer

    def _answer(self) -> _HttpReply:
        collector = self.server.collector
        refused = self._refusal()
        if refused is not None:
            collector._count__failure(refused.status)
            return _HttpReply(refused, close=True)
        length = self._content_length()
        if isinstance(length, Reply):
            collector._count__failure(length.status)
            return _HttpReply(length, close=True)
        content_type, encoding = self.headers.get("Content-Type"), self.headers.get("Content-Encoding")
        authorization = self.headers.get("Authorization")
        refused = collector.refuse(
            content_type=content_type, content_encoding=encoding, authorization=authorization, length=length
        )
        if refused is not None:
            collector._count__failure(refused.status)
            return _HttpReply(refused, close=True)
        media_type = MEDIA_TYPES[(content_type or "").split(";")[0].strip().lower()]
        try:
            body = self._read_body(length)
        except TimeoutError:
            answer = _failure(
                408, f"the body did not arrive within {self.server.limits.body_seconds:g}s", media_type
            )
            collector._count__failure(answer.status)
            return _HttpReply(answer, close=True)
        except OSError:
            answer = _failure(400, "the connection closed before the whole body arrived", media_type)
            collector._count__failure(answer.status)
            return _HttpReply(answer, close=True)
        answer = collector.receive(
            body, content_type=content_type, content_encoding=encoding, authorization=authorization
        )
        return _HttpReply(answer, close=collector._stopping)

    def _refusal(self) -> Reply | None:
        """The reply for a request that is not for us: wrong path, method or host."""
        path = urlsplit(self.path).path
        if path != TRACES_PATH:
            return _failure(404, f"no endpoint at {path}; send OTLP traces to POST {TRACES_PATH}")
        if self.command != "POST":
            return _failure(405, f"{TRACES_PATH} takes POST only", headers={"Allow": "POST"})
        if not self.server.collector.remote and not _is_local_name(_host_name(self.headers.get("Host", ""))):
            # A web page can reach a loopback port through a DNS name it controls ("DNS rebinding");
            # its requests carry that name.
            return _failure(403, "this collector only answers requests addressed to localhost")
        return None

    def _content_length(self) -> int | Reply:
        """The body's length, or the reply to a request whose length is missing or ambiguous (two
        different lengths, or a length beside Transfer-Encoding, are how requests are smuggled past
        proxies: refused whole)."""
        lengths = self.headers.get_all("Content-Length") or []
        if self.headers.get_all("Transfer-Encoding"):
            if lengths:
                return _failure(400, "Transfer-Encoding and Content-Length together are ambiguous; send one")
            return _failure(411, "a Content-Length header is required (chunked bodies are not accepted)")
        values = {value.strip() for header in lengths for value in header.split(",")}
        if not values:
            return _failure(411, "a Content-Length header is required")
        if len(values) > 1:
            return _failure(400, f"conflicting Content-Length headers: {', '.join(sorted(values))[:100]}")
        (value,) = values
        if not (value.isascii() and value.isdecimal()):
            return _failure(400, f"Content-Length must be a number of bytes, not {value[:40]!r}")
        return int(value)

    def _read_body(self, length: int) -> bytes:
        chunks, remaining = [], length
        while remaining:
            chunk = self.rfile.read1(min(remaining, 1 << 20))
            if not chunk:
                raise ConnectionError
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def send(self, answer: _HttpReply) -> None:
        body = answer.reply.body if self.command != "HEAD" else b""
        try:
            self.send_response(answer.reply.status)
            for name, value in answer.reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            if answer.close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)
            if answer.close:
                self._linger()
        except OSError:
            self.close_connection = True  # the client went away; nothing to tell it

    def _linger(self) -> None:
        """Read and drop what the client still sends (a body we refused) before closing, for a
        moment: closing with unread data resets the connection, and the client may then never see
        the reply."""
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_WR)
        self.reader.deadline = time.monotonic() + LINGER_SECONDS
        self.reader.header_deadline_on_data = False
        try:
            while self.rfile.read1(1 << 16):
                pass
        except OSError:
            pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Requests the stdlib cannot parse (a TLS hello, random bytes, a huge header) get the same
        # kind of reply as ours, not an HTML page without a status line (its HTTP/0.9 fallback).
        self.request_version = self.protocol_version
        self.server.collector._count__failure(code)
        self.send(_HttpReply(_failure(code, message or HTTPStatus(code).phrase), close=True))

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the collector reports counts, not a line per request


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # many exporters may connect at once
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], family: socket.AddressFamily, collector: Collector, limits: _Limits
    ) -> None:
        self.address_family = family
        self.collector, self.limits = collector, limits
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

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client that went away is no news
            super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """End idle keep-alive connections, whose threads would otherwise wait out the idle time."""
        with self._connections_lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


# --- helpers --------------------------------------------------------------------------------------


def _busy(message: str, media_type: str) -> Reply:
    return _failure(503, message, media_type, {"Retry-After": str(RETRY_AFTER_SECONDS)})


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


def _lock_spool(spool: Path) -> io.BufferedRandom:
    """Create the spool and hold its lock file for this process's life; one collector per spool."""
    try:
        spool.mkdir(parents=True, exist_ok=True)
        lock = open(spool / "lock", "a+b")  # noqa: SIM115  (closed by stop(), which releases the lock)
    except OSError as exc:
        raise CollectError(
            f"cannot use the spool {spool}: {exc.strerror or exc}; give a writable folder with --spool"
        ) from exc
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        lock.close()
        raise CollectError(
            f"another collector is using the spool {spool} (the same outputs); stop it, or give "
            "this one other outputs or --spool"
        ) from exc
    return lock


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _whole_lines(path: Path) -> int:
    """The size of a file up to the end of its last whole line."""
    with open(path, "rb") as file:
        end = file.seek(0, os.SEEK_END)
        while end > 0:
            start = max(0, end - (1 << 16))
            file.seek(start)
            newline = file.read(end - start).rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            end = start
    return 0


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _fsync_directory(directory: Path) -> None:
    """Make a file created in `directory` survive a crash of the machine, not just of the process."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _text(path: Path | str | None) -> str | None:
    return str(path) if path is not None else None


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
    "Reply",
    "default_spool",
    "serve",
]
