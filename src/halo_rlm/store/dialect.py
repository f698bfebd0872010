"""The SQL a store speaks for HALO's own questions: each detector's occurrences and groups, a
finding's recount query, its examples, and the dataset's distributions. A backend gives its
`TraceStore.dialect` one of these; `detect` declares what to look for and how to word it, and never
writes SQL itself.

Every detector's *occurrences* query returns one row per thing found, with the columns `trace_id`,
`span_id`, `start_ns`, `key` (what a finding is about: a tool, a model, an agent), `template` (an
error's message template, else NULL), `excerpt` (verbatim text of the span: the offending arguments,
message or output) and `note` (HALO's words about it, never text from the trace: reports show notes
as their own words and excerpts as quoted data), plus columns of its own. Its *groups* query returns one row per finding: `key`, `template`,
`traces`, and the numbers its wording uses, for groups in at least `minimum` traces.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

__all__ = ["Detection", "Dialect"]


@dataclass(frozen=True)
class Detection:
    """The SQL of one detector. `occurrences` is self-contained (a finding's recount query is built
    on it); `scan` reads the same rows faster where `setup` prepared them."""

    occurrences: str
    groups: str
    setup: tuple[str, ...] = ()
    scan: str | None = None

    @property
    def rows(self) -> str:
        return self.scan or self.occurrences


class Dialect(ABC):
    name: ClassVar[str]

    @abstractmethod
    def literal(self, value: str) -> str:
        """A string as an SQL literal of this dialect."""

    # --- detectors -------------------------------------------------------------------------------

    @abstractmethod
    def errors(self, signatures: Sequence[tuple[str, str]], minimum: int) -> Detection:
        """Errors where they happened, each given the first category whose signature (a
        case-insensitive regex) its text matches, else `tool_error` for tools and `other`. An error
        span whose failed child has its category only passed that failure on, and one without a
        signature of its own whose child failed is passed on too; one with a signature of its own
        counts even when a child failed another way (a run ends at its turn limit after a tool
        error). extra columns `category`, `kind`, `duration_ns`. Groups per (category, key), and per
        message template for `tool_error` and `other`: `category`, `errors`, `latency_ms`, `kinds`,
        `extra` (errors beyond one per trace)."""

    @abstractmethod
    def unoffered_tool_calls(self, signatures: Sequence[tuple[str, str]], minimum: int) -> Detection:
        """Tool calls to tools the model was not offered (its span's list, or its trace's), together
        with the leaf errors `signatures` classify as `hallucinated_tool` for the same tool (extra
        column `source`: call or error). Groups, for tools with at least one such call: `calls`,
        `offered` (up to 12 tool names the model had)."""

    @abstractmethod
    def repeated_calls(self, min_calls: int, minimum: int) -> Detection:
        """The same tool with the same arguments `min_calls` or more times in one run, not counting
        retries (a call right after an identical call that failed). Groups: `extra` (redundant
        calls)."""

    @abstractmethod
    def refusals(self, pattern: str, minimum: int) -> Detection:
        """Model outputs matching the refusal `pattern` (case-insensitive), keyed by agent. Groups:
        `calls`."""

    @abstractmethod
    def truncated_outputs(self, minimum: int) -> Detection:
        """Model outputs cut at the output-token limit or empty, keyed by model. Groups: `calls`,
        `cap` (the largest output token count)."""

    @abstractmethod
    def guardrail_trips(self, minimum: int) -> Detection:
        """Guardrail spans that report tripping without an error, keyed by guardrail."""

    @abstractmethod
    def slow_calls(self, factor: float, min_ms: float, min_share: float, minimum: int) -> Detection:
        """Tool-like calls over `factor` × their usual time and over `min_ms` that take at least
        `min_share` of their run. Groups: `calls`, `excess_ms`, `slow_s`, `usual_s`, `run_share`."""

    @abstractmethod
    def bottlenecks(self, share: float, min_ms: float, minimum: int) -> Detection:
        """Tool-like steps that take most of the runs that use them, however consistently: those
        whose successful calls (failures are their own findings) take at least `share` of their run's
        time in the median run and `min_ms` in the median call. Occurrences are the runs that call them (one row per run and step). Groups:
        `calls`, `tool_ms`, `run_share` (of the time of those runs), `median_share`, `total_share`
        (of all run time), `p50_s`/`p95_s` of its calls and `other_p50_s`/`other_p95_s` of the other
        tool and model calls in those runs."""

    @abstractmethod
    def oversized_prompts(self, factor: float, min_tokens: int, minimum: int) -> Detection:
        """LLM calls with prompts over `factor` × the median and `min_tokens`, keyed by agent. Groups:
        `calls`, `excess`, `typical`, `usual`, `cost`."""

    # --- what every finding shares ---------------------------------------------------------------

    def matching(self, occurrences: str, key: str | None, template: str | None = None, **columns: str) -> str:
        """The occurrences of one finding: its key, its template if it has one, and any other
        columns' values given."""
        conditions = ["key IS NULL" if key is None else f"key = {self.literal(key)}"]
        if template is not None:
            conditions.append(f"template = {self.literal(template)}")
        conditions += [f"{column} = {self.literal(value)}" for column, value in columns.items()]
        return f"SELECT * FROM ({occurrences}) AS occurrences WHERE {' AND '.join(conditions)}"

    def affected(self, occurrences: str, key: str | None, template: str | None = None, **columns: str) -> str:
        """A finding's query: the ids of the traces it affects (recounted by `verify`)."""
        return f"SELECT trace_id FROM ({self.matching(occurrences, key, template, **columns)}) AS found"

    def distinct_traces(self, query: str) -> str:
        """How many distinct traces a query's `trace_id` column holds, as column `n`."""
        return f"SELECT count(DISTINCT trace_id) AS n FROM ({query}) AS counted"

    @abstractmethod
    def examples(self, occurrences: str, limit: int) -> str:
        """Up to `limit` occurrences from distinct traces, the first of each trace, oldest first:
        trace_id, span_id, excerpt, note."""

    # --- the dataset -----------------------------------------------------------------------------

    @abstractmethod
    def run_times(self) -> str:
        """One row: `total_ms` of all traces, and the `p50` and `p95` of their durations in ms."""

    @abstractmethod
    def histogram(self, column: str, scale: float, edges: Sequence[float]) -> str:
        """Traces per bucket of `column / scale` (a traces column: duration_ns or cost): rows of
        bucket index `b` (0 below the first edge) and count `n`."""
