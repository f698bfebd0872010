"""Traces written for the web app's tests: a big trace of thousands of spans (messages in both the
flattened OpenInference shape and as JSON blobs), and a trace whose content is hostile HTML."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

BASE = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


def _iso(offset_ms: float) -> str:
    return (BASE + timedelta(milliseconds=offset_ms)).isoformat().replace("+00:00", "Z")


def span(
    trace_id: str,
    span_id: str,
    parent: str | None,
    name: str,
    start_ms: float,
    duration_ms: float | None,
    attributes: dict[str, Any],
    *,
    error: str | None = None,
    service: str = "bigbot",
) -> dict[str, Any]:
    line: dict[str, Any] = {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent or "",
        "name": name,
        "kind": "SPAN_KIND_INTERNAL",
        "start_time": _iso(start_ms),
        "end_time": _iso(start_ms + duration_ms) if duration_ms is not None else None,
        "status": {"code": "STATUS_CODE_ERROR" if error else "STATUS_CODE_OK", "message": error or ""},
        "resource": {"attributes": {"service.name": service}},
        "scope": {"name": "tests", "version": "1"},
        "attributes": attributes,
    }
    if line["end_time"] is None:
        del line["end_time"]
    return line


def flattened(prefix: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Messages as flattened OpenInference keys (`llm.input_messages.0.message.role` ...)."""
    out: dict[str, Any] = {}
    for i, message in enumerate(messages):
        for key, value in message.items():
            if key == "tool_calls":
                for j, call in enumerate(value):
                    base = f"{prefix}.{i}.message.tool_calls.{j}.tool_call"
                    out[f"{base}.id"] = call["id"]
                    out[f"{base}.function.name"] = call["name"]
                    out[f"{base}.function.arguments"] = call["arguments"]
            else:
                out[f"{prefix}.{i}.message.{key}"] = value
    return out


def big_trace(path: Path, *, spans: int = 5_000, trace_id: str = "b1" * 16, seed: int = 5) -> dict[str, Any]:
    """One trace of `spans` spans: a root agent, steps of model call + tool call. Even steps write
    their messages as flattened keys, odd steps as JSON blobs. Returns ids the tests look for."""
    rng = random.Random(seed)
    root = "a0" * 8
    lines = []
    steps = (spans - 2) // 2
    conversation: list[dict[str, Any]] = [
        {"role": "system", "content": "You are the big test agent."},
        {"role": "user", "content": "Please find the needle-user-question."},
    ]
    clock = 0.0
    failing_step = steps // 2
    for step in range(steps):
        llm_id, tool_id = f"{step * 2 + 1:016x}", f"{step * 2 + 2:016x}"
        call = {"id": f"call_{step}", "name": "lookup", "arguments": orjson.dumps({"step": step}).decode()}
        output = [{"role": "assistant", "content": f"Step {step}: looking it up.", "tool_calls": [call]}]
        attributes: dict[str, Any] = {
            "openinference.span.kind": "LLM",
            "llm.model_name": "gpt-test",
            "llm.token_count.prompt": 100 + step,
            "llm.token_count.completion": 20,
            "llm.cost.total": round(0.0001 * (1 + step % 7), 6),
        }
        if step % 2 == 0:
            attributes |= flattened("llm.input_messages", conversation) | flattened(
                "llm.output_messages", output
            )
        else:
            attributes |= {
                "llm.input_messages": orjson.dumps(conversation).decode(),
                "llm.output_messages": orjson.dumps(output).decode(),
            }
        duration = rng.uniform(5, 40)
        lines.append(span(trace_id, llm_id, root, "ChatCompletion", clock, duration, attributes))
        clock += duration
        tool_duration = rng.uniform(1, 10)
        error = "lookup exploded: needle-tool-error" if step == failing_step else None
        result = "boom" if error else f"result {step}"
        lines.append(
            span(
                trace_id,
                tool_id,
                root,
                "lookup",
                clock,
                tool_duration,
                {
                    "openinference.span.kind": "TOOL",
                    "tool.name": "lookup",
                    "tool_call.id": call["id"],
                    "input.value": call["arguments"],
                    "output.value": result,
                },
                error=error,
            )
        )
        clock += tool_duration
        # The conversation grows, but each call's input keeps only its start and last few messages, so
        # the file stays small (a real one would repeat everything).
        conversation = [
            *conversation[:2],
            *conversation[2:][-4:],
            *output,
            {"role": "tool", "tool_call_id": call["id"], "content": result},
        ]
    final = [{"role": "assistant", "content": "Found the needle-final-answer."}]
    lines.append(
        span(
            trace_id,
            "ff" * 8,
            root,
            "ChatCompletion",
            clock,
            10,
            {
                "openinference.span.kind": "LLM",
                "llm.model_name": "gpt-test",
                "llm.input_messages": orjson.dumps(conversation[:3]).decode(),
                "llm.output_messages": orjson.dumps(final).decode(),
            },
        )
    )
    lines.insert(
        0,
        span(
            trace_id,
            root,
            None,
            "BigAgent",
            0,
            clock + 10,
            {
                "openinference.span.kind": "AGENT",
                "agent.name": "BigAgent",
                "session.id": "big-session",
                "input.value": "Please find the needle-user-question.",
                "output.value": "Found the needle-final-answer.",
            },
        ),
    )
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")
    return {
        "trace_id": trace_id,
        "root": root,
        "spans": len(lines),
        "last_span": "ff" * 8,
        "failing_tool_span": f"{failing_step * 2 + 2:016x}",
        "deep_span": f"{(steps - 3) * 2 + 1:016x}",
    }


