"""The tools the engine's agents call: HALO's names and arguments, over the trace store.

Every tool validates its arguments (a bad call comes back to the model as an error it can act on),
runs off the event loop with a time limit (a slow regex or query cannot stall other agents), and
returns JSON within a byte budget that says when it was cut and how to narrow the question. Tools see
the agent that calls them through `ToolContext`, never the engine's own classes.

For small context windows each tool has a compact form (`Tool.compact_schema`: a short description,
no field descriptions, and the trace filters described once in the system message — `filters_text`
— instead of in every tool that takes them), and `COMPACT_TOOLS` names the few offered then. Models
that write their tool calls as text instead of calling them are read by `read_text_calls`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar, get_args, get_origin

import orjson
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from halo_rlm.engine.config import EngineConfig
from halo_rlm.repo import Repo, RepoError, tool_specs
from halo_rlm.repo import ToolSpec as RepoToolSpec
from halo_rlm.report import CATEGORIES
from halo_rlm.sandbox import Repl
from halo_rlm.store import SortKey, StoreError, TraceFilters, TraceStore
from halo_rlm.store.schema import sql_tool_description

__all__ = [
    "COMPACT_TOOLS",
    "FINAL_TOOL",
    "SUBAGENT_TOOL",
    "TRACE_TOOLS",
    "Args",
    "FinalAnswerArgs",
    "FindingInput",
    "TextCalls",
    "Tool",
    "ToolContext",
    "ToolError",
    "degenerate",
    "filters_text",
    "fit",
    "read_text_calls",
    "repo_tools",
    "tools_text",
    "unknown_tool",
    "validate",
]

T = TypeVar("T")

RESULT_BYTES = 24_000  # default budget for one tool result
LIST_FIELDS = ("traces", "matches", "rows", "spans", "error_groups", "findings")


class ToolError(Exception):
    """A problem the model caused and can fix (bad id, bad regex, bad SQL...)."""


class Args(BaseModel):
    """Arguments of a tool call: unknown fields are an error the model is told about."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class FiltersArgs(Args):
    filters: TraceFilters | None = Field(None, description="Which traces; omit for all")


class QueryTracesArgs(FiltersArgs):
    limit: int = Field(20, ge=1, le=200)
    offset: int = Field(0, ge=0)
    sort: SortKey = Field("start", description="start | duration | cost | spans | tokens | errors")
    descending: bool = True


class TraceArgs(Args):
    trace_id: str


class SpansArgs(TraceArgs):
    span_ids: list[str] = Field(min_length=1, max_length=100)


class SearchTraceArgs(TraceArgs):
    regex_pattern: str = Field(description="Python regex matched against each span's raw JSON")
    context_buffer_chars: int = Field(100, ge=0, le=2_000)
    max_matches: int = Field(20, ge=1, le=200)


class SearchSpanArgs(SearchTraceArgs):
    span_id: str


class SynthesizeArgs(Args):
    trace_ids: list[str] = Field(min_length=1, max_length=20)
    focus: str | None = Field(None, description="What to look for, e.g. 'why lookup_order fails'")


class ContextItemArgs(Args):
    item_id: str


class SqlArgs(Args):
    query: str = Field(validation_alias=AliasChoices("query", "sql"), description="One SELECT statement")


class SubagentArgs(Args):
    input: str = Field(
        validation_alias=AliasChoices("input", "question", "task", "brief"),
        description="A self-contained brief: the question, the trace ids and what is known",
    )


class EvidenceInput(Args):
    trace_id: str
    span_id: str | None = None
    excerpt: str = ""
    note: str = ""


class FindingInput(Args):
    """A finding as the model reports it; missing fields get sensible defaults."""

    title: str
    category: str = "other"
    severity: str = "medium"
    affected_traces: int | None = Field(None, ge=0)
    evidence: list[EvidenceInput] = []
    recommendation: str = ""
    confidence: float = Field(0.6, ge=0, le=1)
    details: str = ""
    key: str | None = None
    query: str | None = Field(
        None, description="SQL returning the affected traces' trace_id, to verify the count"
    )
    impact: dict[str, float] = {}
    locations: list[str] = Field(
        [], description="path:line in the agent's repository that the fix changes (with the repository tools)"
    )


class FinalAnswerArgs(Args):
    answer: str = Field(min_length=1, description="The full report in markdown")
    findings: list[FindingInput] = []


