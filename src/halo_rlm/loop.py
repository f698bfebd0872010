"""`halo loop`: run the agent, find what fails, let a coding agent fix the harness, run again, and keep a change
only when the comparison says it helped.

Each round works in a git worktree of the repository, on a branch of its own:

1. the agent command runs with tracing pointed at a fresh trace file (`HALO_TRACES_PATH`) and at an embedded
   OTLP collector (`OTEL_EXPORTER_OTLP_ENDPOINT`), so any OpenTelemetry-instrumented agent is traced;
2. its traces are analysed (the detectors, and the model when one is configured), and the report written;
3. the fix command runs in a new worktree with the prompt on stdin, the report in `HALO_REPORT`;
4. the agent runs again on the changed code, and the score command (if any) prints a number;
5. `halo compare` of the two trace sets, and the scores, decide: the change is kept (committed on the round's
   branch, and the next round starts from it) when the score or the failures the report named improved
   significantly and nothing got significantly worse; otherwise it is discarded (the diff stays in the run
   folder).

The user's working tree is never touched: worktrees live in the run's folder, and only `.git` gains branches
and worktree entries (pruned when a round ends). Every command has a time limit and its output is kept in the
run folder. Ctrl-C kills the command under way, removes the round's worktree and branch, and records the run
as interrupted; `resume()` carries on from the last finished round.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from halo_rlm import compare, render, runs
from halo_rlm.collect import serve
from halo_rlm.detect import Thresholds, analyze
from halo_rlm.engine import AgentOutputItem, EngineConfig, EngineError, stream_engine_async
from halo_rlm.llm import LLMError
from halo_rlm.report import Report
from halo_rlm.store import StoreError, TraceStore
from halo_rlm.verify import verify

PRESETS: dict[str, str] = {
    # Each reads the prompt on stdin; HALO_PROMPT_FILE holds it too, for tools that take a file.
    "claude": "claude -p --permission-mode acceptEdits",
    "codex": "codex exec --sandbox workspace-write -",
    "cursor": 'cursor-agent -p --force "Fix the agent as the HALO report below says."',
    "aider": 'aider --yes-always --no-auto-commits --message-file "$HALO_PROMPT_FILE"',
}
FIX_PROMPT = """\
HALO analysed traces of the agent in this repository (an OpenTelemetry trace of each run) and found the
failures below. The full report, with evidence from the traces, is at {report} (report.json beside it).

Change the agent's harness to fix the findings at the top of the report: its prompts, tool schemas and
descriptions, retry policies, limits and error handling. Make small, focused changes. Do not change the
benchmark, its tasks, its scorer or the tests to make the numbers look better: the change will be measured
by running the agent again and comparing the traces.

