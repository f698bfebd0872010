"""Trace store speed and memory: ingest, re-open and queries on 100 MB and 1 GB corpora.

Corpora replicate sample traces with fresh trace and span ids until the size is reached: the
shipped examples (HALO's flat format, and the same traces as OTLP/JSON) and, when `../shared` is
present, HALO's own fixture traces. Every measurement
runs in a fresh Python process so peak RSS is that step's alone.

    python benchmarks/store_bench.py --sizes 100 1000 --out benchmarks/results/store.json

Each ingest row says which road the file took (`road`: bulk, lines, decoded) and why it was not the
one-statement load (`road_reason`); flat corpora are ingested a second time in batches (`bulk=False`,
the road of compressed, grown or bad-lined files) unless `--no-batched`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from halo_rlm.simulate import simulate

EXAMPLES = ROOT / "src" / "halo_rlm" / "examples" / "traces.jsonl.gz"
FIXTURES = ROOT.parent / "shared" / "fixtures"  # read when present, never copied


def fresh_ids(rng: random.Random, mapping: dict[str, str], old: str, width: int) -> str:
    if not old:
        return old
    if old not in mapping:
        mapping[old] = f"{rng.getrandbits(width * 4):0{width}x}"
    return mapping[old]


def flat_lines(fmt: str) -> list[bytes]:
    if fmt == "halo":
        return gzip.decompress(EXAMPLES.read_bytes()).splitlines()
    # HALO's own sample traces: leaner spans (~1 KB), like the reference corpus in issue 2.
    return [
        line
        for name in ("realistic_traces.jsonl", "tiny_traces.jsonl")
        for line in (FIXTURES / name).read_bytes().splitlines()
        if line.strip()
    ]


def build_flat(target_mb: int, out: Path, lines: list[bytes]) -> dict[str, int]:
    rng = random.Random(1234)
    written = spans = rounds = 0
    with out.open("wb") as f:
        while written < target_mb * 1_000_000:
            ids: dict[str, str] = {}
            for line in lines:
                span = orjson.loads(line)
                span["trace_id"] = fresh_ids(rng, ids, span["trace_id"], 32)
                span["span_id"] = fresh_ids(rng, ids, span["span_id"], 16)
                span["parent_span_id"] = fresh_ids(rng, ids, span["parent_span_id"], 16)
                data = orjson.dumps(span) + b"\n"
                f.write(data)
                written += len(data)
                spans += 1
            rounds += 1
    return {"bytes": written, "spans": spans, "rounds": rounds}


def build_otlp(target_mb: int, out: Path, work: Path) -> dict[str, int]:
    source = work / "examples.otlp.jsonl"
    if not source.exists():
        simulate(source, traces=300, seed=7, format="otlp")
    lines = source.read_bytes().splitlines()
    rng = random.Random(1234)
    written = spans = 0
    with out.open("wb") as f:
        while written < target_mb * 1_000_000:
            ids: dict[str, str] = {}
            for line in lines:
                request = orjson.loads(line)
                for rs in request["resourceSpans"]:
                    for ss in rs["scopeSpans"]:
                        for span in ss["spans"]:
                            span["traceId"] = fresh_ids(rng, ids, span["traceId"], 32)
                            span["spanId"] = fresh_ids(rng, ids, span["spanId"], 16)
                            span["parentSpanId"] = fresh_ids(rng, ids, span.get("parentSpanId", ""), 16)
                            spans += 1
                data = orjson.dumps(request) + b"\n"
                f.write(data)
                written += len(data)
    return {"bytes": written, "spans": spans}


def measure(code: str) -> dict[str, Any]:
    """Run `code` in a fresh interpreter; it prints a JSON dict. Adds its peak RSS in MB."""
    script = textwrap.dedent(f"""
        import json, resource, sys, time
        sys.path.insert(0, {str(ROOT / "src")!r})
        result = {{}}
        {textwrap.indent(textwrap.dedent(code), "        ").strip()}
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def ingest(corpus: Path, store: Path, *, bulk: bool = True) -> dict[str, Any]:
    """Ingest `corpus` into a fresh `store`, in a process of its own; with the road the file took
    (bulk, lines, decoded or document) and why, when it was not the first choice."""
    for leftover in (store, Path(f"{store}.wal")):
        leftover.unlink(missing_ok=True)
    return measure(f"""
        import os
        from halo_rlm.store import TraceStore
        t, cpu = time.perf_counter(), os.times()
        with TraceStore.open({str(store)!r}) as s:
            r = s.ingest([{str(corpus)!r}], bulk={bulk!r})
        result["ingest_s"] = time.perf_counter() - t
        done = os.times()
        result["ingest_cpu_s"] = done.user + done.system - cpu.user - cpu.system
        result["spans"] = r.spans
        result["rejected"] = r.rejected
        result["road"] = r.inputs[0].road
        result["road_reason"] = r.inputs[0].road_reason
    """)


def bench(corpus: Path, store: Path, repeats: int) -> dict[str, Any]:
    loaded = ingest(corpus, store)
    queries = measure(f"""
        import statistics
        from halo_rlm.store import TraceStore
        from halo_rlm.store import TraceFilters
        t = time.perf_counter()
        s = TraceStore.open({str(store)!r}, read_only=True)
        result["reopen_s"] = time.perf_counter() - t
        result["reopen_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        trace_id = s.query("SELECT trace_id FROM traces WHERE span_count > 10 LIMIT 1")[0]["trace_id"]
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
            result[name.replace("_s", "_first_s")] = times[0]
        result["traces"] = s.count_traces()
    """)
    return {
        **loaded,
        **{k: v for k, v in queries.items() if k != "peak_rss_mb"},
        "queries_peak_rss_mb": queries["peak_rss_mb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="corpus sizes in MB")
    parser.add_argument(
        "--formats",
        nargs="+",
        default=["halo", "fixtures", "otlp"],
        help="halo: the shipped examples; fixtures: HALO's sample traces (if ../shared is "
        "there); otlp: the shipped examples as OTLP/JSON",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--no-batched",
        dest="batched",
        action="store_false",
        help="skip ingesting each flat corpus a second time in batches (bulk=False), the road of "
        "compressed, grown or bad-lined files",
    )
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "halo-bench")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for size in args.sizes:
        for fmt in args.formats:
            if fmt == "fixtures" and not FIXTURES.exists():
                print(f"skipping fixtures: {FIXTURES} is absent", file=sys.stderr)
                continue
            corpus = args.work / f"corpus-{size}mb.{fmt}.jsonl"
            if not corpus.exists():
                t = time.perf_counter()
                info = (
                    build_otlp(size, corpus, args.work)
                    if fmt == "otlp"
                    else build_flat(size, corpus, flat_lines(fmt))
                )
                print(f"built {corpus.name}: {info} in {time.perf_counter() - t:.1f}s", file=sys.stderr)
            row = {
                "size_mb": size,
                "format": fmt,
                "bytes": corpus.stat().st_size,
                **bench(corpus, args.work / f"store-{size}mb.{fmt}.duckdb", args.repeats),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
            if args.batched and fmt != "otlp":  # the road a compressed, grown or bad-lined file takes
                batched = {
                    "size_mb": size,
                    "format": fmt,
                    "bytes": corpus.stat().st_size,
                    **ingest(corpus, args.work / f"store-{size}mb.{fmt}.lines.duckdb", bulk=False),
                }
                results.append(batched)
                print(json.dumps(batched), flush=True)
    machine = {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    main()
