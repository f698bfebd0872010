"""A run's budgets — tokens, cost, wall clock, and turns per agent — held before each model call, not
noticed after it.

Before a call the engine estimates its input; `Budget.reply_room` says how many output tokens the
remaining token and cost budgets allow (leaving, when asked, room for one more call to finish with),
and a call that cannot get a useful reply is not made: the agent is told to finish instead. While a
call runs, its largest possible use is reserved, so agents calling at once cannot together overshoot;
the reply is capped at the room (`max_tokens`), so totals stay within the budget up to the estimate's
error. What ran out first and what was cut because of it end up in the report (`Budget.report`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from halo_rlm.pricing import Price
from halo_rlm.report import BudgetName, Budgets, BudgetUse

__all__ = ["FINISH_SHARE", "WORDS", "Budget"]

FINISH_SHARE = 0.85  # past this share of a budget, agents are told to finish
MAX_CUT_LINES = 20  # lines the report lists under "cut"; more are counted

WORDS: dict[BudgetName, str] = {
    "tokens": "token budget",
    "cost_usd": "cost budget",
    "seconds": "time budget",
    "turns": "turn limit",
}


@dataclass
class Budget:
    """Run-wide limits shared by every agent; retries and sub-agents all draw on them."""

    max_tokens: int | None = None
    max_cost: float | None = None
    deadline: float | None = None  # time.monotonic()
    started: float = field(default_factory=time.monotonic)
    tokens: int = 0
    cost: float = 0.0
    reserved_tokens: int = 0  # by calls under way: their input and their largest reply
    reserved_cost: float = 0.0
    ended_by: BudgetName | None = None  # the first budget that stopped or cut anything
    cut: list[str] = field(default_factory=list)
    uncounted_cuts: int = 0

    # --- before a call ---------------------------------------------------------------------------

    def reply_room(
        self, input_tokens: int, price: Price | None, *, then: tuple[int, int] = (0, 0)
    ) -> tuple[int | None, BudgetName | None]:
        """Output tokens a call of `input_tokens` may take, leaving `then` (the input and output
        tokens of one more call) within the token and cost budgets; None when neither limits it. With
        it, the name of the budget that limits it. The cost budget counts only when `price` is known."""
        rooms: list[tuple[int, BudgetName]] = []
        if self.max_tokens is not None:
            left = self.max_tokens - self.tokens - self.reserved_tokens
            rooms.append((left - input_tokens - then[0] - then[1], "tokens"))
        if self.max_cost is not None and price is not None and price.output > 0:
            per_input, per_output = price.input / 1e6, price.output / 1e6
            left_cost = self.max_cost - self.cost - self.reserved_cost
            spare = left_cost - (input_tokens + then[0]) * per_input - then[1] * per_output
            rooms.append((int(spare / per_output), "cost_usd"))
        if not rooms:
            return None, None
        room, name = min(rooms)
        return room, name

    @contextmanager
    def reserve(self, tokens: int, cost: float) -> Iterator[None]:
        """Hold `tokens` and `cost` for a call under way, so calls made meanwhile see less room."""
        self.reserved_tokens += tokens
        self.reserved_cost += cost
        try:
            yield
        finally:
            self.reserved_tokens -= tokens
            self.reserved_cost -= cost

    def spend(self, tokens: int, cost: float) -> None:
        self.tokens += tokens
        self.cost += cost

    # --- how much is left ------------------------------------------------------------------------

    def shares(self) -> list[float]:
        used = []
        if self.max_tokens:
            used.append(self.tokens / self.max_tokens)
        if self.max_cost:
            used.append(self.cost / self.max_cost)
        if self.deadline:
            used.append((time.monotonic() - self.started) / (self.deadline - self.started))
        return used

    def exhausted(self) -> str | None:
        """Why the budgets allow no more work: a limit reached, or a run-wide budget that already
        refused a call (what is left covers no useful one); None while work can go on."""
        if reason := self.used_up():
            return reason
        if self.ended_by in ("tokens", "cost_usd", "seconds"):
            return f"the {WORDS[self.ended_by]} does not cover another model call"
        return None

    def used_up(self) -> str | None:
        """Which limit is reached, in words, or None."""
        if self.max_tokens and self.tokens >= self.max_tokens:
            self.stopped_by("tokens")
            return f"the token budget ({self.max_tokens:,}) is used up"
        if self.max_cost and self.cost >= self.max_cost:
            self.stopped_by("cost_usd")
            return f"the cost budget (${self.max_cost:g}) is used up"
        if self.deadline and time.monotonic() >= self.deadline:
            self.stopped_by("seconds")
            return "the time budget is used up"
        return None

    def nearly_exhausted(self) -> str | None:
        """Which budget is nearly spent (past `FINISH_SHARE`), in words, or None."""
        if self.max_tokens and self.tokens >= FINISH_SHARE * self.max_tokens:
            return f"the token budget is nearly spent ({self.tokens:,} of {self.max_tokens:,})"
        if self.max_cost and self.cost >= FINISH_SHARE * self.max_cost:
            return f"the cost budget is nearly spent (${self.cost:.4f} of ${self.max_cost:g})"
        if self.deadline and time.monotonic() - self.started >= FINISH_SHARE * (self.deadline - self.started):
            return f"the time budget is nearly spent ({self.seconds_left():.0f}s left)"
        return None

    def seconds_left(self) -> float:
        return max(0.0, (self.deadline or 0.0) - time.monotonic())

    def left(self) -> str:
        """What is left of the run-wide budgets, in words ("" when there are none)."""
        parts = []
        if self.deadline:
            parts.append(f"{self.seconds_left():,.0f} s")
        if self.max_tokens:
            parts.append(f"{max(0, self.max_tokens - self.tokens):,} tokens")
        if self.max_cost:
            parts.append(f"${max(0.0, self.max_cost - self.cost):.4f}")
        if not parts:
            return ""
        listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"{listed} left for the whole run"

    def summary(self, max_turns: int) -> str:
        """The budgets as a system prompt states them."""
        limits = []
        if self.deadline:
            limits.append(f"{self.deadline - self.started:,.0f} s")
        if self.max_tokens:
            limits.append(f"{self.max_tokens:,} tokens")
        if self.max_cost:
            limits.append(f"${self.max_cost:g}")
        run_wide = f"; {', '.join(limits)} for the whole run" if limits else ""
        return f"up to {max_turns} turns{run_wide}"

    # --- what the report says --------------------------------------------------------------------

    def stopped_by(self, name: BudgetName) -> None:
        """Record that budget `name` stopped or cut something (the first one ended the run)."""
        self.ended_by = self.ended_by or name

    def record_cut(self, line: str) -> None:
        if len(self.cut) < MAX_CUT_LINES:
            self.cut.append(line)
        else:
            self.uncounted_cuts += 1

    def report(self, *, max_turns: int, root_turns: int, seconds: float) -> Budgets:
        limits = [BudgetUse(budget="turns", limit=max_turns, used=root_turns)]
        if self.max_tokens:
            limits.append(BudgetUse(budget="tokens", limit=self.max_tokens, used=self.tokens))
        if self.max_cost:
            limits.append(BudgetUse(budget="cost_usd", limit=self.max_cost, used=round(self.cost, 6)))
        if self.deadline:
            limits.append(
                BudgetUse(budget="seconds", limit=round(self.deadline - self.started, 2), used=seconds)
            )
        cut = list(self.cut)
        if self.uncounted_cuts:
            cut.append(f"… and {self.uncounted_cuts} more")
        return Budgets(limits=limits, ended_by=self.ended_by, cut=cut)