{findings}
"""
DEFAULT_ANALYSIS_PROMPT = (
    "Find the systemic failures of this agent and the harness changes that would fix them."
)
Decision = Literal["kept", "discarded", "failed", "unchanged", "interrupted"]
SCORE_FRACTION = re.compile(r"(\d+)\s*/\s*(\d+)")
SCORE_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class LoopError(Exception):
    """The loop cannot start or carry on; the message says why and what to do."""


class LoopConfig(BaseModel):
    run: str = Field(description="Shell command that runs the agent (on the benchmark, or on sample inputs)")
    fix: str = Field(description="Shell command of the coding agent; gets the prompt on stdin, HALO_REPORT")
    score: str | None = Field(None, description="Shell command printing a score (a number, or k/n)")
    repo: Path
    base: str = "HEAD"
    rounds: int = Field(3, ge=1)
    prompt: str = DEFAULT_ANALYSIS_PROMPT
    outcome: str | None = Field(None, description="Per-trace outcome attribute for the comparison")
    alpha: float = Field(compare.ALPHA, gt=0, lt=1)
    run_timeout: float = 3600.0
    fix_timeout: float = 1800.0
    score_timeout: float = 600.0
    min_traces: int = 2
    min_share: float = 0.005


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_code: int | None  # None: killed at its time limit
    seconds: float
    stdout: Path
    stderr: Path

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def failure(self, what: str, limit: float) -> str:
        if self.exit_code is None:
            return f"the {what} command did not finish within {limit:g} s and was stopped ({self.stderr})"
        tail = _tail(self.stderr) or _tail(self.stdout)
        return (
            f"the {what} command exited {self.exit_code} after {self.seconds:.1f} s"
            + (f": {tail}" if tail else "")
            + f" (output in {self.stdout.parent})"
        )


class Score(BaseModel):
    value: float
    successes: int | None = None
    total: int | None = None
    text: str = ""


class Side(BaseModel):
    """One measured version of the agent: its commit, traces, report and score."""

    commit: str
    folder: str
    store: str
    report: str
    traces: int
    findings: int
    score: Score | None = None


class RoundRecord(BaseModel):
    number: int
    branch: str
    decision: Decision
    reason: str
    before: Side | None = None
    after: Side | None = None
    diff: str | None = None
    files_changed: list[str] = Field(default_factory=list)
    comparison: str | None = None
    verdicts: dict[str, int] = Field(default_factory=dict)
    score_p_value: float | None = None
    seconds: float = 0.0


class LoopState(BaseModel):
    config: LoopConfig
    base_commit: str
    baseline: Side | None = None
    best: Side | None = None
    rounds: list[RoundRecord] = Field(default_factory=list)


Progress = Callable[[Mapping[str, Any]], None]


def start(
    config: LoopConfig,
    registry: runs.RunRegistry,
    *,
    source: str = "python",
    progress: Progress | None = None,
    engine: EngineConfig | None = None,
) -> runs.Run:
    """Start a loop recorded in `registry` and run it to the end; returns its run. With `engine` (a model
    provider configured), each version's traces are analysed by the engine, else by the detectors. The
    engine's settings are not stored (they may hold a key): give them again to `resume`."""
    repo = _toplevel(config.repo)
    config = config.model_copy(update={"repo": repo})
    base_commit = _git(repo, "rev-parse", "--verify", f"{config.base}^{{commit}}").strip()
    run = registry.create(
        "loop",
        source=source,
        prompt=config.prompt,
        inputs=[str(repo)],
        models={"analysis": engine.model} if engine else {"analysis": "detectors"},
        budgets={
            "rounds": config.rounds,
            "run_timeout": config.run_timeout,
            "fix_timeout": config.fix_timeout,
            "score_timeout": config.score_timeout,
        },
    )
    state = LoopState(config=config, base_commit=base_commit)
    _save(run, state)
    return _drive(run, state, progress, engine)


def resume(
    run: runs.Run, *, progress: Progress | None = None, engine: EngineConfig | None = None
) -> runs.Run:
    """Carry on an interrupted or failed loop from its last finished round."""
    if run.record.kind != "loop":
        raise LoopError(f"run {run.id} is {run.record.kind!r}, not a loop")
    if run.record.status == "completed":
        raise LoopError(f"loop {run.id} has finished all its rounds")
    state = LoopState.model_validate(run.record.summary["state"])
    state.rounds = [r for r in state.rounds if r.decision != "interrupted"]
    run.update(status="running", reason="", finished_at=None)
    return _drive(run, state, progress, engine)


def _drive(
    run: runs.Run, state: LoopState, progress: Progress | None, engine: EngineConfig | None
) -> runs.Run:
    loop = _Loop(run, state, progress or (lambda event: None), engine)
    try:
        loop.go()
    except KeyboardInterrupt:
        run.finish(
            "interrupted",
            f"Ctrl-C during round {len(state.rounds) + (state.best is not None)}; "
            f"resume with `halo loop --resume {run.id}`",
        )
        raise
    except LoopError as exc:
        run.finish("failed", str(exc))
        raise
    run.finish(
        "completed", f"{len(state.rounds)} rounds; best: {state.best.commit[:12] if state.best else '-'}"
    )
    return run


