"""Load test for `halo collect`: concurrent OpenTelemetry SDK exporters against one collector.

    python benchmarks/collect_load.py --spans 100000 --exporters 8

Each exporter is its own process: it makes agent-like traces (an AGENT root with LLM and TOOL
children, ten spans per trace) as the SDK's `ReadableSpan`s and sends them with the SDK's OTLP/HTTP
protobuf exporter in batches of 512, as a `BatchSpanProcessor` would (without its queue, which drops
spans when full). The collector runs in this process and writes a fresh store (and, with --out, a
JSONL file); every request is fsynced to its spool before it is answered. Prints spans sent and
stored, the rate from the first export to the last span committed to the store, and the collector's
own CPU time (all its threads, DuckDB's included), which does not depend on what else the machine runs.

The exporter mode (`--export-to URL`) is also what the collector's crash and full-disk tests run:
with `--acked FILE` it appends the span ids of every batch that got 200 to FILE and carries on past
failed batches, so a test can check that each acknowledged span was kept.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

BATCH = 512
SPANS_PER_TRACE = 10


def export(url: str, spans: int, acked: Path | None = None, timeout: float | None = None) -> None:
    """One exporter process: make `spans` spans and send them to `url`. Without `acked`, exit 1 at the
    first batch that fails; with it, append the span ids of each batch that succeeded there."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExportResult
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, TraceFlags

    resource = Resource.create({"service.name": f"load-{os.getpid()}"})
    scope = InstrumentationScope("halo.benchmark", "1")
    exporter = OTLPSpanExporter(endpoint=url, timeout=timeout)
    record = open(acked, "a") if acked else None  # noqa: SIM115  (closed at the end)
    batch: list[ReadableSpan] = []
    start = time.time_ns()
    for n in range(spans):
        step = n % SPANS_PER_TRACE
        if step == 0:
            root = SpanContext(random.getrandbits(128), random.getrandbits(64), False, TraceFlags(1))
            context, parent, name, attributes = (
                root,
                None,
                "invoke_agent support",
                {"openinference.span.kind": "AGENT"},
            )
        else:
            context, parent = SpanContext(root.trace_id, random.getrandbits(64), False, TraceFlags(1)), root
            name, attributes = (
                (
                    f"llm step {step}",
                    {
                        "openinference.span.kind": "LLM",
                        "llm.model_name": "gpt-4o-mini",
                        "llm.token_count.prompt": 1200 + step,
                        "llm.token_count.completion": 80,
                    },
                )
                if step % 2
                else (
                    f"tool step {step}",
                    {
                        "openinference.span.kind": "TOOL",
                        "tool.name": "lookup_order",
                        "input.value": '{"order_id": "ORD-1001"}',
                        "output.value": '{"status": "shipped", "eta": "2026-05-02"}',
                    },
                )
            )
        begin = start + n * 1000
        batch.append(
            ReadableSpan(
                name,
                context,
                parent,
                resource,
                attributes,
                start_time=begin,
                end_time=begin + 500,
                instrumentation_scope=scope,
            )
        )
        if len(batch) == BATCH or n == spans - 1:
            succeeded = exporter.export(batch) is SpanExportResult.SUCCESS
            if record is not None and succeeded:
                record.write("".join(f"{span.context.span_id:016x}\n" for span in batch))
                record.flush()
            elif not succeeded and record is None:
                sys.exit(1)
            batch = []
    exporter.shutdown()
    if record is not None:
        record.close()


def run(spans: int, exporters: int, store: Path, out: Path | None, spool: Path) -> dict:
    """Start a collector writing `store` (and `out`), run the exporters, stop, and count what was stored."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from halo_rlm.collect import serve
    from halo_rlm.store import TraceStore

    share = [spans // exporters + (i < spans % exporters) for i in range(exporters)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH")])
        ),
    }
    collector = serve(store=store, out=out, spool=spool, port=0)
    started, cpu_started = time.perf_counter(), time.process_time()
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, "--export-to", collector.traces_url, "--spans", str(n)], env=env
        )
        for n in share
    ]
    failed = sum(worker.wait() != 0 for worker in workers)
    sent = time.perf_counter()
    stats = collector.stop()
    stored_at, cpu = time.perf_counter(), time.process_time() - cpu_started
    with TraceStore.open(store, read_only=True) as opened:
        stored, traces = opened.con.execute(
            "SELECT count(*), count(DISTINCT trace_id) FROM spans"
        ).fetchall()[0]
    return {
        "spans_sent": spans,
        "exporters": exporters,
        "failed_exporters": failed,
        "spans_accepted": stats.spans,
        "busy_replies": stats.busy_requests,
        "output_writes": stats.flushes,
        "spans_stored": stored,
        "spans_in_out_file": sum(1 for _ in open(out, "rb")) if out else None,
        "traces_stored": traces,
        "lost": spans - stored,
        "seconds_to_accept": round(sent - started, 2),
        "seconds_to_store": round(stored_at - started, 2),
        "spans_per_second": round(stored / (stored_at - started)),
        "collector_cpu_seconds": round(cpu, 2),
        "spans_per_collector_cpu_second": round(stored / cpu),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spans", type=int, default=100_000)
    parser.add_argument("--exporters", type=int, default=8)
    parser.add_argument("--store", type=Path, help="Store to create (default: a temporary file).")
    parser.add_argument("--out", type=Path, help="Also append the spans to this JSONL file.")
    parser.add_argument("--spool", type=Path, help="The collector's spool (default: a temporary folder).")
    parser.add_argument("--export-to", help="Run as one exporter process sending to this URL.")
    parser.add_argument("--acked", type=Path, help="(exporter) Append acknowledged span ids here.")
    parser.add_argument("--timeout", type=float, help="(exporter) Seconds per export, retries included.")
    args = parser.parse_args()
    if args.export_to:
        export(args.export_to, args.spans, args.acked, args.timeout)
        return
    with tempfile.TemporaryDirectory() as scratch:
        store = args.store or Path(scratch) / "load.duckdb"
        result = run(args.spans, args.exporters, store, args.out, args.spool or Path(scratch) / "spool")
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.exit(1 if result["lost"] or result["failed_exporters"] else 0)


if __name__ == "__main__":
    main()
