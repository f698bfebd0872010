"""Attribute conventions of the tracing libraries HALO reads, in priority order (trace-formats.md §7):
OpenInference, OTel GenAI (`gen_ai.*`), OpenLLMetry, HALO's `inference.*` projection, then
`langfuse.*` and the Vercel AI SDK — which keys give each canonical field, which classify a span, and
how the many shapes of chat messages (JSON blobs, flattened `llm.output_messages.N.*` keys, GenAI
parts, indexed OpenLLMetry keys, Anthropic content blocks) become one.

Pure data and functions: each store turns the key lists into its own SQL, and runs
`output_messages_json` over the spans that carry messages.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import orjson

__all__ = [
    "ATTRIBUTE_KEYS",
    "CLASSIFIERS",
    "KINDS",
    "MESSAGE_MARKERS",
    "SOURCES",
    "TEXT_CAP",
    "normalize_messages",
    "output_messages_json",
]

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
    messages: list[dict[str, Any]] = []
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
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        tool_call_id: str | None = None
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


def output_messages_json(line: str) -> str:
    """The normalised model output of one raw span line, as JSON (`normalize_messages` without the
    input side). Never raises: it runs inside the store's ingest statement, where an exception would
    abort the whole statement; a line it cannot read gets no messages, and its raw record keeps all."""
    try:
        attrs = orjson.loads(line).get("attributes")
        if isinstance(attrs, dict):
            return orjson.dumps(normalize_messages(attrs, inputs=False)).decode()
    except Exception:  # noqa: BLE001 - untrusted input; see above
        pass
    return _NO_MESSAGES
