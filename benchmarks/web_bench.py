"""`halo ui` speed and memory: the trace list with its stat strip under filter combinations, one trace of
5,000 spans served and first painted in Chromium, a span exported over OTLP until it is visible in an
open list, and the server's peak RSS.

The corpus replicates the shipped example traces (`--format halo`) or HALO's fixture traces
(`--format fixtures`: many small traces, the shape of the issue's 1 GB store) with fresh ids up to the
size asked (as store_bench.py does), plus one trace of 5,000 spans. The app runs in a process of its own; times are
measured by the client on loopback (an upper bound on server time), medians of `--repeats`.

    python benchmarks/web_bench.py --size 1000 --format fixtures --out benchmarks/results/web.json

Needs Debian's chromium (or HALO_CHROMIUM) for the browser measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).parent))

from store_bench import build_flat, flat_lines

CHROMIUM = os.environ.get("HALO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
BIG_TRACE = "b" * 32
SEARCH = {"halo": "refund", "fixtures": "no such file"}  # text some of each corpus's spans hold
COMMON = ("error", "e")  # a word in about half the traces, and a letter in all of them


def big_trace_lines(spans: int) -> bytes:
    """One agent trace of `spans` spans: model calls (messages as JSON blobs) and tool calls."""
    start = 1_780_000_000_000_000_000
    out = []

    def line(
        span_id: str, parent: str | None, name: str, offset_ms: float, ms: float, attrs: dict[str, Any]
    ) -> None:
        out.append(
            orjson.dumps(
                {
                    "trace_id": BIG_TRACE,
                    "span_id": span_id,
                    "parent_span_id": parent or "",
                    "name": name,
                    "kind": "SPAN_KIND_INTERNAL",
                    "start_time": str(start + int(offset_ms * 1e6)),
                    "end_time": str(start + int((offset_ms + ms) * 1e6)),
                    "status": {"code": "STATUS_CODE_OK"},
                    "resource": {"attributes": {"service.name": "bench-agent"}},
                    "attributes": attrs,
                }
            )
        )

    root = "0" * 16
    clock = 0.0
    for i in range(1, spans):
        kind = "LLM" if i % 2 else "TOOL"
        attrs: dict[str, Any] = {"openinference.span.kind": kind}
        if kind == "LLM":
            attrs |= {
                "llm.model_name": "bench-model",
                "llm.token_count.prompt": 500,
                "llm.token_count.completion": 50,
                "llm.input_messages": orjson.dumps([{"role": "user", "content": f"step {i}"}]).decode(),
                "llm.output_messages": orjson.dumps([{"role": "assistant", "content": f"done {i}"}]).decode(),
            }
        else:
            attrs |= {"tool.name": "lookup", "input.value": f'{{"step": {i}}}', "output.value": "ok"}
        line(f"{i:016x}", root, "ChatCompletion" if kind == "LLM" else "lookup", clock, 5, attrs)
        clock += 5
    line(root, None, "BenchAgent", 0, clock, {"openinference.span.kind": "AGENT"})
    return b"\n".join(out) + b"\n"


def build_store(size_mb: int, shape: str, work: Path) -> Path:
    store = work / f"web-{size_mb}mb.{shape}.duckdb"
    if store.exists():
        return store
    corpus = work / f"web-corpus-{size_mb}mb.{shape}.jsonl"
    if not corpus.exists():
        build_flat(size_mb, corpus, flat_lines(shape))
    big = work / "web-big-trace.jsonl"
    big.write_bytes(big_trace_lines(5_000))
    code = f"""
import sys; sys.path.insert(0, {str(ROOT / "src")!r})
from halo_rlm.store import TraceStore
with TraceStore.open({str(store)!r}) as s:
    s.ingest([{str(corpus)!r}, {str(big)!r}])
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    return store


