"""The Python functions DuckDB's ingest SQL calls: the message normaliser (`halo_messages`) and a
progress counter (`halo_tally`). They are vectorised over Arrow arrays, so this module, unlike
`duckdb_sql`, loads pyarrow: only a writable store that ingests imports it, and read-only commands
(`halo stats`, `halo show`) start without it."""

from __future__ import annotations

import os
import threading
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from halo_rlm.formats.conventions import output_messages_json

__all__ = ["Tally", "register_udfs", "tally_for"]


def register_udfs(con: Any, tally: Tally) -> None:
    """The functions only ingest needs (they are Python, so read-only stores skip them): the message
    normaliser, and `tally`'s counter of the spans a statement has normalised so far. A function
    belongs to the whole database, not the connection that made it: another connection of this
    process (the web app's jobs, its OTLP receiver) may have registered it already, with the same
    tally (`tally_for`)."""
    for name, function, types, result, side_effects in (
        ("halo_messages", messages_udf, ["VARCHAR"], "VARCHAR", False),
        ("halo_tally", tally.count, ["BIGINT", "BIGINT"], "BIGINT", True),
    ):
        try:
            con.create_function(name, function, types, result, type="arrow", side_effects=side_effects)
        except duckdb.CatalogException as exc:
            if "already exists" not in str(exc):
                raise


class Tally:
    """How far the normalising INSERT has got, per input: spans and their bytes so far. A load in one
    statement says nothing until it ends, so its progress is read from here (`halo_tally(input_id,
    raw_bytes)` counts each chunk of rows as it passes, a few microseconds per 2,048 spans)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[int, tuple[int, int]] = {}

    def count(self, input_ids: pa.Array, raw_bytes: pa.Array) -> pa.Array:
        if len(input_ids):
            key, size = input_ids[0].as_py(), pc.sum(raw_bytes).as_py() or 0
            with self._lock:
                spans, total = self._counts.get(key, (0, 0))
                self._counts[key] = (spans + len(raw_bytes), total + size + len(raw_bytes))  # + newlines
        return raw_bytes

    def read(self, input_id: int) -> tuple[int, int]:
        """(spans, bytes of their lines) normalised so far for `input_id`."""
        with self._lock:
            return self._counts.get(input_id, (0, 0))

    def reset(self, input_id: int) -> None:
        with self._lock:
            self._counts.pop(input_id, None)


_TALLIES: dict[str, Tally] = {}
_TALLIES_LOCK = threading.Lock()


def tally_for(path: str) -> Tally:
    """The one tally of a database in this process: its `halo_tally` function is shared by every
    connection, so every connection must read the same counts."""
    key = os.path.abspath(path)
    with _TALLIES_LOCK:
        return _TALLIES.setdefault(key, Tally())


def messages_udf(column: pa.Array) -> pa.Array:
    """`conventions.output_messages_json` of each raw span line, as a vectorised DuckDB function."""
    return pa.array([output_messages_json(text) for text in column.to_pylist()], type=pa.string())
