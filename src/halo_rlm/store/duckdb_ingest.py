"""Filling a DuckDB store: files (`TraceStore.ingest`) and records a collector or importer has already
parsed (`TraceStore.ingest_records`).

An input loads in transactions (one, unless it is read in batches and longer than `commit_bytes`):
each commits its spans, its rejects, the merging of duplicate spans (same trace and span id), the
orphan flags and rollups of every trace its spans belong to, and the input's row in `inputs`
together or not at all. A reader never sees spans without their traces. Until its last commit the
input is marked `partial` with the offset and line its committed spans end at: an interrupted ingest
leaves the store as its last commit left it, and the next ingest reads on from there (or, for a file
that changed, compressed data or stdin, reads it again whole), so no span is lost or doubled.
One transaction per input would be simpler, but DuckDB holds an open transaction's appended rows
partly outside its memory limit: on the batch roads peak memory grew with the input (1.6 GB for
1 GB of flat spans, 2.3 GB of OTLP); chunks of `commit_bytes` bound it.

An input takes one of four roads (`InputReport.road`, and `road_reason` when it is not the first
choice), all ending in the same normalising SQL (`duckdb_sql`):

- `bulk`: a file of flat spans on disk loads in one statement that DuckDB spreads over every core;
- `lines`: flat spans HALO reads itself, in batches (compressed, stdin, UTF-16/32, the new tail of a
  grown file, or a file the bulk statement refused, e.g. for a bad line); lines the SQL does not read
  as flat spans go through the Python decoders, so every good line is kept and every bad one becomes a
  reject with its line number;
- `decoded`: formats only the Python decoders read (OTLP/JSON, OpenInference span JSON, Langfuse,
  TRAIL): decoded line by line, the flat spans then normalised by the same SQL;
- `document`: a file that is one JSON document (a pretty-printed OTLP request, a JSON array of spans,
  a Langfuse trace download).

On the batch roads the store works on one batch on a thread of its own while the next is read.
"""

from __future__ import annotations

import io
import json
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import duckdb
import numpy as np
import orjson
import pyarrow as pa

from halo_rlm import files
from halo_rlm.defaults import COMMIT_BYTES
from halo_rlm.formats import decode
from halo_rlm.store import duckdb_sql
from halo_rlm.store.base import StrictError
from halo_rlm.store.duckdb_udfs import Tally
from halo_rlm.store.results import IngestReport, InputReport, Progress
from halo_rlm.utils import first_line

__all__ = ["Ingest", "Reject"]

DOCUMENT_LIMIT = 1 << 30  # a single JSON document (not JSONL) is parsed whole; refuse beyond this
NOT_TRACE_DATA_AFTER = 1000  # stop reading a file whose first N records all fail
EXCERPT_BYTES = 200
BATCHES_PER_STATEMENT = 4  # batches normalised by one statement: DuckDB spreads them over its threads
# On the decoded road Python's decoding, not the statement, sets the pace, and decoded batches are
# what the process holds most of: half as many per statement kept 1 GB of OTLP under 1 GB of memory.
DECODED_BATCHES_PER_STATEMENT = 2
IN_FLIGHT = 1  # statements queued for the store while the next batch is read (more only costs memory)
HEAD_BYTES = 65536

# One row per touched trace, in the column order of `schema.TRACE_COLUMNS`. The root span is the
# earliest span without a parent (then the earliest orphan; spans without a start last), ties by span
# id, so every backend picks the same one. Costs are rounded to 9 decimals: float sums added in another
# order (another backend, another plan) then give the same number. Input and output previews keep
# their first 400 characters, cut before they are aggregated: a whole value in every group's state
# ran a 100,000-trace ingest out of its memory limit.
_ROOT = "{'orphan_or_child': parent_id IS NOT NULL, 'no_start': start_ns IS NULL, 'start': start_ns, 'span': span_id}"
_FIRST = "{'start': start_ns, 'span': span_id}"
ROLLUP_SQL = f"""
INSERT INTO traces
SELECT
  trace_id, count(*), count(*) FILTER (kind = 'LLM'), count(*) FILTER (kind = 'TOOL'),
  count(*) FILTER (status = 'ERROR'), bool_or(status = 'ERROR'),
  min(start_ns), max(coalesce(end_ns, start_ns)), max(coalesce(end_ns, start_ns)) - min(start_ns),
  arg_min(span_id, {_ROOT}), arg_min(name, {_ROOT}), arg_min(status_message, {_ROOT}),
  list_sort(list_distinct(list(service))), list_sort(list_distinct(list(agent_name))),
  list_sort(list_distinct(list(model))), list_sort(list_distinct(list(tool_name))),
  sum(input_tokens) FILTER (kind = 'LLM'), sum(output_tokens) FILTER (kind = 'LLM'),
  sum(total_tokens) FILTER (kind = 'LLM'), sum(cache_read_tokens) FILTER (kind = 'LLM'),
  sum(reasoning_tokens) FILTER (kind = 'LLM'), round(sum(cost) FILTER (kind = 'LLM'), 9),
  arg_min(session_id, {_FIRST}) FILTER (session_id IS NOT NULL AND start_ns IS NOT NULL),
  arg_min(user_id, {_FIRST}) FILTER (user_id IS NOT NULL AND start_ns IS NOT NULL),
  count(*) FILTER (is_orphan), count(*) FILTER (end_ns IS NULL), sum(raw_bytes),
  coalesce(arg_min(left(input_value, 400), {_FIRST}) FILTER (parent_id IS NULL AND input_value IS NOT NULL),
           arg_min(left(input_value, 400), {_FIRST}) FILTER (input_value IS NOT NULL)),
  coalesce(arg_max(left(output_value, 400), {_FIRST}) FILTER (parent_id IS NULL AND output_value IS NOT NULL),
           arg_max(left(output_value, 400), {_FIRST}) FILTER (output_value IS NOT NULL),
           arg_max(left(output_messages ->> '$[#-1].content', 400), {_FIRST})
             FILTER (kind = 'LLM' AND output_messages IS NOT NULL)),
  coalesce(list_sort(list_distinct(list(error_template) FILTER (status = 'ERROR' AND error_template IS NOT NULL))),
           []::VARCHAR[])
FROM spans
WHERE trace_id IN (SELECT trace_id FROM touched WHERE hash(trace_id) % $buckets = $bucket)
GROUP BY trace_id
"""
# Spans per rollup statement at most: the touched traces are rolled up in buckets of about this many
# spans, so the aggregate's state (lists, texts) fits the ingest's memory limit beside the input's
# uncommitted rows (100,000 traces in one statement ran out of it).
ROLLUP_SPANS = 200_000


