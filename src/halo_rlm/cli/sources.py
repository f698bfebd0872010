"""Commands that bring traces in from where they live: `import langfuse`, `import phoenix` and
`collect` (a local OTLP/HTTP receiver)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from halo_rlm.cli.base import (
    STORE_TARGET,
    Moment,
    cli,
    emit_json,
    err,
    escape,
    fail,
    json_line,
    json_option,
    out,
)
from halo_rlm.defaults import COLLECT_PORT, LANGFUSE_LEGACY_PAGE, LANGFUSE_PAGE, PHOENIX_PAGE

if TYPE_CHECKING:
    from halo_rlm.collect import Collector, CollectorStats
    from halo_rlm.sources import Source


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
    options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option(
            "--store",
            "store_path",
            type=STORE_TARGET,
            help="Store to write: a DuckDB file (default: one per source and project in the user cache), "
            "chdb:FOLDER or clickhouse://USER@HOST:8123/DATABASE.",
        ),
        click.option(
            "--out",
            "out_path",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Also append the spans to this JSONL file (flat spans; `halo ingest` reads it).",
        ),
        click.option(
            "--since",
            type=Moment(),
            help="Only spans starting at or after this time: ISO-8601, or 30m, 24h, 7d, 2w ago.",
        ),
        click.option(
            "--until", type=Moment(), help="Only spans starting before this time (default: now; same forms)."
        ),
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
    "--page-size",
    type=click.IntRange(1, LANGFUSE_PAGE),
    default=LANGFUSE_PAGE,
    show_default=True,
    help=f"Observations per request (servers older than Langfuse v4 take at most {LANGFUSE_LEGACY_PAGE}).",
)
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
    page_size: int,
    **options: Any,
) -> None:
    """Import observations from a Langfuse project (Cloud or self-hosted).

    Uses the v2 observations API (Langfuse v4+) and falls back to the older traces and observations
    endpoints on servers without it. Waits out rate limits (429) as the server asks.
    """
    from halo_rlm.sources import LangfuseFilters, LangfuseSource
    from halo_rlm.store import paths as store_paths

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
    source = LangfuseSource(
        host, public_key, secret_key, filters, expand_metadata=expand_metadata, page_size=page_size
    )
    run_import_command(source, store_paths.for_source("langfuse", source.url, public_key), **options)


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
@click.option(
    "--page-size",
    type=click.IntRange(1, PHOENIX_PAGE),
    default=PHOENIX_PAGE,
    show_default=True,
    help="Spans per request.",
)
@import_options
def import_phoenix(endpoint: str, project: str, api_key: str | None, page_size: int, **options: Any) -> None:
    """Import the spans of an Arize Phoenix project, through its REST API."""
    from halo_rlm.sources import PhoenixSource
    from halo_rlm.store import paths as store_paths

    if not endpoint.startswith(("http://", "https://")):
        fail(f"--endpoint {endpoint!r} needs a scheme, e.g. http://localhost:6006")
    source = PhoenixSource(endpoint, project, api_key, page_size=page_size)
    run_import_command(source, store_paths.for_source("phoenix", source.endpoint, project), **options)


def run_import_command(
    source: Source,
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
    from dataclasses import asdict

    from halo_rlm.sources import SourceError, run_import
    from halo_rlm.store import StoreError
    from halo_rlm.store import paths as store_paths

    target = str(store_path or default_store)
    try:
        with _import_progress(err.is_terminal and not as_json, source) as on_progress:
            report = run_import(
                source,
                target,
                since=since,
                until=until,
                limit=limit,
                out=out_path,
                fresh=fresh,
                progress=on_progress,
            )
    except (SourceError, StoreError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{exc.filename or target}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        err.print("[yellow]Interrupted.[/] Run the same command again to continue where it stopped.")
        sys.exit(130)
    finally:
        source.close()
    store_paths.remember(target)
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
def _import_progress(show: bool, source: Source) -> Iterator[Callable[[int, int | None], None] | None]:
    if not show:
        yield None
        return
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,} spans"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err.console, transient=True) as progress:
        task = progress.add_task(escape(f"{source.kind} {source.url}"), total=None)

        def update(spans: int, total: int | None) -> None:
            progress.update(task, completed=spans, total=total)

        yield update


@cli.command()
@click.option(
    "--store",
    "store_path",
    type=STORE_TARGET,
    help="Store to add spans to: a DuckDB file (default: one per port in the user cache, unless --out "
    "is given), chdb:FOLDER or clickhouse://USER@HOST:8123/DATABASE.",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append spans to this JSONL file (HALO's one-span-per-line format), with or without a store.",
)
@click.option(
    "--spool",
    "spool_path",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the write-ahead log of accepted spans, ideally on another disk than the store "
    "(default: one per --store/--out pair in the user cache). It must be writable.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=COLLECT_PORT,
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
    "--keep-secrets",
    is_flag=True,
    help="Keep credentials found in spans (API keys, tokens, passwords) instead of replacing them "
    "with [REDACTED] before anything is written.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON line (its `type`: listening, flush, stopped) when listening, after each write, "
    "and when stopped.",
)
def collect(
    store_path: Path | None,
    out_path: Path | None,
    spool_path: Path | None,
    host: str,
    port: int,
    token: str | None,
    allow_remote: bool,
    keep_secrets: bool,
    as_json: bool,
) -> None:
    """Receive traces from running agents over OTLP/HTTP and store them.

    \b
    Accepts POST /v1/traces as protobuf or JSON, gzip or deflate, from any OpenTelemetry exporter:
      export OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://127.0.0.1:4318/v1/traces
    or, in Python, halo_rlm.tracing.setup("http://127.0.0.1:4318").
    While it runs, `halo stats`, `halo traces` and `halo show` read what has arrived.

    \b
    A request gets 200 only once its spans are on disk in the spool (--spool), and 503 with
    Retry-After (exporters retry) while the store or --out file cannot be written. Ctrl-C (or
    SIGTERM) stops it after writing everything received; spans an output would not take stay in
    the spool and are written when the collector next starts with the same --store/--out.
    Credentials in spans are replaced by [REDACTED] unless --keep-secrets. Headers and body must
    each arrive within 30 s.
    """
    import signal
    import threading

    from halo_rlm.collect import CollectError, serve
    from halo_rlm.store import paths as store_paths

    on_flush = (lambda stats: json_line("flush", vars(stats))) if as_json else None
    # Ctrl-C and SIGTERM ask for a clean stop (from now on, so one arriving while the banner prints
    # is not lost); a second Ctrl-C while stopping leaves at once, the spool keeping what is unwritten.
    stopping = threading.Event()
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, lambda *_: stopping.set())
    try:
        running = serve(
            store=store_path,
            out=out_path,
            spool=spool_path,
            host=host,
            port=port,
            token=token,
            allow_remote=allow_remote,
            keep_secrets=keep_secrets,
            on_flush=on_flush,
        )
    except CollectError as exc:
        fail(str(exc))
    if running.store_path is not None:
        store_paths.remember(running.store_path)
    if as_json:
        json_line(
            "listening",
            {
                "url": running.url,
                "traces_url": running.traces_url,
                "store": running.store_path and str(running.store_path),
                "out": running.out_path and str(running.out_path),
                "spool": str(running.spool),
                "replayed_spans": running.stats.replayed_spans,
            },
        )
    else:
        from_environment = click.get_current_context().get_parameter_source("token")
        _print_collect_banner(running, token, token_shown=from_environment is not ParameterSource.ENVIRONMENT)
    if err.is_terminal and not as_json:
        with err.status(_collect_status(running.stats)) as status:
            while not stopping.wait(0.25):
                status.update(_collect_status(running.stats))
    else:
        stopping.wait()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if not as_json:
        err.print(f"[dim]Stopping: writing {running.stats.pending_spans:,} spans not yet written…[/]")
    try:
        final = running.stop()
    except KeyboardInterrupt:
        fail(
            f"stopped at once: spans not yet written wait in the spool {running.spool} and are "
            "written when the collector next starts with the same outputs"
        )
    if as_json:
        json_line("stopped", vars(final))
    else:
        err.print(
            f"Received {final.spans:,} spans in {final.traces:,} traces"
            + (f" ([yellow]{final.rejected_spans:,} rejected[/])" if final.rejected_spans else "")
            + (f"; stored in {escape(str(running.store_path))}" if running.store_path else "")
            + (f"; written to {escape(str(running.out_path))}" if running.out_path else "")
        )
    if final.last_error:
        fail(final.last_error)


def _print_collect_banner(running: Collector, token: str | None, *, token_shown: bool) -> None:
    """What to paste into the agent's shell. A token that came from $HALO_COLLECT_TOKEN is not
    printed (terminals get recorded and shared): the line refers to the variable instead."""
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
    out.print(f"[dim]Accepted spans wait in the spool {escape(str(running.spool))}[/]")
    replayed = running.stats.replayed_spans
    if replayed:
        out.print(f"Writing {replayed:,} spans an earlier run accepted but had not written")
    out.print("Point your agent at it:")
    out.print(f"  export OTEL_EXPORTER_OTLP_TRACES_ENDPOINT={running.traces_url}")
    out.print(
        f"  export OTEL_EXPORTER_OTLP_ENDPOINT={running.url}  [dim]# base URL form (traces only here)[/]"
    )
    out.print("  export OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf")
    if token and token_shown:
        out.print(f"  export OTEL_EXPORTER_OTLP_HEADERS=Authorization=Bearer%20{escape(token)}")
    elif token:
        out.print('  export OTEL_EXPORTER_OTLP_HEADERS="Authorization=Bearer%20$HALO_COLLECT_TOKEN"')
    out.print(f"  [dim]# or in Python:[/] halo_rlm.tracing.setup({running.url!r})")
    if running.store_path is not None:
        out.print(f"[dim]Meanwhile: halo stats --store {escape(str(running.store_path))}[/]")


def _collect_status(stats: CollectorStats) -> str:
    parts = [f"{stats.spans:,} spans", f"{stats.traces:,} traces"]
    if stats.rejected_spans:
        parts.append(f"[yellow]{stats.rejected_spans:,} rejected[/]")
    if stats.failed_requests:
        parts.append(f"[yellow]{stats.failed_requests:,} failed requests[/]")
    if stats.busy_requests:
        parts.append(f"[yellow]{stats.busy_requests:,} told to retry[/]")
    if stats.pending_spans:
        parts.append(f"{stats.pending_spans:,} not yet written")
    if stats.last_error:
        parts.append(f"[red]{escape(stats.last_error)}[/]")
    return " · ".join(parts) + " [dim]· Ctrl-C to stop[/]"
