"""Filling a DuckDB store: files (`TraceStore.ingest`) and records a collector or importer has already
parsed (`TraceStore.ingest_records`). After each input, duplicate spans (same trace and span id) are
merged, orphans flagged and the rollups of every trace it touched rebuilt.

A file takes one of three roads, all ending in the same normalising SQL (`duckdb_sql`):

- a file of flat spans loads in one statement that DuckDB spreads over every core (`_bulk_load`);
- a format only the Python decoders read (OTLP/JSON, Phoenix span JSON) is decoded line by line into
  a staging file of flat spans, which then loads the same way (`_ingest_decoded`);
- any other flat file (compressed, on stdin, grown since last time, or with bad lines) streams in
  batches, each committed with the input's resume offset (`_ingest_stream`), so every good line is
  kept, every bad one is reported with its line number, and a killed run carries on where it stopped.

The one-statement roads commit whole or not at all: an interrupted run reads the file again.
"""

from __future__ import annotations

import io
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import duckdb
import numpy as np
import orjson
import pyarrow as pa

from halo_rlm import files
from halo_rlm.formats import decode
from halo_rlm.store import duckdb_sql
from halo_rlm.store.base import StrictError
from halo_rlm.store.results import IngestReport, InputReport, Progress

__all__ = ["Ingest"]

DOCUMENT_LIMIT = 1 << 30  # a single JSON document (not JSONL) is parsed whole; refuse beyond this
NOT_TRACE_DATA_AFTER = 1000  # stop reading a file whose first N records all fail
EXCERPT_BYTES = 200
WRITERS = 2  # batches loaded at once, each on its own connection (one batch is too small for DuckDB to split)

# One row per touched trace, in the column order of `schema.TRACE_COLUMNS`. The root span is the
# earliest span without a parent (then the earliest orphan; spans without a start last), ties by span
# id, so every backend picks the same one. Costs are rounded to 9 decimals: float sums added in another
# order (another backend, another plan) then give the same number.
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
  count(*) FILTER (is_orphan), count(*) FILTER (end_ns IS NULL), sum(raw_bytes)
