"""The store commands, through click's runner."""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
from agent_traces import write_agent_traces
from click.testing import CliRunner
from halo_runs import jsonl, runs, write_runs

from halo_rlm.cli import cli
from halo_rlm.simulate import simulate
from halo_rlm.store import TraceStore
from halo_rlm.store import paths as store_paths


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


def test_ingest_then_query_without_paths(run: CliRunner, tmp_path: Path) -> None:
    # A folder of trace files, one plain, one gzip-compressed in a subfolder, beside a file that is not one.
    folder = tmp_path / "traces"
    (folder / "more").mkdir(parents=True)
    parts = [runs(4), runs(4, first=4)]
    write_runs(folder / "a.jsonl", parts[0])
    (folder / "more" / "b.jsonl.gz").write_bytes(gzip.compress(jsonl(parts[1])))
    (folder / "notes.txt").write_text("not traces\n")
    generated = parts[0] + parts[1]
    spans = sum(len(r.steps) for r in generated)
    code, out, _ = invoke(run, "ingest", folder)
    assert code == 0 and f"Ingested {spans} spans from 2 files" in out
    code, out, _ = invoke(run, "ingest", folder)
    assert code == 0 and "Ingested 0 spans from 0 files (2 already in the store)" in out
    code, out, err = invoke(run, "stats")
    assert code == 0 and "(of the last ingest in " in err
    assert "Top error groups" in out and "FileNotFoundError" in out
    for name in {n for r in generated for n in (r.agent, r.model, r.tool, r.service)}:
        assert name in out, name
    failing = sorted((r for r in generated if r.tool_error), key=lambda r: r.duration_ms, reverse=True)
    assert len(failing) == 2 and failing[0].start_ns < failing[1].start_ns  # not the default order
    code, out, _ = invoke(run, "traces", "--errors", "--sort", "duration")
    assert code == 0 and f"of {len(failing)} traces" in out
    assert [out.index(r.trace_id) for r in failing] == sorted(out.index(r.trace_id) for r in failing)
    assert not [r.trace_id for r in generated if not r.tool_error and r.trace_id in out]
    code, out, _ = invoke(run, "show", failing[0].trace_id, "--width", "200")
    assert code == 0 and all(step.name in out for step in failing[0].steps)
    assert f"function.{failing[0].tool}" in out and str(failing[0].tool_error) in out
    code, out, _ = invoke(
        run, "sql", "SELECT count(*) AS n, count(DISTINCT trace_id) AS t FROM spans", "--json"
    )
    assert code == 0 and orjson.loads(out)["rows"] == [[spans, len(generated)]]


def test_json_output(run: CliRunner, tmp_path: Path) -> None:
    generated = runs(6)
    store = tmp_path / "s.duckdb"
    code, out, _ = invoke(
        run, "ingest", write_runs(tmp_path / "t.jsonl", generated), "--store", store, "--json"
    )
    assert code == 0 and orjson.loads(out)["spans"] == sum(len(r.steps) for r in generated)
    code, out, _ = invoke(run, "stats", "--store", store, "--json")
    stats = orjson.loads(out)
    assert (stats["traces"], stats["error_traces"]) == (
        len(generated),
        sum(bool(r.tool_error) for r in generated),
    )
    code, out, _ = invoke(run, "traces", "--store", store, "--json", "--model", "gpt-5.4")
    on_gpt = [r for r in generated if r.model == "gpt-5.4"]
    assert 0 < len(on_gpt) < len(generated)
    by_start = sorted(on_gpt, key=lambda r: r.start_ns, reverse=True)  # the default order
    assert [t["trace_id"] for t in orjson.loads(out)["traces"]] == [r.trace_id for r in by_start]
    two_calls = next(r for r in generated if r.llm_calls == 2)
    code, out, _ = invoke(run, "show", two_calls.trace_id, "--store", store, "--json")
    assert [s["span_id"] for s in orjson.loads(out)["spans"]] == two_calls.span_ids
    code, out, _ = invoke(run, "sql", "SELECT trace_id FROM traces ORDER BY 1", "--store", store, "--json")
    assert orjson.loads(out)["rows"] == [[r.trace_id] for r in sorted(generated, key=lambda r: r.trace_id)]