class _Loop:
    def __init__(
        self, run: runs.Run, state: LoopState, progress: Progress, engine: EngineConfig | None
    ) -> None:
        self.run, self.state, self.progress, self.engine = run, state, progress, engine
        self.config = state.config
        self.repo = Path(self.config.repo)

    def emit(self, **event: Any) -> None:
        self.run.log(event)
        self.progress(event)

    def go(self) -> None:
        _git(self.repo, "worktree", "prune")
        dirty = _git(self.repo, "status", "--porcelain").strip()
        if dirty:
            self.emit(
                type="warning",
                message=f"{self.repo} has uncommitted changes; the loop starts from commit "
                f"{self.state.base_commit[:12]} and leaves them alone",
            )
        if self.state.best is None:
            self.state.best = self.state.baseline = self.baseline()
            _save(self.run, self.state)
        while len(self.state.rounds) < self.config.rounds:
            self.round(len(self.state.rounds) + 1)

    def baseline(self) -> Side:
        folder = self.run.path("round-0")
        worktree = self.run.path("worktrees") / "round-0"
        self.emit(type="baseline", commit=self.state.base_commit)
        _git(self.repo, "worktree", "add", "--detach", str(worktree), self.state.base_commit)
        try:
            return self.measure(worktree, folder, self.state.base_commit, round_number=0)
        except _StepFailed as exc:
            raise LoopError(f"the baseline could not be measured: {exc}") from None
        finally:
            _remove_worktree(self.repo, worktree, None)

    def round(self, number: int) -> None:
        best = self.state.best
        assert best is not None
        started = time.monotonic()
        folder = self.run.path(f"round-{number}")
        folder.mkdir(parents=True, exist_ok=True)
        worktree = self.run.path("worktrees") / f"round-{number}"
        branch = f"halo/loop-{self.run.id}/round-{number}"
        record = RoundRecord(number=number, branch=branch, decision="interrupted", reason="", before=best)
        self.emit(type="round", round=number, base=best.commit)
        _git(self.repo, "worktree", "add", "-b", branch, str(worktree), best.commit)
        keep = False
        try:
            record.decision, record.reason = self.fix_and_measure(number, worktree, folder, record)
            keep = record.decision == "kept"
        except KeyboardInterrupt:
            record.reason = "interrupted by Ctrl-C"
            self.state.rounds.append(record)
            _save(self.run, self.state)
            _remove_worktree(self.repo, worktree, branch)
            raise
        finally:
            record.seconds = round(time.monotonic() - started, 3)
        if keep:
            identity = (
                []
                if _has_identity(worktree)
                else ["-c", "user.name=HALO loop", "-c", "user.email=halo@localhost"]
            )
            _git(
                worktree,
                *identity,
                "commit",
                "--no-verify",
                "--quiet",
                "-m",
                f"HALO loop {self.run.id}, round {number}: {record.reason}",
            )
            assert record.after is not None
            record.after.commit = _git(worktree, "rev-parse", "HEAD").strip()
            self.state.best = record.after
        _remove_worktree(self.repo, worktree, None if keep else branch)
        self.state.rounds.append(record)
        _save(self.run, self.state)
        self.emit(
            type="round_end",
            round=number,
            decision=record.decision,
            reason=record.reason,
            score_before=_score_text(record.before),
            score_after=_score_text(record.after),
        )

    def fix_and_measure(
        self, number: int, worktree: Path, folder: Path, record: RoundRecord
    ) -> tuple[Decision, str]:
        best = self.state.best
        assert best is not None
        report_md = Path(best.report) / "report.md"
        report = Report.model_validate_json((Path(best.report) / "report.json").read_text("utf-8"))
        prompt = fix_prompt(report, report_md)
        (folder / "prompt.md").write_text(prompt, encoding="utf-8")
        env = {
            "HALO_REPORT": str(report_md),
            "HALO_PROMPT_FILE": str(folder / "prompt.md"),
            "HALO_ROUND": str(number),
            "HALO_RUN_DIR": str(folder),
            "HALO_LOOP_RUN": self.run.id,
        }
        self.emit(type="fix", round=number, command=self.config.fix)
        fixed = run_command(
            self.config.fix,
            cwd=worktree,
            env=env,
            stdin=prompt,
            folder=folder,
            name="fix",
            timeout=self.config.fix_timeout,
        )
        if not fixed.ok:
            return "failed", fixed.failure("fix", self.config.fix_timeout)
        _git(worktree, "add", "-A")
        diff = _git(worktree, "diff", "--cached", "--binary", best.commit)
        record.files_changed = [
            line
            for line in _git(worktree, "diff", "--cached", "--name-only", best.commit).splitlines()
            if line
        ]
        if not diff.strip():
            return "unchanged", "the fix command changed nothing"
        (folder / "change.diff").write_text(diff, encoding="utf-8")
        record.diff = str(folder / "change.diff")
        self.run.add_file(f"round-{number}/change.diff", folder / "change.diff")
        try:
            after = self.measure(worktree, folder / "after", "(uncommitted)", round_number=number)
        except _StepFailed as exc:
            return "discarded", f"{exc} after the change"
        record.after = after
        return self.decide(number, folder, record)

    def decide(self, number: int, folder: Path, record: RoundRecord) -> tuple[Decision, str]:
        before, after = record.before, record.after
        assert before is not None and after is not None
        with (
            TraceStore.open(before.store, read_only=True) as b,
            TraceStore.open(after.store, read_only=True) as a,
        ):
            comparison = compare.compare_stores(
                b,
                a,
                compare.load_report(Path(before.report)),
                compare.load_report(Path(after.report)),
                before_label=f"round {number - 1 if number > 1 else 0} ({before.commit[:12]})",
                after_label=f"round {number}",
                outcome=self.config.outcome,
                alpha=self.config.alpha,
            )
        paths = compare.write(comparison, folder / "compare")
        record.comparison = str(paths["markdown"])
        self.run.add_file(f"round-{number}/compare.md", paths["markdown"])
        record.verdicts = comparison.verdicts
        targeted = {compare.match_key(f) for f in compare.load_report(Path(before.report)).findings}
        improved = [
            r.id
            for r in comparison.failures
            if r.stratum is None and r.verdict in ("fixed", "improved") and r.id in targeted
        ]
        worse = comparison.regressions("any-regression")
        worse = [w for w in worse if not w.startswith(("duration_", "tokens", "cost"))]
        score_change, p_value = score_change_of(before.score, after.score, self.config.alpha)
        record.score_p_value = p_value
        if score_change == "worse":
            worse.append(f"score {_score_text(before)} → {_score_text(after)}")
        if worse:
            return "discarded", "worse: " + "; ".join(worse)
        reasons = []
        if score_change == "better":
            reasons.append(f"score {_score_text(before)} → {_score_text(after)}")
        if improved:
            reasons.append("fixed or improved: " + ", ".join(improved))
        better_outcome = [
            r.metric
            for r in comparison.outcomes
            if r.stratum is None and r.change == "better" and r.metric in ("outcome", "error_rate")
        ]
        if better_outcome and not reasons:
            reasons.append("better: " + ", ".join(better_outcome))
        if not reasons:
            return "discarded", "no significant improvement" + (
                f" (score {_score_text(before)} → {_score_text(after)})" if after.score else ""
            )
        return "kept", "; ".join(reasons)

    def measure(self, worktree: Path, folder: Path, commit: str, *, round_number: int) -> Side:
        """Run the agent in `worktree` with tracing, analyse the traces, and run the score command."""
        folder.mkdir(parents=True, exist_ok=True)
        traces = folder / "traces.jsonl"
        collected = folder / "collected.jsonl"
        self.emit(type="run", round=round_number, command=self.config.run)
        with serve(out=collected, port=0) as collector:
            env = {
                "HALO_TRACES_PATH": str(traces),
                "HALO_RUN_DIR": str(folder),
                "HALO_ROUND": str(round_number),
                "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_TRACES_EXPORTER": "otlp",
            }
            ran = run_command(
                self.config.run,
                cwd=worktree,
                env=env,
                stdin=None,
                folder=folder,
                name="run",
                timeout=self.config.run_timeout,
            )
        if not ran.ok:
            raise _StepFailed(ran.failure("agent", self.config.run_timeout))
        inputs = [str(p) for p in (traces, collected) if p.exists() and p.stat().st_size]
        if not inputs:
            raise _StepFailed(
                f"the agent command wrote no traces (to $HALO_TRACES_PATH or the OTLP endpoint); "
                f"output in {folder}"
            )
        store_path = folder / "traces.duckdb"
        with TraceStore.open(store_path) as store:
            store.ingest(inputs)
        report = self.analyse(store_path, inputs, folder / "report")
        score = None
        if self.config.score:
            scored = run_command(
                self.config.score,
                cwd=worktree,
                env=env,
                stdin=None,
                folder=folder,
                name="score",
                timeout=self.config.score_timeout,
            )
            if not scored.ok:
                raise _StepFailed(scored.failure("score", self.config.score_timeout))
            score = parse_score(scored.stdout.read_text("utf-8", errors="replace"))
            if score is None:
                raise _StepFailed(f"the score command printed no number ({scored.stdout})")
        side = Side(
            commit=commit,
            folder=str(folder),
            store=str(store_path),
            report=str(folder / "report"),
            traces=report.dataset.traces,
            findings=len(report.findings),
            score=score,
        )
        self.emit(
            type="measured",
            round=round_number,
            traces=side.traces,
            findings=side.findings,
            score=_score_text(side),
        )
        return side

    def analyse(self, store_path: Path, inputs: list[str], out_dir: Path) -> Report:
        """The report on one version's traces: the engine's when a model is configured, else the detectors'."""
        if self.engine is not None and self.engine.provider.configured:
            report = asyncio.run(_engine_report(self.config.prompt, self.engine, store_path))
        else:
            with TraceStore.open(store_path, read_only=True) as store:
                report = analyze(
                    store,
                    thresholds=Thresholds(min_traces=self.config.min_traces, min_share=self.config.min_share),
                    inputs=inputs,
                )
                verify(report, store)
            report.prompt = self.config.prompt
        render.write(report, out_dir)
        return report


