"""Hostile code: every attempt to reach the host must fail cleanly or do nothing harmful.

Each case runs in its own Repl with small limits and must end with ok=False and a clear
error (or a harmless result). The last test checks that the host survived all of them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile

import pytest

from halo_rlm.sandbox import Limits, Repl

SECRET = "sk-canary-do-not-leak-4f1b"
CANARY_TEXT = "canary file contents 9c2e"
CANARY_DIR = tempfile.mkdtemp(prefix="halo-sandbox-canary-")
CANARY_FILE = os.path.join(CANARY_DIR, "secret.txt")
WRITE_TARGET = os.path.join(CANARY_DIR, "created-by-sandbox.txt")
# Long enough to move 100 MB of printed output through the print callback.
LIMITS = Limits(wall_seconds=5, memory_mb=128, max_host_calls=50)
HOST_CALLS: list[str] = []


def traces(*args, **kwargs):
    HOST_CALLS.append("traces")
    return [{"trace_id": "t1", "args": list(args), "kwargs": kwargs}]


async def llm_query(prompt):
    HOST_CALLS.append("llm_query")
    return "an answer"


async def llm_query_batched(prompts):
    HOST_CALLS.append("llm_query_batched")
    return ["an answer"] * len(prompts)


def leak():
    HOST_CALLS.append("leak")
    return os  # a careless host function: the bridge must refuse to pass a module in


class HostOnlyError(Exception):
    pass


def fail():
    HOST_CALLS.append("fail")
    raise HostOnlyError("store unavailable")


FUNCTIONS = {
    "traces": traces,
    "llm_query": llm_query,
    "llm_query_batched": llm_query_batched,
    "leak": leak,
    "fail": fail,
}

REFUSED = "cannot cross the sandbox boundary"

# (code, part of the expected error or None for a harmless result, expected value or None)
ESCAPES = [
    # The file system.
    pytest.param("open('/etc/passwd').read()", "PermissionError", None, id="open-etc-passwd"),
    pytest.param(
        f"open({WRITE_TARGET!r}, 'w').write('pwned')", "PermissionError", None, id="open-write-outside"
    ),
    pytest.param(
        "open('/tmp/halo-escape.txt', 'w').write('pwned')", "PermissionError", None, id="open-write-tmp"
    ),
    pytest.param(f"open({CANARY_FILE!r}).read()", "PermissionError", None, id="read-canary-file"),
    pytest.param("open('/proc/self/environ').read()", "PermissionError", None, id="read-proc-self-environ"),
    pytest.param(
        "import pathlib\npathlib.Path('/etc/passwd').read_text()",
        "PermissionError",
        None,
        id="pathlib-read-text",
    ),
    pytest.param(
        "import pathlib\nlist(pathlib.Path('/').iterdir())", "PermissionError", None, id="pathlib-list-root"
    ),
    pytest.param("import os\nos.listdir('/')", "PermissionError", None, id="os-listdir-root"),
    pytest.param("import os\nos.remove('/etc/hosts')", "PermissionError", None, id="os-remove-file"),
    pytest.param("import io\nio.open('/etc/passwd')", "ModuleNotFoundError", None, id="io-open"),
    pytest.param("import os\nos.open('/etc/passwd', 0)", "AttributeError", None, id="os-open-fd"),
    # The environment.
    pytest.param("import os\nos.environ['OPENAI_API_KEY']", "not supported", None, id="os-environ"),
    pytest.param("import os\nos.getenv('OPENAI_API_KEY')", "not supported", None, id="os-getenv-api-key"),
    pytest.param(
        "exec(\"import os\\nkey = os.getenv('OPENAI_API_KEY')\")", "not supported", None, id="exec-getenv"
    ),
    # Processes, sockets, native code, threads, signals.
    pytest.param("import os\nos.system('touch /tmp/halo-escape')", "AttributeError", None, id="os-system"),
    pytest.param("import subprocess", "ModuleNotFoundError", None, id="import-subprocess"),
    pytest.param("import socket", "ModuleNotFoundError", None, id="import-socket"),
    pytest.param("import ctypes", "ModuleNotFoundError", None, id="import-ctypes"),
    pytest.param("import threading", "ModuleNotFoundError", None, id="import-threading"),
    pytest.param("import multiprocessing", "ModuleNotFoundError", None, id="import-multiprocessing"),
    pytest.param("import signal", "ModuleNotFoundError", None, id="import-signal"),
    pytest.param("import sys\nsys.exit(1)", "AttributeError", None, id="sys-exit"),
    # The import machinery and builtins.
    pytest.param("import sys\nsys.modules", "AttributeError", None, id="sys-modules"),
    pytest.param("import importlib", "ModuleNotFoundError", None, id="import-importlib"),
    pytest.param("import builtins", "ModuleNotFoundError", None, id="import-builtins"),
    pytest.param("__import__('os')", "NameError", None, id="dunder-import"),
    pytest.param("__builtins__", "NameError", None, id="dunder-builtins"),
    pytest.param("eval(\"__import__('os')\")", "NameError", None, id="eval-dunder-import"),
    pytest.param("compile('1', 'x', 'eval')", "NameError", None, id="compile"),
    pytest.param("breakpoint()", "NameError", None, id="breakpoint"),
    pytest.param("input()", "NameError", None, id="input"),
    # Introspection walks toward host objects.
    pytest.param(
        "().__class__.__bases__[0].__subclasses__()", "AttributeError", None, id="tuple-class-subclasses"
    ),
    pytest.param("getattr(type, '__subclasses__')", "AttributeError", None, id="getattr-type-subclasses"),
    pytest.param("object.__subclasses__()", "AttributeError", None, id="object-subclasses"),
    pytest.param("globals()", "NameError", None, id="globals"),
    pytest.param("vars(traces)", "NameError", None, id="vars-of-host-function"),
    pytest.param("locals()", None, "{}", id="locals-holds-only-sandbox-names"),
    pytest.param("traces.__globals__", "AttributeError", None, id="host-function-globals"),
    pytest.param("traces.__closure__", "AttributeError", None, id="host-function-closure"),
    pytest.param("traces.__code__", "AttributeError", None, id="host-function-code"),
    pytest.param("llm_query.__self__", "AttributeError", None, id="host-function-self"),
    pytest.param("type(traces).__dict__", "AttributeError", None, id="host-function-type-dict"),
    pytest.param(
        "try:\n    fail()\nexcept Exception as e:\n    e.__traceback__",
        "AttributeError",
        None,
        id="host-exception-traceback",
    ),
    pytest.param(
        "try:\n    fail()\nexcept Exception as e:\n    found = (type(e).__name__, e.args)\nfound",
        None,
        "('RuntimeError', ('store unavailable',))",
        id="host-exception-is-message-only",
    ),
    # Host objects crossing the bridge.
    pytest.param("leak()", REFUSED, None, id="host-returns-a-module"),
    pytest.param("traces(type)", REFUSED, None, id="pass-type-to-host"),
    pytest.param("class Spy:\n    pass\ntraces(Spy())", REFUSED, None, id="pass-object-to-host"),
    # Monty hands a sandbox function over as its repr string: inert data.
    pytest.param(
        "traces(callback=lambda: 1)[0]['kwargs']['callback'][:20]",
        None,
        "\"<function '<lambda>'\"",
        id="pass-function-to-host-arrives-as-text",
    ),
    pytest.param(
        "inner = []\nfor i in range(10_000):\n    inner = [inner]\ntraces(inner)",
        "nested",
        None,
        id="pass-deep-nesting",
    ),
    # Resource exhaustion.
    pytest.param("while True:\n    pass", "timed out after 5s", None, id="infinite-loop"),
    pytest.param("'x' * 10**10", "MemoryError", None, id="memory-bomb-string"),
    pytest.param(
        "grow = []\nwhile True:\n    grow.append('x' * 10**6)", "MemoryError", None, id="memory-bomb-list"
    ),
    pytest.param("def f():\n    return f()\nf()", "RecursionError", None, id="recursion-bomb"),
    pytest.param("1" + "+1" * 10**5, "SyntaxError", None, id="parser-nesting-bomb"),
    pytest.param("import time\ntime.sleep(10**6)\n'woke'", None, "'woke'", id="sleep-forever-is-skipped"),
    pytest.param("raise ValueError('x' * 10**7)", "ValueError: xxx", None, id="gigantic-error-message"),
    pytest.param("print('x' * 10**8)", None, None, id="gigantic-output"),
    pytest.param(
        "for i in range(10**9):\n    llm_query('again')",
        "host call limit exceeded",
        None,
        id="fork-bomb-via-callbacks",
    ),
    pytest.param("llm_query_batched(['x'] * 10**6)", "arguments too large", None, id="huge-batched-argument"),
    pytest.param(
        "def prompts():\n    while True:\n        pass\nllm_query_batched(prompts())",
        "timed out",
        None,
        id="infinite-loop-building-host-argument",
    ),
]


@pytest.fixture(scope="module", autouse=True)
def host_state():
    """A secret in the environment, a canary file on disk, and the host's state before the attacks."""
    previous = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = SECRET
    with open(CANARY_FILE, "w") as canary:
        canary.write(CANARY_TEXT)
    asyncio.run(_attempt("1"))  # warm up Monty's runtime threads before counting threads
    state = {"env": _environment(), "threads": _thread_count()}
    yield state
    if previous is None:
        del os.environ["OPENAI_API_KEY"]
    else:
        os.environ["OPENAI_API_KEY"] = previous
    shutil.rmtree(CANARY_DIR)


