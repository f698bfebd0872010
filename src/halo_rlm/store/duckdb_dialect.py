"""DuckDB's SQL for the detectors and the dataset's distributions (see `store.dialect`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from halo_rlm.store.dialect import Detection, Dialect

__all__ = ["DuckDBDialect"]

# What an error says: its message, type, a tool's result and its exception events' types and messages,
# each said once (a part another part contains is left out: `halo_join_distinct`).
# Not their stack traces: those quote the caller's code (`Runner.run(agent, max_turns=6)`), whose words
# would claim errors for the wrong category.
ERROR_TEXT = (
    "halo_join_distinct(list_concat([s.status_message, s.error_type, "
    "CASE WHEN s.kind = 'TOOL' THEN left(s.tool_result, 1000) END], "
    'coalesce(flatten(list_transform(from_json(s.exceptions, \'[{"type": "VARCHAR", "message": "VARCHAR"}]\'), '
    "lambda e: [e.type, left(e.message, 1000)])), [])))"
)
# Every error span, with what it says.
ERROR_SPANS = f"""
SELECT s.trace_id, s.span_id, s.parent_id, s.kind, s.name, s.tool_name, s.tool_args, s.model, s.duration_ns,
       s.start_ns, s.error_template, coalesce(s.agent_name, t.agents[1]) AS agent, {ERROR_TEXT} AS error_text