async def _engine_report(prompt: str, engine: EngineConfig, store_path: Path) -> Report:
    final = None
    try:
        with TraceStore.open(store_path, read_only=True) as store:
            async for event in stream_engine_async(
                prompt, engine.model_copy(update={"out_dir": None}), store=store
            ):
                if isinstance(event, AgentOutputItem) and event.final:
                    final = event
    except (EngineError, LLMError, StoreError) as exc:
        raise _StepFailed(f"the analysis failed: {exc}") from exc
    if final is None or final.report is None:
        raise _StepFailed("the analysis ended without a report")
    return final.report


class _StepFailed(Exception):
    pass


def fix_prompt(report: Report, report_path: Path, *, top: int = 5) -> str:
    """The prompt the fix command gets: what to do, and the top findings with their recommendations."""
    lines = []
    for i, f in enumerate(report.findings[:top], 1):
        lines.append(f"{i}. {f.title} ({f.category}, {f.affected_traces} of {report.dataset.traces} traces)")
        lines.append(f"   Fix: {f.recommendation}")
    findings = "\n".join(lines) if lines else "The report has no findings; look for what the traces show."
    return FIX_PROMPT.format(report=report_path, findings=findings)


def parse_score(text: str) -> Score | None:
    """The score in a command's output: its last line with a number; `k/n` is a count of successes."""
    for line in reversed([line for line in text.splitlines() if line.strip()]):
        fraction = SCORE_FRACTION.search(line)
        if fraction and int(fraction.group(2)) > 0:
            k, n = int(fraction.group(1)), int(fraction.group(2))
            return Score(value=k / n, successes=k, total=n, text=line.strip()[:200])
        number = SCORE_NUMBER.search(line)
        if number:
            value = float(number.group(0))
            if math.isfinite(value):
                return Score(value=value, text=line.strip()[:200])
    return None


