"""The SQL of the ClickHouse store: its tables (derived from `store.schema`), the rollup and orphan
refresh that keep them current, fragments that say in ClickHouse what the DuckDB store says in
DuckDB, and the checks that keep a model's SQL to one read-only SELECT.

Spans live in `spans_data`, a ReplacingMergeTree ordered by (trace_id, span_id): a span sent twice is
one row once parts merge, and until then the `spans` view reads it with FINAL, so no query ever counts
it twice. `version` decides which copy stays, with the DuckDB store's rule: a finished copy over an
in-flight one, then the earlier input, then the earlier line. Rollups live in `traces_data`, rebuilt
for the traces each ingest touched (not a materialised view: a view sees each inserted block alone,
so a re-sent span would be counted twice and the root span could not be chosen across blocks).
"""

from __future__ import annotations

import re

from halo_rlm.store.clickhouse_client import literal
from halo_rlm.store.schema import INPUT_COLUMNS, REJECT_COLUMNS, SPAN_COLUMNS, TRACE_COLUMNS, Column

__all__ = [
    "ALLOWED_TABLE_FUNCTIONS",
    "DATA_TABLES",
    "LEASE_TABLE",
    "TRACE_AGGREGATES",
    "ast_problems",
    "create_statements",
    "join_distinct",
    "json_text",
    "orphan_fixes",
    "regex_match",
    "rollup",
    "version_expr",
]

LOW_CARDINALITY = {
    "kind",
    "otel_kind",
    "status",
    "service",
    "scope",
    "scope_version",
    "model",
    "provider",
    "finish_reason",
}
NOT_NULL = {"trace_id", "span_id", "raw"}
TYPES = {
    "text": "Nullable(String)",
    "int": "Nullable(Int64)",
    "float": "Nullable(Float64)",
    "bool": "Bool",
    "json": "Nullable(String)",
    "text[]": "Array(String)",
    "time": "Nullable(DateTime64(6, 'UTC'))",
    "tool_calls": "Array(Tuple(id Nullable(String), name Nullable(String), arguments Nullable(String)))",
}
# Lists ClickHouse cannot hold as NULL come back empty; the DuckDB store has NULL there.
EMPTY_IS_NULL = ("tool_calls", "tools_offered")
# Table functions a model's query may use: they compute, they do not reach files or servers.
ALLOWED_TABLE_FUNCTIONS = {
    "numbers",
    "numbers_mt",
    "zeros",
    "zeros_mt",
    "values",
    "generateSeries",
    "generate_series",
    "null",
}
DATA_TABLES = ("spans_data", "traces_data", "inputs_data", "rejects", "meta")
# HALO's tables behind the views a query reads (spans_data holds copies not yet merged away).
# `halo_writers` holds the one-writer lease (`clickhouse_lease`): hosts and process ids, not traces.
LEASE_TABLE = "halo_writers"
INTERNAL_TABLES = {"spans_data", "traces_data", "inputs_data", "meta", LEASE_TABLE}


def column_type(column: Column) -> str:
    if column.name in NOT_NULL:
        kind = "String"
    elif column.name in LOW_CARDINALITY:
        kind = "LowCardinality(Nullable(String))"
    else:
        kind = TYPES[column.type]
    return f"{kind} CODEC(ZSTD(1))" if column.large else kind


def _columns(columns: tuple[Column, ...]) -> str:
    return ",\n  ".join(f"{c.name} {column_type(c)}" for c in columns)


def create_statements(database: str) -> list[str]:
    """HALO's tables and views in `database`, created on first use."""
    db = database
    span_names = ", ".join(c.name for c in SPAN_COLUMNS)
    trace_names = ", ".join(c.name for c in TRACE_COLUMNS)
    input_names = ", ".join(c.name for c in INPUT_COLUMNS)
    return [
        f"""CREATE TABLE IF NOT EXISTS {db}.spans_data (
  {_columns(SPAN_COLUMNS)},
  version UInt64,
  INDEX start_range start_ns TYPE minmax GRANULARITY 4
) ENGINE = ReplacingMergeTree(version) ORDER BY (trace_id, span_id)""",
        f"CREATE VIEW IF NOT EXISTS {db}.spans AS SELECT {span_names} FROM {db}.spans_data FINAL",
        f"""CREATE TABLE IF NOT EXISTS {db}.traces_data (
  {_columns(TRACE_COLUMNS).replace("trace_id Nullable(String)", "trace_id String")},
  refreshed UInt64
) ENGINE = ReplacingMergeTree(refreshed) ORDER BY trace_id""",
        f"CREATE VIEW IF NOT EXISTS {db}.traces AS SELECT {trace_names} FROM {db}.traces_data FINAL",
        f"""CREATE TABLE IF NOT EXISTS {db}.inputs_data (
  {_columns(INPUT_COLUMNS)},
  updated UInt64
) ENGINE = ReplacingMergeTree(updated) ORDER BY assumeNotNull(input_id)""",
        f"CREATE VIEW IF NOT EXISTS {db}.inputs AS SELECT {input_names} FROM {db}.inputs_data FINAL",
        f"""CREATE TABLE IF NOT EXISTS {db}.rejects (
  {_columns(REJECT_COLUMNS)}
) ENGINE = MergeTree ORDER BY (assumeNotNull(input_id), assumeNotNull(line_no))""",
        f"CREATE TABLE IF NOT EXISTS {db}.meta (key String, value String) ENGINE = ReplacingMergeTree ORDER BY key",
    ]


