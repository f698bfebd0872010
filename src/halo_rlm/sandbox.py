"""The `run_code` sandbox: a persistent Python REPL for model-written code, on pydantic-monty.

Model-written code is hostile by assumption. It runs in Monty, a Python subset interpreter with
no ambient access to files, network, environment or processes, inside a separate worker process.
The only way out is the host functions the caller injects (`traces`, `sql`, `llm_query`, ...);
the bridge here lets nothing but plain data (None, bool, int, float, str, list, tuple, dict)
cross in either direction, and turns host exceptions into catchable sandbox exceptions that carry
the message only.

    repl = Repl({"traces": store.traces, "llm_query": llm.query})
    result = await repl.run("rows = traces(status='error')\\nlen(rows)")
    await repl.aclose()

Monty features relied on (pydantic-monty 1.4.0):

* `AsyncMonty`, a pool of `monty` worker subprocesses, one pool of one worker per `Repl`;
  worker I/O runs off the event loop, so many Repls share one loop.
* `checkout(limits=...)`: a REPL session whose globals persist across feeds, with
  `max_memory`, `max_recursion_depth` and `max_suspensions`; `os_policy={'sleep': 'zero'}`
  so `time.sleep` cannot burn the wall-clock budget.
* `feed_start` + snapshot `resume`: every host call suspends the worker and we answer it
  ourselves, which is where calls are counted, arguments checked and values cleaned.
  Name lookups of host functions go through `resume_auto` with `external_lookup`, which binds
  a host-function reference (a name, not a host object); OS calls (open, os.getenv, imports of
  unknown modules) get `resume_not_handled`, Monty's default refusal.
* `session.dump()` / `load_session()`: the session is checkpointed after every healthy run,
  so a run that must be killed rolls the REPL back to the previous run instead of losing it.
* `print_callback`: printed text arrives in chunks of at most 8 KiB, so a bounded buffer can
  keep the head and tail of gigantic output.
* Cancelling an in-flight `resume` discards (kills) the worker: our wall-clock timeout.

Quirks of 1.4.0 that shaped this module:

* A memory-limit `MemoryError` (and Monty's own time limit) is uncatchable and leaves the heap
  untrusted: later feeds in that session keep failing. Such sessions are discarded.
* `max_suspensions` counts per checkout, not per feed, and the Python API has no "abort this
  feed", so the per-run host-call cap is enforced by discarding the worker.
* With `feed_run` an async host function must be `await`ed by sandbox code; answering
  snapshots ourselves makes every host function a plain call, as RLM code expects.
* `dump()` needs memory of its own inside the worker: with the heap near `max_memory` the
  worker is killed mid-dump. Such a run is reported as failed and rolled back.
* `load_session` restores the dumped session's limits and os_policy, not the checkout's.
* A sandbox object passed to a host function arrives as plain data or, for functions and other
  values Monty cannot convert, as its repr string; class instances arrive as `MontyClassProxy`.
* A process whose interpreter finalises right after an `AsyncMonty` call completes can abort
  (SIGABRT) when Monty's I/O thread re-takes the GIL; `aclose` waits a moment for it.
* The online docs describe other versions (`max_duration_secs`, "no str.format"); the
  module list in `describe_environment` is therefore probed at runtime.

A timeout, a memory-limit hit, the host-call cap or a worker crash resets the session:
variables, functions and imports go back to what they were after the previous run, and the
error tells the model that everything this run changed is lost. The price is a dump after every
run, proportional to the state kept (about 1.4 ms per 1,000 small dicts); a state whose dump
exceeds 64 MB is not kept, and a reset then starts empty and says so.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import functools
import inspect
import time
import warnings
from collections.abc import Callable
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field

try:
    import pydantic_monty as monty
except ImportError:  # reported by available()
    monty = None  # type: ignore[assignment]

# Monty refuses to disable its suspension cap; this one never binds (ours is per run).
_UNLIMITED_SUSPENSIONS = 2**63 - 1
# A checkpoint is a copy of the whole sandbox heap kept in host memory: cap it.
_CHECKPOINT_MAX_BYTES = 64 * 2**20
# Long enough for Monty's I/O thread to finish handing back its last result (see quirks).
_SETTLE_SECONDS = 0.02
# Plain data nested deeper than this is refused, which also keeps our walk off the host stack.
_MAX_NESTING = 100
# Error texts for the model: a message longer than this is cut.
_MAX_ERROR_MESSAGE = 2_000
# Host exception types the sandbox sees under their own name; everything else is a RuntimeError.
_SANDBOX_EXCEPTION_TYPES = frozenset(
    {
        "ArithmeticError",
        "IndexError",
        "KeyError",
        "LookupError",
        "NotImplementedError",
        "OverflowError",
        "RuntimeError",
        "TimeoutError",
        "TypeError",
        "ValueError",
        "ZeroDivisionError",
    }
)


class Limits(BaseModel):
    """Budgets for each `Repl.run` (memory is the sandbox heap at any moment)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    wall_seconds: float = Field(30, gt=0, description="wall-clock time of one run, host calls included")
    memory_mb: int = Field(256, gt=0, description="sandbox heap")
    max_output_bytes: int = Field(20_000, ge=100, description="printed output kept (head and tail)")
    max_recursion: int = Field(1_000, gt=0, description="Python call depth")
    max_host_calls: int = Field(1_000, ge=0, description="round trips to the host in one run")
    max_argument_bytes: int = Field(1_000_000, gt=0, description="approximate size of one call's arguments")