async def _attempt(code: str):
    async with Repl(FUNCTIONS, limits=LIMITS) as repl:
        return await repl.run(code)


@pytest.mark.parametrize(("code", "error", "value"), ESCAPES)
def test_escape_attempt_is_contained(code, error, value):
    HOST_CALLS.clear()
    result = asyncio.run(_attempt(code))
    if error is None:
        assert result.ok, result.error
        if value is not None:
            assert result.value == value
    else:
        assert result.ok is False
        assert error in result.error
    shown = f"{result.stdout} {result.value} {result.error}"
    assert SECRET not in shown and CANARY_TEXT not in shown
    assert len(HOST_CALLS) <= LIMITS.max_host_calls
    assert len(result.stdout) <= LIMITS.max_output_bytes + 100
    assert len(result.error or "") < 3_000


def test_there_are_at_least_thirty_escape_attempts():
    assert len(ESCAPES) >= 30


def test_host_is_healthy_after_the_escape_attempts(host_state, child_processes):
    result = asyncio.run(_attempt("sum(range(10))"))
    assert result.ok and result.value == "45"
    assert _environment() == host_state["env"]
    with open(CANARY_FILE) as canary:
        assert canary.read() == CANARY_TEXT
    assert not os.path.exists(WRITE_TARGET)
    assert not os.path.exists("/tmp/halo-escape.txt") and not os.path.exists("/tmp/halo-escape")
    assert child_processes() == []
    # Monty's runtime and asyncio's executor keep a few pooled threads; attempts must not add up.
    assert _thread_count() <= host_state["threads"] + 8


def _environment() -> dict[str, str]:
    # Leave out what the test harness itself changes from test to test.
    harness = {"PYTEST_CURRENT_TEST", "HALO_CACHE_DIR"}
    return {name: value for name, value in os.environ.items() if name not in harness}


def _thread_count() -> int:
    return len(os.listdir("/proc/self/task"))
