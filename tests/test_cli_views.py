"""What the query commands print for people: `show`'s timeline and conversations, `sql`'s readable
rows, `stats`' durations and costs, errors said once, and trace text that cannot take over a
terminal."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from agent_traces import HOSTILE, UNSAFE, write_agent_traces
from click.testing import CliRunner

from halo_rlm.cli import cli
from halo_rlm.utils import terminal_safe


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("views")
    path = folder / "s.duckdb"
    result = CliRunner().invoke(
        cli, ["ingest", str(write_agent_traces(folder / "t.jsonl")), "--store", str(path)]
    )
    assert result.exit_code == 0, result.output
    return path


def halo(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


# --- show ----------------------------------------------------------------------------------------


def test_show_prints_each_llm_calls_conversation_and_a_timeline(store: Path) -> None:
    code, out, err = halo("show", "trace-0002", "--store", store)
    assert code == 0, err
    # The timeline: one row per span with its start, duration and a bar on the trace's time axis.
    timeline = out[: out.index("Spans")]
    assert re.search(r"agent\.run\s+0ms\s+5\.2s\s+█{20,}", timeline)
    assert re.search(r"✗ tool\.search_flights\s+1\.2s\s+1\.9s\s+ +█+", timeline)
    # The first call: flattened OpenInference messages and the tool call it made.
    assert "system You plan trips." in out
    assert "user Find me a flight to Lisbon on day 2." in out
    assert '⇒ assistant → search_flights({"city":"Lisbon"}) call_2' in out
    # The second call, from JSON blobs: the three messages the first call showed are not repeated,
    # the tool's result and the answer are.
    assert "… 3 earlier messages as above" in out
    assert "tool (call_2) FlightAPIError: upstream timeout after 30s" in out
    assert "⇒ assistant Sorry, no flights could be found right now." in out
    assert out.count("You plan trips.") == 1


def test_show_span_prints_whole_messages_and_an_unknown_span_fails(store: Path) -> None:
    code, out, _ = halo("show", "trace-0003", "--span", "trace-0003-llm2", "--store", store)
    assert code == 0 and "earlier messages" not in out
    assert "system You plan trips." in out and "⇒ assistant Sorry" in out and "tool.search_flights" not in out
    code, out, err = halo(
        "show", "trace-0003", "--span", "trace-0003-llm2", "--span", "no-such-span", "--store", store
    )
    assert code == 1 and "no span no-such-span in trace trace-0003" in err
    code, out, err = halo("show", "trace-0003", "--span", "no-such-span", "--store", store, "--json")
    assert code == 1 and orjson.loads(out)["missing_span_ids"] == ["no-such-span"]


# --- sql -----------------------------------------------------------------------------------------


def test_sql_select_star_is_readable_row_by_row(store: Path) -> None:
    query = "SELECT * FROM spans WHERE trace_id = 'trace-0001' ORDER BY span_id DESC LIMIT 3"
    code, out, _ = halo("sql", query, "--store", store)
    assert code == 0
    assert out.count("─── row ") == 3
    assert re.search(r"^trace_id +trace-0001$", out, re.M)
    assert re.search(r"^span_id +trace-0001-tool$", out, re.M)
    assert re.search(r"^status_message +FlightAPIError: upstream timeout after 30s$", out, re.M)
    assert re.search(
        r"^raw +\{\"trace_id\":\"trace-0001\"", out, re.M
    )  # long values: head (and tail) on view
    cells = [line for line in out.splitlines() if line.strip()]
    assert not any(re.fullmatch(r"[\s…│┃]*", line) for line in cells)  # no row of bare "…" cells
    assert "3 rows" in out


def test_sql_narrow_results_stay_a_table(store: Path) -> None:
    code, out, _ = halo(
        "sql", "SELECT kind, count(*) AS spans FROM spans GROUP BY 1 ORDER BY 1", "--store", store
    )
    assert code == 0 and "─── row" not in out
    assert re.search(r"AGENT\s+│\s+6", out) and re.search(r"LLM\s+│\s+12", out)


# --- stats ---------------------------------------------------------------------------------------


def test_stats_gives_p50_p95_per_agent_model_and_tool(store: Path) -> None:
    code, out, _ = halo("stats", "--store", store)
    assert code == 0
    # Agent runs take 5.1 … 5.6 s, tool calls 1.84 … 2.09 s, LLM calls 1.19 and 1.8 s.
    assert re.search(r"Planner\s+│\s+6\s+│\s+6\s+│\s+5\.3s\s+│\s+5\.6s", out)
    assert re.search(r"search_flights\s+│\s+6\s+│\s+6\s+│\s+6\s+│\s+2\.0s\s+│\s+2\.1s", out)
    code, out, _ = halo("stats", "--store", store, "--json")
    durations = {(d["of"], d["name"]): d for d in orjson.loads(out)["durations"]}
    assert durations["agent", "Planner"]["spans"] == 6
    assert durations["agent", "Planner"]["p50_ms"] == pytest.approx(5350.0)
    assert durations["model", "gpt-4o"]["spans"] == 12
    assert durations["tool", "search_flights"]["p50_ms"] == pytest.approx(1965.0)
    assert durations["tool", "search_flights"]["p95_ms"] == pytest.approx(2077.5)


def test_stats_prices_tokens_without_a_cost_and_says_so(store: Path) -> None:
    code, out, _ = halo("stats", "--store", store)
    # 12 calls of gpt-4o (2.5 $/M in, 10 $/M out): 6 × (1200 + 1500) input and 6 × (80 + 40) output tokens.
    estimate = (6 * 2700 * 2.5 + 6 * 120 * 10.0) / 1e6
    assert code == 0 and f"${estimate:,.4f} *" in out
    assert f"${estimate:,.4f} of it is estimated from HALO's price table for 12 LLM calls" in out
    code, out, _ = halo("stats", "--store", store, "--json")
    stats = orjson.loads(out)
    assert stats["cost"] == 0 and stats["cost_estimate"]["estimated"] == pytest.approx(estimate)
    assert stats["cost_estimate"]["estimated_calls"] == 12


def test_an_error_a_tool_result_repeats_is_said_once(store: Path, tmp_path: Path) -> None:
    code, out, _ = halo("stats", "--store", store, "--json")
    (group,) = orjson.loads(out)["error_groups"]
    assert group["template"] == "FlightAPIError: upstream timeout after <n>"
    assert group["example_message"] == "FlightAPIError: upstream timeout after 30s"
    code, out, _ = halo("analyze", "--store", store, "-o", tmp_path / "report", "--json")
    assert code == 0
    excerpts = [ev["excerpt"] for finding in orjson.loads(out)["findings"] for ev in finding["evidence"]]
    # The error once, then the failed call's arguments.
    assert excerpts and all(
        excerpt.count("upstream timeout") == 1 and excerpt.endswith('| {"city":"Lisbon"}')
        for excerpt in excerpts
    )


# --- terminals -----------------------------------------------------------------------------------


def test_terminal_safe_makes_every_control_visible() -> None:
    shown = terminal_safe(HOSTILE + "\ttab\nnew line\rover")
    assert not UNSAFE.search(shown)
    assert shown.startswith("␛]0;pwned␇␛[2J") and "<U+009B>31mred<U+202E>evil" in shown
    assert "\ttab\nnew line␍over" in shown


def test_hostile_trace_text_never_reaches_the_terminal(tmp_path: Path) -> None:
    store = tmp_path / "hostile.duckdb"
    traces = write_agent_traces(tmp_path / f"hostile{HOSTILE[:12]}.jsonl", traces=6, text=HOSTILE)
    with traces.open("ab") as bad:  # a bad line, whose reject reason quotes it
        bad.write(f'{{"trace_id": "{HOSTILE}"\n'.encode())
    trace = "trace-0001"
    commands = [
        ["ingest", traces, "--store", store],
        ["stats", "--store", store],
        ["stats", traces],
        ["traces", "--store", store],
        ["traces", "--store", store, "--text", HOSTILE[:20]],
        ["show", trace, "--store", store],
        ["show", trace, "--store", store, "--span", f"{trace}-llm2", "--span", f"{trace}-tool"],
        ["show", trace, "--store", store, "--span", f"nope{HOSTILE}"],
        ["show", f"no-trace{HOSTILE}", "--store", store],
        ["sql", "SELECT * FROM spans LIMIT 4", "--store", store],
        ["sql", "SELECT name, service, status_message FROM spans", "--store", store],
        ["sql", f"SELECT '{HOSTILE}' AS x", "--store", store],
        ["sql", "SELECT path, line_no, reason, excerpt FROM rejects", "--store", store],
        ["analyze", "--store", store, "-o", tmp_path / "report"],
        ["verify", tmp_path / "report" / "report.json"],
    ]
    for args in commands:
        code, out, err = halo(*args)
        assert code in (0, 1) and "Traceback" not in out + err, args
        for stream in (out, err):
            found = UNSAFE.search(stream)
            assert found is None, (args, stream[max(0, found.start() - 80) : found.end() + 80])
        if args[0] in ("stats", "traces", "sql", "analyze") and "--text" not in args:
            assert "␛" in out, args  # the hostile text is shown, made visible
