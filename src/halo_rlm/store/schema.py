"""The store's tables, independent of the database: every column with its logical type and what it
holds. Each backend derives its DDL from these lists; the README's table of columns and the
`query_sql` tool's description are generated from them, so the three cannot drift apart.

Logical types: `text`, `int` (64-bit), `float`, `bool`, `json` (a JSON document as text),
`text[]`, `time` (a timestamp), and `tool_calls` (a list of `{id, name, arguments}`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "INPUT_COLUMNS",
    "REJECT_COLUMNS",
    "SCHEMA_VERSION",
    "SPAN_COLUMNS",
    "TABLES",
    "TRACE_COLUMNS",
    "Column",
    "Table",
    "markdown_table",
    "sql_tool_description",
]

SCHEMA_VERSION = 2


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    doc: str = ""
    notable: bool = False  # listed in the README and in the SQL tool's description
    large: bool = False  # long text, stored compressed


@dataclass(frozen=True)
class Table:
    name: str
    row: str  # what one row is
    columns: tuple[Column, ...]
    note: str = ""


def _c(name: str, type: str, doc: str = "", *, notable: bool = True, large: bool = False) -> Column:
    return Column(name, type, doc, notable, large)


SPAN_COLUMNS: tuple[Column, ...] = (
    _c("trace_id", "text", "the trace's id (hex ids lower case)"),
    _c("span_id", "text", "the span's id"),
    _c("parent_id", "text", "the parent span's id (NULL for a root)"),
    _c("name", "text", "the span name"),
    _c(
        "kind",
        "text",
        "LLM, TOOL, AGENT, CHAIN, RETRIEVER, EMBEDDING, RERANKER, GUARDRAIL, EVALUATOR, PROMPT or SPAN",
    ),
    _c("otel_kind", "text", "the OpenTelemetry span kind", notable=False),
    _c("service", "text", "service.name of the span's resource"),
    _c("scope", "text", "instrumentation scope name", notable=False),
    _c("scope_version", "text", notable=False),
    _c("status", "text", "OK, ERROR or UNSET"),
    _c("status_message", "text", "the error message, for ERROR spans"),
    _c("start_ns", "int", "start time, nanoseconds since the epoch"),
    _c("end_ns", "int", "end time (NULL while in flight)", notable=False),
    _c("duration_ns", "int", "end_ns - start_ns"),
    _c("model", "text", "the model of an LLM span"),
    _c("provider", "text", "the model provider"),
    _c("input_tokens", "int", "prompt tokens of an LLM call"),
    _c("output_tokens", "int", "completion tokens"),
    _c("total_tokens", "int", notable=False),
    _c("cache_read_tokens", "int", notable=False),
    _c("cache_write_tokens", "int", notable=False),
    _c("reasoning_tokens", "int", notable=False),
    _c("cost", "float", "USD cost of an LLM call"),
    _c("session_id", "text", "the conversation or session the trace belongs to"),
    _c("user_id", "text"),
    _c("agent_name", "text", "the agent that ran the span"),
    _c("tool_name", "text", "the tool of a TOOL span"),
    _c("tool_call_id", "text", notable=False),
    _c("tool_args", "text", "the tool call's arguments (JSON text)", large=True),
    _c("tool_result", "text", "the tool's result", large=True),
    _c("input_value", "text", notable=False, large=True),
    _c("output_value", "text", notable=False, large=True),
    _c("output_messages", "json", "the model's answer as chat messages"),
    _c("tool_calls", "tool_calls", "tool calls the model made: [{id, name, arguments}]"),
    _c("tools_offered", "text[]", "names of the tools the model was offered"),
    _c("finish_reason", "text", "why the model stopped (stop, length, tool_calls, ...)"),
    _c("error_type", "text", notable=False),
    _c("exceptions", "json", "exception events: [{type, message, stacktrace}]", notable=False),
    _c("error_template", "text", "the error message with ids, numbers and paths masked, to group errors"),
    _c("is_orphan", "bool", "the parent span is not in the store"),
    _c("input_id", "int", notable=False),
    _c("line_no", "int", notable=False),
    _c("raw_bytes", "int", notable=False),
    _c("raw", "text", "the whole span record as received (JSON)", large=True),
)

TRACE_COLUMNS: tuple[Column, ...] = (
    _c("trace_id", "text", notable=False),
    _c("span_count", "int"),
    _c("llm_spans", "int", notable=False),
    _c("tool_spans", "int", notable=False),
    _c("error_spans", "int"),
    _c("has_errors", "bool"),
    _c("start_ns", "int"),
    _c("end_ns", "int", notable=False),
    _c("duration_ns", "int"),
    _c("root_span_id", "text", notable=False),
    _c("root_name", "text"),
    _c("root_status_message", "text", notable=False),
    _c("services", "text[]"),
    _c("agents", "text[]"),
    _c("models", "text[]"),
    _c("tools", "text[]"),
    _c("input_tokens", "int"),
    _c("output_tokens", "int"),
    _c("total_tokens", "int", notable=False),
    _c("cache_read_tokens", "int", notable=False),
    _c("reasoning_tokens", "int", notable=False),
    _c("cost", "float"),
    _c("session_id", "text"),
    _c("user_id", "text", notable=False),
    _c("orphan_spans", "int"),
    _c("in_flight_spans", "int"),
    _c("raw_bytes", "int", notable=False),
)

INPUT_COLUMNS: tuple[Column, ...] = (
    _c("input_id", "int", notable=False),
    _c("path", "text"),
    _c("identity", "text", notable=False),
    _c("size", "int", notable=False),
    _c("mtime_ns", "int", notable=False),
    _c("compression", "text", notable=False),
    _c("status", "text"),
    _c("resume_offset", "int", notable=False),
    _c("resume_line", "int", notable=False),
    _c("tail_digest", "text", notable=False),
    _c("spans", "int"),
    _c("rejected", "int"),
    _c("repaired", "int", notable=False),
    _c("started_at", "time", notable=False),
    _c("finished_at", "time", notable=False),
)

REJECT_COLUMNS: tuple[Column, ...] = (
    _c("input_id", "int", notable=False),
    _c("path", "text"),
    _c("line_no", "int"),
    _c("reason", "text"),
    _c("excerpt", "text"),
)

TABLES: tuple[Table, ...] = (
    Table(
        "spans",
        "span",
        SPAN_COLUMNS,
        "input messages, which repeat the whole conversation on every LLM call, stay in `raw` and are "
        "reassembled by `halo show` and the views",
    ),
    Table("traces", "trace", TRACE_COLUMNS),
    Table("rejects", "rejected record", REJECT_COLUMNS),
    Table("inputs", "ingested file", INPUT_COLUMNS),
)


def markdown_table() -> str:
    """The README's table of the tables and their notable columns."""
    lines = ["| table | one row per | notable columns |", "|---|---|---|"]
    for table in TABLES:
        names = ", ".join(c.name for c in table.columns if c.notable)
        note = f" ({table.note})" if table.note else ""
        lines.append(f"| `{table.name}` | {table.row} | `{names}`{note} |")
    return "\n".join(lines)


def sql_tool_description() -> str:
    """What the model is told about the tables its SQL can read."""
    parts = []
    for table in TABLES[:2]:
        names = ", ".join(c.name for c in table.columns if c.notable or c.name in ("trace_id", "span_id"))
        parts.append(f"{table.name} (one row per {table.row}: {names})")
    return (
        "One read-only SELECT over the tables "
        + " and ".join(parts)
        + ". Times are nanoseconds since the epoch. Up to 200 rows; aggregate rather than list."
    )
