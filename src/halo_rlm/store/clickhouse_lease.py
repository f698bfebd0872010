"""One writer at a time on a ClickHouse database, as DuckDB's file lock gives a DuckDB store.

Two ingests into one database at once (two `halo ingest` runs, a collector beside an import) could
interleave their rollup and orphan refreshes, each rebuilding a trace from the spans it had seen. So
an ingest first takes the database's lease: a row in HALO's `halo_writers` table naming the writer
(host, process, a random tag) and its heartbeat, read back through FINAL. A writer whose heartbeat
is older than `stale_after` seconds is taken to have died and its lease is taken over; while alive,
a holder beats every quarter of that. Another writer waits for the lease up to its store's
`lock_timeout` (as a DuckDB store waits for the file lock), then fails with one line naming the
holder.

ClickHouse has no compare-and-set, so two writers that insert their claim in the same few
milliseconds could both think they won; each claim is therefore read back after a short pause, and
the later claim (the higher heartbeat) is the one that holds.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from halo_rlm.store.base import StoreError
from halo_rlm.store.clickhouse_client import Connection, literal
from halo_rlm.store.clickhouse_sql import LEASE_TABLE

__all__ = ["STALE_SECONDS", "WriterLease"]

STALE_SECONDS = 30.0  # a heartbeat older than this is a writer that died
SETTLE_SECONDS = 0.05  # between writing a claim and reading back who holds the lease
POLL_SECONDS = 0.1  # how often a waiting writer looks again
_NOW_NS = "toUInt64(toUnixTimestamp64Nano(now64(9)))"


class WriterLease:
    """The lease of one writer on `database`; `held(timeout)` takes it for the work in its block."""

    def __init__(
        self, conn: Connection, database: str, label: str, *, stale_after: float = STALE_SECONDS
    ) -> None:
        self.conn, self.db, self.label, self.stale_after = conn, database, label, stale_after
        self.writer = f"{socket.gethostname()} pid {os.getpid()} #{uuid.uuid4().hex[:6]}"

    @contextmanager
    def held(self, timeout: float) -> Iterator[None]:
        """Hold the lease for the block: wait up to `timeout` seconds for another writer's to end,
        beat while the block runs, release it afterwards."""
        self.acquire(timeout)
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(stop,), name="halo-lease", daemon=True)
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
            if self._holds(self.conn):
                self._claim(self.conn, "")  # released: free for the next writer at once

    def acquire(self, timeout: float) -> None:
        self.conn.command(
            f"CREATE TABLE IF NOT EXISTS {self.db}.{LEASE_TABLE} (slot String, writer String, "
            "heartbeat_ns UInt64) ENGINE = ReplacingMergeTree(heartbeat_ns) ORDER BY slot"
        )
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            holder = self.holder(self.conn)
            if holder is None or holder["writer"] == self.writer:
                self._claim(self.conn, self.writer)
                time.sleep(SETTLE_SECONDS)
                if self._holds(self.conn):
                    return
                holder = self.holder(self.conn)
            if time.monotonic() >= deadline and holder is not None:
                raise StoreError(
                    f"{self.label}: another HALO writer is ingesting into database {self.db!r} "
                    f"({holder['writer']}, heartbeat {holder['age']:.0f} s ago); wait for it to finish or "
                    f"stop it (a writer that died frees the database {self.stale_after:g} s after its last "
                    "heartbeat)"
                )
            time.sleep(POLL_SECONDS)

    def holder(self, conn: Connection) -> dict[str, Any] | None:
        """Who holds the lease (`writer`, seconds since its heartbeat as `age`), unless it is free or
        its holder's heartbeat is older than `stale_after`."""
        rows = conn.rows(
            f"SELECT writer, ({_NOW_NS} - heartbeat_ns) / 1e9 AS age FROM {self.db}.{LEASE_TABLE} FINAL "
            "WHERE slot = 'ingest'"
        )
        if not rows or not rows[0]["writer"] or rows[0]["age"] > self.stale_after:
            return None
        return rows[0]

    def _holds(self, conn: Connection) -> bool:
        holder = self.holder(conn)
        return holder is not None and holder["writer"] == self.writer

    def _claim(self, conn: Connection, writer: str) -> None:
        conn.command(f"INSERT INTO {self.db}.{LEASE_TABLE} SELECT 'ingest', {literal(writer)}, {_NOW_NS}")

    def _beat(self, stop: threading.Event) -> None:
        """Renew the lease until told to stop, or until another writer took it over (this one looked
        dead to it): then the ingest finishes, and that writer's refresh covers these traces too. The
        ingest has the store's connection, so beats have their own, opened at the first beat (most
        ingests end before one is due)."""
        conn: Connection | None = None
        try:
            while not stop.wait(self.stale_after / 4):
                conn = conn or self.conn.another()
                if not self._holds(conn):
                    return
                self._claim(conn, self.writer)
        except StoreError:
            return  # the database went away; the ingest itself reports that
        finally:
            if conn is not None:
                conn.close()
