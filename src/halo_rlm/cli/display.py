"""How trace data looks on a terminal: a trace's compact timeline, an LLM call's conversation, and SQL
rows that stay readable however wide they are. Every piece of trace text goes through `escape`
(rich markup made literal, terminal controls made visible).

Imported by the commands that print these, when they run (rich is imported here, not at start-up).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from halo_rlm.cli.base import escape, ms
from halo_rlm.utils import clip, one_line

if TYPE_CHECKING:
    from rich.console import RenderableType

    from halo_rlm.store import SpanView, SqlResult, TraceView

__all__ = ["Conversations", "sql_rows", "timeline"]

TIMELINE_ROWS = 60  # spans in a timeline; the tree below it shows them all
NAME_WIDTH = 36
ROLE_STYLES = {"system": "dim", "user": "cyan", "assistant": "green", "tool": "yellow"}
KIND_STYLES = {"LLM": "cyan", "TOOL": "yellow", "AGENT": "magenta"}


# --- timeline ------------------------------------------------------------------------------------


def timeline(view: TraceView, width: int) -> RenderableType:
    """One row per span (tree order, indented by depth): start offset, duration, and a bar placed on
    the trace's time axis, so where the time went shows at a glance."""
    from rich.console import Group
    from rich.table import Table

    spans = view.spans
    ends = [(s.start_offset_ms or 0) + (s.duration_ms or 0) for s in spans if s.start_offset_ms is not None]
    total = max(ends, default=0.0) or 1.0
    bar_width = max(10, width - NAME_WIDTH - 22)
    table = Table(show_edge=False, show_header=True, box=None, padding=(0, 1), pad_edge=False)
    table.add_column("span", no_wrap=True, max_width=NAME_WIDTH)
    table.add_column("start", justify="right", no_wrap=True)
    table.add_column("took", justify="right", no_wrap=True)
    table.add_column(f"0 ─ {ms(total)}", no_wrap=True)
    for span in spans[:TIMELINE_ROWS]:
        mark = "[red]✗[/]" if span.status == "ERROR" else "·"
        name = one_line(span.name, NAME_WIDTH - 3 - 2 * min(span.depth, 8))
        table.add_row(
            f"{'  ' * min(span.depth, 8)}{mark} {escape(name)}",
            ms(span.start_offset_ms),
            ms(span.duration_ms),
            _bar(span, total, bar_width),
        )
    parts: list[RenderableType] = [table]
    if len(spans) > TIMELINE_ROWS:
        parts.append(f"[dim]… {len(spans) - TIMELINE_ROWS} more spans in the tree below[/]")
    return Group(*parts)


def _bar(span: SpanView, total: float, width: int) -> str:
    if span.start_offset_ms is None:
        return "[dim]? no start time[/]"
    start = min(width - 1, int(span.start_offset_ms / total * width))
    if span.duration_ms is None:
        return " " * start + "[dim]▸ still running or no end[/]"
    length = max(1, round(span.duration_ms / total * width))
    style = "red" if span.status == "ERROR" else KIND_STYLES.get(span.kind, "white")
    return " " * start + f"[{style}]{'█' * min(length, width - start)}[/]"


# --- conversations -------------------------------------------------------------------------------


