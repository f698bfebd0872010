"""What a run reports as it goes: the events the entry points stream (completed items and text
deltas, each with the lineage of the agent that produced it), how an agent ended, a tool call's
outcome, and `RunView`, which folds the events into a tree of agents (state, current tool, turns,
tokens, cost) — the model the terminal's live view and the web app both render."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from halo_rlm.report import Report
from halo_rlm.usage import Usage

__all__ = [
    "AgentMessage",
    "AgentOutputItem",
    "AgentStatus",
    "AgentTextDelta",
    "AgentView",
    "EngineError",
    "EngineEvent",
    "Lineage",
    "RunView",
    "ToolCallItem",
    "ToolOutcome",
    "TurnUsage",
]

# How an agent's loop ended (`running` until it does). `partial`: a budget or the turn limit ran out
# and it returned what it had, as asked.
AgentStatus = Literal["running", "done", "partial", "refused", "failed", "no final answer"]
FAILED: frozenset[AgentStatus] = frozenset({"failed", "refused", "no final answer"})


class EngineError(Exception):
    """A run that cannot start or go on (bad config, no traces, provider refusing the key...)."""


class ToolCallItem(BaseModel):
    id: str
    name: str
    arguments: str


class AgentMessage(BaseModel):
    """A chat message, as the model sees it."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCallItem] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class TurnUsage(Usage):
    """What one model call used, and which model answered."""

    model: str


class Lineage(BaseModel):
    sequence: int
    agent_id: str
    parent_agent_id: str | None
    parent_tool_call_id: str | None
    agent_name: str
    depth: int


class AgentOutputItem(Lineage):
    """One completed step: an assistant message, one tool call, one tool result, or (final=True) the
    root's report, which then carries the `Report`."""

    item: AgentMessage
    final: bool = False
    usage: TurnUsage | None = None
    report: Report | None = None
    # On the final item: the root agent's whole conversation (Chat Completions messages), so a follow-up
    # question can continue it (`halo ask`).
    conversation: list[dict[str, Any]] | None = None


class AgentTextDelta(Lineage):
    """Text as it streams in. A retried model call streams again with a higher `attempt`."""

    text_delta: str
    attempt: int = 0


EngineEvent = AgentOutputItem | AgentTextDelta


@dataclass(frozen=True)
class ToolOutcome:
    """What a tool call gave back to the model: its result, or (`failed`) an error it can act on."""

    content: str
    failed: bool = False

    @property
    def text(self) -> str:
        """What the model reads: a failed call's message is marked as an error it can act on."""
        return f"ERROR: {self.content}" if self.failed else self.content


# --- the run as a tree of agents -------------------------------------------------------------------

Activity = Literal["thinking", "writing", "tool", "done"]


@dataclass
class AgentView:
    """One agent as the events show it: what it is doing now and what it has used."""

    agent_id: str
    name: str
    parent_id: str | None
    depth: int
    activity: Activity = "thinking"
    tool: str | None = None  # the tool it is waiting on
    turns: int = 0
    tool_calls: int = 0
    usage: Usage = field(default_factory=Usage)
    text: str = ""  # the text streamed in its current turn


@dataclass
class RunView:
    """A run folded from its events, in the order agents first appeared (children after parents)."""

    agents: dict[str, AgentView] = field(default_factory=dict)
    report: Report | None = None

    def update(self, event: EngineEvent) -> AgentView:
        agent = self.agents.get(event.agent_id)
        if agent is None:
            agent = self.agents[event.agent_id] = AgentView(
                event.agent_id, event.agent_name, event.parent_agent_id, event.depth
            )
        if isinstance(event, AgentTextDelta):
            agent.activity = "writing"
            agent.text += event.text_delta
            return agent
        if event.usage:
            agent.usage.add(event.usage)
            agent.turns += 1
        item = event.item
        if item.tool_calls:
            agent.tool, agent.activity = item.tool_calls[0].name, "tool"
            agent.tool_calls += 1
            agent.text = ""
        elif item.role == "tool":
            agent.activity, agent.tool = "thinking", None
            if item.name == "call_subagent":
                child = next(
                    (
                        a
                        for a in self.agents.values()
                        if a.parent_id == agent.agent_id and a.activity != "done"
                    ),
                    None,
                )
                if child is not None:
                    child.activity = "done"
        elif item.role == "assistant":
            agent.text = ""
        if event.final:
            agent.activity = "done"
            self.report = event.report
        return agent

    @property
    def usage(self) -> Usage:
        return sum((a.usage for a in self.agents.values()), Usage())

    def summary(self) -> str:
        """One line: agents, model turns, tokens, cost."""
        usage = self.usage
        turns = sum(a.turns for a in self.agents.values())
        return f"{len(self.agents)} agents, {turns} model turns, {usage.tokens:,} tokens, ${usage.cost_usd or 0:.4f}"
