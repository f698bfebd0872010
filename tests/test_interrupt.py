"""An ingest stopped half-way leaves a consistent store, and the next run finishes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest

from halo_rlm import files
from halo_rlm.simulate import simulate
from halo_rlm.store import TraceStore

SRC = Path(__file__).resolve().parents[1] / "src"


def make_corpus(path: Path, traces: int, *, first: int = 0) -> Path:
    """Trace 0 has an all-zero (missing) trace id, so a corpus that includes it is rejected by the
    bulk load and read in batches; one that starts at 1 is bulk-loaded."""
    with path.open("wb") as f:
        for t in range(first, first + traces):
            for s in range(4):
                f.write(
                    orjson.dumps(
                        {
                            "trace_id": f"{t:032x}",
                            "span_id": f"{t:08x}{s:08x}",
                            "parent_span_id": "" if s == 0 else f"{t:08x}{0:08x}",
                            "name": f"step-{s}",
                            "kind": "SPAN_KIND_INTERNAL",
                            "start_time": 1776924720000000000 + t * 10**9 + s,
                            "end_time": 1776924720000000000 + t * 10**9 + s + 10**6,
                            "status": {
                                "code": "STATUS_CODE_ERROR" if t % 7 == 0 and s == 3 else "STATUS_CODE_OK"
                            },
                            "resource": {"attributes": {"service.name": "svc"}},
                            "scope": {"name": "x"},
                            "attributes": {
                                "openinference.span.kind": "LLM" if s else "AGENT",
                                "llm.model_name": "m",
                                "llm.token_count.prompt": t,
                                "output.value": "z" * 300,
                                "llm.output_messages.0.message.content": "z",
                            },
                        }
                    )
                    + b"\n"
                )
    return path


def snapshot(store_path: Path) -> tuple:
    with TraceStore.open(store_path, read_only=True) as store:
        return (
            store.con.execute(
                "SELECT count(*), count(DISTINCT (trace_id, span_id)), sum(input_tokens) FROM spans"
            ).fetchall(),
            store.con.execute(
                "SELECT count(*), sum(span_count), sum(error_spans), sum(input_tokens) FROM traces"
            ).fetchall(),
            store.con.execute("SELECT status FROM inputs").fetchall(),
        )


def test_exception_mid_file_then_resume(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "c.jsonl", 2_000)
    clean = tmp_path / "clean.duckdb"
    with TraceStore.open(clean) as store:
        store.ingest([str(corpus)])

    calls = {"n": 0}

    def interrupt_at_the_third_batch(inp: files.InputFile) -> Any:
        def report(done: int, spans: int) -> None:
            calls["n"] += bool(spans)  # a batch committed (bulk=False: no one-statement load reports first)
            if calls["n"] == 3:
                raise KeyboardInterrupt

        return report

    broken = tmp_path / "broken.duckdb"
    with TraceStore.open(broken) as store, pytest.raises(KeyboardInterrupt):
        store.ingest([str(corpus)], batch_bytes=200_000, progress=interrupt_at_the_third_batch, bulk=False)

    # Consistent after the interruption: marked partial, and everything up to the resume point is in.
    # (A batch after it may have committed too: batches load two at a time; the re-run re-reads it.)
    with TraceStore.open(broken, read_only=True) as store:
        spans, resume_line, status = store.con.execute(
            "SELECT (SELECT count(*) FROM spans), resume_line, status FROM inputs"
        ).fetchall()[0]
        assert status == "partial" and 0 < spans < 8_000 and resume_line > 0
        committed = store.con.execute(
            "SELECT count(*) FROM spans WHERE line_no <= ?", [resume_line]
        ).fetchall()
    with TraceStore.open(clean, read_only=True) as store:
        assert (
            store.con.execute("SELECT count(*) FROM spans WHERE line_no <= ?", [resume_line]).fetchall()
            == committed
        )
    with TraceStore.open(broken) as store:
        report = store.ingest([str(corpus)])
    assert report.inputs[0].status == "resumed"
    assert snapshot(broken) == snapshot(clean)


def test_killed_process_then_rerun(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "c.jsonl", 6_000)
    clean = tmp_path / "clean.duckdb"
    with TraceStore.open(clean) as store:
        store.ingest([str(corpus)])

    killed = tmp_path / "killed.duckdb"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(SRC)!r})
        from halo_rlm.store import TraceStore
        def progress(inp):
            def report(done, spans):
                if spans:  # a batch committed (bulk=False: no one-statement load reports first)
                    print(spans, flush=True)
            return report
        with TraceStore.open({str(killed)!r}) as store:
            store.ingest([{str(corpus)!r}], progress=progress, batch_bytes=250_000, bulk=False)
        print("finished", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    progress_lines = [proc.stdout.readline(), proc.stdout.readline()]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert all(line.strip().isdigit() for line in progress_lines), progress_lines  # killed mid-ingest

    before = snapshot(killed)
    assert before[2] == [("partial",)] and 0 < before[0][0][0] < 24_000
    with TraceStore.open(killed) as store:
        store.ingest([str(corpus)])
    assert snapshot(killed) == snapshot(clean)


def test_killed_during_a_bulk_load_then_rerun(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "c.jsonl", 2_000, first=1)
    clean = tmp_path / "clean.duckdb"
    with TraceStore.open(clean) as store:
        store.ingest([str(corpus)])
    with TraceStore.open(clean, read_only=True) as store:
        assert store.con.execute("SELECT count(*), count(line_no) FROM spans").fetchall() == [
            (8_000, 0)
        ]  # bulk

    # The process dies inside DuckDB's statement: the message normaliser it calls kills it.
    killed = tmp_path / "killed.duckdb"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(SRC)!r})
        from halo_rlm.store import TraceStore, duckdb_sql
        duckdb_sql.messages_udf = lambda column: os.kill(os.getpid(), signal.SIGKILL)
        with TraceStore.open({str(killed)!r}) as store:
            store.ingest([{str(corpus)!r}])
        print("finished", flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert proc.returncode == -signal.SIGKILL and "finished" not in proc.stdout

    assert snapshot(killed)[0] == [(0, 0, None)] and snapshot(killed)[2] == [
        ("partial",)
    ]  # nothing half-loaded
    with TraceStore.open(killed) as store:
        store.ingest([str(corpus)])
    assert snapshot(killed) == snapshot(clean)


def test_ctrl_c_during_a_bulk_load_rolls_it_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    corpus = make_corpus(tmp_path / "c.jsonl", 500, first=1)
    from halo_rlm.store import duckdb_sql

    real = duckdb_sql.messages_udf
    monkeypatch.setattr(
        duckdb_sql, "messages_udf", lambda column: (signal.raise_signal(signal.SIGINT), real(column))[1]
    )
    # Ctrl-C raises KeyboardInterrupt even when this test run was started in the background (SIGINT ignored).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    store_path = tmp_path / "s.duckdb"
    with TraceStore.open(store_path) as store, pytest.raises(KeyboardInterrupt):
        store.ingest([str(corpus)])
    monkeypatch.setattr(duckdb_sql, "messages_udf", real)
    assert snapshot(store_path)[0] == [(0, 0, None)]
    with TraceStore.open(store_path) as store:
        report = store.ingest([str(corpus)])
    assert report.spans == 2_000 and snapshot(store_path)[2] == [("complete",)]


def test_ctrl_c_while_decoding_otlp_then_rerun(tmp_path: Path) -> None:
    truth = simulate(tmp_path / "t.otlp.jsonl", traces=120, seed=5, format="otlp")
    lines = truth.traces_path.read_bytes().splitlines()
    lines.insert(len(lines) // 2, b'{"resourceSpans": 7}')  # one bad record, to see rejects are not doubled
    corpus = tmp_path / "c.otlp.jsonl"
    corpus.write_bytes(b"\n".join(lines) + b"\n")
    clean = tmp_path / "clean.duckdb"
    with TraceStore.open(clean) as store:
        assert store.ingest([str(corpus)]).rejected == 1

    calls = {"n": 0}

    def progress(inp: files.InputFile) -> Any:
        def report(done: int, spans: int) -> None:
            calls["n"] += 1
            if calls["n"] == len(lines) // 8:  # past the bad record, before the staged spans load
                raise KeyboardInterrupt

        return report

    broken = tmp_path / "broken.duckdb"
    with TraceStore.open(broken) as store, pytest.raises(KeyboardInterrupt):
        store.ingest([str(corpus)], progress=progress, batch_bytes=100_000)
    assert not list(tmp_path.glob("*.staging.jsonl"))  # the staging file is removed
    assert snapshot(broken)[0] == [(0, 0, None)] and snapshot(broken)[2] == [("partial",)]
    with TraceStore.open(broken, read_only=True) as store:  # the reject found before the stop is kept
        assert store.con.execute("SELECT count(*) FROM rejects").fetchall() == [(1,)]
    with TraceStore.open(broken) as store:
        assert store.ingest([str(corpus)]).rejected == 1
    assert snapshot(broken) == snapshot(clean)
    with TraceStore.open(broken, read_only=True) as store:
        assert store.con.execute("SELECT count(*) FROM rejects").fetchall() == [(1,)]