def start_app(store: Path) -> tuple[subprocess.Popen[str], str, str]:
    code = f"""
import sys; sys.path.insert(0, {str(ROOT / "src")!r})
from pathlib import Path
from halo_rlm.web import Server, Settings
server = Server(Settings(store=Path({str(store)!r}), port=0))
print(server.url, server.settings.token, flush=True)
server.run()
"""
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    url, token = child.stdout.readline().split()
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(
                f"{url}/traces.json?part=strip", headers={"Authorization": f"Bearer {token}"}, timeout=60
            )
            return child, url, token
        except httpx.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def timed(client: httpx.Client, path: str, repeats: int) -> dict[str, float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        response = client.get(path)
        times.append(time.perf_counter() - started)
        response.raise_for_status()
    return {"first_ms": times[0] * 1000, "median_ms": statistics.median(times) * 1000}


def list_queries(client: httpx.Client, search: str) -> dict[str, str]:
    data = client.get("/traces.json").json()
    facet = data["facets"]

    def first(name: str) -> str:
        return facet[name][0]["value"] if facet[name] else ""

    service, model, tool, group = first("services"), first("models"), first("tools"), first("error_groups")
    return {
        "all": "/traces.json",
        "errors": "/traces.json?status=error",
        "service+model": f"/traces.json?service={service}&model={model}",
        "tool+errors+sort cost": f"/traces.json?tool={tool}&status=error&sort=cost",
        "two services": f"/traces.json?service={service}&service={first('agents')}",
        "error group": "/traces.json?" + httpx.QueryParams({"error_group": group}).__str__(),
        "window 7d": "/traces.json?window=7d",
        "sessions": "/traces.json?view=sessions",
        "text search": "/traces.json?" + str(httpx.QueryParams({"q": search})),
        # a fragment of one trace's id (rare), then a word and a letter (common)
        "text: id fragment": "/traces.json?"
        + str(httpx.QueryParams({"q": data["page"]["rows"][0]["trace_id"][5:13]})),
        **{f"text: {word!r}": "/traces.json?" + str(httpx.QueryParams({"q": word})) for word in COMMON},
        "page 2 (cursor)": "/traces.json?part=rows&cursor=" + (data["page"]["next_cursor"] or ""),
    }


def wait_for_search_index(client: httpx.Client, timeout: float = 1800) -> float:
    """Seconds until the app's search index answers searches (built, or caught up with the store)."""
    started = time.perf_counter()
    while client.get("/traces.json?part=strip&q=x").json()["search"]["by"] != "index":
        if time.perf_counter() - started > timeout:
            raise TimeoutError("the search index was not ready in time")
        time.sleep(0.5)
    return time.perf_counter() - started


def browser_numbers(url: str, token: str) -> dict[str, float]:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from playwright.sync_api import sync_playwright

    results: dict[str, float] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{url}/traces?token={token}")
        paints = []
        for _ in range(3):
            page.goto(f"{url}/traces/{BIG_TRACE}")
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            # ms from navigation start until the tree and waterfall were first drawn
            paints.append(page.evaluate("performance.getEntriesByName('halo-trace-drawn')[0].startTime"))
        results["big_trace_first_paint_ms"] = statistics.median(paints)
        page.goto(f"{url}/traces")
        exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces")
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        visible = []
        for i in range(3):
            with provider.get_tracer("bench").start_as_current_span(f"live-{i}") as span:
                trace_id = f"{span.get_span_context().trace_id:032x}"
            sent = time.perf_counter()
            page.wait_for_selector(f"#rows tr[data-key='{trace_id}']", timeout=30_000)
            visible.append(time.perf_counter() - sent)
        provider.shutdown()
        results["otlp_to_visible_ms"] = statistics.median(visible) * 1000
        browser.close()
    return results


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=100, help="corpus size in MB")
    parser.add_argument("--format", choices=["halo", "fixtures"], default="fixtures", help="corpus shape")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "halo-bench")
    parser.add_argument("--no-browser", action="store_true", help="skip the Chromium measurements")
    parser.add_argument(
        "--rebuild-index", action="store_true", help="delete the store's search index first (times its build)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    store = build_store(args.size, args.format, args.work)
    index = Path(f"{store}.search")
    if args.rebuild_index:
        shutil.rmtree(index, ignore_errors=True)
    child, url, token = start_app(store)
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as client:
            traces = client.get("/traces.json?part=strip").json()["stats"]
            results: dict[str, Any] = {
                "size_mb": args.size,
                "format": args.format,
                "traces": traces["traces"],
                "spans": traces["spans"],
            }
            results["search_index"] = {
                "ready_after_s": wait_for_search_index(client),
                "rebuilt": args.rebuild_index,
                "cpu_s": cpu_seconds(child.pid),  # the app's, index build included
                "size_mb": sum(f.stat().st_size for f in index.rglob("*") if f.is_file()) / 1e6,
            }
            results["list_and_strip"] = {
                name: timed(client, path, args.repeats)
                for name, path in list_queries(client, SEARCH[args.format]).items()
            }
            results["big_trace_json"] = timed(client, f"/traces/{BIG_TRACE}.json", args.repeats)
            results["big_trace_page"] = timed(client, f"/traces/{BIG_TRACE}", args.repeats)
        if not args.no_browser:
            results |= browser_numbers(url, token)
        results["server_peak_rss_mb"] = peak_rss_mb(child.pid)
    finally:
        child.terminate()
        child.wait(60)
    results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
