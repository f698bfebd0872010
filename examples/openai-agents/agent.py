"""A small customer-support agent on the OpenAI Agents SDK, traced for HALO with one call.

    python agent.py --base-url http://localhost:11434/v1 --model qwen3:8b          # writes traces.jsonl
    python agent.py --traces http://127.0.0.1:4318 "Refund order ORD-1002, please"  # to `halo collect`

It talks to any OpenAI-compatible Chat Completions endpoint (OpenAI, vLLM, Ollama, OpenRouter, ...).
Its refund tool fails on large refunds, so a few runs give HALO a failure pattern to find.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from agents import (
    Agent,
    OpenAIChatCompletionsModel,
    RunContextWrapper,
    Runner,
    function_tool,
    set_trace_processors,
)
from openai import AsyncOpenAI

import halo_rlm.tracing

ORDERS = {
    "ORD-1001": {"item": "USB-C dock", "sku": "DOCK-7", "total": 89.00, "status": "shipped"},
    "ORD-1002": {"item": "27-inch monitor", "sku": "MON-27", "total": 329.00, "status": "delivered"},
    "ORD-1003": {"item": "laptop stand", "sku": "STAND-2", "total": 45.50, "status": "processing"},
}
STOCK = {"DOCK-7": 12, "MON-27": 0, "STAND-2": 40}
QUESTIONS = [
    "Where is my order ORD-1001?",
    "My monitor (order ORD-1002) arrived cracked. I want my money back.",
    "Is the laptop stand from ORD-1003 in stock if I want a second one?",
]


def tool_error(context: RunContextWrapper[Any], error: Exception) -> str:
    """What the model (and the trace) sees when a tool raises: the actual error, not a generic one."""
    return f"{type(error).__name__}: {error}"


@function_tool(failure_error_function=tool_error)
def lookup_order(order_id: str) -> str:
    """Look up an order: item, SKU, total paid and shipping status.

    Args:
        order_id: The order id, e.g. ORD-1001.
    """
    order = ORDERS.get(order_id.strip().upper())
    if order is None:
        raise ValueError(f"unknown order id {order_id!r}; order ids look like ORD-1001")
    return json.dumps(order)


@function_tool(failure_error_function=tool_error)
def check_stock(sku: str) -> str:
    """How many units of a SKU are in the warehouse.

    Args:
        sku: The product SKU, e.g. DOCK-7.
    """
    return json.dumps({"sku": sku, "in_stock": STOCK.get(sku.strip().upper(), 0)})


@function_tool(failure_error_function=tool_error)
def issue_refund(order_id: str, amount: float) -> str:
    """Refund an amount to the customer's original payment method.

    Args:
        order_id: The order to refund.
        amount: The amount in US dollars.
    """
    if amount > 100:
        # The payments service does not answer in time for large refunds: the systemic failure to find.
        raise TimeoutError("payments service timed out after 10s")
    return json.dumps({"order_id": order_id, "refunded": amount, "status": "ok"})


def build_agent(base_url: str | None, api_key: str, model: str) -> Agent:
    # Chat Completions, not the Responses API the SDK defaults to, so any compatible server works.
    client = AsyncOpenAI(base_url=base_url, api_key=api_key)
    return Agent(
        name="SupportAgent",
        instructions="You help customers of an electronics shop with orders, stock and refunds. Use the tools; "
        "never guess order details. Answer in two sentences at most.",
        tools=[lookup_order, check_stock, issue_refund],
        model=OpenAIChatCompletionsModel(model=model, openai_client=client),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("questions", nargs="*", help="Customer messages (default: three sample ones).")
    parser.add_argument(
        "--base-url",
        default=os.environ.get("OPENAI_BASE_URL"),
        help="OpenAI-compatible endpoint (default: $OPENAI_BASE_URL, else OpenAI).",
    )
    parser.add_argument("--model", default=os.environ.get("AGENT_MODEL", "gpt-4o-mini"))
    parser.add_argument(
        "--api-key",
        default=os.environ.get("OPENAI_API_KEY", "unused"),
        help="Default: $OPENAI_API_KEY (local servers accept anything).",
    )
    parser.add_argument(
        "--traces",
        default="traces.jsonl",
        help="JSONL file to append spans to, or the URL of `halo collect` (default: traces.jsonl).",
    )
    args = parser.parse_args()

    # Never upload traces to OpenAI's dashboard, even if the tracing extra is missing.
    set_trace_processors([])
    provider = halo_rlm.tracing.setup(args.traces, service_name="support-agent")
    agent = build_agent(args.base_url, args.api_key, args.model)
    try:
        for question in args.questions or QUESTIONS:
            result = Runner.run_sync(agent, question, max_turns=8)
            print(f"> {question}\n{result.final_output}\n")
    finally:
        provider.shutdown()  # write the last spans before exiting


if __name__ == "__main__":
    main()