@dataclass
class Reject:
    line_no: int
    reason: str
    excerpt: bytes | str


class Connection(Protocol):
    """What an ingest needs of the store: its path and connections (the DuckDB store is one)."""

    path: str
    con: duckdb.DuckDBPyConnection

    @property
    def tally(self) -> Tally: ...  # what the normalising SQL has passed so far, per input

    def transaction(self) -> AbstractContextManager[None]: ...

    def cursor(self) -> Connection: ...

    def first_row(self, sql: str, params: Any = None) -> tuple[Any, ...] | None: ...

    def close(self) -> None: ...


class Ingest:
    """One ingest into a writable store, made by `TraceStore.ingest` and `TraceStore.ingest_records`.

    `strict` stops at the first bad record (StrictError) instead of keeping it as a reject;
    `batch_bytes` sizes the batches of the batch roads, where a line over `max_line_bytes` is a
    reject, and the input read that way commits every `commit_bytes` (what came before a stop stays
    committed); `bulk=False` never loads a file in one statement; a load in one statement reports its
    progress every `progress_every` seconds."""

    def __init__(
        self,
        store: Connection,
        *,
        strict: bool = False,
        batch_bytes: int = files.BATCH_BYTES,
        max_line_bytes: int = files.MAX_LINE_BYTES,
        bulk: bool = True,
        progress_every: float = 0.2,
        commit_bytes: int = COMMIT_BYTES,
    ) -> None:
        self.store = store
        self.progress_every = progress_every
        self.strict = strict
        self.batch_bytes = batch_bytes
        self.commit_bytes = commit_bytes
        self.max_line_bytes = max_line_bytes
        self.bulk = bulk

    def load_files(
        self,
        paths: Sequence[str | Path],
        progress: Callable[[files.InputFile], Progress | None] | None = None,
    ) -> IngestReport:
        report = IngestReport(self.store.path)
        for inp in files.resolve(paths):
            started = time.perf_counter()
            result = self._ingest_input(inp, progress(inp) if progress else None, report)
            result.seconds = time.perf_counter() - started
            report.inputs.append(result)
        return report

    def load_records(self, records: Iterable[Any], source: str) -> IngestReport:
        report = IngestReport(self.store.path)
        result = InputReport(source, "ingested", road="lines")
        input_id = self._new_input(files.InputFile(source), compression=None)
        lines = (orjson.dumps(record) for record in records)
        with _Load(self, input_id, result, report, None) as load:
            for chunk in _chunks(_numbered(lines), self.batch_bytes):
                load.lines(chunk)
            load.finish("complete", offset=0, line=0)
        report.inputs.append(result)
        return report

    def load_lines(self, data: bytes, source: str) -> IngestReport:
        """JSON lines in memory, read as a file's lines are (Arrow arrays cut from the buffer, a
        statement per `BATCHES_PER_STATEMENT` batches) rather than record by record; the input's row
        is the one `load_records` makes."""
        report = IngestReport(self.store.path)
        result = InputReport(source, "ingested", road="lines")
        input_id = self._new_input(files.InputFile(source), compression=None)
        with _Load(self, input_id, result, report, None) as load:
            self._load_lines(io.BytesIO(data), True, _Resume(), load, python_first=False)
            load.finish("complete", offset=0, line=0)
        report.inputs.append(result)
        return report

    # --- one input --------------------------------------------------------------------------

    def _ingest_input(
        self, inp: files.InputFile, progress: Progress | None, report: IngestReport
    ) -> InputReport:
        result = InputReport(inp.path, "ingested")
        resume = _Resume()
        existing = None if inp.is_stdin else self._input_by_path(inp.path)
        if existing is not None:
            input_id, identity, status, resume_offset, resume_line, old_size = existing
            if identity == inp.identity and status == "complete":
                result.status = "unchanged"
                return result
            grown = inp.size is not None and old_size is not None and inp.size >= old_size
            if grown and resume_offset and self._is_append(inp, input_id):
                result.status = "resumed"
                mid_line = not files.line_ended_before(inp.path, resume_offset)
                counted = files.count_lines(inp.path, resume_offset) + mid_line
                resume = _Resume(
                    resume_offset, counted if resume_line is None else resume_line, mid_line, forget=False
                )
            self.store.con.execute(
                "UPDATE inputs SET identity = ?, size = ?, mtime_ns = ?, status = 'partial' WHERE input_id = ?",
                [inp.identity, inp.size, inp.mtime_ns, input_id],
            )
        else:
            input_id = None
        try:
            stream, compression = files.open_input(inp)
        except files.InputError:
            raise
        if input_id is None:
            input_id = self._new_input(inp, compression)
        final = compression is not None or inp.is_stdin
        # Where a chunk ended is a place to resume only in a plain file, whose byte offsets the next
        # ingest can check (`_is_append`); other inputs interrupted between chunks are read again whole.
        resumable = not final and stream.transcoded is None
        try:
            with _Load(self, input_id, result, report, progress, resume, resumable=resumable) as load:
                self._read(inp, stream, compression, final, resume, load)
        finally:
            if not inp.is_stdin:
                stream.close()
        return result

    def _read(
        self,
        inp: files.InputFile,
        stream: files.InputStream,
        compression: str | None,
        final: bool,
        resume: _Resume,
        load: _Load,
    ) -> None:
        """Choose the road for one input and load it; `load.finish` or `load.fail` ends it."""
        result = load.result
        head = stream.sample(HEAD_BYTES)
        load.kind = files.file_kind(head)
        text = head.removeprefix(files.UTF8_BOM)
        if resume.offset == 0 and not text.strip():
            load.fail(str(stream.damage) if stream.damage else f"not trace data: {files.file_kind(head)}")
            return
        try:
            if resume.offset == 0 and _may_be_document(text):
                data = _read_up_to(stream, DOCUMENT_LIMIT)
                document = _parse_document(data)
                if document is not None:
                    result.road = "document"
                    self._load_document(document, len(data), load)
                    return
                result.road_reason = (
                    "the file starts like one JSON document but is not one: read line by line"
                )
                stream = _Chain(data, stream)  # type: ignore[assignment]
            flat = _starts_with_flat_span(text)
            if flat and resume.offset == 0:
                why_not = self._why_not_bulk(inp, compression, stream)
                if why_not is None:
                    refused = load.bulk(inp)
                    if refused is None:
                        return
                    result.road_reason = refused
                else:
                    result.road_reason = why_not
            result.road = "lines" if flat else "decoded"
            offset, line = self._load_lines(stream, final, resume, load, python_first=not flat)
            load.finish("complete", offset=offset, line=line)
        except files.CorruptInput as exc:  # before any span was read
            load.fail(str(exc))
        except _NotTraceData:
            load.fail(None)

    def _why_not_bulk(
        self, inp: files.InputFile, compression: str | None, stream: files.InputStream
    ) -> str | None:
        """Why a file of flat spans cannot load in one statement (None when it can)."""
        if not self.bulk:
            return "one-statement loads are off (bulk=False)"
        if inp.is_stdin:
            return "standard input is read in batches"
        if compression is not None:
            return f"{compression}-compressed: read in batches"
        if stream.transcoded is not None:
            return f"{stream.transcoded}: read in batches"
        if not _duckdb_reads_as_is(inp.path):
            return "the path looks like a glob pattern or URL to DuckDB: read in batches"
        return None

    def _load_lines(
        self, stream: Any, final: bool, resume: _Resume, load: _Load, *, python_first: bool
    ) -> tuple[int, int]:
        """Queue the lines of `stream` for `load`; returns where reading ended (byte offset, line)."""
        result = load.result
        offset, line = resume.offset, resume.line
        pending: list[files.LineBatch] = []
        size = 0
        reader = files.read_lines(
            stream,
            start_offset=resume.offset,
            start_line=resume.line,
            batch_bytes=self.batch_bytes,
            max_line_bytes=self.max_line_bytes,
            final=final,
            mid_line=resume.mid_line,
        )
        try:
            for item in reader:
                if isinstance(item, files.OversizeLine):
                    load.rejects([_oversize_reject(item, self.max_line_bytes)])
                    continue
                if isinstance(item, files.UnterminatedLine):
                    # A file without a single line break is not being written line by line: read it as it is.
                    batch = _whole_line(item, force=item.offset == 0)
                    if batch is None:
                        result.message = (
                            f"line {item.line_number} is not terminated yet (the file may still be being "
                            "written): left unread until it is"
                        )
                        break
                    item = batch
                pending.append(item)
                size += int(item.lines.nbytes)
                offset, line = item.end_offset, item.end_line
                per_statement = DECODED_BATCHES_PER_STATEMENT if python_first else BATCHES_PER_STATEMENT
                if len(pending) >= per_statement or size >= self.batch_bytes * per_statement:
                    load.lines(pending, python_first=python_first, done=(offset, line))
                    # Once Python reads most lines, it reads them from then on. (The load's verdict lags
                    # a statement behind: taken alone, it sent a decoded input's next statements
                    # through the SQL attempt, 64 MB of OTLP parsed for nothing at ~1 GB of memory.)
                    python_first = python_first or load.python_first
                    pending, size = [], 0
                    load.commit_if_due(offset, line)
        except files.CorruptInput as exc:
            result.message = str(exc)  # the lines before the damage are kept
            if not pending and load.spans_so_far() == 0 and result.rejected == 0:
                raise
        if pending:
            load.lines(pending, python_first=python_first, done=(offset, line))
        return offset, line

    def _load_document(self, document: Any, size: int, load: _Load) -> None:
        """A file holding one JSON document (a pretty-printed OTLP request, a JSON array of spans)."""
        load.result.bytes = size
        try:
            decoded = decode.decode_record(document)
        except decode.DecodeError as exc:
            load.fail(str(exc))
            return
        load.rejects([Reject(1, error, b"") for error in decoded.errors])
        spans = [(1, line) for line in _dumped(decoded.spans, 1, load)]
        for chunk in _chunks(iter(spans), self.batch_bytes):
            load.lines(chunk, python_first=False, done=(size, 0))
        load.finish("complete", offset=size, line=0)

    # --- inputs bookkeeping -------------------------------------------------------------------

    def _input_by_path(self, path: str) -> tuple[Any, ...] | None:
        return self.store.first_row(
            "SELECT input_id, identity, status, resume_offset, resume_line, size FROM inputs WHERE path = ?",
            [path],
        )

    def _new_input(self, inp: files.InputFile, compression: str | None) -> int:
        """The input's row, committed at once: an interrupted ingest leaves it `partial`, which says so."""
        with self.store.transaction():
            input_id = self.store.first_row("SELECT coalesce(max(input_id), 0) + 1 FROM inputs")[0]  # type: ignore[index]
            self.store.con.execute(
                "INSERT INTO inputs VALUES (?, ?, ?, ?, ?, ?, 'partial', 0, 0, NULL, 0, 0, 0, now(), NULL)",
                [input_id, inp.path, inp.identity, inp.size, inp.mtime_ns, compression],
            )
        return int(input_id)

    def _is_append(self, inp: files.InputFile, input_id: int) -> bool:
        """A file that only grew since it was ingested: the bytes before where it ended are unchanged."""
        row = self.store.first_row(
            "SELECT resume_offset, tail_digest FROM inputs WHERE input_id = ?", [input_id]
        )
        return row is not None and row[1] is not None and files.tail_digest(inp.path, row[0]) == row[1]


