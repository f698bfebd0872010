"""Print the benchmark's task success from the last run's results.jsonl, as `resolved/total`.

python score.py            # e.g. "task success: 41/60 (68.3%)"
"""

from __future__ import annotations

import json
import sys

from run import results_path
from tasks import TASKS


def main() -> None:
    path = results_path()
    if not path.exists():
        sys.exit(f"{path}: no results; run `python run.py` first")
    results = {r["id"]: r for r in map(json.loads, path.read_text("utf-8").splitlines())}
    done = sum(bool(results.get(t["id"], {}).get("resolved")) for t in TASKS)
    print(f"task success: {done}/{len(TASKS)} ({done / len(TASKS):.1%})")


if __name__ == "__main__":
    main()
