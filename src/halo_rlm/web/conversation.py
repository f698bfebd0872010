"""A trace as a conversation: the user and assistant turns, tool calls with their results, refusals
and errors, rebuilt from the trace's LLM spans.

Every LLM call repeats the conversation so far as its input, so messages are shown once, the first
time they appear, in time order. Messages come through the same normaliser as the rest of HALO, so
flattened OpenInference keys (`llm.input_messages.0.message.role` ...), JSON-blob messages, GenAI
parts and Anthropic blocks all read the same. A tool result is attached to the call it answers; a
trace without LLM messages falls back to its root span's input and output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from halo_rlm.formats.conventions import normalize_messages
from halo_rlm.store.results import ConversationRecords

REFUSAL_REASONS = {"content_filter", "refusal", "safety", "recitation"}


@dataclass
class ToolCall:
    id: str | None
    name: str | None
    arguments: str | None
    result: str | None = None
    result_span_id: str | None = None
    span_id: str | None = None  # the tool's own span, when the trace has one for this call
    failed: bool = False
    error: str | None = None


@dataclass
class Turn:
    """One bubble: `role` is user, assistant, system, tool (a result no call claimed), error or refusal."""

    role: str
    text: str | None
    span_id: str | None = None
    agent: str | None = None
    model: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass
class Conversation:
    trace_id: str
    turns: list[Turn]
    llm_spans: int
    source: str  # "llm spans", "root span" or "none"
    agents: list[str] = field(default_factory=list)


def build(trace_id: str, records: ConversationRecords) -> Conversation:
    """The conversation of a trace from its LLM spans (their raw records, in start order), its tool
    spans (which say whether a call failed, and what it returned when no later message does) and its
    root spans (the fallback when no LLM span recorded messages)."""
    llm_spans, roots = records.llm, records.roots
    turns: list[Turn] = []
    seen: set[tuple[Any, ...]] = set()
    calls: dict[str, ToolCall] = {}
    agents: list[str] = []
    for span in llm_spans:
        record = _loads(span.get("raw"))
        attributes = record.get("attributes") if isinstance(record, dict) else None
        if not isinstance(attributes, dict):
            attributes = {}
        messages = normalize_messages(attributes)
        agent = _agent(attributes)
        if agent and agent not in agents:
            agents.append(agent)
        for message in messages.get("input_messages") or ():
            _add(message, turns, seen, calls, span, agent, output=False)
        for message in messages.get("output_messages") or ():
            _add(message, turns, seen, calls, span, agent, output=True)
        reason = (span.get("finish_reason") or messages.get("finish_reason") or "").lower()
        if reason in REFUSAL_REASONS:
            turns.append(
                Turn("refusal", f"The model stopped: {reason}", span["span_id"], agent, span.get("model"))
            )
        if span.get("status") == "ERROR":
            turns.append(
                Turn(
                    "error",
                    span.get("status_message") or "The model call failed",
                    span["span_id"],
                    agent,
                    span.get("model"),
                )
            )
    _join_tool_spans(calls, records.tools)
    if any(t.role in ("user", "assistant") for t in turns):
        return Conversation(trace_id, turns, len(llm_spans), "llm spans", agents)
    fallback: list[Turn] = []
    for root in roots:
        if root.get("input_value"):
            fallback.append(Turn("user", root["input_value"], root["span_id"]))
        if root.get("output_value"):
            fallback.append(Turn("assistant", root["output_value"], root["span_id"]))
        if root.get("status") == "ERROR":
            fallback.append(Turn("error", root.get("status_message") or "failed", root["span_id"]))
    return Conversation(
        trace_id, fallback + turns, len(llm_spans), "root span" if fallback else "none", agents
    )


def _add(
    message: dict[str, Any],
    turns: list[Turn],
    seen: set[tuple[Any, ...]],
    calls: dict[str, ToolCall],
    span: dict[str, Any],
    agent: str | None,
    *,
    output: bool,
) -> None:
    role = (message.get("role") or ("assistant" if output else "user")).lower()
    text = message.get("content")
    raw_calls = message.get("tool_calls") or []
    key = (
        agent,
        role,
        text,
        message.get("tool_call_id"),
        tuple((c.get("id"), c.get("name"), c.get("arguments")) for c in raw_calls),
    )
    if key in seen:
        return
    seen.add(key)
    if role == "tool":
        call = calls.get(message.get("tool_call_id") or "")
        if call is not None and call.result is None:
            call.result, call.result_span_id = text, span["span_id"]
            return
        turns.append(
            Turn(
                "tool",
                text,
                span["span_id"],
                agent,
                tool_calls=[ToolCall(message.get("tool_call_id"), message.get("name"), None, text)],
            )
        )
        return
    if role == "model":
        role = "assistant"
    tool_calls = [ToolCall(c.get("id"), c.get("name"), c.get("arguments")) for c in raw_calls]
    for call in tool_calls:
        if call.id:
            calls[call.id] = call
    turns.append(
        Turn(
            role, text, span["span_id"], agent, span.get("model") if role == "assistant" else None, tool_calls
        )
    )


def _join_tool_spans(calls: dict[str, ToolCall], tools: list[dict[str, Any]]) -> None:
    for tool in tools:
        call = calls.get(tool.get("tool_call_id") or "")
        if call is None:
            continue
        call.span_id = tool["span_id"]
        if tool.get("status") == "ERROR":
            call.failed, call.error = True, tool.get("status_message") or "the tool failed"
        if call.result is None and tool.get("tool_result") is not None:
            call.result, call.result_span_id = tool["tool_result"], tool["span_id"]


def _agent(attributes: dict[str, Any]) -> str | None:
    for key in ("agent.name", "gen_ai.agent.name", "inference.agent_name"):
        value = attributes.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _loads(raw: Any) -> Any:
    if not isinstance(raw, str):
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


__all__ = ["Conversation", "ToolCall", "Turn", "build"]
