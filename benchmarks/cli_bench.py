"""How fast the command line starts and answers: CPU time (user + sys) of `halo --version` and
`halo --help`, and wall time of `halo stats` and `halo show` on a store, each the median of several
runs in fresh processes.

    python benchmarks/cli_bench.py                          # start-up only
    python benchmarks/cli_bench.py --store big.duckdb       # plus stats and show on that store
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HALO = [sys.executable, "-m", "halo_rlm"]


def cpu_seconds(args: list[str]) -> float:
    """User + sys CPU of one run of `halo ARGS` in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(HALO + args, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def wall_seconds(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(HALO + args, check=True, capture_output=True)
    return time.perf_counter() - started


def median(measure: object, args: list[str], runs: int) -> float:
    return round(statistics.median(measure(args) for _ in range(runs)), 3)  # type: ignore[operator]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", type=Path, help="A store to run `halo stats` and `halo show` on.")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", type=Path, help="Also write the results here as JSON.")
    options = parser.parse_args()
    results: dict[str, float] = {
        "version_cpu_s": median(cpu_seconds, ["--version"], options.runs),
        "help_cpu_s": median(cpu_seconds, ["--help"], options.runs),
    }
    if options.store:
        from halo_rlm.store import TraceStore

        with TraceStore.open(options.store, read_only=True) as store:
            trace_id = store.query_traces(None, sort="spans", limit=1).traces[0].trace_id
        store_args = ["--store", str(options.store)]
        results["stats_wall_s"] = median(wall_seconds, ["stats", *store_args], options.runs)
        results["show_wall_s"] = median(wall_seconds, ["show", trace_id, *store_args], options.runs)
    print(json.dumps(results, indent=2))
    if options.out:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
