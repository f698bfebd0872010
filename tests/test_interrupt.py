"""An ingest stopped half-way leaves a consistent store, and the next run finishes it."""

from __future__ import annotations

import gzip
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
        from halo_rlm.store import TraceStore, duckdb_udfs
        duckdb_udfs.messages_udf = lambda column: os.kill(os.getpid(), signal.SIGKILL)
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
    from halo_rlm.store import duckdb_udfs

    real = duckdb_udfs.messages_udf
    monkeypatch.setattr(
        duckdb_udfs, "messages_udf", lambda column: (signal.raise_signal(signal.SIGINT), real(column))[1]
    )
    # Ctrl-C raises KeyboardInterrupt even when this test run was started in the background (SIGINT ignored).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    store_path = tmp_path / "s.duckdb"
    with TraceStore.open(store_path) as store, pytest.raises(KeyboardInterrupt):
        store.ingest([str(corpus)])
    monkeypatch.setattr(duckdb_udfs, "messages_udf", real)
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
    TraceStore.open(store).close()  # the schema, checkpointed: the ingest's first commit makes the WAL
    wal = Path(f"{store}.wal")
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
    # The input's row is committed (the WAL appears) before its spans load: wait for that, not for
    # the store file, so a slow start (imports on a busy machine) cannot put Ctrl-C before the ingest.
    while not wal.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.3)  # into the load
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


# --- inputs committed in chunks ---------------------------------------------------------------

# Commits every two or three statements (each costs a good part of a second on a busy machine).
CHUNKED = {"bulk": False, "batch_bytes": 30_000, "commit_bytes": 150_000}
OTLP_CHUNKED = {"batch_bytes": 60_000, "commit_bytes": 200_000}


def store_rows(store_path: Path) -> dict[str, list[tuple]]:
    """Every stored row but the ingest's clock times, in a fixed order."""
    with TraceStore.open(store_path, read_only=True) as store:
        return {
            table: store.con.execute(f"SELECT * {excluded} FROM {table} ORDER BY ALL").fetchall()
            for table, excluded in [
                ("spans", ""),
                ("traces", ""),
                ("rejects", ""),
                ("inputs", "EXCLUDE (started_at, finished_at)"),
            ]
        }