FROM spans
WHERE trace_id IN (SELECT trace_id FROM touched)
GROUP BY trace_id
"""


@dataclass
class Reject:
    line_no: int
    reason: str
    excerpt: bytes | str


@dataclass
class BatchOutcome:
    spans: int
    rejects: list[Reject]
    python_first: bool  # most lines needed the Python decoders: skip the SQL attempt from now on


class Connection(Protocol):
    """What an ingest needs of the store: its path and connections (the DuckDB store is one)."""

    path: str
    con: duckdb.DuckDBPyConnection
    tally: duckdb_sql.Tally  # what the normalising SQL has passed so far, per input

    def transaction(self) -> AbstractContextManager[None]: ...

    def cursor(self) -> Connection: ...

    def first_row(self, sql: str, params: Any = None) -> tuple[Any, ...] | None: ...

    def interrupt(self) -> None: ...

    def close(self) -> None: ...


class Ingest:
    """One ingest into a writable store, made by `TraceStore.ingest` and `TraceStore.ingest_records`.
    Works on the store's own connection, plus connections of their own for bulk loads and writer threads.

    `strict` stops at the first bad record (StrictError) instead of keeping it as a reject;
    `batch_bytes` sizes the batches of the streaming road, where a line over `max_line_bytes` is a
    reject; `bulk=False` never loads a file in one statement; a load in one statement reports its
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
    ) -> None:
        self.store = store
        self.progress_every = progress_every
        self.strict = strict
        self.batch_bytes = batch_bytes
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
        input_id = self._new_input(files.InputFile(source), compression=None)
        lines = (orjson.dumps(record) for record in records)
        result = InputReport(source, "ingested")
        self._ingest_lines(input_id, _numbered(lines), result, report)
        result.duplicates = self._finish_inputs([input_id], status="complete", offset=0, line=0)
        report.inputs.append(result)
        return report

    def _ingest_input(
        self, inp: files.InputFile, progress: Progress | None, report: IngestReport
    ) -> InputReport:
        result = InputReport(inp.path, "ingested")
        existing = None if inp.is_stdin else self._input_by_path(inp.path)
        start_offset = start_line = 0
        if existing is not None:
            input_id, identity, status, resume_offset, resume_line, old_size = existing
            if identity == inp.identity and status == "complete":
                result.status = "unchanged"
                return result
            grown = inp.size is not None and old_size is not None and inp.size >= old_size
            if status == "partial" or (grown and self._is_append(inp, input_id)):
                # A bulk-loaded file did not count its lines: count them now, to number the new ones.
                start_offset = resume_offset
                start_line = (
                    files.count_lines(inp.path, resume_offset) if resume_line is None else resume_line
                )
                result.status = "resumed"
                with self.store.transaction():  # batches that committed after the first gap are read again
                    for table in ("spans", "rejects"):
                        self.store.con.execute(
                            f"DELETE FROM {table} WHERE input_id = ? AND line_no > ?", [input_id, start_line]
                        )
            else:
                self._forget_input(input_id)
            self.store.con.execute(
                "UPDATE inputs SET identity = ?, size = ?, mtime_ns = ?, status = 'partial' WHERE input_id = ?",
                [inp.identity, inp.size, inp.mtime_ns, input_id],
            )
            if result.status != "resumed":
                self.store.con.execute(
                    "UPDATE inputs SET resume_offset = 0, resume_line = 0, spans = 0, rejected = 0, repaired = 0 "
                    "WHERE input_id = ?",
                    [input_id],
                )
        else:
            input_id = None
        stream, compression = files.open_input(inp)
        if input_id is None:
            input_id = self._new_input(inp, compression)
        try:
            head = stream.read(65536)
            if start_offset == 0 and not head.strip():
                result.status, result.message = "failed", f"not trace data: {files.file_kind(head)}"
                self._finish_inputs([input_id], status="complete", offset=0, line=0)
                return result
            chained = _Chain(head, stream)
            flat = _starts_with_flat_span(head)
            if start_offset == 0 and _is_document(head):
                self._ingest_document(input_id, chained, result, report)
                end_offset, end_line = result.bytes, 0
            elif (
                start_offset == 0
                and compression is None
                and not inp.is_stdin
                and flat
                and self.bulk
                and _duckdb_reads_as_is(inp.path)
                and self._bulk_load(input_id, inp, result, progress)
            ):
                end_offset, end_line = result.bytes, None
            elif start_offset == 0 and not flat and _duckdb_reads_as_is(self._staging_path(input_id)):
                end_offset, end_line = self._ingest_decoded(input_id, chained, result, report, progress)
            else:
                end_offset, end_line = self._ingest_stream(
                    input_id, chained, start_offset, start_line, result, report, progress
                )
        except StrictError:
            raise
        except files.CorruptInput as exc:  # before any span was read
            result.status, result.message = "failed", str(exc)
            self._forget_input(input_id)
            return result
        except _NotTraceData as exc:
            result.status, result.message = "failed", str(exc) or self._not_trace_data(input_id, head)
            self._forget_input(input_id)
            return result
        finally:
            if not inp.is_stdin:
                stream.close()
        if result.spans == 0 and (result.rejected or result.message) and start_offset == 0:
            result.status, result.message = "failed", result.message or self._not_trace_data(input_id, head)
            self._forget_input(input_id)
            return result
        result.duplicates = self._finish_inputs(
            [input_id], status="complete", offset=end_offset, line=end_line
        )
        if compression is None and not inp.is_stdin:
            self.store.con.execute(
                "UPDATE inputs SET tail_digest = ? WHERE input_id = ?",
                [files.tail_digest(inp.path, end_offset), input_id],
            )
        return result

    def _bulk_load(
        self, input_id: int, inp: files.InputFile, result: InputReport, progress: Progress | None
    ) -> bool:
        """Load a whole file of flat spans in one statement, which DuckDB spreads over every core.
        Anything unusual in the file (a line that is not a span, malformed JSON or UTF-8, a line over
        `duckdb_sql.BULK_OBJECT_BYTES`) rolls the statement back and returns False: the caller then
        reads the file line by line, which keeps every good line and reports each bad one. Spans
        loaded this way have no `line_no`."""

        def every_record_is_a_span(loader: Connection) -> bool:
            found = loader.first_row(
                "SELECT count(*) FROM spans WHERE input_id = ? AND (trace_id IS NULL OR "
                "span_id IS NULL OR trace_id = '' OR span_id = '')",
                [input_id],
            )
            return not (found and found[0])

        size = inp.size or 0
        try:
            spans = self._load_in_one_statement(
                duckdb_sql.BULK_INSERT_SQL,
                {"input_id": input_id, "path": inp.path, "compression": "none"},
                input_id,
                progress,
                every_record_is_a_span,
            )
        except duckdb.Error:
            return False
        if spans is None:
            return False
        result.spans, result.bytes = spans, size
        if progress:
            progress(size, spans)
        return True

    def _ingest_decoded(
        self, input_id: int, stream: Any, result: InputReport, report: IngestReport, progress: Progress | None
    ) -> tuple[int, int]:
        """Formats only the Python decoders read (OTLP/JSON, Phoenix span JSON, ...): decode line by
        line into a staging file of flat spans beside the store, then load it in one statement that
        DuckDB spreads over every core. Rejects are recorded as they are found; the spans commit
        together at the end, so an interrupted run reads the file again."""
        staging = Path(self._staging_path(input_id))
        offset = line = staged = 0
        try:
            with staging.open("wb") as out:
                for item in _stop_at_damage(
                    files.read_lines(
                        stream, batch_bytes=self.batch_bytes, max_line_bytes=self.max_line_bytes
                    ),
                    result,
                ):
                    if isinstance(item, files.OversizeLine):
                        rejects = [_oversize_reject(item, self.max_line_bytes)]
                    else:
                        numbers, spans, rejects = _decode(
                            zip(_as_list(item.line_numbers), item.lines.to_pylist(), strict=True)
                        )
                        for number, span in zip(numbers, spans, strict=True):
                            if len(span) < duckdb_sql.BULK_OBJECT_BYTES - 100:
                                out.write(b'{"line":%d,"span":%b}\n' % (number, span))
                                staged += 1
                            else:  # too long for the staging file's reader: on its own, now
                                with self.store.transaction():
                                    result.spans += len(
                                        self._insert(
                                            pa.table(
                                                {
                                                    "line_no": pa.array([number], pa.int64()),
                                                    "raw": pa.array([span.decode()], pa.large_string()),
                                                }
                                            ),
                                            input_id,
                                        )
                                    )
                        offset, line = item.end_offset, item.end_line
                        result.repaired += len(item.repaired_lines)
                    if rejects:
                        with self.store.transaction():
                            self._apply(
                                BatchOutcome(0, self._record_rejects(input_id, rejects, result.path), True),
                                result,
                                report,
                            )
                    result.bytes = offset
                    if progress:
                        progress(offset, staged)
                    if staged == 0 and result.rejected >= NOT_TRACE_DATA_AFTER:
                        raise _NotTraceData()
            if staged:
                loaded = self._load_in_one_statement(
                    duckdb_sql.STAGED_INSERT_SQL, {"input_id": input_id, "path": str(staging)}, input_id
                )
                result.spans += loaded or 0
        finally:
            staging.unlink(missing_ok=True)
        return offset, line

    def _staging_path(self, input_id: int) -> str:
        return f"{self.store.path}.{input_id}.staging.jsonl"

    def _load_in_one_statement(
        self,
        sql: str,
        params: dict[str, Any],
        input_id: int,
        progress: Progress | None = None,
        acceptable: Callable[[Connection], bool] | None = None,
    ) -> int | None:
        """Run one bulk INSERT in a transaction of its own, on a connection of its own so that it can
        report progress (`progress(bytes, spans)` of the lines normalised so far, read from the
        store's tally: DuckDB's own query progress moves in steps of a whole read buffer) and stop at
        Ctrl-C. Returns the rows inserted, or None when `acceptable` turned the result down and it
        was rolled back."""
        loader = self.store.cursor()
        self.store.tally.reset(input_id)
        try:
            loader.con.execute("BEGIN TRANSACTION")
            with ThreadPoolExecutor(1, thread_name_prefix="halo-bulk") as pool:
                done = pool.submit(loader.first_row, sql, params)
                try:
                    while True:
                        try:
                            rows = int(done.result(timeout=self.progress_every)[0])  # type: ignore[index]
                            break
                        except TimeoutError:
                            if progress:
                                spans, size = self.store.tally.read(input_id)
                                progress(size, spans)
                except BaseException:
                    loader.interrupt()
                    raise
            if acceptable is not None and not acceptable(loader):
                loader.con.execute("ROLLBACK")
                return None
            loader.con.execute("COMMIT")
            return rows
        except BaseException:
            loader.con.execute("ROLLBACK")
            raise
        finally:
            self.store.tally.reset(input_id)
            loader.close()

    def _ingest_stream(
        self,
        input_id: int,
        stream: io.RawIOBase,
        start_offset: int,
        start_line: int,
        result: InputReport,
        report: IngestReport,
        progress: Progress | None,
    ) -> tuple[int, int]:
        """Load batches on `WRITERS` connections at once. Each batch commits on its own; the resume
        offset moves past a batch only once every batch before it has committed, so after a crash
        the next run re-reads from the first gap (spans read twice merge as duplicates)."""
        offset, line = start_offset, start_line
        python_first = False
        in_flight: deque[tuple[Future[BatchOutcome], files.LineBatch]] = deque()

        def settle_oldest() -> None:
            nonlocal offset, line, python_first
            future, batch = in_flight.popleft()
            outcome = future.result()
            python_first = outcome.python_first
            self._apply(outcome, result, report)
            result.repaired += len(batch.repaired_lines)
            offset, line = batch.end_offset, batch.end_line
            result.bytes = offset
            self.store.con.execute(
                "UPDATE inputs SET resume_offset = ?, resume_line = ?, rejected = ?, repaired = ? "
                "WHERE input_id = ?",
                [offset, line, result.rejected, result.repaired, input_id],
            )
            if progress:
                progress(offset - start_offset, result.spans)
            if result.spans == 0 and result.rejected >= NOT_TRACE_DATA_AFTER:
                raise _NotTraceData()

        with ThreadPoolExecutor(WRITERS, thread_name_prefix="halo-ingest") as pool:
            try:
                for item in _stop_at_damage(
                    files.read_lines(
                        stream,  # type: ignore[arg-type]  # a readable binary stream
                        start_offset=start_offset,
                        start_line=start_line,
                        batch_bytes=self.batch_bytes,
                        max_line_bytes=self.max_line_bytes,
                    ),
                    result,
                ):
                    if isinstance(item, files.OversizeLine):
                        with self.store.transaction():
                            self._apply(
                                BatchOutcome(
                                    0,
                                    self._record_rejects(
                                        input_id, [_oversize_reject(item, self.max_line_bytes)], result.path
                                    ),
                                    python_first,
                                ),
                                result,
                                report,
                            )
                        continue
                    if len(in_flight) >= WRITERS:
                        settle_oldest()
                    in_flight.append(
                        (
                            pool.submit(
                                self._write_batch,
                                input_id,
                                item.line_numbers,
                                item.lines,
                                result.path,
                                python_first,
                            ),
                            item,
                        )
                    )
                while in_flight:
                    settle_oldest()
            except BaseException:
                for future, _ in in_flight:
                    future.cancel()
                raise
        return offset, line

    def _write_batch(
        self, input_id: int, line_numbers: Any, lines: pa.Array, path: str, python_first: bool
    ) -> BatchOutcome:
        """One batch in one transaction, on a connection of its own (runs in a writer thread)."""
        writer = self.store.cursor()  # sees the message normaliser: DuckDB registers functions database-wide
        try:
            with writer.transaction():
                return Ingest(writer, strict=self.strict)._load_batch(
                    input_id, line_numbers, lines, path, python_first
                )
        finally:
            writer.close()

    def _apply(self, outcome: BatchOutcome, result: InputReport, report: IngestReport) -> None:
        result.spans += outcome.spans
        result.rejected += len(outcome.rejects)
        for reject in outcome.rejects:
            reason = _reason_key(reject.reason)
            report.reject_reasons[reason] = report.reject_reasons.get(reason, 0) + 1

    def _ingest_lines(
        self,
        input_id: int,
        numbered: Iterator[tuple[int, bytes]],
        result: InputReport,
        report: IngestReport,
    ) -> None:
        """Ingest (line number, JSON bytes) pairs in batches; used for decoded documents and records."""
        batch: list[tuple[int, bytes]] = []
        size = 0
        for pair in numbered:
            batch.append(pair)
            size += len(pair[1])
            if size >= self.batch_bytes:
                self._load_pairs(input_id, batch, result, report)
                batch, size = [], 0
        if batch:
            self._load_pairs(input_id, batch, result, report)

    def _load_pairs(
        self, input_id: int, pairs: list[tuple[int, bytes]], result: InputReport, report: IngestReport
    ) -> None:
        numbers = pa.array([n for n, _ in pairs], type=pa.int64())
        lines = pa.array([text.decode("utf-8", "replace") for _, text in pairs], type=pa.large_string())
        with self.store.transaction():
            self._apply(
                self._load_batch(input_id, numbers, lines, result.path, python_first=False), result, report
            )
            self.store.con.execute(
                "UPDATE inputs SET rejected = ? WHERE input_id = ?", [result.rejected, input_id]
            )

    def _ingest_document(
        self, input_id: int, stream: io.RawIOBase, result: InputReport, report: IngestReport
    ) -> None:
        """A file holding one JSON document (a pretty-printed OTLP request, a JSON array of spans)."""
        data = stream.read(DOCUMENT_LIMIT + 1)
        result.bytes = len(data)
        if len(data) > DOCUMENT_LIMIT:
            raise _NotTraceData(
                f"a single JSON document over {DOCUMENT_LIMIT >> 30} GiB; write one record per line (JSONL)"
            )
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise _NotTraceData(
                f"not trace data: {files.file_kind(data[:4096])} that is not valid JSON ({exc})"
            ) from None
        try:
            decoded = decode.decode_record(obj)
        except decode.DecodeError as exc:
            raise _NotTraceData(str(exc)) from exc
        rejects = [Reject(1, error, b"") for error in decoded.errors]
        if rejects:
            with self.store.transaction():
                self._apply(
                    BatchOutcome(0, self._record_rejects(input_id, rejects, result.path), False),
                    result,
                    report,
                )
        self._ingest_lines(input_id, ((1, orjson.dumps(span)) for span in decoded.spans), result, report)

    def _load_batch(
        self, input_id: int, line_numbers: Any, lines: pa.Array, path: str, python_first: bool
    ) -> BatchOutcome:
        """Normalise and insert one batch of lines, in the caller's transaction. Lines DuckDB cannot
        read as flat spans go through the Python decoders."""
        spans = 0
        if python_first:
            others = list(zip(_as_list(line_numbers), lines.to_pylist(), strict=True))
        else:
            inserted = self._insert(pa.table({"line_no": line_numbers, "raw": lines}), input_id)
            spans += len(inserted)
            left = ~np.isin(np.asarray(line_numbers), inserted)
            others = list(
                zip(
                    np.asarray(line_numbers)[left].tolist(),
                    lines.filter(pa.array(left)).to_pylist(),
                    strict=True,
                )
            )
        decoded_numbers, decoded_spans, rejects = _decode(others)
        if decoded_spans:
            spans += len(
                self._insert(
                    pa.table(
                        {
                            "line_no": pa.array(decoded_numbers, type=pa.int64()),
                            "raw": pa.array(
                                [span.decode() for span in decoded_spans], type=pa.large_string()
                            ),
                        }
                    ),
                    input_id,
                )
            )
        # Most lines needing Python means a non-flat format (e.g. OTLP): skip the SQL attempt from now on.
        return BatchOutcome(
            spans, self._record_rejects(input_id, rejects, path), python_first=len(others) > len(lines) // 2
        )

    def _insert(self, batch: pa.Table, input_id: int) -> np.ndarray:
        """Normalise and insert the flat spans among `batch`'s lines; returns their line numbers."""
        self.store.con.register("batch", batch)
        try:
            return self.store.con.execute(duckdb_sql.INSERT_SQL, {"input_id": input_id}).fetchnumpy()[
                "line_no"
            ]
        finally:
            self.store.con.unregister("batch")

    def _record_rejects(self, input_id: int, rejects: list[Reject], path: str) -> list[Reject]:
        if not rejects:
            return rejects
        if self.strict:
            first = min(rejects, key=lambda r: r.line_no)
            raise StrictError(f"{path}:{first.line_no}: {first.reason}")
        table = pa.table(
            {
                "input_id": pa.array([input_id] * len(rejects), pa.int32()),
                "path": pa.array([path] * len(rejects), pa.string()),
                "line_no": pa.array([r.line_no for r in rejects], pa.int64()),
                "reason": pa.array([r.reason for r in rejects], pa.string()),
                "excerpt": pa.array([_excerpt(r.excerpt) for r in rejects], pa.string()),
            }
        )
        self.store.con.register("new_rejects", table)
        try:
            self.store.con.execute("INSERT INTO rejects SELECT * FROM new_rejects")
        finally:
            self.store.con.unregister("new_rejects")
        return rejects

    # --- inputs bookkeeping -------------------------------------------------------------------

    def _not_trace_data(self, input_id: int, head: bytes) -> str:
        """One message for a file with no spans at all: what it looks like, and why its first record
        is not a span."""
        first = self.store.first_row(
            "SELECT line_no, reason FROM rejects WHERE input_id = ? ORDER BY line_no LIMIT 1", [input_id]
        )
        reason = f"line {first[0]}: {first[1]}" if first else "no records"
        kind = files.file_kind(head)
        return f"not trace data: {reason}" if kind == "JSON" else f"not trace data: found {kind} ({reason})"

    def _input_by_path(self, path: str) -> tuple[Any, ...] | None:
        return self.store.first_row(
            "SELECT input_id, identity, status, resume_offset, resume_line, size FROM inputs WHERE path = ?",
            [path],
        )

    def _new_input(self, inp: files.InputFile, compression: str | None) -> int:
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

    def _forget_input(self, input_id: int) -> None:
        with self.store.transaction():
            self.store.con.execute(
                "CREATE OR REPLACE TEMP TABLE touched AS SELECT DISTINCT trace_id FROM spans WHERE input_id = ?",
                [input_id],
            )
            self.store.con.execute("DELETE FROM spans WHERE input_id = ?", [input_id])
            self.store.con.execute("DELETE FROM rejects WHERE input_id = ?", [input_id])
            self._refresh_touched()

    def _finish_inputs(self, input_ids: list[int], *, status: str, offset: int, line: int | None) -> int:
        """Dedupe, flag orphans and rebuild rollups for every trace the inputs touched; returns how
        many duplicate spans were merged."""
        placeholders = ", ".join("?" for _ in input_ids)
        with self.store.transaction():
            self.store.con.execute(
                f"CREATE OR REPLACE TEMP TABLE touched AS SELECT DISTINCT trace_id FROM spans "
                f"WHERE input_id IN ({placeholders})",
                input_ids,
            )
            merged = self._refresh_touched()
            self.store.con.execute(
                f"UPDATE inputs SET status = ?, resume_offset = ?, resume_line = ?, finished_at = now(), "
                f"spans = (SELECT count(*) FROM spans WHERE spans.input_id = inputs.input_id) "
                f"WHERE input_id IN ({placeholders})",
                [status, offset, line, *input_ids],
            )
        return merged

    def _refresh_touched(self) -> int:
        # Duplicates: keep a finished copy over an in-flight one, then the first ingested (a bulk-loaded
        # file has no line numbers: the raw record decides, so the choice does not vary between runs).
        merged = self.store.first_row("""
            DELETE FROM spans WHERE rowid IN (
              SELECT rid FROM (
                SELECT s.rowid AS rid, row_number() OVER (
                  PARTITION BY s.trace_id, s.span_id ORDER BY s.end_ns IS NULL, s.input_id, s.line_no, s.raw) AS rn
                FROM spans s
                SEMI JOIN (SELECT trace_id, span_id FROM spans WHERE trace_id IN (SELECT trace_id FROM touched)
                           GROUP BY ALL HAVING count(*) > 1) d
                  ON s.trace_id = d.trace_id AND s.span_id = d.span_id)
              WHERE rn > 1)""")
        self.store.con.execute("""
            UPDATE spans SET is_orphan = o.orphan
            FROM (SELECT s.rowid AS rid, s.parent_id IS NOT NULL AND p.span_id IS NULL AS orphan, s.is_orphan
                  FROM spans s
                  LEFT JOIN spans p ON p.trace_id = s.trace_id AND p.span_id = s.parent_id
                  WHERE s.trace_id IN (SELECT trace_id FROM touched)) o
            WHERE spans.rowid = o.rid AND o.orphan IS DISTINCT FROM o.is_orphan""")
        self.store.con.execute("DELETE FROM traces WHERE trace_id IN (SELECT trace_id FROM touched)")
        self.store.con.execute(ROLLUP_SQL)
        return int(merged[0]) if merged else 0


