"""An index of the words in every span's raw record, so a text search (`TraceFilters.text`: any-case
substring of the raw JSON) need not read a gigabyte of spans.

The answer is the scan's, exactly. Text is cut into words: maximal runs of ASCII letters, digits and
`_`, lower-cased (plus the two non-ASCII letters RE2's case folding maps onto ASCII ones, KELVIN SIGN
and LONG S). A search that is one such run is answered from the index alone: a span holds it iff one
of its words contains it, so the traces are those of every indexed word that contains it. A search
with several runs (spaces, punctuation, non-ASCII) narrows the traces to those holding words that
fit each run (its first run ends a word, its middle runs are whole words, its last run starts one)
and the store's scan checks only those; a search with no run at all (`{`, `😀`) is the scan's.

The index sits beside the store (`x.duckdb` -> `x.duckdb.search/`) in segments written once: each
holds the words of some spans (a trace may span segments) as a vocabulary (one byte string, each word
ended by a line break), word -> documents postings (CSR) and its documents (trace ids and the trace's
fingerprint when indexed). `manifest.json` names the live segments, each one's mask of live
documents, and what the index has seen of the store: a fingerprint of every input row. Nothing is
changed in place: new files, then the manifest replaced, so a crash leaves the last whole index.

`catch_up()` brings it level with the store, whatever wrote to it (file ingest, a re-read changed
file, the collector, imports): in one read snapshot it finds the traces that are new, whose rollup
changed, or whose inputs changed, and indexes all their spans into a new segment, retiring their older
documents; small segments are merged the same way. The first catch-up reads every span.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import shutil
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from halo_rlm.store.duckdb_store import DuckDBStore

__all__ = ["IndexStatus", "TextIndex", "TextMatch", "words"]

FORMAT = 2
SEGMENT_BYTES = 64 << 20  # raw JSON per segment: bounds the memory a build holds (about 1.5 bytes a byte)
SMALL_SEGMENTS = 8  # this many segments under SEGMENT_BYTES / 8 are merged into one
FETCH_ROWS = 2_000  # spans read at a time
REST_SECONDS = 0.002  # after each batch a build lets the app's threads have the interpreter
FIRST_WORDS = 8  # a search matching more words than this tries the most common of them first
DENSE_HITS = 256  # past this many occurrences in a vocabulary, one vectorised pass over it is cheaper

_WORD_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_")
# Bytes to words: ASCII upper case to lower, every other byte that is not a word byte to a space.
_FOLD = bytes(c + 32 if 65 <= c <= 90 else c if c in _WORD_BYTES else 32 for c in range(256))
# The non-ASCII characters RE2's case-insensitive match folds onto ASCII letters.
_ASCII_FOLDS = str.maketrans({"\u212a": "k", "\u017f": "s"})
# What says a trace changed: its rollup's counts and extent (rebuilt on every write that touches it).
TRACE_PRINT = "hash(t.span_count, t.raw_bytes, t.start_ns, t.end_ns, t.error_spans, t.in_flight_spans)"
INPUT_PRINT = (
    "hash(status, size, mtime_ns, resume_offset, resume_line, spans, rejected, started_at, finished_at)"
)

Mode = Literal["contains", "prefix", "suffix", "exact"]


def words(text: str) -> list[bytes]:
    """The index's words of some text: runs of ASCII letters, digits and `_`, lower case."""
    if not text.isascii():
        text = text.translate(_ASCII_FOLDS)
    return text.encode().translate(_FOLD).split()


@dataclass(frozen=True)
class TextMatch:
    """What the index knows of a search: `traces` holding it (`exact`), or the only traces that may
    (`exact` false: the store's scan decides among them)."""

    traces: pa.Array
    exact: bool


@dataclass(frozen=True)
class IndexStatus:
    state: Literal["empty", "building", "ready", "failed"]
    done: float  # of the first build, 0-1
    documents: int  # (segment, trace) pairs indexed: a trace whose spans went to two segments counts twice
    segments: int
    message: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "done": round(self.done, 3),
            "documents": self.documents,
            "segments": self.segments,
            "message": self.message,
        }