def mixed_corpus(path: Path, traces: int) -> Path:
    """Flat spans with what a chunk boundary could break: a parent far after its children (an orphan
    until a later chunk), a span repeated near the end (finished there, in flight first), bad lines
    and, a quarter in, a line with invalid UTF-8 (its repair makes it longer than it is in the file:
    where a later chunk ends is counted in the file's bytes)."""
    lines = make_corpus(path, traces, first=1).read_bytes().splitlines()
    late_parent = lines.pop(8)  # trace 3's root
    finished = lines[20]
    in_flight = orjson.loads(finished)
    del in_flight["end_time"]
    lines[20] = orjson.dumps(in_flight)
    lines.insert(len(lines) // 3, b'{"trace_id": "broken')
    lines[len(lines) // 4] = lines[len(lines) // 4].replace(b'"step-', b'"st\xe9p-')
    lines.insert(2 * len(lines) // 3, b"[1, 2]")
    lines += [finished, late_parent]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_an_input_committed_in_chunks_is_the_input_committed_at_once(tmp_path: Path) -> None:
    corpus = mixed_corpus(tmp_path / "c.jsonl", 300)
    whole, chunked = tmp_path / "whole.duckdb", tmp_path / "chunked.duckdb"
    with TraceStore.open(whole) as store:
        one = store.ingest([str(corpus)], bulk=False, batch_bytes=CHUNKED["batch_bytes"])
    with TraceStore.open(chunked) as store:
        many = store.ingest([str(corpus)], **CHUNKED)
    assert (one.spans, one.rejected, one.inputs[0].repaired, one.duplicates) == (1_201, 2, 1, 1)
    assert (many.spans, many.rejected, many.inputs[0].repaired, many.duplicates) == (1_201, 2, 1, 1)
    assert store_rows(chunked) == store_rows(whole)
    with TraceStore.open(whole, read_only=True) as store:  # what the corpus was made to hold
        assert store.con.execute(
            "SELECT span_count, orphan_spans, in_flight_spans FROM traces WHERE trace_id = ?", [f"{3:032x}"]
        ).fetchall() == [(4, 0, 0)]
        assert store.con.execute("SELECT sum(in_flight_spans) FROM traces").fetchall() == [(0,)]


def test_otlp_committed_in_chunks_is_otlp_committed_at_once(tmp_path: Path) -> None:
    truth = simulate(tmp_path / "t.otlp.jsonl", traces=60, seed=3, format="otlp")
    lines = truth.traces_path.read_bytes().splitlines()
    lines.insert(len(lines) // 2, b'{"resourceSpans": 7}')
    corpus = tmp_path / "c.otlp.jsonl"
    corpus.write_bytes(b"\n".join(lines) + b"\n")
    whole, chunked = tmp_path / "whole.duckdb", tmp_path / "chunked.duckdb"
    with TraceStore.open(whole) as store:
        store.ingest([str(corpus)])
    with TraceStore.open(chunked) as store:
        report = store.ingest([str(corpus)], **OTLP_CHUNKED)
    assert report.inputs[0].road == "decoded" and report.rejected == 1
    assert store_rows(chunked) == store_rows(whole)


def partial_state(store_path: Path) -> tuple[int, int, str, int]:
    """A store an ingest left part-way: its spans agree with their rollups (checked here); returns the
    spans, the traces, the input's status and where it is to resume."""
    with TraceStore.open(store_path, read_only=True) as store:
        spans, traces = store.con.execute("SELECT count(*), count(DISTINCT trace_id) FROM spans").fetchall()[
            0
        ]
        assert (
            store.con.execute("""
            SELECT count(*) FROM traces t
            FULL JOIN (SELECT trace_id, count(*) AS n, count(*) FILTER (is_orphan) AS orphans
                       FROM spans GROUP BY trace_id) s ON s.trace_id = t.trace_id
            WHERE t.span_count IS DISTINCT FROM s.n OR t.orphan_spans IS DISTINCT FROM s.orphans""").fetchall()
            == [(0,)]
        )
        status, resume_offset, counted = store.con.execute(
            "SELECT status, resume_offset, spans FROM inputs"
        ).fetchall()[0]
        assert counted == spans
        return spans, traces, status, resume_offset


@pytest.mark.parametrize("fmt", ["flat", "otlp"])
def test_killed_between_chunk_commits_then_rerun_loses_and_doubles_nothing(tmp_path: Path, fmt: str) -> None:
    if fmt == "flat":
        corpus, options = mixed_corpus(tmp_path / "c.jsonl", 600), CHUNKED
    else:
        corpus = simulate(tmp_path / "c.otlp.jsonl", traces=100, seed=4, format="otlp").traces_path
        options = OTLP_CHUNKED
    clean = tmp_path / "clean.duckdb"
    with TraceStore.open(clean) as store:
        total = store.ingest([str(corpus)], **options).spans

    # A real process, killed while it reads on: it stops reading (the callback sleeps) once the
    # store has committed well past one chunk, so the kill lands between two commits.
    killed = tmp_path / "killed.duckdb"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(SRC)!r})
        from halo_rlm.store import TraceStore
        def progress(inp):
            def report(done, spans):
                if done > {corpus.stat().st_size // 2}:
                    print(spans, flush=True)
                    time.sleep(60)
            return report
        with TraceStore.open({str(killed)!r}) as store:
            store.ingest([{str(corpus)!r}], progress=progress, **{options!r})
        print("finished", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    said = proc.stdout.readline()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert said.strip().isdigit(), said  # killed mid-ingest

    spans, traces, status, resume_offset = partial_state(killed)
    assert 0 < spans < total and traces > 0 and status == "partial"
    assert 0 < resume_offset < corpus.stat().st_size
    with TraceStore.open(killed, read_only=True) as store:
        assert store.overview().unfinished_inputs == [str(corpus)]
    with TraceStore.open(killed) as store:
        report = store.ingest([str(corpus)], **options)
    assert report.inputs[0].status == "resumed" and 0 < report.spans < total
    assert store_rows(killed) == store_rows(clean)


def test_ctrl_c_between_chunk_commits_then_a_changed_file_is_read_again_whole(tmp_path: Path) -> None:
    corpus = mixed_corpus(tmp_path / "c.jsonl", 600)
    store_path = tmp_path / "s.duckdb"
    with TraceStore.open(store_path) as store, pytest.raises(KeyboardInterrupt):
        store.ingest([str(corpus)], progress=interrupt_after(8), **CHUNKED)
    spans, _, status, _ = partial_state(store_path)
    assert spans > 0 and status == "partial"

    # Rewritten before the next ingest: what the chunks committed is replaced, not kept beside it.
    make_corpus(corpus, 500, first=1_000)
    clean = tmp_path / "clean.duckdb"
    with TraceStore.open(clean) as store:
        store.ingest([str(corpus)], **CHUNKED)
    with TraceStore.open(store_path) as store:
        assert store.ingest([str(corpus)], **CHUNKED).inputs[0].status == "ingested"
    assert store_rows(store_path) == store_rows(clean)


def test_compressed_input_interrupted_between_chunks_is_read_again_whole(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl.gz"
    corpus.write_bytes(gzip.compress(mixed_corpus(tmp_path / "c.jsonl", 600).read_bytes()))
    clean = tmp_path / "clean.duckdb"
    with TraceStore.open(clean) as store:
        store.ingest([str(corpus)], **CHUNKED)
    store_path = tmp_path / "s.duckdb"
    with TraceStore.open(store_path) as store, pytest.raises(KeyboardInterrupt):
        store.ingest([str(corpus)], progress=interrupt_after(8), **CHUNKED)
    spans, _, status, _ = partial_state(store_path)
    assert spans > 0 and status == "partial"
    with TraceStore.open(store_path) as store:
        assert store.ingest([str(corpus)], **CHUNKED).inputs[0].status == "ingested"
    assert store_rows(store_path) == store_rows(clean)
