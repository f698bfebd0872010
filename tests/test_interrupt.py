"""An ingest stopped half-way leaves a consistent store, and the next run finishes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
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


NOTHING = ([(0, 0, None)], [(0, None, None, None)])  # no span, no trace row


def interrupt_after(batches: int) -> Any:
    """A progress callback that presses Ctrl-C once `batches` batches with spans went to the store."""
    calls = {"n": 0}

    def for_input(inp: files.InputFile) -> Any:
        def report(done: int, spans: int) -> None:
            calls["n"] += bool(spans)
            if calls["n"] == batches:
                raise KeyboardInterrupt

        return report

    return for_input


def test_an_interrupted_ingest_leaves_the_store_as_it_was_then_reruns(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "c.jsonl", 2_000)  # read in batches (trace 0 has no ids)
    clean = tmp_path / "clean.duckdb"
    with TraceStore.open(clean) as store:
        store.ingest([str(corpus)])

    broken = tmp_path / "broken.duckdb"
    with TraceStore.open(broken) as store, pytest.raises(KeyboardInterrupt):
        store.ingest([str(corpus)], batch_bytes=200_000, progress=interrupt_after(3))
    # Spans and their rollups commit together: none of the input is in, and the input says it is unfinished.
    assert snapshot(broken)[:2] == NOTHING and snapshot(broken)[2] == [("partial",)]
    with TraceStore.open(broken, read_only=True) as store:
        assert store.overview().unfinished_inputs == [str(corpus)]
        assert store.con.execute("SELECT count(*) FROM rejects").fetchall() == [(0,)]
    with TraceStore.open(broken) as store:
        report = store.ingest([str(corpus)])
    assert report.inputs[0].status == "ingested" and report.rejected == 4
    assert snapshot(broken) == snapshot(clean)
    with TraceStore.open(broken, read_only=True) as store:
        assert store.overview().unfinished_inputs == []


def test_an_interrupted_append_keeps_what_was_there_with_its_rollups(tmp_path: Path) -> None:
    first = make_corpus(tmp_path / "first.jsonl", 300, first=1).read_bytes()
    more = make_corpus(tmp_path / "more.jsonl", 1_500, first=301).read_bytes()
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(first + more)
    clean = tmp_path / "clean.duckdb"
    with TraceStore.open(clean) as store:
        store.ingest([str(corpus)])

    corpus.write_bytes(first)
    store_path = tmp_path / "s.duckdb"
    with TraceStore.open(store_path) as store:
        store.ingest([str(corpus)])
    before = snapshot(store_path)
    with corpus.open("ab") as f:
        f.write(more)
    with TraceStore.open(store_path) as store, pytest.raises(KeyboardInterrupt):
        store.ingest([str(corpus)], batch_bytes=100_000, progress=interrupt_after(2))
    assert snapshot(store_path)[:2] == before[:2] and snapshot(store_path)[2] == [("partial",)]
    with TraceStore.open(store_path) as store:
        assert store.ingest([str(corpus)]).inputs[0].status == "resumed"
    assert snapshot(store_path) == snapshot(clean)


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
                if spans:  # batches went to the store (the bulk load, which fails on trace 0, reports none)
                    print(spans, flush=True)
            return report
        with TraceStore.open({str(killed)!r}) as store:
            store.ingest([{str(corpus)!r}], progress=progress, batch_bytes=250_000)
        print("finished", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    progress_lines = [proc.stdout.readline(), proc.stdout.readline()]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert all(line.strip().isdigit() for line in progress_lines), progress_lines  # killed mid-ingest

    before = snapshot(killed)
    assert before[:2] == NOTHING and before[2] == [("partial",)]
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
            if calls["n"] == 3:
                raise KeyboardInterrupt

        return report

    broken = tmp_path / "broken.duckdb"
    with TraceStore.open(broken) as store, pytest.raises(KeyboardInterrupt):
        store.ingest([str(corpus)], progress=progress, batch_bytes=20_000)
    assert snapshot(broken)[:2] == NOTHING and snapshot(broken)[2] == [("partial",)]
    with TraceStore.open(broken, read_only=True) as store:  # the reject found before the stop went too
        assert store.con.execute("SELECT count(*) FROM rejects").fetchall() == [(0,)]
    with TraceStore.open(broken) as store:
        assert store.ingest([str(corpus)]).rejected == 1
    assert snapshot(broken) == snapshot(clean)
    with TraceStore.open(broken, read_only=True) as store:
        assert store.con.execute("SELECT count(*) FROM rejects").fetchall() == [(1,)]


@pytest.mark.slow
def test_ctrl_c_twice_in_a_row_ends_cleanly_and_leaves_a_consistent_store(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "c.jsonl", 80_000)  # seconds of work even on a quiet machine
    store = tmp_path / "s.duckdb"
    previous = signal.signal(signal.SIGINT, signal.SIG_DFL)  # children of a backgrounded run inherit SIG_IGN
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "halo_rlm", "ingest", str(corpus), "--store", str(store), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(SRC)},
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 120
    while not store.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # into the ingest
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # a second one at once, while the first is being cleaned up
    _, stderr = proc.communicate(timeout=120)
    assert "Traceback" not in stderr and proc.returncode != 0, stderr
    spans, traces, status = snapshot(store)
    assert (spans, traces) == NOTHING and status == [("partial",)]
    with TraceStore.open(store) as s:
        assert s.ingest([str(corpus)]).spans == 4 * 79_999
    assert not list(tmp_path.glob("*.staging.jsonl"))
