"""The `halo` command line: rich output for people, `--json` for scripts."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

import click
import orjson
from pydantic import ValidationError
from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.tree import Tree

from halo_rlm import __version__, files, importers
from halo_rlm.collect import DEFAULT_PORT, CollectError, Collector, CollectorStats, serve
from halo_rlm.detect import Thresholds, analyze
from halo_rlm.engine import (
    DEFAULT_MODEL,
    DEFAULT_PROMPT,
    AgentOutputItem,
    AgentTextDelta,
    EngineConfig,
    EngineError,
    stream_engine_async,
)
from halo_rlm.ingest import IngestReport, StrictError
from halo_rlm.langfuse import LangfuseFilters, LangfuseSource
from halo_rlm.llm import LLMError
from halo_rlm.models import TraceFilters
from halo_rlm.phoenix import PhoenixSource
from halo_rlm.pricing import PriceError
from halo_rlm.pricing import load as load_prices
from halo_rlm.report import Report, cite, json_schema, verify
from halo_rlm.report import to_markdown as report_markdown
from halo_rlm.report import write as write_report
from halo_rlm.simulate import simulate
from halo_rlm.store import StoreError, TraceStore, cache_dir, default_store_path

# Piped output gets a wider page than rich's default 80 columns, so tables stay readable in logs.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)


class DefaultGroup(click.Group):
    """A group that runs `default_command` when the first argument is not a subcommand,
    so `halo traces.jsonl -p "..."` works beside `halo stats ...`."""

    default_command = "run"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@click.group(
    cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(__version__, prog_name="halo")
def cli() -> None:
    """HALO finds out why your AI agents fail, from their OpenTelemetry traces.

    \b
    Start here:
      halo traces.jsonl -p "Diagnose errors and suggest fixes"
                                        analyse them and write a report of fixes (`halo run`)
      halo demo                         the same on example traces that ship with HALO
      halo ingest traces.jsonl          load trace files into a local store
      halo stats traces.jsonl           what is in them: agents, models, tools, top errors
      halo traces --errors              list traces that failed
      halo show TRACE_ID                one trace as a tree of spans
      halo sql "SELECT ..."             ask the store anything (read-only SQL)
      halo import langfuse --since 7d   bring traces in from Langfuse (or: halo import phoenix)
      halo collect                      receive traces from running agents (OTLP/HTTP)

    Trace files can be HALO/OpenInference JSONL, OTLP/JSON (one request per line or one document),
    Phoenix span JSON, gzip- or zstd-compressed; give files, directories, globs or - for stdin.
    Query commands without files use the store of the last ingest.
    """


# --- shared options and helpers -----------------------------------------------------------------


def store_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--store",
        "store_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Store file to use (default: one per set of inputs in the user cache, reused on later runs).",
    )(f)


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")(f)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]Error:[/] {escape(message)}")
    sys.exit(code)


def emit_json(value: Any) -> None:
    data = value.model_dump(mode="json", exclude_none=True) if hasattr(value, "model_dump") else value
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def _last_store_file() -> Path:
    return cache_dir() / "last-store"


def _remember(path: str) -> None:
    try:
        _last_store_file().parent.mkdir(parents=True, exist_ok=True)
        _last_store_file().write_text(str(Path(path).resolve()))
    except OSError:
        pass  # remembering is a convenience; never fail a command over it


def resolve_store(paths: Sequence[str], store_path: Path | None, *, quiet: bool, strict: bool = False) -> str:
    """Ingest `paths` (if any) and return the store path to query."""
    if paths:
        try:
            inputs = files.resolve(paths)
        except files.InputError as exc:
            fail(str(exc))
        target = str(store_path or default_store_path(inputs))
        report = ingest_with_progress(target, paths, strict=strict, quiet=quiet)
        if not quiet:
            print_ingest_summary(report, brief=True)
        return target
    if store_path is not None:
        if not store_path.exists():
            fail(f"{store_path}: no such store; ingest into it first: halo ingest FILES --store {store_path}")
        return str(store_path)
    try:
        remembered = _last_store_file().read_text().strip()
    except OSError:
        remembered = ""
    if not remembered or not Path(remembered).exists():
        fail("no traces given: pass trace files (or --store PATH), e.g. halo stats traces.jsonl")
    if not quiet:
        err.print(f"[dim]Using the store of the last ingest: {escape(remembered)}[/]")
    return remembered


def ingest_with_progress(target: str, paths: Sequence[str], *, strict: bool, quiet: bool) -> IngestReport:
    show = err.is_terminal and not quiet
    try:
        with TraceStore.open(target) as store, _progress(show) as make_callback:
            report = store.ingest(paths, strict=strict, progress=make_callback)
    except StrictError as exc:
        fail(str(exc), code=2)
    except (StoreError, files.InputError) as exc:
        fail(str(exc))
    _remember(target)
    return report


@contextmanager
def _progress(show: bool) -> Iterator[Callable[[files.InputFile], Callable[[int, int], None]] | None]:
    if not show:
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[spans]:,} spans ({task.fields[rate]:,.0f}/s)"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as progress:

        def for_input(inp: files.InputFile) -> Callable[[int, int], None]:
            task = progress.add_task(escape(Path(inp.path).name), total=inp.size, spans=0, rate=0.0)

            def update(done: int, spans: int) -> None:
                elapsed = progress.tasks[task].elapsed or 1e-9
                progress.update(task, completed=done, spans=spans, rate=spans / elapsed)

            return update

        yield for_input


def open_read_only(path: str) -> TraceStore:
    try:
        return TraceStore.open(path, read_only=True)
    except StoreError as exc:
        fail(str(exc))


def print_ingest_summary(report: IngestReport, *, brief: bool = False) -> None:
    console = err if brief else out
    changed = [i for i in report.inputs if i.status != "unchanged"]
    for item in report.inputs:
        if item.status == "failed":
            console.print(f"[red]✗[/] {escape(item.path)}: {escape(item.message or 'failed')}")
        elif item.message:
            console.print(
                f"[yellow]![/] {escape(item.path)}: {escape(item.message)}; "
                f"kept the {item.spans:,} spans before it"
            )
    if brief and not changed:
        return
    seconds = sum(i.seconds for i in report.inputs)
    unchanged = len(report.inputs) - len(changed)
    line = f"Ingested [bold]{report.spans:,}[/] spans from {len(changed)} file{'s' * (len(changed) != 1)}"
    if unchanged:
        line += f" ({unchanged} already in the store)"
    console.print(f"{line} in {seconds:.1f}s → {escape(report.store)}")
    if report.rejected:
        reasons = sorted(report.reject_reasons.items(), key=lambda kv: -kv[1])[:3]
        listed = "; ".join(f"{escape(reason)} ×{count:,}" for reason, count in reasons)
        console.print(f"[yellow]{report.rejected:,} records rejected[/]: {listed}")
        console.print('[dim]  see them: halo sql "SELECT path, line_no, reason FROM rejects"[/]')
    if report.duplicates:
        console.print(f"[dim]{report.duplicates:,} duplicate spans (same trace and span id) merged[/]")
    repaired = sum(i.repaired for i in report.inputs)
    if repaired:
        console.print(f"[yellow]{repaired:,} lines had invalid UTF-8[/], replaced with U+FFFD and kept")


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1000:.1f}s" if value >= 1000 else f"{value:.0f}ms"


# --- commands -----------------------------------------------------------------------------------


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
    try:
        inputs = files.resolve(paths)
    except files.InputError as exc:
        fail(str(exc))
    target = str(store_path or default_store_path(inputs))
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
@click.option("--top", default=10, show_default=True, help="How many entries per list.")
@json_option
def stats(paths: tuple[str, ...], store_path: Path | None, top: int, as_json: bool) -> None:
    """What is in the traces: counts, time range, services, agents, models, tools (calls and
    errors), tokens and cost, and the top error groups (same failure, different ids, counted once)."""
    target = resolve_store(paths, store_path, quiet=as_json)
    with open_read_only(target) as store:
        overview = store.overview(top=top)
    if as_json:
        emit_json(overview)
        return
    summary = Table.grid(padding=(0, 2))
    summary.add_row("Traces", f"{overview.traces:,}", "with errors", f"{overview.error_traces:,}")
    summary.add_row("Spans", f"{overview.spans:,}", "error spans", f"{overview.error_spans:,}")
    summary.add_row("From", overview.start or "—", "to", overview.end or "—")
    summary.add_row("Tokens in", f"{overview.input_tokens:,}", "out", f"{overview.output_tokens:,}")
    summary.add_row(
        "Cost",
        f"${overview.cost:,.4f}",
        "span kinds",
        ", ".join(f"{k} {v:,}" for k, v in overview.kinds.items()),
    )
    if overview.orphan_spans or overview.in_flight_spans or overview.rejected_records:
        summary.add_row("Orphans", f"{overview.orphan_spans:,}", "in flight", f"{overview.in_flight_spans:,}")
        summary.add_row("Rejected", f"{overview.rejected_records:,}", "", "")
    out.print(summary)
    for title, rows, calls in (
        ("Services", overview.services, False),
        ("Agents", overview.agents, False),
        ("Models", overview.models, True),
        ("Tools", overview.tools, True),
    ):
        if not rows:
            continue
        table = Table(title=title, title_justify="left", show_edge=False)
        table.add_column("name")
        table.add_column("traces", justify="right")
        if calls:
            table.add_column("calls", justify="right")
        table.add_column("errors" if calls else "traces with errors", justify="right")
        for row in rows:
            cells = [escape(row.name), f"{row.traces:,}"] + ([f"{row.spans or 0:,}"] if calls else [])
            table.add_row(*cells, f"[red]{row.errors:,}[/]" if row.errors else "0")
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


@cli.command()
@click.argument("paths", nargs=-1)
@store_option
@click.option("--errors", "has_errors", flag_value=True, default=None, help="Only traces with an error.")
@click.option("--ok", "has_errors", flag_value=False, help="Only traces without errors.")
@click.option("--service", multiple=True, help="Service name (repeatable: any of them).")
@click.option("--agent", multiple=True, help="Agent name (repeatable).")
@click.option("--model", multiple=True, help="Model name (repeatable).")
@click.option("--tool", multiple=True, help="Tool name (repeatable).")
@click.option("--session", multiple=True, help="Session id (repeatable).")
@click.option("--since", help="Traces starting at or after this ISO time, e.g. 2026-04-24T18:00:00Z.")
@click.option("--until", help="Traces starting before this ISO time.")
@click.option("--min-duration", type=float, help="Minimum duration in milliseconds.")
@click.option("--grep", "regex", help="RE2 regex matched against each span's raw JSON.")
@click.option("--text", help="Case-insensitive text anywhere in a span.")
@click.option(
    "--sort",
    type=click.Choice(["start", "duration", "cost", "spans", "tokens", "errors"]),
    default="start",
    show_default=True,
)
@click.option("--asc", is_flag=True, help="Ascending order (default: descending).")
@click.option("--limit", default=20, show_default=True)
@click.option("--offset", default=0)
@json_option
def traces(
    paths: tuple[str, ...],
    store_path: Path | None,
    has_errors: bool | None,
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
    try:
        filters = TraceFilters(
            has_errors=has_errors,
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
            _ms(t.duration_ms),
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
@click.option("--span", "span_ids", multiple=True, help="Show only these spans, in full (repeatable).")
@click.option("--width", default=400, show_default=True, help="Characters of each tool input/output shown.")
@json_option
def show(
    trace_id: str,
    paths: tuple[str, ...],
    store_path: Path | None,
    span_ids: tuple[str, ...],
    width: int,
    as_json: bool,
) -> None:
    """One trace as a tree of spans with timings, status, and tool inputs/outputs (head and tail)."""
    target = resolve_store(paths, store_path, quiet=as_json)
    with open_read_only(target) as store:
        try:
            view = (
                store.view_spans(trace_id, span_ids, budget_bytes=10**9)
                if span_ids
                else store.view_trace(trace_id, budget_bytes=10**9, value_chars=10**7)
            )
            summary = store.trace_summary(trace_id)
        except StoreError as exc:
            fail(str(exc))
    if as_json:
        emit_json(view)
        return
    cost = f" · ${summary.cost:.4f}" if summary.cost else ""
    root = Tree(
        f"[bold]{escape(trace_id)}[/] · {summary.spans} spans · {_ms(summary.duration_ms)}{cost}"
        f" · {', '.join(summary.services)}"
    )
    nodes: dict[int, Tree] = {-1: root}
    for span in view.spans:
        status = "[red]✗[/]" if span.status == "ERROR" else "[green]✓[/]" if span.status == "OK" else "·"
        label = f"{status} [bold]{escape(span.name)}[/] [dim]{span.kind} {_ms(span.duration_ms)}[/]"
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
            label += f"\n[red]{escape(span.status_message[:width])}[/]"
        for key, title in (("input.value", "in"), ("output.value", "out")):
            value = span.attributes.get(key)
            if value is not None and span.kind in ("TOOL", "AGENT", "CHAIN"):
                text = value if isinstance(value, str) else orjson.dumps(value).decode()
                label += f"\n[dim]{title}:[/] {escape(_one_line(text, width))}"
        parent = nodes.get(span.depth - 1, root)
        nodes[span.depth] = parent.add(label)
    out.print(root)
    if view.missing_span_ids:
        out.print(f"[yellow]Not in this trace:[/] {', '.join(view.missing_span_ids)}")


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    if len(flat) <= width:
        return flat
    return f"{flat[: width * 2 // 3]} … {flat[-width // 3 :]}"


@cli.command()
@click.argument("query")
@click.argument("paths", nargs=-1)
@store_option
@click.option("--max-rows", default=200, show_default=True)
@json_option
def sql(query: str, paths: tuple[str, ...], store_path: Path | None, max_rows: int, as_json: bool) -> None:
    """Read-only SQL over the store's tables: spans, traces, rejects, inputs.

    \b
    Example: halo sql "SELECT tool_name, count(*) FROM spans WHERE status = 'ERROR' GROUP BY 1"
    Only one SELECT per call; the database cannot read or write files.
    """
    target = resolve_store(paths, store_path, quiet=as_json)
    with open_read_only(target) as store:
        try:
            result = store.sql(query, max_rows=max_rows, max_bytes=10**8)
        except StoreError as exc:
            fail(str(exc))
    if as_json:
        emit_json(result)
        return
    table = Table(show_edge=False)
    for column in result.columns:
        table.add_column(escape(column))
    for row in result.rows:
        table.add_row(*(escape(_cell(v)) for v in row))
    out.print(table)
    out.print(
        f"[dim]{result.row_count} row{'s' * (result.row_count != 1)}{'; ' + result.note if result.note else ''}[/]"
    )


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return text if len(text) <= 200 else text[:200] + "…"


# --- import -------------------------------------------------------------------------------------


@cli.group("import")
def import_group() -> None:
    """Import traces from where you keep them (Langfuse, Phoenix) into a store.

    \b
      halo import langfuse --since 7d          keys from LANGFUSE_PUBLIC_KEY / LANGFUSE_SECRET_KEY
      halo import phoenix --project my-agent   from a Phoenix at http://localhost:6006

    Running the same import again continues an interrupted one where it stopped, or fetches only
    what is new since the last one. The store is then used by `halo stats`, `halo traces`, ...
    """


def import_options(f: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--store",
            "store_path",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Store file to write (default: one per source and project in the user cache).",
        ),
        click.option(
            "--out",
            "out_path",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Also append the spans to this JSONL file (flat spans; `halo ingest` reads it).",
        ),
        click.option(
            "--since", help="Only spans starting at or after this time: ISO-8601, or 30m, 24h, 7d, 2w ago."
        ),
        click.option("--until", help="Only spans starting before this time (default: now)."),
        click.option(
            "--limit",
            type=click.IntRange(min=1),
            help="Stop after this many spans; running the command again continues from there.",
        ),
        click.option(
            "--fresh", is_flag=True, help="Ignore earlier progress and import the whole window again."
        ),
        json_option,
    ]
    for option in reversed(options):
        f = option(f)
    return f


@import_group.command("langfuse")
@click.option(
    "--host",
    envvar=["LANGFUSE_HOST", "LANGFUSE_BASE_URL"],
    default="https://cloud.langfuse.com",
    show_default=True,
    help="Langfuse base URL [env: LANGFUSE_HOST or LANGFUSE_BASE_URL].",
)
@click.option(
    "--public-key", envvar="LANGFUSE_PUBLIC_KEY", help="Project public key [env: LANGFUSE_PUBLIC_KEY]."
)
@click.option(
    "--secret-key",
    envvar="LANGFUSE_SECRET_KEY",
    help="Project secret key; prefer the variable, which stays out of your shell history and "
    "process list [env: LANGFUSE_SECRET_KEY].",
)
@click.option("--environment", multiple=True, help="Only this environment (repeatable: any of them).")
@click.option("--trace-name", help="Only traces with this name.")
@click.option("--user", "user_id", help="Only traces of this user id.")
@click.option("--session", "session_id", help="Only traces of this session id.")
@click.option("--tag", multiple=True, help="Only traces with this tag (repeatable: all of them).")
@click.option(
    "--expand-metadata",
    multiple=True,
    metavar="KEY",
    help="Fetch this metadata key whole (Langfuse cuts values over 200 characters; repeatable).",
)
@import_options
def import_langfuse(
    host: str,
    public_key: str | None,
    secret_key: str | None,
    environment: tuple[str, ...],
    trace_name: str | None,
    user_id: str | None,
    session_id: str | None,
    tag: tuple[str, ...],
    expand_metadata: tuple[str, ...],
    **options: Any,
) -> None:
    """Import observations from a Langfuse project (Cloud or self-hosted).

    Uses the v2 observations API (Langfuse v4+) and falls back to the older traces and observations
    endpoints on servers without it. Waits out rate limits (429) as the server asks.
    """
    if not public_key or not secret_key:
        fail(
            "Langfuse keys missing: set LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY "
            "(or pass --public-key and --secret-key)"
        )
    if not host.startswith(("http://", "https://")):
        fail(f"--host {host!r} needs a scheme, e.g. https://cloud.langfuse.com or http://localhost:3000")
    filters = LangfuseFilters(
        environments=environment, trace_name=trace_name, user_id=user_id, session_id=session_id, tags=tag
    )
    source = LangfuseSource(host, public_key, secret_key, filters, expand_metadata=expand_metadata)
    run_import_command(source, importers.default_store_path("langfuse", source.url, public_key), **options)


@import_group.command("phoenix")
@click.option(
    "--endpoint",
    envvar="PHOENIX_ENDPOINT",
    default="http://localhost:6006",
    show_default=True,
    help="Phoenix base URL [env: PHOENIX_ENDPOINT].",
)
@click.option("--project", default="default", show_default=True, help="Phoenix project name (or id).")
@click.option(
    "--api-key", envvar="PHOENIX_API_KEY", help="API key, when Phoenix has auth on [env: PHOENIX_API_KEY]."
)
@import_options
def import_phoenix(endpoint: str, project: str, api_key: str | None, **options: Any) -> None:
    """Import the spans of an Arize Phoenix project, through its REST API."""
    if not endpoint.startswith(("http://", "https://")):
        fail(f"--endpoint {endpoint!r} needs a scheme, e.g. http://localhost:6006")
    source = PhoenixSource(endpoint, project, api_key)
    run_import_command(source, importers.default_store_path("phoenix", source.endpoint, project), **options)


def run_import_command(
    source: importers.Source,
    default_store: Path,
    *,
    store_path: Path | None,
    out_path: Path | None,
    since: str | None,
    until: str | None,
    limit: int | None,
    fresh: bool,
    as_json: bool,
) -> None:
    try:
        since, until = importers.parse_time(since), importers.parse_time(until)
    except ValueError as exc:
        fail(str(exc))
    target = str(store_path or default_store)
    try:
        with _import_progress(err.is_terminal and not as_json, source) as on_progress:
            report = importers.run_import(
                source,
                target,
                since=since,
                until=until,
                limit=limit,
                out=out_path,
                fresh=fresh,
                progress=on_progress,
            )
    except (importers.SourceError, StoreError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{exc.filename or target}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        err.print("[yellow]Interrupted.[/] Run the same command again to continue where it stopped.")
        sys.exit(130)
    finally:
        source.close()
    _remember(target)
    if as_json:
        emit_json(asdict(report))
        return
    window = f"{report.since or 'the beginning'} → {report.until}"
    api = f", {report.api} API" if report.api else ""
    out.print(
        f"Imported [bold]{report.spans:,}[/] spans from {report.source} {escape(report.url)}{api} "
        f"({escape(window)}) → {escape(report.store)}"
    )
    if report.resumed:
        out.print("[dim]Continued an interrupted import.[/]")
    if report.duplicates:
        out.print(f"[dim]{report.duplicates:,} of them were already in the store (merged).[/]")
    if report.skipped:
        reasons = sorted(report.skip_reasons.items(), key=lambda kv: -kv[1])[:3]
        out.print(
            f"[yellow]{report.skipped:,} records skipped[/]: "
            + "; ".join(f"{escape(reason)} ×{count:,}" for reason, count in reasons)
        )
    if report.out:
        out.print(f"[dim]Spans also appended to {escape(report.out)}[/]")
    if report.limited:
        out.print("[yellow]Stopped at --limit.[/] Run the same command again to continue.")
    out.print("[dim]Explore: halo stats · halo traces --errors[/]")


@contextmanager
def _import_progress(
    show: bool, source: importers.Source
) -> Iterator[Callable[[int, int | None], None] | None]:
    if not show:
        yield None
        return
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,} spans"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(escape(f"{source.kind} {source.url}"), total=None)

        def update(spans: int, total: int | None) -> None:
            progress.update(task, completed=spans, total=total)

        yield update


@cli.command()
@click.option(
    "--store",
    "store_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Store to add spans to (default: one per port in the user cache, unless --out is given).",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append spans to this JSONL file (HALO's one-span-per-line format), with or without a store.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free port).",
)
@click.option(
    "--token",
    envvar="HALO_COLLECT_TOKEN",
    help="Require 'Authorization: Bearer TOKEN' on every request (or set $HALO_COLLECT_TOKEN).",
)
@click.option("--allow-remote", is_flag=True, help="Allow a --host that other machines can reach.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON line when listening, after each write, and when stopped.",
)
def collect(
    store_path: Path | None,
    out_path: Path | None,
    host: str,
    port: int,
    token: str | None,
    allow_remote: bool,
    as_json: bool,
) -> None:
    """Receive traces from running agents over OTLP/HTTP and store them.

    \b
    Accepts POST /v1/traces as protobuf or JSON, gzip or deflate, from any OpenTelemetry exporter:
      export OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://127.0.0.1:4318/v1/traces
    or, in Python, halo_rlm.tracing.setup("http://127.0.0.1:4318").
    While it runs, `halo stats`, `halo traces` and `halo show` read what has arrived. Ctrl-C (or
    SIGTERM) stops it after writing everything received.
    """
    on_flush = (lambda stats: _json_line({"event": "flush", **vars(stats)})) if as_json else None
    try:
        running = serve(
            store=store_path,
            out=out_path,
            host=host,
            port=port,
            token=token,
            allow_remote=allow_remote,
            on_flush=on_flush,
        )
    except CollectError as exc:
        fail(str(exc))
    if running.store_path is not None:
        _remember(str(running.store_path))
    if as_json:
        _json_line(
            {
                "event": "listening",
                "url": running.url,
                "traces_url": running.traces_url,
                "store": running.store_path and str(running.store_path),
                "out": running.out_path and str(running.out_path),
            }
        )
    else:
        _print_collect_banner(running, token)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        if err.is_terminal and not as_json:
            with err.status(_collect_status(running.stats)) as status:
                while not stopping.wait(0.25):
                    status.update(_collect_status(running.stats))
        else:
            stopping.wait()
    except KeyboardInterrupt:
        pass
    if not as_json:
        err.print(f"[dim]Stopping: writing {running.stats.pending_spans:,} spans still in memory…[/]")
    final = running.stop()
    if as_json:
        _json_line({"event": "stopped", **vars(final)})
    else:
        err.print(
            f"Received {final.spans:,} spans in {final.traces:,} traces"
            + (f" ([yellow]{final.rejected_spans:,} rejected[/])" if final.rejected_spans else "")
            + (f"; stored in {escape(str(running.store_path))}" if running.store_path else "")
            + (f"; written to {escape(str(running.out_path))}" if running.out_path else "")
        )
    if final.last_error:
        fail(final.last_error)


def _print_collect_banner(running: Collector, token: str | None) -> None:
    out.print(f"[bold]HALO collector[/] listening on {running.url} (OTLP/HTTP, protobuf or JSON)")
    if running.remote:
        err.print(
            "[yellow]Warning:[/] other machines can reach this collector"
            + (
                "; only requests with the token are accepted"
                if token
                else " and send it spans; add --token to accept only your agents"
            )
        )
    for label, path in (("store", running.store_path), ("file", running.out_path)):
        if path is not None:
            out.print(f"Spans go to the {label} {escape(str(path))}")
    out.print("Point your agent at it:")
    out.print(f"  export OTEL_EXPORTER_OTLP_TRACES_ENDPOINT={running.traces_url}")
    out.print(
        f"  export OTEL_EXPORTER_OTLP_ENDPOINT={running.url}  [dim]# base URL form (traces only here)[/]"
    )
    out.print("  export OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf")
    if token:
        out.print(f"  export OTEL_EXPORTER_OTLP_HEADERS=Authorization=Bearer%20{escape(token)}")
    out.print(f"  [dim]# or in Python:[/] halo_rlm.tracing.setup({running.url!r})")
    if running.store_path is not None:
        out.print(f"[dim]Meanwhile: halo stats --store {escape(str(running.store_path))}[/]")


def _collect_status(stats: CollectorStats) -> str:
    parts = [f"{stats.spans:,} spans", f"{stats.traces:,} traces"]
    if stats.rejected_spans:
        parts.append(f"[yellow]{stats.rejected_spans:,} rejected[/]")
    if stats.failed_requests:
        parts.append(f"[yellow]{stats.failed_requests:,} failed requests[/]")
    if stats.pending_spans:
        parts.append(f"{stats.pending_spans:,} not yet written")
    if stats.last_error:
        parts.append(f"[red]{escape(stats.last_error)}[/]")
    return " · ".join(parts) + " [dim]· Ctrl-C to stop[/]"


def _json_line(value: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(value).decode() + "\n")
    sys.stdout.flush()


def main() -> None:
    cli()


# --- analysis -----------------------------------------------------------------------------------

EXAMPLES = Path(__file__).parent / "examples" / "traces.jsonl.gz"


def threshold_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--min-share",
        type=float,
        default=0.005,
        show_default=True,
        help="…and at least this share of all traces.",
    )(f)
    return click.option(
        "--min-traces",
        type=int,
        default=2,
        show_default=True,
        help="A finding needs at least this many affected traces…",
    )(f)


def run_detectors(
    paths: Sequence[str],
    store_path: Path | None,
    out_dir: Path,
    *,
    min_traces: int,
    min_share: float,
    quiet: bool,
) -> tuple[Report, dict[str, Path]]:
    target = resolve_store(paths, store_path, quiet=quiet)
    with open_read_only(target) as store:
        report = analyze(
            store,
            thresholds=Thresholds(min_traces=min_traces, min_share=min_share),
            inputs=[str(p) for p in paths],
        )
        verify(report, store)
    return report, write_report(report, out_dir)


def print_findings(report: Report, paths: dict[str, Path], *, top: int = 10) -> None:
    d = report.dataset
    out.print(
        f"[bold]{len(report.findings)} systemic findings[/] in {d.traces:,} traces "
        f"({d.error_traces:,} with errors)"
    )
    if report.findings:
        table = Table(show_edge=False)
        for column, justify in (
            ("#", "right"),
            ("severity", "left"),
            ("finding", "left"),
            ("traces", "right"),
            ("evidence", "left"),
        ):
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        colours = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "dim"}
        for i, f in enumerate(report.findings[:top], 1):
            ids = "\n".join(cite(ev) for ev in f.evidence[:2])
            flag = "" if f.check is None or f.check.status == "verified" else f" [red]({f.check.status})[/]"
            table.add_row(
                str(i),
                f"[{colours[f.severity]}]{f.severity}[/]",
                f"{escape(f.title)}{flag}\n[dim]{f.category} · {f.id}[/]",
                f"{f.affected_traces:,}\n[dim]{f.affected_trace_share:.1%}[/]",
                escape(ids),
            )
        out.print(table)
        if len(report.findings) > top:
            out.print(f"[dim]… and {len(report.findings) - top} more in the report[/]")
    out.print("Report: " + ", ".join(escape(str(p)) for p in paths.values()))


@cli.command("analyze")
@click.argument("paths", nargs=-1)
@store_option
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("halo-report"),
    show_default=True,
    help="Folder for report.json, report.md and report.html.",
)
@threshold_options
@json_option
def analyze_command(
    paths: tuple[str, ...],
    store_path: Path | None,
    out_dir: Path,
    min_traces: int,
    min_share: float,
    as_json: bool,
) -> None:
    """Find systemic failures with deterministic detectors (no LLM needed) and write a ranked,
    evidence-backed report: report.json, report.md (for people and coding agents) and report.html.

    A finding needs a pattern across traces (see --min-traces and --min-share); one-off errors are
    not reported. Every finding is re-checked against the store before it is written.
    """
    report, paths_written = run_detectors(
        paths, store_path, out_dir, min_traces=min_traces, min_share=min_share, quiet=as_json
    )
    if as_json:
        emit_json(report)
    else:
        print_findings(report, paths_written)


@cli.command("verify")
@click.argument("report_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@store_option
@click.option("--write", is_flag=True, help="Write the checked report back (json, md and html).")
@json_option
def verify_command(report_file: Path, store_path: Path | None, write: bool, as_json: bool) -> None:
    """Re-check a report against the trace store: cited traces and spans exist, excerpts are in
    the spans they cite, and each finding's affected-trace count matches a recount of its query.

    Exit code 0 when every finding checks out, 1 when any is flagged or cannot be checked.
    """
    try:
        report = Report.model_validate_json(report_file.read_bytes())
    except ValidationError as exc:
        fail(
            f"{report_file}: not a HALO report ({exc.error_count()} problems, first: {exc.errors()[0]['msg']})"
        )
    target = str(store_path or report.store)
    if not target or not Path(target).exists():
        fail(f"the report's store {target or '(none)'} is not here; pass --store PATH")
    with open_read_only(target) as store:
        verify(report, store)
    if write:
        write_report(report, report_file.parent)
    if as_json:
        emit_json(
            {
                "verification": report.verification.model_dump() if report.verification else None,
                "findings": [
                    {"id": f.id, **(f.check.model_dump() if f.check else {})} for f in report.findings
                ],
            }
        )
    else:
        for f in report.findings:
            assert f.check is not None
            mark = {"verified": "[green]✓[/]", "flagged": "[red]✗[/]", "unverifiable": "[yellow]?[/]"}[
                f.check.status
            ]
            out.print(f"{mark} {escape(f.id)}: {escape(f.title)}")
            for problem in f.check.problems:
                out.print(f"    [red]{escape(problem)}[/]")
        v = report.verification
        assert v is not None
        out.print(f"{v.verified} verified, {v.flagged} flagged, {v.unverifiable} unverifiable")
    if any(f.check and f.check.status != "verified" for f in report.findings):
        sys.exit(1)


@cli.group("report")
def report_group() -> None:
    """About the report format."""


@report_group.command("schema")
def report_schema() -> None:
    """Print the JSON schema of report.json."""
    emit_json(json_schema())


@cli.command("simulate")
@click.argument("out_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--traces", default=500, show_default=True, help="How many traces.")
@click.option("--seed", default=7, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["halo", "otlp"]), default="halo", show_default=True)
@click.option(
    "--rate",
    "rates",
    multiple=True,
    metavar="CATEGORY=SHARE",
    help="Override a failure mode's rate, e.g. --rate refusal=0.1 (0 turns it off).",
)
@click.option(
    "--distractors", type=float, default=0.02, show_default=True, help="Share of one-off error traces."
)
def simulate_command(
    out_file: Path, traces: int, seed: int, fmt: str, rates: tuple[str, ...], distractors: float
) -> None:
    """Write simulated agent traces with planted systemic failures, and their ground truth
    (OUT_FILE without .jsonl/.gz + .truth.json). Gzipped when OUT_FILE ends in .gz."""
    overrides = {}
    for item in rates:
        name, _, value = item.partition("=")
        try:
            overrides[name] = float(value)
        except ValueError:
            fail(f"--rate {item!r}: expected CATEGORY=SHARE, e.g. refusal=0.1")
    try:
        truth = simulate(
            out_file,
            traces=traces,
            seed=seed,
            format=fmt,
            rates=overrides or None,  # type: ignore[arg-type]
            distractors=distractors,
        )
    except ValueError as exc:
        fail(str(exc))
    out.print(
        f"Wrote {truth.corpus.traces:,} traces ({truth.corpus.spans:,} spans) to {escape(str(out_file))}; "
        f"{len(truth.patterns)} planted patterns in {escape(str(truth.truth_path))}"
    )


def engine_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """HALO's engine flags, plus budgets and context."""
    options = [
        click.option(
            "-m",
            "--model",
            default=DEFAULT_MODEL,
            show_default=True,
            help="Model for the root and sub-agents.",
        ),
        click.option("--synthesis-model", help="Cheaper model for synthesize_traces (default: --model)."),
        click.option("--compaction-model", help="Cheaper model for compacting context (default: --model)."),
        click.option(
            "--max-depth", type=click.IntRange(0), default=2, show_default=True, help="Sub-agent depth."
        ),
        click.option(
            "--max-turns", type=click.IntRange(1), default=20, show_default=True, help="Turns per agent."
        ),
        click.option(
            "--max-parallel",
            type=click.IntRange(1),
            default=4,
            show_default=True,
            help="Sub-agents at once, per depth.",
        ),
        click.option(
            "--base-url", help="OpenAI-compatible endpoint (default: OPENAI_BASE_URL, else OpenAI)."
        ),
        click.option("--api-key", help="API key (default: OPENAI_API_KEY; keyless local servers need none)."),
        click.option(
            "-H",
            "--header",
            "headers",
            multiple=True,
            metavar='"NAME: VALUE"',
            help="Extra HTTP header for the provider (repeatable).",
        ),
        click.option("--temperature", type=click.FloatRange(0, 2)),
        click.option("--max-output-tokens", type=click.IntRange(1)),
        click.option("--parallel-tool-calls/--no-parallel-tool-calls", default=True, show_default=True),
        click.option("--refusal-retries", type=click.IntRange(0), default=1, show_default=True),
        click.option(
            "--reasoning-effort", type=click.Choice(["none", "minimal", "low", "medium", "high", "xhigh"])
        ),
        click.option(
            "--telemetry",
            is_flag=True,
            help="Trace HALO's own run: over OTLP when OTEL_EXPORTER_OTLP_"
            "[TRACES_]ENDPOINT is set, else to $HALO_TELEMETRY_PATH or halo-telemetry-<run id>.jsonl in the "
            "report folder.",
        ),
        click.option("--max-cost", type=float, help="USD budget for the whole run."),
        click.option("--max-tokens", type=click.IntRange(1), help="Token budget for the whole run."),
        click.option("--timeout", type=float, help="Seconds for the whole run."),
        click.option(
            "--prices",
            type=click.Path(exists=True, dir_okay=False),
            help="JSON price table for models HALO does not know (USD per million tokens).",
        ),
        click.option("--dataset-context", metavar="TEXT|@FILE", help="What the traces are, for the agents."),
        click.option(
            "--repo-path",
            type=click.Path(exists=True, file_okay=False, path_type=Path),
            help="Source of the traced agent: read-only code and git tools, so fixes cite path:line.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def parse_headers(values: Sequence[str]) -> dict[str, str]:
    headers = {}
    for value in values:
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            fail(f'--header {value!r}: expected "NAME: VALUE"')
        headers[name.strip()] = content.strip()
    return headers


def read_context(value: str | None) -> str | None:
    if value and value.startswith("@"):
        try:
            return Path(value[1:]).expanduser().read_text()
        except OSError as exc:
            fail(f"--dataset-context {value}: {exc.strerror or exc}")
    return value


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("-p", "--prompt", default=DEFAULT_PROMPT, show_default=True, help="What to find out.")
@store_option
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("halo-report"),
    show_default=True,
    help="Folder for report.json, report.md and report.html.",
)
@engine_options
@threshold_options
@click.option(
    "--json", "as_json", is_flag=True, help="Stream events as JSON lines (the report is the last one)."
)
def run(
    paths: tuple[str, ...],
    prompt: str,
    store_path: Path | None,
    out_dir: Path,
    min_traces: int,
    min_share: float,
    as_json: bool,
    **engine: Any,
) -> None:
    """Analyse traces and write a report (the default command: `halo TRACES -p PROMPT`).

    With a model provider configured (OPENAI_API_KEY, --api-key or --base-url), a root LLM agent
    explores the traces with tools, delegates to sub-agents, and writes the report; the
    deterministic detectors' findings are its starting hypotheses. Without one, the detectors alone
    write the report.
    """
    try:
        config = EngineConfig(
            model=engine["model"],
            synthesis_model=engine["synthesis_model"],
            compaction_model=engine["compaction_model"],
            max_depth=engine["max_depth"],
            max_turns=engine["max_turns"],
            max_parallel=engine["max_parallel"],
            base_url=engine["base_url"],
            api_key=engine["api_key"],
            headers=parse_headers(engine["headers"]),
            temperature=engine["temperature"],
            max_output_tokens=engine["max_output_tokens"],
            parallel_tool_calls=engine["parallel_tool_calls"],
            refusal_retries=engine["refusal_retries"],
            reasoning_effort=engine["reasoning_effort"],
            telemetry=engine["telemetry"],
            max_cost=engine["max_cost"],
            max_tokens=engine["max_tokens"],
            timeout=engine["timeout"],
            dataset_context=read_context(engine["dataset_context"]),
            out_dir=out_dir,
            prices=load_prices(engine["prices"]) if engine["prices"] else {},
            repo_path=engine["repo_path"],
        )
    except (ValidationError, PriceError) as exc:
        fail(_validation_text(exc) if isinstance(exc, ValidationError) else str(exc))
    if not config.provider.configured:
        report, written = run_detectors(
            paths, store_path, out_dir, min_traces=min_traces, min_share=min_share, quiet=as_json
        )
        if config.telemetry:
            report.notes.append(
                "--telemetry traces LLM runs only; the detectors ran alone, so nothing was traced."
            )
        report.notes.append(
            "LLM analysis was skipped: no model provider is configured. Set OPENAI_API_KEY "
            "(or pass --api-key), or --base-url for a local OpenAI-compatible server, to add it."
        )
        written = write_report(report, out_dir)
        if as_json:
            emit_json(report)
            return
        print_findings(report, written)
        err.print(f"[yellow]{escape(report.notes[-1])}[/]")
        return
    target = resolve_store(paths, store_path, quiet=as_json)
    final = run_engine_live(prompt, config, target, as_json=as_json)
    if final is None or final.report is None:
        fail("the run ended without a report")
    if not as_json:
        out.print(Markdown(report_markdown(final.report)))
        out.print(
            "Report: "
            + ", ".join(escape(str(out_dir / name)) for name in ("report.md", "report.json", "report.html"))
        )
        if final.report.telemetry:
            out.print("Telemetry: " + escape(final.report.telemetry))


def _validation_text(exc: ValidationError) -> str:
    return "; ".join(f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}" for e in exc.errors())


def run_engine_live(
    prompt: str, config: EngineConfig, store_path: str, *, as_json: bool
) -> AgentOutputItem | None:
    """Run the engine, showing a live tree of agents (or JSON lines), and return the final item."""
    view = AgentTree()

    async def consume() -> AgentOutputItem | None:
        final = None
        with TraceStore.open(store_path, read_only=True) as store:
            async for event in stream_engine_async(prompt, config, store=store):
                if as_json:
                    sys.stdout.write(event.model_dump_json(exclude_none=True) + "\n")
                    sys.stdout.flush()
                else:
                    view.update(event)
                if isinstance(event, AgentOutputItem) and event.final:
                    final = event
        return final

    live = (
        Live(view, console=err, refresh_per_second=8, transient=True)
        if err.is_terminal and not as_json
        else None
    )
    try:
        if live:
            with live:
                return asyncio.run(consume())
        return asyncio.run(consume())
    except (EngineError, LLMError, StoreError) as exc:
        fail("\n".join([str(exc), *getattr(exc, "__notes__", ())]))
    except KeyboardInterrupt:
        fail("interrupted", code=130)
    finally:
        if not as_json and view.agents:
            err.print(view.summary())


class AgentTree:
    """The run as a tree of agents: status, current tool, tokens and cost."""

    def __init__(self) -> None:
        self.agents: dict[str, dict[str, Any]] = {}

    def update(self, event: Any) -> None:
        agent = self.agents.setdefault(
            event.agent_id,
            {
                "name": event.agent_name,
                "parent": event.parent_agent_id,
                "depth": event.depth,
                "status": "thinking",
                "tool": None,
                "tokens": 0,
                "cost": 0.0,
                "turns": 0,
                "tools": 0,
            },
        )
        if isinstance(event, AgentTextDelta):
            agent["status"] = "writing"
            return
        if event.usage:
            agent["tokens"] += event.usage.input_tokens + event.usage.output_tokens
            agent["cost"] += event.usage.cost_usd or 0.0
            agent["turns"] += 1
        item = event.item
        if item.tool_calls:
            agent["tool"], agent["status"] = item.tool_calls[0].name, "tool"
            agent["tools"] += 1
        elif item.role == "tool":
            agent["status"], agent["tool"] = "thinking", None
            if item.name == "call_subagent":
                for child in self.agents.values():
                    if child["parent"] == event.agent_id and child["status"] != "done":
                        child["status"] = "done"
                        break
        if event.final:
            agent["status"] = "done"

    def __rich__(self) -> Tree:
        tree = Tree("[bold]HALO analysis[/]")
        nodes: dict[str | None, Tree] = {None: tree}
        for agent_id, a in self.agents.items():
            parent = nodes.get(a["parent"], tree)
            doing = f" → {a['tool']}" if a["tool"] else ""
            nodes[agent_id] = parent.add(
                f"[bold]{escape(a['name'])}[/] [dim]{agent_id}[/] {a['status']}{escape(doing)} · {a['turns']} turns · "
                f"{a['tokens']:,} tokens · ${a['cost']:.4f}"
            )
        return tree

    def summary(self) -> str:
        tokens = sum(a["tokens"] for a in self.agents.values())
        cost = sum(a["cost"] for a in self.agents.values())
        turns = sum(a["turns"] for a in self.agents.values())
        return f"{len(self.agents)} agents, {turns} model turns, {tokens:,} tokens, ${cost:.4f}"


@cli.command()
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("halo-report"),
    show_default=True,
)
@click.pass_context
def demo(ctx: click.Context, out_dir: Path) -> None:
    """Run HALO on the example traces that ship with it (simulated support, research, billing,
    coding and travel agents with planted failures)."""
    err.print(f"[dim]Example traces: {escape(str(EXAMPLES))}[/]")
    ctx.invoke(run, paths=(str(EXAMPLES),), out_dir=out_dir)
