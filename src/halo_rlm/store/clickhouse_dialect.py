"""ClickHouse's SQL for the detectors and the dataset's distributions (see `store.dialect`): the DuckDB
dialect's queries (`store.duckdb_dialect`) said so that they give the same rows.

What differs, and how it is kept equal:

- regexes: both engines use RE2, but ClickHouse lets `.` match a newline, so every pattern starts
  with `(?-s)`; `extract` returns a pattern's first group, so whole matches use `regexpExtract(…, 0)`;
- string literals: a backslash is an escape character in ClickHouse (`clickhouse_client.literal`);
- NULLs: `concat_ws` skips NULLs where `concatWithSeparator` returns NULL, so texts are joined from
  arrays without their NULLs; lists that DuckDB holds as NULL are empty arrays here (`notEmpty`);
  an empty array's first element is a default, not NULL;
- medians and quantiles: DuckDB interpolates, as `quantileExactInclusive` does (ClickHouse's
  `median` samples);
- numbers in text: `round` and casts to integers round half to even in both engines; a rounded
  number is written with its decimal (`toDecimalString`), as DuckDB writes a DOUBLE;
- correlated subqueries: written as anti-joins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from halo_rlm.store.clickhouse_client import literal
from halo_rlm.store.clickhouse_sql import join_distinct, json_text
from halo_rlm.store.dialect import Detection, Dialect

__all__ = ["ClickHouseDialect"]


def _re(pattern: str) -> str:
    """A regex literal with DuckDB's meaning of `.` (any character but a newline)."""
    return literal("(?-s)" + pattern)


# What an error says: its message, type, a tool's result and its exception events' types and messages
# (not their stack traces, which quote the caller's code), each said once: the DuckDB dialect's
# ERROR_TEXT.
EXCEPTION_PARTS = (
    f"arrayFlatten(arrayMap(e -> [{json_text('e', 'type')}, leftUTF8({json_text('e', 'message')}, 1000)], "
    "JSONExtractArrayRaw(ifNull(s.exceptions, ''))))"
)
ERROR_TEXT = join_distinct(
    "arrayConcat([s.status_message, s.error_type, if(s.kind = 'TOOL', leftUTF8(s.tool_result, 1000), NULL)], "
    f"{EXCEPTION_PARTS})"
)


def _first_agent(traces: str) -> str:
    """The trace's first agent, NULL when it has none (DuckDB's `agents[1]`)."""
    return f"if(empty({traces}.agents), NULL, {traces}.agents[1])"


# Every error span, with what it says.
ERROR_SPANS = f"""
SELECT s.trace_id AS trace_id, s.span_id AS span_id, s.parent_id AS parent_id, s.kind AS kind, s.name AS name,
       s.tool_name AS tool_name, s.tool_args AS tool_args, s.model AS model, s.duration_ns AS duration_ns,
       s.start_ns AS start_ns, s.error_template AS error_template,
       coalesce(s.agent_name, {_first_agent("t")}) AS agent, {ERROR_TEXT} AS error_text
FROM spans s
JOIN traces t ON t.trace_id = s.trace_id
WHERE s.status = 'ERROR'"""
# The categories an error gets only from where it happened, not from what it says.
FALLBACKS = "('tool_error', 'other')"


def _extract(pattern: str) -> str:
    return f"nullIf(regexpExtract(error_text, {_re(pattern)}, 1), '')"


