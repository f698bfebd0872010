"""Re-checking a report against the trace store: cited traces and spans exist (in the findings and in
the answer's text), excerpts are really in the spans they cite, and each finding's affected-trace
count matches a recount of its own query. Problems are recorded on the finding, never hidden."""

from __future__ import annotations

import re
from typing import Any

import orjson

from halo_rlm.report import Check, Evidence, Report, Verification, cite
from halo_rlm.store import StoreError, TraceStore
from halo_rlm.utils import now_iso

__all__ = ["CITATION", "verify"]

CITATION = re.compile(r"\[(trace|span):([^\]:\s]+)(?::([^\]\s]+))?\]")


def verify(report: Report, store: TraceStore) -> Report:
    """Re-check a report against a read-only store: cited traces and spans exist (in the findings
    and in the answer's text), excerpts are in the spans they cite, and `affected_traces` matches a
    recount of the finding's query (within 2%, or 1 trace). Problems are recorded, never hidden."""
    cited = [
        Evidence(trace_id=t, span_id=s or None)
        for kind, t, s in CITATION.findall(report.answer or "")
        if kind == "trace" or s
    ]
    evidence = [ev for f in report.findings for ev in f.evidence] + cited
    traces = store.known_traces({ev.trace_id for ev in evidence})
    spans = store.span_records({(ev.trace_id, ev.span_id) for ev in evidence if ev.span_id})
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
        if f.query and f.query_dialect not in (None, store.dialect.name):
            problems.append(f"its query is {f.query_dialect} SQL; this store speaks {store.dialect.name}")
        elif f.query:
            try:
                recount = store.recount(f.query)
            except StoreError as exc:
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