class _NotTraceData(Exception):
    pass


def _stop_at_damage(batches: Iterator[Any], result: InputReport) -> Iterator[Any]:
    """Yield batches until the compressed data breaks; the lines before the damage are kept and the
    input's message says where it broke."""
    try:
        yield from batches
    except files.CorruptInput as exc:
        result.message = str(exc)


class _Chain(io.RawIOBase):
    """A stream that first returns `head` (already read, for sniffing) and then the rest."""

    def __init__(self, head: bytes, rest: Any) -> None:
        self.head, self.rest = head, rest

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.head:
            if size < 0:
                data, self.head = self.head + self.rest.read(), b""
                return data
            data, self.head = self.head[:size], self.head[size:]
            if len(data) < size:
                data += self.rest.read(size - len(data))
            return data
        return self.rest.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        # Used only to resume at a byte offset from the start.
        if whence != 0 or self.head == b"":
            raise io.UnsupportedOperation("seek")
        if offset <= len(self.head):
            self.head = self.head[offset:]
            return offset
        skip = offset - len(self.head)
        self.head = b""
        try:
            self.rest.seek(skip, 1)
        except (OSError, io.UnsupportedOperation, AttributeError):
            files.skip(self.rest, skip)
        return offset


def _is_document(head: bytes) -> bool:
    """True when the input is one JSON document rather than one record per line."""
    text = head.lstrip()
    if text.startswith(b"["):
        return True
    if not text.startswith(b"{"):
        return False
    first_line = text.split(b"\n", 1)[0]
    try:
        orjson.loads(first_line)
        return False
    except orjson.JSONDecodeError:
        # A first line that is not a whole object: a pretty-printed document, unless it is just long.
        return (
            b"\n" in text
            and len(first_line) < len(text) - 1
            and first_line.rstrip().endswith((b"{", b"[", b","))
        )


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
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
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


