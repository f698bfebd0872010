"""HALO's tables as views over an OpenTelemetry Collector ClickHouse exporter table (`otel_traces`),
so the detectors, the engine's tools and the UI read a live production table without copying it.

The canonical columns are the ingest normaliser's, said in ClickHouse over the exporter's columns:
attribute conventions come from the same priority lists (`formats.conventions.SOURCES`), the span kind,
status and error template follow the same rules, and `raw` is the span rebuilt in HALO's flat JSON
shape, so search, views and verification work unchanged. Model output (tool calls, offered tools,
finish reason) is read from the OpenInference flattened keys and the GenAI JSON attributes; other
message conventions stay readable in `raw`.
"""

from __future__ import annotations

from halo_rlm.formats.conventions import KINDS, SOURCES, TEXT_CAP
from halo_rlm.store.base import StoreError
from halo_rlm.store.clickhouse_client import Connection, Target, literal
from halo_rlm.store.clickhouse_sql import TRACE_AGGREGATES, join_distinct
from halo_rlm.store.schema import INPUT_COLUMNS, REJECT_COLUMNS, SPAN_COLUMNS, TRACE_COLUMNS

__all__ = ["REQUIRED_COLUMNS", "map_otel_table", "spans_select"]

REQUIRED_COLUMNS = (
    "Timestamp",
    "TraceId",
    "SpanId",
    "ParentSpanId",
    "SpanName",
    "SpanKind",
    "ServiceName",
    "ResourceAttributes",
    "SpanAttributes",
    "Duration",
    "StatusCode",
    "StatusMessage",
    "Events.Timestamp",
    "Events.Name",
    "Events.Attributes",
)


def _attr(key: str) -> str:
    return f"nullIf(SpanAttributes[{literal(key)}], '')"


def _coalesce(field: str) -> str:
    return "coalesce(" + ", ".join(_attr(k) for k in SOURCES[field]) + ")"


def _count(field: str) -> str:
    """Token counts as the ingest reads them: a number (truncated), negatives and non-numbers NULL."""
    parts = ", ".join(f"accurateCastOrNull(toFloat64OrNull({_attr(k)}), 'Int64')" for k in SOURCES[field])
    return f"nullIf(greatest(coalesce({parts}), -1), -1)"


def _capped(column: str) -> str:
    head, tail = TEXT_CAP * 3 // 4, TEXT_CAP // 4
    return (
        f"if(lengthUTF8({column}) > {TEXT_CAP}, concat(leftUTF8({column}, {head}), '\\n…[halo: ', "
        f"toString(lengthUTF8({column}) - {head + tail}), ' characters cut]…\\n', rightUTF8({column}, {tail})), "
        f"{column})"
    )


_KIND_SET = "|" + "|".join(KINDS) + "|"


def _is_kind(expr: str) -> str:
    return f"position({literal(_KIND_SET)}, concat('|', {expr}, '|')) > 0 AND {expr} != ''"


_OP = f"lower({_attr('gen_ai.operation.name')})"
_OI_KIND = f"upper({_attr('openinference.span.kind')})"
_INFERENCE_KIND = (
    f"upper(coalesce({_attr('inference.observation_kind')}, {_attr('inference.observation.kind')}))"
)
_LANGFUSE_KIND = f"upper({_attr('langfuse.observation.type')})"
_TRACELOOP_KIND = f"lower({_attr('traceloop.span.kind')})"
KIND = f"""multiIf(
  {_is_kind(f"coalesce({_OI_KIND}, '')")}, {_OI_KIND},
  {_is_kind("upper(SpanKind)")}, upper(SpanKind),
  {_OP} IN ('chat', 'text_completion', 'generate_content', 'completion'), 'LLM',
  {_OP} = 'embeddings', 'EMBEDDING',
  {_OP} = 'retrieval', 'RETRIEVER',
  {_OP} = 'execute_tool', 'TOOL',
  {_OP} IN ('invoke_agent', 'create_agent'), 'AGENT',
  {_OP} = 'invoke_workflow', 'CHAIN',
  {_is_kind(f"coalesce({_INFERENCE_KIND}, '')")}, {_INFERENCE_KIND},
  {_LANGFUSE_KIND} = 'GENERATION', 'LLM',
  {_is_kind(f"coalesce({_LANGFUSE_KIND}, '')")}, {_LANGFUSE_KIND},
  {_TRACELOOP_KIND} = 'tool', 'TOOL',
  {_TRACELOOP_KIND} = 'agent', 'AGENT',
  {_TRACELOOP_KIND} IN ('workflow', 'task'), 'CHAIN',
  {_coalesce("tool_name")} IS NOT NULL, 'TOOL',
  {_coalesce("model")} IS NOT NULL AND {_count("input_tokens")} IS NOT NULL, 'LLM',
  startsWith(SpanName, 'function.') OR startsWith(SpanName, 'execute_tool '), 'TOOL',
  startsWith(SpanName, 'agent.') OR startsWith(SpanName, 'invoke_agent '), 'AGENT',
  'SPAN')"""

