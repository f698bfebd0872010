"""DuckDB's SQL for the store: the tables' DDL (from `store.schema`), and the normalising INSERT that
turns a flat span's JSON into the canonical columns.

The per-span work runs inside DuckDB as one vectorized SELECT: each line is parsed once by
`json_transform` into a struct holding only the keys we read, and every canonical column is a
COALESCE over the attribute conventions in priority order (trace-formats.md §7): OpenInference,
OTel GenAI (`gen_ai.*`), OpenLLMetry, HALO's `inference.*` projection, then `langfuse.*` and the
Vercel AI SDK (`formats.conventions`). Messages come in too many shapes for SQL (JSON blobs,
flattened `llm.output_messages.N.*` keys, GenAI parts, indexed OpenLLMetry keys), so spans that
carry them go through `conventions.output_messages_json`, registered as a vectorized DuckDB function
(`duckdb_udfs`).

Only the model's *output* is normalised at ingest: tool calls, answers and finish reasons are what
queries and detectors use, while the input side repeats the whole conversation on every LLM call
(most of a trace's bytes). Views reassemble both sides from the raw record when a span is shown.
"""

from __future__ import annotations

from typing import Any

import orjson

from halo_rlm.formats.conventions import (
    ATTRIBUTE_KEYS,
    KINDS,
    MESSAGE_MARKERS,
    SOURCES,
    TEXT_CAP,
)
from halo_rlm.store.schema import SPAN_COLUMNS, Table

TYPES = {
    "text": "VARCHAR",
    "int": "BIGINT",
    "float": "DOUBLE",
    "bool": "BOOLEAN",
    "json": "JSON",
    "text[]": "VARCHAR[]",
    "time": "TIMESTAMP",
    "tool_calls": "STRUCT(id VARCHAR, name VARCHAR, arguments VARCHAR)[]",
}
CONSTRAINTS = {
    ("spans", "trace_id"): "NOT NULL",
    ("spans", "span_id"): "NOT NULL",
    ("spans", "is_orphan"): "DEFAULT false",
    ("traces", "trace_id"): "PRIMARY KEY",
    ("inputs", "input_id"): "PRIMARY KEY",
}


def create_table(table: Table) -> str:
    """CREATE TABLE for one of `schema.TABLES`; long text columns are zstd-compressed."""
    columns = []
    for column in table.columns:
        spec = f"{column.name} {TYPES[column.type]}"
        if column.large:
            spec += " USING COMPRESSION zstd"
        if (table.name, column.name) in CONSTRAINTS:
            spec += " " + CONSTRAINTS[(table.name, column.name)]
        columns.append(spec)
    return f"CREATE TABLE {table.name} ({', '.join(columns)})"


_STRUCT = {
    "trace_id": "JSON",
    "span_id": "JSON",
    "parent_span_id": "VARCHAR",
    "name": "VARCHAR",
    "kind": "VARCHAR",
    "start_time": "VARCHAR",
    "end_time": "VARCHAR",
    "duration": "VARCHAR",
    "status": {"code": "VARCHAR", "message": "VARCHAR"},
    "resource": {"attributes": {"service.name": "VARCHAR"}},
    "scope": {"name": "VARCHAR", "version": "VARCHAR"},
    "events": [
        {
            "name": "VARCHAR",
            "attributes": {
                "exception.type": "VARCHAR",
                "exception.message": "VARCHAR",
                "exception.stacktrace": "VARCHAR",
            },
        }
    ],
    "attributes": dict.fromkeys(ATTRIBUTE_KEYS, "VARCHAR"),
}
PARSE_STRUCTURE = orjson.dumps(_STRUCT).decode()

MESSAGES_TYPE = (
    '{"output_messages":"JSON",'
    '"tool_calls":[{"id":"VARCHAR","name":"VARCHAR","arguments":"VARCHAR"}],'
    '"tools_offered":["VARCHAR"],"finish_reason":"VARCHAR"}'
)


def _attr(key: str) -> str:
    return 'nullif(j.attributes."' + key + "\", '')"


def _coalesce(field: str) -> str:
    return "coalesce(" + ", ".join(_attr(k) for k in SOURCES[field]) + ")"


