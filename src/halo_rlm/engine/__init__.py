"""The RLM engine: a root agent explores a trace store far too large for its context through tools,
delegates focused questions to sub-agents that recurse, and finishes with a ranked, evidence-backed
report. HALO's six entry points, sync and async, streaming or not:

    stream_engine_async / stream_engine        every event (items and text deltas)
    stream_engine_output_async / stream_engine_output    completed items only
    run_engine_async / run_engine              all items once the run is over

Modules: `config` (EngineConfig), `events` (what a run streams, and `RunView`), `run` (the agent loop
and entry points), `budget` (tokens, cost, time and turns, held before each call), `window` (fitting
requests into the model's context window), `tools` and `code` (what agents call), `prompts`,
`telemetry`.
"""

from typing import TYPE_CHECKING, Any

from halo_rlm.engine.config import DEFAULT_MODEL, DEFAULT_PROMPT, EngineConfig
from halo_rlm.engine.events import (
    AgentMessage,
    AgentOutputItem,
    AgentStatus,
    AgentTextDelta,
    AgentView,
    EngineError,
    EngineEvent,
    RunView,
    ToolCallItem,
    TurnUsage,
)

if TYPE_CHECKING:
    from halo_rlm.engine.run import (
        Messages,
        run_engine,
        run_engine_async,
        stream_engine,
        stream_engine_async,
        stream_engine_output,
        stream_engine_output_async,
    )


# The agent loop and its entry points load the `openai` client (about 25 MB and a quarter of a second):
# loaded when first used, so what only needs the engine's types and events (the web app's pages, the
# CLI's live view) starts without it. A name of `__all__` not bound above is one of `engine.run`'s.
def __getattr__(name: str) -> Any:
    if name in __all__:
        from halo_rlm.engine import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PROMPT",
    "AgentMessage",
    "AgentOutputItem",
    "AgentStatus",
    "AgentTextDelta",
    "AgentView",
    "EngineConfig",
    "EngineError",
    "EngineEvent",
    "Messages",
    "RunView",
    "ToolCallItem",
    "TurnUsage",
    "run_engine",
    "run_engine_async",
    "stream_engine",
    "stream_engine_async",
    "stream_engine_output",
    "stream_engine_output_async",
]
