"""The report: the contract between the detectors, the LLM engine, the CLI and the web UI.

A `Report` holds ranked `Finding`s, each with evidence a person (or a coding agent) can check by
hand and a concrete recommendation. It is written as `report.json`, `report.md` and a
self-contained `report.html`, and `verify` re-checks every claim against the trace store.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import jinja2
import markupsafe
import orjson
from pydantic import BaseModel, Field

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
CATEGORIES: dict[str, str] = {
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


class ModelUsage(BaseModel):
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0


class AgentUsage(BaseModel):
    agent_id: str
    name: str
    depth: int
    parent_id: str | None = None
    status: str
    calls: int = 0
    turns: int = 0
    tool_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0


class Usage(BaseModel):
    """What an LLM analysis consumed, by model and by agent."""

    models: dict[str, ModelUsage] = Field(default_factory=dict)
    agents: int = 0
    turns: int = 0
    tool_calls: int = 0
    seconds: float = 0.0
    per_agent: list[AgentUsage] = Field(default_factory=list)

    @property
    def cost_usd(self) -> float:
        return sum(m.cost_usd for m in self.models.values())

    @property
    def tokens(self) -> int:
        return sum(m.input_tokens + m.output_tokens for m in self.models.values())


class Verification(BaseModel):
    verified: int = 0
    flagged: int = 0
    unverifiable: int = 0
    missing_citations: list[str] = Field(
        default_factory=list, description="[trace:…]/[span:…] cited in the answer but not in the store"
    )
    checked_at: str | None = None


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
    usage: Usage | None = None
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


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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


# --- verification -----------------------------------------------------------------------------


CITATION = re.compile(r"\[(trace|span):([^\]:\s]+)(?::([^\]\s]+))?\]")


def verify(report: Report, store: Any) -> Report:
    """Re-check a report against a read-only store: cited traces and spans exist (in the findings
    and in the answer's text), excerpts are in the spans they cite, and `affected_traces` matches a
    recount of the finding's query (within 2%, or 1 trace). Problems are recorded, never hidden."""
    cited = [
        Evidence(trace_id=t, span_id=s or None)
        for kind, t, s in CITATION.findall(report.answer or "")
        if kind == "trace" or s
    ]
    traces, spans = _existing(store, [ev for f in report.findings for ev in f.evidence] + cited)
    summary = Verification(checked_at=now_iso())
    summary.missing_citations = sorted(
        {
            cite(ev)
            for ev in cited
            if ev.trace_id not in traces or (ev.span_id and (ev.trace_id, ev.span_id) not in spans)
        }
    )
    for f in report.findings:
        problems: list[str] = []
        for ev in f.evidence:
            if ev.trace_id not in traces:
                problems.append(f"cited trace {ev.trace_id} is not in the store")
            elif ev.span_id is not None and (ev.trace_id, ev.span_id) not in spans:
                problems.append(f"cited span {ev.trace_id}:{ev.span_id} is not in the store")
            elif (
                ev.span_id is not None
                and ev.excerpt
                and not _excerpt_found(spans[(ev.trace_id, ev.span_id)], ev.excerpt)
            ):
                problems.append(f"excerpt not found in span {ev.trace_id}:{ev.span_id}")
        recount = None
        if f.query:
            try:
                result = store.sql(
                    f"SELECT count(DISTINCT trace_id) FROM ({f.query.rstrip().rstrip(';')})", max_rows=1
                )
                recount = int(result.rows[0][0])
            except Exception as exc:  # the store reports query problems as StoreError; keep the message
                problems.append(f"its query does not run: {exc}")
            else:
                if abs(recount - f.affected_traces) > max(1, 0.02 * max(recount, f.affected_traces)):
                    problems.append(f"claims {f.affected_traces} affected traces; its query finds {recount}")
        if problems:
            status = "flagged"
        elif recount is None and not f.evidence:
            status, problems = "unverifiable", ["no query and no evidence to check"]
        else:
            status = "verified"
        f.check = Check(status=status, problems=problems, recount=recount)
        setattr(summary, status, getattr(summary, status) + 1)
    report.verification = summary
    return report


def _existing(store: Any, evidence: list[Evidence]) -> tuple[set[str], dict[tuple[str, str], str]]:
    """Which of the cited traces exist, and the raw record of each cited span that exists."""
    trace_ids = sorted({ev.trace_id for ev in evidence})
    span_ids = sorted({(ev.trace_id, ev.span_id) for ev in evidence if ev.span_id})
    traces: set[str] = set()
    spans: dict[tuple[str, str], str] = {}
    for chunk in _chunks(trace_ids, 500):
        listed = ", ".join(sql_literal(t) for t in chunk)
        traces |= {
            row[0]
            for row in store.sql(
                f"SELECT trace_id FROM traces WHERE trace_id IN ({listed})",
                max_rows=len(chunk),
                max_bytes=10**8,
            ).rows
        }
    for chunk in _chunks(span_ids, 200):
        pairs = ", ".join(f"({sql_literal(t)}, {sql_literal(s)})" for t, s in chunk)
        rows = store.sql(
            f"SELECT trace_id, span_id, raw FROM spans WHERE (trace_id, span_id) IN ({pairs})",
            max_rows=len(chunk),
            max_bytes=10**9,
        ).rows
        spans |= {(t, s): raw for t, s, raw in rows}
    return traces, spans


def _excerpt_found(raw: str, excerpt: str) -> bool:
    """An excerpt is backed when a stretch of it (8+ characters) appears in one of the span's text
    values, JSON escapes decoded and whitespace collapsed. "…" and " | " mark where an excerpt was
    cut or joined."""
    haystack = _collapse("\n".join(_strings(_loads(raw))))
    pieces = [_collapse(p) for p in re.split(r"…|\.\.\.| \| ", excerpt)]
    pieces = [p for p in pieces if len(p) >= 8]
    return not pieces or any(p[:120] in haystack for p in pieces)


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _strings(value: Any) -> list[str]:
    """Every string (and number) in a JSON value, with strings that hold JSON opened too."""
    if isinstance(value, str):
        inner = _loads(value) if value[:1] in ("{", "[") else value
        return [value] + ([] if inner is value else _strings(inner))
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [str(k), *_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [] if value is None else [str(value)]


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# --- rendering --------------------------------------------------------------------------------


def write(report: Report, out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.md and report.html into `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "html": out / "report.html"}
    paths["json"].write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(to_markdown(report), encoding="utf-8")
    paths["html"].write_text(to_html(report), encoding="utf-8")
    return paths


def cite(ev: Evidence) -> str:
    return f"[span:{ev.trace_id}:{ev.span_id}]" if ev.span_id else f"[trace:{ev.trace_id}]"


def _pct(share: float) -> str:
    return f"{share * 100:.1f}%" if share < 0.1 else f"{share * 100:.0f}%"


def _impact_text(impact: Impact) -> str:
    parts = []
    if impact.errors:
        parts.append(f"{impact.errors:,} error spans")
    if impact.extra_turns:
        parts.append(f"{impact.extra_turns:,} extra calls")
    if impact.latency_ms:
        parts.append(f"{_duration(impact.latency_ms)} of run time")
    if impact.tokens:
        parts.append(f"{impact.tokens:,} tokens")
    if impact.cost_usd:
        parts.append(f"${impact.cost_usd:,.2f}")
    return ", ".join(parts) or "—"


def _duration(ms: float) -> str:
    if ms >= 3_600_000:
        return f"{ms / 3_600_000:.1f} h"
    if ms >= 60_000:
        return f"{ms / 60_000:.1f} min"
    return f"{ms / 1000:.1f} s" if ms >= 1000 else f"{ms:.0f} ms"


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _evidence_text(ev: Evidence) -> str:
    parts = [ev.note] if ev.note else []
    if ev.excerpt:
        parts.append(f"“{_one_line(ev.excerpt)}”")
    return (" — " + "; ".join(parts)) if parts else ""


def to_markdown(report: Report) -> str:
    d = report.dataset
    lines = [f"# {report.title}", ""]
    mode = "LLM analysis" if report.mode == "llm" else "deterministic detectors (no LLM)"
    lines.append(
        f"Generated {report.generated_at} by {mode} over {d.traces:,} traces ({d.spans:,} spans, "
        f"{d.error_traces:,} with errors, {d.start or '?'} – {d.end or '?'})."
    )
    if report.prompt:
        lines += ["", f"Question: {report.prompt}"]
    if report.usage:
        u = report.usage
        lines += [
            "",
            f"Analysis used {u.tokens:,} tokens (${u.cost_usd:.4f}) in {u.seconds:.0f}s across "
            f"{u.agents} agents and {u.turns} model turns.",
        ]
    if report.verification:
        v = report.verification
        lines += [
            "",
            f"Verification: {v.verified} findings verified, {v.flagged} flagged, "
            f"{v.unverifiable} unverifiable (re-checked against the trace store).",
        ]
        if v.missing_citations:
            lines.append(
                f"**Not in the trace store (cited in the analysis):** {', '.join(v.missing_citations)}"
            )
    for note in report.notes:
        lines += ["", f"> {note}"]
    if report.answer:
        lines += ["", "## Analysis", "", report.answer.strip()]
    lines += ["", "## Findings", ""]
    if not report.findings:
        lines.append(
            "No systemic failure found above the thresholds "
            f"({', '.join(f'{k}={v:g}' for k, v in report.thresholds.items()) or 'defaults'})."
        )
    for i, f in enumerate(report.findings, 1):
        lines += [f"### {i}. {f.title}", ""]
        lines.append(
            f"- **Category:** `{f.category}` · **severity:** {f.severity} · **confidence:** "
            f"{f.confidence:.0%} · **source:** {f.source} · **id:** `{f.id}`"
        )
        lines.append(f"- **Affected:** {f.affected_traces:,} traces ({_pct(f.affected_trace_share)})")
        lines.append(f"- **Impact:** {_impact_text(f.impact)}")
        if f.check and f.check.status != "verified":
            lines.append(f"- **Verification:** {f.check.status}: {'; '.join(f.check.problems)}")
        if f.details:
            lines += ["", f.details]
        if f.evidence:
            lines += ["", "Evidence:"]
            for ev in f.evidence:
                lines.append(f"- {cite(ev)}" + _evidence_text(ev))
        lines += ["", f"**Recommendation:** {f.recommendation}", ""]
    if report.findings:
        lines += ["## Prioritised fix list", ""]
        for i, f in enumerate(report.findings, 1):
            lines.append(
                f"{i}. **{f.title}** (`{f.id}`, {f.affected_traces:,} traces): {_one_line(f.recommendation, 400)}"
            )
        lines.append("")
    lines += ["---", "", f"Ranking: {report.ranking}", ""]
    return "\n".join(lines)


_HTML = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>{{ r.title }}</title>
<style>
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#1d2430}
h1{margin-bottom:.2em} .muted{color:#667085} code{background:#f2f4f7;padding:0 .25em;border-radius:3px;font-size:90%}
.cards{display:flex;flex-wrap:wrap;gap:.8em;margin:1em 0}.card{border:1px solid #e4e7ec;border-radius:8px;padding:.6em 1em;min-width:120px}
.card b{display:block;font-size:1.4em}.finding{border:1px solid #e4e7ec;border-radius:8px;padding:1em;margin:1em 0}
.sev{display:inline-block;border-radius:10px;padding:0 .6em;font-size:.85em;color:#fff}
.critical{background:#b42318}.high{background:#d95f0e}.medium{background:#b88a00}.low{background:#667085}
.flag{color:#b42318;font-weight:600} ul.ev{padding-left:1.2em} ul.ev li{margin:.3em 0;word-break:break-word}
svg text{font-size:12px;fill:#344054} .charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:1em}
pre{white-space:pre-wrap;background:#f8f9fb;border:1px solid #e4e7ec;padding:1em;border-radius:8px}
</style></head><body>
<h1>{{ r.title }}</h1>
<p class="muted">Generated {{ r.generated_at }} by {{ "LLM analysis" if r.mode == "llm" else "deterministic detectors (no LLM)" }}.
{% if r.prompt %}Question: {{ r.prompt }}{% endif %}</p>
<div class="cards">
<div class="card">traces<b>{{ "{:,}".format(d.traces) }}</b></div>
<div class="card">with errors<b>{{ "{:,}".format(d.error_traces) }}</b></div>
<div class="card">spans<b>{{ "{:,}".format(d.spans) }}</b></div>
<div class="card">LLM cost<b>${{ "%.2f"|format(d.cost_usd) }}</b></div>
<div class="card">findings<b>{{ r.findings|length }}</b></div>
{% if r.verification %}<div class="card">verified<b>{{ r.verification.verified }}/{{ r.findings|length }}</b></div>{% endif %}
</div>
{% for note in r.notes %}<p class="muted">{{ note }}</p>{% endfor %}
{% if r.verification and r.verification.missing_citations %}<p class="flag">Cited in the analysis but not in the trace store: {{ r.verification.missing_citations|join(", ") }}</p>{% endif %}
<div class="charts">
<figure><figcaption>Findings by affected traces</figcaption>{{ findings_chart }}</figure>
<figure><figcaption>Run duration distribution</figcaption>{{ duration_chart }}</figure>
<figure><figcaption>Run cost distribution (LLM cost per trace)</figcaption>{{ cost_chart }}</figure>
</div>
{% if r.answer %}<h2>Analysis</h2><pre>{{ r.answer }}</pre>{% endif %}
<h2>Findings</h2>
{% for f in r.findings %}<div class="finding" id="{{ f.id }}">
<h3>{{ loop.index }}. {{ f.title }} <span class="sev {{ f.severity }}">{{ f.severity }}</span></h3>
<p class="muted"><code>{{ f.category }}</code> · {{ "{:,}".format(f.affected_traces) }} traces ({{ pct(f.affected_trace_share) }})
· impact: {{ impact(f.impact) }} · confidence {{ "%.0f"|format(f.confidence * 100) }}% · {{ f.source }} · <code>{{ f.id }}</code></p>
{% if f.check and f.check.status != "verified" %}<p class="flag">Verification {{ f.check.status }}: {{ f.check.problems|join("; ") }}</p>{% endif %}
{% if f.details %}<p>{{ f.details }}</p>{% endif %}
{% if f.evidence %}<ul class="ev">{% for ev in f.evidence %}<li><code>{{ cite(ev) }}</code>{{ evidence_text(ev) }}</li>{% endfor %}</ul>{% endif %}
<p><b>Recommendation:</b> {{ f.recommendation }}</p>
</div>{% else %}<p>No systemic failure found above the thresholds.</p>{% endfor %}
{% if r.findings %}<h2>Prioritised fix list</h2><ol>{% for f in r.findings %}<li><b>{{ f.title }}</b>: {{ f.recommendation }}</li>{% endfor %}</ol>{% endif %}
<p class="muted">{{ r.ranking }}</p>
</body></html>
""")


def to_html(report: Report) -> str:
    findings = [(f"{i}. {f.title}", f.affected_traces) for i, f in enumerate(report.findings[:15], 1)]
    return _HTML.render(
        r=report,
        d=report.dataset,
        pct=_pct,
        impact=_impact_text,
        cite=cite,
        evidence_text=_evidence_text,
        findings_chart=_bars(findings, label_width=300),
        duration_chart=_bars(
            [(b.label, b.count) for b in report.dataset.duration_histogram], label_width=110
        ),
        cost_chart=_bars([(b.label, b.count) for b in report.dataset.cost_histogram], label_width=110),
    )


def _bars(rows: list[tuple[str, int]], *, label_width: int) -> markupsafe.Markup:
    """A horizontal bar chart as inline SVG (the page must work offline, so no chart library)."""
    escape = markupsafe.escape
    if not rows:
        return markupsafe.Markup('<p class="muted">No data.</p>')
    width, bar_area, row_h = label_width + 280, 220, 22
    top = max(count for _, count in rows) or 1
    parts = [
        f'<svg role="img" width="{width}" height="{row_h * len(rows) + 6}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, (label, count) in enumerate(rows):
        y = i * row_h + 3
        bar = max(1, math.ceil(bar_area * count / top)) if count else 0
        short = label if len(label) <= label_width // 7 else label[: label_width // 7 - 1] + "…"
        parts.append(
            f'<text x="0" y="{y + 14}">{escape(short)}</text>'
            f'<rect x="{label_width}" y="{y + 3}" width="{bar}" height="{row_h - 8}" fill="#4e79a7"/>'
            f'<text x="{label_width + bar + 6}" y="{y + 14}">{count:,}</text>'
        )
    parts.append("</svg>")
    return markupsafe.Markup("".join(parts))