def _count(field: str) -> str:
    """Token counts: numbers only (a JSON `true` is not one token); negative counts become NULL."""
    parts = ", ".join(f"try_cast(try_cast({_attr(k)} AS DOUBLE) AS BIGINT)" for k in SOURCES[field])
    return f"nullif(greatest(coalesce({parts}), -1), -1)"


def _capped(column: str) -> str:
    head, tail = TEXT_CAP * 3 // 4, TEXT_CAP // 4
    return (
        # strlen (bytes) first: it costs nothing, and length (characters) is never more
        f"CASE WHEN strlen({column}) > {TEXT_CAP} AND length({column}) > {TEXT_CAP} "
        f"THEN left({column}, {head}) || '\n…[halo: ' || "
        f"(length({column}) - {head + tail})::VARCHAR || ' characters cut]…\n' || right({column}, {tail}) "
        f"ELSE {column} END"
    )


# Membership by string search: DuckDB turns `x IN (...)` and `list_contains([...], x)` over constants into
# MARK joins, which keeps the whole normalising pipeline on one thread.
KIND_SET = "'|" + "|".join(KINDS) + "|'"


def _is_kind(expr: str) -> str:
    return f"contains({KIND_SET}, '|' || {expr} || '|')"


# The Vercel AI SDK: `ai.generateText` / `ai.streamText` / `ai.generateObject` / `ai.streamObject` wrap
# the model calls (`.doGenerate` / `.doStream`) and repeat their usage, so only the inner spans are LLM.
_VERCEL = "coalesce(j.attributes.\"ai.operationId\", CASE WHEN starts_with(j.name, 'ai.') THEN j.name END)"
KIND_SQL = f"""CASE
  WHEN {_is_kind('upper(j.attributes."openinference.span.kind")')} THEN upper(j.attributes."openinference.span.kind")
  WHEN {_is_kind("upper(j.kind)")} THEN upper(j.kind)
  WHEN regexp_full_match({_VERCEL}, 'ai[.](generateText|streamText|generateObject|streamObject)[.]do(Generate|Stream)')
    THEN 'LLM'
  WHEN regexp_full_match({_VERCEL}, 'ai[.](embed|embedMany)[.]doEmbed') THEN 'EMBEDDING'
  WHEN {_VERCEL} = 'ai.toolCall' THEN 'TOOL'
  WHEN regexp_full_match({_VERCEL}, 'ai[.](generateText|streamText|generateObject|streamObject)')
    THEN CASE WHEN nullif(j.attributes."ai.telemetry.functionId", '') IS NOT NULL THEN 'AGENT' ELSE 'CHAIN' END
  WHEN regexp_full_match({_VERCEL}, 'ai[.](embed|embedMany)') THEN 'CHAIN'
  WHEN contains('|chat|text_completion|generate_content|completion|',
    '|' || lower(j.attributes."gen_ai.operation.name") || '|')
    THEN 'LLM'
  WHEN lower(j.attributes."gen_ai.operation.name") = 'embeddings' THEN 'EMBEDDING'
  WHEN lower(j.attributes."gen_ai.operation.name") = 'retrieval' THEN 'RETRIEVER'
  WHEN lower(j.attributes."gen_ai.operation.name") = 'execute_tool' THEN 'TOOL'
  WHEN contains('|invoke_agent|create_agent|', '|' || lower(j.attributes."gen_ai.operation.name") || '|') THEN 'AGENT'
  WHEN lower(j.attributes."gen_ai.operation.name") = 'invoke_workflow' THEN 'CHAIN'
  WHEN {_is_kind('upper(coalesce(j.attributes."inference.observation_kind", j.attributes."inference.observation.kind"))')} THEN upper(coalesce(j.attributes."inference.observation_kind", j.attributes."inference.observation.kind"))
  WHEN upper(j.attributes."langfuse.observation.type") = 'GENERATION' THEN 'LLM'
  WHEN {_is_kind('upper(j.attributes."langfuse.observation.type")')} THEN upper(j.attributes."langfuse.observation.type")
  WHEN lower(j.attributes."traceloop.span.kind") = 'tool' THEN 'TOOL'
  WHEN lower(j.attributes."traceloop.span.kind") = 'agent' THEN 'AGENT'
  WHEN contains('|workflow|task|', '|' || lower(j.attributes."traceloop.span.kind") || '|') THEN 'CHAIN'
  WHEN {_coalesce("tool_name")} IS NOT NULL THEN 'TOOL'
  WHEN {_coalesce("model")} IS NOT NULL AND {_coalesce("input_tokens")} IS NOT NULL THEN 'LLM'
  WHEN starts_with(j.name, 'function.') OR starts_with(j.name, 'execute_tool ') THEN 'TOOL'
  WHEN starts_with(j.name, 'agent.') OR starts_with(j.name, 'invoke_agent ') THEN 'AGENT'
  ELSE 'SPAN' END"""