_EXCEPTION_AT = "indexOf(`Events.Name`, 'exception')"
_ERROR_FLAG = (
    f"(upper(StatusCode) LIKE '%ERROR%' OR StatusCode = '2' OR upper({_attr('langfuse.observation.level')}) = 'ERROR'"
    f" OR {_attr('error.type')} IS NOT NULL)"
)
STATUS = f"multiIf({_ERROR_FLAG}, 'ERROR', upper(StatusCode) LIKE '%OK%' OR StatusCode = '1', 'OK', 'UNSET')"
STATUS_MESSAGE = (
    f"coalesce(nullIf(StatusMessage, ''), if({_ERROR_FLAG}, coalesce("
    f"if({_EXCEPTION_AT} > 0, nullIf(`Events.Attributes`[{_EXCEPTION_AT}]['exception.message'], ''), NULL), "
    f"{_attr('langfuse.observation.status_message')}, {_attr('error.type')}), NULL))"
)
EXCEPTIONS = (
    "if(has(`Events.Name`, 'exception'), toJSONString(arrayMap(a -> CAST((nullIf(a['exception.type'], ''), "
    "nullIf(a['exception.message'], ''), nullIf(a['exception.stacktrace'], '')), "
    "'Tuple(type Nullable(String), message Nullable(String), stacktrace Nullable(String))'), "
    "arrayFilter((a, n) -> n = 'exception', `Events.Attributes`, `Events.Name`))), NULL)"
)
# The DuckDB store's halo_template macro (store.duckdb_sql), step by step; ClickHouse replacements
# write a group as \\1 and its `.` would match a newline without (?-s).
_TEMPLATE_STEPS = [
    (r"\s+", " "),
    (r"'([a-z_.]*)'|'[^']*'", r"'\1'"),
    (r'"([a-z_.]*)"|"[^"]*"', r'"\1"'),
    (r"''|\"\"|`[^`]*`", "<str>"),
    (r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s,;)\]]+", "<url>"),
    (r"[\w.+-]+@[\w-]+\.[\w.-]+", "<email>"),
    (r"(?:[A-Za-z]:)?(?:[/\\][\w.@~-]+){2,}[/\\]?|\.{1,2}/[\w./@~-]+", "<path>"),
    (r"\b[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\b", "<id>"),
    (r"[A-Za-z0-9_][A-Za-z0-9_-]*[0-9][A-Za-z0-9_-]*|[0-9]", "<n>"),
    (r"(?:<n>[.:,/-]?)+<n>", "<n>"),
]


_HTTP_STATUS = r"(?-s)(?i)(?:code|status|http)[ :=/]*([1-5][0-9][0-9])\b"


def template(message: str) -> str:
    expr = f"leftUTF8({message}, 400)"
    for pattern, replacement in _TEMPLATE_STEPS:
        expr = f"replaceRegexpAll({expr}, {literal('(?-s)' + pattern)}, {literal(replacement)})"
    http = f"nullIf(regexpExtract({message}, {literal(_HTTP_STATUS)}, 1), '')"
    return f"trimBoth(concat({expr}, coalesce(concat(' [HTTP ', {http}, ']'), '')))"