class CodeResult(BaseModel):
    """What one `Repl.run` did, ready to show to the model."""

    ok: bool
    stdout: str = ""
    value: str | None = Field(None, description="repr of a trailing expression, like a REPL")
    error: str | None = Field(None, description="'Type: message', short, without host traceback")
    timed_out: bool = False
    truncated: bool = Field(False, description="stdout or value was cut")
    duration_ms: int = 0
    host_calls: int = Field(
        0, description="round trips to the host: function calls, imports, refused OS calls"
    )


@functools.cache
def available() -> str | None:
    """None when the sandbox can run code here, else a one-line reason why not."""
    if monty is None:
        return "pydantic-monty is not installed (pip install pydantic-monty)"
    try:
        with monty.Monty(max_processes=1, request_timeout=10) as pool, pool.checkout() as session:
            answer = session.feed_run("6 * 7")
    except Exception as exc:  # noqa: BLE001 - whatever went wrong is the reason to report
        return f"the Monty sandbox worker failed to start: {exc}".splitlines()[0]
    return None if answer == 42 else f"the Monty sandbox worker answered 6 * 7 with {answer!r}"


def describe_environment(limits: Limits | None = None) -> str:
    """What the sandbox offers, for the system prompt: modules and language features probed in
    this backend at runtime, and the rules of the game (plain calls, plain data, limits)."""
    if (reason := available()) is not None:
        return f"No Python sandbox is available: {reason}."
    modules, gaps = _probe_environment()
    present = [name for name in modules if name not in _SYSTEM_MODULES]
    missing = [name for name in _WANTED_MODULES if name not in modules]
    lines = [
        (
            f"Python sandbox: Monty {monty.__version__}, a subset of Python 3 in an isolated worker process."
            " Variables, functions and imports persist from one run to the next."
        ),
        f"- Standard modules available: {', '.join(present)}.",
        f"- Not available: {', '.join(missing)}; use collections.Counter, sorted(), sum() and plain loops instead.",
        (
            "- No file system, network, environment variables, subprocesses or threads"
            f" ({', '.join(name for name in _SYSTEM_MODULES if name in modules)} exist but have nothing behind them)."
        ),
        (
            "- Reach data only through the provided functions. Call them like ordinary functions, without await;"
            " they take and return plain data: None, bool, int, float, str, list, tuple and dict."
        ),
    ]
    if gaps:
        lines.append(f"- Language gaps: {'; '.join(gaps)}.")
    limits = limits or Limits()
    lines.append(
        "- You see what the code prints and the repr of its last expression; long output keeps its head and tail."
        f" Each run may take {limits.wall_seconds:g} s, {limits.memory_mb} MB and {limits.max_host_calls} host calls;"
        " a run that exceeds them is stopped and the sandbox goes back to its state after the previous run."
    )
    return "\n".join(lines)


