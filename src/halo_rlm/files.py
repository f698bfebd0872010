"""Trace inputs on disk: resolving paths, directories, globs and stdin; gzip and zstd; lines in batches.

Lines are cut out of large buffers with numpy and handed on as one Arrow string array per batch, so
the cost in Python is per batch, not per line; DuckDB does the per-line work.
"""

from __future__ import annotations

import glob
import hashlib
import io
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import zstandard

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
TRACE_SUFFIXES = (".jsonl", ".json", ".ndjson", ".gz", ".zst", ".zstd")
BATCH_BYTES = 16 << 20
MAX_LINE_BYTES = 512 << 20


class InputError(Exception):
    """A path that cannot be read as trace input; the message names it."""


class CorruptInput(Exception):
    """Compressed data that breaks off or is damaged part way through a file."""


@dataclass(frozen=True)
class InputFile:
    """One input: a file on disk or standard input (`path == "-"`)."""

    path: str
    size: int | None = None
    mtime_ns: int | None = None

    @property
    def is_stdin(self) -> bool:
        return self.path == "-"

    @property
    def identity(self) -> str:
        """What makes two runs see 'the same file': path, size and modification time."""
        return f"{self.path}\0{self.size}\0{self.mtime_ns}"


def resolve(paths: Sequence[str | Path]) -> list[InputFile]:
    """Expand files, directories (recursively, trace-like files only) and globs, in a stable order."""
    found: dict[str, InputFile] = {}
    for raw in paths:
        text = str(raw)
        if text == "-":
            found["-"] = InputFile("-")
            continue
        pattern = glob.has_magic(text) and not Path(text).exists()  # a file named `a[1].jsonl` is itself
        if pattern:
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise InputError(f"{text}: the pattern matches no files")
            candidates = [Path(m) for m in matches]
        else:
            candidates = [Path(text)]
        for candidate in candidates:
            for file in _files_under(candidate, explicit=not pattern):
                stat = file.stat()
                resolved = str(file.resolve())
                found[resolved] = InputFile(resolved, stat.st_size, stat.st_mtime_ns)
    if not found:
        raise InputError("no trace files found in " + ", ".join(str(p) for p in paths))
    return list(found.values())