class ToolContext(Protocol):
    """What a tool sees of the agent calling it."""

    depth: int
    context_items: dict[str, str]  # texts shortened in this agent's history, by id
    repl: Repl | None  # the agent's run_code sandbox, once made

    @property
    def config(self) -> EngineConfig: ...

    @property
    def store(self) -> TraceStore: ...

    @property
    def hypotheses(self) -> list[dict[str, Any]]:
        """The detectors' findings, the root's starting points."""

    def finish(self, answer: FinalAnswerArgs) -> None:
        """Record the root's final answer: the run ends after this turn."""

    async def spawn(self, brief: str) -> dict[str, Any]:
        """Run a sub-agent on `brief` and return its structured result."""

    async def synthesize(self, texts: list[str], focus: str | None) -> str:
        """A summary of `texts` by the synthesis model, looking for `focus`."""

    async def ask(self, prompt: str) -> str:
        """One plain call to the synthesis model, from code (budgeted, and shown in the events)."""

    def spend_code_llm_calls(self, calls: int) -> None:
        """Count LLM calls made from code; raises RuntimeError when none are left."""


@dataclass
class Tool:
    name: str
    description: str
    args: type[BaseModel]
    run: Callable[[Any, ToolContext], Awaitable[Any]]
    brief: str = field(
        default="", kw_only=True
    )  # the description in compact mode (default: its first sentence)

    @functools.cached_property
    def schema(self) -> dict[str, Any]:
        """The function definition sent to the model (every turn, so built once)."""
        parameters = self.args.model_json_schema()
        parameters.pop("title", None)
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": parameters},
        }

    @functools.cached_property
    def compact_schema(self) -> dict[str, Any]:
        """The definition for small windows: a short description, no field descriptions or titles,
        and `filters` pointing at the one description of trace filters in the system message."""
        parameters = _compact(self.args.model_json_schema())
        properties = parameters.get("properties", {})
        if "filters" in properties:
            properties["filters"] = {"type": "object", "description": "trace filters (see FILTERS)"}
            definitions = parameters.get("$defs", {})
            definitions.pop(TraceFilters.__name__, None)
            if not definitions:
                parameters.pop("$defs", None)
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.short, "parameters": parameters},
        }

    @property
    def short(self) -> str:
        return self.brief or self.description.split(". ")[0].rstrip(".") + "."

    def signature(self) -> str:
        """`name(arg: type, ...)`: how the tool is listed when the server takes no tool definitions."""
        fields = ", ".join(
            f"{name}{'' if info.is_required() else '?'}: {_type_name(info.annotation)}"
            for name, info in self.args.model_fields.items()
        )
        return f"{self.name}({fields})"


