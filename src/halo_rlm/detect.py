"""Deterministic detectors of systemic failures: no LLM needed.

Detectors are declared as data (`DETECTORS`): which of the store dialect's detections to run, the
failure category, severity and confidence, and the words of a finding (title, details,
recommendation) as templates filled from the detection's group columns. The SQL is the store's
(`store.dialect`); this module only runs it, counts and words the findings. Every finding carries
its `query` — self-contained SQL in the store's dialect returning the affected traces' ids — so
`verify` can recount it, and its count comes from that same query.

Errors are read once, as *leaf* errors: an ERROR span none of whose children failed. A failure
that propagates up to the turn and the agent span is so counted once, where it happened. Each
leaf error gets the first category whose signature its text matches (the order of
`ERROR_SIGNATURES`); what no signature claims is grouped by tool (or span) and message template,
as `tool_error` or `other`.

A finding needs a pattern across traces: at least `min_traces` traces and `min_share` of all
traces (both configurable). One-off errors never qualify.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from halo_rlm.report import (
    Bucket,
    Category,
    DatasetSummary,
    Evidence,
    Finding,
    Impact,
    Report,
    Severity,
    code,
    rank,
)
from halo_rlm.store import TraceStore
from halo_rlm.store.dialect import Detection, Dialect
from halo_rlm.utils import one_line

__all__ = ["DETECTORS", "ERROR_SIGNATURES", "REFUSAL", "Detector", "Thresholds", "analyze", "dataset_summary"]


@dataclass(frozen=True)
class Thresholds:
    """When a pattern counts as systemic, and how much evidence to show."""

    min_traces: int = 2
    min_share: float = 0.005
    max_evidence: int = 5
    repeat_calls: int = 3  # identical tool calls in one run that make a loop
    slow_factor: float = 3.0  # a call is slow when it takes this many times its kind's median...
    slow_ms: float = 5_000  # ...and at least this long...
    slow_share: float = 0.1  # ...and at least this share of its run
    bottleneck_share: float = 0.4  # a step is a bottleneck when it takes this share of the median run...
    bottleneck_ms: float = 2_000  # ...and its median call at least this long, however consistently
    token_factor: float = 10.0  # a call is a token outlier at this many times the median prompt...
    min_outlier_tokens: int = 10_000  # ...and at least this many prompt tokens


# Error signatures, in the order they claim errors; matched case-insensitively.
ERROR_SIGNATURES: list[tuple[Category, str]] = [
    (
        "hallucinated_tool",
        r"(unknown|invalid|unsupported|unrecognized|non-?existent|undefined) (tool|function)|"
        r"(tool|function) ([\w.-]+ )?(not found|does not exist|is not available|not available|not registered)|"
        r"no (such )?(tool|function) (named|called)|toolnotfound|functionnotfound|model tried to call unknown",
    ),
    ("handoff", r"hand-?off|transfer_to_|transfer to [\w.-]+ failed"),
    (
        "invalid_tool_arguments",
        r"invalid (tool )?arguments?|validation error|validationerror|missing (\d+ )?required|field required|"
        r"is a required (property|field)|unexpected keyword argument|extra (inputs|fields) (are )?not permitted|"
        r"(could not|failed to|cannot) (parse|decode) (tool )?(arguments|args|json)|argument.{0,40}(must|should) be|"
        r"invalid (type|value) for|does not match (the )?schema|schema validation",
    ),
    (
        "context_overflow",
        r"context[_ ]length[_ ]exceeded|maximum context length|context (window|length) (exceeded|is|of)|"
        r"prompt is too long|input is too long|too many (input )?tokens|exceeds? (the )?(model'?s? )?"
        r"(context|maximum|max)|reduce the length of|token limit (exceeded|reached)",
    ),
    (
        "rate_limit",
        r"\b429\b|rate[ _-]?limit|too many requests|ratelimit|quota (exceeded|exhausted)|insufficient_quota|"
        r"resource[_ ]exhausted|throttl|\b529\b|overloaded",
    ),
    ("timeout", r"timed? ?out|timeout|deadline exceeded|deadlineexceeded|\b504\b|gateway time-?out"),
    (
        "guardrail",
        r"guardrail|tripwire|content[_ ]filter|content policy|moderation|blocked by (the )?(safety|policy)",
    ),
    (
        "max_turns",
        r"max(imum)?[ _-]?turns|maxturns|turn limit|max(imum)?[ _-]?iterations|iteration limit|recursion limit|"
        r"graphrecursionerror|stopped due to (iteration|time) limit|too many (steps|turns|iterations)|"
        r"max(imum)?[ _-]?steps",
    ),
]

REFUSAL = (
    r"(i'?m|i am) (very |so |really )?sorry,? but i (can'?t|cannot|can not|won'?t|am unable|'m unable|"
    r"am not able|'m not able)[^.]{0,30}(help|assist|comply|do that|do this|provide|fulfil|support|"
    r"answer|respond|process|complete|with th)|"
    r"\bi (can'?t|cannot|won'?t) (help|assist) (you )?with (that|this)|\bas an ai( language model)?,|"
    r"lo siento,? (pero )?no (puedo|podemos)|no puedo ayudar|"
    r"(je suis )?d[ée]sol[ée]e?,? (mais )?je ne (peux|suis pas en mesure)|je ne peux pas (vous )?(aider|r[ée]pondre)|"
    r"es tut mir leid,? aber .{0,50}(kann|darf) ich .{0,50}nicht|ich kann (ihnen |dir )?(dabei |damit )?nicht helfen|"
    r"desculpe,? (mas )?(eu )?n[ãa]o posso|sinto muito,? mas n[ãa]o posso|mi dispiace,? ma non posso|"
    r"het spijt me,? maar ik kan|申し訳(ありません|ございません)が|(抱歉|对不起)[，,].{0,12}(无法|不能)"
)


@dataclass(frozen=True)
class Detector:
    """One kind of finding, as data. `detection` picks the dialect's query (see `DETECTIONS`);
    `category` also filters the error detection's groups. The templates are `str.format`ted with
    the group's columns plus `affected`, the thresholds, and trace text only as markdown code spans
    (`report.code`): `key_code`, `template_code`, `template_note`, `offered_list`. Examples never
    enter a title, details or recommendation: they are the finding's quoted evidence. `impact` maps
    Impact fields to group columns. A finding of `supersedes` for the
    same key is dropped when this detector reports one (two views of one failure)."""

    name: str
    detection: str
    category: Category
    severity: Severity
    confidence: float
    title: str
    details: str
    recommendation: str
    impact: Mapping[str, str] = field(default_factory=dict)
    supersedes: str | None = None


# The dialect's detections, by name, with what they need.
DETECTIONS: dict[str, Callable[[Dialect, Thresholds, int], Detection]] = {
    "errors": lambda d, t, minimum: d.errors(ERROR_SIGNATURES, minimum),
    "unoffered_tool_calls": lambda d, t, minimum: d.unoffered_tool_calls(ERROR_SIGNATURES, minimum),
    "repeated_calls": lambda d, t, minimum: d.repeated_calls(t.repeat_calls, minimum),
    "refusals": lambda d, t, minimum: d.refusals(REFUSAL, minimum),
    "truncated_outputs": lambda d, t, minimum: d.truncated_outputs(minimum),
    "guardrail_trips": lambda d, t, minimum: d.guardrail_trips(minimum),
    "slow_calls": lambda d, t, minimum: d.slow_calls(t.slow_factor, t.slow_ms, t.slow_share, minimum),
    "bottlenecks": lambda d, t, minimum: d.bottlenecks(t.bottleneck_share, t.bottleneck_ms, minimum),
    "oversized_prompts": lambda d, t, minimum: d.oversized_prompts(
        t.token_factor, t.min_outlier_tokens, minimum
    ),
}

ERROR_DETAILS = "{errors:,} failing {kinds} spans in {affected:,} traces{template_note}."
RETRIED = {
    "extra_turns": "errors",
    "errors": "errors",
    "latency_ms": "latency_ms",
}  # each failure costs a call
REPEATED = {"extra_turns": "extra", "errors": "errors", "latency_ms": "latency_ms"}


def _error(
    category: Category,
    severity: Severity,
    confidence: float,
    title: str,
    recommendation: str,
    impact: Mapping[str, str] = REPEATED,
    supersedes: str | None = None,
) -> Detector:
    return Detector(category, "errors", category, severity, confidence, title, ERROR_DETAILS, recommendation,
                    impact, supersedes)  # fmt: skip


DETECTORS: list[Detector] = [
    _error(
        "hallucinated_tool",
        "high",
        0.9,
        "The model calls {key_code}, a tool that does not exist",
        "The agent calls {key_code}, which is not among its tools. If the capability is needed, add "
        "{key_code} as a real tool with a schema; otherwise list the available tools and what to do instead in "
        "the agent's system prompt, and make the unknown-tool error name the valid tools so the model can "
        "recover in one step.",
        RETRIED,
    ),
    _error(
        "invalid_tool_arguments",
        "medium",
        0.9,
        "{key_code} is called with invalid arguments",
        "Calls to {key_code} fail argument validation. Tighten the tool's JSON schema (mark required "
        "fields `required`, give formats and enums, add one example in the description), return the "
        "validation message to the model so it can fix the call, and coerce harmless variations (date "
        "formats, string numbers) in the tool itself.",
        RETRIED,
    ),
    _error(
        "context_overflow",
        "high",
        0.9,
        "Requests to {key_code} exceed its context window",
        "Calls to {key_code} fail with a context-length error. Cap tool outputs before they enter the "
        "conversation (truncate or summarise large results), trim or summarise old turns against a token "
        "budget below the model's window, and catch `context_length_exceeded` to compact and retry instead "
        "of ending the run.",
    ),
    _error(
        "rate_limit",
        "medium",
        0.9,
        "Rate limits on {key_code} cause retry storms",
        "{key_code} calls are rejected with rate-limit errors, often several times per run. Honour "
        "`Retry-After` with full-jitter exponential backoff, cap concurrent requests per provider with a "
        "shared limiter, raise the provider quota or spread load to a fallback model, and count retries "
        "against the run's budget.",
        RETRIED,
    ),
    _error(
        "timeout",
        "medium",
        0.85,
        "{key_code} times out",
        "{key_code} calls time out. Set an explicit, shorter per-call timeout with one retry, return a "
        "clear timeout result to the model (so it can try another source) instead of hanging the run, and "
        "check the dependency's latency and capacity.",
    ),
    _error(
        "guardrail",
        "medium",
        0.85,
        "The {key_code} guardrail trips and stops runs",
        "The {key_code} guardrail stops runs. Fix what triggers it at the source: tell the agent in its "
        "system prompt what it must not output (and how to redact), and let the guardrail ask for a corrected "
        "answer instead of failing the whole run.",
        supersedes="guardrail_trips",
    ),
    _error(
        "handoff",
        "high",
        0.85,
        "Handoffs to {key_code} fail",
        "Handoffs to {key_code} fail. Make the handoff's input schema match what the calling agent "
        "provides (or describe the required fields in the handoff tool's description), validate before "
        "handing off, and give the caller a fallback when the handoff is rejected.",
    ),
    _error(
        "max_turns",
        "high",
        0.9,
        "{key_code} runs out of turns without answering",
        "{key_code} hits its turn limit. Tell it in the system prompt how many turns it has and when to "
        "stop searching and answer with what it found, add a progress check (e.g. after N tool calls without "
        "new information, answer), and make the last turn force a final answer rather than fail.",
    ),
    _error(
        "tool_error",
        "medium",
        0.8,
        "{key_code} fails: {template_code}",
        "{key_code} keeps failing the same way. Handle this case inside the tool: return a structured "
        "result the model can act on (e.g. `found: false` with a reason) instead of an error, document the "
        "case in the tool description, and tell the agent in its prompt what to do next (ask the user, try an "
        "alternative) so it does not retry blindly.",
    ),
    _error(
        "other",
        "medium",
        0.75,
        "{key_code} fails: {template_code}",
        "{key_code} fails repeatedly with the same error. Find where this span's code raises it, handle "
        "that case, and surface a clear message to the agent.",
    ),
    Detector(
        "unoffered_tool_calls",
        "unoffered_tool_calls",
        "hallucinated_tool",
        "high",
        0.9,
        "The model calls {key_code}, a tool that does not exist",
        "The model called {key_code} {calls:,} times although it was offered only: {offered_list}.",
        "The model calls {key_code}, which it was not offered (it has {offered_list}). If the capability is "
        "needed, add {key_code} as a real tool with a schema; otherwise state in the agent's system prompt which "
        "tools exist and how to handle this request without {key_code}, and make the unknown-tool error list the "
        "valid tools so the model recovers in one step.",
        {"extra_turns": "calls"},
        supersedes="hallucinated_tool",
    ),
    Detector(
        "repetition_loop",
        "repeated_calls",
        "repetition_loop",
        "medium",
        0.85,
        "The agent calls {key_code} with the same arguments over and over",
        "{extra:,} redundant {key_code} calls: the same arguments {repeat_calls} or more times in one run.",
        "The agent repeats identical {key_code} calls. Keep a record of calls already made in the loop and return "
        "the cached result (or an explicit 'you already ran this, with the same result') for a repeat; tell the agent "
        "in its prompt to change the query or answer when a call brings nothing new; and stop the run after "
        "{repeat_calls} identical calls.",
        {"extra_turns": "extra"},
    ),
    Detector(
        "refusal",
        "refusals",
        "refusal",
        "high",
        0.8,
        "{key_code} refuses ordinary requests",
        "{calls:,} model answers that refuse, in {traces:,} runs.",
        "{key_code} refuses requests it should handle. State plainly in its system prompt what it is allowed and "
        "expected to do (with examples of these requests), remove or narrow over-broad safety wording, and "
        "retry once with a clarifying instruction when the model refuses; review the refused requests in the "
        "evidence for a common trigger.",
        {"extra_turns": "calls"},
    ),
    Detector(
        "empty_or_truncated_output",
        "truncated_outputs",
        "empty_or_truncated_output",
        "high",
        0.85,
        "{key_code} returns empty or truncated answers",
        "{calls:,} {key_code} answers were empty or cut off{cap_note}.",
        "{key_code} answers are cut by the output-token limit or come back empty. Raise `max_tokens` for the final "
        "answer (reasoning models spend output tokens on thinking), ask for a shorter answer format in the "
        "prompt, and detect `finish_reason == 'length'` or an empty answer to continue or retry instead of "
        "returning it to the user.",
        {"extra_turns": "calls"},
    ),
    Detector(
        "guardrail_trips",
        "guardrail_trips",
        "guardrail",
        "medium",
        0.85,
        "The {key_code} guardrail trips",
        "The {key_code} guardrail reported a trip in {traces:,} runs.",
        "The {key_code} guardrail stops runs. Fix what triggers it at the source: tell the agent in its system "
        "prompt what it must not output (and how to redact), and let the guardrail ask for a corrected answer "
        "instead of failing the whole run.",
    ),
    Detector(
        "latency",
        "slow_calls",
        "latency",
        "medium",
        0.75,
        "{key_code} is now and then far slower than usual, holding up its runs",
        "{calls:,} {key_code} calls took {slow_s:.1f} s (median of the slow ones) against a usual {usual_s:.1f} s, "
        "{run_share:.0%} of their runs on average.",
        "{key_code} sometimes takes {slow_s:.0f}+ s instead of {usual_s:.1f} s and holds up its runs. Profile it for the slow inputs in the "
        "evidence; add caching or pagination, a per-call timeout with a fast fallback, and run it concurrently "
        "with independent calls; if it is inherently slow, tell the agent (in the tool description) to call it "
        "once with precise arguments.",
        {"latency_ms": "excess_ms"},
    ),
    Detector(
        "bottleneck",
        "bottlenecks",
        "latency",
        "medium",
        0.8,
        "{key_code} takes most of the time of the runs that call it",
        "{key_code} is slow every time, not now and then: its calls take {run_share:.0%} of the time of the "
        "{affected:,} runs that call it ({median_share:.0%} in the median run), {total_share:.1%} of all run "
        "time. Its calls take p50 {p50_s:.1f} s / p95 {p95_s:.1f} s, against p50 {other_p50_s:.1f} s / p95 "
        "{other_p95_s:.1f} s for the other tool and model calls of those runs.",
        "{key_code} is the bottleneck of every run that calls it (p50 {p50_s:.0f} s a call). Make the call "
        "itself cheaper (cache or precompute its results, index or paginate what it reads, return less), "
        "run it once per session rather than per run, start it in the background or concurrently with the "
        "steps that do not need its result, and give it a timeout with a fast fallback; if it must stay "
        "slow, say so in its tool description so the agent calls it only when the answer needs it.",
        {"latency_ms": "tool_ms"},
        supersedes="latency",
    ),
    Detector(
        "cost",
        "oversized_prompts",
        "cost",
        "medium",
        0.75,
        "{key_code} sends oversized prompts",
        "{calls:,} {key_code} LLM calls carried a median {typical:,} prompt tokens against a usual {usual:,}: "
        "{excess:,} extra tokens.",
        "{key_code} puts far more context than needed into its prompts. Find what is injected wholesale (history, "
        "documents, tool results) and retrieve or summarise only what the current step needs, cap each tool "
        "result's size, enable prompt caching for the stable prefix, and set a per-call prompt-token budget "
        "with an alert.",
        {"tokens": "excess", "cost_usd": "cost"},
    ),
]


def analyze(
    store: TraceStore, *, thresholds: Thresholds | None = None, inputs: list[str] | None = None
) -> Report:
    """Run every detector over a (read-only) store and return a ranked report."""
    t = thresholds or Thresholds()
    dataset = dataset_summary(store)
    minimum = max(t.min_traces, int(t.min_share * dataset.traces + 0.999999))
    findings = _supersede(
        [_finding(store, t, detector, group) for detector, group in _groups(store, t, minimum)]
    )
    for f in findings:
        f.affected_trace_share = round(f.affected_traces / dataset.traces, 6) if dataset.traces else 0.0
    return Report(
        mode="detectors",
        inputs=inputs or [],
        store=store.path,
        dataset=dataset,
        findings=rank(findings, dataset),
        thresholds={"min_traces": t.min_traces, "min_share": t.min_share, "applied_min_traces": minimum},
        notes=[
            f"A finding needs at least {minimum} affected traces (min_traces={t.min_traces}, "
            f"min_share={t.min_share:g} of {dataset.traces:,} traces); one-off errors are not reported."
        ],
    )


def prepared_queries(
    store: TraceStore, queries: Sequence[str], *, thresholds: Thresholds | None = None
) -> list[str]:
    """`queries` (findings' recount queries) ready to run many times over on this store connection. A
    detection whose occurrences are slow to compute has a `setup` that materialises them and a `scan`
    that reads them; a query that embeds those occurrences is rewritten to read the scan instead, after
    the setup ran once. The scan holds the same rows, so each query finds the same traces. Queries that
    embed nothing prepared are returned unchanged."""
    t = thresholds or Thresholds()
    prepared = list(queries)
    for make in DETECTIONS.values():
        detection = make(store.dialect, t, 1)
        embedded = f"({detection.occurrences})"
        if detection.scan is None or not any(embedded in q for q in prepared):
            continue
        for statement in detection.setup:
            store.query(statement)
        prepared = [q.replace(embedded, f"({detection.scan})") for q in prepared]
    return prepared


def _groups(store: TraceStore, t: Thresholds, minimum: int) -> list[tuple[Detector, dict[str, Any]]]:
    """Each detector's groups, running each detection once."""
    detections: dict[str, tuple[Detection, list[dict[str, Any]]]] = {}
    found = []
    for detector in DETECTORS:
        if detector.detection not in detections:
            detection = DETECTIONS[detector.detection](store.dialect, t, minimum)
            for statement in detection.setup:
                store.query(statement)
            detections[detector.detection] = detection, store.query(detection.groups)
        detection, groups = detections[detector.detection]
        found += [
            (detector, {**g, "_detection": detection})
            for g in groups
            if g.get("category", detector.category) == detector.category
        ]
    return found


def _finding(store: TraceStore, t: Thresholds, detector: Detector, group: dict[str, Any]) -> Finding:
    dialect: Dialect = store.dialect
    detection: Detection = group.pop("_detection")
    key, template = group["key"], group.get("template")
    extra = {"category": detector.category} if "category" in group else {}
    query = dialect.affected(detection.occurrences, key, template, **extra)
    affected = int(store.query(dialect.distinct_traces(query))[0]["n"])
    shown = dialect.matching(detection.rows, key, template, **extra)
    if detector.detection == "unoffered_tool_calls":  # examples of the calls, not of the errors
        shown = dialect.matching(detection.rows, key, template, source="call")
    evidence = [
        Evidence(
            trace_id=r["trace_id"],
            span_id=r["span_id"],
            excerpt=one_line(r["excerpt"] or "", 300),
            note=r["note"] or "",
        )
        for r in store.query(dialect.examples(shown, t.max_evidence))
    ]
    words = {
        **group,
        "key": key,
        "affected": affected,
        "key_code": code(key or "unknown"),
        "repeat_calls": t.repeat_calls,
        "template_code": code(template or "error", 90),
        "template_note": f"; message template: {code(template, 300)}" if template else "",
        "offered_list": ", ".join(code(name) for name in group.get("offered") or []) or "none recorded",
        "cap_note": f" (outputs stop at about {group['cap']:,} tokens)" if group.get("cap") else "",
    }
    impact = Impact(**{name: _number(group[column]) for name, column in detector.impact.items()})
    return Finding(
        id=_id(detector.category, key, template),
        title=detector.title.format(**words),
        category=detector.category,
        severity=detector.severity,
        key=key,
        affected_traces=affected,
        affected_trace_share=0.0,
        impact=impact,
        evidence=evidence,
        recommendation=detector.recommendation.format(**words),
        confidence=detector.confidence,
        source=f"detector:{detector.name}",
        query=query,
        query_dialect=dialect.name,
        details=detector.details.format(**words),
    )


def _number(value: Any) -> float | int:
    if value is None:
        return 0
    return round(value, 4) if isinstance(value, float) else int(value)


def _supersede(findings: list[Finding]) -> list[Finding]:
    """One finding per key when two detectors see the same thing (see `Detector.supersedes`)."""
    dropped = {
        (f"detector:{d.supersedes}", f.key)
        for d in DETECTORS
        if d.supersedes
        for f in findings
        if f.source == f"detector:{d.name}"
    }
    return [f for f in findings if (f.source, f.key) not in dropped]


# --- dataset summary --------------------------------------------------------------------------


def dataset_summary(store: TraceStore) -> DatasetSummary:
    o = store.overview(top=50)
    times = store.query(store.dialect.run_times())[0]
    return DatasetSummary(
        traces=o.traces,
        spans=o.spans,
        error_traces=o.error_traces,
        start=o.start,
        end=o.end,
        services=[c.name for c in o.services],
        agents=[c.name for c in o.agents],
        models=[c.name for c in o.models],
        tools=[c.name for c in o.tools],
        input_tokens=o.input_tokens,
        output_tokens=o.output_tokens,
        cost_usd=o.cost,
        total_duration_ms=round(times["total_ms"], 1),
        duration_ms_p50=times["p50"],
        duration_ms_p95=times["p95"],
        duration_histogram=_histogram(
            store,
            "duration_ns",
            1e6,
            [1_000, 5_000, 15_000, 30_000, 60_000, 120_000],
            lambda v: f"{v / 1000:g} s",
        ),
        cost_histogram=_histogram(store, "cost", 1, [0.001, 0.01, 0.05, 0.1, 0.5, 1.0], lambda v: f"${v:g}"),
    )


def _histogram(
    store: TraceStore, column: str, scale: float, edges: list[float], label: Callable[[float], str]
) -> list[Bucket]:
    counts = {r["b"]: r["n"] for r in store.query(store.dialect.histogram(column, scale, edges))}
    labels = (
        [f"< {label(edges[0])}"]
        + [f"{label(lo)}–{label(hi)}" for lo, hi in itertools.pairwise(edges)]
        + [f"≥ {label(edges[-1])}"]
    )
    return [Bucket(label=text, count=counts.get(i, 0)) for i, text in enumerate(labels)] if counts else []


def _id(category: str, key: str | None, extra: str | None = None) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", (key or "unknown")).strip("-")[:60]
    if extra:
        slug += "-" + hashlib.sha256(extra.encode()).hexdigest()[:6]
    return f"{category}:{slug}"
