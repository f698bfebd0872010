"""Fitting a run into the model's context window.

A 8k-token local model cannot take what a 400k-token hosted one can: HALO's full prompts and tool
definitions alone are ~8,000 tokens. Given the window (from `--context-window`, or as the server
states it), `plan` sizes everything a request is made of: whether to use the compact prompts and
tools (when the full ones would take over a fifth of the window), the reply cap, how long a
conversation may grow before it is compacted, and how many bytes one tool result may take.
"""

from __future__ import annotations

from dataclasses import dataclass

from halo_rlm.engine.config import EngineConfig
from halo_rlm.engine.events import EngineError
from halo_rlm.llm import CHARS_PER_TOKEN

__all__ = ["CONTEXT_TOKENS", "DEFAULT_REPLY_TOKENS", "Overhead", "Window", "plan", "reply_tokens"]

DEFAULT_REPLY_TOKENS = 16_384  # a reply's cap when nothing smaller is asked for or needed
REASONING_REPLY_TOKENS = 32_768  # the same with high reasoning effort: reasoning tokens count as output
CONTEXT_TOKENS = 96_000  # conversation tokens before compaction, when the window leaves more
COMPACT_SHARE = 0.2  # full prompts and tools taking more of the window than this: compact mode
SAFETY_SHARE = 0.05  # of the window, kept free for estimation error and the chat template's tokens
MIN_CONVERSATION = 512  # tokens a conversation needs beyond its system prompt to be worth starting
RESULT_SHARE = 0.3  # of the conversation's room, for one tool result


@dataclass(frozen=True)
class Overhead:
    """What every request of the root agent carries, in tokens: its system prompt and tool definitions."""

    system: int
    tools: int

    @property
    def total(self) -> int:
        return self.system + self.tools


@dataclass(frozen=True)
class Window:
    """How a run's requests are sized. `tokens` is None when the window is unknown."""

    tokens: int | None
    source: str
    compact: bool
    reply_tokens: int  # the default cap of one reply (`max_tokens`)
    context_tokens: int  # conversation tokens (system prompt included) before compaction
    result_bytes: int  # most bytes one tool result may take

    @property
    def margin(self) -> int:
        return int((self.tokens or 0) * SAFETY_SHARE)

    def describe(self, tools_offered: int, tools_known: int) -> str:
        """What the report says about the window and how the run was fitted into it."""
        head = (
            f"Context window: {self.tokens:,} tokens ({self.source})."
            if self.tokens is not None
            else "Context window: unknown (the server does not say; --context-window sets it)."
        )
        sizes = (
            f"replies up to {self.reply_tokens:,} tokens, tool results up to {self.result_bytes:,} bytes, "
            f"conversations compacted past {self.context_tokens:,} tokens"
        )
        if not self.compact:
            return f"{head} Full prompts and tools; {sizes}."
        return (
            f"{head} Compact mode for this window: {tools_offered} of {tools_known} tools with short "
            f"descriptions, the trace filters described once in the system prompt, shorter prompts; {sizes}."
        )


def reply_tokens(config: EngineConfig, window: int | None) -> int:
    """A reply's cap: --max-output-tokens, else a default (larger with high reasoning effort, whose
    reasoning counts as output), at most a quarter of a known window."""
    if config.max_output_tokens:
        return config.max_output_tokens
    ceiling = REASONING_REPLY_TOKENS if config.reasoning_effort in ("high", "xhigh") else DEFAULT_REPLY_TOKENS
    return ceiling if window is None else min(ceiling, max(512, window // 4))


def plan(
    config: EngineConfig, tokens: int | None, source: str, *, full: Overhead, compact: Overhead
) -> Window:
    """The sizes for a window of `tokens` (None: unknown, so the configured or default sizes).
    Raises `EngineError` when even the compact prompts leave no room for a conversation."""
    if tokens is None:
        return Window(
            None,
            "",
            bool(config.compact),
            reply_tokens(config, None),
            config.context_tokens or CONTEXT_TOKENS,
            config.tool_result_bytes,
        )
    use_compact = config.compact if config.compact is not None else full.total > COMPACT_SHARE * tokens
    overhead = compact if use_compact else full
    reply = reply_tokens(config, tokens)
    room = tokens - reply - overhead.tools - int(tokens * SAFETY_SHARE)
    if room - overhead.system < MIN_CONVERSATION:
        needed = overhead.total + reply + MIN_CONVERSATION * 4
        raise EngineError(
            f"the model's context window ({tokens:,} tokens, {source}) is too small to analyse traces: the "
            f"{'compact ' if use_compact else ''}prompt and tools take about {overhead.total:,} tokens and a "
            f"reply {reply:,}. Give the model at least {needed:,} tokens of context (llama-server -c, "
            "Ollama num_ctx or OLLAMA_CONTEXT_LENGTH, vLLM --max-model-len) and pass --context-window."
        )
    context = min(room, config.context_tokens or CONTEXT_TOKENS)
    result_bytes = int((context - overhead.system) * RESULT_SHARE * CHARS_PER_TOKEN)
    return Window(
        tokens,
        source,
        use_compact,
        reply,
        context,
        max(1_000, min(config.tool_result_bytes, result_bytes)),
    )