HOSTILE = [
    "<script>window.__pwned = 'script'</script>",
    "<img src=x onerror=\"window.__pwned='img'\">",
    "<svg onload=\"window.__pwned='svg'\"><script>window.__pwned='svg-script'</script></svg>",
    "javascript:window.__pwned='link'",
    "[click me](javascript:window.__pwned='md')",
    "</script><script>window.__pwned='break-out'</script>",
    "<iframe srcdoc=\"<script>parent.__pwned='iframe'</script>\"></iframe>",
    '"><a href="javascript:window.__pwned=\'attr\'">x</a>',
    "{{ 7*7 }} ${7*7} <style>body{display:none}</style>",
]


def hostile_trace(path: Path, *, trace_id: str = "e7" * 16) -> dict[str, Any]:
    """A trace whose names, messages, attributes, errors, tool calls and ids carry HTML and script."""
    payload = " ".join(HOSTILE)
    root = "c0" * 8
    messages = [{"role": "system", "content": payload}, {"role": "user", "content": payload}]
    output = [
        {
            "role": "assistant",
            "content": payload,
            "tool_calls": [{"id": "call_<b>x</b>", "name": "<script>t()</script>", "arguments": payload}],
        }
    ]
    lines = [
        span(
            trace_id,
            root,
            None,
            HOSTILE[0],
            0,
            100,
            {
                "openinference.span.kind": "AGENT",
                "agent.name": HOSTILE[2],
                "session.id": HOSTILE[1],
                "input.value": payload,
                "output.value": payload,
                HOSTILE[5]: payload,
            },
            service=HOSTILE[3],
        ),
        span(
            trace_id,
            "c1" * 8,
            root,
            HOSTILE[2],
            10,
            50,
            {
                "openinference.span.kind": "LLM",
                "llm.model_name": HOSTILE[1],
                "llm.input_messages": orjson.dumps(messages).decode(),
                "llm.output_messages": orjson.dumps(output).decode(),
            },
            error=payload,
            service=HOSTILE[3],
        ),
        span(
            trace_id,
            "c2" * 8,
            root,
            HOSTILE[6],
            60,
            20,
            {
                "openinference.span.kind": "TOOL",
                "tool.name": HOSTILE[4],
                "tool_call.id": "call_<b>x</b>",
                "input.value": payload,
                "output.value": payload,
            },
            service=HOSTILE[3],
        ),
    ]
    lines[1]["events"] = [
        {"name": HOSTILE[0], "time": _iso(20), "attributes": {"exception.message": payload}}
    ]
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")
    return {"trace_id": trace_id, "spans": [line["span_id"] for line in lines]}