def test_query_commands_take_trace_files_directly(run: CliRunner, tmp_path: Path) -> None:
    generated = runs(3)
    code, out, err = invoke(run, "stats", write_runs(tmp_path / "t.jsonl", generated))
    assert code == 0 and f"Ingested {sum(len(r.steps) for r in generated)} spans" in err
    assert all(r.model in out for r in generated)


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


def test_errors_are_one_clear_line(run: CliRunner, tmp_path: Path) -> None:
    code, _, err = invoke(run, "ingest", tmp_path / "missing.jsonl")
    assert code == 1 and "no such file or directory" in err and "Traceback" not in err
    code, _, err = invoke(run, "stats")
    assert code == 1 and "no traces given" in err
    code, _, err = invoke(run, "stats", "--store", tmp_path / "nope.duckdb")
    assert code == 1 and "no such store" in err
    store = tmp_path / "s.duckdb"
    assert invoke(run, "ingest", write_runs(tmp_path / "t.jsonl", runs(2)), "--store", store)[0] == 0
    code, _, err = invoke(run, "show", "t-zzzz", "--store", store)
    assert code == 1 and "no trace 't-zzzz'" in err
    code, _, err = invoke(run, "sql", "DROP TABLE spans", "--store", store)
    assert code == 1 and "only SELECT" in err
    code, _, err = invoke(run, "traces", "--store", store, "--since", "yesterday")
    assert code == 2 and "'--since': not a time: 'yesterday'" in err and "7d" in err


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


def test_reading_a_store_loads_no_ingest_machinery(tmp_path: Path) -> None:
    """`halo stats` and `halo show` start in a fraction of a second: the file reader's numpy and
    pyarrow, the ingest and asyncio load only for the commands that need them."""
    truth = simulate(tmp_path / "t.jsonl", traces=20, seed=3)
    store = tmp_path / "s.duckdb"
    subprocess.run(
        [sys.executable, "-m", "halo_rlm", "ingest", str(truth.traces_path), "--store", str(store)],
        capture_output=True,
        check=True,
    )
    with TraceStore.open(str(store), read_only=True) as s:
        trace_id = s.query_traces(None, limit=1).traces[0].trace_id
    for args in (["stats"], ["show", trace_id]):
        script = (
            "import sys\n"
            "from halo_rlm.cli import cli\n"
            "try:\n"
            f"    cli.main({[*args, '--store', str(store)]!r}, prog_name='halo', standalone_mode=False)\n"
            "except SystemExit:\n"
            "    pass\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'pyarrow', 'asyncio', 'openai'})\n"
            "ingest = sorted(m for m in sys.modules if m.startswith(('halo_rlm.store.duckdb_ingest', "
            "'halo_rlm.store.duckdb_udfs', 'halo_rlm.formats.decode')))\n"
            "print('HEAVY', heavy, ingest)\n"
        )
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        assert "HEAVY [] []" in result.stdout, args + [result.stdout[-800:], result.stderr[-800:]]


# --- which store a query command reads --------------------------------------------------------------


