"""`halo compare` of two stores of about --gb GB each: the time and peak RSS of the whole command, and
whether its verdicts are right.

Two simulated corpora of the same size are made (`simulate`): BEFORE at the default rates, AFTER with
`tool_error` removed, `rate_limit` halved and `timeout` doubled (the rest unchanged). Each is ingested
into its own store (not timed: stores are what compare reads), then `halo compare BEFORE.duckdb
AFTER.duckdb --json` runs in a fresh process, as a user would run it: the detectors on both stores,
every finding's recount query on both, the statistics, the three output files. The planted changes must
come out fixed, improved and worse, and nothing else may change.

Target (2 cores): two 1 GB stores compared in at most 30 s. Exits 1 when the time or a verdict is off.

    python benchmarks/compare_bench.py --gb 1 --out benchmarks/results/compare.json     # the target
    python benchmarks/compare_bench.py --traces 2000                                      # a quick run
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from store_bench import ingest, measure

from halo_rlm.simulate import simulate

MAX_SECONDS = 30.0
AFTER_RATES = {"tool_error": 0.0, "rate_limit": 0.025, "timeout": 0.05}
EXPECTED = {
    "tool_error:lookup_order": "fixed",
    "rate_limit:claude-sonnet-4-5": "improved",
    "timeout:fetch_url": "worse",
}


def corpus(work: Path, name: str, traces: int, seed: int, rates: dict[str, float]) -> Path:
    path = work / f"{name}-{traces}-s{seed}.jsonl"
    if not path.with_suffix(".truth.json").exists():  # written last: a corpus cut short is made again
        started = time.perf_counter()
        simulate(path, traces=traces, seed=seed, rates=rates)
        print(f"simulated {path.name} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return path


def traces_for(work: Path, gb: float) -> int:
    sample = corpus(work, "sample", 1_000, 1, {})
    return math.ceil(gb * 1e9 / (sample.stat().st_size / 1_000))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--gb", type=float, help="Size of each corpus in GB.")
    size.add_argument("--traces", type=int, default=2_000, help="Traces in each corpus (default 2,000).")
    parser.add_argument("--work", type=Path, help="Folder for corpora and stores, reused between runs.")
    parser.add_argument("--out", type=Path, help="Write the results as JSON here too.")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="halo-compare-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    traces = traces_for(work, args.gb) if args.gb else args.traces
    sides = {}
    for name, seed, rates in (("before", 11, {}), ("after", 12, AFTER_RATES)):
        path = corpus(work, name, traces, seed, rates)
        store = path.with_suffix(".duckdb")
        loaded = ingest(path, store) if not store.exists() else {"ingest_s": None, "spans": None}
        sides[name] = {"corpus": path, "store": store, "bytes": path.stat().st_size, **loaded}
    out_dir = work / "compare"
    compared = measure(f"""
        import contextlib, io
        from halo_rlm.cli import cli
        buffer = io.StringIO()
        t = time.perf_counter()
        with contextlib.redirect_stdout(buffer):
            try:
                cli.main(["compare", {str(sides["before"]["store"])!r}, {str(sides["after"]["store"])!r},
                          "-o", {str(out_dir)!r}, "--json"], prog_name="halo", standalone_mode=False)
            except SystemExit:
                pass
        result["compare_s"] = time.perf_counter() - t
        result["comparison"] = json.loads(buffer.getvalue())
    """)
    comparison = compared.pop("comparison")
    verdicts = {
        f["id"].split("-")[0] if f["id"].startswith("tool_error") else f["id"]: f["verdict"]
        for f in comparison["failures"]
        if f.get("stratum") is None
    }
    wrong = {k: v for k, v in verdicts.items() if v != EXPECTED.get(k, "unchanged")}
    result: dict[str, Any] = {
        "traces_per_side": traces,
        "gb_per_side": round(sides["before"]["bytes"] / 1e9, 3),
        "spans": [sides["before"]["spans"], sides["after"]["spans"]],
        "compare_s": round(compared["compare_s"], 2),
        "peak_rss_mb": round(compared["peak_rss_mb"]),
        "failures_compared": len(verdicts),
        "wrong_verdicts": wrong,
        "verdicts": verdicts,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if wrong or (args.gb and args.gb >= 1 and result["compare_s"] > MAX_SECONDS):
        sys.exit(1)


if __name__ == "__main__":
    main()
