"""Filling a ClickHouse store. Spans are read, decoded and normalised exactly as the DuckDB store does
it — by the DuckDB store itself, on a scratch database of its own (a temporary file, so memory stays
bounded on any input size) — and the canonical rows it produces are then shipped to ClickHouse in
Arrow batches. One normaliser for every backend means the same columns, bit for bit.

The scratch store is seeded with the ClickHouse store's `inputs`, so its bookkeeping decides as it
would on its own file: an unchanged file is skipped, a grown one is read from where it ended, a
changed one is read again (its old spans are deleted from ClickHouse first). After the spans of an
input are shipped, the orphan flags and rollups of every trace it touched are refreshed in ClickHouse.
A run interrupted before an input is shipped reads that input again next time; spans shipped twice
are one row (`spans_data` is a ReplacingMergeTree on the span's ids).
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from halo_rlm import files
from halo_rlm.store import clickhouse_sql as sql
from halo_rlm.store.clickhouse_client import Connection, literal
from halo_rlm.store.duckdb_store import DuckDBStore
from halo_rlm.store.results import IngestReport, Progress
from halo_rlm.store.schema import INPUT_COLUMNS, SPAN_COLUMNS, TRACE_COLUMNS


class Destination(Protocol):
    """What an ingest needs of the ClickHouse store: its connection, database and name."""

    conn: Connection
    db: str
    path: str


__all__ = ["Ingest"]

SCRATCH_MEMORY = "256MB"  # what the scratch DuckDB store may hold before it spills to its folder
SHIP_ROWS = 32_768  # spans per insert: large enough for few parts, small enough to bound memory
SETTLED_PARTS = 2  # parts of spans_data a file ingest leaves (merging on while there are more)...
MERGE_ROUNDS = 10  # ...with at most this many merges
BUCKET_SPANS = 2_000_000  # refresh the traces of about this many spans at a time
# Limits for the refresh queries, so a large ingest spills to disk instead of growing.
INGEST_SETTINGS = {
    "max_memory_usage": 1_000_000_000,
    "max_bytes_before_external_group_by": 300_000_000,
    "max_bytes_before_external_sort": 300_000_000,
}
# The span's `version` in `spans_data` (see clickhouse_sql): finished first, then earlier input, then
# earlier line; even, so that a correction of `is_orphan` can take version + 1.
VERSION = (
    "((CAST(end_ns IS NOT NULL AS UBIGINT) << 61)"
    " + (CAST(536870911 - least(coalesce(input_id, 0), 536870911) AS UBIGINT) << 31)"
    " + CAST(2147483647 - least(coalesce(line_no, 0), 2147483647) AS UBIGINT)) * 2"
)


class Ingest:
    def __init__(self, store: Destination) -> None:
        self.store = store
        self.conn = store.conn
        self.db = store.db

    def load_files(
        self,
        paths: Sequence[str | Path],
        *,
        strict: bool = False,
        progress: Callable[[files.InputFile], Progress | None] | None = None,
        **options: Any,
    ) -> IngestReport:
        with self._scratch() as scratch:
            before = self._seed_inputs(scratch)
            report = scratch.ingest(paths, strict=strict, progress=progress, **options)
            shipped = self._ship(scratch, before, report)
        if shipped:  # once the scratch store's memory is given back
            self._settle()
        report.store = self.store.path
        return report

    def load_records(self, records: Iterable[Any], source: str) -> IngestReport:
        """Records from a collector or importer, as one input. Returns only once ClickHouse has
        confirmed every insert, so a caller that acknowledges afterwards never loses what it
        acknowledged."""
        with self._scratch() as scratch:
            before = self._seed_inputs(scratch)
            report = scratch.ingest_records(records, source=source)
            self._ship(scratch, before, report)
        report.store = self.store.path
        return report

    def _settle(self) -> None:
        """Merge what a file ingest inserted, before the next query has to. Every query reads with
        FINAL, which merges the parts a trace is in as it reads them: a trace's view read one
        granule of each of 28 fresh parts (10x DuckDB's time) while background merges also took the
        CPU. The rollups (small) become one part; the spans' new parts are merged with each other
        (ClickHouse picks parts of similar size, so an older, larger part is not rewritten). A
        collector's frequent small writes (`load_records`) leave this to the background merges."""
        self.conn.command(f"OPTIMIZE TABLE {self.db}.traces_data FINAL")
        parts = f"SELECT count() FROM system.parts WHERE database = {literal(self.db)} AND table = 'spans_data' AND active"
        for _ in range(MERGE_ROUNDS):
            if int(self.conn.value(parts)) <= SETTLED_PARTS:
                break
            self.conn.command(f"OPTIMIZE TABLE {self.db}.spans_data")

    @contextmanager
    def _scratch(self) -> Iterator[DuckDBStore]:
        """A DuckDB store in memory (spilling to a temporary folder past its memory limit) that
        normalises what is ingested, exactly as the DuckDB store does."""
        with tempfile.TemporaryDirectory(prefix="halo-clickhouse-ingest-") as folder:
            scratch = DuckDBStore.connect(folder, in_memory=True)
            # Half the DuckDB store's own limit: while the rows are shipped, ClickHouse's insert needs
            # the memory too (1M simulated spans peaked at 2.0 GB with 512 MB here, 1.76 GB with 256 MB,
            # in the same CPU time).
            scratch.con.execute(f"SET memory_limit = '{SCRATCH_MEMORY}'")
            try:
                yield scratch
            finally:
                scratch.close()

    def _seed_inputs(self, scratch: DuckDBStore) -> dict[int, tuple[Any, ...]]:
        """Copy the ClickHouse store's inputs into the scratch store; returns them by id."""
        names = [c.name for c in INPUT_COLUMNS]
        table = self.conn.arrow(f"SELECT {', '.join(names)} FROM {self.db}.inputs ORDER BY input_id")
        if table.num_rows:
            scratch.con.register("seed", table)
            scratch.con.execute(f"INSERT INTO inputs SELECT {', '.join(names)} FROM seed")
            scratch.con.unregister("seed")
        return {
            row[0]: row for row in scratch.con.execute(f"SELECT {', '.join(names)} FROM inputs").fetchall()
        }

    def _ship(self, scratch: DuckDBStore, before: dict[int, tuple[Any, ...]], report: IngestReport) -> bool:
        """Ship what the scratch store read (spans, rejects, rollups, inputs); False when nothing changed."""
        names = [c.name for c in INPUT_COLUMNS]
        after = {
            row[0]: row for row in scratch.con.execute(f"SELECT {', '.join(names)} FROM inputs").fetchall()
        }
        changed = sorted(i for i, row in after.items() if before.get(i) != row)
        if not changed:
            return False
        scratch_tables = f"{self.db}.ingest_{uuid.uuid4().hex[:12]}"
        keys, earlier = f"{scratch_tables}_keys", f"{scratch_tables}_earlier"
        self.conn.command(
            f"CREATE TABLE {keys} (trace_id String, span_id String) ENGINE = MergeTree ORDER BY trace_id"
        )
        self.conn.command(f"CREATE TABLE {earlier} (trace_id String) ENGINE = MergeTree ORDER BY trace_id")
        try:
            ids = ", ".join(str(i) for i in changed)
            # An input read again from the start replaces what it held.
            continued = {r.path for r in report.inputs if r.status in ("resumed", "unchanged")}
            replaced = [i for i in changed if i in before and after[i][1] not in continued]
            if replaced:
                listed = ", ".join(str(i) for i in replaced)
                self.conn.command(
                    f"INSERT INTO {keys} SELECT trace_id, span_id FROM {self.db}.spans WHERE input_id IN ({listed})"
                )
                self.conn.command(f"DELETE FROM {self.db}.spans_data WHERE input_id IN ({listed})")
                self.conn.command(f"DELETE FROM {self.db}.rejects WHERE input_id IN ({listed})")
            for batch in self._scratch_rows(
                scratch, f"SELECT trace_id, span_id FROM spans WHERE input_id IN ({ids})"
            ):
                self.conn.insert_arrow(keys, batch)
            # Traces ClickHouse already holds spans of (an earlier input's, a collector's earlier flush,
            # a replaced input's trace) are refreshed there; every other trace is whole in the scratch
            # store, whose rollups and orphan flags are then the DuckDB store's own and are shipped as
            # they are.
            self.conn.command(
                f"INSERT INTO {earlier} SELECT DISTINCT trace_id FROM {self.db}.spans_data "
                f"WHERE trace_id IN (SELECT trace_id FROM {keys})",
                INGEST_SETTINGS,
            )
            shipped = self._ship_spans(scratch, ids)
            self._ship_rejects(scratch, ids)
            self._ship_rollups(scratch, earlier)
            merged = 0
            # Traces are refreshed in buckets of their ids, so memory stays bounded on any input size.
            if self.conn.value(f"SELECT count() FROM {earlier}"):
                buckets = max(1, -(-shipped // BUCKET_SPANS))
                for bucket in range(buckets):
                    part = f"cityHash64(trace_id) % {buckets} = {bucket}"
                    merged += self._held_elsewhere(keys, earlier, ids, part)
                    self._refresh(earlier, part)
            if replaced:
                # Traces left with no spans (their only input was replaced) lose their rollup.
                touched = f"(SELECT DISTINCT trace_id FROM {keys})"
                self.conn.command(
                    f"DELETE FROM {self.db}.traces_data WHERE trace_id IN {touched} "
                    f"AND trace_id NOT IN (SELECT trace_id FROM {self.db}.spans WHERE trace_id IN {touched})"
                )
            self._ship_inputs(scratch, ids)
            if merged and report.inputs:
                report.inputs[-1].duplicates += merged
            return True
        finally:
            self.conn.command(f"DROP TABLE IF EXISTS {keys}")
            self.conn.command(f"DROP TABLE IF EXISTS {earlier}")

    def _scratch_rows(self, scratch: DuckDBStore, query: str) -> Iterator[pa.Table]:
        """A scratch store query's rows in batches, as ClickHouse takes them."""
        for batch in scratch.con.sql(query).to_arrow_reader(SHIP_ROWS):
            yield _plain_strings(pa.Table.from_batches([batch]))

    def _ship_spans(self, scratch: DuckDBStore, ids: str) -> int:
        """Insert the scratch store's spans of these inputs, batch by batch; returns how many."""
        columns = ", ".join(c.name for c in SPAN_COLUMNS)
        shipped = 0
        for table in self._scratch_rows(
            scratch, f"SELECT {columns}, {VERSION} AS version FROM spans WHERE input_id IN ({ids})"
        ):
            self.conn.insert_arrow(f"{self.db}.spans_data", table)
            shipped += table.num_rows
        return shipped

    def _ship_rollups(self, scratch: DuckDBStore, earlier: str) -> None:
        """The scratch store's rollups of the traces ClickHouse held no spans of before."""
        held = self.conn.arrow(f"SELECT trace_id FROM {earlier}")
        scratch.con.register("held_before", held)
        try:
            columns = ", ".join(c.name for c in TRACE_COLUMNS)
            refreshed = time.time_ns()
            for table in self._scratch_rows(
                scratch,
                f"SELECT {columns}, {refreshed}::UBIGINT AS refreshed FROM traces "
                "WHERE trace_id NOT IN (SELECT trace_id FROM held_before)",
            ):
                self.conn.insert_arrow(f"{self.db}.traces_data", table)
        finally:
            scratch.con.unregister("held_before")

    def _held_elsewhere(self, keys: str, earlier: str, ids: str, part: str) -> int:
        """Shipped spans (of the earlier-held traces in `part`) that lost to a copy from another
        input: duplicates merged here. Only a trace ClickHouse held before can hold such a copy."""
        traces = f"(SELECT trace_id FROM {earlier} WHERE {part})"
        return int(
            self.conn.value(
                f"SELECT count() FROM (SELECT DISTINCT trace_id, span_id FROM {keys} WHERE trace_id IN {traces}) k "
                f"WHERE (k.trace_id, k.span_id) NOT IN (SELECT trace_id, span_id FROM {self.db}.spans "
                f"WHERE input_id IN ({ids}) AND trace_id IN {traces})",
                INGEST_SETTINGS,
            )
            or 0
        )

    def _ship_rejects(self, scratch: DuckDBStore, ids: str) -> None:
        table = scratch.con.sql(f"SELECT * FROM rejects WHERE input_id IN ({ids})").to_arrow_table()
        if table.num_rows:
            self.conn.insert_arrow(f"{self.db}.rejects", table)

    def _ship_inputs(self, scratch: DuckDBStore, ids: str) -> None:
        """The inputs' bookkeeping rows, with span counts as ClickHouse now holds them (a grown file's
        scratch store counted only its new spans)."""
        columns = [c.name for c in INPUT_COLUMNS]
        table = scratch.con.sql(
            f"SELECT {', '.join(columns)} FROM inputs WHERE input_id IN ({ids}) ORDER BY input_id"
        )
        table = table.to_arrow_table()
        counts = {
            r["input_id"]: r["n"]
            for r in self.conn.rows(
                f"SELECT input_id, count() AS n FROM {self.db}.spans WHERE input_id IN ({ids}) GROUP BY input_id"
            )
        }
        spans = pa.array([counts.get(i, 0) for i in table.column("input_id").to_pylist()], pa.int64())
        table = table.set_column(columns.index("spans"), "spans", spans)
        table = table.append_column("updated", pa.array([time.time_ns()] * table.num_rows, pa.uint64()))
        self.conn.insert_arrow(f"{self.db}.inputs_data", table)

    def _refresh(self, earlier: str, part: str) -> None:
        """Orphan flags and rollups of the earlier-held traces in `part`, from all their spans."""
        touched = f"(SELECT trace_id FROM {earlier} WHERE {part})"
        self.conn.command(sql.orphan_fixes(self.db, touched), INGEST_SETTINGS)
        self.conn.command(sql.rollup(self.db, touched), INGEST_SETTINGS)


def _plain_strings(table: pa.Table) -> pa.Table:
    """DuckDB's JSON columns come as an Arrow extension type; ClickHouse stores them as strings."""
    fields = [
        pa.field(f.name, pa.large_string()) if isinstance(f.type, pa.ExtensionType) else f
        for f in table.schema
    ]
    return table.cast(pa.schema(fields))
