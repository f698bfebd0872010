"""`halo eval`: score an analysis against labelled truth."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from halo_rlm.cli.analysis import engine_config, engine_options
from halo_rlm.cli.base import cli, emit_json, err, escape, fail, json_option, out

if TYPE_CHECKING:
    from halo_rlm.engine import EngineConfig
    from halo_rlm.evaluate import EvalResult
    from halo_rlm.report import Report
    from halo_rlm.store import TraceStore


@cli.command("eval")
@click.option(
    "--simulate",
    "simulate_traces",
    type=click.IntRange(10),
    metavar="N",
    help="Simulate N traces with planted failures, analyse them, and score the report.",
)
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the simulated corpus.")
@click.option(
    "--truth",
    "truth_files",
    nargs=2,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="TRUTH REPORT",
    help="Score a report.json against a simulate truth file.",
)
@click.option(
    "--trail",
    "trail_folder",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Score against the TRAIL benchmark in this local folder (its traces and annotations).",
)
@click.option("-p", "--prompt", help="What the analysis should look for (with a model).")
@click.option(
    "--work",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the corpus, store and report (default: a temporary one).",
)
@engine_options
@json_option
def eval_command(
    simulate_traces: int | None,
    seed: int,
    truth_files: tuple[Path, Path] | None,
    trail_folder: Path | None,
    prompt: str | None,
    work: Path | None,
    as_json: bool,
    **engine: Any,
) -> None:
    """Measure an analysis against labelled truth, to compare models, prompts and budgets.

    \b
      halo eval --simulate 2000 --seed 3            the detectors (or, with a model, the engine) on a
                                                    simulated corpus with planted failures
      halo eval --truth corpus.truth.json report.json
                                                    any report against a simulated corpus's truth
      halo eval --trail ./TRAIL                     TRAIL's traces and annotations from a local folder

    Prints recall, precision, the error of affected-trace counts, how much of the report's evidence holds
    up against the store, and the tokens, cost and time the analysis took (TRAIL: category F1, location
    and joint accuracy). With a model configured (OPENAI_API_KEY, --api-key or --base-url) the engine
    analyses; without one, the detectors.
    """
    from halo_rlm import evaluate
    from halo_rlm.runs import RunRegistry
    from halo_rlm.simulate import GroundTruth
    from halo_rlm.store import StoreError, TraceStore
    from halo_rlm.trail import TrailError

    chosen = [x for x in (simulate_traces, truth_files, trail_folder) if x]
    if len(chosen) != 1:
        fail("give one of --simulate N, --truth TRUTH REPORT, or --trail FOLDER")
    config = engine_config(engine, None)
    analyst = _engine_analyst(config, prompt) if config.provider.configured else evaluate.detectors
    mode = f"model {config.model}" if config.provider.configured else "detectors"
    folder = work or Path(tempfile.mkdtemp(prefix="halo-eval-"))
    if not as_json:
        err.print(f"[dim]Evaluating the {escape(mode)}; files in {escape(str(folder))}[/]")
    try:
        if simulate_traces:
            result = evaluate.evaluate_simulated(simulate_traces, seed, folder, analyst=analyst)
        elif truth_files:
            truth, report = truth_files
            corpus = GroundTruth.load(truth).traces_path
            if not corpus.exists():  # the report's evidence is checked against the corpus when it is here
                result = evaluate.evaluate_truth(truth, report)
            else:
                with TraceStore.open(folder / "truth.duckdb") as writable:
                    writable.ingest([str(corpus)])
                with TraceStore.open(folder / "truth.duckdb", read_only=True) as store:
                    result = evaluate.evaluate_truth(truth, report, store)
        else:
            assert trail_folder is not None
            result = evaluate.evaluate_trail(trail_folder, folder, analyst=analyst)
    except (StoreError, TrailError, OSError, ValueError) as exc:
        fail(str(exc))
    run = RunRegistry.beside(None).create(
        "eval",
        source="cli",
        prompt=prompt,
        inputs=[result.truth],
        models={"analysis": mode},
        summary=_summary(result),
    )
    run.finish(
        "completed",
        result.truth,
        usage={"tokens": result.tokens, "cost_usd": result.cost_usd, "seconds": result.seconds},
    )
    if as_json:
        emit_json(result)
        return
    print_result(result)
    out.print(f"[dim]Recorded as run {run.id}[/]")


def _summary(result: EvalResult) -> dict[str, Any]:
    summary: dict[str, Any] = {"evidence_validity": round(result.evidence_validity, 4)}
    if result.planted:
        summary |= {
            "recall": round(result.planted.recall, 4),
            "precision": round(result.planted.precision, 4),
            "worst_count_error": round(result.planted.worst_count_error, 4),
        }
    if result.trail:
        summary |= {"trail": result.trail}
    return summary


def _engine_analyst(config: EngineConfig, prompt: str | None) -> Any:
    """The engine as an analyst for `evaluate`: the report of one run over the store."""
    import asyncio

    from halo_rlm.defaults import DEFAULT_PROMPT
    from halo_rlm.engine import AgentOutputItem, stream_engine_async

    def analyse(store: TraceStore, out_dir: Path) -> Report:
        async def go() -> Report:
            final = None
            async for event in stream_engine_async(
                prompt or DEFAULT_PROMPT, config.model_copy(update={"out_dir": out_dir}), store=store
            ):
                if isinstance(event, AgentOutputItem) and event.final:
                    final = event
            if final is None or final.report is None:
                fail("the analysis ended without a report")
            return final.report

        return asyncio.run(go())

    return analyse


def print_result(result: EvalResult) -> None:
    out.print(
        f"[bold]{escape(result.truth)}[/] · {result.mode} · {result.traces:,} traces, "
        f"{result.findings} findings"
    )
    rows: list[tuple[str, str]] = []
    if result.planted:
        p = result.planted
        rows += [
            (
                "recall",
                f"{p.recall:.3f} ({len(p.systemic) - len(p.missed)} of {len(p.systemic)} planted "
                f"patterns in ≥ 2% of traces)",
            ),
            (
                "precision",
                f"{p.precision:.3f} ({p.found - len(p.false_positives)} of {p.found} findings "
                f"match a pattern)",
            ),
            ("count error", f"worst {p.worst_count_error:.3f}, mean {p.mean_count_error:.3f}"),
        ]
        if p.missed:
            rows.append(("missed", ", ".join(p.missed)))
        if p.false_positives:
            rows.append(("false positives", ", ".join(p.false_positives)))
    if result.trail:
        t = result.trail
        rows += [
            ("category F1", f"{t['category_f1']:.3f}"),
            ("location accuracy", f"{t['location_accuracy']:.3f}"),
            ("joint accuracy", f"{t['joint_accuracy']:.3f}"),
            ("errors", f"{t['annotated_errors']} annotated, {t['predicted_errors']} predicted"),
        ]
    rows += [
        ("evidence validity", f"{result.evidence_validity:.3f} of {result.evidence} cited items"),
        ("tokens", f"{result.tokens:,}"),
        ("cost", f"${result.cost_usd:.4f}"),
        ("time", f"{result.seconds:.1f} s"),
    ]
    for name, value in rows:
        out.print(f"  [dim]{name:>18}[/]  {escape(value)}")