def _oversize_reject(line: files.OversizeLine, limit: int) -> Reject:
    return Reject(
        line.line_number, f"line of {line.size:,} bytes exceeds the {limit:,}-byte limit", line.head
    )


def _duckdb_reads_as_is(path: str) -> bool:
    """DuckDB's file readers expand glob patterns (`a[b].jsonl` would read `ab.jsonl`) and fetch
    URLs; a path they would read as either is left to the Python reader."""
    return not any(char in path for char in "*?[]{}") and "://" not in path


def _starts_with_flat_span(head: bytes) -> bool:
    """True when the first record is a span in HALO's flat format, the one the bulk load reads."""
    try:
        first = orjson.loads(head.lstrip().split(b"\n", 1)[0])
    except orjson.JSONDecodeError:
        return False
    return isinstance(first, dict) and "trace_id" in first and "span_id" in first


def _numbered(lines: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    return ((i, line) for i, line in enumerate(lines, start=1))


def _as_list(values: Any) -> list[int]:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _json_error(exc: orjson.JSONDecodeError, raw: str) -> str:
    message = str(exc).split(":", 1)[0]
    if exc.pos >= len(raw.encode()) - 1 or "unexpected end" in str(exc):
        return f"invalid JSON: {message} (truncated line?)"
    return f"invalid JSON: {message} at character {exc.pos}"


def _excerpt(value: bytes | str) -> str:
    data = value.encode("utf-8", "replace") if isinstance(value, str) else value
    return data[:EXCERPT_BYTES].decode("utf-8", "replace")


def _reason_key(reason: str) -> str:
    """Group reasons for the summary: drop positions and the specific keys found."""
    key = reason.split(" at character ")[0].split(" with keys ")[0]
    return key.split(": ", 1)[1] if key.startswith(("[", "resourceSpans", ".data")) and ": " in key else key