def _compact(schema: Any) -> Any:
    """A JSON schema without descriptions, titles and defaults, `X | None` written as X."""
    if isinstance(schema, list):
        return [_compact(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    options = schema.get("anyOf")
    if isinstance(options, list):
        kept = [o for o in options if o != {"type": "null"}]
        if len(kept) == 1:
            return _compact({**{k: v for k, v in schema.items() if k != "anyOf"}, **kept[0]})
    return {
        key: _compact(value)
        for key, value in schema.items()
        if key not in ("description", "title", "default", "examples")
    }


def _type_name(annotation: Any) -> str:
    """A short name for a field's type: str, int, number, bool, list[str], object."""
    origin = get_origin(annotation)
    if origin is Literal:
        return "|".join(str(a) for a in get_args(annotation))
    if origin is list:
        (item,) = get_args(annotation) or (Any,)
        return f"list[{_type_name(item)}]"
    args = [a for a in get_args(annotation) if a is not type(None)]
    if args and origin is not None and origin is not dict:
        return _type_name(args[0]) if len(args) == 1 else " | ".join(_type_name(a) for a in args)
    names = {str: "str", int: "int", float: "number", bool: "bool"}
    return names.get(annotation, "object")


def filters_text() -> str:
    """Trace filters, described once (compact mode puts this in the system message instead of
    repeating their schema in every tool that takes them)."""
    fields = ", ".join(
        f"{name} ({_type_name(info.annotation)})" for name, info in TraceFilters.model_fields.items()
    )
    return (
        "FILTERS (the `filters` argument): a JSON object, every field optional, combined with AND, lists "
        f"match any: {fields}. since/until are ISO-8601 times; regex (RE2) and text match a span's raw JSON."
    )


def tools_text(tools: Collection[Tool]) -> str:
    """The tools as text, for servers that take no tool definitions: one signature a line."""
    return "\n".join(f"- {tool.signature()}: {tool.short}" for tool in tools)


async def store_call(ctx: ToolContext, work: Callable[[TraceStore], T]) -> T:
    """Store work for a tool, off the event loop and stopped at the tool time limit; failures
    become tool errors."""
    try:
        return await ctx.store.run(work, ctx.config.tool_timeout)
    except TimeoutError:
        raise ToolError(
            f"the call took over {ctx.config.tool_timeout:g}s and was stopped; narrow it "
            "(filters, a more specific regex, a LIMIT)"
        ) from None
    except StoreError as exc:
        raise ToolError(str(exc)) from None


def fit(value: Any, budget: int) -> str:
    """JSON for a tool result within `budget` bytes: list fields lose items from the end first
    (and the result says so); as a last resort the JSON is cut with a note."""
    data = value.model_dump(mode="json", exclude_none=True) if isinstance(value, BaseModel) else value
    text = orjson.dumps(data).decode()
    if len(text.encode()) <= budget:
        return text
    if isinstance(data, dict):
        for field in LIST_FIELDS:
            items = data.get(field)
            if isinstance(items, list) and items:
                total = len(items)
                while items and len(orjson.dumps(data)) > budget - 200:
                    items.pop()
                data["truncated"] = True
                data["note"] = (
                    f"showing {len(items)} of {total} {field} to fit {budget:,} bytes; "
                    f"ask for fewer (limit, filters) or page with offset"
                )
                text = orjson.dumps(data).decode()
                if len(text.encode()) <= budget:
                    return text
    head = text.encode()[: budget - 300].decode("utf-8", "ignore")
    return orjson.dumps(
        {
            "truncated_json": head,
            "note": f"result cut at {budget:,} bytes of {len(text):,}; narrow the request",
        }
    ).decode()


# --- the tools ------------------------------------------------------------------------------


async def get_dataset_overview(args: FiltersArgs, ctx: ToolContext) -> Any:
    overview = await store_call(ctx, lambda s: s.overview(args.filters, top=15))
    data = overview.model_dump(mode="json", exclude_none=True)
    if args.filters is None and ctx.hypotheses:
        data["detector_findings"] = ctx.hypotheses
    return data


async def query_traces(args: QueryTracesArgs, ctx: ToolContext) -> Any:
    return await store_call(
        ctx,
        lambda s: s.query_traces(
            args.filters, sort=args.sort, descending=args.descending, limit=args.limit, offset=args.offset
        ),
    )


async def count_traces(args: FiltersArgs, ctx: ToolContext) -> Any:
    return {"total": await store_call(ctx, lambda s: s.count_traces(args.filters))}


async def view_trace(args: TraceArgs, ctx: ToolContext) -> Any:
    budget = ctx.config.tool_result_bytes
    return await store_call(
        ctx, lambda s: s.view_trace(args.trace_id, budget_bytes=budget - 500, value_chars=2_000)
    )


async def view_spans(args: SpansArgs, ctx: ToolContext) -> Any:
    budget = ctx.config.tool_result_bytes
    return await store_call(
        ctx,
        lambda s: s.view_spans(args.trace_id, args.span_ids, budget_bytes=budget - 500, value_chars=8_000),
    )


async def search_trace(args: SearchTraceArgs, ctx: ToolContext) -> Any:
    return await store_call(
        ctx,
        lambda s: s.search(
            args.regex_pattern,
            trace_id=args.trace_id,
            context_chars=args.context_buffer_chars,
            max_matches=args.max_matches,
            timeout=ctx.config.tool_timeout / 2,
        ),
    )


async def search_span(args: SearchSpanArgs, ctx: ToolContext) -> Any:
    return await store_call(
        ctx,
        lambda s: s.search(
            args.regex_pattern,
            trace_id=args.trace_id,
            span_id=args.span_id,
            context_chars=args.context_buffer_chars,
            max_matches=args.max_matches,
            timeout=ctx.config.tool_timeout / 2,
        ),
    )


async def query_sql(args: SqlArgs, ctx: ToolContext) -> Any:
    return await store_call(
        ctx,
        lambda s: s.sql(
            args.query,
            max_rows=200,
            max_bytes=ctx.config.tool_result_bytes - 1_000,
            timeout=ctx.config.tool_timeout,
        ),
    )


async def get_context_item(args: ContextItemArgs, ctx: ToolContext) -> Any:
    item = ctx.context_items.get(args.item_id)
    if item is None:
        known = ", ".join(list(ctx.context_items)[-10:]) or "none yet"
        raise ToolError(f"no context item {args.item_id!r} in this agent's history (known: {known})")
    return {"item_id": args.item_id, "content": item}


async def synthesize_traces(args: SynthesizeArgs, ctx: ToolContext) -> Any:
    """A synthesis-model summary over a few traces, rendered with payload excerpts and errors."""
    limit = ctx.config.tool_result_bytes * 2 // len(args.trace_ids)

    def render(store: TraceStore) -> tuple[list[str], list[str]]:
        texts, missing = [], []
        for trace_id in dict.fromkeys(args.trace_ids):
            try:
                view = store.view_trace(trace_id, budget_bytes=10**9, value_chars=600)
            except StoreError:
                missing.append(trace_id)
                continue
            texts.append(render_trace(view, limit))
        return texts, missing

    texts, missing = await store_call(ctx, render)
    if not texts:
        raise ToolError(f"none of these trace ids is in the store: {', '.join(missing)}")
    summary = await ctx.synthesize(texts, args.focus)
    result: dict[str, Any] = {"summary": summary, "traces": len(texts)}
    if missing:
        result["missing_trace_ids"] = missing
    return result


def render_trace(view: Any, limit: int) -> str:
    """A compact text rendering of a trace for summarising: the span tree with status, timing,
    model, tool inputs and outputs, and error messages."""
    lines = [f"TRACE {view.trace_id} ({view.span_count} spans)"]
    for span in view.spans:
        head = f"{'  ' * span.depth}- [{span.span_id}] {span.kind} {span.name} {span.status}"
        if span.duration_ms is not None:
            head += f" {span.duration_ms:.0f}ms"
        if span.model:
            head += f" model={span.model}"
        if span.tool:
            head += f" tool={span.tool}"
        lines.append(head)
        if span.status_message:
            lines.append(f"{'  ' * span.depth}  error: {span.status_message[:400]}")
        for key in ("input.value", "output.value"):
            value = span.attributes.get(key)
            if value:
                lines.append(f"{'  ' * span.depth}  {key.split('.')[0]}: {str(value)[:400]}")
        for message in (span.messages or {}).get("output_messages", [])[-1:]:
            if isinstance(message, dict) and message.get("content"):
                lines.append(f"{'  ' * span.depth}  says: {str(message['content'])[:400]}")
    text = "\n".join(lines)
    return text if len(text) <= limit else text[: limit - 40] + "\n…[rest of trace cut]"


async def call_subagent(args: SubagentArgs, ctx: ToolContext) -> Any:
    return await ctx.spawn(args.input)


async def final_answer(args: FinalAnswerArgs, ctx: ToolContext) -> Any:
    problem = degenerate(args.answer)
    if problem:
        raise ToolError(
            f"the answer was not accepted: it {problem}. Write the report itself: each failure, how many "
            "traces it affects, evidence and a fix"
        )
    unknown = sorted({f.category for f in args.findings} - set(CATEGORIES))
    ctx.finish(args)
    note = f"; unknown categories {unknown} will be filed as 'other'" if unknown else ""
    return {"acknowledged": True, "findings": len(args.findings), "note": "report received" + note}


TRACE_TOOLS = [
    Tool(
        "get_dataset_overview",
        "Totals, time range, services, agents, models and tools (with call and error counts), the top error "
        "groups (same failure, ids masked; exact counts) and, unfiltered, the detectors' findings to start from. "
        "Call it first.",
        FiltersArgs,
        get_dataset_overview,
        brief="Totals, agents, models, tools, top error groups and the detectors' findings. Call it first.",
    ),
    Tool(
        "query_traces",
        "A page of trace summaries matching `filters` (each with raw_bytes: views over ~20 KB are summarised), "
        "sortable, with the total. Page with offset.",
        QueryTracesArgs,
        query_traces,
        brief="A page of trace summaries matching filters, sortable; page with offset.",
    ),
    Tool("count_traces", "How many traces match `filters`.", FiltersArgs, count_traces),
    Tool(
        "view_trace",
        "All spans of one trace as a tree, long values cut to head+tail. A trace too big for the budget comes "
        "back as a summary: then use search_trace and view_spans.",
        TraceArgs,
        view_trace,
        brief="All spans of one trace as a tree (a big trace comes back summarised).",
    ),
    Tool(
        "view_spans",
        "Chosen spans of one trace, with more of each value than view_trace.",
        SpansArgs,
        view_spans,
    ),
    Tool(
        "search_trace",
        "Regex matches with context inside one trace's spans (raw JSON: quotes appear as \\\"). Exact counts.",
        SearchTraceArgs,
        search_trace,
    ),
    Tool("search_span", "Regex matches with context inside one span.", SearchSpanArgs, search_span),
    Tool(
        "synthesize_traces",
        "A summary, by a cheaper model, of up to 20 traces: span trees with tool inputs/outputs and errors. "
        "Give `focus` to say what to look for.",
        SynthesizeArgs,
        synthesize_traces,
    ),
    Tool("query_sql", sql_tool_description(), SqlArgs, query_sql, brief=sql_tool_description()),
    Tool(
        "get_context_item",
        "The full text of an earlier tool result or message that was shortened to save context (its id was "
        "given where it was shortened).",
        ContextItemArgs,
        get_context_item,
    ),
]
SUBAGENT_TOOL = Tool(
    "call_subagent",
    "Delegate a focused question to a sub-agent with the same tools. It sees nothing of your conversation: "
    "write a self-contained brief with the question, the trace ids and what you already know. Several calls "
    "in one turn run in parallel. Returns its answer, findings with evidence, and what it used.",
    SubagentArgs,
    call_subagent,
    brief="Delegate a focused question to a sub-agent: a self-contained brief with the trace ids.",
)
FINAL_TOOL = Tool(
    "final_answer",
    "Finish the analysis: `answer` is the full markdown report (cite traces as [trace:ID] and spans as "
    "[span:TRACE_ID:SPAN_ID]); `findings` are the systemic failures, ranked, each with category (one of: "
    + ", ".join(CATEGORIES)
    + "), severity (critical/high/medium/low), affected_traces (ideally with `query`: SQL "
    "returning the affected trace_ids, so the count can be verified), evidence (real trace/span ids and a "
    "verbatim excerpt), and a concrete recommendation (which prompt, tool schema, retry policy or limit to "
    "change, and how). Call it once.",
    FinalAnswerArgs,
    final_answer,
    brief="Finish: `answer` is the markdown report; `findings` the failures, each with evidence and a fix.",
)


# What small windows get: the tools that answer most questions, one of each kind.
COMPACT_TOOLS = frozenset(
    {
        "get_dataset_overview",
        "query_traces",
        "count_traces",
        "view_trace",
        "search_trace",
        "query_sql",
        "call_subagent",
        "final_answer",
    }
)


def repo_tools(repo: Repo) -> list[Tool]:
    """The read-only code and git tools over the agent's source, as engine tools."""

    def wrap(spec: RepoToolSpec) -> Tool:
        async def run(args: Any, ctx: ToolContext) -> Any:
            try:
                return await asyncio.wait_for(asyncio.to_thread(spec.call, args), ctx.config.tool_timeout)
            except TimeoutError:
                raise ToolError(f"{spec.name} took over {ctx.config.tool_timeout:g}s; narrow it") from None
            except (RepoError, OSError) as exc:
                raise ToolError(str(exc)) from None

        return Tool(spec.name, spec.description, spec.args_model, run)

    return [wrap(spec) for spec in tool_specs(repo)]


def validate(tool: Tool, raw_arguments: str) -> BaseModel:
    """Parse and check a tool call's arguments, with an error message the model can act on."""
    try:
        data = orjson.loads(raw_arguments or "{}")
    except orjson.JSONDecodeError as exc:
        raise ToolError(
            f"the arguments are not valid JSON ({exc}); send one JSON object matching "
            f"{tool.name}'s parameters"
        ) from None
    if not isinstance(data, dict):
        raise ToolError(f"the arguments must be a JSON object, not {type(data).__name__}")
    try:
        return tool.args.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in exc.errors()[:5]
        )
        fields = ", ".join(tool.args.model_fields)
        raise ToolError(f"invalid arguments for {tool.name}: {problems} (parameters: {fields})") from None


def unknown_tool(name: str, tools: dict[str, Tool]) -> str:
    close = [t for t in tools if re.sub(r"[^a-z]", "", t) == re.sub(r"[^a-z]", "", name.lower())]
    hint = f" Did you mean {close[0]}?" if close else ""
    return f"There is no tool named {name!r}.{hint} Available tools: {', '.join(tools)}."


# --- replies that are not what they should be --------------------------------------------------------


def degenerate(text: str) -> str | None:
    """Why `text` cannot be an analysis (None when it may be one): it is empty, repeats one line,
    or compresses to almost nothing (a model stuck repeating itself until its output limit)."""
    stripped = text.strip()
    if not stripped:
        return "is empty"
    lines = [line.strip() for line in stripped.splitlines() if line.strip()]
    if len(lines) >= 6:
        line, count = Counter(lines).most_common(1)[0]
        if count * 2 >= len(lines):
            return f"repeats one line {count} times ({line[:60]!r})"
    if len(stripped) >= 600 and len(zlib.compress(stripped.encode())) < 0.08 * len(stripped):
        return "repeats the same text over and over"
    return None


@dataclass
class TextCalls:
    """Tool calls a model wrote as text. `problem`: it tried to call a tool but the call cannot be
    made (unknown name, malformed JSON); say so to the model."""

    calls: list[dict[str, str]]  # {name, arguments (JSON text)}
    problem: str | None = None


# Where models put calls they write as text: fenced blocks, Hermes/Qwen <tool_call> tags, or bare JSON.
_BLOCKS = re.compile(
    r"```[a-z_]*[ \t]*\n?(.*?)```|<tool_call>(.*?)(?:</tool_call>|$)|<function_call>(.*?)(?:</function_call>|$)",
    re.DOTALL,
)
_NAME_KEYS = ("name", "tool", "tool_name", "function")
_ARGUMENT_KEYS = ("arguments", "parameters", "args", "input")
_DECODER = json.JSONDecoder(strict=False)  # small models write raw newlines inside strings


def read_text_calls(text: str, names: Collection[str]) -> TextCalls:
    """The tool calls in a model's text: JSON objects naming one of `names` (`{"name": ...,
    "arguments": {...}}`, also `parameters`/`args`, or OpenAI's `{"function": {...}}`), in fenced
    blocks, `<tool_call>` tags or bare. Text that is mostly an attempted call which cannot be made
    (an unknown tool, malformed JSON, arguments that are no object) gives a `problem` instead; JSON
    quoted inside prose (evidence from a trace) is left alone."""
    blocks = [next(g for g in m.groups() if g is not None) for m in _BLOCKS.finditer(text)]
    total = max(1, len(text.strip()))
    problems: list[str] = []
    for sources in (blocks, [text]):
        calls: list[dict[str, str]] = []
        for source in sources:
            objects, error = _json_objects(source)
            for value, span in objects:
                call, problem = _as_call(value, names)
                if call is not None:
                    calls.append(call)
                elif problem and span >= 0.6 * total:
                    problems.append(problem)
            mostly = len(source.strip()) >= 0.6 * total
            if not objects and error and mostly and _mentions_call(source, names):
                problems.append(f"its JSON could not be read ({error})")
        if calls:
            return TextCalls(calls)
    return TextCalls([], problems[0] if problems else None)


def _json_objects(source: str) -> tuple[list[tuple[Any, int]], str | None]:
    """Every top-level JSON object in `source` with its length, and the first parse error."""
    found: list[tuple[Any, int]] = []
    error = None
    position = source.find("{")
    while position != -1:
        try:
            value, end = _DECODER.raw_decode(source, position)
        except ValueError as exc:
            error = error or str(exc)
            position = source.find("{", position + 1)
            continue
        found.append((value, end - position))
        position = source.find("{", end)
    return found, error


def _mentions_call(source: str, names: Collection[str]) -> bool:
    return '"name"' in source or any(f'"{name}"' in source for name in names)


def _as_call(value: Any, names: Collection[str]) -> tuple[dict[str, str] | None, str | None]:
    """(call, None) when `value` is a call of an offered tool, (None, problem) when it is a call
    that cannot be made, (None, None) when it is no call at all."""
    if not isinstance(value, dict):
        return None, None
    function = value.get("function")
    if isinstance(function, dict):
        name, arguments = function.get("name"), function.get("arguments", function.get("parameters"))
    else:
        name = next((value[k] for k in _NAME_KEYS if isinstance(value.get(k), str)), None)
        arguments = next((value[k] for k in _ARGUMENT_KEYS if k in value), None)
    if not isinstance(name, str):
        return None, None
    name = name.strip().removeprefix("functions.")
    if name not in names:
        if arguments is None:
            return None, None  # a JSON object with a `name`, not a call
        return None, f"there is no tool named {name!r}"
    if isinstance(arguments, str):
        try:
            arguments = _DECODER.decode(arguments) if arguments.strip() else {}
        except ValueError as exc:
            return None, f"the arguments of {name} are not valid JSON ({exc})"
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return None, f"the arguments of {name} must be a JSON object, not {type(arguments).__name__}"
    return {"name": name, "arguments": json.dumps(arguments)}, None