# Modules an analysis script might reach for, probed in the worker.
_WANTED_MODULES = (
    *("asyncio", "base64", "bisect", "collections", "copy", "csv", "dataclasses", "datetime", "decimal"),
    *("difflib", "enum", "fractions", "functools", "hashlib", "heapq", "io", "itertools", "json", "math"),
    *("operator", "pprint", "random", "re", "statistics", "string", "textwrap", "time", "typing"),
    *("unicodedata", "uuid", "numpy", "pandas"),
)
_SYSTEM_MODULES = ("os", "pathlib", "sys")
# Constructs Monty may not support, each with what the model should do instead.
_LANGUAGE_PROBES = {
    "class A:\n    pass\nclass B(A):\n    pass": "no class inheritance (so no custom exception classes)",
    "def g():\n    yield 1": "no generator functions (yield: build lists instead)",
    "x = 1\ndel x": "no del statement (use dict.pop() or reassign)",
    "class C:\n    @staticmethod\n    def f():\n        pass": "no @staticmethod, @classmethod or @property",
}


@functools.cache
def _probe_environment() -> tuple[list[str], list[str]]:
    """(importable modules, language gaps) of this Monty build."""
    modules, gaps = [], []
    with monty.Monty(max_processes=1, request_timeout=10) as pool, pool.checkout() as session:
        for name in sorted({*_WANTED_MODULES, *_SYSTEM_MODULES}):
            try:
                session.feed_run(f"import {name}")
                modules.append(name)
            except monty.MontyError:
                pass
        for probe, gap in _LANGUAGE_PROBES.items():
            try:
                session.feed_run(probe)
            except monty.MontyError:
                gaps.append(gap)
    return modules, gaps


