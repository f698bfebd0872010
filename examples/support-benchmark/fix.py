"""A scripted "coding agent" for the benchmark: reads HALO's report and applies the fix for the first
finding it knows how to fix, as `halo loop --fix "python fix.py"` calls it.

It gets the prompt on stdin and the report's path in $HALO_REPORT (report.md, with report.json beside
it), works in the current directory (the loop's worktree), and changes one thing per round:

- `issue_refund` called with invalid arguments -> the amount becomes a number in the tool's schema;
- `check_warranty` called but not a tool        -> the prompt stops telling the model to call it;
- `check_stock` failing while the service is busy -> the tools retry twice.

`--break-in-round N` makes it break the agent instead in round N ($HALO_ROUND): it removes
`lookup_order` from the agent's tools, which the prompt still tells the model to call.
`--fail` makes it exit with an error, as a coding agent that cannot start does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path


def replace(path: str, old: str, new: str) -> bool:
    file = Path(path)
    text = file.read_text(encoding="utf-8")
    if old not in text:
        return False
    file.write_text(text.replace(old, new), encoding="utf-8")
    return True


def refund_amount_as_number() -> bool:
    return replace(
        "tools.py",
        "def issue_refund(order_id: str, amount: str) -> str:",
        "def issue_refund(order_id: str, amount: float) -> str:",
    ) and replace(
        "tools.py",
        'amount: The amount to refund, as the customer wrote it (e.g. "$24.50").',
        "amount: The amount to refund in US dollars, as a number (e.g. 24.5).",
    )


def stop_mentioning_check_warranty() -> bool:
    return replace(
        "prompt.md",
        "- Warranty questions: call `check_warranty` with the order id. ",
        "- Warranty questions: call `lookup_order` for the delivery date. ",
    )


def retry_busy_services() -> bool:
    return replace("tools.py", "RETRIES = 0  #", "RETRIES = 2  #")


def break_the_agent() -> bool:
    return replace(
        "tools.py", "TOOLS = [lookup_order, issue_refund, check_stock]", "TOOLS = [issue_refund, check_stock]"
    )


# (words a finding must mention, the fix)
FIXES: list[tuple[tuple[str, ...], Callable[[], bool]]] = [
    (("invalid_tool_arguments", "issue_refund"), refund_amount_as_number),
    (("check_warranty",), stop_mentioning_check_warranty),
    (("check_stock", "busy"), retry_busy_services),
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--break-in-round", type=int, default=None)
    parser.add_argument("--fail", action="store_true")
    args = parser.parse_args()
    prompt = sys.stdin.read()
    if args.fail:
        sys.exit("fix.py: cannot start (asked to fail)")
    if not prompt.strip():
        sys.exit("fix.py: no prompt on stdin")
    if args.break_in_round is not None and os.environ.get("HALO_ROUND") == str(args.break_in_round):
        print("Removed lookup_order from the agent's tools." if break_the_agent() else "Nothing to break.")
        return
    report = json.loads(Path(os.environ["HALO_REPORT"]).with_name("report.json").read_text("utf-8"))
    for finding in report["findings"]:
        text = json.dumps(finding)
        for words, fix in FIXES:
            if all(word in text for word in words) and fix():
                print(f"Fixed: {finding['title']} ({fix.__name__})")
                return
    print("No finding I know how to fix.")


if __name__ == "__main__":
    main()