@dataclass
class _Resume:
    """Where reading starts: a byte offset at a line boundary (or just after an unterminated line that
    was read whole), the lines before it, and whether the input's earlier spans are dropped first."""

    offset: int = 0
    line: int = 0
    mid_line: bool = False
    forget: bool = True


class _NotTraceData(Exception):
    pass


class _Load:
    """The transactions an input loads in, on a connection of its own. Its statements run on a
    thread of their own, in order, while the caller reads the next batch; `commit_if_due` commits
    what was read so far once it is `commit_bytes` of input, with the input still `partial`;
    `finish` (or `fail`) ends the input inside the last transaction and commits. Leaving the `with`
    block any other way (an error, Ctrl-C, `StrictError`) stops the running statement and rolls back
    what the last commit did not cover."""

    def __init__(
        self,
        ingest: Ingest,
        input_id: int,
        result: InputReport,
        report: IngestReport,
        progress: Progress | None,
        resume: _Resume | None = None,
        *,
        resumable: bool = False,
    ) -> None:
        self.ingest = ingest
        self.input_id = input_id
        self.result = result
        self.report = report
        self.progress = progress
        self.resume = resume or _Resume()
        self.python_first = False
        self.finished = False
        self.kind = "JSON"  # what the input looks like (`files.file_kind`), for a refusal's message
        self._spans = 0  # spans inserted so far (counted on the store's thread)
        self.resumable = resumable
        # Where the last commit ended (the input's first byte before one): the next chunk's spans
        # are those after its line (all the input's spans while that is None: nothing was kept).
        self._committed_offset = self.resume.offset
        self._committed_line: int | None = None if self.resume.forget else self.resume.line
        self._committed_repaired = 0
        self._merged = 0  # duplicate spans merged by the commits so far
        self._con: Connection | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="halo-ingest")
        self._queue: deque[Future[Any]] = deque()
        self._lock = threading.Lock()

    # --- the transaction --------------------------------------------------------------------

    def __enter__(self) -> _Load:
        self._con = self.ingest.store.cursor()
        self._call(self._begin)
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        try:
            if kind is None and not self.finished:
                raise RuntimeError("an ingest ended without finishing its input")  # a bug, not input
        finally:
            if kind is not None or not self.finished:
                with _interrupts_deferred():
                    self._abort()
            self._pool.shutdown(wait=True)
            assert self._con is not None
            self._con.close()

    def _begin(self) -> None:
        con = self._db()
        con.execute("BEGIN TRANSACTION")
        # The traces of the spans this load replaces: the input's old spans when it is read again
        # whole, those past where it ended when a grown (or interrupted) file is read on from there.
        after = "" if self.resume.forget else "AND line_no > ?"
        params = [self.input_id] if self.resume.forget else [self.input_id, self.resume.line]
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE touched AS SELECT DISTINCT trace_id FROM spans WHERE input_id = ? {after}",
            params,
        )
        for table in ("spans", "rejects"):
            con.execute(f"DELETE FROM {table} WHERE input_id = ? {after}", params)
        if self.resume.forget:
            con.execute("UPDATE inputs SET repaired = 0 WHERE input_id = ?", [self.input_id])

    def _restart(self) -> None:
        """Roll back what a failed bulk statement left and start the transaction again."""
        self._db().execute("ROLLBACK")
        self._spans = 0
        self._begin()

    def _abort(self) -> None:
        """Stop the running statement and roll back, whatever state the transaction is in."""
        if self._con is not None:
            self._con.con.interrupt()
        for future in self._queue:
            future.cancel()
        self._queue.clear()
        try:
            self._pool.submit(self._rollback).result()
        except Exception:  # noqa: BLE001 - the connection is closed next; nothing was committed
            pass

    def _rollback(self) -> None:
        try:
            self._db().execute("ROLLBACK")
        except duckdb.Error:
            pass  # DuckDB has already rolled back a transaction whose statement failed or was interrupted

    def commit_if_due(self, offset: int, line: int) -> None:
        """Commit the input up to `offset` (the end of line `line`, the last one queued) once that is
        `commit_bytes` past the last commit; the input stays `partial`, resumable from there."""
        if offset - self._committed_offset < self.ingest.commit_bytes:
            return
        self._committed_offset = offset
        path = self.result.path
        digest = files.tail_digest(path, offset) if self.resumable else None
        # The repairs counted so far are those of the lines up to `line`: by the time the store's
        # thread commits, the reading thread may have counted the next statement's.
        self._queued(self._commit_chunk, offset, line, digest, self.result.repaired)

    def _commit_chunk(self, offset: int, line: int, digest: str | None, repaired: int) -> None:
        con = self._db()
        self._merged += _refresh_touched(con, self.input_id, self._committed_line)
        con.execute("DELETE FROM touched")
        self._record_end("partial", offset, line, digest, repaired)
        con.execute("COMMIT")
        self._committed_line = line
        con.execute("BEGIN TRANSACTION")

    def _record_end(
        self, status: str, offset: int, line: int | None, digest: str | None, repaired: int
    ) -> None:
        """Where the input's committed spans end, and its counts (`repaired`: this load's repaired
        lines up to `line`), in its row of `inputs`. Without a digest, the next ingest cannot check
        the input only grew, and reads it again whole."""
        added, self._committed_repaired = repaired - self._committed_repaired, repaired
        self._db().execute(
            "UPDATE inputs SET status = ?, resume_offset = ?, resume_line = ?, tail_digest = ?, "
            "finished_at = CASE WHEN ? = 'partial' THEN NULL ELSE now() END, "
            "spans = (SELECT count(*) FROM spans WHERE spans.input_id = inputs.input_id), "
            "rejected = (SELECT count(*) FROM rejects WHERE rejects.input_id = inputs.input_id), "
            "repaired = repaired + ? WHERE input_id = ?",
            [status, offset, line, digest, status, added, self.input_id],
        )

    # --- work on the store's thread -----------------------------------------------------------

    def _db(self) -> duckdb.DuckDBPyConnection:
        assert self._con is not None
        return self._con.con

    def _call(self, work: Callable[..., Any], *args: Any) -> Any:
        """Run `work` on the store's thread after everything queued, and wait for it."""
        self._drain()
        return self._pool.submit(work, *args).result()

    def _queued(self, work: Callable[..., Any], *args: Any) -> None:
        """Queue `work` on the store's thread; wait only when `IN_FLIGHT` statements are already queued."""
        while len(self._queue) >= IN_FLIGHT:
            self._queue.popleft().result()
        self._queue.append(self._pool.submit(work, *args))

    def _drain(self) -> None:
        while self._queue:
            self._queue.popleft().result()

    def spans_so_far(self) -> int:
        self._drain()
        return self._spans

    # --- what the roads load ------------------------------------------------------------------

    def bulk(self, inp: files.InputFile) -> str | None:
        """Load a whole file of flat spans in one statement, which DuckDB spreads over every core.
        Returns None when it loaded, else why not: anything unusual in the file (a line that is not a
        span, malformed JSON or UTF-8, a line over `duckdb_sql.BULK_OBJECT_BYTES`) rolls the statement
        back, and the caller reads the file in batches. Spans loaded this way have no `line_no`."""
        self.result.road = "bulk"
        size = inp.size or 0
        tally = self.ingest.store.tally
        tally.reset(self.input_id)
        done = self._pool.submit(self._bulk_statement, inp.path)
        try:
            while True:
                try:
                    refused = done.result(timeout=self.ingest.progress_every)
                    break
                except TimeoutError:
                    # DuckDB's own query progress moves in steps of a whole read buffer: the tally
                    # counts the spans (and their bytes) the statement has normalised so far.
                    if self.progress:
                        spans, read = tally.read(self.input_id)
                        self.progress(read, spans)
        except BaseException:
            self._db().interrupt()
            raise
        finally:
            tally.reset(self.input_id)
        if refused is None:
            self.result.bytes = size
            if self.progress:
                self.progress(size, self._spans)
            self.finish("complete", offset=size, line=None)
            return None
        self._call(self._restart)
        return refused

    def _bulk_statement(self, path: str) -> str | None:
        con = self._db()
        try:
            found = con.execute(
                duckdb_sql.BULK_INSERT_SQL, {"input_id": self.input_id, "path": path, "compression": "none"}
            ).fetchall()
        except duckdb.InterruptException:
            raise
        except duckdb.Error as exc:
            return f"the one-statement load stopped ({first_line(exc)}): read in batches"
        missing = con.execute(
            "SELECT count(*) FROM spans WHERE input_id = ? AND (trace_id IS NULL OR span_id IS NULL "
            "OR trace_id = '' OR span_id = '')",
            [self.input_id],
        ).fetchall()[0][0]
        if missing:
            return f"{missing:,} records are not flat spans: read in batches to find them"
        self._spans = int(found[0][0])
        self.result.spans = self._spans
        return None

    def lines(
        self,
        batches: Sequence[files.LineBatch] | Sequence[tuple[int, bytes]],
        *,
        python_first: bool = False,
        done: tuple[int, int | None] | None = None,
    ) -> None:
        """Queue batches of lines (or (line number, JSON bytes) pairs) for normalising; lines the SQL
        does not read as flat spans go through the Python decoders, whose rejects are recorded."""
        if batches and isinstance(batches[0], files.LineBatch):
            line_batches: Sequence[files.LineBatch] = batches  # type: ignore[assignment]
            # One record batch each: DuckDB scans them on several threads.
            table = pa.Table.from_batches(
                [pa.record_batch({"line_no": pa.array(b.line_numbers), "raw": b.lines}) for b in line_batches]
            )
            self.result.repaired += sum(len(b.repaired_lines) for b in line_batches)
        else:
            pairs: Sequence[tuple[int, bytes]] = batches  # type: ignore[assignment]
            table = pa.table(
                {
                    "line_no": pa.array([n for n, _ in pairs], type=pa.int64()),
                    "raw": pa.array(
                        [text.decode("utf-8", "replace") for _, text in pairs], type=pa.large_string()
                    ),
                }
            )
        if done is not None:
            self.result.bytes = done[0] - self.resume.offset if self.resume.offset else done[0]
        if python_first:
            # Decoded here, on the reading thread, while the store's thread loads the batch before;
            # a record batch at a time, so that only one batch's lines are Python objects at once (a
            # table of no rows may have no batch: decoded whole, it gives the empty table).
            decoded = [_decode_batch(batch) for batch in table.to_batches()] or [_decode_batch(table)]
            del table
            self._queued(
                self._load_decoded,
                pa.concat_tables([spans for spans, _ in decoded]),
                [reject for _, rejects in decoded for reject in rejects],
            )
        else:
            self._queued(self._load_lines, table)
        if self.progress:
            self.progress(self.result.bytes, self._spans)

    def _load_lines(self, table: pa.Table) -> None:
        """Normalise a batch in SQL; the lines it does not read as flat spans go to the Python decoders."""
        numbers = table.column("line_no").to_numpy()
        others = table.slice(0, 0)
        if self._insert(table) < len(numbers):
            found = (
                self._db()
                .execute(
                    "SELECT line_no FROM spans WHERE input_id = ? AND line_no BETWEEN ? AND ?",
                    [self.input_id, int(numbers[0]), int(numbers[-1])],
                )
                .fetchnumpy()["line_no"]
            )
            others = table.filter(pa.array(~np.isin(numbers, found)))
        # Most lines needing Python means a non-flat format (e.g. OTLP): skip the SQL attempt from now on.
        with self._lock:
            self.python_first = others.num_rows > len(numbers) // 2
        self._load_decoded(*_decode_batch(others.combine_chunks()))

    def _load_decoded(self, spans: pa.Table, rejects: list[Reject]) -> None:
        """Insert the flat spans the Python decoders made, and record their rejects."""
        if spans.num_rows:
            self._insert(spans)
        self._record_rejects(rejects)
        if self._spans == 0 and self.result.rejected >= NOT_TRACE_DATA_AFTER:
            raise _NotTraceData()

    def _insert(self, batch: pa.Table) -> int:
        """Normalise and insert the flat spans among `batch`'s lines; returns how many there were."""
        con = self._db()
        con.register("batch", batch)
        try:
            inserted = int(con.execute(duckdb_sql.INSERT_SQL, {"input_id": self.input_id}).fetchall()[0][0])
        finally:
            con.unregister("batch")
        self._spans += inserted
        self.result.spans = self._spans
        return inserted

    def rejects(self, rejects: list[Reject]) -> None:
        if rejects:
            self._queued(self._record_rejects, rejects)

    def _record_rejects(self, rejects: list[Reject]) -> None:
        if not rejects:
            return
        if self.ingest.strict:
            first = min(rejects, key=lambda r: r.line_no)
            raise StrictError(f"{self.result.path}:{first.line_no}: {first.reason}")
        table = pa.table(
            {
                "input_id": pa.array([self.input_id] * len(rejects), pa.int32()),
                "path": pa.array([self.result.path] * len(rejects), pa.string()),
                "line_no": pa.array([r.line_no for r in rejects], pa.int64()),
                "reason": pa.array([r.reason for r in rejects], pa.string()),
                "excerpt": pa.array([_excerpt(r.excerpt) for r in rejects], pa.string()),
            }
        )
        con = self._db()
        con.register("new_rejects", table)
        try:
            con.execute("INSERT INTO rejects SELECT * FROM new_rejects")
        finally:
            con.unregister("new_rejects")
        with self._lock:
            self.result.rejected += len(rejects)
            for reject in rejects:
                reason = _reason_key(reject.reason)
                self.report.reject_reasons[reason] = self.report.reject_reasons.get(reason, 0) + 1

    # --- ending the input ---------------------------------------------------------------------

    def finish(self, status: str, *, offset: int, line: int | None) -> None:
        """End the input: merge duplicates, flag orphans, rebuild the rollups of every trace it
        touched, record where it ended, and commit, all in its transaction. An input with no span and
        something wrong (rejects, a message) fails instead."""
        try:
            self._drain()
        except _NotTraceData:
            self._call(self._fail_in_transaction, None)
            return
        if self._spans == 0 and (self.result.rejected or self.result.message) and self.resume.offset == 0:
            self._call(self._fail_in_transaction, self.result.message)
            return
        path = self.result.path
        digest = files.tail_digest(path, offset) if Path(path).is_file() and path != "-" else None
        self.result.duplicates = self._merged + self._call(
            self._finish_in_transaction, status, offset, line, digest
        )
        self.finished = True
        if self.progress:
            self.progress(self.result.bytes, self._spans)

    def fail(self, message: str | None) -> None:
        """End the input as refused whole: what it holds is not trace data. The refusal is kept in
        `rejects` (line 0 stands for the whole file) unless its lines were rejected one by one."""
        try:
            self._drain()
        except _NotTraceData:
            pass
        self._call(self._fail_in_transaction, message)

    def _fail_in_transaction(self, message: str | None) -> None:
        con = self._db()
        if message is None:
            first = con.execute(
                "SELECT line_no, reason FROM rejects WHERE input_id = ? ORDER BY line_no LIMIT 1",
                [self.input_id],
            ).fetchall()
            reason = f"line {first[0][0]}: {first[0][1]}" if first else "no records"
            message = (
                f"not trace data: {reason}"
                if self.kind == "JSON"
                else f"not trace data: found {self.kind} ({reason})"
            )
        self.result.status, self.result.message = "failed", message
        con.execute("DELETE FROM spans WHERE input_id = ?", [self.input_id])
        self._spans = self.result.spans = 0
        if not self.result.rejected:
            self._record_rejects([Reject(0, message, b"")])
        _refresh_touched(con, self.input_id, None)
        con.execute(
            "UPDATE inputs SET status = 'failed', resume_offset = 0, resume_line = 0, spans = 0, rejected = ?, "
            "repaired = ?, finished_at = now() WHERE input_id = ?",
            [self.result.rejected, self.result.repaired, self.input_id],
        )
        con.execute("COMMIT")
        self.finished = True

    def _finish_in_transaction(self, status: str, offset: int, line: int | None, digest: str | None) -> int:
        con = self._db()
        merged = _refresh_touched(con, self.input_id, self._committed_line)
        self._record_end(status, offset, line, digest, self.result.repaired)
        con.execute("COMMIT")
        return merged