class Repl:
    """One persistent sandboxed Python session: what one run defines, the next run sees.

    `functions` are the host functions sandbox code may call, by name, like ordinary functions
    (no `await`, even for coroutine functions). They receive and must return plain data.
    Sync functions run in a worker thread (`asyncio.to_thread`) so they never block the event
    loop; coroutine functions run on the caller's loop. One Repl serves one event loop, and
    its runs execute one at a time.
    """

    def __init__(
        self,
        functions: dict[str, Callable[..., Any]],
        *,
        limits: Limits = Limits(),  # noqa: B008 - frozen, so one shared default is safe
    ) -> None:
        for name, function in functions.items():
            if not (isinstance(name, str) and name.isidentifier() and not name.startswith("_")):
                raise ValueError(f"host function name {name!r} must be a public Python identifier")
            if not callable(function):
                raise TypeError(f"host function {name!r} is not callable")
        self.limits = limits
        self._functions = dict(functions)
        self._pool: Any = None
        self._session: Any = None
        self._checkpoint: bytes | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def run(self, code: str) -> CodeResult:
        """Run `code` in the session. Errors in the code come back in the result, never raised."""
        async with self._lock:
            started = time.monotonic()
            turn = _Turn(self.limits)
            try:
                if self._session is None:
                    await self._open_session()
                result = await self._run_turn(code, turn)
            except BaseException:
                # Cancelled by our caller mid-run: the worker may be mid-turn, so it cannot be kept;
                # the next run starts from the last checkpoint.
                await self._discard_session()
                raise
            return result.model_copy(
                update={
                    "stdout": turn.output.text(),
                    "truncated": result.truncated or turn.output.dropped > 0,
                    "host_calls": turn.host_calls,
                    "duration_ms": round((time.monotonic() - started) * 1000),
                }
            )

    async def aclose(self) -> None:
        """Stop the worker. The Repl can be used again afterwards, starting empty."""
        await self._discard_session()
        self._checkpoint = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.__aexit__(None, None, None)
            await asyncio.sleep(_SETTLE_SECONDS)

    async def _run_turn(self, code: str, turn: _Turn) -> CodeResult:
        wrapped = _show_trailing_expression(code, self.limits.max_output_bytes)
        try:
            try:
                async with asyncio.timeout(self.limits.wall_seconds):
                    output = await self._drive(wrapped or code, turn)
            except TimeoutError:
                reset = await self._reset()
                return CodeResult(
                    ok=False,
                    timed_out=True,
                    error=f"TimeoutError: timed out after {self.limits.wall_seconds:g}s. {reset}",
                )
        except _HostCallLimit:
            reset = await self._reset()
            return CodeResult(
                ok=False,
                error=f"RuntimeError: host call limit exceeded: more than {self.limits.max_host_calls} calls to the"
                f" host in one run; do fewer, larger calls (e.g. llm_query_batched). {reset}",
            )
        except monty.MontySyntaxError as exc:
            return CodeResult(ok=False, error=_describe_error(exc))
        except monty.MontyRuntimeError as exc:
            error = _describe_error(exc)
            if isinstance(exc.exception(), MemoryError):
                return CodeResult(ok=False, error=f"{error}. {await self._reset()}")
            return await self._keep_state(CodeResult(ok=False, error=error))
        except monty.MontyError as exc:  # the worker died (crash, protocol failure)
            reset = await self._reset()
            return CodeResult(ok=False, error=f"SandboxError: the sandbox process failed ({exc}). {reset}")
        value, truncated = _render_value(
            output, from_sandbox_repr=wrapped is not None, limit=self.limits.max_output_bytes
        )
        return await self._keep_state(CodeResult(ok=True, value=value, truncated=truncated))

    async def _keep_state(self, result: CodeResult) -> CodeResult:
        """Checkpoint the session after a run that left it healthy."""
        try:
            await self._save_checkpoint()
        except monty.MontyError:
            # Dumping needs memory of its own: with the heap near the limit the worker dies here.
            note = (
                f"MemoryError: the run finished, but its variables are too large to keep within the"
                f" {self.limits.memory_mb} MB memory limit. {await self._reset()}"
            )
            return result.model_copy(
                update={"ok": False, "error": f"{result.error}. {note}" if result.error else note}
            )
        return result

    async def _drive(self, code: str, turn: _Turn) -> Any:
        """Run one feed to completion, answering every host round trip ourselves."""
        snapshot = await self._session.feed_start(
            code, external_lookup=self._functions, print_callback=turn.output.write
        )
        while not isinstance(snapshot, monty.MontyComplete):
            turn.host_calls += 1
            if turn.host_calls > self.limits.max_host_calls:
                raise _HostCallLimit
            if isinstance(snapshot, monty.AsyncNameLookupSnapshot):
                # A host function used as a value (`f = traces`): bind Monty's reference to it by name.
                known = snapshot.variable_name in self._functions
                snapshot = await (snapshot.resume_auto() if known else snapshot.resume())
            elif isinstance(snapshot, monty.AsyncFunctionSnapshot) and snapshot.is_os_function:
                snapshot = await snapshot.resume_not_handled()
            elif isinstance(snapshot, monty.AsyncFunctionSnapshot):
                snapshot = await snapshot.resume(await self._call_host(snapshot))  # type: ignore[arg-type]
            else:
                # Futures only exist if a call is answered with one, which _call_host never does.
                raise AssertionError(f"unexpected Monty snapshot {snapshot!r}")
        return snapshot.output

    async def _call_host(self, snapshot: Any) -> dict[str, Any]:
        """Call the host function a snapshot asks for; the answer is plain data or an exception by name."""
        name = snapshot.function_name
        function = self._functions.get(name)
        if function is None:
            return {"exc_type": "NameError", "message": f"name {name!r} is not defined"}
        try:
            budget = _Budget(self.limits.max_argument_bytes)
            args = [_plain(arg, budget) for arg in snapshot.args]
            kwargs = {key: _plain(arg, budget) for key, arg in snapshot.kwargs.items()}
        except _NotPlain as exc:
            return {"exc_type": "TypeError", "message": f"{name}(): {exc}"}
        except _TooLarge:
            return {
                "exc_type": "ValueError",
                "message": f"{name}(): arguments too large (over {self.limits.max_argument_bytes:,} bytes);"
                " send less data per call",
            }
        try:
            if inspect.iscoroutinefunction(function):
                result = await function(*args, **kwargs)
            else:
                result = await asyncio.to_thread(function, *args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
        except Exception as exc:  # noqa: BLE001 - any host failure becomes a sandbox exception
            return _exception_for_sandbox(exc)
        try:
            return {"return_value": _plain(result)}
        except (_NotPlain, _TooLarge) as exc:
            return {
                "exc_type": "RuntimeError",
                "message": f"{name}() returned data the sandbox cannot take: {exc}",
            }

    async def _open_session(self) -> bool:
        """Check out a fresh worker, restored from the last checkpoint when there is one (then True)."""
        if self._pool is None:
            self._pool = monty.AsyncMonty(
                max_processes=1,
                # Backstop for a worker stuck outside a feed (a dump or load), where our timer is not running.
                request_timeout=self.limits.wall_seconds + 30,
            )
            await self._pool.__aenter__()
        session = self._pool.checkout(
            limits={
                "max_memory": self.limits.memory_mb * 2**20,
                "max_recursion_depth": self.limits.max_recursion,
                "max_suspensions": _UNLIMITED_SUSPENSIONS,
            },
            os_policy={"sleep": "zero"},
        )
        await session.__aenter__()
        self._session = session
        if self._checkpoint is None:
            await self._save_checkpoint()
            return False
        try:
            await session.load_session(self._checkpoint)
        except monty.MontyError:
            self._checkpoint = None
            await self._discard_session()
            return await self._open_session()
        return True

    async def _save_checkpoint(self) -> None:
        state = await self._session.dump()
        self._checkpoint = state if len(state) <= _CHECKPOINT_MAX_BYTES else None

    async def _reset(self) -> str:
        """Replace a session that cannot be trusted any more; returns what to tell the model."""
        await self._discard_session()
        if await self._open_session():
            return (
                "The sandbox was reset to its state after your previous run:"
                " everything this run defined or changed is lost."
            )
        return "The sandbox was reset and its state was lost: define your variables, functions and imports again."

    async def _discard_session(self) -> None:
        if self._session is None:
            return
        session, self._session = self._session, None
        try:
            await session.__aexit__(None, None, None)
        except (monty.MontyError, RuntimeError):
            pass  # the worker is already gone, which is what we wanted


class _HostCallLimit(Exception):
    """The run made more host calls than Limits.max_host_calls."""


class _NotPlain(TypeError):
    pass


class _TooLarge(ValueError):
    pass


class _Turn:
    """Per-run bookkeeping."""

    def __init__(self, limits: Limits) -> None:
        self.output = _Output(limits.max_output_bytes)
        self.host_calls = 0


class _Output:
    """Everything the sandbox printed (stdout and stderr), keeping only a head and a tail.

    Monty calls `write` from its own thread, one chunk of at most 8 KiB at a time.
    """

    def __init__(self, max_bytes: int) -> None:
        self._head_room = max_bytes // 2
        self._tail_room = max_bytes - self._head_room
        self._head = bytearray()
        self._tail = bytearray()
        self.dropped = 0

    def write(self, stream: str, text: str) -> None:
        data = text.encode()
        room = self._head_room - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        self._tail += data
        excess = len(self._tail) - self._tail_room
        if excess > 0:
            del self._tail[:excess]
            self.dropped += excess

    def text(self) -> str:
        if not self.dropped:
            return (self._head + self._tail).decode(errors="replace")
        # Cuts may split a UTF-8 sequence; drop the broken halves rather than show garbage.
        head = self._head.decode(errors="ignore")
        tail = self._tail.decode(errors="ignore")
        return f"{head}\n... [{self.dropped:,} bytes of output dropped] ...\n{tail}"


class _Budget:
    def __init__(self, max_bytes: int) -> None:
        self.left = max_bytes

    def spend(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise _TooLarge


def _plain(value: Any, budget: _Budget | None = None, depth: int = 0) -> Any:
    """Rebuild `value` from exact plain types (subclasses such as namedtuples or numpy floats are
    flattened); refuse anything else, so no object with behaviour crosses the boundary."""
    if depth > _MAX_NESTING:
        raise _NotPlain(f"data nested more than {_MAX_NESTING} levels deep")
    if budget is not None:
        budget.spend(len(value) + 8 if isinstance(value, str | list | tuple | dict) else 8)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, list | tuple):
        items = [_plain(item, budget, depth + 1) for item in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        plain = {}
        for key, item in value.items():
            if not (key is None or isinstance(key, str | int | float | tuple)):
                raise _NotPlain(
                    f"dict keys must be str, int, float, bool, tuple or None, not {_type_name(key)}"
                )
            plain[_plain(key, budget, depth + 1)] = _plain(item, budget, depth + 1)
        return plain
    raise _NotPlain(
        f"{_type_name(value)} cannot cross the sandbox boundary; use None, bool, int, float, str, list, tuple or dict"
    )


def _type_name(value: Any) -> str:
    # Monty's proxies stand for sandbox objects: name those, not the proxy class.
    if monty is not None and isinstance(value, monty.MontyClassProxy | monty.MontyStdTypeProxy):
        return repr(value.name)
    return repr(type(value).__name__)


def _exception_for_sandbox(exc: Exception) -> dict[str, str]:
    """A host exception as the sandbox will see it: a builtin type (the nearest one sandbox code
    can catch by name, else RuntimeError) and the message; never the object or its traceback."""
    exc_type = next(
        (
            cls.__name__
            for cls in type(exc).__mro__
            if cls.__name__ in _SANDBOX_EXCEPTION_TYPES and getattr(builtins, cls.__name__, None) is cls
        ),
        "RuntimeError",
    )
    # str(KeyError('k')) is "'k'", which the sandbox's KeyError would quote again.
    message = str(exc.args[0]) if isinstance(exc, KeyError) and len(exc.args) == 1 else str(exc)
    message = message or type(exc).__name__
    if len(message) > _MAX_ERROR_MESSAGE:
        message = message[:_MAX_ERROR_MESSAGE] + "..."
    return {"exc_type": exc_type, "message": message}


def _describe_error(exc: Any) -> str:
    """'Type: message (line N, in f)' from a Monty error: sandbox frames only, never the host's."""
    description = exc.display("type-msg")
    if len(description) > _MAX_ERROR_MESSAGE:
        description = description[:_MAX_ERROR_MESSAGE] + "..."
    frames = exc.traceback()
    if frames:
        frame = frames[-1]
        where = f"line {frame.line}"
        if frame.function_name and frame.function_name != "<module>":
            where += f", in {frame.function_name}"
        description += f" ({where})"
    return description


def _show_trailing_expression(code: str, limit: int) -> str | None:
    """`code` with its trailing expression `E` replaced by a repr of `E` computed in the sandbox,
    so the model sees the sandbox's own repr (custom `__repr__`, Counter, deque, ...). A repr
    longer than `limit` comes back as (length, head, tail), so it never crosses whole.

    Returns None when there is no trailing expression, or when the host's parser cannot read
    syntax that Monty accepts (newer Python); the value is then rendered on the host instead.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. SyntaxWarning for "\d" in a regex string
            tree = ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError):  # hostile nesting included
        return None
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return None
    node = tree.body[-1].value
    source = code.encode()
    line_starts = [0]
    for line in source.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))
    # ast columns are UTF-8 byte offsets.
    assert node.end_lineno is not None and node.end_col_offset is not None  # parsed from source: set
    start = line_starts[node.lineno - 1] + node.col_offset
    end = line_starts[node.end_lineno - 1] + node.end_col_offset
    head = limit // 2
    # Only lambda parameters, `!r` and str methods: sandbox code may have rebound `repr` or `len`.
    # `r[limit:]` is empty exactly when the repr fits; `r.count('') - 1` is its length.
    shown = (
        f"(lambda v: (lambda r: r if not r[{limit}:] else (r.count('') - 1, r[:{head}], r[-{limit - head}:]))"
        f"(f'{{v!r}}'))(({source[start:end].decode()}))"
    )
    return source[:start].decode() + shown + source[end:].decode()


def _render_value(output: Any, *, from_sandbox_repr: bool, limit: int) -> tuple[str | None, bool]:
    """The REPL display of a run's value and whether it was cut; None shows nothing, like a REPL."""
    match output:
        case str() if from_sandbox_repr:
            text = output
        case (int() as length, str() as head, str() as tail) if from_sandbox_repr:
            return f"{head}\n... [{length - len(head) - len(tail):,} characters dropped] ...\n{tail}", True
        case None:
            return None, False
        case monty.MontyClassProxy():
            text = f"<{output.name} object>"
        case monty.MontyStdTypeProxy():
            text = f"<built-in {output.kind} {output.name}>"
        case _:  # rendered on the host; also when sandbox code rebound repr or len
            text = repr(output)
    if text == "None":
        return None, False
    if len(text) <= limit:
        return text, False
    half = limit // 2
    return (
        f"{text[:half]}\n... [{len(text) - limit:,} characters dropped] ...\n{text[-(limit - half) :]}",
        True,
    )