def test_the_last_store_is_remembered_per_working_directory(
    run: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project_a, project_b = tmp_path / "a", tmp_path / "b"
    (project_a / "sub").mkdir(parents=True)
    project_b.mkdir()
    traces_a = write_agent_traces(project_a / "a.jsonl", traces=2)
    traces_b = write_agent_traces(project_b / "b.jsonl", traces=5)
    monkeypatch.chdir(project_a)
    assert invoke(run, "ingest", traces_a, "--store", project_a / "a.duckdb")[0] == 0
    monkeypatch.chdir(project_b)
    assert invoke(run, "ingest", traces_b, "--store", project_b / "b.duckdb")[0] == 0
    # Another project's ingest does not change what this one reads, nor does a subfolder lose it.
    monkeypatch.chdir(project_a / "sub")
    code, out, err = invoke(run, "stats", "--json")
    assert code == 0 and orjson.loads(out)["traces"] == 2
    assert f"Using the store {project_a / 'a.duckdb'} (of the last ingest in {project_a})" in err
    monkeypatch.chdir(project_b)
    code, out, _ = invoke(run, "stats", "--json")
    assert code == 0 and orjson.loads(out)["traces"] == 5
    monkeypatch.chdir(tmp_path)
    code, _, err = invoke(run, "stats")
    assert code == 1 and "no traces given" in err


def test_a_failed_ingest_is_not_remembered(
    run: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    good = write_agent_traces(tmp_path / "good.jsonl", traces=3)
    assert invoke(run, "ingest", good, "--store", tmp_path / "good.duckdb")[0] == 0
    csv = tmp_path / "data.csv"
    csv.write_text("a,b,c\n1,2,3\n")
    code, out, _ = invoke(run, "ingest", csv, "--store", tmp_path / "csv.duckdb")
    assert code == 1 and "not trace data" in out
    code, _, err = invoke(run, "stats", csv)  # files given to a query command: the same rule
    assert code == 1 and "none of the files given holds traces" in err
    remembered = store_paths.last(cwd=tmp_path)
    assert remembered is not None and remembered.store == str(tmp_path / "good.duckdb")
    code, out, err = invoke(run, "traces", "--json")
    assert code == 0 and orjson.loads(out)["total"] == 3 and "good.duckdb" in err


def test_every_query_command_says_which_store_it_reads(run: CliRunner, tmp_path: Path) -> None:
    store = tmp_path / "s.duckdb"
    traces = write_agent_traces(tmp_path / "t.jsonl", traces=3)
    assert invoke(run, "ingest", traces, "--store", store)[0] == 0
    for args in (
        ["stats"],
        ["traces"],
        ["show", "trace-0001"],
        ["sql", "SELECT count(*) AS n FROM spans"],
        ["analyze", "-o", tmp_path / "report"],
    ):
        for json in ([], ["--json"]):
            code, out, err = invoke(run, *args, "--store", store, *json)
            assert code == 0, err
            assert f"Using the store {store} (given with --store)" in err, args
            assert "Using the store" not in out
            if json:
                orjson.loads(out)  # stdout is the JSON alone
    code, out, err = invoke(run, "stats", traces, "--json")
    assert code == 0 and "(of the trace files given)" in err and orjson.loads(out)["traces"] == 3


# --- validation: one clear error, the same on every command ------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["traces", "--errors", "--ok"], "--errors and --ok exclude each other"),
        (["traces", "--limit", "-1"], "'--limit': -1 is not in the range 1<=x<=1000"),
        (["traces", "--offset", "-5"], "'--offset': -5 is not in the range x>=0"),
        (["stats", "--top", "0"], "'--top': 0 is not in the range x>=1"),
        (["sql", "SELECT 1", "--max-rows", "0"], "'--max-rows': 0 is not in the range x>=1"),
        (
            ["analyze", "--min-share", "5"],
            "'--min-share': '5' is not between 0 and 1 (for five percent write 0.05 or 5%)",
        ),
        (["analyze", "--min-share", "lots"], "'--min-share': 'lots' is not a share"),
        (["analyze", "--min-traces", "0"], "'--min-traces': 0 is not in the range x>=1"),
        (["traces", "--until", "tomorrow"], "'--until': not a time: 'tomorrow'"),
        (["import", "phoenix", "--since", "last week"], "'--since': not a time: 'last week'"),
        (["simulate", "x.jsonl", "--distractors", "2"], "'--distractors': '2' is not between 0 and 1"),
    ],
)
def test_bad_option_values_are_refused_before_anything_runs(
    run: CliRunner, args: list[str], message: str
) -> None:
    code, out, err = invoke(run, *args)
    assert code == 2 and message in err and "Traceback" not in err + out