def score_change_of(
    before: Score | None, after: Score | None, alpha: float
) -> tuple[Literal["better", "worse", "unchanged"], float | None]:
    """Whether the score moved: with success counts, by the two-proportion test at `alpha`; with bare
    numbers (which carry no sampling error HALO could test), any increase is better and any drop worse."""
    if before is None or after is None:
        return "unchanged", None
    if before.total and after.total and before.successes is not None and after.successes is not None:
        p, _ = compare.proportion_test(
            compare.Counts(before.successes, before.total), compare.Counts(after.successes, after.total)
        )
        if p >= alpha or after.value == before.value:
            return "unchanged", p
        return ("better" if after.value > before.value else "worse"), p
    if after.value == before.value:
        return "unchanged", None
    return ("better" if after.value > before.value else "worse"), None


def run_command(
    command: str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    stdin: str | None,
    folder: Path,
    name: str,
    timeout: float,
) -> CommandResult:
    """Run a shell command in its own process group, output to `folder/<name>.out|.err`; on time out or
    Ctrl-C the whole group is killed."""
    folder.mkdir(parents=True, exist_ok=True)
    stdout, stderr = folder / f"{name}.out", folder / f"{name}.err"
    started = time.monotonic()
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        process = subprocess.Popen(
            command,
            shell=True,
            cwd=cwd,
            env={**os.environ, **env},
            stdout=out,
            stderr=err,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            start_new_session=sys.platform != "win32",
        )
        try:
            if stdin is not None and process.stdin is not None:
                try:
                    process.stdin.write(stdin.encode())
                    process.stdin.close()
                except BrokenPipeError:
                    pass  # the command did not read its prompt; its exit code says the rest
            try:
                code: int | None = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill(process)
                code = None
        except BaseException:
            _kill(process)
            raise
    return CommandResult(command, code, round(time.monotonic() - started, 3), stdout, stderr)


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    try:
        if sys.platform != "win32":
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
    except ProcessLookupError:
        pass
    process.wait()


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text("utf-8", errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])[:500]


