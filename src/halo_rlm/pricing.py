"""What LLM calls cost: a built-in price table that users can extend or override.

Prices are USD per million tokens. A provider-reported cost (OpenRouter and some gateways send
`usage.cost`) wins over the table. Extend the table with a JSON file —
`{"my-model": {"input": 0.5, "cached_input": 0.05, "output": 1.5}}` — passed as `--prices FILE` or in
`$HALO_PRICES`; a model is matched by its exact name, then by the longest table entry it starts with
(so `gpt-5.4-mini-2026-03-01` uses `gpt-5.4-mini`), ignoring a `provider/` prefix.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
from pydantic import BaseModel, ValidationError


class Price(BaseModel):
    input: float
    output: float
    cached_input: float | None = None  # defaults to the input price


BUILT_IN: dict[str, Price] = {
    name: Price(input=i, cached_input=c, output=o)
    for name, (i, c, o) in {
        "gpt-5.5": (2.0, 0.2, 16.0),
        "gpt-5.4": (1.75, 0.175, 14.0),
        "gpt-5.4-mini": (0.35, 0.035, 2.8),
        "gpt-5.4-nano": (0.08, 0.008, 0.6),
        "gpt-5.1": (1.25, 0.125, 10.0),
        "gpt-5": (1.25, 0.125, 10.0),
        "gpt-5-mini": (0.25, 0.025, 2.0),
        "gpt-5-nano": (0.05, 0.005, 0.4),
        "gpt-4.1": (2.0, 0.5, 8.0),
        "gpt-4.1-mini": (0.4, 0.1, 1.6),
        "gpt-4o": (2.5, 1.25, 10.0),
        "gpt-4o-mini": (0.15, 0.075, 0.6),
        "o3": (2.0, 0.5, 8.0),
        "o4-mini": (1.1, 0.275, 4.4),
        "claude-opus-4": (15.0, 1.5, 75.0),
        "claude-sonnet-4": (3.0, 0.3, 15.0),
        "claude-sonnet-4-5": (3.0, 0.3, 15.0),
        "claude-haiku-4-5": (1.0, 0.1, 5.0),
        "claude-3-5-haiku": (0.8, 0.08, 4.0),
        "gemini-3-pro": (2.0, 0.2, 12.0),
        "gemini-3-flash": (0.5, 0.05, 3.0),
        "gemini-2.5-pro": (1.25, 0.31, 10.0),
        "gemini-2.5-flash": (0.3, 0.075, 2.5),
        "deepseek-chat": (0.27, 0.07, 1.1),
        "deepseek-reasoner": (0.55, 0.14, 2.19),
    }.items()
}


class PriceError(ValueError):
    pass


class Prices:
    """A price table: the built-in one, updated from `extra` and from `$HALO_PRICES`."""

    def __init__(self, extra: dict[str, Price] | None = None, *, file: str | Path | None = None) -> None:
        self.table = dict(BUILT_IN)
        for source in (os.environ.get("HALO_PRICES"), file):
            if source:
                self.table.update(load(source))
        self.table.update(extra or {})

    def lookup(self, model: str) -> Price | None:
        name = model.split("/")[-1].lower()
        if name in self.table:
            return self.table[name]
        matches = [key for key in self.table if name.startswith(key)]
        return self.table[max(matches, key=len)] if matches else None

    def cost(
        self, model: str, *, input_tokens: int, output_tokens: int, cached_tokens: int = 0
    ) -> float | None:
        """USD for one call, or None when the model is not in the table."""
        price = self.lookup(model)
        if price is None:
            return None
        cached = min(cached_tokens, input_tokens)
        cached_price = price.input if price.cached_input is None else price.cached_input
        return (
            (input_tokens - cached) * price.input + cached * cached_price + output_tokens * price.output
        ) / 1e6


def load(path: str | Path) -> dict[str, Price]:
    try:
        data = orjson.loads(Path(path).expanduser().read_bytes())
        return {str(name).lower(): Price.model_validate(price) for name, price in data.items()}
    except (OSError, orjson.JSONDecodeError, AttributeError) as exc:
        raise PriceError(
            f"{path}: not a price table ({exc}); expected "
            '{"model": {"input": 0.5, "output": 1.5}} in USD per million tokens'
        ) from exc
    except ValidationError as exc:
        raise PriceError(f"{path}: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from exc
