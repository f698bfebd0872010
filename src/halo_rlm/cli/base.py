"""The `halo` command group and what its commands share: consoles, errors, `--json`, `--store` and
finding (or filling) the store a command reads.

Only click is imported up front: `halo --help` and `halo --version` must start instantly, so each
command imports what it needs when it runs, and rich's consoles are made on first use.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from halo_rlm.__about__ import __version__

if TYPE_CHECKING:
    from rich.console import Console

    from halo_rlm.files import InputFile
    from halo_rlm.store import IngestReport, TraceStore


class LazyConsole:
    """A rich Console made on first use. Piped output gets a wider page than rich's default 80
    columns, so tables stay readable in logs."""

    def __init__(self, *, stderr: bool) -> None:
        self.stderr = stderr

    @functools.cached_property
    def console(self) -> Console:
        from rich.console import Console

        stream = sys.stderr if self.stderr else sys.stdout
        return Console(stderr=self.stderr, highlight=False, width=None if stream.isatty() else 120)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console, name)


out = LazyConsole(stderr=False)
err = LazyConsole(stderr=True)


def escape(text: str) -> str:
    """Text from outside HALO (traces, model output, file names, errors) as literal rich markup that
    is safe on a terminal: every command prints such text only through this function, which turns
    escape sequences, C1 controls and bidi overrides into visible stand-ins (`utils.terminal_safe`)."""
    from rich.markup import escape as rich_escape

    from halo_rlm.utils import terminal_safe

    return rich_escape(terminal_safe(text))


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
      halo runs                         analyses recorded so far; halo ask RUN "..." follows one up
      halo compare BEFORE AFTER         did the fix work? failure rates and outcomes, with statistics
      halo loop --run CMD --fix CMD     run, analyse, let a coding agent fix, re-run, keep what helped
      halo eval --simulate 2000         how good is the analysis? scored against planted failures

    Trace files can be HALO/OpenInference JSONL, OTLP/JSON (one request per line or one document),
    Phoenix span JSON, gzip- or zstd-compressed; give files, directories, globs or - for stdin.
    Query commands without files use the store of the last ingest.
    """


# --- shared options and helpers -----------------------------------------------------------------


PASSWORD_ENV = "HALO_CLICKHOUSE_PASSWORD"
_SERVER_SCHEMES = ("clickhouse://", "clickhouses://")


class StoreTarget(click.ParamType):
    """A store: a DuckDB file path, `chdb:FOLDER`, or `clickhouse[s]://USER:PASSWORD@HOST:PORT/DB`.

    A password in the URL is moved to $HALO_CLICKHOUSE_PASSWORD (where the ClickHouse store reads it)
    and the URL kept without it, so no message, log or remembered store can show it."""

    name = "PATH|URL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if text.lower().startswith(_SERVER_SCHEMES):
            return _without_password(text)
        if text.lower().startswith("chdb:"):
            return text
        path = Path(text).expanduser()
        if path.is_dir():
            self.fail(f"{text} is a directory; give a store file (or chdb:FOLDER for an embedded ClickHouse)")
        return str(path)


STORE_TARGET = StoreTarget()


def _without_password(url: str) -> str:
    import os
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    os.environ[PASSWORD_ENV] = unquote(parts.password)
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}" if user else host))


def store_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--store",
        "store_path",
        type=STORE_TARGET,
        help="Store to use: a DuckDB file (default: one per set of inputs in the user cache, reused on "
        "later runs), chdb:FOLDER (ClickHouse embedded), or clickhouse://USER@HOST:8123/DATABASE "
        f"(clickhouses:// for TLS; the password in the URL or in ${PASSWORD_ENV}).",
    )(f)


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")(f)


class Share(click.ParamType):
    """A share of a whole, as a fraction (0.05) or a percentage (5%)."""

    name = "share"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip()
        try:
            share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            self.fail(
                f"{value!r} is not a share: write a fraction like 0.05 or a percentage like 5%", param, ctx
            )
        if not 0 <= share <= 1:
            self.fail(f"{value!r} is not between 0 and 1 (for five percent write 0.05 or 5%)", param, ctx)
        return share


