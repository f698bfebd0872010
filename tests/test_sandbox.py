"""The sandboxed REPL: persistence, values, host functions, limits and concurrency."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from halo_rlm.sandbox import CodeResult, Limits, Repl, available, describe_environment

FAST = Limits(wall_seconds=2)


def run_session(codes: list[str], functions: dict | None = None, limits: Limits = FAST) -> list[CodeResult]:
    """Run snippets one after another in one Repl, on a fresh event loop."""

    async def session() -> list[CodeResult]:
        async with Repl(functions or {}, limits=limits) as repl:
            return [await repl.run(code) for code in codes]

    return asyncio.run(session())


def test_available_here():
    assert available() is None


def test_variables_functions_and_imports_persist_across_runs():
    results = run_session(
        [
            "import collections\ncount = collections.Counter('abca')\ndef double(n):\n    return 2 * n",
            "class Box:\n    def __init__(self, v):\n        self.v = v\nbox = Box(3)",
            "double(count['a']) + box.v",
        ]
    )
    assert [r.ok for r in results] == [True, True, True]
    assert results[-1].value == "7"


def test_trailing_expression_is_shown_like_a_repl():
    results = run_session(
        [
            "1 + 1",
            "x = 5",
            "'text'",
            "import collections\ncollections.deque([1, 2])",
            "class K:\n    def __repr__(self):\n        return 'K!'\nK()",
            "x; x * 2  # a comment",
            "(x +\n 1)",
            "None",
            'd = {"k": 1}\nf"{d["k"]}"',  # quote reuse the host's Python 3.11 parser cannot read
        ]
    )
    assert [r.value for r in results] == ["2", None, "'text'", "deque([1, 2])", "K!", "10", "6", None, "'1'"]
    assert all(r.ok for r in results)


def test_values_still_show_when_sandbox_code_rebinds_repr_or_len():
    results = run_session(["len = 3\nrepr = 'mine'", "[1, 2]", "'z' * 30_000", "(len, repr)"])
    assert [r.ok for r in results] == [True] * 4
    assert results[1].value == "[1, 2]"
    assert results[2].truncated and "[10,002 characters dropped]" in results[2].value
    assert results[3].value == "(3, 'mine')"


def test_printed_output_is_captured_from_stdout_and_stderr():
    [result] = run_session(["import sys\nprint('hello', 42)\nprint('oops', file=sys.stderr)\nprint('bye')"])
    assert result.ok
    assert result.stdout == "hello 42\noops\nbye\n"
    assert result.value is None


def test_syntax_and_runtime_errors_are_short_and_keep_the_session():
    results = run_session(["kept = 1", "def f(:\n    pass", "def g():\n    return 1 / 0\ng()", "kept"])
    assert results[1].ok is False and results[1].error.startswith("SyntaxError")
    assert results[2].error == "ZeroDivisionError: division by zero (line 2, in g)"
    assert results[3].value == "1"


def test_host_functions_sync_and_async_are_plain_calls_with_plain_data():
    loop_threads = []

    def traces(status: str, limit: int = 10) -> list[dict]:
        loop_threads.append(threading.get_ident())
        return [{"id": i, "status": status} for i in range(limit)]

    async def llm_query(prompt: str) -> str:
        await asyncio.sleep(0.01)
        return f"summary of {prompt!r}"

    [result] = run_session(
        ["rows = traces('error', limit=2)\nanswer = llm_query(rows[1]['status'])\n(rows, answer)"],
        {"traces": traces, "llm_query": llm_query},
    )
    assert result.ok, result.error
    assert (
        result.value
        == "([{'id': 0, 'status': 'error'}, {'id': 1, 'status': 'error'}], \"summary of 'error'\")"
    )
    assert result.host_calls == 2
    # Sync host functions run in a worker thread, off the event loop.
    assert loop_threads and threading.main_thread().ident not in loop_threads


def test_host_exception_becomes_a_catchable_sandbox_exception_without_host_details():
    class StoreError(Exception):
        pass

    def bad_filter(**filters):
        raise ValueError(f"unknown filter {sorted(filters)}")

    def store_down():
        raise StoreError("the trace store is closed")

    results = run_session(
        [
            "try:\n    bad_filter(colour='red')\nexcept ValueError as e:\n    caught = str(e)\ncaught",
            "try:\n    store_down()\nexcept RuntimeError as e:\n    caught = (type(e).__name__, e.args)\ncaught",
            "store_down()",
        ],
        {"bad_filter": bad_filter, "store_down": store_down},
    )
    assert results[0].value == "\"unknown filter ['colour']\""
    assert results[1].value == "('RuntimeError', ('the trace store is closed',))"
    assert results[2].error == "RuntimeError: the trace store is closed (line 1)"
    for text in (results[2].error, results[2].stdout):
        assert "StoreError" not in text and "Traceback" not in text and "sandbox.py" not in text


def test_json_like_data_round_trips_unchanged():
    received = []
    data = {
        "nested": [[1, [2, [3, {"deep": None}]]], {"a": {"b": {"c": []}}}],
        "unicode": "é☃😀 日本語 \x00 \n",
        "big": 2**200,
        "negative_big": -(10**40),
        "floats": [0.1, -0.0, 1e308, float("inf"), float("-inf")],
        "flags": [True, False, None],
        "pair": (1, "two"),
        "int_keys": {1: "one", 2: "two"},
        "empty": {},
    }

    def echo(value):
        received.append(value)
        return value

    [result] = run_session(
        [
            "sent = source()\nback = echo(sent)\n(back == sent, back['big'] + 1, back['pair'], back['unicode'])"
        ],
        {"source": lambda: data, "echo": echo},
    )
    assert result.ok, result.error
    assert result.value == repr((True, 2**200 + 1, (1, "two"), data["unicode"]))
    assert received == [data]
    assert type(received[0]["pair"]) is tuple and type(received[0]["big"]) is int


def test_only_plain_data_crosses_the_boundary():
    received = []

    def take(*args, **kwargs):
        received.append((args, kwargs))
        return "taken"

    def give_object():
        return threading.Lock()

    def give_function():
        return os.getenv

    results = run_session(
        [
            "class Point:\n    pass\ntake(Point())",
            "take(type)",
            "take(print)",
            "take({1, 2})",
            "give_object()",
            "give_function()",
        ],
        {"take": take, "give_object": give_object, "give_function": give_function},
    )
    assert [r.ok for r in results] == [False] * 6
    for result in results[:4]:
        assert (
            result.error.startswith("TypeError: take(): ")
            and "cannot cross the sandbox boundary" in result.error
        )
    assert "'lock'" in results[4].error and "'function'" in results[5].error
    assert received == []


def test_output_keeps_head_and_tail_and_says_how_much_was_dropped():
    limits = Limits(wall_seconds=5, max_output_bytes=1_000)
    [result] = run_session(
        ["print('FIRST LINE')\nfor i in range(10000):\n    print(f'line {i}')\nprint('LAST LINE')"],
        limits=limits,
    )
    assert result.ok and result.truncated
    assert result.stdout.startswith("FIRST LINE\nline 0\n")
    assert result.stdout.endswith("line 9999\nLAST LINE\n")
    printed = len("FIRST LINE\n") + sum(len(f"line {i}\n") for i in range(10000)) + len("LAST LINE\n")
    assert f"[{printed - 1_000:,} bytes of output dropped]" in result.stdout
    assert len(result.stdout) < 1_100


def test_long_value_keeps_head_and_tail():
    [result] = run_session(["'a' * 5000 + 'b' * 5000"], limits=Limits(wall_seconds=2, max_output_bytes=1_000))
    assert result.truncated
    assert result.value.startswith("'aaaa") and result.value.endswith("bbbb'")
    assert "[9,002 characters dropped]" in result.value


def test_timeout_stops_the_run_and_restores_the_previous_state():
    results = run_session(
        ["kept = 'from run 1'", "lost = 'from run 2'\nwhile True:\n    pass", "kept", "lost"]
    )
    timed_out = results[1]
    assert timed_out.ok is False and timed_out.timed_out
    assert timed_out.error.startswith("TimeoutError: timed out after 2s.")
    assert "reset to its state after your previous run" in timed_out.error
    assert results[2].value == "'from run 1'"
    assert results[3].error == "NameError: name 'lost' is not defined (line 1)"


def test_timeout_also_covers_time_spent_waiting_on_the_host():
    cancelled = []

    async def slow_llm(prompt):
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(prompt)
            raise

    results = run_session(
        ["slow_llm('hi')", "'still alive'"], {"slow_llm": slow_llm}, Limits(wall_seconds=0.5)
    )
    assert results[0].timed_out and results[0].error.startswith("TimeoutError: timed out after 0.5s")
    assert cancelled == ["hi"]
    assert results[1].value == "'still alive'"


def resident_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_memory_limit_raises_memory_error_and_restores_the_previous_state():
    rss_before = resident_mb()
    results = run_session(
        [
            "kept = [1, 2, 3]",
            "big = 'x' * 10**10",
            "grow = []\nwhile True:\n    grow.append('y' * 10**5)",
            "kept",
        ],
        limits=Limits(wall_seconds=20, memory_mb=64),
    )
    for result in results[1:3]:
        assert result.ok is False and not result.timed_out
        assert result.error.startswith("MemoryError: memory limit exceeded")
        assert "reset to its state after your previous run" in result.error
    assert results[3].value == "[1, 2, 3]"
    # The bombs lived in the worker process: the host barely moved.
    assert resident_mb() - rss_before < 50


def test_state_too_large_to_checkpoint_is_reported_and_rolled_back():
    # Checkpointing needs memory of its own, so a heap near the limit cannot be saved.
    results = run_session(
        [
            "kept = 'small'",
            "numbers = [str(i) for i in range(500_000)]\nlen(numbers)",
            "kept",
            "len(numbers)",
        ],
        limits=Limits(wall_seconds=20, memory_mb=64),
    )
    too_big = results[1]
    assert too_big.ok is False and too_big.value == "500000"
    assert "too large to keep within the 64 MB memory limit" in too_big.error
    assert results[2].value == "'small'"
    assert results[3].error == "NameError: name 'numbers' is not defined (line 1)"


def test_recursion_limit_raises_a_catchable_recursion_error():
    results = run_session(
        [
            "def down(n):\n    return down(n + 1)",
            "try:\n    down(0)\nexcept RecursionError:\n    caught = True\ncaught",
            "down(0)",
            "'session intact'",
        ],
        limits=Limits(wall_seconds=2, max_recursion=50),
    )
    assert results[1].value == "True"
    assert results[2].error.startswith("RecursionError: maximum recursion depth exceeded")
    assert results[3].value == "'session intact'"


def test_host_call_cap_stops_a_fork_bomb_through_callbacks():
    calls = []

    async def llm_query(prompt):
        calls.append(prompt)
        return "ok"

    results = run_session(
        [
            "kept = 1",
            "for i in range(10**9):\n    try:\n        llm_query(str(i))\n    except Exception:\n        pass",
            "kept",
        ],
        {"llm_query": llm_query},
        Limits(wall_seconds=10, max_host_calls=25),
    )
    stopped = results[1]
    assert stopped.ok is False and not stopped.timed_out
    assert "host call limit exceeded: more than 25 calls" in stopped.error
    assert len(calls) == 25 and stopped.host_calls == 26
    assert results[2].value == "1"


def test_oversized_arguments_fail_fast_without_calling_the_host():
    calls = []

    def llm_query_batched(prompts):
        calls.append(len(prompts))
        return ["ok"] * len(prompts)

    [result] = run_session(
        ["llm_query_batched(['x'] * 10**6)"],
        {"llm_query_batched": llm_query_batched},
        Limits(wall_seconds=10),
    )
    assert result.error.startswith(
        "ValueError: llm_query_batched(): arguments too large (over 1,000,000 bytes)"
    )
    assert calls == []


def test_unknown_functions_and_modules_are_clean_errors():
    results = run_session(["no_such_tool(1)", "import numpy", "import statistics"])
    assert results[0].error == "NameError: name 'no_such_tool' is not defined (line 1)"
    assert results[1].error == "ModuleNotFoundError: No module named 'numpy' (line 1)"
    assert results[2].error == "ModuleNotFoundError: No module named 'statistics' (line 1)"


def test_cancelling_a_run_keeps_the_repl_usable():
    async def scenario():
        async with Repl({}, limits=Limits(wall_seconds=30)) as repl:
            await repl.run("kept = 'yes'")
            task = asyncio.ensure_future(repl.run("while True:\n    pass"))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return await repl.run("kept")

    assert asyncio.run(scenario()).value == "'yes'"


def test_many_repls_run_concurrently_without_blocking_the_event_loop(child_processes):
    def blocking_lookup(n):
        threading.Event().wait(0.2)  # a slow synchronous store query
        return n

    async def llm_query(prompt):
        await asyncio.sleep(0.05)
        return prompt.upper()

    code = (
        "total = 0\nfor i in range(400_000):\n    total += i % 7\n(blocking_lookup(total), llm_query('done'))"
    )
    functions = {"blocking_lookup": blocking_lookup, "llm_query": llm_query}

    async def scenario():
        ticks = 0
        finished = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not finished.is_set():
                await asyncio.sleep(0.01)
                ticks += 1

        repls = [Repl(functions, limits=Limits(wall_seconds=60)) for _ in range(10)]
        ticking = asyncio.ensure_future(ticker())
        try:
            results = await asyncio.gather(*(repl.run(code) for repl in repls))
        finally:
            finished.set()
            await ticking
            await asyncio.gather(*(repl.aclose() for repl in repls))
        return results, ticks

    results, ticks = asyncio.run(scenario())
    expected = repr((sum(i % 7 for i in range(400_000)), "DONE"))
    assert [r.value for r in results] == [expected] * 10
    # Each run blocks 0.2 s in a host thread and computes for a while in its worker; a blocked
    # loop would have ticked a handful of times at most.
    assert ticks >= 20
    assert child_processes() == []


def test_describe_environment_lists_available_and_missing_modules():
    text = describe_environment(Limits(wall_seconds=12, max_host_calls=99))
    available_line = next(
        line for line in text.splitlines() if line.startswith("- Standard modules available")
    )
    missing_line = next(line for line in text.splitlines() if line.startswith("- Not available"))
    for module in ("collections", "json", "re", "itertools", "math"):
        assert module in available_line
    for module in ("numpy", "pandas", "statistics", "heapq"):
        assert module in missing_line
    assert "without await" in text and "12 s" in text and "99 host calls" in text