class Conversations:
    """The messages of a trace's LLM calls, each call showing only what is new: a call's input
    usually repeats the whole conversation so far, so the messages an earlier call already showed
    are counted, not printed again."""

    def __init__(self, width: int, *, full: bool = False) -> None:
        self.width = width
        self.full = full  # whole messages, lines kept (when a few spans are asked for)
        self.seen: list[list[dict[str, Any]]] = []

    def lines(self, span: SpanView) -> list[str]:
        """Markup lines of `span`'s conversation: new input messages, then the answer (its output
        messages, tool calls included); empty for a span without messages."""
        messages = span.messages or {}
        inputs: list[dict[str, Any]] = messages.get("input_messages") or []
        outputs: list[dict[str, Any]] = messages.get("output_messages") or []
        if not inputs and not outputs:
            return []
        known = 0 if self.full else max((_common_prefix(inputs, seen) for seen in self.seen), default=0)
        self.seen.append(inputs + outputs)
        lines = [f"[dim]… {known} earlier message{'s' * (known != 1)} as above[/]"] if known else []
        lines += [self._message(m, answer=False) for m in inputs[known:]]
        lines += [self._message(m, answer=True) for m in outputs]
        offered = messages.get("tools_offered")
        if offered and self.full:
            names = [str(t.get("name", "?")) if isinstance(t, dict) else str(t) for t in offered]
            lines.append(f"[dim]tools offered: {escape(', '.join(names))}[/]")
        return lines

    def _message(self, message: dict[str, Any], *, answer: bool) -> str:
        role = str(message.get("role") or "?")
        label = f"[bold {ROLE_STYLES.get(role, 'white')}]{'⇒ ' if answer else ''}{escape(role)}[/]"
        if message.get("name") and role == "tool":
            label += f" [dim]{escape(str(message['name']))}[/]"
        if message.get("tool_call_id"):
            label += f" [dim]({escape(str(message['tool_call_id']))})[/]"
        parts = []
        content = message.get("content")
        if content:
            parts.append(escape(self._text(str(content))))
        for call in message.get("tool_calls") or ():
            arguments = call.get("arguments")
            arguments = arguments if isinstance(arguments, str) else _json(arguments)
            parts.append(
                f"[bold]→ {escape(str(call.get('name') or '?'))}[/]"
                f"({escape(self._text(arguments or ''))})"
                + (f" [dim]{escape(str(call['id']))}[/]" if call.get("id") else "")
            )
        return f"{label} " + ("\n  ".join(parts) if parts else "[dim](empty)[/]")

    def _text(self, text: str) -> str:
        return clip(text, self.width * 10) if self.full else one_line(text, self.width)


def _common_prefix(messages: Sequence[dict[str, Any]], seen: Sequence[dict[str, Any]]) -> int:
    n = 0
    for mine, theirs in zip(messages, seen, strict=False):
        if (mine.get("role"), mine.get("content"), mine.get("tool_call_id")) != (
            theirs.get("role"),
            theirs.get("content"),
            theirs.get("tool_call_id"),
        ):
            break
        n += 1
    return n


# --- SQL rows ------------------------------------------------------------------------------------

MIN_COLUMN = 16  # a table column narrower than this would show mostly "…"
CELL_CHARS = 300  # characters of one value shown in a table cell (head and tail)


def sql_rows(result: SqlResult, width: int) -> RenderableType:
    """The rows of a query: a table when every column gets room enough to read, else each row as a
    record (one `column  value` line per column), values on one line with head and tail kept."""
    from rich.console import Group
    from rich.table import Table

    cells = [[_cell(value) for value in row] for row in result.rows]
    natural = [max([len(column), *(len(row[i]) for row in cells)]) for i, column in enumerate(result.columns)]
    if sum(min(n, MIN_COLUMN) for n in natural) + 3 * (len(natural) - 1) <= width:
        table = Table(show_edge=False)
        for column in result.columns:
            table.add_column(escape(column), overflow="fold")
        for row, values in zip(cells, result.rows, strict=True):
            table.add_row(*(_styled(text, value) for text, value in zip(row, values, strict=True)))
        return table
    return Group(*_records(result, cells, width))


def _records(result: SqlResult, cells: list[list[str]], width: int) -> list[str]:
    """Each row as `column  value` lines, a long value wrapped under itself (at most two lines)."""
    from rich.cells import chop_cells

    label_width = min(max(len(c) for c in result.columns), 28)
    value_width = max(20, width - label_width - 2)
    lines = []
    for number, (row, values) in enumerate(zip(cells, result.rows, strict=True), 1):
        lines.append(f"[bold]─── row {number} ───[/]")
        for column, text, value in zip(result.columns, row, values, strict=True):
            label = escape(one_line(column, label_width).ljust(label_width))
            if value is None:
                lines.append(f"[dim]{label}  NULL[/]")
                continue
            chunks = chop_cells(one_line(text, value_width * 2), value_width)
            lines.append(f"[dim]{label}[/]  " + f"\n{' ' * (label_width + 2)}".join(map(escape, chunks)))
    return lines


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    text = value if isinstance(value, str) else _json(value)
    return one_line(text, CELL_CHARS)


def _styled(text: str, value: Any) -> str:
    return "[dim]NULL[/]" if value is None else escape(text)


def _json(value: Any) -> str:
    import orjson

    return orjson.dumps(value, default=str).decode()