def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LoopError(
            f"git {' '.join(shlex.quote(a) for a in args)} in {repo} failed: "
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    return result.stdout


def _toplevel(repo: Path) -> Path:
    if shutil.which("git") is None:
        raise LoopError("git is not installed; halo loop works on a git repository")
    try:
        return Path(_git(Path(repo), "rev-parse", "--show-toplevel").strip())
    except LoopError:
        raise LoopError(f"{repo} is not a git repository; give the agent's repository with --repo") from None


def _has_identity(worktree: Path) -> bool:
    result = subprocess.run(
        ["git", "-C", str(worktree), "config", "user.email"], capture_output=True, text=True, check=False
    )
    return bool(result.stdout.strip())


def _remove_worktree(repo: Path, worktree: Path, branch: str | None) -> None:
    if worktree.exists():
        subprocess.run(
            ["git", "-C", str(repo), "worktree", "remove", "--force", str(worktree)],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(worktree, ignore_errors=True)
    subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True, check=False)
    if branch:
        subprocess.run(["git", "-C", str(repo), "branch", "-D", branch], capture_output=True, check=False)


def _save(run: runs.Run, state: LoopState) -> None:
    run.update(
        summary={
            "state": state.model_dump(mode="json"),
            "rounds": [_row(r) for r in state.rounds],
            "best": state.best.commit if state.best else None,
            "baseline_score": _score_text(state.baseline),
        }
    )


def _row(r: RoundRecord) -> dict[str, Any]:
    return {
        "round": r.number,
        "decision": r.decision,
        "reason": r.reason,
        "branch": r.branch,
        "files": r.files_changed,
        "score_before": _score_text(r.before),
        "score_after": _score_text(r.after),
        "verdicts": r.verdicts,
        "seconds": r.seconds,
    }


def _score_text(side: Side | None) -> str | None:
    if side is None or side.score is None:
        return None
    s = side.score
    return f"{s.successes}/{s.total}" if s.total else f"{s.value:g}"


__all__ = [
    "PRESETS",
    "CommandResult",
    "LoopConfig",
    "LoopError",
    "LoopState",
    "RoundRecord",
    "Score",
    "Side",
    "fix_prompt",
    "parse_score",
    "resume",
    "run_command",
    "score_change_of",
    "start",
]
