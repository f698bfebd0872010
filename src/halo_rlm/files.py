"""Trace inputs on disk: resolving paths, directories, globs and stdin; gzip and zstd; lines in batches.

Lines are cut out of large buffers with numpy and handed on as one Arrow string array per batch, so
the cost in Python is per batch, not per line; DuckDB does the per-line work.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import io
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import zstandard

from halo_rlm.defaults import BATCH_BYTES, MAX_LINE_BYTES

if TYPE_CHECKING:  # loaded by the batching functions only: resolving paths must not pay for them
    import numpy as np
    import pyarrow as pa

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
TRACE_SUFFIXES = (".jsonl", ".json", ".ndjson", ".gz", ".zst", ".zstd")


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


def open_input(inp: InputFile) -> tuple[InputStream, str | None]:
    """Open an input for reading, decompressed and as UTF-8 text with `\n` line breaks (UTF-16 and
    UTF-32 are transcoded, CR-only line breaks translated); returns the stream and the compression found."""
    if inp.is_stdin:
        raw: BinaryIO = sys.stdin.buffer
    else:
        try:
            raw = open(inp.path, "rb")  # noqa: SIM115 - the caller owns the stream
        except OSError as exc:
            raise InputError(f"{inp.path}: {exc.strerror or exc}") from exc
    buffered: Any = raw if hasattr(raw, "peek") else io.BufferedReader(raw)
    head = buffered.peek(4)[:4]
    stream: BinaryIO = buffered
    compression = None
    if head.startswith(GZIP_MAGIC):
        gzip_member = partial(zlib.decompressobj, wbits=16 + zlib.MAX_WBITS)
        stream, compression = _Decompressed(buffered, gzip_member, "gzip"), "gzip"  # type: ignore[assignment]
    elif head.startswith(ZSTD_MAGIC):
        zstd_frame = zstandard.ZstdDecompressor().decompressobj
        stream, compression = _Decompressed(buffered, zstd_frame, "zstd"), "zstd"  # type: ignore[assignment]
    return _as_utf8_lines(stream), compression


def _as_utf8_lines(stream: BinaryIO) -> InputStream:
    """`stream`, or a reader transcoding it when its start shows UTF-16/32 or CR-only line breaks."""
    head = InputStream(stream)
    sample = head.sample(SNIFF_BYTES)
    encoding = text_encoding(sample)
    if encoding is not None:
        return InputStream(_Transcoded(head, encoding), transcoded=encoding)  # type: ignore[arg-type]
    body = sample[len(UTF8_BOM) :] if sample.startswith(UTF8_BOM) else sample
    if b"\r" in body and b"\n" not in body and b"\0" not in body:
        return InputStream(_Transcoded(head, None), transcoded="CR line breaks")  # type: ignore[arg-type]
    return head


SNIFF_BYTES = 4096
UTF8_BOM = b"\xef\xbb\xbf"
_BOMS = (
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\xfe\xff", "utf-16-be"),
    (b"\xff\xfe", "utf-16-le"),
)


def text_encoding(sample: bytes) -> str | None:
    """The UTF-16/32 encoding of text starting with `sample` (by its byte order mark, or by the zero
    bytes ASCII characters have in it), or None for UTF-8 (and anything else)."""
    for bom, encoding in _BOMS:
        if sample.startswith(bom):
            return encoding
    if len(sample) < 8 or b"\0" not in sample[:8]:
        return None
    view = memoryview(sample)[: len(sample) // 4 * 4]
    columns = [sum(b == 0 for b in view[i::4]) / (len(view) // 4) for i in range(4)]
    if columns[1] > 0.9 and columns[2] > 0.9 and columns[3] > 0.9 and columns[0] < 0.1:
        return "utf-32-le"
    if columns[0] > 0.9 and columns[1] > 0.9 and columns[2] > 0.9 and columns[3] < 0.1:
        return "utf-32-be"
    odd, even = (columns[1] + columns[3]) / 2, (columns[0] + columns[2]) / 2
    if odd > 0.6 and even < 0.1:
        return "utf-16-le"
    if even > 0.6 and odd < 0.1:
        return "utf-16-be"
    return None


class InputStream:
    """An input as UTF-8 bytes with `\n` line breaks, whose first bytes can be looked at before they
    are read (`sample`). `transcoded` names what was converted (an encoding, or CR line breaks)."""

    def __init__(self, stream: BinaryIO, transcoded: str | None = None) -> None:
        self._stream = stream
        self._head = b""
        self.transcoded = transcoded
        self.damage: CorruptInput | None = None  # compressed data that broke within the sample

    def sample(self, size: int) -> bytes:
        while len(self._head) < size and self.damage is None:
            try:
                chunk = self._stream.read(size - len(self._head))
            except CorruptInput as exc:
                self.damage = exc  # the reader meets it again after the sample
                break
            if not chunk:
                break
            self._head += chunk
        return self._head

    def read(self, size: int = -1) -> bytes:
        if self._head:
            data = self._head if size < 0 or size >= len(self._head) else self._head[:size]
            self._head = self._head[len(data) :]
            return data  # a short read; the caller reads again for more
        return self._stream.read(size)

    def seek(self, offset: int) -> int:
        """Move to `offset` from the start; only before anything was read."""
        self._stream.seek(offset)
        self._head = b""
        return offset

    def close(self) -> None:
        self._stream.close()


class _Transcoded:
    """UTF-16/32 text read as UTF-8 (undecodable units become U+FFFD), or UTF-8 with CR-only line
    breaks read with `\n` ones (`encoding` None)."""

    def __init__(self, stream: InputStream, encoding: str | None) -> None:
        self._stream = stream
        self._decoder = codecs.getincrementaldecoder(encoding)("replace") if encoding else None
        self._pending = b""
        self._done = False
        self._bom = encoding is not None  # a decoded BOM is dropped

    def read(self, size: int = -1) -> bytes:
        while not self._done and (size < 0 or len(self._pending) < size):
            chunk = self._stream.read(1 << 20 if size < 0 else max(size, 4096))
            if self._decoder is None:
                self._pending += chunk.replace(b"\r", b"\n")
            else:
                text = self._decoder.decode(chunk, final=not chunk)
                if self._bom and text:
                    text, self._bom = text.removeprefix("\ufeff"), False
                self._pending += text.encode("utf-8", "replace")
            self._done = not chunk
        count = len(self._pending) if size < 0 else min(size, len(self._pending))
        data, self._pending = self._pending[:count], self._pending[count:]
        return data

    def close(self) -> None:
        self._stream.close()


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
                if not chunk.strip(b"\0"):
                    return  # zero padding after a member (tape blocks, fixed-size writes) is not data
                chunk = chunk.lstrip(b"\0")
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


@dataclass
class UnterminatedLine:
    """The last line of an input that may still be growing, not yet ended by a line break: the
    reader leaves it to its caller, who reads it when it is whole or leaves it for next time."""

    line_number: int
    offset: int  # where it starts
    data: bytes


def read_lines(
    stream: Any,
    *,
    start_offset: int = 0,
    start_line: int = 0,
    batch_bytes: int | None = None,
    max_line_bytes: int | None = None,
    final: bool = True,
    mid_line: bool = False,
) -> Iterator[LineBatch | OversizeLine | UnterminatedLine]:
    """Read newline-delimited records in batches of about `batch_bytes`, resuming at `start_offset`
    (a byte offset in the decompressed stream, at a line boundary) as line `start_line + 1`.

    A line longer than `max_line_bytes` is skipped without being held in memory and reported as an
    `OversizeLine`. A UTF-8 byte order mark at the start is not part of the first line. A last line
    without a line break ends the batches as a line when the input is `final` (compressed data,
    stdin), else as an `UnterminatedLine`. `mid_line` resumes just after an unterminated line that was
    read whole: a line break right there ends that line rather than starting one."""
    batch_bytes = batch_bytes or BATCH_BYTES
    max_line_bytes = max_line_bytes or MAX_LINE_BYTES
    skip(stream, start_offset)
    offset, line_no = start_offset, start_line  # offset: where `carry` starts in the stream
    carry = b""
    oversize: OversizeLine | None = None
    first = True
    while True:
        block = stream.read(batch_bytes)
        if first and block:
            first = False
            if start_offset == 0 and block.startswith(UTF8_BOM):
                block, offset = block[len(UTF8_BOM) :], offset + len(UTF8_BOM)
            elif mid_line and block.startswith(b"\n"):
                block, offset = block[1:], offset + 1
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
            if not final and data.strip():
                yield UnterminatedLine(line_no + 1, offset, data)
                return
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


def line_ended_before(path: str, offset: int) -> bool:
    """Whether the byte before `offset` in a file is a line break (or `offset` is its start): where a
    resumed read begins a fresh line."""
    if offset <= 0:
        return True
    try:
        with open(path, "rb") as f:
            f.seek(offset - 1)
            return f.read(1) == b"\n"
    except OSError:
        return True


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
    import pyarrow as pa

    size = len(data) if real_size is None else real_size  # in the input: a repair changes the length
    lines, numbers, nonblank, oversize = _split(data, line_no, max_line_bytes)
    repaired: list[int] = []
    try:
        lines.validate(full=True)  # UTF-8, checked in place (decoding to str would copy the batch)
    except pa.ArrowInvalid:
        data, repaired = _repair_utf8(data, line_no)
        lines, numbers, nonblank, oversize = _split(data, line_no, max_line_bytes)
    return LineBatch(lines, numbers[nonblank], offset + size, line_no + len(numbers), repaired, oversize)


def _split(
    data: bytes, line_no: int, max_line_bytes: int
) -> tuple[pa.LargeStringArray, np.ndarray, np.ndarray, list[OversizeLine]]:
    import numpy as np
    import pyarrow as pa

    arr = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(arr == 10)
    starts = np.empty(len(newlines), dtype=np.int64)
    starts[0] = 0
    starts[1:] = newlines[:-1] + 1
    ends = newlines.copy()
    crlf = b"\r" in data
    if crlf:
        has_cr = (ends > starts) & (arr[np.maximum(ends - 1, 0)] == 13)  # CRLF line breaks
        ends -= has_cr
    lengths = ends - starts
    numbers = np.arange(line_no + 1, line_no + 1 + len(newlines), dtype=np.int64)
    oversize = [
        OversizeLine(int(numbers[i]), int(lengths[i]), data[starts[i] : starts[i] + 200])
        for i in np.flatnonzero(lengths > max_line_bytes)
    ]
    if crlf or oversize:
        keep = np.ones(len(arr), dtype=bool)
        keep[newlines] = False
        if crlf:
            keep[ends[has_cr]] = False
        for i in np.flatnonzero(lengths > max_line_bytes):
            keep[starts[i] : ends[i]] = False
        lengths = np.where(lengths > max_line_bytes, 0, lengths)
        text: Any = arr[keep]
    else:
        # Only line breaks lie between the lines: dropping them is one copy, not a mask of every byte.
        text = data.replace(b"\n", b"")
    # With line breaks removed, line i starts where lines 0..i-1 end; blank lines take no bytes.
    nonblank = lengths > 0
    offsets = np.zeros(int(nonblank.sum()) + 1, dtype=np.int64)
    np.cumsum(lengths[nonblank], out=offsets[1:])
    lines = pa.Array.from_buffers(
        pa.large_string(), len(offsets) - 1, [None, pa.py_buffer(offsets), pa.py_buffer(text)]
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
