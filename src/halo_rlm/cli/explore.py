"""Commands that load and explore traces: `ingest`, `stats`, `traces`, `show`, `sql`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import click

from halo_rlm.cli.base import (
    Moment,
    cli,
    emit_json,
    err,
    escape,
    fail,
    ingest_with_progress,
    json_option,
    ms,
    open_read_only,
    out,
    print_ingest_summary,
    resolve_store,
    store_option,
)
from halo_rlm.defaults import SortKey
from halo_rlm.utils import one_line

if TYPE_CHECKING:
    from halo_rlm.store import Durations, ModelUsage


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@store_option
@click.option("--strict", is_flag=True, help="Stop at the first bad record (exit code 2, with file:line).")
@json_option
def ingest(paths: tuple[str, ...], store_path: Path | None, strict: bool, as_json: bool) -> None:
    """Load trace files into a store.

    PATHS are files, directories (searched for .jsonl/.json/.gz/.zst), globs, or - for stdin.
    A file already in the store is skipped; a file that grew is read from where it ended; a file
    interrupted half-way is finished. Bad lines are kept in the store's `rejects` table.
    """
    from halo_rlm import files
    from halo_rlm.store import paths as store_paths

    try:
        inputs = files.resolve(paths)
    except files.InputError as exc:
        fail(str(exc))
    target = str(store_path or store_paths.for_inputs(inputs))
    report = ingest_with_progress(target, paths, strict=strict, quiet=as_json)
    if as_json:
        emit_json(
            {
                "store": report.store,
                "spans": report.spans,
                "rejected": report.rejected,
                "reject_reasons": report.reject_reasons,
                "inputs": [vars(i) for i in report.inputs],
            }
        )
    else:
        print_ingest_summary(report)
    if report.inputs and all(i.status == "failed" for i in report.inputs):
        sys.exit(1)


@cli.command()
@click.argument("paths", nargs=-1)
@store_option
@click.option(
    "--top", type=click.IntRange(min=1), default=10, show_default=True, help="How many entries per list."
)
@json_option
def stats(paths: tuple[str, ...], store_path: Path | None, top: int, as_json: bool) -> None:
    """What is in the traces: counts, time range, services, agents, models, tools (calls, errors and
    p50/p95 durations), tokens and cost, and the top error groups (same failure, different ids,
    counted once).

    Spans that carry tokens but no cost are priced from HALO's price table (USD per million tokens;
    add or override models with $HALO_PRICES), and the output says how much of the cost is such an
    estimate."""
    from rich.table import Table

    target = resolve_store(paths, store_path, quiet=as_json)
    with open_read_only(target) as store:
        overview = store.overview(top=top)
        durations = store.durations(top=top)
        usage = store.model_usage()
    costs = _costs(usage)
    if as_json:
        emit_json(
            {
                **overview.model_dump(mode="json", exclude_none=True),
                "durations": [d.model_dump(mode="json") for d in durations],
                "cost_estimate": costs,
            }
        )
        return
    summary = Table.grid(padding=(0, 2))
    summary.add_row("Traces", f"{overview.traces:,}", "with errors", f"{overview.error_traces:,}")
    summary.add_row("Spans", f"{overview.spans:,}", "error spans", f"{overview.error_spans:,}")
    summary.add_row("From", overview.start or "—", "to", overview.end or "—")
    summary.add_row("Tokens in", f"{overview.input_tokens:,}", "out", f"{overview.output_tokens:,}")
    total = overview.cost + costs["estimated"]
    summary.add_row(
        "Cost",
        f"${total:,.4f}" + (" [yellow]*[/]" if costs["estimated_calls"] else ""),
        "span kinds",
        escape(", ".join(f"{k} {v:,}" for k, v in overview.kinds.items())),
    )
    if overview.orphan_spans or overview.in_flight_spans or overview.rejected_records:
        summary.add_row("Orphans", f"{overview.orphan_spans:,}", "in flight", f"{overview.in_flight_spans:,}")
        summary.add_row("Rejected", f"{overview.rejected_records:,}", "", "")
    out.print(summary)
    if costs["estimated_calls"]:
        out.print(
            f"[yellow]*[/] ${costs['estimated']:,.4f} of it is estimated from HALO's price table for "
            f"{costs['estimated_calls']:,} LLM calls that carried tokens but no cost "
            f"(${overview.cost:,.4f} was reported by the spans)"
        )
    if costs["unpriced_calls"]:
        out.print(
            f"[yellow]{costs['unpriced_calls']:,} LLM calls without a cost are of models not in the price "
            f"table[/] ({escape(', '.join(costs['unpriced_models']))}): add them with $HALO_PRICES"
        )
    timing: dict[tuple[str, str], Durations] = {(d.of, d.name): d for d in durations}
    model_cost = {m.model: m.cost + costs["by_model"].get(m.model, 0.0) for m in usage}
    for title, of, rows, calls in (
        ("Services", None, overview.services, False),
        ("Agents", "agent", overview.agents, False),
        ("Models", "model", overview.models, True),
        ("Tools", "tool", overview.tools, True),
    ):
        if not rows:
            continue
        table = Table(title=title, title_justify="left", show_edge=False)
        table.add_column("name")
        table.add_column("traces", justify="right")
        if calls:
            table.add_column("calls", justify="right")
        table.add_column("errors" if calls else "traces with errors", justify="right")
        if of:
            table.add_column("p50", justify="right")
            table.add_column("p95", justify="right")
        if of == "model":
            table.add_column("cost", justify="right")
        for row in rows:
            cells = [escape(row.name), f"{row.traces:,}"] + ([f"{row.spans or 0:,}"] if calls else [])
            cells.append(f"[red]{row.errors:,}[/]" if row.errors else "0")
            if of:
                took = timing.get((of, row.name))
                cells += [ms(took.p50_ms), ms(took.p95_ms)] if took else ["—", "—"]
            if of == "model":
                cost = model_cost.get(row.name)
                estimated = row.name in costs["by_model"]
                cells.append(f"${cost:,.4f}{' [yellow]*[/]' if estimated else ''}" if cost else "—")
            table.add_row(*cells)
        out.print(table)
    if overview.error_groups:
        table = Table(title="Top error groups", title_justify="left", show_edge=False)
        for column, justify in (
            ("where", "left"),
            ("error", "left"),
            ("traces", "right"),
            ("spans", "right"),
            ("example", "left"),
        ):
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        for group in overview.error_groups:
            table.add_row(
                escape(group.source),
                escape(group.template[:120]),
                f"{group.traces:,}",
                f"{group.error_spans:,}",
                escape(group.example_span),
            )
        out.print(table)


def _costs(usage: list[ModelUsage]) -> dict[str, Any]:
    """The cost HALO's price table puts on LLM calls that carried tokens but no cost, per model; and
    the calls of models the table does not know."""
    from halo_rlm.pricing import Prices

    prices = Prices()
    by_model: dict[str, float] = {}
    estimated_calls = unpriced_calls = 0
    unpriced_models: list[str] = []
    for model in usage:
        if not model.calls_without_cost:
            continue
        cost = prices.cost(
            model.model,
            input_tokens=model.input_tokens_without_cost,
            output_tokens=model.output_tokens_without_cost,
            cached_tokens=model.cache_read_tokens_without_cost,
        )
        if cost is None:
            unpriced_calls += model.calls_without_cost
            unpriced_models.append(model.model)
        else:
            by_model[model.model] = cost
            estimated_calls += model.calls_without_cost
    return {
        "estimated": round(sum(by_model.values()), 6),
        "estimated_calls": estimated_calls,
        "by_model": {name: round(cost, 6) for name, cost in by_model.items()},
        "unpriced_calls": unpriced_calls,
        "unpriced_models": unpriced_models,
        "note": "USD from HALO's price table (halo_rlm.pricing; $HALO_PRICES adds models) for LLM calls "
        "with tokens but no reported cost; the overview's `cost` is what spans reported",
    }


@cli.command()
@click.argument("paths", nargs=-1)
@store_option
@click.option("--errors", "errors_only", is_flag=True, help="Only traces with an error.")
@click.option("--ok", "ok_only", is_flag=True, help="Only traces without errors.")
@click.option("--service", multiple=True, help="Service name (repeatable: any of them).")
@click.option("--agent", multiple=True, help="Agent name (repeatable).")
@click.option("--model", multiple=True, help="Model name (repeatable).")
@click.option("--tool", multiple=True, help="Tool name (repeatable).")
@click.option("--session", multiple=True, help="Session id (repeatable).")
@click.option(
    "--since",
    type=Moment(),
    help="Traces starting at or after this time: ISO-8601 (2026-04-24T18:00:00Z), or 30m, 24h, 7d, 2w ago.",
)
@click.option(
    "--until", type=Moment(), help="Traces starting before this time (ISO-8601 or 30m, 24h, 7d ago)."
)
@click.option("--min-duration", type=click.FloatRange(min=0), help="Minimum duration in milliseconds.")
@click.option("--grep", "regex", help="RE2 regex matched against each span's raw JSON.")
@click.option("--text", help="Case-insensitive text anywhere in a span.")
@click.option(
    "--sort",
    type=click.Choice(get_args(SortKey)),
    default="start",
    show_default=True,
)
@click.option("--asc", is_flag=True, help="Ascending order (default: descending).")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="Traces per page.")
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Traces to skip (the next page).")
@json_option
def traces(
    paths: tuple[str, ...],
    store_path: Path | None,
    errors_only: bool,
    ok_only: bool,
    service: tuple[str, ...],
    agent: tuple[str, ...],
    model: tuple[str, ...],
    tool: tuple[str, ...],
    session: tuple[str, ...],
    since: str | None,
    until: str | None,
    min_duration: float | None,
    regex: str | None,
    text: str | None,
    sort: str,
    asc: bool,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """List and filter traces."""
    from pydantic import ValidationError
    from rich.table import Table

    from halo_rlm.store import StoreError, TraceFilters

    if errors_only and ok_only:
        raise click.UsageError("--errors and --ok exclude each other: give one of them (or neither for all)")
    try:
        filters = TraceFilters(
            has_errors=True if errors_only else False if ok_only else None,
            services=list(service) or None,
            agents=list(agent) or None,
            models=list(model) or None,
            tools=list(tool) or None,
            session_ids=list(session) or None,
            since=since,
            until=until,
            min_duration_ms=min_duration,
            regex=regex,
            text=text,
        )
    except ValidationError as exc:
        fail("; ".join(f"--{e['loc'][0]}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()))
    target = resolve_store(paths, store_path, quiet=as_json)
    with open_read_only(target) as store:
        try:
            page = store.query_traces(filters, sort=sort, descending=not asc, limit=limit, offset=offset)  # type: ignore[arg-type]
        except StoreError as exc:
            fail(str(exc))
    if as_json:
        emit_json(page)
        return
    table = Table(show_edge=False)
    for column, justify in (
        ("trace", "left"),
        ("start", "left"),
        ("duration", "right"),
        ("spans", "right"),
        ("errors", "right"),
        ("tokens", "right"),
        ("cost", "right"),
        ("root", "left"),
    ):
        table.add_column(column, justify=justify, no_wrap=column != "root")  # type: ignore[arg-type]
    for t in page.traces:
        tokens = (t.input_tokens or 0) + (t.output_tokens or 0)
        table.add_row(
            escape(t.trace_id),
            (t.start or "—")[:19].replace("T", " "),
            ms(t.duration_ms),
            str(t.spans),
            f"[red]{t.error_spans}[/]" if t.error_spans else "0",
            f"{tokens:,}" if tokens else "—",
            f"${t.cost:.4f}" if t.cost is not None else "—",
            escape(t.root_name or ""),
        )
    out.print(table)
    shown = f"{offset + 1}–{offset + len(page.traces)}" if page.traces else "0"
    more = f"; next page: --offset {offset + limit}" if page.has_more else ""
    out.print(f"[dim]{shown} of {page.total:,} traces, sorted by {page.sort}{more}[/]")


@cli.command()
@click.argument("trace_id")
@click.argument("paths", nargs=-1)
@store_option
@click.option(
    "--span", "span_ids", multiple=True, help="Show only these spans, with whole messages (repeatable)."
)
@click.option(
    "--width",
    type=click.IntRange(min=20),
    default=400,
    show_default=True,
    help="Characters of each message, tool input and output shown (head and tail).",
)
@json_option
def show(
    trace_id: str,
    paths: tuple[str, ...],
    store_path: Path | None,
    span_ids: tuple[str, ...],
    width: int,
    as_json: bool,
) -> None:
    """One trace: a compact timeline, then the tree of spans with timings, status, tool inputs and
    outputs, and each LLM call's conversation (messages, tool calls and results; messages an earlier
    call already showed are counted, not repeated). --span shows chosen spans in full."""
    import orjson
    from rich.tree import Tree

    from halo_rlm.cli.display import Conversations, timeline
    from halo_rlm.store import StoreError

    target = resolve_store(paths, store_path, quiet=as_json)
    with open_read_only(target) as store:
        try:
            view = (
                store.view_spans(trace_id, span_ids, budget_bytes=10**9, value_chars=10**7)
                if span_ids
                else store.view_trace(trace_id, budget_bytes=10**9, value_chars=10**7)
            )
            summary = store.trace_summary(trace_id)
        except StoreError as exc:
            fail(str(exc))
    if view.missing_span_ids:
        # Said before anything else, and the exit code says it too: a script asked for what is not there.
        err.print(
            f"[bold red]Error:[/] no span {escape(', '.join(view.missing_span_ids))} in trace "
            f"{escape(trace_id)}; its spans are listed by: halo show {escape(trace_id)}"
        )
    if as_json:
        emit_json(view)
        if view.missing_span_ids:
            sys.exit(1)
        return
    cost = f" · ${summary.cost:.4f}" if summary.cost else ""
    out.print(
        f"[bold]{escape(trace_id)}[/] · {summary.spans} spans · {ms(summary.duration_ms)}{cost}"
        f" · {escape(', '.join(summary.services))}"
    )
    if not span_ids and view.spans:
        out.print(timeline(view, out.width))
    conversations = Conversations(width, full=bool(span_ids))
    root = Tree("[bold]Spans[/]")
    nodes: dict[int, Tree] = {-1: root}
    for span in view.spans:
        status = "[red]✗[/]" if span.status == "ERROR" else "[green]✓[/]" if span.status == "OK" else "·"
        label = f"{status} [bold]{escape(span.name)}[/] [dim]{escape(span.kind)} {ms(span.duration_ms)}[/]"
        if span_ids:
            label += f" [dim]{escape(span.span_id)}[/]"
        extras = [
            x
            for x in (span.model, span.tool and f"tool={span.tool}", span.agent and f"agent={span.agent}")
            if x
        ]
        if span.tokens:
            extras.append(f"tokens {span.tokens.get('input', 0):,}→{span.tokens.get('output', 0):,}")
        if extras:
            label += " [cyan]" + escape(" · ".join(extras)) + "[/]"
        if span.orphan:
            label += " [yellow](parent missing)[/]"
        if span.status_message and span.status == "ERROR":
            label += f"\n[red]{escape(one_line(span.status_message, width))}[/]"
        for key, title in (("input.value", "in"), ("output.value", "out")):
            value = span.attributes.get(key)
            if value is not None and span.kind in ("TOOL", "AGENT", "CHAIN"):
                text = value if isinstance(value, str) else orjson.dumps(value).decode()
                label += f"\n[dim]{title}:[/] {escape(one_line(text, width))}"
        if span.kind == "LLM":
            label += "".join(f"\n{line}" for line in conversations.lines(span))
        parent = nodes.get(span.depth - 1, root) if not span_ids else root
        nodes[span.depth] = parent.add(label)
    out.print(root)
    if view.missing_span_ids:
        sys.exit(1)


@cli.command()
@click.argument("query")
@click.argument("paths", nargs=-1)
@store_option
@click.option("--max-rows", type=click.IntRange(min=1), default=200, show_default=True)
@json_option
def sql(query: str, paths: tuple[str, ...], store_path: Path | None, max_rows: int, as_json: bool) -> None:
    """Read-only SQL over the store's tables: spans, traces, rejects, inputs.

    \b
    Example: halo sql "SELECT tool_name, count(*) FROM spans WHERE status = 'ERROR' GROUP BY 1"
    Only one SELECT per call; the database cannot read or write files. Rows too wide for the
    terminal are shown one column per line; --json gives every value whole.
    """
    from halo_rlm.cli.display import sql_rows
    from halo_rlm.store import StoreError

    target = resolve_store(paths, store_path, quiet=as_json)
    with open_read_only(target) as store:
        try:
            result = store.sql(query, max_rows=max_rows, max_bytes=10**8)
        except StoreError as exc:
            fail(str(exc))
    if as_json:
        emit_json(result)
        return
    out.print(sql_rows(result, out.width), soft_wrap=True)
    out.print(
        f"[dim]{result.row_count} row{'s' * (result.row_count != 1)}"
        f"{'; ' + escape(result.note) if result.note else ''}[/]"
    )
