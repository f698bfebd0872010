"""Connections to ClickHouse: the engine embedded in this process (chdb) or a server over HTTP
(clickhouse-connect), behind one small interface that the ClickHouse store and its ingest use.

Both take SQL text with values already inlined as literals (`literal`): chdb parses parameter values
in ClickHouse's escaped text format, so inlining is the one way that behaves the same on both. Errors
come back as `StoreError` with one line naming the store (never its password) and, for the usual
mistakes, the fix.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import pyarrow as pa

from halo_rlm.store.base import StoreError
from halo_rlm.utils import first_line

__all__ = ["Connection", "Target", "literal", "open_connection", "parse_target"]

PASSWORD_ENV = "HALO_CLICKHOUSE_PASSWORD"
DEFAULT_DATABASE = "halo"
OTEL_DATABASE = "halo_otel"  # where the views over an exporter table go, by default
# Settings every HALO query runs with, so ClickHouse answers like SQL (and like the DuckDB store):
# outer joins give NULLs, not default values; count(DISTINCT) is exact. Large GROUP BYs and sorts
# spill to disk, so a query over tens of millions of spans stays within a bounded memory. A query may
# carry the ids of every trace a text search matched (the web app's lists), so it may be long.
QUERY_SETTINGS: dict[str, Any] = {
    "max_query_size": 1 << 30,
    "join_use_nulls": 1,
    "count_distinct_implementation": "uniqExact",
    "max_bytes_before_external_group_by": 500_000_000,
    "max_bytes_before_external_sort": 500_000_000,
    "output_format_arrow_string_as_string": 1,
    "output_format_arrow_low_cardinality_as_dictionary": 0,
}


@dataclass(frozen=True)
class Target:
    """Where a ClickHouse store lives, parsed from `chdb:PATH[?…]` or `clickhouse[s]://…`."""

    kind: str  # "chdb" or "http"
    database: str  # HALO's tables, or its views over an exporter table
    label: str  # the store as the user named it, without the password: for messages and reports
    path: str = ""  # chdb folder
    host: str = ""
    port: int = 0
    user: str = "default"
    password: str = field(default="", repr=False)
    secure: bool = False
    otel_table: str | None = None  # DATABASE.TABLE of an OpenTelemetry Collector exporter's traces


def parse_target(target: str) -> Target:
    """`chdb:PATH` or `clickhouse://USER:PASSWORD@HOST:PORT/DATABASE` (TLS with `clickhouses://` or
    `?secure=1`; the password may instead come from $HALO_CLICKHOUSE_PASSWORD).

    `?otel_table=TABLE` reads an OpenTelemetry Collector exporter's table through views instead of
    HALO's own tables: the table is in the URL's database (or `otel_table=DATABASE.TABLE`), the views
    in `?database=NAME` (default `halo_otel`). For chdb, `?database=NAME` names HALO's database."""
    scheme, _, rest = target.partition(":")
    scheme = scheme.lower()
    if scheme == "chdb":
        location, _, query = rest.partition("?")
        options = dict(parse_qsl(query))
        if not location:
            raise StoreError(f"{target}: give the folder of the embedded store, e.g. chdb:./traces.chdb")
        _known(options, {"database", "otel_table"}, f"chdb:{location}")
        otel_table = _otel_table(options.get("otel_table"), "default", target)
        default = OTEL_DATABASE if otel_table else DEFAULT_DATABASE
        return Target(
            "chdb",
            database=_identifier(options.get("database", default), target),
            label=target,
            path=str(Path(location).expanduser().resolve()),
            otel_table=otel_table,
        )
    if scheme not in ("clickhouse", "clickhouses"):
        raise StoreError(
            f"{target}: not a ClickHouse store (use chdb:PATH or clickhouse://HOST:8123/DATABASE)"
        )
    parts = urlsplit(target)
    host = parts.netloc.rsplit("@", 1)[-1]
    user = unquote(parts.username or "default")
    label = urlunsplit(parts._replace(netloc=f"{user}@{host}"))
    options = dict(parse_qsl(parts.query))
    _known(options, {"secure", "otel_table", "database"}, label)
    secure = scheme == "clickhouses" or options.get("secure", "").lower() in ("1", "true", "yes")
    if not parts.hostname:
        raise StoreError(f"{label}: no host; e.g. clickhouse://default@localhost:8123/halo")
    try:
        port = parts.port or (8443 if secure else 8123)
    except ValueError:
        raise StoreError(f"{label}: the port is not a number") from None
    in_path = _identifier(unquote(parts.path.strip("/")) or DEFAULT_DATABASE, label)
    otel_table = _otel_table(options.get("otel_table"), in_path, label)
    if otel_table:
        database = _identifier(options.get("database", OTEL_DATABASE), label)
    elif "database" in options:
        raise StoreError(f"{label}: name the database in the path (…:8123/DATABASE), not with database=")
    else:
        database = in_path
    return Target(
        "http",
        database=database,
        label=label,
        host=parts.hostname,
        port=port,
        user=user,
        password=unquote(parts.password) if parts.password is not None else os.environ.get(PASSWORD_ENV, ""),
        secure=secure,
        otel_table=otel_table,
    )