# Model output, OpenInference flattened keys: llm.output_messages.N.message.tool_calls.M.tool_call.function.*
_CALL_KEY = r"^llm\.output_messages\.(\d+)\.message\.tool_calls\.(\d+)\.tool_call\.function\.name$"
TOOL_CALLS = f"""arrayMap(k -> CAST((
    nullIf(SpanAttributes[replaceRegexpOne(k, 'function\\\\.name$', 'id')], ''),
    nullIf(SpanAttributes[k], ''),
    nullIf(SpanAttributes[replaceRegexpOne(k, 'name$', 'arguments')], '')),
    'Tuple(id Nullable(String), name Nullable(String), arguments Nullable(String))'),
  arraySort(k -> (toUInt32OrZero(extract(k, {literal(_CALL_KEY)})),
                  toUInt32OrZero(regexpExtract(k, {literal(_CALL_KEY)}, 2))),
            arrayFilter(k -> match(k, {literal(_CALL_KEY)}), mapKeys(SpanAttributes))))"""
_SCHEMA_KEY = r"^llm\.tools\.(\d+)\.tool\.json_schema$"
TOOLS_OFFERED = f"""arrayDistinct(arrayFilter(n -> n != '', arrayMap(k -> coalesce(
    nullIf(JSONExtractString(SpanAttributes[k], 'function', 'name'), ''), JSONExtractString(SpanAttributes[k], 'name')),
  arraySort(k -> toUInt32OrZero(extract(k, {literal(_SCHEMA_KEY)})),
            arrayFilter(k -> match(k, {literal(_SCHEMA_KEY)}), mapKeys(SpanAttributes))))))"""
FINISH_REASON = f"""coalesce(
  nullIf(SpanAttributes['llm.output_messages.0.message.finish_reason'], ''),
  nullIf(JSONExtractString(SpanAttributes['gen_ai.response.finish_reasons'], 1), ''),
  {_attr("llm.finish_reason")})"""
OUTPUT_MESSAGES = """if(SpanAttributes['llm.output_messages.0.message.role'] = '', NULL, toJSONString([CAST((
    nullIf(SpanAttributes['llm.output_messages.0.message.role'], ''),
    nullIf(SpanAttributes['llm.output_messages.0.message.content'], '')),
  'Tuple(role Nullable(String), content Nullable(String))')]))"""


def _raw() -> str:
    """The span in HALO's flat JSON shape, as `halo export` would write it."""
    events = (
        "toJSONString(arrayMap((t, n, a) -> CAST((toString(toUnixTimestamp64Nano(t)), n, a), "
        "'Tuple(time String, name String, attributes Map(String, String))'), "
        "`Events.Timestamp`, `Events.Name`, `Events.Attributes`))"
    )
    return f"""concat(
  '{{"trace_id":', toJSONString(TraceId), ',"span_id":', toJSONString(SpanId),
  ',"parent_span_id":', toJSONString(ParentSpanId), ',"name":', toJSONString(SpanName),
  ',"kind":', toJSONString(SpanKind), ',"start_time":', toJSONString(toString(toUnixTimestamp64Nano(Timestamp))),
  ',"end_time":', toJSONString(toString(toUnixTimestamp64Nano(Timestamp) + Duration)),
  ',"status":{{"code":', toJSONString(StatusCode), ',"message":', toJSONString(StatusMessage), '}}',
  ',"resource":{{"attributes":', toJSONString(ResourceAttributes), '}}',
  ',"attributes":', toJSONString(SpanAttributes), ',"events":', {events}, '}}')"""


