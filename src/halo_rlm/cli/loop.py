"""`halo loop`: run the agent, analyse, let a coding agent fix the harness, run again, keep what helped."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from halo_rlm.cli.analysis import engine_config, engine_options
from halo_rlm.cli.base import cli, err, escape, fail, json_line, out
from halo_rlm.cli.runs import find_run, print_rounds

PRESET_NAMES = ("claude", "codex", "cursor", "aider")


@cli.command("loop")
@click.option(
    "--run", "run_command", metavar="CMD", help="Shell command that runs the agent (e.g. on a benchmark)."
)
@click.option(
    "--fix",
    "fix_command",
    metavar="CMD|PRESET",
    help="Shell command of the coding agent (prompt on stdin, report in $HALO_REPORT), or a preset: "
    + ", ".join(PRESET_NAMES)
    + ".",
)
@click.option(
    "--score",
    "score_command",
    metavar="CMD",
    help="Shell command printing a score: a number, or k/n (task successes out of tasks).",
)
@click.option(
    "--repo",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="The agent's git repository (never modified: rounds work in worktrees).",
)
@click.option("--base", default="HEAD", show_default=True, help="Commit to start from.")
@click.option("--rounds", type=click.IntRange(1), default=3, show_default=True)
@click.option(
    "-p", "--prompt", help="What the analysis should look for (default: systemic failures and fixes)."
)
@click.option(
    "--outcome",
    metavar="ATTR",
    help="Per-trace outcome attribute the comparison reads, e.g. support.resolved.",
)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.05,
    show_default=True,
    help="Significance level for keeping a change.",
)
@click.option("--run-timeout", type=click.FloatRange(1), default=3600, show_default=True, help="Seconds.")
@click.option("--fix-timeout", type=click.FloatRange(1), default=1800, show_default=True, help="Seconds.")
@click.option("--score-timeout", type=click.FloatRange(1), default=600, show_default=True, help="Seconds.")
@click.option("--resume", "resume_id", metavar="RUN", help="Carry on an interrupted loop.")
@engine_options
@click.option("--json", "as_json", is_flag=True, help="Events as JSON lines; the run's record last.")
def loop_command(
    run_command: str | None,
    fix_command: str | None,
    score_command: str | None,
    repo: Path,
    base: str,
    rounds: int,
    prompt: str | None,
    outcome: str | None,
    alpha: float,
    run_timeout: float,
    fix_timeout: float,
    score_timeout: float,
    resume_id: str | None,
    as_json: bool,
    **engine: Any,
) -> None:
    """Improve an agent in rounds: run it with tracing, analyse its traces, have a coding agent fix what the
    report names, run it again, compare, and keep the change only if it helped.

    \b
    Each round, in a git worktree on a branch of its own (halo/loop-RUN/round-N):
      1. the --run command runs with $HALO_TRACES_PATH (a fresh trace file) and the standard
         OTEL_EXPORTER_OTLP_* variables (an embedded collector) set;
      2. its traces are analysed: the detectors, plus the model when one is configured;
      3. the --fix command runs with the prompt on stdin and the report's path in $HALO_REPORT;
      4. the agent runs again on the changed code; the --score command prints a number;
      5. the change is kept (committed) when the score or the failures the report named improved
         significantly and nothing got significantly worse, else discarded (its diff stays in the
         run folder). The next round starts from the last kept change.
    Your working tree is never touched. Ctrl-C stops the command under way, removes the round's worktree
    and branch; `halo loop --resume RUN` carries on. Every round is recorded (halo runs show RUN).
    """
    from halo_rlm import loop
    from halo_rlm.runs import RunRegistry

    config = engine_config(engine, None)
    analysis_engine = config if config.provider.configured else None
    progress: Callable[[Mapping[str, Any]], None] = (
        (lambda e: json_line(str(e["type"]), e)) if as_json else _print_event
    )
    registry = RunRegistry.beside(None)
    try:
        if resume_id:
            run = find_run(resume_id, None)
            if not as_json:
                err.print(f"[dim]Resuming loop {run.id}[/]")
            run = loop.resume(run, progress=progress, engine=analysis_engine)
        else:
            if not run_command or not fix_command:
                fail(
                    "give --run (the agent command) and --fix (the coding agent, or a preset), or --resume RUN"
                )
            settings = loop.LoopConfig(
                run=run_command,
                fix=loop.PRESETS.get(fix_command, fix_command),
                score=score_command,
                repo=repo,
                base=base,
                rounds=rounds,
                prompt=prompt or loop.DEFAULT_ANALYSIS_PROMPT,
                outcome=outcome,
                alpha=alpha,
                run_timeout=run_timeout,
                fix_timeout=fix_timeout,
                score_timeout=score_timeout,
            )
            run = loop.start(settings, registry, source="cli", progress=progress, engine=analysis_engine)
    except loop.LoopError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        err.print(
            "[yellow]Interrupted: the round's worktree and branch were removed.[/] "
            "Carry on with: halo loop --resume " + _last_loop_id(registry)
        )
        sys.exit(130)
    if as_json:
        json_line("result", run.record.model_dump(mode="json"))
        return
    summary = run.record.summary
    print_rounds(summary.get("rounds", []), baseline=summary.get("baseline_score"))
    best = [r for r in summary.get("rounds", []) if r["decision"] == "kept"]
    if best:
        out.print(
            f"Best version: branch [bold]{escape(best[-1]['branch'])}[/] (git diff {escape(base)}..."
            f"{escape(best[-1]['branch'])})"
        )
    else:
        out.print("No change was kept.")
    out.print(f"[dim]Run {run.id}: {escape(str(run.folder))}[/]")


def _last_loop_id(registry: Any) -> str:
    loops = registry.runs(kind="loop", limit=1)
    return loops[0].id if loops else "RUN"


def _print_event(event: Mapping[str, Any]) -> None:
    kind = event.get("type")
    if kind == "baseline":
        err.print(f"[bold]Baseline[/] at {escape(event['commit'][:12])}")
    elif kind == "round":
        err.print(f"[bold]Round {event['round']}[/] from {escape(event['base'][:12])}")
    elif kind in ("run", "fix"):
        err.print(f"  [dim]{kind}:[/] {escape(event['command'])}")
    elif kind == "measured":
        score = f", score {event['score']}" if event.get("score") else ""
        err.print(f"  [dim]{event['traces']:,} traces, {event['findings']} findings{escape(score)}[/]")
    elif kind == "round_end":
        colour = {"kept": "green", "discarded": "yellow"}.get(event["decision"], "red")
        err.print(f"  [{colour}]{event['decision']}[/]: {escape(event['reason'])}")
    elif kind == "warning":
        err.print(f"[yellow]⚠ {escape(event['message'])}[/]")