class Moment(click.ParamType):
    """A time: ISO-8601, or relative to now (30m, 24h, 7d, 2w ago); converted to ISO-8601 UTC."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from halo_rlm.utils import parse_time

        try:
            return parse_time(str(value)) or ""
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]Error:[/] {escape(message)}", soft_wrap=True)  # one line, however long
    sys.exit(code)


def emit_json(value: Any) -> None:
    import orjson

    data = value.model_dump(mode="json", exclude_none=True) if hasattr(value, "model_dump") else value
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def json_line(kind: str, value: Mapping[str, Any]) -> None:
    """One line of a JSON-lines stream (`--json` on commands that run on): every line says what it is
    in `type`, first."""
    import orjson

    sys.stdout.write(orjson.dumps({"type": kind, **value}).decode() + "\n")
    sys.stdout.flush()


def note_store(target: str, why: str) -> None:
    """Say which store a query command reads (on stderr, so `--json` output stays pure)."""
    err.print(f"[dim]Using the store {escape(target)} ({escape(why)})[/]", soft_wrap=True)


def resolve_store(
    paths: Sequence[str], store_path: str | Path | None, *, quiet: bool, strict: bool = False
) -> str:
    """Ingest `paths` (if any) and return the store (path or URL) to query, saying which it is."""
    from halo_rlm import files
    from halo_rlm.store import paths as store_paths

    if paths:
        try:
            inputs = files.resolve(paths)
        except files.InputError as exc:
            fail(str(exc))
        target = str(store_path or store_paths.for_inputs(inputs))
        report = ingest_with_progress(target, paths, strict=strict, quiet=quiet)
        if not quiet:
            print_ingest_summary(report, brief=True)
        if all(item.status == "failed" for item in report.inputs):
            first = report.inputs[0] if report.inputs else None
            fail(
                "none of the files given holds traces"
                + (f" ({first.path}: {first.message})" if quiet and first and first.message else "")
            )
        note_store(target, "of the trace files given")
        return target
    if store_path is not None:
        # A ClickHouse store says itself, on opening, whether it holds HALO's tables.
        if not store_paths.is_url(str(store_path)) and not Path(store_path).exists():
            fail(f"{store_path}: no such store; ingest into it first: halo ingest FILES --store {store_path}")
        note_store(str(store_path), "given with --store")
        return str(store_path)
    remembered = store_paths.last()
    if remembered is None:
        fail("no traces given: pass trace files (or --store PATH), e.g. halo stats traces.jsonl")
    note_store(remembered.store, f"of the last ingest in {remembered.directory}")
    return remembered.store


def ingest_with_progress(target: str, paths: Sequence[str], *, strict: bool, quiet: bool) -> IngestReport:
    """Ingest `paths` into the store at `target` with a progress bar on a terminal, and remember the
    store for later query commands unless the ingest failed."""
    from halo_rlm import files
    from halo_rlm.store import StoreError, StrictError, TraceStore
    from halo_rlm.store import paths as store_paths

    show = err.is_terminal and not quiet
    try:
        with TraceStore.open(target) as store, _progress(show) as make_callback:
            report = store.ingest(paths, strict=strict, progress=make_callback)
    except StrictError as exc:
        fail(str(exc), code=2)
    except (StoreError, files.InputError) as exc:
        fail(str(exc))
    store_paths.remember_ingest(report)
    return report


@contextmanager
def _progress(show: bool) -> Iterator[Callable[[InputFile], Callable[[int, int], None]] | None]:
    if not show:
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[spans]:,} spans ({task.fields[rate]:,.0f}/s)"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err.console, transient=True) as progress:

        def for_input(inp: InputFile) -> Callable[[int, int], None]:
            task = progress.add_task(escape(Path(inp.path).name), total=inp.size, spans=0, rate=0.0)

            def update(done: int, spans: int) -> None:
                elapsed = progress.tasks[task].elapsed or 1e-9
                progress.update(task, completed=done, spans=spans, rate=spans / elapsed)

            return update

        yield for_input


def open_read_only(path: str) -> TraceStore:
    from halo_rlm.store import StoreError, TraceStore

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


def ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1000:.1f}s" if value >= 1000 else f"{value:.0f}ms"