def spans_select(table: str, scope_columns: bool = True) -> str:
    """A SELECT of HALO's span columns (in `store.schema.SPAN_COLUMNS` order) over an exporter table.
    Exporters before the ScopeName/ScopeVersion columns put the scope in the span's attributes."""
    columns = {
        "trace_id": "TraceId",
        "span_id": "SpanId",
        "parent_id": "nullIf(ParentSpanId, '')",
        "name": "SpanName",
        "kind": "kind",
        "otel_kind": "upper(replaceOne(if(SpanKind = '', 'INTERNAL', SpanKind), 'SPAN_KIND_', ''))",
        "service": "nullIf(ServiceName, '')",
        "scope": "nullIf(ScopeName, '')"
        if scope_columns
        else "nullIf(SpanAttributes['otel.scope.name'], '')",
        "scope_version": "nullIf(ScopeVersion, '')"
        if scope_columns
        else "nullIf(SpanAttributes['otel.scope.version'], '')",
        "status": "status",
        "status_message": STATUS_MESSAGE,
        "start_ns": "toUnixTimestamp64Nano(Timestamp)",
        "end_ns": "toUnixTimestamp64Nano(Timestamp) + toInt64(Duration)",
        "duration_ns": "toInt64(Duration)",
        "model": _coalesce("model"),
        "provider": _coalesce("provider"),
        "input_tokens": "input_tokens",
        "output_tokens": "output_tokens",
        "total_tokens": "coalesce(total_tokens_given, if(input_tokens IS NOT NULL OR output_tokens IS NOT NULL, "
        "coalesce(input_tokens, 0) + coalesce(output_tokens, 0), NULL))",
        "cache_read_tokens": _count("cache_read_tokens"),
        "cache_write_tokens": _count("cache_write_tokens"),
        "reasoning_tokens": _count("reasoning_tokens"),
        "cost": f"if(toFloat64OrNull({_coalesce('cost')}) >= 0 AND isFinite(toFloat64OrNull({_coalesce('cost')})), "
        f"toFloat64OrNull({_coalesce('cost')}), NULL)",
        "session_id": _coalesce("session_id"),
        "user_id": _coalesce("user_id"),
        "agent_name": f"coalesce({_coalesce('agent_name')}, if(kind = 'AGENT', "
        "replaceRegexpOne(SpanName, '^(agent\\\\.|invoke_agent )', ''), NULL))",
        "tool_name": "tool_name",
        "tool_call_id": _coalesce("tool_call_id"),
        "tool_args": f"if(kind = 'TOOL', {_capped(_coalesce('tool_args'))}, NULL)",
        "tool_result": "if(kind = 'TOOL', tool_result_full, NULL)",
        "input_value": _capped(_coalesce("input_value")),
        "output_value": _capped(_coalesce("output_value")),
        "output_messages": OUTPUT_MESSAGES,
        "tool_calls": TOOL_CALLS,
        "tools_offered": TOOLS_OFFERED,
        "finish_reason": FINISH_REASON,
        "error_type": f"coalesce({_coalesce('error_type')}, if({_EXCEPTION_AT} > 0, "
        f"nullIf(`Events.Attributes`[{_EXCEPTION_AT}]['exception.type'], ''), NULL))",
        "exceptions": EXCEPTIONS,
        "error_template": "if(status = 'ERROR', "
        + template(
            "coalesce(nullIf("
            + join_distinct(
                "[coalesce(status_message_value, error_type_value), "
                "if(kind = 'TOOL', leftUTF8(tool_result_full, 300), NULL)]"
            )
            + ", ''), '(no message)')"
        )
        + ", NULL)",
        "is_orphan": "toBool(parent_id IS NOT NULL AND NOT has(groupArray(SpanId) OVER (PARTITION BY TraceId), parent_id))",
        "input_id": "CAST(NULL, 'Nullable(Int64)')",
        "line_no": "CAST(NULL, 'Nullable(Int64)')",
        "raw_bytes": "length(raw)",
        "raw": "raw",
    }
    missing = [c.name for c in SPAN_COLUMNS if c.name not in columns]
    assert not missing, missing
    listed = ",\n  ".join(f"{columns[c.name]} AS {c.name}" for c in SPAN_COLUMNS)
    return f"""SELECT
  {listed}
FROM (
  SELECT *, {KIND} AS kind, {STATUS} AS status, {STATUS_MESSAGE} AS status_message_value,
    coalesce({_coalesce("error_type")}, if({_EXCEPTION_AT} > 0,
      nullIf(`Events.Attributes`[{_EXCEPTION_AT}]['exception.type'], ''), NULL)) AS error_type_value,
    {_count("input_tokens")} AS input_tokens, {_count("output_tokens")} AS output_tokens,
    {_count("total_tokens")} AS total_tokens_given,
    {_capped(_coalesce("tool_result"))} AS tool_result_full,
    if(kind = 'TOOL', coalesce({_coalesce("tool_name")},
      replaceRegexpOne(SpanName, '^(function\\\\.|execute_tool )', '')), NULL) AS tool_name,
    {_raw()} AS raw
  FROM {table}
  WHERE TraceId != '' AND SpanId != ''
)"""