def version_expr() -> str:
    """`version` of a span row from its own columns (see the module docstring); even, so that a
    re-insert that only corrects `is_orphan` can take version + 1 and still lose to a better copy."""
    return (
        "(toUInt64(end_ns IS NOT NULL) * pow(2, 62) + (1073741823 - least(coalesce(input_id, 0), 1073741823))"
        " * 4294967296 + (4294967295 - least(coalesce(line_no, 0), 4294967295))) * 2"
    )


# One row per trace, in `store.schema.TRACE_COLUMNS` order, as the DuckDB rollup computes it
# (`duckdb_ingest.ROLLUP_SQL`): the root span is the earliest span without a parent (then the
# earliest orphan; spans without a start last), ties by span id; like DuckDB's arg_min, argMin skips
# rows whose value is NULL, so `root_status_message` is the first such span's message that is set.
# Costs are rounded to 9 decimals, so that float sums in another order give the same number.
_ROOT = "(parent_id IS NOT NULL, start_ns IS NULL, coalesce(start_ns, 0), span_id)"
_FIRST = "(assumeNotNull(start_ns), span_id)"
TRACE_AGGREGATES = f"""
  trace_id, count(), countIf(kind = 'LLM'), countIf(kind = 'TOOL'), countIf(status = 'ERROR'),
  countIf(status = 'ERROR') > 0,
  min(start_ns), max(coalesce(end_ns, start_ns)), max(coalesce(end_ns, start_ns)) - min(start_ns),
  argMin(span_id, {_ROOT}), argMin(name, {_ROOT}), argMin(status_message, {_ROOT}),
  arraySort(groupUniqArray(service)), arraySort(groupUniqArray(agent_name)),
  arraySort(groupUniqArray(model)), arraySort(groupUniqArray(tool_name)),
  sumIfOrNull(input_tokens, kind = 'LLM'), sumIfOrNull(output_tokens, kind = 'LLM'),
  sumIfOrNull(total_tokens, kind = 'LLM'), sumIfOrNull(cache_read_tokens, kind = 'LLM'),
  sumIfOrNull(reasoning_tokens, kind = 'LLM'), round(sumIfOrNull(cost, kind = 'LLM'), 9),
  argMinIf(session_id, {_FIRST}, session_id IS NOT NULL AND start_ns IS NOT NULL),
  argMinIf(user_id, {_FIRST}, user_id IS NOT NULL AND start_ns IS NOT NULL),
  countIf(is_orphan), countIf(end_ns IS NULL), sum(raw_bytes),
  leftUTF8(coalesce(argMinIf(input_value, {_FIRST}, parent_id IS NULL AND input_value IS NOT NULL),
                    argMinIf(input_value, {_FIRST}, input_value IS NOT NULL)), 400),
  leftUTF8(coalesce(argMaxIf(output_value, {_FIRST}, parent_id IS NULL AND output_value IS NOT NULL),
                    argMaxIf(output_value, {_FIRST}, output_value IS NOT NULL),
                    argMaxIf(nullIf(JSONExtractString(JSONExtractRaw(output_messages, -1), 'content'), ''), {_FIRST},
                             kind = 'LLM' AND output_messages IS NOT NULL)), 400),
  arraySort(groupUniqArrayIf(error_template, status = 'ERROR' AND error_template IS NOT NULL))"""


def rollup(db: str, touched: str) -> str:
    """Rebuild the rollups of the traces listed in `touched` (a subquery of trace ids)."""
    return f"""
INSERT INTO {db}.traces_data
SELECT {TRACE_AGGREGATES}, toUInt64(toUnixTimestamp64Nano(now64(9)))
FROM {db}.spans
WHERE trace_id IN (SELECT trace_id FROM {touched})
GROUP BY trace_id"""