def _files_under(path: Path, *, explicit: bool) -> Iterator[Path]:
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and p.name.lower().endswith(TRACE_SUFFIXES) and not _hidden(p, path)
        )
        if not files and explicit:
            raise InputError(f"{path}: the directory holds no trace files ({', '.join(TRACE_SUFFIXES)})")
        yield from files
    elif path.is_file():
        yield path
    elif path.exists():
        raise InputError(f"{path}: not a regular file")
    else:
        raise InputError(f"{path}: no such file or directory")


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def inputs_key(inputs: Sequence[InputFile], schema_version: int) -> str:
    """A short stable key for a set of inputs, used to name their default store."""
    digest = hashlib.sha256(f"schema={schema_version}".encode())
    for inp in sorted(inputs, key=lambda i: i.path):
        digest.update(inp.identity.encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()[:20]


def open_input(inp: InputFile) -> tuple[BinaryIO, str | None]:
    """Open an input for reading, decompressed; returns the stream and the compression found."""
    if inp.is_stdin:
        raw: BinaryIO = sys.stdin.buffer
    else:
        try:
            raw = open(inp.path, "rb")  # noqa: SIM115 - the caller owns the stream
        except OSError as exc:
            raise InputError(f"{inp.path}: {exc.strerror or exc}") from exc
    buffered: Any = raw if hasattr(raw, "peek") else io.BufferedReader(raw)
    head = buffered.peek(4)[:4]
    if head.startswith(GZIP_MAGIC):
        gzip_member = partial(zlib.decompressobj, wbits=16 + zlib.MAX_WBITS)
        return _Decompressed(buffered, gzip_member, "gzip"), "gzip"  # type: ignore[return-value]
    if head.startswith(ZSTD_MAGIC):
        zstd_frame = zstandard.ZstdDecompressor().decompressobj
        return _Decompressed(buffered, zstd_frame, "zstd"), "zstd"  # type: ignore[return-value]
    return buffered, None


class _Decompressed:
    """Decompresses gzip member after member, or zstd frame after frame, a few kilobytes of input at
    a time so a hostile file cannot expand far in one step. Data that is damaged or breaks off part
    way becomes one `CorruptInput`, raised once the data decompressed before the damage is read."""

    STEP = 4096

    def __init__(self, raw: BinaryIO, new_decompressor: Callable[[], Any], kind: str) -> None:
        self._raw, self._new_decompressor, self._kind = raw, new_decompressor, kind
        self._decompressor: Any = None
        self._pending = bytearray()  # decompressed, not yet read
        self._good = 0  # bytes read so far
        self._error: CorruptInput | None = None
        self._finished = False

    def read(self, size: int = -1) -> bytes:
        while not self._finished and (size < 0 or len(self._pending) < size):
            try:
                self._step()
            except (zlib.error, zstandard.ZstdError) as exc:
                self._fail(str(exc))
        if self._error is not None and not self._pending:
            raise self._error
        count = len(self._pending) if size < 0 else min(size, len(self._pending))
        with memoryview(self._pending) as view:  # one copy, not a slice and then a copy of it
            data = bytes(view[:count])
        del self._pending[:count]
        self._good += count
        return data

    def _step(self) -> None:
        chunk = self._raw.read(self.STEP)
        if not chunk:
            self._finished = True
            if self._decompressor is not None and not self._decompressor.eof:
                self._fail("the file ends in the middle of the compressed data")
            return
        while chunk:
            if self._decompressor is None:
                self._decompressor = self._new_decompressor()
            self._pending += self._decompressor.decompress(chunk)
            if not self._decompressor.eof:
                return
            chunk, self._decompressor = self._decompressor.unused_data, None

    def _fail(self, reason: str) -> None:
        self._finished = True
        self._error = CorruptInput(
            f"{self._kind} data is damaged or cut short after "
            f"{self._good + len(self._pending):,} decompressed bytes ({reason})"
        )

    def close(self) -> None:
        self._raw.close()


@dataclass
class LineBatch:
    """Lines of one buffer: `lines` holds each line without its line break; blank lines are dropped
    but `line_numbers` keeps every kept line's 1-based number in the input."""

    lines: pa.LargeStringArray
    line_numbers: np.ndarray
    end_offset: int  # decompressed byte offset just past the batch, for resuming
    end_line: int  # number of the last line in the batch
    repaired_lines: list[int]  # lines whose invalid UTF-8 was replaced
    oversize: list[OversizeLine]  # lines over the size limit, left out of `lines`


@dataclass
class OversizeLine:
    line_number: int
    size: int
    head: bytes


def read_lines(
    stream: BinaryIO,
    *,
    start_offset: int = 0,
    start_line: int = 0,
    batch_bytes: int | None = None,
    max_line_bytes: int | None = None,
) -> Iterator[LineBatch | OversizeLine]:
    """Read newline-delimited records in batches of about `batch_bytes`, resuming at `start_offset`
    (a byte offset in the decompressed stream, at a line boundary) as line `start_line + 1`.

    A line longer than `max_line_bytes` is skipped without being held in memory and reported as an
    `OversizeLine`."""
    batch_bytes = batch_bytes or BATCH_BYTES
    max_line_bytes = max_line_bytes or MAX_LINE_BYTES
    skip(stream, start_offset)
    offset, line_no = start_offset, start_line  # offset: where `carry` starts in the stream
    carry = b""
    oversize: OversizeLine | None = None
    while True:
        block = stream.read(batch_bytes)
        if oversize is not None:
            cut = block.find(b"\n")
            if cut < 0:
                oversize.size += len(block)
                offset += len(block)
                if block:
                    continue
                yield oversize
                return
            oversize.size += cut
            offset += cut + 1
            line_no += 1
            yield oversize
            oversize = None
            block = block[cut + 1 :]
        data = carry + block
        if not block and not data:
            return
        if not block:  # a last line without a line break
            yield from _with_oversize(
                _batch(data + b"\n", offset, line_no, max_line_bytes, real_size=len(data))
            )
            return
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            carry = data
            if len(data) > max_line_bytes:
                oversize = OversizeLine(line_no + 1, len(data), data[:200])
                offset += len(data)
                carry = b""
            continue
        batch = _batch(data[:cut], offset, line_no, max_line_bytes)
        yield from _with_oversize(batch)
        offset, line_no = batch.end_offset, batch.end_line
        carry = data[cut:]


def tail_digest(path: str, end: int, size: int = 4096) -> str | None:
    """A digest of the `size` bytes before `end` in a file: when they are unchanged on a later run,
    the file has only grown."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, end - size))
            data = f.read(min(end, size))
    except OSError:
        return None
    return hashlib.sha256(data).hexdigest() if len(data) == min(end, size) else None


def count_lines(path: str, end: int) -> int:
    """How many lines the first `end` bytes of a file hold."""
    lines = 0
    with open(path, "rb") as f:
        while end > 0:
            block = f.read(min(end, 32 << 20))
            if not block:
                break
            lines += block.count(b"\n")
            end -= len(block)
    return lines


def skip(stream: BinaryIO, count: int) -> None:
    """Move `stream` forward `count` bytes: a seek where it can, else reading and dropping them."""
    if count <= 0:
        return
    try:
        stream.seek(count)
        return
    except (OSError, io.UnsupportedOperation, AttributeError):
        pass
    while count > 0:
        chunk = stream.read(min(count, 8 << 20))
        if not chunk:
            return
        count -= len(chunk)


def _with_oversize(batch: LineBatch) -> Iterator[LineBatch | OversizeLine]:
    yield from batch.oversize
    yield batch


def _batch(
    data: bytes, offset: int, line_no: int, max_line_bytes: int, real_size: int | None = None
) -> LineBatch:
    """Split `data` (ending in a newline) into lines without line breaks; drop blank lines and set
    aside lines over `max_line_bytes`."""
    lines, numbers, nonblank, oversize = _split(data, line_no, max_line_bytes)
    repaired: list[int] = []
    try:
        lines.validate(full=True)  # UTF-8, checked in place (decoding to str would copy the batch)
    except pa.ArrowInvalid:
        data, repaired = _repair_utf8(data, line_no)
        lines, numbers, nonblank, oversize = _split(data, line_no, max_line_bytes)
    size = len(data) if real_size is None else real_size
    return LineBatch(lines, numbers[nonblank], offset + size, line_no + len(numbers), repaired, oversize)


def _split(
    data: bytes, line_no: int, max_line_bytes: int
) -> tuple[pa.LargeStringArray, np.ndarray, np.ndarray, list[OversizeLine]]:
    arr = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(arr == 10)
    starts = np.empty(len(newlines), dtype=np.int64)
    starts[0] = 0
    starts[1:] = newlines[:-1] + 1
    ends = newlines.copy()
    has_cr = (ends > starts) & (arr[np.maximum(ends - 1, 0)] == 13)  # CRLF line breaks
    ends -= has_cr
    lengths = ends - starts
    keep = np.ones(len(arr), dtype=bool)
    keep[newlines] = False
    keep[ends[has_cr]] = False
    numbers = np.arange(line_no + 1, line_no + 1 + len(newlines), dtype=np.int64)
    oversize = [
        OversizeLine(int(numbers[i]), int(lengths[i]), data[starts[i] : starts[i] + 200])
        for i in np.flatnonzero(lengths > max_line_bytes)
    ]
    if oversize:
        for i in np.flatnonzero(lengths > max_line_bytes):
            keep[starts[i] : ends[i]] = False
        lengths = np.where(lengths > max_line_bytes, 0, lengths)
    # With line breaks removed, line i starts where lines 0..i-1 end; blank lines take no bytes.
    nonblank = lengths > 0
    offsets = np.zeros(int(nonblank.sum()) + 1, dtype=np.int64)
    np.cumsum(lengths[nonblank], out=offsets[1:])
    lines = pa.Array.from_buffers(
        pa.large_string(), len(offsets) - 1, [None, pa.py_buffer(offsets), pa.py_buffer(arr[keep])]
    )
    return lines, numbers, nonblank, oversize


def _repair_utf8(data: bytes, line_no: int) -> tuple[bytes, list[int]]:
    """Replace invalid UTF-8 with U+FFFD line by line, so one bad byte does not lose a span."""
    repaired = []
    out = []
    for i, line in enumerate(data.split(b"\n")):
        try:
            line.decode("utf-8")
            out.append(line)
        except UnicodeDecodeError:
            repaired.append(line_no + 1 + i)
            out.append(line.decode("utf-8", "replace").encode("utf-8"))
    return b"\n".join(out), repaired


def file_kind(head: bytes) -> str:
    """Name what a non-trace file looks like, for a one-line error message."""
    if not head.strip():
        return "an empty file"
    if b"\0" in head[:4096]:
        return "binary data"
    try:
        text = head[:4096].decode("utf-8")
    except UnicodeDecodeError:
        return "binary data (not UTF-8 text)"
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    if first.startswith(("{", "[")):
        return "JSON"
    if first.count(",") >= 2 or first.count("\t") >= 2:
        return "CSV/TSV text"
    if first.startswith("<"):
        return "XML/HTML"
    return "plain text"