# The key a finding of each error category is about.
ERROR_KEYS = {
    # the tool's name: as a field (`{'tool_name': 'x'}`), in "Tool x not found", else after "tool"
    "hallucinated_tool": "coalesce("
    + _extract(r"(?i)tool_?name['\"]?\s*[:=]\s*['\"`]?([A-Za-z_][\w.-]*)")
    + ", "
    + _extract(
        r"(?i)(?:tool|function)\s+['\"`]?([A-Za-z_][\w.-]*)['\"`]?\s+"
        r"(?:not found|does not exist|is not available|not registered)"
    )
    + ", "
    + _extract(r"(?i)(?:tool|function)[: ]+['\"`]?([A-Za-z_][\w-]*(?:\.[\w-]+)*)")
    + ", tool_name, name)",
    "invalid_tool_arguments": "coalesce(tool_name, name)",
    "context_overflow": "coalesce(model, agent, name)",
    "rate_limit": "coalesce(model, tool_name, name)",
    "timeout": "coalesce(tool_name, model, name)",
    "guardrail": "coalesce("
    + _extract(r"(?i)(?:guardrail|tripwire)[^:|]*:\s*([\w.-]+)")
    + f", nullIf(replaceRegexpOne(name, {_re('^guardrail[._ ]')}, ''), name), agent, name)",
    "handoff": "coalesce("
    + _extract(r"(?i)(?:hand-?off|transfer)\w*\s+to\s+([\w.-]+)")
    + ", "
    + _extract(r"transfer_to_([\w-]+)")
    + ", agent, name)",
    "max_turns": "coalesce(agent, name)",
    "tool_error": "coalesce(tool_name, name)",
    "other": "name",
}
TOOL_KINDS = "('TOOL', 'RETRIEVER', 'EMBEDDING', 'RERANKER')"
LENGTH_REASONS = "('length', 'max_tokens', 'max_output_tokens', 'model_length')"
# The text of the model's answer: its messages' contents joined (DuckDB: json_extract_string over
# `$[*].content`, which gives a non-string content as its JSON and skips a null one).
OUTPUT_TEXT = (
    "arrayStringConcat(arrayMap(m -> multiIf(JSONType(m, 'content') = 'String', JSONExtractString(m, 'content'), "
    "JSONType(m, 'content') = 'Null', '', JSONExtractRaw(m, 'content')), JSONExtractArrayRaw(ifNull(output_messages, ''))), '')"
)


def _attribute(name: str) -> str:
    """An attribute of the raw span as text: DuckDB's `json_extract_string(raw, '$.attributes."name"')`."""
    return json_text("raw", "attributes", name)


def _rounded(expr: str, digits: int) -> str:
    """A number rounded and written as DuckDB writes a rounded DOUBLE (`12.0`, not `12`)."""
    return f"toDecimalString({expr}, {digits})"


def _median(expr: str) -> str:
    return f"quantileExactInclusiveOrNull(0.5)({expr})"


