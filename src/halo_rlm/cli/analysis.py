"""Commands that analyse traces and handle reports: `run` (the default: `halo TRACES -p PROMPT`),
`analyze`, `demo`, `verify`, `report schema`, `simulate`."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import click

from halo_rlm.cli.base import (
    Share,
    cli,
    emit_json,
    err,
    escape,
    fail,
    json_line,
    json_option,
    note_store,
    open_read_only,
    out,
    resolve_store,
    store_option,
)
from halo_rlm.defaults import DEFAULT_MODEL, DEFAULT_PROMPT, EXAMPLE_TRACES, ReasoningEffort
from halo_rlm.utils import first_line, terminal_safe

if TYPE_CHECKING:
    from pydantic import ValidationError
    from rich.tree import Tree

    from halo_rlm.engine import AgentOutputItem, AgentView, EngineConfig, RunView
    from halo_rlm.report import Report


def threshold_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--min-share",
        type=Share(),
        default=0.005,
        show_default=True,
        help="…and at least this share of all traces (a fraction like 0.005, or 0.5%).",
    )(f)
    return click.option(
        "--min-traces",
        type=click.IntRange(min=1),
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
    keep_secrets: bool = False,
    notes: Sequence[str] = (),
) -> tuple[Report, dict[str, Path]]:
    """The detectors' report, verified, recorded as a run and written to `out_dir` (with `notes`
    added); credentials in it are redacted unless `keep_secrets`."""
    from halo_rlm.analyses import analyze_with_detectors
    from halo_rlm.detect import Thresholds
    from halo_rlm.render import write
    from halo_rlm.store import StoreError

    target = resolve_store(paths, store_path, quiet=quiet)
    try:
        run, report = analyze_with_detectors(
            target,
            inputs=[str(p) for p in paths],
            thresholds=Thresholds(min_traces=min_traces, min_share=min_share),
            source="cli",
        )
    except StoreError as exc:
        fail(str(exc))
    if not quiet:
        err.print(f"[dim]Recorded as run {run.id} (halo runs show {run.id})[/]")
    report.notes.extend(notes)
    report = report.cleaned(keep_secrets=keep_secrets)
    return report, write(report, out_dir, keep_secrets=True)


keep_secrets_option = click.option(
    "--keep-secrets",
    is_flag=True,
    help="Keep credentials found in traces (API keys, tokens, passwords) in what is sent to the model "
    "and written to reports; by default they are replaced by [REDACTED].",
)


def print_findings(report: Report, paths: dict[str, Path], *, top: int = 10) -> None:
    from rich.table import Table

    from halo_rlm.report import cite

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
                f"{escape(f.title)}{flag}\n[dim]{f.category} · {escape(f.id)}[/]",
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
@keep_secrets_option
@json_option
def analyze_command(
    paths: tuple[str, ...],
    store_path: Path | None,
    out_dir: Path,
    min_traces: int,
    min_share: float,
    keep_secrets: bool,
    as_json: bool,
) -> None:
    """Find systemic failures with deterministic detectors (no LLM needed) and write a ranked,
    evidence-backed report: report.json, report.md (for people and coding agents) and report.html.

    A finding needs a pattern across traces (see --min-traces and --min-share); one-off errors are
    not reported. Every finding is re-checked against the store before it is written.
    """
    report, paths_written = run_detectors(
        paths,
        store_path,
        out_dir,
        min_traces=min_traces,
        min_share=min_share,
        quiet=as_json,
        keep_secrets=keep_secrets,
    )
    if as_json:
        emit_json(report)
    else:
        print_findings(report, paths_written)


@cli.command("verify")
@click.argument("report_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@store_option
@click.option(
    "--write",
    is_flag=True,
    help="Write the checked report back: REPORT_FILE itself, and its .md and .html beside it "
    "(e.g. other.json, other.md, other.html). Nothing else is written.",
)
@keep_secrets_option
@json_option
def verify_command(
    report_file: Path, store_path: Path | None, write: bool, keep_secrets: bool, as_json: bool
) -> None:
    """Re-check a report against the trace store: cited traces and spans exist, excerpts are in
    the spans they cite, and each finding's affected-trace count matches a recount of its query.

    Exit code 0 when every finding checks out, 1 when any is flagged or cannot be checked.
    """
    from pydantic import ValidationError

    from halo_rlm.render import write as write_report
    from halo_rlm.report import Report
    from halo_rlm.store import paths as store_paths
    from halo_rlm.verify import verify

    if write and report_file.suffix != ".json":
        fail(f"{report_file}: --write writes a report back to its own .json file; give a .json file")
    try:
        report = Report.model_validate_json(report_file.read_bytes())
    except ValidationError as exc:
        fail(
            f"{report_file}: not a HALO report ({exc.error_count()} problems, first: {exc.errors()[0]['msg']})"
        )
    target = str(store_path or report.store)
    if not target or not (store_paths.is_url(target) or Path(target).exists()):
        fail(f"the report's store {target or '(none)'} is not here; pass --store PATH")
    note_store(target, "given with --store" if store_path else "the report's")
    with open_read_only(target) as store:
        verify(report, store)
    if write:
        written = write_report(report, report_file.parent, name=report_file.stem, keep_secrets=keep_secrets)
        if not as_json:
            err.print("Wrote " + ", ".join(escape(str(p)) for p in written.values()))
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
    from halo_rlm.report import json_schema

    emit_json(json_schema())


@cli.command("simulate")
@click.argument("out_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--traces", type=click.IntRange(min=1), default=500, show_default=True, help="How many traces.")
@click.option("--seed", default=7, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["halo", "otlp"]), default="halo", show_default=True)
@click.option(
    "--rate",
    "rates",
    multiple=True,
    metavar="PATTERN=SHARE",
    help="Override a planted pattern's rate, e.g. --rate refusal=0.1 (0 turns it off). Patterns are named "
    "by category, plus bottleneck (a tool slow every time) and tool_rate_limit (a tool's 429s, retried).",
)
@click.option(
    "--distractors",
    type=Share(),
    default=0.02,
    show_default=True,
    help="Share of one-off error traces (0.02 or 2%).",
)
def simulate_command(
    out_file: Path, traces: int, seed: int, fmt: str, rates: tuple[str, ...], distractors: float
) -> None:
    """Write simulated agent traces with planted systemic failures, and their ground truth
    (OUT_FILE without .jsonl/.gz + .truth.json). Gzipped when OUT_FILE ends in .gz. A missing
    folder is created, as for a report's -o."""
    from halo_rlm.simulate import simulate

    overrides = {}
    for item in rates:
        name, _, value = item.partition("=")
        try:
            overrides[name] = Share().convert(value, None, None)
        except click.BadParameter as exc:
            fail(f"--rate {item!r}: expected PATTERN=SHARE, e.g. refusal=0.1 ({exc.message})")
    try:
        out_file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"{out_file.parent}: cannot create the folder ({exc.strerror or exc})")
    try:
        truth = simulate(
            out_file,
            traces=traces,
            seed=seed,
            format=fmt,  # type: ignore[arg-type]  # click.Choice(["halo", "otlp"])
            rates=overrides or None,
            distractors=distractors,
        )
    except ValueError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{exc.filename or out_file}: {exc.strerror or exc}")
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
        click.option(
            "--max-output-tokens",
            type=click.IntRange(1),
            help="Tokens one reply may take (default: 16,384, or 32,768 with --reasoning-effort high or "
            "xhigh; at most a quarter of the context window).",
        ),
        click.option(
            "--context-window",
            type=click.IntRange(1024),
            help="The model's context window in tokens (default: asked of the server — vLLM, llama-server, "
            "Ollama); every request is sized to fit it.",
        ),
        click.option(
            "--compact/--no-compact",
            default=None,
            help="Compact prompts and fewer, shorter tools for small windows (default: when the full ones "
            "would take over a fifth of the window).",
        ),
        click.option("--parallel-tool-calls/--no-parallel-tool-calls", default=True, show_default=True),
        click.option("--refusal-retries", type=click.IntRange(0), default=1, show_default=True),
        click.option("--reasoning-effort", type=click.Choice(get_args(ReasoningEffort))),
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
        keep_secrets_option,
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

    config = engine_config(engine, out_dir)
    if not config.provider.configured:
        notes = [
            "LLM analysis was skipped: no model provider is configured. Set OPENAI_API_KEY "
            "(or pass --api-key), or --base-url for a local OpenAI-compatible server, to add it."
        ]
        if config.telemetry:
            notes.insert(
                0, "--telemetry traces LLM runs only; the detectors ran alone, so nothing was traced."
            )
        report, written = run_detectors(
            paths,
            store_path,
            out_dir,
            min_traces=min_traces,
            min_share=min_share,
            quiet=as_json,
            keep_secrets=config.keep_secrets,
            notes=notes,
        )
        if as_json:
            json_line("report", {"report": report.model_dump(mode="json", exclude_none=True)})
            return
        print_findings(report, written)
        err.print(f"[yellow]{escape(report.notes[-1])}[/]")
        return
    target = resolve_store(paths, store_path, quiet=as_json)
    made, error = run_engine_live(prompt, config, target, as_json=as_json, inputs=[str(p) for p in paths])
    if made is None:
        fail(
            "\n".join([first_line(error), *getattr(error, "__notes__", ())])
            if error
            else "no report was made"
        )
    if not as_json:
        if made.answer:  # the model's answer to the prompt, as a terminal can show it safely
            out.print(escape(terminal_safe(made.answer.strip())), highlight=False)
            out.print()
        print_findings(made, {name: out_dir / f"report.{suffix}" for name, suffix in REPORT_FILES})
        if made.telemetry:
            out.print("Telemetry: " + escape(made.telemetry))
    if not made.outcome.complete:
        err.print(
            f"[bold red]The run did not complete[/] ({escape(made.outcome.stopped_by or '')}): "
            f"{escape(made.outcome.reason)}"
        )
        for item in made.outcome.not_done:
            err.print(f"  not done: {escape(item)}")
        err.print("The report holds everything verified before the run stopped.")
        sys.exit(130 if made.outcome.stopped_by == "interrupted" else 1)