def orphan_fixes(db: str, touched: str) -> str:
    """Spans of the touched traces whose `is_orphan` is wrong now (a parent arrived, or left with a
    forgotten input), re-inserted with the flag corrected and version + 1. Which spans is decided on
    their ids alone; only those few are read whole."""
    span_names = ", ".join("NOT is_orphan" if c.name == "is_orphan" else c.name for c in SPAN_COLUMNS)
    in_touched = f"trace_id IN (SELECT trace_id FROM {touched})"
    return f"""
INSERT INTO {db}.spans_data
SELECT {span_names}, version + 1
FROM {db}.spans_data FINAL
WHERE {in_touched} AND (trace_id, span_id) IN (
  SELECT s.trace_id, s.span_id
  FROM (SELECT trace_id, span_id, parent_id, is_orphan FROM {db}.spans WHERE {in_touched}) s
  LEFT JOIN (SELECT DISTINCT trace_id, span_id FROM {db}.spans WHERE {in_touched}) p
    ON p.trace_id = s.trace_id AND p.span_id = s.parent_id
  WHERE s.is_orphan != (s.parent_id IS NOT NULL AND p.span_id IS NULL))"""


def json_text(document: str, *path: str) -> str:
    """The value at `path` in a JSON document as text, as DuckDB's `json_extract_string` gives it: a
    string as itself, any other value as its JSON, NULL when missing or null."""
    at = ", ".join([document, *(literal(key) for key in path)])
    return (
        f"multiIf(JSONType({at}) = 'String', JSONExtractString({at}), JSONType({at}) = 'Null', NULL, "
        f"nullIf(JSONExtractRaw({at}), ''))"
    )


def join_distinct(parts: str) -> str:
    """The parts (an array of nullable texts) joined with " | ", each said once: a part another part
    contains is left out, as the DuckDB store's `halo_join_distinct` macro does."""
    return (
        "arrayStringConcat(arrayFilter((p, i) -> p IS NOT NULL AND p != '' AND NOT arrayExists("
        "(q, j) -> j != i AND q IS NOT NULL AND position(q, p) > 0 AND (q != p OR j < i), "
        f"{parts}, arrayEnumerate({parts})), {parts}, arrayEnumerate({parts})), ' | ')"
    )


def regex_match(expr: str, pattern_literal: str) -> str:
    """RE2 search with DuckDB's meaning of `.` (not a newline): ClickHouse's `match` lets `.` match
    a newline unless told `(?-s)`."""
    return f"match({expr}, concat('(?-s)', {pattern_literal}))"


# --- the model's SQL ----------------------------------------------------------------------------

# Scalar functions that read files, dictionaries or other tables; `readonly` does not stop `file()`.
_READING_FUNCTIONS = (
    "file",
    "joinget",
    "joingetornull",
    "catboostevaluate",
    "modelevaluate",
    "hascolumnintable",
)
_AST_LINE = re.compile(r"^( *)(\S+)(?: (\S+))?")


def ast_problems(ast: str, database: str, databases: set[str]) -> str | None:
    """Why a query (as `EXPLAIN AST` prints it: one node a line, children indented one space) is not
    one plain SELECT over the tables of `database`: a FORMAT, INTO OUTFILE or SETTINGS clause, a table
    of another of the server's `databases` (also as `x IN db.table`), a table function that reaches
    files, URLs or other servers, or a function that reads files or dictionaries. Parsing runs
    nothing, so this is decided before ClickHouse resolves any name; unqualified names then resolve
    in `database`."""
    lines = ast.splitlines()
    if not lines or not lines[0].startswith("SelectWithUnionQuery"):
        kind = lines[0].split(" ")[0] if lines else "nothing"
        return f"only SELECT queries are allowed (got {kind.removesuffix('Query') or kind})"
    if not lines[0].startswith("SelectWithUnionQuery (children 1)"):
        return "INTO OUTFILE, FORMAT and SETTINGS clauses are not allowed; send the SELECT alone"
    others = {name.lower() for name in databases} - {database.lower()}
    parents: list[str] = []  # the node at each depth above the current line
    for line in lines:
        found = _AST_LINE.match(line)
        if not found:
            continue
        depth, node, name = len(found.group(1)), found.group(2), found.group(3) or ""
        del parents[depth:]
        parent = parents[-1] if parents else ""
        parents.append(node)
        if node in ("Set", "SetQuery"):
            return "SETTINGS clauses are not allowed"
        if node == "TableIdentifier" and name.rsplit(".", 1)[-1].strip("`") in INTERNAL_TABLES:
            return f"the query reads {name}; only this store's tables (spans, traces, rejects, inputs) can be queried"
        if node in ("TableIdentifier", "Identifier") and "." in name:
            qualifier = name.split(".", 1)[0].strip("`")
            if qualifier.lower() in others or (node == "TableIdentifier" and qualifier != database):
                return f"the query reads {name}; only this store's tables (spans, traces, rejects, inputs) can be queried"
        if node != "Function":
            continue
        if parent == "TableExpression":
            if name not in ALLOWED_TABLE_FUNCTIONS:
                return f"table function {name}() is not allowed (no files, URLs or other servers)"
        elif name.lower() in _READING_FUNCTIONS or name.lower().startswith("dict"):
            return f"function {name}() is not allowed (it reads files, dictionaries or other tables)"
    return None
