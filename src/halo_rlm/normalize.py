"""From a flat span's JSON to the store's canonical columns.

The per-span work runs inside DuckDB as one vectorized SELECT: each line is parsed once by
`json_transform` into a struct holding only the keys we read, and every canonical column is a
COALESCE over the attribute conventions in priority order (trace-formats.md §7): OpenInference,
OTel GenAI (`gen_ai.*`), OpenLLMetry, HALO's `inference.*` projection, then `langfuse.*` and the
Vercel AI SDK. Messages come in too many shapes for SQL (JSON blobs, flattened
`llm.output_messages.N.*` keys, GenAI parts, indexed OpenLLMetry keys), so spans that carry them go
through `normalize_messages`, registered as a vectorized DuckDB function.

Only the model's *output* is normalised at ingest: tool calls, answers and finish reasons are what
queries and detectors use, while the input side repeats the whole conversation on every LLM call
(most of a trace's bytes). Views reassemble both sides from the raw record when a span is shown.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import orjson
import pyarrow as pa

KINDS = (
    "AGENT",
    "LLM",
    "TOOL",
    "CHAIN",
    "RETRIEVER",
    "EMBEDDING",
    "RERANKER",
    "GUARDRAIL",
    "EVALUATOR",
    "PROMPT",
)
TEXT_CAP = 32_768  # canonical text columns keep head and tail up to this many characters; `raw` keeps all

# Canonical field -> attribute keys, highest priority first.
SOURCES: dict[str, list[str]] = {
    "model": [
        "llm.model_name",
        "llm.response.model_name",
        "gen_ai.response.model",
        "gen_ai.request.model",
        "llm.request.model_name",
        "llm.request.model",
        "inference.llm.model_name",
        "langfuse.observation.model.name",
        "ai.model.id",
    ],
    "provider": [
        "llm.provider",
        "llm.system",
        "gen_ai.provider.name",
        "gen_ai.system",
        "inference.llm.provider",
        "ai.model.provider",
    ],
    "input_tokens": [
        "llm.token_count.prompt",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.prompt_tokens",
        "llm.usage.prompt_tokens",
        "inference.llm.input_tokens",
        "ai.usage.inputTokens",
        "ai.usage.promptTokens",
    ],
    "output_tokens": [
        "llm.token_count.completion",
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.completion_tokens",
        "llm.usage.completion_tokens",
        "inference.llm.output_tokens",
        "ai.usage.outputTokens",
        "ai.usage.completionTokens",
    ],
    "total_tokens": [
        "llm.token_count.total",
        "gen_ai.usage.total_tokens",
        "llm.usage.total_tokens",
        "ai.usage.totalTokens",
        "ai.usage.tokens",
    ],
    "cache_read_tokens": [
        "llm.token_count.prompt_details.cache_read",
        "llm.token_count.prompt_cached",
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_read_input_tokens",
        "inference.llm.cached_input_tokens",
        "ai.usage.cachedInputTokens",
    ],
    "cache_write_tokens": [
        "llm.token_count.prompt_details.cache_write",
        "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.cache_creation_input_tokens",
    ],
    "reasoning_tokens": [
        "llm.token_count.completion_details.reasoning",
        "llm.token_count.completion_reasoning",
        "gen_ai.usage.reasoning.output_tokens",
        "inference.llm.reasoning_output_tokens",
        "ai.usage.reasoningTokens",
    ],
    "cost": [
        "llm.cost.total",
        "gen_ai.usage.cost",
        "inference.llm.cost.total",
        "langfuse.observation.cost_details.total",
    ],
    "session_id": [
        "session.id",
        "gen_ai.conversation.id",
        "traceloop.association.properties.session_id",
        "inference.session_id",
        "langfuse.session.id",
        "ai.telemetry.metadata.sessionId",
        "ai.telemetry.metadata.session_id",
        "conversation.id",
        "conversation_id",
        "agent.workflow.group_id",
    ],
    "user_id": [
        "user.id",
        "enduser.id",
        "traceloop.association.properties.user_id",
        "inference.user_id",
        "langfuse.user.id",
        "ai.telemetry.metadata.userId",
        "ai.telemetry.metadata.user_id",
    ],
    "agent_name": [
        "agent.name",
        "gen_ai.agent.name",
        "inference.agent_name",
        "sdk.data.agent_name",
        "ai.telemetry.functionId",
    ],
    "tool_name": ["tool.name", "gen_ai.tool.name", "ai.toolCall.name"],
    "tool_call_id": ["tool_call.id", "gen_ai.tool.call.id", "ai.toolCall.id"],
    "tool_args": [
        "gen_ai.tool.call.arguments",
        "tool.arguments",
        "input.value",
        "traceloop.entity.input",
        "ai.toolCall.args",
    ],
    "tool_result": [
        "gen_ai.tool.call.result",
        "output.value",
        "traceloop.entity.output",
        "ai.toolCall.result",
    ],
    "input_value": [
        "input.value",
        "traceloop.entity.input",
        "gen_ai.prompt",
        "langfuse.observation.input",
        "ai.prompt",
    ],
    "output_value": [
        "output.value",
        "traceloop.entity.output",
        "gen_ai.completion",
        "langfuse.observation.output",
        "ai.response.text",
    ],
    "error_type": ["error.type", "exception.type"],
}
# Keys read for classification only.
CLASSIFIERS = [
    "openinference.span.kind",
    "gen_ai.operation.name",
    "inference.observation_kind",
    "inference.observation.kind",
    "langfuse.observation.type",
    "langfuse.observation.level",
    "langfuse.observation.status_message",
    "traceloop.span.kind",
    "llm.finish_reason",
]
# Any of these present means the span carries model output or tool definitions to normalise.
MESSAGE_MARKERS = [
    "llm.output_messages",
    "llm.output_messages.0.message.role",
    "llm.output_messages.0.message.content",
    "llm.output_messages.0.message.tool_calls.0.tool_call.function.name",
    "llm.tools",
    "llm.tools.0.tool.json_schema",
    "gen_ai.output.messages",
    "gen_ai.completion.0.role",
    "gen_ai.completion.0.content",
    "gen_ai.tool.definitions",
    "ai.response.toolCalls",
    "agent.tools",
    "agent.handoffs",
    "llm.request.functions.0.name",
]
ATTRIBUTE_KEYS = sorted(
    {k for keys in SOURCES.values() for k in keys} | set(CLASSIFIERS) | set(MESSAGE_MARKERS)
)

_STRUCT = {
    "trace_id": "JSON",
    "span_id": "JSON",
    "parent_span_id": "VARCHAR",
    "name": "VARCHAR",
    "kind": "VARCHAR",
    "start_time": "VARCHAR",
    "end_time": "VARCHAR",
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
    "attributes": {key: "VARCHAR" for key in ATTRIBUTE_KEYS},
}
PARSE_STRUCTURE = orjson.dumps(_STRUCT).decode()

MESSAGES_TYPE = (
    '{"output_messages":"JSON",'
    '"tool_calls":[{"id":"VARCHAR","name":"VARCHAR","arguments":"VARCHAR"}],'
    '"tools_offered":["VARCHAR"],"finish_reason":"VARCHAR"}'
)

# Canonical span columns in table order; the store creates its table from this list.
SPAN_COLUMNS: list[tuple[str, str]] = [
    ("trace_id", "VARCHAR NOT NULL"),
    ("span_id", "VARCHAR NOT NULL"),
    ("parent_id", "VARCHAR"),
    ("name", "VARCHAR"),
    ("kind", "VARCHAR"),
    ("otel_kind", "VARCHAR"),
    ("service", "VARCHAR"),
    ("scope", "VARCHAR"),
    ("scope_version", "VARCHAR"),
    ("status", "VARCHAR"),
    ("status_message", "VARCHAR"),
    ("start_ns", "BIGINT"),
    ("end_ns", "BIGINT"),
    ("duration_ns", "BIGINT"),
    ("model", "VARCHAR"),
    ("provider", "VARCHAR"),
    ("input_tokens", "BIGINT"),
    ("output_tokens", "BIGINT"),
    ("total_tokens", "BIGINT"),
    ("cache_read_tokens", "BIGINT"),
    ("cache_write_tokens", "BIGINT"),
    ("reasoning_tokens", "BIGINT"),
    ("cost", "DOUBLE"),
    ("session_id", "VARCHAR"),
    ("user_id", "VARCHAR"),
    ("agent_name", "VARCHAR"),
    ("tool_name", "VARCHAR"),
    ("tool_call_id", "VARCHAR"),
    ("tool_args", "VARCHAR USING COMPRESSION zstd"),
    ("tool_result", "VARCHAR USING COMPRESSION zstd"),
    ("input_value", "VARCHAR USING COMPRESSION zstd"),
    ("output_value", "VARCHAR USING COMPRESSION zstd"),
    ("output_messages", "JSON"),
    ("tool_calls", "STRUCT(id VARCHAR, name VARCHAR, arguments VARCHAR)[]"),
    ("tools_offered", "VARCHAR[]"),
    ("finish_reason", "VARCHAR"),
    ("error_type", "VARCHAR"),
    ("exceptions", "JSON"),
    ("error_template", "VARCHAR"),
    ("is_orphan", "BOOLEAN DEFAULT false"),
    ("input_id", "INTEGER"),
    ("line_no", "BIGINT"),
    ("raw_bytes", "INTEGER"),
    ("raw", "VARCHAR USING COMPRESSION zstd"),
]


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
        f"CASE WHEN length({column}) > {TEXT_CAP} THEN left({column}, {head}) || '\n…[halo: ' || "
        f"(length({column}) - {head + tail})::VARCHAR || ' characters cut]…\n' || right({column}, {tail}) "
        f"ELSE {column} END"
    )


# Membership by string search: DuckDB turns `x IN (...)` and `list_contains([...], x)` over constants into
# MARK joins, which keeps the whole normalising pipeline on one thread.
KIND_SET = "'|" + "|".join(KINDS) + "|'"


def _is_kind(expr: str) -> str:
    return f"contains({KIND_SET}, '|' || {expr} || '|')"


KIND_SQL = f"""CASE
  WHEN {_is_kind('upper(j.attributes."openinference.span.kind")')} THEN upper(j.attributes."openinference.span.kind")
  WHEN {_is_kind("upper(j.kind)")} THEN upper(j.kind)
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


