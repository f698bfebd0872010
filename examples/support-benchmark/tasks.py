"""The task set (tasks.json) and what counts as resolving a task."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

TASKS: list[dict[str, Any]] = json.loads((Path(__file__).with_name("tasks.json")).read_text("utf-8"))["tasks"]


def resolved(task: dict[str, Any], answer: str, refunds: list[tuple[str, float]]) -> bool:
    """Whether the agent did what the customer asked: the refund is in the ledger with the right amount,
    or the answer states the right warranty end, stock level or order status."""
    text = answer.lower()
    if task["kind"] == "refund":
        return refunds == [(task["order_id"], task["amount"])]
    if task["kind"] == "warranty":
        return task["warranty_end"] in text and (("until" in text) == task["covered"])
    if task["kind"] == "stock":
        count = task["in_stock"]
        return "out of stock" in text if count == 0 else re.search(rf"\b{count} units?\b", text) is not None
    if task["kind"] == "status":
        return task["status"] in text
    raise ValueError(f"tasks.json: unknown task kind {task['kind']!r}")