class ClickHouseDialect(Dialect):
    name: ClassVar[str] = "clickhouse"

    def literal(self, value: str) -> str:
        return literal(value)

    def distinct_traces(self, query: str) -> str:
        return f"SELECT uniqExact(trace_id) AS n FROM ({query}) AS counted"

    def classified_errors(self, signatures: Sequence[tuple[str, str]]) -> str:
        classify = (
            "multiIf("
            + ", ".join(
                f"match(error_text, {_re('(?i)' + pattern)}), '{category}'"
                for category, pattern in signatures
            )
            + ", kind = 'TOOL', 'tool_error', 'other')"
        )
        keys = " ".join(f"WHEN '{c}' THEN {k}" for c, k in ERROR_KEYS.items())
        # Where an error happened (the DuckDB dialect's rule): not where it merely propagated to (a
        # parent whose failed child has its category, or any failed child for the categories an error
        # gets from where it happened), as two anti-joins.
        failed_children = (
            "SELECT DISTINCT trace_id, parent_id, category FROM errors WHERE parent_id IS NOT NULL"
        )
        return f"""
            WITH errors AS (SELECT *, {classify} AS category FROM ({ERROR_SPANS}) AS spans)
            SELECT *, CASE category {keys} END AS key,
                   if(category IN {FALLBACKS}, error_template, NULL) AS template
            FROM (
              SELECT e.* FROM errors e
              LEFT ANTI JOIN ({failed_children}) c
                ON c.trace_id = e.trace_id AND c.parent_id = e.span_id AND c.category = e.category
              WHERE e.category NOT IN {FALLBACKS}
              UNION ALL
              SELECT e.* FROM errors e
              LEFT ANTI JOIN ({failed_children}) c ON c.trace_id = e.trace_id AND c.parent_id = e.span_id
              WHERE e.category IN {FALLBACKS}) AS counted"""

    def errors(self, signatures: Sequence[tuple[str, str]], minimum: int) -> Detection:
        occurrences = f"""
            SELECT trace_id, span_id, start_ns, key, template,
                   arrayStringConcat(arrayFilter(x -> x IS NOT NULL,
                     [error_text, if(kind = 'TOOL', leftUTF8(tool_args, 300), NULL)]), ' | ') AS excerpt,
                   if(kind = 'TOOL' AND tool_args IS NOT NULL, 'the error, then the call''s arguments', '') AS note,
                   category, kind, duration_ns
            FROM ({self.classified_errors(signatures)}) AS errors"""
        return Detection(
            occurrences=occurrences,
            # The classified errors are kept for this session (on disk, not in memory) and read again
            # for each finding's examples, instead of classifying every error span again.
            setup=(
                "DROP TEMPORARY TABLE IF EXISTS halo_errors",
                f"CREATE TEMPORARY TABLE halo_errors ENGINE = MergeTree ORDER BY tuple() AS {occurrences}",
            ),
            scan="SELECT * FROM halo_errors",
            groups=f"""
                SELECT category, key, template, uniqExact(trace_id) AS traces, count() AS errors,
                       coalesce(sum(duration_ns), 0) / 1e6 AS latency_ms,
                       lower(arrayStringConcat(arraySort(groupUniqArray(kind)), '/')) AS kinds,
                       count() - uniqExact(trace_id) AS extra
                FROM halo_errors GROUP BY category, key, template
                HAVING uniqExact(trace_id) >= {minimum}
                ORDER BY traces DESC, category, key, template""",
        )

    def unoffered_tool_calls(self, signatures: Sequence[tuple[str, str]], minimum: int) -> Detection:
        calls = """
            SELECT c.trace_id AS trace_id, c.span_id AS span_id, c.tool AS tool, c.start_ns AS start_ns,
                   c.arguments AS arguments
            FROM (SELECT trace_id, span_id, start_ns, tools_offered AS own, call.name AS tool,
                         call.arguments AS arguments
                  FROM spans ARRAY JOIN tool_calls AS call WHERE kind = 'LLM') c
            JOIN (SELECT trace_id, groupUniqArrayArray(tools_offered) AS tools FROM spans
                  WHERE notEmpty(tools_offered) GROUP BY trace_id) o ON o.trace_id = c.trace_id
            WHERE notEmpty(o.tools) AND c.tool IS NOT NULL AND NOT has(if(empty(c.own), o.tools, c.own), c.tool)"""
        occurrences = f"""
            SELECT trace_id, span_id, start_ns, tool AS key, CAST(NULL, 'Nullable(String)') AS template,
                   coalesce(arguments, '') AS excerpt,
                   'a call to a tool the model was not offered, with these arguments' AS note, 'call' AS source
            FROM ({calls}) AS calls
            UNION ALL
            SELECT trace_id, span_id, start_ns, key, NULL, error_text, '', 'error'
            FROM ({self.classified_errors(signatures)}) AS errors
            WHERE category = 'hallucinated_tool'"""
        return Detection(
            occurrences=occurrences,
            groups=f"""
                WITH occurrences AS ({occurrences}),
                offered AS (
                  SELECT c.key AS key, arraySlice(arraySort(groupUniqArrayArray(s.tools_offered)), 1, 12) AS offered
                  FROM (SELECT DISTINCT key, trace_id FROM occurrences WHERE source = 'call') c
                  JOIN spans s ON s.trace_id = c.trace_id WHERE notEmpty(s.tools_offered) GROUP BY c.key)
                -- An inner join: every key with a call has offered tools (a call counts only then).
                SELECT o.key AS key, NULL AS template, uniqExact(o.trace_id) AS traces,
                       countIf(o.source = 'call') AS calls, any(f.offered) AS offered
                FROM occurrences o JOIN offered f ON f.key = o.key
                GROUP BY o.key HAVING countIf(o.source = 'call') > 0 AND uniqExact(o.trace_id) >= {minimum}
                ORDER BY key""",
        )

    def repeated_calls(self, min_calls: int, minimum: int) -> Detection:
        # A call that repeats a failed identical call is a retry of that failure, not a loop.
        repeats = f"""
            SELECT trace_id, tool, args, count() AS calls, min(span_id) AS span_id, min(start_ns) AS start_ns
            FROM (SELECT trace_id, span_id, start_ns, tool_name AS tool, tool_args AS args,
                         lagInFrame(status) OVER (PARTITION BY trace_id, tool_name, tool_args ORDER BY start_ns, span_id
                                                  ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) = 'ERROR' AS retry
                  FROM spans WHERE kind = 'TOOL' AND tool_name IS NOT NULL AND tool_args IS NOT NULL) AS calls
            WHERE NOT ifNull(retry, false)
            GROUP BY trace_id, tool, args HAVING count() >= {min_calls}
            UNION ALL
            SELECT trace_id, tool, args, count(), min(span_id), min(start_ns) FROM (
              SELECT trace_id, span_id, start_ns, call.name AS tool, call.arguments AS args
              FROM spans ARRAY JOIN tool_calls AS call
              WHERE kind = 'LLM' AND trace_id NOT IN (SELECT trace_id FROM spans WHERE kind = 'TOOL')) AS calls
            WHERE tool IS NOT NULL GROUP BY trace_id, tool, args HAVING count() >= {min_calls}"""
        occurrences = f"""
            SELECT trace_id, span_id, start_ns, tool AS key, CAST(NULL, 'Nullable(String)') AS template,
                   args AS excerpt, toString(calls) || ' identical calls with these arguments' AS note, calls
            FROM ({repeats}) AS repeats"""
        return Detection(
            occurrences=occurrences,
            groups=f"""
                SELECT key, NULL AS template, uniqExact(trace_id) AS traces, toInt64(sum(calls - 1)) AS extra
                FROM ({occurrences}) AS occurrences GROUP BY key HAVING uniqExact(trace_id) >= {minimum}
                ORDER BY key""",
        )

    def refusals(self, pattern: str, minimum: int) -> Detection:
        regex = _re("(?i)" + pattern)
        occurrences = f"""
            SELECT trace_id, span_id, start_ns, agent AS key, CAST(NULL, 'Nullable(String)') AS template,
                   regexpExtract(output, {regex}, 0) AS excerpt, 'the model refuses' AS note
            FROM (SELECT s.trace_id AS trace_id, s.span_id AS span_id, s.start_ns AS start_ns,
                         coalesce(s.agent_name, {_first_agent("t")}, s.service) AS agent,
                         coalesce(s.output_messages, s.output_value) AS output
                  FROM spans s JOIN traces t ON t.trace_id = s.trace_id
                  WHERE s.kind = 'LLM' AND match(coalesce(s.output_messages, s.output_value, ''), {regex})) AS found"""
        return Detection(
            occurrences=occurrences,
            groups=f"""
                SELECT key, NULL AS template, uniqExact(trace_id) AS traces, count() AS calls
                FROM ({occurrences}) AS occurrences GROUP BY key HAVING uniqExact(trace_id) >= {minimum}
                ORDER BY key""",
        )

    def truncated_outputs(self, minimum: int) -> Detection:
        occurrences = f"""
            SELECT trace_id, span_id, start_ns, coalesce(model, 'unknown') AS key,
                   CAST(NULL, 'Nullable(String)') AS template,
                   if(lower(finish_reason) IN {LENGTH_REASONS}, finish_reason, '') AS excerpt,
                   if(lower(finish_reason) IN {LENGTH_REASONS},
                      'cut at the output limit (its finish reason is quoted)', 'empty output')
                     || if(output_tokens IS NULL, '', ', ' || toString(output_tokens) || ' output tokens') AS note,
                   output_tokens
            FROM spans
            WHERE kind = 'LLM' AND status != 'ERROR' AND (
              lower(finish_reason) IN {LENGTH_REASONS}
              OR (empty(tool_calls) AND output_messages IS NOT NULL AND trimBoth({OUTPUT_TEXT}) = '')
              OR (empty(tool_calls) AND output_messages IS NULL AND output_value IS NOT NULL
                  AND trimBoth(output_value) = ''))"""
        return Detection(
            occurrences=occurrences,
            groups=f"""
                SELECT key, NULL AS template, uniqExact(trace_id) AS traces, count() AS calls,
                       max(output_tokens) AS cap
                FROM ({occurrences}) AS occurrences GROUP BY key HAVING uniqExact(trace_id) >= {minimum}
                ORDER BY key""",
        )

    def guardrail_trips(self, minimum: int) -> Detection:
        occurrences = f"""
            SELECT trace_id, span_id, start_ns, guardrail AS key, CAST(NULL, 'Nullable(String)') AS template,
                   '' AS excerpt, 'the guardrail reported a trip' AS note
            FROM (SELECT trace_id, span_id, start_ns,
                         coalesce({_attribute("guardrail.name")},
                                  replaceRegexpOne(name, {_re("^guardrail[._ ]")}, '')) AS guardrail
                  FROM spans WHERE kind = 'GUARDRAIL' AND status != 'ERROR'
                    AND lower(coalesce({_attribute("guardrail.triggered")}, '')) IN ('true', '1')) AS trips"""
        return Detection(
            occurrences=occurrences,
            groups=f"""
                SELECT key, NULL AS template, uniqExact(trace_id) AS traces
                FROM ({occurrences}) AS occurrences GROUP BY key HAVING uniqExact(trace_id) >= {minimum}
                ORDER BY key""",
        )

    def slow_calls(self, factor: float, min_ms: float, min_share: float, minimum: int) -> Detection:
        occurrences = f"""
            SELECT s.trace_id AS trace_id, s.span_id AS span_id, s.start_ns AS start_ns, s.name_key AS key,
                   CAST(NULL, 'Nullable(String)') AS template, '' AS excerpt,
                   'the call took ' || {_rounded("s.duration_ns / 1e9", 1)} || ' s of a '
                     || {_rounded("tr.duration_ns / 1e9", 1)} || ' s run' AS note,
                   s.duration_ns AS duration_ns, m.median_ns AS median_ns, tr.duration_ns AS run_ns
            FROM (SELECT *, coalesce(tool_name, name) AS name_key FROM spans
                  WHERE kind IN {TOOL_KINDS} AND status != 'ERROR') s
            JOIN (SELECT coalesce(tool_name, name) AS name_key, {_median("duration_ns")} AS median_ns FROM spans
                  WHERE kind IN {TOOL_KINDS} AND status != 'ERROR' GROUP BY name_key) m
              ON m.name_key = s.name_key
            JOIN traces tr ON tr.trace_id = s.trace_id
            WHERE s.duration_ns > {factor} * m.median_ns AND s.duration_ns >= {int(min_ms * 1e6)}
              AND s.duration_ns >= {float(min_share)!r} * tr.duration_ns"""
        return Detection(
            occurrences=occurrences,
            groups=f"""
                SELECT key, NULL AS template, uniqExact(trace_id) AS traces, count() AS calls,
                       sum(duration_ns - median_ns) / 1e6 AS excess_ms, {_median("duration_ns")} / 1e9 AS slow_s,
                       any(median_ns) / 1e9 AS usual_s, avg(duration_ns / run_ns) AS run_share
                FROM ({occurrences}) AS occurrences GROUP BY key HAVING uniqExact(trace_id) >= {minimum}
                ORDER BY key""",
        )

    def bottlenecks(self, share: float, min_ms: float, minimum: int) -> Detection:
        runs = f"""
            SELECT s.trace_id AS trace_id, coalesce(s.tool_name, s.name) AS key, sum(s.duration_ns) AS tool_ns,
                   count() AS calls, min(s.span_id) AS span_id, min(s.start_ns) AS start_ns,
                   any(t.duration_ns) AS run_ns
            FROM spans s JOIN traces t ON t.trace_id = s.trace_id
            WHERE s.kind IN {TOOL_KINDS} AND s.status != 'ERROR' AND t.duration_ns > 0
            GROUP BY s.trace_id, key"""
        tools = f"""
            SELECT r.key AS key FROM ({runs}) r
            JOIN (SELECT coalesce(tool_name, name) AS key, {_median("duration_ns")} AS p50 FROM spans
                  WHERE kind IN {TOOL_KINDS} AND status != 'ERROR' GROUP BY key) m ON m.key = r.key
            GROUP BY r.key
            HAVING {_median("r.tool_ns / r.run_ns")} >= {float(share)!r} AND any(m.p50) >= {int(min_ms * 1e6)}"""
        occurrences = f"""
            SELECT r.trace_id AS trace_id, r.span_id AS span_id, r.start_ns AS start_ns, r.key AS key,
                   CAST(NULL, 'Nullable(String)') AS template, '' AS excerpt,
                   'its calls took ' || {_rounded("r.tool_ns / 1e9", 1)} || ' s of a '
                     || {_rounded("r.run_ns / 1e9", 1)} || ' s run' AS note,
                   r.tool_ns AS tool_ns, r.run_ns AS run_ns, r.calls AS calls
            FROM ({runs}) r JOIN ({tools}) b ON b.key = r.key"""
        return Detection(
            occurrences=occurrences,
            groups=f"""
                WITH found AS ({occurrences}),
                steps AS (
                  SELECT f.key AS key, coalesce(s.tool_name, s.name) = f.key AS own, s.duration_ns AS duration_ns
                  FROM (SELECT DISTINCT key, trace_id FROM found) f JOIN spans s ON s.trace_id = f.trace_id
                  WHERE s.kind IN {TOOL_KINDS} OR s.kind = 'LLM'),
                percentiles AS (
                  SELECT key, quantileExactInclusiveIf(0.5)(duration_ns, own) AS p50,
                         quantileExactInclusiveIf(0.95)(duration_ns, own) AS p95,
                         quantileExactInclusiveIf(0.5)(duration_ns, NOT own) AS other_p50,
                         quantileExactInclusiveIf(0.95)(duration_ns, NOT own) AS other_p95
                  FROM steps GROUP BY key)
                SELECT f.key AS key, NULL AS template, uniqExact(f.trace_id) AS traces, sum(f.calls) AS calls,
                       sum(f.tool_ns) / 1e6 AS tool_ms, sum(f.tool_ns) / sum(f.run_ns) AS run_share,
                       {_median("f.tool_ns / f.run_ns")} AS median_share,
                       sum(f.tool_ns) / (SELECT sum(duration_ns) FROM traces) AS total_share,
                       any(p.p50) / 1e9 AS p50_s, any(p.p95) / 1e9 AS p95_s,
                       any(p.other_p50) / 1e9 AS other_p50_s, any(p.other_p95) / 1e9 AS other_p95_s
                FROM found f JOIN percentiles p ON p.key = f.key
                GROUP BY f.key HAVING uniqExact(f.trace_id) >= {minimum} ORDER BY key""",
        )

    def oversized_prompts(self, factor: float, min_tokens: int, minimum: int) -> Detection:
        occurrences = f"""
            SELECT s.trace_id AS trace_id, s.span_id AS span_id, s.start_ns AS start_ns,
                   coalesce(s.agent_name, {_first_agent("tr")}, s.service, 'unknown') AS key,
                   CAST(NULL, 'Nullable(String)') AS template, coalesce(s.model, '') AS excerpt,
                   'a call to this model with ' || toString(s.input_tokens) || ' prompt tokens' AS note,
                   s.input_tokens AS input_tokens, s.cost AS cost, m.median_tokens AS median_tokens
            FROM spans s JOIN traces tr ON tr.trace_id = s.trace_id
            CROSS JOIN (SELECT {_median("input_tokens")} AS median_tokens FROM spans
                        WHERE kind = 'LLM' AND input_tokens > 0) m
            WHERE s.kind = 'LLM' AND s.input_tokens >= greatest({factor} * m.median_tokens, {min_tokens})"""
        return Detection(
            occurrences=occurrences,
            groups=f"""
                SELECT key, NULL AS template, uniqExact(trace_id) AS traces, count() AS calls,
                       toInt64(round(sum(input_tokens - median_tokens))) AS excess,
                       toInt64(round({_median("input_tokens")})) AS typical,
                       toInt64(round(any(median_tokens))) AS usual, coalesce(sum(cost), 0) AS cost
                FROM ({occurrences}) AS occurrences GROUP BY key HAVING uniqExact(trace_id) >= {minimum}
                ORDER BY key""",
        )

    def examples(self, occurrences: str, limit: int) -> str:
        return f"""
            SELECT trace_id, span_id, excerpt, note FROM (
              SELECT *, row_number() OVER (PARTITION BY trace_id ORDER BY start_ns, span_id) AS nth
              FROM ({occurrences}) AS occurrences) AS numbered
            WHERE nth = 1 ORDER BY start_ns, trace_id LIMIT {int(limit)}"""

    def run_times(self) -> str:
        return f"""
            SELECT coalesce(sum(duration_ns), 0) / 1e6 AS total_ms, {_median("duration_ns")} / 1e6 AS p50,
                   quantileExactInclusiveOrNull(0.95)(duration_ns) / 1e6 AS p95 FROM traces"""

    def histogram(self, column: str, scale: float, edges: Sequence[float]) -> str:
        if column not in ("duration_ns", "cost"):
            raise ValueError(f"no histogram of {column!r}")
        cases = ", ".join(f"v < {float(edge)!r}, {i}" for i, edge in enumerate(edges))
        return (
            f"SELECT multiIf({cases}, {len(edges)}) AS b, count() AS n "
            f"FROM (SELECT {column} / {float(scale)!r} AS v FROM traces) AS scaled WHERE v IS NOT NULL GROUP BY b"
        )
