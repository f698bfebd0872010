"""The support agent: its instructions (prompt.md) and tools (tools.py) on the OpenAI Agents SDK."""

from __future__ import annotations

from pathlib import Path

from agents import Agent, OpenAIChatCompletionsModel
from openai import AsyncOpenAI
from tools import TOOLS

HERE = Path(__file__).resolve().parent


def build_agent(client: AsyncOpenAI, model: str) -> Agent:
    # Chat Completions, not the Responses API the SDK defaults to, so any compatible server works.
    return Agent(
        name="SupportAgent",
        instructions=(HERE / "prompt.md").read_text(encoding="utf-8"),
        tools=TOOLS,
        model=OpenAIChatCompletionsModel(model=model, openai_client=client),
    )