def _insert_sql(source: str, span_filter: str, returning: str) -> str:
    """Normalise the lines of `source` (columns `line_no`, `raw`) into `spans`."""
    return f"""
INSERT INTO spans ({", ".join(name for name, _ in SPAN_COLUMNS)})
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
  CASE WHEN status = 'ERROR' THEN halo_template(
    coalesce(status_message, error_type, '(no message)')
    || CASE WHEN kind = 'TOOL' AND tool_result IS NOT NULL THEN ' | ' || left(tool_result, 300) ELSE '' END)
  END AS error_template,
  false AS is_orphan, $input_id AS input_id, line_no, strlen(raw) AS raw_bytes, raw
FROM (
  SELECT *, CASE WHEN has_messages THEN json_transform(halo_messages(raw), '{MESSAGES_TYPE}') END AS m
  FROM (
    SELECT
      line_no, raw,
      trace_id, span_id,
      nullif(halo_id(j.parent_span_id), '') AS parent_id,
      coalesce(j.name, '') AS name, {KIND_SQL} AS kind,
      upper(replace(coalesce(j.kind, 'INTERNAL'), 'SPAN_KIND_', '')) AS otel_kind,
      j.resource.attributes."service.name" AS service, j.scope.name AS scope, j.scope.version AS scope_version,
      {STATUS_SQL} AS status, {STATUS_MESSAGE_SQL} AS status_message,
      halo_ns(j.start_time) AS start_ns, halo_ns(j.end_time) AS end_ns,
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
      ({" OR ".join(f'j.attributes."{k}" IS NOT NULL' for k in MESSAGE_MARKERS)}) AS has_messages
    FROM (
      SELECT line_no, raw, j,
        CASE WHEN contains('|VARCHAR|BIGINT|UBIGINT|', '|' || json_type(j.trace_id) || '|')
          THEN halo_id(j.trace_id ->> '$') END AS trace_id,
        CASE WHEN contains('|VARCHAR|BIGINT|UBIGINT|', '|' || json_type(j.span_id) || '|')
          THEN halo_id(j.span_id ->> '$') END AS span_id
      FROM (
        SELECT line_no, raw,
          -- try() turns malformed JSON into NULL: one parse per line instead of json_valid + transform.
          CASE WHEN starts_with(raw, '{{') THEN try(json_transform(raw, '{PARSE_STRUCTURE}')) END AS j
        FROM {source}
      )
    )
    {span_filter}
  )
)
{returning}
"""