_EXCEPTIONS = "list_filter(j.events, lambda e: e.name = 'exception')"
_ERROR_FLAG = (
    "(upper(j.status.code) LIKE '%ERROR%' OR j.status.code = '2'"
    " OR upper(j.attributes.\"langfuse.observation.level\") = 'ERROR'"
    " OR nullif(j.attributes.\"error.type\", '') IS NOT NULL)"
)
STATUS_SQL = (
    f"CASE WHEN {_ERROR_FLAG} THEN 'ERROR' "
    "WHEN upper(j.status.code) LIKE '%OK%' OR j.status.code = '1' THEN 'OK' ELSE 'UNSET' END"
)
STATUS_MESSAGE_SQL = (
    "coalesce(nullif(j.status.message, ''), "
    f"CASE WHEN {_ERROR_FLAG} THEN coalesce(nullif({_EXCEPTIONS}[1].attributes.\"exception.message\", ''), "
    "nullif(j.attributes.\"langfuse.observation.status_message\", ''), nullif(j.attributes.\"error.type\", '')) END)"
)

TOOL_ONLY = "CASE WHEN kind = 'TOOL' THEN {} END"


def _insert_sql(source: str, span_filter: str, returning: str, *, tallied: bool = False) -> str:
    """Normalise the lines of `source` (columns `line_no`, `raw`) into `spans`; `tallied` counts them
    in the store's `Tally` as they pass."""
    return f"""
INSERT INTO spans ({", ".join(column.name for column in SPAN_COLUMNS)})
SELECT
  trace_id, span_id, parent_id, name, kind, otel_kind, service, scope, scope_version, status, status_message,
  start_ns, end_ns, CASE WHEN end_ns >= start_ns THEN end_ns - start_ns END AS duration_ns,
  model, provider, input_tokens, output_tokens,
  coalesce(total_tokens, CASE WHEN input_tokens IS NOT NULL OR output_tokens IS NOT NULL
    THEN coalesce(input_tokens, 0) + coalesce(output_tokens, 0) END) AS total_tokens,
  cache_read_tokens, cache_write_tokens, reasoning_tokens,
  CASE WHEN cost >= 0 AND isfinite(cost) THEN cost END AS cost, session_id, user_id,
  coalesce(agent_name, CASE WHEN kind = 'AGENT' THEN regexp_replace(name, '^(agent\\.|invoke_agent )', '') END)
    AS agent_name,
  CASE WHEN kind = 'TOOL' THEN coalesce(tool_name, regexp_replace(name, '^(function\\.|execute_tool )', '')) END
    AS tool_name,
  tool_call_id,
  CASE WHEN kind = 'TOOL' THEN {_capped("tool_args")} END AS tool_args,
  CASE WHEN kind = 'TOOL' THEN {_capped("tool_result")} END AS tool_result,
  {_capped("input_value")} AS input_value, {_capped("output_value")} AS output_value,
  m.output_messages, m.tool_calls, m.tools_offered,
  coalesce(m.finish_reason, finish_reason) AS finish_reason, error_type, exceptions,
  CASE WHEN status = 'ERROR' THEN halo_template(coalesce(nullif(halo_join_distinct([
    coalesce(status_message, error_type), CASE WHEN kind = 'TOOL' THEN left(tool_result, 300) END]), ''),
    '(no message)'))
  END AS error_template,
  false AS is_orphan, $input_id AS input_id, line_no, {"halo_tally($input_id, strlen(raw))" if tallied else "strlen(raw)"} AS raw_bytes, raw
FROM (
  SELECT *, CASE WHEN has_messages THEN json_transform(halo_messages(raw), '{MESSAGES_TYPE}') END AS m
  FROM (
    SELECT
      line_no, raw,
      trace_id, span_id,
      parent_id,
      coalesce(j.name, '') AS name, {KIND_SQL} AS kind,
      upper(replace(coalesce(j.kind, 'INTERNAL'), 'SPAN_KIND_', '')) AS otel_kind,
      j.resource.attributes."service.name" AS service, j.scope.name AS scope, j.scope.version AS scope_version,
      {STATUS_SQL} AS status, {STATUS_MESSAGE_SQL} AS status_message,
      start_ns, end_ns,
      {_coalesce("model")} AS model, {_coalesce("provider")} AS provider,
      {_count("input_tokens")} AS input_tokens, {_count("output_tokens")} AS output_tokens,
      {_count("total_tokens")} AS total_tokens, {_count("cache_read_tokens")} AS cache_read_tokens,
      {_count("cache_write_tokens")} AS cache_write_tokens, {_count("reasoning_tokens")} AS reasoning_tokens,
      try_cast({_coalesce("cost")} AS DOUBLE) AS cost,
      {_coalesce("session_id")} AS session_id, {_coalesce("user_id")} AS user_id,
      {_coalesce("agent_name")} AS agent_name, {_coalesce("tool_name")} AS tool_name,
      {_coalesce("tool_call_id")} AS tool_call_id, {_coalesce("tool_args")} AS tool_args,
      {_coalesce("tool_result")} AS tool_result, {_coalesce("input_value")} AS input_value,
      {_coalesce("output_value")} AS output_value,
      coalesce({_coalesce("error_type")}, {_EXCEPTIONS}[1].attributes."exception.type") AS error_type,
      CASE WHEN len({_EXCEPTIONS}) > 0 THEN to_json(list_transform({_EXCEPTIONS}, lambda e: {{
        'type': e.attributes."exception.type", 'message': e.attributes."exception.message",
        'stacktrace': e.attributes."exception.stacktrace"}})) END AS exceptions,
      nullif(j.attributes."llm.finish_reason", '') AS finish_reason,
      ({" OR ".join(f'j.attributes."{k}" IS NOT NULL' for k in MESSAGE_MARKERS)}
        OR len(list_filter(j.events, lambda e: starts_with(e.name, 'gen_ai.'))) > 0) AS has_messages
    FROM (
      -- Each step reads columns the step before made: a macro given an expression repeats it.
      SELECT line_no, raw, j, halo_id(trace_text) AS trace_id, halo_id(span_text) AS span_id,
        nullif(halo_id(parent_text), '') AS parent_id, start_ns,
        coalesce(end_given, CASE WHEN duration < 9223372036854775807 - start_ns THEN start_ns + duration END)
          AS end_ns
      FROM (
        SELECT line_no, raw, j,
          CASE WHEN contains('|VARCHAR|BIGINT|UBIGINT|', '|' || json_type(j.trace_id) || '|')
            THEN halo_trimmed(j.trace_id ->> '$') END AS trace_text,
          CASE WHEN contains('|VARCHAR|BIGINT|UBIGINT|', '|' || json_type(j.span_id) || '|')
            THEN halo_trimmed(j.span_id ->> '$') END AS span_text,
          halo_trimmed(j.parent_span_id) AS parent_text,
          halo_ns(j.start_time) AS start_ns, halo_ns(j.end_time) AS end_given, halo_duration(j.duration) AS duration
        FROM (
          SELECT line_no, raw,
            -- try() turns malformed JSON into NULL: one parse per line instead of json_valid + transform.
            CASE WHEN starts_with(raw, '{{') THEN try(json_transform(raw, '{PARSE_STRUCTURE}')) END AS j
          FROM {source}
        )
      )
    )
    {span_filter}
  )
)
{returning}
"""


