"""Small agent traces in HALO's flat span format, built for the CLI tests: an agent span, LLM calls whose
messages come as flattened OpenInference keys (`llm.input_messages.N.message.*`) and as JSON blobs,
tool calls and their results, a failing tool whose result repeats its error message, tokens without
a cost. `text` is put into every name, message, attribute and error, so tests can fill the traces
with hostile text (terminal escape sequences, bidi overrides)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson

__all__ = ["HOSTILE", "UNSAFE", "write_agent_traces"]

# What a hostile trace could carry to a terminal: an OSC title change, clear-screen, an OSC 8
# hyperlink, hidden (SGR 8) text, a one-byte C1 CSI, bidi overrides and isolates, a BEL.
HOSTILE = (
    "\x1b]0;pwned\x07\x1b[2J\x1b[H\x1b]8;;https://evil.example/\x1b\\click me\x1b]8;;\x1b\\"
    "\x1b[8mhidden\x1b[0m\x9b31mred\u202eevil\u202c\u2066iso\u2069\u200f\x07"
)
# What must never reach a terminal from trace text: ESC, BEL and the other C0 controls but tab and
# newline, DEL and C1 controls, bidi overrides, embeddings, isolates and marks, and invisible text.
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")
BASE_NS = 1_777_000_000 * 10**9


def _span(
    trace: str,
    span: str,
    parent: str,
    name: str,
    kind: str,
    start_ms: int,
    end_ms: int,
    attributes: dict[str, Any],
    *,
    service: str,
    error: str | None = None,
) -> dict[str, Any]:
    return {
        "trace_id": trace,
        "span_id": span,
        "parent_span_id": parent,
        "name": name,
        "kind": "SPAN_KIND_INTERNAL",
        "start_time": BASE_NS + start_ms * 10**6,
        "end_time": BASE_NS + end_ms * 10**6,
        "status": {"code": "STATUS_CODE_ERROR" if error else "STATUS_CODE_OK", "message": error or ""},
        "resource": {"attributes": {"service.name": service}},
        "attributes": {"openinference.span.kind": kind, **attributes},
    }


def trace_spans(number: int, text: str = "") -> list[dict[str, Any]]:
    """One agent run: the agent asks the model, the model calls a tool that fails, the model answers."""
    trace = f"trace-{number:04d}"
    agent, tool, service = f"Planner{text}", f"search_flights{text}", f"travel{text}"
    system = f"You plan trips.{text}"
    question = f"Find me a flight to Lisbon on day {number}.{text}"
    call = {
        "id": f"call_{number}",
        "name": tool,
        "arguments": orjson.dumps({"city": f"Lisbon{text}"}).decode(),
    }
    error = f"FlightAPIError: upstream timeout after 30s{text}"
    answer = f"Sorry, no flights could be found right now.{text}"
    first_llm = {
        "llm.model_name": "gpt-4o",
        "llm.token_count.prompt": 1200,
        "llm.token_count.completion": 80,
        "llm.input_messages.0.message.role": "system",
        "llm.input_messages.0.message.content": system,
        "llm.input_messages.1.message.role": "user",
        "llm.input_messages.1.message.content": question,
        "llm.output_messages.0.message.role": "assistant",
        "llm.output_messages.0.message.tool_calls.0.tool_call.id": call["id"],
        "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": tool,
        "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments": call["arguments"],
    }
    second_llm = {
        "llm.model_name": "gpt-4o",
        "llm.token_count.prompt": 1500,
        "llm.token_count.completion": 40,
        "llm.input_messages": orjson.dumps(
            [
                {"role": "system", "content": system},
                {"role": "user", "content": question},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": tool, "arguments": call["arguments"]},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": call["id"], "content": error},
            ]
        ).decode(),
        "llm.output_messages": orjson.dumps([{"role": "assistant", "content": answer}]).decode(),
    }
    return [
        _span(
            trace,
            f"{trace}-agent",
            "",
            f"agent.run{text}",
            "AGENT",
            0,
            5_000 + number * 100,
            {"agent.name": agent, "input.value": question, "output.value": answer},
            service=service,
        ),
        _span(
            trace,
            f"{trace}-llm1",
            f"{trace}-agent",
            f"chat{text}",
            "LLM",
            10,
            1_200,
            first_llm,
            service=service,
        ),
        _span(
            trace,
            f"{trace}-tool",
            f"{trace}-agent",
            f"tool.{tool}",
            "TOOL",
            1_210,
            3_000 + number * 50,
            {"tool.name": tool, "input.value": call["arguments"], "output.value": error},
            service=service,
            error=error,
        ),
        _span(
            trace,
            f"{trace}-llm2",
            f"{trace}-agent",
            f"chat{text}",
            "LLM",
            3_100,
            4_900,
            second_llm,
            service=service,
        ),
    ]


def write_agent_traces(path: Path, traces: int = 6, text: str = "") -> Path:
    """`traces` agent runs as JSONL at `path`."""
    lines = [orjson.dumps(span) for number in range(1, traces + 1) for span in trace_spans(number, text)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path
