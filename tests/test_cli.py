"""The store commands, through click's runner."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from halo_rlm.cli import cli


@pytest.fixture
def run() -> CliRunner:
    return CliRunner()


def invoke(run: CliRunner, *args: str | Path) -> tuple[int, str, str]:
    result = run.invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_help_teaches(run: CliRunner) -> None:
    code, out, _ = invoke(run, "--help")
    assert code == 0 and "halo ingest traces.jsonl" in out and "halo sql" in out
    code, out, _ = invoke(run, "traces", "--help")
    assert code == 0 and "--errors" in out and "--sort" in out


def test_ingest_then_query_without_paths(run: CliRunner, fixtures: Path) -> None:
    code, out, _ = invoke(run, "ingest", fixtures)
    assert code == 0 and "Ingested 73 spans from 4 files" in out
    code, out, _ = invoke(run, "ingest", fixtures)
    assert code == 0 and "Ingested 0 spans from 0 files (4 already in the store)" in out
    code, out, err = invoke(run, "stats")
    assert code == 0 and "Using the store of the last ingest" in err
    assert "list_files" in out and "Top error groups" in out and "HaloCodeHelper" in out
    code, out, _ = invoke(run, "traces", "--errors", "--sort", "duration")
    assert code == 0 and "301d90d19c94485992997d1cd96bacfd" in out and "of 4 traces" in out
    code, out, _ = invoke(run, "show", "301d90d19c94485992997d1cd96bacfd", "--width", "200")
    assert code == 0 and "function.list_files" in out and "No such file" in out
    code, out, _ = invoke(run, "sql", "SELECT count(*) AS n FROM spans")
    assert code == 0 and "73" in out


def test_json_output(run: CliRunner, fixtures: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.duckdb"
    code, out, _ = invoke(run, "ingest", fixtures / "tiny_traces.jsonl", "--store", store, "--json")
    assert code == 0 and orjson.loads(out)["spans"] == 6
    code, out, _ = invoke(run, "stats", "--store", store, "--json")
    assert orjson.loads(out)["traces"] == 3
    code, out, _ = invoke(run, "traces", "--store", store, "--json", "--model", "gpt-5.4")
    assert [t["trace_id"] for t in orjson.loads(out)["traces"]] == ["t-bbbb"]
    code, out, _ = invoke(run, "show", "t-bbbb", "--store", store, "--json")
    assert [s["span_id"] for s in orjson.loads(out)["spans"]] == ["s-bbbb-1", "s-bbbb-2"]
    code, out, _ = invoke(run, "sql", "SELECT trace_id FROM traces ORDER BY 1", "--store", store, "--json")
    assert orjson.loads(out)["rows"] == [["t-aaaa"], ["t-bbbb"], ["t-cccc"]]


def test_query_commands_take_trace_files_directly(run: CliRunner, fixtures: Path) -> None:
    code, out, err = invoke(run, "stats", fixtures / "tiny_traces.jsonl")
    assert code == 0 and "Ingested 6 spans" in err and "claude-sonnet-4-5" in out


def test_bad_input_and_strict(run: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"trace_id": "t", "span_id": "s"}\n{"trace_id": "t", "span_id": \n')
    code, out, _ = invoke(run, "ingest", bad, "--store", tmp_path / "a.duckdb")
    assert code == 0 and "1 records rejected" in out and "truncated line?" in out
    code, _, err = invoke(run, "ingest", bad, "--store", tmp_path / "b.duckdb", "--strict")
    assert code == 2 and "bad.jsonl:2: invalid JSON" in err
    csv = tmp_path / "data.csv"
    csv.write_text("a,b,c\n1,2,3\n")
    code, out, _ = invoke(run, "ingest", csv, "--store", tmp_path / "c.duckdb")
    assert code == 1 and "not trace data: found CSV/TSV text" in out


def test_errors_are_one_clear_line(run: CliRunner, tmp_path: Path, fixtures: Path) -> None:
    code, _, err = invoke(run, "ingest", tmp_path / "missing.jsonl")
    assert code == 1 and "no such file or directory" in err and "Traceback" not in err
    code, _, err = invoke(run, "stats")
    assert code == 1 and "no traces given" in err
    code, _, err = invoke(run, "stats", "--store", tmp_path / "nope.duckdb")
    assert code == 1 and "no such store" in err
    store = tmp_path / "s.duckdb"
    invoke(run, "ingest", fixtures / "tiny_traces.jsonl", "--store", store)
    code, _, err = invoke(run, "show", "t-zzzz", "--store", store)
    assert code == 1 and "no trace 't-zzzz'" in err
    code, _, err = invoke(run, "sql", "DROP TABLE spans", "--store", store)
    assert code == 1 and "only SELECT" in err
    code, _, err = invoke(run, "traces", "--store", store, "--since", "yesterday")
    assert code == 1 and "--since: not an ISO-8601 time" in err


def test_demo_runs_the_detectors_on_the_shipped_examples_without_a_provider(
    run: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    code, out, err = invoke(run, "demo", "-o", tmp_path / "report")
    assert code == 0, err
    assert "14 systemic findings in 300 traces" in out and "LLM analysis was skipped" in err
    assert {p.name for p in (tmp_path / "report").iterdir()} == {"report.json", "report.md", "report.html"}
    assert "LLM analysis was skipped" in (tmp_path / "report" / "report.md").read_text()
