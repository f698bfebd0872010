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
    "chat_messages",
    "normalize_messages",
    "orjson_text",
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
        "ai.response.object",  # the answer of the Vercel AI SDK's generateObject
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
    "ai.operationId",
    "ai.telemetry.functionId",
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
MAX_BLOCK_DEPTH = 8  # content nested deeper than this is not message structure; it is kept as JSON text


def normalize_messages(attrs: dict[str, Any], *, inputs: bool = True, events: Any = None) -> dict[str, Any]:
    """Messages, tool calls and offered tools in one shape, whatever convention the span used
    (without the input messages when `inputs` is false). `events` are the span's events, where
    OTel GenAI instrumentations may put the content instead of attributes.

    A message is `{role, content, tool_calls: [{id, name, arguments}], tool_call_id, name}` with
    empty parts left out; `content` is text (multi-part content is joined)."""
    grouped: dict[str, dict[int, dict[str, Any]]] | None = None

    def indexed(prefix: str) -> dict[int, dict[str, Any]] | None:
        # Scanning every key is the costly part, and blobs usually make it unnecessary.
        nonlocal grouped
        if grouped is None:
            grouped = _group_indexed(attrs, _INDEXED if inputs else _OUTPUT_INDEXED)
        return grouped.get(prefix)

    carried = _event_content(events)
    result: dict[str, Any] = {}
    if inputs:
        messages = (
            chat_messages(attrs.get("llm.input_messages"), "user")
            or _from_indexed(indexed("llm.input_messages"))
            or _with_system(attrs.get("gen_ai.input.messages"), attrs.get("gen_ai.system_instructions"))
            or _from_indexed(indexed("gen_ai.prompt"))
            or chat_messages(attrs.get("ai.prompt.messages"), "user")
            or carried.inputs
        )
        result["input_messages"] = [_public(m) for m in messages] or None
    outputs = (
        chat_messages(attrs.get("llm.output_messages"), "assistant")
        or chat_messages(attrs.get("gen_ai.output.messages"), "assistant")
        or _vercel_output(attrs)
        or _from_indexed(indexed("llm.output_messages"))
        or _from_indexed(indexed("gen_ai.completion"))
        or carried.outputs
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
        "finish_reason": finish or carried.finish_reason,
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


# --- chat messages in every shape ---------------------------------------------------------------

# LangChain message types (`type`, or the class name of a serialised message) -> chat roles.
_ROLES = {
    "ai": "assistant",
    "aimessage": "assistant",
    "aimessagechunk": "assistant",
    "model": "assistant",  # Gemini
    "human": "user",
    "humanmessage": "user",
    "humanmessagechunk": "user",
    "system": "system",
    "systemmessage": "system",
    "tool": "tool",
    "toolmessage": "tool",
    "function": "function",
    "functionmessage": "function",
    "chat": "user",
}


def chat_messages(value: Any, role: str = "user") -> list[dict[str, Any]]:
    """Chat messages from every shape producers log, as one list of
    `{role, content, tool_calls, tool_call_id, name, finish_reason}`: OpenAI messages (`tool_calls`,
    legacy `function_call`, `{message: ...}`-wrapped as OpenInference writes them), OpenAI completions
    (`choices`) and Responses API output items (`function_call`, `function_call_output`), OTel GenAI
    `parts`, Anthropic content blocks (`tool_use`, `tool_result`), Gemini candidates and parts
    (`function_call`), LangChain messages (`additional_kwargs.tool_calls`, `tool_calls` with `args`,
    serialised `lc` objects), `{messages: [...]}`, or plain text (one message in `role`).
    Anything else gives no messages."""
    data = _json(value)
    if isinstance(data, str):
        return [_message(role, data, [], None, None, None)] if data else []
    if isinstance(data, dict):
        data = _message_list(data)
    if not isinstance(data, list):
        return []
    messages = []
    for item in data:
        message = _one_message(item, role)
        if message is not None:
            messages.append(message)
    return messages


def _message_list(data: dict[str, Any]) -> list[Any] | None:
    """The messages a container object holds, or the object itself when it is one message."""
    if isinstance(data.get("messages"), list):
        return data["messages"]
    if isinstance(data.get("choices"), list):  # an OpenAI chat completion
        return [
            {**c["message"], "finish_reason": c.get("finish_reason")}
            for c in data["choices"]
            if isinstance(c, dict) and isinstance(c.get("message"), dict)
        ]
    if isinstance(data.get("candidates"), list):  # a Gemini response
        return [c for c in data["candidates"] if isinstance(c, dict)]
    if isinstance(data.get("output"), list) and (
        data.get("object") == "response" or all(isinstance(i, dict) and "type" in i for i in data["output"])
    ):
        return data["output"]  # an OpenAI Responses API response
    if isinstance(data.get("generations"), list):  # a LangChain LLMResult: [[generation, ...], ...]
        return [
            g.get("message") or {"role": "assistant", "content": g.get("text")}
            for group in data["generations"]
            for g in (group if isinstance(group, list) else [group])
            if isinstance(g, dict)
        ]
    keys = ("role", "parts", "content", "tool_calls", "additional_kwargs", "lc", "function_call")
    return [data] if any(k in data for k in keys) else None


def _one_message(item: Any, role: str) -> dict[str, Any] | None:
    if isinstance(item, str):
        return _message(role, item, [], None, None, None) if item else None
    if not isinstance(item, dict):
        return None
    if isinstance(item.get("message"), dict) and "role" not in item:  # OpenInference `{message: {...}}`
        item = item["message"]
    if isinstance(item.get("kwargs"), dict) and "lc" in item:  # a serialised LangChain message
        ids = item.get("id")
        kind = ids[-1] if isinstance(ids, list) and ids else None
        item = {"type": kind, **item["kwargs"]}
    kind = item.get("type")
    if kind == "function_call":  # Responses API output item
        return _message("assistant", None, [_call_of(item)], None, None, None)
    if kind == "function_call_output":
        return _message("tool", _content(item.get("output")), [], _text(item.get("call_id")), None, None)
    if kind == "reasoning" and "role" not in item:
        return None
    finish = _text(item.get("finish_reason", item.get("finishReason")))
    content = item.get("content")
    if isinstance(content, dict) and isinstance(content.get("parts"), list):  # a Gemini candidate
        item = {**content, "finish_reason": finish}
        content = None
    text, calls, tool_call_id = _content_parts(item.get("parts")) if "parts" in item else (None, [], None)
    if content is not None or not text:
        more_text, more_calls, more_id = _content_parts(content)
        text = "\n".join(t for t in (text, more_text) if t) or None
        calls += more_calls
        tool_call_id = tool_call_id or more_id
    calls += _tool_calls(item)
    return _message(
        _role(item, role),
        text,
        _distinct(calls),
        _text(item.get("tool_call_id")) or tool_call_id,
        _text(item.get("name")),
        finish,
    )


def _message(
    role: str | None,
    content: str | None,
    calls: list[dict[str, Any]],
    tool_call_id: str | None,
    name: str | None,
    finish: str | None,
) -> dict[str, Any]:
    return {
        "role": role,
        "content": content,
        "tool_calls": calls,
        "tool_call_id": tool_call_id,
        "name": name,
        "finish_reason": finish,
    }


def _role(item: dict[str, Any], default: str) -> str:
    role = item.get("role")
    if isinstance(role, str) and role:
        return "assistant" if role.lower() == "model" else role  # Gemini's name for the assistant
    kind = item.get("type")
    if isinstance(kind, str) and kind.lower() in _ROLES:
        return _ROLES[kind.lower()]
    return default


def _tool_calls(item: dict[str, Any]) -> list[dict[str, Any]]:
    """OpenAI `tool_calls` (or LangChain's `{name, args, id}`), else LangChain's
    `additional_kwargs.tool_calls`, and a legacy `function_call`."""
    extra: dict[str, Any] = (
        item["additional_kwargs"] if isinstance(item.get("additional_kwargs"), dict) else {}
    )
    listed = item.get("tool_calls") or extra.get("tool_calls")
    calls = [
        _call_of(call) for call in (listed if isinstance(listed, list) else ()) if isinstance(call, dict)
    ]
    legacy = item.get("function_call") or extra.get("function_call")
    if isinstance(legacy, dict) and not calls:
        calls.append(_call_of(legacy))
    return calls


def _distinct(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A call listed twice (LangChain keeps Anthropic's `tool_use` blocks beside `tool_calls`) once."""
    seen: set[str] = set()
    kept = []
    for call in calls:
        if call["id"] is not None:
            if call["id"] in seen:
                continue
            seen.add(call["id"])
        kept.append(call)
    return kept


def _call_of(data: dict[str, Any]) -> dict[str, Any]:
    """One tool call in any of its spellings: OpenAI `{id, function: {name, arguments}}`, LangChain
    `{id, name, args}`, Responses API `{call_id, name, arguments}`, Gemini `{name, args}`."""
    function: dict[str, Any] = data["function"] if isinstance(data.get("function"), dict) else {}
    return _call({"id": data.get("call_id", data.get("id")), **data, **function})


def _content_parts(content: Any, depth: int = 0) -> tuple[str | None, list[dict[str, Any]], str | None]:
    """Text, tool calls and the id of the call answered, from message content: a string, or a list of
    blocks and parts (OpenAI, Anthropic, OTel GenAI, Gemini, Responses API)."""
    if content is None or isinstance(content, str):
        return content or None, [], None
    if isinstance(content, dict):
        content = content["parts"] if isinstance(content.get("parts"), list) else [content]
    if not isinstance(content, list) or depth > MAX_BLOCK_DEPTH:
        return _content(content), [], None
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    tool_call_id = None
    for block in content:
        if not isinstance(block, dict):
            texts.append(block if isinstance(block, str) else orjson_text(block))
            continue
        kind = block.get("type")
        gemini_call = block.get("function_call") or block.get("functionCall")
        if kind in ("tool_use", "tool_call", "function_call") or (kind == "function" and "function" in block):
            calls.append(_call_of({**block, "arguments": block.get("arguments", block.get("input"))}))
        elif isinstance(gemini_call, dict):
            calls.append(_call_of(gemini_call))
        elif kind in ("tool_result", "tool_call_response", "function_call_output"):
            tool_call_id = _text(block.get("tool_use_id", block.get("id", block.get("call_id"))))
            answer = block.get("content", block.get("response", block.get("result", block.get("output"))))
            texts.append(_content_parts(answer, depth + 1)[0] or "")
        elif isinstance(block.get("function_response") or block.get("functionResponse"), dict):
            texts.append(orjson_text(block.get("function_response") or block.get("functionResponse")))
        elif isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif isinstance(block.get("content"), str):
            texts.append(block["content"])
    return "\n".join(t for t in texts if t) or None, calls, tool_call_id


def _with_system(value: Any, system: Any) -> list[dict[str, Any]]:
    """OTel GenAI input messages, after the system instructions kept apart from them."""
    messages = chat_messages(value, "user")
    instructions = _json(system)
    if isinstance(instructions, list):
        text = _content_parts(instructions)[0]
        messages.insert(0, _message("system", text, [], None, None, None))
    elif isinstance(instructions, str) and instructions:
        messages.insert(0, _message("system", instructions, [], None, None, None))
    return messages


def _vercel_output(attrs: dict[str, Any]) -> list[dict[str, Any]]:
    calls = _json(attrs.get("ai.response.toolCalls"))
    if not isinstance(calls, list) or not calls:
        return []
    return [
        _message(
            "assistant",
            _content(attrs.get("ai.response.text")),
            [
                _call(
                    {
                        "id": c.get("toolCallId"),
                        "name": c.get("toolName"),
                        "arguments": c.get("args", c.get("input")),
                    }
                )
                for c in calls
                if isinstance(c, dict)
            ],
            None,
            None,
            None,
        )
    ]


class _Carried:
    """Messages carried in span events rather than attributes."""

    def __init__(self) -> None:
        self.inputs: list[dict[str, Any]] = []
        self.outputs: list[dict[str, Any]] = []
        self.finish_reason: str | None = None


_EVENT_ROLES = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}


def _event_content(events: Any) -> _Carried:
    """OTel GenAI content in span events: `gen_ai.content.prompt` / `gen_ai.content.completion`
    (attributes `gen_ai.prompt` / `gen_ai.completion`), the per-message events
    (`gen_ai.{system,user,assistant,tool}.message`, `gen_ai.choice`), and
    `gen_ai.client.inference.operation.details` (`gen_ai.input.messages` / `gen_ai.output.messages`)."""
    carried = _Carried()
    if not isinstance(events, list):
        return carried
    for event in events:
        if not isinstance(event, dict) or not isinstance(event.get("attributes"), dict):
            continue
        name, attrs = event.get("name"), event["attributes"]
        if name == "gen_ai.content.prompt":
            carried.inputs += chat_messages(attrs.get("gen_ai.prompt"), "user")
        elif name == "gen_ai.content.completion":
            carried.outputs += chat_messages(attrs.get("gen_ai.completion"), "assistant")
        elif name == "gen_ai.client.inference.operation.details":
            carried.inputs += _with_system(
                attrs.get("gen_ai.input.messages"), attrs.get("gen_ai.system_instructions")
            )
            carried.outputs += chat_messages(attrs.get("gen_ai.output.messages"), "assistant")
        elif name in _EVENT_ROLES:
            carried.inputs += _event_message(attrs, _EVENT_ROLES[name])
        elif name == "gen_ai.choice":
            body = _json(attrs.get("message", attrs.get("gen_ai.event.content", attrs.get("body"))))
            messages = _event_message(body if isinstance(body, dict) else attrs, "assistant")
            finish = _text(attrs.get("finish_reason"))
            for message in messages:
                message["finish_reason"] = message["finish_reason"] or finish
            carried.outputs += messages
            carried.finish_reason = carried.finish_reason or finish
    return carried


def _event_message(attrs: dict[str, Any], role: str) -> list[dict[str, Any]]:
    """One message from a per-message event: its content (text or JSON) and tool calls in attributes."""
    body = _json(attrs.get("gen_ai.event.content", attrs.get("body")))
    fields = {**attrs, **body} if isinstance(body, dict) else dict(attrs)
    if isinstance(fields.get("message"), dict | str) and "content" not in fields:
        fields = {**fields, **(m if isinstance(m := _json(fields["message"]), dict) else {"content": m})}
    fields["content"] = _json(fields.get("content"))
    fields["tool_calls"] = _json(fields.get("tool_calls"))
    fields.setdefault("tool_call_id", fields.get("id") if role == "tool" else None)
    message = _one_message({k: v for k, v in fields.items() if k != "message"}, role)
    return [message] if message is not None else []


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


def _tool_names(value: Any, depth: int = 0) -> list[str]:
    if depth > MAX_BLOCK_DEPTH:
        return []
    if isinstance(value, list):
        return [name for item in value for name in _tool_names(item, depth + 1)]
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
                return _tool_names(_json(inner), depth + 1)
    return []


def _call(data: dict[str, Any]) -> dict[str, Any]:
    arguments = data.get("arguments")
    if arguments is None:
        arguments = data.get("args", data.get("input"))
    if arguments is not None and not isinstance(arguments, str):
        arguments = orjson_text(arguments)
    return {"id": _text(data.get("id")), "name": _text(data.get("name")), "arguments": arguments}


def _content(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, list):
        texts = [p.get("text") if isinstance(p, dict) else str(p) for p in value]
        return "\n".join(t for t in texts if isinstance(t, str) and t) or None
    return orjson_text(value)


def orjson_text(value: Any) -> str:
    """A value as JSON text; what JSON cannot hold (an integer past 64 bits, nesting past orjson's
    limit) becomes its Python text."""
    try:
        return orjson.dumps(value, default=str).decode()
    except TypeError:
        return str(value)[:TEXT_CAP]


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
        span = orjson.loads(line)
        attrs = span.get("attributes")
        if isinstance(attrs, dict):
            return orjson.dumps(normalize_messages(attrs, inputs=False, events=span.get("events"))).decode()
    except Exception:  # noqa: BLE001 - untrusted input; see above
        pass
    return _NO_MESSAGES