FROM spans s JOIN traces t USING (trace_id)
WHERE s.status = 'ERROR'"""
# The categories an error gets only from where it happened, not from what it says.
FALLBACKS = "('tool_error', 'other')"
# The key a finding of each error category is about.
ERROR_KEYS = {
    # the tool's name: as a field (`{'tool_name': 'x'}`), in "Tool x not found", else after "tool"
    "hallucinated_tool": r"coalesce(nullif(regexp_extract(error_text, "
    r"'(?i)tool_?name[''\"]?\s*[:=]\s*[''\"`]?([A-Za-z_][\w.-]*)', 1), ''), "
    r"nullif(regexp_extract(error_text, '(?i)(?:tool|function)\s+[''\"`]?([A-Za-z_][\w.-]*)[''\"`]?\s+"
    r"(?:not found|does not exist|is not available|not registered)', 1), ''), "
    r"nullif(regexp_extract(error_text, "
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
TOOL_KINDS = "('TOOL', 'RETRIEVER', 'EMBEDDING', 'RERANKER')"
LENGTH_REASONS = "('length', 'max_tokens', 'max_output_tokens', 'model_length')"


class DuckDBDialect(Dialect):
    name: ClassVar[str] = "duckdb"

    def literal(self, value: str) -> str:
        return "'" + value.replace("'", "''") + "'"

    def classified_errors(self, signatures: Sequence[tuple[str, str]]) -> str:
        classify = (
            "CASE "
            + " ".join(
                f"WHEN regexp_matches(error_text, {self.literal('(?i)' + pattern)}) THEN '{category}'"
                for category, pattern in signatures
            )
            + " WHEN kind = 'TOOL' THEN 'tool_error' ELSE 'other' END"
        )
        keys = " ".join(f"WHEN '{c}' THEN {k}" for c, k in ERROR_KEYS.items())
        # An error counts where it happened: not where it merely propagated to (a parent whose failed
        # child has its category), but an error with its own signature counts even when a child failed
        # another way (a run that hits its turn limit after a tool error is both).
        return f"""
            WITH errors AS MATERIALIZED (SELECT *, {classify} AS category FROM ({ERROR_SPANS}))
            SELECT *, CASE category {keys} END AS key,
                   CASE WHEN category IN {FALLBACKS} THEN error_template END AS template
            FROM errors e
            WHERE NOT EXISTS (SELECT 1 FROM errors c WHERE c.trace_id = e.trace_id AND c.parent_id = e.span_id
                              AND (c.category = e.category OR e.category IN {FALLBACKS}))"""

    def errors(self, signatures: Sequence[tuple[str, str]], minimum: int) -> Detection:
        occurrences = f"""
            SELECT trace_id, span_id, start_ns, key, template,
                   concat_ws(' | ', error_text, CASE WHEN kind = 'TOOL' THEN left(tool_args, 300) END) AS excerpt,
                   CASE WHEN kind = 'TOOL' AND tool_args IS NOT NULL THEN 'the error, then the call''s arguments'
                        ELSE '' END AS note,
                   category, kind, duration_ns
            FROM ({self.classified_errors(signatures)})"""
        return Detection(
            occurrences=occurrences,
            setup=(f"CREATE OR REPLACE TEMP TABLE halo_errors AS {occurrences}",),
            scan="SELECT * FROM halo_errors",
            groups=f"""
                SELECT category, key, template, count(DISTINCT trace_id) AS traces, count(*) AS errors,
                       coalesce(sum(duration_ns), 0) / 1e6 AS latency_ms,
                       lower(array_to_string(list_sort(list_distinct(list(kind))), '/')) AS kinds,
                       count(*) - count(DISTINCT trace_id) AS extra
                FROM halo_errors GROUP BY ALL HAVING count(DISTINCT trace_id) >= {minimum}
                ORDER BY traces DESC, category, key, template""",
        )

    def unoffered_tool_calls(self, signatures: Sequence[tuple[str, str]], minimum: int) -> Detection:
        calls = """
            SELECT c.trace_id, c.span_id, c.tool, c.start_ns, c.arguments
            FROM (SELECT trace_id, span_id, start_ns, tools_offered AS own, unnest(tool_calls).name AS tool,
                         unnest(tool_calls).arguments AS arguments
                  FROM spans WHERE kind = 'LLM' AND tool_calls IS NOT NULL) c
            JOIN (SELECT trace_id, list_distinct(flatten(list(tools_offered))) AS tools FROM spans
                  WHERE tools_offered IS NOT NULL GROUP BY trace_id) o USING (trace_id)
            WHERE len(o.tools) > 0 AND c.tool IS NOT NULL AND NOT list_contains(coalesce(c.own, o.tools), c.tool)"""
        occurrences = f"""
            SELECT trace_id, span_id, start_ns, tool AS key, NULL::VARCHAR AS template,
                   coalesce(arguments, '') AS excerpt,
                   'a call to a tool the model was not offered, with these arguments' AS note, 'call' AS source
            FROM ({calls})
            UNION ALL
            SELECT trace_id, span_id, start_ns, key, NULL, error_text, '', 'error'
            FROM ({self.classified_errors(signatures)})
            WHERE category = 'hallucinated_tool'"""
        return Detection(
            occurrences=occurrences,
            groups=f"""
                WITH occurrences AS ({occurrences}),
                offered AS (
                  SELECT c.key, list_sort(list_distinct(flatten(list(s.tools_offered))))[:12] AS offered
                  FROM (SELECT DISTINCT key, trace_id FROM occurrences WHERE source = 'call') c
                  JOIN spans s USING (trace_id) WHERE s.tools_offered IS NOT NULL GROUP BY c.key)
                SELECT key, NULL AS template, count(DISTINCT trace_id) AS traces,
                       count(*) FILTER (source = 'call') AS calls, any_value(offered.offered) AS offered
                FROM occurrences LEFT JOIN offered USING (key)
                GROUP BY key HAVING count(*) FILTER (source = 'call') > 0 AND count(DISTINCT trace_id) >= {minimum}
                ORDER BY key""",
        )

    def repeated_calls(self, min_calls: int, minimum: int) -> Detection:
        # A call that repeats a failed identical call is a retry of that failure, not a loop.
        repeats = f"""
            SELECT trace_id, tool, args, count(*) AS calls, min(span_id) AS span_id, min(start_ns) AS start_ns
            FROM (SELECT trace_id, span_id, start_ns, tool_name AS tool, tool_args AS args,
                         lag(status) OVER (PARTITION BY trace_id, tool_name, tool_args
                                           ORDER BY start_ns, span_id) = 'ERROR' AS retry
                  FROM spans WHERE kind = 'TOOL' AND tool_name IS NOT NULL AND tool_args IS NOT NULL)
            WHERE retry IS NOT TRUE
            GROUP BY trace_id, tool, args HAVING count(*) >= {min_calls}
            UNION ALL
            SELECT trace_id, tool, args, count(*), min(span_id), min(start_ns) FROM (
              SELECT trace_id, span_id, start_ns, unnest(tool_calls).name AS tool, unnest(tool_calls).arguments AS args
              FROM spans s WHERE kind = 'LLM' AND tool_calls IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM spans t WHERE t.trace_id = s.trace_id AND t.kind = 'TOOL'))
            WHERE tool IS NOT NULL GROUP BY trace_id, tool, args HAVING count(*) >= {min_calls}"""
        occurrences = f"""
            SELECT trace_id, span_id, start_ns, tool AS key, NULL::VARCHAR AS template, args AS excerpt,
                   calls || ' identical calls with these arguments' AS note, calls
            FROM ({repeats})"""
        return Detection(
            occurrences=occurrences,
            groups=f"""
                SELECT key, NULL AS template, count(DISTINCT trace_id) AS traces, sum(calls - 1)::BIGINT AS extra
                FROM ({occurrences}) GROUP BY key HAVING count(DISTINCT trace_id) >= {minimum} ORDER BY key""",
        )

    def refusals(self, pattern: str, minimum: int) -> Detection:
        regex = self.literal("(?i)" + pattern)
        occurrences = f"""
            SELECT trace_id, span_id, start_ns, agent AS key, NULL::VARCHAR AS template,
                   regexp_extract(output, {regex}) AS excerpt, 'the model refuses' AS note
            FROM (SELECT s.trace_id, s.span_id, s.start_ns, coalesce(s.agent_name, t.agents[1], s.service) AS agent,
                         coalesce(s.output_messages::VARCHAR, s.output_value) AS output
                  FROM spans s JOIN traces t USING (trace_id)
                  WHERE s.kind = 'LLM'
                    AND regexp_matches(coalesce(s.output_messages::VARCHAR, s.output_value, ''), {regex}))"""
        return Detection(
            occurrences=occurrences,
            groups=f"""
                SELECT key, NULL AS template, count(DISTINCT trace_id) AS traces, count(*) AS calls
                FROM ({occurrences}) GROUP BY key HAVING count(DISTINCT trace_id) >= {minimum} ORDER BY key""",
        )

    def truncated_outputs(self, minimum: int) -> Detection:
        occurrences = f"""
            SELECT trace_id, span_id, start_ns, coalesce(model, 'unknown') AS key, NULL::VARCHAR AS template,
                   CASE WHEN lower(finish_reason) IN {LENGTH_REASONS} THEN finish_reason ELSE '' END AS excerpt,
                   CASE WHEN lower(finish_reason) IN {LENGTH_REASONS}
                        THEN 'cut at the output limit (its finish reason is quoted)'
                        ELSE 'empty output' END || coalesce(', ' || output_tokens || ' output tokens', '') AS note,
                   output_tokens
            FROM spans
            WHERE kind = 'LLM' AND status <> 'ERROR' AND (
              lower(finish_reason) IN {LENGTH_REASONS}
              OR (tool_calls IS NULL AND output_messages IS NOT NULL
                  AND coalesce(trim(array_to_string(json_extract_string(output_messages, '$[*].content'), '')), '') = '')
              OR (tool_calls IS NULL AND output_messages IS NULL AND output_value IS NOT NULL
                  AND trim(output_value) = ''))"""
        return Detection(
            occurrences=occurrences,
            groups=f"""
                SELECT key, NULL AS template, count(DISTINCT trace_id) AS traces, count(*) AS calls,
                       max(output_tokens) AS cap
                FROM ({occurrences}) GROUP BY key HAVING count(DISTINCT trace_id) >= {minimum} ORDER BY key""",
        )

    def guardrail_trips(self, minimum: int) -> Detection:
        occurrences = """
            SELECT trace_id, span_id, start_ns, guardrail AS key, NULL::VARCHAR AS template, '' AS excerpt,
                   'the guardrail reported a trip' AS note
            FROM (SELECT trace_id, span_id, start_ns,
                         coalesce(json_extract_string(raw, '$.attributes."guardrail.name"'),
                                  regexp_replace(name, '^guardrail[._ ]', '')) AS guardrail
                  FROM spans WHERE kind = 'GUARDRAIL' AND status <> 'ERROR'
                    AND lower(coalesce(json_extract_string(raw, '$.attributes."guardrail.triggered"'), ''))
                        IN ('true', '1'))"""
        return Detection(
            occurrences=occurrences,
            groups=f"""
                SELECT key, NULL AS template, count(DISTINCT trace_id) AS traces
                FROM ({occurrences}) GROUP BY key HAVING count(DISTINCT trace_id) >= {minimum} ORDER BY key""",
        )

    def slow_calls(self, factor: float, min_ms: float, min_share: float, minimum: int) -> Detection:
        occurrences = f"""
            SELECT s.trace_id, s.span_id, s.start_ns, s.name_key AS key, NULL::VARCHAR AS template, '' AS excerpt,
                   'the call took ' || round(s.duration_ns / 1e9, 1) || ' s of a '
                     || round(tr.duration_ns / 1e9, 1) || ' s run' AS note,
                   s.duration_ns, m.median_ns, tr.duration_ns AS run_ns
            FROM (SELECT *, coalesce(tool_name, name) AS name_key FROM spans
                  WHERE kind IN {TOOL_KINDS} AND status <> 'ERROR') s
            JOIN (SELECT coalesce(tool_name, name) AS name_key, median(duration_ns) AS median_ns FROM spans
                  WHERE kind IN {TOOL_KINDS} AND status <> 'ERROR' GROUP BY 1) m
              USING (name_key)
            JOIN traces tr USING (trace_id)
            WHERE s.duration_ns > {factor} * m.median_ns AND s.duration_ns >= {int(min_ms * 1e6)}
              AND s.duration_ns >= {float(min_share)!r} * tr.duration_ns"""
        return Detection(
            occurrences=occurrences,
            groups=f"""
                SELECT key, NULL AS template, count(DISTINCT trace_id) AS traces, count(*) AS calls,
                       sum(duration_ns - median_ns) / 1e6 AS excess_ms, median(duration_ns) / 1e9 AS slow_s,
                       any_value(median_ns) / 1e9 AS usual_s, avg(duration_ns / run_ns) AS run_share
                FROM ({occurrences}) GROUP BY key HAVING count(DISTINCT trace_id) >= {minimum} ORDER BY key""",
        )

    def bottlenecks(self, share: float, min_ms: float, minimum: int) -> Detection:
        runs = f"""
            SELECT s.trace_id, coalesce(s.tool_name, s.name) AS key, sum(s.duration_ns) AS tool_ns, count(*) AS calls,
                   min(s.span_id) AS span_id, min(s.start_ns) AS start_ns, any_value(t.duration_ns) AS run_ns
            FROM spans s JOIN traces t USING (trace_id)
            WHERE s.kind IN {TOOL_KINDS} AND s.status <> 'ERROR' AND t.duration_ns > 0
            GROUP BY s.trace_id, coalesce(s.tool_name, s.name)"""
        tools = f"""
            SELECT r.key FROM ({runs}) r
            JOIN (SELECT coalesce(tool_name, name) AS key, median(duration_ns) AS p50 FROM spans
                  WHERE kind IN {TOOL_KINDS} AND status <> 'ERROR' GROUP BY 1) m USING (key)
            GROUP BY r.key
            HAVING median(r.tool_ns / r.run_ns) >= {float(share)!r} AND any_value(m.p50) >= {int(min_ms * 1e6)}"""
        occurrences = f"""
            SELECT r.trace_id, r.span_id, r.start_ns, r.key, NULL::VARCHAR AS template, '' AS excerpt,
                   'its calls took ' || round(r.tool_ns / 1e9, 1) || ' s of a ' || round(r.run_ns / 1e9, 1)
                     || ' s run' AS note,
                   r.tool_ns, r.run_ns, r.calls
            FROM ({runs}) r JOIN ({tools}) USING (key)"""
        return Detection(
            occurrences=occurrences,
            groups=f"""
                WITH found AS ({occurrences}),
                steps AS (
                  SELECT f.key, coalesce(s.tool_name, s.name) = f.key AS own, s.duration_ns
                  FROM (SELECT DISTINCT key, trace_id FROM found) f JOIN spans s USING (trace_id)
                  WHERE s.kind IN {TOOL_KINDS} OR s.kind = 'LLM')
                SELECT key, NULL AS template, count(DISTINCT trace_id) AS traces, sum(calls) AS calls,
                       sum(tool_ns) / 1e6 AS tool_ms, sum(tool_ns) / sum(run_ns) AS run_share,
                       median(tool_ns / run_ns) AS median_share,
                       sum(tool_ns) / (SELECT sum(duration_ns) FROM traces) AS total_share,
                       any_value(p.p50) / 1e9 AS p50_s, any_value(p.p95) / 1e9 AS p95_s,
                       any_value(p.other_p50) / 1e9 AS other_p50_s, any_value(p.other_p95) / 1e9 AS other_p95_s
                FROM found JOIN (
                  SELECT key, quantile_cont(duration_ns, 0.5) FILTER (own) AS p50,
                         quantile_cont(duration_ns, 0.95) FILTER (own) AS p95,
                         quantile_cont(duration_ns, 0.5) FILTER (NOT own) AS other_p50,
                         quantile_cont(duration_ns, 0.95) FILTER (NOT own) AS other_p95
                  FROM steps GROUP BY key) p USING (key)
                GROUP BY key HAVING count(DISTINCT trace_id) >= {minimum} ORDER BY key""",
        )

    def oversized_prompts(self, factor: float, min_tokens: int, minimum: int) -> Detection:
        occurrences = f"""
            SELECT s.trace_id, s.span_id, s.start_ns, coalesce(s.agent_name, tr.agents[1], s.service, 'unknown') AS key,
                   NULL::VARCHAR AS template, coalesce(s.model, '') AS excerpt,
                   'a call to this model with ' || s.input_tokens || ' prompt tokens' AS note,
                   s.input_tokens, s.cost, m.median_tokens
            FROM spans s JOIN traces tr USING (trace_id)
            CROSS JOIN (SELECT median(input_tokens) AS median_tokens FROM spans
                        WHERE kind = 'LLM' AND input_tokens > 0) m
            WHERE s.kind = 'LLM' AND s.input_tokens >= greatest({factor} * m.median_tokens, {min_tokens})"""
        return Detection(
            occurrences=occurrences,
            groups=f"""
                SELECT key, NULL AS template, count(DISTINCT trace_id) AS traces, count(*) AS calls,
                       sum(input_tokens - median_tokens)::BIGINT AS excess, median(input_tokens)::BIGINT AS typical,
                       any_value(median_tokens)::BIGINT AS usual, coalesce(sum(cost), 0) AS cost
                FROM ({occurrences}) GROUP BY key HAVING count(DISTINCT trace_id) >= {minimum} ORDER BY key""",
        )

    def examples(self, occurrences: str, limit: int) -> str:
        return f"""
            SELECT trace_id, span_id, excerpt, note FROM (
              SELECT *, row_number() OVER (PARTITION BY trace_id ORDER BY start_ns, span_id) AS nth
              FROM ({occurrences}))
            WHERE nth = 1 ORDER BY start_ns, trace_id LIMIT {int(limit)}"""

    def run_times(self) -> str:
        return """
            SELECT coalesce(sum(duration_ns), 0) / 1e6 AS total_ms, median(duration_ns) / 1e6 AS p50,
                   quantile_cont(duration_ns, 0.95) / 1e6 AS p95 FROM traces"""

    def histogram(self, column: str, scale: float, edges: Sequence[float]) -> str:
        if column not in ("duration_ns", "cost"):
            raise ValueError(f"no histogram of {column!r}")
        cases = " ".join(f"WHEN v < {float(edge)!r} THEN {i}" for i, edge in enumerate(edges))
        return (
            f"SELECT CASE {cases} ELSE {len(edges)} END AS b, count(*) AS n "
            f"FROM (SELECT {column} / {float(scale)!r} AS v FROM traces) WHERE v IS NOT NULL GROUP BY 1"
        )
