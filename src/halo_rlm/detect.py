"""Deterministic detectors of systemic failures: SQL over the trace store, no LLM needed.

Each detector is a function from an `Analysis` (the store plus thresholds) to findings. Every
finding carries a `query` — self-contained SQL over the store's tables returning the affected
traces' ids — so `report.verify` can recount it, and the counts in findings come from that same
query.

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
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from halo_rlm.report import Bucket, DatasetSummary, Evidence, Finding, Impact, Report, rank
from halo_rlm.store import TraceStore
from halo_rlm.store.duckdb_sql import sql_literal
from halo_rlm.utils import one_line


@dataclass(frozen=True)
class Thresholds:
    """When a pattern counts as systemic, and how much evidence to show."""

    min_traces: int = 2
    min_share: float = 0.005
    max_evidence: int = 5
    repeat_calls: int = 3  # identical tool calls in one run that make a loop
    slow_factor: float = 3.0  # a call is slow when it takes this many times its kind's median...
    slow_ms: float = 5_000  # ...and at least this long
    token_factor: float = 10.0  # a call is a token outlier at this many times the median prompt...
    min_outlier_tokens: int = 10_000  # ...and at least this many prompt tokens


# Error signatures, in the order they claim errors. (?i) is added when they are used.
ERROR_SIGNATURES: list[tuple[str, str]] = [
    (
        "hallucinated_tool",
        r"(unknown|invalid|unsupported|unrecognized|non-?existent|undefined) (tool|function)|"
        r"(tool|function) (not found|does not exist|is not available|not available|not registered)|"
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
SIGNATURE = dict(ERROR_SIGNATURES)

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

# A leaf error: an ERROR span none of whose children is an ERROR span.
ERROR_TEXT = (
    "concat_ws(' | ', s.status_message, s.error_type, "
    "CASE WHEN s.kind = 'TOOL' THEN left(s.tool_result, 1000) END, left(s.exceptions::VARCHAR, 1000))"
)
CLASSIFY = (
    "CASE "
    + " ".join(
        f"WHEN regexp_matches(error_text, {sql_literal('(?i)' + pattern)}) THEN '{category}'"
        for category, pattern in ERROR_SIGNATURES
    )
    + " WHEN kind = 'TOOL' THEN 'tool_error' ELSE 'other' END"
)
LEAF_ERRORS = f"""
SELECT s.trace_id, s.span_id, s.kind, s.name, s.tool_name, s.model, s.duration_ns, s.start_ns, s.error_template,
       coalesce(s.agent_name, t.agents[1]) AS agent, {ERROR_TEXT} AS error_text