def test_relative_times_work_wherever_times_are_taken(run: CliRunner, tmp_path: Path) -> None:
    store = tmp_path / "s.duckdb"
    assert invoke(run, "ingest", write_agent_traces(tmp_path / "t.jsonl", traces=3), "--store", store)[0] == 0
    # The traces start in 2026: none started in the last 30 minutes, all in the last 1000 weeks.
    code, out, _ = invoke(run, "traces", "--store", store, "--since", "30m", "--json")
    assert code == 0 and orjson.loads(out)["total"] == 0
    code, out, _ = invoke(run, "traces", "--store", store, "--since", "1000w", "--until", "0m", "--json")
    assert code == 0 and orjson.loads(out)["total"] == 3
    code, out, _ = invoke(run, "traces", "--store", store, "--since", "2026-04-24T03:06:40Z", "--json")
    assert code == 0 and orjson.loads(out)["total"] == 3


def test_min_share_takes_a_fraction_or_a_percentage(run: CliRunner, tmp_path: Path) -> None:
    traces = write_agent_traces(tmp_path / "t.jsonl", traces=6)
    code, out, _ = invoke(run, "analyze", traces, "--min-share", "50%", "-o", tmp_path / "a", "--json")
    assert code == 0 and orjson.loads(out)["findings"]
    code, out, _ = invoke(
        run, "analyze", traces, "--min-share", "100%", "--min-traces", "7", "-o", tmp_path / "b", "--json"
    )
    assert code == 0 and orjson.loads(out)["findings"] == []


def test_simulate_makes_a_missing_folder_and_says_why_it_cannot(run: CliRunner, tmp_path: Path) -> None:
    code, out, err = invoke(run, "simulate", tmp_path / "new" / "deeper" / "t.jsonl", "--traces", "3")
    assert code == 0 and (tmp_path / "new" / "deeper" / "t.jsonl").exists(), err
    (tmp_path / "file").write_text("")
    code, out, err = invoke(run, "simulate", tmp_path / "file" / "t.jsonl", "--traces", "3")
    assert code == 1 and "cannot create the folder" in err and "Traceback" not in err + out


@pytest.mark.slow
def test_halo_ui_serves_a_chdb_store(tmp_path: Path) -> None:
    """`halo ui FILES --store chdb:FOLDER`: the files are ingested into the ClickHouse store in the
    background, and the list and a trace are served over HTTP from it."""
    pytest.importorskip("chdb", reason="the clickhouse extra is not installed")
    made = runs(6)
    traces = write_runs(tmp_path / "runs.jsonl", made)
    env = {**os.environ, "BROWSER": "true"}  # the test's own cache folder ($HALO_CACHE_DIR)
    command = [sys.executable, "-m", "halo_rlm", "ui", str(traces), "--no-browser", "--port", "0"]
    child = subprocess.Popen(
        [*command, "--store", f"chdb:{tmp_path / 'traces.chdb'}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        line = child.stdout.readline()  # type: ignore[union-attr]
        found = re.search(r"(http://127\.0\.0\.1:\d+)/traces\?token=([\w-]+)", line)
        assert found, line + child.stderr.read()  # type: ignore[union-attr]
        base, token = found.groups()
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
            deadline = time.monotonic() + 60
            while True:  # the server starts, then the background ingest finishes
                with contextlib.suppress(httpx.ConnectError):
                    listed = client.get("/traces.json", params={"sort": "start", "dir": "asc"}).json()
                    if listed["store_traces"] == len(made):
                        break
                assert time.monotonic() < deadline, "the traces did not arrive"
                time.sleep(0.2)
            assert [row["trace_id"] for row in listed["page"]["rows"]] == [run.trace_id for run in made]
            assert listed["stats"]["spans"] == sum(len(run.steps) for run in made)
            trace = client.get(f"/traces/{made[1].trace_id}.json").json()
            assert [span["span_id"] for span in trace["spans"]["spans"]] == made[1].span_ids
            assert trace["trace"]["status"] == "error"  # the second run's tool call fails
        child.send_signal(signal.SIGINT)
        assert child.wait(30) == 0, child.stderr.read()  # type: ignore[union-attr]
    finally:
        if child.poll() is None:
            child.kill()
    remembered = store_paths.last(cwd=tmp_path)  # for later commands run there
    assert remembered is not None and remembered.store == f"chdb:{tmp_path / 'traces.chdb'}"