class _Segment:
    """One segment's arrays (memory-mapped) and the live mask its manifest entry names."""

    def __init__(self, folder: Path, name: str, live_file: str | None) -> None:
        self.name = name
        self.folder = folder / name

        def load(part: str) -> np.ndarray:
            return np.load(self.folder / f"{part}.npy", mmap_mode="r")

        with open(self.folder / "vocab.bin", "rb") as file:  # searched by find(): mapped, not copied
            self.vocab = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        self.vocab_starts = np.asarray(load("vocab_starts"))
        self.offsets = np.asarray(load("offsets"))
        self.counts = np.diff(self.offsets).astype(np.int32)  # documents per word
        self.postings = load("postings")
        doc_blob, doc_starts = load("docs"), np.asarray(load("doc_starts"))
        self.docs = pa.LargeStringArray.from_buffers(
            len(doc_starts) - 1, pa.py_buffer(doc_starts.astype(np.int64)), pa.py_buffer(bytes(doc_blob))
        )
        self.prints = np.asarray(load("prints"))
        self.raw_bytes = int(json.loads((self.folder / "meta.json").read_text())["raw_bytes"])
        self.live_file = live_file
        self.live = (
            np.load(self.folder / live_file).astype(bool)
            if live_file
            else np.ones(len(self.docs), dtype=bool)
        )

    def tokens_matching(self, run: bytes, mode: Mode) -> np.ndarray:
        """Ids of the vocabulary's words that contain `run` (or start, end with, or equal it)."""
        pattern = {
            "contains": run,
            "prefix": b"\n" + run,
            "suffix": run + b"\n",
            "exact": b"\n" + run + b"\n",
        }[mode]
        # The vocabulary starts and ends with a line break, so a word is "\n" + word + "\n" in it.
        # A long pattern is found by bytes.find (a fast search) while it is rare; a short one (or one
        # found more than DENSE_HITS times) by comparing the whole vocabulary a byte at a time.
        vocab, found = self.vocab, list[int]()
        if len(self.vocab_starts) < 2:
            return np.zeros(0, dtype=np.int64)
        skip = 1 if pattern.startswith(b"\n") else 0
        if len(run) > 3:
            at = vocab.find(pattern)
            while at >= 0 and len(found) < DENSE_HITS:
                found.append(at)
                at = vocab.find(pattern, at + 1)
            if at < 0:
                tokens = (
                    np.searchsorted(self.vocab_starts, np.asarray(found, dtype=np.int64) + skip, "right") - 1
                )
                return np.unique(tokens)
        # Where the pattern starts: the positions of one of its letters, narrowed by each other byte.
        data = np.frombuffer(vocab, dtype=np.uint8)
        positions = np.flatnonzero(data == pattern[skip])
        positions = positions[positions - skip + len(pattern) <= len(data)]
        for offset, byte in enumerate(pattern):
            if offset != skip and len(positions):
                positions = positions[data[positions - skip + offset] == byte]
        if len(positions) < len(self.vocab_starts) // 8:  # few: look each one's word up
            tokens = np.searchsorted(self.vocab_starts, positions, side="right") - 1
            return tokens[np.concatenate(([True], tokens[1:] != tokens[:-1]))] if len(tokens) else tokens
        marks = np.zeros(len(data), dtype=bool)  # many: ask of every word at once whether it holds one
        marks[positions] = True
        return np.flatnonzero(np.logical_or.reduceat(marks, self.vocab_starts[:-1]))

    def docs_of(self, tokens: np.ndarray) -> np.ndarray:
        """The mask of live documents holding any of `tokens`. When there are many, the few words held
        by most documents go first: if they already hold every live document, the rest need not be
        read (a search for `e`)."""
        mask = np.zeros(len(self.docs), dtype=bool)
        if len(tokens) > FIRST_WORDS:
            self._gather(tokens[np.argpartition(self.counts[tokens], -FIRST_WORDS)[-FIRST_WORDS:]], mask)
            if np.array_equal(mask & self.live, self.live):
                return self.live.copy()
        self._gather(tokens, mask)
        return mask & self.live

    def _gather(self, tokens: np.ndarray, mask: np.ndarray) -> None:
        """Set the documents of `tokens` in `mask`."""
        if len(tokens) <= FIRST_WORDS:  # a few slices cost less than building one index of them all
            for token in tokens:
                mask[self.postings[self.offsets[token] : self.offsets[token + 1]]] = True
            return
        starts, lengths = self.offsets[tokens], self.counts[tokens]
        total = int(lengths.sum())
        if total:
            shift = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
            mask[self.postings[shift + np.arange(total)]] = True