REPORT_FILES = (("markdown", "md"), ("json", "json"), ("html", "html"))


def engine_config(engine: dict[str, Any], out_dir: Path | None) -> EngineConfig:
    """The EngineConfig of the `engine_options` a command was given (named as its fields; three need
    reading first)."""
    from pydantic import ValidationError

    from halo_rlm.engine import EngineConfig
    from halo_rlm.pricing import PriceError
    from halo_rlm.pricing import load as load_prices
    from halo_rlm.providers import check_url

    try:
        config = EngineConfig.model_validate(
            {
                **engine,
                "headers": parse_headers(engine["headers"]),
                "dataset_context": read_context(engine["dataset_context"]),
                "prices": load_prices(engine["prices"]) if engine["prices"] else {},
                "out_dir": out_dir,
            }
        )
    except (ValidationError, PriceError) as exc:
        fail(_validation_text(exc) if isinstance(exc, ValidationError) else str(exc))
    if config.base_url is None and os.environ.get("OPENAI_BASE_URL"):
        try:  # --base-url is checked by EngineConfig; the variable it falls back to, here
            check_url(os.environ["OPENAI_BASE_URL"])
        except ValueError as exc:
            fail(f"$OPENAI_BASE_URL: {exc}")
    return config


def _validation_text(exc: ValidationError) -> str:
    return "; ".join(
        f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg'].removeprefix('Value error, ')}"
        for e in exc.errors()
    )


