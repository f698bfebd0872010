"""The search index of span text (`store.text_index`): its answers are the store's scan's exactly (any
case, words and parts of words from the index alone, phrases and punctuation checked by the scan
among the traces it leaves), and it keeps up with every way a store is written: a new file, a file
read again after it changed (same length, other words), records from a collector or an import,
traces that disappear; it survives a restart, rebuilds a damaged copy, and merges small segments."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from web_data import span

from halo_rlm.store import DuckDBStore, TraceStore
from halo_rlm.store.text_index import SMALL_SEGMENTS, TextIndex

WORDS = ["refund", "Timeout", "ERROR", "the", "customer", "rate_limit", "no such file", "Kelvin", "café"]
SEARCHES = [
    "refund",  # one word
    "REFUND",  # any case
    "efun",  # part of a word
    "error",
    "e",  # in nearly every trace
    "rate_limit",  # `_` is part of a word
    "rate",
    "limit",
    "no such file",  # a phrase: narrowed by the index, checked by the scan
    "such file",
    "o s",
    "tool.name",  # punctuation inside
    '"name":"',
    "kelvin",  # KELVIN SIGN in one trace: RE2's any-case match folds it onto k
    "\u212aelvin",
    "\u017fuch",  # LONG S folds onto s
    "café",  # non-ASCII: narrowed by its ASCII part
    "CAFÉ",
    "{",  # no word at all: the scan's alone
    "😀",
    "absent-word-9f3",
    "0",
]


def trace_lines(trace_ids: list[str], seed: int, extra: dict[str, str] | None = None) -> bytes:
    """Traces of two to four spans with words from WORDS in their inputs, outputs and errors."""
    rng = random.Random(seed)
    lines = []
    for n, trace_id in enumerate(trace_ids):
        root = f"{n + 1:08x}{seed:08x}"
        spans = [span(trace_id, root, None, "agent", 0, 100, {"input.value": rng.choice(WORDS)})]
        for i in range(rng.randint(1, 3)):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
            attributes = {"tool.name": "lookup", "output.value": text}
            if extra and trace_id in extra:
                attributes["output.value"] = extra[trace_id]
            spans.append(
                span(
                    trace_id,
                    f"{root[:8]}{i:08x}",
                    root,
                    "lookup",
                    10 + i,
                    5,
                    attributes,
                    error=rng.choice([None, "Oops"]),
                )
            )
        lines.extend(orjson.dumps(s) for s in spans)
    return b"\n".join(lines) + b"\n"


def ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{n:030x}" for n in range(count)]


def answers(store: DuckDBStore, index: TextIndex, text: str) -> tuple[set[str], set[str]]:
    """The index's answer (candidates checked by the scan, as the app does) and the scan's."""
    scan = set(store.traces_containing(text))
    match = index.search(text)
    if match is None:
        return scan, scan
    found = match.traces.to_pylist()
    return (set(found) if match.exact else set(store.traces_containing(text, among=found))), scan


def assert_same(store: DuckDBStore, index: TextIndex, searches: list[str] = SEARCHES) -> None:
    for text in searches:
        found, scan = answers(store, index, text)
        assert found == scan, text


@pytest.fixture
def store(tmp_path: Path) -> Any:
    first = tmp_path / "first.jsonl"
    first.write_bytes(
        trace_lines(ids("aa", 60), seed=1, extra={ids("aa", 60)[3]: "\u212aelvin \u017fuch café"})
    )
    with TraceStore.open(tmp_path / "store.duckdb") as opened:
        opened.ingest([str(first)])
        yield opened


def test_answers_are_the_scans_in_any_case(store: DuckDBStore, tmp_path: Path) -> None:
    index = TextIndex(store, tmp_path / "store.duckdb.search", segment_bytes=2_000)  # many segments
    assert index.search("refund") is None  # not built: the app scans
    assert index.catch_up()
    assert index.ready and index.status().segments > 3
    assert_same(store, index)
    for word in ("refund", "REFUND", "efun", "e", "rate_limit", "0"):  # one run of word characters
        match = index.search(word)
        assert match is not None and match.exact, word
    assert len(set(index.search("e").traces.to_pylist())) == 60  # type: ignore[union-attr]
    phrase = index.search("no such file")
    assert phrase is not None and not phrase.exact
    assert index.search("{") is None and index.search("😀") is None
    assert set(index.search("\u212aelvin").traces.to_pylist()) >= {ids("aa", 60)[3]}  # type: ignore[union-attr]


def test_keeps_up_with_every_write(store: DuckDBStore, tmp_path: Path) -> None:
    index = TextIndex(store, tmp_path / "store.duckdb.search", segment_bytes=4_000)
    assert index.catch_up()
    version = index.version
    assert index.catch_up() and index.version == version  # nothing new: nothing written

    second = tmp_path / "second.jsonl"  # a new file
    second.write_bytes(trace_lines(ids("bb", 20), seed=2, extra={ids("bb", 20)[0]: "zebra crossing"}))
    store.ingest([str(second)])
    assert index.search("zebra").traces.to_pylist() == []  # type: ignore[union-attr]
    assert index.catch_up()
    assert index.search("zebra").traces.to_pylist() == [ids("bb", 20)[0]]  # type: ignore[union-attr]
    assert_same(store, index)

    # the same file changed in place: one word swapped for another of the same length, one trace gone
    second.write_bytes(trace_lines(ids("bb", 19), seed=2, extra={ids("bb", 20)[0]: "zebra crowsing"}))
    store.ingest([str(second)])
    assert index.catch_up()
    assert index.search("crossing").traces.to_pylist() == []  # type: ignore[union-attr]
    assert index.search("crowsing").traces.to_pylist() == [ids("bb", 20)[0]]  # type: ignore[union-attr]
    assert ids("bb", 20)[19] not in set(index.search("e").traces.to_pylist())  # type: ignore[union-attr]
    assert_same(store, index)

    # a collector's (or an import's) records, spans added to a trace the index holds
    records = [orjson.loads(line) for line in trace_lines(ids("cc", 3), seed=3).splitlines()]
    records.append(span(ids("aa", 60)[0], "f" * 16, None, "late", 0, 1, {"output.value": "walrus"}))
    store.ingest_records(records, source="collector")
    store.ingest_lines(
        orjson.dumps(span(ids("dd", 1)[0], "e" * 16, None, "otlp", 0, 1, {"input.value": "narwhal"})) + b"\n",
        source="otlp",
    )
    assert index.catch_up()
    assert index.search("walrus").traces.to_pylist() == [ids("aa", 60)[0]]  # type: ignore[union-attr]
    assert index.search("narwhal").traces.to_pylist() == [ids("dd", 1)[0]]  # type: ignore[union-attr]
    assert_same(store, index, [*SEARCHES, "walrus", "zebra"])


def test_small_segments_are_merged(store: DuckDBStore, tmp_path: Path) -> None:
    index = TextIndex(store, tmp_path / "store.duckdb.search", segment_bytes=1 << 20)
    assert index.catch_up()
    for n in range(SMALL_SEGMENTS + 2):  # one small write after another, as a collector makes them
        line = span(ids(f"{n:02x}", 1)[0], "a" * 16, None, "one", 0, 1, {"input.value": f"word{n}x"})
        store.ingest_lines(orjson.dumps(line) + b"\n", source=f"otlp-{n}")
        assert index.catch_up()
    assert index.status().segments <= SMALL_SEGMENTS
    assert len(list((tmp_path / "store.duckdb.search").glob("seg-*"))) == index.status().segments
    assert_same(store, index, [*SEARCHES, *(f"word{n}x" for n in range(SMALL_SEGMENTS + 2))])


def test_survives_a_restart_and_rebuilds_a_damaged_copy(store: DuckDBStore, tmp_path: Path) -> None:
    folder = tmp_path / "store.duckdb.search"
    index = TextIndex(store, folder, segment_bytes=4_000)
    assert index.catch_up()
    again = TextIndex(store, folder)
    assert again.ready  # read from disk, not rebuilt
    assert_same(store, again)
    (folder / "manifest.json").write_text("{not json")
    damaged = TextIndex(store, folder)
    assert not damaged.ready and not folder.exists()
    assert damaged.catch_up()
    assert_same(store, damaged)
    assert damaged.rebuild()
    assert_same(store, damaged)


def test_a_stopped_build_keeps_nothing(store: DuckDBStore, tmp_path: Path) -> None:
    folder = tmp_path / "store.duckdb.search"
    index = TextIndex(store, folder, segment_bytes=2_000)
    assert not index.catch_up(should_stop=lambda: True)
    assert not index.ready and index.search("refund") is None
    assert not list(folder.glob("seg-*"))
    assert index.catch_up()
    assert_same(store, index)
