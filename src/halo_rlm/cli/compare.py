"""`halo compare BEFORE AFTER`: did the fix work?"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from halo_rlm.cli.base import cli, emit_json, err, escape, fail, ingest_with_progress, json_option, out

if TYPE_CHECKING:
    from halo_rlm.compare import Comparison
    from halo_rlm.report import Report

REGRESSION_EXIT = 3  # --fail-on tripped: distinct from errors (1) and usage mistakes (2)


def resolve_side(ref: str, *, quiet: bool) -> tuple[str, Report | None, str]:
    """A side of the comparison as (store path, its report if known, label): a run id (its store and
    report), a store file, or trace files (ingested into their store). The resolution is the library's
    (`halo_rlm.compare.resolve_side`), which the web app's compare page uses too."""
    from halo_rlm.compare import SideError
    from halo_rlm.compare import resolve_side as resolve

    try:
        side = resolve(ref)
        if side.kind == "files":
            ingest_with_progress(side.store, side.files, strict=False, quiet=quiet)
        return side.store, side.read_report(), side.label
    except SideError as exc:
        fail(str(exc))


@cli.command("compare")
@click.argument("before")
@click.argument("after")
@click.option(
    "--by",
    metavar="ATTR",
    help="Compare within strata: service, agent, root, model, or an attribute "
    "(e.g. scenario); rates are standardised to the pooled mix and tests stratified.",
)
@click.option(
    "--outcome",
    metavar="ATTR",
    help="A per-trace outcome attribute to compare (true/false, or a number), e.g. support.resolved.",
)
@click.option(
    "--lower-is-better", is_flag=True, help="The --outcome is better when lower (a cost, an error count)."
)
@click.option(
    "--fail-on",
    type=click.Choice(["worse", "new", "any-regression"]),
    help=f"Exit {REGRESSION_EXIT} when a failure got significantly worse (or an outcome did), a new "
    "one appeared, or either.",
)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.05,
    show_default=True,
    help="Significance level, after Holm's correction over every row.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap intervals.")
@click.option("--resamples", type=click.IntRange(100), default=1000, show_default=True)
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("halo-compare"),
    show_default=True,
    help="Folder for compare.json, compare.md, compare.html.",
)
@json_option
def compare_command(
    before: str,
    after: str,
    by: str | None,
    outcome: str | None,
    lower_is_better: bool,
    fail_on: str | None,
    alpha: float,
    seed: int,
    resamples: int,
    out_dir: Path,
    as_json: bool,
) -> None:
    """Compare two trace sets: did the failures the fix targeted go away, did anything get worse?

    BEFORE and AFTER are trace files, stores or run ids. For every failure found on either side (each
    detector finding, and every finding with a recount query, matched by category and key), the share of
    traces it affects before and after, the change with a 95% interval, a p-value corrected for the number
    of rows, and a verdict: fixed, improved, unchanged, worse, new. Per-trace outcomes (error-trace rate,
    --outcome, p50/p95 duration, tokens and cost per trace) get bootstrap intervals. A warning says when
    the two sets differ in mix (services, agents, root spans); --by compares within strata.
    """
    from halo_rlm.compare import compare_stores, write
    from halo_rlm.store import StoreError, TraceStore

    before_store, before_report, before_label = resolve_side(before, quiet=as_json)
    after_store, after_report, after_label = resolve_side(after, quiet=as_json)
    if not as_json and err.is_terminal:
        err.print("[dim]Comparing (the detectors run on a side without a report)…[/]")
    try:
        with (
            TraceStore.open(before_store, read_only=True) as b,
            TraceStore.open(after_store, read_only=True) as a,
        ):
            comparison = compare_stores(
                b,
                a,
                before_report,
                after_report,
                before_label=before_label,
                after_label=after_label,
                by=by,
                outcome=outcome,
                outcome_better="lower" if lower_is_better else "higher",
                alpha=alpha,
                resamples=resamples,
                seed=seed,
            )
    except StoreError as exc:
        fail(str(exc))
    paths = write(comparison, out_dir)
    if as_json:
        emit_json(comparison)
    else:
        print_comparison(comparison)
        out.print("Written: " + ", ".join(escape(str(p)) for p in paths.values()))
    if fail_on:
        tripped = comparison.regressions(fail_on)  # type: ignore[arg-type]
        if tripped:
            err.print(f"[bold red]--fail-on {fail_on}:[/] " + escape("; ".join(tripped)))
            sys.exit(REGRESSION_EXIT)


def print_comparison(c: Comparison, *, top: int = 25) -> None:
    from rich.table import Table

    from halo_rlm.compare import (
        CHANGE_MARKS,
        VERDICT_MARKS,
        outcome_change_text,
        pct,
        rate_change_text,
        value_text,
    )

    out.print(
        f"[bold]{escape(c.before)}[/] ({c.traces_before:,} traces) → [bold]{escape(c.after)}[/] "
        f"({c.traces_after:,} traces)" + (f", within strata of {escape(c.by)}" if c.by else "")
    )
    for warning in c.warnings:
        out.print(f"[yellow]⚠ {escape(warning)}[/]")
    colours = {"fixed": "green", "improved": "green", "better": "green", "worse": "red", "new": "red"}
    table = Table(show_edge=False, title="Failures")
    for column, justify in (
        ("verdict", "left"),
        ("failure", "left"),
        ("before", "right"),
        ("after", "right"),
        ("change (95% CI)", "right"),
        ("p (Holm)", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    rows = [r for r in c.failures if r.stratum is None][:top]
    for r in rows:
        colour = colours.get(r.verdict, "dim")
        table.add_row(
            f"[{colour}]{VERDICT_MARKS[r.verdict]}[/]",
            f"{escape(r.title)}\n[dim]{escape(r.id)}[/]",
            f"{r.affected_before:,} ({pct(r.rate_before)})",
            f"{r.affected_after:,} ({pct(r.rate_after)})",
            rate_change_text(r),
            f"{r.p_adjusted:.2g}",
        )
    if rows:
        out.print(table)
    outcomes = Table(show_edge=False, title="Outcomes per trace")
    for column in ("change", "metric", "before", "after", "change (95% CI)", "p (Holm)"):
        outcomes.add_column(column)
    for o in (o for o in c.outcomes if o.stratum is None):
        colour = colours.get(o.change, "dim")
        outcomes.add_row(
            f"[{colour}]{CHANGE_MARKS[o.change]}[/]",
            escape(o.label),
            value_text(o, o.before),
            value_text(o, o.after),
            outcome_change_text(o),
            f"{o.p_adjusted:.2g}",
        )
    out.print(outcomes)
    counts = ", ".join(f"{n} {v}" for v, n in c.verdicts.items() if n)
    out.print(
        f"Verdicts: {counts or 'no failures to compare'}"
        + (" · per-stratum rows in the files" if c.by else "")
    )
