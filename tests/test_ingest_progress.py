"""A file loaded in one statement reports the spans and bytes it has read while the statement runs,
not only when it ends (the progress bar stood at "0 spans" through a large file's load)."""

from __future__ import annotations

from pathlib import Path

import orjson

from halo_rlm.store import TraceStore


def test_a_one_statement_load_reports_spans_as_it_goes(tmp_path: Path) -> None:
    path = tmp_path / "flat.jsonl"
    spans = 40_000
    with path.open("wb") as out:
        for i in range(spans):
            out.write(
                orjson.dumps(
                    {
                        "trace_id": f"t{i // 4}",
                        "span_id": f"s{i}",
                        "name": "step",
                        "start_time": 1_777_000_000_000_000_000 + i,
                        "end_time": 1_777_000_000_000_100_000 + i,
                        "attributes": {"openinference.span.kind": "CHAIN", "input.value": "x" * (i % 50)},
                    }
                )
                + b"\n"
            )
    calls: list[tuple[int, int]] = []
    with TraceStore.open(tmp_path / "s.duckdb") as store:
        report = store.ingest(
            [str(path)], progress=lambda _: lambda done, n: calls.append((done, n)), progress_every=0.005
        )
        one_statement = store.query("SELECT count(*) AS n FROM spans WHERE line_no IS NULL")[0]["n"]
    assert one_statement == spans  # the bulk road (which numbers no lines) took the whole file
    assert report.spans == spans and calls[-1] == (path.stat().st_size, spans)
    during = calls[:-1]
    assert any(0 < n < spans for _, n in during), calls[:5]
    # Bytes and spans move together: each report's bytes are those of the lines of its spans.
    assert all((n == 0) == (done == 0) and done <= path.stat().st_size for done, n in during)
    assert [n for _, n in during] == sorted(n for _, n in during)