FROM spans s JOIN traces t USING (trace_id)
WHERE s.status = 'ERROR'
  AND NOT EXISTS (SELECT 1 FROM spans c WHERE c.trace_id = s.trace_id AND c.parent_id = s.span_id
                  AND c.status = 'ERROR')"""
# The key a finding of each category is about.
ERROR_KEYS = {
    "hallucinated_tool": r"coalesce(nullif(regexp_extract(error_text, "
    r"'(?i)(?:tool|function)[: ]+[''\"`]?([A-Za-z_][\w-]*(?:\.[\w-]+)*)', 1), ''), tool_name, name)",
    "invalid_tool_arguments": "coalesce(tool_name, name)",
    "context_overflow": "coalesce(model, agent, name)",
    "rate_limit": "coalesce(model, tool_name, name)",
    "timeout": "coalesce(tool_name, model, name)",
    "guardrail": r"coalesce(nullif(regexp_extract(error_text, '(?i)(?:guardrail|tripwire)[^:|]*:\s*([\w.-]+)', 1), ''), "
    r"nullif(regexp_replace(name, '^guardrail[._ ]', ''), name), agent, name)",
    "handoff": r"coalesce(nullif(regexp_extract(error_text, '(?i)(?:hand-?off|transfer)\w*\s+to\s+([\w.-]+)', 1), ''), "
    r"nullif(regexp_extract(error_text, 'transfer_to_([\w-]+)', 1), ''), agent, name)",
    "max_turns": "coalesce(agent, name)",
    "tool_error": "coalesce(tool_name, name)",
    "other": "name",
}
CLASSIFIED = f"""
SELECT *, CASE category {" ".join(f"WHEN '{c}' THEN {k}" for c, k in ERROR_KEYS.items())} END AS key
FROM (SELECT *, {CLASSIFY} AS category FROM ({LEAF_ERRORS}))"""


@dataclass
class Analysis:
    store: TraceStore
    thresholds: Thresholds = field(default_factory=Thresholds)
    traces: int = 0

    @property
    def minimum(self) -> int:
        return max(self.thresholds.min_traces, int(self.thresholds.min_share * self.traces + 0.999999))

    def rows(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        return self.store.query(sql, params)

    def count(self, query: str) -> int:
        return int(self.rows(f"SELECT count(DISTINCT trace_id) AS n FROM ({query})")[0]["n"])

    def evidence(self, examples_sql: str) -> list[Evidence]:
        """Up to `max_evidence` examples from distinct traces. The SQL yields trace_id, span_id,
        excerpt (verbatim text of the span), note (words) and a `first_seen` ordering column."""
        rows = self.rows(f"""
            SELECT trace_id, span_id, excerpt, note FROM (
              SELECT *, row_number() OVER (PARTITION BY trace_id ORDER BY first_seen, span_id) AS nth FROM ({examples_sql}))
            WHERE nth = 1 ORDER BY first_seen, trace_id LIMIT {self.thresholds.max_evidence}""")
        return [
            Evidence(
                trace_id=r["trace_id"],
                span_id=r["span_id"],
                excerpt=one_line(r["excerpt"] or "", 300),
                note=r["note"] or "",
            )
            for r in rows
        ]


Detector = Callable[[Analysis], list[Finding]]


def analyze(
    store: TraceStore, *, thresholds: Thresholds | None = None, inputs: list[str] | None = None
) -> Report:
    """Run every detector over a (read-only) store and return a ranked report."""
    a = Analysis(store, thresholds or Thresholds())
    dataset = dataset_summary(store)
    a.traces = dataset.traces
    a.rows(f"CREATE OR REPLACE TEMP TABLE halo_errors AS {CLASSIFIED}")
    findings: list[Finding] = []
    for detector in DETECTORS:
        findings.extend(detector(a))
    for f in findings:
        f.affected_trace_share = round(f.affected_traces / a.traces, 6) if a.traces else 0.0
    return Report(
        mode="detectors",
        inputs=inputs or [],
        store=store.path,
        dataset=dataset,
        findings=rank(findings, dataset),
        thresholds={
            "min_traces": a.thresholds.min_traces,
            "min_share": a.thresholds.min_share,
            "applied_min_traces": a.minimum,
        },
        notes=[
            f"A finding needs at least {a.minimum} affected traces (min_traces={a.thresholds.min_traces}, "
            f"min_share={a.thresholds.min_share:g} of {a.traces:,} traces); one-off errors are not reported."
        ],
    )


# --- error detectors --------------------------------------------------------------------------


def error_findings(a: Analysis) -> list[Finding]:
    """Findings from leaf errors, one per (category, key) — plus message template for residual
    tool errors and other errors, where one tool can fail in several unrelated ways."""
    findings = []
    groups = a.rows(
        """
        SELECT category, key, CASE WHEN category IN ('tool_error', 'other') THEN error_template END AS template,
               count(DISTINCT trace_id) AS traces, count(*) AS errors,
               sum(duration_ns) / 1e6 AS latency_ms, list_distinct(list(kind)) AS kinds
        FROM halo_errors GROUP BY ALL HAVING count(DISTINCT trace_id) >= ?
        ORDER BY traces DESC, category, key, template""",
        [a.minimum],
    )
    for g in groups:
        category, key, template = g["category"], g["key"], g["template"]
        condition = f"category = '{category}' AND key = {sql_literal(key)}"
        if template is not None:
            condition += f" AND error_template = {sql_literal(template)}"
        query = f"SELECT trace_id FROM ({CLASSIFIED}) WHERE {condition}"
        affected = a.count(query)
        evidence = a.evidence(
            f"SELECT trace_id, span_id, error_text AS excerpt, '' AS note, start_ns AS first_seen "
            f"FROM halo_errors WHERE {condition}"
        )
        example = evidence[0].excerpt if evidence else ""
        extra = a.rows(f"SELECT count(*) - count(DISTINCT trace_id) AS n FROM halo_errors WHERE {condition}")[
            0
        ]["n"]
        spec = ERROR_CATEGORIES[category]
        findings.append(
            Finding(
                id=_id(category, key, template),
                title=spec.title(key, template),
                category=category,
                severity=spec.severity,
                key=key,
                affected_traces=affected,
                affected_trace_share=0.0,
                impact=Impact(
                    errors=g["errors"],
                    extra_turns=g["errors"] if category in RETRIED else int(extra),
                    latency_ms=round(g["latency_ms"] or 0.0, 1),
                ),
                evidence=evidence,
                recommendation=spec.recommend(key, template, example),
                confidence=spec.confidence,
                source=f"detector:{category}",
                query=query,
                query_dialect=a.store.dialect,
                details=f"{g['errors']:,} failing {'/'.join(sorted(g['kinds'])).lower()} spans in {affected:,} traces"
                + (f"; message template: “{template}”" if template else "")
                + ".",
            )
        )
    return findings


RETRIED = {"hallucinated_tool", "invalid_tool_arguments", "rate_limit"}  # each failure costs an extra call


@dataclass(frozen=True)
class _Category:
    severity: str
    confidence: float
    title: Callable[[str, str | None], str]
    recommend: Callable[[str, str | None, str], str]


def _quote(text: str) -> str:
    return f"“{one_line(text, 160)}”" if text else ""


ERROR_CATEGORIES: dict[str, _Category] = {
    "hallucinated_tool": _Category(
        "high",
        0.9,
        lambda k, t: f"The model calls `{k}`, a tool that does not exist",
        lambda k, t, e: (
            f"The agent calls `{k}`, which is not among its tools ({_quote(e)}). If the capability is "
            f"needed, add `{k}` as a real tool with a schema; otherwise list the available tools and what "
            f"to do instead in the agent's system prompt, and make the unknown-tool error name the valid "
            f"tools so the model can recover in one step."
        ),
    ),
    "invalid_tool_arguments": _Category(
        "medium",
        0.9,
        lambda k, t: f"`{k}` is called with invalid arguments",
        lambda k, t, e: (
            f"Calls to `{k}` fail argument validation ({_quote(e)}). Tighten the tool's JSON schema "
            f"(mark required fields `required`, give formats and enums, add one example in the "
            f"description), return the validation message to the model so it can fix the call, and "
            f"coerce harmless variations (date formats, string numbers) in the tool itself."
        ),
    ),
    "context_overflow": _Category(
        "high",
        0.9,
        lambda k, t: f"Requests to `{k}` exceed its context window",
        lambda k, t, e: (
            f"Calls to `{k}` fail with a context-length error ({_quote(e)}). Cap tool outputs before they "
            f"enter the conversation (truncate or summarise large results), trim or summarise old turns "
            f"against a token budget below the model's window, and catch `context_length_exceeded` to "
            f"compact and retry instead of ending the run."
        ),
    ),
    "rate_limit": _Category(
        "medium",
        0.9,
        lambda k, t: f"Rate limits on `{k}` cause retry storms",
        lambda k, t, e: (
            f"`{k}` calls are rejected with rate-limit errors ({_quote(e)}), often several times per run. "
            f"Honour `Retry-After` with full-jitter exponential backoff, cap concurrent requests per "
            f"provider with a shared limiter, raise the provider quota or spread load to a fallback "
            f"model, and count retries against the run's budget."
        ),
    ),
    "timeout": _Category(
        "medium",
        0.85,
        lambda k, t: f"`{k}` times out",
        lambda k, t, e: (
            f"`{k}` calls time out ({_quote(e)}). Set an explicit, shorter per-call timeout with one "
            f"retry, return a clear timeout result to the model (so it can try another source) instead "
            f"of hanging the run, and check the dependency's latency and capacity."
        ),
    ),
    "guardrail": _Category(
        "medium",
        0.85,
        lambda k, t: f"The `{k}` guardrail trips and stops runs",
        lambda k, t, e: (
            f"The `{k}` guardrail stops runs ({_quote(e)}). Fix what triggers it at the source: tell the "
            f"agent in its system prompt what it must not output (and how to redact), and let the "
            f"guardrail ask for a corrected answer instead of failing the whole run."
        ),
    ),
    "handoff": _Category(
        "high",
        0.85,
        lambda k, t: f"Handoffs to `{k}` fail",
        lambda k, t, e: (
            f"Handoffs to `{k}` fail ({_quote(e)}). Make the handoff's input schema match what the "
            f"calling agent provides (or describe the required fields in the handoff tool's "
            f"description), validate before handing off, and give the caller a fallback when the "
            f"handoff is rejected."
        ),
    ),
    "max_turns": _Category(
        "high",
        0.9,
        lambda k, t: f"`{k}` runs out of turns without answering",
        lambda k, t, e: (
            f"`{k}` hits its turn limit ({_quote(e)}). Tell it in the system prompt how many turns it "
            f"has and when to stop searching and answer with what it found, add a progress check "
            f"(e.g. after N tool calls without new information, answer), and make the last turn force "
            f"a final answer rather than fail."
        ),
    ),
    "tool_error": _Category(
        "medium",
        0.8,
        lambda k, t: f"`{k}` fails: {one_line(t or 'error', 90)}",
        lambda k, t, e: (
            f"`{k}` keeps failing the same way ({_quote(e)}). Handle this case inside the tool: return a "
            f"structured result the model can act on (e.g. `found: false` with a reason) instead of an "
            f"error, document the case in the tool description, and tell the agent in its prompt what "
            f"to do next (ask the user, try an alternative) so it does not retry blindly."
        ),
    ),
    "other": _Category(
        "medium",
        0.75,
        lambda k, t: f"`{k}` fails: {one_line(t or 'error', 90)}",
        lambda k, t, e: (
            f"`{k}` fails repeatedly with the same error ({_quote(e)}). Find where this span's code "
            f"raises it, handle that case, and surface a clear message to the agent."
        ),
    ),
}


# --- structural detectors ---------------------------------------------------------------------


def unoffered_tool_calls(a: Analysis) -> list[Finding]:
    """Tool calls the model made to tools it was not offered (the span's own tool list, or the
    trace's). Error-based hallucinations are merged in by `merge_hallucinations`."""
    calls = """
        SELECT c.trace_id, c.span_id, c.tool, c.start_ns, c.arguments
        FROM (SELECT trace_id, span_id, start_ns, tools_offered AS own, unnest(tool_calls).name AS tool,
                     unnest(tool_calls).arguments AS arguments
              FROM spans WHERE kind = 'LLM' AND tool_calls IS NOT NULL) c
        JOIN (SELECT trace_id, list_distinct(flatten(list(tools_offered))) AS tools FROM spans
              WHERE tools_offered IS NOT NULL GROUP BY trace_id) o USING (trace_id)
        WHERE len(o.tools) > 0 AND c.tool IS NOT NULL AND NOT list_contains(coalesce(c.own, o.tools), c.tool)"""
    findings = []
    for g in a.rows(f"SELECT tool, count(*) AS calls FROM ({calls}) GROUP BY tool ORDER BY tool"):
        tool = g["tool"]
        query = (
            f"SELECT trace_id FROM ({calls}) WHERE tool = {sql_literal(tool)} UNION "
            f"SELECT trace_id FROM ({CLASSIFIED}) WHERE category = 'hallucinated_tool' AND key = {sql_literal(tool)}"
        )
        affected = a.count(query)
        if affected < a.minimum:
            continue
        offered = a.rows(
            f"""SELECT list_distinct(flatten(list(tools_offered)))[:12] AS tools FROM spans
            WHERE tools_offered IS NOT NULL AND trace_id IN (SELECT trace_id FROM ({calls}) WHERE tool = ?)""",
            [tool],
        )
        tools = ", ".join(f"`{t}`" for t in sorted(offered[0]["tools"] or [])) or "none recorded"
        evidence = a.evidence(
            f"SELECT trace_id, span_id, tool AS excerpt, 'the model calls ' || tool || '(' || "
            f"coalesce(arguments, '') || '), a tool it was not offered' AS note, start_ns AS first_seen "
            f"FROM ({calls}) WHERE tool = {sql_literal(tool)}"
        )
        spec = ERROR_CATEGORIES["hallucinated_tool"]
        findings.append(
            Finding(
                id=_id("hallucinated_tool", tool),
                title=spec.title(tool, None),
                category="hallucinated_tool",
                severity="high",
                key=tool,
                affected_traces=affected,
                affected_trace_share=0.0,
                impact=Impact(extra_turns=g["calls"]),
                evidence=evidence,
                confidence=0.9,
                source="detector:unoffered_tool_calls",
                query=query,
                query_dialect=a.store.dialect,
                details=f"The model called `{tool}` {g['calls']:,} times although it was offered only: {tools}.",
                recommendation=f"The model calls `{tool}`, which it was not offered (it has {tools}). If the capability "
                f"is needed, add `{tool}` as a real tool with a schema; otherwise state in the agent's "
                f"system prompt which tools exist and how to handle this request without `{tool}`, and "
                f"make the unknown-tool error list the valid tools so the model recovers in one step.",
            )
        )
    return findings


def merge(findings: list[Finding], kept: str, dropped: str) -> list[Finding]:
    """One finding per key when two detectors see the same thing: drop `dropped`'s finding for a
    key that `kept` also reported (the call-based hallucination query already counts the error-based
    traces; a guardrail that fails runs is reported by its errors, not by its trips)."""
    keys = {f.key for f in findings if f.source == kept}
    return [f for f in findings if not (f.source == dropped and f.key in keys)]


def repetition_loops(a: Analysis) -> list[Finding]:
    """The same tool called with the same arguments `repeat_calls` or more times in one run."""
    n = a.thresholds.repeat_calls
    repeats = f"""
        SELECT trace_id, tool_name AS tool, tool_args AS args, count(*) AS calls, min(span_id) AS span_id,
               min(start_ns) AS start_ns
        FROM spans WHERE kind = 'TOOL' AND tool_name IS NOT NULL AND tool_args IS NOT NULL
        GROUP BY trace_id, tool_name, tool_args HAVING count(*) >= {n}
        UNION ALL
        SELECT trace_id, tool, args, count(*), min(span_id), min(start_ns) FROM (
          SELECT trace_id, span_id, start_ns, unnest(tool_calls).name AS tool, unnest(tool_calls).arguments AS args
          FROM spans s WHERE kind = 'LLM' AND tool_calls IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM spans t WHERE t.trace_id = s.trace_id AND t.kind = 'TOOL'))
        WHERE tool IS NOT NULL GROUP BY trace_id, tool, args HAVING count(*) >= {n}"""
    findings = []
    for g in a.rows(
        f"""SELECT tool, count(DISTINCT trace_id) AS traces, sum(calls - 1) AS extra
                        FROM ({repeats}) GROUP BY tool HAVING count(DISTINCT trace_id) >= ? ORDER BY tool""",
        [a.minimum],
    ):
        tool = g["tool"]
        query = f"SELECT trace_id FROM ({repeats}) WHERE tool = {sql_literal(tool)}"
        evidence = a.evidence(
            f"SELECT trace_id, span_id, args AS excerpt, calls || ' identical ' || tool || ' calls' "
            f"AS note, start_ns AS first_seen FROM ({repeats}) WHERE tool = {sql_literal(tool)}"
        )
        findings.append(
            Finding(
                id=_id("repetition_loop", tool),
                title=f"The agent calls `{tool}` with the same arguments over and over",
                category="repetition_loop",
                severity="medium",
                key=tool,
                affected_traces=a.count(query),
                affected_trace_share=0.0,
                impact=Impact(extra_turns=int(g["extra"])),
                evidence=evidence,
                confidence=0.85,
                source="detector:repetition_loop",
                query=query,
                query_dialect=a.store.dialect,
                details=f"{int(g['extra']):,} redundant `{tool}` calls: the same arguments {n} or more times in one run.",
                recommendation=f"The agent repeats identical `{tool}` calls. Keep a record of calls already made in "
                f"the loop and return the cached result (or an explicit 'you already ran this; it "
                f"returned …') for a repeat; tell the agent in its prompt to change the query or answer "
                f"when a call brings nothing new; and stop the run after {n} identical calls.",
            )
        )
    return findings


def refusals(a: Analysis) -> list[Finding]:
    """Model outputs that refuse the request, in any of several languages."""
    matches = f"""
        SELECT s.trace_id, s.span_id, s.start_ns, coalesce(s.agent_name, t.agents[1], s.service) AS agent,
               coalesce(s.output_messages::VARCHAR, s.output_value) AS output
        FROM spans s JOIN traces t USING (trace_id)
        WHERE s.kind = 'LLM' AND regexp_matches(coalesce(s.output_messages::VARCHAR, s.output_value, ''),
                                                {sql_literal("(?i)" + REFUSAL)})"""
    findings = []
    for g in a.rows(
        f"""SELECT agent, count(DISTINCT trace_id) AS traces, count(*) AS calls FROM ({matches})
                        GROUP BY agent HAVING count(DISTINCT trace_id) >= ? ORDER BY agent""",
        [a.minimum],
    ):
        agent = g["agent"]
        condition = f"agent = {sql_literal(agent)}" if agent is not None else "agent IS NULL"
        query = f"SELECT trace_id FROM ({matches}) WHERE {condition}"
        evidence = a.evidence(
            f"SELECT trace_id, span_id, regexp_extract(output, {sql_literal('(?i)' + REFUSAL)}) "
            f"AS excerpt, 'the model refuses' AS note, start_ns AS first_seen FROM ({matches}) "
            f"WHERE {condition}"
        )
        findings.append(
            Finding(
                id=_id("refusal", agent or "unknown"),
                title=f"`{agent}` refuses ordinary requests",
                category="refusal",
                severity="high",
                key=agent,
                affected_traces=a.count(query),
                affected_trace_share=0.0,
                impact=Impact(extra_turns=g["calls"]),
                evidence=evidence,
                confidence=0.8,
                source="detector:refusal",
                query=query,
                query_dialect=a.store.dialect,
                details=f"{g['calls']:,} model answers that refuse, in {g['traces']:,} runs.",
                recommendation=f"`{agent}` refuses requests it should handle. State plainly in its system prompt what it "
                f"is allowed and expected to do (with examples of these requests), remove or narrow "
                f"over-broad safety wording, and retry once with a clarifying instruction when the model "
                f"refuses; review the refused requests in the evidence for a common trigger.",
            )
        )
    return findings


def truncated_outputs(a: Analysis) -> list[Finding]:
    """Model outputs cut by the output-token limit, or empty (no text and no tool call)."""
    outputs = """
        SELECT trace_id, span_id, start_ns, coalesce(model, 'unknown') AS model, output_tokens,
               CASE WHEN lower(finish_reason) IN ('length', 'max_tokens', 'max_output_tokens', 'model_length')
                    THEN 'cut at the output limit (finish_reason ' || finish_reason || ')'
                    ELSE 'empty output' END AS problem
        FROM spans
        WHERE kind = 'LLM' AND status <> 'ERROR' AND (
          lower(finish_reason) IN ('length', 'max_tokens', 'max_output_tokens', 'model_length')
          OR (tool_calls IS NULL AND output_messages IS NOT NULL
              AND coalesce(trim(array_to_string(json_extract_string(output_messages, '$[*].content'), '')), '') = '')
          OR (tool_calls IS NULL AND output_messages IS NULL AND output_value IS NOT NULL AND trim(output_value) = ''))"""
    findings = []
    for g in a.rows(
        f"""SELECT model, count(DISTINCT trace_id) AS traces, count(*) AS calls, max(output_tokens) AS cap
                        FROM ({outputs}) GROUP BY model HAVING count(DISTINCT trace_id) >= ? ORDER BY model""",
        [a.minimum],
    ):
        model = g["model"]
        query = f"SELECT trace_id FROM ({outputs}) WHERE model = {sql_literal(model)}"
        evidence = a.evidence(
            f"SELECT trace_id, span_id, '' AS excerpt, problem || coalesce(', ' || output_tokens || "
            f"' output tokens', '') AS note, start_ns AS first_seen FROM ({outputs}) "
            f"WHERE model = {sql_literal(model)}"
        )
        cap = f" (outputs stop at about {g['cap']:,} tokens)" if g["cap"] else ""
        findings.append(
            Finding(
                id=_id("empty_or_truncated_output", model),
                title=f"`{model}` returns empty or truncated answers",
                category="empty_or_truncated_output",
                severity="high",
                key=model,
                affected_traces=a.count(query),
                affected_trace_share=0.0,
                impact=Impact(extra_turns=g["calls"]),
                evidence=evidence,
                confidence=0.85,
                source="detector:empty_or_truncated_output",
                query=query,
                query_dialect=a.store.dialect,
                details=f"{g['calls']:,} `{model}` answers were empty or cut off{cap}.",
                recommendation=f"`{model}` answers are cut by the output-token limit or come back empty. Raise "
                f"`max_tokens` for the final answer (reasoning models spend output tokens on thinking), "
                f"ask for a shorter answer format in the prompt, and detect `finish_reason == 'length'` "
                f"or an empty answer to continue or retry instead of returning it to the user.",
            )
        )
    return findings


def triggered_guardrails(a: Analysis) -> list[Finding]:
    """Guardrail spans that report tripping without marking an error (errors are `error_findings`')."""
    trips = """
        SELECT trace_id, span_id, start_ns,
               coalesce(json_extract_string(raw, '$.attributes."guardrail.name"'), regexp_replace(name, '^guardrail[._ ]', ''))
                 AS guardrail
        FROM spans WHERE kind = 'GUARDRAIL' AND status <> 'ERROR'
          AND lower(coalesce(json_extract_string(raw, '$.attributes."guardrail.triggered"'), '')) IN ('true', '1')"""
    findings = []
    for g in a.rows(
        f"""SELECT guardrail, count(DISTINCT trace_id) AS traces FROM ({trips}) GROUP BY 1
                        HAVING count(DISTINCT trace_id) >= ? ORDER BY 1""",
        [a.minimum],
    ):
        name = g["guardrail"]
        query = f"SELECT trace_id FROM ({trips}) WHERE guardrail = {sql_literal(name)}"
        spec = ERROR_CATEGORIES["guardrail"]
        findings.append(
            Finding(
                id=_id("guardrail", name, "tripped"),
                title=f"The `{name}` guardrail trips",
                category="guardrail",
                severity="medium",
                key=name,
                affected_traces=a.count(query),
                affected_trace_share=0.0,
                evidence=a.evidence(
                    f"SELECT trace_id, span_id, '' AS excerpt, 'guardrail ' || guardrail || ' triggered' "
                    f"AS note, start_ns AS first_seen FROM ({trips}) WHERE guardrail = {sql_literal(name)}"
                ),
                confidence=0.85,
                source="detector:guardrail_trips",
                query=query,
                query_dialect=a.store.dialect,
                details=f"The `{name}` guardrail reported a trip in {g['traces']:,} runs.",
                recommendation=spec.recommend(name, None, ""),
            )
        )
    return findings


def slow_calls(a: Analysis) -> list[Finding]:
    """Tools (and other work spans) whose slow calls dominate the runs they are in: calls over
    `slow_factor` × the median of the same tool and over `slow_ms`, that take a third or more of
    their run. Failed calls are left to the timeout detector."""
    t = a.thresholds
    slow = f"""
        SELECT s.trace_id, s.span_id, s.start_ns, s.name_key, s.duration_ns, m.median_ns, tr.duration_ns AS run_ns
        FROM (SELECT *, coalesce(tool_name, name) AS name_key FROM spans
              WHERE kind IN ('TOOL', 'RETRIEVER', 'EMBEDDING', 'RERANKER') AND status <> 'ERROR') s
        JOIN (SELECT coalesce(tool_name, name) AS name_key, median(duration_ns) AS median_ns FROM spans
              WHERE kind IN ('TOOL', 'RETRIEVER', 'EMBEDDING', 'RERANKER') AND status <> 'ERROR' GROUP BY 1) m
          USING (name_key)
        JOIN traces tr USING (trace_id)
        WHERE s.duration_ns > {t.slow_factor} * m.median_ns AND s.duration_ns >= {int(t.slow_ms * 1e6)}
          AND s.duration_ns * 3 >= tr.duration_ns"""
    findings = []
    for g in a.rows(
        f"""SELECT name_key, count(DISTINCT trace_id) AS traces, count(*) AS calls,
                               sum(duration_ns - median_ns) / 1e6 AS excess_ms, median(duration_ns) / 1e6 AS slow_ms,
                               any_value(median_ns) / 1e6 AS usual_ms, avg(duration_ns / run_ns) AS run_share
                        FROM ({slow}) GROUP BY name_key HAVING count(DISTINCT trace_id) >= ? ORDER BY name_key""",
        [a.minimum],
    ):
        name = g["name_key"]
        query = f"SELECT trace_id FROM ({slow}) WHERE name_key = {sql_literal(name)}"
        evidence = a.evidence(
            f"SELECT trace_id, span_id, '' AS excerpt, name_key || ' took ' || "
            f"round(duration_ns / 1e9, 1) || ' s of a ' || round(run_ns / 1e9, 1) || ' s run' AS note, "
            f"start_ns AS first_seen FROM ({slow}) WHERE name_key = {sql_literal(name)}"
        )
        findings.append(
            Finding(
                id=_id("latency", name),
                title=f"`{name}` is slow and dominates its runs",
                category="latency",
                severity="medium",
                key=name,
                affected_traces=a.count(query),
                affected_trace_share=0.0,
                impact=Impact(latency_ms=round(g["excess_ms"], 1)),
                evidence=evidence,
                confidence=0.75,
                source="detector:latency",
                query=query,
                query_dialect=a.store.dialect,
                details=f"{g['calls']:,} `{name}` calls took {g['slow_ms'] / 1000:.1f} s (median of the slow ones) "
                f"against a usual {g['usual_ms'] / 1000:.1f} s, {g['run_share']:.0%} of their runs on average.",
                recommendation=f"`{name}` sometimes takes {g['slow_ms'] / 1000:.0f}+ s and dominates its runs. Profile it "
                f"for the slow inputs in the evidence; add caching or pagination, a per-call timeout with a "
                f"fast fallback, and run it concurrently with independent calls; if it is inherently slow, "
                f"tell the agent (in the tool description) to call it once with precise arguments.",
            )
        )
    return findings


def token_hogs(a: Analysis) -> list[Finding]:
    """LLM calls whose prompts are far larger than usual (token_factor × the median prompt), by agent."""
    t = a.thresholds
    hogs = f"""
        SELECT s.trace_id, s.span_id, s.start_ns, s.input_tokens, s.cost, s.model,
               coalesce(s.agent_name, tr.agents[1], s.service, 'unknown') AS agent, m.median_tokens
        FROM spans s JOIN traces tr USING (trace_id)
        CROSS JOIN (SELECT median(input_tokens) AS median_tokens FROM spans WHERE kind = 'LLM' AND input_tokens > 0) m
        WHERE s.kind = 'LLM' AND s.input_tokens >= greatest({t.token_factor} * m.median_tokens, {t.min_outlier_tokens})"""
    findings = []
    for g in a.rows(
        f"""SELECT agent, count(DISTINCT trace_id) AS traces, count(*) AS calls,
                               sum(input_tokens - median_tokens)::BIGINT AS excess, median(input_tokens) AS typical,
                               any_value(median_tokens) AS usual, coalesce(sum(cost), 0) AS cost
                        FROM ({hogs}) GROUP BY agent HAVING count(DISTINCT trace_id) >= ? ORDER BY agent""",
        [a.minimum],
    ):
        agent = g["agent"]
        query = f"SELECT trace_id FROM ({hogs}) WHERE agent = {sql_literal(agent)}"
        evidence = a.evidence(
            f"SELECT trace_id, span_id, '' AS excerpt, model || ' call with ' || input_tokens || "
            f"' prompt tokens' AS note, start_ns AS first_seen FROM ({hogs}) "
            f"WHERE agent = {sql_literal(agent)}"
        )
        findings.append(
            Finding(
                id=_id("cost", agent),
                title=f"`{agent}` sends oversized prompts",
                category="cost",
                severity="medium",
                key=agent,
                affected_traces=a.count(query),
                affected_trace_share=0.0,
                impact=Impact(tokens=int(g["excess"]), cost_usd=round(float(g["cost"]), 4)),
                evidence=evidence,
                confidence=0.75,
                source="detector:cost",
                query=query,
                query_dialect=a.store.dialect,
                details=f"{g['calls']:,} `{agent}` LLM calls carried a median {int(g['typical']):,} prompt tokens against "
                f"a usual {int(g['usual']):,}: {int(g['excess']):,} extra tokens.",
                recommendation=f"`{agent}` puts far more context than needed into its prompts. Find what is injected "
                f"wholesale (history, documents, tool results) and retrieve or summarise only what the "
                f"current step needs, cap each tool result's size, enable prompt caching for the stable "
                f"prefix, and set a per-call prompt-token budget with an alert.",
            )
        )
    return findings


def errors_and_calls(a: Analysis) -> list[Finding]:
    found = error_findings(a) + unoffered_tool_calls(a) + triggered_guardrails(a)
    found = merge(found, kept="detector:unoffered_tool_calls", dropped="detector:hallucinated_tool")
    return merge(found, kept="detector:guardrail", dropped="detector:guardrail_trips")


DETECTORS: list[Detector] = [
    errors_and_calls,
    repetition_loops,
    refusals,
    truncated_outputs,
    slow_calls,
    token_hogs,
]


# --- dataset summary --------------------------------------------------------------------------


def dataset_summary(store: TraceStore) -> DatasetSummary:
    o = store.overview(top=50)
    stats = store.query("""
        SELECT coalesce(sum(duration_ns), 0) / 1e6 AS total_ms, median(duration_ns) / 1e6 AS p50,
               quantile_cont(duration_ns, 0.95) / 1e6 AS p95 FROM traces""")[0]
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
        total_duration_ms=round(stats["total_ms"], 1),
        duration_ms_p50=stats["p50"],
        duration_ms_p95=stats["p95"],
        duration_histogram=_histogram(
            store,
            "duration_ns / 1e6",
            [1_000, 5_000, 15_000, 30_000, 60_000, 120_000],
            lambda v: f"{v / 1000:g} s",
        ),
        cost_histogram=_histogram(store, "cost", [0.001, 0.01, 0.05, 0.1, 0.5, 1.0], lambda v: f"${v:g}"),
    )


def _histogram(
    store: TraceStore, expr: str, edges: list[float], label: Callable[[float], str]
) -> list[Bucket]:
    cases = " ".join(f"WHEN v < {edge} THEN {i}" for i, edge in enumerate(edges))
    rows = {
        r["b"]: r["n"]
        for r in store.query(
            f"SELECT CASE {cases} ELSE {len(edges)} END AS b, count(*) AS n FROM (SELECT {expr} AS v FROM traces) "
            f"WHERE v IS NOT NULL GROUP BY 1"
        )
    }
    labels = (
        [f"< {label(edges[0])}"]
        + [f"{label(lo)}–{label(hi)}" for lo, hi in zip(edges, edges[1:])]
        + [f"≥ {label(edges[-1])}"]
    )
    return [Bucket(label=text, count=rows.get(i, 0)) for i, text in enumerate(labels)] if rows else []


def _id(category: str, key: str | None, extra: str | None = None) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", (key or "unknown")).strip("-")[:60]
    if extra:
        slug += "-" + hashlib.sha256(extra.encode()).hexdigest()[:6]
    return f"{category}:{slug}"
