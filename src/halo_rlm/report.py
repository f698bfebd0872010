"""The report: the contract between the detectors, the LLM engine, the CLI and the web UI.

A `Report` holds ranked `Finding`s, each with evidence a person (or a coding agent) can check by
hand and a concrete recommendation. `render` writes it as `report.json`, `report.md` and a
self-contained `report.html`; `verify` re-checks every claim against the trace store. The failure
categories are defined here, once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field

from halo_rlm.scrub import scrub_text
from halo_rlm.usage import Usage
from halo_rlm.utils import now_iso, one_line, terminal_safe

__all__ = [
    "CATEGORIES",
    "SEVERITY_WEIGHT",
    "AgentUsage",
    "Bucket",
    "BudgetName",
    "BudgetUse",
    "Budgets",
    "Category",
    "Check",
    "DatasetSummary",
    "Evidence",
    "Finding",
    "Impact",
    "Outcome",
    "Report",
    "RunUsage",
    "Severity",
    "Verification",
    "category",
    "cite",
    "code",
    "json_schema",
    "merge",
    "rank",
]

Category = Literal[
    "hallucinated_tool",
    "invalid_tool_arguments",
    "tool_error",
    "repetition_loop",
    "refusal",
    "max_turns",
    "timeout",
    "rate_limit",
    "latency",
    "cost",
    "context_overflow",
    "empty_or_truncated_output",
    "guardrail",
    "handoff",
    "other",
]
CATEGORIES: dict[Category, str] = {
    "hallucinated_tool": "The model calls a tool it was not offered, or one that does not exist.",
    "invalid_tool_arguments": "Tool calls whose arguments fail the tool's schema or validation.",
    "tool_error": "A tool fails the same way across runs (one error template, many ids and values).",
    "repetition_loop": "The same tool call, with the same arguments, repeated within one run.",
    "refusal": "The model refuses ordinary requests (any language).",
    "max_turns": "Runs that hit the turn or iteration limit, or give up without an answer.",
    "timeout": "Calls that time out.",
    "rate_limit": "Provider rate limits (429) and the retry storms they cause.",
    "latency": "A tool or model whose latency dominates the runs it appears in.",
    "cost": "Calls that use far more tokens (and money) than the rest.",
    "context_overflow": "Requests that exceed the model's context window.",
    "empty_or_truncated_output": "Model outputs that are empty or cut off by the output-token limit.",
    "guardrail": "Guardrails that trip and stop or alter runs.",
    "handoff": "Handoffs between agents that fail.",
    "other": "A repeated failure that fits no other category.",
}
Severity = Literal["critical", "high", "medium", "low"]
SEVERITY_WEIGHT: dict[str, float] = {"critical": 1.0, "high": 0.7, "medium": 0.4, "low": 0.2}
RANKING = (
    "Findings are ranked by score = 100 × (share of traces affected) × (severity weight: critical 1.0, "
    "high 0.7, medium 0.4, low 0.2) + 25 × (share of all run time it accounts for) + 25 × (share of all "
    "LLM cost it accounts for); ties go to the category, then the finding id."
)


class Evidence(BaseModel):
    """One example to check by hand."""

    trace_id: str
    span_id: str | None = None
    excerpt: str = Field(
        "",
        description="Text quoted from the span (error, arguments, output); '…' marks cuts. "
        "Verification checks it is really there.",
    )
    note: str = Field("", description="What this example shows, in words")


class Impact(BaseModel):
    """What the finding costs, over the affected traces."""

    errors: int = Field(0, description="Error spans attributable to it")
    extra_turns: int = Field(0, description="Calls or turns that would not have happened without it")
    latency_ms: float = Field(0, description="Run time attributable to it")
    tokens: int = Field(0, description="Tokens attributable to it")
    cost_usd: float = Field(0, description="LLM cost attributable to it")


class Check(BaseModel):
    """What `verify` found when it re-checked a finding against the store."""

    status: Literal["verified", "flagged", "unverifiable"]
    problems: list[str] = Field(default_factory=list)
    recount: int | None = Field(None, description="Affected traces recounted with the finding's query")


class Finding(BaseModel):
    id: str
    title: str
    category: Category
    severity: Severity
    affected_traces: int = Field(ge=0)
    affected_trace_share: float = Field(ge=0, le=1)
    impact: Impact = Field(default_factory=Impact)
    evidence: list[Evidence] = Field(default_factory=list)
    recommendation: str = Field(
        description="A concrete harness change: which prompt, tool schema, retry policy "
        "or limit to change, and how"
    )
    confidence: float = Field(ge=0, le=1)
    source: str = Field(description="The detector's name, or `llm`")
    key: str | None = Field(None, description="The tool, model, agent or guardrail involved")
    details: str = Field("", description="What was observed")
    query: str | None = Field(
        None, description="SQL returning the affected traces' trace_id; verify recounts it"
    )
    query_dialect: str | None = Field(None, description="The SQL dialect `query` is written in (e.g. duckdb)")
    root_cause: str = Field("", description="Why it happens, in the model's words (LLM analysis)")
    locations: list[str] = Field(
        default_factory=list,
        description="`path:line` in the agent's source (--repo-path) that the fix changes",
    )
    enriched_by: list[str] = Field(
        default_factory=list, description="Ids of the model's findings merged into this detector finding"
    )
    score: float = 0.0
    check: Check | None = None


class Bucket(BaseModel):
    label: str
    count: int


class DatasetSummary(BaseModel):
    traces: int
    spans: int
    error_traces: int
    start: str | None = None
    end: str | None = None
    services: list[str] = Field(default_factory=list)
    agents: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)
    tools: list[str] = Field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    total_duration_ms: float = 0.0
    duration_ms_p50: float | None = None
    duration_ms_p95: float | None = None
    duration_histogram: list[Bucket] = Field(default_factory=list)
    cost_histogram: list[Bucket] = Field(default_factory=list)


class AgentUsage(Usage):
    """What one agent of an analysis did and used."""

    agent_id: str
    name: str
    depth: int
    parent_id: str | None = None
    status: str
    turns: int = 0
    tool_calls: int = 0
    seconds: float = 0.0


class RunUsage(BaseModel):
    """What an LLM analysis consumed, by model and by agent."""

    models: dict[str, Usage] = Field(default_factory=dict)
    agents: int = 0
    turns: int = 0
    tool_calls: int = 0
    seconds: float = 0.0
    per_agent: list[AgentUsage] = Field(default_factory=list)

    @property
    def total(self) -> Usage:
        return sum(self.models.values(), Usage())

    @property
    def cost_usd(self) -> float:
        return self.total.cost_usd or 0.0

    @property
    def tokens(self) -> int:
        return self.total.tokens


BudgetName = Literal["tokens", "cost_usd", "seconds", "turns"]


class BudgetUse(BaseModel):
    """One limit of an LLM run and what the run used of it."""

    budget: BudgetName
    limit: float = Field(description="The limit given (turns: per agent; the others: the whole run)")
    used: float = Field(description="What was used (turns: the root agent's)")


class Budgets(BaseModel):
    """The run's budgets: each limit with what was used, which one ended the run, and what was cut
    because of it (model calls not made, agents stopped early)."""

    limits: list[BudgetUse] = Field(default_factory=list)
    ended_by: BudgetName | None = Field(
        None, description="The budget that ended the run (None: the run finished within its budgets)"
    )
    cut: list[str] = Field(default_factory=list, description="What was not done because a budget ran out")


class Verification(BaseModel):
    verified: int = 0
    flagged: int = 0
    unverifiable: int = 0
    missing_citations: list[str] = Field(
        default_factory=list, description="[trace:…]/[span:…] cited in the answer but not in the store"
    )
    checked_at: str | None = None


class Outcome(BaseModel):
    """How the analysis ended. A report of a run that stopped early still holds everything verified
    before it stopped, and says what stopped it and what was not done."""

    complete: bool = True
    stopped_by: (
        Literal["provider_error", "timeout", "budget", "turn_limit", "no_answer", "interrupted", "crash"]
        | None
    ) = None
    reason: str = Field("", description="What stopped the run, in one line")
    not_done: list[str] = Field(default_factory=list, description="What the run did not get to do")


class Report(BaseModel):
    schema_version: int = 1
    title: str = "HALO report"
    generated_at: str = Field(default_factory=lambda: now_iso())
    mode: Literal["detectors", "llm"]
    prompt: str | None = None
    inputs: list[str] = Field(default_factory=list)
    store: str = ""
    models: dict[str, str] | None = Field(
        None, description="Models used by role (root, synthesis, compaction)"
    )
    usage: RunUsage | None = None
    budgets: Budgets | None = Field(None, description="An LLM run's budgets, what was used and what was cut")
    dataset: DatasetSummary
    findings: list[Finding] = Field(default_factory=list)
    answer: str | None = Field(None, description="The LLM's own markdown analysis, when an LLM ran")
    thresholds: dict[str, float] = Field(default_factory=dict)
    ranking: str = RANKING
    verification: Verification | None = None
    notes: list[str] = Field(default_factory=list)
    telemetry: str | None = Field(
        None,
        description="Where HALO's own spans of this run went (--telemetry): a JSONL file or an OTLP endpoint",
    )
    outcome: Outcome = Field(default_factory=Outcome)
    cited: list[Evidence] = Field(
        default_factory=list, description="Spans the answer cites, with excerpts (filled by verify)"
    )

    def cleaned(self, *, keep_secrets: bool = False) -> Report:
        """This report as it may be shown or written: what a terminal or a viewer would act on in its
        text made visible (`utils.terminal_safe`), and unless `keep_secrets`, credentials replaced by
        `[REDACTED]` (`halo_rlm.scrub`). Ids and queries keep their text: they are checked against
        the store."""
        return Report.model_validate(_cleaned(self.model_dump(), None if keep_secrets else scrub_text))


EXACT_FIELDS = frozenset({"query", "trace_id", "span_id"})


def _cleaned(value: Any, scrub: Callable[[str], str] | None, exact: bool = False) -> Any:
    if isinstance(value, str):
        text = value if exact else terminal_safe(value)
        return scrub(text) if scrub else text
    if isinstance(value, dict):
        return {k: _cleaned(v, scrub, k in EXACT_FIELDS) for k, v in value.items()}
    if isinstance(value, list):
        return [_cleaned(v, scrub, exact) for v in value]
    return value


def json_schema() -> dict[str, Any]:
    return Report.model_json_schema()


def rank(findings: list[Finding], dataset: DatasetSummary) -> list[Finding]:
    """Score and order findings (see `RANKING`); stable for equal scores."""
    total_time = dataset.total_duration_ms or 0.0
    total_cost = dataset.cost_usd or 0.0
    for f in findings:
        time_share = min(1.0, f.impact.latency_ms / total_time) if total_time else 0.0
        cost_share = min(1.0, f.impact.cost_usd / total_cost) if total_cost else 0.0
        f.score = round(
            100 * f.affected_trace_share * SEVERITY_WEIGHT[f.severity] + 25 * time_share + 25 * cost_share, 3
        )
    return sorted(findings, key=lambda f: (-f.score, f.category, f.id))


def merge(detected: list[Finding], proposed: list[Finding]) -> list[Finding]:
    """The detectors' findings, each enriched by the model's findings about the same failure, then
    the model's findings that match none of them. Never worse than the detectors alone: every
    detector finding stays, with its own count, query and evidence.

    A model finding is about a detector finding when both have the same category and key, or cite
    the same span, or have the same category and cite the same trace (the strongest match wins). It
    adds its root cause, its fix (the model read the traces, and the code with --repo-path) and
    its code locations; its evidence joins the detector's unless `verify` flagged it. Model
    findings are expected to carry their `check` (verify them first); unmatched ones are kept as
    they are, marked by that check."""
    merged = [f.model_copy(deep=True) for f in detected]
    added: list[Finding] = []
    for p in proposed:
        target = _best_match(p, merged)
        if target is None:
            added.append(p)
        else:
            _enrich(target, p)
    return merged + added


def _best_match(p: Finding, candidates: list[Finding]) -> Finding | None:
    spans = {(e.trace_id, e.span_id) for e in p.evidence if e.span_id}
    traces = {e.trace_id for e in p.evidence}
    best, best_score = None, 0
    for f in candidates:
        same_category = f.category == p.category
        score = 0
        if same_category and p.key and f.key and _norm(p.key) == _norm(f.key):
            score = 1_000_000
        shared_spans = len(spans & {(e.trace_id, e.span_id) for e in f.evidence if e.span_id})
        if shared_spans:
            score = max(score, 1_000 * shared_spans + (500 if same_category else 0))
        if same_category:
            score = max(score, len(traces & {e.trace_id for e in f.evidence}))
        if score > best_score:
            best, best_score = f, score
    return best


def _norm(key: str) -> str:
    return re.sub(r"[\s`'\"“”]+", "", key).lower()


def _enrich(target: Finding, p: Finding) -> None:
    first = not target.enriched_by
    target.enriched_by.append(p.id)
    if p.details and p.details not in target.root_cause:
        target.root_cause = f"{target.root_cause}\n\n{p.details}".strip()
    if p.recommendation and first:
        target.recommendation = p.recommendation
    target.locations += [loc for loc in p.locations if loc not in target.locations]
    if p.check is None or p.check.status != "flagged":
        have = {(e.trace_id, e.span_id) for e in target.evidence}
        target.evidence += [e for e in p.evidence if (e.trace_id, e.span_id) not in have]
    target.confidence = max(target.confidence, p.confidence)


def code(text: str, limit: int = 80) -> str:
    """Trace text (a tool, model or agent name, a message template) as a markdown code span: one line,
    at most `limit` characters, no control characters, and fenced with more backticks than it holds,
    so it shows as quoted data and cannot start a heading, a link, an image or HTML."""
    flat = one_line(terminal_safe(text), limit) or " "
    fence = "`" * (max((len(run) for run in re.findall(r"`+", flat)), default=0) + 1)
    pad = " " if flat[0] == "`" or flat[-1] == "`" else ""
    return f"{fence}{pad}{flat}{pad}{fence}"


def category(value: str) -> Category:
    """`value` as a category; anything unknown is `other`."""
    return next((c for c in CATEGORIES if c == value), "other")


def cite(ev: Evidence) -> str:
    """How a report cites evidence: `[span:TRACE:SPAN]`, or `[trace:TRACE]`."""
    return f"[span:{ev.trace_id}:{ev.span_id}]" if ev.span_id else f"[trace:{ev.trace_id}]"


assert set(get_args(Category)) == set(CATEGORIES), "every category needs a description"
