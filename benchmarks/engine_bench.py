"""Engine overhead: time the engine spends per model turn, and event-loop stalls under 50 sub-agents.

The model is the scripted OpenAI-compatible server from the tests, answering instantly, so what is
left is HALO's own work per turn: parsing the streamed reply, running the tool, bookkeeping, events,
building the next request, and the `openai` client's HTTP round trip on loopback.

- Turn overhead: one agent makes `--turns` model turns, each calling `count_traces`; the server
  records, per conversation, the gap between answering one request and receiving the next.
- Stalls: a root agent starts 50 sub-agents at once (`max_parallel=50`), each making 5 turns with a
  tool call; a watchdog task sleeping 5 ms at a time records how late the event loop wakes it.

    python benchmarks/engine_bench.py --out benchmarks/results/engine.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from scripted_llm import Call, ChatRequest, ScriptedLLM, Text, ToolCalls

from halo_rlm.engine import EngineConfig, stream_engine_async
from halo_rlm.simulate import simulate
from halo_rlm.store import TraceStore
from halo_rlm.utils import RetryPolicy


class TurnClock:
    """Wraps a responder; per conversation, the time from answering one turn to the next request."""

    def __init__(self, responder: Any) -> None:
        self.responder = responder
        self.answered: dict[str, float] = {}
        self.gaps: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, request: ChatRequest) -> Any:
        arrived = time.perf_counter()
        conversation = request.first_user_text
        with self.lock:
            if conversation in self.answered:
                self.gaps.append(arrived - self.answered[conversation])
        reply = self.responder(request)
        with self.lock:
            self.answered[conversation] = time.perf_counter()
        return reply


def finish() -> ToolCalls:
    return ToolCalls([Call("final_answer", {"answer": "# Report\n\nDone.", "findings": []})])


def is_sub_agent(request: ChatRequest) -> bool:
    return "You are a sub-agent" in request.system_text


async def run(base_url: str, store: TraceStore, **overrides: Any) -> float:
    """Run the engine to its end; returns the longest event-loop stall seen meanwhile, in seconds."""
    # Retries do not wait: the benchmark measures HALO, not back-off.
    overrides.setdefault("retry", RetryPolicy(sleep=no_wait))
    config = EngineConfig(base_url=base_url, api_key="bench", model="scripted-model", **overrides)
    worst = 0.0
    running = True

    async def watchdog() -> None:
        nonlocal worst
        while running:
            asleep = time.perf_counter()
            await asyncio.sleep(0.005)
            worst = max(worst, time.perf_counter() - asleep - 0.005)

    watching = asyncio.create_task(watchdog())
    async for _ in stream_engine_async("Find the systemic failures.", config, store=store):
        pass
    running = False
    await watching
    return worst


def one_agent(turns: int) -> Any:
    def responder(request: ChatRequest) -> Any:
        return ToolCalls([Call("count_traces", {})]) if len(request.tool_results) < turns else finish()

    return responder


def many_agents(agents: int, turns: int) -> Any:
    def responder(request: ChatRequest) -> Any:
        done = len(request.tool_results)
        if is_sub_agent(request):
            return (
                ToolCalls([Call("count_traces", {"filters": {"has_errors": True}})])
                if done < turns
                else Text("Nothing systemic here.")
            )
        if done == 0:
            return ToolCalls([Call("call_subagent", {"input": f"Look at slice {i}"}) for i in range(agents)])
        return finish()

    return responder


def serve(scenario: str, turns: int, agents: int) -> None:
    """The scripted server, in a process of its own so its threads do not compete with the engine
    for the GIL: prints its URL, serves until stdin closes, then prints the turn gaps."""
    clock = TurnClock(one_agent(turns) if scenario == "one" else many_agents(agents, turns))
    with ScriptedLLM(clock) as llm:
        print(llm.base_url, flush=True)
        sys.stdin.read()
    print(json.dumps(clock.gaps), flush=True)


def scripted(
    scenario: str, store: TraceStore, turns: int, agents: int, **overrides: Any
) -> tuple[list[float], float, float]:
    """Run the engine against a scripted server process; returns the turn gaps, the worst stall and
    the run's seconds."""
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", scenario, "--turns", str(turns), "--agents", str(agents)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin and server.stdout
    base_url = server.stdout.readline().strip()
    started = time.perf_counter()
    worst = asyncio.run(run(base_url, store, **overrides))
    seconds = time.perf_counter() - started
    server.stdin.close()
    gaps = json.loads(server.stdout.read())
    server.wait()
    return gaps, worst, seconds


def turn_overhead(store: TraceStore, turns: int) -> dict[str, Any]:
    gaps, _, _ = scripted("one", store, turns, 0, max_turns=turns + 5)
    gaps_ms = sorted(g * 1000 for g in gaps)
    return {
        "turns": len(gaps_ms),
        "median_ms": statistics.median(gaps_ms),
        "p90_ms": gaps_ms[int(len(gaps_ms) * 0.9)],
        "max_ms": gaps_ms[-1],
    }


def concurrent_subagents(store: TraceStore, agents: int, turns: int) -> dict[str, Any]:
    gaps, worst, seconds = scripted("many", store, turns, agents, max_parallel=agents, max_turns=turns + 5)
    return {
        "sub_agents": agents,
        "turns_each": turns,
        "seconds": seconds,
        "worst_stall_ms": worst * 1000,
        "median_turn_ms": statistics.median(gaps) * 1000,
    }


async def no_wait(seconds: float) -> None:
    """Retries (none are expected) do not wait."""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--serve", choices=["one", "many"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.turns, args.agents)
        return
    with tempfile.TemporaryDirectory() as folder:
        truth = simulate(Path(folder) / "traces.jsonl", traces=300, seed=7)
        with TraceStore.open(Path(folder) / "store.duckdb") as writable:
            writable.ingest([str(truth.traces_path)])
        with TraceStore.open(Path(folder) / "store.duckdb", read_only=True) as store:
            results = {
                "turn_overhead": turn_overhead(store, args.turns),
                "concurrent_subagents": concurrent_subagents(store, args.agents, 5),
            }
    results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
