"""What model calls consume, in one type: `Usage` (calls, tokens, cost) adds up from one call to a
turn, an agent, a model and a whole run. The LLM client, the engine's events and the report all use it."""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["Usage"]


class Usage(BaseModel):
    """Calls, tokens and cost. `cost_usd` is None when no price is known for a model used."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = Field(0, description="Input tokens served from the provider's prompt cache")
    reasoning_tokens: int = Field(0, description="Output tokens spent on reasoning")
    cost_usd: float | None = 0.0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        cost = (
            None
            if self.cost_usd is None and other.cost_usd is None
            else (self.cost_usd or 0.0) + (other.cost_usd or 0.0)
        )
        return Usage(
            calls=self.calls + other.calls,
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            cost_usd=cost,
        )

    def add(self, other: Usage) -> None:
        """Add `other` into this usage, in place (a running total)."""
        total = self + other
        for name in Usage.model_fields:
            setattr(self, name, getattr(total, name))
