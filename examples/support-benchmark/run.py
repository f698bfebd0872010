"""Run the support benchmark: every task in tasks.json through the agent, traced for HALO.

    python run.py                                   # offline: starts the scripted model in-process
    python run.py --base-url http://localhost:11434/v1 --model qwen3:8b   # a real model

Spans go to $HALO_TRACES_PATH when set (as `halo loop` sets it), else to the OTLP endpoint in
$OTEL_EXPORTER_OTLP_ENDPOINT, else to traces.jsonl. Each task is one trace whose root span,
`support.task`, carries `support.task_id` and `support.resolved` (did the agent do what was asked).
The per-task results go to results.jsonl in $HALO_RUN_DIR (else here), which score.py reads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import model_server
from agent import build_agent
from agents import AgentsException, Runner, set_trace_processors
from backend import SHOP
from openai import APIError, AsyncOpenAI
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from tasks import TASKS, resolved

import halo_rlm.tracing


def results_path() -> Path:
    return Path(os.environ.get("HALO_RUN_DIR", ".")) / "results.jsonl"


def traces_target() -> str:
    return (
        os.environ.get("HALO_TRACES_PATH") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "traces.jsonl"
    )


async def run_task(
    task: dict[str, Any], client: AsyncOpenAI, model: str, tracer: trace.Tracer
) -> dict[str, Any]:
    agent = build_agent(client, model)  # built per task, so each run reads the harness as it is now
    with tracer.start_as_current_span(
        "support.task", attributes={"support.task_id": task["id"], "support.kind": task["kind"]}
    ) as span:
        answer, error = "", None
        try:
            result = await Runner.run(agent, task["message"], max_turns=6)
            answer = str(result.final_output or "")
        except (AgentsException, APIError) as exc:  # the run ends; the task is not resolved
            error = f"{type(exc).__name__}: {exc}"
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, error))
        refunds = [r for r in SHOP.refunds if r[0] == task.get("order_id")]
        ok = error is None and resolved(task, answer, refunds)
        span.set_attribute("support.resolved", ok)
    return {"id": task["id"], "resolved": ok, "answer": answer, "error": error}


async def run_all(base_url: str, model: str, api_key: str) -> list[dict[str, Any]]:
    client = AsyncOpenAI(base_url=base_url, api_key=api_key)
    tracer = trace.get_tracer("support-benchmark")
    slots = asyncio.Semaphore(8)  # a few tasks at once, as a support desk would; each has its own order

    async def one(task: dict[str, Any]) -> dict[str, Any]:
        async with slots:
            return await run_task(task, client, model, tracer)

    return list(await asyncio.gather(*(one(task) for task in TASKS)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--base-url",
        default=os.environ.get("OPENAI_BASE_URL"),
        help="OpenAI-compatible endpoint (default: $OPENAI_BASE_URL, else the scripted model)",
    )
    parser.add_argument("--model", default=os.environ.get("AGENT_MODEL", "scripted-support-model"))
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "unused"))
    args = parser.parse_args()

    set_trace_processors([])  # nothing goes to OpenAI's trace dashboard
    provider = halo_rlm.tracing.setup(traces_target(), service_name="support-benchmark")
    try:
        with contextlib.ExitStack() as stack:
            base_url = args.base_url or stack.enter_context(model_server.serve())
            results = asyncio.run(run_all(base_url, args.model, args.api_key))
    finally:
        provider.shutdown()  # write the last spans before exiting
    path = results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in results), encoding="utf-8")
    done = sum(r["resolved"] for r in results)
    print(f"{done}/{len(results)} tasks resolved; results in {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