def _known(options: dict[str, str], known: set[str], shown: str) -> None:
    unknown = sorted(set(options) - known)
    if unknown:
        raise StoreError(f"{shown}: unknown option {unknown[0]!r}; known: {', '.join(sorted(known))}")


def _identifier(name: str, target: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise StoreError(f"{target}: {name!r} is not a plain database name (letters, digits, _)")
    return name


def _otel_table(name: str | None, database: str, target: str) -> str | None:
    """DATABASE.TABLE of the exporter table, the database defaulting to `database`."""
    if name is None:
        return None
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?", name):
        raise StoreError(
            f"{target}: otel_table={name!r} is not a table name (e.g. otel_traces or otel.otel_traces)"
        )
    return name if "." in name else f"{database}.{name}"


def literal(value: Any) -> str:
    """A Python value as a ClickHouse literal. Backslash is an escape character in ClickHouse
    strings (`'\\d'` is not the two characters a regex means), so both it and the quote are escaped."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    raise TypeError(f"no ClickHouse literal for {type(value).__name__}")


class Connection(ABC):
    """One connection to a ClickHouse database. Not for concurrent use: `another()` gives each
    thread its own."""

    def __init__(self, target: Target) -> None:
        self.target = target

    @abstractmethod
    def arrow(self, sql: str, settings: Mapping[str, Any] | None = None) -> pa.Table:
        """The result of one query as an Arrow table."""

    @abstractmethod
    def command(self, sql: str, settings: Mapping[str, Any] | None = None) -> None:
        """Run a statement that returns nothing (DDL, INSERT … SELECT, DELETE)."""

    @abstractmethod
    def insert_arrow(self, table: str, data: pa.Table) -> None:
        """Insert an Arrow table; returns once the server has confirmed the write."""

    @abstractmethod
    def another(self) -> Connection:
        """A new connection to the same database, for another thread."""

    @abstractmethod
    def use(self, database: str) -> None:
        """Make `database` the one unqualified table names mean."""

    @abstractmethod
    def close(self) -> None: ...

    def rows(self, sql: str, settings: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        return self.arrow(sql, settings).to_pylist()

    def value(self, sql: str, settings: Mapping[str, Any] | None = None) -> Any:
        table = self.arrow(sql, settings)
        return table.column(0)[0].as_py() if table.num_rows else None

    def error(self, exc: BaseException, doing: str = "") -> StoreError:
        """A ClickHouse error as one line naming the store, with the fix for the usual ones."""
        return StoreError(f"{self.target.label}: {explain(exc, self.target, doing)}")


def explain(exc: BaseException, target: Target, doing: str = "") -> str:
    text = str(exc)
    code_match = re.search(r"Code: (\d+)", text)
    code = int(code_match.group(1)) if code_match else None
    if code == 516 or "Authentication failed" in text:
        return (
            f"user {target.user!r} cannot sign in (wrong user or password); put the password in the URL "
            f"or in ${PASSWORD_ENV}"
        )
    if code == 81 or "UNKNOWN_DATABASE" in text:
        return (
            f"no database {target.database!r}; create it first (CREATE DATABASE {target.database}) or name "
            f"another in the URL"
        )
    if code == 164 or "READONLY" in text:
        return "the query tried to write or to read files or other servers, which the read-only store refuses"
    if code == 159 or "TIMEOUT_EXCEEDED" in text:
        return "the query took too long and was stopped; add filters or a LIMIT"
    if code == 241 or "MEMORY_LIMIT_EXCEEDED" in text:
        return "the query needed more memory than allowed; aggregate more or select fewer columns"
    message = _clickhouse_message(text)
    return f"{doing}: {message}" if doing else message


def _clickhouse_message(text: str) -> str:
    """The useful part of a ClickHouse exception: the DB::Exception sentence without the stack."""
    found = re.search(
        r"DB::Exception: (?:[\w.-]+: )?(.*?)(?: \(([A-Z_]+)\))?(?:\s*\(version [^)]*\))?\s*$",
        first_line(Exception(text)),
    )
    if found:
        # "In scope <the whole query>" repeats the query back; the message before it is the point.
        message = re.sub(r"[:.]? In scope .*$", "", found.group(1)).strip().rstrip(".:")
        return message + (f" ({found.group(2)})" if found.group(2) else "")
    return first_line(Exception(text))


def open_connection(target: Target) -> Connection:
    if target.kind == "chdb":
        return ChdbConnection(target)
    # Views over an exporter table may not exist yet: start in the exporter's database.
    return HttpConnection.connect(target, target.otel_table.split(".")[0] if target.otel_table else None)


# --- chdb ---------------------------------------------------------------------------------------

_chdb_lock = threading.Lock()
_chdb_open: dict[str, int] = {}  # folder -> open sessions; chdb runs one embedded server per process


class ChdbConnection(Connection):
    """A session of the ClickHouse engine embedded in this process. chdb runs one server per process
    on one folder: sessions on the same folder share it; another folder can be opened only once
    every session on the first is closed."""

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        from chdb import session  # imported here: a large library, loaded only for chdb stores

        with _chdb_lock:
            busy = [path for path, count in _chdb_open.items() if count and path != target.path]
            if busy:
                raise StoreError(
                    f"{target.label}: this process already has the chdb store {busy[0]} open, "
                    "and chdb serves one folder per process; close it first"
                )
            Path(target.path).mkdir(parents=True, exist_ok=True)
            try:
                self._session = session.Session(target.path)
            except Exception as exc:
                raise StoreError(
                    f"{target.label}: cannot open the embedded ClickHouse ({first_line(exc)})"
                ) from exc
            _chdb_open[target.path] = _chdb_open.get(target.path, 0) + 1
        self._closed = False
        for name, value in QUERY_SETTINGS.items():
            self.command(f"SET {name} = {literal(value)}")
        if self.value(f"SELECT count() FROM system.databases WHERE name = {literal(target.database)}"):
            self.command(f"USE {target.database}")  # so that a model's SQL can say `spans`

    def _run(self, sql: str, fmt: str, settings: Mapping[str, Any] | None) -> Any:
        if settings:
            sql = f"{sql}\nSETTINGS {', '.join(f'{k} = {literal(v)}' for k, v in settings.items())}"
        try:
            return self._session.query(sql, fmt)
        except Exception as exc:  # noqa: BLE001 - ChdbError/RuntimeError with ClickHouse's message
            self._recover()
            raise self.error(exc) from None

    def _recover(self) -> None:
        """After a failed query, chdb returns the next Arrow result corrupted (chdb 4.4); a query
        with no output in between clears that."""
        with contextlib.suppress(Exception):  # best effort; the next query reports any real problem
            self._session.query("SELECT 1", "Null")

    def arrow(self, sql: str, settings: Mapping[str, Any] | None = None) -> pa.Table:
        return self._run(sql, "ArrowTable", settings)

    def command(self, sql: str, settings: Mapping[str, Any] | None = None) -> None:
        self._run(sql, "Null", settings)

    def insert_arrow(self, table: str, data: pa.Table) -> None:
        # chdb reads a local pyarrow object through its Python() table function, by variable name.
        rows = data  # noqa: F841 - referenced by name in the SQL below
        try:
            self._session.query(f"INSERT INTO {table} SELECT * FROM Python(rows)", "Null")
        except Exception as exc:  # noqa: BLE001
            self._recover()
            raise self.error(exc, f"insert into {table}") from None

    def another(self) -> Connection:
        return ChdbConnection(self.target)

    def use(self, database: str) -> None:
        self.command(f"USE {database}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._session.close()
        with _chdb_lock:
            _chdb_open[self.target.path] -= 1


# --- HTTP ---------------------------------------------------------------------------------------


class HttpConnection(Connection):
    """A ClickHouse server over HTTP(S), through clickhouse-connect."""

    def __init__(self, target: Target, client: Any) -> None:
        super().__init__(target)
        self._client = client

    @classmethod
    def connect(cls, target: Target, database: str | None = None) -> HttpConnection:
        import clickhouse_connect  # imported here: only ClickHouse stores need it

        try:
            client = clickhouse_connect.get_client(
                host=target.host,
                port=target.port,
                username=target.user,
                password=target.password,
                database=database if database is not None else target.database,
                secure=target.secure,
                connect_timeout=10,
                send_receive_timeout=300,
                settings={k: v for k, v in QUERY_SETTINGS.items() if not k.startswith("output_format_arrow")},
            )
        except Exception as exc:  # noqa: BLE001 - clickhouse-connect raises several kinds
            raise StoreError(f"{target.label}: {_http_problem(exc, target)}") from None
        return cls(target, client)

    def arrow(self, sql: str, settings: Mapping[str, Any] | None = None) -> pa.Table:
        try:
            return self._client.query_arrow(sql, settings=dict(settings or {}), use_strings=True)
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"{self.target.label}: {_http_problem(exc, self.target)}") from None

    def command(self, sql: str, settings: Mapping[str, Any] | None = None) -> None:
        try:
            self._client.command(sql, settings=dict(settings or {}))
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"{self.target.label}: {_http_problem(exc, self.target)}") from None

    def insert_arrow(self, table: str, data: pa.Table) -> None:
        try:
            self._client.insert_arrow(table, data)
        except Exception as exc:  # noqa: BLE001
            raise StoreError(
                f"{self.target.label}: {_http_problem(exc, self.target, f'insert into {table}')}"
            ) from None

    def another(self) -> Connection:
        return HttpConnection.connect(self.target)

    def use(self, database: str) -> None:
        self._client.database = database

    def close(self) -> None:
        self._client.close()


def _http_problem(exc: BaseException, target: Target, doing: str = "") -> str:
    text = str(exc)
    lowered = text.lower()
    if (
        any(
            s in lowered
            for s in (
                "connection refused",
                "failed to establish",
                "name or service not known",
                "nodename nor servname",
                "max retries exceeded",
                "timed out",
            )
        )
        and "Code:" not in text
    ):
        return (
            f"cannot reach the server ({_reason(text)}); is ClickHouse running and listening for HTTP on "
            f"{target.host}:{target.port}?"
        )
    if "certificate" in lowered or ("ssl" in lowered and "Code:" not in text):
        return f"TLS failed ({_reason(text)}); check the port (8443 for clickhouses://) and the certificate"
    return explain(exc, target, doing)


def _reason(text: str) -> str:
    for pattern in (
        r"Connection refused",
        r"Name or service not known",
        r"timed out",
        r"Temporary failure[^')\"]*",
    ):
        found = re.search(pattern, text)
        if found:
            return found.group(0)
    return first_line(Exception(text))[:120]
