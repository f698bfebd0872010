"""Peak memory of one ingest road over time: ingest one corpus into a new store in this process and
report wall and CPU seconds, peak RSS and RSS sampled every half second (where the peaks fall: a
statement, a commit). Run one at a time, each in a fresh process, on the corpora store_bench.py builds:

    python benchmarks/ingest_memory.py /tmp/halo-bench/corpus-1000mb.fixtures.jsonl --road lines \
        --out benchmarks/results/ingest-roads.json

`--road bulk` lets a clean flat file load in one statement; `lines` and `decoded` read in batches
(`bulk=False`; which of the two a file takes depends on its format). `--src` measures another
checkout's package (e.g. `git archive <commit> src | tar -x -C /tmp/base`) for a before/after.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--road", choices=["bulk", "lines", "decoded"], default="lines")
    parser.add_argument("--store", type=Path, default=Path("/tmp/halo-bench/ingest-memory.duckdb"))
    parser.add_argument("--commit-mb", type=int, help="commit every N MB of input (default: the package's)")
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the package to measure")
    parser.add_argument("--label", default="", help="what is measured (e.g. a commit), kept in the output")
    parser.add_argument("--out", type=Path, help="append the result to this JSON file")
    args = parser.parse_args()
    sys.path.insert(0, str(args.src))
    from halo_rlm.store import TraceStore

    for leftover in (args.store, Path(f"{args.store}.wal")):
        leftover.unlink(missing_ok=True)
    options: dict[str, Any] = {"bulk": args.road == "bulk"}
    if args.commit_mb:
        options["commit_bytes"] = args.commit_mb << 20
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        start = time.perf_counter()
        while not done.wait(0.5):
            with open("/proc/self/statm") as statm:
                rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
            samples.append((round(time.perf_counter() - start, 1), rss))

    threading.Thread(target=sample, daemon=True).start()
    started = time.perf_counter()
    with TraceStore.open(args.store) as store:
        report = store.ingest([str(args.corpus)], **options)
    seconds = time.perf_counter() - started
    done.set()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "label": args.label,
        "corpus": args.corpus.name,
        "bytes": args.corpus.stat().st_size,
        "road": report.inputs[0].road,
        "spans": report.spans,
        "ingest_s": round(seconds, 1),
        "ingest_cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "load_average": os.getloadavg()[0],
        "rss_mb_every_half_second": samples,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "rss_mb_every_half_second"}))
    if args.out:
        runs = json.loads(args.out.read_text()) if args.out.exists() else []
        args.out.write_text(json.dumps([*runs, result], indent=1) + "\n")


if __name__ == "__main__":
    main()