class TextIndex:
    """The text index of one DuckDB store; see the module's docstring. Thread-safe: searches run on
    any thread while one `catch_up` at a time writes."""

    def __init__(self, store: DuckDBStore, folder: Path, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.store = store
        self.folder = folder
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()  # guards the segment list and the inputs seen
        self._writing = threading.Lock()  # one catch-up at a time
        self._segments: list[_Segment] = []
        self._inputs: dict[str, int] = {}
        self._state: Literal["empty", "building", "ready", "failed"] = "empty"
        self._done = 0.0
        self._message: str | None = None
        self.version = 0  # bumped whenever what searches see changes
        self._diffed = False  # every trace's rollup compared with the index since this process began
        self._load()

    # --- searching ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once the index has covered the whole store (it may be a write or two behind since)."""
        return self._state == "ready"

    def status(self) -> IndexStatus:
        with self._lock:
            segments = list(self._segments)
        documents = sum(int(s.live.sum()) for s in segments)
        return IndexStatus(
            self._state, 1.0 if self.ready else self._done, documents, len(segments), self._message
        )

    def search(self, text: str) -> TextMatch | None:
        """The traces whose spans' raw records contain `text` in any case (see the module), or None
        when the index cannot narrow the search (not built yet, or no word in `text`)."""
        if not self.ready:
            return None
        folded = text.translate(_ASCII_FOLDS) if not text.isascii() else text
        mapped = folded.encode().translate(_FOLD)
        runs = mapped.split()
        if not runs:
            return None
        exact = len(runs) == 1 and mapped == runs[0]
        opens, closes = mapped[:1] == b" ", mapped[-1:] == b" "
        with self._lock:
            segments = list(self._segments)
        found: list[pa.Array] = []
        for segment in segments:
            mask: np.ndarray | None = None
            for i, run in enumerate(runs):
                starts = i > 0 or opens  # a separator comes before the run: a word starts with it
                ends = i < len(runs) - 1 or closes
                mode: Mode = (
                    "exact" if starts and ends else "prefix" if starts else "suffix" if ends else "contains"
                )
                docs = segment.docs_of(segment.tokens_matching(run, mode))
                mask = docs if mask is None else mask & docs
                if not mask.any():
                    break
            assert mask is not None
            if mask.any():
                found.append(segment.docs.filter(pa.array(mask)))
        if not found:
            return TextMatch(pa.array([], type=pa.large_string()), exact)
        # A trace whose spans went to two segments can be in both: callers join on these ids, where a
        # repeat changes nothing, so they are not made unique here (that costs more than the search).
        traces = pa.concat_arrays(found)
        pa.default_memory_pool().release_unused()  # the allocator would keep the temporaries' pages
        return TextMatch(traces, exact)

    # --- keeping up ---------------------------------------------------------------------------

    def catch_up(self, should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Index what the store holds and the index does not (as of one snapshot of the store). True
        when the index is level with that snapshot; False when `should_stop` broke it off (nothing of
        it is kept)."""
        with self._writing:
            if self._state != "ready":
                self._state, self._message = "building", None
            try:
                level = self._catch_up(should_stop)
            except (duckdb.Error, OSError, ValueError) as exc:
                self._state, self._message = "failed", f"the search index could not be built: {exc}"
                raise
            finally:  # Arrow's allocator would keep the pages of the comparison's tables (about 12 MB)
                pa.default_memory_pool().release_unused()
            if level:
                self._state, self._done = "ready", 1.0
            return level

    def rebuild(self, should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Forget the index and build it again from the store."""
        with self._writing:
            with self._lock:
                self._segments, self._inputs = [], {}
                self.version += 1
            self._state, self._done = "empty", 0.0
            shutil.rmtree(self.folder, ignore_errors=True)
        return self.catch_up(should_stop)

    def _catch_up(self, should_stop: Callable[[], bool]) -> bool:
        cursor = self.store.cursor()
        con = cursor.con
        con.execute("BEGIN TRANSACTION")  # one snapshot: what changed, and the spans read for it
        try:
            inputs = {
                str(i): int(h)
                for i, h in con.execute(f"SELECT input_id, {INPUT_PRINT} FROM inputs").fetchall()
            }
            with self._lock:
                segments, seen = list(self._segments), dict(self._inputs)
            merge: list[_Segment] = []
            retire = pa.array([], type=pa.large_string())
            if not segments:  # the first build: every span
                total = int(con.execute("SELECT coalesce(sum(raw_bytes), 0) FROM traces").fetchall()[0][0])
                rows = con.execute(_SPANS_SQL)
            else:
                new = [int(i) for i in inputs if i not in seen]
                changed = [int(i) for i, h in inputs.items() if i in seen and seen[i] != h]
                changed += [int(i) for i in seen if i not in inputs]
                small = [s for s in segments if s.raw_bytes < self.segment_bytes // 8]
                merge = small if len(small) >= SMALL_SEGMENTS else []
                if changed or not self._diffed:
                    # an input read again (or the first catch-up of this process): compare every trace
                    stale, gone = self._stale(con, segments, changed + new)
                    self._diffed = True
                else:  # only new inputs (new files, a collector's writes): only their traces changed
                    stale = _strings(
                        con.execute(
                            "SELECT DISTINCT trace_id FROM spans WHERE input_id IN (SELECT unnest(?::BIGINT[]))",
                            [new],
                        ).fetchnumpy()["trace_id"]
                    )
                    gone = pa.array([], type=pa.large_string())
                reindex = pc.unique(
                    pa.concat_arrays([stale, *(s.docs.filter(pa.array(s.live)) for s in merge)])
                )
                if not len(reindex) and not len(gone):
                    if seen != inputs:
                        self._commit(segments, [], inputs, retire, [])
                    return True
                retire = pc.unique(pa.concat_arrays([reindex, gone]))
                con.register("halo_reindex", pa.table({"trace_id": reindex}))
                total = int(
                    con.execute(
                        "SELECT coalesce(sum(raw_bytes), 0) FROM traces "
                        "WHERE trace_id IN (SELECT trace_id FROM halo_reindex)"
                    ).fetchall()[0][0]
                )
                rows = con.execute(f"{_SPANS_SQL} WHERE s.trace_id IN (SELECT trace_id FROM halo_reindex)")
            written = self._write_segments(rows, total, should_stop)
            if written is None:
                return False
            self._commit(segments, written, inputs, retire, merge)
            return True
        finally:
            with contextlib.suppress(duckdb.Error):  # a failed statement ended it already
                con.execute("COMMIT")
            cursor.close()

    def _stale(
        self, con: duckdb.DuckDBPyConnection, segments: list[_Segment], inputs: list[int]
    ) -> tuple[pa.Array, pa.Array]:
        """Traces to index again (new, rollup changed, or holding spans of a changed input), and
        indexed traces the store no longer holds."""
        known = pa.table(
            {
                "trace_id": pa.concat_arrays([s.docs.filter(pa.array(s.live)) for s in segments]),
                "print": pa.array(np.concatenate([s.prints[s.live] for s in segments]), type=pa.uint64()),
            }
        )
        con.register("halo_known", known)
        try:
            stale = con.execute(
                "SELECT t.trace_id FROM traces t LEFT JOIN halo_known k "
                f"ON k.trace_id = t.trace_id AND k.print = {TRACE_PRINT} WHERE k.trace_id IS NULL "
                "UNION SELECT trace_id FROM spans WHERE input_id IN (SELECT unnest(?::BIGINT[]))",
                [inputs],
            ).fetchnumpy()["trace_id"]
            gone = con.execute(
                "SELECT DISTINCT k.trace_id FROM halo_known k ANTI JOIN traces t ON t.trace_id = k.trace_id"
            ).fetchnumpy()["trace_id"]
        finally:
            con.unregister("halo_known")
        return _strings(stale), _strings(gone)

    def _write_segments(
        self, rows: duckdb.DuckDBPyConnection, total: int, should_stop: Callable[[], bool]
    ) -> list[str] | None:
        """Index the spans `rows` yields (trace_id, raw, trace fingerprint) into new segments of about
        `segment_bytes` of raw JSON each; their names, or None when stopped (then none are kept)."""
        written: list[str] = []
        pending = _Pending()
        done = 0
        try:
            while batch := rows.fetchmany(FETCH_ROWS):
                if should_stop():
                    raise _Stopped
                for trace_id, raw, fingerprint in batch:
                    pending.add(trace_id, raw or "", fingerprint)
                    if pending.raw_bytes >= self.segment_bytes:
                        done += pending.raw_bytes
                        written.append(self._write(pending))
                        pending = _Pending()
                if self._state == "building":
                    self._done = min(0.99, (done + pending.raw_bytes) / max(1, total))
                time.sleep(REST_SECONDS)
            if pending.docs:
                written.append(self._write(pending))
        except _Stopped:
            for name in written:
                shutil.rmtree(self.folder / name, ignore_errors=True)
            return None
        return written

    def _write(self, pending: _Pending) -> str:
        """Write one segment's files; its name."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"seg-{time.time_ns():x}-{os.getpid()}"
        folder = self.folder / name
        folder.mkdir()
        pending.flush()
        keys = np.unique(np.frombuffer(pending.pairs, dtype=np.uint64))
        tokens = (keys >> np.uint64(32)).astype(np.int64)
        offsets = np.zeros(len(pending.vocab) + 1, dtype=np.int64)
        np.cumsum(np.bincount(tokens, minlength=len(pending.vocab)), out=offsets[1:])
        vocab = b"\n" + b"\n".join(pending.vocab) + b"\n"
        # where each word starts in `vocab`, and its end (the next word's start) last
        vocab_starts = np.zeros(len(pending.vocab) + 1, dtype=np.int64)
        np.cumsum([len(w) + 1 for w in pending.vocab], out=vocab_starts[1:])
        vocab_starts += 1
        doc_blob = "".join(pending.docs).encode()
        doc_starts = np.zeros(len(pending.docs) + 1, dtype=np.int64)
        np.cumsum([len(d.encode()) for d in pending.docs], out=doc_starts[1:])
        parts: dict[str, np.ndarray] = {
            "vocab_starts": vocab_starts,
            "offsets": offsets,
            "postings": (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32),
            "docs": np.frombuffer(doc_blob, dtype=np.uint8),
            "doc_starts": doc_starts,
            "prints": np.array(pending.prints, dtype=np.uint64),
        }
        for part, values in parts.items():
            np.save(folder / f"{part}.npy", values)
        (folder / "vocab.bin").write_bytes(vocab)
        (folder / "meta.json").write_text(json.dumps({"raw_bytes": pending.raw_bytes}))
        return name

    def _commit(
        self,
        segments: list[_Segment],
        written: list[str],
        inputs: dict[str, int],
        retire: pa.Array,
        merge: list[_Segment],
    ) -> None:
        """Make the new segments live and the retired documents dead: new live masks, then the
        manifest replaced in one step; then what nothing names any more is deleted."""
        kept: list[tuple[_Segment, str | None]] = []
        for segment in segments:
            if segment in merge:
                continue
            dead = segment.live & pc.is_in(segment.docs, value_set=retire).to_numpy(zero_copy_only=False)
            if dead.any():
                live_file = f"live-{time.time_ns():x}.npy"
                np.save(segment.folder / live_file, segment.live & ~dead)
                kept.append((segment, live_file))
            else:
                kept.append((segment, segment.live_file))
        entries = [{"name": s.name, "live": live} for s, live in kept]
        entries += [{"name": name, "live": None} for name in written]
        manifest = {"format": FORMAT, "duckdb": duckdb.__version__, "segments": entries, "inputs": inputs}
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self.folder / f".manifest.{os.getpid()}.tmp"
        temporary.write_text(json.dumps(manifest))
        os.replace(temporary, self.folder / "manifest.json")
        loaded = [s if live == s.live_file else _Segment(self.folder, s.name, live) for s, live in kept] + [
            _Segment(self.folder, name, None) for name in written
        ]
        with self._lock:
            self._segments, self._inputs = loaded, dict(inputs)
            self.version += 1
        self._clean(manifest)

    # --- on disk ------------------------------------------------------------------------------

    def _load(self) -> None:
        """Open the index the manifest describes; an index of another format or DuckDB version (whose
        fingerprints may differ), or a damaged one, is deleted and built again."""
        try:
            manifest = json.loads((self.folder / "manifest.json").read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            manifest = None
        try:
            if (
                not manifest
                or manifest.get("format") != FORMAT
                or manifest.get("duckdb") != duckdb.__version__
            ):
                raise ValueError("another format")
            self._segments = [_Segment(self.folder, e["name"], e["live"]) for e in manifest["segments"]]
            self._inputs = {str(k): int(v) for k, v in manifest["inputs"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            self._segments, self._inputs = [], {}
            shutil.rmtree(self.folder, ignore_errors=True)
            return
        self._state = "ready"  # level with the store when it was last written; catch_up() says more
        self._clean(manifest)

    def _clean(self, manifest: dict[str, Any]) -> None:
        """Delete segments and live masks the manifest does not name (merged away, or left by a crash)."""
        named = {e["name"]: e["live"] for e in manifest["segments"]}
        for path in self.folder.iterdir():
            if path.name.startswith("seg-") and path.name not in named:
                shutil.rmtree(path, ignore_errors=True)
            elif path.name in named:
                for mask in path.glob("live-*.npy"):
                    if mask.name != named[path.name]:
                        mask.unlink(missing_ok=True)


_SPANS_SQL = f"SELECT s.trace_id, s.raw, {TRACE_PRINT} FROM spans s JOIN traces t ON t.trace_id = s.trace_id"


class _Pending:
    """A segment being built: its documents, their traces' fingerprints, its words and postings."""

    def __init__(self) -> None:
        self.docs: dict[str, int] = {}
        self.prints: list[int] = []
        self.vocab: dict[bytes, int] = {}
        self.pairs = array("Q")  # (word << 32) | document, a few repeats left (np.unique drops them)
        self.raw_bytes = 0
        self._doc = -1
        self._words: set[bytes] = set()  # the words of the trace being read (spans come by trace)

    def add(self, trace_id: str, raw: str, fingerprint: int) -> None:
        doc = self.docs.get(trace_id)
        if doc is None:
            doc = self.docs[trace_id] = len(self.docs)
            self.prints.append(fingerprint)
        if doc != self._doc:
            self.flush()
            self._doc = doc
        self._words.update(words(raw))
        self.raw_bytes += len(raw)

    def flush(self) -> None:
        """Record the words of the trace read last."""
        vocab, doc = self.vocab, self._doc
        self.pairs.extend([(vocab.setdefault(w, len(vocab)) << 32) | doc for w in self._words])
        self._words = set()


class _Stopped(Exception):
    pass


def _strings(values: Sequence[Any] | np.ndarray) -> pa.Array:
    return pa.array(list(values), type=pa.large_string())
