"""Re-checking a report against the trace store: cited traces and spans exist (in the findings and in
the answer's text), excerpts are really in the spans they cite, and each finding's affected-trace
count matches a recount of its own query. Problems are recorded on the finding, never hidden.

A finding without a query (the model may give none) is `unverifiable`: its evidence can be checked,
its count cannot. The spans the answer cites are kept with an excerpt each (`Report.cited`), so the
HTML report can show them inline."""

from __future__ import annotations

import re
from typing import Any

import orjson

from halo_rlm.report import Check, Evidence, Report, Verification, cite
from halo_rlm.scrub import REDACTED
from halo_rlm.store import StoreError, TraceStore
from halo_rlm.utils import now_iso, one_line, terminal_safe

__all__ = ["CITATION", "verify"]

CITATION = re.compile(r"\[(trace|span):([^\]:\s]+)(?::([^\]\s]+))?\]")


def verify(report: Report, store: TraceStore, *, recheck: bool = True) -> Report:
    """Re-check a report against a read-only store: cited traces and spans exist (in the findings
    and in the answer's text), excerpts are in the spans they cite, and `affected_traces` matches a
    recount of the finding's query (within 2%, or 1 trace). Problems are recorded, never hidden.
    Without `recheck`, findings that already carry a check keep it (the engine checks the detectors'
    and the model's findings before it merges them)."""
    cited = [
        Evidence(trace_id=t, span_id=s or None)
        for kind, t, s in CITATION.findall(report.answer or "")
        if kind == "trace" or s
    ]
    checking = [f for f in report.findings if recheck or f.check is None]
    evidence = [ev for f in checking for ev in f.evidence] + cited
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
    report.cited = [
        ev.model_copy(update={"excerpt": _span_excerpt(spans[(ev.trace_id, ev.span_id)])})
        for ev in {cite(ev): ev for ev in cited}.values()
        if ev.span_id and (ev.trace_id, ev.span_id) in spans
    ]
    for f in report.findings:
        if f.check is not None and not recheck:
            setattr(summary, f.check.status, getattr(summary, f.check.status) + 1)
            continue
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
        elif f.query and REDACTED in f.query:
            pass  # a credential was taken out of it: it no longer finds what it found
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
        elif recount is None:
            status = "unverifiable"
            problems = [
                (
                    "its query held a credential, redacted from this report, so it cannot be recounted "
                    "(`halo analyze --keep-secrets` keeps it)"
                    if f.query and REDACTED in f.query
                    else f"no query to recount its {f.affected_traces:,} affected traces"
                )
                + ("; its evidence checks out" if f.evidence else " and no evidence to check")
            ]
        else:
            status = "verified"
        f.check = Check(status=status, problems=problems, recount=recount)
        setattr(summary, status, getattr(summary, status) + 1)
    report.verification = summary
    return report


def _excerpt_found(raw: str, excerpt: str) -> bool:
    """An excerpt is backed when a stretch of it (8+ characters) appears in one of the span's text
    values, JSON escapes decoded and whitespace collapsed. "…" and " | " mark where an excerpt was
    cut or joined, and `[REDACTED]` where a credential was taken out."""
    haystack = _collapse(terminal_safe("\n".join(_strings(_loads(raw)))))
    # Both sides as a terminal shows them: an excerpt may be checked before or after it was made safe.
    pieces = [_collapse(p) for p in re.split(r"…|\.\.\.| \| |" + re.escape(REDACTED), terminal_safe(excerpt))]
    pieces = [p for p in pieces if len(p) >= 8]
    return not pieces or any(p[:120] in haystack for p in pieces)


EXCERPT_FIELDS = ("message", "error", "exception", "input", "output", "arguments", "args", "content", "value")


def _span_excerpt(raw: str) -> str:
    """What a cited span is about, in one line: its name, status message and the first texts of its
    inputs, outputs and errors."""
    record = _loads(raw)
    if not isinstance(record, dict):
        return one_line(str(record), 300)
    status = record.get("status")
    parts = [
        str(record.get("name") or ""),
        str(status.get("message") or "") if isinstance(status, dict) else "",
    ]
    attributes = record.get("attributes")
    if isinstance(attributes, dict):
        parts += [
            str(value)
            for key, value in attributes.items()
            if isinstance(value, str) and value and any(word in key.lower() for word in EXCERPT_FIELDS)
        ][:4]
    return one_line(" | ".join(p for p in parts if p), 300)


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