# A batch of lines registered as `batch`; lines that are not flat spans are left for the Python decoders.
INSERT_SQL = _insert_sql("batch", "WHERE trace_id <> '' AND span_id <> ''", "RETURNING line_no")

# A whole file of flat spans in one statement, which DuckDB spreads over every core. Every record
# goes in: a caller finding a record without ids rolls back and reads the file line by line.
BULK_OBJECT_BYTES = 16 << 20  # a longer line fails the statement, and the file is read line by line
BULK_INSERT_SQL = _insert_sql(
    f"""(SELECT NULL::BIGINT AS line_no, json::VARCHAR AS raw FROM read_json_objects(
          $path, format = 'newline_delimited', compression = $compression,
          maximum_object_size = {BULK_OBJECT_BYTES}))""",
    "",
    "",
)

# Spans the Python decoders wrote to a staging file, one `{"line": N, "span": {...}}` per line.
STAGED_INSERT_SQL = _insert_sql(
    f"""(SELECT line AS line_no, span::VARCHAR AS raw FROM read_json(
          $path, format = 'newline_delimited', columns = {{'line': 'BIGINT', 'span': 'JSON'}},
          maximum_object_size = {BULK_OBJECT_BYTES}))""",
    "WHERE trace_id <> '' AND span_id <> ''",
    "",
)

