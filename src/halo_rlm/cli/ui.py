"""`halo ui`: the local web app."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from halo_rlm.cli.base import STORE_TARGET, cli, err, escape, fail
from halo_rlm.defaults import UI_PORT


@cli.command()
@click.argument("traces", nargs=-1)
@click.option(
    "--store",
    "store_path",
    type=STORE_TARGET,
    help="Store to browse and fill (created if missing): a DuckDB file, chdb:FOLDER or "
    "clickhouse://USER@HOST:8123/DATABASE (default: the store of the given trace files, else the last "
    "one used).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=UI_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port (0: any free one).",
)
@click.option("--no-browser", is_flag=True, help="Print the address instead of opening a browser.")
@click.option("--allow-remote", is_flag=True, help="Allow a --host that other machines can reach.")
@click.option(
    "--token",
    envvar="HALO_UI_TOKEN",
    help="Require 'Authorization: Bearer TOKEN' from OTLP exporters sending to /v1/traces "
    "(or set $HALO_UI_TOKEN). The pages always need the per-launch token in the printed address.",
)
def ui(
    traces: tuple[str, ...],
    store_path: str | Path | None,
    host: str,
    port: int,
    no_browser: bool,
    allow_remote: bool,
    token: str | None,
) -> None:
    """Open HALO's local app: browse traces live, import them, launch analyses and read their reports.

    \b
    The same server receives OTLP/HTTP at /v1/traces, so agents exporting there appear live:
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://127.0.0.1:8799/v1/traces
    TRACES (files, directories, globs) are ingested in the background as the app starts.
    Stop it with Ctrl-C; spans it acknowledged are written first.
    """
    import webbrowser

    from halo_rlm import files
    from halo_rlm.store import paths
    from halo_rlm.web import Server, Settings, UiError

    if store_path is None:
        if traces:
            try:
                store_path = paths.for_inputs(files.resolve(traces))
            except files.InputError as exc:
                fail(str(exc))
        else:
            remembered = paths.last()
            store_path = remembered.store if remembered else paths.for_app()
    try:
        server = Server(
            Settings(
                store=store_path,
                host=host,
                port=port,
                allow_remote=allow_remote,
                exporter_token=token,
                traces=traces,
            )
        )
    except UiError as exc:
        fail(str(exc))
    paths.remember(store_path)
    click.echo(f"HALO is running at {server.login_url}")
    err.print(
        f"[dim]Store {escape(str(store_path))}; OTLP/HTTP spans to {escape(server.url)}/v1/traces. "
        "Ctrl-C stops it.[/]"
    )
    if not no_browser:
        webbrowser.open(server.login_url)
    # Ctrl-C is how the app ends: the server stops, writes what it received, then re-raises the signal.
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    err.print("[dim]HALO stopped.[/]")