def run_engine_live(
    prompt: str, config: EngineConfig, store_path: str, *, as_json: bool, inputs: Sequence[str] = ()
) -> tuple[Report | None, BaseException | None]:
    """Run the engine (recorded as a run), showing a live tree of agents on a terminal, plain progress
    lines when stderr is not one (a log, a pipe, CI), or JSON lines with `--json`; return its report
    and the error that stopped it, if any. The engine writes a report whatever stops it: the first
    Ctrl-C stops the run and lets it write one with what is verified so far (the process then exits
    130), a second Ctrl-C exits at once."""
    import asyncio
    import time

    from rich.live import Live

    from halo_rlm.analyses import stream_recorded
    from halo_rlm.engine import AgentOutputItem, AgentTextDelta, EngineError, RunView
    from halo_rlm.llm import LLMError
    from halo_rlm.runs import Run
    from halo_rlm.store import StoreError

    view = RunView()
    final: list[Report] = []
    started = time.monotonic()
    wall_started = time.time()

    async def consume() -> None:
        async for event in stream_recorded(prompt, config, store_path, inputs=inputs, source="cli"):
            if isinstance(event, Run):
                if as_json:
                    json_line("run", {"id": event.id})
                else:
                    err.print(f"[dim]Recording as run {event.id} (halo runs show {event.id})[/]")
                continue
            if as_json:
                kind = (
                    "text_delta" if isinstance(event, AgentTextDelta) else "report" if event.final else "item"
                )
                json_line(kind, event.model_dump(mode="json", exclude_none=True, exclude={"conversation"}))
            else:
                agent = view.update(event)
                if live is None and isinstance(event, AgentOutputItem):
                    line = progress_line(agent, event)
                    if line:
                        err.print(f"[{time.monotonic() - started:6.1f}s] {escape(line)}", highlight=False)
            if isinstance(event, AgentOutputItem) and event.final and event.report is not None:
                final.append(event.report)

    live = (
        Live(
            get_renderable=lambda: agent_tree(view), console=err.console, refresh_per_second=8, transient=True
        )
        if err.is_terminal and not as_json
        else None
    )
    error: BaseException | None = None
    try:
        if live:
            with live:
                interruptible(consume())
        else:
            interruptible(consume())
    except (EngineError, LLMError, StoreError) as exc:
        error = exc
    except (asyncio.CancelledError, KeyboardInterrupt) as exc:
        error = exc
        written = config.out_dir / "report.json" if config.out_dir is not None else None
        if not final and written is not None and written.exists() and written.stat().st_mtime >= wall_started:
            from halo_rlm.report import Report

            # The engine wrote it on its way out; the event carrying it was not read.
            final.append(Report.model_validate_json(written.read_bytes()))
    except Exception as exc:  # noqa: BLE001 - a crash (in a tool, say): its report was written, say it in one line
        error = exc
    finally:
        if not as_json and view.agents:
            err.print(view.summary())
    if error is not None and not as_json:
        err.print(f"[bold red]Error:[/] {escape(first_line(error))}")
        for note in getattr(error, "__notes__", ()):
            err.print(escape(note))
    return (final[-1] if final else None), error


