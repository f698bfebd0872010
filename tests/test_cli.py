"""The store commands, through click's runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from halo_rlm.cli import cli
from halo_rlm.simulate import simulate


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
    assert "14 systemic findings in 300 traces" in out and "This demo ran the detectors alone" in err
    assert {p.name for p in (tmp_path / "report").iterdir()} == {"report.json", "report.md", "report.html"}
    assert "halo demo --llm" in (tmp_path / "report" / "report.md").read_text()


def test_help_and_version_load_only_click(tmp_path: Path) -> None:
    """`halo --help` and `--version` start instantly: no rich, pydantic, DuckDB or model client."""
    script = (
        "import sys\n"
        "from halo_rlm.cli import cli\n"
        "for args in (['--help'], ['--version'], ['traces', '--help']):\n"
        "    try:\n"
        "        cli.main(args, prog_name='halo')\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'rich', 'pydantic', 'duckdb', 'openai', 'orjson'})\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "HEAVY []" in result.stdout, result.stdout[-500:]


def test_commands_without_a_model_import_neither_openai_nor_the_engine(tmp_path: Path) -> None:
    truth = simulate(tmp_path / "t.jsonl", traces=30, seed=2)
    store = tmp_path / "s.duckdb"
    script = (
        "import sys\n"
        "from halo_rlm.cli import cli\n"
        f"store, traces, out = {str(store)!r}, {str(truth.traces_path)!r}, {str(tmp_path / 'report')!r}\n"
        "def run(*args):\n"
        "    try:\n"
        "        cli.main(list(args), prog_name='halo', standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "run('ingest', traces, '--store', store)\n"
        "from halo_rlm.store import TraceStore\n"
        "with TraceStore.open(store, read_only=True) as s:\n"
        "    trace_id = s.query_traces(None, limit=1).traces[0].trace_id\n"
        "for args in (['stats'], ['traces'], ['show', trace_id], ['sql', 'SELECT count(*) FROM spans'],\n"
        "             ['analyze', '-o', out]):\n"
        "    run(*args, '--store', store)\n"
        "loaded = sorted(m for m in sys.modules if m == 'openai' or m.startswith(('openai.', 'halo_rlm.engine')))\n"
        "print('LOADED', loaded)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    assert "LOADED []" in result.stdout, result.stdout[-800:] + result.stderr[-800:]
    assert (tmp_path / "report" / "report.json").exists()