# A batch of lines registered as `batch`; lines that are not flat spans are left for the Python decoders
# (the statement returns how many it inserted; the ingest finds which ones were left by their line numbers).
INSERT_SQL = _insert_sql("batch", "WHERE trace_id <> '' AND span_id <> ''", "")

# A whole file of flat spans in one statement, which DuckDB spreads over every core. Every record
# goes in: a caller finding a record without ids rolls back and reads the file line by line.
BULK_OBJECT_BYTES = 16 << 20  # a longer line fails the statement, and the file is read line by line
BULK_INSERT_SQL = _insert_sql(
    f"""(SELECT NULL::BIGINT AS line_no, json::VARCHAR AS raw FROM read_json_objects(
          $path, format = 'newline_delimited', compression = $compression,
          maximum_object_size = {BULK_OBJECT_BYTES}))""",
    "",
    "",
    tallied=True,
)

ID_SPACE = " \t\n\v\f\r"  # what ids are trimmed of (as formats.spans.normalize_id does)
MACROS = [
    # Parts of an error (message, type, a tool's result...) joined with " | ", each said once: a part
    # another part contains (a tool's result that repeats the message) is left out.
    """CREATE OR REPLACE TEMP MACRO halo_join_distinct(parts) AS array_to_string(list_filter(parts,
      lambda p, i: p IS NOT NULL AND p <> '' AND NOT list_bool_or(list_transform(parts,
        lambda q, j: j <> i AND q IS NOT NULL AND contains(q, p) AND (q <> p OR j < i)))), ' | ')""",
    # Error messages as templates: the same failure with different ids, numbers, paths, URLs or quoted
    # values gives the same text, so errors can be grouped and counted. Quoted lowercase identifiers
    # ('rate_limit_error', 'departure_date') say what failed and stay; other quoted values are masked.
    # An HTTP status, masked with the other numbers, is kept as a suffix.
    r"""CREATE OR REPLACE TEMP MACRO halo_template(m) AS trim(
      regexp_replace(regexp_replace(regexp_replace(regexp_replace(regexp_replace(regexp_replace(
      regexp_replace(regexp_replace(regexp_replace(regexp_replace(left(m, 400),
        '\s+', ' ', 'g'),
        '''([a-z_.]*)''|''[^'']*''', '''\1''', 'g'),
        '"([a-z_.]*)"|"[^"]*"', '"\1"', 'g'),
        '''''|""|`[^`]*`', '<str>', 'g'),
        '[a-zA-Z][a-zA-Z0-9+.-]*://[^\s,;)\]]+', '<url>', 'g'),
        '[\w.+-]+@[\w-]+\.[\w.-]+', '<email>', 'g'),
        '(?:[A-Za-z]:)?(?:[/\\][\w.@~-]+){2,}[/\\]?|\.{1,2}/[\w./@~-]+', '<path>', 'g'),
        '\b[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\b', '<id>', 'g'),
        '[A-Za-z0-9_][A-Za-z0-9_-]*[0-9][A-Za-z0-9_-]*|[0-9]', '<n>', 'g'),
        '(?:<n>[.:,/-]?)+<n>', '<n>', 'g')
      || coalesce(' [HTTP ' || nullif(regexp_extract(m, '(?i)(?:code|status|http)[ :=/]*([1-5][0-9][0-9])\b', 1), '')
                  || ']', ''))""",
    # Ids as the source wrote them (formats.spans.normalize_id), from text already trimmed (`halo_trimmed`):
    # hex, with or without `0x`, lower-cased (UUID dashes kept); all-zero ids mean "none"; others as text.
    # One flat CASE over a column: a macro nested in another would repeat its argument's expression.
    """CREATE OR REPLACE TEMP MACRO halo_id(t) AS CASE
      WHEN t IS NULL OR ltrim(t, '0-') = '' THEN ''
      WHEN starts_with(t, '0x') OR starts_with(t, '0X') THEN
        CASE WHEN NOT regexp_full_match(substr(t, 3), '[0-9a-fA-F]+') THEN t
             WHEN ltrim(substr(t, 3), '0') = '' THEN ''
             ELSE lower(substr(t, 3)) END
      WHEN t = lower(t) THEN t
      WHEN regexp_full_match(t, '[0-9a-fA-F-]+') THEN lower(t)
      ELSE t END""",
    f"""CREATE OR REPLACE TEMP MACRO halo_trimmed(x) AS trim(x, '{ID_SPACE}')""",
    # Durations (formats.spans.duration_ns): nanoseconds, or ISO-8601 (`PT1M48.75533S`; weeks to seconds).
    r"""CREATE OR REPLACE TEMP MACRO halo_duration(x) AS CASE
      WHEN x IS NULL OR x = '' THEN NULL
      WHEN regexp_full_match(x, '[0-9]+') THEN try_cast(x AS BIGINT)
      WHEN regexp_full_match(x, '[0-9]*\.[0-9]+([eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+')
        THEN try_cast(try_cast(x AS DOUBLE) AS BIGINT)
      WHEN regexp_full_match(x, '(?i)P(?:[0-9]+(?:[.,][0-9]+)?W)?(?:[0-9]+(?:[.,][0-9]+)?D)?(?:T(?:[0-9]+(?:[.,][0-9]+)?H)?(?:[0-9]+(?:[.,][0-9]+)?M)?(?:[0-9]+(?:[.,][0-9]+)?S)?)?')
        AND regexp_matches(x, '[0-9]') AND NOT regexp_matches(x, '(?i)T$')
        THEN try_cast(round((
          coalesce(try_cast(replace(regexp_extract(x, '(?i)([0-9.,]+)W', 1), ',', '.') AS DECIMAL(38, 9)), 0) * 604800
          + coalesce(try_cast(replace(regexp_extract(x, '(?i)([0-9.,]+)D', 1), ',', '.') AS DECIMAL(38, 9)), 0) * 86400
          + coalesce(try_cast(replace(regexp_extract(x, '(?i)([0-9.,]+)H', 1), ',', '.') AS DECIMAL(38, 9)), 0) * 3600
          + coalesce(try_cast(replace(regexp_extract(x, '(?i)T.*?([0-9.,]+)M', 1), ',', '.') AS DECIMAL(38, 9)), 0) * 60
          + coalesce(try_cast(replace(regexp_extract(x, '(?i)([0-9.,]+)S', 1), ',', '.') AS DECIMAL(38, 9)), 0)
        ) * 1000000000) AS BIGINT)
      END""",
    # Times: ISO-8601 (with Z, an offset, or none = UTC), or numbers in ns, or s/ms/us by magnitude.
    """CREATE OR REPLACE TEMP MACRO halo_ns(x) AS CASE
      WHEN x IS NULL OR x = '' THEN NULL
      WHEN ends_with(x, 'Z') AND substr(x, 5, 1) = '-' THEN epoch_ns(try_cast(x AS TIMESTAMP_NS))  -- the usual
      WHEN regexp_full_match(x, '[0-9]+') THEN halo_scale(try_cast(x AS HUGEINT))
      WHEN regexp_full_match(x, '[0-9]*\\.[0-9]+([eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+')
        THEN halo_scale(try_cast(try_cast(x AS DOUBLE) * CASE WHEN try_cast(x AS DOUBLE) < 1e11 THEN 1e9 ELSE 1 END
                                 AS HUGEINT))
      WHEN regexp_matches(x, '[+-][0-9][0-9]:?[0-9][0-9]$') THEN epoch_ns(try_cast(x AS TIMESTAMPTZ))
      ELSE epoch_ns(try_cast(x AS TIMESTAMP_NS)) END""",
    """CREATE OR REPLACE TEMP MACRO halo_scale(n) AS CAST(
      CASE WHEN n IS NULL OR n <= 0 THEN NULL
           WHEN n < 100000000000 THEN n * 1000000000
           WHEN n < 100000000000000 THEN n * 1000000
           WHEN n < 100000000000000000 THEN n * 1000
           WHEN n < 9223372036854775807 THEN n END AS BIGINT)""",
]


def register_macros(con: Any) -> None:
    for macro in MACROS:
        con.execute(macro)