def _refresh_touched(con: duckdb.DuckDBPyConnection, input_id: int, after_line: int | None) -> int:
    """Merge duplicates, flag orphans and rebuild the rollups of the traces in `touched` and those the
    input's spans after line `after_line` (all its spans when None) belong to; returns how many
    duplicate spans were merged."""
    after = "" if after_line is None else "AND line_no > ?"
    con.execute(
        f"INSERT INTO touched SELECT DISTINCT trace_id FROM spans WHERE input_id = ? {after} "
        "EXCEPT SELECT trace_id FROM touched",
        [input_id] if after_line is None else [input_id, after_line],
    )
    # Duplicates: keep a finished copy over an in-flight one, then the first ingested (a bulk-loaded
    # file has no line numbers: the raw record decides, so the choice does not vary between runs).
    merged = con.execute("""
        DELETE FROM spans WHERE rowid IN (
          SELECT rid FROM (
            SELECT s.rowid AS rid, row_number() OVER (
              PARTITION BY s.trace_id, s.span_id ORDER BY s.end_ns IS NULL, s.input_id, s.line_no, s.raw) AS rn
            FROM spans s
            SEMI JOIN (SELECT trace_id, span_id FROM spans WHERE trace_id IN (SELECT trace_id FROM touched)
                       GROUP BY ALL HAVING count(*) > 1) d
              ON s.trace_id = d.trace_id AND s.span_id = d.span_id)
          WHERE rn > 1)""").fetchall()
    con.execute("""
        UPDATE spans SET is_orphan = o.orphan
        FROM (SELECT s.rowid AS rid, s.parent_id IS NOT NULL AND p.span_id IS NULL AS orphan, s.is_orphan
              FROM spans s
              LEFT JOIN (SELECT trace_id, span_id FROM spans WHERE trace_id IN (SELECT trace_id FROM touched)) p
                ON p.trace_id = s.trace_id AND p.span_id = s.parent_id
              WHERE s.trace_id IN (SELECT trace_id FROM touched)) o
        WHERE spans.rowid = o.rid AND o.orphan IS DISTINCT FROM o.is_orphan""")
    con.execute("DELETE FROM traces WHERE trace_id IN (SELECT trace_id FROM touched)")
    spans = con.execute(
        "SELECT count(*) FROM spans WHERE trace_id IN (SELECT trace_id FROM touched)"
    ).fetchall()
    buckets = max(1, -(-int(spans[0][0]) // ROLLUP_SPANS))
    for bucket in range(buckets):
        con.execute(ROLLUP_SQL, {"buckets": buckets, "bucket": bucket})
    return int(merged[0][0]) if merged else 0


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Cleaning up after Ctrl-C takes a moment; a second Ctrl-C meanwhile waits for it to end rather
    than breaking it off half-way (the first one is already on its way up)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda number, frame: pressed.append(number))
    except ValueError:  # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _Chain(io.RawIOBase):
    """A stream that first returns `head` (already read) and then the rest."""

    def __init__(self, head: bytes, rest: Any) -> None:
        self.head, self.rest = head, rest

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.head:  # a short read: the head first, on its own
            data = self.head if size < 0 or size >= len(self.head) else self.head[:size]
            self.head = self.head[len(data) :]
            return data
        return self.rest.read(size)

    def close(self) -> None:
        self.rest.close()


def _may_be_document(text: bytes) -> bool:
    """The start of an input that may be one JSON document: it opens an object or array, and neither
    its first line nor any other whole line in it is a JSON value of its own (in JSON Lines, they are)."""
    text = text.lstrip()
    if not text.startswith((b"{", b"[")):
        return False
    lines = text.split(b"\n")
    whole = lines[:-1] if len(lines) > 1 else lines  # the last one may be cut by the sample
    for line in whole:
        stripped = line.strip()
        if stripped.startswith((b"{", b"[")) and _parses(stripped):
            return False
    return True


def _parses(data: bytes) -> bool:
    try:
        orjson.loads(data)
        return True
    except orjson.JSONDecodeError:
        return False


def _read_up_to(stream: Any, limit: int) -> bytes:
    chunks, size = [], 0
    while size <= limit:
        chunk = stream.read(min(16 << 20, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _parse_document(data: bytes) -> Any:
    """The whole input as one JSON value, or None when it is not one (or is over `DOCUMENT_LIMIT`)."""
    if len(data) > DOCUMENT_LIMIT:
        return None
    try:
        return loads(data.removeprefix(files.UTF8_BOM))
    except orjson.JSONDecodeError:
        return None


def _whole_line(line: files.UnterminatedLine, *, force: bool = False) -> files.LineBatch | None:
    """An unterminated last line that is already a whole JSON value (or any, when `force`), as a batch
    of one: a writer that is still writing a line has not finished a value yet. None when it is not whole."""
    text = line.data.rstrip(b"\r")
    if not force and not _parses(text):
        return None
    value = pa.array([text.decode("utf-8", "replace")], type=pa.large_string())
    return files.LineBatch(
        value, np.array([line.line_number]), line.offset + len(line.data), line.line_number, [], []
    )


def loads(raw: bytes | str) -> Any:
    """Parse one JSON record. A record whose keys include `trace_id` and `span_id` at the top is a flat
    span, which the store's SQL reads too: its duplicate keys, if any, are read the way the SQL reads
    them (the first occurrence wins), so a record means the same whichever road it takes."""
    value = orjson.loads(raw)
    if isinstance(value, dict) and "trace_id" in value and "span_id" in value:
        return json.loads(raw, object_pairs_hook=_first_wins)
    return value


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def _decode_batch(batch: pa.RecordBatch | pa.Table) -> tuple[pa.Table, list[Reject]]:
    """`_decode` over a batch of lines (`line_no`, `raw`): the spans as a batch of the same shape.
    The flat JSON goes to Arrow as bytes: orjson writes valid UTF-8, so the cast to text is a check,
    not a copy (a Python str of each would be one more copy of the batch)."""
    numbers, spans, rejects = _decode(
        zip(batch.column("line_no").to_pylist(), batch.column("raw").to_pylist(), strict=True)
    )
    table = pa.table(
        {
            "line_no": pa.array(numbers, type=pa.int64()),
            "raw": pa.array(spans, type=pa.large_binary()).cast(pa.large_string()),
        }
    )
    return table, rejects


def _decode(lines: Iterable[tuple[int, str]]) -> tuple[list[int], list[bytes], list[Reject]]:
    """The Python decoders, for lines DuckDB does not read as flat spans: each span found as flat
    JSON with its line's number, and a reject for each line (or part of one) that is not a span."""
    numbers: list[int] = []
    spans: list[bytes] = []
    rejects: list[Reject] = []
    for line_no, raw in lines:
        if not raw.strip():
            continue
        try:
            obj = loads(raw)
        except (orjson.JSONDecodeError, json.JSONDecodeError, RecursionError) as exc:
            rejects.append(Reject(line_no, _json_error(exc, raw), raw))
            continue
        try:
            decoded = decode.decode_record(obj)
        except decode.DecodeError as exc:
            rejects.append(Reject(line_no, str(exc), raw))
            continue
        rejects.extend(Reject(line_no, error, raw) for error in decoded.errors)
        for span in decoded.spans:
            try:
                spans.append(orjson.dumps(span))
            except TypeError as exc:  # e.g. an integer past 64 bits that the decoders let through
                rejects.append(Reject(line_no, f"span {span.get('span_id')!r} cannot be stored: {exc}", raw))
                continue
            numbers.append(line_no)
    return numbers, spans, rejects


def _dumped(spans: list[dict[str, Any]], line_no: int, load: _Load) -> list[bytes]:
    out = []
    for span in spans:
        try:
            out.append(orjson.dumps(span))
        except TypeError as exc:
            load.rejects([Reject(line_no, f"span {span.get('span_id')!r} cannot be stored: {exc}", b"")])
    return out


def _chunks(pairs: Iterator[tuple[int, bytes]], batch_bytes: int) -> Iterator[list[tuple[int, bytes]]]:
    chunk: list[tuple[int, bytes]] = []
    size = 0
    for pair in pairs:
        chunk.append(pair)
        size += len(pair[1])
        if size >= batch_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _oversize_reject(line: files.OversizeLine, limit: int) -> Reject:
    return Reject(
        line.line_number, f"line of {line.size:,} bytes exceeds the {limit:,}-byte limit", line.head
    )


def _duckdb_reads_as_is(path: str) -> bool:
    """DuckDB's file readers expand glob patterns (`a[b].jsonl` would read `ab.jsonl`) and fetch
    URLs; a path they would read as either is left to the Python reader."""
    return not any(char in path for char in "*?[]{}") and "://" not in path


def _starts_with_flat_span(head: bytes) -> bool:
    """True when the first record (the first whole line that is JSON) is a span in HALO's flat format,
    the one the SQL reads."""
    lines = head.split(b"\n")
    for line in lines[:-1] if len(lines) > 1 else lines:
        try:
            first = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        return isinstance(first, dict) and "trace_id" in first and "span_id" in first
    return False


def _numbered(lines: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    return ((i, line) for i, line in enumerate(lines, start=1))


def _json_error(exc: Exception, raw: str) -> str:
    if isinstance(exc, RecursionError):
        return "invalid JSON: nested too deeply"
    message = str(exc).split(":", 1)[0]
    position = getattr(exc, "pos", 0)
    if position >= len(raw.encode()) - 1 or "unexpected end" in str(exc):
        return f"invalid JSON: {message} (truncated line?)"
    return f"invalid JSON: {message} at character {position}"


def _excerpt(value: bytes | str) -> str:
    data = value.encode("utf-8", "replace") if isinstance(value, str) else value
    return data[:EXCERPT_BYTES].decode("utf-8", "replace")


def _reason_key(reason: str) -> str:
    """Group reasons for the summary: drop positions and the specific keys found."""
    key = reason.split(" at character ")[0].split(" with keys ")[0]
    return key.split(": ", 1)[1] if key.startswith(("[", "resourceSpans", ".data")) and ": " in key else key
