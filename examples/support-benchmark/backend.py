"""The shop behind the support agent: orders, an inventory service and a refunds ledger.

This is the world the benchmark runs in, not part of the agent's harness: a coding agent fixing the
harness has no reason to change it. The inventory service is busy on the first request for some
SKUs in each process, as a loaded service is; a client that retries gets an answer.
"""

from __future__ import annotations

import datetime as dt
import threading

TODAY = dt.date(2026, 6, 1)
WARRANTY_MONTHS = 12
ORDERS: dict[str, dict[str, object]] = {}
STOCK: dict[str, int] = {}
BUSY_SKUS: set[str] = set()
_ITEMS = (
    "USB-C dock",
    "27-inch monitor",
    "laptop stand",
    "mechanical keyboard",
    "webcam",
    "desk lamp",
    "noise-cancelling headphones",
    "portable SSD",
)

for n in range(1, 41):
    delivered = TODAY - dt.timedelta(days=20 * n + 3)
    ORDERS[f"A-{1000 + n}"] = {
        "item": _ITEMS[n % len(_ITEMS)],
        "total": round(19.5 + 7.25 * n, 2),
        "status": "delivered" if n % 5 else "shipped",
        "delivered": delivered.isoformat() if n % 5 else None,
    }
for n in range(1, 21):
    STOCK[f"SKU-{n:02d}"] = 0 if n % 4 == 0 else 3 * n
    if n % 3:
        BUSY_SKUS.add(f"SKU-{n:02d}")


class InventoryBusy(Exception):
    """The inventory service answered 503."""


class Shop:
    """One process's view of the shop: which SKUs were asked for already, and the refunds made."""

    def __init__(self) -> None:
        self.refunds: list[tuple[str, float]] = []
        self._asked: set[str] = set()
        self._lock = threading.Lock()

    def order(self, order_id: str) -> dict[str, object] | None:
        order = ORDERS.get(order_id.strip().upper())
        return None if order is None else {"order_id": order_id.strip().upper(), **order}

    def stock(self, sku: str) -> int:
        sku = sku.strip().upper()
        with self._lock:
            first = sku not in self._asked
            self._asked.add(sku)
        if first and sku in BUSY_SKUS:
            raise InventoryBusy("inventory service busy (503 Service Unavailable), try again")
        return STOCK.get(sku, 0)

    def refund(self, order_id: str, amount: float) -> None:
        with self._lock:
            self.refunds.append((order_id.strip().upper(), round(amount, 2)))


def warranty_end(delivered: str) -> dt.date:
    day = dt.date.fromisoformat(delivered)
    month = day.month - 1 + WARRANTY_MONTHS
    return day.replace(year=day.year + month // 12, month=month % 12 + 1, day=min(day.day, 28))


SHOP = Shop()