def map_otel_table(conn: Connection, target: Target) -> None:
    """Create (or refresh) the views `spans`, `traces`, `inputs` and `rejects` in the store's database
    over the exporter table, and make that database the connection's; fail in one line when the
    table is missing or is not the exporter's. A user that may not create views can use views made
    before by one that may."""
    database, _, name = (target.otel_table or "").partition(".")
    table = f"{database}.{name}"
    found = conn.rows(
        f"SELECT name, type FROM system.columns WHERE database = {literal(database)} AND table = {literal(name)}"
    )
    if not found:
        raise StoreError(
            f"{target.label}: no table {table}; point otel_table at the table the OpenTelemetry Collector's "
            "ClickHouse exporter writes (its traces_table_name, default otel_traces)"
        )
    have = {r["name"] for r in found}
    missing = [c for c in REQUIRED_COLUMNS if c not in have]
    if missing:
        raise StoreError(
            f"{target.label}: {table} is not an OpenTelemetry exporter traces table "
            f"(no column {', '.join(missing[:4])}{'…' if len(missing) > 4 else ''}); "
            "point otel_table at the exporter's traces table"
        )
    db = target.database
    views = {"spans", "traces", "inputs", "rejects"}
    existing = {
        r["name"]: r["engine"]
        for r in conn.rows(f"SELECT name, engine FROM system.tables WHERE database = {literal(db)}")
    }
    if {"meta", "spans_data"} & set(existing) or any(existing.get(v, "View") != "View" for v in views):
        raise StoreError(
            f"{target.label}: database {db} holds tables of its own; name an empty one for HALO's views "
            "with ?database=NAME"
        )
    spans = spans_select(table, scope_columns={"ScopeName", "ScopeVersion"} <= have)
    names = ", ".join(c.name for c in TRACE_COLUMNS)
    trace_select = (
        f"SELECT * FROM (SELECT {TRACE_AGGREGATES} FROM {db}.spans GROUP BY trace_id) AS t ({names})"
    )
    empty_inputs = ", ".join(f"CAST(NULL, 'Nullable(String)') AS {c.name}" for c in INPUT_COLUMNS)
    empty_rejects = ", ".join(f"CAST(NULL, 'Nullable(String)') AS {c.name}" for c in REJECT_COLUMNS)
    try:
        conn.command(f"CREATE DATABASE IF NOT EXISTS {db}")
        for statement in (
            f"CREATE OR REPLACE VIEW {db}.spans AS {spans}",
            f"CREATE OR REPLACE VIEW {db}.traces AS {trace_select}",
            f"CREATE OR REPLACE VIEW {db}.inputs AS SELECT {empty_inputs} WHERE false",
            f"CREATE OR REPLACE VIEW {db}.rejects AS SELECT {empty_rejects} WHERE false",
        ):
            conn.command(statement)
    except StoreError as exc:
        if not views <= set(existing):
            reason = str(exc).removeprefix(f"{target.label}: ")
            raise StoreError(
                f"{target.label}: cannot create HALO's views over {table} in database {db} ({reason}); "
                "let this user create views there, or create them once as a user who may"
            ) from None
    conn.use(db)
