"""Run history and follow-ups: `halo runs`, `halo runs show RUN`, `halo ask RUN "question"`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from halo_rlm.cli.analysis import agent_tree, engine_config, engine_options
from halo_rlm.cli.base import STORE_TARGET, cli, emit_json, err, escape, fail, json_line, json_option, out

if TYPE_CHECKING:
    from halo_rlm.runs import Run, RunRegistry


def runs_option(f: Any) -> Any:
    return click.option(
        "--store",
        "store_path",
        type=STORE_TARGET,
        help="Runs on this store (default: those on the store of the last ingest, and on the stores HALO keeps "
        "in its cache).",
    )(f)


def registry_for(store_path: Path | None) -> RunRegistry:
    """The registry of `--store`, else of the last store used, else the shared one in the cache."""
    from halo_rlm.runs import RunRegistry
    from halo_rlm.store import paths

    remembered = paths.last()
    return RunRegistry.beside(store_path or (remembered.store if remembered else None))


def find_run(ref: str, store_path: Path | None) -> Run:
    """The run `ref` names in the registry of `--store`, else of the last store, else the shared one."""
    from halo_rlm.runs import RunError, RunRegistry

    tried = [registry_for(store_path)]
    if store_path is None and tried[0].root != RunRegistry.beside(None).root:
        tried.append(RunRegistry.beside(None))
    problem = ""
    for registry in tried:
        try:
            return registry.get(ref)
        except RunError as exc:
            problem = problem or str(exc)
            if "ambiguous" in str(exc) or "not a run id" in str(exc):
                break
    fail(problem)


@cli.group("runs", invoke_without_command=True)
@runs_option
@click.option(
    "--kind", type=click.Choice(["analysis", "compare", "loop", "eval"]), help="Only runs of this kind."
)
@click.option(
    "-n", "--limit", type=click.IntRange(1), default=30, show_default=True, help="How many, newest first."
)
@json_option
@click.pass_context
def runs_group(
    ctx: click.Context, store_path: Path | None, kind: str | None, limit: int, as_json: bool
) -> None:
    """Recorded runs: every analysis (CLI, Python, web app), loop and evaluation, newest first.

    Run ids are short; any unambiguous prefix names a run (`halo runs show 7k2`, `halo ask 7k2 "..."`).
    """
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    registry = registry_for(store_path)
    listed = registry.runs(kind=kind, limit=limit)  # type: ignore[arg-type]
    if as_json:
        emit_json(
            [
                r.record.model_dump(mode="json", exclude={"turns"}) | {"turns": len(r.record.turns)}
                for r in listed
            ]
        )
        return
    if not listed:
        out.print(f"No runs recorded in {escape(str(registry.root))} yet.")
        return
    shown = registry.shortest_prefixes(listed)
    table = Table(show_edge=False)
    for column in ("id", "when", "kind", "status", "what", "result"):
        table.add_column(column)
    for run in listed:
        r = run.record
        colour = {"completed": "green", "failed": "red", "interrupted": "yellow", "incomplete": "yellow"}.get(
            r.status, ""
        )
        table.add_row(
            f"[bold]{shown[run.id]}[/]{run.id[len(shown[run.id]) :]}",
            r.created_at.replace("T", " ").removesuffix("Z"),
            r.kind,
            f"[{colour}]{r.status}[/]" if colour else r.status,
            escape(_what(run)),
            escape(_result(run)),
        )
    out.print(table)
    out.print(f'[dim]{escape(str(registry.root))} · halo runs show ID · halo ask ID "question"[/]')


def _what(run: Run) -> str:
    r = run.record
    text = r.prompt or ", ".join(r.inputs) or "-"
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:59] + "…"


def _result(run: Run) -> str:
    r = run.record
    if r.kind == "loop":
        rounds = r.summary.get("rounds", [])
        kept = sum(1 for x in rounds if x["decision"] == "kept")
        scores = [x["score_after"] for x in rounds if x["decision"] == "kept" and x.get("score_after")]
        return f"{len(rounds)} rounds, {kept} kept" + (f", score {scores[-1]}" if scores else "")
    if r.kind == "eval":
        s = r.summary
        return (
            f"recall {s.get('recall', '-')}, precision {s.get('precision', '-')}"
            if "recall" in s
            else r.reason
        )
    extra = f", {len(r.turns)} follow-ups" if r.turns else ""
    return (r.reason or "") + extra


@runs_group.command("show")
@click.argument("run_id")
@runs_option
@json_option
def runs_show(run_id: str, store_path: Path | None, as_json: bool) -> None:
    """One run: what was asked over what, with which models and budgets, how it ended, its usage, files,
    follow-ups, and for a loop its rounds."""
    run = find_run(run_id, store_path)
    r = run.record
    if as_json:
        emit_json(r.model_dump(mode="json") | {"folder": str(run.folder)})
        return
    out.print(
        f"[bold]Run {run.id}[/] · {r.kind} · {r.status}" + (f" ({escape(r.reason)})" if r.reason else "")
    )
    rows = [
        ("started", r.created_at),
        ("finished", r.finished_at or "-"),
        ("recorded by", r.source),
        ("question", r.prompt or "-"),
        ("inputs", ", ".join(r.inputs) or "-"),
        ("store", r.store or "-"),
        ("filters", ", ".join(f"{k}={v}" for k, v in r.filters.items()) or "-"),
        ("models", ", ".join(f"{k}: {v}" for k, v in r.models.items()) or "-"),
        ("budgets", ", ".join(f"{k}={v}" for k, v in r.budgets.items()) or "-"),
        ("usage", ", ".join(f"{k}={v}" for k, v in r.usage.items()) or "-"),
        ("folder", str(run.folder)),
    ]
    for name, value in rows:
        out.print(f"  [dim]{name:>12}[/]  {escape(str(value))}")
    for name in r.files:
        path = run.file(name)
        out.print(f"  [dim]{'file':>12}[/]  {escape(str(path))}")
    for i, turn in enumerate(r.turns, 1):
        out.print(f"\n[bold]Follow-up {i}[/] ({turn.status}) [dim]{turn.at}[/]\n  Q: {escape(turn.question)}")
        if turn.answer:
            out.print("  A: " + escape(turn.answer))
    if r.kind == "loop":
        print_rounds(r.summary.get("rounds", []), baseline=r.summary.get("baseline_score"))


def print_rounds(rounds: list[dict[str, Any]], *, baseline: str | None = None) -> None:
    from rich.table import Table

    table = Table(show_edge=False, title="Rounds")
    for column in ("round", "decision", "score", "files", "failures", "why"):
        table.add_column(column)
    if baseline:
        table.add_row("0", "baseline", baseline, "", "", "")
    colours = {
        "kept": "green",
        "discarded": "yellow",
        "failed": "red",
        "unchanged": "dim",
        "interrupted": "red",
    }
    for x in rounds:
        score = (
            f"{x.get('score_before') or '-'} → {x.get('score_after') or '-'}" if x.get("score_before") else ""
        )
        verdicts = ", ".join(
            f"{n} {v}" for v, n in (x.get("verdicts") or {}).items() if n and v != "unchanged"
        )
        table.add_row(
            str(x["round"]),
            f"[{colours.get(x['decision'], '')}]{x['decision']}[/]",
            score,
            escape(", ".join(x.get("files") or [])),
            escape(verdicts),
            escape(x.get("reason", "")),
        )
    out.print(table)


@cli.command("ask")
@click.argument("run_id")
@click.argument("question")
@runs_option
@engine_options
@click.option(
    "--json", "as_json", is_flag=True, help="Stream events as JSON lines (the answer is the last one)."
)
def ask_command(run_id: str, question: str, store_path: Path | None, as_json: bool, **engine: Any) -> None:
    """Ask a follow-up question about an analysis: its root agent continues its conversation over the same
    store (compacted if it no longer fits), and the answer is added to the run and to its report.md.

    Give the same model options as the analysis (or others: a cheaper model for a quick question).
    """
    import asyncio

    from rich.live import Live
    from rich.markdown import Markdown

    from halo_rlm.analyses import ask
    from halo_rlm.engine import AgentOutputItem, AgentTextDelta, EngineError, RunView
    from halo_rlm.llm import LLMError
    from halo_rlm.store import StoreError

    run = find_run(run_id, store_path)
    if run.record.kind != "analysis":
        fail(f"run {run.id} is a {run.record.kind}, not an analysis; follow-ups continue an analysis")
    config = engine_config(engine, None)
    if not config.provider.configured:
        fail("a follow-up needs a model: set OPENAI_API_KEY (or --api-key), or --base-url for a local server")
    view = RunView()

    async def consume() -> AgentOutputItem | None:
        final = None
        async for event in ask(run, question, config):
            if as_json:
                kind = (
                    "text_delta" if isinstance(event, AgentTextDelta) else "report" if event.final else "item"
                )
                json_line(kind, event.model_dump(mode="json", exclude_none=True, exclude={"conversation"}))
            else:
                view.update(event)
            if isinstance(event, AgentOutputItem) and event.final:
                final = event
        return final

    live = (
        Live(
            get_renderable=lambda: agent_tree(view), console=err.console, refresh_per_second=8, transient=True
        )
        if err.is_terminal and not as_json
        else None
    )
    try:
        if live:
            with live:
                final = asyncio.run(consume())
        else:
            final = asyncio.run(consume())
    except (EngineError, LLMError, StoreError) as exc:
        fail("\n".join([str(exc), *getattr(exc, "__notes__", ())]))
    except KeyboardInterrupt:
        fail("interrupted", code=130)
    if final is None or final.report is None:
        fail("the follow-up ended without an answer")
    if not as_json:
        out.print(Markdown(final.report.answer or "(no answer)"))
        out.print(f"[dim]Added to run {run.id}: {escape(str(run.file('report.md')))}[/]")