def interruptible(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` on a new event loop. The first Ctrl-C cancels it (the engine then writes its report
    with what it has); a second ends the process at once, exit code 130."""
    import asyncio
    import os
    import signal

    loop = asyncio.new_event_loop()
    task = loop.create_task(work)
    presses = 0

    def on_interrupt(signum: int, frame: Any) -> None:
        nonlocal presses
        presses += 1
        if presses > 1:
            os.write(2, b"\nInterrupted again: exiting now.\n")
            os._exit(130)
        os.write(
            2, b"\nStopping: writing the report with what is verified so far (Ctrl-C again to quit now)\n"
        )
        loop.call_soon_threadsafe(task.cancel)

    try:
        previous = signal.signal(signal.SIGINT, on_interrupt)
    except ValueError:  # not the main thread: Ctrl-C is not ours to handle
        previous = None
    try:
        loop.run_until_complete(task)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def progress_line(agent: AgentView, event: AgentOutputItem) -> str | None:
    """What a step of the run did, as one plain line (for logs, where no live view is drawn); None
    for steps not worth a line (tool results, user messages)."""
    who = f"{agent.name} {agent.agent_id}"
    used = f"{agent.usage.tokens:,} tokens, ${agent.usage.cost_usd or 0:.4f}"
    item = event.item
    if event.final:
        return f"{who}: wrote the report ({used})"
    if item.tool_calls:
        calls = ", ".join(call.name for call in item.tool_calls)
        return f"{who}: turn {agent.turns} calls {calls} ({used})"
    if item.role == "assistant":
        return f"{who}: turn {agent.turns} answered ({used})"
    return None


def agent_tree(view: RunView) -> Tree:
    """The run as a tree of agents: what each is doing, its turns, tokens and cost."""
    from rich.tree import Tree

    tree = Tree("[bold]HALO analysis[/]")
    nodes: dict[str | None, Tree] = {None: tree}
    for agent in view.agents.values():
        parent = nodes.get(agent.parent_id, tree)
        doing = f" → {agent.tool}" if agent.tool else ""
        nodes[agent.agent_id] = parent.add(
            f"[bold]{escape(agent.name)}[/] [dim]{agent.agent_id}[/] {agent.activity}{escape(doing)} · "
            f"{agent.turns} turns · {agent.usage.tokens:,} tokens · ${agent.usage.cost_usd or 0:.4f}"
        )
    return tree


DEMO_MAX_COST = 0.50  # USD: `halo demo --llm` never spends more unless told


@cli.command()
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("halo-report"),
    show_default=True,
)
@click.option(
    "--llm",
    "with_model",
    is_flag=True,
    help="Add the LLM analysis (a paid run on your provider: OPENAI_API_KEY, --api-key or --base-url).",
)
@click.option(
    "--max-cost",
    type=click.FloatRange(min=0, min_open=True),
    default=DEMO_MAX_COST,
    show_default=True,
    help="USD cap for the --llm run.",
)
@click.option("-m", "--model", default=DEFAULT_MODEL, show_default=True, help="Model for --llm.")
@click.option(
    "--base-url", help="OpenAI-compatible endpoint for --llm (default: OPENAI_BASE_URL, else OpenAI)."
)
@click.option("--api-key", help="API key for --llm (default: OPENAI_API_KEY).")
@click.pass_context
def demo(
    ctx: click.Context,
    out_dir: Path,
    with_model: bool,
    max_cost: float,
    model: str,
    base_url: str | None,
    api_key: str | None,
) -> None:
    """Run HALO on the example traces that ship with it (simulated support, research, billing,
    coding and travel agents with planted failures).

    By default only the deterministic detectors run: no model, no cost. --llm adds the LLM analysis,
    capped at --max-cost.
    """
    err.print(f"[dim]Example traces: {escape(str(EXAMPLE_TRACES))}[/]")
    if not with_model:
        report, written = run_detectors(
            (str(EXAMPLE_TRACES),),
            None,
            out_dir,
            min_traces=2,
            min_share=0.005,
            quiet=False,
            notes=[
                f"This demo ran the detectors alone (no model, no cost). Add the LLM analysis with "
                f"`halo demo --llm` (a paid run, capped at ${DEMO_MAX_COST:.2f} by --max-cost; it uses "
                "OPENAI_API_KEY, or --base-url for a local OpenAI-compatible server)."
            ],
        )
        print_findings(report, written)
        err.print(f"[yellow]{escape(report.notes[-1])}[/]")
        return
    ctx.invoke(
        run,
        paths=(str(EXAMPLE_TRACES),),
        out_dir=out_dir,
        max_cost=max_cost,
        model=model,
        base_url=base_url,
        api_key=api_key,
    )