MACROS = [
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
    # Ids: hex ids lowercased (without `0x` or UUID dashes); all-zero ids mean "none"; others kept as text.
    """CREATE OR REPLACE TEMP MACRO halo_id(x) AS CASE
      WHEN x IS NULL OR regexp_full_match(x, '\\s*0*\\s*') THEN ''
      WHEN regexp_full_match(x, '\\s*(0[xX])?[0-9a-fA-F]+\\s*') THEN lower(regexp_replace(trim(x), '^0[xX]', ''))
      WHEN regexp_full_match(x, '\\s*[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\\s*')
        THEN lower(replace(trim(x), '-', ''))
      ELSE trim(x) END""",
    # Times: ISO-8601 (with Z, an offset, or none = UTC), or numbers in ns, or s/ms/us by magnitude.
    """CREATE OR REPLACE TEMP MACRO halo_ns(x) AS CASE
      WHEN x IS NULL OR x = '' THEN NULL
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


def register_udfs(con: Any) -> None:
    """The message normaliser, needed only to ingest (it is Python, so read-only stores skip it)."""
    con.create_function(
        "halo_messages", _messages_udf, ["VARCHAR"], "VARCHAR", type="arrow", side_effects=False
    )


def _messages_udf(column: pa.Array) -> pa.Array:
    """Normalised messages of each raw span line (the line is parsed once, here). It runs inside
    DuckDB's INSERT, where an exception or a NULL would abort the whole statement: a line it cannot
    read gets no messages, and its raw record still holds everything."""
    out = []
    for text in column.to_pylist():
        try:
            attrs = orjson.loads(text).get("attributes")
            out.append(
                orjson.dumps(normalize_messages(attrs, inputs=False)).decode()
                if isinstance(attrs, dict)
                else _NO_MESSAGES
            )
        except Exception:  # noqa: BLE001 - untrusted input; see above
            out.append(_NO_MESSAGES)
    return pa.array(out, type=pa.string())


# --- messages ---------------------------------------------------------------------------------

_FLAT_KEY = re.compile(r"^(?:message\.)?(.+)$")
_TOOL_CALL_KEY = re.compile(r"^tool_calls\.(\d+)\.(?:tool_call\.)?(.+)$")


def normalize_messages(attrs: dict[str, Any], *, inputs: bool = True) -> dict[str, Any]:
    """Messages, tool calls and offered tools in one shape, whatever convention the span used
    (without the input messages when `inputs` is false).

    A message is `{role, content, tool_calls: [{id, name, arguments}], tool_call_id, name}` with
    empty parts left out; `content` is text (multi-part content is joined)."""
    grouped: dict[str, dict[int, dict[str, Any]]] | None = None

    def indexed(prefix: str) -> dict[int, dict[str, Any]] | None:
        # Scanning every key is the costly part, and blobs usually make it unnecessary.
        nonlocal grouped
        if grouped is None:
            grouped = _group_indexed(attrs, _INDEXED if inputs else _OUTPUT_INDEXED)
        return grouped.get(prefix)

    result: dict[str, Any] = {}
    if inputs:
        messages = (
            _blob(attrs.get("llm.input_messages"))
            or _from_indexed(indexed("llm.input_messages"))
            or _genai(attrs.get("gen_ai.input.messages"), attrs.get("gen_ai.system_instructions"))
            or _from_indexed(indexed("gen_ai.prompt"))
            or _blob(attrs.get("ai.prompt.messages"))
        )
        result["input_messages"] = [_public(m) for m in messages] or None
    outputs = (
        _blob(attrs.get("llm.output_messages"))
        or _genai(attrs.get("gen_ai.output.messages"), None)
        or _vercel_output(attrs)
        or _from_indexed(indexed("llm.output_messages"))
        or _from_indexed(indexed("gen_ai.completion"))
    )
    tool_calls = [call for message in outputs for call in message.get("tool_calls", ())]
    finish = next((m["finish_reason"] for m in reversed(outputs) if m.get("finish_reason")), None)
    if finish is None:
        reasons = _json(attrs.get("gen_ai.response.finish_reasons"))
        finish = reasons[0] if isinstance(reasons, list) and reasons and isinstance(reasons[0], str) else None
    return result | {
        "output_messages": [_public(m) for m in outputs] or None,
        "tool_calls": tool_calls or None,
        "tools_offered": _tools_offered(attrs, indexed) or None,
        "finish_reason": finish,
    }


def _public(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k != "finish_reason" and v not in (None, "", [])}


_OUTPUT_INDEXED = ("llm.output_messages.", "gen_ai.completion.", "llm.tools.", "llm.request.functions.")
_INDEXED = ("llm.input_messages.", "gen_ai.prompt.", *_OUTPUT_INDEXED)


def _group_indexed(attrs: dict[str, Any], prefixes: tuple[str, ...]) -> dict[str, dict[int, dict[str, Any]]]:
    """`prefix.N.rest` keys grouped as {prefix: {N: {rest: value}}} for the indexed conventions."""
    groups: dict[str, dict[int, dict[str, Any]]] = {}
    pattern = _indexed_key(prefixes)
    for key, value in attrs.items():
        if key.startswith(prefixes) and (match := pattern.match(key)):
            prefix, index, rest = match.groups()
            groups.setdefault(prefix, {}).setdefault(int(index), {})[rest] = value
    return groups


@functools.cache
def _indexed_key(prefixes: tuple[str, ...]) -> re.Pattern[str]:
    # ASCII digits only: int() refuses some characters str.isdigit() accepts ("²").
    return re.compile("(" + "|".join(re.escape(p[:-1]) for p in prefixes) + r")\.([0-9]+)\.(.+)", re.S)


def _from_indexed(items: dict[int, dict[str, Any]] | None) -> list[dict[str, Any]]:
    if not items:
        return []
    messages = []
    for index in sorted(items):
        fields: dict[str, Any] = {}
        calls: dict[int, dict[str, Any]] = defaultdict(dict)
        parts: dict[int, str] = {}
        for key, value in items[index].items():
            rest = _FLAT_KEY.match(key).group(1)  # type: ignore[union-attr]
            tool = _TOOL_CALL_KEY.match(rest)
            if tool:
                calls[int(tool.group(1))][tool.group(2).removeprefix("function.")] = value
            elif rest.startswith("contents."):
                number, _, leaf = rest[len("contents.") :].partition(".")
                if leaf.endswith("text") and number.isdecimal():
                    parts[int(number)] = str(value)
            else:
                fields[rest] = value
        content = fields.get("content")
        if content is None and parts:
            content = "\n".join(parts[i] for i in sorted(parts))
        messages.append(
            {
                "role": _text(fields.get("role")),
                "content": _content(content),
                "tool_calls": [_call(calls[i]) for i in sorted(calls)],
                "tool_call_id": _text(fields.get("tool_call_id")),
                "name": _text(fields.get("name")),
                "finish_reason": _text(fields.get("finish_reason")),
            }
        )
    return messages


def _blob(value: Any) -> list[dict[str, Any]]:
    """OpenAI-chat-shaped messages stored as one JSON string (or list), possibly `{message: ...}`-wrapped."""
    data = _json(value)
    if isinstance(data, dict):
        data = data.get("messages") or ([data] if "role" in data else None)
    if isinstance(data, str) and data:
        return [{"role": "user", "content": data}]
    if not isinstance(data, list):
        return []
    messages = []
    for item in data:
        if isinstance(item, dict) and isinstance(item.get("message"), dict):
            item = item["message"]
        if not isinstance(item, dict):
            continue
        content, calls, tool_call_id = _anthropic_blocks(item.get("content"))
        for call in item.get("tool_calls") or ():
            if isinstance(call, dict):
                calls.append(_call({**call, **(call.get("function") or {})}))
        messages.append(
            {
                "role": _text(item.get("role")),
                "content": content,
                "tool_calls": calls,
                "tool_call_id": _text(item.get("tool_call_id")) or tool_call_id,
                "name": _text(item.get("name")),
                "finish_reason": _text(item.get("finish_reason")),
            }
        )
    return messages


def _anthropic_blocks(content: Any) -> tuple[str | None, list[dict[str, Any]], str | None]:
    """Content as text; `tool_use` blocks become tool calls and `tool_result` blocks a tool reply."""
    if not isinstance(content, list):
        return _content(content), [], None
    texts, calls, tool_call_id = [], [], None
    for block in content:
        if not isinstance(block, dict):
            texts.append(str(block))
        elif block.get("type") == "tool_use":
            calls.append(
                _call({"id": block.get("id"), "name": block.get("name"), "arguments": block.get("input")})
            )
        elif block.get("type") == "tool_result":
            tool_call_id = _text(block.get("tool_use_id"))
            texts.append(_content(block.get("content")) or "")
        elif isinstance(block.get("text"), str):
            texts.append(block["text"])
    return "\n".join(t for t in texts if t) or None, calls, tool_call_id


def _genai(value: Any, system: Any) -> list[dict[str, Any]]:
    """OTel GenAI messages: `{role, parts: [{type: text|tool_call|tool_call_response, ...}]}`."""
    data = _json(value)
    messages = []
    system_parts = _json(system)
    if isinstance(system_parts, list):
        text = "\n".join(str(p.get("content", "")) for p in system_parts if isinstance(p, dict))
        messages.append({"role": "system", "content": text or None, "tool_calls": []})
    elif isinstance(system_parts, str) and system_parts:
        messages.append({"role": "system", "content": system_parts, "tool_calls": []})
    if not isinstance(data, list):
        return messages
    for item in data:
        if not isinstance(item, dict):
            continue
        texts, calls, tool_call_id = [], [], None
        for part in item.get("parts") or ():
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            if kind == "tool_call":
                calls.append(_call(part))
            elif kind == "tool_call_response":
                tool_call_id = _text(part.get("id"))
                texts.append(_content(part.get("response", part.get("result"))) or "")
            elif "content" in part:
                texts.append(_content(part.get("content")) or "")
        if "content" in item and not texts:
            texts.append(_content(item["content"]) or "")
        messages.append(
            {
                "role": _text(item.get("role")),
                "content": "\n".join(t for t in texts if t) or None,
                "tool_calls": calls,
                "tool_call_id": tool_call_id,
                "finish_reason": _text(item.get("finish_reason")),
            }
        )
    return messages


def _vercel_output(attrs: dict[str, Any]) -> list[dict[str, Any]]:
    calls = _json(attrs.get("ai.response.toolCalls"))
    if not isinstance(calls, list) or not calls:
        return []
    return [
        {
            "role": "assistant",
            "content": _content(attrs.get("ai.response.text")),
            "tool_calls": [
                _call({"id": c.get("toolCallId"), "name": c.get("toolName"), "arguments": c.get("args")})
                for c in calls
                if isinstance(c, dict)
            ],
        }
    ]


def _tools_offered(
    attrs: dict[str, Any], indexed: Callable[[str], dict[int, dict[str, Any]] | None]
) -> list[str]:
    names: list[str] = []
    blobs = [attrs.get(key) for key in ("llm.tools", "gen_ai.tool.definitions", "agent.tools")]
    for value in blobs:
        names.extend(_names_in(value))
    if not any(blobs):
        for fields in (indexed("llm.tools") or {}).values():
            for value in fields.values():
                names.extend(_names_in(value))
        for fields in (indexed("llm.request.functions") or {}).values():
            if isinstance(fields.get("name"), str):
                names.append(fields["name"])
    # Agent SDKs offer each handoff target as a `transfer_to_<agent>` tool.
    for target in _names_in(attrs.get("agent.handoffs")):
        snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", target).replace(" ", "_").replace("-", "_").lower()
        names += [f"transfer_to_{snake}", f"transfer_to_{target.lower().replace(' ', '_')}"]
    return list(dict.fromkeys(n for n in names if n))


def _names_in(value: Any) -> tuple[str, ...]:
    return _names_in_text(value) if isinstance(value, str) else tuple(_tool_names(value))


@functools.lru_cache(maxsize=4096)
def _names_in_text(text: str) -> tuple[str, ...]:
    """Tool names in a JSON text. Every LLM call repeats the same tool definitions, so the parse
    is remembered."""
    return tuple(_tool_names(_json(text)))


def _tool_names(value: Any) -> list[str]:
    if isinstance(value, list):
        return [name for item in value for name in _tool_names(item)]
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        function = value.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return [function["name"]]
        for key in ("name", "tool", "json_schema"):
            inner = value.get(key)
            if isinstance(inner, str) and key == "name":
                return [inner]
            if isinstance(inner, dict | str) and key != "name":
                return _tool_names(_json(inner))
    return []


def _call(data: dict[str, Any]) -> dict[str, Any]:
    arguments = data.get("arguments", data.get("args", data.get("input")))
    if arguments is not None and not isinstance(arguments, str):
        arguments = orjson.dumps(arguments).decode()
    return {"id": _text(data.get("id")), "name": _text(data.get("name")), "arguments": arguments}


def _content(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, list):
        texts = [p.get("text") if isinstance(p, dict) else str(p) for p in value]
        return "\n".join(t for t in texts if isinstance(t, str) and t) or None
    return orjson.dumps(value).decode()


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _json(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("[", "{", '"'):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


_NO_MESSAGES = orjson.dumps(normalize_messages({}, inputs=False)).decode()
