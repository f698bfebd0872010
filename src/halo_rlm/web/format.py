"""How numbers, times and values read on the pages (Jinja filters), and JSON for the twins."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel
from starlette.responses import Response

PRETTY_LIMIT = 200_000  # characters of one pretty-printed value shown on a page (the JSON twin has all)


def duration(ms: float | None) -> str:
    if ms is None:
        return "—"
    if ms >= 3_600_000:
        return f"{ms / 3_600_000:.1f} h"
    if ms >= 60_000:
        return f"{ms / 60_000:.1f} min"
    if ms >= 1_000:
        return f"{ms / 1_000:.2f} s"
    return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"


def number(value: int | float | None) -> str:
    return "—" if value is None else f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"


def cost(value: float | None) -> str:
    if value is None:
        return "—"
    return f"${value:,.2f}" if value >= 10 else f"${value:.4f}"


def when(iso: str | None) -> str:
    """An ISO time as `2026-05-04 21:06:14` (UTC)."""
    return "—" if not iso else iso[:19].replace("T", " ")


def short(identifier: str | None, keep: int = 8) -> str:
    return "" if not identifier else identifier if len(identifier) <= keep + 1 else identifier[:keep] + "…"


def pretty(value: Any) -> str:
    """A value for a <pre> block: JSON text (also JSON inside a string) indented, long text cut."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in ("{", "[") and len(stripped) < 5_000_000:
            try:
                value = orjson.loads(stripped)
            except orjson.JSONDecodeError:
                return _cut(value)
        else:
            return _cut(value)
    try:
        return _cut(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode())
    except TypeError:
        return _cut(str(value))


def _cut(text: str) -> str:
    if len(text) <= PRETTY_LIMIT:
        return text
    return text[:PRETTY_LIMIT] + f"\n…[{len(text) - PRETTY_LIMIT:,} more characters; the .json twin has all]"


FILTERS = {
    "duration": duration,
    "number": number,
    "cost": cost,
    "when": when,
    "short": short,
    "pretty": pretty,
}


def to_plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value


def json_response(value: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(to_plain(value), default=str), status_code=status, media_type="application/json"
    )


def script_json(value: Any) -> str:
    """JSON for a `<script type="application/json">` block: `<`, `>` and `&` escaped so no text in it
    can close the element or open another."""
    text = orjson.dumps(to_plain(value), default=str).decode()
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


__all__ = ["FILTERS", "json_response", "pretty", "script_json", "to_plain"]
