"""Writing a report: `report.json`, `report.md` (for people and coding agents) and a self-contained
`report.html` (inline SVG charts, no scripts, works offline)."""

from __future__ import annotations

import math
from pathlib import Path

import jinja2
import markupsafe

from halo_rlm.report import Budgets, Evidence, Impact, Report, cite
from halo_rlm.utils import one_line

__all__ = ["to_html", "to_markdown", "write"]

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("halo_rlm", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def write(report: Report, out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.md and report.html into `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "html": out / "report.html"}
    paths["json"].write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(to_markdown(report), encoding="utf-8")
    paths["html"].write_text(to_html(report), encoding="utf-8")
    return paths


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


def _evidence_text(ev: Evidence) -> str:
    parts = [ev.note] if ev.note else []
    if ev.excerpt:
        parts.append(f"“{one_line(ev.excerpt, 300)}”")
    return (" — " + "; ".join(parts)) if parts else ""


def _budgets_text(budgets: Budgets) -> str:
    """One line: each budget's use against its limit, which one ended the run and what was cut."""
    shown = {
        "tokens": lambda n: f"{n:,.0f}",
        "cost_usd": lambda n: f"${n:,.4f}",
        "seconds": lambda n: f"{n:,.0f} s",
        "turns": lambda n: f"{n:,.0f}",
    }
    label = {"tokens": "tokens", "cost_usd": "cost", "seconds": "time", "turns": "root's turns"}
    parts = [
        f"{label[b.budget]} {shown[b.budget](b.used)} of {shown[b.budget](b.limit)}" for b in budgets.limits
    ]
    line = "Budgets: " + " · ".join(parts) + "."
    if budgets.ended_by:
        ended = {"tokens": "token budget", "cost_usd": "cost budget", "seconds": "time budget"}
        line += f" **The {ended.get(budgets.ended_by, 'turn limit')} ended the run.**"
    if budgets.cut:
        line += " Cut: " + "; ".join(one_line(c, 300) for c in budgets.cut) + "."
    return line


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
    if report.budgets:
        lines += ["", _budgets_text(report.budgets)]
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
                f"{i}. **{f.title}** (`{f.id}`, {f.affected_traces:,} traces): {one_line(f.recommendation, 400)}"
            )
        lines.append("")
    lines += ["---", "", f"Ranking: {report.ranking}", ""]
    return "\n".join(lines)


def to_html(report: Report) -> str:
    findings = [(f"{i}. {f.title}", f.affected_traces) for i, f in enumerate(report.findings[:15], 1)]
    return _TEMPLATES.get_template("report.html").render(
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
