"""Where LLM requests go and how: the provider (an OpenAI-compatible endpoint, its key and headers)
and a model's settings. Plain settings, so configuring a run imports no HTTP client."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, SecretStr

from halo_rlm.defaults import ReasoningEffort

__all__ = ["OPENAI_URL", "ModelConfig", "Provider", "ReasoningEffort"]

OPENAI_URL = "https://api.openai.com/v1"


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    temperature: float | None = None
    max_output_tokens: int | None = None
    reasoning_effort: ReasoningEffort | None = None
    parallel_tool_calls: bool = True


class Provider(BaseModel):
    """Where to send requests. `None` fields fall back to OPENAI_BASE_URL / OPENAI_API_KEY."""

    model_config = ConfigDict(extra="forbid")

    base_url: str | None = None
    api_key: SecretStr | None = None
    headers: dict[str, SecretStr] = {}

    @property
    def url(self) -> str:
        return (self.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL).rstrip("/")

    @property
    def key(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key else os.environ.get("OPENAI_API_KEY") or None

    @property
    def configured(self) -> bool:
        return bool(self.key or self.base_url or os.environ.get("OPENAI_BASE_URL"))
