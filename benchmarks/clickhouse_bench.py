"""ClickHouse (chdb, embedded) against DuckDB on the same corpora: ingest time and peak RSS, the
store's queries (overview, error count, regex count, one trace's view), and the detectors. Every
step runs in a fresh process, so peak RSS is that step's alone.

    # the issue's comparison: the 1 GB corpora of store_bench.py, both backends
    python benchmarks/clickhouse_bench.py --sizes 1000 --formats fixtures halo --out benchmarks/results/clickhouse.json
    # 10 million simulated spans (halo simulate), ingested and analysed with memory bounded
    python benchmarks/clickhouse_bench.py --spans 10000000 --backends chdb duckdb --out benchmarks/results/clickhouse-10m.json

Targets (2 cores): chdb ingest within 2x of DuckDB's; overview, error count, regex count and trace view
within 3x; the 10M-span corpus ingested and analysed under 2 GB peak RSS. The script exits 1 when one
is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from store_bench import FIXTURES, build_flat, build_otlp, flat_lines, measure

from halo_rlm.simulate import simulate

SPANS_PER_TRACE = 8.25  # what `halo simulate` writes on average
MAX_RSS_MB = 2048


def target_for(backend: str, work: Path, name: str) -> str:
    """A fresh store of `backend` for corpus `name` (any earlier one is removed)."""
    if backend == "duckdb":
        path = work / f"{name}.duckdb"
        for leftover in (path, Path(f"{path}.wal")):
            leftover.unlink(missing_ok=True)
        return str(path)
    folder = work / f"{name}.chdb"
    shutil.rmtree(folder, ignore_errors=True)
    return f"chdb:{folder}"


def ingest(corpus: Path, target: str) -> dict[str, float]:
    return measure(f"""
        import os
        from halo_rlm.store import TraceStore
        t, cpu = time.perf_counter(), os.times()
        with TraceStore.open({target!r}) as s:
            r = s.ingest([{str(corpus)!r}])
        result["ingest_s"] = time.perf_counter() - t
        done = os.times()  # CPU seconds of every thread: steadier than wall time on a shared machine
        result["ingest_cpu_s"] = done.user + done.system - cpu.user - cpu.system
        result["spans"] = r.spans
        result["rejected"] = r.rejected
    """)


def queries(target: str, repeats: int) -> dict[str, float]:
    return measure(f"""
        import statistics
        from halo_rlm.store import TraceFilters, TraceStore
        t = time.perf_counter()
        s = TraceStore.open({target!r}, read_only=True)
        result["reopen_s"] = time.perf_counter() - t
        trace_id = s.query_traces(sort="spans", limit=1).traces[0].trace_id
        checks = {{
            "overview_s": lambda: s.overview(),
            "count_errors_s": lambda: s.count_traces(TraceFilters(has_errors=True)),
            "regex_count_s": lambda: s.count_traces(TraceFilters(regex="No such file|not found in region")),
            "view_trace_s": lambda: s.view_trace(trace_id),
        }}
        for name, check in checks.items():
            times = []
            for _ in range({repeats}):
                t = time.perf_counter(); check(); times.append(time.perf_counter() - t)
            result[name] = statistics.median(times)
        result["traces"] = s.count_traces()
    """)


def detectors(target: str) -> dict[str, float]:
    return measure(f"""
        from halo_rlm.detect import analyze
        from halo_rlm.store import TraceStore
        from halo_rlm.verify import verify
        with TraceStore.open({target!r}, read_only=True) as s:
            t = time.perf_counter()
            report = analyze(s)
            result["analyze_s"] = time.perf_counter() - t
            t = time.perf_counter()
            verify(report, s)
            result["verify_s"] = time.perf_counter() - t
        result["findings"] = len(report.findings)
        result["flagged"] = report.verification.flagged
    """)


def corpus_for(args: argparse.Namespace, work: Path) -> list[tuple[str, Path]]:
    corpora = []
    if args.spans:
        path = work / f"sim-{args.spans}.jsonl"
        if not path.exists():
            t = time.perf_counter()
            simulate(path, traces=int(args.spans / SPANS_PER_TRACE), seed=11)
            print(f"simulated {path.name} in {time.perf_counter() - t:.0f}s", file=sys.stderr)
        corpora.append((f"sim-{args.spans}", path))
    for size in args.sizes or []:
        for fmt in args.formats:
            if fmt == "fixtures" and not FIXTURES.exists():
                print(f"skipping fixtures: {FIXTURES} is absent", file=sys.stderr)
                continue
            path = work / f"corpus-{size}mb.{fmt}.jsonl"
            if not path.exists():
                if fmt == "otlp":
                    build_otlp(size, path, work)
                else:
                    build_flat(size, path, flat_lines(fmt))
            corpora.append((f"{fmt}-{size}mb", path))
    return corpora


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="*", help="store_bench corpora of these sizes in MB")
    parser.add_argument(
        "--formats", nargs="+", default=["fixtures", "halo"], help="store_bench corpus formats"
    )
    parser.add_argument("--spans", type=int, help="also a `halo simulate` corpus of about this many spans")
    parser.add_argument("--backends", nargs="+", default=["duckdb", "chdb"], choices=["duckdb", "chdb"])
    parser.add_argument("--no-detectors", action="store_true", help="skip analysing the stores")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "halo-bench")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not args.sizes and not args.spans:
        parser.error("give --sizes and/or --spans")
    args.work.mkdir(parents=True, exist_ok=True)
    rows, missed = [], []
    for name, corpus in corpus_for(args, args.work):
        by_backend = {}
        for backend in args.backends:
            target = target_for(backend, args.work, name)
            row = {"corpus": name, "backend": backend, "bytes": corpus.stat().st_size}
            loaded = ingest(corpus, target)
            row.update(loaded, ingest_peak_rss_mb=loaded.pop("peak_rss_mb"))
            asked = queries(target, args.repeats)
            row.update(asked, queries_peak_rss_mb=asked.pop("peak_rss_mb"))
            if not args.no_detectors:
                found = detectors(target)
                row.update(found, detectors_peak_rss_mb=found.pop("peak_rss_mb"))
            print(json.dumps(row), flush=True)
            rows.append(row)
            by_backend[backend] = row
            for step in ("ingest", "queries", "detectors"):
                if row.get(f"{step}_peak_rss_mb", 0) > MAX_RSS_MB and backend == "chdb":
                    missed.append(f"{name}: chdb {step} peak RSS {row[f'{step}_peak_rss_mb']:.0f} MB")
        if {"duckdb", "chdb"} <= set(by_backend):
            duck, ch = by_backend["duckdb"], by_backend["chdb"]
            for key, factor in [
                ("ingest_s", 2),
                ("overview_s", 3),
                ("count_errors_s", 3),
                ("regex_count_s", 3),
                ("view_trace_s", 3),
            ]:
                ratio = ch[key] / max(duck[key], 1e-9)
                print(f"{name}: {key} chdb/duckdb = {ratio:.2f} (target ≤ {factor})", file=sys.stderr)
                if key == "ingest_s":
                    cpu = ch["ingest_cpu_s"] / max(duck["ingest_cpu_s"], 1e-9)
                    print(f"{name}: ingest CPU seconds chdb/duckdb = {cpu:.2f}", file=sys.stderr)
                if ratio > factor:
                    missed.append(f"{name}: {key} is {ratio:.2f}x DuckDB's (target {factor}x)")
    machine = {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine, "results": rows, "missed": missed}, indent=2))
    for line in missed:
        print(f"missed: {line}", file=sys.stderr)
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
