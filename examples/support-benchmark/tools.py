"""The agent's tools. Each one is a thin client of the shop's services (backend.py)."""

from __future__ import annotations

import json
from typing import Any

from agents import RunContextWrapper, function_tool
from backend import SHOP, InventoryBusy

RETRIES = 0  # attempts after the first when a service is busy


def tool_error(context: RunContextWrapper[Any], error: Exception) -> str:
    """What the model (and the trace) sees when a tool raises: the actual error."""
    return f"{type(error).__name__}: {error}"


@function_tool(failure_error_function=tool_error)
def lookup_order(order_id: str) -> str:
    """Look up an order: item, total paid, shipping status and delivery date.

    Args:
        order_id: The order id, e.g. A-1001.
    """
    order = SHOP.order(order_id)
    if order is None:
        raise ValueError(f"unknown order id {order_id!r}; order ids look like A-1001")
    return json.dumps(order)


@function_tool(failure_error_function=tool_error)
def issue_refund(order_id: str, amount: str) -> str:
    """Refund part or all of an order to the customer's original payment method.

    Args:
        order_id: The order to refund.
        amount: The amount to refund, as the customer wrote it (e.g. "$24.50").
    """
    try:
        value = float(amount)
    except (TypeError, ValueError):
        raise ValueError(f"argument amount must be a number of dollars, got {amount!r}") from None
    SHOP.refund(order_id, value)
    return json.dumps({"order_id": order_id, "refunded": value, "status": "ok"})


@function_tool(failure_error_function=tool_error)
def check_stock(sku: str) -> str:
    """How many units of a product are in the warehouse.

    Args:
        sku: The product SKU, e.g. SKU-07.
    """
    for attempt in range(RETRIES + 1):
        try:
            return json.dumps({"sku": sku, "in_stock": SHOP.stock(sku)})
        except InventoryBusy:
            if attempt == RETRIES:
                raise
    raise AssertionError("unreachable")


TOOLS = [lookup_order, issue_refund, check_stock]
